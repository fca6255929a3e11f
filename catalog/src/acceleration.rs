//! `acceleration`: a port served from a local copy of its table.
//!
//! ```yaml
//! # the product's output port customProperties, or the contract's server
//! # entry (both work; the port wins)
//! customProperties:
//!   - property: acceleration
//!     value: { engine: memory, refresh: on-change, maxStaleness: 10m }
//! ```

use std::time::Duration;

use serde_yaml_ng::Value;

use crate::limits::DurationSpec;

/// Where the copy is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelerationEngine {
    /// Arrow record batches in memory, accounted in the memory pool.
    Memory,
    /// Parquet files on the server's local disk, for tables larger than
    /// memory.
    Parquet,
}

impl AccelerationEngine {
    /// As written in the contract.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Parquet => "parquet",
        }
    }
}

/// When the copy is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// When the source's version changes (Delta version, Iceberg snapshot,
    /// file set), checked on the server's reload interval.
    OnChange,
    /// On a timer.
    Every(Duration),
}

/// A port's acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acceleration {
    /// Where the copy is kept.
    pub engine: AccelerationEngine,
    /// When it is rebuilt.
    pub refresh: Refresh,
    /// How long the last good copy is served while refreshes fail; past
    /// it, queries read the source. Unbounded when unset.
    pub max_staleness: Option<Duration>,
}

impl Acceleration {
    /// Reads a `value:`; the error says what is accepted.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let Value::Mapping(map) = value else {
            return Err(
                "customProperty `acceleration` must be a mapping, e.g. { engine: memory, refresh: on-change, maxStaleness: 10m }"
                    .into(),
            );
        };
        let mut engine = None;
        let mut refresh = Refresh::OnChange;
        let mut max_staleness = None;
        for (k, v) in map {
            let key = k.as_str().unwrap_or_default();
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(format!("acceleration `{key}` must be a string")),
            };
            match key {
                "engine" => {
                    engine = Some(match text.as_str() {
                        "memory" => AccelerationEngine::Memory,
                        "parquet" => AccelerationEngine::Parquet,
                        other => {
                            return Err(format!(
                                "acceleration engine `{other}` is not supported; use memory or parquet"
                            ));
                        }
                    })
                }
                "refresh" => {
                    refresh = match text.as_str() {
                        "on-change" => Refresh::OnChange,
                        interval => Refresh::Every(
                            DurationSpec::parse(interval)
                                .map_err(|e| format!("acceleration refresh: {e}, or on-change"))?
                                .0,
                        ),
                    }
                }
                "maxStaleness" => {
                    max_staleness = Some(
                        DurationSpec::parse(&text)
                            .map_err(|e| format!("acceleration maxStaleness: {e}"))?
                            .0,
                    )
                }
                other => {
                    return Err(format!(
                        "acceleration has no `{other}`; it takes engine, refresh and maxStaleness"
                    ));
                }
            }
        }
        let engine = engine.ok_or("acceleration needs an `engine`: memory or parquet")?;
        if refresh == Refresh::Every(Duration::ZERO) {
            return Err("acceleration refresh interval must be longer than 0".into());
        }
        Ok(Self {
            engine,
            refresh,
            max_staleness,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Acceleration, String> {
        Acceleration::parse(&serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn values() {
        let a = parse("{ engine: memory, refresh: on-change, maxStaleness: 10m }").unwrap();
        assert_eq!(a.engine, AccelerationEngine::Memory);
        assert_eq!(a.refresh, Refresh::OnChange);
        assert_eq!(a.max_staleness, Some(Duration::from_secs(600)));
        let a = parse("{ engine: parquet, refresh: 5m }").unwrap();
        assert_eq!(a.refresh, Refresh::Every(Duration::from_secs(300)));
        assert_eq!(a.max_staleness, None);
        assert!(
            parse("{ engine: duckdb }")
                .unwrap_err()
                .contains("memory or parquet")
        );
        assert!(
            parse("{ refresh: 5m }")
                .unwrap_err()
                .contains("needs an `engine`")
        );
        assert!(
            parse("{ engine: memory, refresh: often }")
                .unwrap_err()
                .contains("on-change")
        );
        assert!(
            parse("{ engine: memory, size: 1 }")
                .unwrap_err()
                .contains("no `size`")
        );
        assert!(parse("memory").unwrap_err().contains("mapping"));
    }
}
