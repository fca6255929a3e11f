"""The 22 TPC-H queries on DuckDB and DataFusion-Python, in-process, over
the Parquet files meshq-bench generated; a Markdown table on stdout.

`peers.py serve PARQUET_DIR` instead keeps one DuckDB connection open and
answers requests on stdin, one per line: a query name (`q7`) runs that
query once and prints `MILLISECONDS ROWS`. meshq-bench uses it to time
DuckDB and meshq in turn, query by query, so that a change in the
machine's speed during a run reaches both alike."""

import os
import statistics
import sys
import time

QUERIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "queries")
TABLES = {
    "sales": ["orders", "lineitem"],
    "customers": ["customer", "nation", "region"],
    "supply": ["part", "partsupp", "supplier"],
}


def duckdb_runner(parquet):
    import duckdb

    con = duckdb.connect()
    for schema, tables in TABLES.items():
        con.execute(f"CREATE SCHEMA {schema}")
        for t in tables:
            con.execute(f"CREATE VIEW {schema}.{t} AS SELECT * FROM read_parquet('{parquet}/{t}/*.parquet')")
    return lambda sql: con.sql(sql).to_arrow_table().num_rows


def datafusion_runner(parquet):
    import datafusion

    ctx = datafusion.SessionContext()
    for schema, tables in TABLES.items():
        ctx.sql(f"CREATE SCHEMA {schema}").collect()
        for t in tables:
            ctx.register_parquet(f"{schema}.{t}", f"{parquet}/{t}/")
    return lambda sql: sum(b.num_rows for b in ctx.sql(sql).collect())


def serve(parquet):
    import duckdb

    run = duckdb_runner(parquet)
    print(f"ready DuckDB {duckdb.__version__}", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        with open(os.path.join(QUERIES, f"{name}.sql")) as f:
            sql = f.read()
        start = time.perf_counter()
        rows = run(sql)
        print(f"{(time.perf_counter() - start) * 1000:.3f} {rows}", flush=True)


def main():
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
        return
    parquet, runs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import datafusion
    import duckdb

    engines = [
        (f"DuckDB {duckdb.__version__}", duckdb_runner(parquet)),
        (f"DataFusion-Python {datafusion.__version__}", datafusion_runner(parquet)),
    ]
    print("| query | " + " | ".join(f"{n} median (min–max) ms" for n, _ in engines) + " |")
    print("|---|" + "---:|" * len(engines))
    totals = [0.0] * len(engines)
    for i in range(1, 23):
        with open(os.path.join(QUERIES, f"q{i}.sql")) as f:
            sql = f.read()
        cells = []
        for k, (name, run) in enumerate(engines):
            for _ in range(warmup):
                run(sql)
            samples = []
            for _ in range(max(runs, 1)):
                start = time.perf_counter()
                run(sql)
                samples.append((time.perf_counter() - start) * 1000)
            samples.sort()
            med = samples[(len(samples) - 1) // 2]
            totals[k] += med
            cells.append(f"{med:.2f} ({samples[0]:.2f}–{samples[-1]:.2f})")
            print(f"q{i} {name}: {med:.2f} ms", file=sys.stderr)
        print(f"| q{i} | " + " | ".join(cells) + " |")
    print("| **total of medians** | " + " | ".join(f"**{t:.1f}**" for t in totals) + " |")


if __name__ == "__main__":
    main()
