//! The coordinator: meshq's planner (policy rewrite, barrier, verifier)
//! first, then datafusion-distributed's, which cuts the verified plan into
//! stages for the workers; the plan verifier then checks the stages again,
//! as each task will run them. A plan with a stage that cannot be encoded,
//! that fails the second check, or in which a task would read only its
//! share of an input that must be whole, is planned again to run in this
//! process, never sent in part.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DistributedExec, DistributedExt, DistributedLeafExec, MaybeEncoded, NetworkBoundaryExt,
    SessionStateBuilderExt,
};
use meshq_connectors::mesh_scan::ScanOptions;
use meshq_engine::policy::governed::GovernedTables;
use meshq_engine::policy::verify::{StageReader, verify_stages};
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{debug, warn};

use crate::codec::MeshCodec;
use crate::transport::{AuthChannelResolver, Workers};
use crate::travel::{MaskFunctions, QueryBudget, SessionSettings};

/// datafusion-distributed's setting of how stages' rows are compressed
/// between processes; meshq's default is `none`.
const COMPRESSION: &str = "distributed.compression";

/// Distributes the plans of every mesh version over `workers`.
#[derive(Clone)]
pub struct Coordinator {
    workers: Workers,
    resolver: AuthChannelResolver,
    settings: Vec<(String, String)>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Over `workers`, connecting with `resolver`, with datafusion-
    /// distributed's `settings` (`distributed.*`); an unknown key or a bad
    /// value is an error naming it.
    pub fn new(
        workers: Workers,
        resolver: AuthChannelResolver,
        settings: Vec<(String, String)>,
    ) -> Result<Self, String> {
        let mut settings = settings;
        if !settings.iter().any(|(k, _)| k == COMPRESSION) {
            // Stages' rows cross the network uncompressed unless the
            // settings ask for LZ4 or ZSTD: compressing costs the CPU
            // the stages run on, and saves time only on a network
            // slower than the compressor (BENCHMARKS.md).
            settings.insert(0, (COMPRESSION.to_string(), "none".to_string()));
        }
        let check = SessionStateBuilder::new()
            .with_distributed_planner()
            .build();
        let mut options = check.config_options().as_ref().clone();
        for (key, value) in &settings {
            if !key.starts_with("distributed.") {
                return Err(format!(
                    "cluster.settings: `{key}` is not a datafusion-distributed setting (distributed.*)"
                ));
            }
            options
                .set(key, value)
                .map_err(|e| format!("cluster.settings: `{key}`: {e}"))?;
            if key == COMPRESSION && !["lz4", "zstd", "none"].contains(&value.trim()) {
                // The library reads it only on the workers, per stage.
                return Err(format!(
                    "cluster.settings: `{key}: {value}` is not a compression: write lz4, zstd or none"
                ));
            }
            if key == "distributed.dynamic_task_count" && value.trim() != "false" {
                // Stages and split scans would be made when the query
                // runs, after the plan verifier's second check.
                return Err(format!(
                    "cluster.settings: `{key}` cannot be turned on: meshq verifies every stage before the query runs"
                ));
            }
        }
        Ok(Self {
            workers,
            resolver,
            settings,
        })
    }

    /// Checks the workers every [`crate::transport::HEALTH_INTERVAL`] from
    /// now on, for the life of the runtime (abort the handle to stop).
    pub fn spawn_health_checks(&self) -> tokio::task::JoinHandle<()> {
        self.workers.spawn_checks(self.resolver.clone())
    }

    /// The workers, for people: `N worker(s): URL, URL` (a DNS name
    /// counts as one source of workers).
    pub fn describe(&self) -> String {
        let sources = self.workers.sources();
        let list: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        format!("{} worker(s): {}", sources.len(), list.join(", "))
    }
}

impl meshq_engine::engine::Distribution for Coordinator {
    fn apply(
        &self,
        builder: SessionStateBuilder,
        tables: &Arc<GovernedTables>,
    ) -> SessionStateBuilder {
        let mut builder = builder;
        let Some(local) = builder.query_planner().clone() else {
            // No planner of meshq's to wrap: nothing is distributed.
            return builder;
        };
        // The scans' settings travel with every request, so that a worker's
        // scans apply and wait for join filters as the coordinator's would
        // (the session's values, `meshq.yaml` `settings` or a `SET`).
        let scan = builder
            .config()
            .as_ref()
            .and_then(|c| c.options().extensions.get::<ScanOptions>().cloned())
            .unwrap_or_default();
        let mut builder = builder
            .with_distributed_worker_resolver(self.workers.clone())
            .with_distributed_channel_resolver(self.resolver.clone())
            .with_distributed_user_codec(MeshCodec)
            .with_distributed_option_extension(MaskFunctions::default())
            .with_distributed_option_extension(SessionSettings::default())
            .with_distributed_option_extension(QueryBudget::default())
            .with_distributed_option_extension(scan)
            .with_distributed_planner();
        if let Some(config) = builder.config() {
            // A join of the head stage sends its filter to the workers of
            // the stage below with these signed connections.
            config.set_extension(Arc::new(self.resolver.clone()));
            for (key, value) in &self.settings {
                // Checked when the coordinator was made.
                let _ = config.options_mut().set(key, value);
            }
        }
        let distributed = builder.query_planner().clone();
        match distributed {
            Some(distributed) => builder.with_query_planner(Arc::new(ClusterPlanner {
                local,
                distributed,
                workers: self.workers.clone(),
                tables: Arc::clone(tables),
            })),
            // The library installed no planner: plan as meshq alone does.
            None => builder.with_query_planner(local),
        }
    }

    fn prepare_statement(&self, options: &mut datafusion::config::ConfigOptions) {
        // The statement's own list, which its plan fills in.
        options.extensions.insert(MaskFunctions::fresh());
        let settings = SessionSettings::of(options);
        options.extensions.insert(settings);
        // No limit unless the statement gets one; an id all the same, which
        // ties its requests together (`EXPLAIN ANALYZE` reads it).
        options.extensions.insert(QueryBudget::unlimited());
        // A shared aggregation's node has no codec: a plan holding one
        // could not be sent and would run on the coordinator alone. With
        // workers to send it to, each use is computed in its stages. The
        // library cuts no stage when a stage gets one task (one worker
        // answering, and no larger task count set): then it stays shared.
        let healthy = self.workers.healthy().len();
        let tasks = match options
            .extensions
            .get::<datafusion_distributed::DistributedConfig>()
            .map_or(0, |c| c.max_tasks_per_stage)
        {
            0 => healthy,
            set => set,
        };
        if healthy > 0
            && tasks > 1
            && let Some(plan) = options
                .extensions
                .get_mut::<meshq_connectors::PlanOptions>()
        {
            plan.share_subplans = false;
        }
    }

    fn limit_query(&self, options: &mut datafusion::config::ConfigOptions, memory: usize) {
        options.extensions.insert(QueryBudget::new(memory as u64));
    }

    fn status(&self) -> meshq_engine::engine::ClusterStatus {
        meshq_engine::engine::ClusterStatus {
            workers_answering: self.workers.healthy().len(),
            plans_unverified: unverified_distributions(),
        }
    }

    fn recheck(&self) -> futures::future::BoxFuture<'static, ()> {
        let workers = self.workers.clone();
        let resolver = self.resolver.clone();
        Box::pin(async move { workers.check(&resolver).await })
    }
}

/// meshq's planner, then the distributed one when every stage can travel.
#[derive(Debug)]
struct ClusterPlanner {
    local: Arc<dyn QueryPlanner + Send + Sync>,
    distributed: Arc<dyn QueryPlanner + Send + Sync>,
    workers: Workers,
    tables: Arc<GovernedTables>,
}

#[async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let LogicalPlan::Explain(explain) = logical_plan
            && !self.workers.healthy().is_empty()
            && !meshq_engine::options::MeshqOptions::of(session.config_options()).local_only
        {
            return self.explain(logical_plan, explain, session).await;
        }
        Ok(self.place(logical_plan, session).await?.0)
    }
}

impl ClusterPlanner {
    /// The plan a statement runs as: distributed when every stage can
    /// travel, else the coordinator's own, with the reason when the
    /// library made stages that could not be sent.
    async fn place(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<(Arc<dyn ExecutionPlan>, Option<String>)> {
        if self.workers.healthy().is_empty()
            || meshq_engine::options::MeshqOptions::of(session.config_options()).local_only
        {
            // No worker answers, or the plan is one that runs inside
            // another (a product defined by SQL): the coordinator runs it.
            let plan = self
                .local
                .create_physical_plan(logical_plan, session)
                .await?;
            return Ok((plan, None));
        }
        let plan = self
            .distributed
            .create_physical_plan(logical_plan, session)
            .await?;
        if !plan.exists(|p| Ok(p.is::<DistributedExec>()))? {
            return Ok((plan, None));
        }
        // Joins send their filters to the scans of the stages below their
        // shuffles: a node passing rows through, and a wait in the scans.
        // The verifier then checks the plan as it is sent.
        let plan = if crate::join_filters::sends_join_filters(session.config_options()) {
            crate::join_filters::export_join_filters(plan)?
        } else {
            plan
        };
        let options = meshq_engine::options::MeshqOptions::of(session.config_options());
        if let Err(why) = verify_distributed(&plan, &self.tables, &options) {
            // The verified plan lost a policy property when it was cut
            // into stages: never sent. The plan made for this node alone
            // is verified as always.
            UNVERIFIED.fetch_add(1, Ordering::Relaxed);
            warn!(%why, "a distributed plan failed the plan verifier; the query runs on the coordinator");
            let plan = self
                .local
                .create_physical_plan(logical_plan, session)
                .await?;
            return Ok((
                plan,
                Some(format!("its stages failed the plan verifier: {why}")),
            ));
        }
        let local_files = session
            .config()
            .get_extension::<meshq_engine::engine::LocalFiles>();
        match tasks_see_whole_inputs(&plan)
            .and_then(|()| every_stage_encodes(&plan, &session.task_ctx(), local_files.as_deref()))
            .and_then(|()| send_masks(&plan, session))
        {
            // `EXPLAIN ANALYZE`: the library's stages and metrics, and
            // the worker each task went to.
            Ok(()) if plan.name() == "DistributedAnalyzeExec" => Ok((
                Arc::new(crate::placement::PlacedAnalyzeExec::new(plan)),
                None,
            )),
            Ok(()) => Ok((plan, None)),
            Err(why) => {
                debug!(%why, "a stage cannot be sent to workers; the query runs on the coordinator");
                let plan = self
                    .local
                    .create_physical_plan(logical_plan, session)
                    .await?;
                let why = match why {
                    datafusion::error::DataFusionError::Plan(m) => m,
                    other => other.to_string(),
                };
                Ok((plan, Some(why)))
            }
        }
    }
}

impl ClusterPlanner {
    /// `EXPLAIN`: meshq's own output, with the physical plan replaced by
    /// the stages the statement would run as, and the workers their tasks
    /// go to, when it would be distributed. (`EXPLAIN ANALYZE` is the
    /// library's, with each stage's metrics, and a row naming the worker
    /// each task ran on: [`crate::placement`].)
    async fn explain(
        &self,
        logical_plan: &LogicalPlan,
        explain: &datafusion::logical_expr::Explain,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        use datafusion::logical_expr::{PlanType, StringifiedPlan};
        use datafusion::physical_plan::explain::ExplainExec;
        let local = self
            .local
            .create_physical_plan(logical_plan, session)
            .await?;
        let Some(output) = local.downcast_ref::<ExplainExec>() else {
            return Ok(local);
        };
        let (statement, why) = self.place(&explain.plan, session).await?;
        if !statement.is::<DistributedExec>() {
            let Some(why) = why else {
                return Ok(local);
            };
            // Stages were made but cannot be sent: say why the
            // coordinator runs the statement alone.
            let plans = output
                .stringified_plans()
                .iter()
                .map(|p| match p.plan_type {
                    PlanType::FinalPhysicalPlan => StringifiedPlan::new(
                        PlanType::FinalPhysicalPlan,
                        format!("{}runs on the coordinator: {why}", p.plan),
                    ),
                    _ => p.clone(),
                })
                .collect();
            return Ok(Arc::new(ExplainExec::new(
                output.schema(),
                plans,
                output.verbose(),
            )));
        }
        let urls = self.workers.healthy();
        let list: Vec<&str> = urls.iter().map(|u| u.as_str()).collect();
        let stages = format!(
            "{}tasks go to the workers that answer: {}",
            datafusion_distributed::display_plan_ascii(statement.as_ref(), false),
            list.join(", ")
        );
        let plans = output
            .stringified_plans()
            .iter()
            .map(|p| match p.plan_type {
                PlanType::FinalPhysicalPlan => {
                    StringifiedPlan::new(PlanType::FinalPhysicalPlan, stages.clone())
                }
                _ => p.clone(),
            })
            .collect();
        Ok(Arc::new(ExplainExec::new(
            output.schema(),
            plans,
            output.verbose(),
        )))
    }
}

/// Distributed plans the verifier refused since the process started (each
/// ran on the coordinator instead).
static UNVERIFIED: AtomicU64 = AtomicU64::new(0);

/// How many distributed plans failed [`verify_distributed`] in this
/// process (and ran on the coordinator): a library change that moves a
/// policy node shows here and in the log.
pub fn unverified_distributions() -> u64 {
    UNVERIFIED.load(Ordering::Relaxed)
}

/// Runs meshq's plan verifier over a distributed plan as its tasks will
/// run it: through the network boundaries to the stages they hold, and
/// over every task's part of a split scan. The boundaries stay in the
/// path, so one between a scan and its barrier is refused. A boundary
/// whose stage is not in the plan, or another node of the library's that
/// hides a plan, fails the check.
pub fn verify_distributed(
    plan: &Arc<dyn ExecutionPlan>,
    tables: &GovernedTables,
    options: &meshq_engine::options::MeshqOptions,
) -> Result<()> {
    verify_stages(plan, tables, options, &Stages)
}

/// Reads datafusion-distributed's plans for the verifier.
struct Stages;

impl StageReader for Stages {
    fn children(&self, node: &Arc<dyn ExecutionPlan>) -> Result<Vec<Arc<dyn ExecutionPlan>>> {
        if let Some(leaf) = node.downcast_ref::<DistributedLeafExec>() {
            return Ok(if leaf.variants().is_empty() {
                vec![Arc::clone(leaf.original())]
            } else {
                leaf.variants().to_vec()
            });
        }
        let children: Vec<_> = node.children().into_iter().cloned().collect();
        if children.is_empty() && node.is_network_boundary() {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "{} holds no stage plan to verify",
                node.name()
            )));
        }
        Ok(children)
    }
}

/// Lists the masks `plan` calls in the statement's [`MaskFunctions`], the
/// list its requests carry to the workers; fails when it cannot (two
/// masks of one name, or a statement without a list).
fn send_masks(plan: &Arc<dyn ExecutionPlan>, session: &dyn Session) -> Result<()> {
    let masks = crate::travel::masks_of(plan)?;
    match session.config().options().extensions.get::<MaskFunctions>() {
        Some(list) if list.is_own() => {
            // Always written, so nothing but this plan's masks travels.
            list.set_all(masks);
            Ok(())
        }
        Some(_) if !masks.is_empty() => Err(datafusion::error::DataFusionError::NotImplemented(
            "the statement has no list of masks of its own".into(),
        )),
        Some(_) => Ok(()),
        None if masks.is_empty() => Ok(()),
        None => Err(datafusion::error::DataFusionError::NotImplemented(
            "the statement has no list of masks for the workers".into(),
        )),
    }
}

/// Fails when a stage run by several tasks feeds a scan split between
/// them into a node that needs all of its input's rows in one place (one
/// partition, or partitions by key), with no network boundary between
/// them. Each task would see only its share of the scan, and answer for
/// that share alone: with one target partition DataFusion aggregates in
/// one step right above the scan (`AggregateExec: mode=Single`), and
/// datafusion-distributed 4.0 still splits the scan below it.
fn tasks_see_whole_inputs(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    check_stage_inputs(plan, 1)
}

/// [`tasks_see_whole_inputs`] from `node`, in a stage of `tasks` tasks.
fn check_stage_inputs(node: &Arc<dyn ExecutionPlan>, tasks: usize) -> Result<()> {
    use datafusion::physical_plan::Distribution;
    let tasks = node
        .as_network_boundary()
        .map_or(tasks, |boundary| boundary.input_stage().task_count());
    if tasks > 1 && !node.is_network_boundary() {
        for (child, needs) in node
            .children()
            .into_iter()
            .zip(node.input_distribution_requirements().into_per_child())
        {
            if !matches!(needs, Distribution::UnspecifiedDistribution)
                && let Some(scan) = split_scan_in_stage(child)
            {
                return Err(datafusion::error::DataFusionError::Plan(format!(
                    "{} needs all of its input ({needs}), but each of the stage's {tasks} tasks would read only its share of {scan}",
                    node.name()
                )));
            }
        }
    }
    for child in node.children() {
        check_stage_inputs(child, tasks)?;
    }
    Ok(())
}

/// The first scan under `node`, in its stage (not through a network
/// boundary), that the library split between the stage's tasks.
fn split_scan_in_stage(node: &Arc<dyn ExecutionPlan>) -> Option<String> {
    if node.is_network_boundary() {
        return None;
    }
    if let Some(leaf) = node.downcast_ref::<DistributedLeafExec>() {
        return (leaf.variants().len() > 1).then(|| leaf.original().name().to_string());
    }
    node.children().into_iter().find_map(split_scan_in_stage)
}

/// Encodes what each [`DistributedExec`] would send: its input, whose
/// network boundaries hold their stages' plans as children, so every
/// stage is encoded as the workers would receive it.
fn every_stage_encodes(
    plan: &Arc<dyn ExecutionPlan>,
    ctx: &Arc<datafusion::execution::TaskContext>,
    local_files: Option<&meshq_engine::engine::LocalFiles>,
) -> Result<()> {
    plan.apply(|node| {
        if node.is::<DistributedExec>() {
            for child in node.children() {
                // Task i receives variant i of each scaled-up leaf: check
                // every variant.
                let tasks = max_variants(child)?;
                for task in 0..tasks.max(1) {
                    let sent = Arc::clone(child).transform_up(|n| {
                        Ok(match n.downcast_ref::<DistributedLeafExec>() {
                            Some(leaf) => Transformed::yes(
                                leaf.variants()
                                    .get(task)
                                    .cloned()
                                    .unwrap_or_else(|| Arc::clone(leaf.original())),
                            ),
                            None => Transformed::no(n),
                        })
                    })?;
                    let sent = sent.data;
                    calls_only_travelling_functions(&sent)?;
                    scans_travel_whole(&sent, local_files)?;
                    MaybeEncoded::Decoded(sent).encode(ctx)?;
                }
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .map(|_| ())
}

/// Fails when a node of `plan` calls a function that may not travel
/// ([`crate::codec::udf_travels`]).
fn calls_only_travelling_functions(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::physical_expr::ScalarFunctionExpr;
    plan.apply(|node| {
        node.apply_expressions(&mut |expr| {
            expr.apply(|e| {
                if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>()
                    && !crate::codec::udf_travels(f.fun())
                {
                    return Err(datafusion::error::DataFusionError::NotImplemented(format!(
                        "{} runs on the coordinator only",
                        f.name()
                    )));
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })
    .map(|_| ())
}

/// Fails when a scan of `plan` holds rows in memory, reads files only
/// this process has (`local_files`: accelerated ports' `parquet` copies,
/// the scratch location), or maps file columns to table columns with an
/// adapter of its own (Iceberg's field ids): datafusion-proto does not
/// carry the adapter, and a worker would map columns by name.
fn scans_travel_whole(
    plan: &Arc<dyn ExecutionPlan>,
    local_files: Option<&meshq_engine::engine::LocalFiles>,
) -> Result<()> {
    scans_travel_whole_under(plan, local_files, false)
}

/// [`scans_travel_whole`] below a node; `field_ids`: inside the scan mark
/// of an Iceberg table read by field id, whose adapter the worker makes
/// again from the mark ([`crate::codec`]).
fn scans_travel_whole_under(
    node: &Arc<dyn ExecutionPlan>,
    local_files: Option<&meshq_engine::engine::LocalFiles>,
    field_ids: bool,
) -> Result<()> {
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let stay = |why: &str| {
        Err(datafusion::error::DataFusionError::NotImplemented(
            why.into(),
        ))
    };
    if let Some(scan) = node.downcast_ref::<DataSourceExec>() {
        let source = scan.data_source().as_ref() as &dyn std::any::Any;
        if source.is::<MemorySourceConfig>() {
            // In-memory rows (accelerated copies, scratch tables) would
            // travel inside the plan.
            return stay("rows held in memory stay on the coordinator");
        }
        if let Some(config) = source.downcast_ref::<FileScanConfig>() {
            if local_files.is_some_and(|l| l.holds(config)) {
                return stay(
                    "a scan of files only the coordinator has (an accelerated copy, the scratch location) runs on the coordinator",
                );
            }
            // Under an Iceberg scan mark, the worker puts the field-id
            // adapter on every file scan: only a scan that has exactly
            // that adapter may go (told by its name, as the trait offers
            // no downcast; any other name stays, failing closed).
            let field_id_adapter = config
                .expr_adapter_factory
                .as_ref()
                .is_some_and(|f| format!("{f:?}").starts_with("FieldIdAdapterFactory "));
            match (field_ids, config.expr_adapter_factory.is_some()) {
                (true, _) if !field_id_adapter => {
                    return stay(
                        "a file scan under an Iceberg scan mark without the field-id adapter runs on the coordinator only",
                    );
                }
                (false, true) => {
                    return stay(
                        "a scan with a column mapping of its own that no scan mark describes runs on the coordinator only",
                    );
                }
                _ => {}
            }
        }
    }
    let field_ids = field_ids
        || node
            .downcast_ref::<meshq_connectors::MeshScanExec>()
            .is_some_and(|s| s.field_ids().is_some());
    for child in node.children() {
        scans_travel_whole_under(child, local_files, field_ids)?;
    }
    Ok(())
}

/// The most variants any scaled-up leaf of `plan` has.
fn max_variants(plan: &Arc<dyn ExecutionPlan>) -> Result<usize> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut most = 0;
    plan.apply(|n| {
        if let Some(leaf) = n.downcast_ref::<DistributedLeafExec>() {
            most = most.max(leaf.variants().len());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(most)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::execution::object_store::ObjectStoreUrl;
    use datafusion::physical_expr_adapter::DefaultPhysicalExprAdapterFactory;

    fn parquet_scan(adapter: bool) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        let source = Arc::new(ParquetSource::new(schema));
        let mut config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source);
        if adapter {
            config = config.with_expr_adapter(Some(Arc::new(DefaultPhysicalExprAdapterFactory)));
        }
        DataSourceExec::from_data_source(config.build())
    }

    fn scan_of(url: &str, file: &str) -> Arc<dyn ExecutionPlan> {
        use datafusion::datasource::listing::PartitionedFile;
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        let source = Arc::new(ParquetSource::new(schema));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::parse(url).unwrap(), source)
            .with_file(PartitionedFile::new(file, 10));
        DataSourceExec::from_data_source(config.build())
    }

    #[test]
    fn settings_default_to_no_compression_and_refuse_stages_made_when_the_query_runs() {
        let coordinator = |settings: &[(&str, &str)]| {
            Coordinator::new(
                Workers::new(vec![]),
                AuthChannelResolver::new(crate::loopback::loopback_key().unwrap(), None),
                settings
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        // Stages' rows travel uncompressed unless the settings say.
        let compression = |c: &Coordinator| -> Vec<String> {
            c.settings
                .iter()
                .filter(|(k, _)| k == COMPRESSION)
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(compression(&coordinator(&[]).unwrap()), ["none"]);
        assert_eq!(
            compression(&coordinator(&[(COMPRESSION, "lz4")]).unwrap()),
            ["lz4"]
        );
        assert!(coordinator(&[(COMPRESSION, "brotli")]).is_err());
        let e = coordinator(&[("distributed.dynamic_task_count", "true")]).unwrap_err();
        assert!(e.contains("cannot be turned on"), "{e}");
        assert!(coordinator(&[("distributed.dynamic_task_count", "false")]).is_ok());
        assert!(coordinator(&[("distributed.no_such_setting", "1")]).is_err());
    }

    #[test]
    fn scans_of_files_only_the_coordinator_has_stay() {
        let local = meshq_engine::engine::LocalFiles::new(vec!["/tmp/meshq-acceleration-7".into()]);
        let copy = scan_of(
            "file://",
            "tmp/meshq-acceleration-7/sales.orders/1/part-0.parquet",
        );
        assert!(scans_travel_whole(&copy, Some(&local)).is_err());
        let shared = scan_of("file://", "srv/mesh/sales/orders/part-0.parquet");
        assert!(scans_travel_whole(&shared, Some(&local)).is_ok());
        // Another process's copies, or a name that only starts alike.
        let other = scan_of("file://", "tmp/meshq-acceleration-70/t/part-0.parquet");
        assert!(scans_travel_whole(&other, Some(&local)).is_ok());
        let scratch = scan_of("scratch://", "t/part-0.parquet");
        assert!(scans_travel_whole(&scratch, Some(&local)).is_err());
        let bucket = scan_of("s3://bucket", "tmp/meshq-acceleration-7/t.parquet");
        assert!(scans_travel_whole(&bucket, Some(&local)).is_ok());
    }

    #[test]
    fn scans_with_their_own_column_mapping_or_rows_in_memory_stay() {
        assert!(scans_travel_whole(&parquet_scan(false), None).is_ok());
        assert!(scans_travel_whole(&parquet_scan(true), None).is_err());
        // Under the mark of an Iceberg scan read by field id, which the
        // worker makes the adapter again from: it travels, but only with
        // the field-id adapter under it.
        let marked =
            |ids: Option<Vec<i32>>, scan: Arc<dyn ExecutionPlan>| -> Arc<dyn ExecutionPlan> {
                Arc::new(meshq_connectors::MeshScanExec::new("d.t", scan).with_field_ids(ids))
            };
        let field_id_scan = {
            let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
            let source = Arc::new(ParquetSource::new(schema));
            let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
                .with_expr_adapter(Some(Arc::new(
                    meshq_connectors::iceberg::FieldIdAdapterFactory::new(Default::default()),
                )));
            DataSourceExec::from_data_source(config.build()) as Arc<dyn ExecutionPlan>
        };
        assert!(
            scans_travel_whole(&marked(Some(vec![]), Arc::clone(&field_id_scan)), None).is_ok()
        );
        assert!(scans_travel_whole(&marked(None, Arc::clone(&field_id_scan)), None).is_err());
        // Another adapter, or none, under a mark: stays.
        assert!(scans_travel_whole(&marked(Some(vec![]), parquet_scan(true)), None).is_err());
        assert!(scans_travel_whole(&marked(Some(vec![]), parquet_scan(false)), None).is_err());
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        let memory = MemorySourceConfig::try_new_exec(&[vec![]], schema, None).unwrap();
        assert!(scans_travel_whole(&(memory as Arc<dyn ExecutionPlan>), None).is_err());
    }

    #[test]
    fn built_in_functions_and_masks_travel_and_nothing_else() {
        use datafusion::logical_expr::{
            ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
        };
        use meshq_engine::policy::udf::{RoundMask, StringMask};
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .build();
        assert!(crate::codec::udf_travels(
            &state.scalar_functions()["upper"]
        ));
        for udf in [
            ScalarUDF::new_from_impl(StringMask::hash("k", "key")),
            ScalarUDF::new_from_impl(StringMask::redact('x', '9')),
            ScalarUDF::new_from_impl(RoundMask::new(2)),
        ] {
            assert!(crate::codec::udf_travels(&udf), "{}", udf.name());
        }
        // A bounded function goes by a built-in's name: it stays.
        let bounded = meshq_engine::functions::bounded_functions(&state);
        assert!(!bounded.is_empty());
        for udf in &bounded {
            assert!(!crate::codec::udf_travels(udf), "{}", udf.name());
        }
        // Another function under a mask's name or a built-in's name stays.
        #[derive(Debug, PartialEq, Eq, Hash)]
        struct Impostor(&'static str, Signature);
        impl ScalarUDFImpl for Impostor {
            fn name(&self) -> &str {
                self.0
            }
            fn signature(&self) -> &Signature {
                &self.1
            }
            fn return_type(&self, _: &[DataType]) -> Result<DataType> {
                Ok(DataType::Utf8)
            }
            fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
                Ok(args.args[0].clone())
            }
        }
        for name in ["mask_hash", "upper"] {
            let udf =
                ScalarUDF::new_from_impl(Impostor(name, Signature::any(1, Volatility::Immutable)));
            assert!(!crate::codec::udf_travels(&udf), "{name}");
        }
    }
}
