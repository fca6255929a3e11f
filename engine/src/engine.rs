//! [`Engine`]: a loaded mesh with every servable table opened, handing out
//! DataFusion sessions over it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::datasource::TableProvider;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::ScalarUDF;
use datafusion::optimizer::analyzer::Analyzer;
use datafusion::optimizer::{AnalyzerRule, Optimizer, OptimizerRule};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use meshq_catalog::{Mesh, Principal, Problem, TableDef, load_mesh};
use meshq_connectors::{StoreRegistry, open_table};
use tracing::{info, warn};

use crate::domain_schema::{DomainSchemaProvider, PrincipalSchemaProvider};
use crate::error::Result;
use crate::policy::PolicyError;
use crate::policy::barrier::MeshQueryPlanner;
use crate::policy::compile::compile_table;
use crate::policy::pushdown::PolicyPushdownRule;
use crate::policy::rule::{PolicyAnalyzerRule, PolicyCatalog, TableGovernance};
use crate::policy::udf::{PrincipalFn, PrincipalFunction};
use crate::session::MeshSession;
use crate::storage_error::SourceInfo;

/// SQL catalog holding every domain.
pub const CATALOG: &str = "mesh";
/// Per-session scratch schema (the default schema).
pub const SCRATCH_SCHEMA: &str = "public";

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
        }
    }
}

/// A served table: its definition and its opened provider.
#[derive(Debug, Clone)]
pub struct ServedTable {
    /// From the contract.
    pub def: Arc<TableDef>,
    /// The contract view of the data.
    pub provider: Arc<dyn TableProvider>,
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
    session_config: SessionConfig,
    domains: BTreeMap<String, Arc<DomainSchemaProvider>>,
    served: Vec<ServedTable>,
    policies: Arc<PolicyCatalog>,
    /// (`domain.table`, location) of every mesh table, for the lockdown.
    locations: Arc<Vec<(String, String)>>,
    /// Product and locations of every served table, to name the product
    /// behind a storage failure.
    sources: Arc<BTreeMap<String, SourceInfo>>,
    /// Memory pool size and spill directory the runtime was built with.
    memory: (Option<usize>, Option<PathBuf>),
    /// Tables whose storage could not be opened (retried on reload).
    unopened: usize,
    /// Tables kept from the previous version because their new version
    /// has errors.
    kept: Vec<String>,
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
        // A global policy set that cannot be read could govern any column
        // (checked before policy compilation adds errors of its own).
        let broken_set: Option<PathBuf> = problems
            .iter()
            .find(|p| error_in(p, |n| n.ends_with(".policy.yaml")))
            .map(|p| p.file.clone());
        if previous.is_some() {
            let mesh_wide: Vec<Problem> = problems
                .iter()
                .filter(|p| {
                    error_in(p, |n| {
                        n == meshq_catalog::platform::PLATFORM_FILE || n.ends_with(".policy.yaml")
                    })
                })
                .cloned()
                .collect();
            if !mesh_wide.is_empty() {
                return Err(crate::Error::ReloadRejected {
                    problems: mesh_wide,
                });
            }
        }
        let memory_limit = config
            .memory_limit
            .or(mesh.config.limits.memory.map(|b| b.0 as usize));
        let spill_dir = config.spill_dir.clone().or_else(|| {
            mesh.config
                .limits
                .spill_dir
                .as_ref()
                .map(|d| mesh.root.join(d))
        });
        let memory = (memory_limit, spill_dir);
        let runtime = match previous {
            // Queries still running on the previous version share the pool.
            Some(p) if p.inner.memory == memory => Arc::clone(&p.inner.runtime),
            _ => {
                let mut runtime = RuntimeEnvBuilder::new();
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
                runtime.build_arc()?
            }
        };
        let memory_limit = memory.0;
        let mut session_config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCRATCH_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        if let Some(n) = config.target_partitions {
            session_config = session_config.with_target_partitions(n);
        }
        if memory_limit.is_some() {
            // Under a memory budget, joins must be able to spill: DataFusion's
            // hash join cannot, its sort-merge join can.
            session_config =
                session_config.set_bool("datafusion.optimizer.prefer_hash_join", false);
        }
        let stores = StoreRegistry::new(&mesh.config);
        let opener = SessionContext::new_with_state(
            SessionStateBuilder::new()
                .with_config(session_config.clone())
                .with_runtime_env(Arc::clone(&runtime))
                .with_default_features()
                .build(),
        );
        let state = opener.state();
        let candidates: Vec<Arc<TableDef>> = mesh.tables.clone();
        let opened: Vec<_> = futures::stream::iter(candidates)
            .map(|def| {
                let state = &state;
                let stores = &stores;
                async move {
                    let res = open_table(state, stores, &def).await;
                    (def, res)
                }
            })
            .buffered(config.open_concurrency.max(1))
            .collect()
            .await;
        let mut served = Vec::new();
        let mut unopened = 0;
        // Where each table's files are, for the lockdown: the declared
        // location, plus the data folder found on opening (Iceberg tables
        // named through a catalog).
        let mut locations: Vec<(String, String)> = mesh
            .tables
            .iter()
            .filter(|t| !matches!(t.source.location, meshq_catalog::Location::Catalog { .. }))
            .map(|t| (t.qualified_name(), t.source.location.to_string()))
            .collect();
        for (def, res) in opened {
            let file = mesh.display_path(&def.contract_file);
            match res {
                Ok(t) => {
                    if let Some(data) = &t.data_location {
                        locations.push((def.qualified_name(), data.clone()));
                    }
                    for d in t.drift {
                        problems.push(Problem::error(
                            file.clone(),
                            format!(
                                "table `{}` (product `{}`): contract drift: {d}; queries reading this column fail, the other columns are served",
                                def.qualified_name(),
                                def.product_id
                            ),
                        ));
                    }
                    for w in t.warnings {
                        problems.push(Problem::warning(
                            file.clone(),
                            format!("table `{}`: {w}", def.qualified_name()),
                        ));
                    }
                    served.push(ServedTable {
                        def,
                        provider: t.provider,
                    });
                }
                Err(e) => {
                    unopened += 1;
                    warn!(table = %def.qualified_name(), product = %def.product_id, "table not served");
                    problems.push(Problem::error(
                        file,
                        format!(
                            "table `{}` (product `{}`): {}; the table is not served",
                            def.qualified_name(),
                            def.product_id,
                            without_backtrace(&e.to_string())
                        ),
                    ));
                }
            }
        }
        let mut policies = compile_policies(
            &mesh,
            &served,
            &opener,
            &config.secret_env_fallback,
            &mut problems,
        );
        // Fail closed: every table is unreadable until the set is fixed.
        if let Some(file) = &broken_set {
            for t in &served {
                let key = t.def.qualified_name();
                policies.insert(
                    key.clone(),
                    TableGovernance::Broken(PolicyError::Broken {
                        table: key,
                        policy: format!("global policy set {}", file.display()),
                        reason: "the file has errors, so the policies it declares cannot be enforced; every table is unreadable until it is fixed".into(),
                    }),
                );
            }
            problems.push(Problem::error(
                file.clone(),
                "this global policy set has errors: every table is unreadable until it is fixed (fail closed)",
            ));
        }
        let kept = match previous {
            Some(prev) => keep_last_good(
                prev,
                &mut mesh,
                &mut served,
                &mut policies,
                &mut locations,
                &mut problems,
            ),
            None => Vec::new(),
        };
        // One pass over the locations: a per-table scan of them is quadratic
        // in the number of tables (seconds at 10,000 products).
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
        for (name, location) in &locations {
            if let Some(source) = sources.get_mut(name) {
                source.locations.push(location.clone());
            }
        }
        let locations = Arc::new(locations);
        let mut by_domain: BTreeMap<String, BTreeMap<String, Arc<dyn TableProvider>>> =
            BTreeMap::new();
        for t in &served {
            by_domain
                .entry(t.def.domain.clone())
                .or_default()
                .insert(t.def.name.clone(), Arc::clone(&t.provider));
        }
        let domains = by_domain
            .into_iter()
            .map(|(d, tables)| {
                let schema = Arc::new(DomainSchemaProvider::new(d.clone(), tables));
                (d, schema)
            })
            .collect();
        info!(
            tables = served.len(),
            problems = problems.len(),
            kept = kept.len(),
            "mesh loaded"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                mesh,
                problems,
                runtime,
                session_config,
                domains,
                served,
                policies: Arc::new(policies),
                locations,
                sources: Arc::new(sources),
                memory,
                unopened,
                kept,
            }),
        })
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

    /// A session on this version of the mesh that continues `previous`
    /// (made from an earlier version) for `principal`: its scratch tables
    /// and default schema carry over.
    pub fn continue_session(&self, previous: &MeshSession, principal: &Principal) -> MeshSession {
        let session = self.session(principal);
        if let (Some(old), Some(new)) = (
            previous.context().catalog(CATALOG),
            session.context().catalog(CATALOG),
        ) && let Some(scratch) = old.schema(SCRATCH_SCHEMA)
        {
            let _ = new.register_schema(SCRATCH_SCHEMA, scratch);
        }
        let schema = previous.default_schema();
        if session
            .context()
            .catalog(CATALOG)
            .is_some_and(|c| c.schema_names().contains(&schema))
        {
            session.set_default_schema(&schema);
        }
        session
    }

    /// A new SQL session for `principal`. Each session has its own scratch
    /// schema `public`; domain schemas are shared and read-only, and list
    /// only the tables the principal may read.
    pub fn session(&self, principal: &Principal) -> MeshSession {
        let principal = Arc::new(principal.clone());
        let policy_rule: Arc<dyn AnalyzerRule + Send + Sync> = Arc::new(PolicyAnalyzerRule::new(
            Arc::clone(&principal),
            Arc::clone(&self.inner.policies),
        ));
        // The policy rule runs first so type coercion also sees its output.
        let mut analyzer_rules = vec![policy_rule];
        analyzer_rules.extend(Analyzer::new().rules);
        let mut optimizer_rules: Vec<Arc<dyn OptimizerRule + Send + Sync>> = Vec::new();
        for rule in Optimizer::new().rules {
            let after = rule.name() == "push_down_filter";
            optimizer_rules.push(rule);
            if after {
                optimizer_rules.push(Arc::new(PolicyPushdownRule));
            }
        }
        let state = SessionStateBuilder::new()
            .with_config(self.inner.session_config.clone())
            .with_runtime_env(Arc::clone(&self.inner.runtime))
            .with_default_features()
            .with_analyzer_rules(analyzer_rules)
            .with_optimizer_rules(optimizer_rules)
            .with_query_planner(Arc::new(MeshQueryPlanner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        for f in PrincipalFn::ALL {
            ctx.register_udf(ScalarUDF::new_from_impl(PrincipalFunction::new(
                f,
                Some(&principal),
            )));
        }
        let catalog = MemoryCatalogProvider::new();
        for (name, schema) in &self.inner.domains {
            let view = PrincipalSchemaProvider::new(
                Arc::clone(schema),
                Arc::clone(&principal),
                Arc::clone(&self.inner.policies),
            );
            // Registered even when nothing in it is visible, so naming a
            // denied table says "permission denied", not "not found".
            let _ = catalog.register_schema(name, Arc::new(view));
        }
        let _ = catalog.register_schema(SCRATCH_SCHEMA, Arc::new(MemorySchemaProvider::new()));
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        MeshSession::new(
            ctx,
            principal,
            self.inner.mesh.config.auth.admin_role.clone(),
            Arc::clone(&self.inner.locations),
            Arc::clone(&self.inner.sources),
        )
    }

    /// The compiled policies of a table, if it has any.
    pub fn governance(&self, table: &str) -> Option<&TableGovernance> {
        self.inner.policies.get(table)
    }

    /// The policies a query by `principal` reading `tables` (`domain.table`)
    /// has applied, for the audit log: names, never values.
    pub fn applied_policies(&self, principal: &Principal, tables: &[String]) -> AppliedPolicies {
        let mut out = AppliedPolicies::default();
        for table in tables {
            let Some(TableGovernance::Ready(p)) = self.governance(table) else {
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

/// Whether `p` is an error in a file whose name satisfies `name`.
fn error_in(p: &Problem, name: impl Fn(&str) -> bool) -> bool {
    p.is_error()
        && p.file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(name)
}

/// `text` without the backtrace some libraries append to their error
/// messages when `RUST_BACKTRACE` is set (numbered frame lines).
fn without_backtrace(text: &str) -> String {
    let is_frame = |l: &str| {
        let t = l.trim_start();
        t.split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            && l.starts_with(' ')
    };
    match text.lines().position(is_frame) {
        Some(i) => text
            .lines()
            .take(i)
            .collect::<Vec<_>>()
            .join("\n")
            .trim_end()
            .to_string(),
        None => text.to_string(),
    }
}

/// After a reload: keeps the previous version of each table that is no
/// longer served (or whose policies no longer build) because its product or
/// contract now has errors, as long as those files still exist. Returns the
/// kept tables' names.
fn keep_last_good(
    prev: &Engine,
    mesh: &mut Mesh,
    served: &mut Vec<ServedTable>,
    policies: &mut PolicyCatalog,
    locations: &mut Vec<(String, String)>,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let error_files: std::collections::BTreeSet<PathBuf> = problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.file.clone())
        .collect();
    let mut kept = Vec::new();
    for old in prev.served_tables() {
        let product_file = mesh.display_path(&old.def.product_file);
        let contract_file = mesh.display_path(&old.def.contract_file);
        let broken = error_files.contains(&product_file) || error_files.contains(&contract_file);
        if !broken || !old.def.product_file.exists() || !old.def.contract_file.exists() {
            continue;
        }
        let name = old.def.qualified_name();
        let now = served.iter().position(|t| t.def.qualified_name() == name);
        let old_ready = !matches!(prev.governance(&name), Some(TableGovernance::Broken(_)));
        let now_broken = matches!(policies.get(&name), Some(TableGovernance::Broken(_)));
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
            Some(i) if now_broken && old_ready => {
                served[i] = old.clone();
                if let Some(t) = mesh.tables.iter_mut().find(|t| t.qualified_name() == name) {
                    *t = Arc::clone(&old.def);
                }
            }
            Some(_) => continue,
        }
        match prev.governance(&name) {
            Some(g) => {
                policies.insert(name.clone(), g.clone());
            }
            None => {
                policies.remove(&name);
            }
        }
        locations.retain(|(n, _)| n != &name);
        locations.extend(
            prev.inner
                .locations
                .iter()
                .filter(|(n, _)| n == &name)
                .cloned(),
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

/// Compiles every served table's policies. A table whose policies cannot be
/// built stays registered but unreadable, and the problem names the policy.
fn compile_policies(
    mesh: &Mesh,
    served: &[ServedTable],
    ctx: &SessionContext,
    secret_env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> PolicyCatalog {
    // Typing-only principal functions, so expressions resolve and type-check.
    for f in PrincipalFn::ALL {
        ctx.register_udf(ScalarUDF::new_from_impl(PrincipalFunction::new(f, None)));
    }
    let mut catalog = PolicyCatalog::new();
    for t in served {
        let key = t.def.qualified_name();
        match compile_table(mesh, &t.def, &t.provider.schema(), ctx, secret_env) {
            Ok(p) if p.is_empty() => {}
            Ok(p) => {
                catalog.insert(key, TableGovernance::Ready(Arc::new(p)));
            }
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
                catalog.insert(
                    key.clone(),
                    TableGovernance::Broken(PolicyError::Broken {
                        table: key,
                        policy: first.policy.clone(),
                        reason: first.reason.clone(),
                    }),
                );
            }
        }
    }
    catalog
}

#[cfg(test)]
mod tests {
    use super::without_backtrace;

    #[test]
    fn backtraces_are_cut_from_messages() {
        let text = "Kernel error: Json error: Truncated record\n   0: kernel::error::with_backtrace\n   1: core::ops::call\n             at src/x.rs:1:2";
        assert_eq!(
            without_backtrace(text),
            "Kernel error: Json error: Truncated record"
        );
        assert_eq!(without_backtrace("a: b\nc"), "a: b\nc");
    }
}
