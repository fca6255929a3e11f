//! The demo's Iceberg product, `logistics.shipments`: one shipment per
//! shipped, delivered or returned order, appended one snapshot per day and
//! partitioned by region.
//!
//! Data files are written by meshq's Parquet writer with Iceberg field ids;
//! table metadata, manifests and snapshots are written by the `iceberg`
//! crate's own transaction code, so the table is a standard Iceberg v2 table
//! any engine can read.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::runtime_env::RuntimeEnv;
use iceberg::memory::{MEMORY_CATALOG_WAREHOUSE, MemoryCatalogBuilder};
use iceberg::spec::{
    DataContentType, DataFileBuilder, DataFileFormat, Datum, Literal, NestedField, PrimitiveType,
    Schema as IcebergSchema, Struct, Transform, Type, UnboundPartitionSpec,
};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation};
use meshq_connectors::StoreRegistry;
use meshq_connectors::iceberg::{MeshStorage, MeshStorageFactory};
use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};

use crate::demo::Rng;

const CARRIERS: &[&str] = &["DHL", "UPS", "FedEx", "PostNL", "Yamato"];

/// Arrow schema of the data files, with Iceberg field ids.
fn file_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    let fields = [
        ("shipment_id", DataType::Utf8, false),
        ("order_id", DataType::Utf8, false),
        ("region", DataType::Utf8, false),
        ("carrier", DataType::Utf8, false),
        ("status", DataType::Utf8, false),
        ("shipped_at", ts.clone(), false),
        ("delivered_at", ts, true),
        ("weight_kg", DataType::Float64, false),
    ];
    Arc::new(Schema::new(
        fields
            .iter()
            .enumerate()
            .map(|(i, (name, ty, nullable))| {
                Field::new(*name, ty.clone(), *nullable).with_metadata(HashMap::from([(
                    PARQUET_FIELD_ID_META_KEY.to_string(),
                    (i + 1).to_string(),
                )]))
            })
            .collect::<Vec<_>>(),
    ))
}

fn iceberg_schema() -> Result<IcebergSchema> {
    let s = |p| Type::Primitive(p);
    Ok(IcebergSchema::builder()
        .with_fields(vec![
            NestedField::required(1, "shipment_id", s(PrimitiveType::String)).into(),
            NestedField::required(2, "order_id", s(PrimitiveType::String)).into(),
            NestedField::required(3, "region", s(PrimitiveType::String)).into(),
            NestedField::required(4, "carrier", s(PrimitiveType::String)).into(),
            NestedField::required(5, "status", s(PrimitiveType::String)).into(),
            NestedField::required(6, "shipped_at", s(PrimitiveType::Timestamptz)).into(),
            NestedField::optional(7, "delivered_at", s(PrimitiveType::Timestamptz)).into(),
            NestedField::required(8, "weight_kg", s(PrimitiveType::Double)).into(),
        ])
        .build()?)
}

/// The Iceberg table being written, one snapshot per day.
pub(crate) struct ShipmentsWriter {
    catalog: Arc<dyn Catalog>,
    ident: iceberg::TableIdent,
    data_dir: std::path::PathBuf,
    rng: Rng,
    day: u32,
}

impl ShipmentsWriter {
    /// Creates the empty table at `dir` (its folder).
    pub(crate) async fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let storage = MeshStorage::new(Arc::new(RuntimeEnv::default()), StoreRegistry::default());
        let warehouse = format!("file://{}", dir.parent().unwrap_or(&dir).display());
        let catalog = MemoryCatalogBuilder::default()
            .with_storage_factory(Arc::new(MeshStorageFactory::new(storage)))
            .load(
                "demo",
                HashMap::from([(MEMORY_CATALOG_WAREHOUSE.to_string(), warehouse)]),
            )
            .await?;
        let namespace = NamespaceIdent::new("logistics".into());
        catalog.create_namespace(&namespace, HashMap::new()).await?;
        let spec = UnboundPartitionSpec::builder()
            .add_partition_field(3, "region", Transform::Identity)?
            .build();
        let creation = TableCreation::builder()
            .name("shipments".into())
            .location(format!("file://{}", dir.display()))
            .schema(iceberg_schema()?)
            .partition_spec(spec)
            .build();
        let table = catalog.create_table(&namespace, creation).await?;
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        Ok(Self {
            catalog: Arc::new(catalog),
            ident: table.identifier().clone(),
            data_dir,
            rng: Rng(0x7368_6970_6d65_6e74), // "shipment"
            day: 0,
        })
    }

    /// Appends the shipments of one day's `orders` as one snapshot.
    pub(crate) async fn append_day(&mut self, orders: &RecordBatch) -> Result<()> {
        self.day += 1;
        let col = |name: &str| orders.column(orders.schema().index_of(name).expect("column"));
        let ids = col("order_id");
        let ids = ids.as_any().downcast_ref::<StringArray>().expect("utf8");
        let regions = col("region");
        let regions = regions
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        let statuses = col("status");
        let statuses = statuses
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        let created = col("created_at");
        let created = created
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("timestamp");
        // Rows by region: one data file per region and day.
        let mut by_region: BTreeMap<String, Vec<Shipment>> = BTreeMap::new();
        for i in 0..orders.num_rows() {
            let status = match statuses.value(i) {
                "shipped" => "in_transit",
                "delivered" => "delivered",
                "returned" => "returned",
                _ => continue,
            };
            let shipped = created.value(i) + 3_600_000_000 * (2 + self.rng.below(46) as i64);
            let delivered = (status != "in_transit")
                .then(|| shipped + 3_600_000_000 * (12 + self.rng.below(96) as i64));
            let order_id = ids.value(i);
            by_region
                .entry(regions.value(i).to_string())
                .or_default()
                .push(Shipment {
                    shipment_id: format!("S{}", &order_id[1..]),
                    order_id: order_id.to_string(),
                    carrier: self.rng.pick(CARRIERS),
                    status,
                    shipped,
                    delivered,
                    weight: (5 + self.rng.below(29_95)) as f64 / 100.0,
                });
        }
        let mut files = Vec::new();
        for (region, rows) in by_region {
            let path = self
                .data_dir
                .join(format!("region={region}/day-{:03}.parquet", self.day));
            std::fs::create_dir_all(path.parent().expect("parent"))?;
            let batch = shipments_batch(&region, &rows)?;
            let mut writer =
                ArrowWriter::try_new(std::fs::File::create(&path)?, batch.schema(), None)?;
            writer.write(&batch)?;
            writer.close()?;
            let size = std::fs::metadata(&path)?.len();
            let (lo, hi) = rows.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
                (lo.min(r.shipped), hi.max(r.shipped))
            });
            files.push(
                DataFileBuilder::default()
                    .content(DataContentType::Data)
                    .file_path(format!("file://{}", path.display()))
                    .file_format(DataFileFormat::Parquet)
                    .partition(Struct::from_iter([Some(Literal::string(&region))]))
                    .partition_spec_id(0)
                    .record_count(rows.len() as u64)
                    .file_size_in_bytes(size)
                    .lower_bounds(HashMap::from([(6, Datum::timestamptz_micros(lo))]))
                    .upper_bounds(HashMap::from([(6, Datum::timestamptz_micros(hi))]))
                    .build()?,
            );
        }
        let table = self.catalog.load_table(&self.ident).await?;
        let tx = Transaction::new(&table);
        let tx = tx.fast_append().add_data_files(files).apply(tx)?;
        tx.commit(self.catalog.as_ref())
            .await
            .context("committing an Iceberg snapshot")?;
        Ok(())
    }
}

struct Shipment {
    shipment_id: String,
    order_id: String,
    carrier: &'static str,
    status: &'static str,
    shipped: i64,
    delivered: Option<i64>,
    weight: f64,
}

fn shipments_batch(region: &str, rows: &[Shipment]) -> Result<RecordBatch> {
    let ts = |v: Vec<Option<i64>>| TimestampMicrosecondArray::from(v).with_timezone("+00:00");
    Ok(RecordBatch::try_new(
        file_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.shipment_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.order_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| region))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.carrier),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.status))),
            Arc::new(ts(rows.iter().map(|r| Some(r.shipped)).collect())),
            Arc::new(ts(rows.iter().map(|r| r.delivered).collect())),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.weight),
            )),
        ],
    )?)
}
