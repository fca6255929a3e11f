//! Resource limits: `limits:` in `meshq.yaml`.
//!
//! Server-wide settings (the memory pool, the spill directory, admission)
//! plus per-query limits with defaults, per-role and per-principal entries:
//!
//! ```yaml
//! limits:
//!   memory: 8GiB                 # pool shared by all queries; spill past it
//!   spill_dir: /var/tmp/meshq    # where spill files go (the system temp dir when unset)
//!   max_concurrent_queries: 32   # server-wide; more queue
//!   max_queued_queries: 128      # past this, RESOURCE_EXHAUSTED at once
//!   queue_timeout: 30s           # a queued query waits at most this long
//!   defaults: { query_memory: 1GiB, query_timeout: 5m, max_result_rows: 10000000 }
//!   roles:
//!     analyst: { query_timeout: 60s, max_concurrent_queries: 4 }
//!   principals:
//!     etl-bot: { query_timeout: 1h, max_result_bytes: 50GiB }
//! ```
//!
//! A principal's limit for each field is its own entry's value when set,
//! else the most generous value among the entries of the roles it holds,
//! else the default; unset everywhere means unlimited.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

use crate::principal::Principal;

/// `limits:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory pool shared by all queries, in bytes. Sorts, aggregations and
    /// joins spill to disk past their share; unbounded when unset.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// Directory for spill files; the system temp directory when unset.
    #[serde(default)]
    pub spill_dir: Option<String>,
    /// Queries running at once, server-wide; more wait in the queue.
    #[serde(default)]
    pub max_concurrent_queries: Option<usize>,
    /// Queries waiting at once; past this a query is refused at once.
    #[serde(default)]
    pub max_queued_queries: Option<usize>,
    /// How long a query may wait in the queue before it is refused.
    #[serde(default)]
    pub queue_timeout: Option<DurationSpec>,
    /// Longest SQL statement accepted, in bytes (default 1 MiB).
    #[serde(default)]
    pub max_statement_bytes: Option<ByteSize>,
    /// Deepest nesting of expressions and set operations in a statement
    /// (default 1000); deeper statements are refused before planning.
    #[serde(default)]
    pub max_expression_depth: Option<usize>,
    /// Logged-in sessions the server keeps in total (default 10,000); past
    /// it the least recently used one ends.
    #[serde(default)]
    pub max_sessions: Option<usize>,
    /// Logged-in sessions one principal may hold (default 64); past it the
    /// principal's least recently used one ends.
    #[serde(default)]
    pub max_sessions_per_principal: Option<usize>,
    /// Per-query limits for everyone.
    #[serde(default)]
    pub defaults: QueryLimits,
    /// Per-query limits by role.
    #[serde(default)]
    pub roles: BTreeMap<String, QueryLimits>,
    /// Per-query limits by principal name.
    #[serde(default)]
    pub principals: BTreeMap<String, QueryLimits>,
}

/// Limits on one query (and on how many one principal runs at once).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryLimits {
    /// Memory one query may reserve; it spills, or fails, past it.
    #[serde(default)]
    pub query_memory: Option<ByteSize>,
    /// Wall-clock time from the start of execution; the query is cancelled
    /// past it.
    #[serde(default)]
    pub query_timeout: Option<DurationSpec>,
    /// Queries this principal runs at once; more wait in the queue.
    #[serde(default)]
    pub max_concurrent_queries: Option<usize>,
    /// Rows a result may have; the query fails past it.
    #[serde(default)]
    pub max_result_rows: Option<u64>,
    /// Arrow bytes a result may have; the query fails past it.
    #[serde(default)]
    pub max_result_bytes: Option<ByteSize>,
}

/// The limits that apply to one principal's queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolvedLimits {
    /// Bytes of memory per query.
    pub query_memory: Option<u64>,
    /// Time per query.
    pub query_timeout: Option<Duration>,
    /// Concurrent queries of this principal.
    pub max_concurrent_queries: Option<usize>,
    /// Result rows per query.
    pub max_result_rows: Option<u64>,
    /// Result bytes per query.
    pub max_result_bytes: Option<u64>,
}

/// Default of `limits.max_statement_bytes`.
pub const DEFAULT_MAX_STATEMENT_BYTES: u64 = 1 << 20;
/// Default of `limits.max_expression_depth`.
pub const DEFAULT_MAX_EXPRESSION_DEPTH: usize = 1000;
/// Default of `limits.max_sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Default of `limits.max_sessions_per_principal`.
pub const DEFAULT_MAX_SESSIONS_PER_PRINCIPAL: usize = 64;
/// Largest output of one function call when no memory limit bounds it.
pub const DEFAULT_MAX_FUNCTION_OUTPUT: u64 = 1 << 30;

impl LimitsConfig {
    /// The largest output one call of a function that grows with its
    /// arguments may produce for `limits` of one query: the query's memory
    /// limit, else the server's, else 1 GiB.
    pub fn max_function_output(&self, query: &ResolvedLimits) -> u64 {
        query
            .query_memory
            .or(self.memory.map(|m| m.0))
            .unwrap_or(DEFAULT_MAX_FUNCTION_OUTPUT)
    }

    /// The limits for `principal` (see the module docs for the order).
    pub fn for_principal(&self, principal: &Principal) -> ResolvedLimits {
        let own = principal
            .name
            .as_deref()
            .and_then(|n| self.principals.get(n));
        let roles: Vec<&QueryLimits> = principal
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .collect();
        fn pick<T: Copy + Ord>(
            own: Option<&QueryLimits>,
            roles: &[&QueryLimits],
            defaults: &QueryLimits,
            field: impl Fn(&QueryLimits) -> Option<T>,
        ) -> Option<T> {
            if let Some(v) = own.and_then(&field) {
                return Some(v);
            }
            if let Some(v) = roles.iter().filter_map(|l| field(l)).max() {
                return Some(v);
            }
            field(defaults)
        }
        let d = &self.defaults;
        ResolvedLimits {
            query_memory: pick(own, &roles, d, |l| l.query_memory.map(|b| b.0)),
            query_timeout: pick(own, &roles, d, |l| l.query_timeout.map(|t| t.0)),
            max_concurrent_queries: pick(own, &roles, d, |l| l.max_concurrent_queries),
            max_result_rows: pick(own, &roles, d, |l| l.max_result_rows),
            max_result_bytes: pick(own, &roles, d, |l| l.max_result_bytes.map(|b| b.0)),
        }
    }
}

/// A size in bytes: an integer, or a number with a unit (`512MiB`, `2GB`,
/// `64k`). Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024,
/// decimal ones (`KB`, `MB`, `GB`, `TB`) powers of 1000; a bare `k`, `m`,
/// `g` is binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `text`; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a size; write e.g. 536870912, 512MiB or 2GB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}`; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                ));
            }
        };
        Ok(Self((num * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(n)),
            Raw::Text(s) => Self::parse(&s).map_err(D::Error::custom),
        }
    }
}

/// A duration: `500ms`, `30s`, `5m`, `2h`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationSpec(pub Duration);

impl DurationSpec {
    /// Parses `text`; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("`{text}` is not a duration; write e.g. 500ms, 30s, 5m or 2h");
        let num: f64 = num.parse().map_err(|_| bad())?;
        let secs = match unit.trim() {
            "ms" => num / 1000.0,
            "" | "s" => num,
            "m" | "min" => num * 60.0,
            "h" => num * 3600.0,
            _ => return Err(bad()),
        };
        Ok(Self(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(Duration::from_secs(n))),
            Raw::Float(f) if f >= 0.0 && f.is_finite() => Ok(Self(Duration::from_secs_f64(f))),
            Raw::Float(f) => Err(D::Error::custom(format!("`{f}` is not a duration"))),
            Raw::Text(s) => Self::parse(&s).map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(ByteSize::parse("512MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("2GB").unwrap().0, 2_000_000_000);
        assert_eq!(ByteSize::parse("64k").unwrap().0, 64 << 10);
        assert_eq!(ByteSize::parse("1.5GiB").unwrap().0, 3 << 29);
        assert_eq!(ByteSize::parse("100").unwrap().0, 100);
        assert!(ByteSize::parse("lots").unwrap_err().contains("not a size"));
        assert!(ByteSize::parse("5 parsecs").unwrap_err().contains("unit"));
        assert_eq!(
            DurationSpec::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            DurationSpec::parse("5m").unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(
            DurationSpec::parse("2h").unwrap().0,
            Duration::from_secs(7200)
        );
        assert!(DurationSpec::parse("soon").is_err());
    }

    #[test]
    fn principal_beats_roles_and_roles_beat_defaults() {
        let yaml = r#"
memory: 1GiB
max_concurrent_queries: 8
defaults: { query_timeout: 30s, max_result_rows: 1000, query_memory: 64MiB }
roles:
  analyst: { query_timeout: 60s }
  etl: { query_timeout: 10m, max_result_rows: 5 }
principals:
  ana: { max_result_rows: 7 }
"#;
        let l: LimitsConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let p = |name: &str, roles: &[&str]| Principal {
            name: Some(name.into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        let ana = l.for_principal(&p("ana", &["analyst"]));
        assert_eq!(ana.max_result_rows, Some(7));
        assert_eq!(ana.query_timeout, Some(Duration::from_secs(60)));
        assert_eq!(ana.query_memory, Some(64 << 20));
        // The most generous role wins for each field.
        let both = l.for_principal(&p("bo", &["analyst", "etl"]));
        assert_eq!(both.query_timeout, Some(Duration::from_secs(600)));
        assert_eq!(both.max_result_rows, Some(5));
        let nobody = l.for_principal(&Principal::anonymous());
        assert_eq!(nobody.query_timeout, Some(Duration::from_secs(30)));
        assert_eq!(nobody.max_concurrent_queries, None);
        assert!(serde_yaml_ng::from_str::<LimitsConfig>("memroy: 1GiB").is_err());
    }
}
