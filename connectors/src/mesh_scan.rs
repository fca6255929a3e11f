//! [`MeshScanExec`]: the mark every scan of mesh data carries in a
//! physical plan.
//!
//! [`ContractTableProvider`](crate::ContractTableProvider) wraps whatever its
//! format's scan produced in this node, so a physical plan shows exactly
//! where mesh data enters it. The engine's planner stamps the node with the
//! [`ScanToken`] of the policy decision it made for the scan (principal, mesh
//! version, policies applied); its plan verifier refuses to run a plan with a
//! scan that carries no token, a token of another session, or whose
//! policies are missing above it. The node itself passes batches, ordering,
//! statistics, limits and filters through unchanged.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::common::ColumnStatistics;
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::config_field;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CaseExpr, DynamicFilterPhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    CardinalityEffect, ChildrenPropertiesMode, ReplaceChildrenOptions,
};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
    PushedDown,
};
use datafusion::physical_plan::joins::{HashJoinExec, HashTableLookupExpr};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, Statistics,
};
use futures::StreamExt;

/// Most filters offered to a format's scan for pruning; the rest are
/// evaluated above it. Some formats' pruning grows faster than linearly in
/// the number of filters (500 on a Delta table took half a minute).
pub const MAX_PUSHED_FILTERS: usize = 32;

datafusion::common::extensions_options! {
    /// How mesh scans run (`SET meshq_scan.dynamic_filters = false`).
    pub struct ScanOptions {
        /// Apply the dynamic filters of joins and TopK above a scan to the
        /// rows its format yields (formats that only prune with them, and
        /// memory copies, which ignore them).
        pub dynamic_filters: bool, default = true
        /// Which of those filters that probe a join's hash table (a large
        /// build side; a small one becomes an `IN` list) are applied:
        /// `selective` (the default: each while it keeps under
        /// `dynamic_filter_probe_max_kept` of the rows), `none`,
        /// `collect_left` (those of joins that build one table for every
        /// partition, not the `CASE` over hash partitions of a partitioned
        /// join) or `all`. A probe at the scan repeats the join's own
        /// work: on TPC-H SF10 it paid for the queries whose probes drop
        /// more than 99 % of the rows, and cost up to 23 % more on
        /// those whose probes drop 80–98 % (BENCHMARKS.md).
        pub dynamic_filter_probes: DynamicFilterProbes, default = DynamicFilterProbes::Selective
        /// Under `dynamic_filter_probes = selective`, the share of the rows
        /// it has seen (0 to 1) from which a scan partition stops applying
        /// a filter that probes a hash table.
        pub dynamic_filter_probe_max_kept: Share, default = Share::default()
        /// How long, in milliseconds, a scan waits before its first batch
        /// for the dynamic filters of the hash joins above it to be
        /// complete (0: it does not wait). A scan that starts before a
        /// join has built its table reads rows the filter would have
        /// dropped: a small build side read as two byte ranges starts at
        /// once (BENCHMARKS.md, TPC-H q7). Rows the join has not built
        /// cannot be joined anyway, so the wait costs little; past the
        /// limit the scan reads on without the filter.
        pub join_filter_wait_ms: u64, default = 5000
        /// In a cluster: a hash join whose probe side reads a stage below
        /// a shuffle sends its filter, once complete, to the workers of that
        /// stage, whose scans wait for it as for a join of their own stage.
        pub remote_join_filters: bool, default = true
    }
}

impl datafusion::common::config::ConfigExtension for ScanOptions {
    const PREFIX: &'static str = "meshq_scan";
}

/// Which dynamic filters that probe a hash table a scan applies
/// (`meshq_scan.dynamic_filter_probes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DynamicFilterProbes {
    /// Every filter.
    All,
    /// Filters of collect-left joins, not the `CASE` over hash partitions
    /// of a partitioned join.
    CollectLeft,
    /// No filter that probes a hash table: `IN` lists, bounds, TopK.
    None,
    /// Every filter, but a scan partition stops applying one that probes
    /// a hash table once it keeps `meshq_scan.
    /// dynamic_filter_probe_max_kept` of the rows it has seen
    /// ([`LATE_FILTER_SAMPLE_ROWS`] at least): a probe repeats the join's
    /// own work, which pays only when it drops nearly every row.
    #[default]
    Selective,
}

impl std::str::FromStr for DynamicFilterProbes {
    type Err = DataFusionError;

    fn from_str(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(Self::All),
            "collect_left" => Ok(Self::CollectLeft),
            "none" => Ok(Self::None),
            "selective" => Ok(Self::Selective),
            other => Err(DataFusionError::Configuration(format!(
                "meshq_scan.dynamic_filter_probes: {other:?} is not none, collect_left, selective or all"
            ))),
        }
    }
}

impl fmt::Display for DynamicFilterProbes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::CollectLeft => "collect_left",
            Self::None => "none",
            Self::Selective => "selective",
        })
    }
}

config_field!(DynamicFilterProbes);

/// A share from 0 to 1 (`meshq_scan.dynamic_filter_probe_max_kept`); any
/// other value is refused where it is set.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Share(pub f64);

impl std::str::FromStr for Share {
    type Err = DataFusionError;

    fn from_str(value: &str) -> Result<Self> {
        match value.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(Self(v)),
            _ => Err(DataFusionError::Configuration(format!(
                "meshq_scan.dynamic_filter_probe_max_kept: {value:?} is not a share from 0 to 1 (0.01 is 1 %)"
            ))),
        }
    }
}

impl Default for Share {
    /// The setting's default: 1 %.
    fn default() -> Self {
        Self(0.01)
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

config_field!(Share);

impl DynamicFilterProbes {
    /// Whether a filter whose current expression is `expr` is applied, and
    /// whether that expression probes a hash table.
    fn admits(self, expr: &Arc<dyn PhysicalExpr>) -> (bool, bool) {
        let (mut probes, mut partitioned) = (false, false);
        let _ = expr.apply(|e| {
            if e.is::<HashTableLookupExpr>() {
                probes = true;
            } else if e.is::<CaseExpr>() {
                partitioned = true;
            }
            Ok(TreeNodeRecursion::Continue)
        });
        let admitted = match self {
            Self::All | Self::Selective => true,
            Self::CollectLeft => !(probes && partitioned),
            Self::None => !probes,
        };
        (admitted, probes)
    }
}

/// Rows a dynamic filter is evaluated on before a scan partition judges
/// whether it is worth evaluating (it stops when it keeps 95 % or more;
/// a probe under [`DynamicFilterProbes::Selective`], `meshq_scan.
/// dynamic_filter_probe_max_kept` or more).
const LATE_FILTER_SAMPLE_ROWS: usize = 65_536;

/// A dynamic filter applied to one partition's rows.
struct LateFilter {
    expr: Arc<dyn PhysicalExpr>,
    seen: usize,
    passed: usize,
    active: bool,
    /// The generation of the filter last judged by the probe setting, and
    /// what was found.
    judged: Option<(u64, Judged)>,
}

/// What the probe setting found of one generation of a filter.
#[derive(Clone, Copy)]
struct Judged {
    /// It is evaluated.
    admitted: bool,
    /// It probes a hash table.
    probing: bool,
}

impl LateFilter {
    /// Whether the filter as it stands now is applied under `probes`;
    /// judged again only when the join has changed it.
    fn admitted(&mut self, probes: DynamicFilterProbes) -> Result<bool> {
        if probes == DynamicFilterProbes::All {
            return Ok(true);
        }
        let generation = self.expr.snapshot_generation();
        if let Some((judged, found)) = self.judged
            && judged == generation
        {
            return Ok(found.admitted);
        }
        let current = self
            .expr
            .snapshot()?
            .unwrap_or_else(|| Arc::clone(&self.expr));
        let (admitted, probing) = probes.admits(&current);
        self.judged = Some((generation, Judged { admitted, probing }));
        Ok(admitted)
    }

    /// Whether the filter keeps too many of the rows it has seen to be
    /// worth evaluating in this partition.
    fn keeps_too_many(&self, options: &ScanOptions) -> bool {
        if self.seen < LATE_FILTER_SAMPLE_ROWS {
            return false;
        }
        let kept = self.passed as f64 / self.seen as f64;
        let probing = self.judged.is_some_and(|(_, found)| found.probing);
        if probing && options.dynamic_filter_probes == DynamicFilterProbes::Selective {
            kept >= options.dynamic_filter_probe_max_kept.0
        } else {
            kept >= 0.95
        }
    }
}

/// The policy decision the planner made for one scan, for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub struct ScanToken {
    /// Identity of the mesh version the scan was planned on.
    pub mesh_version: u64,
    /// Fingerprint of the principal the scan was planned for.
    pub principal: u64,
    /// Fingerprint of the masks and row filters applied above the scan
    /// (0: none apply to the principal).
    pub policies: u64,
}

/// The one child given to a node of one input (`with_new_children`); an
/// error naming `node` for any other number.
pub fn one_child(
    mut children: Vec<Arc<dyn ExecutionPlan>>,
    node: &str,
) -> Result<Arc<dyn ExecutionPlan>> {
    match (children.pop(), children.is_empty()) {
        (Some(child), true) => Ok(child),
        _ => Err(DataFusionError::Internal(format!("{node} needs one child"))),
    }
}

/// A scan of a mesh table: passes its input through.
#[derive(Debug)]
pub struct MeshScanExec {
    table: String,
    token: Option<ScanToken>,
    input: Arc<dyn ExecutionPlan>,
    /// Filters from above that the format's scan took over entirely (they
    /// are applied to every row it produces).
    absorbed: Vec<Arc<dyn PhysicalExpr>>,
    /// For an Iceberg table read by field id: the source field ids of its
    /// identity partitions, from which a node that receives this scan
    /// without its file scans' adapter (a cluster worker) makes it again.
    field_ids: Option<Vec<i32>>,
    /// Column bounds the format's scan does not report (a memory copy's
    /// minimum and maximum), one per output column, reported as inexact
    /// where the scan reports none.
    bounds: Option<Arc<[ColumnStatistics]>>,
    /// Dynamic filters (a hash join's build-side keys, a TopK's
    /// threshold) that the format's scan uses at most to prune files and
    /// row groups: applied here to the rows it yields, so fewer rows
    /// travel up to the join. Only filters the barrier let through reach
    /// a scan (docs/security.md), and a dynamic filter drops only rows its
    /// join would drop.
    late: Vec<Arc<dyn PhysicalExpr>>,
    /// Expression ids of the filters in `late` made by hash joins of the
    /// same plan ([`JoinFilterWaits`]): the scan waits for them before it
    /// reads. Never a TopK's or an aggregate's filter, which is complete
    /// only once this scan has been read.
    waits: Vec<u64>,
    /// Expression ids of the filters in `late` that a hash join of
    /// another stage completes and sends to this node's worker (a cluster's
    /// scan below a shuffle): the scan waits for them as for `waits`.
    remote: Vec<u64>,
    metrics: ExecutionPlanMetricsSet,
}

impl MeshScanExec {
    /// Marks `input` as the scan of mesh table `table` (`domain.name`), not
    /// yet governed.
    pub fn new(table: impl Into<String>, input: Arc<dyn ExecutionPlan>) -> Self {
        Self {
            table: table.into(),
            token: None,
            input,
            absorbed: Vec::new(),
            field_ids: None,
            bounds: None,
            late: Vec::new(),
            waits: Vec::new(),
            remote: Vec::new(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The same scan, reporting these bounds (one per output column) for
    /// the columns whose scan reports none.
    pub fn with_column_bounds(mut self, bounds: Vec<ColumnStatistics>) -> Self {
        self.bounds = Some(bounds.into());
        self
    }

    /// The same scan, whose file scans read by Iceberg field id with the
    /// adapter of these identity-partition source ids.
    pub fn with_field_ids(mut self, identity_sources: Option<Vec<i32>>) -> Self {
        self.field_ids = identity_sources;
        self
    }

    /// The same scan, applying these dynamic filters of the nodes above it
    /// to the rows its format yields, and waiting for none of them until
    /// [`JoinFilterWaits::mark`] says which: a scan a cluster worker
    /// decoded, whose filters are linked again to the joins of the same
    /// stage (a join in another stage never completes its copy, which then
    /// keeps every row). Anything but a dynamic filter is refused.
    pub fn with_dynamic_filters(mut self, filters: Vec<Arc<dyn PhysicalExpr>>) -> Result<Self> {
        if let Some(other) = filters
            .iter()
            .find(|f| !f.is::<DynamicFilterPhysicalExpr>())
        {
            return Err(DataFusionError::Internal(format!(
                "the scan of {} was given {other}, which is not a dynamic filter",
                self.table
            )));
        }
        self.late = filters;
        self.waits = Vec::new();
        self.remote = Vec::new();
        Ok(self)
    }

    /// The same scan, waiting also for those of its dynamic filters (by
    /// expression id) that a join of another stage completes and sends
    /// here; ids of no filter of the scan are left out.
    pub fn with_remote_filters(&self, ids: &[u64]) -> Self {
        let remote = self
            .late
            .iter()
            .filter_map(|f| f.expression_id())
            .filter(|id| ids.contains(id))
            .collect();
        Self {
            remote,
            ..self.copy()
        }
    }

    /// Expression ids of the dynamic filters a join of another stage
    /// completes and sends to this scan ([`MeshScanExec::with_remote_filters`]).
    pub fn remote_filters(&self) -> &[u64] {
        &self.remote
    }

    /// The identity-partition source ids of an Iceberg scan read by field
    /// id ([`MeshScanExec::with_field_ids`]).
    pub fn field_ids(&self) -> Option<&[i32]> {
        self.field_ids.as_deref()
    }

    /// The same scan, stamped with the planner's decision.
    pub fn with_token(&self, token: ScanToken) -> Self {
        Self {
            token: Some(token),
            ..self.copy()
        }
    }

    /// The same scan with metrics of its own: what a changed node starts
    /// from.
    fn copy(&self) -> Self {
        Self {
            table: self.table.clone(),
            token: self.token,
            input: Arc::clone(&self.input),
            absorbed: self.absorbed.clone(),
            field_ids: self.field_ids.clone(),
            bounds: self.bounds.clone(),
            late: self.late.clone(),
            waits: self.waits.clone(),
            remote: self.remote.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// Filters from above that the format's scan applies to every row it
    /// produces (pushed down by the physical optimizer).
    pub fn absorbed_filters(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.absorbed
    }

    /// The dynamic filters of nodes above (hash joins, TopK) that this
    /// node applies to the rows its format's scan yields.
    pub fn dynamic_filters(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.late
    }

    /// Expression ids of the dynamic filters made by hash joins of the same
    /// plan, which the scan waits for before it reads ([`JoinFilterWaits`]).
    pub fn join_filter_waits(&self) -> &[u64] {
        &self.waits
    }

    /// `domain.name` of the table scanned.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The planner's decision, if a governed planner made this scan.
    pub fn token(&self) -> Option<&ScanToken> {
        self.token.as_ref()
    }

    /// The format's own scan.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

/// `input`, read once the hash joins' `filters` are complete or `limit`
/// has passed, whichever comes first; `waited` records the time.
fn after_filters(
    input: SendableRecordBatchStream,
    filters: Vec<Arc<dyn PhysicalExpr>>,
    limit: std::time::Duration,
    waited: datafusion::physical_plan::metrics::Time,
) -> SendableRecordBatchStream {
    let schema = input.schema();
    let ready = async move {
        let timer = waited.timer();
        let complete = futures::future::join_all(
            filters
                .iter()
                .filter_map(|f| f.downcast_ref::<DynamicFilterPhysicalExpr>())
                .map(DynamicFilterPhysicalExpr::wait_complete),
        );
        let _ = tokio::time::timeout(limit, complete).await;
        timer.done();
        input
    };
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::once(ready).flatten(),
    ))
}

/// Marks, in each [`MeshScanExec`], the dynamic filters that hash joins of
/// the same plan produce, so the scan waits for them before it reads
/// (`meshq_scan.join_filter_wait_ms`). Runs after DataFusion's own
/// physical rules, when every filter has reached its scan. A filter whose
/// producer is not in the plan (a TopK, an aggregate) is never waited for.
/// A cluster worker marks the waits of each stage it decodes
/// ([`JoinFilterWaits::mark`]), for the joins of that stage only.
#[derive(Debug, Default)]
pub struct JoinFilterWaits;

impl JoinFilterWaits {
    /// Marks the waits in `plan`, walking no node for which `boundary`
    /// holds (nor below it): a cluster worker's stage, whose joins are the
    /// only ones that complete its scans' filters there.
    pub fn mark(
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
        boundary: &dyn Fn(&Arc<dyn ExecutionPlan>) -> bool,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let on = config
            .extensions
            .get::<ScanOptions>()
            .is_none_or(|o| o.dynamic_filters && o.join_filter_wait_ms > 0);
        if !on {
            return Ok(plan);
        }
        fn produced_by(
            node: &Arc<dyn ExecutionPlan>,
            boundary: &dyn Fn(&Arc<dyn ExecutionPlan>) -> bool,
            out: &mut std::collections::HashSet<u64>,
        ) {
            if node.is::<HashJoinExec>() {
                out.extend(
                    node.dynamic_expressions_produced()
                        .iter()
                        .filter_map(|e| e.expression_id()),
                );
            }
            for child in node.children() {
                if !boundary(child) {
                    produced_by(child, boundary, out);
                }
            }
        }
        fn marked(
            node: Arc<dyn ExecutionPlan>,
            produced: &std::collections::HashSet<u64>,
            boundary: &dyn Fn(&Arc<dyn ExecutionPlan>) -> bool,
        ) -> Result<Arc<dyn ExecutionPlan>> {
            if boundary(&node) {
                return Ok(node);
            }
            let children: Vec<Arc<dyn ExecutionPlan>> =
                node.children().into_iter().cloned().collect();
            let mut changed = false;
            let mut new_children = Vec::with_capacity(children.len());
            for child in children {
                let new = marked(Arc::clone(&child), produced, boundary)?;
                changed |= !Arc::ptr_eq(&new, &child);
                new_children.push(new);
            }
            let node = if changed {
                // A scan's copy has its properties: the parents' stay.
                node.replace_children(
                    new_children,
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
                )?
            } else {
                node
            };
            let Some(scan) = node.downcast_ref::<MeshScanExec>() else {
                return Ok(node);
            };
            let waits: Vec<u64> = scan
                .late
                .iter()
                .filter_map(|f| f.expression_id())
                .filter(|id| produced.contains(id))
                .collect();
            if waits.is_empty() || waits == scan.waits {
                return Ok(node);
            }
            Ok(Arc::new(MeshScanExec {
                waits,
                ..scan.copy()
            }))
        }
        let mut produced = std::collections::HashSet::new();
        if !boundary(&plan) {
            produced_by(&plan, boundary, &mut produced);
        }
        if produced.is_empty() {
            return Ok(plan);
        }
        marked(plan, &produced, boundary)
    }
}

impl datafusion::physical_optimizer::PhysicalOptimizerRule for JoinFilterWaits {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Self::mark(plan, config, &|_| false)
    }

    fn name(&self) -> &str {
        "meshq_join_filter_waits"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

impl DisplayAs for MeshScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::TreeRender => write!(f, "table={}", self.table),
            _ => write!(f, "MeshScanExec: table={}", self.table),
        }
    }
}

impl ExecutionPlan for MeshScanExec {
    fn name(&self) -> &str {
        "MeshScanExec"
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
        // The dynamic filters applied here: a join computes its filter only
        // when a node below it holds the filter.
        for expr in &self.late {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = one_child(children, "MeshScanExec")?;
        Ok(Arc::new(Self {
            input,
            ..self.copy()
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        if self.late.is_empty() {
            return Ok(input);
        }
        let pruned =
            MetricBuilder::new(&self.metrics).counter("dynamic_filter_rows_pruned", partition);
        let options = context
            .session_config()
            .options()
            .extensions
            .get::<ScanOptions>()
            .cloned()
            .unwrap_or_default();
        let probes = options.dynamic_filter_probes;
        let waits: Vec<Arc<dyn PhysicalExpr>> = self
            .late
            .iter()
            .filter(|f| {
                f.expression_id()
                    .is_some_and(|id| self.waits.contains(&id) || self.remote.contains(&id))
            })
            .cloned()
            .collect();
        let input = if options.join_filter_wait_ms == 0 || waits.is_empty() {
            input
        } else {
            let waited =
                MetricBuilder::new(&self.metrics).subset_time("join_filter_wait", partition);
            after_filters(
                input,
                waits,
                std::time::Duration::from_millis(options.join_filter_wait_ms),
                waited,
            )
        };
        let mut filters: Vec<LateFilter> = self
            .late
            .iter()
            .map(|f| LateFilter {
                expr: Arc::clone(f),
                seen: 0,
                passed: 0,
                active: true,
                judged: None,
            })
            .collect();
        let schema = input.schema();
        let stream = input.map(move |batch| {
            let mut batch = batch?;
            for f in filters.iter_mut().filter(|f| f.active) {
                let before = batch.num_rows();
                if before == 0 {
                    break;
                }
                if !f.admitted(probes)? {
                    continue;
                }
                match f.expr.evaluate(&batch)? {
                    // Not yet known (the join is still building), or
                    // known to keep every row.
                    ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))) => continue,
                    ColumnarValue::Scalar(_) => {
                        batch = batch.slice(0, 0);
                    }
                    ColumnarValue::Array(keep) => {
                        let keep = keep.as_boolean_opt().ok_or_else(|| {
                            DataFusionError::Internal(
                                "a dynamic filter gave no boolean array".into(),
                            )
                        })?;
                        batch = filter_record_batch(&batch, keep)?;
                    }
                }
                f.seen += before;
                f.passed += batch.num_rows();
                // A filter that keeps nearly every row (a probe under
                // `selective`: as many as it may keep) costs more than it
                // saves: stop evaluating it for this partition.
                if f.keeps_too_many(&options) {
                    f.active = false;
                }
                pruned.add(before - batch.num_rows());
            }
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let stats = input_stats
            .first()
            .ok_or_else(|| DataFusionError::Internal("MeshScanExec needs one child".into()))?;
        let Some(bounds) = &self.bounds else {
            return Ok(Arc::clone(stats));
        };
        if bounds.len() != stats.column_statistics.len() {
            return Ok(Arc::clone(stats));
        }
        let schema = self.schema();
        let mut stats = stats.as_ref().clone();
        for ((column, known), field) in stats
            .column_statistics
            .iter_mut()
            .zip(bounds.iter())
            .zip(schema.fields())
        {
            let fits = |v: &Precision<datafusion::common::ScalarValue>| {
                v.get_value()
                    .is_some_and(|v| &v.data_type() == field.data_type())
            };
            if !fits(&known.min_value) || !fits(&known.max_value) {
                continue;
            }
            // Bounds of the whole table hold for any part of it, but only
            // as bounds: never exact, so no plan answers from them.
            if column.min_value == Precision::Absent {
                column.min_value = known.min_value.clone().to_inexact();
            }
            if column.max_value == Precision::Absent {
                column.max_value = known.max_value.clone().to_inexact();
            }
        }
        Ok(Arc::new(stats))
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        // Some formats' pruning grows faster than linearly in the number
        // of filters; past the cap they stay in the filter above.
        if parent_filters.len() > MAX_PUSHED_FILTERS {
            return Ok(FilterDescription::all_unsupported(
                &parent_filters,
                &self.children(),
            ));
        }
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let apply_dynamic = config
            .extensions
            .get::<ScanOptions>()
            .is_some_and(|o| o.dynamic_filters);
        let absorbed: Vec<Arc<dyn PhysicalExpr>> = child_pushdown_result
            .parent_filters
            .iter()
            .filter(|f| matches!(f.all(), PushedDown::Yes))
            .map(|f| Arc::clone(&f.filter))
            .collect();
        // Dynamic filters the format's scan leaves to its parents (it
        // prunes with them at most) are applied here to its rows.
        let mut late = self.late.clone();
        let mut results = Vec::with_capacity(child_pushdown_result.parent_filters.len());
        for f in &child_pushdown_result.parent_filters {
            let taken = matches!(f.all(), PushedDown::No)
                && apply_dynamic
                && phase == FilterPushdownPhase::Post
                && f.filter.is::<DynamicFilterPhysicalExpr>();
            if taken {
                late.push(Arc::clone(&f.filter));
                results.push(PushedDown::Yes);
            } else {
                results.push(f.all());
            }
        }
        let propagation = FilterPushdownPropagation::with_parent_pushdown_result(results);
        if absorbed.is_empty() && late.len() == self.late.len() {
            return Ok(propagation);
        }
        // Remember what the scan took over, for the plan verifier.
        let mut all = self.absorbed.clone();
        all.extend(absorbed);
        let node: Arc<dyn ExecutionPlan> = Arc::new(Self {
            absorbed: all,
            late,
            ..self.copy()
        });
        Ok(propagation.with_updated_node(node))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, col, lit};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use futures::TryStreamExt;

    use super::*;

    /// Rows a scan of 100 rows yields when a join above completes its
    /// filter (`k < 10`) 200 ms after the scan starts, with this wait.
    async fn rows_read(wait_ms: u64) -> usize {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..100))],
        )
        .unwrap();
        let input =
            MemorySourceConfig::try_new_exec(&[vec![batch]], Arc::clone(&schema), None).unwrap();
        let k = col("k", &schema).unwrap();
        let filter = Arc::new(DynamicFilterPhysicalExpr::new(
            vec![Arc::clone(&k)],
            lit(true),
        ));
        let mut scan = MeshScanExec::new("t.t", input);
        scan.late = vec![Arc::clone(&filter) as Arc<dyn PhysicalExpr>];
        scan.waits = vec![filter.expression_id().unwrap()];
        let mut config = SessionConfig::new().with_option_extension(ScanOptions::default());
        config
            .options_mut()
            .set("meshq_scan.join_filter_wait_ms", &wait_ms.to_string())
            .unwrap();
        let ctx = SessionContext::new_with_config(config);
        let stream = scan.execute(0, ctx.task_ctx()).unwrap();
        let producer = Arc::clone(&filter);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            producer
                .update(Arc::new(BinaryExpr::new(k, Operator::Lt, lit(10i64))))
                .unwrap();
            producer.mark_complete();
        });
        let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    #[tokio::test]
    async fn a_scan_reads_once_the_join_filters_it_waits_for_are_complete() {
        // It waits, and the filter drops the rows the join would.
        assert_eq!(rows_read(5_000).await, 10);
        // Without the wait, or past its limit, it reads on unfiltered.
        assert_eq!(rows_read(0).await, 100);
        assert_eq!(rows_read(20).await, 100);
    }

    /// A scan waits for the filter of a hash join above it, unless a
    /// boundary (a cluster's stage edge) lies between them.
    #[test]
    fn waits_are_marked_for_joins_on_the_same_side_of_a_boundary() {
        use datafusion::common::{JoinType, NullEquality};
        use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
        use datafusion::physical_plan::joins::{HashJoinExecBuilder, PartitionMode};

        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let source = || {
            MemorySourceConfig::try_new_exec(&[vec![]], Arc::clone(&schema), None).unwrap()
                as Arc<dyn ExecutionPlan>
        };
        let k = col("k", &schema).unwrap();
        let filter = Arc::new(DynamicFilterPhysicalExpr::new(
            vec![Arc::clone(&k)],
            lit(true),
        ));
        let scan = MeshScanExec::new("t.t", source())
            .with_dynamic_filters(vec![Arc::clone(&filter) as Arc<dyn PhysicalExpr>])
            .unwrap();
        let join = |right: Arc<dyn ExecutionPlan>| -> Arc<dyn ExecutionPlan> {
            Arc::new(
                HashJoinExecBuilder::new(
                    source(),
                    right,
                    vec![(Arc::clone(&k), Arc::clone(&k))],
                    JoinType::Inner,
                )
                .with_partition_mode(PartitionMode::CollectLeft)
                .with_null_equality(NullEquality::NullEqualsNothing)
                .build()
                .unwrap()
                .with_dynamic_filter_expr(Arc::clone(&filter))
                .unwrap(),
            )
        };
        let waits = |plan: &Arc<dyn ExecutionPlan>| {
            let mut out = Vec::new();
            plan.apply(|n| {
                if let Some(s) = n.downcast_ref::<MeshScanExec>() {
                    out.extend(s.join_filter_waits().iter().copied());
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            out
        };
        let config = ConfigOptions::new();
        let id = filter.expression_id().unwrap();
        let plain = join(Arc::new(scan.copy()));
        let marked = JoinFilterWaits::mark(plain, &config, &|_| false).unwrap();
        assert_eq!(waits(&marked), vec![id]);
        let across = join(Arc::new(CoalescePartitionsExec::new(Arc::new(scan.copy()))));
        let boundary = |n: &Arc<dyn ExecutionPlan>| n.is::<CoalescePartitionsExec>();
        let marked = JoinFilterWaits::mark(Arc::clone(&across), &config, &boundary).unwrap();
        assert!(waits(&marked).is_empty());
        // Without the boundary, the same plan waits.
        let marked = JoinFilterWaits::mark(across, &config, &|_| false).unwrap();
        assert_eq!(waits(&marked), vec![id]);
    }

    /// Rows a scan of 200 000 keys (batches of 8192) yields under these
    /// scan settings, below a complete join filter that probes a hash
    /// table of the keys divisible by `every`.
    async fn rows_probed(settings: &[(&str, &str)], every: i64) -> usize {
        use datafusion::common::hash_utils::create_hashes;
        use datafusion::physical_plan::joins::join_hash_map::{JoinHashMapType, JoinHashMapU32};
        use datafusion::physical_plan::joins::{Map, SeededRandomState};

        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batches: Vec<RecordBatch> = (0..200_000i64)
            .step_by(8192)
            .map(|start| {
                let keys = Int64Array::from_iter_values(start..(start + 8192).min(200_000));
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(keys)]).unwrap()
            })
            .collect();
        let input =
            MemorySourceConfig::try_new_exec(&[batches], Arc::clone(&schema), None).unwrap();
        let state = SeededRandomState::with_seed(7);
        let built: ArrayRef = Arc::new(Int64Array::from_iter_values(
            (0..200_000i64).filter(|k| k % every == 0),
        ));
        let mut hashes = vec![0; built.len()];
        create_hashes([&built], state.random_state(), &mut hashes).unwrap();
        let mut map = JoinHashMapU32::with_capacity(hashes.len());
        map.update_from_iter(Box::new(hashes.iter().enumerate()), 0);
        let k = col("k", &schema).unwrap();
        let filter = Arc::new(DynamicFilterPhysicalExpr::new(
            vec![Arc::clone(&k)],
            lit(true),
        ));
        filter
            .update(Arc::new(HashTableLookupExpr::new(
                vec![k],
                state,
                Arc::new(Map::HashMap(Box::new(map))),
                "hash_lookup".into(),
            )))
            .unwrap();
        filter.mark_complete();
        let mut scan = MeshScanExec::new("t.t", input);
        scan.late = vec![filter as Arc<dyn PhysicalExpr>];
        let mut config = SessionConfig::new().with_option_extension(ScanOptions::default());
        for (key, value) in settings {
            config
                .options_mut()
                .set(&format!("meshq_scan.{key}"), value)
                .unwrap();
        }
        let ctx = SessionContext::new_with_config(config);
        let batches: Vec<RecordBatch> = scan
            .execute(0, ctx.task_ctx())
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    #[tokio::test]
    async fn a_probe_is_applied_while_it_drops_nearly_every_row() {
        const PROBES: &str = "dynamic_filter_probes";
        // A probe that keeps one key in a thousand (under the 1 % a probe
        // may keep by default): applied to every row under `selective`,
        // as under `all`; never under `none`.
        assert_eq!(rows_probed(&[(PROBES, "all")], 1000).await, 200);
        assert_eq!(rows_probed(&[(PROBES, "selective")], 1000).await, 200);
        assert_eq!(rows_probed(&[(PROBES, "none")], 1000).await, 200_000);
        // One that keeps a tenth: `all` applies it throughout; `selective`
        // stops after the first 65 536 rows (8 batches), of which it kept
        // 6554, and passes the rest as they are...
        assert_eq!(rows_probed(&[(PROBES, "all")], 10).await, 20_000);
        assert_eq!(
            rows_probed(&[(PROBES, "selective")], 10).await,
            6554 + (200_000 - 65_536)
        );
        // ...unless a probe may keep more.
        let more = [
            (PROBES, "selective"),
            ("dynamic_filter_probe_max_kept", "0.5"),
        ];
        assert_eq!(rows_probed(&more, 10).await, 20_000);
    }

    /// The share a probe may keep is refused outside 0 to 1, with the
    /// setting's name.
    #[test]
    fn a_share_outside_zero_to_one_is_refused() {
        let mut config =
            datafusion::prelude::SessionConfig::new().with_option_extension(ScanOptions::default());
        let key = "meshq_scan.dynamic_filter_probe_max_kept";
        for bad in ["1.5", "-0.1", "NaN", "inf", "often"] {
            let refused = config.options_mut().set(key, bad).unwrap_err().to_string();
            assert!(
                refused.contains(key) && refused.contains("0 to 1"),
                "{bad}: {refused}"
            );
        }
        for good in ["0", "0.25", "1"] {
            config.options_mut().set(key, good).unwrap();
        }
        let options = config.options().extensions.get::<ScanOptions>().unwrap();
        assert_eq!(options.dynamic_filter_probe_max_kept, Share(1.0));
    }

    /// A scan given filters from outside (a worker's decoded scan) takes
    /// dynamic filters only, and waits for none of them.
    #[test]
    fn a_scan_given_filters_takes_dynamic_ones_only() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let input = MemorySourceConfig::try_new_exec(&[vec![]], Arc::clone(&schema), None).unwrap();
        let k = col("k", &schema).unwrap();
        let dynamic: Arc<dyn PhysicalExpr> = Arc::new(DynamicFilterPhysicalExpr::new(
            vec![Arc::clone(&k)],
            lit(true),
        ));
        let scan = MeshScanExec::new("t.t", Arc::clone(&input) as _)
            .with_dynamic_filters(vec![Arc::clone(&dynamic)])
            .unwrap();
        assert_eq!(scan.dynamic_filters().len(), 1);
        assert!(scan.join_filter_waits().is_empty());
        let plain: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(k, Operator::Lt, lit(10i64)));
        let refused = MeshScanExec::new("t.t", input as _)
            .with_dynamic_filters(vec![dynamic, plain])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("t.t") && refused.contains("not a dynamic filter"),
            "{refused}"
        );
    }
}
