//! [`PolicyPushdownRule`]: moves *leakproof* user predicates across a
//! [`PolicyBarrier`] so partition and row-group pruning still work.
//!
//! A predicate is leakproof when evaluating it cannot fail or depend on
//! anything but the row: a column compared with a literal (of the column's
//! type: a coercion would put a cast on the column, which is refused),
//! `IS [NOT] NULL`, `IN` a list of literals, `BETWEEN` literals, `LIKE` a
//! literal pattern, and `AND`/`OR`/`NOT` of those. Comparing two columns is
//! not: DESIGN allows a column against a literal only. Only predicates over
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
                (plain_column(left, barrier).is_some() && is_literal(right))
                    || (is_literal(left) && plain_column(right, barrier).is_some())
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::empty::EmptyTable;
    use datafusion::datasource::provider_as_source;
    use datafusion::functions::expr_fn::{abs, random, upper};
    use datafusion::logical_expr::{LogicalPlanBuilder, cast, col, lit, try_cast};
    use datafusion::optimizer::OptimizerContext;
    use meshq_connectors::ScanToken;

    use super::*;

    /// A barrier over `t(a INT, b INT, s TEXT, m TEXT)` where `m` is masked.
    fn barrier() -> PolicyBarrier {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("m", DataType::Utf8, true),
        ]));
        let scan = LogicalPlanBuilder::scan(
            "t",
            provider_as_source(Arc::new(EmptyTable::new(schema))),
            None,
        )
        .unwrap()
        .build()
        .unwrap();
        PolicyBarrier::new(
            "d.t".into(),
            vec!["m:hash".into()],
            BTreeSet::from(["a".into(), "b".into(), "s".into()]),
            ScanToken {
                mesh_version: 1,
                principal: 1,
                policies: 1,
            },
            scan,
        )
    }

    #[test]
    fn only_leakproof_predicates_on_unmasked_columns_qualify() {
        let b = barrier();
        let cases: Vec<(&str, Expr, bool)> = vec![
            ("column = literal", col("a").eq(lit(1i64)), true),
            ("literal = column", lit(1i64).eq(col("a")), true),
            ("column < literal", col("a").lt(lit(1i64)), true),
            (
                "column IS DISTINCT FROM literal",
                Expr::BinaryExpr(BinaryExpr::new(
                    Box::new(col("a")),
                    Operator::IsDistinctFrom,
                    Box::new(lit(1i64)),
                )),
                true,
            ),
            ("IS NULL", col("s").is_null(), true),
            ("IS NOT NULL", col("s").is_not_null(), true),
            (
                "IN literals",
                col("a").in_list(vec![lit(1i64), lit(2i64)], false),
                true,
            ),
            (
                "NOT IN literals",
                col("a").in_list(vec![lit(1i64)], true),
                true,
            ),
            (
                "BETWEEN literals",
                col("a").between(lit(1i64), lit(9i64)),
                true,
            ),
            ("LIKE a literal", col("s").like(lit("x%")), true),
            (
                "AND of leakproof",
                col("a").eq(lit(1i64)).and(col("s").is_null()),
                true,
            ),
            (
                "OR of leakproof",
                col("a").eq(lit(1i64)).or(col("b").gt(lit(2i64))),
                true,
            ),
            (
                "NOT of leakproof",
                Expr::Not(Box::new(col("a").eq(lit(1i64)))),
                true,
            ),
            // What DESIGN forbids.
            ("column = column", col("a").eq(col("b")), false),
            ("masked column = literal", col("m").eq(lit("x")), false),
            ("masked IS NULL", col("m").is_null(), false),
            (
                "masked in an OR",
                col("a").eq(lit(1i64)).or(col("m").eq(lit("x"))),
                false,
            ),
            (
                "masked in an AND",
                col("a").eq(lit(1i64)).and(col("m").eq(lit("x"))),
                false,
            ),
            ("function of a column", upper(col("s")).eq(lit("X")), false),
            ("abs of a column", abs(col("a")).eq(lit(1i64)), false),
            (
                "cast that can fail",
                cast(col("s"), DataType::Int64).eq(lit(1i64)),
                false,
            ),
            (
                "try_cast",
                try_cast(col("s"), DataType::Int64).eq(lit(1i64)),
                false,
            ),
            (
                "cast literal",
                col("a").eq(cast(lit("1"), DataType::Int64)),
                false,
            ),
            (
                "arithmetic (can overflow)",
                (col("a") + lit(1i64)).eq(lit(2i64)),
                false,
            ),
            (
                "division (can fail)",
                (lit(1i64) / col("a")).eq(lit(1i64)),
                false,
            ),
            ("no column", lit(1i64).eq(lit(1i64)), false),
            ("volatile function", random().gt(lit(0.5)), false),
            (
                "IN with a column",
                col("a").in_list(vec![lit(1i64), col("b")], false),
                false,
            ),
            (
                "BETWEEN a column",
                col("a").between(lit(1i64), col("b")),
                false,
            ),
            ("LIKE a column", col("s").like(col("m")), false),
            ("bare column", col("a"), false),
            ("unknown column", col("zz").eq(lit(1i64)), false),
        ];
        for (what, e, want) in cases {
            assert_eq!(is_leakproof(&e, &b), want, "{what}: {e}");
        }
    }

    /// The rule moves the leakproof conjuncts of a filter above a barrier
    /// below it and keeps the rest above.
    #[test]
    fn the_rule_splits_a_filter_at_the_barrier() {
        let b = barrier();
        let cases: Vec<(&str, Expr, Option<&str>, Option<&str>)> = vec![
            (
                "all leakproof",
                col("a").eq(lit(1i64)).and(col("s").like(lit("x%"))),
                None,
                Some("t.a = Int64(1) AND t.s LIKE Utf8(\"x%\")"),
            ),
            (
                "none leakproof",
                col("m").eq(lit("x")),
                Some("t.m = Utf8(\"x\")"),
                None,
            ),
            (
                "split",
                col("a")
                    .eq(lit(1i64))
                    .and(col("a").eq(col("b")))
                    .and(upper(col("s")).eq(lit("X"))),
                Some("t.a = t.b AND upper(t.s) = Utf8(\"X\")"),
                Some("t.a = Int64(1)"),
            ),
        ];
        for (what, predicate, above, below) in cases {
            let plan = LogicalPlanBuilder::from(LogicalPlan::Extension(Extension {
                node: Arc::new(b.clone()),
            }))
            .filter(predicate)
            .unwrap()
            .build()
            .unwrap();
            let out = PolicyPushdownRule
                .rewrite(plan, &OptimizerContext::new())
                .unwrap();
            assert_eq!(out.transformed, below.is_some(), "{what}");
            let plan = out.data;
            let (top, barrier) = match &plan {
                LogicalPlan::Filter(f) => (Some(f.predicate.to_string()), f.input.as_ref()),
                other => (None, other),
            };
            assert_eq!(top.as_deref(), above, "{what}");
            let LogicalPlan::Extension(ext) = barrier else {
                panic!("{what}: no barrier under the filter:\n{plan}")
            };
            let inner = &ext
                .node
                .as_any()
                .downcast_ref::<PolicyBarrier>()
                .unwrap()
                .input;
            let moved = match inner {
                LogicalPlan::Filter(f) => Some(f.predicate.to_string()),
                _ => None,
            };
            assert_eq!(moved.as_deref(), below, "{what}");
        }
    }
}
