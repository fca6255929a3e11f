"""Flight SQL clients as users run them, against a server meshq-bench
started (meshq, or the reference in flight_reference_server.py): the ADBC
Flight SQL driver (through its DB-API) and pyarrow's own Flight client.
Prints a Markdown table on stdout; GB fetched are GB of Arrow data
(`nbytes` of the tables received).

    clients.py HOST:PORT USER PASSWORD LATENCY_QUERIES RUNS [SERVER_PID]

USER `-` connects without credentials; LATENCY_QUERIES 0 measures only the
fetch. SERVER_PID is the serving process whose CPU time is read (by default
the parent, meshq-bench, which serves).
"""

import os
import statistics
import sys
import time


def percentile(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def adbc(addr, user, password):
    import adbc_driver_flightsql.dbapi as flightsql
    from adbc_driver_flightsql import DatabaseOptions

    options = {DatabaseOptions.WITH_MAX_MSG_SIZE.value: str(1 << 30)}
    if user != "-":
        options.update(username=user, password=password)
    conn = flightsql.connect(f"grpc://{addr}", db_kwargs=options)

    def run(sql):
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetch_arrow_table()

    return run


def pyarrow_flight(addr, user, password):
    import pyarrow.flight as flight
    from pyarrow.flight import FlightDescriptor

    from flightsql_messages import any_message, bytes_field

    # Flight SQL's CommandStatementQuery (field 1: the query text).
    def command(sql):
        return any_message(b"CommandStatementQuery", bytes_field(1, sql.encode()))

    client = flight.FlightClient(f"grpc://{addr}")
    headers = [] if user == "-" else [client.authenticate_basic_token(user, password)]
    options = flight.FlightCallOptions(headers=headers)

    def run(sql):
        info = client.get_flight_info(FlightDescriptor.for_command(command(sql)), options)
        return client.do_get(info.endpoints[0].ticket, options).read_all()

    return run


def cpu_seconds(pid):
    """User and system CPU time of process `pid` so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    addr, user, password, latency_queries, runs = sys.argv[1:6]
    latency_queries, runs = int(latency_queries), int(runs)
    if runs < 1:
        sys.exit("clients.py: RUNS must be at least 1")
    # meshq-bench runs this script (through exec), so by default the parent
    # is the server's process.
    server = int(sys.argv[6]) if len(sys.argv) > 6 else os.getppid()
    me = os.getpid()
    print(
        "| client | `SELECT 1` p50 ms | p99 ms | server CPU per `SELECT 1`, µs | client CPU per `SELECT 1`, µs "
        "| `lineitem` full fetch MB/s (median of %d) | server CPU per GB fetched, s | client CPU per GB fetched, s "
        "| MB per fetch | rows |" % runs
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, make in [("ADBC Flight SQL driver 1.13 (Python DB-API)", adbc), ("pyarrow.flight (GetFlightInfo + DoGet)", pyarrow_flight)]:
        run = make(addr, user, password)
        latency = "| — | — | — | —"
        if latency_queries:
            for _ in range(10):
                run("SELECT 1")
            lat = []
            server_cpu, client_cpu = cpu_seconds(server), cpu_seconds(me)
            for _ in range(latency_queries):
                t = time.perf_counter()
                run("SELECT 1")
                lat.append((time.perf_counter() - t) * 1000)
            server_cpu = (cpu_seconds(server) - server_cpu) / latency_queries * 1e6
            client_cpu = (cpu_seconds(me) - client_cpu) / latency_queries * 1e6
            latency = (
                f"| {statistics.median(lat):.2f} | {percentile(lat, 99):.2f} | {server_cpu:.0f} | {client_cpu:.0f}"
            )
        speeds = []
        rows = nbytes = fetched = 0
        # The first fetch warms up (the clients' buffers, gRPC's flow
        # control windows) and is not counted.
        run("SELECT * FROM sales.lineitem")
        server_cpu, client_cpu = cpu_seconds(server), cpu_seconds(me)
        for _ in range(runs):
            t = time.perf_counter()
            table = run("SELECT * FROM sales.lineitem")
            took = time.perf_counter() - t
            speeds.append(table.nbytes / 1e6 / took)
            rows, nbytes = table.num_rows, table.nbytes
            fetched += nbytes
            del table
        server_cpu = (cpu_seconds(server) - server_cpu) / fetched * 1e9
        client_cpu = (cpu_seconds(me) - client_cpu) / fetched * 1e9
        print(
            f"| {name} {latency} | {statistics.median(speeds):.0f} | {server_cpu:.2f} | {client_cpu:.2f} "
            f"| {nbytes / 1e6:.0f} | {rows} |"
        )


if __name__ == "__main__":
    main()
