//! What travels beside a plan: the mask functions its stages call, and
//! the session's settings that change what a stage computes.
//!
//! A mask function holds its parameters (a hash mask its key), but a plan
//! fragment names a function only by its name, and a worker looks the name
//! up in its own registry. So the coordinator lists the masks a statement's
//! stages call in [`MaskFunctions`], a configuration extension that
//! datafusion-distributed sends with every request of that statement; the
//! worker registers each under its name before it decodes the fragment.
//!
//! - A hash mask travels as the *name* of its secret and a check value (an
//!   HMAC of a fixed text under the key): the worker takes the key from its
//!   own `meshq.yaml` and refuses the fragment when its check differs, so a
//!   worker with another key fails the query rather than hashing
//!   differently. The key never travels.
//! - Two different masks of one name in one statement cannot both be
//!   registered; the coordinator then runs the statement itself.
//! - The list a user could `SET` is refused like every `meshq*` setting,
//!   and the coordinator overwrites it for every distributed plan.
//!
//! [`SessionSettings`] carries the statement's `datafusion.execution.*`
//! settings that differ from DataFusion's defaults (the session's time
//! zone, say, which functions such as `to_timestamp` take when they are
//! made), but not the knobs of the worker's own resources (partitions,
//! memory, spilling). The worker applies them before it builds the
//! session that decodes the fragment.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::ScalarUDF;
use hmac::{Hmac, Mac};
use meshq_engine::error::worker_configuration;
use meshq_engine::policy::udf::{RoundMask, StringMask, StringMaskKind};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// A mask function as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mask", rename_all = "snake_case")]
pub enum TravellingMask {
    /// `mask_hash`.
    Hash {
        /// The name of the key's secret in `meshq.yaml` `secrets`.
        secret: String,
        /// The key's check value, which tells the worker's key apart.
        check: String,
    },
    /// `mask_partial`.
    Partial {
        /// Characters kept at the start.
        show_first: usize,
        /// Text in between.
        padding: String,
        /// Characters kept at the end.
        show_last: usize,
    },
    /// `mask_redact`.
    Redact {
        /// Replacement for letters.
        letter: char,
        /// Replacement for digits.
        digit: char,
    },
    /// `mask_round`.
    Round {
        /// Digits kept after the decimal point (negative: before it).
        digits: i32,
    },
}

/// The check value of a hash key: the first 8 bytes of an HMAC of a fixed
/// text, in hex. It tells two keys apart without revealing either.
fn key_check(key: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"meshq cluster: hash mask key check");
    hex::encode(&mac.finalize().into_bytes()[..8])
}

impl TravellingMask {
    /// The travelling form of `udf`, if it is one of meshq's masks.
    pub fn of(udf: &ScalarUDF) -> Option<Self> {
        let inner = udf.inner().as_ref() as &dyn Any;
        if let Some(mask) = inner.downcast_ref::<StringMask>() {
            return Some(match mask.kind() {
                StringMaskKind::Hash { secret, key } => Self::Hash {
                    secret: secret.clone(),
                    check: key_check(key),
                },
                StringMaskKind::Partial {
                    show_first,
                    padding,
                    show_last,
                } => Self::Partial {
                    show_first: *show_first,
                    padding: padding.clone(),
                    show_last: *show_last,
                },
                StringMaskKind::Redact { letter, digit } => Self::Redact {
                    letter: *letter,
                    digit: *digit,
                },
            });
        }
        inner
            .downcast_ref::<RoundMask>()
            .map(|m| Self::Round { digits: m.digits() })
    }

    /// The function on a worker whose secrets (by name, resolved from its
    /// `meshq.yaml`) are `secrets`.
    pub fn function(&self, secrets: &WorkerSecrets) -> Result<ScalarUDF> {
        Ok(ScalarUDF::new_from_impl(match self {
            Self::Hash { secret, check } => {
                let key = secrets.get(secret)?;
                if key_check(key.as_bytes()) != *check {
                    return Err(worker_configuration(format!(
                        "the secret `{secret}` of this worker differs from the coordinator's: \
                         give every node of the cluster the same meshq.yaml secrets"
                    )));
                }
                StringMask::hash(secret, key)
            }
            Self::Partial {
                show_first,
                padding,
                show_last,
            } => StringMask::partial(*show_first, padding, *show_last),
            Self::Redact { letter, digit } => StringMask::redact(*letter, *digit),
            Self::Round { digits } => {
                return Ok(ScalarUDF::new_from_impl(RoundMask::new(*digits)));
            }
        }))
    }
}

/// The secrets of a worker's `meshq.yaml`, resolved when it starts: each
/// value, or why it could not be read.
#[derive(Debug, Clone, Default)]
pub struct WorkerSecrets(BTreeMap<String, Result<String, String>>);

impl WorkerSecrets {
    /// Resolves every secret of `config` from the environment.
    pub fn resolve(config: &meshq_catalog::platform::PlatformConfig) -> Self {
        Self::resolve_with(config, &BTreeMap::new())
    }

    /// Resolves every secret of `config` from the environment, else from
    /// `fallback` (variables a program supplies, as the engine takes them).
    pub fn resolve_with(
        config: &meshq_catalog::platform::PlatformConfig,
        fallback: &BTreeMap<String, String>,
    ) -> Self {
        Self(
            config
                .secrets
                .iter()
                .map(|(name, secret)| (name.clone(), secret.resolve_with(fallback)))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Result<&str> {
        match self.0.get(name) {
            Some(Ok(v)) if !v.is_empty() => Ok(v),
            Some(Ok(_)) => Err(worker_configuration(format!(
                "the secret `{name}` is empty on this worker"
            ))),
            Some(Err(why)) => Err(worker_configuration(format!(
                "the secret `{name}` cannot be read on this worker: {why}"
            ))),
            None => Err(worker_configuration(format!(
                "the secret `{name}` is not in this worker's meshq.yaml `secrets`"
            ))),
        }
    }
}

/// The masks a statement's stages call, sent to the workers with each of
/// its requests. Clones share the list: the planner writes it into the
/// statement's configuration, and the copy that runs the plan reads it.
#[derive(Debug, Clone, Default)]
pub struct MaskFunctions {
    list: Arc<Mutex<Vec<TravellingMask>>>,
    /// Made for one statement ([`Self::fresh`]). The instance every
    /// statement's configuration starts from is shared, and a plan whose
    /// masks it would hold stays on the coordinator rather than risk
    /// another statement's list.
    own: bool,
}

impl MaskFunctions {
    /// A list of this statement's own (not shared with another's).
    pub fn fresh() -> Self {
        Self {
            list: Arc::default(),
            own: true,
        }
    }

    /// Whether this list belongs to one statement.
    pub fn is_own(&self) -> bool {
        self.own
    }

    /// Replaces the list.
    pub fn set_all(&self, masks: Vec<TravellingMask>) {
        *self.list.lock() = masks;
    }

    /// The list.
    pub fn masks(&self) -> Vec<TravellingMask> {
        self.list.lock().clone()
    }
}

/// A list as it travels in a header value: JSON in hex (a header value is
/// visible ASCII, a mask's padding may not be); `None` when empty.
fn encode_list<T: Serialize>(list: &[T]) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    serde_json::to_vec(list).ok().map(hex::encode)
}

/// The list `value` holds for the setting `prefix.key`; an error naming
/// it when `key` is not `expected` or the value is not a list.
fn decode_list<T: for<'de> Deserialize<'de>>(
    prefix: &str,
    key: &str,
    expected: &str,
    value: &str,
) -> Result<Vec<T>> {
    if key != expected {
        return Err(DataFusionError::Configuration(format!(
            "{prefix}.{key} is not a setting"
        )));
    }
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let bad =
        |e: &dyn std::fmt::Display| DataFusionError::Configuration(format!("{prefix}.{key}: {e}"));
    let json = hex::decode(value).map_err(|e| bad(&e))?;
    serde_json::from_slice(&json).map_err(|e| bad(&e))
}

const KEY: &str = "masks";

impl ConfigExtension for MaskFunctions {
    const PREFIX: &'static str = "meshq_cluster";
}

impl ExtensionOptions for MaskFunctions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.set_all(decode_list(Self::PREFIX, key, KEY, value)?);
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: KEY.to_string(),
            value: encode_list(&self.masks()),
            description: "mask functions the statement's plan fragments call (set by the coordinator)",
        }]
    }
}

/// The statement's settings the workers apply, as `(key, value)`.
#[derive(Debug, Clone, Default)]
pub struct SessionSettings(Vec<(String, String)>);

impl SessionSettings {
    /// The settings of `options` to send: `datafusion.execution.*` values
    /// that differ from DataFusion's defaults, but for the worker's own
    /// resources.
    pub fn of(options: &datafusion::config::ConfigOptions) -> Self {
        static DEFAULTS: std::sync::LazyLock<BTreeMap<String, Option<String>>> =
            std::sync::LazyLock::new(|| {
                datafusion::config::ConfigOptions::default()
                    .entries()
                    .into_iter()
                    .map(|e| (e.key, e.value))
                    .collect()
            });
        Self(
            options
                .entries()
                .into_iter()
                .filter(|e| travels(&e.key))
                .filter(|e| DEFAULTS.get(&e.key) != Some(&e.value))
                .filter_map(|e| e.value.map(|v| (e.key, v)))
                .collect(),
        )
    }

    /// Applies the settings to a worker's `options`; only keys that may
    /// travel, so a request cannot reach the worker's own resources.
    pub fn apply(&self, options: &mut datafusion::config::ConfigOptions) -> Result<()> {
        for (key, value) in &self.0 {
            if !travels(key) {
                return Err(DataFusionError::Configuration(format!(
                    "`{key}` is not a setting a coordinator may send"
                )));
            }
            options.set(key, value)?;
        }
        Ok(())
    }

    /// The settings.
    pub fn settings(&self) -> &[(String, String)] {
        &self.0
    }
}

/// Whether the setting `key` travels to workers.
fn travels(key: &str) -> bool {
    const OWN: [&str; 4] = [
        "target_partitions",
        "planning_concurrency",
        "spill",
        "memory",
    ];
    // Optimizer settings a hash join reads when it runs: whether it
    // computes its dynamic filter, and up to which size its keys go as a
    // list (which can travel to another stage) rather than a probe of its
    // hash table (which cannot).
    const JOIN_FILTERS: [&str; 4] = [
        "datafusion.optimizer.enable_dynamic_filter_pushdown",
        "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
        "datafusion.optimizer.hash_join_inlist_pushdown_max_size",
        "datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values",
    ];
    JOIN_FILTERS.contains(&key)
        || key
            .strip_prefix("datafusion.execution.")
            .is_some_and(|rest| !OWN.iter().any(|own| rest.contains(own)))
}

const SETTINGS_KEY: &str = "settings";

impl ConfigExtension for SessionSettings {
    const PREFIX: &'static str = "meshq_session";
}

impl ExtensionOptions for SessionSettings {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.0 = decode_list(Self::PREFIX, key, SETTINGS_KEY, value)?;
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: SETTINGS_KEY.to_string(),
            value: encode_list(&self.0),
            description: "the statement's settings the workers apply (set by the coordinator)",
        }]
    }
}

/// One query's memory limit, sent to its workers so each bounds its part
/// of the query as the coordinator bounds its own: every task of the
/// query (`id`, one per statement) on a worker shares one pool of
/// `memory` bytes, drawn from the worker's pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryBudget {
    /// The query's memory limit, in bytes; none: only the worker's pool.
    pub memory: Option<u64>,
    /// The query's id on this coordinator.
    pub id: String,
}

impl QueryBudget {
    /// A budget of `memory` bytes for a new query.
    pub fn new(memory: u64) -> Self {
        Self {
            memory: Some(memory),
            ..Self::unlimited()
        }
    }

    /// No limit but the worker's own pool, for a new query.
    pub fn unlimited() -> Self {
        Self {
            memory: None,
            id: format!("{:032x}", rand::random::<u128>()),
        }
    }
}

impl ConfigExtension for QueryBudget {
    const PREFIX: &'static str = "meshq_query";
}

impl ExtensionOptions for QueryBudget {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "memory" if value.is_empty() => self.memory = None,
            "memory" => {
                self.memory = Some(value.parse().map_err(|_| {
                    DataFusionError::Configuration(format!(
                        "meshq_query.memory: `{value}` is not a number of bytes"
                    ))
                })?)
            }
            "id" => self.id = value.to_string(),
            other => {
                return Err(DataFusionError::Configuration(format!(
                    "meshq_query has no setting `{other}`"
                )));
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![
            ConfigEntry {
                key: "memory".to_string(),
                value: self.memory.map(|m| m.to_string()),
                description: "the query's memory limit in bytes (set by the coordinator)",
            },
            ConfigEntry {
                key: "id".to_string(),
                value: Some(self.id.clone()),
                description: "the query's id, shared by its tasks (set by the coordinator)",
            },
        ]
    }
}

/// The functions to register on a worker for the masks `masks`.
pub fn worker_functions(
    masks: &MaskFunctions,
    secrets: &WorkerSecrets,
) -> Result<Vec<Arc<ScalarUDF>>> {
    masks
        .masks()
        .iter()
        .map(|m| m.function(secrets).map(Arc::new))
        .collect()
}

/// The masks `plan` calls, one per name; an error when two differ under
/// one name (the worker could register only one of them).
pub fn masks_of(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Result<Vec<TravellingMask>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::physical_expr::ScalarFunctionExpr;
    let mut by_name: BTreeMap<String, TravellingMask> = BTreeMap::new();
    plan.apply(|node| {
        node.apply_expressions(&mut |expr| {
            expr.apply(|e| {
                if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>()
                    && let Some(mask) = TravellingMask::of(f.fun())
                {
                    match by_name.get(f.name()) {
                        Some(seen) if *seen != mask => {
                            return Err(DataFusionError::NotImplemented(format!(
                                "two different `{}` masks in one statement run on the coordinator",
                                f.name()
                            )));
                        }
                        Some(_) => {}
                        None => {
                            by_name.insert(f.name().to_string(), mask);
                        }
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(by_name.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, Result<&str, &str>)]) -> WorkerSecrets {
        WorkerSecrets(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string).map_err(str::to_string)))
                .collect(),
        )
    }

    #[test]
    fn masks_travel_through_the_header_value_and_come_back_the_same() {
        let masks = vec![
            TravellingMask::of(&ScalarUDF::new_from_impl(StringMask::hash("k", "key"))).unwrap(),
            TravellingMask::of(&ScalarUDF::new_from_impl(StringMask::partial(1, "•••", 2)))
                .unwrap(),
            TravellingMask::of(&ScalarUDF::new_from_impl(StringMask::redact('x', '9'))).unwrap(),
            TravellingMask::of(&ScalarUDF::new_from_impl(RoundMask::new(-2))).unwrap(),
        ];
        let sent = MaskFunctions::fresh();
        sent.set_all(masks.clone());
        let entry = sent.entries().pop().unwrap();
        let value = entry.value.unwrap();
        assert!(value.is_ascii(), "{value}");
        assert!(
            !value.contains(&hex::encode("key")),
            "the key never travels"
        );
        let mut received = MaskFunctions::fresh();
        received.set(KEY, &value).unwrap();
        assert_eq!(received.masks(), masks);
        // Clones share the list (the planner writes, the run reads).
        let copy = received.cloned();
        received.set_all(vec![]);
        assert!(copy.entries()[0].value.is_none());
    }

    #[test]
    fn a_worker_hashes_with_its_own_key_only_when_it_matches() {
        let mask = TravellingMask::of(&ScalarUDF::new_from_impl(StringMask::hash("pii", "right")))
            .unwrap();
        let same = mask.function(&secrets(&[("pii", Ok("right"))])).unwrap();
        let original = ScalarUDF::new_from_impl(StringMask::hash("pii", "right"));
        assert_eq!(
            TravellingMask::of(&same),
            TravellingMask::of(&original),
            "the worker's function is the coordinator's"
        );
        let other = mask
            .function(&secrets(&[("pii", Ok("wrong"))]))
            .unwrap_err()
            .to_string();
        assert!(
            other.contains("`pii`") && other.contains("differs"),
            "{other}"
        );
        let missing = mask.function(&secrets(&[])).unwrap_err().to_string();
        assert!(
            missing.contains("not in this worker's meshq.yaml"),
            "{missing}"
        );
        let unset = mask
            .function(&secrets(&[(
                "pii",
                Err("environment variable `K` is not set"),
            )]))
            .unwrap_err()
            .to_string();
        assert!(unset.contains("`K` is not set"), "{unset}");
    }

    #[test]
    fn only_execution_settings_that_differ_travel_and_apply() {
        let mut options = datafusion::config::ConfigOptions::default();
        options
            .set("datafusion.execution.time_zone", "+02:00")
            .unwrap();
        options
            .set("datafusion.execution.target_partitions", "7")
            .unwrap();
        options.set("datafusion.optimizer.max_passes", "9").unwrap();
        // A join reads this one when it runs, on the worker.
        options
            .set(
                "datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values",
                "4096",
            )
            .unwrap();
        let sent = SessionSettings::of(&options);
        assert_eq!(
            sent.settings(),
            [
                (
                    "datafusion.execution.time_zone".to_string(),
                    "+02:00".to_string()
                ),
                (
                    "datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values"
                        .to_string(),
                    "4096".to_string()
                )
            ]
        );
        let value = sent.entries().pop().unwrap().value.unwrap();
        let mut received = SessionSettings::default();
        received.set(SETTINGS_KEY, &value).unwrap();
        let mut worker = datafusion::config::ConfigOptions::default();
        received.apply(&mut worker).unwrap();
        assert_eq!(worker.execution.time_zone.as_deref(), Some("+02:00"));
        assert_eq!(
            worker
                .optimizer
                .hash_join_inlist_pushdown_max_distinct_values,
            4096
        );
        // A forged list cannot reach the worker's own resources.
        let forged = hex::encode(r#"[["datafusion.execution.memory_pool","x"]]"#);
        let mut received = SessionSettings::default();
        received.set(SETTINGS_KEY, &forged).unwrap();
        assert!(received.apply(&mut worker).is_err());
        let forged = hex::encode(r#"[["datafusion.catalog.location","/"]]"#);
        received.set(SETTINGS_KEY, &forged).unwrap();
        assert!(received.apply(&mut worker).is_err());
    }

    #[test]
    fn a_bad_list_is_refused() {
        let mut m = MaskFunctions::fresh();
        assert!(m.set(KEY, "zz").is_err());
        assert!(m.set(KEY, &hex::encode("[{\"mask\":\"nope\"}]")).is_err());
        assert!(m.set("other", "").is_err());
    }
}
