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
    /// The statement's text, for the OpenLineage job name (its shape).
    sql: String,
    /// Once a START event went out: the mesh version and the job name, for
    /// the COMPLETE or FAIL event.
    lineage: Option<(meshq_engine::Engine, String)>,
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
            sql: request.sql.clone(),
            lineage: None,
        }
    }

    /// Sends an OpenLineage event of this query, when a sink is configured.
    fn lineage_event(&self, engine: &meshq_engine::Engine, event_type: &'static str, job: &str) {
        let Some(sink) = self.ops.lineage(engine) else {
            return;
        };
        let r = &self.record;
        let event = crate::lineage::run_event(
            sink.namespace(),
            engine,
            &crate::lineage::RunFacts {
                event_type,
                run_id: r.query_id.as_deref().unwrap_or_default(),
                job: job.to_string(),
                principal: r.principal.as_deref(),
                tables: &r.tables,
                error: r.error_code,
            },
        );
        sink.emit(event);
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
        if self.ops.lineage(engine).is_some() {
            self.lineage = Some((engine.clone(), self.job_name()));
        }
    }

    /// Records the shapes of the statements `plan` sends to database
    /// sources.
    pub(crate) fn sources(&mut self, plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        if self.ops.audit.is_none() {
            return;
        }
        let mut shapes = Vec::new();
        let _ = plan.apply(|node| {
            let sql =
                if let Some(pg) = node.downcast_ref::<meshq_connectors::postgres::PostgresExec>() {
                    Some(pg.sql())
                } else {
                    node.downcast_ref::<meshq_connectors::flightsql::FlightSqlExec>()
                        .map(|f| f.sql())
                };
            if let Some(sql) = sql
                && let (Some(shape), _) = audit::sql_shape(sql)
            {
                shapes.push(shape);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        self.record.source_statements = shapes;
    }

    /// The statement starts running: its OpenLineage START event.
    pub(crate) fn begin(&mut self) {
        if let Some((engine, job)) = &self.lineage {
            self.lineage_event(engine, "START", job);
        }
    }

    /// The OpenLineage job of this statement: its kind and the hash of its
    /// shape (the text without literals), so the same query is one job.
    fn job_name(&self) -> String {
        let hash = match &self.record.sql_hash {
            Some(h) => h.clone(),
            None => audit::sql_shape(&self.sql).1,
        };
        format!("{}.{hash}", self.record.statement.unwrap_or("query"))
    }

    /// For a statement that could not be planned: the mesh tables its text
    /// names (the policies are unknown).
    pub(crate) fn named(&mut self, session: &MeshSession, sql: &str) {
        let tables = session.tables_named(sql);
        self.record.products = session.engine().products_of(&tables);
        self.record.tables = tables;
        // It fails without a START: the FAIL event names what it tried.
        if self.ops.lineage(session.engine()).is_some() {
            self.lineage = Some((session.engine().clone(), self.job_name()));
        }
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
        if let Some((engine, job)) = self.lineage.take() {
            let event = if self.record.outcome == "ok" {
                "COMPLETE"
            } else {
                "FAIL"
            };
            self.lineage_event(&engine, event, &job);
        }
    }

    /// Writes nothing: the statement is audited when it runs.
    pub(crate) fn discard(&mut self) {
        self.written = true;
        self.lineage = None;
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
