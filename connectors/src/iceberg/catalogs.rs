//! The Iceberg catalogs `meshq.yaml` declares, connected on first use and
//! shared by every table that names them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use meshq_catalog::platform::CatalogConfig;
use tokio::sync::Mutex;

use super::storage::{MeshStorage, MeshStorageFactory};

/// Connected catalogs by name.
#[derive(Debug, Default)]
pub struct IcebergCatalogs {
    configs: BTreeMap<String, CatalogConfig>,
    connected: Mutex<HashMap<String, Arc<dyn Catalog>>>,
}

impl IcebergCatalogs {
    /// Catalogs from `meshq.yaml`.
    pub fn new(configs: BTreeMap<String, CatalogConfig>) -> Self {
        Self {
            configs,
            connected: Mutex::new(HashMap::new()),
        }
    }

    /// The catalog `name`, connecting it the first time. The error names
    /// the catalog and the cause, never a credential.
    pub async fn get(&self, name: &str, storage: &MeshStorage) -> Result<Arc<dyn Catalog>, String> {
        let mut connected = self.connected.lock().await;
        if let Some(c) = connected.get(name) {
            return Ok(Arc::clone(c));
        }
        let config = self
            .configs
            .get(name)
            .ok_or_else(|| format!("Iceberg catalog `{name}` is not defined in meshq.yaml"))?;
        let factory = Arc::new(MeshStorageFactory::new(storage.clone()));
        let catalog: Arc<dyn Catalog> = match config {
            CatalogConfig::Sql {
                uri,
                name: catalog_name,
                warehouse,
            } => {
                let uri = sqlite_uri(uri);
                let mut props = HashMap::from([
                    ("uri".to_string(), uri.clone()),
                    (
                        "sql_bind_style".to_string(),
                        SqlBindStyle::QMark.to_string(),
                    ),
                ]);
                if let Some(w) = warehouse {
                    props.insert("warehouse".to_string(), w.clone());
                }
                let catalog = SqlCatalogBuilder::default()
                    .with_storage_factory(factory)
                    .load(catalog_name.as_deref().unwrap_or(name), props)
                    .await
                    .map_err(|e| {
                        format!("cannot open Iceberg SQL catalog `{name}` at `{uri}`: {e}")
                    })?;
                Arc::new(catalog)
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
                    let v = t
                        .resolve()
                        .map_err(|e| format!("Iceberg catalog `{name}` token: {e}"))?;
                    props.insert("token".to_string(), v);
                }
                if let Some(c) = credential {
                    let v = c
                        .resolve()
                        .map_err(|e| format!("Iceberg catalog `{name}` credential: {e}"))?;
                    props.insert("credential".to_string(), v);
                }
                let catalog = RestCatalogBuilder::default()
                    .with_storage_factory(factory)
                    .load(name, props)
                    .await
                    .map_err(|e| {
                        format!("cannot open Iceberg REST catalog `{name}` at `{uri}`: {e}")
                    })?;
                Arc::new(catalog)
            }
        };
        connected.insert(name.to_string(), Arc::clone(&catalog));
        Ok(catalog)
    }
}

/// A `sqlite:` URL for a catalog `uri` that may be a bare file path. The
/// file must exist: meshq reads catalogs, it does not create them.
fn sqlite_uri(uri: &str) -> String {
    if uri.contains(':') && !uri.starts_with('/') {
        uri.to_string()
    } else {
        format!("sqlite://{uri}?mode=rw")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_paths_become_sqlite_urls() {
        assert_eq!(
            sqlite_uri("/m/catalog.db"),
            "sqlite:///m/catalog.db?mode=rw"
        );
        assert_eq!(sqlite_uri("sqlite:///m/c.db"), "sqlite:///m/c.db");
    }
}
