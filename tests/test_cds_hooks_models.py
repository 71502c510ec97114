"""CDS Hooks 2.0 documents: requests and feedback read strictly, cards sent without null or empty values,
and `problems`, the independent check of documents, catching each rule."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from otrules.schemas.cds_hooks import (
    AcceptedSuggestion,
    Action,
    BadRequest,
    Card,
    CardsResponse,
    Coding,
    Discovery,
    FeedbackItem,
    Link,
    Service,
    Source,
    Suggestion,
    parse_feedback,
    parse_request,
    problems,
)

UUID1 = "9368d37b-283f-44a0-93ea-547cebab93ed"
UUID2 = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
PATIENT = "p-secret-1288992"  # stands for PHI: no reason may repeat it

REQUEST: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "https://ehr.example.org/fhir",
    "hook": "patient-view",
    "fhirAuthorization": {"access_token": "opaque-fhir-token-xyz", "token_type": "Bearer", "expires_in": 300,
                          "scope": "patient/Patient.read patient/Observation.read", "subject": "otrules"},
    "context": {"userId": "Practitioner/ot-4", "patientId": PATIENT, "encounterId": "89284"},
    "prefetch": {"patient": {"resourceType": "Patient", "id": PATIENT}, "missing": None},
}

FEEDBACK_OVERRIDDEN: dict[str, Any] = {
    "card": UUID1, "outcome": "overridden",
    "overrideReason": {"reason": {"code": "not-appropriate", "system": "urn:otrules:override-reason",
                                  "display": "Not appropriate for this patient"},
                       "userComment": "Patient declined"},
    "outcomeTimestamp": "2026-02-20T10:00:00Z",
}
FEEDBACK_ACCEPTED: dict[str, Any] = {
    "card": UUID2, "outcome": "accepted", "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
    "outcomeTimestamp": "2026-02-20T11:00:00.250+01:00",
}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def changed(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `doc` with `a.b.c` set to `value`, or removed when `value` is DELETE."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()


# ---------------------------------------------------------------- requests


def test_a_valid_request_is_read():
    req = parse_request(body(REQUEST))
    assert req.hook == "patient-view"
    assert req.context.patientId == PATIENT
    assert req.context.userId == "Practitioner/ot-4"
    assert req.context.encounterId == "89284"
    assert req.fhirAuthorization is not None
    assert req.fhirAuthorization.access_token.get_secret_value() == "opaque-fhir-token-xyz"
    assert req.prefetch is not None and req.prefetch["missing"] is None  # the spec lets a prefetch value be null


def test_the_access_token_shows_in_no_repr_or_dump():
    req = parse_request(body(REQUEST))
    assert "opaque-fhir-token-xyz" not in repr(req)
    assert "opaque-fhir-token-xyz" not in str(req.model_dump())
    assert "opaque-fhir-token-xyz" not in req.model_dump_json()


def test_the_smallest_request_and_unknown_fields_are_accepted():
    minimal: dict[str, Any] = {"hook": "patient-view", "hookInstance": "D1577C69-DFBE-44AD-BA6D-3E05E953B2EA",
                               "context": {"userId": "PractitionerRole/r1", "patientId": "123"}}
    assert parse_request(body(minimal)).context.encounterId is None
    extended = {**minimal, "extension": {"com.example.timestamp": "2017-11-27T22:13:25Z"}, "org.example.x": 1,
                "context": {**minimal["context"], "newOptionalField": "from a later hook version"}}
    req = parse_request(body(extended))
    assert req.extension == {"com.example.timestamp": "2017-11-27T22:13:25Z"}


@pytest.mark.parametrize(("path", "value", "reason"), [
    ("hook", "order-sign", "hook: must be 'patient-view'"),
    ("hook", DELETE, "hook: is required"),
    ("hookInstance", "not-a-uuid", "hookInstance: must be a UUID"),
    ("hookInstance", "d1577c69dfbe44adba6d3e05e953b2ea", "hookInstance: must be a UUID"),
    ("hookInstance", DELETE, "hookInstance: is required"),
    ("context", DELETE, "context: is required"),
    ("context", [], "context: must be a JSON object"),
    ("context.patientId", DELETE, "context.patientId: is required"),
    ("context.patientId", "", "context.patientId: must not be empty"),
    ("context.patientId", 1288992, "context.patientId: must be a string"),
    ("context.patientId", "p 1/../2", "context.patientId: must be a FHIR id"),
    ("context.userId", DELETE, "context.userId: is required"),
    ("context.userId", "Device/1", "context.userId: must be Practitioner/<id>"),
    ("context.encounterId", "a b", "context.encounterId: must be a FHIR id"),
    ("fhirServer", DELETE, "fhirServer: is required when fhirAuthorization is given"),
    ("fhirServer", "ftp://ehr.example.org", "fhirServer: must be an absolute http or https URL"),
    ("fhirAuthorization.token_type", "MAC", "fhirAuthorization.token_type: must be 'Bearer'"),
    ("fhirAuthorization.expires_in", "300", "fhirAuthorization.expires_in: must be an integer"),
    ("fhirAuthorization.access_token", "", "fhirAuthorization.access_token: must not be empty"),
    ("fhirAuthorization.subject", DELETE, "fhirAuthorization.subject: is required"),
])
def test_a_bad_request_names_the_field_and_why(path, value, reason):
    with pytest.raises(BadRequest) as info:
        parse_request(body(changed(REQUEST, path, value)))
    assert reason in str(info.value)
    assert info.value.field == reason.split(":")[0]
    assert PATIENT not in str(info.value) and "opaque-fhir-token-xyz" not in str(info.value)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "body: is not valid JSON"),
    (b"{\"hook\": ", "body: is not valid JSON"),
    (b"[]", "body: must be a JSON object"),
    (b"\"patient-view\"", "body: must be a JSON object"),
])
def test_a_body_that_is_no_json_object_is_refused(raw, reason):
    with pytest.raises(BadRequest, match="^" + reason):
        parse_request(raw)


def test_every_problem_is_listed_and_none_holds_a_value():
    bad = {"hook": "order-select", "hookInstance": PATIENT, "context": {"userId": PATIENT, "patientId": PATIENT + " x"}}
    with pytest.raises(BadRequest) as info:
        parse_request(body(bad))
    fields = [r.split(":")[0] for r in info.value.reasons]
    assert fields == ["hook", "hookInstance", "context.userId", "context.patientId"]
    assert PATIENT not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no pydantic error (with inputs) chained


def test_bad_request_is_an_otrules_value_error():
    from otrules import OtrulesError

    assert issubclass(BadRequest, OtrulesError) and issubclass(BadRequest, ValueError)


# ---------------------------------------------------------------- feedback


def test_valid_feedback_is_read():
    fb = parse_feedback(body({"feedback": [FEEDBACK_OVERRIDDEN, FEEDBACK_ACCEPTED,
                                           {"card": UUID1, "outcome": "overridden",
                                            "outcomeTimestamp": "2026-02-20T12:00:00Z"}]}))
    over, acc, bare = fb.feedback
    assert over.overrideReason is not None and over.overrideReason.reason is not None
    assert over.overrideReason.reason.code == "not-appropriate"
    assert acc.acceptedSuggestions == [AcceptedSuggestion(id="e56e1945-20b3-4393-8503-a1a20fd73152")]
    assert bare.overrideReason is None
    assert acc.outcome_time.isoformat() == "2026-02-20T10:00:00.250000+00:00"  # converted to UTC


def test_a_comment_alone_is_a_reason():
    item = {**FEEDBACK_OVERRIDDEN, "overrideReason": {"userComment": "not today"}}
    assert parse_feedback(body({"feedback": [item]})).feedback[0].overrideReason is not None


@pytest.mark.parametrize(("doc", "reason"), [
    ({"feedback": []}, "feedback: must hold at least 1 item"),
    ({}, "feedback: is required"),
    ({"feedback": [{**FEEDBACK_OVERRIDDEN, "outcome": "ignored"}]},
     "feedback[0].outcome: must be 'accepted' or 'overridden'"),
    ({"feedback": [{**FEEDBACK_ACCEPTED, "overrideReason": FEEDBACK_OVERRIDDEN["overrideReason"]}]},
     "feedback[0].overrideReason: is only allowed when the outcome is 'overridden'"),
    ({"feedback": [{**FEEDBACK_OVERRIDDEN, "acceptedSuggestions": [{"id": "s1"}]}]},
     "feedback[0].acceptedSuggestions: is only allowed when the outcome is 'accepted'"),
    ({"feedback": [{k: v for k, v in FEEDBACK_ACCEPTED.items() if k != "acceptedSuggestions"}]},
     "feedback[0].acceptedSuggestions: is required when the outcome is 'accepted'"),
    ({"feedback": [{**FEEDBACK_ACCEPTED, "acceptedSuggestions": []}]},
     "feedback[0].acceptedSuggestions: must hold at least 1 item"),
    ({"feedback": [{**FEEDBACK_OVERRIDDEN, "overrideReason": {}}]},
     "feedback[0].overrideReason.reason: is required when there is no userComment"),
    ({"feedback": [{**FEEDBACK_OVERRIDDEN, "overrideReason": {"reason": {"code": "x"}}}]},
     "feedback[0].overrideReason.reason.system: is required"),
    ({"feedback": [FEEDBACK_ACCEPTED, {**FEEDBACK_OVERRIDDEN, "card": "card-17"}]},
     "feedback[1].card: must be a UUID"),
    ({"feedback": [{**FEEDBACK_OVERRIDDEN, "outcomeTimestamp": "2026-02-20T10:00:00"}]},
     "feedback[0].outcomeTimestamp: must be an RFC 3339 date-time with an offset"),
    ({"feedback": [{**FEEDBACK_OVERRIDDEN, "outcomeTimestamp": "2026-02-30T10:00:00Z"}]},
     "feedback[0].outcomeTimestamp: is not a valid date-time"),
    ({"feedback": [{k: v for k, v in FEEDBACK_OVERRIDDEN.items() if k != "outcomeTimestamp"}]},
     "feedback[0].outcomeTimestamp: is required"),
    ({"feedback": {"card": UUID1}}, "feedback: must be an array"),
])
def test_bad_feedback_names_the_field_and_why(doc, reason):
    with pytest.raises(BadRequest) as info:
        parse_feedback(body(doc))
    assert reason in info.value.reasons[0] + "".join("; " + r for r in info.value.reasons[1:])
    assert "Patient declined" not in str(info.value)


def test_a_comment_is_not_echoed_in_a_reason():
    item = {**FEEDBACK_OVERRIDDEN, "outcome": "accepted", "overrideReason": {"userComment": "Mrs X fell at home"}}
    with pytest.raises(BadRequest) as info:
        parse_feedback(body({"feedback": [item]}))
    assert "Mrs X" not in str(info.value)


# ---------------------------------------------------------------- responses


def otrules_card(**over: Any) -> Card:
    fields: dict[str, Any] = {
        "uuid": UUID1, "summary": "Goal g1 reached: COPM-performance 7 (target 7)", "indicator": "info",
        "detail": "**Rule** goal-met", "source": Source(label="otrules ot-core 2026.11.1",
                                                           topic=Coding(system="urn:otrules:kind", code="advance_goal",
                                                                        display="Advance goal")),
        "overrideReasons": [Coding(system="urn:otrules:override-reason", code="not-appropriate",
                                   display="Not appropriate for this patient")],
        "links": [Link(label="Open in otrules", url="https://otrules.example.org/patients/p-17", type="absolute")],
    }
    fields.update(over)
    return Card(**fields)


def walk(value: Any, path: str = "") -> list[str]:
    """Paths of every null or empty value below the top level."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None or (isinstance(v, str | list | dict) and not v):
                found.append(f"{path}.{k}")
            found += walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += walk(v, f"{path}[{i}]")
    return found


def test_a_card_dumps_without_null_or_empty_values():
    card = otrules_card(detail=None, overrideReasons=[], links=[],
                        source=Source(label="otrules", url=None, topic=Coding(system="s", code="c")))
    doc = CardsResponse(cards=[card]).dump()
    assert walk(doc) == []
    assert doc == {"cards": [{"uuid": UUID1, "summary": "Goal g1 reached: COPM-performance 7 (target 7)",
                              "indicator": "info", "source": {"label": "otrules", "topic": {"system": "s", "code": "c"}}}]}
    assert json.loads(CardsResponse(cards=[card]).dump_json()) == doc
    assert problems(doc, "cards") == []


def test_a_full_card_dumps_every_field_it_has():
    card = otrules_card(suggestions=[Suggestion(label="Acknowledge", uuid=UUID2, isRecommended=True,
                                                actions=[Action(type="update", description="d",
                                                                resource={"resourceType": "CarePlan", "id": "c1"})])],
                        selectionBehavior="at-most-one")
    doc = CardsResponse(cards=[card]).dump()
    assert set(doc["cards"][0]) == {"uuid", "summary", "detail", "indicator", "source", "suggestions",
                                    "selectionBehavior", "overrideReasons", "links"}
    assert problems(doc, "cards") == []


def test_no_cards_and_no_services_stay_as_empty_arrays():
    assert CardsResponse(cards=[]).dump() == {"cards": []}
    assert CardsResponse(cards=[]).dump_json() == b'{"cards":[]}'
    assert Discovery(services=[]).dump() == {"services": []}
    assert problems({"cards": []}, "cards") == []


def test_discovery_dumps_one_patient_view_service():
    doc = Discovery(services=[Service(hook="patient-view", title="otrules", description="Open OT recommendations",
                                      id="otrules", prefetch={}, usageRequirements=None)]).dump()
    assert doc == {"services": [{"hook": "patient-view", "title": "otrules", "description": "Open OT recommendations",
                                 "id": "otrules"}]}
    assert problems(doc, "discovery") == []


@pytest.mark.parametrize(("build", "reason"), [
    (lambda: otrules_card(summary=""), "String should have at least 1 character"),
    (lambda: otrules_card(summary="x" * 140), "at most 139 characters"),
    (lambda: otrules_card(detail=""), "String should have at least 1 character"),
    (lambda: otrules_card(source=Source(label="")), "String should have at least 1 character"),
    (lambda: otrules_card(indicator="urgent"), "'info', 'warning' or 'critical'"),
    (lambda: otrules_card(uuid="rec-17"), "must be a UUID"),
    (lambda: otrules_card(suggestions=[Suggestion(label="Do it")]), "selectionBehavior: is required"),
    (lambda: otrules_card(overrideReasons=[Coding(system="s", code="c")]), "overrideReasons[0].display: is required"),
    (lambda: Link(label="l", url="https://x.example", type="absolute", appContext="{}"),
     "appContext: is only allowed on a link of type 'smart'"),
    (lambda: Link(label="l", url="/patients/p-17", type="absolute"), "must be an absolute http or https URL"),
    (lambda: Service(hook="patient-view", description="d", id="a/b"), "a URL path segment"),
    (lambda: Service(hook="patient-view", description="", id="otrules"), "String should have at least 1 character"),
    (lambda: otrules_card(extra="x"), "Extra inputs are not permitted"),
])
def test_a_response_that_breaks_a_rule_cannot_be_built(build, reason):
    with pytest.raises(ValidationError) as info:
        build()
    assert reason in str(info.value)


def test_a_summary_of_139_characters_is_allowed():
    assert len(otrules_card(summary="x" * 139).summary) == 139


# ---------------------------------------------------------------- problems(): an independent reading of the spec

SPEC_EXAMPLE_RESPONSE = {  # the specification's example response
    "cards": [
        {"uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "summary": "Example Card", "indicator": "info",
         "detail": "This is an example card.",
         "source": {"label": "Static CDS Service Example", "url": "https://example.com",
                    "icon": "https://example.com/img/icon-100px.png"},
         "links": [{"label": "Google", "url": "https://google.com", "type": "absolute"},
                   {"label": "SMART Example App", "url": "https://smart.example.com/launch", "type": "smart",
                    "appContext": "{\"session\":3456356,\"settings\":{\"module\":4235}}"}]},
        {"summary": "Another card", "indicator": "warning", "source": {"label": "Static CDS Service Example"},
         "overrideReasons": [{"code": "reason-code-provided-by-service",
                              "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
                              "display": "Patient refused"}]},
    ]
}


def test_the_spec_examples_have_no_problems():
    assert problems(SPEC_EXAMPLE_RESPONSE, "cards") == []
    assert problems({"feedback": [FEEDBACK_OVERRIDDEN, FEEDBACK_ACCEPTED]}, "feedback") == []
    discovery = {"services": [{"hook": "patient-view", "title": "Static CDS Service Example",
                               "description": "An example", "id": "static-patient-greeter",
                               "prefetch": {"patientToGreet": "Patient/{{context.patientId}}"}}]}
    assert problems(discovery, "discovery") == []


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("cards.0.detail", None, "cards[0].detail: is null"),
    ("cards.0.links", [], "cards[0].links: is empty ([])"),
    ("cards.0.detail", "", "cards[0].detail: is empty (\"\")"),
    ("cards.0.source", {}, "cards[0].source: is empty ({})"),
    ("cards.0.links.0.appContext", None, "cards[0].links[0].appContext: is null"),
    ("cards.0.summary", "x" * 140, "cards[0].summary: must be fewer than 140 characters (has 140)"),
    ("cards.0.summary", DELETE, "cards[0].summary: is required"),
    ("cards.0.summary", 17, "cards[0].summary: must be a string"),
    ("cards.0.indicator", "urgent", "cards[0].indicator: must be one of info, warning, critical"),
    ("cards.0.indicator", DELETE, "cards[0].indicator: is required"),
    ("cards.0.uuid", "not-a-uuid", "cards[0].uuid: must be a UUID"),
    ("cards.1.uuid", "4E0A3A1E-3283-4575-AB82-028D55FE2719", "cards[1].uuid: is the uuid of an earlier card"),
    ("cards.0.source.label", DELETE, "cards[0].source.label: is required"),
    ("cards.0.source", DELETE, "cards[0].source: is required"),
    ("cards.0.source.url", "example.com/about", "cards[0].source.url: must be an absolute http(s) URL"),
    ("cards.1.overrideReasons.0.display", DELETE, "cards[1].overrideReasons[0].display: is required"),
    ("cards.1.overrideReasons.0.system", DELETE, "cards[1].overrideReasons[0].system: is required"),
    ("cards.0.links.0.type", "relative", "cards[0].links[0].type: must be one of absolute, smart"),
    ("cards.0.links.0.appContext", "x", "cards[0].links[0].appContext: only a link of type smart may have one"),
    ("cards.0.suggestions", [{"label": "Do"}], "cards[0].selectionBehavior: is required when there are suggestions"),
    ("cards.0.selectionBehavior", "all", "cards[0].selectionBehavior: must be one of at-most-one, any"),
    ("cards.0.overrideReason", [], "cards[0].overrideReason: is not a field of card"),
    ("cards", None, "cards: is null"),
    ("cards", DELETE, "cards: is required"),
])
def test_problems_catches_each_rule_of_a_cards_response(path, value, expected):
    found = problems(changed(SPEC_EXAMPLE_RESPONSE, path, value), "cards")
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(("item", "expected"), [
    ({**FEEDBACK_OVERRIDDEN, "outcome": "dismissed"}, "feedback[0].outcome: must be one of accepted, overridden"),
    ({**FEEDBACK_OVERRIDDEN, "card": "c-1"}, "feedback[0].card: must be a UUID"),
    ({**FEEDBACK_OVERRIDDEN, "outcomeTimestamp": "2026-02-20 10:00"},
     "feedback[0].outcomeTimestamp: must be an RFC 3339 date-time"),
    ({**FEEDBACK_OVERRIDDEN, "outcomeTimestamp": "2026-02-29T10:00:00Z"},
     "feedback[0].outcomeTimestamp: must be an RFC 3339 date-time"),
    ({**FEEDBACK_ACCEPTED, "overrideReason": {"userComment": "c"}},
     "feedback[0].overrideReason: only an overridden outcome has one"),
    ({k: v for k, v in FEEDBACK_ACCEPTED.items() if k != "acceptedSuggestions"},
     "feedback[0].acceptedSuggestions: is required when the outcome is accepted"),
    ({**FEEDBACK_OVERRIDDEN, "overrideReason": {"reason": {"code": "c"}}},
     "feedback[0].overrideReason.reason.system: is required"),
    ({**FEEDBACK_OVERRIDDEN, "overrideReason": {"userComment": ""}}, "feedback[0].overrideReason.userComment: is empty"),
])
def test_problems_catches_each_rule_of_feedback(item, expected):
    found = problems({"feedback": [item]}, "feedback")
    assert any(p.startswith(expected) for p in found), found


def test_problems_catches_each_rule_of_discovery():
    service = {"hook": "patient-view", "description": "d", "id": "otrules"}
    assert problems({"services": [service]}, "discovery") == []
    assert "services[0].description: is required" in problems(
        {"services": [{"hook": "patient-view", "id": "otrules"}]}, "discovery")
    assert "services[0].prefetch: is empty ({})" in problems({"services": [{**service, "prefetch": {}}]}, "discovery")
    assert "services[0].id: must be usable as one URL path segment" in problems(
        {"services": [{**service, "id": "a/b"}]}, "discovery")
    assert "services[1].id: is the id of an earlier service" in problems({"services": [service, service]}, "discovery")
    assert problems([], "discovery") == ["(document): must be a JSON object"]
    assert "feedback: must hold at least one entry" in problems({"feedback": []}, "feedback")


def test_problems_finds_a_null_or_empty_value_at_any_depth():
    doc = changed(SPEC_EXAMPLE_RESPONSE, "cards.0.suggestions",
                  [{"label": "Do", "actions": [{"type": "create", "description": "d",
                                                "resource": {"resourceType": "Task", "note": [], "code": None}}]}])
    doc["cards"][0]["selectionBehavior"] = "any"
    found = problems(doc, "cards")
    assert "cards[0].suggestions[0].actions[0].resource.note: is empty ([])" in found
    assert "cards[0].suggestions[0].actions[0].resource.code: is null" in found


def test_the_models_output_passes_problems_for_every_indicator_and_link_type():
    cards = [otrules_card(uuid=u, indicator=ind, links=[Link(label="App", url="https://smart.example/launch",
                                                             type="smart", appContext="goal=g1")])
             for u, ind in [(UUID1, "info"), (UUID2, "warning"), ("0b8f1c4e-7d2a-5c3b-9e1f-2a3b4c5d6e7f", "critical")]]
    assert problems(CardsResponse(cards=cards).dump(), "cards") == []


def test_feedback_item_and_problems_agree_on_the_examples():
    for item in (FEEDBACK_OVERRIDDEN, FEEDBACK_ACCEPTED):
        FeedbackItem.model_validate_json(json.dumps(item))
        assert problems({"feedback": [item]}, "feedback") == []
