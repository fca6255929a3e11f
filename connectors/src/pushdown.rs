//! Which filters may run at a database or remote source, and their SQL.
//!
//! meshq's policy rewrite and barrier decide which filters reach a table's
//! scan at all: the row filters, and user predicates on unmasked columns
//! the barrier lets through. A predicate on a masked column never gets
//! this far. Of what arrives, a source evaluates only comparisons whose
//! meaning it shares with DataFusion ([`pushable`]); anything else runs in
//! meshq, above the scan.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::PlanProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::Dialect;

/// Which comparisons on a column mean the same at the source as in
/// DataFusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compare {
    /// None: the column is compared in meshq only.
    Never,
    /// `=`, `<>`, `IN`, `IS NULL` (text: ordering follows the source's
    /// collation).
    Equality,
    /// All comparisons (numbers, dates, times, booleans).
    Ordered,
}

/// Whether `e` means the same at the source as in DataFusion: columns
/// whose comparisons `compare` allows, non-null literals of plain types,
/// `AND`/`OR`/`NOT`, comparisons, `IN` lists, `IS [NOT] NULL` and
/// `BETWEEN`. `compare` gives a column's [`Compare`], `None` for a column
/// this table does not have.
pub(crate) fn pushable(e: &Expr, compare: &dyn Fn(&str) -> Option<Compare>) -> bool {
    // The weakest comparison an operand allows: a column's, or a literal's
    // (text only equality, like text columns).
    fn operand(e: &Expr, compare: &dyn Fn(&str) -> Option<Compare>) -> Option<Compare> {
        match e {
            Expr::Column(c) => compare(&c.name).filter(|c| *c != Compare::Never),
            Expr::Literal(v, _) => literal(v),
            _ => None,
        }
    }
    fn literal(v: &ScalarValue) -> Option<Compare> {
        if v.is_null() {
            return None;
        }
        match v {
            ScalarValue::Utf8(_) | ScalarValue::Utf8View(_) | ScalarValue::LargeUtf8(_) => {
                Some(Compare::Equality)
            }
            ScalarValue::Boolean(_)
            | ScalarValue::Int8(_)
            | ScalarValue::Int16(_)
            | ScalarValue::Int32(_)
            | ScalarValue::Int64(_)
            | ScalarValue::UInt8(_)
            | ScalarValue::UInt16(_)
            | ScalarValue::UInt32(_)
            | ScalarValue::Float32(_)
            | ScalarValue::Float64(_)
            | ScalarValue::Decimal128(..)
            | ScalarValue::Date32(_)
            | ScalarValue::TimestampMicrosecond(..)
            | ScalarValue::TimestampMillisecond(..)
            | ScalarValue::TimestampSecond(..)
            | ScalarValue::TimestampNanosecond(..) => Some(Compare::Ordered),
            _ => None,
        }
    }
    fn both(l: &Expr, r: &Expr, compare: &dyn Fn(&str) -> Option<Compare>, need: Compare) -> bool {
        // One side is a column, the other a column or a literal.
        let is_col = |e: &Expr| matches!(e, Expr::Column(_));
        (is_col(l) || is_col(r))
            && matches!(
                (operand(l, compare), operand(r, compare)),
                (Some(a), Some(b)) if a.min(b) >= need
            )
    }
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => pushable(left, compare) && pushable(right, compare),
            Operator::Eq | Operator::NotEq => both(left, right, compare, Compare::Equality),
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                both(left, right, compare, Compare::Ordered)
            }
            _ => false,
        },
        Expr::Not(inner) => pushable(inner, compare),
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
            matches!(inner.as_ref(), Expr::Column(c) if compare(&c.name).is_some_and(|c| c != Compare::Never))
        }
        Expr::InList(list) => {
            matches!(list.expr.as_ref(), Expr::Column(_))
                && list.list.iter().all(|v| matches!(v, Expr::Literal(..)))
                && list
                    .list
                    .iter()
                    .all(|v| both(&list.expr, v, compare, Compare::Equality))
        }
        Expr::Between(b) => {
            matches!(b.expr.as_ref(), Expr::Column(_))
                && both(&b.expr, &b.low, compare, Compare::Ordered)
                && both(&b.expr, &b.high, compare, Compare::Ordered)
        }
        _ => false,
    }
}

impl PartialOrd for Compare {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Compare {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let rank = |c: &Compare| match c {
            Compare::Never => 0,
            Compare::Equality => 1,
            Compare::Ordered => 2,
        };
        rank(self).cmp(&rank(other))
    }
}

/// The SQL text of `filter` in `dialect`, with columns unqualified (as the
/// source knows them), when it is [`pushable`].
pub(crate) fn filter_sql(
    filter: &Expr,
    compare: &dyn Fn(&str) -> Option<Compare>,
    dialect: &dyn Dialect,
) -> Option<String> {
    if !pushable(filter, compare) {
        return None;
    }
    let bare = filter
        .clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                }
                other => Transformed::no(other),
            })
        })
        .ok()?
        .data;
    Unparser::new(dialect)
        .expr_to_sql(&bare)
        .ok()
        .map(|ast| ast.to_string())
}

/// The one `SELECT` a source runs for a scan: `select` (the projected
/// columns as the source reads them; `1` when none is), the filters the
/// provider accepted, each as `filter_sql` renders it, and the limit.
/// `table` and `source` name the table and its kind for the error.
pub(crate) fn select_statement(
    table: &str,
    source: &str,
    relation: &str,
    select: &[String],
    filters: &[Expr],
    limit: Option<usize>,
    filter_sql: impl Fn(&Expr) -> Option<String>,
) -> Result<String> {
    let mut sql = format!(
        "SELECT {} FROM {relation}",
        if select.is_empty() {
            "1".to_string()
        } else {
            select.join(", ")
        }
    );
    let mut conditions = Vec::new();
    for f in filters {
        // Only filters accepted as Exact arrive here; one that does not
        // unparse now is an error, never a silently dropped row filter.
        let Some(text) = filter_sql(f) else {
            return Err(DataFusionError::Internal(format!(
                "table `{table}`: a filter accepted for {source} no longer unparses: {f}"
            )));
        };
        conditions.push(format!("({text})"));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    if let Some(n) = limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    Ok(sql)
}

/// The properties of a scan that streams one source statement's answer:
/// one partition, incremental, bounded.
pub(crate) fn statement_properties(schema: &SchemaRef) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(Arc::clone(schema)),
        datafusion::physical_plan::Partitioning::UnknownPartitioning(1),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// An identifier quoted for SQL (`"` doubled inside).
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    fn kinds(name: &str) -> Option<Compare> {
        match name {
            "id" | "amount" | "day" => Some(Compare::Ordered),
            "region" | "email" => Some(Compare::Equality),
            "code" => Some(Compare::Never),
            _ => None,
        }
    }
    #[test]
    fn only_comparisons_the_source_shares_are_pushed() {
        for e in [
            col("region").eq(lit("EMEA")),
            col("id").gt(lit(5)).and(col("region").not_eq(lit("AMER"))),
            col("region").in_list(vec![lit("EMEA"), lit("APAC")], false),
            col("amount").between(lit(1.0), lit(2.0)),
            col("email").is_null(),
            col("id").lt_eq(col("amount")),
        ] {
            assert!(pushable(&e, &kinds), "{e}");
        }
        for e in [
            // Text order follows the database's collation.
            col("region").lt(lit("M")),
            // A blank-padded column, or one meshq reads as text.
            col("code").eq(lit("x")),
            // A function: its meaning at the source is not checked.
            datafusion::functions::expr_fn::upper(col("region")).eq(lit("EMEA")),
            col("region").like(lit("E%")),
            // A column this table does not have.
            col("other").eq(lit(1)),
            col("id").eq(lit(ScalarValue::Int32(None))),
            col("id").eq(lit(1)).or(col("region").lt(lit("M"))),
        ] {
            assert!(!pushable(&e, &kinds), "{e}");
        }
    }
}
