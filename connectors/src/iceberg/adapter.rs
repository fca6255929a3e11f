//! Reading Iceberg data files by field id.
//!
//! Iceberg identifies columns by id, not by name: a column renamed after a
//! file was written keeps its id, and a column added later is absent from
//! older files. DataFusion's default adapter matches the table schema to a
//! file's schema by name; this adapter first renames the file's columns to
//! the table's names by field id, lets the default adapter insert casts (an
//! `int` widened to `long`) and nulls (a column the file predates), then
//! points the columns back at the file's own names so statistics pruning
//! finds them.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use std::collections::HashSet;

use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};

use super::schema::field_id;

/// Creates [`FieldIdAdapter`]s.
#[derive(Debug, Clone, Default)]
pub struct FieldIdAdapterFactory {
    /// Field ids of identity-partition source columns. Iceberg lets a data
    /// file omit them (the value is in the manifest); meshq does not fill
    /// columns from partition values yet, so such a file is refused rather
    /// than read as NULLs.
    identity_sources: Arc<HashSet<i32>>,
}

impl FieldIdAdapterFactory {
    /// A factory for a table whose identity partitions have these source
    /// field ids.
    pub fn new(identity_sources: HashSet<i32>) -> Self {
        Self {
            identity_sources: Arc::new(identity_sources),
        }
    }
}

impl PhysicalExprAdapterFactory for FieldIdAdapterFactory {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        let has_ids = physical_file_schema
            .fields()
            .iter()
            .any(|f| field_id(f).is_some());
        for logical in logical_file_schema.fields() {
            let Some(id) = field_id(logical).filter(|id| self.identity_sources.contains(id)) else {
                continue;
            };
            let present = physical_file_schema.fields().iter().any(|p| {
                if has_ids {
                    field_id(p) == Some(id)
                } else {
                    p.name() == logical.name()
                }
            });
            if !present {
                return Err(DataFusionError::Execution(format!(
                    "an Iceberg data file lacks the identity-partition column `{}` (as files added with add_files may); meshq does not fill columns from partition values yet, and refuses rather than read them as NULL",
                    logical.name()
                )));
            }
        }
        if !has_ids {
            // A file written without field ids (e.g. imported Parquet): the
            // Iceberg spec falls back to names.
            return DefaultPhysicalExprAdapterFactory
                .create(logical_file_schema, physical_file_schema);
        }
        let renamed: Vec<Field> = physical_file_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let by_id = field_id(f).and_then(|id| {
                    logical_file_schema
                        .fields()
                        .iter()
                        .find(|l| field_id(l) == Some(id))
                });
                let name = match by_id {
                    Some(l) => l.name().clone(),
                    // Not in the table schema (a dropped column): give it
                    // a name no table column can have.
                    None => format!("\u{0}dropped_{i}"),
                };
                f.as_ref().clone().with_name(name)
            })
            .collect();
        let renamed = Arc::new(Schema::new_with_metadata(
            renamed,
            physical_file_schema.metadata().clone(),
        ));
        let inner = DefaultPhysicalExprAdapterFactory.create(logical_file_schema, renamed)?;
        Ok(Arc::new(FieldIdAdapter {
            inner,
            physical_file_schema,
        }))
    }
}

/// Adapts expressions over the table schema to one data file, by field id.
#[derive(Debug)]
pub struct FieldIdAdapter {
    inner: Arc<dyn PhysicalExprAdapter>,
    physical_file_schema: SchemaRef,
}

impl PhysicalExprAdapter for FieldIdAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        let adapted = self.inner.rewrite(expr)?;
        adapted
            .transform(|e| {
                if let Some(col) = e.downcast_ref::<Column>() {
                    let physical = self.physical_file_schema.field(col.index()).name();
                    if physical != col.name() {
                        return Ok(Transformed::yes(
                            Arc::new(Column::new(physical, col.index())) as Arc<dyn PhysicalExpr>,
                        ));
                    }
                }
                Ok(Transformed::no(e))
            })
            .data()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{Int32Array, RecordBatch, StringArray};
    use arrow::datatypes::DataType;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, lit};
    use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

    use super::*;

    fn field(name: &str, ty: DataType, id: i32) -> Field {
        Field::new(name, ty, true).with_metadata(HashMap::from([(
            PARQUET_FIELD_ID_META_KEY.to_string(),
            id.to_string(),
        )]))
    }

    #[test]
    fn renamed_widened_and_added_columns_resolve_by_id() {
        // Table: id long (1), full_name string (2, renamed from `name`),
        // score int (3, added after the file was written).
        let logical = Arc::new(Schema::new(vec![
            field("id", DataType::Int64, 1),
            field("full_name", DataType::Utf8, 2),
            field("score", DataType::Int32, 3),
        ]));
        // File: name first, then id as int.
        let physical = Arc::new(Schema::new(vec![
            field("name", DataType::Utf8, 2),
            field("id", DataType::Int32, 1),
        ]));
        let adapter = FieldIdAdapterFactory::default()
            .create(Arc::clone(&logical), Arc::clone(&physical))
            .unwrap();
        let batch = RecordBatch::try_new(
            Arc::clone(&physical),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int32Array::from(vec![7, 8])),
            ],
        )
        .unwrap();
        let eval = |name: &str, idx: usize| {
            let e = adapter.rewrite(Arc::new(Column::new(name, idx))).unwrap();
            e.evaluate(&batch).unwrap().into_array(2).unwrap()
        };
        let id = eval("id", 0);
        assert_eq!(id.data_type(), &DataType::Int64);
        assert_eq!(
            arrow::util::display::array_value_to_string(&id, 1).unwrap(),
            "8"
        );
        let full_name = eval("full_name", 1);
        assert_eq!(
            arrow::util::display::array_value_to_string(&full_name, 0).unwrap(),
            "a"
        );
        let score = eval("score", 2);
        assert_eq!(score.null_count(), 2);
        // Predicates point at the file's own column names.
        let pred = adapter
            .rewrite(Arc::new(BinaryExpr::new(
                Arc::new(Column::new("full_name", 1)),
                Operator::Eq,
                lit("b"),
            )))
            .unwrap();
        assert!(pred.to_string().contains("name@0"), "{pred}");
        assert!(!pred.to_string().contains("full_name"), "{pred}");
        // `score` (3) as an identity-partition source the file lacks: refused.
        let err = FieldIdAdapterFactory::new(HashSet::from([3]))
            .create(Arc::clone(&logical), Arc::clone(&physical))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("lacks the identity-partition column `score`"),
            "{err}"
        );
        // `id` (1) is in the file: fine.
        assert!(
            FieldIdAdapterFactory::new(HashSet::from([1]))
                .create(logical, physical)
                .is_ok()
        );
    }
}
