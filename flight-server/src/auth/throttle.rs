//! Throttling of failed logins per client address and per user name.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failed logins of one client address or user name.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

/// Throttles failed logins by key: past `free` failures within the window,
/// each further one blocks the key for twice as long as the last, up to
/// five minutes.
pub(crate) struct Throttle {
    free: u32,
    entries: Mutex<HashMap<String, Failures>>,
}

const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const MAX_THROTTLED_KEYS: usize = 10_000;

impl Throttle {
    pub(crate) fn new(free: u32) -> Self {
        Self {
            free,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long `key` must still wait, if it is blocked.
    pub(crate) fn blocked(&self, key: &str) -> Option<Duration> {
        let entries = self.entries.lock();
        let until = entries.get(key)?.blocked_until?;
        until.checked_duration_since(Instant::now())
    }

    pub(crate) fn failed(&self, key: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_THROTTLED_KEYS && !entries.contains_key(key) {
            entries.retain(|_, f| {
                now.duration_since(f.since) < THROTTLE_WINDOW
                    || f.blocked_until.is_some_and(|u| u > now)
            });
            if entries.len() >= MAX_THROTTLED_KEYS {
                entries.clear();
            }
        }
        let f = entries.entry(key.to_string()).or_insert(Failures {
            count: 0,
            since: now,
            blocked_until: None,
        });
        if now.duration_since(f.since) >= THROTTLE_WINDOW {
            *f = Failures {
                count: 0,
                since: now,
                blocked_until: None,
            };
        }
        f.count += 1;
        if f.count > self.free {
            let exp = (f.count - self.free - 1).min(16);
            let backoff = Duration::from_secs(1u64 << exp).min(MAX_BACKOFF);
            f.blocked_until = Some(now + backoff);
        }
    }

    pub(crate) fn succeeded(&self, key: &str) {
        self.entries.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_backs_off_after_free_failures() {
        let t = Throttle::new(2);
        t.failed("a");
        t.failed("a");
        assert!(t.blocked("a").is_none());
        t.failed("a");
        let wait = t.blocked("a").unwrap();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        t.failed("a");
        assert!(t.blocked("a").unwrap() > Duration::from_secs(1));
        assert!(t.blocked("b").is_none());
        t.succeeded("a");
        assert!(t.blocked("a").is_none());
    }
}
