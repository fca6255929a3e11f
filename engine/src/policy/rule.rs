//! [`PolicyAnalyzerRule`]: rewrites every scan of a governed table into
//! `PolicyBarrier ← Projection(masks, same names) ← Filter(row filters) ←
//! TableScan` for the session's principal, before the optimizer runs.
//!
//! It sees every plan however it was made (SQL, prepared statements,
//! DataFrame API, views, subqueries), because DataFusion analyzes every
//! logical plan before optimizing it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::error::Result;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, LogicalPlanBuilder, TableScan, lit};
use datafusion::optimizer::AnalyzerRule;
use meshq_catalog::Principal;
use meshq_connectors::ContractTableProvider;

use super::barrier::PolicyBarrier;
use super::compile::TablePolicies;
use super::error::PolicyError;
use super::udf::PrincipalFn;

/// A table's policies as loaded: compiled, or broken (unreadable).
#[derive(Debug, Clone)]
pub enum TableGovernance {
    /// Ready to enforce.
    Ready(Arc<TablePolicies>),
    /// A policy cannot be built; reads fail with this error.
    Broken(PolicyError),
}

/// Policies of every served table, by `domain.table`.
pub type PolicyCatalog = HashMap<String, TableGovernance>;

/// Replaces principal function calls with literals for `principal`.
pub fn bind_principal(expr: Expr, principal: &Principal) -> Result<Expr> {
    expr.transform(|e| {
        let Expr::ScalarFunction(f) = &e else {
            return Ok(Transformed::no(e));
        };
        let Some(kind) = PrincipalFn::from_name(f.func.name()) else {
            return Ok(Transformed::no(e));
        };
        let arg = match f.args.first() {
            None => None,
            Some(Expr::Literal(
                ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v),
                _,
            )) => v.clone(),
            Some(_) => {
                return Err(datafusion::error::DataFusionError::Plan(format!(
                    "{}() takes a string literal",
                    kind.name()
                )));
            }
        };
        Ok(Transformed::yes(lit(
            kind.evaluate(principal, arg.as_deref())
        )))
    })
    .map(|t| t.data)
}

/// The session's policy rule.
#[derive(Debug)]
pub struct PolicyAnalyzerRule {
    principal: Arc<Principal>,
    catalog: Arc<PolicyCatalog>,
}

impl PolicyAnalyzerRule {
    /// The rule for one principal.
    pub fn new(principal: Arc<Principal>, catalog: Arc<PolicyCatalog>) -> Self {
        Self { principal, catalog }
    }

    fn rewrite_scan(&self, scan: TableScan) -> Result<Transformed<LogicalPlan>> {
        let provider = source_as_provider(&scan.source)?;
        let Some(view) = provider.as_ref().downcast_ref::<ContractTableProvider>() else {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        };
        let key = view.table_name().to_string();
        let policies = match self.catalog.get(&key) {
            None => return Ok(Transformed::no(LogicalPlan::TableScan(scan))),
            Some(TableGovernance::Broken(e)) => return Err(e.clone().into()),
            Some(TableGovernance::Ready(p)) => Arc::clone(p),
        };
        if let Some(roles) = &policies.read_roles
            && !self.principal.has_any_role(roles)
        {
            return Err(PolicyError::Denied {
                principal: self.principal.display_name().to_string(),
                table: key,
                roles: roles.join(", "),
            }
            .into());
        }
        let masks: Vec<_> = policies.masks_for(&self.principal).collect();
        let filters: Vec<_> = policies.filters_for(&self.principal).collect();
        if masks.is_empty() && filters.is_empty() {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }

        let table_ref = scan.table_name.clone();
        let qualify = |e: Expr| -> Expr {
            e.transform(|e| match e {
                Expr::Column(c) if c.relation.is_none() => Ok(Transformed::yes(Expr::Column(
                    Column::new(Some(table_ref.clone()), c.name),
                ))),
                other => Ok(Transformed::no(other)),
            })
            .map(|t| t.data)
            .unwrap_or_else(|_| unreachable!("column qualification cannot fail"))
        };
        let mut builder =
            LogicalPlanBuilder::scan(table_ref.clone(), Arc::clone(&scan.source), None)?;
        let full_schema = Arc::clone(builder.schema());
        let mut applied = Vec::new();
        if !filters.is_empty() {
            let mut bound = Vec::with_capacity(filters.len());
            for f in &filters {
                bound.push(qualify(bind_principal(f.expr.clone(), &self.principal)?));
                applied.push(format!("filter:{}", f.id));
            }
            if let Some(pred) = conjunction(bound) {
                builder = builder.filter(pred)?;
            }
        }
        let mut unmasked = BTreeSet::new();
        let mut exprs = Vec::with_capacity(full_schema.fields().len());
        for field in full_schema.fields() {
            let name = field.name();
            let column = Expr::Column(Column::new(Some(table_ref.clone()), name.clone()));
            match masks.iter().find(|m| &m.column == name) {
                Some(m) => {
                    let bind =
                        |e: Expr| bind_principal(qualify(e.clone()), &self.principal).unwrap_or(e);
                    exprs.push(
                        m.apply(column, &bind)
                            .alias_qualified(Some(table_ref.clone()), name),
                    );
                    applied.push(format!("{name}:{}", m.kind));
                }
                None => {
                    unmasked.insert(name.clone());
                    exprs.push(column);
                }
            }
        }
        builder = builder.project(exprs)?;
        let barrier = LogicalPlan::Extension(Extension {
            node: Arc::new(PolicyBarrier::new(key, applied, unmasked, builder.build()?)),
        });
        let mut builder = LogicalPlanBuilder::from(barrier);
        if let Some(projection) = &scan.projection {
            let cols: Vec<Expr> = projection
                .iter()
                .map(|&i| {
                    Expr::Column(Column::new(
                        Some(table_ref.clone()),
                        full_schema.field(i).name().clone(),
                    ))
                })
                .collect();
            builder = builder.project(cols)?;
        }
        if let Some(pred) = conjunction(scan.filters.clone()) {
            builder = builder.filter(pred)?;
        }
        if let Some(fetch) = scan.fetch {
            builder = builder.limit(0, Some(fetch))?;
        }
        Ok(Transformed::yes(builder.build()?))
    }
}

impl AnalyzerRule for PolicyAnalyzerRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let rewritten = plan.transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(scan) => self.rewrite_scan(scan),
            other => Ok(Transformed::no(other)),
        })?;
        if !rewritten.transformed {
            return Ok(rewritten.data);
        }
        // Masks may change a column's nullability; let every node above a
        // rewritten scan recompute its schema.
        rewritten
            .data
            .transform_up_with_subqueries(|node| {
                let recomputed = node.recompute_schema()?;
                Ok(Transformed::new(
                    recomputed,
                    true,
                    TreeNodeRecursion::Continue,
                ))
            })
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "meshq_policy"
    }
}

/// The table a plan node scans, when it is a mesh table (for audits and
/// tests).
pub fn scanned_table(scan: &TableScan) -> Option<String> {
    let provider = source_as_provider(&scan.source).ok()?;
    provider
        .as_ref()
        .downcast_ref::<ContractTableProvider>()
        .map(|v| v.table_name().to_string())
}
