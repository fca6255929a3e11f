//! DataFusion filters as Iceberg predicates, for manifest, partition and
//! file pruning while the scan is planned.
//!
//! Pruning only ever skips files that cannot match: the filters are still
//! evaluated on the rows read (they are pushed down as inexact), so a filter
//! that cannot be translated is simply left out of the Iceberg predicate.

use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::Datum;

/// The conjunction of the filters that translate, or `None`.
pub(crate) fn to_predicate(filters: &[Expr]) -> Option<Predicate> {
    filters.iter().filter_map(translate).reduce(|a, b| a.and(b))
}

fn translate(expr: &Expr) -> Option<Predicate> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => match (translate(left), translate(right)) {
                (Some(l), Some(r)) => Some(l.and(r)),
                // Dropping one side of an AND only widens it.
                (l, r) => l.or(r),
            },
            Operator::Or => Some(translate(left)?.or(translate(right)?)),
            _ => comparison(left, *op, right),
        },
        Expr::Not(inner) => Some(translate(inner)?.negate()),
        Expr::IsNull(inner) => Some(reference(inner)?.is_null()),
        Expr::IsNotNull(inner) => Some(reference(inner)?.is_not_null()),
        Expr::InList(list) => {
            let r = reference(&list.expr)?;
            let values = list.list.iter().map(datum).collect::<Option<Vec<_>>>()?;
            Some(if list.negated {
                r.is_not_in(values)
            } else {
                r.is_in(values)
            })
        }
        Expr::Between(b) => {
            let r = || reference(&b.expr);
            let inside = r()?
                .greater_than_or_equal_to(datum(&b.low)?)
                .and(r()?.less_than_or_equal_to(datum(&b.high)?));
            Some(if b.negated { inside.negate() } else { inside })
        }
        _ => None,
    }
}

fn comparison(left: &Expr, op: Operator, right: &Expr) -> Option<Predicate> {
    let (r, d, op) = match (reference(left), datum(right)) {
        (Some(r), Some(d)) => (r, d, op),
        _ => (reference(right)?, datum(left)?, op.swap()?),
    };
    Some(match op {
        Operator::Eq => r.equal_to(d),
        Operator::NotEq => r.not_equal_to(d),
        Operator::Lt => r.less_than(d),
        Operator::LtEq => r.less_than_or_equal_to(d),
        Operator::Gt => r.greater_than(d),
        Operator::GtEq => r.greater_than_or_equal_to(d),
        _ => return None,
    })
}

fn reference(expr: &Expr) -> Option<Reference> {
    match expr {
        Expr::Column(Column { name, .. }) => Some(Reference::new(name)),
        _ => None,
    }
}

fn datum(expr: &Expr) -> Option<Datum> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    scalar_datum(value)
}

/// A non-null scalar as an Iceberg datum, for the types both sides share.
pub(crate) fn scalar_datum(value: &ScalarValue) -> Option<Datum> {
    Some(match value {
        ScalarValue::Boolean(Some(v)) => Datum::bool(*v),
        ScalarValue::Int8(Some(v)) => Datum::int(*v),
        ScalarValue::Int16(Some(v)) => Datum::int(*v),
        ScalarValue::Int32(Some(v)) => Datum::int(*v),
        ScalarValue::Int64(Some(v)) => Datum::long(*v),
        ScalarValue::UInt8(Some(v)) => Datum::int(*v),
        ScalarValue::UInt16(Some(v)) => Datum::int(*v),
        ScalarValue::UInt32(Some(v)) => Datum::long(*v),
        ScalarValue::Float32(Some(v)) => Datum::float(*v),
        ScalarValue::Float64(Some(v)) => Datum::double(*v),
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => Datum::string(v),
        ScalarValue::Date32(Some(v)) => Datum::date(*v),
        ScalarValue::TimestampMicrosecond(Some(v), None) => Datum::timestamp_micros(*v),
        ScalarValue::TimestampMicrosecond(Some(v), Some(_)) => Datum::timestamptz_micros(*v),
        ScalarValue::TimestampNanosecond(Some(v), None) => Datum::timestamp_nanos(*v),
        ScalarValue::TimestampNanosecond(Some(v), Some(_)) => Datum::timestamptz_nanos(*v),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    #[test]
    fn translates_what_it_can() {
        let p = to_predicate(&[col("a").gt(lit(5i64)), lit("x").eq(col("b"))]).unwrap();
        assert_eq!(p.to_string(), "(a > 5) AND (b = \"x\")");
        // An untranslatable conjunct is dropped; an OR with one is dropped whole.
        let p = to_predicate(&[
            col("a").lt_eq(lit(3i32)).and(col("a").like(lit("%x"))),
            col("c").eq(lit(1i32)).or(col("d").like(lit("y%"))),
        ])
        .unwrap();
        assert_eq!(p.to_string(), "a <= 3");
        let p = to_predicate(&[col("k").in_list(vec![lit(1i32), lit(2i32)], false)]).unwrap();
        assert!(p.to_string().contains("IN"), "{p}");
        assert!(to_predicate(&[col("x").like(lit("a"))]).is_none());
    }
}
