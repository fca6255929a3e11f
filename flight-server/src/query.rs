//! The query lifecycle: one path for every statement, whatever RPC brought
//! it (`CommandStatementQuery`, prepared statements, `CommandStatementUpdate`,
//! SQL `EXECUTE`).
//!
//! A [`QueryRequest`] is planned on the mesh version served when it arrives
//! (size and depth limits, lockdown, file confinement, `EXECUTE` replaced by
//! its query), then run under the same admission slot, memory pool, time
//! limit, result limits and audit record, whether it is a query, DDL, DML or
//! `COPY`. One query id is made per request and used in the log, the audit
//! record and error messages. A panic inside one statement fails that
//! statement only.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use futures::FutureExt;
use meshq_engine::{MeshSession, is_statement};
use tracing::{error, info};

use crate::cancel::CancelRegistry;
use crate::error::{Error, Result};
use crate::metadata::result_schema;
use crate::operations::Operations;
use crate::result_stream::{QueryControl, ResultLimits, ResultStream, RunningQuery};
use crate::sessions::{ClientSession, KeptPlan};
use crate::trace::QueryTrace;

/// Identifies one statement in the log, the audit record and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryId(u128);

impl QueryId {
    /// A fresh id: a random (version 4) UUID, so it can also be an
    /// OpenLineage run id.
    pub fn new() -> Self {
        let bits: u128 = rand::random();
        Self((bits & !(0xf << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62))
    }
}

impl Default for QueryId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// Which Flight SQL call brought a statement (the audit log's `call`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `CommandStatementQuery`.
    Statement,
    /// `CommandPreparedStatementQuery`.
    Prepared,
    /// `CommandStatementUpdate`.
    Update,
    /// `CommandPreparedStatementUpdate`.
    PreparedUpdate,
}

impl Call {
    /// As the audit log writes it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Statement => "statement",
            Self::Prepared => "prepared",
            Self::Update => "update",
            Self::PreparedUpdate => "prepared_update",
        }
    }
}

/// One statement to plan and run, as its caller sent it.
pub struct QueryRequest {
    /// Made once per request.
    pub id: QueryId,
    /// Who sent it.
    pub client: Arc<ClientSession>,
    /// From where.
    pub peer: Option<std::net::SocketAddr>,
    /// By which call.
    pub call: Call,
    /// The SQL text.
    pub sql: String,
    /// Bound parameters (one row), for prepared statements.
    pub params: Option<RecordBatch>,
    /// The prepared statement's handle id, when it came through one: its
    /// plan, kept by the session, is bound instead of planning again.
    pub prepared: Option<String>,
    /// How the result goes on the wire.
    pub wire: crate::wire::WireOptions,
}

/// What `GetFlightInfo` says about a statement.
pub struct Announced {
    /// The result's wire schema.
    pub schema: SchemaRef,
    /// For a statement that already ran (DDL, DML, `SET`): its result,
    /// sent again by `DoGet`.
    pub result: Option<Vec<RecordBatch>>,
}

/// A statement planned on one mesh version, with its audit record open.
struct Planned {
    id: QueryId,
    client: Arc<ClientSession>,
    views: bool,
    session: MeshSession,
    plan: LogicalPlan,
    trace: QueryTrace,
}

/// Most parameter rows one execution takes: each row plans the statement
/// once.
pub const MAX_PARAMETER_ROWS: usize = 1024;

/// Parameter values of each row of `batch`, in column order (`$1`, `$2`,
/// …).
fn param_rows(batch: &RecordBatch) -> Result<Vec<ParamValues>> {
    match batch.num_rows() {
        0 => {
            return Err(Error::BadRequest(
                "the bound parameter batch has no rows; bind one row per execution".into(),
            ));
        }
        n if n > MAX_PARAMETER_ROWS => {
            return Err(Error::BadRequest(format!(
                "{n} parameter rows were bound; at most {MAX_PARAMETER_ROWS} run in one execution"
            )));
        }
        _ => {}
    }
    (0..batch.num_rows())
        .map(|row| {
            let values = batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, row))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::BadRequest(format!("cannot read a bound parameter: {e}")))?;
            Ok(ParamValues::List(
                values.into_iter().map(Into::into).collect(),
            ))
        })
        .collect()
}

/// `plan` with the bound parameters: one row binds them; several run the
/// query once per row, the results one after the other (as Flight SQL
/// describes for a parameter batch). A statement that changes data takes
/// one row per execution.
fn bind_params(plan: LogicalPlan, params: &RecordBatch) -> Result<LogicalPlan, BindError> {
    let rows = param_rows(params).map_err(BindError::Request)?;
    if rows.len() > 1 && is_statement(&plan) {
        return Err(BindError::Request(Error::BadRequest(format!(
            "{} parameter rows were bound to a statement that is not a query; bind one row per execution",
            rows.len()
        ))));
    }
    let mut bound = rows
        .into_iter()
        .map(|v| plan.clone().with_param_values(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BindError::Plan)?;
    if bound.len() == 1 {
        return Ok(bound.remove(0));
    }
    let mut union = datafusion::logical_expr::LogicalPlanBuilder::from(bound.remove(0));
    for next in bound {
        union = union.union(next).map_err(BindError::Plan)?;
    }
    union.build().map_err(BindError::Plan)
}

/// Why parameters could not be bound.
enum BindError {
    Request(Error),
    Plan(DataFusionError),
}

/// A panic inside one statement, as its error.
fn panicked(id: QueryId, what: &str) -> Error {
    error!(query_id = %id, what, "a statement panicked; it failed alone");
    Error::Internal(id)
}

/// Runs statements.
pub struct Lifecycle {
    ops: Arc<Operations>,
    cancels: Arc<CancelRegistry>,
}

impl Lifecycle {
    /// Reporting to `ops`; streams cancellable through `cancels`.
    pub fn new(ops: Arc<Operations>, cancels: Arc<CancelRegistry>) -> Self {
        Self { ops, cancels }
    }

    /// Takes the session's mesh version, opens the audit record and plans
    /// the statement; one that cannot be planned is audited here.
    async fn plan(&self, request: &QueryRequest) -> Result<Planned> {
        let kept = request
            .prepared
            .as_deref()
            .and_then(|handle| request.client.prepared_plan(handle, &request.sql));
        let (session, kept) = match kept {
            Some((session, plan)) => (session, Some(plan)),
            None => (request.client.session()?, None),
        };
        let mut trace = QueryTrace::new(&self.ops, request, request.client.mesh_version());
        let id = request.id;
        let planned = match kept {
            Some(plan) => {
                self.ops.metrics.plan_reused();
                Ok(plan)
            }
            None => AssertUnwindSafe(session.plan(&request.sql))
                .catch_unwind()
                .await
                .map_err(|_| panicked(id, "planning"))
                .and_then(|r| r.map_err(|e| Error::statement(id, &e, None))),
        };
        let planned = match (planned, &request.params) {
            (Ok(plan), Some(p)) => bind_params(plan, p).map_err(|e| match e {
                BindError::Request(e) => e,
                BindError::Plan(e) => Error::statement(id, &e, None),
            }),
            (other, _) => other,
        };
        match planned {
            Ok(plan) => {
                trace.planned(&session, &plan);
                Ok(Planned {
                    id,
                    client: Arc::clone(&request.client),
                    views: request.wire.views,
                    session,
                    plan,
                    trace,
                })
            }
            Err(e) => {
                if meshq_engine::statement::check_text(
                    &request.sql,
                    &session.engine().mesh().config.limits,
                )
                .is_ok()
                {
                    trace.named(&session, &request.sql);
                }
                trace.check(Err(e))
            }
        }
    }

    /// For `GetFlightInfo`: plans the statement once. A statement that is
    /// not a query (DDL, DML, `COPY`, `SET`) runs now, through the same path
    /// as a query, and its result is returned for `DoGet`; a query is only
    /// checked, and its plan kept in the client's session for the `DoGet`
    /// of the ticket with `nonce`.
    pub async fn announce(&self, request: QueryRequest, nonce: u64) -> Result<Announced> {
        let mut planned = self.plan(&request).await?;
        if is_statement(&planned.plan) {
            let stream = self.run(planned, None).await?;
            let schema = Arc::clone(stream.schema());
            let batches = stream.collect_all().await?;
            return Ok(Announced {
                schema,
                result: Some(batches),
            });
        }
        // Allowed: `DoGet` runs and audits it.
        planned.trace.discard();
        let schema = result_schema(&planned.session, &planned.plan, planned.views);
        request.client.keep_announced(
            nonce,
            KeptPlan {
                sql: request.sql,
                params: request.params,
                engine: planned.session.engine().clone(),
                plan: planned.plan,
                at: std::time::Instant::now(),
            },
            planned.session,
        );
        Ok(Announced {
            schema,
            result: None,
        })
    }

    /// For `DoGet`: runs the statement, streaming its result; cancellable
    /// by `ticket`. The plan `GetFlightInfo` kept for the ticket's `nonce`
    /// is run when it is still valid; otherwise the statement is planned
    /// again as the caller.
    pub async fn stream(
        &self,
        request: QueryRequest,
        ticket: Vec<u8>,
        nonce: Option<u64>,
    ) -> Result<ResultStream> {
        let planned = match nonce.and_then(|n| self.recall(&request, n)) {
            Some(p) => p,
            None => self.plan(&request).await?,
        };
        info!(query_id = %request.id, user = %planned.session.principal().display_name(), "query");
        self.run(planned, Some(ticket)).await
    }

    /// The plan `GetFlightInfo` kept for the ticket with `nonce`, with the
    /// audit record of this request opened on it.
    fn recall(&self, request: &QueryRequest, nonce: u64) -> Option<Planned> {
        let (session, plan) =
            request
                .client
                .take_announced(nonce, &request.sql, request.params.as_ref())?;
        self.ops.metrics.plan_reused();
        let mut trace = QueryTrace::new(&self.ops, request, request.client.mesh_version());
        trace.planned(&session, &plan);
        Some(Planned {
            id: request.id,
            client: Arc::clone(&request.client),
            views: request.wire.views,
            session,
            plan,
            trace,
        })
    }

    /// For `CommandStatementUpdate` and `CommandPreparedStatementUpdate`:
    /// runs a statement that is not a query; the rows it affected. A query
    /// sent this way is refused: its result would be thrown away, and it
    /// would run outside the result limits.
    pub async fn update(&self, request: QueryRequest) -> Result<i64> {
        let mut planned = self.plan(&request).await?;
        if !is_statement(&planned.plan) {
            let error = Error::NotAnUpdate(request.id);
            planned.trace.finish(Err(&error));
            return Err(error);
        }
        let batches = self.run(planned, None).await?.collect_all().await?;
        Ok(affected_rows(&batches))
    }

    /// For `ActionCreatePreparedStatement`: the result and parameter
    /// schemas, after the same checks as running it.
    /// The plan is kept in the client's session under the request's
    /// `prepared` handle id, for its executions.
    pub async fn prepare(&self, request: QueryRequest) -> Result<(SchemaRef, Schema)> {
        let mut planned = self.plan(&request).await?;
        planned.trace.discard();
        if let Some(handle) = &request.prepared {
            request.client.keep_prepared(
                handle,
                KeptPlan {
                    sql: request.sql.clone(),
                    params: None,
                    engine: planned.session.engine().clone(),
                    plan: planned.plan.clone(),
                    at: std::time::Instant::now(),
                },
            );
        }
        let id = request.id;
        let dataset = result_schema(&planned.session, &planned.plan, planned.views);
        let mut types: Vec<(String, DataType)> = planned
            .plan
            .get_parameter_types()
            .map_err(|e| Error::statement(id, &e, None))?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or(DataType::Utf8)))
            .collect();
        types.sort_by_key(|(k, _)| {
            k.trim_start_matches('$')
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let params = Schema::new(
            types
                .into_iter()
                .map(|(k, t)| Field::new(k, t, true))
                .collect::<Vec<_>>(),
        );
        Ok((dataset, params))
    }

    /// Runs a planned statement under the principal's limits: admission,
    /// memory pool, time limit, result limits, audit.
    async fn run(&self, planned: Planned, ticket: Option<Vec<u8>>) -> Result<ResultStream> {
        let Planned {
            id,
            client,
            views,
            session,
            plan,
            mut trace,
        } = planned;
        trace.begin();
        if is_statement(&plan) {
            // DDL, DML or `SET` may change what the session's kept plans
            // read: they are planned again.
            client.forget_plans();
        }
        let engine = session.engine().clone();
        let limits = engine
            .mesh()
            .config
            .limits
            .for_principal(session.principal());
        let admission = self.ops.admission(&engine);
        let permit = trace.check(
            admission
                .admit(
                    session.principal().display_name(),
                    limits.max_concurrent_queries,
                )
                .await,
        )?;
        trace.record.queued_ms = permit.queued_for.as_millis() as u64;
        let deadline = limits
            .query_timeout
            .map(|t| tokio::time::Instant::now() + t);
        // The tables read, to name the product if its storage fails.
        let tables = trace.record.tables.clone();
        let failing = session.clone();
        let errors = move |e: &DataFusionError| -> Error {
            Error::statement(id, e, Some((&failing, &tables)))
        };
        let schema = result_schema(&session, &plan, views);
        let memory = limits.query_memory.map(|m| m as usize);
        let started = AssertUnwindSafe(session.execute(plan, memory)).catch_unwind();
        let executed = match deadline {
            Some(at) => match tokio::time::timeout_at(at, started).await {
                Ok(r) => r,
                Err(_) => {
                    let error = Error::TimedOut {
                        id,
                        limit: limits.query_timeout.unwrap_or_default(),
                    };
                    return trace.check(Err(error));
                }
            },
            None => started.await,
        };
        let query = match executed {
            Ok(Ok(q)) => q,
            Ok(Err(e)) => return trace.check(Err(errors(&e))),
            Err(_) => return trace.check(Err(panicked(id, "execution"))),
        };
        trace.record.result_cache = query.cache_use();
        trace.sources(&query.plan);
        let inner = trace.check(query.execute().map_err(|e| errors(&e)))?;
        let control = Arc::new(QueryControl::new(
            id,
            limits.query_timeout,
            RunningQuery {
                inner,
                query,
                trace,
                _permit: permit,
            },
        ));
        let stream = ResultStream::new(
            Arc::clone(&control),
            schema,
            ResultLimits {
                max_rows: limits.max_result_rows,
                max_bytes: limits.max_result_bytes,
            },
            deadline,
            Box::new(errors),
        );
        Ok(match ticket {
            Some(t) => {
                let registration = self.cancels.register(t, control);
                stream.with_registration(Box::new(registration))
            }
            None => stream,
        })
    }
}

/// DML results are one row with a `count` column; DDL results are empty.
fn affected_rows(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .filter_map(|b| b.column_by_name("count"))
        .filter_map(|c| c.as_any().downcast_ref::<arrow::array::UInt64Array>())
        .map(|a| a.iter().flatten().sum::<u64>() as i64)
        .sum()
}
