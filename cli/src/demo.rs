//! The example retail mesh written by `meshq demo`.
//!
//! Three domains with generated, deterministic data (the same seed gives the
//! same rows on every machine, so docs and tests can quote results):
//! - `sales.orders`: a Delta table partitioned by `order_date`, one commit per day;
//! - `customers.profiles`: a Parquet file;
//! - `payments.transactions`: Parquet files, one per day;
//! - `logistics.shipments`: an Iceberg table partitioned by region, one
//!   snapshot per day.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{Datelike, NaiveDate};
use parquet::arrow::ArrowWriter;

use crate::rng::Rng;

/// Size of the generated data.
#[derive(Debug, Clone, Copy)]
pub struct DemoScale {
    /// Customers.
    pub customers: usize,
    /// Orders per day.
    pub orders_per_day: usize,
    /// Days of orders.
    pub days: u32,
}

impl Default for DemoScale {
    fn default() -> Self {
        Self {
            customers: 2_000,
            orders_per_day: 800,
            days: 14,
        }
    }
}

/// First day of orders.
pub const FIRST_DAY: (i32, u32, u32) = (2026, 10, 1);

/// Environment variable holding the demo's HMAC key for hash masks.
pub const DEMO_SECRET_ENV: &str = "MESHQ_DEMO_PII_KEY";
/// The key `meshq demo` uses when the variable is not set. A demo value:
/// real meshes keep their keys in the environment only.
pub const DEMO_SECRET_VALUE: &str = "meshq-demo-pii-key";

/// Demo principals: (name, password, roles, region).
pub const DEMO_PRINCIPALS: &[(&str, &str, &[&str], Option<&str>)] = &[
    ("ana", "ana-demo", &["analyst"], Some("EMEA")),
    ("ben", "ben-demo", &["analyst"], Some("AMER")),
    ("gina", "gina-demo", &["analyst", "global-analyst"], None),
    (
        "pat",
        "pat-demo",
        &["analyst", "global-analyst", "pii-reader"],
        None,
    ),
    ("root", "root-demo", &["admin"], None),
];

const FIRST_NAMES: &[&str] = &[
    "Jana", "Lukas", "Sofia", "Mateo", "Amara", "Kenji", "Priya", "Liam", "Chloe", "Noah", "Elif",
    "Yuki", "Omar", "Freya", "Diego", "Mei", "Arjun", "Zoe", "Hugo", "Ines",
];
const LAST_NAMES: &[&str] = &[
    "Berg", "Novak", "Rossi", "Garcia", "Okafor", "Tanaka", "Sharma", "Murphy", "Dubois",
    "Schmidt", "Yilmaz", "Sato", "Haddad", "Larsen", "Silva", "Chen", "Iyer", "Walker", "Martin",
    "Costa",
];
/// (country, region, phone prefix)
const COUNTRIES: &[(&str, &str, &str)] = &[
    ("DE", "EMEA", "+49"),
    ("FR", "EMEA", "+33"),
    ("NL", "EMEA", "+31"),
    ("SE", "EMEA", "+46"),
    ("ES", "EMEA", "+34"),
    ("US", "AMER", "+1"),
    ("CA", "AMER", "+1"),
    ("BR", "AMER", "+55"),
    ("JP", "APAC", "+81"),
    ("AU", "APAC", "+61"),
    ("SG", "APAC", "+65"),
];
const TIERS: &[&str] = &["bronze", "bronze", "bronze", "silver", "silver", "gold"];
const ORDER_STATUS: &[&str] = &[
    "delivered",
    "delivered",
    "delivered",
    "delivered",
    "shipped",
    "shipped",
    "placed",
    "cancelled",
    "returned",
];
const METHODS: &[&str] = &["card", "card", "card", "paypal", "bank_transfer", "klarna"];

struct Customer {
    id: String,
    name: String,
    email: String,
    phone: String,
    country: &'static str,
    region: &'static str,
    signup: i32,
    tier: &'static str,
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days() as i32
}

fn first_day() -> NaiveDate {
    let (y, m, d) = FIRST_DAY;
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
}

fn customers(rng: &mut Rng, n: usize) -> Vec<Customer> {
    let start = days_since_epoch(NaiveDate::from_ymd_opt(2023, 1, 1).unwrap_or_default());
    let span = days_since_epoch(first_day()) - start;
    (1..=n)
        .map(|i| {
            let first = rng.pick(FIRST_NAMES);
            let last = rng.pick(LAST_NAMES);
            let (country, region, prefix) = rng.pick(COUNTRIES);
            Customer {
                id: format!("C{i:05}"),
                name: format!("{first} {last}"),
                email: format!(
                    "{}.{}{}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    i
                ),
                phone: format!(
                    "{prefix} {:03} {:07}",
                    100 + rng.below(900),
                    rng.below(10_000_000)
                ),
                country,
                region,
                signup: start + rng.below(span as u64) as i32,
                tier: rng.pick(TIERS),
            }
        })
        .collect()
}

fn utf8(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn strs(v: Vec<&str>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn profiles_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("full_name", DataType::Utf8, false),
        Field::new("email", DataType::Utf8, false),
        Field::new("phone", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("signup_date", DataType::Date32, false),
        Field::new("tier", DataType::Utf8, false),
    ]))
}

fn profiles_batch(cs: &[Customer]) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        profiles_schema(),
        vec![
            utf8(cs.iter().map(|c| c.id.clone()).collect()),
            utf8(cs.iter().map(|c| c.name.clone()).collect()),
            utf8(cs.iter().map(|c| c.email.clone()).collect()),
            utf8(cs.iter().map(|c| c.phone.clone()).collect()),
            strs(cs.iter().map(|c| c.country).collect()),
            strs(cs.iter().map(|c| c.region).collect()),
            Arc::new(Date32Array::from(
                cs.iter().map(|c| c.signup).collect::<Vec<_>>(),
            )),
            strs(cs.iter().map(|c| c.tier).collect()),
        ],
    )?)
}

fn orders_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("email", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("item_count", DataType::Int32, false),
        Field::new("total_amount", DataType::Decimal128(12, 2), false),
        Field::new("created_at", ts_type(), false),
        Field::new("order_date", DataType::Date32, false),
    ]))
}

fn transactions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("payment_id", DataType::Utf8, false),
        Field::new("order_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("card_number", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), false),
        Field::new("currency", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("paid_at", ts_type(), false),
    ]))
}

/// One day of orders and their payments.
fn day_batches(
    rng: &mut Rng,
    cs: &[Customer],
    day: NaiveDate,
    per_day: usize,
    next_order: &mut usize,
) -> Result<(RecordBatch, RecordBatch)> {
    let day_num = days_since_epoch(day);
    let day_start_us = i64::from(day_num) * 86_400_000_000;
    let mut o = OrderCols::default();
    let mut p = PaymentCols::default();
    // Weekends are busier.
    let weekday = day.weekday().num_days_from_monday();
    let n = if weekday >= 5 {
        per_day * 5 / 4
    } else {
        per_day
    };
    for _ in 0..n {
        *next_order += 1;
        let c = &cs[rng.below(cs.len() as u64) as usize];
        let items = 1 + rng.below(6) as i32;
        let cents = i128::from(items) * (499 + rng.below(15_000) as i128);
        let created = day_start_us + rng.below(86_400_000_000) as i64;
        let status = rng.pick(ORDER_STATUS);
        let order_id = format!("O{:07}", *next_order);
        o.order_id.push(order_id.clone());
        o.customer_id.push(c.id.clone());
        // Guest checkouts leave no email on the order.
        o.email.push((rng.below(20) != 0).then(|| c.email.clone()));
        o.region.push(c.region);
        o.status.push(status);
        o.item_count.push(items);
        o.total.push(cents);
        o.created.push(created);
        o.date.push(day_num);
        if status != "cancelled" {
            let method = rng.pick(METHODS);
            p.payment_id.push(format!("P{:07}", *next_order));
            p.order_id.push(order_id);
            p.customer_id.push(c.id.clone());
            p.method.push(method);
            p.card.push((method == "card").then(|| {
                format!(
                    "4{:03} {:04} {:04} {:04}",
                    rng.below(1000),
                    rng.below(10_000),
                    rng.below(10_000),
                    rng.below(10_000)
                )
            }));
            p.amount.push(cents);
            p.currency.push(match c.region {
                "AMER" => "USD",
                "APAC" => "JPY",
                _ => "EUR",
            });
            p.status.push(if status == "returned" {
                "refunded"
            } else if rng.below(50) == 0 {
                "failed"
            } else {
                "settled"
            });
            p.paid_at
                .push(created + 60_000_000 + rng.below(3_600_000_000) as i64);
        }
    }
    let orders = RecordBatch::try_new(
        orders_schema(),
        vec![
            utf8(o.order_id),
            utf8(o.customer_id),
            Arc::new(StringArray::from(o.email)),
            strs(o.region),
            strs(o.status),
            Arc::new(Int32Array::from(o.item_count)),
            Arc::new(Decimal128Array::from(o.total).with_precision_and_scale(12, 2)?),
            Arc::new(TimestampMicrosecondArray::from(o.created).with_timezone("UTC")),
            Arc::new(Date32Array::from(o.date)),
        ],
    )?;
    let payments = RecordBatch::try_new(
        transactions_schema(),
        vec![
            utf8(p.payment_id),
            utf8(p.order_id),
            utf8(p.customer_id),
            strs(p.method),
            Arc::new(StringArray::from(p.card)),
            Arc::new(Decimal128Array::from(p.amount).with_precision_and_scale(12, 2)?),
            strs(p.currency),
            strs(p.status),
            Arc::new(TimestampMicrosecondArray::from(p.paid_at).with_timezone("UTC")),
        ],
    )?;
    Ok((orders, payments))
}

#[derive(Default)]
struct OrderCols {
    order_id: Vec<String>,
    customer_id: Vec<String>,
    email: Vec<Option<String>>,
    region: Vec<&'static str>,
    status: Vec<&'static str>,
    item_count: Vec<i32>,
    total: Vec<i128>,
    created: Vec<i64>,
    date: Vec<i32>,
}

#[derive(Default)]
struct PaymentCols {
    payment_id: Vec<String>,
    order_id: Vec<String>,
    customer_id: Vec<String>,
    method: Vec<&'static str>,
    card: Vec<Option<String>>,
    amount: Vec<i128>,
    currency: Vec<&'static str>,
    status: Vec<&'static str>,
    paid_at: Vec<i64>,
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = ArrowWriter::try_new(file, batch.schema(), None)?;
    w.write(batch)?;
    w.close()?;
    Ok(())
}

/// What `meshq demo` prints once it serves: the address, the demo users and
/// an ADBC snippet that works as printed.
pub fn connect_banner(
    dir: &str,
    tables: usize,
    addr: std::net::SocketAddr,
    web: Option<String>,
) -> String {
    let uri = format!("grpc://{addr}");
    let web = web.map_or(String::new(), |w| {
        format!("Browse the catalog: {w} (log in as one of the users above)\n\n")
    });
    format!(
        "meshq demo: {tables} tables from {dir}, serving Arrow Flight SQL on {uri}\n\
         \n\
         Demo users (password: the name followed by -demo, e.g. gina / gina-demo):\n  \
         ana   analyst, region EMEA: her region's orders and customers, PII masked\n  \
         ben   analyst, region AMER\n  \
         gina  global analyst: every region and payments, PII masked\n  \
         pat   global analyst and PII reader: raw values\n  \
         root  admin: DDL and SET, no analyst data\n\
         \n\
         Connect from Python (pip install adbc-driver-flightsql pyarrow):\n\
         \n\
         import adbc_driver_flightsql.dbapi as flight_sql\n\
         with flight_sql.connect(\"{uri}\", db_kwargs={{\"username\": \"gina\", \"password\": \"gina-demo\"}}) as conn:\n    \
             with conn.cursor() as cur:\n        \
                 cur.execute(\"SELECT region, count(*) AS orders FROM sales.orders GROUP BY 1 ORDER BY 1\")\n        \
                 print(cur.fetchall())\n\
         \n\
         Find products and why you see what you see: SELECT * FROM meta.products;\n\
         SELECT * FROM meta.my_access; (or \\dp and \\access in the shell).\n\
         \n\
         {web}Or run SQL here: meshq demo --shell. Ctrl-C stops the server."
    )
}

/// Whether `dir` already holds a mesh (its platform config).
pub fn demo_exists(dir: &Path) -> bool {
    dir.join("meshq.yaml").exists()
}

/// Writes the demo mesh into `dir` (created if needed).
pub async fn write_demo_mesh(dir: &Path, scale: DemoScale) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = Rng(0x6d65_7368_715f_6465); // "meshq_de"
    let cs = customers(&mut rng, scale.customers);

    let profiles_dir = dir.join("customers/data/profiles");
    std::fs::create_dir_all(&profiles_dir)?;
    write_parquet(
        &profiles_dir.join("part-00000.parquet"),
        &profiles_batch(&cs)?,
    )?;

    let tx_dir = dir.join("payments/data/transactions");
    std::fs::create_dir_all(&tx_dir)?;
    let orders_dir = dir.join("sales/data/orders");
    std::fs::create_dir_all(&orders_dir)?;
    let orders_url = url::Url::from_directory_path(orders_dir.canonicalize()?)
        .map_err(|_| anyhow::anyhow!("bad path {}", orders_dir.display()))?;
    let mut next_order = 0;
    // Built, not loaded: the folder holds no table yet and the first write
    // creates it. One commit per day, as a daily pipeline would.
    let mut table = deltalake::DeltaTableBuilder::from_url(orders_url)?.build()?;
    let mut shipments =
        crate::demo_iceberg::ShipmentsWriter::create(&dir.join("logistics/data/shipments"))
            .await
            .context("creating the demo Iceberg table")?;
    for d in 0..scale.days {
        let day = first_day() + chrono::Days::new(u64::from(d));
        let (orders, payments) =
            day_batches(&mut rng, &cs, day, scale.orders_per_day, &mut next_order)?;
        write_parquet(&tx_dir.join(format!("{day}.parquet")), &payments)?;
        shipments
            .append_day(&orders)
            .await
            .context("writing the demo Iceberg table")?;
        table = table
            .write(vec![orders])
            .with_partition_columns(["order_date"])
            .with_save_mode(deltalake::protocol::SaveMode::Append)
            .await
            .context("writing demo Delta table")?;
    }

    let files: &[(&str, &str)] = &[
        ("sales/orders.odps.yaml", ORDERS_ODPS),
        ("sales/orders.odcs.yaml", ORDERS_ODCS),
        ("customers/profiles.odps.yaml", PROFILES_ODPS),
        ("customers/profiles.odcs.yaml", PROFILES_ODCS),
        ("governance/pii.policy.yaml", PII_POLICY),
        ("governance/owner.rego", include_str!("../demo/owner.rego")),
        (
            "governance/pii_masked.rego",
            include_str!("../demo/pii_masked.rego"),
        ),
        (
            "governance/availability.rego",
            include_str!("../demo/availability.rego"),
        ),
        ("payments/transactions.odps.yaml", TRANSACTIONS_ODPS),
        ("payments/transactions.odcs.yaml", TRANSACTIONS_ODCS),
        ("logistics/shipments.odps.yaml", SHIPMENTS_ODPS),
        ("logistics/shipments.odcs.yaml", SHIPMENTS_ODCS),
        ("customer360/profile_360.odps.yaml", PROFILE_360_ODPS),
        ("customer360/profile_360.odcs.yaml", PROFILE_360_ODCS),
        ("customer360/profile_360.sql", PROFILE_360_SQL),
        ("marketing/segments.odps.yaml", SEGMENTS_ODPS),
        ("marketing/segments.odcs.yaml", SEGMENTS_ODCS),
    ];
    std::fs::create_dir_all(dir.join("governance"))?;
    std::fs::create_dir_all(dir.join("customer360"))?;
    std::fs::create_dir_all(dir.join("marketing"))?;
    for (name, text) in files {
        std::fs::write(dir.join(name), text)?;
    }
    std::fs::write(dir.join("meshq.yaml"), platform_yaml()?)?;
    Ok(())
}

fn platform_yaml() -> Result<String> {
    let mut out = format!(
        "# Demo platform config. Passwords: <name>-demo (e.g. ana / ana-demo).\n\
         # Secrets and credentials are {{ env: VAR }} references, never literals;\n\
         # `meshq demo` supplies a demo key when {DEMO_SECRET_ENV} is not set.\n\
         secrets:\n  pii-key: {{ env: {DEMO_SECRET_ENV} }}\n\
         # Repeated dashboard queries are answered from memory; entries are\n\
         # shared only by principals whose policies make the same plan.\n\
         cache: {{ enabled: true, max_bytes: 256MiB, ttl: 10m }}\n\
         principals:\n"
    );
    for (name, password, roles, region) in DEMO_PRINCIPALS {
        let hash = crate::hash_password(password)?;
        out.push_str(&format!(
            "  - name: {name}\n    password_hash: \"{hash}\"\n    roles: [{}]\n",
            roles.join(", ")
        ));
        if let Some(r) = region {
            out.push_str(&format!("    attributes: {{ region: {r} }}\n"));
        }
    }
    out.push_str(
        "# Service principals of products defined by SQL (their runAs): no\n\
         # password, so nobody logs in as them.\n\
         \x20 - { name: svc-customer360, roles: [analyst, global-analyst], runs: [urn:dataproduct:customer360:profile_360] }\n\
         \x20 - { name: svc-marketing, roles: [marketing, global-analyst], runs: [urn:dataproduct:marketing:segments] }\n",
    );
    Ok(out)
}

const PROFILE_360_ODPS: &str = r#"apiVersion: v1.0.0
kind: DataProduct
id: urn:dataproduct:customer360:profile_360
name: customer 360
version: 1.0.0
status: active
domain: customer360
description:
  purpose: One row per customer with order count, lifetime value and segment, built by SQL from profiles, orders and payments.
tags: [customers, aggregate]
team: { name: customer360, members: [ { username: cora@example.com, role: owner } ] }
# Built as the team's own principal, which is not a PII reader: customer
# ids are hashed in its inputs, so they are hashed here.
customProperties:
  - { property: runAs, value: svc-customer360 }
inputPorts:
  - { name: profiles, version: 1.0.0, contractId: urn:datacontract:customers:profiles }
  - { name: orders, version: 1.0.0, contractId: urn:datacontract:sales:orders }
  - { name: payments, version: 1.0.0, contractId: urn:datacontract:payments:transactions }
outputPorts:
  - { name: profile_360, type: tables, version: 1.0.0, contractId: urn:datacontract:customer360:profile_360 }
"#;

const PROFILE_360_ODCS: &str = r#"apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:customer360:profile_360
name: profile_360
version: 1.0.0
status: active
domain: customer360
slaProperties:
  - { property: availability, value: 99.5, unit: percent }
servers:
  - { server: sql, type: custom, format: meshq-sql, path: ./profile_360.sql }
schema:
  - name: profile_360
    description: Every customer with their orders and settled payments summed.
    customProperties:
      - { property: readRoles, value: [analyst, marketing] }
      - property: rowFilters
        value: [ { id: own_region, expression: "region = principal_attr('region')", exceptRoles: [global-analyst] } ]
    properties:
      - { name: customer_id, logicalType: string, description: "Customer identifier, pseudonymised (hashed) by the inputs' PII policy." }
      - { name: region, logicalType: string, description: "EMEA, AMER or APAC." }
      - { name: tier, logicalType: string, description: Loyalty tier. }
      - { name: order_count, logicalType: integer, description: Orders placed. }
      - { name: lifetime_value, logicalType: number, physicalType: "DECIMAL(22,2)", description: Settled payments summed. }
      - { name: segment, logicalType: string, description: "premium (1000 or more), standard (200 or more) or basic." }
team: { name: customer360, members: [ { username: cora@example.com, role: owner } ] }
"#;

/// The demo's Customer 360 statement (`customer360/profile_360.sql`).
pub const PROFILE_360_SQL: &str =
    "-- Customer 360: one row per customer, evaluated as svc-customer360.
SELECT customer_id, region, tier, order_count, lifetime_value,
       CASE WHEN lifetime_value >= 1000 THEN 'premium'
            WHEN lifetime_value >= 200 THEN 'standard'
            ELSE 'basic' END AS segment
FROM (
  SELECT p.customer_id, p.region, p.tier,
         count(DISTINCT o.order_id) AS order_count,
         CAST(coalesce(sum(t.amount), 0) AS DECIMAL(22,2)) AS lifetime_value
  FROM customers.profiles p
  LEFT JOIN sales.orders o ON o.customer_id = p.customer_id
  LEFT JOIN payments.transactions t ON t.order_id = o.order_id AND t.status = 'settled'
  GROUP BY p.customer_id, p.region, p.tier
) AS totals
";

const SEGMENTS_ODPS: &str = r#"apiVersion: v1.0.0
kind: DataProduct
id: urn:dataproduct:marketing:segments
name: customer segments
version: 1.0.0
status: active
domain: marketing
description:
  purpose: Customers and value per segment, for campaign planning; built on the Customer 360.
tags: [marketing, consumer-aligned]
team: { name: marketing-analytics, members: [ { username: mo@example.com, role: owner } ] }
customProperties:
  - { property: runAs, value: svc-marketing }
inputPorts:
  - { name: customer360, version: 1.0.0, contractId: urn:datacontract:customer360:profile_360 }
outputPorts:
  - name: segments
    type: tables
    version: 1.0.0
    contractId: urn:datacontract:marketing:segments
    # Computed as svc-marketing and written as a Delta table (one commit
    # per refresh) when the Customer 360's inputs change; served from there.
    customProperties:
      - { property: materialize, value: { format: delta, location: ./build/segments, refresh: on-change } }
"#;

const SEGMENTS_ODCS: &str = r#"apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:marketing:segments
name: segments
version: 1.0.0
status: active
domain: marketing
slaProperties:
  - { property: availability, value: 99.5, unit: percent }
servers:
  - server: sql
    type: custom
    format: meshq-sql
    customProperties:
      - { property: sql, value: "SELECT segment, count(*) AS customers, sum(lifetime_value) AS lifetime_value FROM customer360.profile_360 GROUP BY segment" }
schema:
  - name: segments
    description: One row per segment, every region.
    customProperties:
      - { property: readRoles, value: [analyst, marketing] }
    properties:
      - { name: segment, logicalType: string, description: "premium, standard or basic." }
      - { name: customers, logicalType: integer, description: Customers in the segment. }
      - { name: lifetime_value, logicalType: number, physicalType: "DECIMAL(32,2)", description: Their lifetime value summed. }
team: { name: marketing-analytics, members: [ { username: mo@example.com, role: owner } ] }
"#;

const PII_POLICY: &str = r#"apiVersion: v1
kind: GovernancePolicySet
id: urn:policy:retail:pii
description: Every column classified pii is hashed (HMAC-SHA256, joinable) unless the reader holds pii-reader.
policies:
  - id: pii-hash-default
    type: columnMask
    match: { classification: [pii] }
    exceptRoles: [pii-reader]
    mask: { kind: hash, algorithm: hmac-sha256, keyRef: pii-key }
"#;

const ORDERS_ODPS: &str = r#"apiVersion: v1.0.0
kind: DataProduct
id: urn:dataproduct:sales:orders
name: orders
version: 1.0.0
status: active
domain: sales
description:
  purpose: Every webshop order, one row per order, updated daily.
tags: [sales, orders, core]
team: { name: sales-data, members: [ { username: alice@example.com, role: owner } ] }
inputPorts:
  - { name: customers, version: 1.0.0, contractId: urn:datacontract:customers:profiles }
outputPorts:
  - name: orders_delta
    type: tables
    version: 1.0.0
    contractId: urn:datacontract:sales:orders
    customProperties: [ { property: server, value: local } ]
"#;

const ORDERS_ODCS: &str = r#"apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:sales:orders
name: orders
version: 1.0.0
status: active
domain: sales
slaProperties:
  - { property: latency, value: 1, unit: d, description: Yesterday's orders are in by 06:00 UTC. }
  - { property: availability, value: 99.5, unit: percent }
roles:
  - { role: analyst, access: read, firstLevelApprovers: alice@example.com }
servers:
  - { server: local, type: local, format: delta, path: ./data/orders }
schema:
  - name: orders
    physicalName: orders
    physicalType: table
    logicalType: object
    description: One row per webshop order.
    quality:
      - { id: orders_not_empty, metric: rowCount, mustBeGreaterThan: 0, dimension: completeness }
    customProperties:
      - property: readRoles
        value: [analyst]
      - property: rowFilters
        value: [ { id: own_region, expression: "region = principal_attr('region')", exceptRoles: [global-analyst] } ]
    properties:
      - { name: order_id, logicalType: string, physicalType: STRING, primaryKey: true, required: true, unique: true, logicalTypeOptions: { pattern: "^O[0-9]{7}$" }, description: Order identifier. }
      - { name: customer_id, logicalType: string, physicalType: STRING, required: true, classification: pii, tags: [pii], description: Customer who ordered. }
      - name: email
        logicalType: string
        physicalType: STRING
        classification: pii
        tags: [pii]
        description: Contact email given at checkout; null for guest checkouts.
        logicalTypeOptions: { format: email }
        quality:
          - { id: guest_checkouts, metric: nullValues, unit: percent, mustBeLessThan: 50, severity: warning, dimension: completeness, description: Most orders come from registered customers. }
        customProperties:
          - { property: mask, value: { kind: partial, showFirst: 1, padding: "***@***", showLast: 4, exceptRoles: [pii-reader] } }
      - name: region
        logicalType: string
        physicalType: STRING
        required: true
        description: "Sales region: EMEA, AMER or APAC."
        quality:
          - { metric: invalidValues, arguments: { validValues: [EMEA, AMER, APAC] }, mustBe: 0, dimension: conformity }
      - name: status
        logicalType: string
        physicalType: STRING
        required: true
        description: "placed, shipped, delivered, cancelled or returned."
        quality:
          - { metric: invalidValues, arguments: { validValues: [placed, shipped, delivered, cancelled, returned] }, mustBe: 0, dimension: conformity }
      - { name: item_count, logicalType: integer, physicalType: INT, required: true, logicalTypeOptions: { minimum: 1, maximum: 100 }, description: Number of items. }
      - name: total_amount
        logicalType: number
        physicalType: "DECIMAL(12,2)"
        required: true
        logicalTypeOptions: { exclusiveMinimum: 0 }
        description: Order total in the region's currency.
        quality:
          - { id: no_negative_totals, type: sql, query: "SELECT count(*) FROM {object} WHERE {property} < 0", mustBe: 0, dimension: accuracy }
      - { name: created_at, logicalType: timestamp, physicalType: TIMESTAMP, required: true, description: When the order was placed (UTC). }
      - { name: order_date, logicalType: date, physicalType: DATE, required: true, partitioned: true, description: Day of created_at; the table's partition column. }
team: { name: sales-data, members: [ { username: alice@example.com, role: owner } ] }
"#;

const SHIPMENTS_ODPS: &str = r#"apiVersion: v1.0.0
kind: DataProduct
id: urn:dataproduct:logistics:shipments
name: shipments
version: 1.0.0
status: active
domain: logistics
description:
  purpose: One row per parcel sent for a webshop order, appended daily.
tags: [logistics, fulfilment]
team: { name: logistics-data, members: [ { username: lee@example.com, role: owner } ] }
inputPorts:
  - { name: orders, version: 1.0.0, contractId: urn:datacontract:sales:orders }
outputPorts:
  - name: shipments_iceberg
    type: tables
    version: 1.0.0
    contractId: urn:datacontract:logistics:shipments
"#;

const SHIPMENTS_ODCS: &str = r#"apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:logistics:shipments
name: shipments
version: 1.0.0
status: active
domain: logistics
slaProperties:
  - { property: frequency, value: 1, unit: d }
  - { property: availability, value: 99.0, unit: percent }
roles:
  - { role: analyst, access: read, firstLevelApprovers: lee@example.com }
servers:
  # An Iceberg table addressed by its folder: meshq reads its newest
  # metadata/*.metadata.json. Tables in a catalog name it instead:
  # { server: lake, type: local, format: iceberg, catalog: NAME, schema: NAMESPACE }
  - { server: local, type: local, format: iceberg, path: ./data/shipments }
schema:
  - name: shipments
    physicalName: shipments
    physicalType: table
    logicalType: object
    description: One row per shipment; Iceberg v2, partitioned by region, one snapshot per day.
    customProperties:
      - property: readRoles
        value: [analyst]
      - property: rowFilters
        value: [ { id: own_region, expression: "region = principal_attr('region')", exceptRoles: [global-analyst] } ]
    properties:
      - { name: shipment_id, logicalType: string, physicalType: STRING, primaryKey: true, required: true, description: Shipment identifier. }
      - { name: order_id, logicalType: string, physicalType: STRING, required: true, description: The order shipped (sales.orders). }
      - { name: region, logicalType: string, physicalType: STRING, required: true, partitioned: true, description: "Region of the order: EMEA, AMER or APAC." }
      - name: carrier
        logicalType: string
        physicalType: STRING
        required: true
        description: Parcel carrier.
        quality:
          - { metric: invalidValues, arguments: { validValues: [DHL, FedEx, PostNL, UPS, Yamato] }, unit: percent, mustBeLessOrEqualTo: 1, dimension: conformity }
      - { name: status, logicalType: string, physicalType: STRING, required: true, description: "in_transit, delivered or returned." }
      - { name: shipped_at, logicalType: timestamp, physicalType: TIMESTAMP, required: true, description: When the parcel left the warehouse (UTC). }
      - { name: delivered_at, logicalType: timestamp, physicalType: TIMESTAMP, description: When it was delivered; null while in transit. }
      - { name: weight_kg, logicalType: number, physicalType: DOUBLE, required: true, logicalTypeOptions: { exclusiveMinimum: 0, maximum: 30 }, description: Parcel weight in kilograms. }
team: { name: logistics-data, members: [ { username: lee@example.com, role: owner } ] }
"#;

const PROFILES_ODPS: &str = r#"apiVersion: v1.0.0
kind: DataProduct
id: urn:dataproduct:customers:profiles
name: customer profiles
version: 1.0.0
status: active
domain: customers
description:
  purpose: Registered customers with contact details and loyalty tier; PII is masked for most readers.
tags: [customers, pii]
team: { name: crm, members: [ { username: carla@example.com, role: owner } ] }
outputPorts:
  - name: profiles_parquet
    type: tables
    version: 1.0.0
    contractId: urn:datacontract:customers:profiles
    # Served from a copy in memory, rebuilt when the files change.
    customProperties:
      - { property: server, value: local }
      - { property: acceleration, value: { engine: memory, refresh: on-change, maxStaleness: 10m } }
"#;

const PROFILES_ODCS: &str = r#"apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:customers:profiles
name: profiles
version: 1.0.0
status: active
domain: customers
slaProperties:
  - { property: availability, value: 99.5, unit: percent }
servers:
  - { server: local, type: local, format: parquet, path: ./data/profiles/ }
schema:
  - name: profiles
    physicalType: table
    description: One row per registered customer.
    quality:
      - { metric: rowCount, mustBeBetween: [1, 1000000], dimension: completeness }
    customProperties:
      - property: readRoles
        value: [analyst]
      - property: rowFilters
        value: [ { id: own_region, expression: "region = principal_attr('region')", exceptRoles: [global-analyst] } ]
    properties:
      - { name: customer_id, logicalType: string, physicalType: STRING, primaryKey: true, required: true, classification: pii, tags: [pii], description: Customer identifier. }
      - name: full_name
        logicalType: string
        physicalType: STRING
        required: true
        classification: pii
        tags: [pii]
        description: Name as registered.
        customProperties:
          - { property: mask, value: { kind: partial, showFirst: 1, padding: "***", showLast: 0, exceptRoles: [pii-reader] } }
      - name: email
        logicalType: string
        physicalType: STRING
        required: true
        classification: pii
        tags: [pii]
        logicalTypeOptions: { format: email }
        description: Login email.
        quality:
          - { metric: duplicateValues, mustBe: 0, dimension: uniqueness }
      - name: phone
        logicalType: string
        physicalType: STRING
        classification: pii
        tags: [pii]
        description: Phone number with country prefix.
        customProperties:
          - { property: mask, value: { kind: redact, exceptRoles: [pii-reader] } }
      - { name: country, logicalType: string, physicalType: STRING, required: true, description: ISO 3166-1 alpha-2 country code. }
      - { name: region, logicalType: string, physicalType: STRING, required: true, description: "EMEA, AMER or APAC." }
      - name: signup_date
        logicalType: date
        physicalType: DATE
        required: true
        description: Day the account was created; the month only, unless the reader holds pii-reader.
        customProperties:
          - { property: mask, value: { kind: truncate, unit: month, exceptRoles: [pii-reader] } }
      - name: tier
        logicalType: string
        physicalType: STRING
        required: true
        description: "Loyalty tier: bronze, silver or gold."
        quality:
          - { metric: invalidValues, arguments: { validValues: [bronze, silver, gold] }, mustBe: 0, dimension: conformity }
"#;

const TRANSACTIONS_ODPS: &str = r#"apiVersion: v1.0.0
kind: DataProduct
id: urn:dataproduct:payments:transactions
name: payment transactions
version: 1.0.0
status: active
domain: payments
description:
  purpose: Every payment attempt for an order, one file per day; restricted to finance.
tags: [payments, finance, pii]
team: { name: payments-data, members: [ { username: paul@example.com, role: owner } ] }
inputPorts:
  - { name: orders, version: 1.0.0, contractId: urn:datacontract:sales:orders }
outputPorts:
  - name: transactions_parquet
    type: tables
    version: 1.0.0
    contractId: urn:datacontract:payments:transactions
"#;

const TRANSACTIONS_ODCS: &str = r#"apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:payments:transactions
name: transactions
version: 1.0.0
status: active
domain: payments
roles:
  - { role: finance, access: read, firstLevelApprovers: paul@example.com, secondLevelApprovers: cfo@example.com }
slaProperties:
  - { property: latency, value: 1, unit: d }
  - { property: availability, value: 99.9, unit: percent }
servers:
  - { server: local, type: local, format: parquet, path: ./data/transactions/ }
schema:
  - name: transactions
    physicalType: table
    description: One row per payment attempt; one file per day.
    quality:
      # Fails on the demo data by design (about 12 % are refunds): what a
      # failing rule looks like in `meshq check` and `meta.quality`.
      - id: refunds_are_rare
        type: sql
        description: Fewer than one payment in ten is refunded.
        query: "SELECT 100.0 * sum(CASE WHEN status = 'refunded' THEN 1 ELSE 0 END) / count(*) FROM {object}"
        mustBeLessThan: 10
        dimension: accuracy
        businessImpact: operational
      - { id: one_payment_per_status, metric: duplicateValues, arguments: { properties: [payment_id, status] }, mustBe: 0, dimension: uniqueness }
      - { id: reconciled_nightly, type: custom, engine: greatExpectations, implementation: "expect_column_sum_to_be_between(amount)", dimension: accuracy }
    customProperties:
      - property: readRoles
        value: [global-analyst, finance]
    properties:
      - { name: payment_id, logicalType: string, physicalType: STRING, primaryKey: true, required: true, description: Payment identifier. }
      - { name: order_id, logicalType: string, physicalType: STRING, required: true, description: The order paid (sales.orders). }
      - { name: customer_id, logicalType: string, physicalType: STRING, required: true, classification: pii, tags: [pii], description: Paying customer. }
      - { name: method, logicalType: string, physicalType: STRING, required: true, description: "card, paypal, bank_transfer or klarna." }
      - name: card_number
        logicalType: string
        physicalType: STRING
        classification: restricted
        tags: [pci]
        description: Card number for card payments; only the last four digits are ever shown.
        quality:
          - { type: text, description: Card numbers are tokenised by the payment provider before they reach this product. }
          - { metric: missingValues, arguments: { missingValues: [""] }, unit: percent, mustBeLessThan: 60, severity: warning, dimension: completeness }
        customProperties:
          - { property: mask, value: { kind: sql, expression: "'**** **** **** ' || right(card_number, 4)" } }
      - { name: amount, logicalType: number, physicalType: "DECIMAL(12,2)", required: true, logicalTypeOptions: { minimum: 0 }, description: Amount charged. }
      - name: currency
        logicalType: string
        physicalType: STRING
        required: true
        logicalTypeOptions: { minLength: 3, maxLength: 3 }
        description: ISO 4217 currency code.
        quality:
          - { metric: invalidValues, arguments: { pattern: "^[A-Z]{3}$" }, mustBe: 0, dimension: conformity }
      - { name: status, logicalType: string, physicalType: STRING, required: true, description: "settled, refunded or failed." }
      - { name: paid_at, logicalType: timestamp, physicalType: TIMESTAMP, required: true, description: When the payment was made (UTC). }
"#;
