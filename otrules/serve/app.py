"""The `otrules serve` web app (contracts.md §9): CDS Hooks 2.0 and the pages clinicians open.

Routes: `GET /cds-services` (discovery), `POST /cds-services/otrules` (patient-view:
the patient's open recommendations as cards), `POST /cds-services/otrules/feedback`
(the EHR's accept/override, as §8 feedback events); the dashboard (`/` worklist,
`/patients/{id}` the page a card links to, `/rules`, `/login`) and the JSON it draws
from (`/api/open`, `/api/patients/{id}`, `/api/rules`, `/api/stream` Server-Sent
Events, `POST /api/feedback`); `/static/...`; `GET /healthz`.

Security: CDS Hooks calls carry a client JWT, checked against the configured JWKS
and issuers with `aud` = the endpoint's own URL; everything else takes the bearer
token. Every response says `Cache-Control: no-store` (PHI) and has a
Content-Security-Policy without inline script. Logs name the route, never the
path (which holds a patient id), nor anything from a body.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
import structlog
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from otrules.schemas import EventRejected, FeedbackEvent
from otrules.schemas.cds_hooks import (
    BadRequest,
    CardsResponse,
    Discovery,
    Service,
    parse_feedback,
    parse_request,
)
from otrules.schemas.events import check_repeated_keys
from otrules.serve import cards, pages
from otrules.serve.auth import AuthError, JwtVerifier, check_bearer
from otrules.serve.sources import OpenSource, feedback_event

log = structlog.get_logger("otrules.serve")

MAX_BODY = 1_000_000  # bytes of a request body
SESSION = "otrules_session"  # the browser's cookie after /login (HttpOnly, SameSite=Strict)
STATIC = Path(__file__).with_name("static")
EPOCH = uuid.uuid4().hex[:12]  # this process's: a Last-Event-ID from before a restart means "reload"
CLOCK_SKEW = dt.timedelta(days=1)  # how far ahead of ours an EHR's feedback time may be
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SERVICE = Service(hook="patient-view", id=cards.SERVICE_ID, title="otrules: plan-of-care decisions",
                  description="Open occupational-therapy plan-of-care recommendations for the patient: goals "
                              "reached, plateaus and setbacks, reports, re-evaluations and recertifications due.")


@dataclass
class ServeConfig:
    """`base_url`: the address clients use (links in cards, and the JWT audience); `verifier`: CDS Hooks
    client JWTs are required when set; `token`: the bearer token for everything else, when set;
    `hosts`: the Host headers accepted (the base URL's, and loopback names on loopback)."""

    base_url: str
    verifier: JwtVerifier | None = None
    token: str | None = None
    hosts: frozenset[str] = frozenset()
    counts: Counter[str] = field(default_factory=Counter)  # feedback accepted / overridden / ignored

    @property
    def origins(self) -> frozenset[str]:
        """Origins a page of ours may have: the base URL's, and one per accepted Host (a clinician may
        have opened http://localhost:8080 rather than http://127.0.0.1:8080)."""
        parts = urlsplit(self.base_url)
        return frozenset({f"{parts.scheme}://{parts.netloc}", *(f"{parts.scheme}://{h}" for h in self.hosts)})


class _TooLarge(Exception):
    pass


class _Headers(BaseHTTPMiddleware):
    """Every response: the security headers and one log line; and what no route should see: an
    unknown Host (DNS rebinding), a foreign Origin on a call no JWT protects (a page elsewhere
    posting to a clinician's loopback service), a POST that is not JSON, a body over the limit."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.monotonic()
        config: ServeConfig = request.app.state.config
        length = request.headers.get("content-length")
        origin = request.headers.get("origin")
        protected = config.verifier is not None and request.url.path.startswith("/cds-services")
        response: Response
        if config.hosts and request.headers.get("host", "").lower() not in config.hosts:
            response = _error(421, "this service does not answer for that Host")
        elif origin is not None and origin not in config.origins and not protected:
            response = _error(403, "a request from another origin is refused")
        elif request.method == "POST" and request.headers.get("content-type", "").split(";")[0].strip().lower() \
                != ("application/x-www-form-urlencoded" if request.url.path == "/login" else "application/json"):
            response = _error(415, "the body must be application/json")
        elif length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            response = _error(413, f"the body is over {MAX_BODY} bytes")
        else:
            try:
                response = await call_next(request)
            except _TooLarge:
                response = _error(413, f"the body is over {MAX_BODY} bytes")
            except Exception as exc:  # a fault of ours: a 500 with the headers and the log line all the same
                log.error("request failed", error=type(exc).__name__)
                response = _error(500, "internal error")
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="otrules"'
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make Chromium send Origin: null
        response.headers["X-Frame-Options"] = "DENY"
        route = request.scope.get("route")
        log.info("request", method=request.method, route=getattr(route, "path", "(none)"),
                 status=response.status_code, ms=round((time.monotonic() - started) * 1000, 1))
        return response


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(source: OpenSource, config: ServeConfig) -> FastAPI:
    app = FastAPI(title="otrules serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Headers)
    app.state.source, app.state.config = source, config

    def cds_auth(request: Request) -> JSONResponse | None:
        """None when the call may go on; else the 401 (the reason names no token content). Without a
        JWKS but with a token, CDS Hooks calls need the token as any other call does."""
        if config.verifier is None:
            if config.token is not None and not check_bearer(request.headers.get("authorization"), config.token):
                return _error(401, "a bearer token is required (Authorization: Bearer ...)")
            return None
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return _error(401, "a CDS Hooks client JWT is required (Authorization: Bearer ...)")
        try:
            config.verifier.verify(header[7:].strip(), config.base_url.rstrip("/") + request.url.path)
        except AuthError as exc:
            return _error(401, f"the client JWT is refused: {exc.reason}")
        return None

    def bearer(request: Request) -> Response | None:
        """The token, as a bearer header (API clients) or the session cookie `/login` sets (browsers);
        a page asked for without it goes to the sign-in page."""
        if config.token is None:
            return None
        if check_bearer(request.headers.get("authorization"), config.token):
            return None
        if _same(request.cookies.get(SESSION, ""), config.token):
            return None
        if request.method == "GET" and not request.url.path.startswith("/api/"):
            return RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)
        return _error(401, "a bearer token is required (Authorization: Bearer ...)")

    async def body(request: Request) -> bytes:
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise _TooLarge()
        return data

    @app.get("/cds-services")
    async def discovery(request: Request) -> Response:
        refused = cds_auth(request)
        return refused or Response(Discovery(services=[SERVICE]).dump_json(), media_type="application/json")

    @app.post(f"/cds-services/{cards.SERVICE_ID}")
    async def patient_view(request: Request) -> Response:
        refused = cds_auth(request)
        if refused:
            return refused
        raw = await body(request)
        try:
            hook = parse_request(raw)
            check_repeated_keys(raw)
        except BadRequest as exc:
            return _error(400, str(exc))
        except EventRejected:
            return _error(400, "(body): a key repeated in one JSON object (which value counts is ambiguous)")
        recs = cards.most_urgent_first(source.open_for(hook.context.patientId))
        response = CardsResponse(cards=[cards.card(r, config.base_url) for r in recs])
        return Response(response.dump_json(), media_type="application/json")

    @app.post(f"/cds-services/{cards.SERVICE_ID}/feedback")
    async def cds_feedback(request: Request) -> Response:
        refused = cds_auth(request)
        if refused:
            return refused
        try:
            answers = parse_feedback(await body(request))
        except BadRequest as exc:
            return _error(400, str(exc))
        events: list[FeedbackEvent] = []
        now = dt.datetime.now(dt.UTC)
        for i, item in enumerate(answers.feedback):  # all checked before any is sent: all or nothing
            try:
                at = item.outcome_time
            except (OverflowError, ValueError):
                return _error(400, f"feedback[{i}].outcomeTimestamp: not a time otrules can read")
            if at > now + CLOCK_SKEW:
                return _error(400, f"feedback[{i}].outcomeTimestamp: more than a day in the future")
            rec = source.find(item.card)
            if rec is None:  # no longer open (the EHR's view may be older than ours): counted, dropped
                config.counts["ignored"] += 1
                continue
            if item.outcome == "accepted" and all(s.id != cards.accept_uuid(rec.recommendation_id)
                                                  for s in item.acceptedSuggestions or ()):
                return _error(400, f"feedback[{i}].acceptedSuggestions: not this card's suggestion")
            reason = None
            if item.overrideReason is not None:
                given = item.overrideReason.reason
                code = given.code if given is not None and cards.override_display(given.code) else "other"
                reason = {"code": code, "display": cards.override_display(code) or code}
            at = max(at, _time(rec.occurred_at))  # an EHR clock behind the event's: still an answer to it
            try:
                events.append(feedback_event(rec, item.outcome, at, reason, None, ""))
            except EventRejected as exc:
                return _error(400, f"feedback[{i}]: {exc.field}")
        for event in events:
            source.send_feedback(event)
            config.counts[event.outcome] += 1
        return Response(status_code=200)

    @app.post("/api/feedback")
    async def api_feedback(request: Request) -> Response:
        """The dashboard's accept / override: `{"recommendation_id", "outcome", "override_reason": {"code"}}`."""
        refused = bearer(request)
        if refused:
            return refused
        try:
            data = orjson.loads(await body(request))
        except (orjson.JSONDecodeError, BadRequest):
            return _error(400, "(body): not a JSON object")
        if not isinstance(data, dict) or data.get("outcome") not in ("accepted", "overridden"):
            return _error(400, "outcome: must be accepted or overridden")
        if not isinstance(data.get("recommendation_id"), str):
            return _error(400, "recommendation_id: required, a string")
        given = data.get("override_reason")
        code = given.get("code") if isinstance(given, dict) else None
        if data["outcome"] == "overridden" and not (isinstance(code, str) and cards.override_display(code)):
            return _error(400, "override_reason.code: required when overridden, one of "
                               + ", ".join(c for c, _ in cards.OVERRIDE_REASONS))
        rec = source.find(data["recommendation_id"])
        if rec is None:
            config.counts["ignored"] += 1
            return _error(409, "recommendation_id: not open (unknown, or already closed)")
        reason = {"code": code, "display": cards.override_display(code) or ""} if isinstance(code, str) else None
        event = feedback_event(rec, data["outcome"], max(dt.datetime.now(dt.UTC), _time(rec.occurred_at)), reason,
                               None, "")
        source.send_feedback(event)
        config.counts[event.outcome] += 1
        return JSONResponse({"status": "sent", "event_id": event.event_id})

    # The reads below are plain functions: FastAPI runs them in its thread pool, so a large worklist
    # (tens of thousands open) does not hold up the event loop, the streams and the other requests
    @app.get("/api/open")
    def api_open(request: Request, patient: str | None = None) -> Response:
        refused = bearer(request)
        if refused:
            return refused
        seq = source.changes.last  # before the read: a change after it reaches the stream from here
        recs = source.open_for(patient) if patient else source.all_open()
        payload = b"[" + b",".join(r.to_json().encode() for r in cards.most_urgent_first(recs)) + b"]"
        return Response(payload, media_type="application/json", headers={"X-Otrules-Seq": f"{EPOCH}-{seq}"})

    @app.get("/patients/{patient_id:path}")
    async def patient_page(request: Request, patient_id: str) -> Response:
        patient_id = patient_id or request.query_params.get("id", "")  # /patients/?id=.. (cards.patient_path)
        return bearer(request) or HTMLResponse(pages.patient_page(patient_id))

    @app.get("/")
    async def worklist(request: Request) -> Response:
        return bearer(request) or HTMLResponse(pages.worklist_page())

    @app.get("/rules")
    async def rules(request: Request) -> Response:
        return bearer(request) or HTMLResponse(pages.rules_page())

    @app.get("/login")
    async def login_form(next: str = "/") -> Response:
        return HTMLResponse(pages.login_page(next_path=_local(next)))

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await body(request)).decode("utf-8", "replace"))
        given, back = form.get("token", [""])[0], _local(form.get("next", ["/"])[0])
        if config.token is None or not _same(given, config.token):
            return HTMLResponse(pages.login_page(failed=True, next_path=back), status_code=401)
        response = RedirectResponse(back, status_code=303)
        # Lax, not Strict: the EHR's "Open in otrules" link is a navigation from another site, and the
        # pages it reaches only read (every change is a JSON POST, which Origin and Content-Type guard)
        response.set_cookie(SESSION, given, httponly=True, samesite="lax",
                            secure=config.base_url.startswith("https:"), path="/")
        return response

    @app.get("/api/patient")
    def api_patient_query(request: Request, id: str) -> Response:
        return api_patient(request, id)

    @app.get("/api/patients/{patient_id:path}")
    def api_patient(request: Request, patient_id: str) -> Response:
        refused = bearer(request)
        if refused:
            return refused
        doc = pages.patient_json(patient_id, source.patient(patient_id), source.catalogue, source.history(),
                                 source.open_for(patient_id))
        return Response(orjson.dumps(doc), media_type="application/json")

    @app.get("/api/rules")
    def api_rules(request: Request, since: str | None = Query(None, alias="from"),
                  until: str | None = Query(None, alias="to")) -> Response:
        refused = bearer(request)
        if refused:
            return refused
        try:
            start = dt.date.fromisoformat(since) if since else None
            end = dt.date.fromisoformat(until) if until else None
        except ValueError:
            return _error(400, "from, to: dates written YYYY-MM-DD")
        return Response(orjson.dumps(pages.rules_json(source.history(), source.all_open(), start, end)),
                        media_type="application/json")

    @app.get("/api/stream")
    async def stream(request: Request, since: str | None = None) -> Response:
        """Server-Sent Events: `open` and `closed` recommendations as they happen. A reconnecting
        browser sends Last-Event-ID and gets what it missed, or `reload` past what is kept."""
        refused = bearer(request)
        if refused:
            return refused
        seq = _resume(request.headers.get("last-event-id"), since, source.changes)

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            if seq is None:  # the client's position is not one of ours: it reloads, then comes back
                yield b"event: reload\ndata: {}\n\n"
                return
            position = seq
            while not await request.is_disconnected():
                missed = source.changes.since(position)
                if missed is None:  # fell behind what is kept
                    yield b"event: reload\ndata: {}\n\n"
                    return
                for n, rec in missed:
                    kind = b"opened" if rec.status == "open" else b"closed"
                    yield b"id: %s-%d\nevent: %s\ndata: %s\n\n" % (EPOCH.encode(), n, kind, rec.to_json().encode())
                    position = n
                if not missed:
                    await asyncio.to_thread(source.changes.wait, position, 10.0)
                    if source.changes.last <= position:
                        yield b": keep-alive\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz")
    async def healthz() -> Response:
        """200 once the open recommendations are loaded (Kafka: caught up) and kept current; else 503."""
        if not source.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return app


def _same(given: str, token: str) -> bool:
    """Constant-time, as bytes: compare_digest refuses str with characters beyond ASCII."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"))


def _local(path: str) -> str:
    """Where to go after signing in: a path of ours only (never //host or a scheme: no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _resume(last_event_id: str | None, since: str | None, changes: Any) -> int | None:
    """Where a stream starts: after the client's last event if it is one of this process's (ids are
    `<epoch>-<n>`); None (the client must reload) for an id of another process, or one ahead of ours."""
    mark = last_event_id or since
    if mark is None:
        return int(changes.last)
    epoch, _, n = mark.rpartition("-")
    if epoch != EPOCH or not n.isdigit() or int(n) > changes.last:
        return None
    return int(n)


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


