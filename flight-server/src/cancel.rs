//! The cancel registry: statements streaming now, by ticket, so
//! `CancelFlightInfo` can stop them. Tickets are unique per `GetFlightInfo`,
//! so a cancel stops that query and not another client's identical one.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::result_stream::{QueryControl, Stop};

/// The streams of one ticket, each with its registration id.
type Streams = Vec<(u64, Arc<QueryControl>)>;

/// Streams in flight, by ticket.
#[derive(Default)]
pub struct CancelRegistry {
    streams: Mutex<HashMap<Vec<u8>, Streams>>,
}

impl CancelRegistry {
    /// Registers `control` under `ticket` until the returned guard drops.
    pub(crate) fn register(
        self: &Arc<Self>,
        ticket: Vec<u8>,
        control: Arc<QueryControl>,
    ) -> Registration {
        let id = rand::random::<u64>();
        self.streams
            .lock()
            .entry(ticket.clone())
            .or_default()
            .push((id, control));
        Registration {
            registry: Arc::clone(self),
            ticket,
            id,
        }
    }

    /// Stops every stream of `ticket`, freeing what its statement holds even
    /// if the client is not reading; how many there were.
    pub fn cancel(&self, ticket: &[u8]) -> usize {
        let controls = self.streams.lock().remove(ticket).unwrap_or_default();
        for (_, c) in &controls {
            c.stop(Stop::Cancelled);
        }
        controls.len()
    }
}

/// Unregisters a stream when it ends or is dropped.
pub(crate) struct Registration {
    registry: Arc<CancelRegistry>,
    ticket: Vec<u8>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut m = self.registry.streams.lock();
        if let Some(v) = m.get_mut(&self.ticket) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                m.remove(&self.ticket);
            }
        }
    }
}
