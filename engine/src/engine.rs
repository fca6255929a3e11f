//! [`Engine`]: a loaded mesh version with every servable table opened,
//! handing out sessions over it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::datasource::TableProvider;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry, SessionState, SessionStateBuilder};
use datafusion::logical_expr::ScalarUDF;
use datafusion::optimizer::analyzer::Analyzer;
use datafusion::optimizer::{AnalyzerRule, Optimizer, OptimizerRule};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use meshq_catalog::platform::{CatalogConfig, StoreConfig};
use meshq_catalog::{Location, Mesh, Principal, Problem, TableDef, load_mesh};
use meshq_connectors::{ContractTableProvider, Sources, TableFacts, open_table};
use tracing::{info, warn};

use crate::domain_schema::{DomainSchemaProvider, MeshCatalog, SessionCatalogList};
use crate::error::{Error, Result};
use crate::files::FileAccess;
use crate::functions::bounded_functions;
use crate::join_order::{PlanOptions, ReorderJoins};
use crate::options::MeshqOptions;
use crate::policy::PolicyError;
use crate::policy::barrier::MeshQueryPlanner;
use crate::policy::compile::compile_table;
use crate::policy::governed::{GovernedTable, GovernedTables, TableGovernance};
use crate::policy::pushdown::{BarrierAwarePushDownFilter, PolicyPushdownRule};
use crate::policy::rule::PolicyAnalyzerRule;
use crate::policy::udf::{PrincipalFn, PrincipalUdf};
use crate::session::{MeshSession, SessionData};
use crate::storage_error::SourceInfo;

/// SQL catalog holding every domain.
pub const CATALOG: &str = "mesh";
/// Per-session scratch schema (the default schema).
pub const SCRATCH_SCHEMA: &str = "public";
/// What every engine plans with before `meshq.yaml` `settings`, which can
/// set each back: a hash join collects its build side into one partition
/// (one table built from all of it, the other side not repartitioned;
/// across workers, the build side broadcast to every task) when it is
/// estimated under 32 MiB (2 M rows when no size is known), not
/// DataFusion's 1 MiB (128 Ki rows). On TPC-H SF10 this made a single node
/// 13 % faster with no query slower by more than the noise, and spared
/// two workers the shuffle of `lineitem` in q8, q9 and q17 (BENCHMARKS.md,
/// "build sides collected up to 32 MiB").
pub const DEFAULT_SETTINGS: [(&str, &str); 2] = [
    (
        "datafusion.optimizer.hash_join_single_partition_threshold",
        "33554432",
    ),
    (
        "datafusion.optimizer.hash_join_single_partition_threshold_rows",
        "2000000",
    ),
];

/// What a coordinator (an engine with workers) also plans with before
/// `meshq.yaml` `settings`: joins ordered by estimate, since across
/// workers the large intermediate results a bad order makes are shuffled
/// over the network (BENCHMARKS.md, "the cluster orders its joins"); and
/// a join's keys pushed as a list up to 4096 per partition (1 MiB), not
/// DataFusion's 150 (128 KiB): a list can travel to the scans of a stage
/// below a shuffle, a probe of the join's hash table cannot
/// (BENCHMARKS.md, "join filters across stages").
pub const COORDINATOR_SETTINGS: [(&str, &str); 3] = [
    ("meshq_plan.reorder_joins", "true"),
    (
        "datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values",
        "4096",
    ),
    (
        "datafusion.optimizer.hash_join_inlist_pushdown_max_size",
        "1048576",
    ),
];

/// Schema names no domain may take.
pub const RESERVED_SCHEMAS: [&str; 3] = ["meta", SCRATCH_SCHEMA, "information_schema"];

/// How to build an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Mesh directory.
    pub mesh_dir: PathBuf,
    /// DataFusion target partitions; the number of cores when unset.
    pub target_partitions: Option<usize>,
    /// How many tables are opened at once while loading.
    pub open_concurrency: usize,
    /// Values for secret environment variables the process environment
    /// lacks (the environment wins). `meshq demo` supplies its demo key here.
    pub secret_env_fallback: BTreeMap<String, String>,
    /// Memory pool size in bytes, shared by all queries; operators that can
    /// spill (sorts, sort-merge joins, aggregations) spill to disk past it,
    /// and joins are planned as sort-merge joins so that they can. Unbounded
    /// when unset. Overrides `limits.memory` in `meshq.yaml`.
    pub memory_limit: Option<usize>,
    /// Where spill files go; overrides `limits.spill_dir` in `meshq.yaml`.
    /// The system temp directory when neither is set.
    pub spill_dir: Option<PathBuf>,
    /// Files SQL must never read or write besides the mesh's own (the
    /// server's TLS key and certificate, its audit log).
    pub protected_paths: Vec<PathBuf>,
    /// DataFusion settings (`datafusion.execution.batch_size`, …) over
    /// meshq's defaults, for every session; an unknown key or bad value
    /// fails the load.
    pub settings: Vec<(String, String)>,
    /// Runs physical plans across machines (the cluster's coordinator);
    /// every query runs in this process when unset.
    pub distribution: Option<Arc<dyn Distribution>>,
}

/// Turns the query planner of every mesh version into one that may run
/// plans across machines. It is applied after the mesh's own planner is
/// installed, so whatever it distributes was planned, policy-rewritten and
/// verified here first; a plan it cannot ship must run in this process.
pub trait Distribution: Send + Sync + std::fmt::Debug {
    /// The state builder with the distributed planner installed over the
    /// one `builder` holds; `tables` (the mesh version's) is what its
    /// distributed plans are verified against again.
    fn apply(
        &self,
        builder: SessionStateBuilder,
        tables: &Arc<GovernedTables>,
    ) -> SessionStateBuilder;

    /// Prepares the configuration of one statement, before it is planned:
    /// what the distributed planner fills in for the workers of that
    /// statement alone.
    fn prepare_statement(&self, _options: &mut datafusion::config::ConfigOptions) {}

    /// Bounds one query to `memory` bytes: what its workers are told, so
    /// each bounds its part of the query too.
    fn limit_query(&self, _options: &mut datafusion::config::ConfigOptions, _memory: usize) {}

    /// Checks the workers now (a worker failed a query), so the query's
    /// second run is planned over those that answer.
    fn recheck(&self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// The cluster's state, for the metrics.
    fn status(&self) -> ClusterStatus {
        ClusterStatus::default()
    }
}

/// What a coordinator reports about its cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Workers that answered their last health check.
    pub workers_answering: usize,
    /// Distributed plans the plan verifier refused (run on the
    /// coordinator instead) since the process started.
    pub plans_unverified: u64,
}

/// Files only this process has: the `parquet` copies of accelerated
/// ports (under its spill or temp directory) and the `scratch://` and
/// `export://` locations. In every session's config, so a distributed
/// planner keeps plans that scan them on this node: a worker elsewhere
/// would not find them.
#[derive(Debug, Clone, Default)]
pub struct LocalFiles {
    dirs: Vec<object_store::path::Path>,
    /// A directory could not be named absolutely: every local file counts
    /// as this process's own (fail closed).
    unknown: bool,
}

impl LocalFiles {
    /// The files under `dirs` (made absolute; a directory that exists also
    /// under its canonical name, through symbolic links), and the scratch
    /// and export locations.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        let mut named = Vec::new();
        let mut unknown = false;
        for dir in &dirs {
            let Ok(absolute) = std::path::absolute(dir) else {
                unknown = true;
                continue;
            };
            let mut forms = vec![absolute.clone()];
            if let Some(canonical) = canonical_prefix(&absolute)
                && canonical != absolute
            {
                forms.push(canonical);
            }
            for form in forms {
                match object_store::path::Path::from_absolute_path(&form) {
                    Ok(p) => named.push(p),
                    Err(_) => unknown = true,
                }
            }
        }
        Self {
            dirs: named,
            unknown,
        }
    }

    /// Whether `scan` reads any file only this process has.
    pub fn holds(&self, scan: &datafusion::datasource::physical_plan::FileScanConfig) -> bool {
        let url = scan.object_store_url.as_str();
        if [crate::files::SCRATCH_SCHEME, crate::files::EXPORT_SCHEME]
            .iter()
            .any(|s| url.starts_with(&format!("{s}://")))
        {
            return true;
        }
        url.starts_with("file://")
            && (self.unknown
                || scan.file_groups.iter().any(|group| {
                    group.iter().any(|file| {
                        self.dirs
                            .iter()
                            .any(|d| file.object_meta.location.prefix_matches(d))
                    })
                }))
    }
}

/// `path` with its longest existing ancestor resolved through symbolic
/// links (the directory itself may not exist yet).
fn canonical_prefix(path: &std::path::Path) -> Option<PathBuf> {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(canonical) = at.canonicalize() {
            let mut out = canonical;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Some(out);
        }
        rest.push(at.file_name()?.to_os_string());
        at = at.parent()?;
    }
}

impl EngineConfig {
    /// Defaults for a mesh directory.
    pub fn new(mesh_dir: impl Into<PathBuf>) -> Self {
        Self {
            mesh_dir: mesh_dir.into(),
            target_partitions: None,
            open_concurrency: 16,
            secret_env_fallback: BTreeMap::new(),
            memory_limit: None,
            spill_dir: None,
            protected_paths: Vec::new(),
            settings: Vec::new(),
            distribution: None,
        }
    }
}

/// A served table: its definition and its opened provider.
#[derive(Debug, Clone)]
pub struct ServedTable {
    /// From the contract.
    pub def: Arc<TableDef>,
    /// The contract view of the data.
    pub provider: Arc<ContractTableProvider>,
    /// Row count, version and last change: read when the table was opened
    /// (Delta, Iceberg) or on first use (files), then kept for this version.
    pub facts: Arc<tokio::sync::OnceCell<TableFacts>>,
}

/// The mesh, opened. Cheap to clone; sessions share its runtime and tables.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    mesh: Mesh,
    problems: Vec<Problem>,
    runtime: Arc<RuntimeEnv>,
    /// Functions, rules and config every session of this version starts
    /// from.
    template: SessionState,
    /// Spreads plans over workers, when the server has any.
    distribution: Option<Arc<dyn Distribution>>,
    /// Its table functions, for `information_schema.routines`.
    table_functions:
        Arc<std::collections::HashMap<String, Arc<datafusion::catalog::TableFunction>>>,
    domains: Arc<BTreeMap<String, Arc<DomainSchemaProvider>>>,
    served: Vec<ServedTable>,
    tables: Arc<GovernedTables>,
    /// Product and locations of every served table, to name the product
    /// behind a storage failure.
    sources: BTreeMap<String, SourceInfo>,
    files: FileAccess,
    /// Memory pool size and spill directory the runtime was built with.
    memory: (Option<usize>, Option<PathBuf>),
    /// Tables whose storage could not be opened (retried on reload).
    unopened: usize,
    /// Tables kept from the previous version because their new version
    /// has errors.
    kept: Vec<String>,
    /// The latest quality results, shared with the versions before and
    /// after this one.
    quality: Arc<crate::quality::QualityBoard>,
    /// Results of this version's queries (`cache:`).
    cache: Arc<crate::cache::ResultCache>,
    /// Copies of accelerated tables, shared with the versions before and
    /// after this one.
    accelerations: Arc<crate::acceleration::Accelerations>,
}

/// A handle on a mesh version that does not keep it alive: how a table
/// defined by SQL reaches the version that serves it.
#[derive(Debug, Clone)]
pub(crate) struct WeakEngine(std::sync::Weak<Inner>);

impl WeakEngine {
    /// The version, while it is served.
    pub(crate) fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

/// Identity of each mesh version loaded in this process.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// What opening the tables gave.
struct Opened {
    served: Vec<ServedTable>,
    /// The tables defined by SQL among them, bound to the version once it
    /// is built.
    defined: Vec<Arc<crate::defined::DefinedTable>>,
    /// (`domain.table`, location) of every mesh table's data.
    locations: Vec<(String, String)>,
    unopened: usize,
}

impl Engine {
    /// Loads the mesh and opens every table. Fails only if the mesh root is
    /// unusable; every other problem is in [`Engine::problems`] and only the
    /// tables it concerns are left out.
    pub async fn load(config: EngineConfig) -> Result<Self> {
        Self::load_after(config, None).await
    }

    /// Loads the mesh again after `previous` (a reload). Errors in
    /// `meshq.yaml` or a global policy set reject the whole reload
    /// ([`Error::ReloadRejected`]): their scope is every table. A table
    /// whose product or contract now has errors, and whose files still
    /// exist, keeps its previous version (definition, opened data and
    /// policies); [`Engine::kept`] lists them. Removed products are gone.
    pub async fn load_after(config: EngineConfig, previous: Option<&Engine>) -> Result<Self> {
        let outcome = load_mesh(&config.mesh_dir)?;
        let mut mesh = outcome.mesh;
        let mut problems = outcome.problems;
        let broken_set = broken_policy_set(&problems);
        let memory = memory_settings(&config, &mesh);
        let session_config = session_config(&config, &mesh, memory.0.is_some(), &mut problems)?;
        if previous.is_some() {
            reject_mesh_wide_errors(&problems)?;
        }
        let runtime = runtime_for(&memory, previous)?;
        let connections =
            Sources::with_secrets(&mesh.config, &config.secret_env_fallback, &config.mesh_dir);
        let opener = SessionContext::new_with_state(
            SessionStateBuilder::new()
                .with_config(session_config.clone())
                .with_runtime_env(Arc::clone(&runtime))
                .with_default_features()
                .build(),
        );
        let Opened {
            mut served,
            defined,
            mut locations,
            unopened,
        } = open_tables(
            &opener,
            &connections,
            &mesh,
            config.open_concurrency,
            &mut problems,
        )
        .await;
        refuse_reads_of_materializations(&mesh, &mut served, &locations, &mut problems);
        let accelerations = previous
            .map(|p| Arc::clone(&p.inner.accelerations))
            .unwrap_or_default();
        accelerate(&accelerations, &runtime, &connections.stores, &mut served).await;
        let version = NEXT_VERSION.fetch_add(1, Ordering::Relaxed);
        let mut tables = compile_policies(
            version,
            &mesh,
            &served,
            &opener,
            &config.secret_env_fallback,
            &mut problems,
        );
        if let Some(file) = &broken_set {
            fail_closed(&mut tables, &served, file, &mut problems);
        }
        let kept = match previous {
            Some(prev) => keep_last_good(
                prev,
                &mut mesh,
                &mut served,
                &mut tables,
                &mut locations,
                &mut problems,
            ),
            None => Vec::new(),
        };
        // Slots of tables no longer accelerated go; a table kept from the
        // previous version keeps its slot (and so its refreshes).
        accelerations.retain(
            &served
                .iter()
                .filter(|t| t.def.acceleration.is_some())
                .map(|t| t.def.qualified_name())
                .collect::<Vec<_>>(),
        );
        // Sorted by name: `served_table` looks tables up by binary search.
        served.sort_by_key(|t| t.def.qualified_name());
        let sources = sources_of(&served, &locations);
        let domains = Arc::new(domains_of(&served));
        check_default_schemas(&mesh, &domains, &mut problems);
        let forbidden = forbidden_paths(&mesh, &config, &memory, &locations);
        let (files, file_problems) = FileAccess::resolve(
            &mesh.config.files,
            &mesh.root,
            &forbidden,
            &connections.stores,
        );
        for p in file_problems {
            problems.push(Problem::error(meshq_catalog::platform::PLATFORM_FILE, p));
        }
        files.register(&runtime);
        let tables = Arc::new(tables);
        let session_config = session_config.with_extension(Arc::new(LocalFiles::new(vec![
            crate::acceleration::copies_dir(memory.1.as_deref()),
        ])));
        let template = template_state(
            session_config,
            Arc::clone(&runtime),
            &tables,
            config.distribution.as_deref(),
        );
        let table_functions = Arc::new(template.table_functions().clone());
        let cache = Arc::new(crate::cache::ResultCache::new(
            &mesh.config.cache,
            &runtime.memory_pool,
            previous
                .map(|p| Arc::clone(p.inner.cache.stats()))
                .unwrap_or_default(),
        ));
        info!(
            tables = served.len(),
            problems = problems.len(),
            kept = kept.len(),
            "mesh loaded"
        );
        let engine = Self {
            inner: Arc::new(Inner {
                mesh,
                problems,
                runtime,
                template,
                distribution: config.distribution.clone(),
                table_functions,
                domains,
                served,
                tables,
                sources,
                files,
                memory,
                unopened,
                kept,
                quality: previous
                    .map(|p| Arc::clone(&p.inner.quality))
                    .unwrap_or_default(),
                cache,
                accelerations,
            }),
        };
        Ok(engine.with_defined(&defined).await)
    }

    /// Checks the tables defined by SQL against this version (see
    /// [`crate::defined::verify`]), adds what it found to the problems,
    /// and binds them to the version.
    async fn with_defined(self, defined: &[Arc<crate::defined::DefinedTable>]) -> Self {
        if defined.is_empty() {
            return self;
        }
        let verified = crate::defined::verify(&self, defined).await;
        // A copy of a product that may no longer be computed (its runAs
        // lost its consent, its SQL broke) is never served again.
        for t in defined {
            if let Some(why) = t.broken()
                && let Some(slot) = self.inner.accelerations.get(&t.qualified_name())
            {
                slot.discard(why);
            }
        }
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.problems.extend(verified.problems);
                Arc::new(inner)
            }
            // Nothing else holds the version yet; should something, the
            // refusals are kept in the tables all the same.
            Err(inner) => inner,
        };
        for t in defined {
            t.bind(WeakEngine(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// What `table`'s metadata says of it (rows, version, last change),
    /// without reading its data.
    pub async fn facts(&self, table: &ServedTable) -> TableFacts {
        *table
            .facts
            .get_or_init(|| meshq_connectors::facts::listing_facts(&self.inner.runtime, &table.def))
            .await
    }

    /// Whether `self` and `other` are the same load of the mesh.
    pub fn same_version(&self, other: &Engine) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Tables kept from the previous version by [`Engine::load_after`].
    pub fn kept(&self) -> &[String] {
        &self.inner.kept
    }

    /// How many tables could not be opened (their storage failed); a reload
    /// tries them again.
    pub fn unopened(&self) -> usize {
        self.inner.unopened
    }

    /// The copies of accelerated tables.
    pub fn accelerations(&self) -> &crate::acceleration::Accelerations {
        &self.inner.accelerations
    }

    /// The spill directory, when one is configured.
    pub fn spill_dir(&self) -> Option<PathBuf> {
        self.inner.memory.1.clone()
    }

    /// This version's result cache.
    pub fn result_cache(&self) -> &Arc<crate::cache::ResultCache> {
        &self.inner.cache
    }

    /// The latest quality results of the served tables.
    pub fn quality_board(&self) -> &crate::quality::QualityBoard {
        &self.inner.quality
    }

    /// A plain DataFusion context on this version's configuration and
    /// runtime: no mesh catalog, no policy rule. For the engine's own work
    /// on the producer's data (quality checks, copies of accelerated
    /// tables), never for a consumer's statement.
    pub(crate) fn unpoliced_context(&self) -> SessionContext {
        SessionContext::new_with_state(
            SessionStateBuilder::new()
                .with_config(self.session_config())
                .with_runtime_env(Arc::clone(&self.inner.runtime))
                .with_default_features()
                .build(),
        )
    }

    /// The session configuration every session of this version starts
    /// from.
    pub fn session_config(&self) -> SessionConfig {
        self.inner.template.config().clone()
    }

    /// The runtime shared by every query (memory pool, spill files, object
    /// stores).
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.inner.runtime
    }

    /// The loaded mesh model.
    pub fn mesh(&self) -> &Mesh {
        &self.inner.mesh
    }

    /// Every problem found while loading, including tables that could not be
    /// opened.
    pub fn problems(&self) -> &[Problem] {
        &self.inner.problems
    }

    /// Tables being served, sorted by `domain.name`.
    pub fn served_tables(&self) -> &[ServedTable] {
        &self.inner.served
    }

    /// The served table `name` (`domain.table`); the list is sorted by name.
    pub fn served_table(&self, name: &str) -> Option<&ServedTable> {
        let served = &self.inner.served;
        served
            .binary_search_by(|t| t.def.qualified_name().as_str().cmp(name))
            .ok()
            .map(|i| &served[i])
    }

    /// Whether `name` (`domain.table`) is served.
    pub fn is_served(&self, name: &str) -> bool {
        self.inner.tables.get(name).is_some()
    }

    /// Where each served table's data is, by `domain.table`.
    pub fn sources(&self) -> &BTreeMap<String, SourceInfo> {
        &self.inner.sources
    }

    /// The scratch and export locations SQL may use.
    pub fn files(&self) -> &FileAccess {
        &self.inner.files
    }

    /// How this engine's queries are spread over workers, if they are.
    pub fn distribution(&self) -> Option<&Arc<dyn Distribution>> {
        self.inner.distribution.as_ref()
    }

    /// Every table with its policies.
    pub fn tables(&self) -> &Arc<GovernedTables> {
        &self.inner.tables
    }

    /// A new session for `principal`, for one-off use (the shell, tests).
    pub fn session(&self, principal: &Principal) -> MeshSession {
        self.session_for(&self.new_session_data(principal.clone()))
    }

    /// The state of a new session of `principal`, starting in its default
    /// schema (`defaults.schema` of the principal or the mesh in
    /// `meshq.yaml`; `public` when unset).
    pub fn new_session_data(&self, principal: Principal) -> Arc<SessionData> {
        let schema = self
            .inner
            .mesh
            .config
            .default_schema_for(principal.name.as_deref())
            .map(str::to_string);
        let data = SessionData::new(principal);
        if let Some(schema) = schema {
            data.set_default_schema(&schema);
        }
        Arc::new(data)
    }

    /// The planning context of one statement of the session `data`, on this
    /// version of the mesh.
    pub fn session_for(&self, data: &Arc<SessionData>) -> MeshSession {
        let principal = data.principal();
        let mut state = self.inner.template.clone();
        let limits = &self.inner.mesh.config.limits;
        let max_output = limits.max_function_output(&limits.for_principal(&principal)) as usize;
        {
            let options = state.config_mut().options_mut();
            let schema = data.default_schema();
            if schema == SCRATCH_SCHEMA
                || schema == crate::meta::META_SCHEMA
                || self.inner.domains.contains_key(&schema)
                || data.schema(&schema).is_some()
            {
                options.catalog.default_schema = schema;
            }
            options
                .extensions
                .insert(MeshqOptions::new(Arc::clone(&principal), Some(max_output)));
            for (key, value) in data.settings() {
                // Checked when it was set; a value a newer version rejects
                // is dropped rather than failing every statement.
                let _ = options.set(&key, &value);
            }
            if let Some(d) = &self.inner.distribution {
                d.prepare_statement(options);
            }
        }
        if !data.settings().is_empty() {
            // Functions made from the configuration (`to_timestamp` takes
            // the time zone) are made again, as DataFusion's own `SET`
            // does.
            let options = state.config().options();
            let updated: Vec<_> = state
                .scalar_functions()
                .values()
                .filter_map(|f| f.inner().with_updated_config(options).map(Arc::new))
                .collect();
            for f in updated {
                // Replacing a function by name cannot fail.
                let _ = state.register_udf(f);
            }
        }
        let catalog = MeshCatalog::new(
            Arc::clone(&self.inner.domains),
            Arc::clone(&self.inner.tables),
            Arc::clone(&principal),
            Arc::clone(data),
            self.inner.mesh.config.discovery.visibility,
            Arc::clone(&self.inner.table_functions),
            self.clone(),
        );
        state.register_catalog_list(SessionCatalogList::new(catalog, Arc::clone(data)));
        MeshSession::new(
            SessionContext::new_with_state(state),
            self.clone(),
            Arc::clone(data),
            principal,
        )
    }

    /// The policies a query by `principal` reading `tables` (`domain.table`)
    /// has applied, for the audit log: names, never values.
    pub fn applied_policies(&self, principal: &Principal, tables: &[String]) -> AppliedPolicies {
        let mut out = AppliedPolicies::default();
        for table in tables {
            let Ok(p) = self.inner.tables.policies_for(table, principal) else {
                continue;
            };
            for m in p.masks_for(principal) {
                out.masks.push(format!("{table}.{}:{}", m.column, m.kind));
                if let Some(id) = &m.global_policy
                    && !out.global.contains(id)
                {
                    out.global.push(id.clone());
                }
            }
            for f in p.filters_for(principal) {
                out.row_filters.push(format!("{table}:{}", f.id));
            }
        }
        out
    }

    /// The product each of `tables` (`domain.table`) belongs to, deduplicated.
    pub fn products_of(&self, tables: &[String]) -> Vec<String> {
        let mut out: Vec<String> = tables
            .iter()
            .filter_map(|t| self.inner.sources.get(t).map(|s| s.product.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Policies applied to one query, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedPolicies {
    /// `domain.table.column:kind` of each mask applied.
    pub masks: Vec<String>,
    /// `domain.table:filter-id` of each row filter applied.
    pub row_filters: Vec<String>,
    /// Ids of the global policies among them.
    pub global: Vec<String>,
}

/// A `defaults.schema` naming no served domain: sessions would start in a
/// schema that is not there (they fall back to `public`).
fn check_default_schemas(
    mesh: &Mesh,
    domains: &BTreeMap<String, Arc<DomainSchemaProvider>>,
    problems: &mut Vec<Problem>,
) {
    let config = &mesh.config;
    let named = std::iter::once(("defaults.schema".to_string(), &config.defaults.schema)).chain(
        config.principals.iter().map(|p| {
            (
                format!("principal `{}`: defaults.schema", p.name),
                &p.defaults.schema,
            )
        }),
    );
    for (what, schema) in named {
        if let Some(s) = schema
            && s != SCRATCH_SCHEMA
            && !domains.contains_key(s)
        {
            problems.push(Problem::warning(
                meshq_catalog::platform::PLATFORM_FILE,
                format!(
                    "{what}: no domain `{s}` is served; such sessions start in `{SCRATCH_SCHEMA}`"
                ),
            ));
        }
    }
}

/// Whether `p` is an error in a file whose name satisfies `name`.
fn error_in(p: &Problem, name: impl Fn(&str) -> bool) -> bool {
    p.is_error()
        && p.file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(name)
}

/// A global policy set that cannot be read could govern any column.
fn broken_policy_set(problems: &[Problem]) -> Option<PathBuf> {
    problems
        .iter()
        .find(|p| error_in(p, |n| n.ends_with(".policy.yaml")))
        .map(|p| p.file.clone())
}

/// On a reload, errors in files whose scope is every table keep the
/// previous version.
fn reject_mesh_wide_errors(problems: &[Problem]) -> Result<()> {
    let mesh_wide: Vec<Problem> = problems
        .iter()
        .filter(|p| {
            error_in(p, |n| {
                n == meshq_catalog::platform::PLATFORM_FILE || n.ends_with(".policy.yaml")
            })
        })
        .cloned()
        .collect();
    if mesh_wide.is_empty() {
        Ok(())
    } else {
        Err(Error::ReloadRejected {
            problems: mesh_wide,
        })
    }
}

/// The memory pool size and spill directory: flags first, then `limits:`.
fn memory_settings(config: &EngineConfig, mesh: &Mesh) -> (Option<usize>, Option<PathBuf>) {
    let limit = config
        .memory_limit
        .or(mesh.config.limits.memory.map(|b| b.0 as usize));
    let spill_dir = config.spill_dir.clone().or_else(|| {
        mesh.config
            .limits
            .spill_dir
            .as_ref()
            .map(|d| mesh.root.join(d))
    });
    (limit, spill_dir)
}

/// Refuses every table whose data is where a product is materialised, or
/// whose folder holds that place: it would read the product's rows
/// without the product's own policies (and a materialisation inside
/// another product's folder would change that product's data).
fn refuse_reads_of_materializations(
    mesh: &Mesh,
    served: &mut Vec<ServedTable>,
    locations: &[(String, String)],
    problems: &mut Vec<Problem>,
) {
    let targets: Vec<(String, String)> = mesh
        .tables
        .iter()
        .filter_map(|t| {
            let url = t.acceleration.as_ref()?.location.as_ref()?;
            Some((
                t.qualified_name(),
                url.as_str().trim_end_matches('/').to_string(),
            ))
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    let mut refused = Vec::new();
    for (name, location) in locations {
        let cut = location.find(['*', '?', '[']).unwrap_or(location.len());
        let text = &location[..cut];
        let url = if text.contains("://") {
            text.to_string()
        } else {
            match url::Url::from_file_path(text) {
                Ok(u) => u.to_string(),
                Err(()) => continue,
            }
        };
        let url = url.trim_end_matches('/');
        for (owner, target) in &targets {
            let overlaps = url == target
                || url.starts_with(&format!("{target}/"))
                || target.starts_with(&format!("{url}/"));
            if name != owner && overlaps && !refused.iter().any(|(n, _)| n == name) {
                refused.push((name.clone(), owner.clone()));
            }
        }
    }
    for (name, owner) in refused {
        let Some(i) = served.iter().position(|t| t.def.qualified_name() == name) else {
            continue;
        };
        let t = served.remove(i);
        problems.push(Problem::error(
            mesh.display_path(&t.def.contract_file),
            format!(
                "table `{name}` (product `{}`): its data overlaps the folder where `{owner}` is materialised, whose rows are served only under `{owner}`'s contract; move one of them; the table is not served",
                t.def.product_id
            ),
        ));
    }
}

/// Puts every accelerated table's copy slot under its contract view (the
/// slot it had before when its definition is unchanged).
async fn accelerate(
    accelerations: &crate::acceleration::Accelerations,
    runtime: &Arc<RuntimeEnv>,
    stores: &meshq_connectors::StoreRegistry,
    served: &mut [ServedTable],
) {
    for t in served.iter_mut() {
        let Some(spec) = t.def.acceleration.clone() else {
            continue;
        };
        // A materialisation in an object store is written through the
        // store `meshq.yaml` gives its bucket.
        if let Some(url) = spec.location.as_ref().filter(|u| u.scheme() != "file") {
            match stores.store_for(url) {
                Ok(Some(store)) => {
                    let root = &url[..url::Position::BeforePath];
                    if let Ok(root) = url::Url::parse(root) {
                        runtime.register_object_store(&root, store);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(table = %t.def.qualified_name(), error = %e, "no store for the materialisation's location");
                }
            }
        }
        let slot = accelerations.slot(&t.def, spec);
        let version = crate::acceleration::source_version(runtime, t).await;
        t.provider = Arc::new(
            t.provider
                .accelerated(slot, version.unwrap_or_else(|| "unknown".into())),
        );
    }
}

/// The runtime for `memory`; the previous version's when the settings are
/// the same, so queries still running on it share the pool.
fn runtime_for(
    memory: &(Option<usize>, Option<PathBuf>),
    previous: Option<&Engine>,
) -> Result<Arc<RuntimeEnv>> {
    if let Some(p) = previous
        && p.inner.memory == *memory
    {
        return Ok(Arc::clone(&p.inner.runtime));
    }
    // File listings are not cached: a file added to a Parquet, CSV or JSON
    // product is read by the next query (DataFusion would otherwise keep
    // the first listing for the life of the process), and the result
    // cache's key, which lists the files too, describes what the scan
    // reads.
    let mut runtime = RuntimeEnvBuilder::new().with_cache_manager(
        datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
            .with_list_files_cache_limit(0),
    );
    if let Some(limit) = memory.0 {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    }
    if let Some(dir) = &memory.1 {
        std::fs::create_dir_all(dir).map_err(|e| {
            datafusion::error::DataFusionError::Execution(format!(
                "cannot create the spill directory {}: {e}",
                dir.display()
            ))
        })?;
        runtime = runtime.with_temp_file_path(dir);
    }
    Ok(runtime.build_arc()?)
}

fn session_config(
    config: &EngineConfig,
    mesh: &Mesh,
    memory_bounded: bool,
    problems: &mut Vec<Problem>,
) -> Result<SessionConfig> {
    let mut session_config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG, SCRATCH_SCHEMA)
        .with_create_default_catalog_and_schema(false)
        // The mesh catalog serves its own information_schema (see
        // domain_schema.rs); SHOW TABLES and friends find it there.
        .with_information_schema(false)
        .with_option_extension(MeshqOptions::default())
        .with_option_extension(meshq_connectors::mesh_scan::ScanOptions::default())
        .with_option_extension(PlanOptions::default());
    // Sessions run in UTC: `TIMESTAMP WITH TIME ZONE '…'` literals and now()
    // keep a zone (clients see a zoned timestamp), while plain `TIMESTAMP`
    // literals stay zone-less as before.
    session_config.options_mut().execution.time_zone = Some("+00:00".into());
    if let Some(n) = config.target_partitions {
        session_config = session_config.with_target_partitions(n);
    }
    for (key, value) in DEFAULT_SETTINGS {
        session_config.options_mut().set(key, value)?;
    }
    if config.distribution.is_some() {
        for (key, value) in COORDINATOR_SETTINGS {
            session_config.options_mut().set(key, value)?;
        }
    }
    if memory_bounded {
        // Under a memory budget, joins must be able to spill: DataFusion's
        // hash join cannot, its sort-merge join can.
        session_config = session_config.set_bool("datafusion.optimizer.prefer_hash_join", false);
    }
    // `meshq.yaml` `settings`: what a session could `SET`, for every
    // session. A key a session may not set, or a bad value, is an error of
    // the file (a reload with it is rejected) and is left out.
    for (key, value) in &mesh.config.settings {
        let res = match crate::session::refused_server_setting(key) {
            Some(reason) => Err(reason.to_string()),
            None => session_config
                .options_mut()
                .set(key, value)
                .map_err(|e| e.strip_backtrace().replace("\ncaused by\n", ": ")),
        };
        if let Err(why) = res {
            problems.push(Problem::error(
                meshq_catalog::platform::PLATFORM_FILE,
                format!(
                    "settings: `{key}: {value}` is not applied: {why}; remove it or fix the value \
                     (the keys are those of SQL `SET`, see docs/operating.md)"
                ),
            ));
        }
    }
    for (key, value) in &config.settings {
        session_config.options_mut().set(key, value)?;
    }
    Ok(session_config)
}

/// Opens every table of the mesh, `concurrency` at a time.
async fn open_tables(
    opener: &SessionContext,
    connections: &Sources,
    mesh: &Mesh,
    concurrency: usize,
    problems: &mut Vec<Problem>,
) -> Opened {
    let state = opener.state();
    let opened: Vec<_> = futures::stream::iter(mesh.tables.clone())
        .map(|def| {
            let state = &state;
            async move {
                let res = if matches!(def.source.location, Location::Sql { .. }) {
                    let table = Arc::new(crate::defined::DefinedTable::new(Arc::clone(&def)));
                    meshq_connectors::open::contract_view(&def, Arc::clone(&table) as _)
                        .map(|opened| (opened, Some(table)))
                } else {
                    open_table(state, connections, &def)
                        .await
                        .map(|o| (o, None))
                };
                (def, res)
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let mut served = Vec::new();
    let mut defined = Vec::new();
    let mut unopened = 0;
    // The declared location, plus the data folder found on opening
    // (Iceberg tables named through a catalog).
    let mut locations: Vec<(String, String)> = mesh
        .tables
        .iter()
        .filter(|t| !matches!(t.source.location, Location::Catalog { .. }))
        .map(|t| (t.qualified_name(), t.source.location.to_string()))
        .collect();
    for (def, res) in opened {
        let file = mesh.display_path(&def.contract_file);
        let name = def.qualified_name();
        match res {
            Ok((t, defined_table)) => {
                if let Some(d) = defined_table {
                    defined.push(d);
                }
                if let Some(data) = &t.data_location {
                    locations.push((name.clone(), data.clone()));
                }
                for d in t.drift {
                    problems.push(Problem::error(
                        file.clone(),
                        format!(
                            "table `{name}` (product `{}`): contract drift: {d}; queries reading this column fail, the other columns are served",
                            def.product_id
                        ),
                    ));
                }
                for w in t.warnings {
                    problems.push(Problem::warning(
                        file.clone(),
                        format!("table `{name}`: {w}"),
                    ));
                }
                served.push(ServedTable {
                    def,
                    provider: t.provider,
                    facts: Arc::new(tokio::sync::OnceCell::new_with(t.facts)),
                });
            }
            Err(e) => {
                unopened += 1;
                warn!(table = %name, product = %def.product_id, "table not served");
                problems.push(Problem::error(
                    file,
                    format!(
                        "table `{name}` (product `{}`): {e}; the table is not served",
                        def.product_id
                    ),
                ));
            }
        }
    }
    Opened {
        served,
        defined,
        locations,
        unopened,
    }
}

/// Compiles every served table's policies. A table whose policies cannot be
/// built stays registered but unreadable, and the problem names the policy.
fn compile_policies(
    version: u64,
    mesh: &Mesh,
    served: &[ServedTable],
    ctx: &SessionContext,
    secret_env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> GovernedTables {
    // Typing-only principal functions, so expressions resolve and type-check.
    for f in PrincipalFn::ALL {
        ctx.register_udf(ScalarUDF::new_from_impl(PrincipalUdf::new(f)));
    }
    let mut tables = GovernedTables::new(version);
    for t in served {
        let key = t.def.qualified_name();
        let governance = match compile_table(mesh, &t.def, &t.provider.schema(), ctx, secret_env) {
            Ok(p) => TableGovernance::Ready(Arc::new(p)),
            Err(errors) => {
                for e in &errors {
                    problems.push(Problem::error(
                        mesh.display_path(&e.file),
                        format!(
                            "table `{key}`: {}: {}; the table is unreadable until this is fixed",
                            e.policy, e.reason
                        ),
                    ));
                }
                let first = &errors[0];
                TableGovernance::Broken(PolicyError::Broken {
                    table: key.clone(),
                    policy: first.policy.clone(),
                    reason: first.reason.clone(),
                })
            }
        };
        tables.insert(
            key,
            GovernedTable {
                provider: Arc::clone(&t.provider),
                governance,
            },
        );
    }
    tables
}

/// A broken global policy set makes every table unreadable until it is
/// fixed.
fn fail_closed(
    tables: &mut GovernedTables,
    served: &[ServedTable],
    file: &Path,
    problems: &mut Vec<Problem>,
) {
    for t in served {
        let key = t.def.qualified_name();
        tables.insert(
            key.clone(),
            GovernedTable {
                provider: Arc::clone(&t.provider),
                governance: TableGovernance::Broken(PolicyError::Broken {
                    table: key,
                    policy: format!("global policy set {}", file.display()),
                    reason: "the file has errors, so the policies it declares cannot be enforced; every table is unreadable until it is fixed".into(),
                }),
            },
        );
    }
    problems.push(Problem::error(
        file.to_path_buf(),
        "this global policy set has errors: every table is unreadable until it is fixed (fail closed)",
    ));
}

/// After a reload: keeps the previous version of each table that is no
/// longer served (or whose policies no longer build) because its product or
/// contract now has errors, as long as those files still exist. Returns the
/// kept tables' names.
fn keep_last_good(
    prev: &Engine,
    mesh: &mut Mesh,
    served: &mut Vec<ServedTable>,
    tables: &mut GovernedTables,
    locations: &mut Vec<(String, String)>,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let error_files: BTreeSet<PathBuf> = problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.file.clone())
        .collect();
    let broken = |t: Option<&GovernedTable>| {
        matches!(t.map(|t| &t.governance), Some(TableGovernance::Broken(_)))
    };
    let mut kept = Vec::new();
    for old in prev.served_tables() {
        let product_file = mesh.display_path(&old.def.product_file);
        let contract_file = mesh.display_path(&old.def.contract_file);
        let has_errors =
            error_files.contains(&product_file) || error_files.contains(&contract_file);
        if !has_errors || !old.def.product_file.exists() || !old.def.contract_file.exists() {
            continue;
        }
        let name = old.def.qualified_name();
        let previous = prev.inner.tables.get(&name);
        let now = served.iter().position(|t| t.def.qualified_name() == name);
        match now {
            None => {
                // Another product may have taken the name meanwhile.
                if mesh
                    .tables
                    .iter()
                    .any(|t| t.qualified_name() == name && t.product_id != old.def.product_id)
                {
                    continue;
                }
                served.push(old.clone());
                mesh.tables.retain(|t| t.qualified_name() != name);
                mesh.tables.push(Arc::clone(&old.def));
            }
            Some(i) if broken(tables.get(&name)) && !broken(previous) => {
                served[i] = old.clone();
                if let Some(t) = mesh.tables.iter_mut().find(|t| t.qualified_name() == name) {
                    *t = Arc::clone(&old.def);
                }
            }
            Some(_) => continue,
        }
        if let Some(g) = previous {
            tables.insert(name.clone(), g.clone());
        }
        locations.retain(|(n, _)| n != &name);
        locations.extend(
            prev.inner
                .sources
                .get(&name)
                .into_iter()
                .flat_map(|s| s.locations.iter())
                .map(|l| (name.clone(), l.clone())),
        );
        problems.push(Problem::warning(
            contract_file,
            format!(
                "table `{name}` (product `{}`): the new version has errors; the previous version is still served",
                old.def.product_id
            ),
        ));
        kept.push(name);
    }
    served.sort_by_key(|t| t.def.qualified_name());
    mesh.tables.sort_by_key(|t| t.qualified_name());
    kept
}

/// Product and data locations of every served table, in one pass (a
/// per-table scan of the locations is quadratic in the number of tables).
fn sources_of(
    served: &[ServedTable],
    locations: &[(String, String)],
) -> BTreeMap<String, SourceInfo> {
    let mut sources: BTreeMap<String, SourceInfo> = served
        .iter()
        .map(|t| {
            (
                t.def.qualified_name(),
                SourceInfo {
                    product: t.def.product_id.clone(),
                    locations: Vec::new(),
                },
            )
        })
        .collect();
    for (name, location) in locations {
        if let Some(source) = sources.get_mut(name) {
            source.locations.push(location.clone());
        }
    }
    sources
}

fn domains_of(served: &[ServedTable]) -> BTreeMap<String, Arc<DomainSchemaProvider>> {
    let mut by_domain: BTreeMap<String, BTreeMap<String, Arc<dyn TableProvider>>> = BTreeMap::new();
    for t in served {
        by_domain.entry(t.def.domain.clone()).or_default().insert(
            t.def.name.clone(),
            Arc::clone(&t.provider) as Arc<dyn TableProvider>,
        );
    }
    by_domain
        .into_iter()
        .map(|(d, tables)| {
            let schema = Arc::new(DomainSchemaProvider::new(d.clone(), tables));
            (d, schema)
        })
        .collect()
}

/// Local paths SQL must never reach: the mesh, every table's data, the
/// spill directory, files holding secrets, and what the caller protects.
fn forbidden_paths(
    mesh: &Mesh,
    config: &EngineConfig,
    memory: &(Option<usize>, Option<PathBuf>),
    locations: &[(String, String)],
) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = vec![mesh.root.clone()];
    paths.extend(memory.1.iter().cloned());
    // Local copies of accelerated ports hold raw rows.
    let copies_on_disk = mesh.tables.iter().any(|t| {
        t.acceleration.as_ref().is_some_and(|a| {
            a.engine == meshq_catalog::acceleration::AccelerationEngine::Parquet
                && a.location.is_none()
        })
    });
    // Materialised products' folders hold their rows before the
    // product's own policies.
    paths.extend(
        mesh.tables
            .iter()
            .filter_map(|t| t.acceleration.as_ref()?.local_dir()),
    );
    if copies_on_disk {
        paths.push(crate::acceleration::copies_dir(memory.1.as_deref()));
    }
    paths.extend(config.protected_paths.iter().cloned());
    for (_, l) in locations {
        if !l.contains("://") || l.starts_with("file://") {
            let text = l.strip_prefix("file://").unwrap_or(l);
            let cut = text.find(['*', '?', '[']).unwrap_or(text.len());
            paths.push(PathBuf::from(&text[..cut]));
        }
    }
    for store in mesh.config.stores.values() {
        if let StoreConfig::Gcs {
            service_account_path: Some(p),
            ..
        } = store
        {
            paths.push(mesh.root.join(p));
        }
    }
    for catalog in mesh.config.catalogs.values() {
        if let CatalogConfig::Sql { uri, .. } = catalog {
            let path = uri
                .strip_prefix("sqlite:")
                .unwrap_or(uri)
                .trim_start_matches("//");
            paths.push(mesh.root.join(path));
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let absolute = if p.is_absolute() {
                p
            } else {
                mesh.root.join(p)
            };
            std::fs::canonicalize(&absolute).unwrap_or(absolute)
        })
        .collect()
}

/// The session state every session of a mesh version starts from: DataFusion's
/// functions and rules, with the policy rule first in the analyzer, the
/// barrier-aware filter pushdown and the leakproof pushdown in the
/// optimizer, the planner that verifies every plan, the principal functions
/// (bound to literals by the policy rule) and functions that allocate by
/// argument bounded.
fn template_state(
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    tables: &Arc<GovernedTables>,
    distribution: Option<&dyn Distribution>,
) -> SessionState {
    let policy_rule: Arc<dyn AnalyzerRule + Send + Sync> =
        Arc::new(PolicyAnalyzerRule::new(Arc::clone(tables)));
    // The policy rule runs first so type coercion also sees its output.
    let mut analyzer_rules = vec![policy_rule];
    analyzer_rules.extend(Analyzer::new().rules);
    let mut optimizer_rules: Vec<Arc<dyn OptimizerRule + Send + Sync>> = Vec::new();
    for rule in Optimizer::new().rules {
        if rule.name() == "push_down_filter" {
            optimizer_rules.push(Arc::new(BarrierAwarePushDownFilter::new(rule)));
            optimizer_rules.push(Arc::new(PolicyPushdownRule));
            // Leaves carry their filters from here on.
            optimizer_rules.push(Arc::new(ReorderJoins));
        } else {
            optimizer_rules.push(rule);
        }
    }
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_analyzer_rules(analyzer_rules)
        .with_optimizer_rules(optimizer_rules)
        // Scans wait for the filters of the hash joins above them.
        .with_physical_optimizer_rule(Arc::new(meshq_connectors::mesh_scan::JoinFilterWaits))
        .with_query_planner(Arc::new(MeshQueryPlanner::new(Arc::clone(tables))));
    if let Some(d) = distribution {
        builder = d.apply(builder, tables);
    }
    let mut state = builder.build();
    let mut functions: Vec<Arc<ScalarUDF>> = PrincipalFn::ALL
        .into_iter()
        .map(|f| Arc::new(ScalarUDF::new_from_impl(PrincipalUdf::new(f))))
        .collect();
    functions.extend(bounded_functions(&state));
    for f in functions {
        // Replacing a function by name cannot fail.
        let _ = state.register_udf(f);
    }
    state
}
