//! Property: for random queries from a small grammar, what `ana` gets from
//! `sales.orders` equals what the same query returns over a copy of the
//! table that was filtered and masked *by hand* (in this file, with its own
//! HMAC and partial-mask code) and read by `pat`, whom no policy touches.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use hmac::{Hmac, Mac};
use meshq_cli::demo::DEMO_SECRET_VALUE;
use meshq_cli::rng::Rng;
use sha2::Sha256;

use crate::common::{run, session_as, sorted_rows};

fn hmac_hex(v: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(DEMO_SECRET_VALUE.as_bytes()).unwrap();
    mac.update(v.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// showFirst 1, padding `***@***`, showLast 4 — the demo's email mask.
fn partial_email(v: &str) -> String {
    let chars: Vec<char> = v.chars().collect();
    if chars.len() <= 5 {
        return "***@***".into();
    }
    let mut s: String = chars[..1].iter().collect();
    s.push_str("***@***");
    s.extend(&chars[chars.len() - 4..]);
    s
}

fn map_utf8(a: &ArrayRef, f: impl Fn(&str) -> String) -> ArrayRef {
    let utf8 = cast(a, &DataType::Utf8).unwrap();
    let out: StringArray = utf8.as_string::<i32>().iter().map(|v| v.map(&f)).collect();
    cast(&(Arc::new(out) as ArrayRef), a.data_type()).unwrap()
}

/// `sales.orders` as ana must see it, built without meshq's policy code.
fn hand_masked(raw: &[RecordBatch]) -> Vec<RecordBatch> {
    raw.iter()
        .map(|b| {
            let region = cast(b.column_by_name("region").unwrap(), &DataType::Utf8).unwrap();
            let keep: arrow::array::BooleanArray = region
                .as_string::<i32>()
                .iter()
                .map(|r| Some(r == Some("EMEA")))
                .collect();
            let b = filter_record_batch(b, &keep).unwrap();
            let schema = b.schema();
            let columns = schema
                .fields()
                .iter()
                .zip(b.columns())
                .map(|(f, c)| match f.name().as_str() {
                    "customer_id" => map_utf8(c, hmac_hex),
                    "email" => map_utf8(c, partial_email),
                    _ => Arc::clone(c),
                })
                .collect();
            RecordBatch::try_new(schema, columns).unwrap()
        })
        .collect()
}

const COLUMNS: &[&str] = &[
    "order_id",
    "customer_id",
    "email",
    "region",
    "status",
    "item_count",
    "total_amount",
    "order_date",
];
const PREDICATES: &[&str] = &[
    "status = 'delivered'",
    "item_count > 3",
    "total_amount < 250",
    "email LIKE 'a%'",
    "email IS NULL",
    "customer_id < '8'",
    "region = 'AMER'",
    "region = 'EMEA'",
    "order_date >= DATE '2026-10-02'",
    "length(email) > 11",
    "substr(customer_id, 1, 1) IN ('a', 'b', 'c')",
    "1 / item_count > 0",
];
const GROUP_KEYS: &[&str] = &["status", "email", "customer_id", "region", "order_date"];
const AGGREGATES: &[&str] = &[
    "count(*)",
    "count(DISTINCT customer_id)",
    "sum(total_amount)",
    "max(email)",
    "min(customer_id)",
    "avg(item_count)",
];

fn random_query(rng: &mut Rng, table: &str) -> String {
    let mut where_clause = String::new();
    let n_preds = rng.next_u64() % 3;
    for i in 0..n_preds {
        where_clause.push_str(if i == 0 { " WHERE " } else { " AND " });
        where_clause.push_str(rng.pick(PREDICATES));
    }
    if rng.next_u64().is_multiple_of(2) {
        let mut cols: Vec<&str> = Vec::new();
        for _ in 0..1 + rng.next_u64() % 4 {
            let c = rng.pick(COLUMNS);
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
        let distinct = if rng.next_u64().is_multiple_of(3) {
            "DISTINCT "
        } else {
            ""
        };
        format!(
            "SELECT {distinct}{} FROM {table}{where_clause}",
            cols.join(", ")
        )
    } else {
        let key = rng.pick(GROUP_KEYS);
        let agg = rng.pick(AGGREGATES);
        format!("SELECT {key}, {agg} FROM {table}{where_clause} GROUP BY {key}")
    }
}

#[tokio::test]
async fn governed_results_equal_hand_masked_results() {
    let pat = session_as("pat").await;
    let ana = session_as("ana").await;
    let raw = run(&pat, "SELECT * FROM sales.orders").await.unwrap();
    let expected = hand_masked(&raw);
    let schema = raw[0].schema();
    let table = MemTable::try_new(schema, vec![expected]).unwrap();
    pat.context()
        .register_table("orders_by_hand", Arc::new(table))
        .unwrap();

    let mut rng = Rng(20261121);
    let mut compared_rows = 0;
    for _ in 0..80 {
        let q = random_query(&mut rng, "sales.orders");
        let q_expected = q.replace("sales.orders", "orders_by_hand");
        let got = run(&ana, &q).await;
        let want = run(&pat, &q_expected).await;
        match (got, want) {
            (Ok(got), Ok(want)) => {
                let (got, want) = (sorted_rows(&got), sorted_rows(&want));
                compared_rows += want.len();
                assert_eq!(got, want, "query: {q}");
            }
            (got, want) => panic!("query: {q}\n as ana: {got:?}\n by hand: {want:?}"),
        }
    }
    assert!(
        compared_rows > 500,
        "queries compared only {compared_rows} rows"
    );
}

#[test]
fn hand_masks_match_the_documented_examples() {
    assert_eq!(partial_email("alice@acme.com"), "a***@***.com");
    // HMAC-SHA256 of "C00001" under the demo key, as Python's hmac module
    // computes it:
    // python3 -c "import hmac,hashlib;print(hmac.new(b'meshq-demo-pii-key',b'C00001',hashlib.sha256).hexdigest())"
    assert_eq!(
        hmac_hex("C00001"),
        "1b0cd045f5b4526a707d055d457e27ee7a4a55b82c78906245f52a60f5d527df"
    );
    let a: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None]));
    assert_eq!(map_utf8(&a, |s| s.to_uppercase()).null_count(), 1);
}
