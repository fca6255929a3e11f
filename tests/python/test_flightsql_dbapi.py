"""meshq through flightsql-dbapi and its SQLAlchemy dialect (as Superset uses it)."""

import flightsql.sqlalchemy  # noqa: F401  (registers the dialect)
import pytest
from flightsql import FlightSQLClient, connect
from sqlalchemy import create_engine, inspect, text


def host_port(uri):
    host, port = uri.removeprefix("grpc://").rsplit(":", 1)
    return host, int(port)


def test_dbapi_query_as_a_principal(server):
    host, port = host_port(server)
    client = FlightSQLClient(host=host, port=port, user="ana", password="ana-demo", insecure=True)
    conn = connect(client)
    cur = conn.cursor()
    cur.execute("SELECT region, count(*) AS n FROM sales.orders GROUP BY 1")
    assert [tuple(r) for r in cur.fetchall()] == [("EMEA", 5178)]
    cur.close()
    conn.close()


@pytest.fixture()
def engine(server):
    host, port = host_port(server)
    engine = create_engine(f"datafusion+flightsql://gina:gina-demo@{host}:{port}?insecure=true")
    yield engine
    engine.dispose()


def test_sqlalchemy_reflection_and_query(engine):
    with engine.connect() as conn:
        insp = inspect(conn)
        schemas = insp.get_schema_names()
        assert {"sales", "customers", "payments"} <= set(schemas)
        assert insp.get_table_names(schema="sales") == ["orders"]
        columns = [c["name"] for c in insp.get_columns("orders", schema="sales")]
        assert columns[:3] == ["order_id", "customer_id", "email"]
        rows = conn.execute(text("SELECT region, count(*) AS n FROM sales.orders GROUP BY 1 ORDER BY 1")).fetchall()
        assert [tuple(r) for r in rows] == [("AMER", 3514), ("APAC", 3308), ("EMEA", 5178)]
