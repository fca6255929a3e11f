//! Sessions: [`SessionData`], what a client keeps between statements, and
//! [`MeshSession`], the planning context of one statement.
//!
//! A client's session costs kilobytes: its principal, its scratch tables,
//! schemas and catalogs it created, its default schema, its prepared
//! statements and settings. Everything else — functions, rules, the mesh's
//! tables and policies, the runtime — belongs to the mesh version and is
//! shared. [`crate::Engine::session_for`] puts the two together for each
//! statement, on the mesh version served when the statement starts.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use arrow::datatypes::FieldRef;
use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider};
use datafusion::common::ParamValues;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, LogicalPlan, Statement};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::SessionContext;
use meshq_catalog::Principal;

use crate::engine::{Engine, SCRATCH_SCHEMA};
use crate::memory::QueryMemoryPool;
use crate::policy::lockdown::check_statement;
use crate::statement::{check_text, normalize};
use crate::storage_error::{StorageFailure, storage_failure};

/// Most prepared statements (SQL `PREPARE`) one session keeps.
pub const MAX_PREPARED: usize = 256;

/// A statement prepared with SQL `PREPARE`.
#[derive(Debug, Clone)]
struct Prepared {
    fields: Vec<FieldRef>,
    plan: LogicalPlan,
}

/// What a client keeps between statements. Independent of the mesh version:
/// after a reload the next statement runs on the new version with the same
/// data.
#[derive(Debug)]
pub struct SessionData {
    principal: RwLock<Arc<Principal>>,
    scratch: Arc<MemorySchemaProvider>,
    schemas: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
    catalogs: RwLock<BTreeMap<String, Arc<dyn CatalogProvider>>>,
    default_schema: RwLock<String>,
    prepared: Mutex<BTreeMap<String, Prepared>>,
    settings: Mutex<BTreeMap<String, String>>,
}

impl SessionData {
    /// A new session of `principal`.
    pub fn new(principal: Principal) -> Self {
        Self {
            principal: RwLock::new(Arc::new(principal)),
            scratch: Arc::new(MemorySchemaProvider::new()),
            schemas: RwLock::new(BTreeMap::new()),
            catalogs: RwLock::new(BTreeMap::new()),
            default_schema: RwLock::new(SCRATCH_SCHEMA.to_string()),
            prepared: Mutex::new(BTreeMap::new()),
            settings: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whose session it is.
    pub fn principal(&self) -> Arc<Principal> {
        Arc::clone(&*self.principal.read())
    }

    /// Replaces the principal (a reload changed its roles or attributes).
    pub fn set_principal(&self, principal: Principal) {
        *self.principal.write() = Arc::new(principal);
    }

    /// The schema unqualified names resolve in.
    pub fn default_schema(&self) -> String {
        self.default_schema.read().clone()
    }

    /// Sets the schema unqualified names resolve in (a client's session
    /// option; SQL `SET` is governed by the lockdown).
    pub fn set_default_schema(&self, schema: &str) {
        *self.default_schema.write() = schema.to_string();
    }

    /// The session's scratch schema (`public`).
    pub fn scratch(&self) -> &Arc<MemorySchemaProvider> {
        &self.scratch
    }

    pub(crate) fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schemas.read().get(name).cloned()
    }

    pub(crate) fn schema_names(&self) -> Vec<String> {
        self.schemas.read().keys().cloned().collect()
    }

    pub(crate) fn add_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Option<Arc<dyn SchemaProvider>> {
        self.schemas.write().insert(name.to_string(), schema)
    }

    pub(crate) fn remove_schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schemas.write().remove(name)
    }

    pub(crate) fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        self.catalogs.read().get(name).cloned()
    }

    pub(crate) fn catalog_names(&self) -> Vec<String> {
        self.catalogs.read().keys().cloned().collect()
    }

    pub(crate) fn add_catalog(
        &self,
        name: &str,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        self.catalogs.write().insert(name.to_string(), catalog)
    }

    pub(crate) fn settings(&self) -> BTreeMap<String, String> {
        self.settings.lock().clone()
    }
}

/// The planning context of one statement: a DataFusion context on one mesh
/// version whose every plan is governed for the session's principal.
#[derive(Clone)]
pub struct MeshSession {
    ctx: SessionContext,
    engine: Engine,
    data: Arc<SessionData>,
    principal: Arc<Principal>,
    is_admin: bool,
}

impl std::fmt::Debug for MeshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSession")
            .field("principal", &self.principal.display_name())
            .field("is_admin", &self.is_admin)
            .finish()
    }
}

/// A table a session can see, for listings (the shell's `\\dt`, Flight
/// SQL's `GetTables`).
#[derive(Debug, Clone)]
pub struct VisibleTable {
    /// Schema (domain, `public` or one the session created).
    pub schema: String,
    /// Table name.
    pub table: String,
    /// `TABLE` or `VIEW`.
    pub kind: &'static str,
    /// Its columns.
    pub columns: arrow::datatypes::SchemaRef,
    /// The contract's definition, for mesh tables.
    pub def: Option<Arc<meshq_catalog::TableDef>>,
}

/// A statement that is not a query: it runs once, when it is announced.
pub fn is_statement(plan: &LogicalPlan) -> bool {
    matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
    )
}

impl MeshSession {
    pub(crate) fn new(
        ctx: SessionContext,
        engine: Engine,
        data: Arc<SessionData>,
        principal: Arc<Principal>,
    ) -> Self {
        let is_admin = principal.has_role(&engine.mesh().config.auth.admin_role);
        Self {
            ctx,
            engine,
            data,
            principal,
            is_admin,
        }
    }

    /// The mesh version this statement runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The client's session data.
    pub fn data(&self) -> &Arc<SessionData> {
        &self.data
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
    /// (the policy rule and the plan verifier are part of its planner), but
    /// statements run through [`SessionContext::execute_logical_plan`]
    /// directly skip the statement lockdown and the file confinement: use
    /// [`MeshSession::sql`] or [`MeshSession::plan`] for anything a user
    /// typed.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The schema unqualified table names resolve in.
    pub fn default_schema(&self) -> String {
        self.data.default_schema()
    }

    /// Every table the principal may see, sorted by schema and name
    /// (`information_schema`'s own aside).
    pub async fn visible_tables(&self) -> Vec<VisibleTable> {
        let mut out = Vec::new();
        let Some(catalog) = self.ctx.catalog(crate::engine::CATALOG) else {
            return out;
        };
        let mut schemas = catalog.schema_names();
        schemas.retain(|s| s != "information_schema");
        schemas.sort();
        for schema in schemas {
            let Some(provider) = catalog.schema(&schema) else {
                continue;
            };
            let mut names = provider.table_names();
            names.sort();
            for table in names {
                if let Ok(Some(t)) = provider.table(&table).await {
                    let kind = match t.table_type() {
                        _ if schema == crate::meta::META_SCHEMA => "SYSTEM TABLE",
                        datafusion::datasource::TableType::View => "VIEW",
                        _ => "TABLE",
                    };
                    let def = self.engine.mesh().table(&schema, &table).cloned();
                    out.push(VisibleTable {
                        schema: schema.clone(),
                        table,
                        kind,
                        columns: t.schema(),
                        def,
                    });
                }
            }
        }
        out
    }

    /// The mesh tables (`domain.table`) `plan` reads.
    pub fn tables_read(&self, plan: &LogicalPlan) -> Vec<String> {
        let mut out = Vec::new();
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Ok(provider) = datafusion::datasource::source_as_provider(&scan.source)
                && let Some(view) = crate::policy::governed::contract_view(&provider)
            {
                let name = view.table_name().to_string();
                if !out.contains(&name) {
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
            if self.engine.is_served(&name) && !out.contains(&name) {
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
        storage_failure(e, tables, self.engine.sources())
    }

    /// Parses and plans one SQL statement the principal may run: within the
    /// size and depth limits, allowed by the lockdown, its file locations
    /// confined, `EXECUTE` replaced by the prepared query. Nothing runs yet.
    pub async fn plan(&self, sql: &str) -> Result<LogicalPlan> {
        check_text(sql, &self.engine.mesh().config.limits)?;
        let sql = normalize(sql);
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(&sql, &dialect)?;
        self.find_tables(&statement).await?;
        let plan = state.statement_to_plan(statement).await?;
        self.admit(plan)
    }

    /// For a query, checks that every table it names exists (and may be
    /// seen), so a missing one is a typed `NotFound` — the same error for a
    /// table that is hidden by `readable-only` discovery — rather than a
    /// planning error. Statements that create tables are left to DataFusion.
    async fn find_tables(&self, statement: &datafusion::sql::parser::Statement) -> Result<()> {
        use datafusion::sql::parser::Statement as DFStatement;
        use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
        let is_query = matches!(
            statement,
            DFStatement::Statement(s) if matches!(s.as_ref(), SqlStatement::Query(_))
        );
        if !is_query {
            return Ok(());
        }
        let state = self.ctx.state();
        for reference in state.resolve_table_references(statement)? {
            // Table functions (`range(…)`) appear as bare references too.
            if matches!(reference, datafusion::common::TableReference::Bare { .. })
                && state.table_functions().contains_key(reference.table())
            {
                continue;
            }
            // An unknown catalog or schema is as missing as an unknown table.
            let found = match state.schema_for_ref(reference.clone()) {
                Ok(schema) => schema.table(reference.table()).await?.is_some(),
                Err(_) => false,
            };
            if !found {
                let defaults = &state.config_options().catalog;
                let resolved =
                    reference.resolve(&defaults.default_catalog, &defaults.default_schema);
                return Err(crate::policy::PolicyError::NotFound {
                    table: resolved.to_string(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Parses a script of statements, within the size and depth limits.
    pub fn parse(&self, sql: &str) -> Result<Vec<datafusion::sql::parser::Statement>> {
        check_text(sql, &self.engine.mesh().config.limits)?;
        let sql = normalize(sql);
        Ok(datafusion::sql::parser::DFParser::parse_sql(&sql)?
            .into_iter()
            .collect())
    }

    /// Plans one parsed statement as [`MeshSession::plan`] does.
    pub async fn plan_statement(
        &self,
        statement: datafusion::sql::parser::Statement,
    ) -> Result<LogicalPlan> {
        let plan = self.ctx.state().statement_to_plan(statement).await?;
        self.admit(plan)
    }

    /// Checks a planned statement as [`MeshSession::plan`] does.
    pub fn admit(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        self.check(&plan)?;
        let plan = match plan {
            LogicalPlan::Statement(Statement::Execute(execute)) => {
                let plan = self.prepared_plan(&execute.name, execute.parameters)?;
                self.check(&plan)?;
                plan
            }
            other => other,
        };
        self.engine.files().confine(plan)
    }

    /// Whether the principal may run `plan` (the statement lockdown).
    pub fn check(&self, plan: &LogicalPlan) -> Result<()> {
        check_statement(
            plan,
            self.is_admin,
            &self.engine.mesh().config.auth.admin_role,
        )
    }

    /// Plans and runs one SQL statement; a query's result is a DataFrame
    /// to collect or stream.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        let plan = self.plan(sql).await?;
        self.run(plan).await
    }

    /// Runs an admitted plan without limits (the shell): statements take
    /// effect now, queries come back as a DataFrame.
    pub async fn run(&self, plan: LogicalPlan) -> Result<DataFrame> {
        if let Some(df) = self.session_statement(&plan, &self.ctx)? {
            return Ok(df);
        }
        self.ctx.execute_logical_plan(plan).await
    }

    /// Applies a statement that changes the session itself (`PREPARE`,
    /// `DEALLOCATE`, `SET`, `RESET`) to its data, kept across statements
    /// and mesh versions. `None` for any other plan.
    fn session_statement(
        &self,
        plan: &LogicalPlan,
        ctx: &SessionContext,
    ) -> Result<Option<DataFrame>> {
        let LogicalPlan::Statement(statement) = plan else {
            return Ok(None);
        };
        match statement {
            Statement::Prepare(p) => {
                if !p.fields.is_empty() {
                    let names = p.input.get_parameter_names()?;
                    if names.len() != p.fields.len() {
                        return Err(DataFusionError::Plan(format!(
                            "PREPARE {} declares {} parameter types but the query has {} parameters",
                            p.name,
                            p.fields.len(),
                            names.len()
                        )));
                    }
                }
                let mut prepared = self.data.prepared.lock();
                if prepared.contains_key(&p.name) {
                    return Err(DataFusionError::Execution(format!(
                        "prepared statement `{}` already exists; DEALLOCATE it first",
                        p.name
                    )));
                }
                if prepared.len() >= MAX_PREPARED {
                    return Err(DataFusionError::ResourcesExhausted(format!(
                        "a session keeps at most {MAX_PREPARED} prepared statements; DEALLOCATE some"
                    )));
                }
                prepared.insert(
                    p.name.clone(),
                    Prepared {
                        fields: p.fields.clone(),
                        plan: p.input.as_ref().clone(),
                    },
                );
            }
            Statement::Deallocate(d) => {
                if self.data.prepared.lock().remove(&d.name).is_none() {
                    return Err(DataFusionError::Execution(format!(
                        "prepared statement `{}` does not exist",
                        d.name
                    )));
                }
            }
            Statement::SetVariable(set) => {
                check_setting(&set.variable)?;
                // Applied to a copy first, so a bad value is an error now.
                let mut options = ctx.state().config_options().as_ref().clone();
                options.set(&set.variable, &set.value)?;
                self.data
                    .settings
                    .lock()
                    .insert(set.variable.clone(), set.value.clone());
            }
            Statement::ResetVariable(reset) => {
                check_setting(&reset.variable)?;
                self.data.settings.lock().remove(&reset.variable);
            }
            _ => return Ok(None),
        }
        Ok(Some(ctx.read_empty()?))
    }

    /// The query of prepared statement `name` with `parameters` bound.
    fn prepared_plan(&self, name: &str, parameters: Vec<Expr>) -> Result<LogicalPlan> {
        let prepared = self
            .data
            .prepared
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| {
                DataFusionError::Plan(format!("prepared statement `{name}` does not exist"))
            })?;
        let state = self.ctx.state();
        let context = SimplifyContext::builder()
            .with_schema(Arc::clone(prepared.plan.schema()))
            .with_config_options(Arc::clone(state.config_options()))
            .build();
        let simplifier = ExprSimplifier::new(context);
        let mut values = Vec::with_capacity(parameters.len());
        for e in parameters {
            match simplifier.simplify(e)? {
                Expr::Literal(v, metadata) => values.push((v, metadata)),
                other => {
                    return Err(DataFusionError::Plan(format!(
                        "EXECUTE {name}: parameters must be literals, not {other}"
                    )));
                }
            }
        }
        if !prepared.fields.is_empty() {
            if values.len() != prepared.fields.len() {
                return Err(DataFusionError::Plan(format!(
                    "EXECUTE {name}: expected {} parameters, got {}",
                    prepared.fields.len(),
                    values.len()
                )));
            }
            for ((v, _), field) in values.iter_mut().zip(&prepared.fields) {
                *v = v.cast_to(field.data_type())?;
            }
        }
        let params = ParamValues::List(
            values
                .into_iter()
                .map(|(v, m)| datafusion::common::metadata::ScalarAndMetadata::new(v, m))
                .collect(),
        );
        prepared.plan.replace_params_with_values(&params)
    }

    /// Runs an admitted plan as one unit of work on a memory pool of its
    /// own of `memory_limit` bytes (within the server's pool) when set.
    /// Statements take effect now (a `CREATE TABLE … AS` reads its input
    /// here, under the same pool); queries, DML and `COPY` come back as a
    /// physical plan to stream. The caller bounds the time.
    pub async fn execute(
        &self,
        plan: LogicalPlan,
        memory_limit: Option<usize>,
    ) -> Result<PhysicalQuery> {
        let state = self.query_state(memory_limit)?;
        if matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Statement(_)) {
            // Only statements need a context of their own (a query runs
            // on the state alone).
            let ctx = SessionContext::new_with_state(state.clone());
            if let Some(df) = self.session_statement(&plan, &ctx)? {
                let schema = Arc::clone(df.schema().inner());
                return Ok(PhysicalQuery {
                    plan: Arc::new(EmptyExec::new(schema)),
                    task: state.task_ctx(),
                    fill: None,
                    cached: false,
                    again: None,
                });
            }
            let df = ctx.execute_logical_plan(plan).await?;
            let physical = df.create_physical_plan().await?;
            return Ok(PhysicalQuery {
                plan: physical,
                task: ctx.task_ctx(),
                fill: None,
                cached: false,
                again: None,
            });
        }
        let optimized = state.optimize(&plan)?;
        let cache = self.engine.result_cache();
        let fill = if cache.enabled() {
            let settings = self.data.settings();
            match crate::cache::cache_key(&self.engine, &settings, &plan, &optimized).await {
                Some(key) => match cache.probe(key) {
                    crate::cache::Probe::Hit(schema, batches) => {
                        let plan = MemorySourceConfig::try_new_exec(
                            &[batches.as_ref().clone()],
                            schema,
                            None,
                        )?;
                        return Ok(PhysicalQuery {
                            plan,
                            task: state.task_ctx(),
                            fill: None,
                            cached: true,
                            again: None,
                        });
                    }
                    crate::cache::Probe::Miss(fill) => Some(fill),
                },
                None => None,
            }
        } else {
            None
        };
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await?;
        let again = match self.engine.distribution() {
            // A write is never run again: files a failed run completed
            // would be written twice.
            Some(distribution) if is_distributed(&physical) && !writes(&physical) => {
                Some(RunAgain {
                    state: state.clone(),
                    plan: optimized,
                    distribution: Arc::clone(distribution),
                    memory_limit,
                })
            }
            _ => None,
        };
        Ok(PhysicalQuery {
            plan: physical,
            task: state.task_ctx(),
            fill,
            cached: false,
            again,
        })
    }

    /// This statement's state, on its own memory pool when limited.
    fn query_state(&self, memory_limit: Option<usize>) -> Result<SessionState> {
        let mut state = self.ctx.state();
        let Some(limit) = memory_limit else {
            return Ok(state);
        };
        let options = state.config_mut().options_mut();
        crate::memory::limit_spill_reservation(options, limit);
        if let Some(d) = self.engine.distribution() {
            // The workers bound their part of the query the same way.
            d.limit_query(options, limit);
        }
        let runtime = state.runtime_env();
        let pool = Arc::new(QueryMemoryPool::new(
            Arc::clone(&runtime.memory_pool),
            limit,
        ));
        let runtime = crate::memory::runtime_with_pool(runtime, pool)?;
        Ok(SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(runtime)
            .build())
    }
}

/// Settings no SQL `SET` may change, admins included: where files go and
/// how much memory the server has are the operator's (`meshq.yaml`,
/// flags), and `meshq.*` is the session's identity.
fn check_setting(variable: &str) -> Result<()> {
    match refused_setting(variable) {
        None => Ok(()),
        Some(reason) => Err(crate::policy::PolicyError::Setting {
            variable: variable.to_string(),
            reason: reason.to_string(),
        }
        .into()),
    }
}

/// Why `variable` may not be set in `meshq.yaml` `settings`, which every
/// session starts with, the sessions of principals who may not `SET`
/// included; `None` when it may. Besides what no session may set, EXPLAIN's
/// options: `datafusion.explain.show_statistics` would print, to every
/// principal, the column bounds of the scans below the policies.
pub(crate) fn refused_server_setting(variable: &str) -> Option<&'static str> {
    refused_setting(variable).or_else(|| {
        variable
            .to_ascii_lowercase()
            .starts_with("datafusion.explain.")
            .then_some(
                "EXPLAIN's output would show every principal what the scans below the policies read; an admin may SET it in a session",
            )
    })
}

/// Why `variable` may not be set by a session (nor by `meshq.yaml`
/// `settings`, which sets what sessions start with); `None` when it may.
pub(crate) fn refused_setting(variable: &str) -> Option<&'static str> {
    let key = variable.to_ascii_lowercase();
    if key.starts_with("datafusion.runtime.") {
        Some(
            "memory and spill files are configured in meshq.yaml (limits.memory, limits.spill_dir)",
        )
    } else if key.starts_with("datafusion.sql_parser.recursion_limit") {
        Some("the statement limits (limits.max_expression_depth) assume the parser's own limit")
    } else if key.starts_with("datafusion.catalog.") {
        Some(
            "the catalog is the mesh; use the session option `schema` to change the default schema",
        )
    } else if key.starts_with("distributed.") {
        Some(
            "how queries are spread over workers is the operator's (cluster.settings in meshq.yaml)",
        )
    } else if key.starts_with("meshq_cluster.")
        || key.starts_with("meshq_session.")
        || key.starts_with("meshq_query.")
    {
        Some("the coordinator lists what each plan's workers need")
    } else if key.starts_with("meshq_scan.") || key.starts_with("meshq_plan.") {
        // How scans run and joins are ordered; changes no answer.
        None
    } else if key.starts_with("meshq") {
        Some("the principal comes from authentication and limits from meshq.yaml")
    } else {
        None
    }
}

/// A statement ready to run: its physical plan and the context it runs in.
#[derive(Debug)]
pub struct PhysicalQuery {
    /// The plan; after the run its metrics hold what it did (spills).
    pub plan: Arc<dyn ExecutionPlan>,
    /// Runtime (memory pool, spill files) and config.
    pub task: Arc<TaskContext>,
    /// Stores the result in the cache once it has been read to the end.
    fill: Option<crate::cache::CacheFill>,
    /// Answered from the result cache.
    cached: bool,
    /// How to run a distributed query again when a worker fails before it
    /// sent a row ([`crate::retry`]).
    again: Option<RunAgain>,
}

/// What running a distributed query again takes: its state (the same
/// memory pool, settings and principal) and its optimized plan, planned
/// anew after the workers are checked.
#[derive(Clone)]
struct RunAgain {
    state: SessionState,
    plan: LogicalPlan,
    distribution: Arc<dyn crate::engine::Distribution>,
    memory_limit: Option<usize>,
}

impl std::fmt::Debug for RunAgain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunAgain").finish_non_exhaustive()
    }
}

/// Whether `plan` writes (a sink of `COPY` or `INSERT`).
fn writes(plan: &Arc<dyn ExecutionPlan>) -> bool {
    use datafusion::common::tree_node::TreeNode;
    plan.exists(|p| Ok(p.name() == "DataSinkExec"))
        .unwrap_or(true)
}

/// Whether `plan` runs on workers (datafusion-distributed's root node).
fn is_distributed(plan: &Arc<dyn ExecutionPlan>) -> bool {
    use datafusion::common::tree_node::TreeNode;
    plan.exists(|p| Ok(p.name() == "DistributedExec"))
        .unwrap_or(false)
}

impl PhysicalQuery {
    /// Starts the query. A distributed one whose worker fails before the
    /// first batch runs again, once, over the workers that answer.
    pub fn execute(&self) -> Result<SendableRecordBatchStream> {
        let stream = datafusion::physical_plan::execute_stream(
            Arc::clone(&self.plan),
            Arc::clone(&self.task),
        )?;
        let stream = match self.again.clone() {
            Some(again) => crate::retry::before_first_batch(
                stream,
                Box::new(move || {
                    Box::pin(async move {
                        again.distribution.recheck().await;
                        let mut state = again.state;
                        if let Some(limit) = again.memory_limit {
                            // A query id of its own on the workers: the
                            // failed run's tasks keep their own pools.
                            again
                                .distribution
                                .limit_query(state.config_mut().options_mut(), limit);
                        }
                        let plan = state
                            .query_planner()
                            .create_physical_plan(&again.plan, &state)
                            .await?;
                        datafusion::physical_plan::execute_stream(plan, state.task_ctx())
                    })
                }),
                crate::retry::worker_failed,
            ),
            None => stream,
        };
        Ok(match &self.fill {
            Some(fill) => fill.clone().wrap(stream),
            None => stream,
        })
    }

    /// Whether the result comes from the result cache.
    pub fn is_cached(&self) -> bool {
        self.cached
    }

    /// For the audit log: `hit` (from the cache), `miss` (computed, to be
    /// kept), or `None` (not cacheable, or the cache is off).
    pub fn cache_use(&self) -> Option<&'static str> {
        match (self.cached, &self.fill) {
            (true, _) => Some("hit"),
            (false, Some(_)) => Some("miss"),
            _ => None,
        }
    }
}
