"""Object storage faults: meshq names the product, keeps serving everything
else, and recovers when storage comes back, without a restart."""

import os
import shutil
import subprocess
import tempfile
import textwrap
import time

import pytest

import conftest
import writers
from conftest import S3_KEY, S3_SECRET, MotoServer, Server, meshq_binary, restore_bucket, snapshot_bucket

S3_TABLES = {
    "files.readings_s3": "urn:dataproduct:files:readings_s3",
    "retail.orders_s3": "urn:dataproduct:retail:orders_s3",
    "lake.readings_s3": "urn:dataproduct:lake:readings_s3",
}


def run(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def error_of(conn, sql):
    with pytest.raises(Exception) as info:
        run(conn, sql)
    return str(info.value)


def test_s3_outage_fails_only_its_products_and_recovers(fixtures, moto, server):
    conn = server.connect()
    counts = {t: run(conn, f"SELECT count(*) AS n FROM {t}").column("n")[0].as_py() for t in S3_TABLES}
    local = run(conn, "SELECT count(*) AS n FROM sales.events").column("n")[0].as_py()
    saved = tempfile.mkdtemp(prefix="meshq-bucket-")
    try:
        snapshot_bucket(moto, writers.BUCKET, saved)
        moto.stop()
        for table, product in S3_TABLES.items():
            started = time.time()
            msg = error_of(conn, f"SELECT * FROM {table}")
            # Bounded: retries give up within seconds, the query does not hang.
            assert time.time() - started < 60, f"{table} took {time.time() - started:.0f}s to fail"
            assert product in msg or table in msg, f"{table}: error does not name the product: {msg}"
        # Everything else answers, and the server is still up.
        assert run(conn, "SELECT count(*) AS n FROM sales.events").column("n")[0].as_py() == local
        assert run(conn, "SELECT count(*) AS n FROM retail.stock").column("n")[0].as_py() == 25
        assert server.alive()
        # Storage comes back (same port, same objects): the same session reads again.
        moto.start()
        restore_bucket(moto, writers.BUCKET, saved)
        for table, n in counts.items():
            assert run(conn, f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py() == n
    finally:
        shutil.rmtree(saved, ignore_errors=True)
        if moto.proc.poll() is not None:
            moto.start()
            restore_bucket(moto, writers.BUCKET, saved)
        conn.close()


def write_single_table_mesh(mesh, endpoint, bucket, location, password_hash):
    os.makedirs(mesh, exist_ok=True)
    with open(os.path.join(mesh, "meshq.yaml"), "w") as f:
        f.write(
            textwrap.dedent(
                f"""\
                stores:
                  {bucket}:
                    type: s3
                    endpoint: {endpoint}
                    allow_http: true
                    access_key_id: {{ env: T_S3_KEY }}
                    secret_access_key: {{ env: T_S3_SECRET }}
                principals:
                  - {{ name: reader, password_hash: "{password_hash}", roles: [reader] }}
                """
            )
        )
    writers.write_product(
        mesh,
        "lake",
        "t",
        f"{{ server: s3, type: s3, format: parquet, location: '{location}' }}",
        writers.READINGS_COLUMNS,
    )


def validate(mesh, key, secret):
    out = subprocess.run(
        [meshq_binary(), "validate", "--mesh", mesh],
        capture_output=True,
        text=True,
        env=dict(os.environ, T_S3_KEY=key, T_S3_SECRET=secret, MESHQ_LOG="error"),
        timeout=120,
    )
    return out.returncode, out.stdout + out.stderr


def test_wrong_credentials_and_missing_bucket_are_named(tmp_path):
    import boto3
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    # A moto that checks credentials: the first three requests (creating a
    # user and its key, and a policy) go unauthenticated, later ones must
    # be signed with a key it issued.
    auth = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}).start()
    try:
        iam = boto3.client(
            "iam",
            endpoint_url=auth.endpoint,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name="us-east-1",
        )
        iam.create_user(UserName="meshq")
        iam.put_user_policy(
            UserName="meshq",
            PolicyName="all-s3",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}',
        )
        key = iam.create_access_key(UserName="meshq")["AccessKey"]
        good = (key["AccessKeyId"], key["SecretAccessKey"])
        auth.client(key=good[0], secret=good[1]).create_bucket(Bucket="secured")
        fs = pafs.S3FileSystem(
            access_key=good[0], secret_key=good[1], endpoint_override=auth.endpoint, scheme="http", region="us-east-1"
        )
        pq.write_table(writers.readings_batch(0, 10), "secured/t/part-0.parquet", filesystem=fs)
        mesh = str(tmp_path / "mesh")
        write_single_table_mesh(mesh, auth.endpoint, "secured", "s3://secured/t/", conftest.hash_password("pw"))

        code, out = validate(mesh, good[0], good[1])
        assert "1 table(s) served; 0 error(s)" in out, out

        code, out = validate(mesh, good[0], "not-the-secret")
        assert code != 0, out
        assert "urn:dataproduct:lake:t" in out and "lake.t" in out, out
        assert "SignatureDoesNotMatch" in out or "403" in out or "Forbidden" in out, out
        assert "not-the-secret" not in out, "a credential leaked into the error"

        code, out = validate(mesh, "AKIAUNKNOWN000000000", "whatever")
        assert code != 0, out
        assert "urn:dataproduct:lake:t" in out, out
        assert "InvalidAccessKeyId" in out or "403" in out or "Forbidden" in out, out

        missing = str(tmp_path / "missing")
        write_single_table_mesh(missing, auth.endpoint, "no-such-bucket", "s3://no-such-bucket/t/", conftest.hash_password("pw"))
        code, out = validate(missing, good[0], good[1])
        assert code != 0, out
        assert "urn:dataproduct:lake:t" in out, out
        assert "NoSuchBucket" in out or "no-such-bucket" in out, out
    finally:
        auth.stop()
