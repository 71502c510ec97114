"""The synthetic event stream as FHIR R4: one NDJSON line per native event.

otrules reads FHIR R4 as well as its own events. To show that both inputs give
the same recommendations, the same synthetic stream (`otrules.synthetic`) is
written here as FHIR, following the project's writing conventions for it: a
plan is a transaction Bundle of its Goals and CarePlan (and, the first time, an
EpisodeOfCare), an evaluation a collection Bundle of Observations, an attended
visit an Encounter, a missed or cancelled one an Appointment, a discharge a
transaction Bundle that completes the CarePlan and finishes the EpisodeOfCare.
A Patient line comes just before each patient's first event. The same lines
feed the FHIR validator in the tests, so the output is checked against an
independent implementation of FHIR R4, not just against otrules' own reader.

The conversion streams: it keeps one small record per plan (its version
counters and the fields a later CarePlan repeats) and the set of patients seen,
never the events. The same events always give byte-identical output: fullUrls
are uuid5 over a fixed namespace, and nothing depends on the clock.

    python -m otrules.synthetic_fhir --patients 40 --seed 7 --out sample.ndjson
    python -m otrules.synthetic_fhir --input events.jsonl --out events.ndjson
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import typing
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML

from otrules import rules as bundled
from otrules.schemas import Catalogue
from otrules.schemas.fhir_codes import CodeTable, InstrumentCode

GOAL_BASELINE = "https://otrules.org/fhir/StructureDefinition/goal-baseline"
"""Goal extension (valueDecimal): the goal's baseline score."""
GOAL_GAS_WEIGHT = "https://otrules.org/fhir/StructureDefinition/goal-gas-weight"
"""Goal extension (valueDecimal): the goal's weight in the GAS T-score."""

FULL_URL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://otrules.org/fhir/synthetic")
"""The uuid5 namespace of the entries' fullUrls (urn:uuid:...)."""
CODE_TABLE = "fhir-codes.yaml"
"""The bundled code table, in the `otrules.rules` package."""

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CPT = "http://www.ama-assn.org/go/cpt"  # an OT visit: 97530 therapeutic activities (rules/fhir-codes.yaml)
SERVICE_TYPE = "http://terminology.hl7.org/CodeSystem/service-type"  # 61: Occupational Therapy
ENCOUNTER_CLASS = {
    "outpatient": "AMB",
    "school": "AMB",
    "home-health": "HH",
    "inpatient-rehab": "IMP",
    "skilled-nursing": "NONAC",
    "acute": "ACUTE",
}
APPOINTMENT_STATUS = {"missed": "noshow", "cancelled": "cancelled"}
VISIT_LENGTH = datetime.timedelta(minutes=45)
"""A missed or cancelled visit's Appointment ends this long after it starts."""

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_INT32 = 2**31 - 1  # FHIR integer is a signed 32-bit number
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

Resource = dict[str, Any]


def load_code_table() -> CodeTable:
    """The bundled code table, rules/fhir-codes.yaml."""
    with open(bundled.path(CODE_TABLE), encoding="utf-8") as f:
        return CodeTable.model_validate(YAML(typ="safe").load(f))


@dataclass(slots=True)
class _Plan:
    """What a later line of one plan needs: version counters and the CarePlan's last fields."""

    created: str  # occurred_at of the plan's first plan event: CarePlan.created, EpisodeOfCare.period.start
    versions: int  # CarePlan (and Goal) versions written
    eoc_versions: int
    setting: str
    frequency: int
    certified_from: str
    certified_until: str
    goal_ids: tuple[str, ...]


def to_fhir(events: Iterable[dict[str, Any]], codes: CodeTable | None = None,
            catalogue: Catalogue | None = None) -> Iterator[Resource]:
    """Yield one FHIR R4 resource per native event, in the events' order, and a Patient just
    before each patient's first event. `codes` defaults to the bundled code table, `catalogue`
    to the bundled instrument catalogue. Raises ValueError for an event that cannot be written
    (an id FHIR cannot hold, a GAS score with no answer code, a visit or discharge of a plan
    with no plan event before it)."""
    if codes is None:
        codes = load_code_table()
    if catalogue is None:
        from otrules import defaults  # the engine comes with it: only when needed

        catalogue = defaults.catalogue()
    writer = _Writer(codes, catalogue)
    for event in events:
        patient_id = event["patient_id"]
        if patient_id not in writer.patients:
            writer.patients.add(patient_id)
            yield writer.patient(event)
        yield writer.convert(event)


def write_ndjson(out: typing.IO[str], lines: Iterable[Resource]) -> int:
    """Write one compact JSON object per line; return how many were written."""
    count = 0
    for line in lines:
        out.write(_ENCODER.encode(line) + "\n")
        count += 1
    return count


class _Writer:
    def __init__(self, codes: CodeTable, catalogue: Catalogue) -> None:
        self.codes, self.catalogue = codes, catalogue
        self.patients: set[str] = set()
        self.plans: dict[tuple[str, str], _Plan] = {}  # by (patient_id, plan_id)

    def convert(self, event: dict[str, Any]) -> Resource:
        kind = event.get("type")
        if kind == "plan":
            return self.plan(event)
        if kind == "evaluation":
            return self.evaluation(event)
        if kind == "visit":
            return self.visit(event)
        if kind == "discharge":
            return self.discharge(event)
        raise ValueError(f"event {event.get('event_id')!r}: unknown event type {kind!r}")

    # --- one line per event ----------------------------------------------

    def patient(self, event: dict[str, Any]) -> Resource:
        return {"resourceType": "Patient", "id": _id(event["patient_id"], "patient_id", event),
                "meta": _meta(1, event["occurred_at"]), "active": True}

    def plan(self, event: dict[str, Any]) -> Resource:
        patient_id, plan_id, at = event["patient_id"], event["plan_id"], event["occurred_at"]
        goals = event.get("goals") or []
        key = (patient_id, plan_id)
        first = key not in self.plans
        state = _Plan(
            created=at if first else self.plans[key].created,
            versions=1 if first else self.plans[key].versions + 1,
            eoc_versions=1 if first else self.plans[key].eoc_versions,
            setting=event["setting"],
            frequency=event["frequency_per_week"],
            certified_from=event["certified_from"],
            certified_until=event["certified_until"],
            goal_ids=tuple(_id(goal["goal_id"], "goals[].goal_id", event) for goal in goals),
        )
        self.plans[key] = state
        entries = [self.goal(goal, event, state.versions) for goal in goals]
        entries.append(_put(self.careplan(state, event, "active"), state.versions, patient_id))
        if first:
            eoc = self.episode(state, event, "active")
            entries.append(_put(eoc, 1, patient_id))
        return _bundle(event, "transaction", entries)

    def goal(self, goal: dict[str, Any], event: dict[str, Any], version: int) -> dict[str, Any]:
        instrument = goal["instrument"]
        target_value = goal["target"]
        target: Resource = {"measure": {"coding": [_coding(self.codes.coding_for(instrument))]}}
        if self._is_integer(instrument) and _whole(target_value) and abs(target_value) <= _INT32:
            target["detailInteger"] = int(target_value)
        else:
            target["detailQuantity"] = {"value": target_value}
        if goal.get("target_date") is not None:
            target["dueDate"] = goal["target_date"]
        extension = []
        if goal.get("baseline") is not None:
            extension.append({"url": GOAL_BASELINE, "valueDecimal": goal["baseline"]})
        extension.append({"url": GOAL_GAS_WEIGHT, "valueDecimal": goal.get("gas_weight", 1)})
        resource: Resource = {
            "resourceType": "Goal",
            "id": _id(goal["goal_id"], "goals[].goal_id", event),
            "meta": _meta(version, event["occurred_at"]),
            "extension": extension,
            "lifecycleStatus": "active",
            "description": {"text": goal["description"]},
            "subject": _patient_ref(event),
            "target": [target],
        }
        return _put(resource, version, event["patient_id"])

    def careplan(self, state: _Plan, event: dict[str, Any], status: str) -> Resource:
        system, code = self.codes.setting_coding(state.setting)
        resource: Resource = {
            "resourceType": "CarePlan",
            "id": _id(event["plan_id"], "plan_id", event),
            "meta": _meta(state.versions, event["occurred_at"]),
            "status": status,
            "intent": "plan",
            "category": [{"coding": [{"system": system, "code": code}]}],
            "subject": _patient_ref(event),
            "period": {"start": state.certified_from, "end": state.certified_until},
            "created": state.created,
        }
        if state.goal_ids:
            resource["goal"] = [{"reference": f"Goal/{goal_id}"} for goal_id in state.goal_ids]
        if state.frequency > 0:  # Timing.repeat.frequency is a positiveInt
            resource["activity"] = [{"detail": {
                "status": "scheduled",
                "code": {"text": "Occupational therapy"},
                "scheduledTiming": {"repeat": {"frequency": state.frequency, "period": 1, "periodUnit": "wk"}},
            }}]
        return resource

    def episode(self, state: _Plan, event: dict[str, Any], status: str) -> Resource:
        period = {"start": state.created}
        if status == "finished":
            period["end"] = event["occurred_at"]
        return {
            "resourceType": "EpisodeOfCare",
            "id": _id(f"eoc-{event['plan_id']}", "plan_id", event),
            "meta": _meta(state.eoc_versions, event["occurred_at"]),
            "status": status,
            "patient": _patient_ref(event),
            "period": period,
        }

    def evaluation(self, event: dict[str, Any]) -> Resource:
        at = event["occurred_at"]
        kind_system, kind_code = self.codes.kind_coding(event["kind"])
        entries = []
        for i, measure in enumerate(event["measures"], 1):
            instrument = measure["instrument"]
            coding = self.codes.coding_for(instrument)
            observation: Resource = {
                "resourceType": "Observation",
                "id": _id(f"{event['event_id']}-{i}", "event_id", event),
                "meta": _meta(1, at),
                "basedOn": [{"reference": f"CarePlan/{_id(event['plan_id'], 'plan_id', event)}"}],
                "status": "final",
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey"}]},
                             {"coding": [{"system": kind_system, "code": kind_code}]}],
                "code": {"coding": [_coding(coding)]},
                "subject": _patient_ref(event),
            }
            if measure.get("goal_id") is not None:
                observation["focus"] = [{"reference": f"Goal/{_id(measure['goal_id'], 'goal_id', event)}"}]
            observation["effectiveDateTime"] = at
            if event.get("clinician_id") is not None:
                clinician = _id(event["clinician_id"], "clinician_id", event)
                observation["performer"] = [{"reference": f"Practitioner/{clinician}"}]
            observation.update(self._value(coding, instrument, measure["score"], event, i))
            entries.append({"fullUrl": _full_url("Observation", observation["id"], 1, event["patient_id"]),
                            "resource": observation})
        return _bundle(event, "collection", entries)

    def visit(self, event: dict[str, Any]) -> Resource:
        status, at = event["status"], event["occurred_at"]
        if status == "attended":
            setting = self._plan_of(event).setting
            return {
                "resourceType": "Encounter",
                "id": _id(event["event_id"], "event_id", event),
                "meta": _meta(1, at),
                "status": "finished",
                "class": {"system": ACT_CODE, "code": ENCOUNTER_CLASS[setting]},
                "type": [{"coding": [{"system": CPT, "code": "97530", "display": "Therapeutic activities"}]}],
                "subject": _patient_ref(event),
                "episodeOfCare": [{"reference": f"EpisodeOfCare/{_id('eoc-' + event['plan_id'], 'plan_id', event)}"}],
                "period": {"start": at},
            }
        if status not in APPOINTMENT_STATUS:
            raise ValueError(f"event {event['event_id']!r}: unknown visit status {status!r}")
        return {
            "resourceType": "Appointment",
            "id": _id(event["event_id"], "event_id", event),
            "meta": _meta(1, at),
            "status": APPOINTMENT_STATUS[status],
            "start": at,
            "end": _later(at, VISIT_LENGTH),
            "serviceType": [{"coding": [{"system": SERVICE_TYPE, "code": "61", "display": "Occupational Therapy"}]}],
            "participant": [{"actor": _patient_ref(event), "status": "accepted"}],
        }

    def discharge(self, event: dict[str, Any]) -> Resource:
        state = self._plan_of(event)
        state.versions += 1
        state.eoc_versions += 1
        entries = [_put(self.careplan(state, event, "completed"), state.versions, event["patient_id"]),
                   _put(self.episode(state, event, "finished"), state.eoc_versions, event["patient_id"])]
        return _bundle(event, "transaction", entries)

    # --- helpers -----------------------------------------------------------

    def _plan_of(self, event: dict[str, Any]) -> _Plan:
        state = self.plans.get((event["patient_id"], event["plan_id"]))
        if state is None:
            raise ValueError(f"{event['type']} event {event['event_id']!r}: no plan event of plan "
                             f"{event['plan_id']!r} came before it, so its CarePlan is unknown")
        return state

    def _is_integer(self, instrument: str) -> bool:
        found = self.catalogue.get(instrument)
        return found is not None and found.integer

    def _integer_step(self, instrument: str) -> bool:
        found = self.catalogue.get(instrument)
        return found is not None and found.step is not None and float(found.step).is_integer()

    def _value(self, coding: InstrumentCode, instrument: str, score: float, event: dict[str, Any],
               i: int) -> Resource:
        if coding.answers:
            for answer, value in coding.answers.items():
                if value == score:
                    return {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": answer}]}}
            raise ValueError(f"event {event['event_id']!r}: measures[{i - 1}]: no answer code of "
                             f"{coding.system}|{coding.code} stands for the {instrument} score {score!r}")
        integer = self._is_integer(instrument) or self._integer_step(instrument)
        if integer and _whole(score) and abs(score) <= _INT32:
            return {"valueInteger": int(score)}
        quantity: Resource = {"value": score}
        if coding.units:
            unit = next(iter(coding.units))
            quantity.update({"unit": unit, "system": UCUM, "code": unit})
        return {"valueQuantity": quantity}


# --- building blocks ---------------------------------------------------------

def _id(value: str, field: str, event: dict[str, Any]) -> str:
    """`value` if it is a valid FHIR id, else ValueError naming the event and field."""
    if not isinstance(value, str) or not FHIR_ID.fullmatch(value):
        raise ValueError(f"event {event.get('event_id')!r}: {field} {value!r} cannot be a FHIR id "
                         "(1 to 64 of A-Z, a-z, 0-9, '-' and '.')")
    return value


def _meta(version: int, at: str) -> Resource:
    return {"versionId": str(version), "lastUpdated": at}


def _patient_ref(event: dict[str, Any]) -> Resource:
    return {"reference": f"Patient/{event['patient_id']}"}


def _coding(entry: InstrumentCode) -> Resource:
    coding = {"system": entry.system, "code": entry.code}
    if entry.display:
        coding["display"] = entry.display
    return coding


def _full_url(resource_type: str, resource_id: str, version: int, patient_id: str) -> str:
    name = f"{resource_type}/{resource_id}/_history/{version}{patient_id}"
    return f"urn:uuid:{uuid.uuid5(FULL_URL_NAMESPACE, name)}"


def _put(resource: Resource, version: int, patient_id: str) -> Resource:
    rtype, rid = resource["resourceType"], resource["id"]
    return {"fullUrl": _full_url(rtype, rid, version, patient_id), "resource": resource,
            "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}


def _bundle(event: dict[str, Any], kind: str, entries: list[Resource]) -> Resource:
    return {"resourceType": "Bundle", "id": _id(event["event_id"], "event_id", event), "type": kind,
            "entry": entries}


def _whole(number: float) -> bool:
    return not isinstance(number, bool) and float(number).is_integer()


def _later(at: str, delta: datetime.timedelta) -> str:
    """An RFC 3339 date-time `delta` after `at`, in the same offset (Z stays Z)."""
    then = (datetime.datetime.fromisoformat(at) + delta).isoformat()
    return then[: -len("+00:00")] + "Z" if at[-1:] in "Zz" and then.endswith("+00:00") else then


# --- command line ----------------------------------------------------------------

def _size(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _read_jsonl(path: str) -> Iterator[dict[str, Any]]:
    with sys.stdin if path == "-" else open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def main(argv: list[str] | None = None) -> int:
    from otrules import synthetic

    parser = argparse.ArgumentParser(
        prog="python -m otrules.synthetic_fhir",
        description="Write a synthetic event stream (or convert a JSONL one) as FHIR R4 NDJSON.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--patients", type=_size, help="every event of N synthetic patients")
    source.add_argument("--events", type=_size, help="exactly N synthetic events")
    source.add_argument("--input", help="convert this JSONL event stream instead ('-': stdin)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=datetime.date.fromisoformat, default=datetime.date(2026, 1, 5),
                        help="date of the first plan, YYYY-MM-DD (default 2026-01-05)")
    parser.add_argument("--out", help="output file (default: stdout)")
    args = parser.parse_args(argv)
    if args.input is not None:
        events: Iterable[dict[str, Any]] = _read_jsonl(args.input)
    else:
        events = synthetic.generate(patients=args.patients, events=args.events, seed=args.seed, start=args.start)
    if args.out is None:
        write_ndjson(sys.stdout, to_fhir(events))
    else:
        with open(args.out, "w", encoding="utf-8") as out:
            write_ndjson(out, to_fhir(events))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
