"""A product meshq materialises is a Delta table the ecosystem reads: the
demo's `marketing.segments`, computed as its team's service principal and
written by meshq, read back by python `deltalake` and Polars, holds what
meshq serves, and its commit carries meshq's build record."""

import csv
import io
import os
import subprocess

import polars as pl
from deltalake import DeltaTable

from conftest import meshq_binary


def meshq_csv(mesh, sql):
    out = subprocess.run(
        [meshq_binary(), "demo", str(mesh), "--as", "pat", "--format", "csv", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    return list(csv.DictReader(io.StringIO(out)))


def test_a_materialised_product_is_read_by_deltalake_and_polars(tmp_path):
    mesh = tmp_path / "mesh"
    subprocess.run(
        [meshq_binary(), "demo", "--no-shell", str(mesh)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Serving the demo builds the table.
    served = meshq_csv(mesh, "SELECT segment, customers, lifetime_value FROM marketing.segments")
    assert len(served) == 3
    expected = sorted(
        (r["segment"], int(r["customers"]), r["lifetime_value"]) for r in served
    )

    location = mesh / "marketing" / "build" / "segments"
    table = DeltaTable(str(location))
    assert table.version() == 0
    record = table.history(1)[0]["meshq"]
    assert record["version"].startswith("sql:svc-marketing#")
    assert any(f.startswith("sales.orders@delta:") for f in record["builtFrom"])
    assert any(f.startswith("payments.transactions@files:") for f in record["builtFrom"])

    by_deltalake = sorted(
        (r["segment"], r["customers"], f"{r['lifetime_value']:.2f}")
        for r in table.to_pyarrow_table().to_pylist()
    )
    assert by_deltalake == expected
    by_polars = sorted(
        (r["segment"], r["customers"], f"{r['lifetime_value']:.2f}")
        for r in pl.read_delta(str(location)).to_dicts()
    )
    assert by_polars == expected

    # Serving it again with the inputs unchanged finds the build: no new
    # commit.
    meshq_csv(mesh, "SELECT count(*) FROM marketing.segments")
    assert DeltaTable(str(location)).version() == 0


def test_a_product_is_materialised_on_s3_as_delta_and_parquet(moto, s3, tmp_path):
    """Materialised into the S3-compatible store (moto) through the
    `meshq.yaml` store of its bucket: the Delta table and the Parquet build
    read back by the ecosystem, and a second start commits nothing."""
    import json
    import textwrap

    import pyarrow as pa
    import pyarrow.parquet as pq
    import writers
    from conftest import S3_KEY, S3_SECRET

    mesh = tmp_path / "mesh"
    (mesh / "shop" / "data").mkdir(parents=True)
    pq.write_table(
        pa.table({"region": ["EMEA", "AMER", "EMEA", "APAC"], "amount": [10, 20, 30, 40]}),
        mesh / "shop" / "data" / "sales.parquet",
    )

    def put(rel, text):
        path = mesh / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))

    put(
        "meshq.yaml",
        f"""\
        stores:
          {writers.BUCKET}:
            type: s3
            endpoint: {s3['endpoint']}
            region: us-east-1
            allow_http: true
            access_key_id: {{ env: INTEROP_S3_KEY }}
            secret_access_key: {{ env: INTEROP_S3_SECRET }}
        principals:
          - {{ name: reader, roles: [reader] }}
          - {{ name: svc-totals, roles: [reader], runs: [urn:dataproduct:shop:totals, urn:dataproduct:shop:totals_pq] }}
        """,
    )
    put(
        "shop/sales.odps.yaml",
        """\
        apiVersion: v1.0.0
        kind: DataProduct
        id: urn:dataproduct:shop:sales
        name: sales
        version: 1.0.0
        status: active
        domain: shop
        outputPorts:
          - { name: sales, type: tables, version: 1.0.0, contractId: urn:datacontract:shop:sales }
        """,
    )
    put(
        "shop/sales.odcs.yaml",
        """\
        apiVersion: v3.1.0
        kind: DataContract
        id: urn:datacontract:shop:sales
        name: sales
        version: 1.0.0
        status: active
        domain: shop
        servers:
          - { server: local, type: local, format: parquet, path: ./data/sales.parquet }
        schema:
          - name: sales
            properties:
              - { name: region, logicalType: string }
              - { name: amount, logicalType: integer }
        """,
    )
    for name, fmt in [("totals", "delta"), ("totals_pq", "parquet")]:
        put(
            f"shop/{name}.odps.yaml",
            f"""\
            apiVersion: v1.0.0
            kind: DataProduct
            id: urn:dataproduct:shop:{name}
            name: {name}
            version: 1.0.0
            status: active
            domain: shop
            customProperties:
              - {{ property: runAs, value: svc-totals }}
            inputPorts:
              - {{ name: sales, version: 1.0.0, contractId: urn:datacontract:shop:sales }}
            outputPorts:
              - name: {name}
                type: tables
                version: 1.0.0
                contractId: urn:datacontract:shop:{name}
                customProperties:
                  - {{ property: materialize, value: {{ format: {fmt}, location: "s3://{writers.BUCKET}/materialized/{name}" }} }}
            """,
        )
        put(
            f"shop/{name}.odcs.yaml",
            f"""\
            apiVersion: v3.1.0
            kind: DataContract
            id: urn:datacontract:shop:{name}
            name: {name}
            version: 1.0.0
            status: active
            domain: shop
            servers:
              - server: sql
                type: custom
                format: meshq-sql
                customProperties:
                  - {{ property: sql, value: "SELECT region, sum(amount) AS total FROM shop.sales GROUP BY region" }}
            schema:
              - name: {name}
                properties:
                  - {{ name: region, logicalType: string }}
                  - {{ name: total, logicalType: integer }}
            """,
        )

    env = dict(os.environ, INTEROP_S3_KEY=S3_KEY, INTEROP_S3_SECRET=S3_SECRET, MESHQ_LOG="warn")

    def shell(sql):
        done = subprocess.run(
            [meshq_binary(), "shell", "--mesh", str(mesh), "--as", "reader", "--format", "csv", "-c", sql],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "is read from its source" not in done.stderr, done.stderr
        return sorted(tuple(r.values()) for r in csv.DictReader(io.StringIO(done.stdout)))

    expected = [("AMER", "20"), ("APAC", "40"), ("EMEA", "40")]
    assert shell("SELECT * FROM shop.totals") == expected
    assert shell("SELECT * FROM shop.totals_pq") == expected
    plan = shell("EXPLAIN SELECT * FROM shop.totals")
    assert any("materialized/totals" in " ".join(r) for r in plan), plan

    opts = writers.delta_s3_options(s3)
    uri = f"s3://{writers.BUCKET}/materialized/totals"
    table = DeltaTable(uri, storage_options=opts)
    assert table.version() == 0
    assert table.history(1)[0]["meshq"]["builtFrom"][0].startswith("shop.sales@files:")
    got = sorted((r["region"], str(r["total"])) for r in table.to_pyarrow_table().to_pylist())
    assert got == expected

    client = moto.client()
    manifest = json.loads(
        client.get_object(Bucket=writers.BUCKET, Key="materialized/totals_pq/_meshq_build.json")["Body"].read()
    )
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=writers.BUCKET, Prefix=f"materialized/totals_pq/{manifest['folder']}/")[
            "Contents"
        ]
    ]
    assert keys and all(k.endswith(".parquet") for k in keys), keys

    # A second start finds both builds: nothing new is written.
    assert shell("SELECT * FROM shop.totals") == expected
    assert DeltaTable(uri, storage_options=opts).version() == 0
    again = json.loads(
        client.get_object(Bucket=writers.BUCKET, Key="materialized/totals_pq/_meshq_build.json")["Body"].read()
    )
    assert again == manifest
