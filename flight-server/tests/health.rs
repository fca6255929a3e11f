//! Readiness: until the first mesh load completes, the health service says
//! NOT_SERVING and calls fail with UNAVAILABLE; then both turn.

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use meshq_engine::{EngineConfig, LiveEngine};
use meshq_flight_server::metrics::Metrics;
use meshq_flight_server::operations::Operations;
use meshq_flight_server::{ServerConfig, serve};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn status(channel: &Channel, service: &str) -> i32 {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_load_completes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meshq.yaml"), "principals: []\n").unwrap();
    let live = LiveEngine::new(EngineConfig::new(dir.path()));
    // The server must be reachable before it is ready.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = ServerConfig {
        tls: None,
        shutdown_grace: Duration::from_secs(1),
        metrics_bind: None,
        http_bind: None,
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let ops = Arc::new(Operations::new(Arc::new(Metrics::new()), None));
    let server = tokio::spawn(serve(
        listener,
        Arc::clone(&live),
        ops,
        config,
        std::future::pending(),
        move |l| {
            let _ = ready_tx.send(l);
        },
    ));
    // The listener is bound before the server starts: no retrying.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for service in ["", "arrow.flight.protocol.FlightService"] {
        assert_eq!(
            status(&channel, service).await,
            ServingStatus::NotServing as i32
        );
    }
    let mut client = FlightSqlServiceClient::new(channel.clone());
    let e = client.handshake("ana", "x").await.unwrap_err().to_string();
    assert!(e.contains("still loading"), "{e}");

    let outcome = live.reload().await;
    assert_eq!(outcome.version, 1);
    let listening = tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listening.flight.port(), port);
    for service in ["", "arrow.flight.protocol.FlightService"] {
        assert_eq!(
            status(&channel, service).await,
            ServingStatus::Serving as i32
        );
    }
    // Now an answer from the mesh itself: there is no such user.
    let e = client.handshake("ana", "x").await.unwrap_err().to_string();
    assert!(e.contains("invalid credentials"), "{e}");
    server.abort();
}
