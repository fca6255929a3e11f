//! Prometheus metrics, served as text on their own port (`--metrics-bind`).
//!
//! Every name starts with `meshq_`; the list, with meanings, is in
//! `docs/operating.md`. Gauges that describe the present (memory, sessions,
//! queued queries) are sampled when scraped.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    queries: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    rows_sent: Counter,
    bytes_sent: Counter,
    spilled_bytes: Counter,
    auth_failures: Counter,
    lineage_dropped: Counter,
    sessions_evicted: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    product_scans: Family<Labels, Counter>,
    product_errors: Family<Labels, Counter>,
    table_last_modified: Family<Labels, Gauge<f64, AtomicU64>>,
    table_late: Family<Labels, Gauge>,
    table_quality_passing: Family<Labels, Gauge>,
    table_quality_failed_rules: Family<Labels, Gauge>,
    table_accelerated: Family<Labels, Gauge>,
    table_acceleration_failing: Family<Labels, Gauge>,
    table_acceleration_bytes: Family<Labels, Gauge>,
    plans_kept: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_evictions: Counter,
    cache_bytes: Gauge,
    cache_entries: Gauge,
    /// Sampled at scrape time.
    pub(crate) sessions: Gauge,
    pub(crate) running: Gauge,
    pub(crate) queued: Gauge,
    pub(crate) memory_reserved: Gauge,
    pub(crate) memory_limit: Gauge,
    pub(crate) tables_served: Gauge,
    pub(crate) cluster_workers: Gauge,
    pub(crate) cluster_plans_unverified: Gauge,
    pub(crate) queries_run_again: Gauge,
    pub(crate) mesh_version: Gauge,
    pub(crate) ready: Gauge,
    pub(crate) mesh_loaded_at: Gauge<f64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshq");
        let queries = Family::<Labels, Counter>::default();
        registry.register(
            "queries",
            "Queries finished, by statement kind and outcome (ok, error code, cancelled)",
            queries.clone(),
        );
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 20))
        });
        registry.register(
            "query_duration_seconds",
            "Query wall-clock time from planning to the last batch, by statement kind",
            latency.clone(),
        );
        let rows_sent = Counter::default();
        registry.register("result_rows", "Result rows sent", rows_sent.clone());
        let bytes_sent = Counter::default();
        registry.register(
            "result_bytes",
            "Arrow bytes of result batches sent",
            bytes_sent.clone(),
        );
        let spilled_bytes = Counter::default();
        registry.register(
            "spilled_bytes",
            "Bytes queries spilled to disk",
            spilled_bytes.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Failed authentications",
            auth_failures.clone(),
        );
        let lineage_dropped = Counter::default();
        registry.register(
            "lineage_events_dropped",
            "OpenLineage events dropped: the queue was full or the endpoint kept failing",
            lineage_dropped.clone(),
        );
        let sessions_evicted = Family::<Labels, Counter>::default();
        registry.register(
            "sessions_evicted",
            "Sessions ended to make room, by reason (idle, per_principal, total)",
            sessions_evicted.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "reloads",
            "Mesh loads and reloads, by result (ok, partial, rejected)",
            reloads.clone(),
        );
        let product_scans = Family::<Labels, Counter>::default();
        registry.register(
            "product_scans",
            "Queries that read a product, by product id",
            product_scans.clone(),
        );
        let product_errors = Family::<Labels, Counter>::default();
        registry.register(
            "product_errors",
            "Queries reading a product that failed, by product id and error code",
            product_errors.clone(),
        );
        let table_last_modified = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "table_last_modified_seconds",
            "When a served table's data last changed (Unix time), by table and product",
            table_last_modified.clone(),
        );
        let table_late = Family::<Labels, Gauge>::default();
        registry.register(
            "table_freshness_late",
            "1 when a served table is older than its contract's freshness SLA, 0 when fresh (absent: unknown)",
            table_late.clone(),
        );
        let table_quality_passing = Family::<Labels, Gauge>::default();
        registry.register(
            "table_quality_passing",
            "1 when a served table passed its contract's error-severity quality rules at the last periodic check, 0 when not (absent: not checked)",
            table_quality_passing.clone(),
        );
        let table_quality_failed_rules = Family::<Labels, Gauge>::default();
        registry.register(
            "table_quality_failed_rules",
            "Error-severity quality rules of a served table that failed or could not run at the last periodic check",
            table_quality_failed_rules.clone(),
        );
        let table_accelerated = Family::<Labels, Gauge>::default();
        registry.register(
            "table_accelerated",
            "1 when an accelerated table is read from its local copy now, 0 when from its source",
            table_accelerated.clone(),
        );
        let table_acceleration_failing = Family::<Labels, Gauge>::default();
        registry.register(
            "table_acceleration_failing",
            "1 when the last refresh of an accelerated table's copy failed",
            table_acceleration_failing.clone(),
        );
        let table_acceleration_bytes = Family::<Labels, Gauge>::default();
        registry.register(
            "table_acceleration_bytes",
            "Bytes an accelerated table's copy holds (memory or local disk)",
            table_acceleration_bytes.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let plans_kept = counter(
            &mut registry,
            "statement_plans_reused",
            "Statements run from the plan an earlier call of the same session made (GetFlightInfo for its DoGet, CreatePreparedStatement for its executions) instead of planning again",
        );
        let cache_hits = counter(
            &mut registry,
            "result_cache_hits",
            "Queries answered from the result cache",
        );
        let cache_misses = counter(
            &mut registry,
            "result_cache_misses",
            "Cacheable queries that were not in the result cache",
        );
        let cache_evictions = counter(
            &mut registry,
            "result_cache_evictions",
            "Results dropped from the cache to make room or because they expired",
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let cache_bytes = gauge(
            &mut registry,
            "result_cache_bytes",
            "Bytes of results held by the result cache (also reserved from the memory pool)",
        );
        let cache_entries = gauge(
            &mut registry,
            "result_cache_entries",
            "Results held by the result cache",
        );
        let sessions = gauge(&mut registry, "sessions_active", "Logged-in sessions");
        let running = gauge(&mut registry, "queries_running", "Queries running");
        let queued = gauge(&mut registry, "queries_queued", "Queries waiting to run");
        let memory_reserved = gauge(
            &mut registry,
            "memory_reserved_bytes",
            "Bytes reserved from the query memory pool",
        );
        let memory_limit = gauge(
            &mut registry,
            "memory_limit_bytes",
            "Size of the query memory pool (0: unbounded)",
        );
        let tables_served = gauge(&mut registry, "tables_served", "Tables being served");
        let cluster_workers = gauge(
            &mut registry,
            "cluster_workers_answering",
            "Workers that answered the coordinator's last health check (0 on a single node)",
        );
        let cluster_plans_unverified = gauge(
            &mut registry,
            "cluster_plans_unverified",
            "Distributed plans the plan verifier refused since start (each ran on the coordinator)",
        );
        let queries_run_again = gauge(
            &mut registry,
            "queries_run_again",
            "Queries run again since start because a worker failed before they sent a row",
        );
        let mesh_version = gauge(
            &mut registry,
            "mesh_version",
            "Mesh versions loaded since start (1 is the first load)",
        );
        let ready = gauge(
            &mut registry,
            "ready",
            "1 once the first mesh load has completed",
        );
        let mesh_loaded_at = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "mesh_loaded_timestamp_seconds",
            "When the served mesh version was loaded (Unix time)",
            mesh_loaded_at.clone(),
        );
        Self {
            registry,
            queries,
            latency,
            rows_sent,
            bytes_sent,
            spilled_bytes,
            auth_failures,
            plans_kept,
            lineage_dropped,
            sessions_evicted,
            reloads,
            product_scans,
            product_errors,
            table_last_modified,
            table_late,
            table_quality_passing,
            table_quality_failed_rules,
            table_accelerated,
            table_acceleration_failing,
            table_acceleration_bytes,
            cache_hits,
            cache_misses,
            cache_evictions,
            cache_bytes,
            cache_entries,
            sessions,
            running,
            queued,
            memory_reserved,
            memory_limit,
            tables_served,
            cluster_workers,
            cluster_plans_unverified,
            queries_run_again,
            mesh_version,
            ready,
            mesh_loaded_at,
        }
    }

    /// A finished query.
    pub fn query_done(&self, q: &QueryFigures<'_>) {
        self.queries
            .get_or_create(&labels(&[("kind", q.kind), ("outcome", q.outcome)]))
            .inc();
        self.latency
            .get_or_create(&labels(&[("kind", q.kind)]))
            .observe(q.seconds);
        self.rows_sent.inc_by(q.rows);
        self.bytes_sent.inc_by(q.bytes);
        self.spilled_bytes.inc_by(q.spilled_bytes);
        for p in q.products {
            self.product_scans
                .get_or_create(&labels(&[("product", p)]))
                .inc();
            if q.outcome != "ok" && q.outcome != "cancelled" {
                self.product_errors
                    .get_or_create(&labels(&[("product", p), ("code", q.outcome)]))
                    .inc();
            }
        }
    }

    /// A failed authentication.
    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    /// A statement ran from a kept plan.
    pub fn plan_reused(&self) {
        self.plans_kept.inc();
    }

    /// An OpenLineage event dropped.
    pub fn lineage_dropped(&self) {
        self.lineage_dropped.inc();
    }

    /// A session ended to make room.
    pub fn session_evicted(&self, why: crate::sessions::Eviction) {
        use crate::sessions::Eviction;
        let reason = match why {
            Eviction::Idle => "idle",
            Eviction::PerPrincipal => "per_principal",
            Eviction::Total => "total",
        };
        self.sessions_evicted
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// Forgets every table's freshness (before sampling the served ones).
    pub(crate) fn clear_tables(&self) {
        self.table_last_modified.clear();
        self.table_late.clear();
        self.table_quality_passing.clear();
        self.table_quality_failed_rules.clear();
        self.table_accelerated.clear();
        self.table_acceleration_failing.clear();
        self.table_acceleration_bytes.clear();
    }

    /// An accelerated table's copy: served or not, failing or not, size.
    pub(crate) fn table_acceleration(
        &self,
        table: &str,
        product: &str,
        serving: bool,
        failing: bool,
        bytes: u64,
    ) {
        let l = labels(&[("table", table), ("product", product)]);
        self.table_accelerated.get_or_create(&l).set(serving as i64);
        self.table_acceleration_failing
            .get_or_create(&l)
            .set(failing as i64);
        self.table_acceleration_bytes
            .get_or_create(&l)
            .set(bytes as i64);
    }

    /// A served table's last change and freshness.
    pub(crate) fn table_freshness(
        &self,
        table: &str,
        product: &str,
        last_modified_secs: Option<f64>,
        late: Option<bool>,
    ) {
        let l = labels(&[("table", table), ("product", product)]);
        if let Some(at) = last_modified_secs {
            self.table_last_modified.get_or_create(&l).set(at);
        }
        if let Some(late) = late {
            self.table_late.get_or_create(&l).set(late as i64);
        }
    }

    /// A served table's latest quality results: how many error-severity
    /// rules failed or could not run.
    pub(crate) fn table_quality(&self, table: &str, product: &str, failed_rules: usize) {
        let l = labels(&[("table", table), ("product", product)]);
        self.table_quality_passing
            .get_or_create(&l)
            .set((failed_rules == 0) as i64);
        self.table_quality_failed_rules
            .get_or_create(&l)
            .set(failed_rules as i64);
    }

    /// The result cache's counters, sampled (they only grow, across
    /// reloads too).
    pub(crate) fn result_cache(&self, c: &meshq_engine::cache::CacheCounters) {
        let catch_up = |counter: &Counter, now: u64| {
            let seen = counter.get();
            if now > seen {
                counter.inc_by(now - seen);
            }
        };
        catch_up(&self.cache_hits, c.hits);
        catch_up(&self.cache_misses, c.misses);
        catch_up(&self.cache_evictions, c.evictions);
        self.cache_bytes.set(c.bytes as i64);
        self.cache_entries.set(c.entries as i64);
    }

    /// A mesh load or reload.
    pub fn reloaded(&self, result: &str) {
        self.reloads
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// What one query did, for [`Metrics::query_done`].
#[derive(Debug)]
pub struct QueryFigures<'a> {
    /// Statement kind.
    pub kind: &'a str,
    /// `ok`, `cancelled` or the error code.
    pub outcome: &'a str,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Rows sent.
    pub rows: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Bytes spilled.
    pub spilled_bytes: u64,
    /// Products read.
    pub products: &'a [String],
}

/// Refreshes the sampled gauges before a scrape.
pub type Sampler =
    Arc<dyn Fn(Arc<Metrics>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Serves `GET /metrics` (and `/`) on `listener` until `shutdown` resolves;
/// `sample` refreshes the sampled gauges before each scrape.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    sample: Sampler,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let render: Render = Arc::new(move || {
        let metrics = Arc::clone(&metrics);
        let sample = Arc::clone(&sample);
        Box::pin(async move {
            sample(Arc::clone(&metrics)).await;
            metrics.render()
        })
    });
    serve_text(listener, render, shutdown).await
}

/// Renders metrics as OpenMetrics text at each scrape.
pub type Render = Arc<dyn Fn() -> futures::future::BoxFuture<'static, String> + Send + Sync>;

/// Serves what `render` gives, as OpenMetrics text, at `GET /metrics` (and
/// `/`) on `listener` until `shutdown` resolves (a worker's metrics too).
pub async fn serve_text(
    listener: tokio::net::TcpListener,
    render: Render,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let addr = listener.local_addr()?;
    let handler = move || {
        let render = Arc::clone(&render);
        async move {
            (
                [(
                    CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                render().await,
            )
        }
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(handler.clone()))
        .route("/", axum::routing::get(handler));
    info!(%addr, "serving metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
