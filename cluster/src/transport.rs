//! The wire between nodes: connections that sign every request
//! ([`AuthChannelResolver`]), and a worker's gRPC service that checks
//! every request before the library sees it ([`serve_worker`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::DataFusionError;
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{ChannelResolver, Worker, WorkerChannel, WorkerResolver};
use parking_lot::Mutex;
use std::collections::HashMap;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};
use tracing::warn;
use url::Url;

use crate::auth::{ClusterKey, Verifier};
use crate::wire::{Checked, Signing};

/// How long connecting to a worker may take before the query fails with
/// the worker named.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens connections to workers (TLS for `https://` URLs), each request
/// carrying a fresh credential. Connections are kept per URL and dropped
/// when one fails, so a restarted worker is reached again.
#[derive(Clone)]
pub struct AuthChannelResolver {
    key: ClusterKey,
    tls: Option<ClientTlsConfig>,
    channels: Arc<Mutex<HashMap<Url, Channel>>>,
    /// The certificate name of `https://` workers found by a DNS name
    /// (reached by address, named by the DNS name).
    tls_names: Arc<Mutex<HashMap<Url, String>>>,
}

impl std::fmt::Debug for AuthChannelResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthChannelResolver")
            .finish_non_exhaustive()
    }
}

impl AuthChannelResolver {
    /// Signs with `key`; `tls` configures `https://` connections.
    pub fn new(key: ClusterKey, tls: Option<ClientTlsConfig>) -> Self {
        Self {
            key,
            tls,
            channels: Arc::default(),
            tls_names: Arc::default(),
        }
    }

    /// Checks the certificate of the worker at `url` against `name`.
    pub fn name_tls(&self, url: &Url, name: &str) {
        self.tls_names.lock().insert(url.clone(), name.to_string());
    }

    fn channel(&self, url: &Url) -> Result<Channel, DataFusionError> {
        if let Some(c) = self.channels.lock().get(url) {
            return Ok(c.clone());
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            DataFusionError::External(
                format!("worker {url} cannot be used: {e}; check `cluster.workers` in meshq.yaml")
                    .into(),
            )
        };
        // Stages stream Arrow over this connection: windows and frames
        // sized for bulk results.
        let mut endpoint = meshq_connectors::flightsql::bulk_transfer(
            Endpoint::from_shared(url.to_string()).map_err(|e| unreachable(&e))?,
        )
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
        if url.scheme() == "https" {
            let Some(tls) = self.tls.clone() else {
                return Err(unreachable(
                    &"an https:// worker needs `cluster.tls.ca` (the CA that signed the workers' certificates)",
                ));
            };
            let tls = match self.tls_names.lock().get(url) {
                Some(name) => tls.domain_name(name.clone()),
                None => tls,
            };
            endpoint = endpoint.tls_config(tls).map_err(|e| unreachable(&e))?;
        }
        // Connects on first use; a worker that is down fails the request
        // that needs it, not the plan.
        let channel = endpoint.connect_lazy();
        self.channels.lock().insert(url.clone(), channel.clone());
        Ok(channel)
    }

    /// A connection to the worker at `url` that signs each request, for
    /// meshq's own RPCs between nodes ([`crate::join_filters`]).
    pub(crate) fn signed(&self, url: &Url) -> Result<Signing<Channel>, DataFusionError> {
        let channel = self.channel(url)?;
        let authority = authority(url).ok_or_else(|| {
            DataFusionError::External(format!("worker URL {url} names no host").into())
        })?;
        Ok(Signing::new(channel, self.key.clone(), &authority))
    }

    /// Forgets the connection to `url` (it failed).
    pub fn forget(&self, url: &Url) {
        self.channels.lock().remove(url);
    }
}

#[async_trait::async_trait]
impl ChannelResolver for AuthChannelResolver {
    async fn get_worker_client_for_url(
        &self,
        url: &Url,
    ) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        let channel = self.channel(url)?;
        let authority = authority(url).ok_or_else(|| {
            DataFusionError::External(format!("worker URL {url} names no host").into())
        })?;
        let signed = Signing::new(channel, self.key.clone(), &authority);
        Ok(create_worker_client(BoxCloneSyncChannel::new(signed)))
    }
}

/// The authority (`host:port`) a request to `url` carries, as the
/// connection writes it; what a worker's credential is bound to.
pub fn authority(url: &Url) -> Option<String> {
    let uri = http::Uri::try_from(url.as_str()).ok()?;
    Some(uri.authority()?.as_str().to_string())
}

/// The largest header list a worker accepts.
pub const MAX_HEADER_LIST_BYTES: u32 = 1 << 20;

/// How often a coordinator checks each worker.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// How long a worker may take to answer a check.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a coordinator finds workers: one worker's URL, or a DNS name
/// every address of which is a worker (`dns+http://workers.ns.svc:50052`,
/// e.g. a Kubernetes headless Service), looked up again at every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSource {
    /// `http://host:port` or `https://host:port`: one worker.
    Url(Url),
    /// `dns+http://name:port` or `dns+https://name:port`: a worker at each
    /// address `name` resolves to.
    Dns {
        /// `http` or `https`.
        scheme: String,
        /// The name looked up; for `https`, also the name the workers'
        /// certificates must hold.
        host: String,
        /// The workers' port.
        port: u16,
    },
}

impl WorkerSource {
    /// Parses one entry of `cluster.workers` or `--workers`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = Url::parse(text).map_err(|e| format!("worker URL `{text}`: {e}"))?;
        let dns = match url.scheme() {
            "http" | "https" => return Ok(Self::Url(url)),
            "dns+http" => "http",
            "dns+https" => "https",
            other => {
                return Err(format!(
                    "worker URL `{text}`: scheme `{other}` is not http, https, dns+http or dns+https"
                ));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("worker URL `{text}` names no host"))?;
        let port = url
            .port()
            .ok_or_else(|| format!("worker URL `{text}` needs the workers' port"))?;
        Ok(Self::Dns {
            scheme: dns.into(),
            host: host.into(),
            port,
        })
    }
}

impl std::fmt::Display for WorkerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url) => write!(f, "{url}"),
            Self::Dns { scheme, host, port } => write!(f, "dns+{scheme}://{host}:{port}"),
        }
    }
}

/// Looks a name up: the system's resolver, or another in tests.
#[async_trait::async_trait]
pub trait Lookup: Send + Sync + std::fmt::Debug {
    /// The addresses of `host`, with `port`.
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system's resolver (`getaddrinfo`).
#[derive(Debug)]
pub struct SystemLookup;

#[async_trait::async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The workers of a coordinator: its sources, and which workers answered
/// their last check. Queries are planned over the ones that did; with
/// none, queries run on the coordinator.
#[derive(Debug, Clone)]
pub struct Workers {
    sources: Arc<Vec<WorkerSource>>,
    lookup: Arc<dyn Lookup>,
    healthy: Arc<Mutex<Vec<Url>>>,
    /// Names whose last lookup failed (logged once until they resolve).
    unresolved: Arc<Mutex<Vec<String>>>,
}

impl Workers {
    /// Workers at `urls`, all taken as healthy until a check says
    /// otherwise.
    pub fn new(urls: Vec<Url>) -> Self {
        Self::from_sources(urls.into_iter().map(WorkerSource::Url).collect())
    }

    /// Workers from `sources`: the URLs taken as healthy until a check says
    /// otherwise; a DNS name's workers are known from its first lookup.
    pub fn from_sources(sources: Vec<WorkerSource>) -> Self {
        Self::with_lookup(sources, Arc::new(SystemLookup))
    }

    /// [`Workers::from_sources`] looking names up with `lookup`.
    pub fn with_lookup(sources: Vec<WorkerSource>, lookup: Arc<dyn Lookup>) -> Self {
        let urls = sources
            .iter()
            .filter_map(|s| match s {
                WorkerSource::Url(u) => Some(u.clone()),
                WorkerSource::Dns { .. } => None,
            })
            .collect();
        Self {
            sources: Arc::new(sources),
            lookup,
            healthy: Arc::new(Mutex::new(urls)),
            unresolved: Arc::default(),
        }
    }

    /// Where the workers are found.
    pub fn sources(&self) -> &[WorkerSource] {
        &self.sources
    }

    /// The workers that answered their last check.
    pub fn healthy(&self) -> Vec<Url> {
        self.healthy.lock().clone()
    }

    /// Every worker the sources name now: the URLs, and the addresses each
    /// DNS name resolves to (a name that does not resolve is logged and
    /// names none).
    async fn candidates(&self, resolver: &AuthChannelResolver) -> Vec<Url> {
        let mut urls: Vec<Url> = Vec::new();
        for source in self.sources.iter() {
            match source {
                WorkerSource::Url(url) => urls.push(url.clone()),
                WorkerSource::Dns { scheme, host, port } => {
                    let found = self.lookup.lookup(host, *port).await;
                    let mut unresolved = self.unresolved.lock();
                    match found {
                        Ok(addrs) => {
                            unresolved.retain(|h| h != host);
                            for addr in addrs {
                                let Ok(url) = Url::parse(&format!("{scheme}://{addr}")) else {
                                    continue;
                                };
                                if scheme == "https" {
                                    resolver.name_tls(&url, host);
                                }
                                urls.push(url);
                            }
                        }
                        Err(e) => {
                            if !unresolved.contains(host) {
                                unresolved.push(host.clone());
                                warn!(source = %source, error = %e, "the workers' DNS name does not resolve; queries go to the other workers");
                            }
                        }
                    }
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        urls.retain(|u| seen.insert(u.clone()));
        urls
    }

    /// Finds the workers (DNS names are looked up again) and checks each
    /// at once (a signed `GetWorkerInfo`), keeping those that answer
    /// within [`HEALTH_TIMEOUT`]; a worker that stops, comes back or
    /// appears is logged.
    pub async fn check(&self, resolver: &AuthChannelResolver) {
        let candidates = self.candidates(resolver).await;
        let checks = candidates.iter().map(|url| async move {
            let outcome = tokio::time::timeout(HEALTH_TIMEOUT, async {
                let mut client = resolver.get_worker_client_for_url(url).await?;
                client
                    .get_worker_info(datafusion_distributed::GetWorkerInfoRequest {})
                    .await
            })
            .await;
            (url, outcome)
        });
        let outcomes = futures::future::join_all(checks).await;
        let mut answered = Vec::new();
        let was = self.healthy();
        for (url, outcome) in outcomes {
            match outcome {
                Ok(Ok(_)) => answered.push(url.clone()),
                Ok(Err(e)) => {
                    resolver.forget(url);
                    if was.contains(url) {
                        warn!(worker = %url, error = %e, "a worker stopped answering; queries go to the others");
                    }
                }
                Err(_) => {
                    resolver.forget(url);
                    if was.contains(url) {
                        warn!(worker = %url, "a worker did not answer in time; queries go to the others");
                    }
                }
            }
        }
        for url in &answered {
            if !was.contains(url) {
                tracing::info!(worker = %url, "a worker answers");
            }
        }
        for url in &was {
            if !candidates.contains(url) {
                resolver.forget(url);
                tracing::info!(worker = %url, "a worker is no longer named by its DNS name; queries go to the others");
            }
        }
        *self.healthy.lock() = answered;
    }

    /// Checks every worker each [`HEALTH_INTERVAL`] until dropped.
    pub fn spawn_checks(&self, resolver: AuthChannelResolver) -> tokio::task::JoinHandle<()> {
        let workers = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_INTERVAL);
            loop {
                tick.tick().await;
                workers.check(&resolver).await;
            }
        })
    }
}

impl WorkerResolver for Workers {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.healthy())
    }
}

/// Serves `worker` on `listener` until `shutdown` completes: every request
/// is checked by `verifier` first ([`Checked`]), and one without a valid
/// credential is refused with `UNAUTHENTICATED` and logged.
pub async fn serve_worker(
    worker: Worker,
    verifier: Verifier,
    metrics: Arc<crate::metrics::WorkerMetrics>,
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // meshq's own RPC beside the library's: a join's filter sent by a task
    // of another stage, checked the same way.
    let filters = Checked::new(
        crate::join_filters::JoinFilterService,
        verifier.clone(),
        Arc::clone(&metrics),
    );
    let service = Checked::new(worker.into_worker_server(), verifier, metrics);
    // The statement's settings and mask list travel in headers: room for
    // them beyond HTTP/2's usual 16 KiB (they are signed, so only the
    // cluster's nodes can send them).
    let mut server = Server::builder().http2_max_header_list_size(MAX_HEADER_LIST_BYTES);
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    // Each accepted connection without Nagle's delay, as tonic's own
    // listener would set (it does not for a listener given to it): a
    // stage's last small frames must not wait for the peer's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    server
        .add_service(service)
        .add_service(filters)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
