"""A product meshq materialises is a Delta table the ecosystem reads: the
demo's `marketing.segments`, computed as its team's service principal and
written by meshq, read back by python `deltalake` and Polars, holds what
meshq serves, and its commit carries meshq's build record."""

import csv
import io
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
