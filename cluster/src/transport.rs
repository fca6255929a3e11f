//! The wire between nodes: connections that sign every request
//! ([`AuthChannelResolver`]), and a worker's gRPC service that checks
//! every request before the library sees it ([`serve_worker`]).

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
        }
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
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| unreachable(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if url.scheme() == "https" {
            let Some(tls) = self.tls.clone() else {
                return Err(unreachable(
                    &"an https:// worker needs `cluster.tls.ca` (the CA that signed the workers' certificates)",
                ));
            };
            endpoint = endpoint.tls_config(tls).map_err(|e| unreachable(&e))?;
        }
        // Connects on first use; a worker that is down fails the request
        // that needs it, not the plan.
        let channel = endpoint.connect_lazy();
        self.channels.lock().insert(url.clone(), channel.clone());
        Ok(channel)
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

/// How often a coordinator checks each worker.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// How long a worker may take to answer a check.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The workers named in the configuration, and which of them answered
/// their last check. Queries are planned over the ones that did; with
/// none, queries run on the coordinator.
#[derive(Debug, Clone)]
pub struct StaticWorkers {
    urls: Arc<Vec<Url>>,
    healthy: Arc<Mutex<Vec<Url>>>,
}

impl StaticWorkers {
    /// These URLs, all taken as healthy until a check says otherwise.
    pub fn new(urls: Vec<Url>) -> Self {
        Self {
            healthy: Arc::new(Mutex::new(urls.clone())),
            urls: Arc::new(urls),
        }
    }

    /// The URLs.
    pub fn urls(&self) -> &[Url] {
        &self.urls
    }

    /// The workers that answered their last check.
    pub fn healthy(&self) -> Vec<Url> {
        self.healthy.lock().clone()
    }

    /// Checks every worker once (a signed `GetWorkerInfo`), keeping those
    /// that answer within [`HEALTH_TIMEOUT`]; a worker that stops or comes
    /// back is logged.
    pub async fn check(&self, resolver: &AuthChannelResolver) {
        let mut answered = Vec::new();
        for url in self.urls.iter() {
            let ok = tokio::time::timeout(HEALTH_TIMEOUT, async {
                let mut client = resolver.get_worker_client_for_url(url).await?;
                client
                    .get_worker_info(datafusion_distributed::GetWorkerInfoRequest {})
                    .await
            })
            .await;
            match ok {
                Ok(Ok(_)) => answered.push(url.clone()),
                Ok(Err(e)) => {
                    resolver.forget(url);
                    if self.healthy.lock().contains(url) {
                        warn!(worker = %url, error = %e, "a worker stopped answering; queries go to the others");
                    }
                }
                Err(_) => {
                    resolver.forget(url);
                    if self.healthy.lock().contains(url) {
                        warn!(worker = %url, "a worker did not answer in time; queries go to the others");
                    }
                }
            }
        }
        let mut healthy = self.healthy.lock();
        for url in &answered {
            if !healthy.contains(url) {
                tracing::info!(worker = %url, "a worker answers again");
            }
        }
        *healthy = answered;
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

impl WorkerResolver for StaticWorkers {
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
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = Checked::new(worker.into_worker_server(), verifier);
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    server
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
