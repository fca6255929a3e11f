//! [`Engine`]: a loaded mesh with every servable table opened, handing out
//! DataFusion sessions over it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::datasource::TableProvider;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use meshq_catalog::{Mesh, Problem, TableDef, load_mesh};
use meshq_connectors::{StoreRegistry, open_table};
use tracing::{info, warn};

use crate::domain_schema::DomainSchemaProvider;
use crate::error::Result;

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
}

impl EngineConfig {
    /// Defaults for a mesh directory.
    pub fn new(mesh_dir: impl Into<PathBuf>) -> Self {
        Self {
            mesh_dir: mesh_dir.into(),
            target_partitions: None,
            open_concurrency: 16,
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
}

impl Engine {
    /// Loads the mesh and opens every table. Fails only if the mesh root is
    /// unusable; every other problem is in [`Engine::problems`] and only the
    /// tables it concerns are left out.
    pub async fn load(config: EngineConfig) -> Result<Self> {
        let outcome = load_mesh(&config.mesh_dir)?;
        let mesh = outcome.mesh;
        let mut problems = outcome.problems;
        let runtime = RuntimeEnvBuilder::new().build_arc()?;
        let mut session_config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCRATCH_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        if let Some(n) = config.target_partitions {
            session_config = session_config.with_target_partitions(n);
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
        let candidates: Vec<Arc<TableDef>> = mesh
            .tables
            .iter()
            .filter(|t| match policy_gate(&mesh, t) {
                Ok(()) => true,
                Err(p) => {
                    problems.push(p);
                    false
                }
            })
            .cloned()
            .collect();
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
        for (def, res) in opened {
            let file = mesh.display_path(&def.contract_file);
            match res {
                Ok(t) => {
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
                    warn!(table = %def.qualified_name(), product = %def.product_id, "table not served");
                    problems.push(Problem::error(
                        file,
                        format!(
                            "table `{}` (product `{}`): {e}; the table is not served",
                            def.qualified_name(),
                            def.product_id
                        ),
                    ));
                }
            }
        }
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
            }),
        })
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

    /// A new SQL session over the mesh. Each session has its own scratch
    /// schema `public`; domain schemas are shared and read-only.
    pub fn session(&self) -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_config(self.inner.session_config.clone())
            .with_runtime_env(Arc::clone(&self.inner.runtime))
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        let catalog = MemoryCatalogProvider::new();
        for (name, schema) in &self.inner.domains {
            // Registration into a fresh in-memory catalog cannot fail.
            let _ = catalog.register_schema(name, Arc::clone(schema) as _);
        }
        let _ = catalog.register_schema(SCRATCH_SCHEMA, Arc::new(MemorySchemaProvider::new()));
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        ctx
    }
}

/// Policies are enforced by the planner rule; until a table's policies can be
/// enforced the table must not be readable raw.
fn policy_gate(mesh: &Mesh, def: &TableDef) -> std::result::Result<(), Problem> {
    let global = def.columns.iter().any(|c| {
        mesh.policy_sets.iter().any(|s| {
            s.set
                .policies
                .iter()
                .any(|p| p.matcher.matches(c.classification.as_deref(), &c.tags))
        })
    });
    if def.has_contract_policies() || global {
        return Err(Problem::error(
            mesh.display_path(&def.contract_file),
            format!(
                "table `{}` (product `{}`) has masks, row filters, read roles or matching global policies, which this build of meshq cannot enforce; the table is not served",
                def.qualified_name(),
                def.product_id
            ),
        ));
    }
    Ok(())
}
