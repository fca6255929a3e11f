//! The SQL catalog as a session sees it: catalog `mesh` with one read-only
//! schema per domain (listing only what the principal may read), the
//! session's scratch schema `public`, and schemas and catalogs the session
//! created itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, Weak};

use arrow::array::{RecordBatch, StringBuilder};
use async_trait::async_trait;
use datafusion::catalog::information_schema::{INFORMATION_SCHEMA, InformationSchemaProvider};
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableFunction};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use meshq_catalog::Principal;
use meshq_catalog::platform::Visibility;

use crate::engine::{CATALOG, Engine, RESERVED_SCHEMAS, SCRATCH_SCHEMA};
use crate::meta::{META_SCHEMA, MetaSchemaProvider};
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

/// `information_schema` as DataFusion builds it over the session's
/// catalogs, except `views`, which lists views only (DataFusion's lists every
/// table, the mesh's as views with no definition).
#[derive(Debug)]
struct MeshInformationSchema {
    inner: InformationSchemaProvider,
    list: Arc<dyn CatalogProviderList>,
}

impl MeshInformationSchema {
    async fn views(&self, schema: arrow::datatypes::SchemaRef) -> Result<Arc<dyn TableProvider>> {
        let mut b: [StringBuilder; 3] = Default::default();
        let mut definitions = StringBuilder::new();
        for catalog_name in self.list.catalog_names() {
            let Some(catalog) = self.list.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                if schema_name == INFORMATION_SCHEMA {
                    continue;
                }
                let Some(provider) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in provider.table_names() {
                    let Some(table) = provider.table(&table_name).await? else {
                        continue;
                    };
                    if table.table_type() != TableType::View {
                        continue;
                    }
                    b[0].append_value(&catalog_name);
                    b[1].append_value(&schema_name);
                    b[2].append_value(&table_name);
                    definitions.append_option(table.get_table_definition());
                }
            }
        }
        let [mut c, mut s, mut t] = b;
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(c.finish()),
                Arc::new(s.finish()),
                Arc::new(t.finish()),
                Arc::new(definitions.finish()),
            ],
        )?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

#[async_trait]
impl SchemaProvider for MeshInformationSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let table = self.inner.table(name).await?;
        match table {
            Some(t) if name.eq_ignore_ascii_case("views") => self.views(t.schema()).await.map(Some),
            other => Ok(other),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
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
    table_functions: Arc<HashMap<String, Arc<TableFunction>>>,
    /// The mesh version, for `meta`.
    engine: Engine,
    /// The session's catalog list, for `information_schema`.
    list: OnceLock<Weak<SessionCatalogList>>,
}

impl MeshCatalog {
    /// The catalog `data`'s principal sees over `domains`.
    pub fn new(
        domains: Arc<BTreeMap<String, Arc<DomainSchemaProvider>>>,
        tables: Arc<GovernedTables>,
        principal: Arc<Principal>,
        data: Arc<SessionData>,
        visibility: Visibility,
        table_functions: Arc<HashMap<String, Arc<TableFunction>>>,
        engine: Engine,
    ) -> Self {
        Self {
            domains,
            tables,
            principal,
            data,
            visibility,
            table_functions,
            engine,
            list: OnceLock::new(),
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
        names.push(META_SCHEMA.to_string());
        names.push(INFORMATION_SCHEMA.to_string());
        names.extend(self.data.schema_names());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == INFORMATION_SCHEMA {
            let list: Arc<dyn CatalogProviderList> = self.list.get()?.upgrade()?;
            let inner = InformationSchemaProvider::new(Arc::clone(&list))
                .with_table_functions((*self.table_functions).clone());
            return Some(Arc::new(MeshInformationSchema { inner, list }));
        }
        if name == SCRATCH_SCHEMA {
            return Some(Arc::clone(self.data.scratch()) as Arc<dyn SchemaProvider>);
        }
        if name == META_SCHEMA {
            return Some(Arc::new(MetaSchemaProvider::new(
                self.engine.clone(),
                Arc::clone(&self.principal),
            )));
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
    pub fn new(mesh: MeshCatalog, data: Arc<SessionData>) -> Arc<Self> {
        Arc::new_cyclic(|list| {
            let _ = mesh.list.set(Weak::clone(list));
            Self {
                mesh: Arc::new(mesh),
                data,
            }
        })
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
