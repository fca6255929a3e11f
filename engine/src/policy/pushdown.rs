//! [`PolicyPushdownRule`]: moves *leakproof* user predicates across a
//! [`PolicyBarrier`] so partition and row-group pruning still work.
//!
//! A predicate is leakproof when evaluating it cannot fail or depend on
//! anything but the row: a column compared with a literal or another column,
//! `IS [NOT] NULL`, `IN` a list of literals, `BETWEEN` literals, `LIKE` a
//! literal pattern, and `AND`/`OR`/`NOT` of those. Only predicates over
//! columns the barrier passes through unmasked move; anything else stays
//! above, evaluated only on rows the policy let through — predicates that
//! name no column at all (`1 / CAST(random() >= 0.5 AS INT) = 1`) included.
//!
//! DataFusion's own filter pushdown would move a predicate that names no
//! column through any plan extension, barrier included;
//! [`BarrierAwarePushDownFilter`] runs it everywhere but directly above a
//! barrier.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::error::Result;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{BinaryExpr, Expr, Extension, Filter, LogicalPlan, Operator};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use super::barrier::PolicyBarrier;

/// The optimizer rule; runs right after DataFusion's filter pushdown.
#[derive(Debug, Default)]
pub struct PolicyPushdownRule;

/// A literal value. Casts are not: a cast of a literal can fail, and the
/// optimizer has folded the ones that cannot by the time this rule runs.
fn is_literal(e: &Expr) -> bool {
    matches!(e, Expr::Literal(..))
}

fn plain_column<'a>(e: &'a Expr, barrier: &PolicyBarrier) -> Option<&'a str> {
    match e {
        Expr::Column(c) if barrier.unmasked.contains(&c.name) => Some(&c.name),
        _ => None,
    }
}

/// Whether `e` is leakproof over the barrier's unmasked columns.
pub fn is_leakproof(e: &Expr, barrier: &PolicyBarrier) -> bool {
    let operand = |x: &Expr| plain_column(x, barrier).is_some() || is_literal(x);
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => {
                is_leakproof(left, barrier) && is_leakproof(right, barrier)
            }
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => {
                operand(left)
                    && operand(right)
                    && (plain_column(left, barrier).is_some()
                        || plain_column(right, barrier).is_some())
            }
            _ => false,
        },
        Expr::Not(inner) => is_leakproof(inner, barrier),
        Expr::IsNull(x) | Expr::IsNotNull(x) => plain_column(x, barrier).is_some(),
        Expr::InList(l) => {
            plain_column(&l.expr, barrier).is_some() && l.list.iter().all(is_literal)
        }
        Expr::Between(b) => {
            plain_column(&b.expr, barrier).is_some() && is_literal(&b.low) && is_literal(&b.high)
        }
        Expr::Like(l) => plain_column(&l.expr, barrier).is_some() && is_literal(&l.pattern),
        _ => false,
    }
}

/// The barrier above `plan`'s input, when it is one.
fn barrier_below(plan: &LogicalPlan) -> Option<&PolicyBarrier> {
    match plan {
        LogicalPlan::Extension(ext) => ext.node.as_any().downcast_ref::<PolicyBarrier>(),
        _ => None,
    }
}

/// DataFusion's `push_down_filter`, stopped at policy barriers: a filter
/// directly above a barrier stays where it is (the leakproof part is moved
/// by [`PolicyPushdownRule`]).
#[derive(Debug)]
pub struct BarrierAwarePushDownFilter {
    inner: Arc<dyn OptimizerRule + Send + Sync>,
}

impl BarrierAwarePushDownFilter {
    /// Wraps DataFusion's rule.
    pub fn new(inner: Arc<dyn OptimizerRule + Send + Sync>) -> Self {
        Self { inner }
    }
}

impl OptimizerRule for BarrierAwarePushDownFilter {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        self.inner.apply_order()
    }

    #[allow(deprecated)]
    fn supports_rewrite(&self) -> bool {
        self.inner.supports_rewrite()
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if let LogicalPlan::Filter(filter) = &plan
            && barrier_below(&filter.input).is_some()
        {
            return Ok(Transformed::no(plan));
        }
        self.inner.rewrite(plan, config)
    }
}

impl OptimizerRule for PolicyPushdownRule {
    fn name(&self) -> &str {
        "meshq_policy_pushdown"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Filter(filter) = plan else {
            return Ok(Transformed::no(plan));
        };
        let Some(barrier) = barrier_below(&filter.input).cloned() else {
            return Ok(Transformed::no(LogicalPlan::Filter(filter)));
        };
        let (safe, rest): (Vec<Expr>, Vec<Expr>) = split_conjunction(&filter.predicate)
            .into_iter()
            .cloned()
            .partition(|e| is_leakproof(e, &barrier));
        let Some(safe) = conjunction(safe) else {
            return Ok(Transformed::no(LogicalPlan::Filter(filter)));
        };
        let inner = LogicalPlan::Filter(Filter::try_new(safe, Arc::new(barrier.input.clone()))?);
        let moved = LogicalPlan::Extension(Extension {
            node: Arc::new(PolicyBarrier {
                input: inner,
                ..barrier
            }),
        });
        let out = match conjunction(rest) {
            Some(rest) => LogicalPlan::Filter(Filter::try_new(rest, Arc::new(moved))?),
            None => moved,
        };
        Ok(Transformed::yes(out))
    }
}
