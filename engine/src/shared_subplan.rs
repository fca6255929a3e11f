//! A repeated aggregation computed once per query.
//!
//! A query that names the same aggregation twice, most often a `WITH`
//! clause used twice (TPC-H q15 compares each supplier's revenue with the
//! largest one), is planned by DataFusion as two copies that each read and
//! aggregate their tables. Here the copies share one result:
//!
//! - [`share_repeated_aggregates`] runs on the optimized logical plan,
//!   just before physical planning. It finds `Aggregate` nodes that occur
//!   more than once (in the plan and its subqueries, equal in every
//!   expression, filter, scan and policy barrier below them) and wraps each
//!   occurrence in a [`SharedSubplan`] with one id. Subtrees with a volatile
//!   function (`random()`) are left alone: each copy must draw its own.
//! - The physical planner makes a [`SharedExec`] of each. It shares only
//!   when the input's estimated size is known and at most
//!   `meshq_plan.shared_subplan_max_bytes`; otherwise the copies run as
//!   before. Above a policy barrier sizes are unknown, so a restricted
//!   principal's copies are computed apart.
//! - After physical optimization, [`unify`] gives every `SharedExec` of an
//!   id the same input and one state, among copies whose inputs kept the
//!   same schema and partitioning (copies that differ stay apart).
//! - At execution the first consumer to ask runs every partition of the
//!   input once, holding the batches in the query's memory pool; each
//!   consumer then reads its partition's batches.
//!
//! Nothing from outside the input reaches into it: a `SharedExec` passes
//! no filter, projection, limit or ordering down, so both consumers see the
//! rows the input computes for the principal who runs the query, and the
//! plan verifier walks the input as any other child.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{
    Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use datafusion::prelude::Expr;
use futures::TryStreamExt;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

/// An aggregation that occurs more than once in a query; every occurrence
/// of one `id` computes the same rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct SharedSubplan {
    /// Equal for every occurrence of the same aggregation in one plan.
    pub id: usize,
    /// The aggregation.
    pub input: LogicalPlan,
}

impl UserDefinedLogicalNodeCore for SharedSubplan {
    fn name(&self) -> &str {
        "SharedSubplan"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SharedSubplan: id={}", self.id)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("SharedSubplan needs one input".into()))?;
        Ok(Self { id: self.id, input })
    }
}

/// Whether a node of `plan` or of its subqueries matches `f`.
fn any_node(plan: &LogicalPlan, mut f: impl FnMut(&LogicalPlan) -> bool) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        found = f(node);
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    Ok(found)
}

/// Whether `plan` or anything below it calls a volatile function.
fn is_volatile(plan: &LogicalPlan) -> Result<bool> {
    any_node(plan, |node| {
        node.expressions().iter().any(|e| e.is_volatile())
    })
}

/// Whether `plan` reads a table.
fn reads_a_table(plan: &LogicalPlan) -> Result<bool> {
    any_node(plan, |node| matches!(node, LogicalPlan::TableScan(_)))
}

/// Wraps every `Aggregate` that occurs more than once in `plan` (counting
/// its subqueries) in a [`SharedSubplan`], one id per distinct aggregation;
/// an occurrence inside another shared one is left as it is. `None` when
/// no aggregation repeats.
pub fn share_repeated_aggregates(plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    let mut counts: HashMap<LogicalPlan, usize> = HashMap::new();
    plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Aggregate(_)) {
            *counts.entry(node.clone()).or_default() += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let mut repeated: HashMap<LogicalPlan, usize> = HashMap::new();
    for (node, count) in counts {
        if count > 1 && reads_a_table(&node)? && !is_volatile(&node)? {
            let id = repeated.len();
            repeated.insert(node, id);
        }
    }
    // A recursive query runs its recursive term again for every step: a
    // result computed once would be the first step's. (Checked only when
    // something repeats, so most queries walk their plan once.)
    if repeated.is_empty() || any_node(plan, |n| matches!(n, LogicalPlan::RecursiveQuery(_)))? {
        return Ok(None);
    }
    let mut uses: HashMap<usize, usize> = HashMap::new();
    let shared = plan
        .clone()
        .transform_down_with_subqueries(|node| {
            let Some(&id) = repeated.get(&node) else {
                return Ok(Transformed::no(node));
            };
            *uses.entry(id).or_default() += 1;
            let wrapped = LogicalPlan::Extension(Extension {
                node: Arc::new(SharedSubplan { id, input: node }),
            });
            // What lies below is computed once with it.
            Ok(Transformed::new(wrapped, true, TreeNodeRecursion::Jump))
        })?
        .data;
    if uses.values().all(|&n| n > 1) {
        return Ok(Some(shared));
    }
    // An aggregation repeated only inside a shared one is wrapped once
    // outside it: unwrap what has a single use.
    shared
        .transform_up_with_subqueries(|node| {
            if let LogicalPlan::Extension(e) = &node
                && let Some(s) = e.node.as_any().downcast_ref::<SharedSubplan>()
                && uses.get(&s.id).copied().unwrap_or(0) < 2
            {
                return Ok(Transformed::yes(s.input.clone()));
            }
            Ok(Transformed::no(node))
        })
        .map(|t| Some(t.data))
}

/// The bytes `plan` is estimated to produce, when its statistics say.
fn estimated_bytes(plan: &dyn ExecutionPlan) -> Option<usize> {
    let stats = datafusion::physical_plan::statistics::StatisticsContext::new()
        .compute(plan, &Default::default())
        .ok()?;
    if let Some(&bytes) = stats.total_byte_size.get_value() {
        return Some(bytes);
    }
    let rows = *stats.num_rows.get_value()?;
    let width: usize = plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().primitive_width().unwrap_or(32))
        .sum();
    Some(rows.saturating_mul(width.max(1)))
}

/// The physical plan of a [`SharedSubplan`]: its input, or a
/// [`SharedExec`] over it when its estimated size is known and within
/// `max_bytes`.
pub fn plan_shared(
    node: &dyn UserDefinedLogicalNode,
    physical_inputs: &[Arc<dyn ExecutionPlan>],
    session: &dyn Session,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(shared) = node.as_any().downcast_ref::<SharedSubplan>() else {
        return Ok(None);
    };
    let [input] = physical_inputs else {
        return Err(DataFusionError::Internal(
            "SharedSubplan needs one input".into(),
        ));
    };
    let options = session
        .config_options()
        .extensions
        .get::<meshq_connectors::PlanOptions>()
        .cloned()
        .unwrap_or_default();
    let fits = options.share_subplans
        && estimated_bytes(input.as_ref()).is_some_and(|b| b <= options.shared_subplan_max_bytes);
    Ok(Some(if fits {
        Arc::new(SharedExec::new(shared.id, Arc::clone(input)))
    } else {
        Arc::clone(input)
    }))
}

/// Gives every [`SharedExec`] of one id in `plan` the first one's input and
/// one fresh state, among those whose inputs have the same schema and
/// partitioning.
pub fn unify(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    if !plan.exists(|n| Ok(n.is::<SharedExec>()))? {
        return Ok(plan);
    }
    // Per id, the groups seen so far: (input, state).
    type Group = (Arc<dyn ExecutionPlan>, Arc<SharedState>);
    let mut groups: HashMap<usize, Vec<Group>> = HashMap::new();
    plan.transform_down(|node| {
        let Some(shared) = node.downcast_ref::<SharedExec>() else {
            return Ok(Transformed::no(node));
        };
        let input = &shared.input;
        let entry = groups.entry(shared.id).or_default();
        let same = entry.iter().find(|(first, _)| {
            first.schema() == input.schema()
                && first.properties().partitioning == input.properties().partitioning
        });
        let (input, state) = match same {
            Some((first, state)) => (Arc::clone(first), Arc::clone(state)),
            None => {
                let state = Arc::new(SharedState::default());
                entry.push((Arc::clone(input), Arc::clone(&state)));
                (Arc::clone(input), state)
            }
        };
        let unified = SharedExec {
            id: shared.id,
            input,
            state,
            properties: Arc::clone(&shared.properties),
            metrics: ExecutionPlanMetricsSet::new(),
        };
        // The input below is the group's: it is not visited again.
        Ok(Transformed::new(
            Arc::new(unified) as Arc<dyn ExecutionPlan>,
            true,
            TreeNodeRecursion::Jump,
        ))
    })
    .map(|t| t.data)
}

/// One execution's result of a shared input: every partition's batches.
struct Computed {
    partitions: Vec<Vec<RecordBatch>>,
    _reservation: MemoryReservation,
}

/// What the [`SharedExec`] nodes of one id in one plan share: the input's
/// result once computed. Like every DataFusion plan, the plan runs once
/// unless its state is reset (`reset_state`), which gives a fresh one.
#[derive(Default)]
pub struct SharedState {
    computed: OnceCell<Arc<Computed>>,
}

impl fmt::Debug for SharedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedState")
            .field("computed", &self.computed.initialized())
            .finish()
    }
}

/// Runs every partition of `input` and keeps the batches, accounted in the
/// query's memory pool.
async fn compute(
    id: usize,
    input: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
) -> Result<Arc<Computed>> {
    let reservation =
        MemoryConsumer::new(format!("SharedExec[{id}]")).register(context.memory_pool());
    let reservation = Arc::new(Mutex::new(reservation));
    let partitions = input.properties().partitioning.partition_count();
    // Each partition on its own task, as DataFusion runs partitions; the
    // tasks end when the query is dropped.
    let tasks: Vec<_> = (0..partitions)
        .map(|p| {
            let stream = input.execute(p, Arc::clone(&context));
            let reservation = Arc::clone(&reservation);
            datafusion::common::runtime::SpawnedTask::spawn(async move {
                let mut batches = Vec::new();
                let mut stream = stream?;
                while let Some(batch) = stream.try_next().await? {
                    reservation
                        .lock()
                        .try_grow(batch.get_array_memory_size())
                        .map_err(|e| {
                            DataFusionError::ResourcesExhausted(format!(
                                "an aggregation the query uses twice is computed once and held in memory, \
                                 and it did not fit the query's memory limit ({e}); \
                                 SET meshq_plan.share_subplans = false computes it once per use"
                            ))
                        })?;
                    batches.push(batch);
                }
                Ok::<_, DataFusionError>(batches)
            })
        })
        .collect();
    let tasks = tasks.into_iter().map(|t| async move {
        t.join_unwind()
            .await
            .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
    });
    let partitions = futures::future::try_join_all(tasks).await?;
    let reservation = Arc::try_unwrap(reservation)
        .map(|m| m.into_inner())
        .map_err(|_| DataFusionError::Internal("SharedExec reservation still shared".into()))?;
    Ok(Arc::new(Computed {
        partitions,
        _reservation: reservation,
    }))
}

/// The physical node of a [`SharedSubplan`]: every node of one id (after
/// [`unify`]) returns the rows of one computation of its input.
#[derive(Debug)]
pub struct SharedExec {
    id: usize,
    input: Arc<dyn ExecutionPlan>,
    state: Arc<SharedState>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SharedExec {
    /// A node over `input`, with its own state until [`unify`].
    pub fn new(id: usize, input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Self::properties_of(&input);
        Self {
            id,
            input,
            state: Arc::new(SharedState::default()),
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The input's partitioning, without its ordering: nothing above may
    /// rely on an order that one consumer's plan could change.
    fn properties_of(input: &Arc<dyn ExecutionPlan>) -> Arc<PlanProperties> {
        let eq = datafusion::physical_expr::EquivalenceProperties::new(input.schema());
        Arc::new(PlanProperties::new(
            eq,
            input.properties().partitioning.clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        ))
    }

    /// The id shared by every occurrence of the aggregation.
    pub fn id(&self) -> usize {
        self.id
    }
}

impl DisplayAs for SharedExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::TreeRender => write!(f, "id={}", self.id),
            _ => write!(f, "SharedExec: id={}", self.id),
        }
    }
}

impl ExecutionPlan for SharedExec {
    fn name(&self) -> &str {
        "SharedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = meshq_connectors::one_child(children, "SharedExec")?;
        let properties = Self::properties_of(&input);
        Ok(Arc::new(Self {
            id: self.id,
            input,
            state: Arc::clone(&self.state),
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    /// A plan run again from the start (as a recursive query's step is)
    /// computes again: a fresh state, this node's own.
    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self {
            id: self.id,
            input: Arc::clone(&self.input),
            state: Arc::new(SharedState::default()),
            properties: Arc::clone(&self.properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let state = Arc::clone(&self.state);
        let (id, input) = (self.id, Arc::clone(&self.input));
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let schema: SchemaRef = self.schema();
        let batches = futures::stream::once(async move {
            let computed = state
                .computed
                .get_or_try_init(|| compute(id, input, context))
                .await?;
            let batches = computed
                .partitions
                .get(partition)
                .cloned()
                .unwrap_or_default();
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        })
        .try_flatten()
        .inspect_ok(move |b| output_rows.add(b.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
