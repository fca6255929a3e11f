//! Which worker ran which task: `EXPLAIN ANALYZE` on a coordinator adds
//! the workers its stages' tasks were sent to.
//!
//! datafusion-distributed assigns a stage's tasks to workers when the
//! query runs, and keeps the assignment inside its plan. meshq reads it
//! where every plan fragment leaves the coordinator: the signing layer
//! ([`crate::wire::Signing`]) sees each `SetPlanRequest` (stage, task,
//! worker) and the statement's id among its travelling settings. Only
//! statements being analyzed are watched, so nothing is kept for others.

use std::collections::HashMap;
use std::fmt::Formatter;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::common::Result;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;

use crate::travel::QueryBudget;

/// The header that carries a statement's id to its workers (the library's
/// prefix for travelling settings, then `meshq_query.id`).
pub(crate) const STATEMENT_HEADER: &str = "x-datafusion-distributed-config-meshq_query.id";

/// One task of a stage, and the worker it was sent to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Placement {
    /// The stage's number, as `EXPLAIN` shows it.
    pub stage: u64,
    /// The task's number within its stage.
    pub task: u64,
    /// The worker's URL.
    pub worker: String,
}

/// The statements watched, by id, with the tasks seen so far.
static WATCHED: LazyLock<Mutex<HashMap<String, Vec<Placement>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Watches the statement `id` until dropped.
pub(crate) struct Watch {
    id: String,
}

impl Watch {
    pub(crate) fn new(id: &str) -> Self {
        WATCHED.lock().insert(id.to_string(), Vec::new());
        Self { id: id.to_string() }
    }

    /// The tasks seen so far, in stage and task order.
    pub(crate) fn placements(&self) -> Vec<Placement> {
        let mut seen = WATCHED.lock().get(&self.id).cloned().unwrap_or_default();
        seen.sort();
        seen.dedup();
        seen
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHED.lock().remove(&self.id);
    }
}

/// Notes the task a request sends, when its statement is watched.
/// `first` is the request's first gRPC message, frame header included.
pub(crate) fn record(headers: &http::HeaderMap, first: &[u8]) {
    let Some(id) = headers.get(STATEMENT_HEADER).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let mut watched = WATCHED.lock();
    let Some(seen) = watched.get_mut(id) else {
        return;
    };
    if let Some(placement) = decode(first) {
        seen.push(placement);
    }
}

/// The fields of datafusion-distributed's `CoordinatorToWorkerMsg` read
/// here (its generated types are private; protobuf skips the rest). A
/// change of the library's message shows as `EXPLAIN ANALYZE` naming no
/// worker, which the cluster's tests catch.
#[derive(Clone, PartialEq, prost::Message)]
struct CoordinatorToWorkerMsg {
    #[prost(oneof = "Inner", tags = "1, 3")]
    inner: Option<Inner>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Inner {
    #[prost(message, tag = "1")]
    SetPlanRequest(SetPlanRequest),
    #[prost(bool, tag = "3")]
    WorkUnitEos(bool),
}

#[derive(Clone, PartialEq, prost::Message)]
struct SetPlanRequest {
    #[prost(message, optional, tag = "1")]
    task_key: Option<TaskKey>,
    #[prost(string, tag = "5")]
    target_worker_url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TaskKey {
    #[prost(uint64, tag = "2")]
    stage_id: u64,
    #[prost(uint64, tag = "3")]
    task_number: u64,
}

/// The task a coordinator-to-worker message sets up; none for any other
/// message or a compressed one.
fn decode(first: &[u8]) -> Option<Placement> {
    let (&compressed, rest) = first.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let message = CoordinatorToWorkerMsg::decode(&rest[4..]).ok()?;
    let Some(Inner::SetPlanRequest(request)) = message.inner else {
        return None;
    };
    let key = request.task_key?;
    Some(Placement {
        stage: key.stage_id,
        task: key.task_number,
        worker: request.target_worker_url,
    })
}

/// The lines `EXPLAIN ANALYZE` adds: one per stage, each task and its
/// worker.
pub fn describe(placements: &[Placement]) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut current: Option<u64> = None;
    for p in placements {
        if current != Some(p.stage) {
            current = Some(p.stage);
            lines.push(format!("Stage {}:", p.stage));
        }
        if let Some(line) = lines.last_mut() {
            line.push_str(&format!(" t{} → {}", p.task, p.worker));
        }
    }
    if lines.is_empty() {
        return "no task was sent to a worker".to_string();
    }
    lines.join("\n")
}

/// Above datafusion-distributed's `EXPLAIN ANALYZE`: runs it while
/// watching the statement, then adds a row `Tasks ran on` naming the
/// worker of every task.
#[derive(Debug)]
pub(crate) struct PlacedAnalyzeExec {
    input: Arc<dyn ExecutionPlan>,
}

impl PlacedAnalyzeExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for PlacedAnalyzeExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut Formatter) -> std::fmt::Result {
        write!(f, "PlacedAnalyzeExec")
    }
}

/// The row's `plan_type`.
pub const TASKS_RAN_ON: &str = "Tasks ran on";

impl ExecutionPlan for PlacedAnalyzeExec {
    fn name(&self) -> &str {
        "PlacedAnalyzeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(input) if children.is_empty() => Ok(Arc::new(Self::new(input))),
            _ => datafusion::common::internal_err!("PlacedAnalyzeExec has one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let id = context
            .session_config()
            .options()
            .extensions
            .get::<QueryBudget>()
            .map(|b| b.id.clone())
            .filter(|id| !id.is_empty());
        let Some(id) = id else {
            // No id travels: the library's output alone.
            return self.input.execute(partition, context);
        };
        let watch = Watch::new(&id);
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let out_schema = Arc::clone(&schema);
        let stream = futures::stream::once(async move {
            let mut batches: Vec<RecordBatch> = input.try_collect().await?;
            let text = describe(&watch.placements());
            drop(watch);
            if schema.fields().len() == 2 {
                let row = RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from(vec![TASKS_RAN_ON])),
                        Arc::new(StringArray::from(vec![text])),
                    ],
                )?;
                batches.push(row);
            }
            Ok::<_, datafusion::error::DataFusionError>(futures::stream::iter(
                batches.into_iter().map(Ok),
            ))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            out_schema,
            stream.boxed(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &CoordinatorToWorkerMsg) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn set_plan(stage: u64, task: u64, worker: &str) -> Vec<u8> {
        framed(&CoordinatorToWorkerMsg {
            inner: Some(Inner::SetPlanRequest(SetPlanRequest {
                task_key: Some(TaskKey {
                    stage_id: stage,
                    task_number: task,
                }),
                target_worker_url: worker.to_string(),
            })),
        })
    }

    fn headers(id: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(STATEMENT_HEADER, id.parse().unwrap());
        h
    }

    /// The header is the library's prefix for travelling settings and the
    /// id of meshq's `QueryBudget`: renaming either shows here (the
    /// library's side, in the cluster's `EXPLAIN ANALYZE` test).
    #[test]
    fn the_statement_header_names_the_budgets_id() {
        use datafusion::config::ConfigExtension;
        assert_eq!(
            STATEMENT_HEADER,
            format!("x-datafusion-distributed-config-{}.id", QueryBudget::PREFIX)
        );
        assert!(
            datafusion::config::ExtensionOptions::entries(&QueryBudget::unlimited())
                .iter()
                .any(|e| e.key == "id")
        );
    }

    #[test]
    fn a_watched_statement_records_its_tasks_and_others_do_not() {
        let watch = Watch::new("s1");
        record(&headers("s1"), &set_plan(2, 1, "http://b:1/"));
        record(&headers("s1"), &set_plan(1, 0, "http://a:1/"));
        record(&headers("s1"), &set_plan(2, 0, "http://a:1/"));
        // Another statement, a request without an id, a message that is
        // not a plan, a compressed one: none is recorded.
        record(&headers("s2"), &set_plan(1, 1, "http://c:1/"));
        record(&http::HeaderMap::new(), &set_plan(1, 1, "http://c:1/"));
        record(
            &headers("s1"),
            &framed(&CoordinatorToWorkerMsg {
                inner: Some(Inner::WorkUnitEos(true)),
            }),
        );
        let mut compressed = set_plan(3, 0, "http://c:1/");
        compressed[0] = 1;
        record(&headers("s1"), &compressed);
        let seen = watch.placements();
        assert_eq!(
            seen.iter()
                .map(|p| (p.stage, p.task, p.worker.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (1, 0, "http://a:1/"),
                (2, 0, "http://a:1/"),
                (2, 1, "http://b:1/")
            ]
        );
        assert_eq!(
            describe(&seen),
            "Stage 1: t0 → http://a:1/\nStage 2: t0 → http://a:1/ t1 → http://b:1/"
        );
        drop(watch);
        // Once the statement ends, nothing more is kept for it.
        record(&headers("s1"), &set_plan(1, 0, "http://a:1/"));
        assert!(!WATCHED.lock().contains_key("s1"));
    }
}
