//! Does a table column's Arrow type satisfy the contract's declared type?
//!
//! `physicalType` is checked when meshq knows it (SQL/Spark type names);
//! otherwise the ODCS `logicalType` family is checked.

use arrow::datatypes::DataType;
use meshq_catalog::ColumnDef;
use meshq_catalog::odcs::LogicalType;

/// What the contract declares (`physicalType DECIMAL(12,2)`), when
/// `actual` does not satisfy the contract column; `None` when it does.
pub fn type_mismatch(col: &ColumnDef, actual: &DataType) -> Option<String> {
    type_mismatch_with(col, actual, physical_matches)
}

/// [`type_mismatch`] for a column of a PostgreSQL table, whose contract
/// names PostgreSQL's types (`int8` is a bigint there, `timestamptz` a
/// timestamp with a zone).
pub fn postgres_type_mismatch(col: &ColumnDef, actual: &DataType) -> Option<String> {
    type_mismatch_with(col, actual, |physical, t| {
        postgres_physical_matches(physical, t).or_else(|| physical_matches(physical, t))
    })
}

fn type_mismatch_with(
    col: &ColumnDef,
    actual: &DataType,
    physical_check: impl Fn(&str, &DataType) -> Option<bool>,
) -> Option<String> {
    let actual = value_type(actual);
    if let Some(physical) = col.physical_type.as_deref()
        && let Some(matches) = physical_check(physical, actual)
    {
        return (!matches).then(|| format!("physicalType {physical}"));
    }
    match col.logical_type {
        Some(logical) if !logical_matches(logical, actual) => {
            Some(format!("logicalType {logical}"))
        }
        _ => None,
    }
}

/// Dictionary-encoded columns are checked by their value type.
fn value_type(t: &DataType) -> &DataType {
    match t {
        DataType::Dictionary(_, v) => value_type(v),
        DataType::RunEndEncoded(_, v) => value_type(v.data_type()),
        other => other,
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

fn is_list(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::FixedSizeList(_, _)
    )
}

fn is_decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(_, _)
            | DataType::Decimal64(_, _)
            | DataType::Decimal128(_, _)
            | DataType::Decimal256(_, _)
    )
}

fn decimal_params(t: &DataType) -> Option<(u8, i8)> {
    match t {
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => Some((*p, *s)),
        _ => None,
    }
}

fn logical_matches(logical: LogicalType, t: &DataType) -> bool {
    match logical {
        LogicalType::String => is_string(t),
        LogicalType::Integer => t.is_integer(),
        LogicalType::Number => t.is_integer() || t.is_floating() || is_decimal(t),
        LogicalType::Boolean => matches!(t, DataType::Boolean),
        LogicalType::Date => matches!(t, DataType::Date32 | DataType::Date64),
        LogicalType::Timestamp => matches!(t, DataType::Timestamp(_, _) | DataType::Date64),
        LogicalType::Time => matches!(t, DataType::Time32(_) | DataType::Time64(_)),
        LogicalType::Object => matches!(t, DataType::Struct(_) | DataType::Map(_, _)),
        LogicalType::Array => is_list(t),
    }
}

/// `None` when meshq does not know the physical type name.
/// Whether `t` is the SQL/Spark type `physical`; `None` when meshq does
/// not know the name.
fn physical_matches(physical: &str, t: &DataType) -> Option<bool> {
    let upper = physical.trim().to_ascii_uppercase();
    let (base, args) = match upper.find(['(', '<']) {
        Some(i) => (upper[..i].trim(), Some(upper[i..].trim())),
        None => (upper.as_str(), None),
    };
    let ok = match base {
        "STRING" | "VARCHAR" | "CHAR" | "TEXT" | "NVARCHAR" | "NCHAR" | "CHARACTER VARYING" => {
            is_string(t)
        }
        "BOOLEAN" | "BOOL" => matches!(t, DataType::Boolean),
        "TINYINT" | "BYTE" | "INT8" => matches!(t, DataType::Int8),
        "SMALLINT" | "SHORT" | "INT16" => matches!(t, DataType::Int16),
        "INT" | "INTEGER" | "INT32" => matches!(t, DataType::Int32),
        "BIGINT" | "LONG" | "INT64" => matches!(t, DataType::Int64),
        "FLOAT" | "REAL" | "FLOAT32" => matches!(t, DataType::Float32),
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT64" => matches!(t, DataType::Float64),
        "DECIMAL" | "NUMERIC" | "NUMBER" => match (decimal_params(t), args) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some((p, s)), Some(args)) => {
                let inner = args.trim_start_matches('(').trim_end_matches(')');
                let mut parts = inner.split(',').map(|x| x.trim().parse::<i64>());
                match (parts.next(), parts.next()) {
                    (Some(Ok(ep)), Some(Ok(es))) => ep == p as i64 && es == s as i64,
                    (Some(Ok(ep)), None) => ep == p as i64 && s == 0,
                    _ => return None,
                }
            }
        },
        "DATE" => matches!(t, DataType::Date32 | DataType::Date64),
        "TIMESTAMP" | "TIMESTAMP_NTZ" | "TIMESTAMP_LTZ" | "TIMESTAMPTZ" | "TIMESTAMP_TZ"
        | "DATETIME" => matches!(t, DataType::Timestamp(_, _)),
        "TIME" => matches!(t, DataType::Time32(_) | DataType::Time64(_)),
        "BINARY" | "VARBINARY" | "BYTES" | "BLOB" => is_binary(t),
        "ARRAY" | "LIST" => is_list(t),
        "STRUCT" | "RECORD" | "OBJECT" => matches!(t, DataType::Struct(_)),
        "MAP" => matches!(t, DataType::Map(_, _)),
        _ => return None,
    };
    Some(ok)
}

/// Whether `t` is what meshq reads for the PostgreSQL type `physical`
/// (see `crate::postgres`); `None` for names PostgreSQL shares with other
/// dialects, which [`physical_matches`] decides.
fn postgres_physical_matches(physical: &str, t: &DataType) -> Option<bool> {
    let lower = physical.trim().to_ascii_lowercase();
    if lower.ends_with("[]") {
        return Some(is_list(t));
    }
    let base = lower.split('(').next().unwrap_or_default().trim();
    Some(match base {
        "int2" | "smallserial" => matches!(t, DataType::Int16),
        "int4" | "serial" => matches!(t, DataType::Int32),
        "int8" | "bigserial" => matches!(t, DataType::Int64),
        "float4" => matches!(t, DataType::Float32),
        "float8" => matches!(t, DataType::Float64),
        "bpchar" | "character" | "name" | "citext" | "uuid" | "json" | "jsonb" => is_string(t),
        "bytea" => is_binary(t),
        "timestamp without time zone" => matches!(t, DataType::Timestamp(_, None)),
        "timestamptz" | "timestamp with time zone" => {
            matches!(t, DataType::Timestamp(_, Some(_)))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;
    use std::sync::Arc;

    fn col(logical: Option<LogicalType>, physical: Option<&str>) -> ColumnDef {
        ColumnDef {
            name: "c".into(),
            logical_type: logical,
            physical_type: physical.map(str::to_string),
            unique: false,
            required: false,
            classification: None,
            tags: vec![],
            description: None,
            primary_key_position: None,
            mask: None,
        }
    }

    #[test]
    fn physical_types() {
        let c = col(Some(LogicalType::Number), Some("DECIMAL(12,2)"));
        assert!(type_mismatch(&c, &DataType::Decimal128(12, 2)).is_none());
        assert_eq!(
            type_mismatch(&c, &DataType::Decimal128(10, 2)),
            Some("physicalType DECIMAL(12,2)".into())
        );
        assert!(type_mismatch(&c, &DataType::Float64).is_some());
        let c = col(None, Some("string"));
        assert!(type_mismatch(&c, &DataType::Utf8View).is_none());
        assert!(
            type_mismatch(
                &c,
                &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            )
            .is_none()
        );
        let c = col(None, Some("TIMESTAMP"));
        assert!(
            type_mismatch(
                &c,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            )
            .is_none()
        );
        assert!(type_mismatch(&c, &DataType::Date32).is_some());
        let c = col(None, Some("BIGINT"));
        assert!(type_mismatch(&c, &DataType::Int32).is_some());
    }

    #[test]
    fn postgres_names_are_postgres_types() {
        let c = col(None, Some("int8"));
        assert!(postgres_type_mismatch(&c, &DataType::Int64).is_none());
        assert!(
            type_mismatch(&c, &DataType::Int64).is_some(),
            "Spark's int8 is a byte"
        );
        let c = col(None, Some("timestamptz"));
        let zoned = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        assert!(postgres_type_mismatch(&c, &zoned).is_none());
        assert!(
            postgres_type_mismatch(&c, &DataType::Timestamp(TimeUnit::Microsecond, None)).is_some()
        );
        let c = col(None, Some("numeric(12,2)"));
        assert!(postgres_type_mismatch(&c, &DataType::Decimal128(12, 2)).is_none());
        assert!(postgres_type_mismatch(&c, &DataType::Decimal128(38, 10)).is_some());
        let c = col(None, Some("text[]"));
        let list = DataType::List(Arc::new(arrow::datatypes::Field::new(
            "item",
            DataType::Utf8,
            true,
        )));
        assert!(postgres_type_mismatch(&c, &list).is_none());
        assert!(postgres_type_mismatch(&col(None, Some("jsonb")), &DataType::Utf8).is_none());
    }

    #[test]
    fn unknown_physical_falls_back_to_logical() {
        let c = col(Some(LogicalType::Integer), Some("SOMETHING_ODD"));
        assert!(type_mismatch(&c, &DataType::Int16).is_none());
        assert_eq!(
            type_mismatch(&c, &DataType::Utf8),
            Some("logicalType integer".into())
        );
        let c = col(None, None);
        assert!(type_mismatch(&c, &DataType::Utf8).is_none());
    }
}
