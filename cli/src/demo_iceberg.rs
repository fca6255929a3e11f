//! The demo's Iceberg product, `logistics.shipments`: one shipment per
//! shipped, delivered or returned order, appended one snapshot per day and
//! partitioned by region (see [`meshq_connectors::iceberg::IcebergWriter`]).

use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use meshq_connectors::iceberg::IcebergWriter;

use crate::rng::Rng;

const CARRIERS: &[&str] = &["DHL", "UPS", "FedEx", "PostNL", "Yamato"];
const REGIONS: &[&str] = &["AMER", "APAC", "EMEA"];

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    Arc::new(Schema::new(vec![
        Field::new("shipment_id", DataType::Utf8, false),
        Field::new("order_id", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("carrier", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("shipped_at", ts.clone(), false),
        Field::new("delivered_at", ts, true),
        Field::new("weight_kg", DataType::Float64, false),
    ]))
}

/// The Iceberg table being written, one snapshot per day.
pub(crate) struct ShipmentsWriter {
    table: IcebergWriter,
    rng: Rng,
}

impl ShipmentsWriter {
    /// Creates the empty table in folder `dir`.
    pub(crate) async fn create(dir: &std::path::Path) -> Result<Self> {
        let table = IcebergWriter::create(dir, "logistics", "shipments", &schema(), Some("region"))
            .await
            .context("creating the Iceberg table")?;
        Ok(Self {
            table,
            rng: Rng(0x7368_6970_6d65_6e74), // "shipment"
        })
    }

    /// Appends the shipments of one day's `orders` as one snapshot.
    pub(crate) async fn append_day(&mut self, orders: &RecordBatch) -> Result<()> {
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
        let mut rows: Vec<Vec<Shipment>> = REGIONS.iter().map(|_| Vec::new()).collect();
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
            let region = REGIONS
                .iter()
                .position(|r| *r == regions.value(i))
                .expect("a demo region");
            rows[region].push(Shipment {
                shipment_id: format!("S{}", &order_id[1..]),
                order_id: order_id.to_string(),
                carrier: self.rng.pick(CARRIERS),
                status,
                shipped,
                delivered,
                weight: (5 + self.rng.below(2_995)) as f64 / 100.0,
            });
        }
        let batches = REGIONS
            .iter()
            .zip(&rows)
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(region, rows)| shipments_batch(region, rows))
            .collect::<Result<Vec<_>>>()?;
        self.table
            .append(&batches)
            .await
            .context("committing an Iceberg snapshot")
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
        schema(),
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
