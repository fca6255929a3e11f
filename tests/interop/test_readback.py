"""meshq reads what the ecosystem wrote: every fixture table, read through
meshq over Flight SQL, equals the writer's own read-back, for full scans and
for filtered and projected queries."""

import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import writers
from conftest import S3_KEY, S3_SECRET

UTC = dt.timezone.utc


def rows(table, key):
    """Rows as dicts, sorted by `key` columns; values compared as Python
    values, so e.g. a `+00:00` and a `UTC` timestamp are equal instants."""
    out = table.to_pylist()
    return sorted(out, key=lambda r: tuple(r[k] for k in key))


def assert_same(got, expected, key):
    assert got.num_rows > 0, "a fixture must not be empty"
    assert got.num_rows == expected.num_rows
    assert got.column_names == expected.column_names
    assert rows(got, key) == rows(expected, key)


def local_catalog(fixtures):
    from pyiceberg.catalog.sql import SqlCatalog

    data = fixtures["data"]
    return SqlCatalog(
        "default",
        uri=f"sqlite:///{os.path.join(data, 'catalog.db')}",
        warehouse=f"file://{os.path.join(data, 'warehouse')}",
    )


EVENT_COLUMNS = ["id", "kind", "amount_cents", "ts", "note"]


def test_iceberg_table_through_sql_catalog(fixtures, query):
    table = local_catalog(fixtures).load_table("sales.events")
    expected = table.scan().to_arrow().select(EVENT_COLUMNS)
    got = query("SELECT * FROM sales.events")
    assert_same(got, expected, ["id"])
    ids = set(got.column("id").to_pylist())
    # The delete removed ids 0..4; the overwrite replaced every refund.
    assert not ids & set(range(5))
    refunds = [r["id"] for r in got.to_pylist() if r["kind"] == "refund"]
    assert sorted(refunds) == list(range(1000, 1006))
    by_id = {r["id"]: r for r in got.to_pylist()}
    # Written before `note` existed: null. Written as int before the
    # rename and widening: the same values, now read as `amount_cents`.
    assert by_id[6]["note"] is None
    assert by_id[6]["amount_cents"] == (6 * 37) % 1000 - 100
    assert by_id[33]["note"] == "n-33"
    assert by_id[63]["note"] == "m-63"


def test_iceberg_filtered_and_projected(fixtures, query):
    table = local_catalog(fixtures).load_table("sales.events")
    # Filtered in Python over PyIceberg's full read-back: PyIceberg 0.11 itself
    # fails to prune on `amount_cents`, whose older files hold 4-byte (int)
    # bounds from before the column was widened to long.
    since = dt.datetime(2026, 3, 5, tzinfo=UTC)
    full = table.scan().to_arrow()
    expected = pa.Table.from_pylist(
        [
            {"id": r["id"], "amount_cents": r["amount_cents"]}
            for r in full.to_pylist()
            if r["kind"] == "sale" and r["ts"] >= since and r["amount_cents"] < 500
        ],
        schema=pa.schema([("id", pa.int64()), ("amount_cents", pa.int64())]),
    )
    got = query(
        "SELECT id, amount_cents FROM sales.events "
        "WHERE kind = 'sale' AND ts >= TIMESTAMP '2026-03-05T00:00:00Z' AND amount_cents < 500"
    )
    assert_same(got, expected, ["id"])
    # An aggregate over a partition column and a transform-partitioned one.
    per_kind = query("SELECT kind, count(*) AS n FROM sales.events GROUP BY kind ORDER BY kind")
    full = full.to_pylist()
    for r in per_kind.to_pylist():
        assert r["n"] == sum(1 for x in full if x["kind"] == r["kind"])


def test_iceberg_by_folder_and_by_snapshot(fixtures, query):
    table = local_catalog(fixtures).load_table("sales.events")
    by_path = query("SELECT * FROM sales.events_by_path")
    assert_same(by_path, table.scan().to_arrow().select(EVENT_COLUMNS), ["id"])
    # By the metadata file PyIceberg's last commit wrote.
    assert table.metadata_location == fixtures["snapshots"]["metadata"]
    by_file = query("SELECT * FROM sales.events_by_metadata")
    assert_same(by_file, table.scan().to_arrow().select(EVENT_COLUMNS), ["id"])
    first = fixtures["snapshots"]["events_first_snapshot"]
    expected = table.scan(snapshot_id=first).to_arrow()
    got = query("SELECT * FROM sales.events_v1")
    # The first snapshot, with the schema it had then.
    assert_same(got, expected.select(["id", "kind", "amount", "ts"]), ["id"])
    assert sorted(got.column("id").to_pylist()) == list(range(30))
    # The same snapshot, chosen by time (asOfTimestamp = its commit time).
    assert_same(query("SELECT * FROM sales.events_asof"), expected.select(["id", "kind", "amount", "ts"]), ["id"])


def test_iceberg_second_namespace(fixtures, query):
    table = local_catalog(fixtures).load_table("ops.readings")
    assert_same(query("SELECT * FROM ops.readings"), table.scan().to_arrow(), ["seq"])


def test_iceberg_on_s3(fixtures, s3, query):
    table = writers.iceberg_catalog_s3(fixtures["data"], s3).load_table("lake.readings")
    assert_same(query("SELECT * FROM lake.readings_s3"), table.scan().to_arrow(), ["seq"])
    got = query("SELECT sensor, sum(value) AS total FROM lake.readings_s3 WHERE seq >= 20 GROUP BY sensor")
    expected = {}
    for r in table.scan().to_arrow().to_pylist():
        if r["seq"] >= 20:
            expected[r["sensor"]] = expected.get(r["sensor"], 0) + r["value"]
    assert {r["sensor"]: r["total"] for r in got.to_pylist()} == pytest.approx(expected)


def delta_readback(path, columns=None, filters=None, storage_options=None):
    from deltalake import DeltaTable

    t = DeltaTable(path, storage_options=storage_options)
    return pa.table(t.to_pyarrow_dataset().to_table(columns=columns, filter=filters))


def test_delta_partitioned_overwritten_and_evolved(fixtures, query):
    path = os.path.join(fixtures["data"], "delta", "orders")
    columns = ["order_id", "region", "total", "day", "channel"]
    expected = delta_readback(path, columns)
    got = query("SELECT * FROM retail.orders")
    assert_same(got, expected, ["order_id"])
    ids = set(got.column("order_id").to_pylist())
    # The overwrite dropped the first two appends.
    assert not ids & set(range(80))
    assert {r["channel"] for r in got.to_pylist() if r["order_id"] < 300} == {None}
    import pyarrow.compute as pc

    filtered = query("SELECT order_id, total FROM retail.orders WHERE region = 'EMEA' AND day > DATE '2026-04-03'")
    expected = delta_readback(
        path,
        ["order_id", "total"],
        (pc.field("region") == "EMEA") & (pc.field("day") > pa.scalar(dt.date(2026, 4, 3))),
    )
    assert_same(filtered, expected, ["order_id"])


def test_delta_with_checkpoint(fixtures, query):
    path = os.path.join(fixtures["data"], "delta", "ledger")
    assert any(n.endswith(".checkpoint.parquet") for n in os.listdir(os.path.join(path, "_delta_log")))
    expected = delta_readback(path, ["order_id", "region", "total", "day"])
    assert_same(query("SELECT * FROM retail.ledger"), expected, ["order_id", "region"])


def test_delta_written_by_polars(fixtures, query):
    import polars as pl

    path = os.path.join(fixtures["data"], "delta", "stock")
    expected = pl.read_delta(path).to_arrow()
    got = query("SELECT * FROM retail.stock")
    assert got.num_rows == 25
    assert rows(got, ["sku"]) == rows(expected, ["sku"])


def test_delta_on_s3(fixtures, s3, query):
    expected = delta_readback(
        f"s3://{writers.BUCKET}/delta/orders",
        ["order_id", "region", "total", "day"],
        storage_options=writers.delta_s3_options(s3),
    )
    assert_same(query("SELECT * FROM retail.orders_s3"), expected, ["order_id"])


def test_parquet_nested_decimal_tz_dictionary(fixtures, query):
    path = os.path.join(fixtures["data"], "parquet", "nested.parquet")
    expected = pq.read_table(path)
    got = query("SELECT * FROM files.nested")
    assert_same(got, expected, ["id"])
    # Nested access and filters on decimals and zoned timestamps. A SQL
    # TIMESTAMP literal has no zone; compared with a zoned column it would be
    # read as wall-clock time in the column's zone (Europe/Paris), so the
    # instant is given explicitly in UTC.
    got = query(
        "SELECT id, address['city'] AS city FROM files.nested "
        "WHERE price > 20.00 "
        "AND at < arrow_cast(TIMESTAMP '2026-01-03T00:00:00', 'Timestamp(Microsecond, Some(\"UTC\"))') "
        "ORDER BY id"
    )
    exp = [
        {"id": r["id"], "city": r["address"]["city"] if r["address"] else None}
        for r in expected.to_pylist()
        if r["price"] is not None and r["price"] > 20 and r["at"] < dt.datetime(2026, 1, 3, tzinfo=UTC)
    ]
    assert len(exp) > 0
    assert got.to_pylist() == exp


def test_parquet_on_s3(fixtures, s3, moto, query):
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        access_key=S3_KEY, secret_key=S3_SECRET, endpoint_override=moto.endpoint, scheme="http", region="us-east-1"
    )
    expected = pq.read_table(f"{writers.BUCKET}/parquet/readings/", filesystem=fs)
    assert_same(query("SELECT * FROM files.readings_s3"), expected, ["seq"])


def test_iceberg_through_rest_catalog(fixtures, tmp_path):
    """The same PyIceberg table, found through an Iceberg REST catalog."""
    import rest_catalog
    from conftest import Server

    server, url = rest_catalog.serve(os.path.join(fixtures["data"], "catalog.db"), "default", "rest-token")
    mesh = str(tmp_path / "mesh")
    import shutil

    shutil.copytree(fixtures["mesh"], mesh)
    with open(os.path.join(mesh, "meshq.yaml")) as f:
        config = f.read()
    config = config.replace(
        "catalogs:\n",
        f"catalogs:\n  rest: {{ type: rest, uri: '{url}', token: {{ env: INTEROP_REST_TOKEN }} }}\n",
    )
    with open(os.path.join(mesh, "meshq.yaml"), "w") as f:
        f.write(config)
    writers.write_product(
        mesh,
        "sales",
        "events_rest",
        "{ server: rest, type: local, format: iceberg, catalog: rest, schema: sales }",
        writers.EVENTS_COLUMNS,
        physical="events",
    )
    srv = Server(
        mesh,
        {"INTEROP_S3_KEY": S3_KEY, "INTEROP_S3_SECRET": S3_SECRET, "INTEROP_REST_TOKEN": "rest-token"},
    )
    try:
        conn = srv.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM sales.events_rest")
            got = cur.fetch_arrow_table()
        conn.close()
        expected = local_catalog(fixtures).load_table("sales.events").scan().to_arrow().select(EVENT_COLUMNS)
        assert_same(got, expected, ["id"])
    finally:
        srv.stop()
        server.shutdown()


def test_quality_checks_run_on_every_writer_and_store(fixtures, s3, query):
    """`meshq check` reads each table the way queries do: Iceberg and
    Parquet on S3 count their rows like a governed query does, and no
    table's rules fail to run."""
    import json
    import subprocess

    from conftest import meshq_binary

    out = subprocess.run(
        [meshq_binary(), "check", "--mesh", fixtures["mesh"], "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, INTEROP_S3_KEY=S3_KEY, INTEROP_S3_SECRET=S3_SECRET),
    )
    doc = json.loads(out.stdout)
    tables = {t["table"]: {r["rule"]: r for r in t["results"]} for t in doc["tables"]}
    assert {"lake.readings_s3", "files.readings_s3", "retail.orders_s3"} <= set(tables), sorted(tables)
    errors = [(t, r["rule"], r["detail"]) for t, rs in tables.items() for r in rs.values() if r["status"] == "error"]
    assert not errors, errors
    for table in ("lake.readings_s3", "files.readings_s3"):
        rules = tables[table]
        assert rules["seq.required"]["status"] == "passed" and rules["seq.required"]["measured"] == 0
        assert rules["sensor.required"]["status"] == "passed"
        # The same figure through a governed query over Flight SQL.
        repeated = query(
            f"SELECT count(*) AS n FROM (SELECT sensor FROM {table} GROUP BY sensor HAVING count(*) > 1) s"
        ).column("n")[0].as_py()
        assert repeated > 0
        assert rules["sensor.duplicateValues"]["measured"] == repeated
    assert out.returncode == 0, out.stdout + out.stderr
