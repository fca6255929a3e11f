"""meshq through the ADBC Flight SQL driver, as a Python BI client uses it."""

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pytest


def connect(uri, user):
    return flight_sql.connect(uri, db_kwargs={"username": user, "password": f"{user}-demo"})


def test_query_as_a_filtered_principal(server):
    with connect(server, "ana") as conn, conn.cursor() as cur:
        cur.execute("SELECT region, count(*) AS n FROM sales.orders GROUP BY 1")
        assert cur.fetchall() == [("EMEA", 5178)]


def test_masked_values_and_plain_utf8(server):
    with connect(server, "gina") as conn, conn.cursor() as cur:
        cur.execute("SELECT order_id, email FROM sales.orders ORDER BY order_id LIMIT 2")
        table = cur.fetch_arrow_table()
        assert table.schema.field("email").type == pa.string()
        assert table.to_pylist() == [
            {"order_id": "O0000001", "email": "d***@***.com"},
            {"order_id": "O0000002", "email": "y***@***.com"},
        ]


def test_wrong_password_is_refused(server):
    with pytest.raises(adbc_driver_manager.Error) as e:
        with flight_sql.connect(server, db_kwargs={"username": "ana", "password": "nope"}) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
    assert "invalid credentials" in str(e.value)


def test_denied_table_names_the_table(server):
    with connect(server, "ana") as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.execute("SELECT * FROM payments.transactions")
        assert "may not read table `payments.transactions`" in str(e.value)


def test_prepared_statement_with_bound_parameters(server):
    with connect(server, "ana") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM sales.orders WHERE status = $1", parameters=("placed",))
        (bound,) = cur.fetchone()
        cur.execute("SELECT count(*) AS n FROM sales.orders WHERE status = 'placed'")
        (direct,) = cur.fetchone()
        assert bound == direct > 0


def test_zero_rows_keep_the_schema(server):
    with connect(server, "pat") as conn, conn.cursor() as cur:
        cur.execute("SELECT order_id, total_amount FROM sales.orders WHERE false")
        table = cur.fetch_arrow_table()
        assert table.num_rows == 0
        assert table.schema.names == ["order_id", "total_amount"]
        assert table.schema.field("total_amount").type == pa.decimal128(12, 2)


def test_large_result(server):
    with connect(server, "gina") as conn, conn.cursor() as cur:
        cur.execute("SELECT value FROM generate_series(1, 1200000)")
        table = cur.fetch_arrow_table()
        assert table.num_rows == 1_200_000
        assert pa.compute.sum(table["value"]).as_py() == 1_200_000 * 1_200_001 // 2


def test_get_info_and_objects(server):
    with connect(server, "ana") as conn:
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "meshq"
        catalogs = conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()
        assert [c["catalog_name"] for c in catalogs] == ["mesh"]
        schemas = conn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
        names = {s["db_schema_name"] for c in schemas for s in c["catalog_db_schemas"]}
        assert {"sales", "customers"} <= names
        tables = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        found = {
            (s["db_schema_name"], t["table_name"])
            for c in tables
            for s in c["catalog_db_schemas"]
            for t in (s["db_schema_tables"] or [])
        }
        assert ("sales", "orders") in found
        assert ("payments", "transactions") not in found
        columns = conn.adbc_get_objects(depth="all", db_schema_filter="sales", table_name_filter="orders").read_all().to_pylist()
        cols = [
            col["column_name"]
            for c in columns
            for s in c["catalog_db_schemas"]
            for t in (s["db_schema_tables"] or [])
            for col in (t["table_columns"] or [])
        ]
        assert cols[:3] == ["order_id", "customer_id", "email"]
        schema = conn.adbc_get_table_schema("orders", catalog_filter="mesh", db_schema_filter="sales")
        assert schema.field("total_amount").type == pa.decimal128(12, 2)
        assert schema.field("email").type == pa.string()
        email = schema.field("email").metadata
        assert email[b"ARROW:FLIGHT:SQL:REMARKS"] == b"Contact email given at checkout; null for guest checkouts."
        assert email[b"meshq.masked"] == b"true" and email[b"meshq.mask_kind"] == b"partial"


def test_demo_banner_snippet_runs_verbatim(tmp_path):
    """`meshq demo` prints an ADBC snippet; run it exactly as printed."""
    import os
    import subprocess
    import sys

    from conftest import meshq_binary

    proc = subprocess.Popen(
        [meshq_binary(), "demo", str(tmp_path / "mesh"), "--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, MESHQ_LOG="warn"),
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Or run SQL here"):
                break
        start = next(i for i, l in enumerate(lines) if l.startswith("import adbc_driver_flightsql"))
        end = next(i for i, l in enumerate(lines) if l.strip() == "" and i > start)
        snippet = "".join(lines[start:end])
        out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[('AMER', 3514), ('APAC', 3308), ('EMEA', 5178)]"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_meta_tables_over_adbc(server):
    """`meta` is listed as SYSTEM TABLEs and answers "why can't I read this"."""
    with connect(server, "ana") as conn:
        tables = conn.adbc_get_objects(depth="tables", db_schema_filter="meta").read_all().to_pylist()
        found = {
            (t["table_name"], t["table_type"])
            for c in tables
            for s in c["catalog_db_schemas"]
            for t in (s["db_schema_tables"] or [])
        }
        assert {("products", "SYSTEM TABLE"), ("my_access", "SYSTEM TABLE")} <= found
        with conn.cursor() as cur:
            cur.execute("SELECT table_schema, table_name, readable, reason FROM meta.my_access ORDER BY 1, 2")
            rows = cur.fetchall()
        assert ("payments", "transactions", False, "needs one of the roles `global-analyst`, `finance`") in rows
        assert ("sales", "orders", True, "granted by role `analyst`") in rows
        with conn.cursor() as cur:
            cur.execute("SELECT column_name, masked, mask_kind FROM meta.columns WHERE table_schema = 'sales' AND table_name = 'orders' AND masked")
            assert sorted(cur.fetchall()) == [("customer_id", True, "hash"), ("email", True, "partial")]
        with conn.cursor() as cur:
            cur.execute("SELECT email FROM sales.orders LIMIT 1")
            email = cur.fetch_arrow_table().schema.field("email").metadata
        assert email[b"ARROW:FLIGHT:SQL:REMARKS"] == b"Contact email given at checkout; null for guest checkouts."
        assert email[b"meshq.classification"] == b"pii"


def test_a_parameter_batch_runs_once_per_row(server):
    """A 4-row parameter batch gives 4 result rows. (Bound *before*
    prepare(), the Flight SQL ADBC driver 1.13 keeps the batch to itself and
    sends no parameters; bound after, it sends all four rows.)"""
    with connect(server, "gina") as conn:
        stmt = adbc_driver_manager.AdbcStatement(conn.adbc_connection)
        try:
            stmt.set_sql_query("SELECT 1 + $1 AS v")
            stmt.prepare()
            stmt.bind(pa.record_batch([pa.array([1, 2, 3, 4], pa.int64())], names=["0"]))
            stream, _ = stmt.execute_query()
            table = pa.RecordBatchReader._import_from_c(stream.address).read_all()
        finally:
            stmt.close()
        assert sorted(table.column(0).to_pylist()) == [2, 3, 4, 5]


def test_timestamp_with_time_zone_literal_keeps_its_zone(server):
    with connect(server, "gina") as conn, conn.cursor() as cur:
        cur.execute("SELECT TIMESTAMP WITH TIME ZONE '2026-01-01 10:00:00+02:00' AS t")
        table = cur.fetch_arrow_table()
        t = table.schema.field("t").type
        assert pa.types.is_timestamp(t) and t.tz in ("+00:00", "UTC"), t
        assert table.column(0)[0].as_py().isoformat() == "2026-01-01T08:00:00+00:00"
