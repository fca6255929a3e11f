//! Join filters that cross a stage boundary.
//!
//! On one node, a hash join's dynamic filter (the keys of its build side)
//! reaches the scans of its probe side, which drop the rows it would not
//! match. In a cluster, a shuffle between the join and a scan puts them in
//! different stages, often on different workers: the scan's copy of the
//! filter is never completed there, and every row crosses the network.
//!
//! Here the coordinator finds each such pair in the distributed plan
//! ([`export_join_filters`]): it wraps the shuffle (or coalesce) below the
//! join in a [`JoinFilterExportExec`], and marks the scans of the stage
//! below it to wait for that filter ([`MeshScanExec::with_remote_filters`]).
//! When the join's filter is complete, each task of its stage sends what it
//! built to the workers of the stage below, signed with the cluster
//! credential like every request between nodes. A worker completes its
//! scans' copy once it holds the filter of every task: their disjunction.
//!
//! Why the disjunction is right: each row of the scan goes to exactly one
//! task of the join's stage, and that task's filter keeps every row the
//! task can match (DataFusion's guarantee for its own filter); another
//! task's filter can only keep more. Until every task's filter is there,
//! the scan's filter keeps every row. A scan with policies never carries
//! a dynamic filter ([`crate::codec`]): nothing reaches a scan that the
//! single-node plan did not already give it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, DynamicFilterPhysicalExpr};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use datafusion_distributed::{
    DistributedTaskContext, NetworkBoundaryExt, NetworkCoalesceExec, NetworkShuffleExec, Stage,
};
use datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::protobuf::PhysicalExprNode;
use http_body_util::BodyExt;
use meshq_connectors::MeshScanExec;
use meshq_connectors::mesh_scan::ScanOptions;
use parking_lot::Mutex;
use prost::Message;
use tracing::{debug, warn};
use url::Url;

use crate::transport::AuthChannelResolver;
use crate::travel::QueryBudget;

/// The RPC a worker receives a join's filter on.
pub const JOIN_FILTER_PATH: &str = "/meshq.cluster.JoinFilters/PublishJoinFilter";

/// How long a task waits for its join's filter to be complete before it
/// gives up sending it (the query was cancelled, or the join never built).
const PUBLISH_WAIT: Duration = Duration::from_secs(600);

/// How long a worker keeps what it was sent for a filter that never
/// completed (a task of the join's stage failed, or the query ended).
const KEPT_FOR: Duration = Duration::from_secs(900);

/// How long a worker keeps a completed filter, for a scan of the same
/// stage whose task registers after the filter arrived.
const KEPT_COMPLETE_FOR: Duration = Duration::from_secs(60);

/// One task's filter, as it travels.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct JoinFilterPiece {
    /// The statement's id (`meshq_query.id`), which each of its tasks has.
    #[prost(string, tag = "1")]
    pub query: String,
    /// The filter's expression id, the same in every stage of the plan.
    #[prost(uint64, tag = "2")]
    pub filter: u64,
    /// The sending task's number.
    #[prost(uint64, tag = "3")]
    pub task: u64,
    /// How many tasks the sending stage has.
    #[prost(uint64, tag = "4")]
    pub tasks: u64,
    /// The schema the filter's columns refer to (the join's probe side),
    /// as a datafusion-proto schema.
    #[prost(bytes = "vec", tag = "5")]
    pub schema: Vec<u8>,
    /// The filter, a datafusion-proto expression. A probe of the join's
    /// hash table cannot travel and arrives as `true` (keeps every row).
    #[prost(bytes = "vec", tag = "6")]
    pub expr: Vec<u8>,
}

/// Whether joins send their filters to the stages below
/// (`meshq_scan.remote_join_filters`, with dynamic filters on).
pub(crate) fn sends_join_filters(options: &datafusion::config::ConfigOptions) -> bool {
    options
        .extensions
        .get::<ScanOptions>()
        .is_none_or(|o| o.dynamic_filters && o.remote_join_filters)
}

/// Finds, in a distributed plan, the hash joins whose dynamic filter a
/// scan holds in a stage directly below the join's probe side, across a
/// shuffle or a coalesce. Each such boundary is wrapped in a
/// [`JoinFilterExportExec`] and each such scan waits for the filter.
pub fn export_join_filters(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_down(|node| {
        let Some(join) = node.downcast_ref::<HashJoinExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(filter) = join
            .dynamic_expressions_produced()
            .into_iter()
            .find(|e| e.is::<DynamicFilterPhysicalExpr>())
        else {
            return Ok(Transformed::no(node));
        };
        let Some(id) = filter.expression_id() else {
            return Ok(Transformed::no(node));
        };
        let schema = join.right().schema();
        let right = export_below(Arc::clone(join.right()), &filter, id, &schema)?;
        if !right.transformed {
            return Ok(Transformed::no(node));
        }
        let left = Arc::clone(join.left());
        Ok(Transformed::yes(
            Arc::clone(&node).replace_children(vec![left, right.data], keep())?,
        ))
    })
    .map(|t| t.data)
}

/// `node` (a join's probe side, within its stage) with each shuffle or
/// coalesce whose stage has a scan of filter `id` wrapped to export it.
fn export_below(
    node: Arc<dyn ExecutionPlan>,
    filter: &Arc<dyn PhysicalExpr>,
    id: u64,
    schema: &SchemaRef,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    node.transform_down(|node| {
        if !(node.is::<NetworkShuffleExec>() || node.is::<NetworkCoalesceExec>()) {
            // Another boundary (a broadcast) ends the probe side's stage.
            let recursion = match node.is_network_boundary() {
                true => TreeNodeRecursion::Jump,
                false => TreeNodeRecursion::Continue,
            };
            return Ok(Transformed::new(node, false, recursion));
        }
        let Some(stage) = node.children().first().map(|c| Arc::clone(c)) else {
            return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
        };
        let marked = wait_in_stage(stage, id)?;
        if !marked.transformed {
            return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
        }
        let boundary = node.replace_children(vec![marked.data], keep())?;
        let export = JoinFilterExportExec::new(boundary, Arc::clone(filter), Arc::clone(schema));
        Ok(Transformed::new(
            Arc::new(export),
            true,
            TreeNodeRecursion::Jump,
        ))
    })
}

/// Children replaced by nodes of the same properties: an export passes
/// its boundary through, a scan waiting for a filter yields what it did.
fn keep() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep)
}

/// `stage` (a stage's plan, down to its own boundaries) with the scans that
/// hold filter `id` waiting for it to arrive.
fn wait_in_stage(
    stage: Arc<dyn ExecutionPlan>,
    id: u64,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    stage.transform_down(|node| {
        if node.is_network_boundary() {
            return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
        }
        let Some(scan) = node.downcast_ref::<MeshScanExec>() else {
            return Ok(Transformed::no(node));
        };
        if !scan
            .dynamic_filters()
            .iter()
            .any(|f| f.expression_id() == Some(id))
        {
            return Ok(Transformed::no(node));
        }
        let mut ids = scan.remote_filters().to_vec();
        ids.push(id);
        Ok(Transformed::yes(Arc::new(scan.with_remote_filters(&ids))))
    })
}

/// Passes its input (a shuffle or coalesce below a hash join) through; once
/// the join's dynamic filter is complete, sends it to the workers of the
/// stage below, whose scans wait for it.
///
/// Holding the filter also tells the join that a node below it uses the
/// filter, without which the join would not compute it.
pub struct JoinFilterExportExec {
    input: Arc<dyn ExecutionPlan>,
    filter: Arc<dyn PhysicalExpr>,
    /// The schema of the join's probe side, which the filter's columns
    /// refer to.
    probe_schema: SchemaRef,
    /// The task sending the filter, started by the first partition
    /// executed and stopped when this node is dropped.
    sender: OnceLock<Option<Sender>>,
}

/// A spawned task, aborted when dropped.
struct Sender(tokio::task::AbortHandle);

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for JoinFilterExportExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinFilterExportExec")
            .field("filter", &self.filter.expression_id())
            .finish_non_exhaustive()
    }
}

impl JoinFilterExportExec {
    /// Exports `filter` (a hash join's dynamic filter, over
    /// `probe_schema`) to the stage below `input`.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        filter: Arc<dyn PhysicalExpr>,
        probe_schema: SchemaRef,
    ) -> Self {
        Self {
            input,
            filter,
            probe_schema,
            sender: OnceLock::new(),
        }
    }

    /// The join's filter.
    pub fn filter(&self) -> &Arc<dyn PhysicalExpr> {
        &self.filter
    }

    /// The schema the filter's columns refer to.
    pub fn probe_schema(&self) -> &SchemaRef {
        &self.probe_schema
    }

    /// The node below this one and any other join's export of the same
    /// boundary: the boundary whose stage the filter is sent to.
    fn boundary(&self) -> &Arc<dyn ExecutionPlan> {
        let mut node = &self.input;
        while let Some(export) = node.downcast_ref::<JoinFilterExportExec>() {
            node = &export.input;
        }
        node
    }

    /// Starts the task that sends the filter, when this node runs in a
    /// distributed stage whose session can sign requests to workers.
    fn start(&self, ctx: &Arc<TaskContext>) -> Option<Sender> {
        let config = ctx.session_config();
        if !sends_join_filters(config.options()) {
            return None;
        }
        let resolver = config.get_extension::<AuthChannelResolver>()?;
        let query = config.options().extensions.get::<QueryBudget>()?.id.clone();
        let Stage::Remote(below) = self.boundary().as_network_boundary()?.input_stage() else {
            return None;
        };
        let mut targets = below.workers.clone();
        targets.sort();
        targets.dedup();
        let task = DistributedTaskContext::from_ctx(ctx);
        let filter = Arc::clone(&self.filter);
        let schema = Arc::clone(&self.probe_schema);
        let handle = tokio::spawn(async move {
            publish_when_complete(
                &resolver,
                &query,
                &filter,
                &schema,
                (task.task_index as u64, task.task_count as u64),
                &targets,
            )
            .await;
        });
        Some(Sender(handle.abort_handle()))
    }
}

impl DisplayAs for JoinFilterExportExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match self.filter.expression_id() {
            Some(id) => write!(f, "JoinFilterExportExec: filter={id}"),
            None => write!(f, "JoinFilterExportExec"),
        }
    }
}

impl ExecutionPlan for JoinFilterExportExec {
    fn name(&self) -> &str {
        "JoinFilterExportExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        // The join computes its filter only when a node below it holds it.
        f(&self.filter)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = meshq_connectors::one_child(children, "JoinFilterExportExec")?;
        Ok(Arc::new(Self::new(
            input,
            Arc::clone(&self.filter),
            Arc::clone(&self.probe_schema),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.sender.get_or_init(|| self.start(&context));
        self.input.execute(partition, context)
    }
}

/// Waits for `filter` to be complete, then sends it to each of `targets`.
async fn publish_when_complete(
    resolver: &AuthChannelResolver,
    query: &str,
    filter: &Arc<dyn PhysicalExpr>,
    schema: &SchemaRef,
    (task, tasks): (u64, u64),
    targets: &[Url],
) {
    let Some(dynamic) = filter.downcast_ref::<DynamicFilterPhysicalExpr>() else {
        return;
    };
    if tokio::time::timeout(PUBLISH_WAIT, dynamic.wait_complete())
        .await
        .is_err()
    {
        debug!("a join's filter was not complete in time; it is not sent");
        return;
    }
    let piece = match piece_of(query, dynamic, schema, task, tasks) {
        Ok(piece) => piece,
        Err(e) => {
            warn!(error = %e, "a join's filter cannot be sent to the stage below; its scans read on without it");
            return;
        }
    };
    let sent = futures::future::join_all(targets.iter().map(|url| publish(resolver, url, &piece)));
    for (url, result) in targets.iter().zip(sent.await) {
        match result {
            Ok(()) => debug!(worker = %url, filter = piece.filter, "sent a join's filter"),
            Err(e) => warn!(
                worker = %url,
                error = %e,
                "a join's filter could not be sent to a worker; its scans read on without it"
            ),
        }
    }
}

/// The piece a task sends: its filter as it stands.
fn piece_of(
    query: &str,
    filter: &DynamicFilterPhysicalExpr,
    schema: &Schema,
    task: u64,
    tasks: u64,
) -> Result<JoinFilterPiece> {
    let id = filter
        .expression_id()
        .ok_or_else(|| DataFusionError::Internal("a dynamic filter without an id".into()))?;
    let expr = serialize_physical_expr(&filter.current()?, &DefaultPhysicalExtensionCodec {})?;
    let schema = datafusion_proto::protobuf::Schema::try_from(schema)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(JoinFilterPiece {
        query: query.to_string(),
        filter: id,
        task,
        tasks,
        schema: schema.encode_to_vec(),
        expr: expr.encode_to_vec(),
    })
}

/// Sends `piece` to the worker at `url`, on a signed request.
async fn publish(
    resolver: &AuthChannelResolver,
    url: &Url,
    piece: &JoinFilterPiece,
) -> Result<(), String> {
    use tower::{Service, ServiceExt};
    let mut service = resolver.signed(url).map_err(|e| e.to_string())?;
    let message = piece.encode_to_vec();
    let len = u32::try_from(message.len()).map_err(|_| "the filter is too large to send")?;
    let mut body = BytesMut::with_capacity(5 + message.len());
    body.put_u8(0);
    body.put_u32(len);
    body.put_slice(&message);
    let uri = format!("{}{JOIN_FILTER_PATH}", url.as_str().trim_end_matches('/'));
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            body.freeze(),
        )))
        .map_err(|e| e.to_string())?;
    let response = service
        .ready()
        .await
        .map_err(|e| e.to_string())?
        .call(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    let grpc_status = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(|code| {
                let message = headers
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                (code.to_string(), message.to_string())
            })
    };
    let status = match grpc_status(response.headers()) {
        Some(status) => Some(status),
        None => {
            let collected = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            collected.trailers().and_then(grpc_status)
        }
    };
    match status {
        Some((code, _)) if code == "0" => Ok(()),
        Some((code, message)) => Err(format!("gRPC status {code}: {message}")),
        None => Err("the worker's answer carries no gRPC status".into()),
    }
}

/// The worker's service for [`JOIN_FILTER_PATH`], behind the same check of
/// the cluster credential as the library's ([`crate::wire::Checked`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinFilterService;

impl tonic::server::NamedService for JoinFilterService {
    const NAME: &'static str = "meshq.cluster.JoinFilters";
}

impl tower::Service<http::Request<tonic::body::Body>> for JoinFilterService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != JOIN_FILTER_PATH {
                return Ok(tonic::Status::unimplemented(format!(
                    "no RPC {}",
                    request.uri().path()
                ))
                .into_http());
            }
            // One message, as large at most as a plan fragment may be.
            let limit = usize::try_from(crate::wire::MAX_FIRST_MESSAGE).unwrap_or(usize::MAX);
            let body = http_body_util::Limited::new(request.into_body(), limit.saturating_add(5));
            Ok(match body.collect().await {
                Ok(body) => receive(&body.to_bytes()),
                Err(e) => tonic::Status::invalid_argument(format!(
                    "the join filter could not be read: {e}"
                ))
                .into_http(),
            })
        })
    }
}

/// A worker's answer to a piece it was sent (the request's body, frame
/// header included).
fn receive(first: &[u8]) -> http::Response<tonic::body::Body> {
    match take(first) {
        Ok(()) => tonic::Status::ok("").into_http(),
        Err(e) => {
            warn!(error = %e, "a join's filter sent to this worker cannot be read");
            tonic::Status::invalid_argument(format!("the join filter cannot be read: {e}"))
                .into_http()
        }
    }
}

fn take(first: &[u8]) -> Result<(), String> {
    match first.first() {
        Some(0) => {}
        Some(_) => return Err("a compressed message".into()),
        None => return Err("an empty request".into()),
    }
    let message = first
        .get(5..)
        .ok_or("a request shorter than its frame header")?;
    let piece =
        JoinFilterPiece::decode(Bytes::copy_from_slice(message)).map_err(|e| e.to_string())?;
    if piece.tasks == 0 || piece.task >= piece.tasks {
        return Err(format!("task {} of {}", piece.task, piece.tasks));
    }
    let schema = datafusion_proto::protobuf::Schema::decode(piece.schema.as_slice())
        .map_err(|e| e.to_string())?;
    let schema = Schema::try_from(&schema).map_err(|e| e.to_string())?;
    let node = PhysicalExprNode::decode(piece.expr.as_slice()).map_err(|e| e.to_string())?;
    let expr = parse_physical_expr(
        &node,
        &TaskContext::default(),
        &schema,
        &DefaultPhysicalExtensionCodec {},
    )
    .map_err(|e| e.to_string())?;
    deliver(&piece.query, piece.filter, piece.task, piece.tasks, expr);
    Ok(())
}

/// What a worker knows of one filter of one query.
struct Entry {
    /// The scans' copies waiting for it.
    targets: Vec<Weak<dyn PhysicalExpr>>,
    /// The sending stage's task count, from the first piece.
    tasks: u64,
    /// The pieces arrived, by task.
    pieces: BTreeMap<u64, Arc<dyn PhysicalExpr>>,
    /// The disjunction of every task's piece, once all arrived.
    complete: Option<Arc<dyn PhysicalExpr>>,
    /// Pieces disagreed on the task count: the filter is never applied.
    broken: bool,
    since: Instant,
    /// When `complete` was made.
    completed_at: Option<Instant>,
}

impl Entry {
    fn new() -> Self {
        Self {
            targets: Vec::new(),
            tasks: 0,
            pieces: BTreeMap::new(),
            complete: None,
            broken: false,
            since: Instant::now(),
            completed_at: None,
        }
    }
}

/// The filters this process was sent or waits for, by query and filter id.
static FILTERS: LazyLock<Mutex<HashMap<(String, u64), Entry>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn sweep(map: &mut HashMap<(String, u64), Entry>) {
    sweep_at(map, Instant::now());
}

/// Drops what is kept past its time, as of `now`.
fn sweep_at(map: &mut HashMap<(String, u64), Entry>, now: Instant) {
    map.retain(|_, e| match e.completed_at {
        Some(at) => now.saturating_duration_since(at) < KEPT_COMPLETE_FOR,
        None => now.saturating_duration_since(e.since) < KEPT_FOR,
    });
}

/// A scan's copy of filter `filter` of query `query` is completed when
/// every task's piece has arrived (at once if they already have).
pub(crate) fn expect(query: &str, filter: &Arc<dyn PhysicalExpr>) {
    let Some(id) = filter.expression_id() else {
        return;
    };
    let mut map = FILTERS.lock();
    sweep(&mut map);
    let entry = map
        .entry((query.to_string(), id))
        .or_insert_with(Entry::new);
    match &entry.complete {
        Some(done) => complete(filter, done),
        None => entry.targets.push(Arc::downgrade(filter)),
    }
}

/// Task `task` of `tasks` sent its piece `expr` of filter `id`.
fn deliver(query: &str, id: u64, task: u64, tasks: u64, expr: Arc<dyn PhysicalExpr>) {
    let mut map = FILTERS.lock();
    sweep(&mut map);
    let entry = map
        .entry((query.to_string(), id))
        .or_insert_with(Entry::new);
    if entry.pieces.is_empty() && entry.complete.is_none() {
        entry.tasks = tasks;
    } else if entry.tasks != tasks {
        entry.broken = true;
    }
    if entry.broken || entry.complete.is_some() {
        return;
    }
    entry.pieces.insert(task, expr);
    if entry.pieces.len() as u64 != entry.tasks {
        return;
    }
    let Some(all) = entry
        .pieces
        .values()
        .cloned()
        .reduce(|a, b| Arc::new(BinaryExpr::new(a, Operator::Or, b)) as Arc<dyn PhysicalExpr>)
    else {
        return;
    };
    for target in entry.targets.drain(..).filter_map(|w| w.upgrade()) {
        complete(&target, &all);
    }
    entry.complete = Some(all);
    entry.completed_at = Some(Instant::now());
}

/// Completes a scan's copy of a filter with `expr`.
fn complete(target: &Arc<dyn PhysicalExpr>, expr: &Arc<dyn PhysicalExpr>) {
    let Some(dynamic) = target.downcast_ref::<DynamicFilterPhysicalExpr>() else {
        return;
    };
    if let Err(e) = dynamic.update(Arc::clone(expr)) {
        warn!(error = %e, "a join's filter sent to this worker cannot be applied; the scan reads on without it");
    }
    dynamic.mark_complete();
}

/// Registers, for a stage a worker decoded, its scans' copies of filters
/// that joins of other stages send here.
pub(crate) fn expect_in_stage(
    plan: &Arc<dyn ExecutionPlan>,
    config: &datafusion::prelude::SessionConfig,
) -> Result<()> {
    let Some(query) = config
        .options()
        .extensions
        .get::<QueryBudget>()
        .map(|b| b.id.clone())
    else {
        return Ok(());
    };
    plan.apply(|node| {
        if node.is_network_boundary() {
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Some(scan) = node.downcast_ref::<MeshScanExec>() {
            for filter in scan.dynamic_filters() {
                if filter
                    .expression_id()
                    .is_some_and(|id| scan.remote_filters().contains(&id))
                {
                    expect(&query, filter);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::physical_expr::expressions::{Column, InListExpr, lit};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]))
    }

    fn keys_in(values: &[i64]) -> Arc<dyn PhysicalExpr> {
        let list = values.iter().map(|v| lit(*v)).collect();
        Arc::new(
            InListExpr::try_new(Arc::new(Column::new("k", 0)), list, false, &schema()).unwrap(),
        )
    }

    fn kept(filter: &Arc<dyn PhysicalExpr>, values: &[i64]) -> Vec<i64> {
        let batch =
            RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values.to_vec()))])
                .unwrap();
        let keep = filter
            .evaluate(&batch)
            .unwrap()
            .into_array(values.len())
            .unwrap();
        let keep = keep
            .as_any()
            .downcast_ref::<datafusion::arrow::array::BooleanArray>()
            .unwrap();
        values
            .iter()
            .zip(keep.iter())
            .filter(|(_, k)| k == &Some(true))
            .map(|(v, _)| *v)
            .collect()
    }

    /// A piece as a sending task makes it and a worker reads it.
    fn travelled(query: &str, id: u64, task: u64, tasks: u64, values: &[i64]) -> Vec<u8> {
        let filter = DynamicFilterPhysicalExpr::new(
            vec![Arc::new(Column::new("k", 0)) as Arc<dyn PhysicalExpr>],
            lit(true),
        );
        filter.update(keys_in(values)).unwrap();
        let mut piece = piece_of(query, &filter, &schema(), task, tasks).unwrap();
        piece.filter = id;
        let message = piece.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        framed
    }

    fn scan_filter() -> Arc<dyn PhysicalExpr> {
        Arc::new(DynamicFilterPhysicalExpr::new(
            vec![Arc::new(Column::new("k", 0)) as Arc<dyn PhysicalExpr>],
            lit(true),
        ))
    }

    /// A scan's copy keeps every row until every task's piece is there,
    /// then keeps the rows any task's piece keeps.
    #[test]
    fn a_scans_filter_is_completed_by_every_tasks_piece() {
        let target = scan_filter();
        let id = target.expression_id().unwrap();
        let query = "q-every-task";
        expect(query, &target);
        let rows = [1, 2, 3, 4, 5, 6];
        assert!(take(&travelled(query, id, 0, 2, &[2, 4])).is_ok());
        assert_eq!(kept(&target, &rows), rows, "one of two pieces applied");
        // The same task again changes nothing.
        assert!(take(&travelled(query, id, 0, 2, &[2, 4])).is_ok());
        assert_eq!(kept(&target, &rows), rows);
        assert!(take(&travelled(query, id, 1, 2, &[5])).is_ok());
        assert_eq!(kept(&target, &rows), [2, 4, 5]);
        // A scan that registers later (another task of the stage) gets
        // the completed filter at once.
        let later = scan_filter();
        let later_id = later.expression_id().unwrap();
        let query2 = "q-late";
        assert!(take(&travelled(query2, later_id, 0, 1, &[3])).is_ok());
        expect(query2, &later);
        assert_eq!(kept(&later, &rows), [3]);
    }

    /// A completed filter is kept a minute (for a late task of the scan's
    /// stage), one still waiting for pieces a quarter of an hour.
    #[test]
    fn completed_filters_are_kept_a_minute_and_others_longer() {
        let start = Instant::now();
        let mut map = HashMap::new();
        let mut done = Entry::new();
        done.completed_at = Some(start);
        map.insert(("q".to_string(), 1), done);
        map.insert(("q".to_string(), 2), Entry::new());
        let kept = |map: &HashMap<(String, u64), Entry>| {
            let mut ids: Vec<u64> = map.keys().map(|(_, id)| *id).collect();
            ids.sort();
            ids
        };
        sweep_at(&mut map, start + Duration::from_secs(30));
        assert_eq!(kept(&map), [1, 2]);
        sweep_at(&mut map, start + Duration::from_secs(61));
        assert_eq!(kept(&map), [2]);
        sweep_at(&mut map, start + Duration::from_secs(899));
        assert_eq!(kept(&map), [2]);
        sweep_at(&mut map, start + Duration::from_secs(901));
        assert!(map.is_empty());
    }

    /// Two joins whose filters reach the same stage export the same
    /// shuffle: each finds it, below the other's export.
    #[test]
    fn exports_of_one_shuffle_each_find_it() {
        use datafusion::physical_plan::Partitioning;
        use datafusion::physical_plan::empty::EmptyExec;
        use datafusion::physical_plan::repartition::RepartitionExec;
        let scan: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(schema()));
        let hashed = Partitioning::Hash(vec![Arc::new(Column::new("k", 0))], 4);
        let repartition = Arc::new(RepartitionExec::try_new(scan, hashed).unwrap());
        let shuffle: Arc<dyn ExecutionPlan> =
            Arc::new(NetworkShuffleExec::try_new(repartition, 2).unwrap());
        let inner = Arc::new(JoinFilterExportExec::new(
            Arc::clone(&shuffle),
            scan_filter(),
            schema(),
        ));
        let outer = JoinFilterExportExec::new(
            Arc::clone(&inner) as Arc<dyn ExecutionPlan>,
            scan_filter(),
            schema(),
        );
        assert!(Arc::ptr_eq(inner.boundary(), &shuffle));
        assert!(Arc::ptr_eq(outer.boundary(), &shuffle));
        assert!(outer.boundary().is_network_boundary());
    }

    /// Pieces of another query, or that disagree on the task count, never
    /// complete a scan's filter.
    #[test]
    fn pieces_of_another_query_or_count_are_not_applied() {
        let target = scan_filter();
        let id = target.expression_id().unwrap();
        expect("q-mine", &target);
        let rows = [1, 2, 3];
        assert!(take(&travelled("q-other", id, 0, 1, &[1])).is_ok());
        assert_eq!(kept(&target, &rows), rows);
        assert!(take(&travelled("q-mine", id, 0, 2, &[1])).is_ok());
        assert!(take(&travelled("q-mine", id, 1, 3, &[2])).is_ok());
        assert!(take(&travelled("q-mine", id, 2, 3, &[3])).is_ok());
        assert_eq!(
            kept(&target, &rows),
            rows,
            "a broken count is never applied"
        );
        // Nonsense is refused, and nothing changes.
        assert!(take(&[0, 0, 0, 0, 3, 1, 2, 3]).is_err());
        assert!(take(&travelled("q-mine", id, 3, 3, &[3])).is_err());
    }
}
