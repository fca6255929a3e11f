"""A reference for the `lineitem` fetch: pyarrow's own Flight server (Arrow
C++ and gRPC C++) serving one table from memory, answering just enough of
Flight SQL for the ADBC driver and pyarrow's client. A statement whose text
names `lineitem` is answered with that table; any other statement with one
row of one column (as `SELECT 1`). The fetch is served without copies in
Python; each call still runs a Python handler, which costs CPU per call.

The table is read from a folder of Parquet files and kept in the form meshq
sends it: `string_view` columns as `string`, in batches of 8192 rows
(DataFusion's batch size). Prints `ready PORT` on stdout once it serves.

    flight_reference_server.py PARQUET_DIR
"""

import sys

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

from flightsql_messages import SQL, any_message, bytes_field

BATCH_ROWS = 8192


class Server(flight.FlightServerBase):
    def __init__(self, table):
        super().__init__("grpc://127.0.0.1:0")
        self.schema = table.schema
        self.rows = table.num_rows
        self.batches = table.to_batches(max_chunksize=BATCH_ROWS)
        self.one = pa.table({"Int64(1)": pa.array([1], pa.int64())})

    def answer(self, text):
        """(ticket, table schema, rows) of the statement `text` names."""
        if b"lineitem" in text:
            return b"table", self.schema, self.rows
        return b"one", self.one.schema, 1

    def get_flight_info(self, context, descriptor):
        command = descriptor.command or b""
        # The statement's text, or the prepared statement's handle (the
        # ticket named at its preparation), is in the command.
        if SQL + b"CommandStatementQuery" not in command and SQL + b"CommandPreparedStatementQuery" not in command:
            raise flight.FlightUnimplementedError("this reference answers statement queries only")
        ticket, schema, rows = self.answer(command)
        endpoint = flight.FlightEndpoint(ticket, [])
        return flight.FlightInfo(schema, descriptor, [endpoint], rows, -1)

    def do_get(self, context, ticket):
        if ticket.ticket == b"one":
            return flight.RecordBatchStream(self.one)
        return flight.RecordBatchStream(pa.RecordBatchReader.from_batches(self.schema, self.batches))

    def do_action(self, context, action):
        if action.type == "CreatePreparedStatement":
            # ActionCreatePreparedStatementResult { handle, dataset_schema };
            # the handle names what the statement answers.
            ticket, schema, _ = self.answer(action.body.to_pybytes())
            handle = b"lineitem" if ticket == b"table" else b"one"
            result = bytes_field(1, handle) + bytes_field(2, schema.serialize().to_pybytes())
            packed = any_message(b"ActionCreatePreparedStatementResult", result)
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
