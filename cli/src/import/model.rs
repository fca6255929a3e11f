//! What an import produces: ODPS 1.0 products and ODCS 3.1 contracts, as
//! YAML in the order the standards' own examples use.

use serde_yaml_ng::{Mapping, Value};

/// A YAML mapping built in order, leaving out empty values.
#[derive(Debug, Default, Clone)]
pub(crate) struct Map(Mapping);

impl Map {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sets `key` unless `value` is null, an empty string, list or mapping.
    pub(crate) fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let value = value.into();
        let empty = match &value {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Sequence(s) => s.is_empty(),
            Value::Mapping(m) => m.is_empty(),
            _ => false,
        };
        if !empty {
            self.0.insert(Value::String(key.to_string()), value);
        }
        self
    }

    /// Sets `key` when `value` is `Some`.
    pub(crate) fn opt(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    /// Sets `key: true` when `flag` holds.
    pub(crate) fn flag(self, key: &str, flag: bool) -> Self {
        if flag { self.set(key, true) } else { self }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Mapping(m.0)
    }
}

/// A list of strings as a YAML sequence.
pub(crate) fn strings(items: &[String]) -> Value {
    Value::Sequence(items.iter().cloned().map(Value::String).collect())
}

/// A list of values.
pub(crate) fn seq(items: Vec<Value>) -> Value {
    Value::Sequence(items)
}

/// `{ property, value }`.
pub(crate) fn custom(property: &str, value: impl Into<Value>) -> Value {
    Map::new()
        .set("property", property)
        .set("value", value)
        .into()
}

/// A column of a contract's schema object.
#[derive(Debug, Default, Clone)]
pub(crate) struct Property {
    pub name: String,
    pub business_name: Option<String>,
    pub logical_type: Option<&'static str>,
    pub physical_type: Option<String>,
    pub description: Option<String>,
    pub required: bool,
    pub unique: bool,
    pub primary_key_position: Option<i64>,
    pub classification: Option<String>,
    pub tags: Vec<String>,
    /// `logicalTypeOptions`.
    pub options: Map,
    pub examples: Vec<Value>,
    pub quality: Vec<Value>,
}

impl Property {
    fn to_value(&self) -> Value {
        Map::new()
            .set("name", self.name.as_str())
            .opt("businessName", self.business_name.clone())
            .opt("logicalType", self.logical_type)
            .opt(
                "logicalTypeOptions",
                (!self.options.is_empty()).then(|| self.options.clone()),
            )
            .opt("physicalType", self.physical_type.clone())
            .opt("description", self.description.clone())
            .flag("primaryKey", self.primary_key_position.is_some())
            .opt("primaryKeyPosition", self.primary_key_position)
            .flag("required", self.required)
            .flag("unique", self.unique)
            .opt("classification", self.classification.clone())
            .set("tags", strings(&self.tags))
            .set("examples", seq(self.examples.clone()))
            .set("quality", seq(self.quality.clone()))
            .into()
    }
}

/// A table of a contract.
#[derive(Debug, Default, Clone)]
pub(crate) struct SchemaObject {
    pub name: String,
    pub physical_name: Option<String>,
    pub physical_type: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub properties: Vec<Property>,
    pub quality: Vec<Value>,
    /// meshq's `readRoles`.
    pub read_roles: Vec<String>,
}

impl SchemaObject {
    /// The property `name`, if the object has it.
    pub(crate) fn property_mut(&mut self, name: &str) -> Option<&mut Property> {
        self.properties.iter_mut().find(|p| p.name == name)
    }

    fn to_value(&self) -> Value {
        let custom_properties = if self.read_roles.is_empty() {
            Vec::new()
        } else {
            vec![custom("readRoles", strings(&self.read_roles))]
        };
        Map::new()
            .set("name", self.name.as_str())
            .opt("physicalName", self.physical_name.clone())
            .set("logicalType", "object")
            .opt("physicalType", self.physical_type.clone())
            .opt("description", self.description.clone())
            .set("tags", strings(&self.tags))
            .set("customProperties", seq(custom_properties))
            .set(
                "properties",
                seq(self.properties.iter().map(Property::to_value).collect()),
            )
            .set("quality", seq(self.quality.clone()))
            .into()
    }
}

/// Purpose, usage and limitations.
#[derive(Debug, Default, Clone)]
pub(crate) struct Description {
    pub purpose: Option<String>,
    pub usage: Option<String>,
    pub limitations: Option<String>,
    pub custom: Vec<Value>,
}

impl Description {
    fn to_value(&self) -> Value {
        Map::new()
            .opt("purpose", self.purpose.clone())
            .opt("usage", self.usage.clone())
            .opt("limitations", self.limitations.clone())
            .set("customProperties", seq(self.custom.clone()))
            .into()
    }
}

/// An owner team and its members.
#[derive(Debug, Default, Clone)]
pub(crate) struct Team {
    pub name: Option<String>,
    /// (username, name, role).
    pub members: Vec<(String, Option<String>, String)>,
}

impl Team {
    fn to_value(&self) -> Value {
        Map::new()
            .opt("name", self.name.clone())
            .set(
                "members",
                seq(self
                    .members
                    .iter()
                    .map(|(username, name, role)| {
                        Map::new()
                            .set("username", username.as_str())
                            .opt("name", name.clone())
                            .set("role", role.as_str())
                            .into()
                    })
                    .collect()),
            )
            .into()
    }
}

/// An ODCS 3.1 contract.
#[derive(Debug, Default, Clone)]
pub(crate) struct Contract {
    pub id: String,
    pub name: String,
    pub version: String,
    pub status: String,
    pub domain: String,
    pub description: Description,
    pub tags: Vec<String>,
    /// Server entries, as mappings.
    pub servers: Vec<Value>,
    pub schema: Vec<SchemaObject>,
    pub sla: Vec<Value>,
    pub team: Team,
    pub links: Vec<Value>,
    pub custom: Vec<Value>,
}

impl Contract {
    /// The object `name`, if the contract has it.
    pub(crate) fn object_mut(&mut self, name: &str) -> Option<&mut SchemaObject> {
        self.schema.iter_mut().find(|o| o.name == name)
    }

    pub(crate) fn to_yaml(&self) -> String {
        let value: Value = Map::new()
            .set("apiVersion", "v3.1.0")
            .set("kind", "DataContract")
            .set("id", self.id.as_str())
            .set("name", self.name.as_str())
            .set("version", self.version.as_str())
            .set("status", self.status.as_str())
            .set("domain", self.domain.as_str())
            .set("description", self.description.to_value())
            .set("tags", strings(&self.tags))
            .set("servers", seq(self.servers.clone()))
            .set(
                "schema",
                seq(self.schema.iter().map(SchemaObject::to_value).collect()),
            )
            .set("slaProperties", seq(self.sla.clone()))
            .set("team", self.team.to_value())
            .set("authoritativeDefinitions", seq(self.links.clone()))
            .set("customProperties", seq(self.custom.clone()))
            .into();
        serde_yaml_ng::to_string(&value).expect("a YAML value serialises")
    }
}

/// An ODPS input port.
#[derive(Debug, Clone)]
pub(crate) struct InputPort {
    pub name: String,
    pub version: String,
    pub contract_id: String,
}

/// An ODPS output port.
#[derive(Debug, Clone)]
pub(crate) struct OutputPort {
    pub name: String,
    pub description: Option<String>,
    pub version: String,
    pub contract_id: String,
    /// The contract server this port serves, when it has several.
    pub server: Option<String>,
}

/// An ODPS 1.0 product.
#[derive(Debug, Default, Clone)]
pub(crate) struct Product {
    pub id: String,
    pub name: String,
    pub version: String,
    pub status: String,
    pub domain: String,
    pub description: Description,
    pub tags: Vec<String>,
    pub team: Team,
    pub inputs: Vec<InputPort>,
    pub outputs: Vec<OutputPort>,
    pub custom: Vec<Value>,
}

impl Product {
    pub(crate) fn to_yaml(&self) -> String {
        let inputs = self
            .inputs
            .iter()
            .map(|p| {
                Map::new()
                    .set("name", p.name.as_str())
                    .set("version", p.version.as_str())
                    .set("contractId", p.contract_id.as_str())
                    .into()
            })
            .collect();
        let outputs = self
            .outputs
            .iter()
            .map(|p| {
                let custom = p
                    .server
                    .iter()
                    .map(|s| custom("server", s.as_str()))
                    .collect();
                Map::new()
                    .set("name", p.name.as_str())
                    .opt("description", p.description.clone())
                    .set("type", "tables")
                    .set("version", p.version.as_str())
                    .set("contractId", p.contract_id.as_str())
                    .set("customProperties", seq(custom))
                    .into()
            })
            .collect();
        let value: Value = Map::new()
            .set("apiVersion", "v1.0.0")
            .set("kind", "DataProduct")
            .set("id", self.id.as_str())
            .set("name", self.name.as_str())
            .set("version", self.version.as_str())
            .set("status", self.status.as_str())
            .set("domain", self.domain.as_str())
            .set("description", self.description.to_value())
            .set("tags", strings(&self.tags))
            .set("team", self.team.to_value())
            .set("customProperties", seq(self.custom.clone()))
            .set("inputPorts", seq(inputs))
            .set("outputPorts", seq(outputs))
            .into();
        serde_yaml_ng::to_string(&value).expect("a YAML value serialises")
    }
}
