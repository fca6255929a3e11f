//! `acceleration`: a port served from a local copy of its table.
//!
//! ```yaml
//! # the product's output port customProperties, or the contract's server
//! # entry (both work; the port wins)
//! customProperties:
//!   - property: acceleration
//!     value: { engine: memory, refresh: on-change, maxStaleness: 10m }
//! ```
//!
//! `materialize`: a product defined by SQL computed as its service
//! principal and written where its team chooses, then served from there.
//!
//! ```yaml
//! customProperties:
//!   - property: materialize
//!     value: { format: delta, location: ./build/profile_360, refresh: on-change }
//! ```

use std::time::Duration;

use serde_yaml_ng::Value;

use crate::limits::DurationSpec;

/// Where the copy is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelerationEngine {
    /// Arrow record batches in memory, accounted in the memory pool.
    Memory,
    /// Parquet files: on the server's local disk (`acceleration`), or at
    /// the team's location (`materialize`).
    Parquet,
    /// A Delta table at the team's location, one commit per refresh
    /// (`materialize` only).
    Delta,
}

impl AccelerationEngine {
    /// As written in the contract.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Parquet => "parquet",
            Self::Delta => "delta",
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceleration {
    /// Where the copy is kept.
    pub engine: AccelerationEngine,
    /// When it is rebuilt.
    pub refresh: Refresh,
    /// How long the last good copy is served while refreshes fail; past
    /// it, queries read the source. Unbounded when unset.
    pub max_staleness: Option<Duration>,
    /// Where the copy is written when the product is materialised (a
    /// directory URL, `file://` for a local path): kept across restarts,
    /// readable by the team's other tools. `None`: a server-local copy.
    pub location: Option<url::Url>,
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
        for (key, text) in entries(map, "acceleration")? {
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
                "refresh" => refresh = parse_refresh(&text, "acceleration")?,
                "maxStaleness" => max_staleness = Some(parse_staleness(&text, "acceleration")?),
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
            location: None,
        })
    }

    /// Reads a `materialize` value; a relative `location` is resolved
    /// against `base` (the folder of the file that declares it).
    pub fn parse_materialize(value: &Value, base: &std::path::Path) -> Result<Self, String> {
        let Value::Mapping(map) = value else {
            return Err(
                "customProperty `materialize` must be a mapping, e.g. { format: delta, location: ./build/table, refresh: on-change }"
                    .into(),
            );
        };
        let mut engine = None;
        let mut location = None;
        let mut refresh = Refresh::OnChange;
        let mut max_staleness = None;
        for (key, text) in entries(map, "materialize")? {
            match key {
                "format" => {
                    engine = Some(match text.as_str() {
                        "parquet" => AccelerationEngine::Parquet,
                        "delta" => AccelerationEngine::Delta,
                        other => {
                            return Err(format!(
                                "materialize format `{other}` is not supported; use parquet or delta"
                            ));
                        }
                    })
                }
                "location" => location = Some(location_url(&text, base)?),
                "refresh" => refresh = parse_refresh(&text, "materialize")?,
                "maxStaleness" => max_staleness = Some(parse_staleness(&text, "materialize")?),
                other => {
                    return Err(format!(
                        "materialize has no `{other}`; it takes format, location, refresh and maxStaleness"
                    ));
                }
            }
        }
        let engine = engine.ok_or("materialize needs a `format`: parquet or delta")?;
        let location = location.ok_or(
            "materialize needs a `location`: a folder (relative to this file) or a store URL such as s3://bucket/prefix",
        )?;
        if refresh == Refresh::Every(Duration::ZERO) {
            return Err("materialize refresh interval must be longer than 0".into());
        }
        Ok(Self {
            engine,
            refresh,
            max_staleness,
            location: Some(location),
        })
    }

    /// The local folder of a materialised copy, if it is on this machine.
    pub fn local_dir(&self) -> Option<std::path::PathBuf> {
        self.location
            .as_ref()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok())
    }
}

/// The entries of the property `what`'s mapping, each value as text.
fn entries<'a>(
    map: &'a serde_yaml_ng::Mapping,
    what: &str,
) -> Result<Vec<(&'a str, String)>, String> {
    map.iter()
        .map(|(k, v)| {
            let key = k.as_str().unwrap_or_default();
            match v {
                Value::String(s) => Ok((key, s.clone())),
                Value::Number(n) => Ok((key, n.to_string())),
                _ => Err(format!("{what} `{key}` must be a string")),
            }
        })
        .collect()
}

/// `on-change` or an interval, for the property `what`.
fn parse_refresh(text: &str, what: &str) -> Result<Refresh, String> {
    Ok(match text {
        "on-change" => Refresh::OnChange,
        interval => Refresh::Every(
            DurationSpec::parse(interval)
                .map_err(|e| format!("{what} refresh: {e}, or on-change"))?
                .0,
        ),
    })
}

/// A `maxStaleness`, for the property `what`.
fn parse_staleness(text: &str, what: &str) -> Result<Duration, String> {
    Ok(DurationSpec::parse(text)
        .map_err(|e| format!("{what} maxStaleness: {e}"))?
        .0)
}

/// A `location` as a directory URL (with a trailing slash).
fn location_url(text: &str, base: &std::path::Path) -> Result<url::Url, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("materialize `location` is empty".into());
    }
    if text.contains(['*', '?', '[']) {
        return Err(format!(
            "materialize location `{text}` is a pattern; give one folder"
        ));
    }
    let mut url = if text.contains("://") {
        url::Url::parse(text).map_err(|e| format!("materialize location `{text}`: {e}"))?
    } else {
        let path = crate::load::normalize(&base.join(text));
        url::Url::from_directory_path(&path)
            .map_err(|()| format!("materialize location `{text}` is not a usable path"))?
    };
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    if url.path() == "/" {
        return Err(format!(
            "materialize location `{text}` is the root of its store; give a folder under it"
        ));
    }
    Ok(url)
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
        assert!(
            parse("{ engine: delta }")
                .unwrap_err()
                .contains("memory or parquet")
        );
    }

    fn materialize(yaml: &str) -> Result<Acceleration, String> {
        Acceleration::parse_materialize(
            &serde_yaml_ng::from_str(yaml).unwrap(),
            std::path::Path::new("/mesh/c360"),
        )
    }

    #[test]
    fn materialize_values() {
        let m = materialize("{ format: delta, location: ../build/p360, refresh: 1h }").unwrap();
        assert_eq!(m.engine, AccelerationEngine::Delta);
        assert_eq!(m.refresh, Refresh::Every(Duration::from_secs(3600)));
        assert_eq!(m.location.unwrap().as_str(), "file:///mesh/build/p360/");
        let m = materialize("{ format: parquet, location: \"s3://lake/c360\" }").unwrap();
        assert_eq!(m.engine, AccelerationEngine::Parquet);
        assert_eq!(m.refresh, Refresh::OnChange);
        assert_eq!(m.location.unwrap().as_str(), "s3://lake/c360/");
        for (bad, says) in [
            ("{ location: ./x }", "needs a `format`"),
            ("{ format: delta }", "needs a `location`"),
            ("{ format: memory, location: ./x }", "parquet or delta"),
            ("{ format: delta, location: \"./x/*\" }", "pattern"),
            (
                "{ format: delta, location: \"s3://lake\" }",
                "root of its store",
            ),
            ("{ format: delta, location: ./x, engine: y }", "no `engine`"),
            ("delta", "mapping"),
        ] {
            let e = materialize(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
