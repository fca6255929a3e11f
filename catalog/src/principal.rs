//! Who runs a query: name, roles and attributes.
//!
//! A principal never comes from SQL text: the shell takes it from `--as`,
//! the server from authentication. No principal means [`Principal::anonymous`]:
//! no roles and no attributes, so policies still apply and keep nothing they
//! would not keep for anyone.

use std::collections::{BTreeMap, BTreeSet};

use argon2::password_hash::PasswordHash;
use serde::Deserialize;

/// A principal known to meshq.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Login name.
    pub name: String,
    /// Argon2 PHC string; a principal without one cannot log in with a password.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Roles held.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Attributes for `principal_attr('k')`.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttributeValue>,
    /// Where the principal's sessions start (overrides the mesh's
    /// `defaults`).
    #[serde(default)]
    pub defaults: SessionDefaults,
    /// The products defined by SQL this principal may run (their
    /// `runAs`), by product id. Only a principal without a password may
    /// run products.
    #[serde(default)]
    pub runs: Vec<String>,
}

/// `defaults:` — where a new session starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionDefaults {
    /// The schema unqualified table names resolve in (e.g. `sales`, so a BI
    /// tool's `SELECT * FROM orders` works); `public` when unset.
    #[serde(default)]
    pub schema: Option<String>,
}

/// A principal attribute: one string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
#[allow(missing_docs)]
pub enum AttributeValue {
    One(String),
    Many(Vec<String>),
}

/// The caller of a query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// Login name; `None` for the anonymous principal.
    pub name: Option<String>,
    /// Roles held.
    pub roles: BTreeSet<String>,
    /// Attributes for `principal_attr('k')`.
    pub attributes: BTreeMap<String, AttributeValue>,
}

impl Principal {
    /// No name, no roles, no attributes.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// A principal from its `meshq.yaml` entry.
    pub fn from_config(p: &PrincipalConfig) -> Self {
        Self {
            name: Some(p.name.clone()),
            roles: p.roles.iter().cloned().collect(),
            attributes: p.attributes.clone(),
        }
    }

    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains(role)
    }

    /// Whether the principal holds any of `roles`.
    pub fn has_any_role(&self, roles: &[String]) -> bool {
        roles.iter().any(|r| self.roles.contains(r))
    }

    /// Name for messages and logs.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or("(anonymous)")
    }

    /// A single-valued attribute; a list with exactly one value counts.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key)? {
            AttributeValue::One(v) => Some(v),
            AttributeValue::Many(v) if v.len() == 1 => v.first().map(String::as_str),
            AttributeValue::Many(_) => None,
        }
    }

    /// All values of an attribute (empty when absent).
    pub fn attribute_values(&self, key: &str) -> Vec<&str> {
        match self.attributes.get(key) {
            None => vec![],
            Some(AttributeValue::One(v)) => vec![v.as_str()],
            Some(AttributeValue::Many(v)) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Whether `s` is a PHC string argon2 can verify against.
pub fn check_password_hash(s: &str) -> Result<(), String> {
    let hash = PasswordHash::new(s).map_err(|e| format!("not a PHC string: {e}"))?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "algorithm `{}` is not supported; use an argon2 hash (meshq hash-password)",
            hash.algorithm
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::PlatformConfig;
    use argon2::password_hash::{PasswordHasher, SaltString};

    #[test]
    fn authenticate_checks_the_password() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = argon2::Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        let cfg: PlatformConfig = serde_yaml_ng::from_str(&format!(
            "principals: [ {{ name: ana, password_hash: '{hash}', roles: [analyst], attributes: {{ region: EMEA, teams: [a, b] }} }} ]"
        ))
        .unwrap();
        let ana = cfg.authenticate("ana", "s3cret").unwrap();
        assert!(ana.has_role("analyst"));
        assert_eq!(ana.attribute("region"), Some("EMEA"));
        assert_eq!(ana.attribute("teams"), None);
        assert_eq!(ana.attribute_values("teams"), vec!["a", "b"]);
        assert!(cfg.authenticate("ana", "wrong").is_none());
        assert!(cfg.authenticate("bob", "s3cret").is_none());
        assert!(check_password_hash(&hash).is_ok());
        assert!(check_password_hash("$argon2id$v=19$m=19456,t=2,p=1$...").is_err());
    }

    #[test]
    fn anonymous_has_nothing() {
        let a = Principal::anonymous();
        assert!(!a.has_any_role(&["admin".into()]));
        assert_eq!(a.attribute("region"), None);
        assert_eq!(a.display_name(), "(anonymous)");
    }
}
