"""The committed JSON Schemas match the models and accept what otrules accepts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from click.testing import CliRunner
from ruamel.yaml import YAML

from otrules import defaults
from otrules.cli import main
from otrules.schemas import jsonschema as schemas

COMMITTED = Path(__file__).resolve().parent.parent / "schemas" / "json"


def load(name: str) -> dict:
    return json.loads((COMMITTED / name).read_text())


def test_committed_schemas_are_up_to_date():
    for name, schema in schemas.documents().items():
        assert (COMMITTED / name).read_text() == schemas.render(schema), f"run: otrules schema --out schemas/json ({name})"


def test_sample_events_validate_and_bad_ones_do_not():
    validator = jsonschema.Draft202012Validator(load("event.schema.json"))
    for line in defaults.SAMPLE_STREAM.read_text().splitlines()[:300]:
        validator.validate(json.loads(line))
    bad = {"type": "visit", "event_id": "e", "patient_id": "p", "plan_id": "x",
           "occurred_at": "2026-01-05T09:00:00Z", "status": "late"}
    assert not validator.is_valid(bad)


def test_bundled_rules_file_validates_against_the_rules_schema():
    validator = jsonschema.Draft202012Validator(load("rules.schema.json"))
    data = YAML(typ="safe").load(defaults.DEFAULT_RULES.read_text())
    validator.validate(data)
    data["rules"][0]["recommend"]["kind"] = "celebrate"
    assert not validator.is_valid(data)
    assert defaults.DEFAULT_RULES.read_text().startswith("# yaml-language-server: $schema=../schemas/json/rules.schema.json")


def test_recommendations_validate(tmp_path):
    validator = jsonschema.Draft202012Validator(load("recommendation.schema.json"))
    out = tmp_path / "recs.jsonl"
    assert CliRunner().invoke(main, ["run", "--output", str(out)]).exit_code == 0
    for line in out.read_text().splitlines():
        validator.validate(json.loads(line))


def test_schema_command_writes_all_documents(tmp_path):
    result = CliRunner().invoke(main, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schemas.DOCUMENTS)
