//! What a table's metadata says about it without reading its rows: how many
//! rows, which version, when it last changed. For discovery (`meta.tables`)
//! and freshness; never a data value.

use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use futures::TryStreamExt;
use meshq_catalog::{Format, Location, TableDef};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

/// Row count, version and last change of a table, each when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableFacts {
    /// Rows in the served version, from metadata (Delta add statistics,
    /// the Iceberg snapshot summary, Parquet footers).
    pub row_count: Option<u64>,
    /// Delta version or Iceberg snapshot id.
    pub version: Option<i64>,
    /// Milliseconds since the epoch: the Delta commit, the Iceberg snapshot,
    /// or the newest data file.
    pub last_modified_ms: Option<i64>,
}

/// Most files listed for a file-based table's facts; beyond, they are
/// unknown rather than slow.
pub const MAX_LISTED_FILES: usize = 10_000;
/// Most Parquet footers read to count a table's rows.
pub const MAX_FOOTERS: usize = 512;

/// The facts of a Delta table's loaded snapshot.
pub(crate) fn delta_facts(table: &deltalake::DeltaTable) -> TableFacts {
    let Ok(snapshot) = table.snapshot() else {
        return TableFacts::default();
    };
    let version = snapshot.version();
    let mut rows: Option<u64> = Some(0);
    let mut newest: Option<i64> = None;
    for file in snapshot.log_data().iter() {
        newest = newest.max(Some(file.modification_time()));
        // Rows under a deletion vector are not all served: unknown.
        rows = match (rows, file.num_records(), file.deletion_vector_descriptor()) {
            (Some(total), Some(n), None) => Some(total + n as u64),
            _ => None,
        };
    }
    TableFacts {
        row_count: rows,
        version: i64::try_from(version).ok(),
        last_modified_ms: snapshot.version_timestamp(version).or(newest),
    }
}

/// The facts of the Iceberg snapshot a table reads.
pub(crate) fn iceberg_facts(
    metadata: &iceberg::spec::TableMetadata,
    snapshot_id: Option<i64>,
) -> TableFacts {
    let Some(snapshot) = snapshot_id.and_then(|id| metadata.snapshot_by_id(id)) else {
        // No snapshot yet: an empty table.
        return TableFacts {
            row_count: Some(0),
            version: None,
            last_modified_ms: Some(metadata.last_updated_ms()),
        };
    };
    TableFacts {
        row_count: snapshot
            .summary()
            .additional_properties
            .get("total-records")
            .and_then(|v| v.parse().ok()),
        version: Some(snapshot.snapshot_id()),
        last_modified_ms: Some(snapshot.timestamp_ms()),
    }
}

/// The facts of a Parquet, CSV or JSON table: its files' newest
/// modification time and, for Parquet, the rows its footers count. Lists
/// the location through the runtime's object stores (registered when the
/// table was opened).
pub async fn listing_facts(runtime: &RuntimeEnv, def: &TableDef) -> TableFacts {
    let Some((store, files)) = listed_files(runtime, def).await else {
        return TableFacts::default();
    };
    let last_modified_ms = files
        .iter()
        .map(|m| m.last_modified.timestamp_millis())
        .max();
    let row_count = if def.source.format == Format::Parquet && files.len() <= MAX_FOOTERS {
        parquet_rows(&store, &files).await
    } else {
        None
    };
    TableFacts {
        row_count,
        version: None,
        last_modified_ms,
    }
}

/// A fingerprint of a Parquet, CSV or JSON table's file set: every file's
/// path, size, modification time and entity tag. It changes when a file is
/// added, removed or rewritten. `None` when the set cannot be listed (a
/// glob location, more than [`MAX_LISTED_FILES`] files, a storage error) or
/// the table is Delta or Iceberg (their version is the snapshot's).
pub async fn listing_version(runtime: &RuntimeEnv, def: &TableDef) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let (_, mut files) = listed_files(runtime, def).await?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let mut h = std::hash::DefaultHasher::new();
    for f in &files {
        f.location.as_ref().hash(&mut h);
        f.size.hash(&mut h);
        f.last_modified.timestamp_nanos_opt().hash(&mut h);
        f.e_tag.hash(&mut h);
    }
    files.len().hash(&mut h);
    Some(h.finish())
}

/// The data files of a file-based table, listed through the runtime's
/// object stores (registered when the table was opened).
async fn listed_files(
    runtime: &RuntimeEnv,
    def: &TableDef,
) -> Option<(Arc<dyn ObjectStore>, Vec<object_store::ObjectMeta>)> {
    let url = match &def.source.location {
        Location::Local(p) if !p.to_string_lossy().contains(['*', '?', '[']) => {
            url::Url::from_file_path(p).ok()?
        }
        Location::Url(u) if !u.as_str().contains(['*', '?', '[']) => u.clone(),
        _ => return None,
    };
    let store_url = ObjectStoreUrl::parse(&url[..url::Position::BeforePath]).ok()?;
    let store = runtime.object_store(&store_url).ok()?;
    let prefix = StorePath::from_url_path(url.path()).ok()?;
    let ext = match def.source.format {
        Format::Parquet => ".parquet",
        Format::Csv => ".csv",
        Format::Json => ".json",
        Format::Delta | Format::Iceberg | Format::Postgres | Format::FlightSql | Format::Sql => {
            return None;
        }
    };
    let mut files = Vec::new();
    let mut listing = store.list(Some(&prefix));
    while let Some(meta) = listing.try_next().await.ok()? {
        let name = meta.location.filename().unwrap_or_default();
        if name.starts_with(['.', '_']) {
            continue;
        }
        // A single named file is read whatever its extension.
        if meta.location != prefix && !name.ends_with(ext) {
            continue;
        }
        files.push(meta);
        if files.len() > MAX_LISTED_FILES {
            return None;
        }
    }
    drop(listing);
    if files.is_empty() {
        // A single file: `list` of a file path lists nothing on some stores.
        if let Ok(meta) = store.head(&prefix).await {
            files.push(meta);
        }
    }
    Some((store, files))
}

async fn parquet_rows(
    store: &Arc<dyn ObjectStore>,
    files: &[object_store::ObjectMeta],
) -> Option<u64> {
    let mut total = 0u64;
    for meta in files {
        total += footer_rows(store, meta).await?;
    }
    Some(total)
}

/// The row count a Parquet file's footer states: the last 8 bytes give the
/// footer's length and the magic `PAR1`, the footer the metadata.
async fn footer_rows(store: &Arc<dyn ObjectStore>, meta: &object_store::ObjectMeta) -> Option<u64> {
    let size = meta.size;
    if size < 12 {
        return None;
    }
    let tail = store.get_range(&meta.location, size - 8..size).await.ok()?;
    if &tail[4..8] != b"PAR1" {
        return None;
    }
    let len = u64::from(u32::from_le_bytes(tail[0..4].try_into().ok()?));
    if len + 8 > size {
        return None;
    }
    let footer = store
        .get_range(&meta.location, size - 8 - len..size - 8)
        .await
        .ok()?;
    let metadata = ParquetMetaDataReader::decode_metadata(&footer).ok()?;
    u64::try_from(metadata.file_metadata().num_rows()).ok()
}
