//! Materialised products: a product's rows written where its team chose,
//! as a Delta table (one commit per build) or as Parquet files (a folder
//! per build and a manifest naming the current one), each with a record of
//! what it was built from. A restart reads the record and serves the last
//! build without computing it again when its inputs have not changed.
//!
//! The record is the Delta commit's `meshq` entry (commit info, kept by the
//! log beside the operation) or `_meshq_build.json` next to the Parquet
//! builds. Only meshq writes there: the engine refuses other tables and
//! file access under a materialisation's folder.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::datasource::TableProvider;
use datafusion::execution::object_store::ObjectStoreUrl;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use url::Url;

/// What a build was made from, kept with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    /// The engine's version of the product's inputs (principal, policies,
    /// input versions): a build of the same version holds the same rows.
    pub version: String,
    /// Milliseconds since the epoch.
    pub built_at_ms: i64,
    /// The source tables it was computed from, `domain.table@version`.
    pub built_from: Vec<String>,
    /// The build's folder under the location (Parquet builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

/// A build, ready to serve.
#[derive(Debug)]
pub struct Build {
    /// Its rows, in the schema it was asked for.
    pub provider: Arc<dyn TableProvider>,
    /// What it was built from.
    pub record: BuildRecord,
    /// Bytes of its data files.
    pub bytes: u64,
}

/// The name of the Parquet builds' manifest under the location.
pub const MANIFEST: &str = "_meshq_build.json";

/// Types a Delta table can hold for `field`'s: views and large variants as
/// their plain forms, timestamps in microseconds. The table is read back
/// in the product's own types.
fn delta_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        other => other.clone(),
    }
}

fn for_delta(batches: Vec<RecordBatch>, schema: &SchemaRef) -> Result<Vec<RecordBatch>, String> {
    let target = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), delta_type(f.data_type()), f.is_nullable()))
            .collect::<Vec<_>>(),
    ));
    let mut out = Vec::with_capacity(batches.len().max(1));
    for b in batches {
        let columns = b
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot convert the rows for Delta: {e}"))?;
        out.push(
            RecordBatch::try_new(Arc::clone(&target), columns)
                .map_err(|e| format!("cannot convert the rows for Delta: {e}"))?,
        );
    }
    if out.is_empty() {
        // An empty product is still a table, with its schema.
        out.push(RecordBatch::new_empty(target));
    }
    Ok(out)
}

/// The Delta table at `url` (a folder URL), not loaded; over the session's
/// object store for a remote location.
fn delta_builder(state: &dyn Session, url: &Url) -> Result<deltalake::DeltaTableBuilder, String> {
    crate::open::register_delta_log_stores();
    let mut builder =
        deltalake::DeltaTableBuilder::from_url(url.clone()).map_err(|e| e.to_string())?;
    if url.scheme() != "file" {
        let store_url =
            ObjectStoreUrl::parse(&url[..url::Position::BeforePath]).map_err(|e| e.to_string())?;
        let store = state
            .runtime_env()
            .object_store(&store_url)
            .map_err(|e| e.to_string())?;
        builder = builder.with_storage_backend(store, url.clone());
    }
    Ok(builder)
}

/// The provider of a Delta table this module wrote, in `schema`.
fn delta_build(
    table: &deltalake::DeltaTable,
    url: &Url,
    schema: &SchemaRef,
    record: BuildRecord,
) -> Result<Build, String> {
    let provider = crate::delta::native_provider(table, url, false)?
        .ok_or("the materialised Delta table needs delta-rs's own scan (deletion vectors or column mapping), which meshq does not write")?
        .with_table_schema(Arc::clone(schema))?;
    let bytes = provider.bytes();
    Ok(Build {
        provider: Arc::new(provider),
        record,
        bytes,
    })
}

/// Writes `batches` (in `schema`) as the new version of the Delta table at
/// `url`, creating it the first time: one overwrite commit carrying
/// `record`.
pub async fn write_delta(
    state: &dyn Session,
    url: &Url,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    record: BuildRecord,
) -> Result<Build, String> {
    let mut exists = true;
    if let Some(dir) = local_dir(url) {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        exists = dir.join("_delta_log").exists();
    }
    let mut table = delta_builder(state, url)?
        .build()
        .map_err(|e| format!("Delta table at `{url}`: {e}"))?;
    if exists {
        match table.load().await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => {}
            Err(e) => return Err(format!("cannot read the Delta table at `{url}`: {e}")),
        }
    }
    let metadata = serde_json::to_value(&record).map_err(|e| e.to_string())?;
    let table = table
        .write(for_delta(batches, schema)?)
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
        .with_commit_properties(
            CommitProperties::default().with_metadata([("meshq".to_string(), metadata)]),
        )
        .await
        .map_err(|e| format!("cannot write the Delta table at `{url}`: {e}"))?;
    delta_build(&table, url, schema, record)
}

/// The last build of the Delta table at `url`, if meshq wrote its latest
/// commit.
pub async fn last_delta(
    state: &dyn Session,
    url: &Url,
    schema: &SchemaRef,
) -> Result<Option<Build>, String> {
    if local_dir(url).is_some_and(|d| !d.join("_delta_log").exists()) {
        return Ok(None);
    }
    let mut table = delta_builder(state, url)?
        .build()
        .map_err(|e| format!("Delta table at `{url}`: {e}"))?;
    match table.load().await {
        Ok(()) => {}
        Err(DeltaTableError::NotATable(_)) => return Ok(None),
        Err(e) => return Err(format!("cannot read the Delta table at `{url}`: {e}")),
    }
    let mut history = table.history(Some(1));
    let Some(last) = history.next().await else {
        return Ok(None);
    };
    let last = last.map_err(|e| format!("cannot read the Delta log at `{url}`: {e}"))?;
    let Some(record) = last
        .info
        .get("meshq")
        .and_then(|v| serde_json::from_value::<BuildRecord>(v.clone()).ok())
    else {
        return Ok(None);
    };
    drop(history);
    delta_build(&table, url, schema, record).map(Some)
}

/// The folder of a `file://` location.
fn local_dir(url: &Url) -> Option<std::path::PathBuf> {
    (url.scheme() == "file")
        .then(|| url.to_file_path().ok())
        .flatten()
}

/// The object store and root path of a location URL.
pub fn store_of(state: &dyn Session, url: &Url) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    let store_url =
        ObjectStoreUrl::parse(&url[..url::Position::BeforePath]).map_err(|e| e.to_string())?;
    let store = state
        .runtime_env()
        .object_store(&store_url)
        .map_err(|e| format!("no store for `{url}`: {e}"))?;
    let root = Path::from_url_path(url.path()).map_err(|e| e.to_string())?;
    Ok((store, root))
}

/// The record of the current Parquet build at `url`, if there is one.
pub async fn parquet_manifest(
    state: &dyn Session,
    url: &Url,
) -> Result<Option<BuildRecord>, String> {
    let (store, root) = store_of(state, url)?;
    let path = root.clone().join(MANIFEST);
    match store.get(&path).await {
        Ok(got) => {
            let bytes = got
                .bytes()
                .await
                .map_err(|e| format!("cannot read `{url}{MANIFEST}`: {e}"))?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("`{url}{MANIFEST}` is not a meshq build record: {e}"))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("cannot read `{url}{MANIFEST}`: {e}")),
    }
}

/// Makes `record` (whose folder holds the new build) current, then removes
/// the builds older than the one it replaces (kept for queries still
/// reading it).
pub async fn commit_parquet(
    state: &dyn Session,
    url: &Url,
    record: &BuildRecord,
    previous: Option<&BuildRecord>,
) -> Result<(), String> {
    let (store, root) = store_of(state, url)?;
    let json = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    store
        .put(&root.clone().join(MANIFEST), json.into())
        .await
        .map_err(|e| format!("cannot write `{url}{MANIFEST}`: {e}"))?;
    let keep: Vec<&str> = [record, previous.unwrap_or(record)]
        .iter()
        .filter_map(|r| r.folder.as_deref())
        .collect();
    let listed = store
        .list_with_delimiter(Some(&root))
        .await
        .map_err(|e| format!("cannot list `{url}`: {e}"))?;
    for folder in listed.common_prefixes {
        let Some(name) = folder.filename() else {
            continue;
        };
        if !name.starts_with("build-") || keep.contains(&name) {
            continue;
        }
        let files: Vec<_> = store
            .list(Some(&folder))
            .filter_map(|m| async move { m.ok().map(|m| m.location) })
            .collect()
            .await;
        for f in files {
            // A file that cannot be removed is left; the next build tries
            // again.
            let _ = store.delete(&f).await;
        }
        // A local store leaves the emptied folder.
        if url.scheme() == "file"
            && let Ok(dir) = url.join(&format!("{name}/"))
            && let Ok(dir) = dir.to_file_path()
        {
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(())
}
