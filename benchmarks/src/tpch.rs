//! TPC-H data, generated with the `tpchgen` crates, published as meshes.
//!
//! Two meshes over the same rows:
//! - `mesh-parquet`: every table a Parquet product (the files raw DataFusion
//!   reads too);
//! - `mesh-split`: `sales` (orders, lineitem) as Delta tables, `customers`
//!   (customer, nation, region) as Parquet, `supply` (part, partsupp,
//!   supplier) as Iceberg tables.
//!
//! Both carry the same policies: a hash mask on `c_phone` and `c_address`
//! (except for `pii-reader`), and a row filter keeping one nation's
//! customers for a regional principal (except for
//! `global-analyst`). Principal `exempt` holds both exempting roles;
//! principal `regional` holds neither.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use meshq_connectors::iceberg::IcebergWriter;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// Every TPC-H table: (domain, table).
pub const TABLES: [(&str, &str); 8] = [
    ("sales", "orders"),
    ("sales", "lineitem"),
    ("customers", "customer"),
    ("customers", "nation"),
    ("customers", "region"),
    ("supply", "part"),
    ("supply", "partsupp"),
    ("supply", "supplier"),
];

/// Secret env var of the benchmark's hash-mask key, and the value used.
pub const KEY_ENV: &str = "MESHQ_BENCH_PII_KEY";
/// The benchmark key (a benchmark value; real meshes keep keys in the
/// environment only).
pub const KEY_VALUE: &str = "meshq-bench-pii-key";
/// The nation the regional principal sees (`n_nationkey`).
pub const REGIONAL_NATION: i64 = 7; // GERMANY

/// Flight SQL logins of the benchmark principals: (user, password).
pub const PASSWORDS: [(&str, &str); 2] =
    [("exempt", "exempt-bench"), ("regional", "regional-bench")];

const BATCH_ROWS: usize = 64 * 1024;

type Batch = Result<RecordBatch, arrow::error::ArrowError>;

/// The schema of `table`.
fn schema_of(table: &str, sf: f64) -> Result<SchemaRef> {
    Ok(batches(table, sf, 1, parts(table, sf))
        .next()
        .context("no rows")??
        .schema())
}

/// How many files a table is written as: about 1.5M rows each.
fn parts(table: &str, sf: f64) -> i32 {
    let rows = match table {
        "lineitem" => 6_000_000.0 * sf,
        "orders" => 1_500_000.0 * sf,
        "partsupp" => 800_000.0 * sf,
        "part" => 200_000.0 * sf,
        "customer" => 150_000.0 * sf,
        _ => 1.0,
    };
    ((rows / 1_500_000.0).ceil() as i32).max(1)
}

/// The batches of part `part` (1-based) of `parts` of `table`.
fn batches(table: &str, sf: f64, part: i32, parts: i32) -> Box<dyn Iterator<Item = Batch>> {
    match table {
        "lineitem" => Box::new(
            LineItemArrow::new(LineItemGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "orders" => Box::new(
            OrderArrow::new(OrderGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "customer" => Box::new(
            CustomerArrow::new(CustomerGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(sf, part, parts))),
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(sf, part, parts))),
        "part" => Box::new(
            PartArrow::new(PartGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "partsupp" => Box::new(
            PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        "supplier" => Box::new(
            SupplierArrow::new(SupplierGenerator::new(sf, part, parts)).with_batch_size(BATCH_ROWS),
        ),
        other => unreachable!("not a TPC-H table: {other}"),
    }
}

/// Paths of a generated benchmark dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Root folder.
    pub root: PathBuf,
    /// Scale factor.
    pub sf: f64,
}

impl Dataset {
    /// The dataset for `sf` under `root` (not necessarily written yet).
    pub fn new(root: &Path, sf: f64) -> Self {
        Self {
            root: root.join(format!("sf{sf}")),
            sf,
        }
    }

    /// Folder of a table's Parquet files.
    pub fn parquet_dir(&self, table: &str) -> PathBuf {
        self.root.join("data/parquet").join(table)
    }

    /// The all-Parquet mesh.
    pub fn mesh_parquet(&self) -> PathBuf {
        self.root.join("mesh-parquet")
    }

    /// The Delta/Parquet/Iceberg mesh.
    pub fn mesh_split(&self) -> PathBuf {
        self.root.join("mesh-split")
    }

    /// The split mesh with the result cache on (1 GiB): its descriptors
    /// copied from [`Dataset::mesh_split`], the same data.
    pub fn mesh_split_cached(&self) -> Result<PathBuf> {
        self.mesh_split_variant("mesh-split-cached", |name, text| {
            if name == "meshq.yaml" {
                format!("{text}cache: {{ enabled: true, max_bytes: 1GiB, ttl: 1h }}\n")
            } else {
                text
            }
        })
    }

    /// The split mesh with every port accelerated by `engine` (`memory` or
    /// `parquet`).
    pub fn mesh_split_accelerated(&self, engine: &str) -> Result<PathBuf> {
        self.mesh_split_variant(&format!("mesh-split-accelerated-{engine}"), |name, text| {
            if name.ends_with(".odps.yaml") {
                text.replace(
                    " }\n",
                    &format!(
                        ", customProperties: [ {{ property: acceleration, value: {{ engine: {engine} }} }} ] }}\n"
                    ),
                )
            } else {
                text
            }
        })
    }

    /// A copy of the split mesh's descriptors in `name`, each file's text
    /// passed through `edit` (file name, text).
    fn mesh_split_variant(
        &self,
        name: &str,
        edit: impl Fn(&str, String) -> String,
    ) -> Result<PathBuf> {
        let from = self.mesh_split();
        let to = self.root.join(name);
        let mut stack = vec![from.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                let target = to.join(path.strip_prefix(&from)?);
                if path.is_dir() {
                    std::fs::create_dir_all(&target)?;
                    stack.push(path);
                } else {
                    std::fs::create_dir_all(to.join(dir.strip_prefix(&from)?))?;
                    let file = path.file_name().unwrap_or_default().to_string_lossy();
                    let text = std::fs::read_to_string(&path)?;
                    std::fs::write(&target, edit(&file, text))?;
                }
            }
        }
        Ok(to)
    }

    fn done_marker(&self) -> PathBuf {
        self.root.join(".complete")
    }

    /// Writes the data and the meshes unless a complete copy exists; the
    /// Delta/Iceberg copies and `mesh-split` only when `split` is set.
    pub async fn ensure(&self, split: bool) -> Result<()> {
        if self.done_marker().exists() && (!split || self.mesh_split().exists()) {
            // The data stays; the mesh files follow this version's contracts.
            return self.write_meshes(split);
        }
        if self.root.exists() {
            std::fs::remove_dir_all(&self.root)?;
        }
        for (_, table) in TABLES {
            let n = parts(table, self.sf);
            let dir = self.parquet_dir(table);
            std::fs::create_dir_all(&dir)?;
            for part in 1..=n {
                write_parquet(
                    &dir.join(format!("part-{part:03}.parquet")),
                    batches(table, self.sf, part, n),
                )
                .with_context(|| format!("writing {table}"))?;
            }
        }
        for (domain, table) in TABLES.into_iter().filter(|_| split) {
            let n = parts(table, self.sf);
            match domain {
                "sales" => {
                    let dir = self.root.join("data/delta").join(table);
                    std::fs::create_dir_all(&dir)?;
                    let url = url::Url::from_directory_path(dir.canonicalize()?)
                        .map_err(|()| anyhow::anyhow!("bad path {}", dir.display()))?;
                    let mut t = deltalake::DeltaTableBuilder::from_url(url)?.build()?;
                    for part in 1..=n {
                        let b: Vec<RecordBatch> = batches(table, self.sf, part, n)
                            .map(|b| to_plain_strings(&b?))
                            .collect::<Result<_>>()?;
                        t = t
                            .write(b)
                            .with_save_mode(deltalake::protocol::SaveMode::Append)
                            .await
                            .with_context(|| format!("writing Delta {table}"))?;
                    }
                }
                "supply" => {
                    let dir = self.root.join("data/iceberg").join(table);
                    let schema = plain_schema(&schema_of(table, self.sf)?);
                    let mut w = IcebergWriter::create(&dir, "supply", table, &schema, None).await?;
                    for part in 1..=n {
                        let b: Vec<RecordBatch> = batches(table, self.sf, part, n)
                            .map(|b| to_plain_strings(&b?))
                            .collect::<Result<_>>()?;
                        w.append(&b).await?;
                    }
                }
                _ => {}
            }
        }
        self.write_meshes(split)?;
        std::fs::write(self.done_marker(), b"")?;
        Ok(())
    }

    fn write_meshes(&self, with_split: bool) -> Result<()> {
        let hashes = PASSWORDS
            .iter()
            .map(|(_, p)| meshq_cli::hash_password(p))
            .collect::<Result<Vec<_>>>()?;
        let meshes = [(self.mesh_parquet(), false), (self.mesh_split(), true)];
        for (mesh, split) in meshes.into_iter().filter(|(_, s)| with_split || !s) {
            std::fs::create_dir_all(mesh.join("governance"))?;
            std::fs::write(mesh.join("meshq.yaml"), platform_yaml(&hashes))?;
            for (domain, table) in TABLES {
                let schema = schema_of(table, self.sf)?;
                let (format, location) = match (split, domain) {
                    (true, "sales") => ("delta", self.root.join("data/delta").join(table)),
                    (true, "supply") => ("iceberg", self.root.join("data/iceberg").join(table)),
                    _ => ("parquet", self.parquet_dir(table)),
                };
                std::fs::create_dir_all(mesh.join(domain))?;
                std::fs::write(
                    mesh.join(format!("{domain}/{table}.odps.yaml")),
                    product_yaml(domain, table),
                )?;
                std::fs::write(
                    mesh.join(format!("{domain}/{table}.odcs.yaml")),
                    contract_yaml(domain, table, format, &location, &schema),
                )?;
            }
        }
        Ok(())
    }
}

/// The schema with string views as plain strings (what Delta and Iceberg
/// writers take).
fn plain_schema(schema: &SchemaRef) -> arrow::datatypes::Schema {
    arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::Utf8View => DataType::Utf8,
                    other => other.clone(),
                };
                f.as_ref().clone().with_data_type(t)
            })
            .collect::<Vec<_>>(),
    )
}

fn to_plain_strings(b: &RecordBatch) -> Result<RecordBatch> {
    let schema = Arc::new(plain_schema(&b.schema()));
    let columns = b
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn write_parquet(path: &Path, mut batches: impl Iterator<Item = Batch>) -> Result<()> {
    let first = batches.next().context("no rows")??;
    let schema = first.schema();
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path)?, schema, Some(props))?;
    w.write(&first)?;
    for b in batches {
        w.write(&b?)?;
    }
    w.close()?;
    Ok(())
}

fn platform_yaml(hashes: &[String]) -> String {
    format!(
        "# meshq-bench TPC-H mesh; passwords in meshq-bench's PASSWORDS.\n\
secrets:\n  pii-key: {{ env: {KEY_ENV} }}\n\
principals:\n\
  - {{ name: exempt, password_hash: \"{}\", roles: [analyst, pii-reader, global-analyst] }}\n\
  - {{ name: regional, password_hash: \"{}\", roles: [analyst], attributes: {{ nation: '{REGIONAL_NATION}' }} }}\n",
        hashes[0], hashes[1]
    )
}

fn product_yaml(domain: &str, table: &str) -> String {
    format!(
        "apiVersion: v1.0.0\nkind: DataProduct\nid: urn:dataproduct:tpch:{table}\nname: {table}\nversion: 1.0.0\nstatus: active\ndomain: {domain}\n\
outputPorts:\n  - {{ name: {table}, type: tables, version: 1.0.0, contractId: urn:datacontract:tpch:{table} }}\n"
    )
}

fn logical_type(t: &DataType) -> &'static str {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "integer",
        DataType::Decimal128(..) | DataType::Float64 | DataType::Float32 => "number",
        DataType::Date32 => "date",
        DataType::Timestamp(..) => "timestamp",
        DataType::Boolean => "boolean",
        _ => "string",
    }
}

/// TPC-H's primary keys, which the contracts declare (meshq orders joins
/// with them).
fn primary_key(table: &str) -> &'static [&'static str] {
    match table {
        "part" => &["p_partkey"],
        "supplier" => &["s_suppkey"],
        "partsupp" => &["ps_partkey", "ps_suppkey"],
        "customer" => &["c_custkey"],
        "orders" => &["o_orderkey"],
        "lineitem" => &["l_orderkey", "l_linenumber"],
        "nation" => &["n_nationkey"],
        "region" => &["r_regionkey"],
        _ => &[],
    }
}

fn contract_yaml(
    domain: &str,
    table: &str,
    format: &str,
    location: &Path,
    schema: &SchemaRef,
) -> String {
    let mut out = format!(
        "apiVersion: v3.1.0\nkind: DataContract\nid: urn:datacontract:tpch:{table}\nname: {table}\nversion: 1.0.0\nstatus: active\ndomain: {domain}\n\
servers:\n  - {{ server: local, type: local, format: {format}, path: '{}' }}\n\
schema:\n  - name: {table}\n",
        location.display()
    );
    let filter = match table {
        "customer" => Some("c_nationkey = CAST(principal_attr('nation') AS BIGINT)"),
        _ => None,
    };
    if let Some(f) = filter {
        out.push_str(&format!(
            "    customProperties:\n      - property: rowFilters\n        value: [ {{ id: own_nation, expression: \"{f}\", exceptRoles: [global-analyst] }} ]\n"
        ));
    }
    out.push_str("    properties:\n");
    let key = primary_key(table);
    for f in schema.fields() {
        let masked = matches!(f.name().as_str(), "c_phone" | "c_address");
        let in_key = key
            .iter()
            .position(|k| k == f.name())
            .map(|p| format!(", primaryKey: true, primaryKeyPosition: {}", p + 1))
            .unwrap_or_default();
        out.push_str(&format!(
            "      - {{ name: {}, logicalType: {}{in_key}{} }}\n",
            f.name(),
            logical_type(f.data_type()),
            if masked {
                ", customProperties: [ { property: mask, value: { kind: hash, keyRef: pii-key, exceptRoles: [pii-reader] } } ]"
            } else {
                ""
            }
        ));
    }
    out
}
