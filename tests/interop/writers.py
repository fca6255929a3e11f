"""Fixture tables written by the ecosystem's own writers, and the mesh that
publishes them.

Every table here is written by the library its users would write it with
(PyIceberg, the `deltalake` package, Polars, pyarrow), locally and on an
S3-compatible server. The tests then read each table through meshq and
compare every value with the writer's own read-back.
"""

import datetime as dt
import os
import textwrap
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

UTC = dt.timezone.utc
BUCKET = "interop"


# --------------------------------------------------------------------------
# Data


def events_batch(start, n, *, note=None, amount_type=pa.int32(), amount_name="amount"):
    """Rows for sales.events: ids start..start+n over three kinds and days."""
    kinds = ["sale", "refund", "fee"]
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("kind", pa.string()),
        pa.field(amount_name, amount_type),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
    ]
    cols = {
        "id": [start + i for i in range(n)],
        "kind": [kinds[(start + i) % 3] for i in range(n)],
        amount_name: [((start + i) * 37) % 1000 - 100 for i in range(n)],
        "ts": [
            dt.datetime(2026, 3, 1, tzinfo=UTC) + dt.timedelta(hours=7 * (start + i))
            for i in range(n)
        ],
    }
    if note is not None:
        fields.append(pa.field("note", pa.string()))
        cols["note"] = [None if (start + i) % 4 == 0 else f"{note}-{start + i}" for i in range(n)]
    return pa.table(cols, schema=pa.schema(fields))


def readings_batch(start, n):
    return pa.table(
        {
            "sensor": [f"s{(start + i) % 5}" for i in range(n)],
            "seq": pa.array([start + i for i in range(n)], pa.int64()),
            "value": [round((start + i) * 0.25, 2) for i in range(n)],
        },
        schema=pa.schema(
            [
                pa.field("sensor", pa.string(), nullable=False),
                pa.field("seq", pa.int64(), nullable=False),
                pa.field("value", pa.float64()),
            ]
        ),
    )


def orders_batch(start, n, *, with_channel=False):
    regions = ["EMEA", "AMER", "APAC"]
    cols = {
        "order_id": pa.array([start + i for i in range(n)], pa.int64()),
        "region": [regions[(start + i) % 3] for i in range(n)],
        "total": pa.array(
            [Decimal(f"{(start + i) * 3 % 500}.{(start + i) % 100:02d}") for i in range(n)],
            pa.decimal128(12, 2),
        ),
        "day": pa.array(
            [dt.date(2026, 4, 1) + dt.timedelta(days=(start + i) % 9) for i in range(n)],
            pa.date32(),
        ),
    }
    if with_channel:
        cols["channel"] = [["web", "app", None][(start + i) % 3] for i in range(n)]
    return pa.table(cols)


def nested_table():
    n = 40
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "price": pa.array(
                [Decimal(f"{i * 7 % 90}.{i % 100:02d}") if i % 9 else None for i in range(n)],
                pa.decimal128(12, 2),
            ),
            "at": pa.array(
                [dt.datetime(2026, 1, 1, 12, tzinfo=UTC) + dt.timedelta(minutes=97 * i) for i in range(n)],
                pa.timestamp("us", tz="Europe/Paris"),
            ),
            "tags": pa.array(
                [None if i % 7 == 0 else [f"t{j}" for j in range(i % 3)] for i in range(n)],
                pa.list_(pa.string()),
            ),
            "address": pa.array(
                [
                    None if i % 11 == 0 else {"city": ["Lyon", "Oslo", "Lima"][i % 3], "zip": f"{1000 + i}"}
                    for i in range(n)
                ],
                pa.struct([("city", pa.string()), ("zip", pa.string())]),
            ),
            "category": pa.array([["gold", "silver", "bronze"][i % 3] for i in range(n)]).dictionary_encode(),
        }
    )


# --------------------------------------------------------------------------
# Writers


def s3_options(endpoint, key, secret):
    return {
        "endpoint": endpoint,
        "key": key,
        "secret": secret,
    }


def write_iceberg_local(root):
    """PyIceberg SqlCatalog on SQLite with a local warehouse: a table
    partitioned by identity and by a day transform, with schema evolution,
    appends, an overwrite and a delete. Returns the snapshot ids in order."""
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import DayTransform, IdentityTransform
    from pyiceberg.types import IntegerType, LongType, NestedField, StringType, TimestamptzType

    warehouse = os.path.join(root, "warehouse")
    os.makedirs(warehouse, exist_ok=True)
    catalog = SqlCatalog(
        "default",
        uri=f"sqlite:///{os.path.join(root, 'catalog.db')}",
        warehouse=f"file://{warehouse}",
    )
    catalog.create_namespace("sales")
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "kind", StringType(), required=False),
        NestedField(3, "amount", IntegerType(), required=False),
        NestedField(4, "ts", TimestamptzType(), required=False),
    )
    spec = PartitionSpec(
        PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="kind"),
        PartitionField(source_id=4, field_id=1001, transform=DayTransform(), name="ts_day"),
    )
    table = catalog.create_table("sales.events", schema=schema, partition_spec=spec)
    table.append(events_batch(0, 30))
    first = table.current_snapshot().snapshot_id
    first_ms = table.current_snapshot().timestamp_ms
    # The next commit must be later than the first on the millisecond clock.
    import time

    time.sleep(0.01)
    # Evolution: add a column, append with it.
    with table.update_schema() as update:
        update.add_column("note", StringType())
    table.append(events_batch(30, 30, note="n"))
    # Rename, then widen int -> long, then append with the new shape.
    with table.update_schema() as update:
        update.rename_column("amount", "amount_cents")
    with table.update_schema() as update:
        update.update_column("amount_cents", LongType())
    table.append(events_batch(60, 30, note="m", amount_type=pa.int64(), amount_name="amount_cents"))
    # Overwrite every refund with new rows, then delete some ids.
    replacement = events_batch(1000, 6, note="o", amount_type=pa.int64(), amount_name="amount_cents")
    replacement = replacement.set_column(1, "kind", pa.array(["refund"] * 6))
    table.overwrite(replacement, overwrite_filter="kind == 'refund'")
    table.delete(delete_filter="id < 5")

    # A second, unpartitioned table with a second namespace level.
    catalog.create_namespace("ops")
    readings = catalog.create_table("ops.readings", schema=readings_batch(0, 1).schema)
    readings.append(readings_batch(0, 50))
    readings.append(readings_batch(50, 50))
    return {
        "events_first_snapshot": first,
        "events_first_time": dt.datetime.fromtimestamp(first_ms / 1000, tz=UTC).isoformat(timespec="milliseconds"),
        "metadata": table.metadata_location,
    }


def iceberg_catalog_s3(root, s3):
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        "s3cat",
        uri=f"sqlite:///{os.path.join(root, 's3catalog.db')}",
        warehouse=f"s3://{BUCKET}/iceberg",
        **{
            "s3.endpoint": s3["endpoint"],
            "s3.access-key-id": s3["key"],
            "s3.secret-access-key": s3["secret"],
            "s3.region": "us-east-1",
        },
    )


def write_iceberg_s3(root, s3):
    catalog = iceberg_catalog_s3(root, s3)
    catalog.create_namespace("lake")
    table = catalog.create_table("lake.readings", schema=readings_batch(0, 1).schema)
    table.append(readings_batch(0, 40))
    table.append(readings_batch(40, 40))


def delta_s3_options(s3):
    return {
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_ACCESS_KEY_ID": s3["key"],
        "AWS_SECRET_ACCESS_KEY": s3["secret"],
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }


def write_delta_local(root):
    """The `deltalake` package: a partitioned table with appends, an
    overwrite and a schema-evolving append; a table with a checkpoint; and a
    table written by Polars."""
    import polars as pl
    from deltalake import DeltaTable, write_deltalake

    orders = os.path.join(root, "delta", "orders")
    write_deltalake(orders, orders_batch(0, 40), partition_by=["region"])
    write_deltalake(orders, orders_batch(40, 40), mode="append", partition_by=["region"])
    write_deltalake(orders, orders_batch(100, 60), mode="overwrite", partition_by=["region"])
    write_deltalake(orders, orders_batch(200, 30), mode="append")
    write_deltalake(
        orders,
        orders_batch(300, 30, with_channel=True),
        mode="append",
        schema_mode="merge",
    )

    checkpointed = os.path.join(root, "delta", "ledger")
    for i in range(12):
        write_deltalake(checkpointed, orders_batch(i * 10, 10), mode="append")
    DeltaTable(checkpointed).create_checkpoint()
    write_deltalake(checkpointed, orders_batch(500, 10), mode="append")

    frame = pl.DataFrame(
        {
            "sku": [f"SKU-{i:03d}" for i in range(25)],
            "qty": [i * 3 for i in range(25)],
            "price": [i * 1.5 for i in range(25)],
            "active": [i % 2 == 0 for i in range(25)],
        }
    )
    stock = os.path.join(root, "delta", "stock")
    frame.head(15).write_delta(stock)
    frame.tail(10).write_delta(stock, mode="append")


def write_delta_s3(s3):
    from deltalake import write_deltalake

    uri = f"s3://{BUCKET}/delta/orders"
    opts = delta_s3_options(s3)
    write_deltalake(uri, orders_batch(0, 30), partition_by=["region"], storage_options=opts)
    write_deltalake(uri, orders_batch(30, 30), mode="append", storage_options=opts)


def write_parquet_local(root):
    path = os.path.join(root, "parquet", "nested.parquet")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(nested_table(), path)


def write_parquet_s3(s3):
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        access_key=s3["key"],
        secret_key=s3["secret"],
        endpoint_override=s3["endpoint"],
        scheme="http",
        region="us-east-1",
    )
    pq.write_table(readings_batch(0, 60), f"{BUCKET}/parquet/readings/part-0.parquet", filesystem=fs)
    pq.write_table(readings_batch(60, 60), f"{BUCKET}/parquet/readings/part-1.parquet", filesystem=fs)


# --------------------------------------------------------------------------
# The mesh


def product(domain, name, contract_id):
    return textwrap.dedent(
        f"""\
        apiVersion: v1.0.0
        kind: DataProduct
        id: urn:dataproduct:{domain}:{name}
        name: {name}
        version: 1.0.0
        status: active
        domain: {domain}
        outputPorts:
          - name: {name}
            type: tables
            version: 1.0.0
            contractId: {contract_id}
        """
    )


def contract(domain, name, server, table, columns, physical=None):
    props = "\n".join(f"      - {c}" for c in columns)
    physical_line = f"    physicalName: {physical}\n" if physical else ""
    return (
        textwrap.dedent(
            f"""\
            apiVersion: v3.1.0
            kind: DataContract
            id: urn:datacontract:{domain}:{name}
            name: {name}
            version: 1.0.0
            status: active
            domain: {domain}
            servers:
              - {server}
            schema:
              - name: {table}
            """
        )
        + physical_line
        + "    properties:\n"
        + props
        + "\n"
    )


EVENTS_COLUMNS = [
    "{ name: id, logicalType: integer, physicalType: BIGINT, required: true }",
    "{ name: kind, logicalType: string }",
    "{ name: amount_cents, logicalType: integer, physicalType: BIGINT }",
    "{ name: ts, logicalType: timestamp }",
    "{ name: note, logicalType: string }",
]
READINGS_COLUMNS = [
    # A rule whose measure depends on every row, for `meshq check`.
    "{ name: sensor, logicalType: string, required: true, quality: [ { metric: duplicateValues, mustBeGreaterOrEqualTo: 0 } ] }",
    "{ name: seq, logicalType: integer, physicalType: BIGINT, required: true }",
    "{ name: value, logicalType: number, physicalType: DOUBLE }",
]
ORDERS_COLUMNS = [
    "{ name: order_id, logicalType: integer, physicalType: BIGINT }",
    "{ name: region, logicalType: string }",
    "{ name: total, logicalType: number, physicalType: 'DECIMAL(12,2)' }",
    "{ name: day, logicalType: date }",
]


def write_product(mesh, domain, table, server, columns, physical=None):
    """A product and its contract for table `domain.table` in `mesh`."""
    os.makedirs(os.path.join(mesh, domain), exist_ok=True)
    with open(os.path.join(mesh, domain, f"{table}.odps.yaml"), "w") as f:
        f.write(product(domain, table, f"urn:datacontract:{domain}:{table}"))
    with open(os.path.join(mesh, domain, f"{table}.odcs.yaml"), "w") as f:
        f.write(contract(domain, table, server, table, columns, physical))


def write_mesh(mesh, data, s3, password_hash, snapshots):
    """Products and contracts for every fixture table, and meshq.yaml."""

    def put(rel, text):
        path = os.path.join(mesh, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    put(
        "meshq.yaml",
        textwrap.dedent(
            f"""\
            stores:
              {BUCKET}:
                type: s3
                endpoint: {s3['endpoint']}
                region: us-east-1
                allow_http: true
                access_key_id: {{ env: INTEROP_S3_KEY }}
                secret_access_key: {{ env: INTEROP_S3_SECRET }}
            catalogs:
              lake: {{ type: sql, uri: {data}/catalog.db, name: default }}
              s3lake: {{ type: sql, uri: {data}/s3catalog.db, name: s3cat }}
            principals:
              - name: reader
                password_hash: "{password_hash}"
                roles: [reader]
            """
        ),
    )
    tables = {
        # Iceberg through the SQL catalog, and by folder, and at a snapshot.
        ("sales", "events"): (
            "{ server: lake, type: local, format: iceberg, catalog: lake, schema: sales }",
            EVENTS_COLUMNS,
            None,
        ),
        ("sales", "events_by_path"): (
            f"{{ server: files, type: local, format: iceberg, path: {data}/warehouse/sales/events }}",
            EVENTS_COLUMNS,
            None,
        ),
        ("sales", "events_by_metadata"): (
            f"{{ server: files, type: local, format: iceberg, path: '{snapshots['metadata']}' }}",
            EVENTS_COLUMNS,
            None,
        ),
        ("sales", "events_v1"): (
            "{ server: lake, type: local, format: iceberg, catalog: lake, schema: sales, "
            f"customProperties: [ {{ property: snapshotId, value: {snapshots['events_first_snapshot']} }} ] }}",
            [
                "{ name: id, logicalType: integer, physicalType: BIGINT, required: true }",
                "{ name: kind, logicalType: string }",
                "{ name: amount, logicalType: integer, physicalType: INT }",
                "{ name: ts, logicalType: timestamp }",
            ],
            "events",
        ),
        ("sales", "events_asof"): (
            "{ server: lake, type: local, format: iceberg, catalog: lake, schema: sales, "
            f"customProperties: [ {{ property: asOfTimestamp, value: '{snapshots['events_first_time']}' }} ] }}",
            [
                "{ name: id, logicalType: integer, physicalType: BIGINT, required: true }",
                "{ name: kind, logicalType: string }",
                "{ name: amount, logicalType: integer, physicalType: INT }",
                "{ name: ts, logicalType: timestamp }",
            ],
            "events",
        ),
        ("ops", "readings"): (
            "{ server: lake, type: local, format: iceberg, catalog: lake, schema: ops }",
            READINGS_COLUMNS,
            None,
        ),
        ("lake", "readings_s3"): (
            "{ server: s3, type: s3, format: iceberg, catalog: s3lake, schema: lake }",
            READINGS_COLUMNS,
            "readings",
        ),
        # Delta, local and on S3.
        ("retail", "orders"): (
            f"{{ server: local, type: local, format: delta, path: {data}/delta/orders }}",
            ORDERS_COLUMNS + ["{ name: channel, logicalType: string }"],
            None,
        ),
        ("retail", "ledger"): (
            f"{{ server: local, type: local, format: delta, path: {data}/delta/ledger }}",
            ORDERS_COLUMNS,
            None,
        ),
        ("retail", "stock"): (
            f"{{ server: local, type: local, format: delta, path: {data}/delta/stock }}",
            [
                "{ name: sku, logicalType: string }",
                "{ name: qty, logicalType: integer, physicalType: BIGINT }",
                "{ name: price, logicalType: number, physicalType: DOUBLE }",
                "{ name: active, logicalType: boolean }",
            ],
            None,
        ),
        ("retail", "orders_s3"): (
            f"{{ server: s3, type: s3, format: delta, location: 's3://{BUCKET}/delta/orders' }}",
            ORDERS_COLUMNS,
            None,
        ),
        # Parquet, local (nested types) and on S3.
        ("files", "nested"): (
            f"{{ server: local, type: local, format: parquet, path: {data}/parquet/nested.parquet }}",
            [
                "{ name: id, logicalType: integer, physicalType: BIGINT }",
                "{ name: price, logicalType: number, physicalType: 'DECIMAL(12,2)' }",
                "{ name: at, logicalType: timestamp }",
                "{ name: tags, logicalType: array }",
                "{ name: address, logicalType: object }",
                "{ name: category, logicalType: string }",
            ],
            None,
        ),
        ("files", "readings_s3"): (
            f"{{ server: s3, type: s3, format: parquet, location: 's3://{BUCKET}/parquet/readings/' }}",
            READINGS_COLUMNS,
            None,
        ),
    }
    for (domain, table), (server, columns, physical) in tables.items():
        write_product(mesh, domain, table, server, columns, physical)
