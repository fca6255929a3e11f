"""A read-only Iceberg REST catalog over a PyIceberg SQL catalog, for testing
meshq's REST catalog client (`iceberg-catalog-rest`).

It serves the REST spec's `GET /v1/config` and `GET
/v1/namespaces/{namespace}/tables/{table}` (LoadTable) from the SQL
catalog's `iceberg_tables` rows and the metadata files they point at; every
other route answers 404 with the spec's error body. Requests must carry the
bearer token it was started with.
"""

import json
import sqlite3
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(db_path, catalog_name, token):
    """Starts the server on a free port; returns (server, base_url)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, code, kind, message):
            self.reply(code, {"error": {"message": message, "type": kind, "code": code}})

        def do_GET(self):
            if self.headers.get("Authorization") != f"Bearer {token}":
                return self.error(401, "NotAuthorizedException", "bad or missing token")
            path = urllib.parse.urlparse(self.path).path
            if path == "/v1/config":
                return self.reply(200, {"defaults": {}, "overrides": {}})
            parts = path.strip("/").split("/")
            if len(parts) == 5 and parts[:2] == ["v1", "namespaces"] and parts[3] == "tables":
                namespace = urllib.parse.unquote(parts[2]).replace("\x1f", ".")
                table = urllib.parse.unquote(parts[4])
                with sqlite3.connect(db_path) as db:
                    row = db.execute(
                        "SELECT metadata_location FROM iceberg_tables "
                        "WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
                        (catalog_name, namespace, table),
                    ).fetchone()
                if row is None:
                    return self.error(404, "NoSuchTableException", f"Table does not exist: {namespace}.{table}")
                location = row[0]
                with open(urllib.parse.urlparse(location).path) as f:
                    metadata = json.load(f)
                return self.reply(200, {"metadata-location": location, "metadata": metadata, "config": {}})
            return self.error(404, "NotFoundException", f"no route {path}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
