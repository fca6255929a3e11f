//! Products defined by SQL (`format: meshq-sql`): a `SELECT` over other
//! products' tables, evaluated with the rights of the product's own
//! principal (its `runAs`), then served under its own contract.
//!
//! Two layers of policy apply, in this order:
//! 1. The inputs' policies, for the `runAs` principal: the statement is
//!    planned in a session of that principal, so it sees what that
//!    principal may see (hashed ids unless it reads PII, its row filters).
//! 2. The product's own contract, for the caller: [`DefinedTable`] is a
//!    governed table like any other, so its masks, row filters and read
//!    roles are planned above its scan, behind the barrier.
//!
//! The caller's predicates reach [`DefinedTable::scan`] only when the
//! barrier lets them through (leakproof comparisons on columns the
//! product does not mask for the caller); they are applied to the
//! statement's output and pushed down from there by the definer's own
//! planning, which stops them at the inputs' barriers.
//!
//! The table's columns have the contract's types; the statement's output
//! is cast to them. [`verify`] checks, once a mesh version is assembled,
//! that every statement parses, has no cycle, plans as its principal and
//! gives the contract's columns; a product that fails is reported and its
//! reads refused with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, DataFusionError, Result};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, cast};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use meshq_catalog::odcs::LogicalType;
use meshq_catalog::{ColumnDef, Location, Problem, TableDef};

use crate::engine::{Engine, WeakEngine};
use crate::options::MeshqOptions;

/// A product defined by SQL, as a table.
#[derive(Debug)]
pub struct DefinedTable {
    def: Arc<TableDef>,
    query: String,
    run_as: String,
    schema: SchemaRef,
    /// The mesh version it belongs to, set once that version is built.
    engine: OnceLock<WeakEngine>,
    /// Why it cannot be read, when [`verify`] found a reason.
    broken: OnceLock<String>,
}

/// The Arrow type a product defined by SQL serves for a contract column:
/// the `physicalType`'s decimal precision and scale when it names them,
/// else the logical type's.
pub(crate) fn served_type(col: &ColumnDef) -> Option<DataType> {
    if let Some(physical) = col.physical_type.as_deref() {
        let upper = physical.to_ascii_uppercase().replace(' ', "");
        for prefix in ["DECIMAL(", "NUMERIC("] {
            if let Some(args) = upper.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'))
                && let Some((p, s)) = args.split_once(',')
                && let (Ok(p), Ok(s)) = (p.parse::<u8>(), s.parse::<i8>())
            {
                return Some(DataType::Decimal128(p, s));
            }
        }
    }
    Some(match col.logical_type? {
        LogicalType::String => DataType::Utf8,
        LogicalType::Integer => DataType::Int64,
        LogicalType::Number => DataType::Float64,
        LogicalType::Boolean => DataType::Boolean,
        LogicalType::Date => DataType::Date32,
        LogicalType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        LogicalType::Time => DataType::Time64(TimeUnit::Microsecond),
        LogicalType::Object | LogicalType::Array => return None,
    })
}

impl DefinedTable {
    /// The table for `def` (a `Location::Sql` table); a column without a
    /// servable type is reported by [`verify`].
    pub(crate) fn new(def: Arc<TableDef>) -> Self {
        let query = match &def.source.location {
            Location::Sql { query, .. } => query.clone(),
            other => unreachable!("not a SQL-defined table: {other}"),
        };
        let schema = Arc::new(Schema::new(
            def.columns
                .iter()
                .map(|c| Field::new(&c.name, served_type(c).unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        ));
        Self {
            run_as: def.run_as.clone().unwrap_or_default(),
            def,
            query,
            schema,
            engine: OnceLock::new(),
            broken: OnceLock::new(),
        }
    }

    /// Why it cannot be read, when [`verify`] refused it.
    pub(crate) fn broken(&self) -> Option<&String> {
        self.broken.get()
    }

    /// Its `domain.table`.
    pub(crate) fn qualified_name(&self) -> String {
        self.def.qualified_name()
    }

    /// Binds the table to the mesh version that serves it.
    pub(crate) fn bind(&self, engine: WeakEngine) {
        let _ = self.engine.set(engine);
    }

    fn name(&self) -> String {
        self.def.qualified_name()
    }

    fn refuse(&self, why: &str) {
        let _ = self.broken.set(format!(
            "table `{}` (product `{}`, defined by SQL) cannot be read: {why}",
            self.name(),
            self.def.product_id
        ));
    }

    /// The statement planned as the `runAs` principal, its output renamed
    /// and cast to the contract's columns, and that session's options.
    async fn defined_frame(&self, engine: &Engine) -> Result<(DataFrame, MeshqOptions)> {
        let principal = engine
            .mesh()
            .config
            .principal(&self.run_as)
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "runAs `{}` is not a principal of meshq.yaml",
                    self.run_as
                ))
            })?;
        let session = engine.session(&principal);
        let plan = session.plan(&self.query).await?;
        let mut state = session.context().state();
        // Planned here, inside its caller's plan: never over workers.
        if let Some(o) = state
            .config_mut()
            .options_mut()
            .extensions
            .get_mut::<MeshqOptions>()
        {
            o.local_only = true;
        }
        let options = MeshqOptions::of(state.config_options());
        let frame = DataFrame::new(state, plan);
        let output = frame.schema().clone();
        let mut exprs = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let found = output
                .columns()
                .into_iter()
                .filter(|c| c.name == *field.name())
                .collect::<Vec<_>>();
            let column = match found.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(DataFusionError::Plan(format!(
                        "column `{}` of the contract is not in the SQL's output",
                        field.name()
                    )));
                }
                _ => {
                    return Err(DataFusionError::Plan(format!(
                        "the SQL's output has several columns named `{}`; alias them apart",
                        field.name()
                    )));
                }
            };
            exprs.push(cast(Expr::Column(column), field.data_type().clone()).alias(field.name()));
        }
        Ok((frame.select(exprs)?, options))
    }
}

#[async_trait]
impl TableProvider for DefinedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // None: a caller's predicate given to the definer's plan would be
        // pushed below its own filters, joins and HAVING, and run on rows
        // the product never serves. It runs above, on the product's rows.
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(why) = self.broken.get() {
            return Err(DataFusionError::Plan(why.clone()));
        }
        let engine = self
            .engine
            .get()
            .and_then(WeakEngine::upgrade)
            .ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "table `{}`: the mesh version it was planned in is no longer served; run the query again",
                    self.name()
                ))
            })?;
        // A product read inside its own plan (a cycle the load check
        // could not see, such as an unqualified self-reference) stops
        // here, not in a stack overflow.
        if !filters.is_empty() {
            return Err(DataFusionError::Internal(format!(
                "table `{}`: a filter reached a product defined by SQL, which accepts none",
                self.name()
            )));
        }
        let depth = NESTING.try_with(|d| *d).unwrap_or(0);
        if depth >= MAX_NESTING {
            return Err(DataFusionError::Plan(format!(
                "table `{}`: products defined by SQL nest more than {MAX_NESTING} deep here; its SQL probably reads itself",
                self.name()
            )));
        }
        NESTING
            .scope(depth + 1, self.plan_for_caller(&engine, projection, limit))
            .await
    }
}

tokio::task_local! {
    /// How many products defined by SQL are being planned, one inside the
    /// other, on this task.
    static NESTING: usize;
}

/// The deepest nesting of products defined by SQL planned.
const MAX_NESTING: usize = 16;

impl DefinedTable {
    async fn plan_for_caller(
        &self,
        engine: &Engine,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (mut frame, options) = self.defined_frame(engine).await.map_err(|e| {
            DataFusionError::Context(
                format!(
                    "table `{}` (product `{}`, defined by SQL as `{}`)",
                    self.name(),
                    self.def.product_id,
                    self.run_as
                ),
                Box::new(e),
            )
        })?;
        if let Some(p) = projection {
            let columns: Vec<Expr> = p
                .iter()
                .map(|&i| Expr::Column(Column::new_unqualified(self.schema.field(i).name())))
                .collect();
            frame = frame.select(columns)?;
        }
        if let Some(n) = limit {
            frame = frame.limit(0, Some(n))?;
        }
        let plan = frame.create_physical_plan().await?;
        Ok(Arc::new(DefinedExec {
            input: plan,
            table: self.name(),
            run_as: self.run_as.clone(),
            options: Arc::new(options),
        }))
    }
}

/// The plan of a product defined by SQL, made (and verified) by its
/// `runAs` principal's session, as a leaf of the caller's plan: the
/// caller's optimizer rules do not reach into it, nothing of the caller's
/// plan crosses it, and `EXPLAIN` does not show it. The plan verifier
/// checks what is inside it again as that principal.
#[derive(Debug)]
pub struct DefinedExec {
    input: Arc<dyn ExecutionPlan>,
    table: String,
    run_as: String,
    options: Arc<MeshqOptions>,
}

impl DefinedExec {
    /// The definer's plan.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The definer's session options (its principal).
    pub fn options(&self) -> &MeshqOptions {
        &self.options
    }
}

impl DisplayAs for DefinedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DefinedExec: table={} run_as={}",
            self.table, self.run_as
        )
    }
}

impl ExecutionPlan for DefinedExec {
    fn name(&self) -> &str {
        "DefinedExec"
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    /// None: the definer's plan is not the caller's to see (EXPLAIN) or
    /// to rewrite (the caller's optimizer rules).
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "DefinedExec has no children".into(),
            ));
        }
        Ok(self)
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self {
            input: datafusion::physical_plan::execution_plan::reset_plan_states(Arc::clone(
                &self.input,
            ))?,
            table: self.table.clone(),
            run_as: self.run_as.clone(),
            options: Arc::clone(&self.options),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

/// The `domain.table` names `query` reads, or why it is not one query.
pub(crate) fn inputs_of(query: &str) -> std::result::Result<BTreeSet<String>, String> {
    use datafusion::sql::parser::{DFParser, Statement};
    let statements = DFParser::parse_sql(query).map_err(|e| e.to_string())?;
    let [statement] = statements.iter().collect::<Vec<_>>()[..] else {
        return Err(format!(
            "it holds {} statements; a product is one SELECT",
            statements.len()
        ));
    };
    let Statement::Statement(s) = statement else {
        return Err("it is not a SELECT".into());
    };
    if !matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_)) {
        return Err("it is not a SELECT".into());
    }
    let (tables, _ctes) = datafusion::sql::resolve::resolve_table_references(statement, true)
        .map_err(|e| e.to_string())?;
    Ok(tables
        .into_iter()
        .map(|t| match t.schema() {
            Some(s) => format!("{s}.{}", t.table()),
            None => t.table().to_string(),
        })
        .collect())
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    /// Problems to report with the mesh version.
    pub problems: Vec<Problem>,
    /// The tables each SQL-defined table reads (`domain.table`), for
    /// lineage.
    pub inputs: BTreeMap<String, BTreeSet<String>>,
}

/// Checks every SQL-defined table of `engine`: one SELECT, no cycle
/// through other SQL-defined tables, a `runAs` principal of meshq.yaml,
/// planned as that principal, and an output with the contract's columns
/// in types they can be read as. A table that fails is refused with the
/// reason.
pub(crate) async fn verify(engine: &Engine, tables: &[Arc<DefinedTable>]) -> Verified {
    let mut out = Verified::default();
    let problem = |t: &DefinedTable, why: &str| {
        Problem::error(
            engine.mesh().display_path(&t.def.contract_file),
            format!(
                "table `{}` (product `{}`, defined by SQL): {why}",
                t.name(),
                t.def.product_id
            ),
        )
    };
    // Parse, and find each one's inputs.
    let mut inputs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in tables {
        match inputs_of(&t.query) {
            Ok(i) => {
                inputs.insert(t.name(), i);
            }
            Err(why) => {
                let why = format!("its SQL cannot be used: {why}");
                out.problems.push(problem(t, &why));
                t.refuse(&why);
            }
        }
    }
    // Cycles among SQL-defined tables.
    let defined: BTreeSet<String> = tables.iter().map(|t| t.name()).collect();
    for t in tables {
        if let Some(cycle) = cycle_from(&t.name(), &inputs, &defined) {
            let products: Vec<String> = cycle
                .iter()
                .filter_map(|n| tables.iter().find(|t| t.name() == *n))
                .map(|t| format!("`{}`", t.def.product_id))
                .collect();
            let why = format!(
                "its SQL forms a cycle through {} ({}); a product cannot be built from itself",
                products.join(", "),
                cycle.join(" → ")
            );
            out.problems.push(problem(t, &why));
            t.refuse(&why);
        }
    }
    for t in tables {
        if t.broken.get().is_some() {
            continue;
        }
        if let Some(c) = t.def.columns.iter().find(|c| served_type(c).is_none()) {
            let why = format!(
                "column `{}` needs a logicalType of string, integer, number, boolean, date, timestamp or time",
                c.name
            );
            out.problems.push(problem(t, &why));
            t.refuse(&why);
            continue;
        }
        if let Err(why) = may_run(engine, t) {
            out.problems.push(problem(t, &why));
            t.refuse(&why);
            continue;
        }
        match check_output(engine, t).await {
            Ok(warnings) => {
                for w in warnings {
                    out.problems.push(Problem::warning(
                        engine.mesh().display_path(&t.def.contract_file),
                        format!("table `{}`: {w}", t.name()),
                    ));
                }
            }
            Err(why) => {
                out.problems.push(problem(t, &why));
                t.refuse(&why);
            }
        }
    }
    out.inputs = inputs;
    out
}

/// Whether `meshq.yaml` lets `t`'s `runAs` principal run it: a service
/// principal (no password: nobody logs in as it) whose `runs` names the
/// product. A product descriptor alone cannot borrow any
/// principal's rights.
fn may_run(engine: &Engine, t: &DefinedTable) -> std::result::Result<(), String> {
    let Some(p) = engine
        .mesh()
        .config
        .principals
        .iter()
        .find(|p| p.name == t.run_as)
    else {
        return Err(format!(
            "runAs `{}` is not a principal of meshq.yaml; declare it (without a password) under `principals`, with `runs: [{}]`",
            t.run_as, t.def.product_id
        ));
    };
    if p.password_hash.is_some() {
        return Err(format!(
            "runAs `{}` can log in with a password; a product runs as a service principal nobody logs in as (one without `password_hash`)",
            t.run_as
        ));
    }
    // Product ids only: a descriptor chooses its own domain.
    if !p.runs.iter().any(|r| *r == t.def.product_id) {
        return Err(format!(
            "meshq.yaml does not let `{}` run this product; add `runs: [{}]` to that principal",
            t.run_as, t.def.product_id
        ));
    }
    Ok(())
}

/// The SQL planned as `t`'s principal: an error when it fails or an
/// output column drifts from the contract; warnings for output columns
/// the contract does not declare.
async fn check_output(
    engine: &Engine,
    t: &DefinedTable,
) -> std::result::Result<Vec<String>, String> {
    let principal = engine
        .mesh()
        .config
        .principal(&t.run_as)
        .expect("checked by the caller");
    let session = engine.session(&principal);
    let plan = session.plan(&t.query).await.map_err(|e| {
        format!(
            "its SQL cannot be planned as `{}`: {}",
            t.run_as,
            crate::error::error_message(&e)
        )
    })?;
    // Its own table among the scans of its plan: a cycle its text did not
    // show (an unqualified name).
    let own = t.name();
    let mut reads_itself = false;
    let _ = plan.apply(|node| {
        if let datafusion::logical_expr::LogicalPlan::TableScan(s) = node
            && s.table_name.table() == t.def.name
            && s.table_name.schema() == Some(t.def.domain.as_str())
        {
            reads_itself = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    if reads_itself {
        return Err(format!(
            "its SQL forms a cycle: it reads `{own}`, itself; a product cannot be built from itself"
        ));
    }
    let output = plan.schema();
    let mut warnings = Vec::new();
    for c in &t.def.columns {
        let found: Vec<_> = output
            .fields()
            .iter()
            .filter(|f| f.name() == &c.name)
            .collect();
        let field = match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(format!(
                    "contract drift: column `{}` is not in the SQL's output",
                    c.name
                ));
            }
            _ => {
                return Err(format!(
                    "the SQL's output has several columns named `{}`; alias them apart",
                    c.name
                ));
            }
        };
        if let Some(expected) = meshq_connectors::types::type_mismatch(c, field.data_type()) {
            return Err(format!(
                "contract drift: column `{}`: the SQL gives {} but the contract says {expected}",
                c.name,
                field.data_type()
            ));
        }
    }
    for f in output.fields() {
        if !t.def.columns.iter().any(|c| c.name == *f.name()) {
            warnings.push(format!(
                "the SQL's output column `{}` is not in the contract; it is not served",
                f.name()
            ));
        }
    }
    Ok(warnings)
}

/// A cycle of SQL-defined tables through `start`, as names from `start`
/// back to it.
fn cycle_from(
    start: &str,
    inputs: &BTreeMap<String, BTreeSet<String>>,
    defined: &BTreeSet<String>,
) -> Option<Vec<String>> {
    fn walk(
        node: &str,
        start: &str,
        inputs: &BTreeMap<String, BTreeSet<String>>,
        defined: &BTreeSet<String>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in inputs.get(node).into_iter().flatten() {
            if !defined.contains(next) {
                continue;
            }
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(next, start, inputs, defined, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    walk(start, start, inputs, defined, &mut path, &mut seen).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_the_tables_the_select_reads() {
        let i = inputs_of(
            "WITH o AS (SELECT * FROM sales.orders) SELECT p.x FROM customers.profiles p JOIN o ON true",
        )
        .unwrap();
        assert_eq!(
            i.into_iter().collect::<Vec<_>>(),
            vec!["customers.profiles", "sales.orders"]
        );
        assert!(inputs_of("DROP TABLE sales.orders").is_err());
        assert!(inputs_of("SELECT 1; SELECT 2").is_err());
    }

    #[test]
    fn a_cycle_is_found_from_each_member() {
        let defined: BTreeSet<String> = ["a.x", "b.y", "c.z"].map(String::from).into();
        let mut inputs = BTreeMap::new();
        inputs.insert("a.x".to_string(), BTreeSet::from(["b.y".to_string()]));
        inputs.insert(
            "b.y".to_string(),
            BTreeSet::from(["a.x".to_string(), "s.t".to_string()]),
        );
        inputs.insert("c.z".to_string(), BTreeSet::from(["a.x".to_string()]));
        assert_eq!(
            cycle_from("a.x", &inputs, &defined),
            Some(vec!["a.x".into(), "b.y".into(), "a.x".into()])
        );
        assert!(cycle_from("c.z", &inputs, &defined).is_none());
    }
}
