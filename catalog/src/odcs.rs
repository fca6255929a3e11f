//! Bitol Open Data Contract Standard (ODCS) v3.1.0 data contracts (3.0.x accepted).
//!
//! Field names and required fields follow the official JSON Schema; unknown
//! keys are rejected as the schema's `unevaluatedProperties: false` does.

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::common::{AuthoritativeDefinition, CustomProperty, Team, TeamMember};

/// Accepted `apiVersion` values.
pub const ODCS_API_VERSIONS: &[&str] = &["v3.1.0", "v3.0.2", "v3.0.1", "v3.0.0"];

/// An ODCS data contract (`*.odcs.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DataContract {
    pub version: String,
    pub kind: String,
    pub api_version: String,
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub data_product: Option<String>,
    #[serde(default)]
    pub description: Option<ContractDescription>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub schema: Vec<SchemaObject>,
    #[serde(default)]
    pub support: Vec<SupportItem>,
    #[serde(default)]
    pub price: Option<Pricing>,
    #[serde(default)]
    pub team: Option<ContractTeam>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub sla_default_element: Option<String>,
    #[serde(default)]
    pub sla_properties: Vec<SlaProperty>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub contract_created_ts: Option<String>,
}

/// ODCS 3.1 uses a team object; 3.0.x used a bare member list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
#[allow(missing_docs)]
pub enum ContractTeam {
    Team(Team),
    Members(Vec<TeamMember>),
}

/// The contract's description block.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ContractDescription {
    #[serde(default)]
    pub usage: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub limitations: Option<String>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
}

/// A place the contract's data is served from.
///
/// The JSON Schema has one variant per server `type`; all of their location
/// keys are accepted here and [`crate::mesh`] checks the ones meshq reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Server {
    pub server: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub catalog: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub region_name: Option<String>,
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub staging_dir: Option<String>,
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub warehouse: Option<String>,
}

/// A schema object: one table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SchemaObject {
    pub name: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub physical_type: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub business_name: Option<String>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub logical_type: Option<String>,
    #[serde(default)]
    pub physical_name: Option<String>,
    #[serde(default)]
    pub data_granularity_description: Option<String>,
    #[serde(default)]
    pub properties: Vec<SchemaProperty>,
    #[serde(default)]
    pub relationships: Vec<Relationship>,
    #[serde(default)]
    pub quality: Vec<DataQuality>,
}

/// A schema property: one column (or a nested field).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SchemaProperty {
    pub name: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub physical_type: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub business_name: Option<String>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub primary_key: Option<bool>,
    #[serde(default)]
    pub primary_key_position: Option<i64>,
    #[serde(default)]
    pub logical_type: Option<LogicalType>,
    #[serde(default)]
    pub logical_type_options: Option<LogicalTypeOptions>,
    #[serde(default)]
    pub physical_name: Option<String>,
    #[serde(default)]
    pub required: Option<bool>,
    #[serde(default)]
    pub unique: Option<bool>,
    #[serde(default)]
    pub partitioned: Option<bool>,
    #[serde(default)]
    pub partition_key_position: Option<i64>,
    #[serde(default)]
    pub classification: Option<String>,
    #[serde(default)]
    pub encrypted_name: Option<String>,
    #[serde(default)]
    pub transform_source_objects: Vec<String>,
    #[serde(default)]
    pub transform_logic: Option<String>,
    #[serde(default)]
    pub transform_description: Option<String>,
    #[serde(default)]
    pub examples: Vec<Value>,
    #[serde(default)]
    pub critical_data_element: Option<bool>,
    #[serde(default)]
    pub relationships: Vec<Relationship>,
    #[serde(default)]
    pub quality: Vec<DataQuality>,
    #[serde(default)]
    pub properties: Vec<SchemaProperty>,
    #[serde(default)]
    pub items: Option<Box<SchemaProperty>>,
}

/// ODCS logical types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub enum LogicalType {
    String,
    Date,
    Timestamp,
    Time,
    Number,
    Integer,
    Object,
    Array,
    Boolean,
}

impl std::fmt::Display for LogicalType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::String => "string",
            Self::Date => "date",
            Self::Timestamp => "timestamp",
            Self::Time => "time",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::Object => "object",
            Self::Array => "array",
            Self::Boolean => "boolean",
        };
        f.write_str(s)
    }
}

/// Options refining a logical type (union of the per-type option sets).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LogicalTypeOptions {
    #[serde(default)]
    pub min_length: Option<u64>,
    #[serde(default)]
    pub max_length: Option<u64>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub exclusive_maximum: Option<Value>,
    #[serde(default)]
    pub maximum: Option<Value>,
    #[serde(default)]
    pub exclusive_minimum: Option<Value>,
    #[serde(default)]
    pub minimum: Option<Value>,
    #[serde(default)]
    pub timezone: Option<bool>,
    #[serde(default)]
    pub default_timezone: Option<String>,
    #[serde(default)]
    pub multiple_of: Option<Value>,
    #[serde(default)]
    pub max_items: Option<u64>,
    #[serde(default)]
    pub min_items: Option<u64>,
    #[serde(default)]
    pub unique_items: Option<bool>,
    #[serde(default)]
    pub max_properties: Option<u64>,
    #[serde(default)]
    pub min_properties: Option<u64>,
    #[serde(default)]
    pub required: Vec<String>,
}

/// A foreign-key style relationship.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Relationship {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub from: Option<Value>,
    #[serde(default)]
    pub to: Option<Value>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
}

/// A data quality rule (library metric, SQL or custom engine).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DataQuality {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
    #[serde(default)]
    pub business_impact: Option<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub dimension: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub scheduler: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub arguments: Option<Value>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub engine: Option<String>,
    #[serde(default)]
    pub implementation: Option<Value>,
    #[serde(default)]
    pub must_be: Option<Value>,
    #[serde(default)]
    pub must_not_be: Option<Value>,
    #[serde(default)]
    pub must_be_greater_than: Option<f64>,
    #[serde(default)]
    pub must_be_greater_or_equal_to: Option<f64>,
    #[serde(default)]
    pub must_be_less_than: Option<f64>,
    #[serde(default)]
    pub must_be_less_or_equal_to: Option<f64>,
    #[serde(default)]
    pub must_be_between: Option<Vec<f64>>,
    #[serde(default)]
    pub must_not_be_between: Option<Vec<f64>>,
}

/// A support channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SupportItem {
    pub channel: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub invitation_url: Option<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
}

/// Price of the data.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Pricing {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub price_amount: Option<f64>,
    #[serde(default)]
    pub price_currency: Option<String>,
    #[serde(default)]
    pub price_unit: Option<String>,
}

/// An access role described by the contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Role {
    pub role: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub access: Option<String>,
    #[serde(default)]
    pub first_level_approvers: Option<String>,
    #[serde(default)]
    pub second_level_approvers: Option<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
}

/// A service-level agreement property.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SlaProperty {
    pub property: String,
    pub value: Value,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub value_ext: Option<Value>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub element: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub scheduler: Option<String>,
    #[serde(default)]
    pub schedule: Option<String>,
}
