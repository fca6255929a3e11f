"""Fixtures: a demo mesh and a running `meshq serve` on a free port."""

import os
import subprocess
import tempfile

import pytest


def meshq_binary():
    path = os.environ.get("MESHQ_BIN")
    if not path or not os.path.exists(path):
        pytest.fail("MESHQ_BIN must point at the built meshq binary (scripts/test.sh sets it)")
    return path


@pytest.fixture(scope="session")
def demo_mesh():
    with tempfile.TemporaryDirectory() as d:
        mesh = os.path.join(d, "mesh")
        subprocess.run([meshq_binary(), "demo", "--no-shell", mesh], check=True, capture_output=True)
        # Every query the server answers leaves OpenLineage events here.
        with open(os.path.join(mesh, "meshq.yaml"), "a") as config:
            config.write(f'\nopenlineage: {{ namespace: "meshq://interop", file: "{d}/lineage.jsonl" }}\n')
        yield mesh


@pytest.fixture(scope="session")
def lineage_file(demo_mesh):
    return os.path.join(os.path.dirname(demo_mesh), "lineage.jsonl")


@pytest.fixture(scope="session")
def server(demo_mesh):
    env = dict(os.environ, MESHQ_DEMO_PII_KEY="meshq-demo-pii-key", MESHQ_LOG="warn")
    proc = subprocess.Popen(
        [meshq_binary(), "serve", "--bind", "127.0.0.1:0", "--mesh", demo_mesh],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    uri = None
    for line in proc.stderr:
        if line.startswith("meshq serving Flight SQL on "):
            uri = line.strip().rsplit(" ", 1)[1]
            break
    if uri is None:
        proc.kill()
        pytest.fail("meshq serve exited before listening")
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
