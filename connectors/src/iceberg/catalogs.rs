//! The Iceberg catalogs `meshq.yaml` declares, connected on first use and
//! shared by every table that names them: SQL catalogs (the `iceberg_tables`
//! layout of PyIceberg's `SqlCatalog` and Java's `JdbcCatalog`, in SQLite)
//! and REST catalogs (`iceberg-catalog-rest`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use std::str::FromStr;

use iceberg::io::FileIOBuilder;
use iceberg::table::{StaticTable, Table};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use meshq_catalog::platform::CatalogConfig;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::sync::Mutex;

use super::storage::{MeshStorage, MeshStorageFactory};
use crate::error::{Error, Result};

/// Connected catalogs by name.
#[derive(Debug, Default)]
pub struct IcebergCatalogs {
    configs: BTreeMap<String, CatalogConfig>,
    connected: Mutex<HashMap<String, Connected>>,
}

/// A connected catalog.
#[derive(Debug, Clone)]
enum Connected {
    Sql(SqlCatalogReader),
    Rest(Arc<dyn Catalog>),
}

/// Reads a SQL catalog's `iceberg_tables`. The `iceberg-catalog-sql` crate
/// expects the newer JDBC layout with an `iceberg_type` column, which
/// PyIceberg's `SqlCatalog` does not write; this reader needs only the
/// columns both layouts share, and opens the file read-only, so a catalog
/// is never modified by being served.
#[derive(Debug, Clone)]
struct SqlCatalogReader {
    /// The catalog's key in `meshq.yaml`.
    name: String,
    pool: SqlitePool,
    /// The `catalog_name` rows are filed under.
    catalog_name: String,
    uri: String,
}

impl SqlCatalogReader {
    async fn connect(name: &str, uri: &str, catalog_name: String) -> Result<Self> {
        let at = |what: String| format!("Iceberg SQL catalog `{name}`: {what}");
        let options = SqliteConnectOptions::from_str(uri)
            .map_err(|e| Error::read(at(format!("`{uri}` is not a SQLite URL or path")), uri, e))?
            .read_only(true)
            .create_if_missing(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| Error::read(at(format!("cannot open `{uri}`")), uri, e))?;
        Ok(Self {
            name: name.to_string(),
            pool,
            catalog_name,
            uri: uri.to_string(),
        })
    }

    async fn metadata_location(&self, namespace: &str, table: &str) -> Result<String> {
        let at = |what: String| format!("Iceberg SQL catalog `{}`: {what}", self.name);
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
        )
        .bind(&self.catalog_name)
        .bind(namespace)
        .bind(table)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| {
            Error::read(
                at(format!("cannot read `iceberg_tables` in `{}`", self.uri)),
                self.uri.as_str(),
                e,
            )
        })?;
        match row {
            Some((Some(location),)) => Ok(location),
            Some((None,)) => Err(Error::config(
                &self.name,
                at(format!(
                    "table `{namespace}.{table}` has no metadata location in `{}`",
                    self.uri
                )),
            )),
            None => {
                let known: Vec<(String, String)> = sqlx::query_as(
                    "SELECT table_namespace, table_name FROM iceberg_tables \
                     WHERE catalog_name = ? ORDER BY 1, 2 LIMIT 20",
                )
                .bind(&self.catalog_name)
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
                let known = if known.is_empty() {
                    format!(
                        "it has no tables under catalog_name `{}` (is `name` in meshq.yaml the name the writer used?)",
                        self.catalog_name
                    )
                } else {
                    format!(
                        "it has {}",
                        known
                            .iter()
                            .map(|(n, t)| format!("`{n}.{t}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                Err(Error::config(
                    &self.name,
                    at(format!(
                        "table `{namespace}.{table}` is not in the catalog; {known}"
                    )),
                ))
            }
        }
    }
}

impl IcebergCatalogs {
    /// Catalogs from `meshq.yaml`.
    pub fn new(configs: BTreeMap<String, CatalogConfig>) -> Self {
        Self {
            configs,
            connected: Mutex::new(HashMap::new()),
        }
    }

    async fn connect(&self, name: &str, storage: &MeshStorage) -> Result<Connected> {
        let mut connected = self.connected.lock().await;
        if let Some(c) = connected.get(name) {
            return Ok(c.clone());
        }
        let config = self.configs.get(name).ok_or_else(|| {
            Error::config(
                name,
                format!("Iceberg catalog `{name}` is not defined in meshq.yaml"),
            )
        })?;
        let catalog = match config {
            CatalogConfig::Sql {
                uri,
                name: catalog_name,
                ..
            } => {
                let uri = sqlite_uri(uri);
                let reader = SqlCatalogReader::connect(
                    name,
                    &uri,
                    catalog_name.clone().unwrap_or(name.to_string()),
                )
                .await?;
                Connected::Sql(reader)
            }
            CatalogConfig::Rest {
                uri,
                warehouse,
                token,
                credential,
            } => {
                let mut props = HashMap::from([("uri".to_string(), uri.clone())]);
                if let Some(w) = warehouse {
                    props.insert("warehouse".to_string(), w.clone());
                }
                if let Some(t) = token {
                    let v = t.resolve().map_err(|e| {
                        Error::config(name, format!("Iceberg catalog `{name}` token: {e}"))
                    })?;
                    props.insert("token".to_string(), v);
                }
                if let Some(c) = credential {
                    let v = c.resolve().map_err(|e| {
                        Error::config(name, format!("Iceberg catalog `{name}` credential: {e}"))
                    })?;
                    props.insert("credential".to_string(), v);
                }
                let factory = Arc::new(MeshStorageFactory::new(storage.clone()));
                let catalog = RestCatalogBuilder::default()
                    .with_storage_factory(factory)
                    .load(name, props)
                    .await
                    .map_err(|e| {
                        Error::read(
                            format!("cannot open Iceberg REST catalog `{name}` at `{uri}`"),
                            uri.as_str(),
                            e,
                        )
                    })?;
                Connected::Rest(Arc::new(catalog))
            }
        };
        connected.insert(name.to_string(), catalog.clone());
        Ok(catalog)
    }

    /// Loads table `namespace.table` from catalog `name`. The error names
    /// the catalog and the cause, never a credential.
    pub async fn load_table(
        &self,
        name: &str,
        namespace: &[String],
        table: &str,
        storage: &MeshStorage,
    ) -> Result<Table> {
        let qualified = format!("{}.{table}", namespace.join("."));
        let namespace_ident = NamespaceIdent::from_vec(namespace.to_vec()).map_err(|e| {
            Error::read(
                format!("Iceberg namespace of `{qualified}`"),
                qualified.as_str(),
                e,
            )
        })?;
        let ident = TableIdent::new(namespace_ident, table.to_string());
        match self.connect(name, storage).await? {
            Connected::Sql(reader) => {
                let location = reader
                    .metadata_location(&namespace.join("."), table)
                    .await?;
                let file_io =
                    FileIOBuilder::new(Arc::new(MeshStorageFactory::new(storage.clone()))).build();
                StaticTable::from_metadata_file(&location, ident, file_io)
                    .await
                    .map(StaticTable::into_table)
                    .map_err(|e| {
                        Error::read(
                            format!(
                                "table `{qualified}` in catalog `{name}`: cannot read metadata `{location}`"
                            ),
                            location.as_str(),
                            e,
                        )
                    })
            }
            Connected::Rest(catalog) => catalog.load_table(&ident).await.map_err(|e| {
                Error::read(
                    format!("cannot load table `{qualified}` from Iceberg REST catalog `{name}`"),
                    qualified.as_str(),
                    e,
                )
            }),
        }
    }
}

/// A `sqlite:` URL for a catalog `uri` that may be a bare file path. The
/// file must exist: meshq reads catalogs, it does not create them.
fn sqlite_uri(uri: &str) -> String {
    if uri.contains(':') && !uri.starts_with('/') {
        uri.to_string()
    } else {
        format!("sqlite://{uri}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_paths_become_sqlite_urls() {
        assert_eq!(sqlite_uri("/m/catalog.db"), "sqlite:///m/catalog.db");
        assert_eq!(sqlite_uri("sqlite:///m/c.db"), "sqlite:///m/c.db");
    }
}
