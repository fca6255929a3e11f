//! [`DomainSchemaProvider`]: one SQL schema per mesh domain, read-only.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use meshq_catalog::Principal;

use crate::policy::PolicyError;
use crate::policy::rule::{PolicyCatalog, TableGovernance};

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
/// absent from listings, and naming one gives a permission error (as does a
/// table whose policies are broken).
#[derive(Debug)]
pub struct PrincipalSchemaProvider {
    inner: Arc<DomainSchemaProvider>,
    principal: Arc<Principal>,
    policies: Arc<PolicyCatalog>,
}

impl PrincipalSchemaProvider {
    /// `inner` seen by `principal`.
    pub fn new(
        inner: Arc<DomainSchemaProvider>,
        principal: Arc<Principal>,
        policies: Arc<PolicyCatalog>,
    ) -> Self {
        Self {
            inner,
            principal,
            policies,
        }
    }

    fn access(&self, table: &str) -> std::result::Result<(), PolicyError> {
        let key = format!("{}.{table}", self.inner.domain);
        match self.policies.get(&key) {
            None => Ok(()),
            Some(TableGovernance::Broken(e)) => Err(e.clone()),
            Some(TableGovernance::Ready(p)) => match &p.read_roles {
                Some(roles) if !self.principal.has_any_role(roles) => Err(PolicyError::Denied {
                    principal: self.principal.display_name().to_string(),
                    table: key,
                    roles: roles.join(", "),
                }),
                _ => Ok(()),
            },
        }
    }
}

#[async_trait]
impl SchemaProvider for PrincipalSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        self.inner
            .tables
            .keys()
            .filter(|t| self.access(t).is_ok())
            .cloned()
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(t) = self.inner.tables.get(name) else {
            return Ok(None);
        };
        self.access(name)?;
        Ok(Some(Arc::clone(t)))
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
        self.inner.tables.contains_key(name) && self.access(name).is_ok()
    }
}
