//! [`GovernedTables`]: every table a mesh version serves, with its compiled
//! policies — the one place the planner asks what a principal may see.
//!
//! Every served table has an entry, also one with no policies at all, so a
//! scan of a mesh table with no entry (a view or prepared statement planned
//! on a version that has since dropped the table) is refused, never passed
//! through. [`GovernedScan`] is the table as the policy rule hands it to the
//! planner: the same contract view, stamped with the [`ScanToken`] of the
//! decision made for it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{ScanArgs, ScanResult, Session};
use datafusion::common::{Constraints, Statistics};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use meshq_catalog::Principal;
use meshq_connectors::{ContractTableProvider, MeshScanExec, ScanToken};

use super::compile::TablePolicies;
use super::error::PolicyError;

/// A table's policies as loaded: compiled, or broken (unreadable).
#[derive(Debug, Clone)]
pub enum TableGovernance {
    /// Ready to enforce (possibly nothing to enforce).
    Ready(Arc<TablePolicies>),
    /// A policy cannot be built; reads fail with this error.
    Broken(PolicyError),
}

/// One served table.
#[derive(Debug, Clone)]
pub struct GovernedTable {
    /// The contract view of its data.
    pub provider: Arc<ContractTableProvider>,
    /// Its policies.
    pub governance: TableGovernance,
}

/// The tables of one mesh version, by `domain.table`.
#[derive(Debug, Clone)]
pub struct GovernedTables {
    mesh_version: u64,
    tables: HashMap<String, GovernedTable>,
}

impl GovernedTables {
    /// No tables yet, for the mesh version with identity `mesh_version`.
    pub fn new(mesh_version: u64) -> Self {
        Self {
            mesh_version,
            tables: HashMap::new(),
        }
    }

    /// Identity of the mesh version (unique within the process).
    pub fn mesh_version(&self) -> u64 {
        self.mesh_version
    }

    /// Adds or replaces a table.
    pub fn insert(&mut self, name: String, table: GovernedTable) {
        self.tables.insert(name, table);
    }

    /// A served table.
    pub fn get(&self, name: &str) -> Option<&GovernedTable> {
        self.tables.get(name)
    }

    /// Every table name.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tables.keys()
    }

    /// The policies `principal` reads `name` under, or why it may not.
    pub fn policies_for(
        &self,
        name: &str,
        principal: &Principal,
    ) -> Result<&Arc<TablePolicies>, PolicyError> {
        let table = self.get(name).ok_or_else(|| PolicyError::NotServed {
            table: name.to_string(),
        })?;
        match &table.governance {
            TableGovernance::Broken(e) => Err(e.clone()),
            TableGovernance::Ready(p) => match &p.read_roles {
                Some(roles) if !principal.has_any_role(roles) => Err(PolicyError::Denied {
                    principal: principal.display_name().to_string(),
                    table: name.to_string(),
                    roles: roles.join(", "),
                }),
                _ => Ok(p),
            },
        }
    }
}

/// A fingerprint of the masks and row filters `policies` apply to
/// `principal`; 0 when none does.
pub fn policy_key(policies: &TablePolicies, principal: &Principal) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    let mut any = false;
    for m in policies.masks_for(principal) {
        any = true;
        ("mask", &m.column, m.kind, &m.origin).hash(&mut h);
    }
    for f in policies.filters_for(principal) {
        any = true;
        ("filter", &f.id).hash(&mut h);
    }
    if any { h.finish().max(1) } else { 0 }
}

/// A mesh table as the policy rule hands it to the planner: its scans carry
/// the rule's decision.
#[derive(Debug)]
pub struct GovernedScan {
    inner: Arc<ContractTableProvider>,
    token: ScanToken,
}

impl GovernedScan {
    /// `inner`, whose scans are stamped with `token`.
    pub fn new(inner: Arc<ContractTableProvider>, token: ScanToken) -> Self {
        Self { inner, token }
    }

    /// The contract view.
    pub fn inner(&self) -> &Arc<ContractTableProvider> {
        &self.inner
    }

    /// The decision.
    pub fn token(&self) -> &ScanToken {
        &self.token
    }

    fn stamp(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let scan = plan.downcast_ref::<MeshScanExec>().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "the scan of `{}` is not marked as mesh data",
                self.inner.table_name()
            ))
        })?;
        Ok(Arc::new(scan.with_token(self.token)))
    }
}

#[async_trait]
impl TableProvider for GovernedScan {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        self.stamp(plan)
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult> {
        let result = self.inner.scan_with_args(state, args).await?;
        Ok(ScanResult::new(self.stamp(result.into_inner())?))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }
}

/// The contract view behind a table provider, governed or not.
pub fn contract_view(provider: &Arc<dyn TableProvider>) -> Option<&ContractTableProvider> {
    if let Some(g) = provider.as_ref().downcast_ref::<GovernedScan>() {
        return Some(g.inner());
    }
    provider.as_ref().downcast_ref::<ContractTableProvider>()
}
