//! [`QueryTrace`]: one statement's audit record and metrics, written
//! exactly once — when it ends, fails, or is dropped (the client went away).

use std::sync::Arc;
use std::time::Instant;

use datafusion::logical_expr::LogicalPlan;
use meshq_engine::MeshSession;

use crate::audit::{self, AuditRecord};
use crate::error::Error;
use crate::metrics::QueryFigures;
use crate::operations::Operations;
use crate::query::QueryRequest;

/// A statement's trace.
pub(crate) struct QueryTrace {
    ops: Arc<Operations>,
    pub(crate) record: AuditRecord,
    started: Instant,
    written: bool,
    /// How the statement ends if it is dropped unfinished.
    pub(crate) dropped: Option<Error>,
}

impl QueryTrace {
    /// Opens the record of `request` on mesh version `version`.
    pub(crate) fn new(ops: &Arc<Operations>, request: &QueryRequest, version: u64) -> Self {
        // The shape is for the audit log only.
        let (shape, hash) = match ops.audit {
            Some(_) => {
                let (shape, hash) = audit::sql_shape(&request.sql);
                (shape, Some(hash))
            }
            None => (None, None),
        };
        Self {
            ops: Arc::clone(ops),
            record: AuditRecord {
                ts: audit::now(),
                event: "query",
                principal: request.client.principal().name.clone(),
                client: request.peer.map(|p| p.to_string()),
                query_id: Some(request.id.to_string()),
                call: Some(request.call.label()),
                sql_shape: shape,
                sql_hash: hash,
                mesh_version: version,
                ..Default::default()
            },
            started: Instant::now(),
            written: false,
            dropped: None,
        }
    }

    /// Records what `plan` reads and which policies it applies.
    pub(crate) fn planned(&mut self, session: &MeshSession, plan: &LogicalPlan) {
        self.record.statement = Some(statement_kind(plan));
        let tables = session.tables_read(plan);
        let engine = session.engine();
        if self.ops.audit.is_some() {
            let applied = engine.applied_policies(session.principal(), &tables);
            self.record.masks = applied.masks;
            self.record.row_filters = applied.row_filters;
            self.record.global_policies = applied.global;
        }
        self.record.products = engine.products_of(&tables);
        self.record.tables = tables;
    }

    /// For a statement that could not be planned: the mesh tables its text
    /// names (the policies are unknown).
    pub(crate) fn named(&mut self, session: &MeshSession, sql: &str) {
        let tables = session.tables_named(sql);
        self.record.products = session.engine().products_of(&tables);
        self.record.tables = tables;
    }

    /// Writes the record and the metrics, once.
    pub(crate) fn finish(&mut self, outcome: Result<(), &Error>) {
        if self.written {
            return;
        }
        self.written = true;
        let r = &mut self.record;
        r.duration_ms = self.started.elapsed().as_millis() as u64;
        let label = match outcome {
            Ok(()) => {
                r.outcome = "ok";
                "ok"
            }
            Err(e) if e.code() == tonic::Code::Cancelled => {
                r.outcome = "cancelled";
                "cancelled"
            }
            Err(e) => {
                r.outcome = "error";
                r.error_code = Some(code_name(e.code()));
                code_name(e.code())
            }
        };
        self.ops.metrics.query_done(&QueryFigures {
            kind: r.statement.unwrap_or("unplanned"),
            outcome: label,
            seconds: self.started.elapsed().as_secs_f64(),
            rows: r.rows,
            bytes: r.bytes,
            spilled_bytes: r.spilled_bytes,
            products: &r.products,
        });
        self.ops.audit(&self.record);
    }

    /// Writes nothing: the statement is audited when it runs.
    pub(crate) fn discard(&mut self) {
        self.written = true;
    }

    /// Passes `result` through, recording its error.
    pub(crate) fn check<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result {
            self.finish(Err(e));
        }
        result
    }
}

impl Drop for QueryTrace {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let why = self.dropped.take().unwrap_or(Error::ClientGone);
        self.finish(Err(&why));
    }
}

/// gRPC code names as the audit log and metrics write them.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What kind of statement a plan is, for the audit log and metrics.
pub(crate) fn statement_kind(plan: &LogicalPlan) -> &'static str {
    match plan {
        LogicalPlan::Ddl(_) => "ddl",
        LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => "dml",
        LogicalPlan::Statement(datafusion::logical_expr::Statement::SetVariable(_)) => "set",
        LogicalPlan::Statement(_) => "other",
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => "explain",
        LogicalPlan::DescribeTable(_) => "describe",
        _ => "query",
    }
}
