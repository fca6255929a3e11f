//! Per-query memory: a pool that bounds one query and draws from the
//! server-wide pool, and the spill figures of a finished plan.

use std::fmt;
use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::physical_plan::ExecutionPlan;

/// Within a query limit of `limit` bytes, what a sort sets aside for
/// merging its spills must be a share of it, not the 10 MiB default.
pub fn limit_spill_reservation(options: &mut datafusion::config::ConfigOptions, limit: usize) {
    let share = (limit / 4).max(64 * 1024);
    if options.execution.sort_spill_reservation_bytes > share {
        options.execution.sort_spill_reservation_bytes = share;
    }
}

/// `runtime` with `pool` as its memory pool (spill files and object
/// stores unchanged).
pub fn runtime_with_pool(
    runtime: &Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    pool: Arc<dyn MemoryPool>,
) -> Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>> {
    datafusion::execution::runtime_env::RuntimeEnvBuilder::from_runtime_env(runtime)
        .with_memory_pool(pool)
        .build_arc()
}

/// One query's memory pool: at most `limit` bytes for the query (shared
/// fairly among its spilling operators), and every byte also reserved from
/// the server-wide pool. Spilling operators spill when either says no.
#[derive(Debug)]
pub struct QueryMemoryPool {
    global: Arc<dyn MemoryPool>,
    local: FairSpillPool,
    limit: usize,
}

impl QueryMemoryPool {
    /// A pool of `limit` bytes drawing from `global`.
    pub fn new(global: Arc<dyn MemoryPool>, limit: usize) -> Self {
        Self {
            global,
            local: FairSpillPool::new(limit),
            limit,
        }
    }
}

impl fmt::Display for QueryMemoryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "query pool of {} bytes within {}",
            self.limit, self.global
        )
    }
}

impl MemoryPool for QueryMemoryPool {
    fn name(&self) -> &str {
        "query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.global.register(consumer);
        self.local.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.local.unregister(consumer);
        self.global.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.local.grow(reservation, additional);
        self.global.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.local.shrink(reservation, shrink);
        self.global.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.local.try_grow(reservation, additional).map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "the query's memory limit ({} bytes, limits.query_memory) is reached: {e}",
                self.limit
            ))
        })?;
        if let Err(e) = self.global.try_grow(reservation, additional) {
            self.local.shrink(reservation, additional);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.local.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

/// Spill files written and bytes spilled by every operator of `plan`.
pub fn spill_totals(plan: &Arc<dyn ExecutionPlan>) -> (usize, usize) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        if let Some(m) = node.metrics() {
            files += m.spill_count().unwrap_or(0);
            bytes += m.spilled_bytes().unwrap_or(0);
        }
        stack.extend(node.children().into_iter().cloned());
    }
    (files, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    #[test]
    fn a_query_is_bounded_by_its_own_limit_and_the_servers() {
        let global: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1000));
        let q1: Arc<dyn MemoryPool> = Arc::new(QueryMemoryPool::new(Arc::clone(&global), 600));
        let q2: Arc<dyn MemoryPool> = Arc::new(QueryMemoryPool::new(Arc::clone(&global), 600));
        let r1 = MemoryConsumer::new("a").register(&q1);
        r1.try_grow(500).unwrap();
        let err = r1.try_grow(200).unwrap_err().to_string();
        assert!(err.contains("limits.query_memory"), "{err}");
        let r2 = MemoryConsumer::new("b").register(&q2);
        // The server has 500 left: the second query cannot take 600.
        assert!(r2.try_grow(550).is_err());
        assert_eq!(q2.reserved(), 0, "a refused grow leaves nothing reserved");
        r2.try_grow(500).unwrap();
        assert_eq!(global.reserved(), 1000);
        drop(r1);
        assert_eq!(global.reserved(), 500, "a finished query frees its memory");
        drop(r2);
        assert_eq!(global.reserved(), 0);
    }
}
