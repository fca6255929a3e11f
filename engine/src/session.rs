//! [`MeshSession`]: a SQL session for one principal.

use std::sync::Arc;

use datafusion::dataframe::DataFrame;
use datafusion::error::Result;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;
use meshq_catalog::Principal;

use std::collections::BTreeMap;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;

use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};

use crate::memory::QueryMemoryPool;
use crate::policy::lockdown::check_statement;
use crate::storage_error::{SourceInfo, StorageFailure, storage_failure};

/// A session: a DataFusion context whose every plan is governed for its
/// principal. The principal is fixed when the session is made and cannot be
/// changed from SQL.
#[derive(Clone)]
pub struct MeshSession {
    ctx: SessionContext,
    principal: Arc<Principal>,
    is_admin: bool,
    admin_role: String,
    protected: Arc<Vec<(String, String)>>,
    sources: Arc<BTreeMap<String, SourceInfo>>,
}

impl std::fmt::Debug for MeshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSession")
            .field("principal", &self.principal.display_name())
            .field("is_admin", &self.is_admin)
            .finish()
    }
}

impl MeshSession {
    pub(crate) fn new(
        ctx: SessionContext,
        principal: Arc<Principal>,
        admin_role: String,
        protected: Arc<Vec<(String, String)>>,
        sources: Arc<BTreeMap<String, SourceInfo>>,
    ) -> Self {
        let is_admin = principal.has_role(&admin_role);
        Self {
            ctx,
            principal,
            is_admin,
            admin_role,
            protected,
            sources,
        }
    }

    /// The mesh tables (`domain.table`) `plan` reads.
    pub fn tables_read(&self, plan: &LogicalPlan) -> Vec<String> {
        let default_schema = self.default_schema();
        let mut out = Vec::new();
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let schema = scan.table_name.schema().unwrap_or(&default_schema);
                let name = format!("{schema}.{}", scan.table_name.table());
                if self.sources.contains_key(&name) && !out.contains(&name) {
                    out.push(name);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        out
    }

    /// The mesh tables (`domain.table`) the text of `sql` names, without
    /// planning it (for statements that cannot be planned). Empty when the
    /// text cannot be parsed.
    pub fn tables_named(&self, sql: &str) -> Vec<String> {
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let Ok(statement) = state.sql_to_statement(sql, &dialect) else {
            return Vec::new();
        };
        let Ok(references) = state.resolve_table_references(&statement) else {
            return Vec::new();
        };
        let default_schema = self.default_schema();
        let mut out = Vec::new();
        for r in references {
            let name = format!("{}.{}", r.schema().unwrap_or(&default_schema), r.table());
            if self.sources.contains_key(&name) && !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// When `e` is a storage failure while reading `tables` (from
    /// [`MeshSession::tables_read`]), a message naming the table and product.
    pub fn storage_failure(
        &self,
        e: &DataFusionError,
        tables: &[String],
    ) -> Option<StorageFailure> {
        storage_failure(e, tables, &self.sources)
    }

    /// The principal queries run as.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Whether the principal holds the admin role.
    pub fn is_admin(&self) -> bool {
        self.is_admin
    }

    /// The underlying context. Plans made through it are still governed
    /// (the policy rule is part of its analyzer), but statements run
    /// through [`SessionContext::execute_logical_plan`] directly skip the
    /// statement lockdown: use [`MeshSession::sql`] or
    /// [`MeshSession::execute_plan`] for anything a user typed.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans and runs one SQL statement.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        let plan = self.ctx.state().create_logical_plan(sql).await?;
        self.execute_plan(plan).await
    }

    /// Plans and runs a parsed statement.
    pub async fn statement(&self, stmt: Statement) -> Result<DataFrame> {
        let plan = self.ctx.state().statement_to_plan(stmt).await?;
        self.execute_plan(plan).await
    }

    /// The schema unqualified table names resolve in.
    pub fn default_schema(&self) -> String {
        self.ctx
            .state()
            .config_options()
            .catalog
            .default_schema
            .clone()
    }

    /// Resolves unqualified names in `schema` (a client's session option,
    /// not SQL `SET`, which the lockdown governs).
    pub fn set_default_schema(&self, schema: &str) {
        self.ctx
            .state_ref()
            .write()
            .config_mut()
            .options_mut()
            .catalog
            .default_schema = schema.to_string();
    }

    /// Whether the principal may run `plan` (the statement lockdown).
    pub fn check(&self, plan: &LogicalPlan) -> Result<()> {
        check_statement(plan, self.is_admin, &self.admin_role, &self.protected)
    }

    /// Checks that the principal may run `plan`, then runs it.
    pub async fn execute_plan(&self, plan: LogicalPlan) -> Result<DataFrame> {
        self.check(&plan)?;
        self.ctx.execute_logical_plan(plan).await
    }

    /// Checks that the principal may run the query `plan`, then makes its
    /// physical plan, on a memory pool of its own of `memory_limit` bytes
    /// (within the server's pool) when set. Statements (DDL, `SET`) go
    /// through [`MeshSession::execute_plan`].
    pub async fn physical_plan(
        &self,
        plan: LogicalPlan,
        memory_limit: Option<usize>,
    ) -> Result<PhysicalQuery> {
        self.check(&plan)?;
        let mut state = self.ctx.state();
        let mut pool = None;
        if let Some(limit) = memory_limit {
            // A sort sets memory aside for merging its spills; within a small
            // query limit that must be a share of it, not the 10 MiB default.
            let options = state.config_mut().options_mut();
            let share = (limit / 4).max(64 * 1024);
            if options.execution.sort_spill_reservation_bytes > share {
                options.execution.sort_spill_reservation_bytes = share;
            }
            let runtime = state.runtime_env();
            let p = Arc::new(QueryMemoryPool::new(
                Arc::clone(&runtime.memory_pool),
                limit,
            ));
            let runtime = RuntimeEnvBuilder::from_runtime_env(runtime)
                .with_memory_pool(Arc::clone(&p) as Arc<dyn MemoryPool>)
                .build_arc()?;
            state = SessionStateBuilder::new_from_existing(state)
                .with_runtime_env(runtime)
                .build();
            pool = Some(p);
        }
        let physical = state.create_physical_plan(&plan).await?;
        Ok(PhysicalQuery {
            plan: physical,
            task: state.task_ctx(),
            pool,
        })
    }
}

/// A query ready to run: its physical plan and the context it runs in.
#[derive(Debug)]
pub struct PhysicalQuery {
    /// The plan; after the run its metrics hold what it did (spills).
    pub plan: Arc<dyn ExecutionPlan>,
    /// Runtime (memory pool, spill files) and config.
    pub task: Arc<TaskContext>,
    /// The query's own memory pool, when it has a limit.
    pub pool: Option<Arc<QueryMemoryPool>>,
}

impl PhysicalQuery {
    /// Starts the query.
    pub fn execute(&self) -> Result<SendableRecordBatchStream> {
        datafusion::physical_plan::execute_stream(Arc::clone(&self.plan), Arc::clone(&self.task))
    }
}
