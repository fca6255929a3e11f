"""A reference for the `lineitem` fetch: pyarrow's own Flight server (Arrow
C++ and gRPC C++) serving one table from memory, answering just enough of
Flight SQL for the ADBC driver and pyarrow's client to fetch it. Every
statement query is answered with that table, whatever its text, so only
the fetch is measured against it, never `SELECT 1`.

The table is read from a folder of Parquet files and kept in the form meshq
sends it: `string_view` columns as `string`, in batches of 8192 rows
(DataFusion's batch size). Prints `ready PORT` on stdout once it serves.

    flight_reference_server.py PARQUET_DIR
"""

import sys

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

BATCH_ROWS = 8192
SQL = b"type.googleapis.com/arrow.flight.protocol.sql."


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def bytes_field(number, data):
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(data)) + data


class Server(flight.FlightServerBase):
    def __init__(self, table):
        super().__init__("grpc://127.0.0.1:0")
        self.schema = table.schema
        self.rows = table.num_rows
        self.batches = table.to_batches(max_chunksize=BATCH_ROWS)
        self.schema_ipc = table.schema.serialize().to_pybytes()

    def get_flight_info(self, context, descriptor):
        command = descriptor.command or b""
        if SQL + b"CommandStatementQuery" not in command and SQL + b"CommandPreparedStatementQuery" not in command:
            raise flight.FlightUnimplementedError("this reference answers statement queries only")
        endpoint = flight.FlightEndpoint(b"table", [])
        return flight.FlightInfo(self.schema, descriptor, [endpoint], self.rows, -1)

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(pa.RecordBatchReader.from_batches(self.schema, self.batches))

    def do_action(self, context, action):
        if action.type == "CreatePreparedStatement":
            # ActionCreatePreparedStatementResult { handle, dataset_schema }
            # packed in google.protobuf.Any.
            result = bytes_field(1, b"h") + bytes_field(2, self.schema_ipc)
            packed = bytes_field(1, SQL + b"ActionCreatePreparedStatementResult") + bytes_field(2, result)
            return [flight.Result(pa.py_buffer(packed))]
        if action.type == "ClosePreparedStatement":
            return []
        raise flight.FlightUnimplementedError(f"action {action.type} is not answered by this reference")


def main():
    table = pq.read_table(sys.argv[1])
    plain = pa.schema(
        [pa.field(f.name, pa.string() if f.type == pa.string_view() else f.type, f.nullable) for f in table.schema]
    )
    table = table.cast(plain).combine_chunks()
    server = Server(table)
    print(f"ready {server.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
