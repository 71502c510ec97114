"""Tests of otrules.synthetic_fhir: the synthetic event stream written as FHIR R4 NDJSON.

The conventions it follows (one line per native event, a Patient before each patient's first
event, which resource each event becomes) are checked line by line against the native events,
and the whole stream against the HAPI FHIR validator."""

import copy
import datetime as dt
import io
import itertools
import json
import re
from collections import Counter, defaultdict

import pytest

from conftest import Story, goal
from fhir_validator_support import errors
from otrules import defaults, synthetic
from otrules.schemas.fhir_codes import InstrumentCode
from otrules.synthetic_fhir import GOAL_BASELINE, GOAL_GAS_WEIGHT, load_code_table, to_fhir, write_ndjson

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
URN_UUID = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
# Independent of the catalogue: instruments whose scores are whole numbers (Barthel-100 in steps of 5)
INTEGER = {"GAS", "FIM-motor", "FIM-total", "FIM-cognitive", "Barthel-100", "Barthel-20", "BBT",
           "AMPAC-daily-activity", "MoCA", "Lawton-IADL", "Katz-ADL"}
# Goal.target uses detailInteger for these only (the catalogue's `integer`), not for Barthel-100's steps of 5
INTEGER_FLAGGED = INTEGER - {"Barthel-100"}
GAS_ANSWERS = {"LA34479-8": 2, "LA34480-6": 1, "LA34481-4": 0, "LA34483-0": -1, "LA34484-8": -2}
ENCOUNTER_CLASS = {"outpatient": "AMB", "school": "AMB", "home-health": "HH", "inpatient-rehab": "IMP",
                   "skilled-nursing": "NONAC", "acute": "ACUTE"}
TOP_LEVEL = {"Patient", "Bundle", "Encounter", "Appointment"}
IN_BUNDLES = {"CarePlan", "Goal", "Observation", "EpisodeOfCare"}


@pytest.fixture(scope="module")
def events():
    return list(synthetic.generate(patients=40, seed=7))


@pytest.fixture(scope="module")
def lines(events):
    return list(to_fhir(events))


def ndjson(events) -> str:
    out = io.StringIO()
    write_ndjson(out, to_fhir(events))
    return out.getvalue()


def paired(events, lines):
    """(native event, its FHIR line) for every event; Patient lines checked on the way."""
    seen: set[str] = set()
    it = iter(lines)
    for event in events:
        line = next(it)
        if event["patient_id"] not in seen:
            seen.add(event["patient_id"])
            assert line["resourceType"] == "Patient", (event["event_id"], line["resourceType"])
            assert line == {"resourceType": "Patient", "id": event["patient_id"],
                            "meta": {"versionId": "1", "lastUpdated": event["occurred_at"]}, "active": True}
            line = next(it)
        assert line["resourceType"] != "Patient", event["event_id"]
        yield event, line
    assert next(it, None) is None, "more lines than events and patients"


def resources(line):
    """The resources a line holds: the line itself, or a Bundle's entries."""
    if line["resourceType"] == "Bundle":
        return [entry["resource"] for entry in line["entry"]]
    return [line]


def walk(value, path="$"):
    """Every (path, value) inside a JSON value, the value itself included."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from walk(item, f"{path}[{i}]")


def empties(value):
    """Paths of the values FHIR JSON forbids: null, empty strings, lists and objects."""
    return [path for path, item in walk(value) if item is None or item in ("", [], {})]


def observations(line):
    return [entry["resource"] for entry in line["entry"]]


# --- the stream as a whole ---------------------------------------------------------

def test_same_events_give_byte_identical_output():
    first = ndjson(synthetic.generate(patients=40, seed=7))
    assert first == ndjson(synthetic.generate(patients=40, seed=7))
    assert first != ndjson(synthetic.generate(patients=40, seed=8))


def test_the_bundled_sample_converts_to_the_same_bytes(events):
    with open(defaults.SAMPLE_STREAM, encoding="utf-8") as f:
        sample = [json.loads(line) for line in f]
    assert ndjson(sample) == ndjson(events)


def test_conversion_streams():
    """Lines come as events do: a stream of a billion events gives its first lines at once."""
    first = list(itertools.islice(to_fhir(synthetic.generate(events=10**9, seed=1)), 200))
    assert len(first) == 200 and first[0]["resourceType"] == "Patient"


def test_the_given_code_table_is_used():
    table = load_code_table()
    local = table.model_copy(update={"instruments": [
        InstrumentCode(system="http://hospital.example/flowsheet", code="4711", display="COPM perf",
                       instrument="COPM-performance"), *table.instruments]})
    story = Story().plan(0, goals=[goal("g1", "COPM-performance", 3, 7)]).evaluation(1, ("COPM-performance", 4.5, "g1"))
    lines = list(to_fhir(story.events, codes=local))
    coding = {"system": "http://hospital.example/flowsheet", "code": "4711", "display": "COPM perf"}
    assert resources(lines[1])[0]["target"][0]["measure"] == {"coding": [coding]}
    assert observations(lines[2])[0]["code"] == {"coding": [coding]}


def test_write_ndjson_writes_one_compact_object_per_line(lines):
    out = io.StringIO()
    assert write_ndjson(out, lines) == len(lines)
    text = out.getvalue()
    assert text.endswith("\n")
    written = text.split("\n")[:-1]
    assert len(written) == len(lines)
    for raw, line in zip(written, lines, strict=True):
        assert json.loads(raw) == line
        assert raw == json.dumps(line, separators=(",", ":"))


def test_one_line_per_event_plus_one_patient_line_per_patient(events, lines):
    patients = {event["patient_id"] for event in events}
    assert len(patients) == 40
    assert len(lines) == len(events) + len(patients)
    assert sum(1 for _ in paired(events, lines)) == len(events)


def test_each_event_becomes_the_resource_of_its_type(events, lines):
    expected = {("plan", None): ("Bundle", "transaction"), ("evaluation", None): ("Bundle", "collection"),
                ("discharge", None): ("Bundle", "transaction"), ("visit", "attended"): ("Encounter", "finished"),
                ("visit", "missed"): ("Appointment", "noshow"), ("visit", "cancelled"): ("Appointment", "cancelled")}
    seen: Counter[object] = Counter()
    for event, line in paired(events, lines):
        key = (event["type"], event.get("status"))
        got = (line["resourceType"], line["type"] if line["resourceType"] == "Bundle" else line["status"])
        assert got == expected[key], event["event_id"]
        seen[key] += 1
    assert set(seen) == set(expected), "the sample should hold every kind of event"


def test_resource_types_are_exactly_the_agreed_ones(lines):
    top = {line["resourceType"] for line in lines}
    inner = {entry["resource"]["resourceType"] for line in lines if line["resourceType"] == "Bundle"
             for entry in line["entry"]}
    assert top == TOP_LEVEL
    assert inner == IN_BUNDLES
    assert {line["type"] for line in lines if line["resourceType"] == "Bundle"} == {"transaction", "collection"}


def test_no_null_and_no_empty_value_anywhere(lines):
    for line in lines:
        assert empties(line) == [], (line.get("id"), empties(line))


def test_the_empty_value_checker_finds_each_kind():
    assert empties({"a": None, "b": [], "c": {}, "d": "", "e": [{"f": ""}], "g": 0, "h": False}) == \
        ["$.a", "$.b", "$.c", "$.d", "$.e[0].f"]


def test_ids_are_valid_fhir_ids(lines):
    for line in lines:
        for path, item in walk(line):
            if path.endswith(".id") or path == "$.id":
                assert isinstance(item, str) and FHIR_ID.match(item), (path, item)
            if path.endswith(".reference"):
                rtype, _, rid = item.partition("/")
                assert rtype in {"Patient", "Goal", "CarePlan", "Practitioner", "EpisodeOfCare"}, item
                assert FHIR_ID.match(rid), item


def test_every_patient_reference_names_the_events_patient(events, lines):
    for event, line in paired(events, lines):
        refs = [item for path, item in walk(line) if path.endswith(".reference") and item.startswith("Patient/")]
        assert refs, event["event_id"]
        assert set(refs) == {f"Patient/{event['patient_id']}"}, event["event_id"]


def test_full_urls_are_uuids_unique_in_their_bundle(lines):
    for line in lines:
        if line["resourceType"] == "Bundle":
            urls = [entry["fullUrl"] for entry in line["entry"]]
            assert all(URN_UUID.match(url) for url in urls), urls
            assert len(set(urls)) == len(urls)
            for entry in line["entry"]:
                if line["type"] == "transaction":
                    resource = entry["resource"]
                    assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
                else:
                    assert "request" not in entry


def test_a_full_url_names_one_version_of_one_patients_resource(events, lines):
    """Goal ids (g1, g2, ...) repeat across patients: their fullUrls must not."""
    owner: dict[str, tuple[str, str, str, str]] = {}
    for event, line in paired(events, lines):
        if line["resourceType"] == "Bundle":
            for entry in line["entry"]:
                r = entry["resource"]
                key = (event["patient_id"], r["resourceType"], r["id"], r["meta"]["versionId"])
                assert owner.setdefault(entry["fullUrl"], key) == key, entry["fullUrl"]
    goal_ones = {url for url, key in owner.items() if key[1:] == ("Goal", "g1", "1")}
    assert len(goal_ones) == 40


def test_meta_says_version_and_time_of_the_event(events, lines):
    for event, line in paired(events, lines):
        for resource in resources(line):
            assert resource["meta"]["lastUpdated"] == event["occurred_at"], event["event_id"]


# --- plans and discharges ---------------------------------------------------------

def test_care_plan_versions_increase_one_by_one(events, lines):
    versions = defaultdict(list)
    eoc_versions = defaultdict(list)
    for _, line in paired(events, lines):
        for resource in resources(line):
            if resource["resourceType"] == "CarePlan":
                versions[resource["id"]].append(int(resource["meta"]["versionId"]))
            if resource["resourceType"] == "EpisodeOfCare":
                eoc_versions[resource["id"]].append(int(resource["meta"]["versionId"]))
    assert len(versions) == 40
    assert any(len(v) > 2 for v in versions.values()), "some plan should be recertified and discharged"
    for plan_id, got in versions.items():
        assert got == list(range(1, len(got) + 1)), plan_id
        assert eoc_versions[f"eoc-{plan_id}"] in ([1], [1, 2]), plan_id


def test_a_plan_event_becomes_goals_a_care_plan_and_once_an_episode(events, lines):
    snapshots: defaultdict[str, int] = defaultdict(int)
    for event, line in paired(events, lines):
        if event["type"] != "plan":
            continue
        snapshots[event["plan_id"]] += 1
        n = snapshots[event["plan_id"]]
        kinds = [r["resourceType"] for r in resources(line)]
        assert kinds == ["Goal"] * len(event["goals"]) + ["CarePlan"] + (["EpisodeOfCare"] if n == 1 else [])
        by_type = {r["resourceType"]: r for r in resources(line)}
        plan = by_type["CarePlan"]
        assert plan["id"] == event["plan_id"] and plan["meta"]["versionId"] == str(n)
        assert (plan["status"], plan["intent"]) == ("active", "plan")
        assert plan["period"] == {"start": event["certified_from"], "end": event["certified_until"]}
        assert plan["goal"] == [{"reference": f"Goal/{g['goal_id']}"} for g in event["goals"]]
        assert plan["activity"][0]["detail"]["scheduledTiming"]["repeat"] == {
            "frequency": event["frequency_per_week"], "period": 1, "periodUnit": "wk"}
        if n == 1:
            assert plan["created"] == event["occurred_at"]
            eoc = by_type["EpisodeOfCare"]
            assert eoc["id"] == f"eoc-{event['plan_id']}" and eoc["status"] == "active"
            assert eoc["period"] == {"start": event["occurred_at"]}
        for native, fhir in zip(event["goals"], resources(line), strict=False):
            assert fhir["id"] == native["goal_id"] and fhir["meta"]["versionId"] == str(n)
            assert fhir["description"] == {"text": native["description"]}
            extension = {e["url"]: e["valueDecimal"] for e in fhir["extension"]}
            assert extension == {GOAL_BASELINE: native["baseline"], GOAL_GAS_WEIGHT: native["gas_weight"]}
            (target,) = fhir["target"]
            assert target["dueDate"] == native["target_date"]
            if native["instrument"] in INTEGER_FLAGGED:
                assert target["detailInteger"] == native["target"] and type(target["detailInteger"]) is int
            else:
                assert target["detailQuantity"] == {"value": native["target"]}
                assert type(target["detailQuantity"]["value"]) is type(native["target"])


def test_a_discharge_completes_the_last_care_plan_and_finishes_the_episode(events, lines):
    last_plan: dict[str, dict] = {}
    first_at: dict[str, str] = {}
    discharges = 0
    for event, line in paired(events, lines):
        if event["type"] == "plan":
            last_plan[event["plan_id"]] = next(r for r in resources(line) if r["resourceType"] == "CarePlan")
            first_at.setdefault(event["plan_id"], event["occurred_at"])
        if event["type"] != "discharge":
            continue
        discharges += 1
        plan, eoc = resources(line)
        before = last_plan[event["plan_id"]]
        expected = copy.deepcopy(before)
        expected["status"] = "completed"
        expected["meta"] = {"versionId": str(int(before["meta"]["versionId"]) + 1),
                            "lastUpdated": event["occurred_at"]}
        assert plan == expected
        assert eoc == {"resourceType": "EpisodeOfCare", "id": f"eoc-{event['plan_id']}",
                       "meta": {"versionId": "2", "lastUpdated": event["occurred_at"]}, "status": "finished",
                       "patient": {"reference": f"Patient/{event['patient_id']}"},
                       "period": {"start": first_at[event["plan_id"]], "end": event["occurred_at"]}}
    assert discharges > 30


def test_a_plan_without_goals_or_visits_leaves_those_out():
    story = Story().plan(0, goals=[], frequency=0).visit(1).discharge(5)
    lines = list(to_fhir(story.events))
    assert empties(lines) == []
    plan = next(r for r in resources(lines[1]) if r["resourceType"] == "CarePlan")
    assert "goal" not in plan and "activity" not in plan
    assert lines[2]["class"]["code"] == "AMB"


def test_recertified_goals_share_the_plans_version():
    story = Story().plan(0, goals=[goal("g1", "BBT", 20, 30.0, 40)]).plan(30, goals=[goal("g1", "BBT", 20, 31, 80)])
    _, first, second = to_fhir(story.events)
    assert [r["meta"]["versionId"] for r in resources(second)] == ["2", "2"]
    assert resources(first)[0]["target"][0]["detailInteger"] == 30  # a whole float of an integer instrument
    assert type(resources(first)[0]["target"][0]["detailInteger"]) is int


# --- evaluations -----------------------------------------------------------------------

def test_one_observation_per_measure_in_order(events, lines):
    codes = load_code_table()
    for event, line in paired(events, lines):
        if event["type"] != "evaluation":
            continue
        found = observations(line)
        assert len(found) == len(event["measures"])
        kind = codes.kind_coding(event["kind"])
        for i, (measure, obs) in enumerate(zip(event["measures"], found, strict=True), 1):
            assert obs["id"] == f"{event['event_id']}-{i}"
            assert obs["status"] == "final"
            assert obs["effectiveDateTime"] == event["occurred_at"]
            assert obs["basedOn"] == [{"reference": f"CarePlan/{event['plan_id']}"}]
            assert obs["performer"] == [{"reference": f"Practitioner/{event['clinician_id']}"}]
            assert obs["category"][1] == {"coding": [{"system": kind[0], "code": kind[1]}]}
            coding = codes.coding_for(measure["instrument"])
            assert obs["code"]["coding"][0]["code"] == coding.code
            read_back = codes.instrument_of(coding.system, coding.code)
            assert read_back is not None and read_back.instrument == measure["instrument"]


def test_focus_names_the_goal_exactly_when_the_measure_has_one(events, lines):
    with_goal = without = 0
    for event, line in paired(events, lines):
        if event["type"] == "evaluation":
            for measure, obs in zip(event["measures"], observations(line), strict=True):
                if "goal_id" in measure:
                    with_goal += 1
                    assert obs["focus"] == [{"reference": f"Goal/{measure['goal_id']}"}]
                else:
                    without += 1
                    assert "focus" not in obs
    assert with_goal and without, "the sample should hold both"


def test_scores_keep_their_number_and_type(events, lines):
    seen: Counter[object] = Counter()
    for event, line in paired(events, lines):
        if event["type"] != "evaluation":
            continue
        for measure, obs in zip(event["measures"], observations(line), strict=True):
            value_keys = [key for key in obs if key.startswith("value")]
            instrument, score = measure["instrument"], measure["score"]
            if instrument == "GAS":
                assert value_keys == ["valueCodeableConcept"]
                (coding,) = obs["valueCodeableConcept"]["coding"]
                assert coding["system"] == "http://loinc.org" and coding["code"].startswith("LA")
                assert GAS_ANSWERS[coding["code"]] == score
                assert obs["code"]["coding"][0]["system"] == "http://loinc.org"
            elif instrument in INTEGER:
                assert value_keys == ["valueInteger"], instrument
                assert obs["valueInteger"] == score and type(obs["valueInteger"]) is int
            else:
                assert value_keys == ["valueQuantity"], instrument
                assert obs["valueQuantity"]["value"] == score
                assert type(obs["valueQuantity"]["value"]) is type(score)
            seen[value_keys[0]] += 1
    assert set(seen) == {"valueCodeableConcept", "valueInteger", "valueQuantity"}


def test_quantities_carry_the_code_tables_unit():
    story = Story().plan(0, goals=[goal("g1", "grip-kg", 10, 20)]).evaluation(
        1, ("grip-kg", 12.5, "g1"), ("NHPT", 240.1), ("COPM-performance", 6), ("Barthel-100", 40))
    obs = observations(list(to_fhir(story.events))[2])
    assert obs[0]["valueQuantity"] == {"value": 12.5, "unit": "kg", "system": "http://unitsofmeasure.org",
                                       "code": "kg"}
    assert obs[1]["valueQuantity"] == {"value": 240.1, "unit": "s", "system": "http://unitsofmeasure.org",
                                       "code": "s"}
    assert obs[2]["valueQuantity"] == {"value": 6}  # no units in the table: the number alone, int stays int
    assert obs[3]["valueInteger"] == 40  # Barthel-100: steps of 5


def test_a_gas_score_with_no_answer_code_is_refused():
    story = Story().plan(0, goals=[goal("g1", "BBT", 20, 30)]).evaluation(1, ("GAS", 0.5, "g1"))
    with pytest.raises(ValueError, match=r"GAS score 0\.5"):
        list(to_fhir(story.events))


# --- visits --------------------------------------------------------------------------------

def test_visits_become_encounters_and_appointments(events, lines):
    settings = {}
    for event, line in paired(events, lines):
        if event["type"] == "plan":
            settings[event["plan_id"]] = event["setting"]
        if event["type"] != "visit":
            continue
        assert line["id"] == event["event_id"]
        if event["status"] == "attended":
            assert line["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                     "code": ENCOUNTER_CLASS[settings[event["plan_id"]]]}
            assert line["period"] == {"start": event["occurred_at"]}
            assert line["episodeOfCare"] == [{"reference": f"EpisodeOfCare/eoc-{event['plan_id']}"}]
        else:
            start = dt.datetime.fromisoformat(line["start"])
            assert line["start"] == event["occurred_at"] and line["end"].endswith("Z")
            assert dt.datetime.fromisoformat(line["end"]) - start == dt.timedelta(minutes=45)
            assert line["participant"] == [{"actor": {"reference": f"Patient/{event['patient_id']}"},
                                            "status": "accepted"}]


def test_a_visit_of_an_unknown_plan_is_refused():
    story = Story().visit(1)
    with pytest.raises(ValueError, match="no plan event"):
        list(to_fhir(story.events))


def test_an_id_fhir_cannot_hold_is_refused():
    story = Story(patient="p_1").plan(0)
    with pytest.raises(ValueError, match="patient_id 'p_1' cannot be a FHIR id"):
        list(to_fhir(story.events))


# --- an independent check -----------------------------------------------------------------

@pytest.mark.slow
def test_the_hapi_fhir_validator_finds_no_error(fhir_validator, lines):
    """The 40-patient sample (the bundled stream) against HAPI FHIR's R4 instance validator."""
    results = fhir_validator(lines)
    assert [(r["resourceType"], r["id"]) for r in results] == [(line["resourceType"], line["id"]) for line in lines]
    found = [(r["line"], r["resourceType"], r["id"], issue) for r in results for issue in errors(r)]
    assert found == [], f"{len(found)} errors, the first: {found[:5]}"
