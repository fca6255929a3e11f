"""meshq through arrow-rs's own `flight_sql_client` command-line tool."""

import os
import subprocess

import pytest


def run(server, user, *args):
    binary = os.environ.get("MESHQ_FLIGHT_SQL_CLIENT")
    if not binary or not os.path.exists(binary):
        pytest.fail("MESHQ_FLIGHT_SQL_CLIENT must point at flight_sql_client (scripts/test.sh builds it)")
    host, port = server.removeprefix("grpc://").rsplit(":", 1)
    out = subprocess.run(
        [binary, "--host", host, "--port", port, "--username", user, "--password", f"{user}-demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out


def test_catalogs_tables_and_a_query(server):
    out = run(server, "ana", "catalogs")
    assert out.returncode == 0, out.stderr
    assert "mesh" in out.stdout
    out = run(server, "ana", "tables", "mesh")
    assert out.returncode == 0, out.stderr
    assert "orders" in out.stdout and "profiles" in out.stdout
    assert "transactions" not in out.stdout
    out = run(server, "ana", "statement-query", "SELECT region, count(*) AS n FROM sales.orders GROUP BY 1")
    assert out.returncode == 0, out.stderr
    assert "EMEA" in out.stdout and "5178" in out.stdout
    assert "AMER" not in out.stdout


def test_denied_table_fails_with_a_message(server):
    out = run(server, "ana", "statement-query", "SELECT * FROM payments.transactions")
    assert out.returncode != 0
    assert "may not read table `payments.transactions`" in out.stderr
