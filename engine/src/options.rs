//! [`MeshqOptions`]: what every planner rule of a session needs to know
//! about the session, carried in DataFusion's config as the `meshq.*`
//! extension.
//!
//! The principal travels here so that rules shared by every session of a
//! mesh version (the policy rule, the plan verifier) plan for the right one.
//! Nothing under `meshq.` can be set from SQL: `SET meshq.…` is an error
//! for everyone, admins included, so no statement can change whose policies
//! apply. A config without the extension plans for the anonymous principal:
//! no roles, no attributes.

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::error::{DataFusionError, Result};
use meshq_catalog::Principal;

/// Session facts for the planner; read-only from SQL.
#[derive(Debug, Clone)]
pub struct MeshqOptions {
    principal: Arc<Principal>,
    principal_key: u64,
    /// The largest value, in bytes, a function whose output grows with its
    /// arguments (`repeat`, `lpad`, …) may produce for one batch; `None`:
    /// unbounded.
    pub max_function_output: Option<usize>,
    /// Plan on this node only, never over workers: the plan of a product
    /// defined by SQL, which runs inside its caller's plan.
    pub local_only: bool,
}

impl Default for MeshqOptions {
    fn default() -> Self {
        Self::new(Arc::clone(&ANONYMOUS), None)
    }
}

static ANONYMOUS: LazyLock<Arc<Principal>> = LazyLock::new(|| Arc::new(Principal::anonymous()));

impl MeshqOptions {
    /// The options of a session of `principal`.
    pub fn new(principal: Arc<Principal>, max_function_output: Option<usize>) -> Self {
        let principal_key = principal_key(&principal);
        Self {
            principal,
            principal_key,
            max_function_output,
            local_only: false,
        }
    }

    /// The options in `config`; the anonymous principal's when absent.
    pub fn of(config: &ConfigOptions) -> Self {
        config
            .extensions
            .get::<MeshqOptions>()
            .cloned()
            .unwrap_or_default()
    }

    /// Whose policies apply.
    pub fn principal(&self) -> &Arc<Principal> {
        &self.principal
    }

    /// A fingerprint of the principal (name, roles, attributes): plans made
    /// for one principal carry it, and are refused for any other.
    pub fn principal_key(&self) -> u64 {
        self.principal_key
    }
}

/// Fingerprint of everything policies can depend on.
pub fn principal_key(p: &Principal) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    p.name.hash(&mut h);
    p.roles.hash(&mut h);
    for k in p.attributes.keys() {
        k.hash(&mut h);
        p.attribute_values(k).hash(&mut h);
    }
    h.finish()
}

impl ExtensionOptions for MeshqOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, _value: &str) -> Result<()> {
        Err(DataFusionError::Configuration(format!(
            "`meshq.{key}` cannot be set from SQL: the principal comes from authentication and limits from meshq.yaml"
        )))
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![
            ConfigEntry {
                key: "meshq.principal".into(),
                value: Some(self.principal.display_name().to_string()),
                description: "The principal whose policies this session plans for (read-only).",
            },
            ConfigEntry {
                key: "meshq.max_function_output".into(),
                value: self.max_function_output.map(|n| n.to_string()),
                description: "Largest output, in bytes, of one call of a function that grows with its arguments (read-only; limits.query_memory).",
            },
        ]
    }
}

impl ConfigExtension for MeshqOptions {
    const PREFIX: &'static str = "meshq";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_can_be_set_from_sql() {
        let mut config = ConfigOptions::new();
        config.extensions.insert(MeshqOptions::new(
            Arc::new(Principal {
                name: Some("ana".into()),
                ..Default::default()
            }),
            None,
        ));
        let err = config.set("meshq.principal", "root").unwrap_err();
        assert!(err.to_string().contains("cannot be set from SQL"), "{err}");
        assert_eq!(MeshqOptions::of(&config).principal().display_name(), "ana");
        // Without the extension: the anonymous principal.
        let bare = ConfigOptions::new();
        assert_eq!(
            MeshqOptions::of(&bare).principal().display_name(),
            "(anonymous)"
        );
    }

    #[test]
    fn the_key_tells_principals_apart() {
        let a = Principal {
            name: Some("ana".into()),
            roles: ["analyst".to_string()].into(),
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(principal_key(&a), principal_key(&b));
        b.roles.insert("pii-reader".into());
        assert_ne!(principal_key(&a), principal_key(&b));
    }
}
