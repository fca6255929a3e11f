//! Column statistics of an Iceberg snapshot's data files, from its
//! manifests: each data file's row count, null counts and lower and upper
//! bounds, by field id. DataFusion plans joins with them (which side builds
//! the hash table, how many rows a join keeps); a Parquet table reports the
//! same from its footers. They are all inexact: a string bound may be
//! truncated, and no answer is ever computed from them.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, ScalarValue, Statistics};
use iceberg::spec::{
    DataContentType, DataFile, Datum, ManifestList, PrimitiveLiteral, PrimitiveType,
};
use iceberg::table::Table;

use super::schema::field_id;

/// Statistics of every live data file of `snapshot_id`, by file path.
pub(crate) async fn file_statistics(
    table: &Table,
    snapshot_id: i64,
    schema: &Schema,
) -> iceberg::Result<HashMap<String, Arc<Statistics>>> {
    let metadata = table.metadata();
    let Some(snapshot) = metadata.snapshot_by_id(snapshot_id) else {
        return Ok(HashMap::new());
    };
    if snapshot.encryption_key_id().is_some() {
        // Encrypted manifests: no statistics rather than a second key path.
        return Ok(HashMap::new());
    }
    let file_io = table.file_io();
    let bytes = file_io.new_input(snapshot.manifest_list())?.read().await?;
    let list = ManifestList::parse_with_version(&bytes, metadata.format_version())?;
    let ids: Vec<Option<i32>> = schema.fields().iter().map(|f| field_id(f)).collect();
    let mut out = HashMap::new();
    for manifest_file in list.entries() {
        let manifest = manifest_file.load_manifest(file_io).await?;
        for entry in manifest.entries() {
            if !entry.is_alive() || entry.content_type() != DataContentType::Data {
                continue;
            }
            let file = entry.data_file();
            out.insert(
                file.file_path().to_string(),
                Arc::new(of_file(file, schema, &ids)),
            );
        }
    }
    Ok(out)
}

/// One data file's statistics in `schema`'s column order.
fn of_file(file: &DataFile, schema: &Schema, ids: &[Option<i32>]) -> Statistics {
    let column_statistics = schema
        .fields()
        .iter()
        .zip(ids)
        .map(|(field, id)| {
            let mut c = ColumnStatistics::new_unknown();
            let Some(id) = id else {
                return c;
            };
            if let Some(n) = file.null_value_counts().get(id) {
                c.null_count = Precision::Inexact(*n as usize);
            }
            let bound = |d: Option<&Datum>| {
                d.and_then(|d| scalar(d, field.data_type()))
                    .map_or(Precision::Absent, Precision::Inexact)
            };
            c.min_value = bound(file.lower_bounds().get(id));
            c.max_value = bound(file.upper_bounds().get(id));
            c
        })
        .collect();
    Statistics {
        num_rows: Precision::Inexact(file.record_count() as usize),
        total_byte_size: Precision::Inexact(file.file_size_in_bytes() as usize),
        column_statistics,
    }
}

/// A bound as a value of the column's Arrow type; `None` for types whose
/// bounds are not used: floats (a NaN is in no bound, yet DataFusion orders
/// it above every number, so a bound could prune a file it matches in),
/// nested, binary, times, and a value of another type than the column's.
fn scalar(datum: &Datum, ty: &DataType) -> Option<ScalarValue> {
    use PrimitiveLiteral as L;
    use PrimitiveType as P;
    let value = match (datum.data_type(), datum.literal(), ty) {
        (P::Boolean, L::Boolean(v), DataType::Boolean) => ScalarValue::Boolean(Some(*v)),
        (P::Int, L::Int(v), DataType::Int32) => ScalarValue::Int32(Some(*v)),
        (P::Int, L::Int(v), DataType::Int64) => ScalarValue::Int64(Some(i64::from(*v))),
        (P::Long, L::Long(v), DataType::Int64) => ScalarValue::Int64(Some(*v)),
        (P::Date, L::Int(v), DataType::Date32) => ScalarValue::Date32(Some(*v)),
        (
            P::Timestamp | P::Timestamptz,
            L::Long(v),
            DataType::Timestamp(TimeUnit::Microsecond, tz),
        ) => ScalarValue::TimestampMicrosecond(Some(*v), tz.clone()),
        (
            P::TimestampNs | P::TimestamptzNs,
            L::Long(v),
            DataType::Timestamp(TimeUnit::Nanosecond, tz),
        ) => ScalarValue::TimestampNanosecond(Some(*v), tz.clone()),
        (P::Decimal { scale, .. }, L::Int128(v), DataType::Decimal128(p, s))
            if i64::from(*scale) == i64::from(*s) =>
        {
            ScalarValue::Decimal128(Some(*v), *p, *s)
        }
        (P::String, L::String(v), DataType::Utf8) => ScalarValue::Utf8(Some(v.clone())),
        (P::String, L::String(v), DataType::Utf8View) => ScalarValue::Utf8View(Some(v.clone())),
        (P::String, L::String(v), DataType::LargeUtf8) => ScalarValue::LargeUtf8(Some(v.clone())),
        _ => return None,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_take_the_column_type_or_none() {
        assert_eq!(
            scalar(&Datum::int(7), &DataType::Int64),
            Some(ScalarValue::Int64(Some(7)))
        );
        assert_eq!(
            scalar(
                &Datum::decimal_from_str("19.99").unwrap(),
                &DataType::Decimal128(10, 2)
            ),
            Some(ScalarValue::Decimal128(Some(1999), 10, 2))
        );
        assert_eq!(
            scalar(&Datum::string("a"), &DataType::Utf8View),
            Some(ScalarValue::Utf8View(Some("a".into())))
        );
        // Micro- and nanoseconds are not mixed up.
        assert_eq!(
            scalar(
                &Datum::timestamp_micros(5),
                &DataType::Timestamp(TimeUnit::Nanosecond, None)
            ),
            None
        );
        assert_eq!(
            scalar(
                &Datum::timestamp_micros(5),
                &DataType::Timestamp(TimeUnit::Microsecond, None)
            ),
            Some(ScalarValue::TimestampMicrosecond(Some(5), None))
        );
        // Floats never (NaN is in no bound); nor a value of another type.
        assert_eq!(scalar(&Datum::double(1.0), &DataType::Float64), None);
        assert_eq!(scalar(&Datum::long(1), &DataType::Utf8), None);
    }
}
