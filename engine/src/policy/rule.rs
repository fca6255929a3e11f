//! [`PolicyAnalyzerRule`]: rewrites every scan of a mesh table into
//! `PolicyBarrier ← Projection(masks, same names) ← Filter(row filters) ←
//! TableScan` for the session's principal, before the optimizer runs.
//!
//! It sees every plan however it was made (SQL, prepared statements,
//! DataFrame API, views, subqueries), because DataFusion analyzes every
//! logical plan before optimizing it. The principal comes from the session's
//! config ([`MeshqOptions`]), never from SQL.
//!
//! Every scan it lets through is a [`GovernedScan`] stamped with a
//! [`ScanToken`]; a scan of a table the served mesh version does not serve
//! is refused, and a scan planned on an earlier version (a view, a prepared
//! statement) is moved to the served version of the table, with the served
//! version's policies.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::{TableProvider, provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, LogicalPlanBuilder, TableScan, TableScanBuilder, lit,
};
use datafusion::optimizer::AnalyzerRule;
use meshq_catalog::Principal;
use meshq_connectors::{ContractTableProvider, ScanToken};

use super::barrier::PolicyBarrier;
use super::error::PolicyError;
use super::governed::{GovernedScan, GovernedTables, policy_key};
use super::udf::PrincipalFn;
use crate::options::MeshqOptions;

/// Replaces principal function calls with literals for `principal`.
pub fn bind_principal(expr: Expr, principal: &Principal) -> Result<Transformed<Expr>> {
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
                return Err(DataFusionError::Plan(format!(
                    "{}() takes a string literal",
                    kind.name()
                )));
            }
        };
        Ok(Transformed::yes(lit(
            kind.evaluate(principal, arg.as_deref())
        )))
    })
}

/// The policy rule of one mesh version; the principal comes from each
/// plan's config.
#[derive(Debug)]
pub struct PolicyAnalyzerRule {
    tables: Arc<GovernedTables>,
}

/// Who a plan is analyzed for.
struct Caller<'a> {
    principal: &'a Principal,
    key: u64,
}

impl PolicyAnalyzerRule {
    /// The rule over `tables`.
    pub fn new(tables: Arc<GovernedTables>) -> Self {
        Self { tables }
    }

    fn rewrite_scan(
        &self,
        scan: TableScan,
        caller: &Caller<'_>,
    ) -> Result<Transformed<LogicalPlan>> {
        let provider = source_as_provider(&scan.source)?;
        if let Some(governed) = provider.as_ref().downcast_ref::<GovernedScan>() {
            // Analyzed before, by this rule: the barrier is already above.
            let t = governed.token();
            if t.mesh_version == self.tables.mesh_version() && t.principal == caller.key {
                return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
            }
            return Err(PolicyError::Unverified {
                table: governed.inner().table_name().to_string(),
                reason: "the plan was made for another session or mesh version".into(),
            }
            .into());
        }
        let Some(view) = provider.as_ref().downcast_ref::<ContractTableProvider>() else {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        };
        let key = view.table_name().to_string();
        let policies = Arc::clone(self.tables.policies_for(&key, caller.principal)?);
        let served = match self.tables.get(&key) {
            Some(t) => Arc::clone(&t.provider),
            None => return Err(PolicyError::NotServed { table: key }.into()),
        };
        if !std::ptr::eq(served.as_ref(), view) && served.schema() != view.schema() {
            return Err(PolicyError::Changed {
                table: key,
                detail: "its columns differ".into(),
            }
            .into());
        }
        let masks: Vec<_> = policies.masks_for(caller.principal).collect();
        let filters: Vec<_> = policies.filters_for(caller.principal).collect();
        let token = ScanToken {
            mesh_version: self.tables.mesh_version(),
            principal: caller.key,
            policies: policy_key(&policies, caller.principal),
        };
        let source = provider_as_source(Arc::new(GovernedScan::new(served, token)));
        if masks.is_empty() && filters.is_empty() {
            // Nothing applies to this principal: the scan stays as planned,
            // with its pushed filters and limit.
            let TableScan {
                table_name,
                projection,
                filters,
                fetch,
                statistics_requests,
                ..
            } = scan;
            let scan = TableScanBuilder::new(table_name, source)
                .with_projection(projection)
                .with_filters(filters)
                .with_fetch(fetch)
                .with_statistics_requests(statistics_requests)
                .build()?;
            return Ok(Transformed::yes(LogicalPlan::TableScan(scan)));
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
        let bind = |e: Expr| -> Result<Expr> { Ok(bind_principal(e, caller.principal)?.data) };
        let mut builder = LogicalPlanBuilder::scan(table_ref.clone(), source, None)?;
        let full_schema = Arc::clone(builder.schema());
        let mut applied = Vec::new();
        if !filters.is_empty() {
            let mut bound = Vec::with_capacity(filters.len());
            for f in &filters {
                bound.push(qualify(bind(f.expr.clone())?));
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
                    let bind_row = |e: Expr| bind(qualify(e.clone())).unwrap_or(e);
                    exprs.push(
                        m.apply(column, &bind_row)
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
            node: Arc::new(PolicyBarrier::new(
                key,
                applied,
                unmasked,
                token,
                builder.build()?,
            )),
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
            builder = builder.filter(bind(pred)?)?;
        }
        if let Some(fetch) = scan.fetch {
            builder = builder.limit(0, Some(fetch))?;
        }
        Ok(Transformed::yes(builder.build()?))
    }
}

/// Replaces principal function calls in `plan`'s own expressions, keeping
/// the names the expressions had.
fn bind_node(plan: LogicalPlan, principal: &Principal) -> Result<Transformed<LogicalPlan>> {
    if matches!(plan, LogicalPlan::TableScan(_) | LogicalPlan::Extension(_)) {
        // Scan filters are bound with the scan; extensions are ours.
        return Ok(Transformed::no(plan));
    }
    let names = NamePreserver::new(&plan);
    plan.map_expressions(|expr| {
        let name = names.save(&expr);
        let bound = bind_principal(expr, principal)?;
        Ok(if bound.transformed {
            bound.update_data(|e| name.restore(e))
        } else {
            bound
        })
    })
}

impl AnalyzerRule for PolicyAnalyzerRule {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let options = MeshqOptions::of(config);
        let caller = Caller {
            principal: options.principal(),
            key: options.principal_key(),
        };
        let rewritten = plan.transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(scan) => self.rewrite_scan(scan, &caller),
            other => bind_node(other, caller.principal),
        })?;
        if !rewritten.transformed {
            return Ok(rewritten.data);
        }
        // Masks may change a column's nullability, and bound principal
        // functions are literals; let every node above recompute its schema.
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
