//! The security barrier between a governed table's policy nodes and the
//! user's query.
//!
//! `PolicyBarrier` (logical) and [`PolicyBarrierExec`] (physical) pass rows
//! through unchanged, but nothing moves across them: the optimizer cannot
//! push a user predicate below (so it is never evaluated on a row a row
//! filter hides), physical filter pushdown stops here, and statistics above
//! the barrier are unknown (so no answer comes from raw file statistics).
//! Leakproof predicates are moved across deliberately by
//! [`super::pushdown::PolicyPushdownRule`].

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::DFSchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use meshq_connectors::ScanToken;

use super::governed::GovernedTables;
use super::verify::verify_plan;
use crate::options::MeshqOptions;

/// Logical barrier above a governed table's policy nodes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd)]
pub struct PolicyBarrier {
    /// `domain.table`.
    pub table: String,
    /// What was applied, for `EXPLAIN` (`email:partial`, `filter:own_region`).
    pub applied: Vec<String>,
    /// Columns that pass through unmasked: leakproof predicates on them may
    /// cross the barrier.
    pub unmasked: BTreeSet<String>,
    /// The decision the policy nodes were built for (the plan verifier
    /// matches it with the scan's).
    pub token: ScanToken,
    /// The policy nodes.
    pub input: LogicalPlan,
}

/// Everything but the principal's fingerprint: what the barrier does is
/// decided by the policies and the nodes below it, so two principals with
/// the same policies hash alike (the result cache keys on this).
impl std::hash::Hash for PolicyBarrier {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.table.hash(state);
        self.applied.hash(state);
        self.unmasked.hash(state);
        self.token.mesh_version.hash(state);
        self.token.policies.hash(state);
        self.input.hash(state);
    }
}

impl PolicyBarrier {
    /// Wraps `input`.
    pub fn new(
        table: String,
        applied: Vec<String>,
        unmasked: BTreeSet<String>,
        token: ScanToken,
        input: LogicalPlan,
    ) -> Self {
        Self {
            table,
            applied,
            unmasked,
            token,
            input,
        }
    }
}

impl UserDefinedLogicalNodeCore for PolicyBarrier {
    fn name(&self) -> &str {
        "PolicyBarrier"
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
        write!(
            f,
            "PolicyBarrier: table={} policies=[{}]",
            self.table,
            self.applied.join(", ")
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("PolicyBarrier needs one input".into()))?;
        Ok(Self {
            input,
            ..self.clone()
        })
    }

    /// Column pruning may pass through: the barrier outputs its input as is.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        Some(vec![output_columns.to_vec()])
    }
}

/// Physical barrier: passes batches through; blocks filter pushdown and
/// statistics.
#[derive(Debug)]
pub struct PolicyBarrierExec {
    table: String,
    token: ScanToken,
    input: Arc<dyn ExecutionPlan>,
}

impl PolicyBarrierExec {
    /// Wraps `input`, the policy nodes built for `token`.
    pub fn new(table: String, token: ScanToken, input: Arc<dyn ExecutionPlan>) -> Self {
        Self {
            table,
            token,
            input,
        }
    }

    /// `domain.table` whose policies are below.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The decision the policy nodes below were built for.
    pub fn token(&self) -> &ScanToken {
        &self.token
    }
}

impl DisplayAs for PolicyBarrierExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PolicyBarrierExec: table={}", self.table)
    }
}

impl ExecutionPlan for PolicyBarrierExec {
    fn name(&self) -> &str {
        "PolicyBarrierExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// The barrier passes rows in order, but says it does not, so the
    /// optimizer never pushes a sort (and its expressions) below it.
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = meshq_connectors::one_child(children, "PolicyBarrierExec")?;
        Ok(Arc::new(Self::new(self.table.clone(), self.token, input)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

/// Plans [`PolicyBarrier`] nodes.
#[derive(Debug)]
struct BarrierPlanner;

#[async_trait]
impl ExtensionPlanner for BarrierPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session_state: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(barrier) = node.as_any().downcast_ref::<PolicyBarrier>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return Err(DataFusionError::Internal(
                "PolicyBarrier needs one input".into(),
            ));
        };
        Ok(Some(Arc::new(PolicyBarrierExec::new(
            barrier.table.clone(),
            barrier.token,
            Arc::clone(input),
        ))))
    }
}

/// Plans [`crate::shared_subplan::SharedSubplan`] nodes.
#[derive(Debug)]
struct SharedPlanner;

#[async_trait]
impl ExtensionPlanner for SharedPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session_state: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        crate::shared_subplan::plan_shared(node, physical_inputs, session_state)
    }
}

/// The query planner of a mesh version: DataFusion's, plus the barrier,
/// and the plan verifier as the last step of every physical plan.
#[derive(Debug)]
pub struct MeshQueryPlanner {
    tables: Arc<GovernedTables>,
}

impl MeshQueryPlanner {
    /// The planner over `tables`.
    pub fn new(tables: Arc<GovernedTables>) -> Self {
        Self { tables }
    }
}

#[async_trait]
impl QueryPlanner for MeshQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let shares = session
            .config_options()
            .extensions
            .get::<meshq_connectors::PlanOptions>()
            .is_none_or(|o| o.share_subplans);
        let shared = if shares {
            crate::shared_subplan::share_repeated_aggregates(logical_plan)?
        } else {
            None
        };
        let logical_plan = shared.as_ref().unwrap_or(logical_plan);
        let plan = DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(BarrierPlanner),
            Arc::new(SharedPlanner),
        ])
        .create_physical_plan(logical_plan, session)
        .await?;
        let plan = yield_in_joins(plan)?;
        let plan = crate::shared_subplan::unify(plan)?;
        let options = MeshqOptions::of(session.config_options());
        verify_plan(&plan, &self.tables, &options)?;
        Ok(plan)
    }
}

/// Puts a [`CooperativeExec`] above every cross and nested-loop join. Such a
/// join produces its output from buffered inputs without polling anything
/// that yields: over in-memory inputs (`meta`, `VALUES`) a large one would
/// hold a runtime thread until it ends, starving other clients and ignoring
/// a client that went away. Cooperative, it yields to the runtime as every
/// scan does, and stops when its stream is dropped.
fn yield_in_joins(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_plan::coop::CooperativeExec;
    use datafusion::physical_plan::joins::{CrossJoinExec, NestedLoopJoinExec};
    plan.transform_up(|node| {
        if node.is::<CrossJoinExec>() || node.is::<NestedLoopJoinExec>() {
            Ok(Transformed::yes(
                Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        } else {
            Ok(Transformed::no(node))
        }
    })
    .map(|t| t.data)
}
