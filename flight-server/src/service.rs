//! The Flight SQL service. Thin: authentication, tickets, metadata and
//! error mapping live beside it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::{Stream, StreamExt, TryStreamExt};
use meshq_engine::{CATALOG, Engine, LiveEngine, MeshSession, PhysicalQuery, StorageFailureKind};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::admission::{Admission, Permit};
use crate::audit::{self, AuditLog, AuditRecord};
use crate::auth::{AuthFailure, Authenticator, ClientSession};
use crate::error::to_status;
use crate::metadata::{self, sql_info, wire_schema, xdbc_types};
use crate::metrics::{Metrics, QueryFigures};
use crate::ticket::{PreparedHandle, StatementTicket, params_from_ipc, params_to_ipc};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Bound parameters of prepared statements, by handle id: bounded and
/// expiring, because clients (flightsql-dbapi) may ignore a new handle
/// returned from DoPut and keep using the old one.
struct ParamStore {
    entries: Mutex<HashMap<String, (Instant, RecordBatch)>>,
}

const PARAMS_MAX: usize = 10_000;
const PARAMS_IDLE: Duration = Duration::from_secs(3600);

impl ParamStore {
    fn put(&self, id: &str, batch: RecordBatch) {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= PARAMS_MAX {
            m.retain(|_, (t, _)| t.elapsed() < PARAMS_IDLE);
        }
        if m.len() < PARAMS_MAX {
            m.insert(id.to_string(), (Instant::now(), batch));
        }
    }

    fn get(&self, id: &str) -> Option<RecordBatch> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (t, b) = m.get_mut(id)?;
        *t = Instant::now();
        Some(b.clone())
    }

    fn remove(&self, id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Streams in flight, by ticket, so `CancelFlightInfo` can stop them.
#[derive(Default)]
struct Running {
    streams: Mutex<HashMap<Vec<u8>, Vec<RunningStream>>>,
}

/// One DoGet stream of a ticket: a registration id, its abort handle and
/// where to say why it was stopped.
type RunningStream = (
    u64,
    futures::stream::AbortHandle,
    Arc<AtomicU8>,
    SharedQuery,
);

/// Why a query's stream was stopped from outside.
const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;

impl Running {
    fn register(
        self: &Arc<Self>,
        ticket: Vec<u8>,
        handle: futures::stream::AbortHandle,
        end: Arc<AtomicU8>,
        query: SharedQuery,
    ) -> RunningGuard {
        let id = rand::random::<u64>();
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ticket.clone())
            .or_default()
            .push((id, handle, end, query));
        RunningGuard {
            running: Arc::clone(self),
            ticket,
            id,
        }
    }

    /// Stops every stream of `ticket`, freeing what its query holds even if
    /// the client is not reading; how many there were.
    fn cancel(&self, ticket: &[u8]) -> usize {
        let handles = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ticket)
            .unwrap_or_default();
        for (_, h, end, query) in &handles {
            let _ = end.compare_exchange(RUNNING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst);
            stop(h, query);
        }
        handles.len()
    }
}

/// Unregisters a stream when it ends or is dropped.
struct RunningGuard {
    running: Arc<Running>,
    ticket: Vec<u8>,
    id: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut m = self
            .running
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m.get_mut(&self.ticket) {
            v.retain(|(id, ..)| *id != self.id);
            if v.is_empty() {
                m.remove(&self.ticket);
            }
        }
    }
}

/// Server-wide operations state: metrics, the audit log, admission.
pub struct Operations {
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The audit log, when configured.
    pub audit: Option<AuditLog>,
    admission: std::sync::RwLock<Option<Arc<Admission>>>,
}

impl Operations {
    /// With `audit` (none: no audit log).
    pub fn new(metrics: Arc<Metrics>, audit: Option<AuditLog>) -> Self {
        Self {
            metrics,
            audit,
            admission: std::sync::RwLock::new(None),
        }
    }

    /// The admission state for `engine`'s limits; rebuilt when a reload
    /// changes them (queries admitted before keep their slots).
    pub fn admission(&self, engine: &Engine) -> Arc<Admission> {
        let limits = &engine.mesh().config.limits;
        if let Some(a) = self
            .admission
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && a.same_settings(limits)
        {
            return Arc::clone(a);
        }
        let mut slot = self.admission.write().unwrap_or_else(|e| e.into_inner());
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
    pub fn load(&self) -> (usize, usize) {
        self.admission
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| (a.running(), a.queued()))
            .unwrap_or_default()
    }

    fn audit(&self, record: &AuditRecord) {
        if let Some(a) = &self.audit {
            a.write(record);
        }
    }
}

/// One query's audit record and metrics, written exactly once: when it
/// ends, fails, or is dropped (the client went away: `cancelled`).
struct QueryTrace {
    ops: Arc<Operations>,
    record: AuditRecord,
    started: Instant,
    written: bool,
    /// Set when the stream is stopped from outside (cancel, time limit).
    end: Option<(Arc<AtomicU8>, Duration)>,
}

impl QueryTrace {
    fn new(
        ops: &Arc<Operations>,
        principal: &meshq_engine::Principal,
        peer: Option<std::net::SocketAddr>,
        qid: &str,
        call: &'static str,
        sql: &str,
        version: u64,
    ) -> Self {
        // The shape and the policies are for the audit log only.
        let (shape, hash) = match ops.audit {
            Some(_) => {
                let (shape, hash) = audit::sql_shape(sql);
                (shape, Some(hash))
            }
            None => (None, None),
        };
        Self {
            ops: Arc::clone(ops),
            record: AuditRecord {
                ts: audit::now(),
                event: "query",
                principal: principal.name.clone(),
                client: peer.map(|p| p.to_string()),
                query_id: Some(qid.to_string()),
                call: Some(call),
                sql_shape: shape,
                sql_hash: hash,
                mesh_version: version,
                ..Default::default()
            },
            started: Instant::now(),
            written: false,
            end: None,
        }
    }

    /// Records what `plan` reads and which policies it applies.
    fn planned(&mut self, engine: &Engine, session: &MeshSession, plan: &LogicalPlan) {
        self.record.statement = Some(statement_kind(plan));
        let tables = session.tables_read(plan);
        if self.ops.audit.is_some() {
            let applied = engine.applied_policies(session.principal(), &tables);
            self.record.masks = applied.masks;
            self.record.row_filters = applied.row_filters;
            self.record.global_policies = applied.global;
        }
        self.record.products = engine.products_of(&tables);
        self.record.tables = tables;
    }

    /// For a statement that could not be planned: the mesh tables its
    /// text names (the policies are unknown).
    fn named(&mut self, engine: &Engine, session: &MeshSession, sql: &str) {
        let tables = session.tables_named(sql);
        self.record.products = engine.products_of(&tables);
        self.record.tables = tables;
    }

    fn finish(&mut self, outcome: Result<(), &Status>) {
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
            Err(s) if s.code() == tonic::Code::Cancelled => {
                r.outcome = "cancelled";
                "cancelled"
            }
            Err(s) => {
                r.outcome = "error";
                r.error_code = Some(code_name(s.code()));
                code_name(s.code())
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

    /// Writes nothing: the call is audited elsewhere.
    fn discard(&mut self) {
        self.written = true;
    }

    /// Passes `result` through, recording its error.
    fn check<T>(&mut self, result: Result<T, Status>) -> Result<T, Status> {
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
        let status = match &self.end {
            Some((end, limit)) if end.load(Ordering::SeqCst) == TIMED_OUT => {
                let qid = self.record.query_id.clone().unwrap_or_default();
                timed_out(&qid, *limit)
            }
            _ => Status::cancelled("the client went away or cancelled the query"),
        };
        self.finish(Err(&status));
    }
}

/// The error of a query past its time limit.
fn timed_out(qid: &str, limit: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "query {qid} ran longer than its time limit of {:.1} s (limits.query_timeout) and was cancelled",
        limit.as_secs_f64()
    ))
}

/// gRPC code names as the audit log and metrics write them.
fn code_name(code: tonic::Code) -> &'static str {
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
fn statement_kind(plan: &LogicalPlan) -> &'static str {
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

/// Arrow bytes of a batch, counting only the slices it uses.
fn batch_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64)
        .sum()
}

/// A statement planned on one mesh version, with its audit record open.
struct Started {
    qid: String,
    engine: Engine,
    session: MeshSession,
    trace: QueryTrace,
    plan: LogicalPlan,
}

/// meshq's `FlightSqlService`.
pub struct MeshFlightService {
    live: Arc<LiveEngine>,
    auth: Arc<Authenticator>,
    ops: Arc<Operations>,
    params: ParamStore,
    running: Arc<Running>,
    sql_info: SqlInfoData,
    xdbc: XdbcTypeInfoData,
}

fn query_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn schema_ipc(schema: &Schema) -> Result<Vec<u8>, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes.to_vec())
}

/// Parameter values from a one-row batch, in column order (`$1`, `$2`, …).
fn param_values(batch: &RecordBatch) -> Result<ParamValues, Status> {
    if batch.num_rows() != 1 {
        return Err(Status::invalid_argument(format!(
            "parameters must be bound as exactly one row, got {}",
            batch.num_rows()
        )));
    }
    let values = batch
        .columns()
        .iter()
        .map(|c| ScalarValue::try_from_array(c, 0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(ParamValues::List(
        values.into_iter().map(Into::into).collect(),
    ))
}

fn is_statement(plan: &LogicalPlan) -> bool {
    matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
    )
}

/// What a running query holds: dropped when it ends, fails, or is stopped
/// from outside (the watchdog of its time limit takes it even while the
/// client is not reading); dropping it stops DataFusion's tasks, frees the
/// query's memory and slot, and writes its audit record.
struct RunningQuery {
    inner: SendableRecordBatchStream,
    query: PhysicalQuery,
    trace: QueryTrace,
    _permit: Permit,
}

type SharedQuery = Arc<tokio::sync::Mutex<Option<RunningQuery>>>;

/// The state of a result stream between batches.
struct ResultStream {
    running: SharedQuery,
    cast_to: SchemaRef,
    deadline: Option<(tokio::time::Instant, Duration)>,
    max_rows: Option<u64>,
    max_bytes: Option<u64>,
    status: Box<dyn Fn(&DataFusionError) -> Status + Send + Sync>,
}

impl ResultStream {
    async fn next(self) -> Option<(Result<RecordBatch, FlightError>, Self)> {
        let running = Arc::clone(&self.running);
        let mut slot = running.lock().await;
        // Stopped from outside: the stream's last item says why.
        let q = slot.as_mut()?;
        let qid = q.trace.record.query_id.clone().unwrap_or_default();
        let item = match self.deadline {
            Some((at, limit)) => match tokio::time::timeout_at(at, q.inner.next()).await {
                Ok(item) => item,
                Err(_) => Some(Err(DataFusionError::External(Box::new(Timeout(limit))))),
            },
            None => q.inner.next().await,
        };
        let fail = |slot: &mut Option<RunningQuery>, s: Status| {
            if let Some(mut q) = slot.take() {
                q.trace.finish(Err(&s));
            }
            Err(FlightError::Tonic(Box::new(s)))
        };
        let batch = match item {
            None => {
                let (files, bytes) = meshq_engine::memory::spill_totals(&q.query.plan);
                if files > 0 {
                    debug!(%qid, files, bytes, "query spilled");
                }
                q.trace.record.spilled_bytes = bytes as u64;
                q.trace.finish(Ok(()));
                *slot = None;
                return None;
            }
            Some(Err(e)) => {
                let status = match e.find_root() {
                    DataFusionError::External(x) if x.is::<Timeout>() => {
                        let limit = x.downcast_ref::<Timeout>().map(|t| t.0).unwrap_or_default();
                        timed_out(&qid, limit)
                    }
                    _ => (self.status)(&e),
                };
                let r = fail(&mut slot, status);
                drop(slot);
                return Some((r, self));
            }
            Some(Ok(b)) => b,
        };
        let batch = match cast_batch(&batch, &self.cast_to) {
            Ok(b) => b,
            Err(e) => {
                let r = fail(&mut slot, Status::internal(e.to_string()));
                drop(slot);
                return Some((r, self));
            }
        };
        let r = &mut q.trace.record;
        r.rows += batch.num_rows() as u64;
        r.bytes += batch_bytes(&batch);
        let over = match (self.max_rows, self.max_bytes) {
            (Some(max), _) if r.rows > max => Some(format!(
                "the result has more than {max} rows (limits.max_result_rows); add a filter or a LIMIT"
            )),
            (_, Some(max)) if r.bytes > max => Some(format!(
                "the result is larger than {max} bytes (limits.max_result_bytes); select fewer columns or rows"
            )),
            _ => None,
        };
        if let Some(msg) = over {
            let r = fail(
                &mut slot,
                Status::resource_exhausted(format!("query {qid}: {msg}")),
            );
            drop(slot);
            return Some((r, self));
        }
        drop(slot);
        Some((Ok(batch), self))
    }
}

/// A query's time limit passed.
#[derive(Debug)]
struct Timeout(Duration);

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "time limit of {:?} exceeded", self.0)
    }
}

impl std::error::Error for Timeout {}

/// Stops a query's stream from outside. A stream being polled ends at its
/// next poll and drops the query with it; a stream nobody polls (the client
/// stopped reading) would not, so the query is taken out of it here.
fn stop(handle: &futures::stream::AbortHandle, query: &SharedQuery) {
    handle.abort();
    if let Ok(mut slot) = query.try_lock() {
        drop(slot.take());
    }
}

/// Stops a task when dropped (the watchdog of a query that ended).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MeshFlightService {
    /// A service over the served mesh.
    pub fn new(live: Arc<LiveEngine>, ops: Arc<Operations>) -> Self {
        let audit_ops = Arc::clone(&ops);
        let on_failure = Box::new(move |f: &AuthFailure, peer: Option<std::net::SocketAddr>| {
            audit_ops.metrics.auth_failed();
            audit_ops.audit(&AuditRecord {
                ts: audit::now(),
                event: "auth_failure",
                user: Some(f.user.clone()),
                client: peer.map(|p| p.to_string()),
                outcome: "error",
                error_code: Some("UNAUTHENTICATED"),
                ..Default::default()
            });
        });
        Self {
            auth: Arc::new(Authenticator::new(Arc::clone(&live), on_failure)),
            live,
            ops,
            params: ParamStore {
                entries: Mutex::new(HashMap::new()),
            },
            running: Arc::new(Running::default()),
            sql_info: sql_info(),
            xdbc: xdbc_types(),
        }
    }

    /// Counts logged-in sessions (for metrics), after the service is moved
    /// into the server.
    pub fn sessions_counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let auth = Arc::clone(&self.auth);
        move || auth.sessions()
    }

    fn client<T>(&self, req: &Request<T>) -> Result<Arc<ClientSession>, Status> {
        self.auth.authenticate(req.metadata(), req.remote_addr())
    }

    /// Plans `sql` in `session` with `params`.
    async fn plan(
        &self,
        session: &MeshSession,
        sql: &str,
        params: Option<&RecordBatch>,
        qid: &str,
    ) -> Result<LogicalPlan, Status> {
        let state = session.context().state();
        let sql = number_placeholders(sql);
        let mut plan = state
            .create_logical_plan(&sql)
            .await
            .map_err(|e| to_status(&e, qid))?;
        if let Some(p) = params {
            plan = plan
                .with_param_values(param_values(p)?)
                .map_err(|e| to_status(&e, qid))?;
        }
        Ok(plan)
    }

    /// Runs a statement that is not a query (DDL, DML, `SET`) to the end,
    /// audited; its result batches.
    async fn run_statement(
        &self,
        client: &ClientSession,
        peer: Option<std::net::SocketAddr>,
        call: &'static str,
        sql: &str,
        params: Option<&RecordBatch>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
        let s = self.start(client, peer, call, sql, params).await?;
        self.execute_statement(&s.engine, &s.session, s.trace, s.plan, &s.qid)
            .await
    }

    /// Takes the session's mesh version, opens the audit record and plans
    /// `sql`; a statement that cannot be planned is audited here.
    async fn start(
        &self,
        client: &ClientSession,
        peer: Option<std::net::SocketAddr>,
        call: &'static str,
        sql: &str,
        params: Option<&RecordBatch>,
    ) -> Result<Started, Status> {
        let qid = query_id();
        let (engine, session) = client.session()?;
        let mut trace = QueryTrace::new(
            &self.ops,
            session.principal(),
            peer,
            &qid,
            call,
            sql,
            self.live.version(),
        );
        match self.plan(&session, sql, params, &qid).await {
            Ok(plan) => Ok(Started {
                qid,
                engine,
                session,
                trace,
                plan,
            }),
            Err(e) => {
                trace.named(&engine, &session, sql);
                trace.check(Err(e))
            }
        }
    }

    /// Runs a planned statement to the end, audited by `trace`.
    async fn execute_statement(
        &self,
        engine: &Engine,
        session: &MeshSession,
        mut trace: QueryTrace,
        plan: LogicalPlan,
        qid: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
        trace.planned(engine, session, &plan);
        let df = trace.check(
            session
                .execute_plan(plan)
                .await
                .map_err(|e| to_status(&e, qid)),
        )?;
        let schema = wire_schema(df.schema().as_arrow());
        let batches = trace.check(df.collect().await.map_err(|e| to_status(&e, qid)))?;
        trace.record.rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        trace.finish(Ok(()));
        Ok((schema, batches))
    }

    /// Plans and runs a query under the principal's limits, streaming it in
    /// wire form, schema first; audited when the stream ends.
    #[allow(clippy::too_many_arguments)]
    async fn run_query(
        &self,
        client: &ClientSession,
        peer: Option<std::net::SocketAddr>,
        call: &'static str,
        sql: &str,
        params: Option<&RecordBatch>,
        ticket: Vec<u8>,
    ) -> Result<BoxStream<arrow_flight::FlightData>, Status> {
        let Started {
            qid,
            engine,
            session,
            mut trace,
            plan,
        } = self.start(client, peer, call, sql, params).await?;
        trace.planned(&engine, &session, &plan);
        info!(%qid, user = %session.principal().display_name(), "query");
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
        // The tables read, to name the product if its storage fails.
        let tables = trace.record.tables.clone();
        let failing = session.clone();
        let status = move |e: &DataFusionError, qid: &str| -> Status {
            match failing.storage_failure(e, &tables) {
                Some(f) => {
                    warn!(%qid, error = %e, "storage failure");
                    match f.kind {
                        StorageFailureKind::Unavailable => Status::unavailable(f.message),
                        StorageFailureKind::Corrupt => Status::data_loss(f.message),
                    }
                }
                None => to_status(e, qid),
            }
        };
        let target = wire_schema(plan.schema().as_arrow());
        let query = trace.check(
            session
                .physical_plan(plan, limits.query_memory.map(|m| m as usize))
                .await
                .map_err(|e| status(&e, &qid)),
        )?;
        let inner = trace.check(query.execute().map_err(|e| status(&e, &qid)))?;
        let deadline = limits
            .query_timeout
            .map(|t| (tokio::time::Instant::now() + t, t));
        let qid_owned = qid.clone();
        let end = Arc::new(AtomicU8::new(RUNNING));
        if let Some((_, limit)) = deadline {
            trace.end = Some((Arc::clone(&end), limit));
        }
        let running: SharedQuery = Arc::new(tokio::sync::Mutex::new(Some(RunningQuery {
            inner,
            query,
            trace,
            _permit: permit,
        })));
        let state = ResultStream {
            running: Arc::clone(&running),
            cast_to: Arc::clone(&target),
            deadline,
            max_rows: limits.max_result_rows,
            max_bytes: limits.max_result_bytes,
            status: Box::new(move |e| status(e, &qid_owned)),
        };
        let batches = futures::stream::unfold(state, ResultStream::next);
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(target)
            .build(batches)
            .map_err(|e| match e {
                FlightError::Tonic(s) => *s,
                other => Status::internal(other.to_string()),
            });
        // Cancellable by ticket; unregistered when it ends or is dropped
        // (a client that drops the stream drops DataFusion's tasks with it).
        let (abortable, handle) = futures::stream::abortable(encoded);
        // The time limit holds even when the client stops reading (then the
        // stream is not polled and cannot notice it): a watchdog stops it.
        let watchdog = deadline.map(|(at, _)| {
            let (handle, end) = (handle.clone(), Arc::clone(&end));
            let running = Arc::clone(&running);
            AbortOnDrop(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                if end
                    .compare_exchange(RUNNING, TIMED_OUT, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    stop(&handle, &running);
                }
            }))
        });
        let guard = self
            .running
            .register(ticket, handle, Arc::clone(&end), Arc::clone(&running));
        let stopped = deadline.map(|(_, limit)| limit);
        // A stream stopped from outside ends with an error saying why, not
        // as if the result were complete.
        let why = futures::stream::once(async move {
            match end.load(Ordering::SeqCst) {
                CANCELLED => Some(Err(Status::cancelled(format!(
                    "query {qid} was cancelled (CancelFlightInfo)"
                )))),
                TIMED_OUT => Some(Err(timed_out(&qid, stopped.unwrap_or_default()))),
                _ => None,
            }
        })
        .filter_map(std::future::ready);
        let stream = abortable.chain(why).map(move |item| {
            let _ = (&guard, &watchdog);
            item
        });
        Ok(Box::pin(stream))
    }

    /// For `GetFlightInfo`: plans `sql` once. With `run_statements`, a
    /// statement (DDL, `SET`) runs at once, audited, and the answer says so
    /// (`true`); a query is checked and its wire schema given. A refusal is
    /// audited (the query will never reach `DoGet`).
    #[allow(clippy::too_many_arguments)]
    async fn announce(
        &self,
        client: &ClientSession,
        peer: Option<std::net::SocketAddr>,
        call: &'static str,
        sql: &str,
        params: Option<&RecordBatch>,
        run_statements: bool,
    ) -> Result<(SchemaRef, bool), Status> {
        let Started {
            qid,
            engine,
            session,
            mut trace,
            plan,
        } = self.start(client, peer, call, sql, params).await?;
        if run_statements && is_statement(&plan) {
            let (schema, _) = self
                .execute_statement(&engine, &session, trace, plan, &qid)
                .await?;
            return Ok((schema, true));
        }
        if let Err(e) = session.check(&plan) {
            let status = to_status(&e, &qid);
            trace.planned(&engine, &session, &plan);
            trace.finish(Err(&status));
            return Err(status);
        }
        // Allowed: `DoGet` runs and audits it.
        trace.discard();
        Ok((wire_schema(plan.schema().as_arrow()), false))
    }

    fn info(
        &self,
        schema: &Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))
            .map(|i| i.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    /// Authenticates, then announces a metadata result of `schema` whose
    /// ticket is the command itself.
    fn metadata_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        command: Any,
    ) -> Result<Response<FlightInfo>, Status> {
        self.client(&request)?;
        Ok(Response::new(self.info(
            schema,
            command.encode_to_vec(),
            request.into_inner(),
        )?))
    }

    fn batch_stream(
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> BoxStream<arrow_flight::FlightData> {
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        Box::pin(
            FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(stream)
                .map_err(|e| Status::internal(e.to_string())),
        )
    }

    /// Tables the principal may see: (schema, table, engine schema).
    async fn visible_tables(
        &self,
        client: &ClientSession,
    ) -> Result<Vec<(String, String, String, SchemaRef)>, Status> {
        let (_, session) = client.session()?;
        let ctx = session.context();
        let Some(catalog) = ctx.catalog(CATALOG) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        let mut schemas = catalog.schema_names();
        schemas.sort();
        for s in schemas {
            let Some(provider) = catalog.schema(&s) else {
                continue;
            };
            let mut names = provider.table_names();
            names.sort();
            for t in names {
                if let Ok(Some(table)) = provider.table(&t).await {
                    let kind = match table.table_type() {
                        datafusion::datasource::TableType::View => "VIEW",
                        _ => "TABLE",
                    };
                    out.push((s.clone(), t, kind.to_string(), table.schema()));
                }
            }
        }
        Ok(out)
    }
}

/// Bound parameters belong to the principal who bound them: another user
/// holding the same handle cannot change or use them.
fn param_key(client: &ClientSession, handle: &PreparedHandle) -> String {
    format!("{}\u{0}{}", client.principal().display_name(), handle.id)
}

/// A metadata result: one batch, schema first.
fn one_batch<E: std::fmt::Display>(
    batch: Result<RecordBatch, E>,
) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(MeshFlightService::batch_stream(
        batch.schema(),
        vec![batch],
    )))
}

/// Casts a batch to the wire schema (views → plain types).
fn cast_batch(
    batch: &RecordBatch,
    target: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batch.schema().fields() == target.fields() {
        return Ok(batch
            .clone()
            .with_schema(Arc::clone(target))
            .unwrap_or_else(|_| batch.clone()));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(target), columns)
}

#[tonic::async_trait]
impl FlightSqlService for MeshFlightService {
    type FlightService = MeshFlightService;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<BoxStream<HandshakeResponse>>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated("send HTTP Basic credentials in the authorization header")
            })?
            .to_string();
        let (token, session) = self.auth.login_basic(&header, request.remote_addr())?;
        info!(user = %session.principal().display_name(), "login");
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut resp: Response<BoxStream<HandshakeResponse>> =
            Response::new(Box::pin(futures::stream::iter(vec![Ok(response)])));
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::internal("token is not a valid header value"))?;
        resp.metadata_mut().insert("authorization", value);
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let client = self.client(&request)?;
        let qid = query_id();
        debug!(%qid, "get_flight_info_statement");
        let (schema, done) = self
            .announce(
                &client,
                request.remote_addr(),
                "statement",
                &query.query,
                None,
                true,
            )
            .await?;
        let handle = StatementTicket {
            sql: query.query,
            params: None,
            done,
            nonce: rand::random(),
        };
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode().into(),
        };
        let info = self.info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let client = self.client(&request)?;
        let t = StatementTicket::decode(&ticket.statement_handle)?;
        let params = t.params.as_deref().map(params_from_ipc).transpose()?;
        if t.done {
            // Ran when it was announced; its result is empty, as announced.
            return Ok(Response::new(Self::batch_stream(
                Arc::new(Schema::empty()),
                vec![],
            )));
        }
        let call = if t.params.is_some() {
            "prepared"
        } else {
            "statement"
        };
        Ok(Response::new(
            self.run_query(
                &client,
                request.remote_addr(),
                call,
                &t.sql,
                params.as_ref(),
                request.get_ref().ticket.to_vec(),
            )
            .await?,
        ))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let client = self.client(&request)?;
        let qid = query_id();
        let (_, session) = client.session()?;
        let plan = self.plan(&session, &query.query, None, &qid).await?;
        session.check(&plan).map_err(|e| to_status(&e, &qid))?;
        let dataset = wire_schema(plan.schema().as_arrow());
        let mut types: Vec<(String, arrow::datatypes::DataType)> = plan
            .get_parameter_types()
            .map_err(|e| to_status(&e, &qid))?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or(arrow::datatypes::DataType::Utf8)))
            .collect();
        types.sort_by_key(|(k, _)| {
            k.trim_start_matches('$')
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let param_schema = Schema::new(
            types
                .into_iter()
                .map(|(k, t)| arrow::datatypes::Field::new(k, t, true))
                .collect::<Vec<_>>(),
        );
        let handle = PreparedHandle {
            id: query_id(),
            sql: query.query,
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode().into(),
            dataset_schema: schema_ipc(&dataset)?.into(),
            parameter_schema: schema_ipc(&param_schema)?.into(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let client = self.client(&request)?;
        let handle = PreparedHandle::decode(&query.prepared_statement_handle)?;
        self.params.remove(&param_key(&client, &handle));
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let client = self.client(&request)?;
        let handle = PreparedHandle::decode(&query.prepared_statement_handle)?;
        let stream = request.into_inner();
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                stream.map_err(|s| FlightError::Tonic(Box::new(s))),
            )
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("cannot read bound parameters: {e}")))?;
        let batch = match batches.as_slice() {
            [] => return Err(Status::invalid_argument("no parameter values were sent")),
            [b] => b.clone(),
            many => arrow::compute::concat_batches(&many[0].schema(), many)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        };
        self.params.put(&param_key(&client, &handle), batch);
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode().into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let client = self.client(&request)?;
        let handle = PreparedHandle::decode(&cmd.prepared_statement_handle)?;
        let params = self.params.get(&param_key(&client, &handle));
        let (schema, _) = self
            .announce(
                &client,
                request.remote_addr(),
                "prepared",
                &handle.sql,
                params.as_ref(),
                false,
            )
            .await?;
        let ticket = TicketStatementQuery {
            statement_handle: StatementTicket {
                sql: handle.sql,
                params: params.as_ref().map(params_to_ipc).transpose()?,
                done: false,
                nonce: rand::random(),
            }
            .encode()
            .into(),
        };
        let info = self.info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let client = self.client(&request)?;
        let handle = PreparedHandle::decode(&cmd.prepared_statement_handle)?;
        let params = self.params.get(&param_key(&client, &handle));
        Ok(Response::new(
            self.run_query(
                &client,
                request.remote_addr(),
                "prepared",
                &handle.sql,
                params.as_ref(),
                request.get_ref().ticket.to_vec(),
            )
            .await?,
        ))
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let client = self.client(&request)?;
        let (_, batches) = self
            .run_statement(&client, request.remote_addr(), "update", &cmd.query, None)
            .await?;
        Ok(affected_rows(&batches))
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let client = self.client(&request)?;
        let handle = PreparedHandle::decode(&cmd.prepared_statement_handle)?;
        let params = self.params.get(&param_key(&client, &handle));
        let (_, batches) = self
            .run_statement(
                &client,
                request.remote_addr(),
                "prepared_update",
                &handle.sql,
                params.as_ref(),
            )
            .await?;
        Ok(affected_rows(&batches))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request)?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        one_batch(b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let client = self.client(&request)?;
        let mut b = query.into_builder();
        let (_, session) = client.session()?;
        if let Some(catalog) = session.context().catalog(CATALOG) {
            let mut names = catalog.schema_names();
            names.sort();
            for s in names {
                b.append(CATALOG, s);
            }
        }
        one_batch(b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let client = self.client(&request)?;
        let mut b = query.into_builder();
        for (schema_name, table, kind, schema) in self.visible_tables(&client).await? {
            let s = metadata::table_schema(CATALOG, &schema_name, &table, &schema);
            b.append(CATALOG, &schema_name, &table, &kind, &s)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        one_batch(b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request)?;
        let mut b = query.into_builder();
        b.append("TABLE");
        b.append("VIEW");
        one_batch(b.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request)?;
        one_batch(query.into_builder(&self.sql_info).build())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, &metadata::primary_keys_schema(), query.as_any())
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let client = self.client(&request)?;
        let mut rows = Vec::new();
        let engine = self.auth.engine()?;
        for (schema_name, table, _, _) in self.visible_tables(&client).await? {
            if query.catalog.as_deref().is_some_and(|c| c != CATALOG)
                || query.db_schema.as_deref().is_some_and(|s| s != schema_name)
                || query.table != table
            {
                continue;
            }
            let Some(def) = engine.mesh().table(&schema_name, &table).cloned() else {
                continue;
            };
            for (i, col) in def.primary_key().iter().enumerate() {
                rows.push(metadata::PrimaryKeyRow {
                    catalog: CATALOG.to_string(),
                    schema: schema_name.clone(),
                    table: table.clone(),
                    column: col.to_string(),
                    sequence: i as i32 + 1,
                });
            }
        }
        one_batch(metadata::primary_keys_batch(&rows))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, &metadata::foreign_keys_schema(), query.as_any())
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request)?;
        one_batch::<std::convert::Infallible>(Ok(metadata::empty_foreign_keys()))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, &metadata::foreign_keys_schema(), query.as_any())
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request)?;
        one_batch::<std::convert::Infallible>(Ok(metadata::empty_foreign_keys()))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, &metadata::foreign_keys_schema(), query.as_any())
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request)?;
        one_batch::<std::convert::Infallible>(Ok(metadata::empty_foreign_keys()))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc).schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request)?;
        one_batch(query.into_builder(&self.xdbc).build())
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request)?;
        Err(Status::invalid_argument(format!(
            "unsupported ticket type {}",
            message.type_url
        )))
    }

    async fn do_action_fallback(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
        use crate::session_options as so;
        let action = request.get_ref().r#type.clone();
        let body: Vec<u8> = match action.as_str() {
            "SetSessionOptions" => {
                let client = self.client(&request)?;
                let (_, session) = client.session()?;
                let req = so::SetSessionOptionsRequest::decode(request.get_ref().body.as_ref())
                    .map_err(|_| Status::invalid_argument("malformed SetSessionOptionsRequest"))?;
                let mut result = so::SetSessionOptionsResult::default();
                for (name, value) in req.session_options {
                    let text = match &value.option_value {
                        Some(so::OptionValue::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    };
                    let error = match (name.as_str(), text) {
                        ("catalog", Some(c)) if c == CATALOG => None,
                        ("schema", Some(s)) => {
                            let exists = session
                                .context()
                                .catalog(CATALOG)
                                .is_some_and(|c| c.schema_names().contains(&s));
                            if exists {
                                session.set_default_schema(&s);
                                None
                            } else {
                                Some(so::INVALID_VALUE)
                            }
                        }
                        ("catalog" | "schema", _) => Some(so::INVALID_VALUE),
                        _ => Some(so::INVALID_NAME),
                    };
                    if let Some(value) = error {
                        result
                            .errors
                            .insert(name, so::SetSessionOptionError { value });
                    }
                }
                result.encode_to_vec()
            }
            "GetSessionOptions" => {
                let client = self.client(&request)?;
                let (_, session) = client.session()?;
                let mut result = so::GetSessionOptionsResult::default();
                result
                    .session_options
                    .insert("catalog".into(), so::string_value(CATALOG));
                result
                    .session_options
                    .insert("schema".into(), so::string_value(session.default_schema()));
                result.encode_to_vec()
            }
            "CancelFlightInfo" => {
                self.client(&request)?;
                let req =
                    arrow_flight::CancelFlightInfoRequest::decode(request.get_ref().body.as_ref())
                        .map_err(|_| {
                            Status::invalid_argument("malformed CancelFlightInfoRequest")
                        })?;
                let tickets: Vec<Vec<u8>> = req
                    .info
                    .iter()
                    .flat_map(|i| i.endpoint.iter())
                    .filter_map(|e| e.ticket.as_ref().map(|t| t.ticket.to_vec()))
                    .collect();
                let mut cancelled = 0;
                for t in &tickets {
                    cancelled += self.running.cancel(t);
                }
                let status = if cancelled > 0 {
                    arrow_flight::CancelStatus::Cancelled
                } else {
                    // Queries run only while their DoGet streams; none is.
                    arrow_flight::CancelStatus::NotCancellable
                };
                arrow_flight::CancelFlightInfoResult {
                    status: status as i32,
                }
                .encode_to_vec()
            }
            "CloseSession" => {
                self.client(&request)?;
                self.auth.logout(request.metadata());
                so::CloseSessionResult { status: so::CLOSED }.encode_to_vec()
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action `{other}`"
                )));
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
            result,
        )]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<arrow_flight::ActionType, Status>>> {
        Some(
            [
                "SetSessionOptions",
                "GetSessionOptions",
                "CloseSession",
                "CancelFlightInfo",
            ]
            .into_iter()
            .map(|t| {
                Ok(arrow_flight::ActionType {
                    r#type: t.to_string(),
                    description: format!("Flight {t}"),
                })
            })
            .collect(),
        )
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// JDBC and ODBC clients write parameters as `?`; DataFusion numbers them
/// (`$1`, `$2`, …). Rewrites `?` tokens — not those inside strings,
/// identifiers or comments — in order.
fn number_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.contains('?') {
        return sql.into();
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return sql.into();
    };
    if !tokens
        .iter()
        .any(|t| matches!(t, Token::Placeholder(p) if p == "?"))
    {
        return sql.into();
    }
    let mut n = 0;
    tokens
        .into_iter()
        .map(|t| match t {
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                format!("${n}")
            }
            other => other.to_string(),
        })
        .collect::<String>()
        .into()
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

#[cfg(test)]
mod tests {
    use super::number_placeholders;

    #[test]
    fn question_marks_become_numbered_placeholders() {
        assert_eq!(
            number_placeholders("SELECT * FROM t WHERE a = ? AND b > ?"),
            "SELECT * FROM t WHERE a = $1 AND b > $2"
        );
        assert_eq!(
            number_placeholders("SELECT '?' AS q, \"what?\" FROM t WHERE a = ? -- why?\n"),
            "SELECT '?' AS q, \"what?\" FROM t WHERE a = $1 -- why?\n"
        );
        assert_eq!(number_placeholders("SELECT 1"), "SELECT 1");
    }
}
