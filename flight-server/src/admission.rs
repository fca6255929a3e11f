//! Admission: how many queries run at once, server-wide and per principal,
//! and the bounded queue in front of them.
//!
//! A query that cannot start at once waits in the queue, unless the queue
//! is full; past `queue_timeout` it is refused. Both refusals are
//! `RESOURCE_EXHAUSTED` with the limit's name in the message.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use meshq_catalog::limits::LimitsConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Default for `limits.queue_timeout`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// Server-wide admission state, built from `limits:`.
#[derive(Debug)]
pub struct Admission {
    global: Option<(Arc<Semaphore>, usize)>,
    max_queued: Option<usize>,
    queue_timeout: Duration,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    per_principal: Mutex<HashMap<(String, usize), Arc<Semaphore>>>,
}

/// Held while a query runs; dropping it lets the next one in.
#[derive(Debug)]
pub struct Permit {
    _global: Option<OwnedSemaphorePermit>,
    _own: Option<OwnedSemaphorePermit>,
    running: Arc<AtomicUsize>,
    /// Time spent in the queue.
    pub queued_for: Duration,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    /// From the server-wide part of `limits:`.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            global: limits
                .max_concurrent_queries
                .map(|n| (Arc::new(Semaphore::new(n)), n)),
            max_queued: limits.max_queued_queries,
            queue_timeout: queue_timeout(limits),
            queued: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(0)),
            per_principal: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `limits` would build the same admission (so a reload keeps
    /// this one and the queries it holds).
    pub fn same_settings(&self, limits: &LimitsConfig) -> bool {
        self.global.as_ref().map(|(_, n)| *n) == limits.max_concurrent_queries
            && self.max_queued == limits.max_queued_queries
            && self.queue_timeout == queue_timeout(limits)
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Queries waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    fn own_semaphore(&self, principal: &str, limit: usize) -> Arc<Semaphore> {
        let mut m = self.per_principal.lock();
        // Entries of principals with nothing running go, so the map stays
        // as small as the set of active principals.
        if m.len() > 1024 {
            m.retain(|(_, n), s| s.available_permits() < *n);
        }
        Arc::clone(
            m.entry((principal.to_string(), limit))
                .or_insert_with(|| Arc::new(Semaphore::new(limit))),
        )
    }

    /// Waits for a slot for one query of `principal`, whose own limit is
    /// `own_limit` concurrent queries.
    pub async fn admit(&self, principal: &str, own_limit: Option<usize>) -> Result<Permit> {
        let own = own_limit.map(|n| self.own_semaphore(principal, n.max(1)));
        let global = self.global.as_ref().map(|(s, _)| Arc::clone(s));
        // Fast path: both free now.
        let own_now = match &own {
            Some(s) => Arc::clone(s).try_acquire_owned().ok().map(Some),
            None => Some(None),
        };
        if let Some(own_permit) = own_now {
            let global_now = match &global {
                Some(s) => Arc::clone(s).try_acquire_owned().ok().map(Some),
                None => Some(None),
            };
            if let Some(global_permit) = global_now {
                return Ok(self.permit(global_permit, own_permit, Duration::ZERO));
            }
        }
        // Queue, if there is room.
        let waiting = self.queued.fetch_add(1, Ordering::SeqCst);
        let _queued = Queued(Arc::clone(&self.queued));
        if let Some(max) = self.max_queued
            && waiting >= max
        {
            return Err(Error::Busy(format!(
                "the server is busy: {} queries running and {waiting} queued, the most allowed (limits.max_queued_queries = {max}); try again later",
                self.running()
            )));
        }
        let started = Instant::now();
        let wait = async {
            let own_permit = match own {
                Some(s) => Some(s.acquire_owned().await.map_err(|_| Error::ShuttingDown)?),
                None => None,
            };
            let global_permit = match global {
                Some(s) => Some(s.acquire_owned().await.map_err(|_| Error::ShuttingDown)?),
                None => None,
            };
            Ok::<_, Error>((global_permit, own_permit))
        };
        match tokio::time::timeout(self.queue_timeout, wait).await {
            Ok(Ok((g, o))) => Ok(self.permit(g, o, started.elapsed())),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let whose = match own_limit {
                    Some(n) => {
                        format!("its principal's limit of {n} concurrent queries or the server's")
                    }
                    None => "the server's concurrent-query limit".to_string(),
                };
                Err(Error::Busy(format!(
                    "the query waited {:.1} s in the queue (limits.queue_timeout) for a slot under {whose}; try again later",
                    self.queue_timeout.as_secs_f64()
                )))
            }
        }
    }

    fn permit(
        &self,
        global: Option<OwnedSemaphorePermit>,
        own: Option<OwnedSemaphorePermit>,
        queued_for: Duration,
    ) -> Permit {
        self.running.fetch_add(1, Ordering::SeqCst);
        Permit {
            _global: global,
            _own: own,
            running: Arc::clone(&self.running),
            queued_for,
        }
    }
}

fn queue_timeout(limits: &LimitsConfig) -> Duration {
    limits
        .queue_timeout
        .map(|d| d.0)
        .unwrap_or(DEFAULT_QUEUE_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(yaml: &str) -> LimitsConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn queues_then_refuses() {
        let a = Arc::new(Admission::new(&limits(
            "{ max_concurrent_queries: 1, max_queued_queries: 1, queue_timeout: 200ms }",
        )));
        let first = a.admit("ana", None).await.unwrap();
        assert_eq!(a.running(), 1);
        // One may wait; it times out while the first runs.
        let waiter = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.admit("ben", None).await })
        };
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        // The queue is full: refused at once.
        let full = a.admit("gina", None).await.unwrap_err();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert!(full.to_string().contains("max_queued_queries"), "{full}");
        let timed_out = waiter.await.unwrap().unwrap_err();
        assert!(
            timed_out.to_string().contains("queue_timeout"),
            "{timed_out}"
        );
        // A slot freed lets the next query in.
        let waiter = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.admit("ben", None).await })
        };
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        let p = waiter.await.unwrap().unwrap();
        assert!(p.queued_for > Duration::ZERO);
        drop(p);
        assert_eq!((a.running(), a.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_principal_limit_does_not_hold_up_others() {
        let a = Admission::new(&limits("{ queue_timeout: 100ms }"));
        let p1 = a.admit("ana", Some(1)).await.unwrap();
        let e = a.admit("ana", Some(1)).await.unwrap_err();
        assert!(e.to_string().contains("principal's limit of 1"), "{e}");
        let other = a.admit("ben", Some(1)).await.unwrap();
        drop((p1, other));
        a.admit("ana", Some(1)).await.unwrap();
    }
}
