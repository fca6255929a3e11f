//! meshq's Arrow Flight SQL server.
//!
//! [`serve`] runs [`service::MeshFlightService`] on tonic: clients log in
//! with HTTP Basic in the Handshake (or send a bearer JWT), then every call
//! runs as that principal in a governed [`meshq_engine::MeshSession`].
//!
//! Invariants:
//! - Every RPC authenticates; a ticket or handle carries SQL and parameters,
//!   never a principal, and `DoGet` plans again as the caller.
//! - Results stream batch by batch, schema first (also for zero rows), in
//!   the same schema `GetFlightInfo` announced, with view types sent as
//!   plain `Utf8`/`Binary`.
//! - Errors map to gRPC codes in one place ([`error::to_status`]) and never
//!   carry row values.

pub mod auth;
pub mod error;
pub mod metadata;
pub mod service;
pub mod session_options;
pub mod ticket;

use std::net::SocketAddr;
use std::path::PathBuf;

use arrow_flight::flight_service_server::FlightServiceServer;
use meshq_engine::Engine;
use tracing::info;

use crate::service::MeshFlightService;

/// Largest message the server accepts (large parameter sets in DoPut).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free port.
    pub bind: SocketAddr,
    /// PEM certificate and key for TLS; plaintext when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Write the bound port here once listening (for tests and scripts).
    pub port_file: Option<PathBuf>,
    /// How long in-flight calls may run after a shutdown signal.
    pub shutdown_grace: std::time::Duration,
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

/// Serves `engine` until `shutdown` resolves, then drains in-flight calls.
pub async fn serve(
    engine: Engine,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    if let Some(path) = &config.port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.port().to_string())?;
        std::fs::rename(&tmp, path)?;
    }
    let service = FlightServiceServer::new(MeshFlightService::new(engine))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
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
    info!(%addr, tls = config.tls.is_some(), "serving Flight SQL");
    on_listening(addr);
    // On shutdown, stop accepting and let in-flight calls finish, but no
    // longer than the grace period: idle clients keep connections open.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let server = builder.add_service(service).serve_with_incoming_shutdown(
        // No Nagle delay: a Flight SQL call is a few small messages
        // each way, and Nagle's algorithm with delayed ACKs adds tens of
        // milliseconds to each round trip.
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
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
    info!("server stopped");
    Ok(())
}
