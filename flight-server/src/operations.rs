//! [`Operations`]: the server-wide state every query reports to — metrics,
//! the audit log and admission.

use std::sync::Arc;

use parking_lot::RwLock;

use meshq_engine::Engine;

use crate::admission::Admission;
use crate::audit::{AuditLog, AuditRecord};
use crate::lineage::LineageSink;
use crate::metrics::Metrics;

/// Server-wide operations state.
pub struct Operations {
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The audit log, when configured.
    pub audit: Option<AuditLog>,
    admission: RwLock<Option<Arc<Admission>>>,
    /// The OpenLineage sink, started with the first mesh version that
    /// configures one (`openlineage:` in `meshq.yaml`).
    lineage: std::sync::OnceLock<Option<LineageSink>>,
}

impl Operations {
    /// With `audit` (none: no audit log).
    pub fn new(metrics: Arc<Metrics>, audit: Option<AuditLog>) -> Self {
        Self {
            metrics,
            audit,
            admission: RwLock::new(None),
            lineage: std::sync::OnceLock::new(),
        }
    }

    /// Where run events go, if `engine`'s config names a sink. Read once:
    /// a later reload does not move the sink.
    pub fn lineage(&self, engine: &Engine) -> Option<&LineageSink> {
        self.lineage
            .get_or_init(|| {
                let config = engine.mesh().config.openlineage.as_ref()?;
                match LineageSink::start(config, Arc::clone(&self.metrics)) {
                    Ok(sink) => Some(sink),
                    Err(e) => {
                        tracing::error!(error = %e, "OpenLineage events are off");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The admission state for `engine`'s limits; rebuilt when a reload
    /// changes them (queries admitted before keep their slots).
    pub fn admission(&self, engine: &Engine) -> Arc<Admission> {
        let limits = &engine.mesh().config.limits;
        if let Some(a) = self.admission.read().as_ref()
            && a.same_settings(limits)
        {
            return Arc::clone(a);
        }
        let mut slot = self.admission.write();
        match slot.as_ref() {
            Some(a) if a.same_settings(limits) => Arc::clone(a),
            _ => {
                let a = Arc::new(Admission::new(limits));
                *slot = Some(Arc::clone(&a));
                a
            }
        }
    }

    /// Queries (running, queued) now.
    pub fn queries_in_flight(&self) -> (usize, usize) {
        self.admission
            .read()
            .as_ref()
            .map(|a| (a.running(), a.queued()))
            .unwrap_or_default()
    }

    /// Writes `record` to the audit log, if there is one.
    pub fn audit(&self, record: &AuditRecord) {
        if let Some(a) = &self.audit {
            a.write(record);
        }
    }
}
