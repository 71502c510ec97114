"""JSON Schema (2020-12) documents generated from the models.

Committed under schemas/json/ for pipelines and editors (rules files carry a
`# yaml-language-server: $schema=...` line); a test keeps them in step with
the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from otrules.schemas.events import Event
from otrules.schemas.fhir_codes import CodeTable
from otrules.schemas.instruments import Catalogue
from otrules.schemas.recommendations import Recommendation
from otrules.schemas.rulesets import RulesetFile

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "urn:otrules:schemas:"

DOCUMENTS: dict[str, tuple[Any, str]] = {
    "event.schema.json": (TypeAdapter(Event), "An otrules input event (topic ot.events, one JSONL line)"),
    "recommendation.schema.json": (TypeAdapter(Recommendation), "An otrules recommendation (topic ot.recommendations)"),
    "rules.schema.json": (TypeAdapter(RulesetFile), "An otrules rules file (rules/*.yaml)"),
    "instruments.schema.json": (TypeAdapter(Catalogue), "The otrules instrument catalogue (rules/instruments.yaml)"),
    "fhir-codes.schema.json": (TypeAdapter(CodeTable), "The otrules FHIR code table (rules/fhir-codes.yaml)"),
}


def documents() -> dict[str, dict[str, Any]]:
    out = {}
    for name, (adapter, title) in DOCUMENTS.items():
        schema = adapter.json_schema(by_alias=True)
        rest = {k: v for k, v in schema.items() if k != "title"}
        out[name] = {"$schema": DIALECT, "$id": BASE_ID + name, "title": title, **rest}
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in documents().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
