//! `meshq worker`: what a worker is built from. It reads only
//! `meshq.yaml` — the cluster secret, the memory limit and spill
//! directory, and the object stores — never contracts or principals.

use std::path::Path;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion_distributed::{
    DistributedExt, NetworkBoundaryExt, Worker, WorkerPlanRewriteEvent,
    WorkerPlanRewriteEventResponse, WorkerQueryContext, WorkerSessionBuilder,
};
use meshq_catalog::platform::PlatformConfig;
use meshq_connectors::store::StoreRegistry;
use meshq_engine::memory::QueryMemoryPool;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use url::Url;

use crate::auth::{ClusterKey, Verifier};
use crate::transport::AuthChannelResolver;

/// A worker ready to serve: the library's worker and the check every
/// request passes first.
pub struct WorkerSetup {
    /// The library's worker service.
    pub worker: Worker,
    /// Checks each request's credential.
    pub verifier: Verifier,
    /// TLS of the worker's server, from `cluster.tls`.
    pub tls: Option<ServerTlsConfig>,
    /// The worker's metrics.
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
}

/// Why a worker cannot start; names the `meshq.yaml` key to fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `cluster.secret` is missing or unusable.
    #[error("cluster.secret in meshq.yaml: {0}")]
    Secret(String),
    /// The runtime (memory pool, spill directory) cannot be built.
    #[error("limits in meshq.yaml: {0}")]
    Runtime(String),
    /// `cluster.tls` names files that cannot be read.
    #[error("cluster.tls in meshq.yaml: {0}")]
    Tls(String),
    /// A worker URL or a setting is not usable.
    #[error("{0}")]
    Workers(String),
}

/// The coordinator of a mesh whose platform config is `config`: over the
/// workers given on the command line, else `cluster.workers`; `None`
/// when there are none (queries run in this process).
pub fn coordinator_setup(
    config: &PlatformConfig,
    dir: &Path,
    workers: &[String],
) -> Result<Option<crate::Coordinator>, SetupError> {
    let urls = if workers.is_empty() {
        &config.cluster.workers
    } else {
        workers
    };
    if urls.is_empty() {
        return Ok(None);
    }
    let sources = urls
        .iter()
        .map(|u| crate::transport::WorkerSource::parse(u).map_err(SetupError::Workers))
        .collect::<Result<Vec<_>, _>>()?;
    let resolver = AuthChannelResolver::new(cluster_key(config)?, client_tls(config, dir)?);
    let settings = config
        .cluster
        .settings
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    crate::Coordinator::new(crate::Workers::from_sources(sources), resolver, settings)
        .map(Some)
        .map_err(SetupError::Workers)
}

fn read_pem(dir: &Path, path: &str) -> Result<Vec<u8>, SetupError> {
    let file = dir.join(path);
    std::fs::read(&file)
        .map_err(|e| SetupError::Tls(format!("cannot read {}: {e}", file.display())))
}

/// The server TLS of a worker: `cert` and `key`, and with `ca` only
/// clients with a certificate it signed (mutual TLS).
pub fn server_tls(
    config: &PlatformConfig,
    dir: &Path,
) -> Result<Option<ServerTlsConfig>, SetupError> {
    let Some(tls) = &config.cluster.tls else {
        return Ok(None);
    };
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Err(SetupError::Tls(
            "a worker serving TLS needs both `cert` and `key`".into(),
        ));
    };
    let mut server = ServerTlsConfig::new().identity(Identity::from_pem(
        read_pem(dir, cert)?,
        read_pem(dir, key)?,
    ));
    if let Some(ca) = &tls.ca {
        server = server.client_ca_root(Certificate::from_pem(read_pem(dir, ca)?));
    }
    Ok(Some(server))
}

/// The client TLS of connections to `https://` workers: `ca` checks them,
/// and `cert` and `key`, when set, identify this node.
pub fn client_tls(
    config: &PlatformConfig,
    dir: &Path,
) -> Result<Option<ClientTlsConfig>, SetupError> {
    let Some(tls) = &config.cluster.tls else {
        return Ok(None);
    };
    let Some(ca) = &tls.ca else {
        return Ok(None);
    };
    let mut client =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(dir, ca)?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        client = client.identity(Identity::from_pem(
            read_pem(dir, cert)?,
            read_pem(dir, key)?,
        ));
    }
    Ok(Some(client))
}

/// The cluster key of `config`, from `cluster.secret` (`{ env: VAR }`).
pub fn cluster_key(config: &PlatformConfig) -> Result<ClusterKey, SetupError> {
    let secret = config
        .cluster
        .secret
        .as_ref()
        .ok_or_else(|| {
            SetupError::Secret(
                "not set; every node of a cluster needs the same secret, e.g. `cluster: { secret: { env: MESHQ_CLUSTER_SECRET } }`"
                    .into(),
            )
        })?
        .resolve()
        .map_err(SetupError::Secret)?;
    ClusterKey::new(&secret).map_err(SetupError::Secret)
}

/// A worker for the mesh directory `dir` whose platform config is
/// `config`.
pub fn worker_setup(config: &PlatformConfig, dir: &Path) -> Result<WorkerSetup, SetupError> {
    worker_setup_with_key(config, dir, cluster_key(config)?)
}

/// [`worker_setup`] with the cluster key given.
pub fn worker_setup_with_key(
    config: &PlatformConfig,
    dir: &Path,
    key: ClusterKey,
) -> Result<WorkerSetup, SetupError> {
    let secrets = crate::travel::WorkerSecrets::resolve(config);
    worker_setup_with(config, dir, key, secrets)
}

/// [`worker_setup`] with the cluster key and the resolved secrets given.
pub fn worker_setup_with(
    config: &PlatformConfig,
    dir: &Path,
    key: ClusterKey,
    secrets: crate::travel::WorkerSecrets,
) -> Result<WorkerSetup, SetupError> {
    let runtime = runtime(config)?;
    let metrics = Arc::new(crate::metrics::WorkerMetrics::new(Some(Arc::clone(
        &runtime,
    ))));
    let resolver = AuthChannelResolver::new(key.clone(), client_tls(config, dir)?);
    let codec = Arc::new(crate::codec::MeshCodec);
    let worker = Worker::from_session_builder(MeshWorkerSession {
        resolver,
        codec,
        secrets,
        queries: Arc::default(),
    })
    .with_runtime_env(runtime)
    .with_version(env!("CARGO_PKG_VERSION"));
    Ok(WorkerSetup {
        worker,
        verifier: Verifier::new(key),
        tls: server_tls(config, dir)?,
        metrics,
    })
}

/// One runtime for every task: the memory pool of `limits.memory` (shared
/// by all queries, spilling), the spill directory, and object stores
/// resolved from `stores` on first use.
fn runtime(config: &PlatformConfig) -> Result<Arc<RuntimeEnv>, SetupError> {
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(MeshStores {
        known: DefaultObjectStoreRegistry::new(),
        stores: StoreRegistry::new(config),
    }));
    if let Some(limit) = config.limits.memory {
        builder = builder.with_memory_pool(Arc::new(FairSpillPool::new(limit.0 as usize)));
    }
    if let Some(dir) = &config.limits.spill_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| SetupError::Runtime(format!("cannot create spill_dir {dir}: {e}")))?;
        builder = builder.with_temp_file_path(dir);
    }
    builder
        .build_arc()
        .map_err(|e| SetupError::Runtime(e.to_string()))
}

/// Object stores by URL: those registered, else the `stores` entry that
/// serves the URL's bucket.
#[derive(Debug)]
struct MeshStores {
    known: DefaultObjectStoreRegistry,
    stores: StoreRegistry,
}

impl ObjectStoreRegistry for MeshStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Option<Arc<dyn object_store::ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(
        &self,
        url: &Url,
    ) -> datafusion::error::Result<Arc<dyn object_store::ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(
        &self,
        url: &Url,
    ) -> datafusion::error::Result<Arc<dyn object_store::ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        match self.stores.store_for(url) {
            Ok(Some(store)) => {
                self.known.register_store(url, Arc::clone(&store));
                Ok(store)
            }
            Ok(None) => self.known.get_store(url),
            Err(e) => Err(DataFusionError::External(Box::new(e))),
        }
    }
}

/// Each task's session on a worker: meshq's codec decodes its nodes, the
/// statement's masks are registered under their names (hash keys from
/// this worker's own secrets), and connections to other workers sign
/// their requests too.
#[derive(Clone)]
struct MeshWorkerSession {
    resolver: AuthChannelResolver,
    codec: Arc<crate::codec::MeshCodec>,
    secrets: crate::travel::WorkerSecrets,
    /// The pools of the queries whose tasks run here, by query id; a pool
    /// lives as long as a task of its query.
    queries: Arc<parking_lot::Mutex<std::collections::HashMap<String, Weak<QueryMemoryPool>>>>,
}

impl MeshWorkerSession {
    /// The pool of the query `budget` names: the one its other tasks here
    /// use, or a new one of its limit within the worker's `global` pool.
    fn pool_of(
        &self,
        budget: &crate::travel::QueryBudget,
        limit: usize,
        global: &Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    ) -> Arc<QueryMemoryPool> {
        let mut queries = self.queries.lock();
        queries.retain(|_, pool| pool.strong_count() > 0);
        if let Some(pool) = queries.get(&budget.id).and_then(Weak::upgrade) {
            return pool;
        }
        let pool = Arc::new(QueryMemoryPool::new(Arc::clone(global), limit));
        queries.insert(budget.id.clone(), Arc::downgrade(&pool));
        pool
    }
}

#[async_trait]
impl WorkerSessionBuilder for MeshWorkerSession {
    async fn build_session_state(
        &self,
        ctx: WorkerQueryContext,
    ) -> Result<SessionState, DataFusionError> {
        tracing::debug!("a plan fragment arrived from the coordinator");
        let mut builder = ctx.builder;
        if let Some(config) = builder.config() {
            // This request's own lists, never ones shared with another.
            let extensions = &mut config.options_mut().extensions;
            extensions.insert(crate::travel::MaskFunctions::fresh());
            extensions.insert(crate::travel::SessionSettings::default());
        }
        let mut builder = builder
            .with_distributed_option_extension_from_headers::<crate::travel::MaskFunctions>(
                &ctx.headers,
            )?
            .with_distributed_option_extension_from_headers::<crate::travel::SessionSettings>(
                &ctx.headers,
            )?
            .with_distributed_option_extension_from_headers::<crate::travel::QueryBudget>(
                &ctx.headers,
            )?
            // How scans apply and wait for join filters, as the statement's.
            .with_distributed_option_extension_from_headers::<
                meshq_connectors::mesh_scan::ScanOptions,
            >(&ctx.headers)?;
        let budget = builder.config().as_ref().and_then(|c| {
            c.options()
                .extensions
                .get::<crate::travel::QueryBudget>()
                .cloned()
        });
        if let Some(budget) = budget
            && let Some(memory) = budget.memory
            && let Some(runtime) = builder.runtime_env().clone()
        {
            // The query's limit holds here too, across its tasks.
            let limit = usize::try_from(memory).unwrap_or(usize::MAX);
            let pool = self.pool_of(&budget, limit, &runtime.memory_pool);
            let runtime = meshq_engine::memory::runtime_with_pool(&runtime, pool)?;
            if let Some(config) = builder.config() {
                meshq_engine::memory::limit_spill_reservation(config.options_mut(), limit);
            }
            builder = builder.with_runtime_env(runtime);
        }
        if let Some(config) = builder.config() {
            // Before the state is built, so functions made from the
            // settings (a time zone) are made with the statement's.
            let settings = config
                .options()
                .extensions
                .get::<crate::travel::SessionSettings>()
                .cloned()
                .unwrap_or_default();
            settings.apply(config.options_mut())?;
        }
        if let Some(config) = builder.config() {
            // A stage's join sends its filter to the workers of the stage
            // below with this resolver's signed connections.
            config.set_extension(Arc::new(self.resolver.clone()));
        }
        let mut state = builder
            .with_distributed_channel_resolver(self.resolver.clone())
            .with_distributed_user_codec_arc(Arc::clone(&self.codec) as _)
            .with_distributed_worker_plan_rewrite_handler(wait_for_stage_join_filters)
            .build();
        let masks = state
            .config()
            .options()
            .extensions
            .get::<crate::travel::MaskFunctions>()
            .cloned()
            .unwrap_or_default();
        let functions =
            crate::travel::worker_functions(&masks, &self.secrets).inspect_err(|e| {
                tracing::warn!(error = %e, "a fragment's masks cannot be made on this worker");
            })?;
        if !functions.is_empty() {
            let names: Vec<&str> = functions.iter().map(|f| f.name()).collect();
            tracing::debug!(masks = %names.join(", "), "the fragment's masks are registered");
        }
        for f in functions {
            state.register_udf(f)?;
        }
        Ok(state)
    }
}

/// A decoded stage's scans wait for the dynamic filters of the hash joins
/// of that stage before they read, as on a single node, and for those the
/// coordinator marked as sent by a join of the stage above
/// ([`crate::join_filters`]), which are registered here to receive them.
fn wait_for_stage_join_filters(
    ev: WorkerPlanRewriteEvent<'_>,
) -> Result<WorkerPlanRewriteEventResponse, DataFusionError> {
    let plan = meshq_connectors::mesh_scan::JoinFilterWaits::mark(
        ev.plan,
        ev.session_config.options(),
        &|node| node.is_network_boundary(),
    )?;
    crate::join_filters::expect_in_stage(&plan, ev.session_config)?;
    Ok(WorkerPlanRewriteEventResponse::new(plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool};
    use datafusion::prelude::SessionConfig;

    fn session() -> MeshWorkerSession {
        let key = ClusterKey::new("a cluster secret of some length").unwrap();
        MeshWorkerSession {
            resolver: AuthChannelResolver::new(key, None),
            codec: Arc::new(crate::codec::MeshCodec),
            secrets: crate::travel::WorkerSecrets::resolve(&PlatformConfig::default()),
            queries: Arc::default(),
        }
    }

    /// The worker's state for a task whose request carries `headers`, over
    /// the worker pool `global`.
    async fn state_for(
        worker: &MeshWorkerSession,
        global: &Arc<dyn MemoryPool>,
        headers: &[(&'static str, &str)],
    ) -> Result<SessionState, DataFusionError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(global))
            .build_arc()
            .unwrap();
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        worker
            .build_session_state(WorkerQueryContext {
                builder: SessionStateBuilder::new()
                    .with_default_features()
                    .with_config(SessionConfig::default())
                    .with_runtime_env(runtime),
                headers: map,
            })
            .await
    }

    /// [`state_for`] a task whose request carries `budget` (memory, query
    /// id), as the coordinator sends it.
    async fn task_state(
        worker: &MeshWorkerSession,
        global: &Arc<dyn MemoryPool>,
        budget: Option<(&str, &str)>,
    ) -> SessionState {
        let headers: Vec<(&'static str, &str)> = budget
            .map(|(memory, id)| {
                vec![
                    ("x-datafusion-distributed-config-meshq_query.memory", memory),
                    ("x-datafusion-distributed-config-meshq_query.id", id),
                ]
            })
            .unwrap_or_default();
        state_for(worker, global, &headers).await.unwrap()
    }

    fn pool(state: &SessionState) -> *const () {
        Arc::as_ptr(&state.runtime_env().memory_pool) as *const ()
    }

    #[tokio::test]
    async fn a_querys_tasks_on_a_worker_share_one_pool_of_its_limit() {
        let worker = session();
        let global: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(1 << 30));
        let first = task_state(&worker, &global, Some(("1048576", "q1"))).await;
        assert!(matches!(
            first.runtime_env().memory_pool.memory_limit(),
            MemoryLimit::Finite(n) if n == 1 << 20
        ));
        // The sort's merge reservation is a share of the limit.
        assert_eq!(
            first
                .config()
                .options()
                .execution
                .sort_spill_reservation_bytes,
            1 << 18
        );
        // Another task of the same query: the same pool.
        let second = task_state(&worker, &global, Some(("1048576", "q1"))).await;
        assert_eq!(pool(&first), pool(&second));
        // Another query: a pool of its own.
        let other = task_state(&worker, &global, Some(("2097152", "q2"))).await;
        assert_ne!(pool(&first), pool(&other));
        assert!(matches!(
            other.runtime_env().memory_pool.memory_limit(),
            MemoryLimit::Finite(n) if n == 2 << 20
        ));
        // Without a limit: the worker's pool.
        let unlimited = task_state(&worker, &global, None).await;
        assert_eq!(pool(&unlimited), Arc::as_ptr(&global) as *const ());
        // A query's pool is gone once its tasks are.
        drop((first, second));
        let again = task_state(&worker, &global, Some(("1048576", "q3"))).await;
        assert!(!worker.queries.lock().contains_key("q1"));
        drop(again);
        // A bad value is refused, not ignored.
        let refused = state_for(
            &worker,
            &global,
            &[("x-datafusion-distributed-config-meshq_query.memory", "lots")],
        )
        .await;
        assert!(refused.is_err());
    }
}
