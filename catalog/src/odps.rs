//! Bitol Open Data Product Standard (ODPS) v1.0.0 product descriptors.
//!
//! Field names and required fields follow the official JSON Schema; unknown
//! keys are rejected as the schema's `additionalProperties: false` does.

use serde::Deserialize;

use crate::common::{AuthoritativeDefinition, CustomProperty, Team, find_custom};

/// Accepted `apiVersion` values.
pub const ODPS_API_VERSIONS: &[&str] = &["v1.0.0", "v0.9.0"];

/// An ODPS data product descriptor (`*.odps.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DataProduct {
    pub api_version: String,
    pub kind: String,
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
    #[serde(default)]
    pub description: Option<ProductDescription>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub input_ports: Vec<InputPort>,
    #[serde(default)]
    pub output_ports: Vec<OutputPort>,
    #[serde(default)]
    pub management_ports: Vec<ManagementPort>,
    #[serde(default)]
    pub support: Vec<Support>,
    #[serde(default)]
    pub team: Option<Team>,
    #[serde(default)]
    pub product_created_ts: Option<String>,
}

/// The product's description block.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ProductDescription {
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub limitations: Option<String>,
    #[serde(default)]
    pub usage: Option<String>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
}

/// Where the product's data comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct InputPort {
    pub name: String,
    pub version: String,
    pub contract_id: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
}

/// A way consumers read the product; meshq serves ports that name a contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct OutputPort {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub contract_id: Option<String>,
    #[serde(default)]
    pub sbom: Vec<Sbom>,
    #[serde(default)]
    pub input_contracts: Vec<InputContract>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
}

impl OutputPort {
    /// The contract server this port reads, from the `server` custom property.
    pub fn server_name(&self) -> Option<&str> {
        find_custom(&self.custom_properties, "server").and_then(|p| p.value.as_str())
    }
}

/// A software bill of materials reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Sbom {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub url: String,
}

/// A contract an output port depends on.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct InputContract {
    pub id: String,
    pub version: String,
}

/// A management (control-plane) port.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ManagementPort {
    pub name: String,
    pub content: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
}

/// A support channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Support {
    pub channel: String,
    pub url: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub invitation_url: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
}
