//! Flight SQL measurements: `meshq serve`'s service on loopback, driven by
//! arrow-rs's Flight SQL client.
//!
//! The server runs on its own tokio runtime in its own threads, the client
//! on the caller's; both share the machine's cores, as a client and server
//! on one host do.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use std::sync::Arc;

use meshq_engine::{Engine, EngineConfig, LiveEngine};
use meshq_flight_server::metrics::Metrics;
use meshq_flight_server::operations::Operations;
use meshq_flight_server::{ServerConfig, serve};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A server running until dropped.
pub struct RunningServer {
    /// Bound address.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the Flight SQL service for `engine` on 127.0.0.1, with
/// `worker_threads` runtime threads.
pub fn start(engine: Engine, worker_threads: usize) -> Result<RunningServer> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a free port");
            let config = ServerConfig {
                tls: None,
                shutdown_grace: Duration::from_secs(1),
                metrics_bind: None,
                http_bind: None,
            };
            // Served as loaded; the benchmark never reloads it.
            let live = LiveEngine::with_engine(EngineConfig::new(&engine.mesh().root), engine);
            let ops = Arc::new(Operations::new(Arc::new(Metrics::new()), None));
            let res = serve(
                listener,
                live,
                ops,
                config,
                async move {
                    let _ = stop_rx.await;
                },
                move |listening| {
                    let _ = addr_tx.send(listening.flight);
                },
            )
            .await;
            if let Err(e) = res {
                eprintln!("benchmark server failed: {e}");
            }
        });
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .context("the benchmark server did not start")?;
    Ok(RunningServer {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// A logged-in client, with the HTTP/2 defaults of tonic's channel
/// (2 MiB stream window, 16 KiB frames).
pub async fn client(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<FlightSqlServiceClient<Channel>> {
    connect(
        Channel::from_shared(format!("http://{addr}"))?,
        user,
        password,
    )
    .await
}

/// A logged-in client whose connection advertises other HTTP/2 receive
/// windows (per stream and connection) and frame sizes than tonic's
/// defaults, as clients tuned for bulk transfer do.
pub async fn client_tuned(
    addr: SocketAddr,
    user: &str,
    password: &str,
    window: Option<u32>,
    frame: Option<u32>,
) -> Result<FlightSqlServiceClient<Channel>> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .max_frame_size(frame);
    connect(endpoint, user, password).await
}

async fn connect(
    endpoint: tonic::transport::Endpoint,
    user: &str,
    password: &str,
) -> Result<FlightSqlServiceClient<Channel>> {
    let channel = endpoint.connect().await?;
    let mut c = FlightSqlServiceClient::new(channel);
    c.handshake(user, password).await?;
    Ok(c)
}

/// Runs `sql` and fetches every endpoint; (rows, Arrow bytes received).
pub async fn query(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Result<(usize, usize)> {
    let info = c.execute(sql.to_string(), None).await?;
    let mut rows = 0;
    let mut bytes = 0;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.context("endpoint without ticket")?;
        let mut stream = c.do_get(ticket).await?;
        while let Some(b) = stream.try_next().await? {
            rows += b.num_rows();
            bytes += batch_bytes(&b);
        }
    }
    Ok((rows, bytes))
}

/// Bytes of Arrow buffers a batch holds (data, offsets, validity).
pub fn batch_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}
