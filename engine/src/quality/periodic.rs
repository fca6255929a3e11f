//! `meshq serve --quality-interval`: the checks of every table after each
//! (re)load and then every interval, off the query path.
//!
//! They run on a thread of their own with a single-threaded runtime, so at
//! most one core works on them, at the lowest scheduling priority (nice 19
//! on Linux); their memory comes from the engine's shared pool, so a large
//! check spills or fails rather than starving queries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::check_and_record;
use crate::live::LiveEngine;

/// Stops the periodic checks when dropped.
#[derive(Debug)]
pub struct PeriodicChecks {
    stop: Arc<AtomicBool>,
}

impl Drop for PeriodicChecks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts checking `live`'s tables after every load and every `every`,
/// `concurrency` tables at a time.
pub fn spawn(live: Arc<LiveEngine>, every: Duration, concurrency: usize) -> PeriodicChecks {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("meshq-quality".into())
        .spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "quality checks disabled: cannot start their runtime");
                    return;
                }
            };
            runtime.block_on(run(live, every, concurrency, flag));
        });
    if let Err(e) = spawned {
        warn!(error = %e, "quality checks disabled: cannot start their thread");
    }
    PeriodicChecks { stop }
}

/// Nice 19 for this thread (Linux sets niceness per thread).
fn lower_priority() {
    if let Err(e) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        warn!(error = ?e, "quality checks run at normal priority");
    }
}

async fn run(live: Arc<LiveEngine>, every: Duration, concurrency: usize, stop: Arc<AtomicBool>) {
    let mut checked: Option<(u64, Instant)> = None;
    while !stop.load(Ordering::Relaxed) {
        let version = live.version();
        let due = match checked {
            None => true,
            Some((v, at)) => v != version || at.elapsed() >= every,
        };
        if due && let Some(engine) = live.current() {
            let started = Instant::now();
            let failing = check_and_record(&engine, concurrency).await;
            info!(
                tables = engine.served_tables().len(),
                failing,
                took_ms = started.elapsed().as_millis() as u64,
                "quality checks ran"
            );
            checked = Some((version, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
