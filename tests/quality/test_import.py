"""`meshq import` against the standards and the reference tool: every file
it writes from the fixtures (data-mesh manifests, DCS 0.9.3 contracts)
validates against the official ODPS 1.0 and ODCS 3.1 JSON Schemas, and a
DCS contract converted by meshq agrees with `datacontract export odcs` on
everything both convert."""

import json
import os
import pathlib
import subprocess

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "import"
SCHEMAS = FIXTURES / "schemas"
DATACONTRACT = pathlib.Path(os.sys.executable).parent / "datacontract"


def meshq():
    path = os.environ.get("MESHQ_BIN")
    if not path or not os.path.exists(path):
        pytest.fail("MESHQ_BIN must point at the built meshq binary (scripts/test.sh sets it)")
    return path


def load(path):
    # Through JSON, as a validator sees the document (dates as strings).
    return json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))


def validator(name):
    schema = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def run_import(kind, files, out):
    done = subprocess.run(
        [meshq(), "import", "--from", kind, *map(str, files), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "kind,folder",
    [("datamesh-v1", "datamesh"), ("dcs", "dcs")],
)
def test_every_imported_file_validates_against_the_official_schemas(kind, folder, tmp_path):
    run_import(kind, sorted((FIXTURES / folder).glob("*.yaml")), tmp_path)
    products = sorted(tmp_path.rglob("*.odps.yaml"))
    contracts = sorted(tmp_path.rglob("*.odcs.yaml"))
    assert products and contracts
    odps = validator("odps-v1.0.0.json")
    odcs = validator("odcs-v3.1.0.json")
    for path, v in [(p, odps) for p in products] + [(c, odcs) for c in contracts]:
        errors = sorted(v.iter_errors(load(path)), key=lambda e: list(e.path))
        assert not errors, f"{path.name}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]
        )
    # The validator is not vacuous: a contract with a bad server type fails.
    bad = load(contracts[0])
    bad["servers"] = [{"server": "x", "type": "floppy"}]
    assert list(odcs.iter_errors(bad))


def by_name(items):
    return {i["name"]: i for i in items}


def test_a_dcs_contract_converts_as_datacontract_cli_converts_it(tmp_path):
    for fixture in sorted((FIXTURES / "dcs").glob("*.yaml")):
        out = tmp_path / fixture.stem
        run_import("dcs", [fixture], out)
        (ours_path,) = out.rglob("*.odcs.yaml")
        ours = load(ours_path)
        theirs_text = subprocess.run(
            [str(DATACONTRACT), "export", "odcs", str(fixture)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
        theirs = json.loads(json.dumps(yaml.safe_load(theirs_text), default=str))
        compared = 0
        for key in ["id", "version", "name"]:
            assert ours[key] == theirs[key], (fixture.name, key)
            compared += 1
        assert ours["description"].get("purpose") == theirs["description"].get("purpose")
        assert ours["description"].get("usage") == theirs["description"].get("usage")
        assert ours["team"]["name"] == theirs["team"]["name"]
        # Servers both convert (meshq leaves out those it cannot read and
        # says so in its report).
        their_servers = by_name([{**s, "name": s["server"]} for s in theirs.get("servers", [])])
        for s in ours.get("servers", []):
            t = their_servers[s["server"]]
            same_type = {"postgres": "postgresql"}
            assert same_type.get(s["type"], s["type"]) == same_type.get(t["type"], t["type"])
            for k in ["location", "format", "host", "port", "database", "schema"]:
                if k in t:
                    assert s.get(k) == t[k], (fixture.name, s["server"], k)
                    compared += 1
        their_objects = by_name(theirs["schema"])
        assert set(by_name(ours["schema"])) == set(their_objects)
        for obj in ours["schema"]:
            theirs_obj = their_objects[obj["name"]]
            assert obj.get("description") == theirs_obj.get("description")
            their_props = by_name(theirs_obj["properties"])
            assert [p["name"] for p in obj["properties"]] == list(their_props)
            for p in obj["properties"]:
                t = their_props[p["name"]]
                for k in [
                    "logicalType",
                    "physicalType",
                    "description",
                    "required",
                    "unique",
                    "primaryKey",
                    "primaryKeyPosition",
                    "logicalTypeOptions",
                    "examples",
                ]:
                    if k in t:
                        assert p.get(k) == t[k], (fixture.name, obj["name"], p["name"], k)
                        compared += 1
                # PII: meshq classifies the column `pii` so global policies
                # mask it; the reference tool keeps a custom property. The
                # original classification stays as a tag.
                their_pii = any(
                    c["property"] == "pii" and str(c["value"]).lower() == "true"
                    for c in t.get("customProperties", [])
                )
                if their_pii:
                    assert p["classification"] == "pii"
                    if "classification" in t:
                        assert t["classification"] in p["tags"]
                elif "classification" in t:
                    assert p.get("classification") == t["classification"]
        # Service levels both read as durations or percentages.
        their_sla = {s["property"]: s for s in theirs.get("slaProperties", [])}
        for s in ours.get("slaProperties", []):
            t = their_sla.get(s["property"])
            if t is None or not isinstance(t.get("value"), (int, float)):
                continue
            for k in ["value", "unit", "element"]:
                if k in t:
                    assert s.get(k) == t[k], (fixture.name, s["property"], k)
                    compared += 1
        assert compared > 20, compared
