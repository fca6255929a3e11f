"""Flight SQL's protobuf messages packed by hand, so the clients and the
reference server need no generated code."""

# The prefix of Flight SQL's type URLs in google.protobuf.Any.
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


def any_message(name, body):
    """`body`, a Flight SQL message called `name`, packed in google.protobuf.Any."""
    return bytes_field(1, SQL + name) + bytes_field(2, body)
