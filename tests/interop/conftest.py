"""Fixtures: an S3-compatible server (moto), fixture tables written by the
ecosystem's writers locally and on it, the mesh publishing them, and a
running `meshq serve`."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

import writers

S3_KEY = "interop-key"
S3_SECRET = "interop-secret"


def meshq_binary():
    path = os.environ.get("MESHQ_BIN")
    if not path or not os.path.exists(path):
        pytest.fail("MESHQ_BIN must point at the built meshq binary (scripts/test.sh sets it)")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """`moto_server` from PyPI on 127.0.0.1, started and stopped by the tests."""

    def __init__(self, port=None, env=None):
        self.port = port or free_port()
        self.env = env or {}
        self.proc = None

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, **self.env),
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                return self
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start")
                time.sleep(0.2)
        raise RuntimeError("moto_server did not start in 30 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self, service="s3", key=S3_KEY, secret=S3_SECRET):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )


def snapshot_bucket(moto, bucket, into):
    """Copies every object of `bucket` to the folder `into`."""
    s3 = moto.client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            path = os.path.join(into, obj["Key"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, obj["Key"], path)


def restore_bucket(moto, bucket, source):
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket)
    for dirpath, _, files in os.walk(source):
        for name in files:
            path = os.path.join(dirpath, name)
            s3.upload_file(path, bucket, os.path.relpath(path, source))


@pytest.fixture(scope="session")
def moto():
    server = MotoServer().start()
    server.client().create_bucket(Bucket=writers.BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(moto):
    return writers.s3_options(moto.endpoint, S3_KEY, S3_SECRET)


@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="meshq-interop-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def hash_password(password):
    out = subprocess.run(
        [meshq_binary(), "hash-password"], input=password + "\n", capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.fixture(scope="session")
def fixtures(workdir, s3):
    """Writes every fixture table and the mesh; returns their paths."""
    data = os.path.join(workdir, "data")
    mesh = os.path.join(workdir, "mesh")
    os.makedirs(data)
    snapshots = writers.write_iceberg_local(data)
    writers.write_iceberg_s3(data, s3)
    writers.write_delta_local(data)
    writers.write_delta_s3(s3)
    writers.write_parquet_local(data)
    writers.write_parquet_s3(s3)
    writers.write_mesh(mesh, data, s3, hash_password("reader-pw"), snapshots)
    return {"data": data, "mesh": mesh, "snapshots": snapshots}


class Server:
    """A running `meshq serve` over a mesh."""

    def __init__(self, mesh, env):
        self.proc = subprocess.Popen(
            [meshq_binary(), "serve", "--bind", "127.0.0.1:0", "--mesh", mesh],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, MESHQ_LOG="warn", **env),
        )
        self.uri = None
        self.startup = []
        for line in self.proc.stderr:
            if line.startswith("meshq serving Flight SQL on "):
                self.uri = line.strip().rsplit(" ", 1)[1]
                break
            self.startup.append(line)
        if self.uri is None:
            self.proc.kill()
            pytest.fail("meshq serve exited before listening:\n" + "".join(self.startup))

    def connect(self, user="reader", password="reader-pw"):
        import adbc_driver_flightsql.dbapi as flightsql

        return flightsql.connect(self.uri, db_kwargs={"username": user, "password": password})

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def server(fixtures):
    srv = Server(fixtures["mesh"], {"INTEROP_S3_KEY": S3_KEY, "INTEROP_S3_SECRET": S3_SECRET})
    yield srv
    srv.stop()


@pytest.fixture
def query(server):
    """Runs SQL through ADBC Flight SQL and returns a pyarrow Table."""
    conn = server.connect()

    def run(sql):
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetch_arrow_table()

    yield run
    conn.close()
