"""The one event core: parse → patient state → engine → tally → emit, and sweep/expire.

`run`, `consume`, `backtest`, `explain` and `test` all feed records through
`EventCore`; each is an adapter that brings its own source, its own states,
its own sink and its failure policy for an event the engine fails on:

- `Fault.DEAD_LETTER`: dead-letter the event and go on (files: a years-long
  run must not stop on one event; the patient keeps what the engine applied
  before the fault, since a snapshot per event would cost a quarter of the
  run's time);
- `Fault.ISOLATE`: the same, but the patient's state is rolled back to before
  the event first (the Kafka service's careful retry of a failed batch);
- `Fault.RAISE`: raise `EventFailed` so the caller rolls its whole batch back
  (the Kafka service's fast path, where a transaction gives the rollback).

Counts add up in one `Tally`: read = processed + rejected + duplicates.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from otrules.consumers.states import PatientStates
from otrules.engine import Engine, PatientState, Released
from otrules.schemas import Event, EventRejected, OtrulesError, Recommendation, parse_event


class Fault(enum.Enum):
    """What the core does with an event the engine fails on (see the module docstring)."""

    DEAD_LETTER = "dead-letter"
    ISOLATE = "isolate"
    RAISE = "raise"


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a microsecond per record
class Record:
    """One input record and where it came from.

    `keyed` records come from Kafka, where the key decides the partition and so
    which instance owns the patient: it must be the body's patient_id."""

    raw: bytes
    source: str  # a file name, "-" for stdin, or a topic
    line: int | None = None  # line number in a file
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None
    keyed: bool = False
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def where(self) -> str:
        if self.offset is not None:
            return f"{self.source}[{self.partition}]@{self.offset}"
        return f"{self.source}:{self.line}" if self.line is not None else self.source


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was set aside: `reason` names field and value (for the dead-letter
    sink only), `field` names the field alone (safe for stderr and logs)."""

    field: str
    reason: str
    kind: str = "invalid"  # invalid | key | engine | too-large | state-too-large


class EventFailed(OtrulesError):
    """The engine (or a sink's size check) failed on one record; raised under `Fault.RAISE`
    so the caller rolls its batch back and retries it carefully."""

    def __init__(self, record: Record, rejection: Rejection) -> None:
        super().__init__(f"{record.where}: {rejection.kind}")
        self.record, self.rejection = record, rejection


class TooLarge(OtrulesError):
    """An output of one event cannot be published (over the record size limit).
    `what` names the output, never its content."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} of {size} bytes is over the {limit}-byte record limit")
        self.what, self.size, self.limit = what, size, limit


class States(Protocol):
    """Patient states as the core needs them (PatientStates, a Kafka store, a batch view)."""

    def get(self, patient_id: str, keep: bool = True) -> PatientState | None: ...
    def put(self, state: PatientState) -> None: ...
    def put_raw(self, patient_id: str, value: bytes | None) -> None: ...
    def patient_ids(self) -> list[str]: ...


class Sink(Protocol):
    """Where the core's outputs go. `recommend` gets all of one event's recommendations at
    once and either takes them all or raises `TooLarge` having sent none."""

    def recommend(self, recs: Sequence[Recommendation], record: Record | None) -> None: ...
    def dead_letter(self, record: Record, rejection: Rejection) -> None: ...


@dataclass
class Tally:
    """What a run, a batch or a service did; `copy()` before a batch, put back on abort."""

    read: int = 0
    processed: int = 0
    rejected: int = 0
    duplicates: int = 0
    swept: int = 0  # recommendations made when time advanced (sweeps), part of the kinds
    expired: int = 0  # patients forgotten after their plans' retention
    dropped: int = 0  # remembered event ids and plans let go by the state bound
    unpublished: int = 0  # sweep recommendations over the record size limit (no event to dead-letter)
    sweep_failures: int = 0  # patients whose sweep failed (left as they were; the sweep went on)
    late: int = 0  # events older than their plan's latest: placed in history, recommended nothing
    last_event_at: dt.datetime | None = None
    by_kind: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)
    rejected_by: Counter[str] = field(default_factory=Counter)  # rejection kind -> count
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)  # (event type, processed|duplicate)

    @property
    def recommendations(self) -> int:
        return sum(self.by_kind.values())

    @property
    def balanced(self) -> bool:
        return self.read == self.processed + self.rejected + self.duplicates

    def copy(self) -> Tally:
        return replace(self, by_kind=Counter(self.by_kind), by_rule=Counter(self.by_rule),
                       rejected_by=Counter(self.rejected_by), by_type=Counter(self.by_type))

    def count(self, recs: Iterable[Recommendation]) -> None:
        for rec in recs:
            self.by_kind[rec.kind] += 1
            self.by_rule[f"{rec.rule.ruleset}/{rec.rule.id}"] += 1


class EventCore:
    """Feeds records through the engine; every command that reads events drives one."""

    def __init__(self, engine: Engine, states: States, sink: Sink, fault: Fault = Fault.DEAD_LETTER,
                 tally: Tally | None = None, max_state_bytes: int | None = None) -> None:
        self.engine = engine
        self.states = states
        self.sink = sink
        self.fault = fault
        self.tally = tally if tally is not None else Tally()
        self.max_state_bytes = max_state_bytes  # checked after each event under Fault.ISOLATE
        self._in_place = isinstance(states, PatientStates)  # a state it hands out is changed in place
        self._ended = False  # `flush` was called: the input is complete, nothing more will arrive

    def feed(self, records: Iterable[Record]) -> Tally:
        for record in records:
            self.handle(record)
        return self.tally

    def parse(self, record: Record) -> Event:
        """The event of a record, or `EventRejected` naming the field (and, in `reason`, the value)."""
        event = parse_event(record.raw, self.engine.catalogue)
        if record.keyed:
            self._check_key(record, event)
        return event

    @staticmethod
    def _check_key(record: Record, event: Event) -> None:
        """contracts.md §1: the key decides the partition, so it must be the body's patient_id."""
        if record.key is None:
            raise EventRejected("key: the Kafka message has no key; it must be the patient_id", "key")
        patient = event.patient_id.encode()
        if record.key != patient:
            raise EventRejected(f"key: the Kafka key {_shown(record.key)} is not the body's patient_id "
                                f"{_shown(patient)}", "key")

    def handle(self, record: Record, fault: Fault | None = None, event: Event | None = None) -> Event | None:
        """Process one record (already parsed as `event`, if given); returns its event, or
        None if it was rejected."""
        tally = self.tally
        tally.read += 1
        try:
            if event is None:
                event = parse_event(record.raw, self.engine.catalogue)
            if record.keyed:
                self._check_key(record, event)
        except EventRejected as exc:
            kind = "key" if exc.field == "key" else "invalid"
            self.reject(record, Rejection(exc.field or "(event)", exc.reason, kind))
            return None
        if fault is None:
            fault = self.fault
        try:
            state = self.states.get(event.patient_id)
        except ValueError as exc:  # stored bytes this otrules cannot read: keep them, set the event aside
            self.reject(record, Rejection("(state)", f"the patient's stored state cannot be read ({exc})", "state"))
            return None
        isolate = fault is Fault.ISOLATE
        before = None if state is None or not isolate else state.to_bytes()
        created = state is None
        if state is None:
            state = PatientState(event.patient_id)
        try:
            outcome = self.engine.process(state, event)
            if isolate and self.max_state_bytes is not None:
                # the same bound the changelog applies, record overhead and key included
                size = len(state.to_bytes()) + len(event.patient_id.encode()) + _RECORD_OVERHEAD
                if size > self.max_state_bytes:
                    raise TooLarge("the patient's state", size, self.max_state_bytes)
            if outcome.recommendations:
                self.sink.recommend(outcome.recommendations, record)  # raises TooLarge having sent nothing
            if outcome.released:
                self._publish_released(outcome.released, record)
        except EventRejected as exc:  # the engine refused it for what the patient's state says; nothing applied
            self.reject(record, Rejection(exc.field or "(event)", exc.reason, "invalid"))
            return None
        except Exception as exc:  # one event's fault must not stop the stream (see Fault)
            if isinstance(exc, OSError) or (_is_sink_error(exc) and not isinstance(exc, TooLarge)):
                raise  # the output is broken (a closed pipe, a broker away): not this event's fault
            rejection = _fault_rejection(exc)
            if fault is Fault.RAISE:
                raise EventFailed(record, rejection) from exc
            if isolate:
                self.states.put_raw(event.patient_id, before)
            self.reject(record, rejection)
            return None
        if created or not self._in_place:
            self.states.put(state)
        if outcome.duplicate:
            tally.duplicates += 1
            tally.by_type[event.type, "duplicate"] += 1
            return event
        tally.processed += 1
        tally.by_type[event.type, "processed"] += 1
        if outcome.dropped:
            tally.dropped += outcome.dropped
        if outcome.late:
            tally.late += 1
        if tally.last_event_at is None or event.occurred_at > tally.last_event_at:
            tally.last_event_at = event.occurred_at
        if outcome.recommendations:
            tally.count(outcome.recommendations)
        return event

    def _publish_released(self, released: Sequence[Released], record: Record | None) -> None:
        """Held events the reorder window let go: each one's recommendations are published (or
        that one event dead-lettered) on its own, so one cannot cost another its output."""
        tally = self.tally
        for item in released:
            failure = item.failure
            if failure is None and item.recommendations:
                try:
                    self.sink.recommend(item.recommendations, record)
                except TooLarge as exc:
                    rejection = _fault_rejection(exc)
                    failure = rejection.field, rejection.reason, rejection.kind
                else:
                    tally.count(item.recommendations)
            if failure is not None:  # it was counted processed when it arrived: now it is rejected
                tally.processed -= 1
                tally.by_type[item.event.type, "processed"] -= 1
                self.reject(_held_record(item.event, record), Rejection(*failure))
            elif item.late:
                tally.late += 1
            tally.dropped += item.dropped

    def flush(self, states: States | None = None) -> None:
        """The end of an input: every event still held in a reorder window is applied."""
        states = states if states is not None else self.states
        self._ended = True
        if not self.engine.reorder_window:
            return
        for patient_id in states.patient_ids():
            state = states.get(patient_id)
            if state is None or not state.held:
                continue
            released = self.engine.flush(state)
            self._publish_released(released, None)
            states.put(state)

    def set_aside(self, record: Record, rejection: Rejection) -> None:
        """A record dead-lettered without processing (the caller already knows why): read and rejected."""
        self.tally.read += 1
        self.reject(record, rejection)

    def reject(self, record: Record, rejection: Rejection) -> None:
        self.tally.rejected += 1
        self.tally.rejected_by[rejection.kind] += 1
        self.sink.dead_letter(record, rejection)

    def sweep(self, at: dt.datetime, retention: dt.timedelta | None = None, states: States | None = None,
              changes: bool = False) -> list[str]:
        """Advance the clock to `at` for every patient (sorted: output is deterministic), then
        forget patients whose plans all closed more than `retention` ago.

        With `changes`, returns the patients whose state changed (the Kafka service writes
        those to its changelog): states are then read without joining the decoded few and
        compared as bytes, since most are unchanged."""
        states = states if states is not None else self.states
        changed: list[str] = []
        for patient_id in states.patient_ids():
            if self._sweep_one(patient_id, at, retention, states, changes):
                changed.append(patient_id)
        return changed

    def _sweep_one(self, patient_id: str, at: dt.datetime, retention: dt.timedelta | None, states: States,
                   changes: bool) -> bool:
        """One patient's sweep; a failure is this patient's alone: its state is left as it was
        (with `changes`), nothing of it is published, it is counted, and the sweep goes on."""
        before: bytes | None = None
        try:
            state = states.get(patient_id, keep=not changes)
            if state is None:
                return False
            before = state.to_bytes() if changes else None
            # with a reorder window, the clock runs the window behind until the input ends: what
            # is still held has not been applied, and judging "now" without it would be wrong
            clock = at if self._ended else at - self.engine.reorder_window
            released = self.engine.release(state, clock.timestamp()) if state.held else ()
            recs = self.engine.sweep(state, clock)
            gone = retention is not None and self.engine.expire(state, clock, retention)
            after = None if gone or not changes else state.to_bytes()
            if after is not None and self.max_state_bytes is not None and (
                    len(after) + len(patient_id.encode()) + _RECORD_OVERHEAD > self.max_state_bytes):
                raise TooLarge("the patient's state", len(after), self.max_state_bytes)
            if released:  # only now: a failed sweep restores the state, and they are released again
                self._publish_released(released, None)
            if recs:
                try:
                    self.sink.recommend(recs, None)
                except TooLarge:  # no event to dead-letter: counted, and the sweep goes on
                    self.tally.unpublished += len(recs)
                else:
                    self.tally.count(recs)
                    self.tally.swept += len(recs)
        except Exception as exc:
            if isinstance(exc, OSError) or _is_sink_error(exc):
                raise  # the output is broken, not this patient
            self.tally.sweep_failures += 1
            if before is not None:
                states.put_raw(patient_id, before)
            return False
        if gone:
            self.tally.expired += 1
            states.put_raw(patient_id, None)
            return True
        if changes and after != before:
            states.put_raw(patient_id, after)
            return True
        return False


_RECORD_OVERHEAD = 128  # a record batch's header and one record's framing, over key and value


def _held_record(event: Event, arrived: Record | None) -> Record:
    """A held event to dead-letter: its canonical JSON (the bytes it came in are not kept)."""
    raw = event.model_dump_json().encode()
    source = f"{arrived.source} (reorder window)" if arrived is not None else "(reorder window)"
    key = event.patient_id.encode()
    return Record(raw, source, key=key, keyed=arrived.keyed if arrived is not None else False,
                  partition=arrived.partition if arrived is not None else None)


def _is_sink_error(exc: BaseException) -> bool:
    """Errors from a sink's transport (Kafka's client), as opposed to the engine's."""
    return type(exc).__module__.startswith("kafka.")


def _fault_rejection(exc: BaseException) -> Rejection:
    if isinstance(exc, TooLarge):
        kind = "state-too-large" if exc.what == "the patient's state" else "too-large"
        return Rejection("(event)", f"too large: {exc}", kind)
    return Rejection("(event)", f"internal error: the rules engine failed on this event ({type(exc).__name__})",
                     "engine")


def _shown(key: bytes) -> str:
    """A key as the reason shows it: at most 64 characters (a key may be of any size)."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return f"0x{key[:32].hex()}"
    return repr(text if len(text) <= 64 else text[:63] + "…")
