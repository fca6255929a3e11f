//! The plan verifier: the last step of every physical plan a session makes
//! (SQL, prepared statements, views, the DataFrame API, DML and `COPY`
//! inputs), independent of how the plan was built.
//!
//! It refuses to run a plan in which
//! - a scan of mesh data ([`MeshScanExec`]) carries no policy decision, or
//!   one made for another principal or mesh version, or one whose policies
//!   have changed since;
//! - a scan whose principal has masks or row filters is not directly under
//!   the [`PolicyBarrierExec`] built for the same decision, with only policy
//!   and pass-through nodes in between, a projection computing every masked
//!   column and a filter for the row filters;
//! - a file scan outside a mesh scan reads anything but the scratch
//!   location, or a file sink writes anywhere but the scratch or export
//!   location (see [`crate::files`]).
//!
//! The policy rule makes correct plans; the verifier is the defence in depth
//! against a rule, an optimizer pass or a new code path that loses them.

use std::sync::Arc;

use datafusion::datasource::file_format::csv::CsvSink;
use datafusion::datasource::file_format::json::JsonSink;
use datafusion::datasource::file_format::parquet::ParquetSink;
use datafusion::datasource::physical_plan::{FileScanConfig, FileSink};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use meshq_connectors::MeshScanExec;

use super::barrier::PolicyBarrierExec;
use super::error::PolicyError;
use super::governed::{GovernedTables, policy_key};
use crate::files::{EXPORT_SCHEME, SCRATCH_SCHEME};
use crate::options::MeshqOptions;

/// Checks `plan` for the session described by `options`, over `tables`.
pub fn verify_plan(
    plan: &Arc<dyn ExecutionPlan>,
    tables: &GovernedTables,
    options: &MeshqOptions,
) -> Result<()> {
    verify_stages(plan, tables, options, &OneNode)
}

/// How to read a plan that a distributed planner cut into stages, so the
/// verifier checks it as each task will run it. Every node the planner
/// added stays in the path: a network boundary between a scan and its
/// barrier is not a pass-through node, so such a cut (raw rows crossing
/// the network) is refused.
pub trait StageReader {
    /// The plans below `node`: its children, a boundary's stage, or every
    /// task's part of a scan split across tasks. An error when they cannot
    /// be read (the plan is then refused).
    fn children(&self, node: &Arc<dyn ExecutionPlan>) -> Result<Vec<Arc<dyn ExecutionPlan>>>;
}

/// A plan run by one node.
struct OneNode;

impl StageReader for OneNode {
    fn children(&self, node: &Arc<dyn ExecutionPlan>) -> Result<Vec<Arc<dyn ExecutionPlan>>> {
        Ok(node.children().into_iter().cloned().collect())
    }
}

/// [`verify_plan`] for a plan cut into stages, read through `reader`: every
/// policy node must be where the verifier requires it in the plan each
/// task runs.
pub fn verify_stages(
    plan: &Arc<dyn ExecutionPlan>,
    tables: &GovernedTables,
    options: &MeshqOptions,
    reader: &dyn StageReader,
) -> Result<()> {
    let mut path: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    walk(plan, &mut path, tables, options, false, reader)
}

fn walk(
    node: &Arc<dyn ExecutionPlan>,
    path: &mut Vec<Arc<dyn ExecutionPlan>>,
    tables: &GovernedTables,
    options: &MeshqOptions,
    in_mesh_scan: bool,
    reader: &dyn StageReader,
) -> Result<()> {
    if let Some(defined) = node.downcast_ref::<crate::defined::DefinedExec>() {
        // A product defined by SQL: its plan is checked as the principal
        // it runs as, from the top.
        return walk(
            defined.input(),
            &mut Vec::new(),
            tables,
            defined.options(),
            false,
            reader,
        );
    }
    if let Some(scan) = node.downcast_ref::<MeshScanExec>() {
        check_scan(scan, path, tables, options)?;
    } else if !in_mesh_scan {
        check_files(node)?;
    }
    let in_mesh_scan = in_mesh_scan || node.is::<MeshScanExec>();
    path.push(Arc::clone(node));
    for child in reader.children(node)? {
        walk(&child, path, tables, options, in_mesh_scan, reader)?;
    }
    path.pop();
    Ok(())
}

fn refuse(table: &str, reason: impl Into<String>) -> datafusion::error::DataFusionError {
    PolicyError::Unverified {
        table: table.to_string(),
        reason: reason.into(),
    }
    .into()
}

/// Nodes that may sit between a barrier and its scan: the policy nodes and
/// those DataFusion inserts to move batches.
fn pass_through_or_policy(node: &dyn ExecutionPlan) -> bool {
    node.is::<ProjectionExec>()
        || node.is::<FilterExec>()
        || node.is::<RepartitionExec>()
        || node.is::<CoalescePartitionsExec>()
        || node.is::<CooperativeExec>()
        || node.name() == "CoalesceBatchesExec"
}

fn check_scan(
    scan: &MeshScanExec,
    path: &[Arc<dyn ExecutionPlan>],
    tables: &GovernedTables,
    options: &MeshqOptions,
) -> Result<()> {
    let table = scan.table();
    let Some(token) = scan.token() else {
        return Err(refuse(table, "the scan carries no policy decision"));
    };
    if token.mesh_version != tables.mesh_version() {
        return Err(refuse(
            table,
            "the scan was planned on another mesh version",
        ));
    }
    if token.principal != options.principal_key() {
        return Err(refuse(table, "the scan was planned for another principal"));
    }
    let principal = options.principal();
    let policies = tables.policies_for(table, principal)?;
    if token.policies != policy_key(policies, principal) {
        return Err(refuse(
            table,
            "the table's policies changed since it was planned",
        ));
    }
    if token.policies == 0 {
        return Ok(());
    }
    // The barrier lets no filter through to such a scan; a dynamic filter
    // there would be evaluated on raw values.
    if !scan.dynamic_filters().is_empty() {
        return Err(refuse(
            table,
            "a scan with policies for the principal carries dynamic filters",
        ));
    }
    // The nearest barrier above, and what lies between.
    let mut between: Vec<&dyn ExecutionPlan> = Vec::new();
    let mut barrier = None;
    for node in path.iter().rev() {
        if let Some(b) = node.downcast_ref::<PolicyBarrierExec>() {
            barrier = Some(b);
            break;
        }
        between.push(node.as_ref());
    }
    let Some(barrier) = barrier else {
        return Err(refuse(table, "no policy barrier above the scan"));
    };
    if barrier.table() != table || barrier.token() != token {
        return Err(refuse(
            table,
            format!(
                "the barrier above the scan belongs to `{}` or to another decision",
                barrier.table()
            ),
        ));
    }
    if let Some(other) = between.iter().find(|n| !pass_through_or_policy(**n)) {
        return Err(refuse(
            table,
            format!("{} between the barrier and the scan", other.name()),
        ));
    }
    let outputs = barrier.schema();
    for mask in policies.masks_for(principal) {
        if outputs.field_with_name(&mask.column).is_err() {
            // Not read by the query (pruned below the barrier).
            continue;
        }
        let masked = between.iter().any(|n| {
            n.downcast_ref::<ProjectionExec>().is_some_and(|p| {
                p.expr()
                    .iter()
                    .any(|e| e.alias == mask.column && !e.expr.is::<Column>())
            })
        });
        if !masked {
            return Err(refuse(
                table,
                format!("column `{}` is not masked below the barrier", mask.column),
            ));
        }
    }
    // The row filters run in a filter below the barrier, or the format's
    // scan took them over.
    if policies.filters_for(principal).next().is_some()
        && !between.iter().any(|n| n.is::<FilterExec>())
        && scan.absorbed_filters().is_empty()
    {
        return Err(refuse(table, "no row filter below the barrier"));
    }
    Ok(())
}

/// Files read or written outside a mesh scan stay in the locations SQL may
/// use.
fn check_files(node: &Arc<dyn ExecutionPlan>) -> Result<()> {
    if let Some(source) = node.downcast_ref::<DataSourceExec>()
        && let Some(files) = source.data_source().downcast_ref::<FileScanConfig>()
    {
        let url = files.object_store_url.as_str();
        if !url.starts_with(&format!("{SCRATCH_SCHEME}://")) {
            return Err(PolicyError::Location {
                what: "reading files".into(),
                location: url.to_string(),
                reason: "only the scratch location (files.scratch) can be read outside the mesh's own tables".into(),
            }
            .into());
        }
    }
    if let Some(sink) = node.downcast_ref::<DataSinkExec>() {
        let sink = sink.sink();
        let config = if let Some(s) = sink.downcast_ref::<CsvSink>() {
            Some(s.config())
        } else if let Some(s) = sink.downcast_ref::<JsonSink>() {
            Some(s.config())
        } else {
            sink.downcast_ref::<ParquetSink>().map(|s| s.config())
        };
        if let Some(config) = config {
            let url = config.object_store_url.as_str();
            let allowed = [SCRATCH_SCHEME, EXPORT_SCHEME]
                .iter()
                .any(|s| url.starts_with(&format!("{s}://")));
            if !allowed {
                return Err(PolicyError::Location {
                    what: "writing files".into(),
                    location: url.to_string(),
                    reason: "only the export (files.export) and scratch (files.scratch) locations can be written".into(),
                }
                .into());
            }
        }
    }
    Ok(())
}
