//! Naming the product behind a storage failure.
//!
//! A query over an unreachable bucket, a deleted file or a corrupt file fails
//! deep inside a scan, where the error knows a path but not the mesh table.
//! This module classifies such errors and names the table and product whose
//! files failed, so the user knows whom to ask and that other products are
//! unaffected.

use std::collections::BTreeMap;

use datafusion::error::DataFusionError;

/// Where a served table's data is.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Product id.
    pub product: String,
    /// Locations (folders, files or URLs) its files are under.
    pub locations: Vec<String>,
}

/// What kind of storage failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFailureKind {
    /// The store or file could not be reached or read (network, missing
    /// bucket or file, refused credentials). Retrying later may work.
    Unavailable,
    /// A file was read but is not valid (corrupt or truncated).
    Corrupt,
}

/// A storage failure, with the table and product it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFailure {
    /// Kind.
    pub kind: StorageFailureKind,
    /// Message naming table, product and cause.
    pub message: String,
}

fn classify(e: &DataFusionError) -> Option<(StorageFailureKind, String)> {
    let kind = match crate::error::error_kind(e) {
        crate::error::ErrorKind::Unavailable => StorageFailureKind::Unavailable,
        crate::error::ErrorKind::DataLoss => StorageFailureKind::Corrupt,
        _ => return None,
    };
    Some((kind, meshq_connectors::describe(e)))
}

/// The comparable key of a location: `bucket/prefix` for URLs, the path for
/// local files.
fn location_key(location: &str) -> String {
    let l = location.strip_prefix("file://").unwrap_or(location);
    let l = match l.split_once("://") {
        Some((_, rest)) => rest,
        None => l,
    };
    l.trim_end_matches('/').to_string()
}

/// Describes `e` when it is a storage failure of one of `tables` (the mesh
/// tables the query read), naming the table whose location appears in the
/// error, else every table read.
pub fn storage_failure(
    e: &DataFusionError,
    tables: &[String],
    sources: &BTreeMap<String, SourceInfo>,
) -> Option<StorageFailure> {
    let (kind, cause) = classify(e)?;
    let known: Vec<(&String, &SourceInfo)> = tables
        .iter()
        .filter_map(|t| sources.get(t).map(|s| (t, s)))
        .collect();
    if known.is_empty() {
        return None;
    }
    let matching: Vec<(&String, &SourceInfo)> = known
        .iter()
        .copied()
        .filter(|(_, s)| {
            s.locations.iter().any(|l| {
                let key = location_key(l);
                !key.is_empty() && cause.contains(&key)
            })
        })
        .collect();
    let candidates = if matching.is_empty() { known } else { matching };
    let named = match candidates.as_slice() {
        [(t, s)] => format!("table `{t}` (product `{}`)", s.product),
        many => format!(
            "one of tables {}",
            many.iter()
                .map(|(t, s)| format!("`{t}` (product `{}`)", s.product))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let message = match kind {
        StorageFailureKind::Unavailable => format!(
            "{named}: its storage could not be read: {cause}. Other products are not affected; retry once the storage is back, or tell the product's owners"
        ),
        StorageFailureKind::Corrupt => format!(
            "{named}: a data file is not valid: {cause}. Tell the product's owners; other products are not affected"
        ),
    };
    Some(StorageFailure { kind, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> BTreeMap<String, SourceInfo> {
        BTreeMap::from([
            (
                "a.x".to_string(),
                SourceInfo {
                    product: "urn:p:x".into(),
                    locations: vec!["s3://bucket/x/".into()],
                },
            ),
            (
                "b.y".to_string(),
                SourceInfo {
                    product: "urn:p:y".into(),
                    locations: vec!["/data/y".into()],
                },
            ),
        ])
    }

    #[test]
    fn names_the_table_whose_files_failed() {
        let e = DataFusionError::IoError(std::io::Error::other(
            "GET http://127.0.0.1:9/bucket/x/part-0.parquet: connection refused",
        ));
        let f = storage_failure(&e, &["a.x".into(), "b.y".into()], &sources()).unwrap();
        assert_eq!(f.kind, StorageFailureKind::Unavailable);
        assert!(
            f.message.starts_with("table `a.x` (product `urn:p:x`)"),
            "{}",
            f.message
        );
        let e = DataFusionError::ParquetError(Box::new(parquet::errors::ParquetError::General(
            "bad footer in /data/y/f.parquet".into(),
        )));
        let f = storage_failure(&e, &["a.x".into(), "b.y".into()], &sources()).unwrap();
        assert_eq!(f.kind, StorageFailureKind::Corrupt);
        assert!(f.message.starts_with("table `b.y`"), "{}", f.message);
        // A file the Parquet reader could not fetch is missing, not corrupt.
        let e = DataFusionError::ParquetError(Box::new(parquet::errors::ParquetError::External(
            Box::new(object_store::Error::NotFound {
                path: "/data/y/f.parquet".into(),
                source: "gone".into(),
            }),
        )));
        let f = storage_failure(&e, &["a.x".into(), "b.y".into()], &sources()).unwrap();
        assert_eq!(f.kind, StorageFailureKind::Unavailable);
        assert!(f.message.starts_with("table `b.y`"), "{}", f.message);
        // No path in the cause: every table read is named.
        let e = DataFusionError::IoError(std::io::Error::other("timed out"));
        let f = storage_failure(&e, &["a.x".into(), "b.y".into()], &sources()).unwrap();
        assert!(
            f.message.starts_with("one of tables `a.x`"),
            "{}",
            f.message
        );
        // Not storage errors: a plan error, and a policy denial (carried as
        // External like storage errors can be).
        let e = DataFusionError::Plan("nope".into());
        assert!(storage_failure(&e, &["a.x".into()], &sources()).is_none());
        let denied: DataFusionError = crate::policy::PolicyError::Lockdown {
            what: "SET".into(),
            admin_role: "admin".into(),
        }
        .into();
        assert!(storage_failure(&denied, &["a.x".into()], &sources()).is_none());
        let store = DataFusionError::External(Box::new(object_store::Error::NotFound {
            path: "bucket/x/f.parquet".into(),
            source: "gone".into(),
        }));
        let f = storage_failure(&store, &["a.x".into(), "b.y".into()], &sources()).unwrap();
        assert_eq!(f.kind, StorageFailureKind::Unavailable);
        assert!(f.message.starts_with("table `a.x`"), "{}", f.message);
    }
}
