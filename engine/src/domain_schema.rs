//! The SQL catalog as a session sees it: catalog `mesh` with one read-only
//! schema per domain (listing only what the principal may read), the
//! session's scratch schema `public`, and schemas and catalogs the session
//! created itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use meshq_catalog::Principal;
use meshq_catalog::platform::Visibility;

use crate::engine::{CATALOG, RESERVED_SCHEMAS, SCRATCH_SCHEMA};
use crate::policy::governed::GovernedTables;
use crate::session::SessionData;

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

/// A domain as one principal sees it: tables the principal may not read are
/// absent from listings; naming one gives a permission error (as does a
/// table whose policies are broken), or, with `visibility: readable-only`,
/// the same answer as a table that does not exist.
#[derive(Debug)]
pub struct PrincipalSchemaProvider {
    inner: Arc<DomainSchemaProvider>,
    principal: Arc<Principal>,
    tables: Arc<GovernedTables>,
    visibility: Visibility,
}

impl PrincipalSchemaProvider {
    /// `inner` seen by `principal`.
    pub fn new(
        inner: Arc<DomainSchemaProvider>,
        principal: Arc<Principal>,
        tables: Arc<GovernedTables>,
        visibility: Visibility,
    ) -> Self {
        Self {
            inner,
            principal,
            tables,
            visibility,
        }
    }

    fn readable(&self, table: &str) -> Result<(), crate::policy::PolicyError> {
        let key = format!("{}.{table}", self.inner.domain);
        self.tables.policies_for(&key, &self.principal).map(|_| ())
    }

    /// Whether the principal may read any table of the domain.
    pub fn any_readable(&self) -> bool {
        self.inner.tables.keys().any(|t| self.readable(t).is_ok())
    }
}

#[async_trait]
impl SchemaProvider for PrincipalSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        self.inner
            .tables
            .keys()
            .filter(|t| self.readable(t).is_ok())
            .cloned()
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(t) = self.inner.tables.get(name) else {
            return Ok(None);
        };
        match self.readable(name) {
            Ok(()) => Ok(Some(Arc::clone(t))),
            Err(_) if self.visibility == Visibility::ReadableOnly => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.tables.contains_key(name)
            && (self.visibility == Visibility::All || self.readable(name).is_ok())
    }
}

/// Catalog `mesh` for one session.
#[derive(Debug)]
pub struct MeshCatalog {
    domains: Arc<BTreeMap<String, Arc<DomainSchemaProvider>>>,
    tables: Arc<GovernedTables>,
    principal: Arc<Principal>,
    data: Arc<SessionData>,
    visibility: Visibility,
}

impl MeshCatalog {
    /// The catalog `data`'s principal sees over `domains`.
    pub fn new(
        domains: Arc<BTreeMap<String, Arc<DomainSchemaProvider>>>,
        tables: Arc<GovernedTables>,
        principal: Arc<Principal>,
        data: Arc<SessionData>,
        visibility: Visibility,
    ) -> Self {
        Self {
            domains,
            tables,
            principal,
            data,
            visibility,
        }
    }

    fn domain(&self, name: &str) -> Option<PrincipalSchemaProvider> {
        let inner = self.domains.get(name)?;
        let view = PrincipalSchemaProvider::new(
            Arc::clone(inner),
            Arc::clone(&self.principal),
            Arc::clone(&self.tables),
            self.visibility,
        );
        // Registered even when nothing in it is readable, so naming a denied
        // table says "permission denied" — unless that would confirm it.
        (self.visibility == Visibility::All || view.any_readable()).then_some(view)
    }

    fn refuse(&self, name: &str) -> Option<DataFusionError> {
        if self.domains.contains_key(name) || RESERVED_SCHEMAS.contains(&name) {
            Some(DataFusionError::Plan(format!(
                "schema `{name}` belongs to the mesh and cannot be created or dropped from SQL"
            )))
        } else {
            None
        }
    }
}

impl CatalogProvider for MeshCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .domains
            .keys()
            .filter(|d| self.domain(d).is_some())
            .cloned()
            .collect();
        names.push(SCRATCH_SCHEMA.to_string());
        names.extend(self.data.schema_names());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == SCRATCH_SCHEMA {
            return Some(Arc::clone(self.data.scratch()) as Arc<dyn SchemaProvider>);
        }
        if self.domains.contains_key(name) {
            return self
                .domain(name)
                .map(|d| Arc::new(d) as Arc<dyn SchemaProvider>);
        }
        self.data.schema(name)
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        if let Some(e) = self.refuse(name) {
            return Err(e);
        }
        Ok(self.data.add_schema(name, schema))
    }

    fn deregister_schema(
        &self,
        name: &str,
        cascade: bool,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        if let Some(e) = self.refuse(name) {
            return Err(e);
        }
        if let Some(s) = self.data.schema(name)
            && !cascade
            && !s.table_names().is_empty()
        {
            return Err(DataFusionError::Execution(format!(
                "schema `{name}` is not empty; drop it with CASCADE"
            )));
        }
        Ok(self.data.remove_schema(name))
    }
}

/// The catalogs of one session: `mesh`, and any it created.
#[derive(Debug)]
pub struct SessionCatalogList {
    mesh: Arc<MeshCatalog>,
    data: Arc<SessionData>,
}

impl SessionCatalogList {
    /// `mesh` plus the session's own catalogs.
    pub fn new(mesh: MeshCatalog, data: Arc<SessionData>) -> Self {
        Self {
            mesh: Arc::new(mesh),
            data,
        }
    }
}

impl CatalogProviderList for SessionCatalogList {
    fn register_catalog(
        &self,
        name: String,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        if name == CATALOG {
            // DataFusion refuses to create a catalog that exists.
            return Some(Arc::clone(&self.mesh) as Arc<dyn CatalogProvider>);
        }
        self.data.add_catalog(&name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        let mut names = vec![CATALOG.to_string()];
        names.extend(self.data.catalog_names());
        names
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        if name == CATALOG {
            return Some(Arc::clone(&self.mesh) as Arc<dyn CatalogProvider>);
        }
        self.data.catalog(name)
    }
}
