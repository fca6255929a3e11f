//! Writing Iceberg tables from Arrow batches, for the demo and the
//! benchmarks.
//!
//! meshq serves data products and does not write them; this writer exists
//! so that the demo and the benchmark meshes can carry real Iceberg tables.
//! Data files are written by the Parquet writer with Iceberg field ids;
//! table metadata, manifests and snapshots are written by the `iceberg`
//! crate's own transaction code (a fast append per call), so the result is
//! a standard Iceberg v2 table. Flat schemas only; optionally partitioned by
//! the identity of one column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use iceberg::memory::{MEMORY_CATALOG_WAREHOUSE, MemoryCatalogBuilder};
use iceberg::spec::{
    DataContentType, DataFileBuilder, DataFileFormat, Datum, Literal, NestedField, PrimitiveType,
    Schema as IcebergSchema, Struct, Transform, Type, UnboundPartitionSpec,
};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};
use parquet::file::properties::WriterProperties;

use super::predicate::scalar_datum;
use super::storage::{MeshStorage, MeshStorageFactory};
use crate::store::StoreRegistry;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum WriteError {
    #[error("Iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
}

/// An Iceberg table being written, one snapshot per [`IcebergWriter::append`].
pub struct IcebergWriter {
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    data_dir: PathBuf,
    file_schema: SchemaRef,
    partition_column: Option<usize>,
    files: usize,
}

impl std::fmt::Debug for IcebergWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergWriter")
            .field("table", &self.ident)
            .finish_non_exhaustive()
    }
}

fn iceberg_type(t: &DataType) -> Result<PrimitiveType, WriteError> {
    Ok(match t {
        DataType::Boolean => PrimitiveType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 => PrimitiveType::Int,
        DataType::Int64 => PrimitiveType::Long,
        DataType::Float32 => PrimitiveType::Float,
        DataType::Float64 => PrimitiveType::Double,
        DataType::Decimal128(p, s) => PrimitiveType::Decimal {
            precision: u32::from(*p),
            scale: u32::try_from(*s)
                .map_err(|_| WriteError::Unsupported(format!("negative decimal scale {s}")))?,
        },
        DataType::Date32 => PrimitiveType::Date,
        DataType::Timestamp(TimeUnit::Microsecond, None) => PrimitiveType::Timestamp,
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => PrimitiveType::Timestamptz,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => PrimitiveType::String,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => PrimitiveType::Binary,
        other => {
            return Err(WriteError::Unsupported(format!(
                "type {other} is not supported by the Iceberg writer"
            )));
        }
    })
}

impl IcebergWriter {
    /// Creates an empty table in folder `dir` (which must not hold one),
    /// named `namespace.name`, with the columns of `schema` (field ids 1..n
    /// in order), partitioned by the identity of `partition_by` if given.
    pub async fn create(
        dir: &Path,
        namespace: &str,
        name: &str,
        schema: &Schema,
        partition_by: Option<&str>,
    ) -> Result<Self, WriteError> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let mut fields = Vec::new();
        let mut file_fields = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let id = i32::try_from(i + 1).expect("few columns");
            let ty = Type::Primitive(iceberg_type(f.data_type())?);
            fields.push(Arc::new(if f.is_nullable() {
                NestedField::optional(id, f.name(), ty)
            } else {
                NestedField::required(id, f.name(), ty)
            }));
            file_fields.push(
                Field::new(f.name(), f.data_type().clone(), f.is_nullable()).with_metadata(
                    HashMap::from([(PARQUET_FIELD_ID_META_KEY.to_string(), id.to_string())]),
                ),
            );
        }
        let iceberg_schema = IcebergSchema::builder().with_fields(fields).build()?;
        let partition_column = match partition_by {
            Some(col) => Some(schema.index_of(col)?),
            None => None,
        };
        let storage = MeshStorage::new(Arc::new(RuntimeEnv::default()), StoreRegistry::default());
        let warehouse = format!("file://{}", dir.parent().unwrap_or(&dir).display());
        let catalog = MemoryCatalogBuilder::default()
            .with_storage_factory(Arc::new(MeshStorageFactory::new(storage)))
            .load(
                "meshq-writer",
                HashMap::from([(MEMORY_CATALOG_WAREHOUSE.to_string(), warehouse)]),
            )
            .await?;
        let ns = NamespaceIdent::new(namespace.to_string());
        catalog.create_namespace(&ns, HashMap::new()).await?;
        let mut creation = TableCreation::builder()
            .name(name.to_string())
            .location(format!("file://{}", dir.display()))
            .schema(iceberg_schema)
            .build();
        if let Some(i) = partition_column {
            let source = i32::try_from(i + 1).expect("few columns");
            creation.partition_spec = Some(
                UnboundPartitionSpec::builder()
                    .add_partition_field(source, schema.field(i).name(), Transform::Identity)?
                    .build(),
            );
        }
        let table = catalog.create_table(&ns, creation).await?;
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        Ok(Self {
            catalog: Arc::new(catalog),
            ident: table.identifier().clone(),
            data_dir,
            file_schema: Arc::new(Schema::new(file_fields)),
            partition_column,
            files: 0,
        })
    }

    /// Appends `batches` as one snapshot: one data file per partition value
    /// (one file in all for an unpartitioned table). A partitioned table's
    /// batches must each hold a single value of the partition column.
    pub async fn append(&mut self, batches: &[RecordBatch]) -> Result<(), WriteError> {
        let mut groups: Vec<(Option<String>, Vec<RecordBatch>)> = Vec::new();
        for b in batches {
            let b = RecordBatch::try_new(Arc::clone(&self.file_schema), b.columns().to_vec())?;
            let key = match self.partition_column {
                Some(i) => Some(single_string_value(&b, i)?),
                None => None,
            };
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(b),
                None => groups.push((key, vec![b])),
            }
        }
        let mut files = Vec::new();
        for (key, group) in groups {
            self.files += 1;
            let folder = match &key {
                Some(v) => self.data_dir.join(format!(
                    "{}={v}",
                    self.file_schema
                        .field(self.partition_column.expect("partitioned"))
                        .name()
                )),
                None => self.data_dir.clone(),
            };
            std::fs::create_dir_all(&folder)?;
            let path = folder.join(format!("part-{:05}.parquet", self.files));
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(1 << 20))
                .build();
            let mut writer = ArrowWriter::try_new(
                std::fs::File::create(&path)?,
                Arc::clone(&self.file_schema),
                Some(props),
            )?;
            let mut rows = 0u64;
            let mut bounds = Bounds::new(&self.file_schema)?;
            for b in &group {
                rows += b.num_rows() as u64;
                bounds.update(b)?;
                writer.write(b)?;
            }
            let (lower, upper, nulls) = bounds.finish()?;
            writer.close()?;
            let size = std::fs::metadata(&path)?.len();
            let partition = match key {
                Some(v) => Struct::from_iter([Some(Literal::string(v))]),
                None => Struct::empty(),
            };
            files.push(
                DataFileBuilder::default()
                    .content(DataContentType::Data)
                    .file_path(format!("file://{}", path.display()))
                    .file_format(DataFileFormat::Parquet)
                    .partition(partition)
                    .partition_spec_id(0)
                    .record_count(rows)
                    .file_size_in_bytes(size)
                    .lower_bounds(lower)
                    .upper_bounds(upper)
                    .null_value_counts(nulls)
                    .build()
                    .map_err(|e| WriteError::Unsupported(e.to_string()))?,
            );
        }
        let table = self.catalog.load_table(&self.ident).await?;
        let tx = Transaction::new(&table);
        let tx = tx.fast_append().add_data_files(files).apply(tx)?;
        tx.commit(self.catalog.as_ref()).await?;
        Ok(())
    }
}

/// Per-column minimum, maximum and null count of a data file, for the
/// manifest: they let planners skip files a filter excludes and estimate
/// joins.
struct Bounds {
    columns: Vec<Option<(MinAccumulator, MaxAccumulator)>>,
    nulls: Vec<u64>,
}

impl Bounds {
    fn new(schema: &Schema) -> Result<Self, WriteError> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                let supported = matches!(
                    f.data_type(),
                    DataType::Int32
                        | DataType::Int64
                        | DataType::Float64
                        | DataType::Date32
                        | DataType::Timestamp(TimeUnit::Microsecond, _)
                        | DataType::Utf8
                        | DataType::Utf8View
                );
                if !supported {
                    return Ok(None);
                }
                Ok(Some((
                    MinAccumulator::try_new(f.data_type())?,
                    MaxAccumulator::try_new(f.data_type())?,
                )))
            })
            .collect::<datafusion::common::Result<Vec<_>>>()
            .map_err(|e| WriteError::Unsupported(e.to_string()))?;
        let nulls = vec![0; columns.len()];
        Ok(Self { columns, nulls })
    }

    fn update(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        for (i, acc) in self.columns.iter_mut().enumerate() {
            if let Some((min, max)) = acc {
                self.nulls[i] += batch.column(i).null_count() as u64;
                let col = [Arc::clone(batch.column(i))];
                min.update_batch(&col)
                    .and_then(|()| max.update_batch(&col))
                    .map_err(|e| WriteError::Unsupported(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The lower and upper bounds and the null counts, by field id.
    #[allow(clippy::type_complexity)]
    fn finish(
        self,
    ) -> Result<(HashMap<i32, Datum>, HashMap<i32, Datum>, HashMap<i32, u64>), WriteError> {
        let mut lower = HashMap::new();
        let mut upper = HashMap::new();
        let mut nulls = HashMap::new();
        for (i, acc) in self.columns.into_iter().enumerate() {
            let Some((mut min, mut max)) = acc else {
                continue;
            };
            let id = i32::try_from(i + 1).expect("few columns");
            nulls.insert(id, self.nulls[i]);
            let (lo, hi) = min
                .evaluate()
                .and_then(|lo| Ok((lo, max.evaluate()?)))
                .map_err(|e| WriteError::Unsupported(e.to_string()))?;
            if let (Some(lo), Some(hi)) = (scalar_datum(&lo), scalar_datum(&hi)) {
                lower.insert(id, lo);
                upper.insert(id, hi);
            }
        }
        Ok((lower, upper, nulls))
    }
}

fn single_string_value(batch: &RecordBatch, column: usize) -> Result<String, WriteError> {
    let col = arrow::compute::cast(batch.column(column), &DataType::Utf8)?;
    let strings = col
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .expect("cast to Utf8");
    let first = strings.value(0).to_string();
    if strings.iter().any(|v| v != Some(first.as_str())) {
        return Err(WriteError::Unsupported(
            "a batch of a partitioned Iceberg table must hold one partition value".into(),
        ));
    }
    Ok(first)
}
