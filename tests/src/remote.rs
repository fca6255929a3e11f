//! A meshq Flight SQL server in this process, serving a mesh as the remote
//! source of another mesh's `format: flightsql` products.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use datafusion::common::runtime::SpawnedTask;
use meshq_engine::LiveEngine;
use meshq_flight_server::audit::AuditLog;
use meshq_flight_server::metrics::Metrics;
use meshq_flight_server::operations::Operations;

/// A running server; stops when dropped.
pub struct RemoteMeshq {
    /// Its Flight SQL port on 127.0.0.1.
    pub port: u16,
    /// Its audit log (one JSON record per statement).
    pub audit: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<SpawnedTask<()>>,
}

impl RemoteMeshq {
    /// Serves the mesh at `mesh` (the fixture's hash key supplied) on a
    /// free port, auditing into `audit`; returns once it answers.
    pub async fn start(mesh: &Path, audit: &Path) -> Result<Self> {
        Self::start_on(mesh, audit, 0).await
    }

    /// [`Self::start`] on `port` (0: a free one), e.g. to come back where
    /// a stopped server was.
    pub async fn start_on(mesh: &Path, audit: &Path, port: u16) -> Result<Self> {
        let live = LiveEngine::new(crate::fixture_engine_config(mesh));
        let outcome = live.reload().await;
        if live.current().is_none() {
            anyhow::bail!("the remote mesh did not load: {:?}", outcome.status);
        }
        let ops = Arc::new(Operations::new(
            Arc::new(Metrics::new()),
            Some(AuditLog::open(audit)?),
        ));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let config = meshq_flight_server::ServerConfig {
            tls: None,
            shutdown_grace: std::time::Duration::from_millis(100),
            metrics_bind: None,
            http_bind: None,
        };
        let task = SpawnedTask::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = meshq_flight_server::serve(listener, live, ops, config, shutdown, |l| {
                let _ = ready_tx.send(l);
            })
            .await
            {
                eprintln!("the remote meshq stopped: {e}");
            }
        });
        ready.await?;
        Ok(Self {
            port,
            audit: audit.to_path_buf(),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `grpc://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// Stops serving and waits until the port is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The audit records so far.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for RemoteMeshq {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
