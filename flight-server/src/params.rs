//! Bound parameters of prepared statements, by handle: bounded and
//! expiring, because clients (flightsql-dbapi) may ignore a new handle
//! returned from DoPut and keep using the old one. Parameters belong to the
//! principal who bound them: another user holding the same handle cannot
//! change or use them.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use crate::ticket::PreparedHandle;

const PARAMS_MAX: usize = 10_000;
const PARAMS_IDLE: Duration = Duration::from_secs(3600);

/// The store.
#[derive(Default)]
pub struct ParamStore {
    entries: Mutex<HashMap<String, (Instant, RecordBatch)>>,
}

fn key(principal: &str, handle: &PreparedHandle) -> String {
    format!("{principal}\u{0}{}", handle.id)
}

impl ParamStore {
    /// Keeps `batch` for `principal`'s `handle`.
    pub fn put(&self, principal: &str, handle: &PreparedHandle, batch: RecordBatch) {
        let mut m = self.entries.lock();
        if m.len() >= PARAMS_MAX {
            m.retain(|_, (t, _)| t.elapsed() < PARAMS_IDLE);
        }
        if m.len() < PARAMS_MAX {
            m.insert(key(principal, handle), (Instant::now(), batch));
        }
    }

    /// The parameters `principal` bound to `handle`.
    pub fn get(&self, principal: &str, handle: &PreparedHandle) -> Option<RecordBatch> {
        let mut m = self.entries.lock();
        let (t, b) = m.get_mut(&key(principal, handle))?;
        *t = Instant::now();
        Some(b.clone())
    }

    /// Forgets them.
    pub fn remove(&self, principal: &str, handle: &PreparedHandle) {
        self.entries.lock().remove(&key(principal, handle));
    }
}
