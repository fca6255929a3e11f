//! [`DomainSchemaProvider`]: one SQL schema per mesh domain, read-only.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

/// The tables of one domain. SQL cannot add or drop tables here: they come
/// from the mesh's contracts, and every session shares them.
#[derive(Debug)]
pub struct DomainSchemaProvider {
    domain: String,
    tables: BTreeMap<String, Arc<dyn TableProvider>>,
}

impl DomainSchemaProvider {
    /// A schema holding `tables`.
    pub fn new(
        domain: impl Into<String>,
        tables: BTreeMap<String, Arc<dyn TableProvider>>,
    ) -> Self {
        Self {
            domain: domain.into(),
            tables,
        }
    }

    fn read_only(&self) -> DataFusionError {
        DataFusionError::Plan(format!(
            "schema `{}` is served from the mesh and is read-only; change the domain's products and contracts instead",
            self.domain
        ))
    }
}

#[async_trait]
impl SchemaProvider for DomainSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.tables.get(name).cloned())
    }

    fn register_table(
        &self,
        _name: String,
        _table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(self.read_only())
    }

    fn deregister_table(&self, _name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(self.read_only())
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}
