//! Iceberg output ports.
//!
//! A port names its table in one of three ways (see docs/mesh.md):
//! a catalog from `meshq.yaml` plus namespace and table; the table's folder;
//! or one `*.metadata.json` file. The snapshot read is fixed when the mesh
//! is loaded: the current one, or the one the port asks for by id or time.

mod adapter;
mod catalogs;
mod predicate;
mod provider;
mod schema;
mod stats;
mod storage;
#[cfg(feature = "iceberg-writer")]
mod write;

use std::sync::Arc;

use datafusion::catalog::Session;
use futures::TryStreamExt;
use iceberg::io::FileIOBuilder;
use iceberg::spec::TableMetadata;
use iceberg::table::StaticTable;
use iceberg::{NamespaceIdent, TableIdent};

use meshq_catalog::{IcebergSource, Location, TableDef};
use object_store::ObjectStoreExt;

pub use adapter::{FieldIdAdapter, FieldIdAdapterFactory};
pub use catalogs::IcebergCatalogs;
pub use provider::IcebergTableProvider;
pub use schema::{arrow_schema, field_id};
pub use storage::{MeshStorage, MeshStorageFactory};
#[cfg(feature = "iceberg-writer")]
pub use write::{IcebergWriter, WriteError};

use crate::error::{Error, Result};
use crate::store::StoreRegistry;

/// An opened Iceberg table and the folder its files live under.
pub(crate) struct OpenedIceberg {
    pub(crate) provider: Arc<IcebergTableProvider>,
    pub(crate) data_location: String,
    pub(crate) facts: crate::facts::TableFacts,
}

/// Opens the Iceberg table behind `def`.
pub(crate) async fn open_iceberg(
    state: &dyn Session,
    stores: &StoreRegistry,
    catalogs: &IcebergCatalogs,
    def: &TableDef,
) -> Result<OpenedIceberg> {
    let storage = MeshStorage::new(Arc::clone(state.runtime_env()), stores.clone());
    let source = def.source.iceberg.clone().unwrap_or(IcebergSource {
        catalog: None,
        namespace: Vec::new(),
        table: def.name.clone(),
        snapshot_id: None,
        as_of: None,
    });
    let table = match &def.source.location {
        Location::Catalog { catalog, .. } => {
            catalogs
                .load_table(catalog, &source.namespace, &source.table, &storage)
                .await?
        }
        location => {
            let text = match location {
                Location::Local(p) => p.to_string_lossy().into_owned(),
                Location::Url(u) => u.to_string(),
                Location::Catalog { .. } => unreachable!("matched above"),
                Location::Postgres { .. } | Location::FlightSql { .. } | Location::Sql { .. } => {
                    return Err(crate::Error::unsupported(
                        location.to_string(),
                        "an Iceberg table is not in a database or a remote server",
                    ));
                }
            };
            let metadata_file = find_metadata_file(&storage, &text).await?;
            let ident = TableIdent::new(NamespaceIdent::new(def.domain.clone()), def.name.clone());
            let file_io =
                FileIOBuilder::new(Arc::new(MeshStorageFactory::new(storage.clone()))).build();
            StaticTable::from_metadata_file(&metadata_file, ident, file_io)
                .await
                .map_err(|e| {
                    Error::read(
                        format!("cannot read Iceberg metadata `{metadata_file}`"),
                        metadata_file.as_str(),
                        e,
                    )
                })?
                .into_table()
        }
    };
    let metadata = table.metadata();
    check_format(metadata)?;
    let snapshot_id = pick_snapshot(metadata, &source)?;
    let iceberg_schema = match snapshot_id.and_then(|id| metadata.snapshot_by_id(id)) {
        // Time travel reads with the schema of its snapshot.
        Some(s) if source.snapshot_id.is_some() || source.as_of.is_some() => s
            .schema_id()
            .and_then(|id| metadata.schema_by_id(id))
            .unwrap_or_else(|| metadata.current_schema()),
        _ => metadata.current_schema(),
    };
    let views = state
        .config_options()
        .execution
        .parquet
        .schema_force_view_types;
    let schema = arrow_schema(iceberg_schema, views, metadata.location())?;
    let label = format!("`{}` (product `{}`)", def.qualified_name(), def.product_id);
    let data_location = metadata.location().to_string();
    let facts = crate::facts::iceberg_facts(metadata, snapshot_id);
    Ok(OpenedIceberg {
        provider: Arc::new(IcebergTableProvider::new(
            label,
            table.clone(),
            snapshot_id,
            Arc::new(schema),
        )),
        data_location,
        facts,
    })
}

fn check_format(metadata: &TableMetadata) -> Result<()> {
    let version = metadata.format_version() as u8;
    if version > 2 {
        // v3 adds deletion vectors, row lineage and new types; refuse
        // rather than read a subset wrongly.
        return Err(Error::unsupported(
            metadata.location(),
            format!(
                "Iceberg table at `{}` uses format version {version}; meshq reads versions 1 and 2",
                metadata.location()
            ),
        ));
    }
    Ok(())
}

/// The snapshot to read: the one asked for, else the current one.
fn pick_snapshot(metadata: &TableMetadata, source: &IcebergSource) -> Result<Option<i64>> {
    if let Some(id) = source.snapshot_id {
        return match metadata.snapshot_by_id(id) {
            Some(_) => Ok(Some(id)),
            None => Err(Error::invalid(
                metadata.location(),
                format!(
                    "Iceberg table at `{}` has no snapshot {id}; its snapshots are {}",
                    metadata.location(),
                    metadata
                        .snapshots()
                        .map(|s| s.snapshot_id().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        };
    }
    if let Some(as_of) = &source.as_of {
        let t = chrono::DateTime::parse_from_rfc3339(as_of)
            .map_err(|e| {
                Error::invalid(metadata.location(), format!("asOfTimestamp `{as_of}`: {e}"))
            })?
            .timestamp_millis();
        let mut log: Vec<(i64, i64)> = metadata
            .history()
            .iter()
            .map(|l| (l.timestamp_ms, l.snapshot_id))
            .collect();
        if log.is_empty() {
            log = metadata
                .snapshots()
                .map(|s| (s.timestamp_ms(), s.snapshot_id()))
                .collect();
        }
        log.sort();
        return match log.iter().rev().find(|(ts, _)| *ts <= t) {
            Some((_, id)) => Ok(Some(*id)),
            None => Err(Error::invalid(
                metadata.location(),
                format!(
                    "Iceberg table at `{}` has no snapshot at or before {as_of}",
                    metadata.location()
                ),
            )),
        };
    }
    Ok(metadata.current_snapshot_id())
}

/// The metadata file of a table given by folder or by file: a
/// `*.metadata.json` location is used as is; for a folder, the version in
/// `metadata/version-hint.text`, else the highest-numbered metadata file.
async fn find_metadata_file(storage: &MeshStorage, location: &str) -> Result<String> {
    let trimmed = location.trim_end_matches('/');
    if trimmed.ends_with(".metadata.json") {
        return Ok(trimmed.to_string());
    }
    let metadata_dir = format!("{trimmed}/metadata");
    let (store, dir) = storage
        .resolve(&metadata_dir)
        .map_err(|e| Error::read(format!("Iceberg table at `{location}`"), location, e))?;
    let hint_path = dir.clone().join("version-hint.text");
    if let Ok(got) = store.get(&hint_path).await
        && let Ok(bytes) = got.bytes().await
    {
        let hint = String::from_utf8_lossy(&bytes).trim().to_string();
        if !hint.is_empty() {
            let candidate = format!("{metadata_dir}/v{hint}.metadata.json");
            // Only if that file exists; otherwise list, as without a hint.
            if store
                .head(&dir.clone().join(format!("v{hint}.metadata.json")))
                .await
                .is_ok()
            {
                return Ok(candidate);
            }
        }
    }
    let listing: Vec<_> = store.list(Some(&dir)).try_collect().await.map_err(|e| {
        Error::read(
            format!("cannot list Iceberg metadata at `{metadata_dir}`"),
            metadata_dir.as_str(),
            e,
        )
    })?;
    let best = listing
        .iter()
        .filter_map(|m| {
            let name = m.location.filename()?;
            let stem = name.strip_suffix(".metadata.json")?;
            // `v3.metadata.json` or `00003-<uuid>.metadata.json`.
            let number = stem.strip_prefix('v').unwrap_or(stem);
            let number: u64 = number.split('-').next()?.parse().ok()?;
            Some((number, name.to_string()))
        })
        .max();
    match best {
        Some((_, name)) => Ok(format!("{metadata_dir}/{name}")),
        None => Err(Error::invalid(
            location,
            format!("`{location}` is not an Iceberg table: no metadata/*.metadata.json found"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::runtime_env::RuntimeEnv;

    use super::*;

    #[tokio::test]
    async fn finds_the_newest_metadata_file() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("t");
        let meta = table.join("metadata");
        std::fs::create_dir_all(&meta).unwrap();
        let storage = MeshStorage::new(Arc::new(RuntimeEnv::default()), StoreRegistry::default());
        let location = table.to_str().unwrap().to_string();
        let err = find_metadata_file(&storage, &location).await.unwrap_err();
        assert!(err.to_string().contains("is not an Iceberg table"), "{err}");
        for name in [
            "00001-a.metadata.json",
            "00010-b.metadata.json",
            "00002-c.metadata.json",
        ] {
            std::fs::write(meta.join(name), "{}").unwrap();
        }
        let found = find_metadata_file(&storage, &location).await.unwrap();
        assert!(
            found.ends_with("/metadata/00010-b.metadata.json"),
            "{found}"
        );
        // A version hint wins when its file exists, and is ignored when not.
        std::fs::write(meta.join("v3.metadata.json"), "{}").unwrap();
        std::fs::write(meta.join("version-hint.text"), "3\n").unwrap();
        let found = find_metadata_file(&storage, &location).await.unwrap();
        assert!(found.ends_with("/metadata/v3.metadata.json"), "{found}");
        std::fs::write(meta.join("version-hint.text"), "7").unwrap();
        let found = find_metadata_file(&storage, &location).await.unwrap();
        assert!(
            found.ends_with("/metadata/00010-b.metadata.json"),
            "{found}"
        );
        // A metadata file given directly is used as is.
        let file = format!("{location}/metadata/00002-c.metadata.json");
        assert_eq!(find_metadata_file(&storage, &file).await.unwrap(), file);
    }
}
