//! Building blocks shared by the ODPS and ODCS models.

use serde::Deserialize;
use serde_yaml_ng::Value;

/// A `customProperties` entry: the only place engine extensions live.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomProperty {
    /// Optional stable identifier.
    #[serde(default)]
    pub id: Option<String>,
    /// Property name, e.g. `mask`, `rowFilters`, `server`.
    pub property: String,
    /// Free-form value; its shape depends on `property`.
    pub value: Value,
    /// Human description.
    #[serde(default)]
    pub description: Option<String>,
}

/// Finds a custom property by name.
pub fn find_custom<'a>(props: &'a [CustomProperty], name: &str) -> Option<&'a CustomProperty> {
    props.iter().find(|p| p.property == name)
}

/// A link to an authoritative definition (glossary entry, documentation, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthoritativeDefinition {
    /// Optional stable identifier.
    #[serde(default)]
    pub id: Option<String>,
    /// Kind of definition (`businessDefinition`, `tutorial`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Where it lives.
    pub url: String,
    /// Human description.
    #[serde(default)]
    pub description: Option<String>,
}

/// A member of an owning team.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TeamMember {
    #[serde(default)]
    pub id: Option<String>,
    pub username: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub date_in: Option<String>,
    #[serde(default)]
    pub date_out: Option<String>,
    #[serde(default)]
    pub replaced_by_username: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
}

/// The team that owns a product or contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Team {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub members: Vec<TeamMember>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(default)]
    pub authoritative_definitions: Vec<AuthoritativeDefinition>,
}
