//! meshq's Arrow Flight SQL server.
//!
//! [`serve`] runs [`service::MeshFlightService`] on tonic: clients log in
//! with HTTP Basic in the Handshake (or send a bearer JWT), then every call
//! runs as that principal in a governed [`meshq_engine::MeshSession`].
//!
//! Invariants:
//! - Every RPC authenticates; a ticket or handle carries SQL and parameters,
//!   never a principal. `DoGet` runs the plan `GetFlightInfo` kept in the
//!   same client session for that ticket, when the mesh version and the
//!   statement are unchanged; otherwise it plans again as the caller.
//! - Results stream batch by batch, schema first (also for zero rows), in
//!   the same schema `GetFlightInfo` announced, with view types sent as
//!   plain `Utf8`/`Binary`.
//! - Every failure is an [`error::Error`]; it becomes a gRPC status in one
//!   place (`From<Error> for Status`) and never carries row values.

pub mod actions;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod cancel;
pub mod coalesce;
pub mod direct_get;
pub mod error;
pub mod lineage;
pub mod metadata;
pub mod metrics;
pub mod operations;
pub mod params;
pub mod query;
pub mod result_stream;
pub mod service;
pub mod session_options;
pub mod sessions;
pub mod ticket;
pub mod trace;
pub mod web;
mod wire;

pub use wire::{COMPRESSION_HEADER, VIEW_TYPES_HEADER, WireOptions};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::common::runtime::SpawnedTask;
use futures::TryStreamExt;
use meshq_engine::LiveEngine;
use tracing::info;

use crate::metrics::Metrics;
use crate::operations::Operations;
use crate::service::MeshFlightService;

/// Largest message the server accepts (large parameter sets in DoPut).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// PEM certificate and key for TLS; plaintext when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long in-flight calls may run after a shutdown signal.
    pub shutdown_grace: std::time::Duration,
    /// Serve Prometheus metrics over HTTP here.
    pub metrics_bind: Option<SocketAddr>,
    /// Serve the web catalog here.
    pub http_bind: Option<SocketAddr>,
}

/// Where the server listens, once it does.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// Flight SQL (and `grpc.health.v1`).
    pub flight: SocketAddr,
    /// Prometheus metrics, when enabled.
    pub metrics: Option<SocketAddr>,
    /// The web catalog, when enabled.
    pub http: Option<SocketAddr>,
}

/// Each served table's last change and freshness against its SLA.
async fn sample_tables(metrics: &Metrics, live: &LiveEngine) {
    metrics.clear_tables();
    let Some(engine) = live.current() else {
        return;
    };
    for t in engine.served_tables() {
        let f = meshq_engine::meta::freshness(&engine, t).await;
        metrics.table_freshness(
            &t.def.qualified_name(),
            &t.def.product_id,
            f.last_modified_ms.map(|ms| ms as f64 / 1000.0),
            match f.status {
                "late" => Some(true),
                "fresh" => Some(false),
                _ => None,
            },
        );
        if let Some(slot) = engine.acceleration_of(&t.def.qualified_name()) {
            let status = slot.status();
            metrics.table_acceleration(
                &t.def.qualified_name(),
                &t.def.product_id,
                status.serving,
                status.error.is_some(),
                status.bytes,
            );
        }
        if let Some(report) = engine.quality_board().latest(t) {
            let failed = report
                .results
                .iter()
                .filter(|r| {
                    r.status == meshq_engine::quality::Status::Failed
                        || (r.status == meshq_engine::quality::Status::Error && r.rule.is_error())
                })
                .count();
            metrics.table_quality(&t.def.qualified_name(), &t.def.product_id, failed);
        }
    }
}

/// Refreshes the sampled gauges from the server's state.
fn sample(metrics: &Metrics, live: &LiveEngine, ops: &Operations, sessions: usize) {
    let (running, queued) = ops.queries_in_flight();
    metrics.running.set(running as i64);
    metrics.queued.set(queued as i64);
    metrics.sessions.set(sessions as i64);
    metrics.mesh_version.set(live.version() as i64);
    metrics.ready.set(live.is_ready() as i64);
    if let Some(at) = live.loaded_at() {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metrics.mesh_loaded_at.set(secs);
    }
    if let Some(engine) = live.current() {
        let pool = &engine.runtime().memory_pool;
        metrics.memory_reserved.set(pool.reserved() as i64);
        let limit = match pool.memory_limit() {
            datafusion::execution::memory_pool::MemoryLimit::Finite(n) => n as i64,
            _ => 0,
        };
        metrics.memory_limit.set(limit);
        metrics
            .tables_served
            .set(engine.served_tables().len() as i64);
        if let Some(cluster) = engine.distribution() {
            let status = cluster.status();
            metrics.cluster_workers.set(status.workers_answering as i64);
            metrics
                .cluster_plans_unverified
                .set(status.plans_unverified as i64);
        }
        metrics
            .queries_run_again
            .set(meshq_engine::retry::runs_again() as i64);
        metrics.result_cache(&engine.result_cache().stats().counters());
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS material could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the mesh in `live` on `listener` (already bound, so a caller
/// that asked for port 0 knows the port before anything else happens)
/// until `shutdown` resolves, then drains in-flight calls. Until the first
/// load of `live` completes, calls fail with `UNAVAILABLE` and the health
/// service says `NOT_SERVING`. `on_ready` runs once both are true:
/// listening, and the health service says `SERVING`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    live: Arc<LiveEngine>,
    ops: Arc<Operations>,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Listening) + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let flight = MeshFlightService::new(Arc::clone(&live), Arc::clone(&ops));
    let sessions = flight.sessions_counter();
    let (web_stop, web_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut _web_task = None;
    let http_addr = match config.http_bind {
        Some(bind) => {
            let listener = tokio::net::TcpListener::bind(bind).await?;
            let addr = listener.local_addr()?;
            // Over TLS when the server has a certificate; its cookie is
            // then `Secure`.
            let tls = match &config.tls {
                Some((cert, key)) => {
                    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                    Some(web::tls_config(cert, key).map_err(ServeError::Tls)?)
                }
                None => None,
            };
            let state = Arc::new(web::WebState::new(
                flight.authenticator(),
                Arc::clone(&live),
                Arc::clone(&ops),
                tls.is_some(),
            ));
            _web_task = Some(SpawnedTask::spawn(async move {
                let stop = async move {
                    let _ = web_stopped.await;
                };
                if let Err(e) = web::serve_web(listener, state, tls, stop).await {
                    tracing::warn!(error = %e, "web catalog stopped");
                }
            }));
            info!(%addr, "serving the web catalog");
            Some(addr)
        }
        None => None,
    };
    let flight = Arc::new(flight);
    // Statement results are streamed without copying their Arrow data
    // (`direct_get`); every other call goes to the generated service.
    let service = direct_get::DirectDoGet::new(
        FlightServiceServer::from_arc(Arc::clone(&flight))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        flight,
        MAX_MESSAGE_BYTES,
    );
    // grpc.health.v1: NOT_SERVING until the first load completes.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<FlightServiceServer<MeshFlightService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let (listening_tx, listening_rx) = tokio::sync::oneshot::channel::<Listening>();
    // Tasks of the server live as long as `serve` runs.
    let _readiness = {
        let live = Arc::clone(&live);
        SpawnedTask::spawn(async move {
            live.ready().await;
            health
                .set_serving::<FlightServiceServer<MeshFlightService>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            if let Ok(listening) = listening_rx.await {
                on_ready(listening);
            }
        })
    };
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut _metrics_task = None;
    let metrics_addr = match config.metrics_bind {
        Some(bind) => {
            let listener = tokio::net::TcpListener::bind(bind).await?;
            let addr = listener.local_addr()?;
            let (live, ops2) = (Arc::clone(&live), Arc::clone(&ops));
            let sampler: metrics::Sampler = Arc::new(move |m: Arc<Metrics>| {
                let (live, ops) = (Arc::clone(&live), Arc::clone(&ops2));
                let sessions = sessions();
                Box::pin(async move {
                    sample(&m, &live, &ops, sessions);
                    sample_tables(&m, &live).await;
                })
            });
            let metrics = Arc::clone(&ops.metrics);
            _metrics_task = Some(SpawnedTask::spawn(async move {
                let stop = async move {
                    let _ = metrics_stopped.await;
                };
                if let Err(e) = metrics::serve_metrics(listener, metrics, sampler, stop).await {
                    tracing::warn!(error = %e, "metrics endpoint stopped");
                }
            }));
            Some(addr)
        }
        None => None,
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &config.tls {
        // Dependencies enable both of rustls' crypto providers; pick one for
        // the process (a second call is a no-op).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let cert =
            std::fs::read(cert).map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?;
        let key =
            std::fs::read(key).map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?;
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    info!(%addr, tls = config.tls.is_some(), "listening for Flight SQL");
    let _ = listening_tx.send(Listening {
        flight: addr,
        metrics: metrics_addr,
        http: http_addr,
    });
    // On shutdown, stop accepting and let in-flight calls finish, but no
    // longer than the grace period: idle clients keep connections open.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let server = builder
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(
            // No Nagle delay: a Flight SQL call is a few small messages
            // each way, and Nagle's algorithm with delayed ACKs adds tens of
            // milliseconds to each round trip.
            // Small HTTP/2 frames are gathered into larger writes
            // (`coalesce`).
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map_ok(coalesce::CoalescedWrites::new),
            signal,
        );
    tokio::pin!(server);
    let grace = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(config.shutdown_grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = &mut server => result?,
        _ = grace => info!("shutdown grace period over; closing remaining connections"),
    }
    let _ = metrics_stop.send(());
    let _ = web_stop.send(());
    info!("server stopped");
    Ok(())
}
