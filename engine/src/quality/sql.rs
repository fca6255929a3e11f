//! Quality rules as SQL: each count metric is one aggregate expression, so
//! that every metric of a table runs in one scan; tuple duplicates and
//! primary keys need a grouping query of their own.

use meshq_catalog::quality::{Bound, Literal, Metric};

/// `name` as a double-quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"domain"."table"`.
pub(crate) fn table_ref(domain: &str, table: &str) -> String {
    format!("{}.{}", ident(domain), ident(table))
}

fn string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn literal(l: &Literal) -> String {
    match l {
        Literal::Number(n) => {
            if n.fract() == 0.0 && n.abs() < 1e15 {
                format!("{}", *n as i64)
            } else {
                format!("{n}")
            }
        }
        Literal::String(s) => string(s),
        Literal::Bool(b) => b.to_string(),
    }
}

fn text(col: &str) -> String {
    format!("CAST({} AS VARCHAR)", ident(col))
}

/// `template` (with `{}` for the quoted column) for each of `cols`, joined
/// by `sep`.
fn each(cols: &[String], template: &str, sep: &str) -> String {
    cols.iter()
        .map(|c| template.replace("{}", &ident(c)))
        .collect::<Vec<_>>()
        .join(sep)
}

/// How a metric is measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Measure {
    /// An aggregate expression over the table's rows.
    Aggregate(String),
    /// A query of its own returning one count.
    Query(String),
}

/// The SQL that counts `metric`'s rows in table `tref`.
pub(crate) fn measure(metric: &Metric, tref: &str) -> Measure {
    let filtered = |cond: String| Measure::Aggregate(format!("count(*) FILTER (WHERE {cond})"));
    match metric {
        Metric::RowCount => Measure::Aggregate("count(*)".into()),
        Metric::NullValues(c) => filtered(format!("{} IS NULL", ident(c))),
        Metric::MissingValues { column, values } => {
            if values.is_empty() {
                filtered(format!("{} IS NULL", ident(column)))
            } else {
                filtered(format!(
                    "{c} IS NULL OR {c} IN ({})",
                    values.iter().map(literal).collect::<Vec<_>>().join(", "),
                    c = ident(column)
                ))
            }
        }
        Metric::InvalidValues {
            column,
            valid,
            pattern,
        } => {
            let mut bad = Vec::new();
            if let Some(valid) = valid {
                bad.push(if valid.is_empty() {
                    "true".to_string()
                } else {
                    format!(
                        "{} NOT IN ({})",
                        ident(column),
                        valid.iter().map(literal).collect::<Vec<_>>().join(", ")
                    )
                });
            }
            if let Some(p) = pattern {
                bad.push(format!("NOT regexp_like({}, {})", text(column), string(p)));
            }
            filtered(format!(
                "{} IS NOT NULL AND ({})",
                ident(column),
                bad.join(" OR ")
            ))
        }
        Metric::DuplicateValues(cols) => {
            // Distinct non-NULL values (tuples) that occur more than once,
            // as the reference tool counts them.
            let list = each(cols, "{}", ", ");
            let not_null = each(cols, "{} IS NOT NULL", " AND ");
            Measure::Query(format!(
                "SELECT count(*) FROM (SELECT 1 FROM {tref} WHERE {not_null} GROUP BY {list} HAVING count(*) > 1)"
            ))
        }
        Metric::PrimaryKey(cols) => {
            let list = each(cols, "{}", ", ");
            let any_null = each(cols, "{} IS NULL", " OR ");
            // A key with a NULL is a violation on each of its rows; a key
            // seen n times is n - 1 violations.
            Measure::Query(format!(
                "SELECT CAST(COALESCE(sum(CASE WHEN has_null THEN n ELSE n - 1 END), 0) AS BIGINT) FROM \
                 (SELECT ({any_null}) AS has_null, count(*) AS n FROM {tref} GROUP BY {list}, ({any_null}))"
            ))
        }
        Metric::OutOfBound {
            column,
            bound,
            value,
        } => {
            let op = match bound {
                Bound::Minimum => "<",
                Bound::Maximum => ">",
                Bound::ExclusiveMinimum => "<=",
                Bound::ExclusiveMaximum => ">=",
            };
            filtered(format!("{} {op} {}", ident(column), literal(value)))
        }
        Metric::Length { column, min, max } => {
            let len = format!("character_length({})", text(column));
            let mut bad = Vec::new();
            if let Some(m) = min {
                bad.push(format!("{len} < {m}"));
            }
            if let Some(m) = max {
                bad.push(format!("{len} > {m}"));
            }
            filtered(format!(
                "{} IS NOT NULL AND ({})",
                ident(column),
                bad.join(" OR ")
            ))
        }
        Metric::Pattern { column, pattern } => filtered(format!(
            "{} IS NOT NULL AND NOT regexp_like({}, {})",
            ident(column),
            text(column),
            string(pattern)
        )),
    }
}

/// A `type: sql` rule's query with its placeholders filled: `{object}`
/// (also `${object}`, `${table}`) → the table, `{property}` (also
/// `${property}`, `${column}`) → the column.
pub(crate) fn fill_placeholders(query: &str, tref: &str, column: Option<&str>) -> String {
    let mut q = query.to_string();
    for p in [
        "${object}",
        "${table}",
        "${model}",
        "{object}",
        "{table}",
        "{model}",
    ] {
        q = q.replace(p, tref);
    }
    if let Some(c) = column {
        for p in [
            "${property}",
            "${column}",
            "${field}",
            "{property}",
            "{column}",
            "{field}",
        ] {
            q = q.replace(p, &ident(c));
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_strings_are_quoted() {
        assert_eq!(ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(
            measure(
                &Metric::MissingValues {
                    column: "c".into(),
                    values: vec![
                        Literal::String("n/a".into()),
                        Literal::String("it's".into())
                    ]
                },
                "t"
            ),
            Measure::Aggregate(
                r#"count(*) FILTER (WHERE "c" IS NULL OR "c" IN ('n/a', 'it''s'))"#.into()
            )
        );
        assert_eq!(literal(&Literal::Number(3.0)), "3");
        assert_eq!(literal(&Literal::Number(0.5)), "0.5");
    }

    #[test]
    fn placeholders_in_every_spelling() {
        assert_eq!(
            fill_placeholders(
                "SELECT count(*) FROM {object} WHERE ${column} > 0 AND {property} < 9",
                "\"s\".\"t\"",
                Some("a")
            ),
            r#"SELECT count(*) FROM "s"."t" WHERE "a" > 0 AND "a" < 9"#
        );
    }
}
