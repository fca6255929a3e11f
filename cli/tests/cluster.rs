//! `meshq worker` as a process: it serves only requests signed with the
//! cluster secret for that worker, RPC, settings and plan. A raw client —
//! no credential, a wrong secret, a replayed credential, a hand-made plan,
//! a signed plan or setting altered on the way, a credential made for
//! another worker — is refused with UNAUTHENTICATED, logged.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::Arc;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{
    ChannelResolver, GetWorkerInfoRequest, MaybeEncoded, SetPlanRequest, TaskKey, WorkerChannel,
};
use meshq_cluster::wire::Signing;
use meshq_cluster::{AuthChannelResolver, CLUSTER_AUTH_HEADER, ClusterKey};
use tonic::transport::Channel;
use url::Url;

use super::meshq;

const SECRET: &str = "a cluster secret for the tests";

/// A worker process; killed on drop.
pub(super) struct WorkerProcess {
    child: Child,
    pub(super) url: Url,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WorkerProcess {
    /// Whether the worker logged `needle` so far.
    fn log_has(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The URL of the worker's metrics (`--metrics-bind`), from its log.
    async fn metrics_address(&self) -> String {
        assert!(self.logs("meshq worker metrics on").await);
        self.log
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| {
                l.strip_prefix("meshq worker metrics on ")
                    .map(str::to_string)
            })
            .expect("the worker serves metrics")
    }

    /// Whether the worker logged `needle` within ten seconds.
    async fn logs(&self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }
}

/// A mesh directory holding only a `meshq.yaml` with the cluster secret.
fn worker_mesh() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("meshq.yaml"),
        "cluster:\n  secret: { env: MESHQ_TEST_CLUSTER_SECRET }\n",
    )
    .unwrap();
    dir
}

/// A copy of the demo mesh with the cluster secret, every file scan split
/// as finely as datafusion-distributed allows.
fn cluster_demo_mesh() -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, mesh) = super::ops::copy_mesh();
    super::ops::append(
        &mesh,
        "\ncluster:\n  secret: { env: MESHQ_TEST_CLUSTER_SECRET }\n  settings:\n    distributed.file_scan_config_bytes_per_partition: \"1\"\n",
    );
    (dir, mesh)
}

/// Starts `meshq worker` on port 0 and reads the URL it announces.
pub(super) fn start_worker(mesh: &std::path::Path, secret: &str) -> WorkerProcess {
    start_worker_with(mesh, secret, &[])
}

/// [`start_worker`] with more environment variables.
pub(super) fn start_worker_with(
    mesh: &std::path::Path,
    secret: &str,
    env: &[(&str, &str)],
) -> WorkerProcess {
    let mut child = meshq()
        .args(["--log-filter", "meshq_cluster=debug"])
        .args(["worker", "--bind", "127.0.0.1:0", "--mesh"])
        .arg(mesh)
        .env("MESHQ_TEST_CLUSTER_SECRET", secret)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = loop {
        let line = lines
            .next()
            .expect("worker exited before listening")
            .unwrap();
        log.lock().unwrap().push(line.clone());
        if let Some(url) = line.strip_prefix("meshq worker listening on ") {
            break Url::parse(url).unwrap();
        }
    };
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    WorkerProcess { child, url, log }
}

/// A client that sends `header` (or none) as the credential of every
/// request.
async fn raw_client(url: &Url, header: Option<String>) -> Box<dyn WorkerChannel> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut r: http::Request<tonic::body::Body>| {
            if let Some(h) = &header {
                r.headers_mut()
                    .insert(CLUSTER_AUTH_HEADER, http::HeaderValue::from_str(h).unwrap());
            }
            r
        })
        .service(channel);
    create_worker_client(BoxCloneSyncChannel::new(service))
}

/// The error of a call that must have been refused.
fn refusal<T>(r: datafusion::error::Result<T>) -> String {
    match r {
        Ok(_) => panic!("a request without a valid credential was served"),
        Err(e) => refused(e),
    }
}

fn refused(e: datafusion::error::DataFusionError) -> String {
    let text = e.to_string();
    assert!(
        text.contains("Unauthenticated")
            || text.contains("does not have valid authentication credentials"),
        "{text}"
    );
    text
}

#[tokio::test]
async fn a_worker_refuses_requests_without_the_cluster_credential() {
    let mesh = worker_mesh();
    let worker = start_worker_with(
        mesh.path(),
        SECRET,
        &[("MESHQ_WORKER_METRICS_BIND", "127.0.0.1:0")],
    );

    // Signed with the cluster secret: served.
    let signed = AuthChannelResolver::new(ClusterKey::new(SECRET).unwrap(), None);
    let mut client = signed.get_worker_client_for_url(&worker.url).await.unwrap();
    let info = client
        .get_worker_info(GetWorkerInfoRequest {})
        .await
        .unwrap();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));

    // No credential, garbage, another cluster's secret.
    for header in [None, Some("v2.0.x.y".to_string())] {
        let mut c = raw_client(&worker.url, header).await;
        refusal(c.get_worker_info(GetWorkerInfoRequest {}).await);
    }
    let other = ClusterKey::new("another cluster's secret").unwrap();
    let mut c = signed_client(&worker.url, other, &worker.url, |r| r).await;
    refusal(c.get_worker_info(GetWorkerInfoRequest {}).await);

    // A credential seen once is not accepted again: the same request,
    // byte for byte, sent a second time.
    let seen = Arc::new(std::sync::Mutex::new(None::<String>));
    let sink = Arc::clone(&seen);
    let key = ClusterKey::new(SECRET).unwrap();
    let mut c = signed_client(&worker.url, key.clone(), &worker.url, move |r| {
        *sink.lock().unwrap() = r
            .headers()
            .get(CLUSTER_AUTH_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        r
    })
    .await;
    c.get_worker_info(GetWorkerInfoRequest {}).await.unwrap();
    let once = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the request was signed");
    let mut c = raw_client(&worker.url, Some(once)).await;
    let text = refusal(c.get_worker_info(GetWorkerInfoRequest {}).await);
    assert!(text.contains("already used"), "{text}");

    // A credential made for another worker (another authority).
    let elsewhere = Url::parse("http://127.0.0.1:1").unwrap();
    let mut c = signed_client(&worker.url, key.clone(), &elsewhere, |r| r).await;
    let text = refusal(c.get_worker_info(GetWorkerInfoRequest {}).await);
    assert!(text.contains("for this worker, RPC and headers"), "{text}");

    // A hand-made plan reading a file, sent without the secret: refused
    // before it is decoded.
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("t.parquet");
    let ctx = SessionContext::new();
    ctx.sql("SELECT 1 AS secret_value")
        .await
        .unwrap()
        .write_parquet(file.to_str().unwrap(), Default::default(), None)
        .await
        .unwrap();
    let plan = ctx
        .read_parquet(file.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let task_ctx = Arc::new(TaskContext::default());
    let plan_bytes = MaybeEncoded::Decoded(plan).encode(&task_ctx).unwrap();
    let mut c = raw_client(&worker.url, None).await;
    send_plan(&mut c, &worker.url, &plan_bytes, &task_ctx).await;

    // Signed with the cluster's secret and sent as signed: served (the
    // control of the next two).
    let mut c = signed_client(&worker.url, key.clone(), &worker.url, |r| r).await;
    if let Err(e) = plan_outcome(&mut c, &worker.url, &plan_bytes, &task_ctx).await {
        assert!(!e.to_string().contains("cluster credential"), "{e}");
    }

    // The same plan, signed with the cluster's secret, then altered on
    // the way (one byte of the fragment; a setting added to the headers,
    // here a mask list): refused, never decoded.
    let flip: fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> = |r| {
        FirstFrame::tamper(
            r,
            |data| {
                let mut changed = data.to_vec();
                *changed.last_mut().unwrap() ^= 0x01;
                bytes::Bytes::from(changed)
            },
            false,
        )
    };
    let add_setting: fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> =
        |mut r| {
            r.headers_mut().insert(
                "x-datafusion-distributed-config-meshq_cluster.masks",
                http::HeaderValue::from_static("[]"),
            );
            r
        };
    for (tamper, why) in [
        (flip, "altered after it was signed"),
        (add_setting, "for this worker, RPC and headers"),
    ] {
        let mut c = signed_client(&worker.url, key.clone(), &worker.url, tamper).await;
        let text = send_plan(&mut c, &worker.url, &plan_bytes, &task_ctx).await;
        assert!(text.contains(why), "{text}");
    }
    assert!(
        worker
            .logs("refused a request without a valid cluster credential")
            .await
    );

    // A sender that goes away before its first message is whole (a query
    // cancelled): the request ends as CANCELLED, not as a refusal.
    let cut: fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> =
        |r| FirstFrame::tamper(r, |data| data.slice(..data.len().min(3)), true);
    // Counted from the worker's metrics, which are updated before the
    // answer is sent (its log is read on another thread, and rate-limited).
    let before = refusals_counted(&worker).await;
    assert!(
        before >= 8,
        "each refused request above is counted: {before}"
    );
    let mut c = signed_client(&worker.url, key.clone(), &worker.url, cut).await;
    let e = plan_outcome(&mut c, &worker.url, &plan_bytes, &task_ctx)
        .await
        .expect_err("a request cut short is not served");
    assert!(
        e.to_string().contains("ended before its first message"),
        "{e}"
    );
    assert_eq!(
        before,
        refusals_counted(&worker).await,
        "a request cut short was counted as refused"
    );
}

/// The refusals a worker has counted, over all reasons, from its metrics.
async fn refusals_counted(worker: &WorkerProcess) -> u64 {
    let address = worker.metrics_address().await;
    let text = reqwest::get(&address).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("meshq_worker_refusals_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A worker started with `--advertise` answers only to that name: a
/// credential made for the URL it is reached by is refused when that is
/// not the name.
#[tokio::test]
async fn a_worker_answers_only_to_the_names_it_advertises() {
    let mesh = worker_mesh();
    let worker = start_worker_with(
        mesh.path(),
        SECRET,
        &[(
            "MESHQ_WORKER_ADVERTISE",
            "http://worker-7.meshq.internal:50052",
        )],
    );
    assert!(
        worker
            .logs("answers to worker-7.meshq.internal:50052")
            .await
    );
    let key = ClusterKey::new(SECRET).unwrap();
    let mut c = signed_client(&worker.url, key, &worker.url, |r| r).await;
    let text = refusal(c.get_worker_info(GetWorkerInfoRequest {}).await);
    assert!(text.contains("which is not this worker"), "{text}");
}

/// A worker with `--metrics-bind` counts what it serves and refuses, by
/// RPC and reason, the bytes it sends, and its memory.
#[tokio::test]
async fn a_worker_counts_what_it_serves_and_refuses() {
    let mesh = worker_mesh();
    let worker = start_worker_with(
        mesh.path(),
        SECRET,
        &[("MESHQ_WORKER_METRICS_BIND", "127.0.0.1:0")],
    );
    let address = worker.metrics_address().await;
    let key = ClusterKey::new(SECRET).unwrap();
    let mut c = signed_client(&worker.url, key.clone(), &worker.url, |r| r).await;
    for _ in 0..2 {
        c.get_worker_info(GetWorkerInfoRequest {}).await.unwrap();
    }
    let mut c = raw_client(&worker.url, None).await;
    refusal(c.get_worker_info(GetWorkerInfoRequest {}).await);
    let elsewhere = Url::parse("http://127.0.0.1:1").unwrap();
    let mut c = signed_client(&worker.url, key, &elsewhere, |r| r).await;
    refusal(c.get_worker_info(GetWorkerInfoRequest {}).await);

    let text = reqwest::get(&address).await.unwrap().text().await.unwrap();
    for line in [
        r#"meshq_worker_requests_total{rpc="GetWorkerInfo",outcome="accepted"} 2"#,
        r#"meshq_worker_requests_total{rpc="GetWorkerInfo",outcome="refused"} 2"#,
        r#"meshq_worker_refusals_total{reason="missing"} 1"#,
        r#"meshq_worker_refusals_total{reason="wrong_credential"} 1"#,
        "meshq_worker_tasks 0",
        "meshq_worker_memory_limit_bytes",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let sent: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("meshq_worker_sent_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent > 0, "{text}");
}

/// Sends the plan `bytes` on `client`; the refusal's text.
async fn send_plan(
    client: &mut Box<dyn WorkerChannel>,
    url: &Url,
    bytes: &[u8],
    task_ctx: &Arc<TaskContext>,
) -> String {
    refused(
        plan_outcome(client, url, bytes, task_ctx)
            .await
            .expect_err("the plan was refused"),
    )
}

/// Sends the plan `bytes` on `client` as the coordinator would: the first
/// reply, or the error of the call or of that reply.
async fn plan_outcome(
    client: &mut Box<dyn WorkerChannel>,
    url: &Url,
    bytes: &[u8],
    task_ctx: &Arc<TaskContext>,
) -> datafusion::error::Result<()> {
    use futures::StreamExt;
    let request = SetPlanRequest {
        task_key: TaskKey {
            query_id: uuid::Uuid::new_v4(),
            stage_id: 1,
            task_number: 0,
        },
        task_count: 1,
        plan: MaybeEncoded::Encoded(bytes.to_vec()),
        work_unit_feed_declarations: vec![],
        target_worker_url: url.clone(),
        query_start_time_ns: 0,
    };
    let mut replies = client
        .coordinator_channel(
            http::HeaderMap::new(),
            request,
            Box::pin(futures::stream::empty()),
            ExecutionPlanMetricsSet::new(),
            task_ctx,
        )
        .await?;
    match replies.next().await {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// A client signing with `key` for the worker `signed_for`, connected to
/// `url`; `tamper` changes each request after it is signed.
async fn signed_client(
    url: &Url,
    key: ClusterKey,
    signed_for: &Url,
    tamper: impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>
    + Clone
    + Send
    + Sync
    + 'static,
) -> Box<dyn WorkerChannel> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tampered = tower::ServiceBuilder::new()
        .map_request(tamper)
        .service(channel);
    let authority = meshq_cluster::transport::authority(signed_for).unwrap();
    create_worker_client(BoxCloneSyncChannel::new(Signing::new(
        tampered, key, &authority,
    )))
}

/// A body whose first data frame is changed by `change`; with `then_end`,
/// the body ends after it.
struct FirstFrame {
    inner: tonic::body::Body,
    change: fn(bytes::Bytes) -> bytes::Bytes,
    then_end: bool,
    done: bool,
}

impl FirstFrame {
    /// `request` with its body's first frame changed after signing.
    fn tamper(
        request: http::Request<tonic::body::Body>,
        change: fn(bytes::Bytes) -> bytes::Bytes,
        then_end: bool,
    ) -> http::Request<tonic::body::Body> {
        let (parts, inner) = request.into_parts();
        let body = FirstFrame {
            inner,
            change,
            then_end,
            done: false,
        };
        http::Request::from_parts(parts, tonic::body::Body::new(body))
    }
}

impl http_body::Body for FirstFrame {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.done && this.then_end {
            return std::task::Poll::Ready(None);
        }
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        let std::task::Poll::Ready(Some(Ok(frame))) = polled else {
            return polled;
        };
        let frame = match frame.into_data() {
            Ok(data) if !this.done && !data.is_empty() => {
                this.done = true;
                http_body::Frame::data((this.change)(data))
            }
            Ok(data) => http_body::Frame::data(data),
            Err(frame) => frame,
        };
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        (self.done && self.then_end) || self.inner.is_end_stream()
    }
}

#[tokio::test]
async fn a_worker_without_a_usable_secret_does_not_start() {
    let mesh = worker_mesh();
    let out = meshq()
        .args(["worker", "--bind", "127.0.0.1:0", "--mesh"])
        .arg(mesh.path())
        .env("MESHQ_TEST_CLUSTER_SECRET", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster.secret") && err.contains("16 bytes"),
        "{err}"
    );
    let out = meshq()
        .args(["worker", "--bind", "127.0.0.1:0", "--mesh"])
        .arg(mesh.path())
        .env_remove("MESHQ_TEST_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MESHQ_TEST_CLUSTER_SECRET"), "{err}");
}

/// Queries whose answers must not depend on where they ran: scans,
/// aggregates and joins over Delta, Iceberg and Parquet products, masked
/// columns and row filters.
const SAME_ANSWERS: [&str; 6] = [
    "SELECT region, carrier, count(*) AS n FROM logistics.shipments GROUP BY 1, 2 ORDER BY 1, 2",
    "SELECT region, count(*) AS n, sum(total_amount) AS total FROM sales.orders GROUP BY region ORDER BY region",
    "SELECT c.region, count(*) AS n, sum(o.total_amount) AS total FROM sales.orders o JOIN customers.profiles c USING (customer_id) GROUP BY 1 ORDER BY 1",
    "SELECT customer_id, email, phone FROM customers.profiles ORDER BY customer_id LIMIT 25",
    "SELECT o.order_id, o.email, t.amount FROM sales.orders o JOIN payments.transactions t USING (order_id) ORDER BY o.order_id, t.amount LIMIT 40",
    "SELECT count(DISTINCT email) AS emails, count(*) AS n FROM sales.orders",
];

/// A coordinator over two workers answers every principal as a single
/// node does, and the workers ran fragments of its plans.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_answers_each_principal_as_one_node_does() {
    answers_each_principal_as_one_node_does(2).await;
}

/// The same over three workers: stages get three tasks, and every worker
/// runs fragments.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_of_three_workers_answers_each_principal_as_one_node_does() {
    answers_each_principal_as_one_node_does(3).await;
}

/// A coordinator over `n` worker processes answers ana, ben, gina and pat
/// as a single node does (answers and refusals), each worker ran
/// fragments (masked ones among them), and each statement is audited and
/// counted once.
async fn answers_each_principal_as_one_node_does(n: usize) {
    use super::flight::{login, start_on, text};
    use super::ops::try_query;
    // The answer, or the refusal (code and message): both must agree.
    async fn answer(
        c: &mut arrow_flight::sql::client::FlightSqlServiceClient<Channel>,
        sql: &str,
    ) -> String {
        match try_query(c, sql).await {
            Ok(batches) => text(&batches),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        }
    }
    let (_dir, mesh) = cluster_demo_mesh();
    let workers: Vec<_> = (0..n).map(|_| start_worker(&mesh, SECRET)).collect();
    let urls = workers
        .iter()
        .map(|w| w.url.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let single = start_on(&mesh, &[], &[]);
    let audit = _dir.path().join("cluster-audit.jsonl");
    let cluster = start_on(
        &mesh,
        &[
            "--workers",
            &urls,
            "--audit-log",
            audit.to_str().unwrap(),
            "--metrics-bind",
            "127.0.0.1:0",
        ],
        &[("MESHQ_TEST_CLUSTER_SECRET", SECRET)],
    );
    for user in ["ana", "ben", "gina", "pat"] {
        let mut one = login(&single, user).await;
        let mut many = login(&cluster, user).await;
        for sql in SAME_ANSWERS {
            let expected = answer(&mut one, sql).await;
            let got = answer(&mut many, sql).await;
            assert_eq!(got, expected, "{user}: {sql}");
        }
    }
    for w in &workers {
        assert!(
            w.logs("a plan fragment arrived from the coordinator").await,
            "a worker ran nothing"
        );
        // The worker's own audit: who sent which fragment.
        assert!(w.logs("a plan fragment was accepted").await);
        let line = w
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("a plan fragment was accepted"))
            .cloned()
            .unwrap();
        assert!(line.contains("fragment_sha256"), "{line}");
    }
    // Masked stages ran on the workers too, not only unmasked ones.
    let mut masked = false;
    for w in &workers {
        masked |= w.logs("the fragment's masks are registered").await;
    }
    assert!(masked, "no masked stage went to a worker");
    // Each statement is audited and counted once, however many workers
    // ran its stages.
    let statements = 4 * SAME_ANSWERS.len();
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["call"] == "statement")
        .collect();
    assert_eq!(records.len(), statements, "{records:#?}");
    let mut shapes = std::collections::BTreeMap::<String, usize>::new();
    for r in &records {
        *shapes.entry(r["sql_shape"].to_string()).or_default() += 1;
    }
    assert!(shapes.values().all(|&n| n == 4), "{shapes:#?}");
    let counted: f64 = super::ops::scrape(&cluster)
        .iter()
        .filter(|(k, _)| k.starts_with("meshq_queries_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(counted as usize, statements);
    // The cluster as the coordinator's metrics see it.
    let metrics = super::ops::scrape(&cluster);
    assert_eq!(
        metrics.get("meshq_cluster_workers_answering"),
        Some(&(n as f64))
    );
    assert_eq!(metrics.get("meshq_cluster_plans_unverified"), Some(&0.0));
    assert_eq!(metrics.get("meshq_queries_run_again"), Some(&0.0));
}

/// A worker whose hash-mask key differs from the coordinator's fails a
/// query that hashes, naming the secret, rather than hashing with its own
/// key; a worker without the key at all fails it the same way. Queries
/// without a hash mask still run on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_with_another_mask_key_fails_the_query_and_hashes_nothing() {
    use super::flight::{login, start_on, text};
    use super::ops::try_query;
    let (_dir, mesh) = cluster_demo_mesh();
    let single = start_on(&mesh, &[], &[]);
    let mut one = login(&single, "ana").await;
    let hashed = "SELECT customer_id, count(*) AS n FROM sales.orders GROUP BY customer_id ORDER BY customer_id";
    let plain = "SELECT region, count(*) AS n FROM sales.orders GROUP BY region ORDER BY region";
    let plain_answer = text(&try_query(&mut one, plain).await.unwrap());
    for (env, why) in [
        (
            vec![("MESHQ_DEMO_PII_KEY", "another key")],
            "differs from the coordinator's",
        ),
        (vec![("MESHQ_DEMO_PII_KEY", "")], "is empty on this worker"),
    ] {
        // Two: datafusion-distributed gives a plan to one worker no stage.
        let workers = [
            start_worker_with(&mesh, SECRET, &env),
            start_worker_with(&mesh, SECRET, &env),
        ];
        let urls = format!("{},{}", workers[0].url, workers[1].url);
        let cluster = start_on(
            &mesh,
            &["--workers", &urls],
            &[("MESHQ_TEST_CLUSTER_SECRET", SECRET)],
        );
        let mut ana = login(&cluster, "ana").await;
        // Until the coordinator's health check has seen the worker.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for i in 0.. {
            // Each differs, so none is answered from the result cache.
            let plain = plain.replace(
                "GROUP BY",
                &format!("WHERE order_id <> 'none-{i}' GROUP BY"),
            );
            assert_eq!(
                text(&try_query(&mut ana, &plain).await.unwrap()),
                plain_answer,
                "{env:?}"
            );
            if workers.iter().all(|w| w.log_has("a plan fragment arrived")) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker got no fragment"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let status = try_query(&mut ana, hashed).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
        assert!(
            status.message().contains("`pii-key`") && status.message().contains(why),
            "{env:?}: the error names the secret and why: {status}"
        );
        assert_eq!(
            text(&try_query(&mut ana, plain).await.unwrap()),
            plain_answer,
            "{env:?}"
        );
    }
}

/// A worker killed under a running coordinator: a query that needed it
/// runs again on the worker that is left (it had sent no row), the
/// coordinator stays up, and every query gets the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_queries_run_again_on_the_worker_left() {
    use super::flight::{login, start_on, text};
    use super::ops::try_query;
    let (_dir, mesh) = cluster_demo_mesh();
    let survivor = start_worker(&mesh, SECRET);
    let victim = start_worker(&mesh, SECRET);
    let urls = format!("{},{}", survivor.url, victim.url);
    let cluster = start_on(
        &mesh,
        &["--workers", &urls, "--metrics-bind", "127.0.0.1:0"],
        &[("MESHQ_TEST_CLUSTER_SECRET", SECRET)],
    );
    let mut pat = login(&cluster, "pat").await;
    // Each query differs, so none is answered from the result cache.
    let sql = |i: usize| {
        format!(
            "SELECT region, count(*) AS n FROM sales.orders WHERE order_id <> 'none-{i}' GROUP BY region ORDER BY region"
        )
    };
    let expected = text(&try_query(&mut pat, &sql(0)).await.unwrap());
    drop(victim);
    // Before the next periodic health check: a query whose tasks went to
    // the dead worker fails before it sent a row, so it runs again, once,
    // after the coordinator checked its workers: on the worker that is
    // left. Every query gets its answer.
    for i in 1..=10 {
        match try_query(&mut pat, &sql(i)).await {
            Ok(batches) => assert_eq!(text(&batches), expected),
            Err(status) => panic!("{status}\n{}", cluster.log.lock().unwrap().join("\n")),
        }
    }
    assert!(
        cluster
            .logs("a worker failed before the query sent a row; the query runs again")
            .await,
        "no query needed the dead worker"
    );
    // The next queries go to the worker that is left.
    for i in 1000..1003 {
        assert_eq!(text(&try_query(&mut pat, &sql(i)).await.unwrap()), expected);
    }
    let metrics = super::ops::scrape(&cluster);
    assert!(
        metrics
            .get("meshq_queries_run_again")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{metrics:?}"
    );
    assert_eq!(metrics.get("meshq_cluster_workers_answering"), Some(&1.0));
    assert!(cluster.logs("a worker stopped answering").await);
}
