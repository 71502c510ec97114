"""Where `otrules serve` gets open recommendations, and where clinicians' feedback goes.

Two sources behind one protocol (contracts.md §9): `Embedded` runs the event core
over a file (the bundled sample by default) and keeps the patients' states, so a
feedback event goes through the same engine at once; `KafkaTable` catches up from
the compacted `ot.recommendations.open` table (read_committed), follows it, and
sends feedback to `ot.events` for the Kafka service to apply.
"""

from __future__ import annotations

import collections
import datetime as dt
import io
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from otrules.consumers import DeadLetterSink, JsonlSource, Pipeline, Record
from otrules.consumers.fhir.mapping import FhirMapper
from otrules.engine import Engine, PatientState
from otrules.schemas import Catalogue, FeedbackEvent, Recommendation, parse_event

log = structlog.get_logger("otrules.serve")

FEEDBACK_NAMESPACE = uuid.UUID("6f1d1f0a-8a5e-4d5e-9a57-0b7e0f6a9c11")


class OpenSource(Protocol):
    """Open recommendations by patient, what changed (for the live worklist), and the way back for feedback."""

    @property
    def ready(self) -> bool: ...
    changes: Changes
    catalogue: Catalogue | None
    def open_for(self, patient_id: str) -> list[Recommendation]: ...
    def find(self, recommendation_id: str) -> Recommendation | None: ...
    def send_feedback(self, event: FeedbackEvent) -> None: ...
    def all_open(self) -> list[Recommendation]: ...
    def history(self) -> list[Recommendation]: ...
    def patient(self, patient_id: str) -> PatientState | None: ...
    def close(self) -> None: ...


class Changes:
    """Recommendations opened and closed, numbered, for Server-Sent Events: a client that reconnects
    with Last-Event-ID gets what it missed, or, past the last MAX_CHANGES, is told to reload."""

    MAX_CHANGES = 10_000

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: collections.deque[tuple[int, Recommendation]] = collections.deque(maxlen=self.MAX_CHANGES)
        self.last = 0

    def add(self, rec: Recommendation) -> None:
        with self._cond:
            self.last += 1
            self._items.append((self.last, rec))
            self._cond.notify_all()

    def since(self, seq: int) -> list[tuple[int, Recommendation]] | None:
        """What came after `seq`; None when some of it is no longer kept (the client must reload)."""
        with self._cond:
            if self._items and seq < self._items[0][0] - 1:
                return None
            return [(n, rec) for n, rec in self._items if n > seq]

    def wait(self, seq: int, timeout: float) -> None:
        with self._cond:
            if self.last <= seq:
                self._cond.wait(timeout)


def feedback_event(rec: Recommendation, outcome: str, at: dt.datetime, reason: dict[str, str] | None,
                   user_id: str | None, nonce: str) -> FeedbackEvent:
    """A §8 feedback event for `rec`. Its id is a function of what was answered, when and by whom, so
    a client sending the same answer twice makes a duplicate, not a second one."""
    event_id = "feedback-" + str(uuid.uuid5(FEEDBACK_NAMESPACE, "\x1f".join(
        (rec.recommendation_id, outcome, at.isoformat(), nonce))))
    body: dict[str, Any] = {"type": "feedback", "event_id": event_id, "patient_id": rec.patient_id,
                            "plan_id": rec.plan_id, "occurred_at": at.isoformat().replace("+00:00", "Z"),
                            "recommendation_id": rec.recommendation_id, "outcome": outcome}
    if reason is not None and outcome == "overridden":
        body["override_reason"] = reason
    if user_id:
        body["user_id"] = user_id
    event = parse_event(body)
    assert isinstance(event, FeedbackEvent)
    return event


class Embedded:
    """The engine over a file, in this process: feedback closes a recommendation at once. With
    `follow`, lines appended to the file are read as they come (as `tail -f` would)."""

    def __init__(self, engine: Engine, data: bytes, name: str, input_format: str = "auto",
                 fhir: FhirMapper | None = None, follow: Path | None = None,
                 max_future: dt.timedelta | None = dt.timedelta(days=1),
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        self._lock = threading.RLock()
        self.changes = Changes()
        self._history: list[Recommendation] = []
        self.input_format = input_format
        self.catalogue: Catalogue | None = engine.catalogue
        self.pipeline = Pipeline(engine, self._emitted, DeadLetterSink(None), input_format=input_format, fhir=fhir,
                                 on_reject=self._rejected, max_future=max_future, clock=clock)
        self.pipeline.feed(JsonlSource(io.BytesIO(data), name, documents=input_format != "otrules"))
        self.pipeline.core.flush()
        tally = self.pipeline.summary
        at = self.pipeline.core.closing_time()
        if at is not None:  # as `otrules run` does: time advances to the latest accepted event, never past now
            self.pipeline.sweep(at)
        log.info("loaded", events=tally.read, rejected=tally.rejected, open=len(self.all_open()))
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        if follow is not None:
            self._follower = threading.Thread(target=self._follow, args=(follow, len(data)), daemon=True,
                                              name="otrules-follow")
            self._follower.start()

    @classmethod
    def from_path(cls, engine: Engine, path: Path, follow: bool = False, **kwargs: Any) -> Embedded:
        return cls(engine, path.read_bytes(), str(path), follow=path if follow else None, **kwargs)

    @staticmethod
    def _rejected(letter: Any) -> None:
        log.warning("input rejected", where=f"line {letter.line}", field=letter.field)  # the field, not the value

    def _emitted(self, rec: Recommendation) -> None:
        self._history.append(rec)
        self.changes.add(rec)

    def _follow(self, path: Path, offset: int) -> None:
        """New complete lines of the file, every half second (a partial last line waits for its end),
        then time advances to the latest accepted event (never past now) for every open plan, as
        `otrules run` ends. A file
        that shrank was truncated or replaced (log rotation): it is read again from its start."""
        pending = b""
        number = 0
        while not self._stop.wait(0.5):
            try:
                size = path.stat().st_size
                if size < offset:
                    log.warning("the followed file shrank: reading it again from its start")
                    offset, pending = 0, b""
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                continue
            if not chunk:
                continue
            offset += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            with self._lock:
                for line in lines:
                    number += 1
                    if line.strip():
                        self.pipeline.core.handle(Record(line.rstrip(b"\r"), f"{path} (followed)", line=number))
                at = self.pipeline.core.closing_time()
                if at is not None and lines:
                    self.pipeline.sweep(at)

    @property
    def ready(self) -> bool:
        return True

    def open_for(self, patient_id: str) -> list[Recommendation]:
        with self._lock:
            state = self.pipeline.states.get(patient_id)
            return list(state.open.values()) if state is not None else []

    def all_open(self) -> list[Recommendation]:
        with self._lock:
            out: list[Recommendation] = []
            for patient_id in self.pipeline.states.patient_ids():
                state = self.pipeline.states.get(patient_id, keep=False)
                if state is not None:
                    out.extend(state.open.values())
            return out

    def history(self) -> list[Recommendation]:
        with self._lock:
            return list(self._history)

    def patient(self, patient_id: str) -> PatientState | None:
        with self._lock:
            state = self.pipeline.states.get(patient_id)
            return None if state is None else PatientState.from_bytes(state.to_bytes())  # a copy to read

    def find(self, recommendation_id: str) -> Recommendation | None:
        return next((r for r in self.all_open() if r.recommendation_id == recommendation_id), None)

    def send_feedback(self, event: FeedbackEvent) -> None:
        with self._lock:
            self.pipeline.core.handle(Record(event.model_dump_json().encode(), "serve"), event=event)

    @property
    def tally(self) -> Any:
        return self.pipeline.summary

    def close(self) -> None:
        self._stop.set()


class KafkaTable:
    """`ot.recommendations.open` followed in a background thread; feedback produced to the input topic."""

    def __init__(self, settings: Any, producer_factory: Callable[[], Any] | None = None) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self.settings = settings
        self.catalogue: Catalogue | None = None
        self.changes = Changes()
        self._rows: dict[str, list[Recommendation]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                       isolation_level="read_committed", enable_auto_commit=False,
                                       auto_offset_reset="earliest", **settings.client)
        self._ends: dict[Any, int] = {}
        self._assign()
        self._producer = (producer_factory or (lambda: KafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, acks="all", **settings.client)))()
        self.failed: str | None = None  # why the follower stopped, if it did (healthz says so)
        self._thread = threading.Thread(target=self._follow, name="otrules-open-table", daemon=True)
        self._thread.start()

    def _assign(self) -> bool:
        """The table's partitions, from the start; False while the topic does not exist yet."""
        from kafka import TopicPartition

        parts = self._consumer.partitions_for_topic(self.settings.open_topic)
        if not parts:
            return False
        tps = [TopicPartition(self.settings.open_topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self._ends = self._consumer.end_offsets(tps)
        return True

    def wait_caught_up(self, timeout: float) -> bool:
        return self._caught_up.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._caught_up.is_set() and self.failed is None and self._thread.is_alive()

    def _follow(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._ends and not self._assign():  # the table is not there yet: otrules consume makes it
                    self._stop.wait(1.0)
                    continue
                batch = self._consumer.poll(timeout_ms=200)
                with self._lock:
                    for messages in batch.values():
                        for msg in messages:
                            self._apply(msg.key, msg.value)
                if not self._caught_up.is_set() and all(
                        (self._consumer.position(tp) or 0) >= end for tp, end in self._ends.items()):
                    self._caught_up.set()
                    log.info("caught up", patients=len(self._rows))
        except Exception as exc:  # the follower is gone: say so on /healthz rather than serve a frozen table
            self.failed = type(exc).__name__
            log.error("open table follower stopped", error=self.failed)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        patient = (key or b"").decode("utf-8", "replace")
        before = {r.recommendation_id: r for r in self._rows.get(patient, ())}
        if value is None:
            self._rows.pop(patient, None)
        else:
            try:
                self._rows[patient] = [Recommendation.model_validate(r) for r in orjson.loads(value)]
            except (ValueError, TypeError):  # a row no otrules wrote: skipped, logged without its content
                log.warning("open table row skipped: not a list of recommendations")
                return
        after = {r.recommendation_id: r for r in self._rows.get(patient, ())}
        for rec_id, rec in after.items():
            if rec_id not in before:
                self.changes.add(rec)
        for rec_id, rec in before.items():  # the table says only that it left: closed, reason unknown here
            if rec_id not in after:
                self.changes.add(rec.model_copy(update={"status": "closed"}))

    def open_for(self, patient_id: str) -> list[Recommendation]:
        with self._lock:
            return list(self._rows.get(patient_id, ()))

    def all_open(self) -> list[Recommendation]:
        with self._lock:
            return [r for recs in self._rows.values() for r in recs]

    def history(self) -> list[Recommendation]:
        return self.all_open()  # the table holds what is open; the history is ot.recommendations'

    def patient(self, patient_id: str) -> PatientState | None:
        return None  # states are the Kafka service's (its changelog): the page shows the cards alone

    def find(self, recommendation_id: str) -> Recommendation | None:
        return next((r for r in self.all_open() if r.recommendation_id == recommendation_id), None)

    def send_feedback(self, event: FeedbackEvent) -> None:
        future = self._producer.send(self.settings.input_topic, key=event.patient_id.encode(),
                                     value=event.model_dump_json(exclude_none=True).encode())
        future.get(timeout=10)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()
        self._producer.close(timeout=5)
