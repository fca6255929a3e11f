//! A worker's metrics (Prometheus text, `meshq worker --metrics-bind`):
//! requests by RPC and outcome, refusals by reason, bytes sent, tasks
//! running and memory. Every name starts with `meshq_worker_`; the list is
//! in `docs/operating.md`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::execution::runtime_env::RuntimeEnv;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::auth::Refusal;

type Labels = Vec<(String, String)>;

/// A worker's metrics.
pub struct WorkerMetrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    bytes_sent: Counter<u64, AtomicU64>,
    tasks_running: Gauge,
    memory_reserved: Gauge,
    memory_limit: Gauge,
    runtime: Option<Arc<RuntimeEnv>>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new(None)
    }
}

/// The short name of an RPC path (`/worker.WorkerService/ExecuteTask` →
/// `ExecuteTask`); another path is `other`.
pub fn rpc_name(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("CoordinatorChannel") => "CoordinatorChannel",
        Some("ExecuteTask") => "ExecuteTask",
        Some("GetWorkerInfo") => "GetWorkerInfo",
        Some("PublishJoinFilter") => "PublishJoinFilter",
        _ => "other",
    }
}

/// The label of a refusal's reason.
pub fn reason(why: &Refusal) -> &'static str {
    match why {
        Refusal::Missing => "missing",
        Refusal::Malformed => "malformed",
        Refusal::Stale(_) => "stale",
        Refusal::WrongSecret => "wrong_credential",
        Refusal::OtherWorker(_) => "other_worker",
        Refusal::Altered => "altered",
        Refusal::Slow(_) => "slow",
        Refusal::TooLarge(_) => "too_large",
        Refusal::Replayed => "replayed",
        Refusal::Overloaded => "overloaded",
    }
}

impl WorkerMetrics {
    /// Metrics of a worker whose memory is `runtime`'s pool.
    pub fn new(runtime: Option<Arc<RuntimeEnv>>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "meshq_worker_requests",
            "Requests by RPC and outcome (accepted, refused)",
            requests.clone(),
        );
        let refusals = Family::<Labels, Counter>::default();
        registry.register(
            "meshq_worker_refusals",
            "Requests refused with UNAUTHENTICATED, by reason",
            refusals.clone(),
        );
        let bytes_sent = Counter::<u64, AtomicU64>::default();
        registry.register(
            "meshq_worker_sent_bytes",
            "Bytes of responses sent (Arrow IPC of the stages' output)",
            bytes_sent.clone(),
        );
        let tasks_running = Gauge::default();
        registry.register(
            "meshq_worker_tasks",
            "Tasks running: plan fragments whose coordinator channel is open",
            tasks_running.clone(),
        );
        let memory_reserved = Gauge::default();
        registry.register(
            "meshq_worker_memory_reserved_bytes",
            "Bytes reserved in the worker's memory pool",
            memory_reserved.clone(),
        );
        let memory_limit = Gauge::default();
        registry.register(
            "meshq_worker_memory_limit_bytes",
            "The worker's memory pool (limits.memory); 0 when unbounded",
            memory_limit.clone(),
        );
        Self {
            registry,
            requests,
            refusals,
            bytes_sent,
            tasks_running,
            memory_reserved,
            memory_limit,
            runtime,
        }
    }

    /// One request to `path` accepted.
    pub fn accepted(&self, path: &str) {
        self.requests
            .get_or_create(&vec![
                ("rpc".into(), rpc_name(path).into()),
                ("outcome".into(), "accepted".into()),
            ])
            .inc();
    }

    /// One request to `path` refused because of `why`.
    pub fn refused(&self, path: &str, why: &Refusal) {
        self.requests
            .get_or_create(&vec![
                ("rpc".into(), rpc_name(path).into()),
                ("outcome".into(), "refused".into()),
            ])
            .inc();
        self.refusals
            .get_or_create(&vec![("reason".into(), reason(why).into())])
            .inc();
    }

    /// `n` bytes of a response sent.
    pub fn sent(&self, n: u64) {
        self.bytes_sent.inc_by(n);
    }

    /// A task started; it ends when the guard is dropped.
    pub fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks_running.inc();
        TaskGuard(Arc::clone(self))
    }

    /// Sets the sampled gauges: the memory pool's use.
    pub fn sample(&self) {
        if let Some(runtime) = &self.runtime {
            let pool = &runtime.memory_pool;
            self.memory_reserved.set(pool.reserved() as i64);
            let limit = match pool.memory_limit() {
                MemoryLimit::Finite(n) => n as i64,
                _ => 0,
            };
            self.memory_limit.set(limit);
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// A running task, counted in `meshq_worker_tasks` until dropped.
#[derive(Debug)]
pub struct TaskGuard(Arc<WorkerMetrics>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks_running.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refusals_and_bytes_are_counted() {
        let m = Arc::new(WorkerMetrics::default());
        m.accepted("/worker.WorkerService/ExecuteTask");
        m.accepted("/worker.WorkerService/ExecuteTask");
        m.refused(
            "/worker.WorkerService/CoordinatorChannel",
            &Refusal::Altered,
        );
        m.sent(1000);
        let running = [m.task(), m.task(), m.task()];
        drop(m.task());
        m.sample();
        let text = m.render();
        for line in [
            r#"meshq_worker_requests_total{rpc="ExecuteTask",outcome="accepted"} 2"#,
            r#"meshq_worker_requests_total{rpc="CoordinatorChannel",outcome="refused"} 1"#,
            r#"meshq_worker_refusals_total{reason="altered"} 1"#,
            "meshq_worker_sent_bytes_total 1000",
            "meshq_worker_tasks 3",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        drop(running);
        assert!(m.render().contains("meshq_worker_tasks 0"));
    }
}
