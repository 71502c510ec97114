"""FHIR R4 input (contracts.md §7): the mapping, the join across lines, what is skipped and refused,
and the same recommendations as the native stream."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner

from otrules import defaults, synthetic, synthetic_fhir
from otrules.cli import main
from otrules.consumers import EventCore, Fault, JsonlSource, PatientStates, Record, Rejection
from otrules.consumers.fhir.mapping import SKIP_CODE, SKIP_STATUS, SKIP_TYPE, make_mapper
from otrules.engine import Engine, PatientState

P = "Patient/p-1"
OT_REGIME = {"coding": [{"system": "http://snomed.info/sct", "code": "84478008"}]}  # SNOMED CT: Occupational therapy
OT_VISIT = [{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97530"}]}]  # therapeutic activities
LOINC = "http://loinc.org"
T0 = "2026-03-02T09:00:00Z"


class Collect:
    def __init__(self) -> None:
        self.recs: list = []
        self.letters: list[tuple[Record, Rejection]] = []

    def recommend(self, recs, record) -> None:
        self.recs.extend(recs)

    def dead_letter(self, record, rejection) -> None:
        self.letters.append((record, rejection))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(defaults.rulesets(), defaults.catalogue())


def core_for(engine: Engine, states: PatientStates | None = None, fmt: str = "auto") -> tuple[EventCore, Collect]:
    sink = Collect()
    # full validation with fhir.resources, as `--fhir-validation full` (the default checks what it reads)
    return EventCore(engine, states if states is not None else PatientStates(), sink, Fault.ISOLATE,
                     input_format=fmt, fhir=make_mapper(engine.catalogue, validation="full")), sink


def line(doc: dict[str, Any]) -> Record:
    return Record(json.dumps(doc).encode(), "t", line=1)


def feed(core: EventCore, *docs: dict[str, Any]) -> None:
    for doc in docs:
        core.handle(line(doc))


def patient(states: Any, patient_id: str = "p-1") -> PatientState:
    state = states.get(patient_id)
    assert state is not None
    return state


# ---------------------------------------------------------------- resources as an EHR sends them


def goal(gid: str, code: str = "72172-0", system: str = LOINC, target: dict | None = None, **extra) -> dict:
    return {"resourceType": "Goal", "id": gid, "meta": {"versionId": "1"}, "lifecycleStatus": "active",
            "description": {"text": f"Goal {gid}"}, "subject": {"reference": P},
            "target": [{"measure": {"coding": [{"system": system, "code": code}]},
                        **(target or {"detailInteger": 26}), "dueDate": "2026-05-01"}], **extra}


def careplan(pid: str = "cp-1", goals: tuple[str, ...] = ("g-moca",), status: str = "active", version: str = "1",
             **extra) -> dict:
    return {"resourceType": "CarePlan", "id": pid, "meta": {"versionId": version, "lastUpdated": T0},
            "status": status, "intent": "plan", "created": T0, "subject": {"reference": P},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}]}],
            "period": {"start": "2026-03-02", "end": "2026-05-30"},
            "goal": [{"reference": f"Goal/{g}"} for g in goals],
            "activity": [{"detail": {"status": "scheduled", "code": OT_REGIME, "scheduledTiming": {
                "repeat": {"frequency": 2, "period": 1, "periodUnit": "wk"}}}}], **extra}


def observation(oid: str, value: dict, when: str, code: str = "72172-0", system: str = LOINC,
                status: str = "final", version: str = "1", **extra) -> dict:
    return {"resourceType": "Observation", "id": oid, "meta": {"versionId": version}, "status": status,
            "code": {"coding": [{"system": system, "code": code}]}, "subject": {"reference": P},
            "effectiveDateTime": when, "performer": [{"reference": "Practitioner/ot-9"}], **value, **extra}


OT_SERVICE = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/service-type", "code": "61"}]}]


def noshow(aid: str, when: str) -> dict:
    return {"resourceType": "Appointment", "id": aid, "status": "noshow", "start": when, "end": when,
            "serviceType": OT_SERVICE, "participant": [{"actor": {"reference": P}, "status": "accepted"}]}


def uuid_of(rid: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, rid)}"


def bundle(kind: str, *resources: dict, urls: bool = False) -> dict:
    """A Bundle as a server writes it: each entry's fullUrl is the resource's URL, or with `urls`
    a urn:uuid (what a client sends when the server is to give the ids)."""
    entries = []
    for r in resources:
        entry: dict[str, Any] = {"resource": r}
        url = f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}"
        entry["fullUrl"] = uuid_of(r["id"]) if urls else url
        if kind == "transaction":
            entry["request"] = {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def test_a_transaction_bundle_with_careplan_and_goals_opens_the_plan_with_its_goals(engine):
    core, sink = core_for(engine)
    # the CarePlan comes first in the Bundle and names its Goals by urn:uuid fullUrl
    plan = careplan(goals=())
    plan["goal"] = [{"reference": uuid_of("g-moca")}, {"reference": uuid_of("g-grip")}]
    feed(core, bundle("transaction", plan, goal("g-moca"),
                      goal("g-grip", "grip-kg", "urn:otrules:instrument",
                           {"detailQuantity": {"value": 20, "unit": "kg", "code": "kg"}}), urls=True))
    state = patient(core.states)
    plan_state = state.plans["cp-1"]
    assert {g: (s.instrument, s.target) for g, s in plan_state.goals.items()} == {
        "g-moca": ("MoCA", 26), "g-grip": ("grip-kg", 20)}
    assert (plan_state.setting, plan_state.frequency_per_week) == ("outpatient", 2)
    assert str(plan_state.certified_until) == "2026-05-30"
    assert core.tally.read == 3 and core.tally.processed == 3 and core.tally.balanced
    assert not sink.letters


def test_a_goal_before_its_careplan_is_joined_and_a_later_goal_makes_a_new_snapshot(engine):
    states = PatientStates()
    core, _ = core_for(engine, states)
    feed(core, goal("g-moca"))
    assert "cp-1" not in patient(states).plans
    # the join state survives a restart: it is part of the patient's bytes
    restored = PatientStates()
    restored.put(PatientState.from_bytes(patient(states).to_bytes()))
    core2, _ = core_for(engine, restored)
    feed(core2, careplan(goals=("g-moca", "g-later")))
    assert set(patient(restored).plans["cp-1"].goals) == {"g-moca"}
    later = goal("g-later", "96761-2", target={"detailInteger": 80})
    later["meta"]["lastUpdated"] = "2026-03-03T09:00:00Z"
    feed(core2, later)
    plan = patient(restored).plans["cp-1"]
    assert set(plan.goals) == {"g-moca", "g-later"} and plan.goals["g-later"].instrument == "Barthel-100"
    assert core2.events[0].event_id == "Goal/g-later/_history/1"


def test_observations_with_value_quantity_integer_and_coded_gas_answers(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    gas = observation("o-gas", {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA34480-6"}]}},
                      "2026-03-16T10:00:00Z", "107333-7", focus=[{"reference": "Goal/g-moca"}])
    feed(core, bundle("collection",
                      observation("o-1", {"valueQuantity": {"value": 22, "unit": "{score}"}}, "2026-03-16T10:00:00Z"),
                      gas))
    event: Any = core.events[0]
    assert event.type == "evaluation" and event.event_id == "Observation/o-1/_history/1"
    assert [(m.instrument, m.score, m.goal_id) for m in event.measures] == [("MoCA", 22, "g-moca"),
                                                                             ("GAS", 1, "g-moca")]
    assert event.clinician_id == "ot-9" and event.kind == "progress"
    feed(core, observation("o-2", {"valueInteger": 26}, "2026-04-01T10:00:00Z",
                           category=[{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97168"}]}]))
    again: Any = core.events[0]
    assert again.kind == "re-evaluation" and again.measures[0].score == 26
    assert any(r.kind == "advance_goal" and r.goal_id == "g-moca" for r in sink.recs)
    # resending one Observation of the grouped evaluation alone is a duplicate, not a second score
    feed(core, gas)
    assert core.tally.duplicates == 1 and core.tally.balanced


def test_a_group_of_more_than_64_observations_becomes_two_evaluations(engine):
    """An evaluation holds at most 64 measures (MAX_MEASURES): the 65th Observation of a group
    begins a new evaluation, with its own id, rather than the whole group being refused."""
    core, _ = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    observations = [observation(f"o-{i}", {"valueInteger": 20}, "2026-03-16T10:00:00Z") for i in range(70)]
    feed(core, bundle("collection", *observations))
    events: Any = core.events
    assert [(e.event_id, len(e.measures)) for e in events] == [("Observation/o-0/_history/1", 64),
                                                              ("Observation/o-64/_history/1", 6)]
    assert core.tally.rejected == 0 and core.tally.balanced


def test_noshow_appointments_are_missed_visits(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    feed(core, *(noshow(f"a-{i}", f"2026-03-0{3 + i}T09:00:00Z") for i in range(3)))
    assert patient(core.states).plans["cp-1"].visits_missed_in_a_row == 3
    assert [r.kind for r in sink.recs] == ["adherence_review"]


def test_vitals_and_other_types_are_skipped_and_counted_never_dead_lettered(engine):
    core, sink = core_for(engine)
    vitals = observation("hr", {"valueQuantity": {"value": 72, "unit": "/min"}}, T0, "8867-4")
    prelim = observation("o-p", {"valueInteger": 20}, T0, status="preliminary")
    feed(core, {"resourceType": "Patient", "id": "p-1"}, vitals, prelim)
    assert (core.tally.read, core.tally.skipped, core.tally.rejected) == (3, 3, 0) and not sink.letters
    assert core.tally.balanced
    assert core.tally.skipped_by == {SKIP_TYPE: 1, SKIP_CODE: 1, SKIP_STATUS: 1}  # a fixed vocabulary: metric labels


def test_an_out_of_range_score_is_dead_lettered_with_its_fhir_path_and_value(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    feed(core, observation("o-bad", {"valueQuantity": {"value": 45}}, T0))
    [(_, rejection)] = sink.letters
    assert rejection.field == "Observation.valueQuantity.value"
    assert "Observation.valueQuantity.value: 45 is outside the range 0–30 of MoCA" in rejection.reason
    assert core.tally.rejected == 1 and core.tally.balanced


@pytest.mark.parametrize(("resource", "field", "says"), [
    (observation("o", {"valueInteger": 20}, "2026-03"), "Observation.effectiveDateTime", "has no day"),
    (observation("o", {"valueQuantity": {"value": "20"}}, T0), "Observation.valueQuantity.value",
     'required: a number (got "20")'),
    (observation("o", {"valueQuantity": {"value": 20, "units": "kg"}}, T0),
     "Observation.valueQuantity.(unknown element)", 'not valid FHIR R4: Extra inputs are not permitted at '
                                                    '"valueQuantity.units"'),
    (observation("o", {"valueString": "twenty"}, T0), "Observation.valueString", "must be a number"),
    (observation("o", {"valueInteger": 20}, T0, subject={"reference": "Group/g"}), "Observation.subject",
     "Patient"),
])
def test_a_malformed_mapped_resource_is_refused_naming_its_fhir_path(engine, resource, field, says):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    feed(core, resource)
    [(_, rejection)] = sink.letters
    assert rejection.field == field, rejection.reason
    assert says in rejection.reason


def test_an_amended_observation_retracts_its_earlier_version_and_the_same_version_again_is_a_duplicate(engine):
    """contracts.md §7: `amended` / `corrected` retract the earlier version and apply the new value."""
    core, _ = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    first = observation("o-1", {"valueInteger": 20}, "2026-03-16T10:00:00Z")
    amended = observation("o-1", {"valueInteger": 21}, "2026-03-16T10:00:00Z", status="amended", version="2")
    feed(core, first, first, amended, amended)
    assert (core.tally.processed, core.tally.duplicates, core.tally.retracted) == (4, 2, 1)
    assert core.tally.balanced
    series = patient(core.states).plans["cp-1"].series
    assert [p.score for s in series.values() for p in s.points] == [21]


def test_a_completed_careplan_discharges_and_a_subscription_notification_is_read(engine):
    core, _ = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    status = {"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "event-notification"}]}
    done = careplan(status="completed", version="2")
    done["meta"]["lastUpdated"] = "2026-04-20T09:00:00Z"
    feed(core, {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}, {"resource": done}]})
    assert patient(core.states).plans["cp-1"].discharged
    assert core.tally.skipped_by[SKIP_TYPE] == 1


def test_a_kafka_key_that_is_not_the_resources_patient_is_refused(engine):
    core, sink = core_for(engine)
    core.handle(Record(json.dumps(goal("g-moca")).encode(), "topic", partition=0, offset=1, key=b"p-2",
                       keyed=True))
    [(_, rejection)] = sink.letters
    assert rejection.kind == "key"


def test_input_format_decides_how_a_line_is_read(engine):
    fhir_core, fhir_sink = core_for(engine, fmt="fhir")
    fhir_core.handle(Record(b'{"type":"visit","event_id":"e"}', "t", line=1))
    assert fhir_sink.letters[0][1].field == "resourceType"
    native_core, native_sink = core_for(engine, fmt="otrules")
    native_core.handle(line(goal("g")))
    assert native_sink.letters[0][1].field == "type"


def test_one_pretty_printed_bundle_file_is_one_record(tmp_path):
    doc = bundle("transaction", careplan(), goal("g-moca"))
    raw = json.dumps(doc, indent=2).encode()
    records = list(JsonlSource(io.BytesIO(raw), "b.json", documents=True))
    assert len(records) == 1 and json.loads(records[0].raw) == doc
    # an NDJSON file is still read line by line, and a broken document line by line too
    assert len(list(JsonlSource(io.BytesIO(b'{"a":1}\n{"b":2}\n'), "x", documents=True))) == 2
    assert len(list(JsonlSource(io.BytesIO(b'{\n"a": \n'), "x", documents=True))) == 2


# ---------------------------------------------------------------- the same stream, both formats


def _briefs(lines: list[str]) -> list[tuple]:
    out = []
    for text in lines:
        r = json.loads(text)
        out.append((r["patient_id"], r["kind"], r.get("goal_id") or "", r["rule"]["id"], r["occurred_at"],
                    json.dumps(r["evidence"], sort_keys=True)))
    return sorted(out)


def _run(*args: str) -> tuple[list[str], str]:
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 0, result.output
    return [x for x in result.stdout.splitlines() if x], result.stderr


@pytest.mark.parametrize(("patients", "seed"), [(40, 7), (120, 3)])
def test_the_same_stream_as_fhir_gives_the_same_recommendations(tmp_path, patients, seed):
    events = list(synthetic.generate(patients=patients, seed=seed))
    native, fhir = tmp_path / "native.jsonl", tmp_path / "fhir.ndjson"
    with native.open("w") as out:
        synthetic.write_jsonl(out, copy.deepcopy(events))
    with fhir.open("w") as out:
        synthetic_fhir.write_ndjson(out, synthetic_fhir.to_fhir(events))
    native_recs, _ = _run("--input", str(native))
    fhir_recs, summary = _run("--input", str(fhir), "--input-format", "fhir")
    assert len(native_recs) > 50
    assert _briefs(fhir_recs) == _briefs(native_recs)
    assert "rejected 0" in summary and "skipped" in summary
    # auto tells the formats apart line by line
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(fhir.read_bytes())
    auto_recs, _ = _run("--input", str(mixed))
    assert _briefs(auto_recs) == _briefs(native_recs)


def test_explain_names_a_fhir_event_by_its_resource_version(tmp_path):
    events = list(synthetic.generate(patients=12, seed=7))
    fhir = tmp_path / "fhir.ndjson"
    with fhir.open("w") as out:
        synthetic_fhir.write_ndjson(out, synthetic_fhir.to_fhir(events))
    recs, _ = _run("--input", str(fhir))
    trigger = next(json.loads(r)["triggered_by"][0] for r in recs if json.loads(r)["kind"] == "advance_goal")
    result = CliRunner().invoke(main, ["explain", "--input", str(fhir), "--event-id", trigger])
    assert result.exit_code == 0, result.output
    assert f"Event {trigger} (evaluation" in result.stdout and "MATCHED, recommended advance_goal" in result.stdout


def test_backtest_reads_fhir(tmp_path):
    events = list(synthetic.generate(patients=12, seed=7))
    fhir = tmp_path / "fhir.ndjson"
    with fhir.open("w") as out:
        synthetic_fhir.write_ndjson(out, synthetic_fhir.to_fhir(events))
    rules = str(defaults.DEFAULT_RULES)
    result = CliRunner().invoke(main, ["backtest", "--rules", rules, "--baseline", rules, "--input", str(fhir),
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rejected"] == 0 and report["by_kind"] and all(
        c["added"] == 0 and c["removed"] == 0 for c in report["by_kind"].values())


def test_the_hand_written_ehr_resources_are_valid_fhir_r4(fhir_validator):
    """The resources these tests send as an EHR would are themselves valid R4 (HAPI FHIR's validator),
    so what the mapping is tested on is what a real feed sends."""
    gas = observation("o-gas", {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA34480-6"}]}},
                      T0, "107333-7", focus=[{"reference": "Goal/g-moca"}])
    plan = careplan(goals=())
    plan["goal"] = [{"reference": uuid_of("g-moca")}]
    resources = [
        bundle("transaction", careplan(), goal("g-moca")),
        bundle("transaction", plan, goal("g-moca"), urls=True),
        bundle("collection", observation("o-1", {"valueQuantity": {"value": 22, "unit": "{score}"}}, T0), gas),
        observation("o-2", {"valueInteger": 26}, T0,
                    category=[{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97168"}]}]),
        observation("hr", {"valueQuantity": {"value": 72, "unit": "/min"}}, T0, "8867-4"),
        observation("o-1", {"valueInteger": 21}, T0, status="amended", version="2"),
        noshow("a-1", "2026-03-03T09:00:00Z"),
        careplan(status="completed", version="2"),
    ]
    results = fhir_validator(resources)
    assert [r["issues"] for r in results] == [[] for _ in resources]


# ---------------------------------------------------------------- what a hostile or sloppy feed sends


def _deep(depth: int) -> dict:
    ext: dict = {"url": "http://x", "valueString": "leaf"}
    for _ in range(depth):
        ext = {"url": "http://x", "extension": [ext]}
    return ext


def _repeat(**timing) -> dict:
    return careplan(version="9", activity=[{"detail": {"status": "scheduled", "scheduledTiming": {"repeat": timing}}}])


@pytest.mark.parametrize("resource", [
    careplan(goal=5, version="9"),
    {**observation("o", {"valueInteger": 20}, T0), "code": {"coding": 5}},
    {**noshow("a", T0), "participant": 5},
    _repeat(frequency=2, period=0),
    _repeat(frequency=2, period=-0.0),
    _repeat(frequency=2, period=1e-320),
    observation("o", {"valueInteger": "5"}, T0),
    observation("o", {"valueInteger": True}, T0),
    observation("o", {"valueInteger": 20}, T0, extension=[_deep(300)]),
    {**goal("g-x"), "target": [{"measure": {"coding": [{"system": LOINC, "code": "72172-0"}]},
                                "detailInteger": 20, "dueDate": "2026-03"}]},
])
def test_no_resource_stops_the_line_or_escapes_the_core(engine, resource):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    after = observation("o-after", {"valueInteger": 21}, "2026-04-01T09:00:00Z")
    feed(core, bundle("collection", resource, after))
    assert core.tally.balanced and core.tally.rejected + core.tally.skipped == 1  # refused, or not read at all
    for _, rejection in sink.letters:
        assert rejection.field.startswith(resource["resourceType"]), rejection
    assert "Observation/o-after/_history/1" in [e.event_id for e in core.events]


def test_an_engine_refusal_inside_a_bundle_does_not_stop_the_rest_of_it(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    stray = [observation(f"o-{i}", {"valueInteger": 20 + i}, f"2026-03-1{i}T09:00:00Z",
                         basedOn=[{"reference": "CarePlan/nope"}]) for i in range(2)]
    feed(core, bundle("collection", *stray, observation("o-ok", {"valueInteger": 25}, "2026-03-19T09:00:00Z")))
    assert [r.field for _, r in sink.letters] == ["plan_id", "plan_id"] or len(sink.letters) == 2
    assert core.events and core.events[-1].event_id == "Observation/o-ok/_history/1"
    assert core.tally.balanced


def test_a_goal_marked_achieved_at_discharge_does_not_reopen_the_plan(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    done = careplan(status="completed", version="2")
    done["meta"]["lastUpdated"] = "2026-04-20T09:00:00Z"
    achieved = goal("g-moca", lifecycleStatus="completed")
    achieved["meta"] = {"versionId": "2", "lastUpdated": "2026-04-21T09:00:00Z"}
    feed(core, done, achieved)
    assert patient(core.states).plans["cp-1"].discharged
    feed(core, noshow("a-1", "2026-04-22T09:00:00Z"))  # nothing open: refused, not a recommendation
    assert not sink.recs


def test_a_resource_under_the_wrong_key_touches_nothing_so_its_resend_counts(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    second = goal("g-2", "96761-2", target={"detailInteger": 80})
    core.handle(Record(json.dumps(second).encode(), "topic", partition=0, offset=1, key=b"p-other", keyed=True))
    assert sink.letters[-1][1].kind == "key" and "g-2" not in (patient(core.states).fhir or {})["goals"]
    core.handle(Record(json.dumps(second).encode(), "topic", partition=0, offset=2, key=b"p-1", keyed=True))
    assert core.tally.duplicates == 0 and "g-2" in (patient(core.states).fhir or {})["goals"]


def test_an_episode_of_another_service_closes_nothing_and_an_ot_episode_closes_its_plan(engine):
    core, _ = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    cardiology = {"resourceType": "EpisodeOfCare", "id": "eoc-cardio", "status": "finished",
                  "patient": {"reference": P}, "period": {"start": T0, "end": "2026-03-20T09:00:00Z"}}
    feed(core, cardiology)
    assert not patient(core.states).plans["cp-1"].discharged and core.tally.skipped == 1
    visit = {"resourceType": "Encounter", "id": "enc-1", "status": "finished", "subject": {"reference": P},
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "type": OT_VISIT, "period": {"start": "2026-03-04T09:00:00Z"},
             "episodeOfCare": [{"reference": "EpisodeOfCare/eoc-ot"}]}
    ot = {**cardiology, "id": "eoc-ot"}
    feed(core, visit, ot)
    assert patient(core.states).plans["cp-1"].discharged


def test_the_join_state_is_bounded(engine):
    core, sink = core_for(engine)
    for i in range(40):
        plan = careplan(f"cp-{i}", goals=())
        plan["created"] = plan["meta"]["lastUpdated"] = f"2026-03-02T09:{i:02d}:00Z"
        feed(core, plan)
    assert len((patient(core.states).fhir or {})["plans"]) == 16
    feed(core, careplan("cp-many", goals=tuple(f"g{i}" for i in range(65))))
    assert sink.letters[-1][1].field == "CarePlan.goal"


def test_a_repeated_json_key_is_refused_as_for_native_events(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    text = json.dumps(observation("o", {"valueInteger": 5}, T0)).replace('"valueInteger": 5', '"valueInteger": 5, '
                                                                        '"valueInteger": 25')
    core.handle(Record(text.encode(), "t", line=2))
    assert sink.letters[-1][1].field == "(repeated key)"


def test_a_pco_gas_goal_aims_at_the_expected_level_and_its_scores_join_it_by_focus(engine):
    core, _ = core_for(engine)
    gas_goal = goal("g-gas", "107332-9", target={"detailCodeableConcept": {"text": "expected"}})
    feed(core, bundle("transaction", careplan(goals=("g-moca", "g-gas")), goal("g-moca"), gas_goal))
    goals = patient(core.states).plans["cp-1"].goals
    assert core.tally.skipped == 0 and (goals["g-gas"].instrument, goals["g-gas"].target) == ("GAS", 0)
    gas = observation("o-gas", {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA34480-6"}]}},
                      T0, "107333-7", focus=[{"reference": "Goal/g-gas"}])
    feed(core, gas)
    event: Any = core.events[-1]
    assert (event.measures[0].goal_id, event.measures[0].score) == ("g-gas", 1)


def test_two_versions_of_one_observation_in_a_history_bundle_are_two_events(engine):
    core, _ = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    v1 = observation("o-1", {"valueInteger": 20}, "2026-03-16T10:00:00Z")
    v2 = observation("o-1", {"valueInteger": 21}, "2026-03-16T10:00:00Z", status="amended", version="2")
    feed(core, {"resourceType": "Bundle", "type": "history", "entry": [{"resource": v1}, {"resource": v2}]})
    assert [e.event_id for e in core.events] == ["Observation/o-1/_history/1", "Observation/o-1/_history/2#retraction",
                                                 "Observation/o-1/_history/2"]


def test_a_file_whose_first_line_is_junk_is_still_read_line_by_line():
    raw = b'not json\n{"a":1}\n{"b":2}\n'
    assert [r.line for r in JsonlSource(io.BytesIO(raw), "x", documents=True)] == [1, 2, 3]


def test_validate_refuses_a_code_table_that_would_let_scores_go_unchecked(tmp_path):
    bad = tmp_path / "codes.yaml"
    bad.write_text('codes: t\nversion: "1"\ninstruments:\n'
                   '  - {system: http://loinc.org, code: 72172-0, instrument: MOCA}\n'
                   '  - {system: "urn:otrules:instrument", code: MoCA, instrument: FIM-motor}\n'
                   '  - {system: http://x, code: "1", instrument: COPM-performance, answers: {high: 99}}\n')
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:4:5: instruments[0].instrument: 'MOCA' is not in the instrument catalogue" in result.stderr
    assert "otrules' own code" in result.stderr and "99 is outside the range 1–10" in result.stderr
    run = CliRunner().invoke(main, ["run", "--fhir-codes", str(bad)])
    assert run.exit_code == 2


def test_a_fhir_feed_still_reads_the_feedback_otrules_serve_sends_to_it(engine):
    core, sink = core_for(engine, fmt="fhir")
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    fb = {"type": "feedback", "event_id": "fb-1", "patient_id": "p-1", "plan_id": "cp-1",
          "occurred_at": "2026-03-03T09:00:00Z", "recommendation_id": "nothing-open", "outcome": "accepted"}
    core.handle(Record(json.dumps(fb).encode(), "t", line=9))
    assert not sink.letters and core.tally.feedback_ignored == 1


# ---------------------------------------------------------------- retractions (contracts.md §1, §7)


def test_an_observation_resent_as_entered_in_error_retracts_the_score_and_closes_its_review(engine):
    """Issue 23, case 4: a mis-keyed MoCA 12 (for 26) raised a critical review; the EHR re-sends the
    Observation as entered-in-error, a new version: the score leaves the history, the review closes."""
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")),
         observation("o-1", {"valueInteger": 26}, "2026-03-09T10:00:00Z"),
         observation("o-2", {"valueInteger": 12}, "2026-03-16T10:00:00Z"))
    review = next(r for r in sink.recs if r.kind == "clinical_review" and r.status == "open")
    assert review.triggered_by == ["Observation/o-2/_history/1"]
    error = observation("o-2", {}, "2026-03-16T10:00:00Z", status="entered-in-error", version="2",
                        issued="2026-03-16T15:00:00Z")
    feed(core, error)
    closed = [r for r in sink.recs if r.status == "closed"]
    assert [(r.recommendation_id, r.closed_reason, r.closed_by) for r in closed] == [
        (review.recommendation_id, "retracted", "Observation/o-2/_history/2")]
    assert [p.score for s in patient(core.states).plans["cp-1"].series.values() for p in s.points] == [26]
    assert (core.tally.retracted, core.tally.retractions_ignored, core.tally.rejected) == (1, 0, 0)
    feed(core, observation("o-2", {}, "2026-03-16T10:00:00Z", status="entered-in-error", version="3"),
         observation("o-9", {}, "2026-03-16T10:00:00Z", status="entered-in-error"))
    assert (core.tally.retracted, core.tally.retractions_ignored) == (1, 2)  # already retracted; never seen
    assert core.tally.balanced


def test_one_observation_of_a_bundle_evaluation_is_retracted_alone(engine):
    """A Bundle's Observations of one time make one evaluation; entered-in-error on one of them takes
    back that score only."""
    core, _ = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    barthel = observation("o-b", {"valueQuantity": {"value": 60}}, "2026-03-16T10:00:00Z", code="96761-2")
    feed(core, bundle("collection", observation("o-m", {"valueInteger": 20}, "2026-03-16T10:00:00Z"), barthel))
    assert [e.event_id for e in core.events] == ["Observation/o-m/_history/1"]
    feed(core, observation("o-b", {}, "2026-03-16T10:00:00Z", code="96761-2", status="entered-in-error",
                           version="2"))
    series = patient(core.states).plans["cp-1"].series
    assert {k.split("\x1f")[0]: [p.score for p in s.points] for k, s in series.items()} == {"MoCA": [20]}
    assert core.tally.retracted == 1


def test_an_ehr_without_versions_can_still_mark_an_observation_entered_in_error(engine):
    core, _ = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    plain = observation("o-1", {"valueInteger": 20}, "2026-03-16T10:00:00Z")
    del plain["meta"]
    error = {**plain, "status": "entered-in-error"}
    feed(core, plain, error, error)
    assert (core.tally.retracted, core.tally.duplicates) == (1, 1)
    assert not patient(core.states).plans["cp-1"].series


# ---------------------------------------------------------------- FHIR as EHRs write it (issue 24)

US_CORE_CATEGORY = [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                                 "code": "assess-plan"}]}]


def us_core_plan(**extra) -> dict:
    """A US Core CarePlan: category assess-plan, no scheduledTiming; OT by its activity's code."""
    plan = careplan(category=US_CORE_CATEGORY, **extra)
    plan["activity"] = [{"detail": {"status": "in-progress", "code": OT_REGIME}}]
    return plan


def test_a_us_core_careplan_without_setting_or_timing_opens_an_outpatient_plan_of_unknown_frequency(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", us_core_plan(), goal("g-moca")))
    plan = patient(core.states).plans["cp-1"]
    assert (plan.setting, plan.frequency_per_week) == ("outpatient", None) and not sink.letters
    feed(core, observation("o-1", {"valueInteger": 20}, "2026-03-03T09:00:00Z"))
    assert not sink.letters and core.tally.processed == 3


def test_the_setting_comes_from_the_ot_encounters_class_and_the_frequency_from_a_service_request(engine):
    core, sink = core_for(engine)
    plan = us_core_plan()
    plan["activity"].append({"reference": {"reference": "ServiceRequest/sr-1"}})
    request = {"resourceType": "ServiceRequest", "id": "sr-1", "status": "active", "intent": "order",
               "subject": {"reference": P}, "code": OT_REGIME,
               "occurrenceTiming": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "wk"}}}
    visit = {"resourceType": "Encounter", "id": "enc-1", "status": "finished", "subject": {"reference": P},
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
             "type": OT_VISIT, "period": {"start": "2026-03-03T09:00:00Z"}}
    feed(core, bundle("transaction", plan, goal("g-moca"), request, visit))
    state = patient(core.states).plans["cp-1"]
    assert (state.setting, state.frequency_per_week, state.visits_attended) == ("home-health", 3, 1)
    assert not sink.letters


def test_care_that_is_not_ot_is_skipped_by_reason_never_a_visit_nor_a_dead_letter(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    primary = {"resourceType": "Encounter", "id": "enc-pc", "status": "finished", "subject": {"reference": P},
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185345009",
                                     "display": "Encounter for symptom"}]}],
               "period": {"start": "2026-03-03T09:00:00Z"}}
    dental = {**noshow("a-dental", "2026-03-04T09:00:00Z"),
              "serviceType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/service-type",
                                           "code": "88"}]}]}
    diabetes = {**careplan("cp-diabetes", goals=()), "category": US_CORE_CATEGORY, "activity": []}
    feed(core, bundle("collection", primary, dental, diabetes))
    plan = patient(core.states).plans["cp-1"]
    assert (plan.visits_attended, plan.visits_missed_in_a_row) == (0, 0) and "cp-diabetes" not in \
        patient(core.states).plans
    assert core.tally.skipped_by == {"not OT": 3} and not sink.letters and core.tally.balanced
    runner = CliRunner()
    text = "\n".join(json.dumps(d) for d in (bundle("transaction", careplan(), goal("g-moca")), primary, dental))
    result = runner.invoke(main, ["run", "--input", "-"], input=text)
    assert "+ skipped 2 (not OT 2)" in result.stderr, result.stderr


def test_a_dead_letter_carries_the_refused_entry_not_its_bundle(engine, tmp_path):
    big = [observation(f"hr-{i}", {"valueQuantity": {"value": 72}}, T0, "8867-4") for i in range(200)]
    bad = observation("o-bad", {"valueInteger": 45}, T0)
    doc = {**bundle("collection", *big, bad), "id": "b-7"}
    raw = json.dumps(doc)
    src = tmp_path / "in.ndjson"
    src.write_text(json.dumps(bundle("transaction", careplan(), goal("g-moca"))) + "\n" + raw + "\n")
    dead = tmp_path / "dead.jsonl"
    result = CliRunner().invoke(main, ["run", "--input", str(src), "--dlq", str(dead)])
    assert result.exit_code == 0, result.stderr
    (letter,) = [json.loads(x) for x in dead.read_text().splitlines()]
    assert json.loads(letter["original"])["id"] == "o-bad" and "outside the range" in letter["reason"]
    assert letter["fhir"] == {"bundle_id": "b-7", "bundle_type": "collection", "entry": 200}
    assert letter["line"] == 2 and letter["byte_offset"] == src.read_bytes().index(b"\n") + 1
    assert dead.stat().st_size < len(raw) / 20


def test_contained_goals_are_read_and_another_patients_goal_is_refused_with_a_reason(engine):
    core, sink = core_for(engine)
    plan = careplan(goals=())
    plan["contained"] = [{k: v for k, v in goal("goal").items() if k != "meta"}]
    plan["goal"] = [{"reference": "#goal"}]
    feed(core, plan)
    assert [g.instrument for g in patient(core.states).plans["cp-1"].goals.values()] == ["MoCA"]
    assert not sink.letters
    theirs = {**goal("g-x"), "subject": {"reference": "Patient/p-2"}}
    feed(core, bundle("transaction", careplan("cp-2", goals=("g-x",)), theirs))
    (_, rejection), = sink.letters
    assert rejection.field == "CarePlan.goal[0]" and "another patient's" in rejection.reason
    assert "cp-2" not in patient(core.states).plans


def test_gas_scores_join_their_goal_through_a_panel_that_names_it(engine):
    core, _ = core_for(engine)
    gas_goal = goal("g-gas", "107332-9", target={})
    feed(core, bundle("transaction", careplan(goals=("g-gas",)), gas_goal))
    score = observation("o-lvl", {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA34483-0"}]}},
                        T0, "107334-5")
    panel = {"resourceType": "Observation", "id": "o-panel", "status": "final", "subject": {"reference": P},
             "code": {"text": "GAS follow-up"}, "focus": [{"reference": "Goal/g-gas"}],
             "hasMember": [{"reference": "Observation/o-lvl"}], "effectiveDateTime": T0}
    feed(core, bundle("collection", panel, score))
    event: Any = core.events[-1]
    assert (event.measures[0].goal_id, event.measures[0].score) == ("g-gas", -1)


@pytest.mark.parametrize(("resource", "path"), [
    (careplan(goal=5, version="9"), "CarePlan.goal"),
    ({**noshow("a", T0), "participant": 5}, "Appointment.participant"),
    (observation("o", {"valueInteger": "5"}, T0), "Observation.valueInteger"),
    (observation("o", {"valueQuantity": 20}, T0), "Observation.valueQuantity"),
    ({**goal("g-x"), "id": "g x"}, "Goal.id"),
])
def test_by_default_what_the_mapping_reads_is_type_checked_without_fhir_resources(engine, resource, path):
    sink = Collect()
    core = EventCore(engine, PatientStates(), sink, Fault.ISOLATE, fhir=make_mapper(engine.catalogue))
    assert not core._fhir or not core._fhir.validate
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    feed(core, bundle("collection", resource, observation("o-after", {"valueInteger": 21}, "2026-04-01T09:00:00Z")))
    assert [r.field for _, r in sink.letters] == [path]
    assert "Observation/o-after/_history/1" in [e.event_id for e in core.events] and core.tally.balanced


def test_a_visit_is_ot_by_its_performers_role_or_by_the_plan_naming_it(engine):
    core, sink = core_for(engine)
    plan = careplan()
    plan["activity"].append({"reference": {"reference": "Appointment/a-planned"}})
    feed(core, bundle("transaction", plan, goal("g-moca")))
    role = {"resourceType": "PractitionerRole", "id": "ot-role", "practitioner": {"reference": "Practitioner/ot-9"},
            "code": [{"coding": [{"system": "http://nucc.org/provider-taxonomy", "code": "225X00000X"}]}]}
    by_role = {"resourceType": "Encounter", "id": "enc-role", "status": "finished", "subject": {"reference": P},
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "participant": [{"individual": {"reference": "PractitionerRole/ot-role"}}],
               "period": {"start": "2026-03-03T09:00:00Z"}}
    feed(core, bundle("collection", role, by_role))
    named = {**noshow("a-planned", "2026-03-05T09:00:00Z")}
    del named["serviceType"]
    feed(core, named)
    state = patient(core.states).plans["cp-1"]
    assert (state.visits_attended, state.visits_missed_in_a_row) == (1, 1) and not sink.letters
    assert core.tally.skipped_by == {"other type": 1}


def test_an_element_fhir_does_not_have_is_named_in_the_dead_letter_only_never_on_stderr(tmp_path):
    # a key of the feed is feed text (a name, an MRN): stderr, logs and the otrules.field header show
    # the field, which says (unknown element); the reason in the dead letter quotes the key
    phi, phi2 = "Jane Doe MRN 12345 DOB 1950-01-01", "Smith, John SSN 123-45-6789"
    extra = {**observation("o-1", {"valueInteger": 20}, T0), phi: 1}
    nested = observation("o-2", {"valueInteger": 20}, T0)
    nested["code"]["coding"][0][phi2] = "x"
    src = tmp_path / "in.ndjson"
    src.write_text("\n".join(json.dumps(d) for d in (bundle("transaction", careplan(), goal("g-moca")), extra,
                                                      nested)) + "\n")
    dead = tmp_path / "dead.jsonl"
    result = CliRunner().invoke(main, ["run", "--input", str(src), "--dlq", str(dead), "--fhir-validation", "full"])
    assert result.exit_code == 0, result.stderr
    assert phi not in result.stderr and "MRN" not in result.stderr and "SSN" not in result.stderr
    assert "rejected: Observation.(unknown element)" in result.stderr
    assert "rejected: Observation.code.coding.(unknown element)" in result.stderr
    letters = [json.loads(x) for x in dead.read_text().splitlines()]
    assert [x["field"] for x in letters] == ["Observation.(unknown element)",
                                            "Observation.code.coding.(unknown element)"]
    assert phi in letters[0]["reason"] and phi2 in letters[1]["reason"]


@pytest.mark.parametrize("validation", ["mapped", "full"])
def test_an_r4_encounter_service_type_is_one_codeable_concept_not_a_list(engine, validation):
    # R4 Encounter.serviceType is 0..1 CodeableConcept (a list only in R5); Appointment.serviceType is a list
    sink = Collect()
    core = EventCore(engine, PatientStates(), sink, Fault.ISOLATE,
                     fhir=make_mapper(engine.catalogue, validation=validation))
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    visit = {"resourceType": "Encounter", "id": "enc-st", "status": "finished", "subject": {"reference": P},
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "serviceType": OT_SERVICE[0], "period": {"start": "2026-03-03T09:00:00Z"}}
    feed(core, visit)
    assert patient(core.states).plans["cp-1"].visits_attended == 1 and not sink.letters
    feed(core, {**visit, "id": "enc-r5", "serviceType": OT_SERVICE})
    [(_, refused)] = sink.letters
    assert refused.field.startswith("Encounter.serviceType"), refused.reason
    assert patient(core.states).plans["cp-1"].visits_attended == 1 and core.tally.balanced


@pytest.mark.parametrize("validation", ["mapped", "full"])
@pytest.mark.parametrize(("value", "path"), [
    ({"valueInteger": 27, "valueQuantity": {"value": 10}}, "Observation.value[x]"),
    ({"valueInteger": 27, "effectivePeriod": {"start": "2026-03-01T09:00:00Z"}}, "Observation.effective[x]"),
])
def test_two_forms_of_one_choice_element_are_refused_not_one_picked(engine, validation, value, path):
    sink = Collect()
    core = EventCore(engine, PatientStates(), sink, Fault.ISOLATE,
                     fhir=make_mapper(engine.catalogue, validation=validation))
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    feed(core, observation("o-two", value, T0))
    [(_, refused)] = sink.letters
    if validation == "mapped":  # full: fhir.resources refuses it first, in its own words
        assert refused.field == path, refused.reason
    assert not [e for e in core.events if e.type == "evaluation"] and core.tally.balanced


def test_an_episode_of_another_service_in_the_ot_plans_transaction_is_not_the_ot_plans(engine):
    core, sink = core_for(engine)
    cardio_type = [{"coding": [{"system": "http://snomed.info/sct", "code": "394579002", "display": "Cardiology"}]}]
    episode = {"resourceType": "EpisodeOfCare", "id": "eoc-cardio", "status": "active", "patient": {"reference": P},
               "type": cardio_type}
    untyped = {**episode, "id": "eoc-plain"}
    del untyped["type"]
    feed(core, bundle("transaction", careplan(), goal("g-moca"), episode))
    ended = {**episode, "meta": {"versionId": "2"}, "status": "finished",
             "period": {"start": "2026-03-01", "end": "2026-03-05"}}
    feed(core, ended)
    assert not patient(core.states).plans["cp-1"].discharged and not sink.letters
    assert core.tally.skipped_by == {"episode not linked": 2}
    # one that names no service, sent with the plan, is the plan's (as is one an OT Encounter names)
    feed(core, bundle("transaction", careplan(version="2"), untyped))
    feed(core, {**untyped, "meta": {"versionId": "2"}, "status": "finished",
                "period": {"start": "2026-03-01", "end": "2026-03-05"}})
    assert patient(core.states).plans["cp-1"].discharged and core.tally.balanced


def test_a_dead_letter_file_is_never_larger_than_its_input(tmp_path):
    # 3,000 small refused entries of one Bundle: compact letters, then letters without their resource
    # (size and SHA-256 instead), then the rest of the line as one grouped letter
    bad = [{**observation(f"x{i}", {}, T0), "meta": {}} for i in range(3000)]
    # a Bundle over the entry limit is refused whole: its letter keeps 64 KiB of it, with size and hash
    big = json.dumps({"resourceType": "Bundle", "type": "collection",
                      "entry": [{"resource": {"resourceType": "Basic", "id": f"b{i}"}} for i in range(10_001)]})
    text = "\n".join([json.dumps(bundle("transaction", careplan(), goal("g-moca"))),
                      json.dumps(bundle("collection", *bad)), big]) + "\n"
    src = tmp_path / "in.ndjson"
    src.write_text(text)
    dead = tmp_path / "dead.jsonl"
    result = CliRunner().invoke(main, ["run", "--input", str(src), "--dlq", str(dead)])
    assert result.exit_code == 0, result.stderr
    assert "rejected 3001" in result.stderr, result.stderr
    letters = [json.loads(x) for x in dead.read_text().splitlines()]
    assert dead.stat().st_size <= src.stat().st_size
    of_bundle = [x for x in letters if x["line"] == 2]
    assert json.loads(of_bundle[0]["original"])["id"] == "x0" and "original" not in of_bundle[-1]
    grouped = of_bundle[-1]
    assert grouped["last_entry"] == 2999 and grouped["field"] == "Observation.value[x]"
    assert sum(x.get("count", 1) for x in of_bundle) == 3000
    [whole] = [x for x in letters if x["line"] == 3]
    assert whole["field"] == "Bundle.entry" and whole["original_truncated"]
    assert whole["original_size"] == len(big) and len(whole["original"]) == 64 * 1024
    assert whole["original_sha256"] == hashlib.sha256(big.encode()).hexdigest()


def test_a_repeated_key_in_one_entry_refuses_that_entry_not_its_bundle(engine):
    core, sink = core_for(engine)
    feed(core, bundle("transaction", careplan(), goal("g-moca")))
    doc = bundle("collection", *[observation(f"o-{i}", {"valueInteger": 20 + i}, f"2026-03-1{i}T09:00:00Z")
                                 for i in range(3)])
    text = json.dumps(doc).replace('"valueInteger": 21', '"valueInteger": 21, "valueInteger": 5', 1)
    core.handle(Record(text.encode(), "t", line=2))
    [(record, refused)] = sink.letters
    assert refused.field == "(repeated key)" and '"valueInteger"' in refused.reason
    assert record.fhir is not None and record.fhir["entry"] == 1 and json.loads(record.raw)["id"] == "o-1"
    assert core.tally.processed == 4 and core.tally.balanced
    # a key the Bundle itself repeats still refuses the line
    core.handle(Record(json.dumps(doc).replace('"type": "collection"', '"type": "collection", "type": "batch"')
                       .encode(), "t", line=3))
    assert sink.letters[-1][1].field == "(repeated key)" and sink.letters[-1][0].fhir is None


def test_a_gas_score_derived_from_one_on_an_earlier_line_joins_the_goal_that_one_focused_on(engine):
    core, _ = core_for(engine)
    gas = [goal(g, "107332-9", target={"detailCodeableConcept": {"text": "expected"}}) for g in ("g-a", "g-b")]
    feed(core, bundle("transaction", careplan(goals=("g-a", "g-b")), *gas))
    level = {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA34480-6"}]}}
    goals = []
    # two GAS goals: the plan's one goal on the measure cannot say which; s-1's focus, kept, does
    for score in (observation("s-1", level, T0, "107333-7", focus=[{"reference": "Goal/g-b"}]),
                  observation("s-2", level, "2026-03-20T09:00:00Z", "107333-7",
                              derivedFrom=[{"reference": "Observation/s-1"}]),
                  observation("s-3", level, "2026-03-25T09:00:00Z", "107333-7",
                              derivedFrom=[{"reference": "Observation/s-2"}])):
        feed(core, score)
        goals += [e.measures[0].goal_id for e in core.events if e.type == "evaluation"]
    assert goals == ["g-b", "g-b", "g-b"]
    assert len((patient(core.states).fhir or {})["outcomes"]) <= 256


def test_a_careplan_goal_by_identifier_or_unreadable_reference_is_left_out_and_counted(engine):
    core, sink = core_for(engine)
    plan = careplan(goals=("g-moca",))
    plan["goal"] += [{"identifier": {"system": "http://ehr.example/goals", "value": "g-77"}},
                     {"reference": "Goal/" + "a" * 10000}]
    feed(core, bundle("transaction", plan, goal("g-moca")))
    assert not sink.letters and list(patient(core.states).plans["cp-1"].goals) == ["g-moca"]
    assert core.tally.unfollowed == {"goal by identifier": 1, "goal reference unreadable": 1}
    text = json.dumps(bundle("transaction", plan, goal("g-moca")))
    result = CliRunner().invoke(main, ["run", "--input", "-"], input=text)
    assert "references not followed 2 (goal by identifier 1, goal reference unreadable 1)" in result.stderr
    assert "rejected 0" in result.stderr and "a" * 100 not in result.stderr


def test_a_link_or_a_goal_does_not_make_care_typed_as_another_service_ot(engine):
    core, sink = core_for(engine)
    episode = {"resourceType": "EpisodeOfCare", "id": "eoc-ot", "status": "active", "patient": {"reference": P}}
    feed(core, bundle("transaction", careplan(), goal("g-moca"), episode))
    linked = {"resourceType": "Encounter", "id": "enc-x", "status": "finished", "subject": {"reference": P},
              "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
              "period": {"start": "2026-03-03T09:00:00Z"}, "episodeOfCare": [{"reference": "EpisodeOfCare/eoc-ot"}],
              "basedOn": [{"reference": "CarePlan/cp-1"}]}
    check_up = {**linked, "id": "enc-pcp",  # SNOMED CT 185349003 Encounter for check up
                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}]}]}
    feed(core, check_up)
    assert patient(core.states).plans["cp-1"].visits_attended == 0 and core.tally.skipped_by == {"not OT": 1}
    feed(core, linked)  # the same links and no type: the OT plan's visit
    assert patient(core.states).plans["cp-1"].visits_attended == 1
    # a physical therapy plan (SNOMED CT 91251008 Physical therapy procedure) with a Barthel goal
    pt_goal = goal("g-barthel", "96761-2", target={"detailInteger": 90})
    pt_plan = careplan("cp-pt", goals=("g-barthel",))
    pt_plan["activity"][0]["detail"]["code"] = {"coding": [{"system": "http://snomed.info/sct", "code": "91251008"}]}
    feed(core, bundle("transaction", pt_plan, pt_goal))
    assert "cp-pt" not in patient(core.states).plans and not sink.letters and core.tally.balanced
    # US Core's assess-plan category and a setting name no service: the goal makes that plan OT
    us_core = careplan("cp-us", goals=("g-barthel",), activity=[], category=[
        {"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "code": "assess-plan"}]},
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}]}])
    feed(core, bundle("transaction", us_core, {**pt_goal, "meta": {"versionId": "2"}}))
    assert "cp-us" in patient(core.states).plans


def test_a_careplan_ot_by_its_goals_opens_when_they_come_on_later_lines_as_bulk_data_orders_them(engine):
    # Bulk Data $export writes CarePlan.ndjson before Goal.ndjson: the plan names no service and no Goal
    # otrules has seen yet; it is kept (bounded) and opens when its Goal on the MoCA arrives
    core, sink = core_for(engine)
    plan = careplan(activity=[])
    del plan["category"]
    feed(core, plan)
    assert "cp-1" not in patient(core.states).plans and core.tally.processed == 1
    feed(core, goal("g-moca"))
    state = patient(core.states).plans["cp-1"]
    assert list(state.goals) == ["g-moca"] and state.setting == "outpatient"
    plan_events = [e for e in core.events if e.type == "plan"]
    assert [e.event_id for e in plan_events] == ["CarePlan/cp-1/_history/1"]
    feed(core, plan, goal("g-moca"))  # both sent again: duplicates
    assert core.tally.duplicates == 2 and not sink.letters and core.tally.balanced
    # one that names another service (physical therapy) is never kept for its goals
    pt = {**careplan("cp-pt", goals=("g-2",)), "category": [
        {"coding": [{"system": "http://snomed.info/sct", "code": "91251008"}]}], "activity": []}
    feed(core, pt, goal("g-2"))
    assert "cp-pt" not in patient(core.states).plans and core.tally.skipped_by == {"not OT": 1}
    assert len((patient(core.states).fhir or {}).get("candidates", {})) <= 4
