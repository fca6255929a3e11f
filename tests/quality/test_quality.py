"""`meshq check` on real data: every rule kind, operator and unit, with the
measured value asserted against a count DuckDB computes independently over
the same Parquet file, and pass/fail compared rule by rule with the reference
tool, `datacontract test` (datacontract-cli from PyPI), on the same contract.

The data is built by hand below so that each rule has a known outcome; the
counts are not taken from it but recomputed by DuckDB.
"""

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

PRODUCT = """\
apiVersion: v1.0.0
kind: DataProduct
id: urn:dataproduct:shop:orders
name: shop orders
version: 1.0.0
status: active
domain: shop
team: { name: shop-data, members: [ { username: sam@example.com, role: owner } ] }
outputPorts:
  - { name: orders, type: tables, version: 1.0.0, contractId: urn:datacontract:shop:orders }
"""

# One rule per (property, metric): the reference tool's check keys ignore the
# rule's index, and two rules with one key break its whole run.
CONTRACT = """\
apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:shop:orders
name: orders
version: 1.0.0
status: active
servers:
  - { server: local, type: local, format: parquet, path: ./data/*.parquet }
slaProperties:
  - { property: freshness, value: 1, unit: d, element: orders.created_at }
schema:
  - name: orders
    quality:
      - { metric: rowCount, mustNotBeBetween: [0, 10] }
      - { name: region_country_pairs, metric: duplicateValues, arguments: { properties: [region, country] }, mustBeGreaterOrEqualTo: 1 }
      - { type: sql, query: "SELECT sum(quantity) FROM {object}", mustBeLessThan: 10 }
      - { type: text, description: Orders look plausible to the shop team. }
      - { type: custom, engine: soda, implementation: "checks for orders: [row_count > 0]" }
    properties:
      - { name: order_id, logicalType: string, physicalType: STRING, primaryKey: true, primaryKeyPosition: 1, required: true }
      - { name: line_no, logicalType: integer, physicalType: INT, primaryKey: true, primaryKeyPosition: 2, required: true }
      - name: customer_id
        logicalType: string
        physicalType: STRING
        quality:
          - { metric: nullValues, mustBe: 3 }
          - { metric: missingValues, unit: percent, mustBeLessOrEqualTo: 15 }
      - name: status
        logicalType: string
        physicalType: STRING
        quality:
          - { metric: missingValues, arguments: { missingValues: ["", "N/A"] }, mustBeLessOrEqualTo: 2 }
          - { metric: invalidValues, arguments: { validValues: [placed, shipped, cancelled] }, mustNotBe: 0 }
      - name: email
        logicalType: string
        physicalType: STRING
        unique: true
        logicalTypeOptions: { format: email }
        quality:
          - { metric: invalidValues, arguments: { pattern: "^[^@]+@[^@]+$" }, unit: percent, mustBeLessThan: 10 }
          - { metric: duplicateValues, mustBeBetween: [1, 2] }
      - name: region
        logicalType: string
        physicalType: STRING
        quality:
          - { metric: nullValues, mustBeGreaterThan: 0 }
      - { name: country, logicalType: string, physicalType: STRING, required: true }
      - name: quantity
        logicalType: integer
        physicalType: INT
        logicalTypeOptions: { minimum: 0, maximum: 100 }
        quality:
          - { type: sql, query: "SELECT count(*) FROM {object} WHERE {property} < 0", mustBe: 1 }
      - { name: amount, logicalType: number, physicalType: DOUBLE, logicalTypeOptions: { exclusiveMinimum: 0 } }
      - name: code
        logicalType: string
        physicalType: STRING
        logicalTypeOptions: { minLength: 2, maxLength: 4, pattern: "^[A-Z]+$" }
        quality:
          - { metric: invalidValues, arguments: { validValues: [AB, ABC, ABCD] }, severity: warning, mustBe: 0 }
      - { name: created_at, logicalType: timestamp, physicalType: TIMESTAMP }
"""


def rows():
    """20 order lines with known defects (see the rules above)."""
    n = 20
    order_id = ["O1", "O1"] + [f"O{i}" for i in range(2, n)]
    line_no = [1, 2] + [1] * (n - 2)
    customer_id = [None if i in (3, 7, 11) else f"C{i}" for i in range(n)]
    status = (["placed", "shipped", "cancelled"] * 6)[: n - 4] + [None, "", "N/A", "bogus"]
    email = [f"u{i}@shop.example" for i in range(n)]
    email[1] = email[2] = email[0]  # one value three times
    email[4] = email[3]  # another twice: 2 duplicated values
    email[18] = "not-an-email"
    email[19] = "x@"
    region = (["EMEA", "AMER", "APAC"] * 7)[:n]
    country = (["DE", "US", "JP"] * 7)[:n]
    country[5] = None
    quantity = [(i % 9) + 1 for i in range(n)]
    quantity[6] = -1
    quantity[7] = 150
    amount = [round(10.5 + i, 2) for i in range(n)]
    amount[8] = 0.0
    code = (["AB", "ABC", "ABCD"] * 7)[:n]
    code[9] = "ABCDE"
    code[10] = "ab"
    created_at = [NOW - dt.timedelta(hours=2 + i) for i in range(n)]
    return pa.table(
        {
            "order_id": order_id,
            "line_no": pa.array(line_no, pa.int32()),
            "customer_id": customer_id,
            "status": status,
            "email": email,
            "region": region,
            "country": country,
            "quantity": pa.array(quantity, pa.int32()),
            "amount": pa.array(amount, pa.float64()),
            "code": code,
            "created_at": pa.array(created_at, pa.timestamp("us", tz="UTC")),
        }
    )


def meshq_binary():
    path = os.environ.get("MESHQ_BIN")
    if not path or not os.path.exists(path):
        pytest.fail("MESHQ_BIN must point at the built meshq binary (scripts/test.sh sets it)")
    return path


@pytest.fixture(scope="module")
def mesh():
    with tempfile.TemporaryDirectory() as root:
        shop = os.path.join(root, "shop")
        os.makedirs(os.path.join(shop, "data"))
        pq.write_table(rows(), os.path.join(shop, "data", "orders.parquet"))
        with open(os.path.join(shop, "orders.odps.yaml"), "w") as f:
            f.write(PRODUCT)
        with open(os.path.join(shop, "orders.odcs.yaml"), "w") as f:
            f.write(CONTRACT)
        yield root


def run_meshq(*args):
    return subprocess.run([meshq_binary(), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def report(mesh):
    out = run_meshq("check", "--mesh", mesh, "--format", "json")
    assert out.returncode == 1, out.stderr + out.stdout  # error-severity rules fail by design
    doc = json.loads(out.stdout)
    [table] = doc["tables"]
    assert table["table"] == "shop.orders"
    return {r["rule"]: r for r in table["results"]}


def expected_counts(mesh):
    """Each rule's measured value, computed by DuckDB over the same file."""
    path = os.path.join(mesh, "shop", "data", "orders.parquet")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{path}')")
    one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
    total = one("SELECT count(*) FROM t")
    dup_values = lambda cols: one(  # noqa: E731
        f"SELECT count(*) FROM (SELECT {cols} FROM t WHERE "
        + " AND ".join(f"{c} IS NOT NULL" for c in cols.split(", "))
        + f" GROUP BY {cols} HAVING count(*) > 1)"
    )
    return {
        "rowCount": total,
        "region_country_pairs": dup_values("region, country"),
        "sql": one("SELECT sum(quantity) FROM t"),
        "customer_id.nullValues": one("SELECT count(*) FROM t WHERE customer_id IS NULL"),
        "customer_id.missingValues": 100.0 * one("SELECT count(*) FROM t WHERE customer_id IS NULL") / total,
        "status.missingValues": one("SELECT count(*) FROM t WHERE status IS NULL OR status IN ('', 'N/A')"),
        "status.invalidValues": one(
            "SELECT count(*) FROM t WHERE status IS NOT NULL AND status NOT IN ('placed', 'shipped', 'cancelled')"
        ),
        "email.invalidValues": 100.0
        * one("SELECT count(*) FROM t WHERE email IS NOT NULL AND NOT regexp_matches(email, '^[^@]+@[^@]+$')")
        / total,
        "email.duplicateValues": dup_values("email"),
        "region.nullValues": one("SELECT count(*) FROM t WHERE region IS NULL"),
        "quantity.sql": one("SELECT count(*) FROM t WHERE quantity < 0"),
        "code.invalidValues": one(
            "SELECT count(*) FROM t WHERE code IS NOT NULL AND code NOT IN ('AB', 'ABC', 'ABCD')"
        ),
        "order_id.required": one("SELECT count(*) FROM t WHERE order_id IS NULL"),
        "line_no.required": one("SELECT count(*) FROM t WHERE line_no IS NULL"),
        "country.required": one("SELECT count(*) FROM t WHERE country IS NULL"),
        "email.unique": dup_values("email"),
        "email.format": one(
            r"SELECT count(*) FROM t WHERE email IS NOT NULL AND NOT regexp_matches(email, '^[^@\s]+@[^@\s]+\.[^@\s]+$')"
        ),
        "quantity.minimum": one("SELECT count(*) FROM t WHERE quantity < 0"),
        "quantity.maximum": one("SELECT count(*) FROM t WHERE quantity > 100"),
        "amount.exclusiveMinimum": one("SELECT count(*) FROM t WHERE amount <= 0"),
        "code.length": one("SELECT count(*) FROM t WHERE length(code) < 2 OR length(code) > 4"),
        "code.pattern": one("SELECT count(*) FROM t WHERE NOT regexp_matches(code, '^[A-Z]+$')"),
        "primaryKey": one(
            "SELECT count(*) - count(DISTINCT (order_id, line_no)) FROM t WHERE order_id IS NOT NULL AND line_no IS NOT NULL"
        )
        + one("SELECT count(*) FROM t WHERE order_id IS NULL OR line_no IS NULL"),
        "freshness": (NOW - con.execute("SELECT max(created_at) FROM t").fetchone()[0]).total_seconds(),
    }


# The operator of each rule, to derive the expected verdict from the count.
OPERATORS = {
    "rowCount": lambda v: not (0 <= v <= 10),
    "region_country_pairs": lambda v: v >= 1,
    "sql": lambda v: v < 10,
    "customer_id.nullValues": lambda v: v == 3,
    "customer_id.missingValues": lambda v: v <= 15,
    "status.missingValues": lambda v: v <= 2,
    "status.invalidValues": lambda v: v != 0,
    "email.invalidValues": lambda v: v < 10,
    "email.duplicateValues": lambda v: 1 <= v <= 2,
    "region.nullValues": lambda v: v > 0,
    "quantity.sql": lambda v: v == 1,
    "code.invalidValues": lambda v: v == 0,
    "freshness": lambda v: v < 86400,
}


def test_every_measured_value_matches_an_independent_count(mesh, report):
    expected = expected_counts(mesh)
    for rule, value in expected.items():
        assert rule in report, f"meshq reported no rule {rule}: {sorted(report)}"
        got = report[rule]["measured"]
        if rule == "freshness":
            # The age is measured a few seconds after this process's NOW.
            assert value - 5 <= got <= value + 300, (rule, got, value)
        else:
            assert got == pytest.approx(value), (rule, got, value)
        passes = OPERATORS.get(rule, lambda v: v == 0)(value)
        severity_warning = rule == "code.invalidValues"
        want = "passed" if passes else ("warning" if severity_warning else "failed")
        assert report[rule]["status"] == want, (rule, report[rule])


def test_the_rules_cover_every_operator_unit_and_kind(report):
    thresholds = {r["threshold"].split(" ")[0] for r in report.values() if r["threshold"]}
    assert {"=", "!=", ">", ">=", "<", "<=", "between", "not"} <= thresholds, thresholds
    assert {r["unit"] for r in report.values()} >= {"rows", "percent", "seconds", ""}
    assert report["customer_id.missingValues"]["unit"] == "percent"
    # Text and custom rules are listed, not run.
    assert report["text"]["status"] == "skipped"
    assert "not run" not in report["custom"]["detail"] and "soda" in report["custom"]["detail"]
    assert report["custom"]["status"] == "skipped"
    # Origins: declared, schema-implied and SLA.
    assert {r["origin"] for r in report.values()} == {"quality", "schema", "sla"}
    # Results carry counts, never values from the data.
    text = json.dumps(report)
    for value in ("u0@shop.example", "not-an-email", "bogus", "ABCDE", "C1"):
        assert value not in text


def test_junit_and_exit_codes(mesh, tmp_path):
    out_file = tmp_path / "quality.xml"
    out = run_meshq("check", "--mesh", mesh, "--format", "junit", "--output", str(out_file))
    assert out.returncode == 1, out.stderr
    suites = ET.parse(out_file).getroot()
    [suite] = suites.findall("testsuite")
    assert suite.get("name") == "shop.orders"
    cases = suite.findall("testcase")
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    assert int(suites.get("failures")) == len(failed) > 0
    assert sorted(skipped) == ["custom", "text"]
    assert "country.required" in failed and "code.invalidValues" not in failed
    # Only the rules that pass: exit 0.
    out = run_meshq("check", "--mesh", mesh, "--table", "nope.nothing")
    assert out.returncode == 2 and "nope.nothing" in out.stderr
    out = run_meshq("check", "--mesh", mesh, "--product", "urn:dataproduct:shop:orders", "--format", "table")
    assert out.returncode == 1
    assert "shop.orders" in out.stdout and "rule(s) on 1 table(s)" in out.stdout


# meshq rule → the reference tool's check keys. A meshq rule passes when all
# of its keys pass (the reference splits exclusive bounds and length ranges).
PARITY = {
    "rowCount": ["orders__row_count"],
    "region_country_pairs": ["orders__model_duplicate_values"],
    "sql": ["orders__quality_sql_2"],
    "customer_id.nullValues": ["orders__customer_id__field_null_values"],
    "customer_id.missingValues": ["orders__customer_id__field_missing_values"],
    "status.missingValues": ["orders__status__field_missing_values"],
    "status.invalidValues": ["orders__status__field_invalid_values"],
    "email.invalidValues": ["orders__email__field_invalid_values"],
    "email.duplicateValues": ["orders__email__field_duplicate_values"],
    "region.nullValues": ["orders__region__field_null_values"],
    "quantity.sql": ["orders__quantity__quality_sql_0"],
    "code.invalidValues": ["orders__code__field_invalid_values"],
    "order_id.required": ["orders__order_id__field_required"],
    "line_no.required": ["orders__line_no__field_required"],
    "country.required": ["orders__country__field_required"],
    "email.unique": ["orders__email__field_unique"],
    "primaryKey": ["orders__primary_key_unique"],
    "quantity.minimum": ["orders__quantity__field_minimum"],
    "quantity.maximum": ["orders__quantity__field_maximum"],
    "amount.exclusiveMinimum": ["orders__amount__field_minimum", "orders__amount__field_not_equal"],
    "code.length": ["orders__code__field_min_length", "orders__code__field_max_length"],
    "code.pattern": ["orders__code__field_regex"],
    "freshness": ["orders__created_at__servicelevel_freshness"],
}


def datacontract_bin():
    exe = os.path.join(os.path.dirname(sys.executable), "datacontract")
    if not os.path.exists(exe):
        pytest.fail("datacontract-cli is not installed in this venv (scripts/test.sh installs it)")
    return exe


def test_verdicts_agree_with_datacontract_cli(mesh, report, tmp_path):
    shop = os.path.join(mesh, "shop")
    result = tmp_path / "dc.json"
    # The reference tool resolves the server path against its working
    # directory; run it where the contract is.
    out = subprocess.run(
        [datacontract_bin(), "test", "orders.odcs.yaml", "--server", "local", "--output-format", "json", "--output", str(result)],
        cwd=shop,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert result.exists(), out.stdout + out.stderr
    checks = {c["key"]: c for c in json.loads(result.read_text())["checks"]}
    assert not [c for c in checks.values() if c.get("type") in ("general", "lint")], out.stdout
    verdicts = {"passed": "passed", "failed": "failed", "warning": "warning"}
    disagreements = []
    for rule, keys in PARITY.items():
        missing = [k for k in keys if k not in checks]
        assert not missing, f"reference tool has no check {missing} (keys: {sorted(checks)})"
        ref = [verdicts.get(checks[k]["result"], checks[k]["result"]) for k in keys]
        ref_verdict = "passed" if all(r == "passed" for r in ref) else next(r for r in ref if r != "passed")
        if ref_verdict != report[rule]["status"]:
            disagreements.append((rule, report[rule]["status"], ref_verdict, [checks[k].get("reason") for k in keys]))
    assert not disagreements, disagreements
    # Both fail the run.
    assert out.returncode == 1


def test_datacontract_lint_passes_on_every_demo_contract(tmp_path):
    demo = tmp_path / "demo"
    out = run_meshq("demo", "--no-shell", str(demo))
    assert out.returncode == 0, out.stderr
    contracts = sorted(p for p in demo.rglob("*.odcs.yaml"))
    assert len(contracts) >= 4
    for c in contracts:
        lint = subprocess.run(
            [datacontract_bin(), "lint", str(c)], capture_output=True, text=True, timeout=300, env=dict(os.environ, COLUMNS="200")
        )
        assert lint.returncode == 0, (c.name, lint.stdout, lint.stderr)
        assert "failed" not in lint.stdout.lower(), (c.name, lint.stdout)


def test_the_demo_report_names_its_failing_rule(tmp_path):
    demo = tmp_path / "demo"
    out = run_meshq("demo", "--no-shell", str(demo))
    assert out.returncode == 0, out.stderr
    out = run_meshq("check", "--mesh", str(demo), "--format", "json")
    doc = json.loads(out.stdout)
    failed = [
        (t["table"], r["rule"]) for t in doc["tables"] for r in t["results"] if r["status"] == "failed"
    ]
    # One rule fails on the generated data by design (docs/quality.md).
    assert failed == [("payments.transactions", "refunds_are_rare")], failed
    assert out.returncode == 1
