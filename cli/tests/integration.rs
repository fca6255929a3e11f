//! End-to-end tests of the `meshq` binary: demo, shell and validate as a
//! user runs them, with exact output and exit codes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

mod abuse;
mod cluster;
mod flight;
mod governance;
mod import;
mod ops;
mod sources;
mod web;

fn meshq() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshq"));
    c.env_remove("MESHQ_LOG")
        .env_remove("MESHQ_FORMAT")
        .env_remove("MESHQ_AS")
        // The demo's hash key, as a platform team would export it.
        .env("MESHQ_DEMO_PII_KEY", "meshq-demo-pii-key");
    c
}

/// One demo mesh for the whole binary: writing it is the slow part.
fn demo_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        write_demo(&dir.path().join("mesh"));
        dir
    })
    .path()
}

/// `meshq demo --no-shell <mesh>`.
fn write_demo(mesh: &Path) {
    let out = meshq()
        .args(["demo", "--no-shell"])
        .arg(mesh)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mesh() -> std::path::PathBuf {
    demo_dir().join("mesh")
}

/// `meshq shell [extra] --mesh <demo> -c sql`.
fn shell(extra: &[&str], sql: &str) -> Output {
    meshq()
        .arg("shell")
        .args(extra)
        .arg("--mesh")
        .arg(mesh())
        .args(["-c", sql])
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

const REVENUE_BY_REGION: &str = "SELECT c.region, sum(o.total_amount) AS revenue, count(*) AS orders \
     FROM sales.orders o JOIN customers.profiles c USING (customer_id) GROUP BY 1 ORDER BY 1";

#[test]
fn demo_mesh_is_deterministic_and_valid() {
    let out = meshq()
        .args(["validate", "--mesh"])
        .arg(mesh())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        stdout(&out),
        "6 table(s) served; 0 error(s), 0 warning(s)\n"
    );

    // These figures are quoted in the README.
    let out = shell(&["--as", "pat"], REVENUE_BY_REGION);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "+--------+------------+--------+\n\
         | region | revenue    | orders |\n\
         +--------+------------+--------+\n\
         | AMER   | 993679.39  | 3514   |\n\
         | APAC   | 933239.61  | 3308   |\n\
         | EMEA   | 1462133.40 | 5178   |\n\
         +--------+------------+--------+\n"
    );
}

/// `meshq demo --local-workers 2`: the demo as the coordinator of two
/// workers in its process. ana's plan is cut into stages with her masks
/// and row filter inside them, and her answers are the single node's.
#[test]
fn demo_runs_queries_on_local_workers_with_the_same_masked_answers() {
    let demo = |workers: &str, sql: &str| {
        let out = meshq()
            .args(["demo", "--as", "ana", "--local-workers", workers, "-c", sql])
            .arg(mesh())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let explain = demo(
        "2",
        "EXPLAIN SELECT customer_id, count(*) FROM sales.orders GROUP BY 1",
    );
    assert!(
        stderr(&explain).contains("Queries run as the coordinator of 2 worker(s)"),
        "{}",
        stderr(&explain)
    );
    let plan = stdout(&explain);
    for part in [
        "DistributedExec",
        "Stage 1",
        "PolicyBarrierExec: table=sales.orders",
        "mask_hash(customer_id",
        "FilterExec: region@1 = EMEA",
        "tasks go to the workers that answer: http://127.0.0.1:",
    ] {
        assert!(plan.contains(part), "{part} in {plan}");
    }
    let sql = "SELECT customer_id, count(*) AS n, min(email) AS e FROM sales.orders GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5";
    let on_workers = stdout(&demo("2", sql));
    assert_eq!(on_workers, stdout(&demo("0", sql)));
    assert!(on_workers.contains("***"), "{on_workers}");
}

#[test]
fn demo_reuses_an_existing_mesh_and_runs_the_shell_on_stdin() {
    let mut child = meshq()
        .args(["demo", "--shell"])
        .arg(mesh())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT count(*) AS n\n  FROM sales.orders;\n\\dt\n\\q\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Using the existing demo mesh"),
        "{}",
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("| 12000 |"), "{text}");
    assert!(
        text.contains(
            "| sales       | orders       | delta     | urn:dataproduct:sales:orders            |"
        ),
        "{text}"
    );
}

#[test]
fn csv_and_json_formats() {
    let sql = "SELECT order_id, email, total_amount, created_at FROM sales.orders ORDER BY order_id LIMIT 2";
    let out = shell(&["--as", "pat", "--format", "csv"], sql);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "order_id,email,total_amount,created_at\n\
         O0000001,diego.murphy39@example.com,82.20,2026-10-01T04:15:24.445335Z\n\
         O0000002,yuki.martin1131@example.com,140.12,2026-10-01T00:12:31.065489Z\n"
    );
    let out = shell(
        &["--as", "pat", "--format", "json"],
        "SELECT region, count(*) AS n FROM customers.profiles GROUP BY 1 ORDER BY 1",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "[{\"region\":\"AMER\",\"n\":586},{\"region\":\"APAC\",\"n\":559},{\"region\":\"EMEA\",\"n\":855}]\n"
    );
    let out = shell(
        &["--as", "pat", "--format", "json"],
        "SELECT * FROM customers.profiles WHERE false",
    );
    assert_eq!(stdout(&out), "[]\n");
}

#[test]
fn script_file_with_several_statements_and_a_meta_command() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("q.sql");
    std::fs::write(
        &script,
        "-- payments per method\nSELECT method, count(*) AS n\nFROM payments.transactions\nGROUP BY 1 ORDER BY 2 DESC LIMIT 1;\n\\d customers.profiles\n",
    )
    .unwrap();
    let out = meshq()
        .args(["shell", "--as", "pat", "--mesh"])
        .arg(mesh())
        .arg("-f")
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("| card   |"), "{text}");
    assert!(
        text.contains(
            "| email       | Utf8View | NO       | pii            |                | Login email."
        ),
        "{text}"
    );
}

#[test]
fn query_errors_exit_1_with_a_message() {
    let out = shell(&["--as", "pat"], "SELECT * FROM sales.nope");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error: Error during planning: table 'mesh.sales.nope' not found\n"
    );
    let out = shell(&["--as", "pat"], "SELEC 1");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("Error: SQL error: ParserError"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn validate_lists_problems_file_by_file_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("meshq.yaml"), "principals: []\n").unwrap();
    std::fs::write(
        root.join("a/p.odps.yaml"),
        "apiVersion: v1.0.0\nkind: DataProduct\nid: p\nstatus: active\ndomain: a\noutputPorts:\n  - { name: out, version: '1', contractId: missing }\n",
    )
    .unwrap();
    std::fs::write(
        root.join("a/c.odcs.yaml"),
        "apiVersion: v3.1.0\nkind: DataContract\nid: c\nversion: '1'\nstatus: active\nowner: me\n",
    )
    .unwrap();
    let out = meshq()
        .args(["validate", "--mesh"])
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stdout(&out),
        "a/c.odcs.yaml\n  \
         error: line 6: unknown field `owner`, expected one of `version`, `kind`, `apiVersion`, `id`, `status`, `name`, `tenant`, `tags`, `servers`, `dataProduct`, `description`, `domain`, `schema`, `support`, `price`, `team`, `roles`, `slaDefaultElement`, `slaProperties`, `authoritativeDefinitions`, `customProperties`, `contractCreatedTs`\n\
         a/p.odps.yaml\n  \
         error: line 7: output port `out`: contractId `missing` does not match any contract in the mesh\n\
         0 table(s) served; 2 error(s), 0 warning(s)\n"
    );
    let out = meshq()
        .args(["validate", "--mesh"])
        .arg(root.join("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot open mesh directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_explains_flags() {
    let out = meshq().args(["shell", "--help"]).output().unwrap();
    let text = stdout(&out);
    for flag in ["--mesh", "--command", "--file", "--format", "MESHQ_MESH"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

#[test]
fn shell_as_a_principal_sees_what_they_may() {
    let out = shell(
        &["--as", "ana", "--format", "csv"],
        "SELECT region, count(*) AS n FROM sales.orders GROUP BY 1; SELECT email FROM sales.orders ORDER BY order_id LIMIT 2",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "region,n\nEMEA,5178\nemail\nd***@***.com\ns***@***.com\n"
    );

    let out = shell(&["--as", "ana"], "SELECT * FROM payments.transactions");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error: permission denied: `ana` may not read table `payments.transactions`; it requires one of the roles global-analyst, finance\n"
    );

    // Without --as the shell is anonymous: no roles, no rows of governed tables.
    let out = shell(&[], "SELECT count(*) FROM customers.profiles");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`(anonymous)` may not read table `customers.profiles`"),
        "{}",
        stderr(&out)
    );

    let out = shell(&["--as", "mallory"], "SELECT 1");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "Error: no principal `mallory` in meshq.yaml (known: ana, ben, gina, pat, root, svc-customer360, svc-marketing)\n"
    );
}

#[test]
fn hash_password_prints_a_verifiable_phc_string() {
    let mut child = meshq()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = stdout(&out);
    let phc = phc.trim();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    let cfg: meshq_catalog::platform::PlatformConfig = serde_yaml_ng::from_str(&format!(
        "principals: [ {{ name: u, password_hash: '{phc}' }} ]"
    ))
    .unwrap();
    assert!(cfg.authenticate("u", "correct horse").is_some());
    assert!(cfg.authenticate("u", "correct horse ").is_none());
}

#[test]
fn validate_without_the_demo_key_reports_unreadable_tables() {
    let out = meshq()
        .env_remove("MESHQ_DEMO_PII_KEY")
        .args(["validate", "--mesh"])
        .arg(mesh())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout(&out).contains("error: table `sales.orders`: global policy pii-hash-default on column customer_id: secret `pii-key`: environment variable `MESHQ_DEMO_PII_KEY` is not set; the table is unreadable until this is fixed"),
        "{}",
        stdout(&out)
    );
}

/// `meshq lineage <args> --mesh <demo>`, stdout.
fn lineage(args: &[&str]) -> String {
    let out = meshq()
        .arg("lineage")
        .args(args)
        .arg("--mesh")
        .arg(mesh())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// The demo's products feed each other through their input ports:
/// customers → sales → logistics and payments, and the Customer 360 (from
/// its SQL) → marketing's segments.
#[test]
fn lineage_draws_the_demo_products_as_mermaid_dot_json_and_svg() {
    assert_eq!(
        lineage(&[]),
        "\
flowchart LR
  p0[\"customer360.customer 360<br/><small>urn:dataproduct:customer360:profile_360</small>\"]
  p1[\"customers.customer profiles<br/><small>urn:dataproduct:customers:profiles</small>\"]
  p2[\"logistics.shipments<br/><small>urn:dataproduct:logistics:shipments</small>\"]
  p3[\"marketing.customer segments<br/><small>urn:dataproduct:marketing:segments</small>\"]
  p4[\"payments.payment transactions<br/><small>urn:dataproduct:payments:transactions</small>\"]
  p5[\"sales.orders<br/><small>urn:dataproduct:sales:orders</small>\"]
  p0 -->|\"customer360\"| p3
  p1 -->|\"profiles\"| p0
  p1 -->|\"customers\"| p5
  p4 -->|\"payments\"| p0
  p5 -->|\"orders\"| p0
  p5 -->|\"orders\"| p2
  p5 -->|\"orders\"| p4
"
    );
    // One product: what is upstream and downstream of it, nothing else.
    assert_eq!(
        lineage(&["urn:dataproduct:logistics:shipments", "--format", "dot"]),
        "\
digraph lineage {
  rankdir=LR;
  node [shape=box, style=rounded];
  p0 [label=\"customers.customer profiles\"]; // urn:dataproduct:customers:profiles
  p1 [label=\"logistics.shipments\"]; // urn:dataproduct:logistics:shipments
  p2 [label=\"sales.orders\"]; // urn:dataproduct:sales:orders
  p0 -> p2 [label=\"customers\"];
  p2 -> p1 [label=\"orders\"];
}
"
    );
    let json: serde_json::Value = serde_json::from_str(&lineage(&["--format", "json"])).unwrap();
    assert_eq!(json["products"].as_array().unwrap().len(), 6);
    let edges: Vec<(String, String)> = json["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from_product"].as_str().unwrap().to_string(),
                e["to_product"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        edges,
        [
            (
                "urn:dataproduct:customer360:profile_360",
                "urn:dataproduct:marketing:segments"
            ),
            (
                "urn:dataproduct:customers:profiles",
                "urn:dataproduct:customer360:profile_360"
            ),
            (
                "urn:dataproduct:customers:profiles",
                "urn:dataproduct:sales:orders"
            ),
            (
                "urn:dataproduct:payments:transactions",
                "urn:dataproduct:customer360:profile_360"
            ),
            (
                "urn:dataproduct:sales:orders",
                "urn:dataproduct:customer360:profile_360"
            ),
            (
                "urn:dataproduct:sales:orders",
                "urn:dataproduct:logistics:shipments"
            ),
            (
                "urn:dataproduct:sales:orders",
                "urn:dataproduct:payments:transactions"
            ),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(
        json["edges"][0]["declared_in"].as_str(),
        Some("marketing/segments.odps.yaml")
    );
    // The SVG is well-formed XML with a text element per product label.
    let svg = lineage(&["--format", "svg"]);
    let mut reader = quick_xml::Reader::from_str(&svg);
    let mut texts = Vec::new();
    let mut root = None;
    let mut in_text = false;
    loop {
        match reader.read_event().expect("well-formed SVG") {
            quick_xml::events::Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).to_string();
                root.get_or_insert(name.clone());
                in_text |= name == "text";
            }
            quick_xml::events::Event::Text(t) if in_text => {
                texts.push(t.decode().unwrap().to_string());
            }
            quick_xml::events::Event::End(e) if e.name().as_ref() == b"text" => in_text = false,
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(root.as_deref(), Some("svg"));
    for label in [
        "customer360.customer 360",
        "marketing.customer segments",
        "customers.customer profiles",
        "logistics.shipments",
        "payments.payment transactions",
        "sales.orders",
    ] {
        assert!(
            texts.iter().any(|t| t.contains(label)),
            "{label} not in {texts:?}"
        );
    }
    // An unknown product is a clear error.
    let out = meshq()
        .args(["lineage", "nope", "--mesh"])
        .arg(mesh())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no product `nope` in the mesh"),
        "{}",
        stderr(&out)
    );
}

/// `--format csv` writes list columns (as in `meta`) as their text.
#[test]
fn csv_output_writes_list_columns_as_text() {
    let out = shell(
        &["--as", "ana", "--format", "csv"],
        "SELECT table_name, row_filters FROM meta.my_access WHERE table_schema = 'sales'",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "table_name,row_filters\norders,\"[own_region: \"\"region\"\" = 'EMEA']\"\n"
    );
}
