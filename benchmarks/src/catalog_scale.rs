//! Catalog scale: a generated mesh of many products, each a Parquet table
//! with its own contract, all over one small file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

use crate::runners;
use crate::{Timing, measure, rss};

/// Products per domain.
const PER_DOMAIN: usize = 100;

/// Writes a mesh of `products` products under `root` (unless present).
pub fn write_mesh(root: &Path, products: usize) -> Result<()> {
    let marker = root.join(format!(".complete-{products}"));
    if marker.exists() {
        return Ok(());
    }
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    std::fs::create_dir_all(root.join("data"))?;
    let file = root.join("data/t.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("value", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values(0..100)),
            Arc::new(StringArray::from_iter_values(
                (0..100).map(|i| format!("n{i}")),
            )),
            Arc::new(Int64Array::from_iter_values((0..100).map(|i| i * 7))),
        ],
    )?;
    let mut w = ArrowWriter::try_new(std::fs::File::create(&file)?, schema, None)?;
    w.write(&batch)?;
    w.close()?;
    std::fs::write(
        root.join("meshq.yaml"),
        "principals:\n  - { name: reader, roles: [reader] }\n",
    )?;
    for i in 0..products {
        let domain = format!("d{:03}", i / PER_DOMAIN);
        let table = format!("t{i:05}");
        let dir = root.join(&domain);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("{table}.odps.yaml")),
            format!(
                "apiVersion: v1.0.0\nkind: DataProduct\nid: urn:dataproduct:{table}\nname: {table}\nversion: 1.0.0\nstatus: active\ndomain: {domain}\n\
outputPorts:\n  - {{ name: p, type: tables, version: 1.0.0, contractId: urn:datacontract:{table} }}\n"
            ),
        )?;
        std::fs::write(
            dir.join(format!("{table}.odcs.yaml")),
            format!(
                concat!(
                    "apiVersion: v3.1.0\nkind: DataContract\nid: urn:datacontract:{table}\nname: {table}\n",
                    "version: 1.0.0\nstatus: active\ndomain: {domain}\n",
                    "servers:\n  - {{ server: local, type: local, format: parquet, path: '{path}' }}\n",
                    "schema:\n  - name: {table}\n",
                    "    customProperties: [ {{ property: readRoles, value: [reader] }} ]\n",
                    "    properties:\n",
                    "      - {{ name: id, logicalType: integer, required: true, description: Id. }}\n",
                    "      - {{ name: name, logicalType: string, description: Name. }}\n",
                    "      - {{ name: value, logicalType: integer, description: Value. }}\n",
                ),
                table = table,
                domain = domain,
                path = file.display()
            ),
        )?;
    }
    std::fs::write(marker, b"")?;
    Ok(())
}

/// What the catalog-scale run measured.
#[derive(Debug)]
pub struct CatalogScale {
    /// Products in the mesh.
    pub products: usize,
    /// Tables served.
    pub served: usize,
    /// Time to load the mesh and open every table.
    pub load: Duration,
    /// RSS growth over the load.
    pub rss_growth: u64,
    /// Peak RSS of the process after the load.
    pub peak_rss: u64,
    /// SQL to physical plan of a two-table join.
    pub plan: Timing,
}

/// Loads the mesh at `root` and plans a join `runs` times.
pub async fn run(root: &Path, products: usize, runs: usize) -> Result<CatalogScale> {
    let (before, _) = rss();
    let start = Instant::now();
    let engine = runners::engine(root, 2).await?;
    let load = start.elapsed();
    let (after, peak) = rss();
    let served = engine.served_tables().len();
    let session = runners::session(&engine, "reader")?;
    let last = products - 1;
    let sql = format!(
        "SELECT a.name, b.value FROM d000.t00000 a JOIN d{:03}.t{last:05} b ON a.id = b.id WHERE b.value > 10",
        last / PER_DOMAIN
    );
    let (plan, _) = measure(5, runs, || async {
        let df = session.sql(&sql).await?;
        df.create_physical_plan().await?;
        Ok(())
    })
    .await?;
    Ok(CatalogScale {
        products,
        served,
        load,
        rss_growth: after.saturating_sub(before),
        peak_rss: peak,
        plan,
    })
}
