"""`otrules serve` as an EHR's CDS Hooks client meets it (contracts.md §9): a real server on 127.0.0.1,
discovery, patient-view cards checked against the CDS Hooks 2.0 rules, feedback that closes a card,
clear 400s, the security headers, client JWTs and the bearer token, and no PHI in its logs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from otrules.cli import main
from otrules.schemas.cds_hooks import problems

SERVICE = "/cds-services/otrules"


class Server:
    """`python -m otrules serve` as a process; its address is what it prints."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "otrules", "serve", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
                                     env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 90
        self.url = ""
        while time.monotonic() < deadline and not self.url:
            found = re.search(r"otrules serve: (http://127\.0\.0\.1:\d+)", self.log.read_text())
            if found:
                self.url = found.group(1)
            elif self.proc.poll() is not None:
                raise AssertionError(self.log.read_text())
            else:
                time.sleep(0.1)
        assert self.url, self.log.read_text()
        self.client = httpx.Client(base_url=self.url, timeout=10)
        for _ in range(100):  # the address is printed just before uvicorn starts serving on it
            try:
                self.client.get("/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)

    def stop(self) -> str:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return self.log.read_text()


def hook(patient: str, **extra: Any) -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/ot-1", "patientId": patient}, **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("serve"))
    yield running
    log = running.stop()
    # the sample's patient ids and scores never reach the log (only routes, statuses, counts)
    assert not re.search(r"p-\d{5}|\"score\"", log), log[-2000:]


def open_by_patient(server: Server) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in server.client.get("/api/open").json():
        out.setdefault(rec["patient_id"], []).append(rec)
    return out


def test_discovery_lists_the_patient_view_service(server):
    response = server.client.get("/cds-services")
    assert response.status_code == 200
    doc = response.json()
    assert problems(doc, "discovery") == []
    assert [(s["id"], s["hook"]) for s in doc["services"]] == [("otrules", "patient-view")]


def test_patient_view_answers_the_patients_open_recommendations_as_valid_cards(server):
    by_patient = open_by_patient(server)
    patient, recs = max(by_patient.items(), key=lambda kv: len(kv[1]))
    assert len(recs) >= 2
    response = server.client.post(SERVICE, json=hook(patient))
    assert response.status_code == 200
    doc = response.json()
    assert problems(doc, "cards") == []
    cards = doc["cards"]
    assert {c["uuid"] for c in cards} == {r["recommendation_id"] for r in recs}
    order = {"critical": 0, "warning": 1, "info": 2}
    assert [order[c["indicator"]] for c in cards] == sorted(order[c["indicator"]] for c in cards)
    first = cards[0]
    assert first["links"][0]["url"] == f"{server.url}/patients/{patient}" and first["links"][0]["type"] == "absolute"
    assert first["overrideReasons"] and first["suggestions"][0]["label"] == "Accept"
    assert len(first["summary"]) < 140
    assert server.client.post(SERVICE, json=hook("no-such-patient")).json() == {"cards": []}


@pytest.mark.parametrize(("body", "says"), [
    (b"not json", "body: is not valid JSON"),
    (json.dumps({"hook": "patient-view"}).encode(), "hookInstance: is required"),
    (json.dumps(hook("p-1", hookInstance="42")).encode(), "hookInstance"),
    (json.dumps({**hook("p-1"), "hook": "order-sign"}).encode(), "hook"),
    (json.dumps({**hook("p-1"), "context": {"userId": "Practitioner/x"}}).encode(), "context.patientId"),
])
def test_a_malformed_request_gets_a_400_naming_the_field(server, body, says):
    response = server.client.post(SERVICE, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert says in response.json()["error"]


def test_a_body_over_the_limit_is_refused(server):
    response = server.client.post(SERVICE, content=b"x" * 1_000_001, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_feedback_closes_a_card_and_it_is_not_returned_again(server):
    patient, recs = max(open_by_patient(server).items(), key=lambda kv: len(kv[1]))
    card = server.client.post(SERVICE, json=hook(patient)).json()["cards"][0]
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-30T10:00:00Z",
                              "overrideReason": {"reason": card["overrideReasons"][0]}}]}
    assert problems(feedback, "feedback") == []
    response = server.client.post(f"{SERVICE}/feedback", json=feedback)
    assert response.status_code == 200
    after = server.client.post(SERVICE, json=hook(patient)).json()["cards"]
    assert card["uuid"] not in {c["uuid"] for c in after} and len(after) == len(recs) - 1
    # the same answer again, and an answer to a card nobody has: 200, nothing changes
    assert server.client.post(f"{SERVICE}/feedback", json=feedback).status_code == 200
    accepted = {"feedback": [{"card": after[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-30T10:01:00Z",
                              "acceptedSuggestions": [{"id": after[0]["suggestions"][0]["uuid"]}]}]}
    assert server.client.post(f"{SERVICE}/feedback", json=accepted).status_code == 200
    assert len(server.client.post(SERVICE, json=hook(patient)).json()["cards"]) == len(recs) - 2
    bad = {"feedback": [{"card": after[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": "yesterday"}]}
    assert server.client.post(f"{SERVICE}/feedback", json=bad).status_code == 400


def test_every_response_says_no_store_and_has_a_strict_content_security_policy(server):
    for response in (server.client.get("/cds-services"), server.client.get("/patients/p-00011")):
        assert response.headers["cache-control"] == "no-store"
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"


def test_the_patient_page_escapes_what_came_from_events(server):
    response = server.client.get("/patients/" + "%3Cscript%3Ealert(1)")
    assert response.status_code == 200
    assert "<script>" not in response.text and "&lt;script&gt;" in response.text


# ---------------------------------------------------------------- security


ISSUER = "https://ehr.example.org"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def secured(tmp_path_factory, key) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("secured")
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "ehr-1", "alg": "RS384", "use": "sig"}
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    running = Server(tmp, "--jwks", str(tmp / "jwks.json"), "--issuer", ISSUER,
                     env={"OTRULES_SERVE_TOKEN": "s3cret-token-0123"})
    yield running
    running.stop()


def token(key: Any, audience: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "ehr-client", "aud": audience, "exp": now + 300, "iat": now,
            "jti": str(uuid.uuid4()), **claims}
    return jwt.encode(body, key, algorithm="RS384", headers={"kid": "ehr-1", "typ": "JWT"})


def call(server: Server, jwt_token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {jwt_token}"} if jwt_token else {}
    return server.client.post(SERVICE, json=hook("p-00011"), headers=headers)


def test_a_valid_client_jwt_is_accepted_and_each_bad_one_refused(secured, key):
    audience = secured.url + SERVICE
    good = token(key, audience)
    assert call(secured, good).status_code == 200
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        "no token": None,
        "bad signature": token(other, audience),
        "wrong audience": token(key, secured.url + "/cds-services"),
        "wrong issuer": token(key, audience, iss="https://evil.example.org"),
        "expired": token(key, audience, exp=int(time.time()) - 120, iat=int(time.time()) - 400),
        "replayed jti": good,
    }
    for why, bad in refused.items():
        response = call(secured, bad)
        assert response.status_code == 401, why
        assert "error" in response.json()


def test_the_pages_and_the_api_need_the_bearer_token(secured):
    assert secured.client.get("/api/open").status_code == 401
    assert secured.client.get("/api/open", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert secured.client.get("/api/open", headers={"authorization": "Bearer s3cret-token-0123"}).status_code == 200
    page = secured.client.get("/patients/p-00011")  # a browser without the session goes to sign in
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fpatients%2Fp-00011"
    signin = secured.client.post("/login", content=b"token=wrong",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert signin.status_code == 401
    signin = secured.client.post("/login", content=b"token=s3cret-token-0123&next=%2Fpatients%2Fp-00011",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert signin.status_code == 303 and signin.headers["location"] == "/patients/p-00011"  # back where it was
    cookie = signin.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    elsewhere = secured.client.post("/login", content=b"token=s3cret-token-0123&next=%2F%2Fevil.example",
                                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert elsewhere.headers["location"] == "/"  # never an open redirect
    assert secured.client.get("/patients/p-00011").status_code == 200  # the session cookie, from now on
    secured.client.cookies.clear()


def test_a_non_loopback_host_without_authentication_is_refused():
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2
    assert "not loopback" in result.stderr and "--jwks" in result.stderr


# ---------------------------------------------------------------- what a hostile page or client sends


def test_a_page_elsewhere_cannot_read_or_answer_through_the_clinicians_browser(server):
    rebinding = server.client.get("/api/open", headers={"host": "attacker.example"})
    assert rebinding.status_code == 421
    forged = server.client.post("/api/feedback", content=b'{"outcome":"accepted","recommendation_id":"x"}',
                                headers={"origin": "http://attacker.example", "content-type": "application/json"})
    assert forged.status_code == 403
    simple = server.client.post("/api/feedback", content=b'{"outcome":"accepted","recommendation_id":"x"}',
                                headers={"content-type": "text/plain"})  # what a form posts without a preflight
    assert simple.status_code == 415
    for response in (rebinding, forged, simple):
        assert response.headers["cache-control"] == "no-store" and "content-security-policy" in response.headers


def test_a_chunked_body_over_the_limit_is_413_too(server):
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 100_000

    response = server.client.post(SERVICE, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2199-01-01T00:00:00Z"])
def test_a_feedback_time_no_clock_could_give_is_a_400(server, when):
    patient, _ = max(open_by_patient(server).items(), key=lambda kv: len(kv[1]))
    card = server.client.post(SERVICE, json=hook(patient)).json()["cards"][0]
    body = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when,
                          "overrideReason": {"reason": card["overrideReasons"][0]}}]}
    response = server.client.post(f"{SERVICE}/feedback", json=body)
    assert response.status_code == 400 and "outcomeTimestamp" in response.text
    assert "content-security-policy" in response.headers


def test_api_feedback_says_what_happened(server):
    assert server.client.post("/api/feedback", json={"outcome": "accepted"}).status_code == 400
    missing = server.client.post("/api/feedback", json={"outcome": "accepted", "recommendation_id": "no-such"})
    assert missing.status_code == 409
    bad = server.client.post("/api/feedback", json={"outcome": "overridden", "recommendation_id": "x",
                                                    "override_reason": {"code": "<made up>"}})
    assert bad.status_code == 400 and "override_reason.code" in bad.text


def test_a_repeated_key_in_a_hook_request_is_a_400(server):
    body = (b'{"hook":"patient-view","hookInstance":"d1577c69-dfbe-44ad-ba6d-3e05e953b2ea","context":'
            b'{"userId":"Practitioner/ot-1","patientId":"p-00023","patientId":"p-00035"}}')
    response = server.client.post(SERVICE, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "repeated" in response.text


def test_a_refused_call_says_how_to_authenticate(secured):
    assert secured.client.get("/api/open").headers["www-authenticate"].startswith("Bearer")


def test_with_a_token_and_no_jwks_the_cds_calls_need_the_token_too(tmp_path):
    server = Server(tmp_path, env={"OTRULES_SERVE_TOKEN": "a-long-enough-token"})
    try:
        assert server.client.post(SERVICE, json=hook("p-00011")).status_code == 401
        auth = {"authorization": "Bearer a-long-enough-token"}
        assert server.client.post(SERVICE, json=hook("p-00011"), headers=auth).status_code == 200
        # a cookie or form beyond ASCII is compared as bytes: a 401, never a 500
        wrong = server.client.get("/api/open", headers=[(b"cookie", "otrules_session=é".encode())])
        assert wrong.status_code == 401
        signin = server.client.post("/login", content=b"token=%C3%A9",
                                    headers={"content-type": "application/x-www-form-urlencoded"})
        assert signin.status_code == 401
    finally:
        server.stop()


def test_a_short_or_non_ascii_token_is_refused_at_start():
    for token in ("short", "a-long-enough-tokén"):
        result = CliRunner().invoke(main, ["serve", "--port", "0"], env={"OTRULES_SERVE_TOKEN": token})
        assert result.exit_code == 2 and "16 printable ASCII" in result.stderr


def test_a_stream_id_from_another_process_means_reload(server):
    with server.client.stream("GET", "/api/stream", headers={"last-event-id": "deadbeef0000-99999"}) as response:
        lines = response.iter_lines()
        first = [next(lines) for _ in range(4)]
    assert "event: reload" in first
