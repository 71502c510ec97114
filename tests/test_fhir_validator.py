"""The independent FHIR R4 validator (HAPI FHIR, offline) can pass and can fail.

Before tests rely on "HAPI finds no error", these show it does find errors
of every kind that matters here (missing required element, invalid code in a
required binding, unknown element, bad dateTime, errors inside a Bundle's
entries), names where, and does not fail resources for codes of code systems
it cannot know offline (LOINC, CPT, a local urn: system). All resources go
through one JVM (one validate call for the module, one CLI run).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fhir_validator_support import VALIDATOR_SCRIPT, FhirValidator, Result, errors

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation", "id": "obs-valid", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "72172-0", "display": "Total score [Barthel Index]"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-01-05T10:00:00Z",
    "valueInteger": 85,
}

GOAL_URL = "urn:uuid:6f1c8e8a-2b7d-4f0e-9b7a-1c2d3e4f5a6b"
CAREPLAN_URL = "urn:uuid:7a2d9f9b-3c8e-4a1f-8c8b-2d3e4f5a6b7c"
BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle", "id": "bundle-valid", "type": "transaction",
    "entry": [
        {"fullUrl": GOAL_URL,
         "resource": {"resourceType": "Goal", "lifecycleStatus": "active",
                      "description": {"text": "Dresses upper body independently"},
                      "subject": {"reference": "Patient/p1"},
                      "target": [{"measure": {"coding": [{"system": "urn:otrules:instrument", "code": "COPM-performance"}]},
                                  "detailInteger": 7, "dueDate": "2026-03-01"}]},
         "request": {"method": "POST", "url": "Goal"}},
        {"fullUrl": CAREPLAN_URL,
         "resource": {"resourceType": "CarePlan", "status": "active", "intent": "plan",
                      "subject": {"reference": "Patient/p1"},
                      "period": {"start": "2026-01-05", "end": "2026-04-04"},
                      "goal": [{"reference": GOAL_URL}]},
         "request": {"method": "POST", "url": "CarePlan"}},
    ],
}


def variant(base: dict[str, Any], id_: str, **changes: Any) -> dict[str, Any]:
    """A deep copy of base with a new id; a change to None removes that element."""
    resource = copy.deepcopy(base)
    resource["id"] = id_
    for key, value in changes.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource


def bundle_goal_without_status() -> dict[str, Any]:
    bundle = variant(BUNDLE, "bundle-goal-no-status")
    del bundle["entry"][0]["resource"]["lifecycleStatus"]
    return bundle


VALID = [
    OBSERVATION,
    BUNDLE,
    # Codes of systems the validator cannot hold offline are not errors on their own.
    variant(OBSERVATION, "obs-local-code",
            code={"coding": [{"system": "urn:otrules:instrument", "code": "COPM-performance"}]}, valueInteger=6),
    {"resourceType": "Procedure", "id": "proc-cpt", "status": "completed",
     "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97165"}]},
     "subject": {"reference": "Patient/p1"}, "performedDateTime": "2026-01-05"},
]

# id -> (location the error is reported at, text the message holds)
INVALID: dict[str, tuple[str, str]] = {
    "obs-no-status": ("Observation", "Observation.status: minimum required = 1"),
    "obs-bogus-status": ("Observation.status", "bogus"),
    "goal-no-lifecycle": ("Goal", "Goal.lifecycleStatus: minimum required = 1"),
    "obs-unknown-element": ("Observation", "Unrecognized property 'frobnicate'"),
    "obs-bad-datetime": ("Observation.effective.ofType(dateTime)", "Not a valid date/time format: '2026-13-45'"),
    "obs-two-values": ("Observation", "Unrecognized property 'valueString'"),
    "obs-component-no-code": ("Observation.component[0]", "Observation.component.code: minimum required = 1"),
    "obs-two-subjects": ("Observation.subject", "must be an Object, not an Array"),
    "bundle-goal-no-status": ("Bundle.entry[0].resource", "Goal.lifecycleStatus: minimum required = 1"),
}
INVALID_RESOURCES = [
    variant(OBSERVATION, "obs-no-status", status=None),
    variant(OBSERVATION, "obs-bogus-status", status="bogus"),
    {"resourceType": "Goal", "id": "goal-no-lifecycle", "description": {"text": "Dresses independently"},
     "subject": {"reference": "Patient/p1"}},
    variant(OBSERVATION, "obs-unknown-element", frobnicate=True),
    variant(OBSERVATION, "obs-bad-datetime", effectiveDateTime="2026-13-45"),
    # Cardinality: value[x] is 0..1 (a second choice is not an element of the
    # resource), component.code is 1..1, subject is 0..1 (an array where an object is due).
    variant(OBSERVATION, "obs-two-values", valueString="85 points"),
    variant(OBSERVATION, "obs-component-no-code", component=[{"valueInteger": 3}]),
    variant(OBSERVATION, "obs-two-subjects", subject=[{"reference": "Patient/p1"}, {"reference": "Patient/p2"}]),
    bundle_goal_without_status(),
]


@pytest.fixture(scope="module")
def results(fhir_validator: FhirValidator) -> dict[str, Result]:
    """Every resource of this module through one JVM, warnings included."""
    resources = VALID + INVALID_RESOURCES
    out = fhir_validator(resources, warnings=True)
    assert [(r["line"], r["resourceType"], r["id"]) for r in out] == \
        [(n, r["resourceType"], r["id"]) for n, r in enumerate(resources, 1)]
    return {r["id"]: r for r in out}


@pytest.mark.parametrize("resource", VALID, ids=lambda r: r["id"])
def test_valid_resources_have_no_error(results: dict[str, Result], resource: dict[str, Any]) -> None:
    assert errors(results[resource["id"]]) == []


@pytest.mark.parametrize("id_", list(INVALID))
def test_invalid_resources_have_an_error_naming_where(results: dict[str, Result], id_: str) -> None:
    location, text = INVALID[id_]
    found = errors(results[id_])
    assert found, f"{id_}: no error; issues: {results[id_]['issues']}"
    assert any(i["location"].startswith(location) and text in i["message"] for i in found), found


def test_codes_of_unknown_code_systems_are_warnings(results: dict[str, Result]) -> None:
    for id_, system in [("obs-valid", "http://loinc.org"), ("obs-local-code", "urn:otrules:instrument"),
                        ("proc-cpt", "http://www.ama-assn.org/go/cpt")]:
        unknown = [i for i in results[id_]["issues"] if "CodeSystem is unknown" in i["message"]]
        assert unknown and all(i["severity"] == "warning" and system in i["message"] for i in unknown), \
            results[id_]["issues"]


def test_bogus_status_is_checked_against_the_required_value_set(results: dict[str, Result]) -> None:
    messages = " ".join(i["message"] for i in errors(results["obs-bogus-status"]))
    assert "http://hl7.org/fhir/ValueSet/observation-status" in messages


def test_cli_exit_status_and_report(tmp_path: Path, fhir_validator: FhirValidator) -> None:
    """The command line: problems as FILE:LINE, exit 1 when any resource has an error, 0 otherwise."""
    ndjson = tmp_path / "mixed.ndjson"
    ndjson.write_text(json.dumps(OBSERVATION) + "\n\n" + json.dumps(INVALID_RESOURCES[1]) + "\n" + "{not json\n",
                      encoding="utf-8")
    done = subprocess.run([sys.executable, str(VALIDATOR_SCRIPT), str(ndjson)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith(f"{ndjson}:3: Observation/obs-bogus-status: error Observation.status:") for line in lines)
    assert any(line.startswith(f"{ndjson}:4: ?/?: fatal ") and "not JSON" in line for line in lines), lines
    assert not any(f"{ndjson}:1:" in line for line in lines), lines  # the valid one, warnings not asked for
    assert "3 resources (non-blank lines), 2 with errors" in done.stderr
