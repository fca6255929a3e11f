//! Iceberg schemas as Arrow schemas.
//!
//! Every field carries its Iceberg field id under `PARQUET:field_id`, the
//! key the Parquet reader uses for the ids it finds in data files, so that
//! data files are matched to the table schema by id, never by name.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use iceberg::spec::{NestedField, PrimitiveType, Schema as IcebergSchema, Type};
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

use crate::error::{Error, Result};

/// An Iceberg type with no Arrow equivalent meshq can serve.
#[derive(Debug)]
struct TypeProblem {
    /// The column, outermost first.
    columns: Vec<String>,
    what: String,
}

impl TypeProblem {
    fn new(what: String) -> Self {
        Self {
            columns: Vec::new(),
            what,
        }
    }

    fn in_column(mut self, name: &str) -> Self {
        self.columns.insert(0, name.to_string());
        self
    }
}

/// The Arrow schema of an Iceberg schema (of the table at `location`).
/// Strings and binaries come as views when `views` is set (as DataFusion's
/// Parquet reader produces them).
pub fn arrow_schema(schema: &IcebergSchema, views: bool, location: &str) -> Result<Schema> {
    let fields = schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| arrow_field(f, views))
        .collect::<Result<Vec<_>, TypeProblem>>()
        .map_err(|p| {
            let columns: Vec<String> = p
                .columns
                .iter()
                .map(|c| format!("column `{c}`: "))
                .collect();
            Error::unsupported(
                location,
                format!(
                    "Iceberg table at `{location}`: {}{}",
                    columns.concat(),
                    p.what
                ),
            )
        })?;
    Ok(Schema::new(fields))
}

fn arrow_field(field: &NestedField, views: bool) -> Result<Field, TypeProblem> {
    let data_type = arrow_type(&field.field_type, views).map_err(|e| e.in_column(&field.name))?;
    Ok(
        Field::new(&field.name, data_type, !field.required).with_metadata(HashMap::from([(
            PARQUET_FIELD_ID_META_KEY.to_string(),
            field.id.to_string(),
        )])),
    )
}

fn arrow_type(ty: &Type, views: bool) -> Result<DataType, TypeProblem> {
    Ok(match ty {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => DataType::Boolean,
            PrimitiveType::Int => DataType::Int32,
            PrimitiveType::Long => DataType::Int64,
            PrimitiveType::Float => DataType::Float32,
            PrimitiveType::Double => DataType::Float64,
            PrimitiveType::Decimal { precision, scale } => {
                let precision = u8::try_from(*precision).map_err(|_| {
                    TypeProblem::new(format!("decimal precision {precision} is out of range"))
                })?;
                let scale = i8::try_from(*scale).map_err(|_| {
                    TypeProblem::new(format!("decimal scale {scale} is out of range"))
                })?;
                DataType::Decimal128(precision, scale)
            }
            PrimitiveType::Date => DataType::Date32,
            PrimitiveType::Time => DataType::Time64(TimeUnit::Microsecond),
            PrimitiveType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PrimitiveType::Timestamptz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
            }
            PrimitiveType::TimestampNs => DataType::Timestamp(TimeUnit::Nanosecond, None),
            PrimitiveType::TimestamptzNs => {
                DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
            }
            PrimitiveType::String if views => DataType::Utf8View,
            PrimitiveType::String => DataType::Utf8,
            PrimitiveType::Uuid => DataType::FixedSizeBinary(16),
            PrimitiveType::Fixed(n) => DataType::FixedSizeBinary(
                i32::try_from(*n)
                    .map_err(|_| TypeProblem::new(format!("fixed({n}) is too large")))?,
            ),
            PrimitiveType::Binary if views => DataType::BinaryView,
            PrimitiveType::Binary => DataType::Binary,
        },
        Type::Struct(s) => DataType::Struct(Fields::from(
            s.fields()
                .iter()
                .map(|f| arrow_field(f, views))
                .collect::<Result<Vec<_>, TypeProblem>>()?,
        )),
        Type::List(l) => DataType::List(Arc::new(
            arrow_field(&l.element_field, views)?.with_name("element"),
        )),
        Type::Map(m) => {
            let key = arrow_field(&m.key_field, views)?.with_name("key");
            let value = arrow_field(&m.value_field, views)?.with_name("value");
            DataType::Map(
                Arc::new(Field::new(
                    "key_value",
                    DataType::Struct(Fields::from(vec![key, value])),
                    false,
                )),
                false,
            )
        }
    })
}

/// The field id an Arrow field carries, if any.
pub fn field_id(field: &Field) -> Option<i32> {
    field
        .metadata()
        .get(PARQUET_FIELD_ID_META_KEY)
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{ListType, NestedField, StructType};

    use super::*;

    #[test]
    fn converts_types_and_keeps_field_ids() {
        let schema = IcebergSchema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(
                    2,
                    "amount",
                    Type::Primitive(PrimitiveType::Decimal {
                        precision: 12,
                        scale: 2,
                    }),
                )
                .into(),
                NestedField::optional(3, "at", Type::Primitive(PrimitiveType::Timestamptz)).into(),
                NestedField::optional(
                    4,
                    "tags",
                    Type::List(ListType::new(
                        NestedField::list_element(5, Type::Primitive(PrimitiveType::String), false)
                            .into(),
                    )),
                )
                .into(),
                NestedField::optional(
                    6,
                    "addr",
                    Type::Struct(StructType::new(vec![
                        NestedField::optional(7, "city", Type::Primitive(PrimitiveType::String))
                            .into(),
                    ])),
                )
                .into(),
            ])
            .build()
            .unwrap();
        let arrow = arrow_schema(&schema, false, "/t").unwrap();
        assert_eq!(arrow.field(0).data_type(), &DataType::Int64);
        assert!(!arrow.field(0).is_nullable());
        assert_eq!(field_id(arrow.field(0)), Some(1));
        assert_eq!(arrow.field(1).data_type(), &DataType::Decimal128(12, 2));
        assert_eq!(
            arrow.field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        );
        let DataType::List(element) = arrow.field(3).data_type() else {
            panic!("not a list: {}", arrow.field(3).data_type());
        };
        assert_eq!(field_id(element), Some(5));
        let DataType::Struct(inner) = arrow.field(4).data_type() else {
            panic!("not a struct");
        };
        assert_eq!(field_id(&inner[0]), Some(7));
        let views = arrow_schema(&schema, true, "/t").unwrap();
        assert_eq!(views.field(0).data_type(), &DataType::Int64);
        let DataType::Struct(inner) = views.field(4).data_type() else {
            panic!("not a struct");
        };
        assert_eq!(inner[0].data_type(), &DataType::Utf8View);
    }
}
