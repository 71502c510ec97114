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

Counts add up in one `Tally`: read = processed + rejected + duplicates + skipped.

Time is bounded (contracts.md §1): with `max_future`, an event whose `occurred_at`
lies more than that after processing time (`clock()`: the wall clock, or a
command's --as-of) is rejected, naming `occurred_at`, before it reaches any state.
`Tally.accepted_at` (where a closing sweep runs) moves only with accepted plan,
evaluation, visit and discharge events: applied, or released by a reorder window and applied
(one the window held and then dead-lettered never moves it).

Input is otrules' JSON events or FHIR R4 (`input_format`: `auto` tells them
apart by a top-level `resourceType`). FHIR is an adapter in front of the same
steps: `consumers.fhir` turns a line into events, which go through
`_process` like any other; for FHIR input the counts are of resources.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import orjson

from otrules.consumers.fhir.mapping import Apply, Duplicate, FhirMapper, Joined, Refused, Skipped, make_mapper
from otrules.consumers.fhir.resources import Entry, entries, is_fhir
from otrules.consumers.states import PatientStates
from otrules.engine import Engine, Outcome, PatientState, Released
from otrules.engine.derive import group_scores, rfc3339
from otrules.engine.state import CLOCK_TYPES
from otrules.schemas import (
    EvaluationEvent,
    Event,
    EventRejected,
    FeedbackEvent,
    OtrulesError,
    Recommendation,
    parse_event,
)

INPUT_FORMATS = ("auto", "otrules", "fhir")


class _Unreadable(Exception):
    def __init__(self, patient_id: str) -> None:
        self.patient_id = patient_id


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
    byte_offset: int | None = None  # where the line starts in a file
    fhir: dict[str, object] | None = None  # a dead-lettered FHIR entry: its Bundle id/type and entry index
    line_bytes: int | None = None  # a dead-lettered FHIR entry: the size of the line it came in (raw is less)

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
    kind: str = "invalid"  # invalid | key | future | engine | too-large | state-too-large


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
    skipped: int = 0  # FHIR resources otrules does not read (a vitals Observation, a Patient): read, not rejected
    last_event_at: dt.datetime | None = None  # the latest clinical event read, held ones included
    accepted_at: dt.datetime | None = None  # the latest clinical event applied: where a closing sweep runs
    by_kind: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)
    rejected_by: Counter[str] = field(default_factory=Counter)  # rejection kind -> count
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)  # (event type, processed|duplicate)
    skipped_by: Counter[str] = field(default_factory=Counter)  # why a FHIR resource was skipped -> count
    unfollowed: Counter[str] = field(default_factory=Counter)  # FHIR references left out of a read resource
    closed: Counter[str] = field(default_factory=Counter)  # recommendations closed, by closed_reason (§8)
    feedback: Counter[tuple[str, str]] = field(default_factory=Counter)  # (ruleset/rule, accepted|overridden)
    override_reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (ruleset/rule, reason code)
    feedback_ignored: int = 0  # feedback on an unknown or already closed recommendation: changed nothing
    retracted: int = 0  # retractions that took an evaluation's scores back
    retractions_ignored: int = 0  # retractions of an unknown or already retracted event: changed nothing

    @property
    def recommendations(self) -> int:
        return sum(self.by_kind.values())

    @property
    def balanced(self) -> bool:
        return self.read == self.processed + self.rejected + self.duplicates + self.skipped

    def copy(self) -> Tally:
        return replace(self, by_kind=Counter(self.by_kind), by_rule=Counter(self.by_rule),
                       rejected_by=Counter(self.rejected_by), by_type=Counter(self.by_type),
                       skipped_by=Counter(self.skipped_by), unfollowed=Counter(self.unfollowed),
                       closed=Counter(self.closed),
                       feedback=Counter(self.feedback), override_reasons=Counter(self.override_reasons))

    def count(self, recs: Iterable[Recommendation]) -> None:
        """New recommendations by kind and rule; closures (status closed) by why they closed."""
        for rec in recs:
            if rec.status == "closed":
                self.closed[rec.closed_reason or ""] += 1
                continue
            self.by_kind[rec.kind] += 1
            self.by_rule[f"{rec.rule.ruleset}/{rec.rule.id}"] += 1

    def accept(self, event: Event) -> None:
        """An event applied: a clinical one moves where the closing sweep runs."""
        if event.type in CLOCK_TYPES and (self.accepted_at is None or event.occurred_at > self.accepted_at):
            self.accepted_at = event.occurred_at

    def count_retraction(self, result: str | None) -> None:
        """A retraction as the engine took it (None: held in a reorder window, counted when released)."""
        if result == "applied":
            self.retracted += 1
        elif result == "ignored":
            self.retractions_ignored += 1

    def count_feedback(self, event: FeedbackEvent, result: str | None, recs: Sequence[Recommendation]) -> None:
        """What clinical leads tune rules with: accepted and overridden per rule, and why. `result`:
        what the engine did with it (None: held in a reorder window, counted when released)."""
        if result is None:
            return
        if result == "ignored" or not recs:
            self.feedback_ignored += 1
            return
        rec = recs[0]
        rule = f"{rec.rule.ruleset}/{rec.rule.id}"
        self.feedback[rule, event.outcome] += 1
        if event.override_reason is not None:
            self.override_reasons[rule, event.override_reason.code] += 1


class EventCore:
    """Feeds records through the engine; every command that reads events drives one."""

    def __init__(self, engine: Engine, states: States, sink: Sink, fault: Fault = Fault.DEAD_LETTER,
                 tally: Tally | None = None, max_state_bytes: int | None = None, input_format: str = "auto",
                 fhir: FhirMapper | None = None, max_future: dt.timedelta | None = None,
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input format {input_format!r}: one of {', '.join(INPUT_FORMATS)}")
        self.engine = engine
        self.input_format = input_format
        self._fhir = fhir  # made on first use (the code table is read then) unless given
        self.states = states
        self.sink = sink
        self.fault = fault
        self.tally = tally if tally is not None else Tally()
        self.max_state_bytes = max_state_bytes  # checked after each event under Fault.ISOLATE
        # the bound on the future (None: none, as for rule test cases) and processing time
        self.max_future = max_future
        self.clock: Callable[[], dt.datetime] = clock or _wall_clock
        self._in_place = isinstance(states, PatientStates)  # a state it hands out is changed in place
        self._ended = False  # `flush` was called: the input is complete, nothing more will arrive
        self.events: list[Event] = []  # the events the last record made (FHIR: none, one or several)
        # `otrules explain` watches one event go through: called with the patient's state before the
        # engine applies it (None for a new patient), and with None once its outputs are out
        self.observe: Callable[[Event, PatientState | None], None] | None = None

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

    def is_fhir(self, record: Record) -> bool:
        """Whether the record is read as FHIR (input format `fhir`, or `auto` and a resourceType). A
        clinician's feedback (`"type":"feedback"`, which `otrules serve` sends to the same topic) is
        otrules' own event whatever the feed's format."""
        fmt = self.input_format
        if fmt == "fhir":
            return not (b'"feedback"' in record.raw and _is_feedback(record.raw))
        return fmt == "auto" and is_fhir(record.raw)

    def handle(self, record: Record, fault: Fault | None = None, event: Event | None = None) -> Event | None:
        """Process one record (already parsed as `event`, if given); returns its event (a FHIR
        line's first; `self.events` holds them all), or None if it was rejected."""
        if event is None and self.input_format != "otrules" and self.is_fhir(record):
            self.events = self._handle_fhir(record, fault)
            return self.events[0] if self.events else None
        event = self._handle_native(record, fault, event)
        self.events = [event] if event is not None else []
        return event

    def _handle_native(self, record: Record, fault: Fault | None, event: Event | None) -> Event | None:
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
        future = self._future(event)
        if future is not None:
            self.reject(record, future)
            return None
        try:
            state = self.states.get(event.patient_id)
        except ValueError as exc:  # stored bytes this otrules cannot read: keep them, set the event aside
            self.reject(record, Rejection("(state)", f"the patient's stored state cannot be read ({exc})", "state"))
            return None
        result = self._process(record, event, fault, state)
        if isinstance(result, Rejection):
            self.reject(record, result)
            return None
        self._count(event, result)
        return event

    def now(self) -> dt.datetime:
        """Processing time: what the future bound and a closing sweep measure against."""
        return self.clock()

    def closing_time(self) -> dt.datetime | None:
        """Where a closing sweep over a file runs: the latest accepted event time, never past
        processing time (contracts.md §1)."""
        last = self.tally.accepted_at
        if last is None:
            return None
        now = self.now()
        return last if last <= now else now

    def _future(self, event: Event) -> Rejection | None:
        """The bound on the future: an event more than `max_future` after processing time."""
        if self.max_future is None:
            return None
        now = self.clock()
        if event.occurred_at - now <= self.max_future:
            return None
        shown = rfc3339(event.occurred_at)
        return Rejection("occurred_at", f"occurred_at: {shown!r} is more than {_duration(self.max_future)} after "
                                        f"the processing time {rfc3339(now)} (--max-future); check the year and "
                                        "the sending system's clock", "future")

    def _process(self, record: Record, event: Event, fault: Fault | None,
                 state: PatientState | None) -> Outcome | Rejection:
        """The engine on one event and the patient's state (None: a new patient), its outputs to
        the sink, the state put back; or why the event is set aside (not yet counted)."""
        if fault is None:
            fault = self.fault
        isolate = fault is Fault.ISOLATE
        if self.observe is not None:
            self.observe(event, state)
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
            return Rejection(exc.field or "(event)", exc.reason, "invalid")
        except Exception as exc:  # one event's fault must not stop the stream (see Fault)
            if isinstance(exc, OSError) or (_is_sink_error(exc) and not isinstance(exc, TooLarge)):
                raise  # the output is broken (a closed pipe, a broker away): not this event's fault
            rejection = _fault_rejection(exc)
            if fault is Fault.RAISE:
                raise EventFailed(record, rejection) from exc
            if isolate:
                self.states.put_raw(event.patient_id, before)
            return rejection
        if created or not self._in_place:
            self.states.put(state)
        if self.observe is not None:
            self.observe(event, None)
        return outcome

    def _count(self, event: Event, outcome: Outcome, resources: int = 1) -> None:
        """A processed (or duplicate) event in the tally; FHIR counts each resource it was made of."""
        tally = self.tally
        if outcome.duplicate:
            tally.duplicates += resources
            tally.by_type[event.type, "duplicate"] += 1
            return
        tally.processed += resources
        tally.by_type[event.type, "processed"] += 1
        if outcome.dropped:
            tally.dropped += outcome.dropped
        if outcome.late:
            tally.late += 1
        if event.type in CLOCK_TYPES and (  # a clinician's answer or a retraction is no plan's clock
                tally.last_event_at is None or event.occurred_at > tally.last_event_at):
            tally.last_event_at = event.occurred_at
        if not outcome.held:
            tally.accept(event)
        if outcome.recommendations:
            tally.count(outcome.recommendations)
        if isinstance(event, FeedbackEvent):
            tally.count_feedback(event, outcome.feedback, outcome.recommendations)
        elif outcome.retraction is not None:
            tally.count_retraction(outcome.retraction)

    def _handle_fhir(self, record: Record, fault: Fault | None) -> list[Event]:
        """A FHIR line: its resources one at a time through the mapping, each event made through
        `_process`. Counts are of resources; each refused resource is dead-lettered on its own."""
        tally = self.tally
        try:
            items = entries(record.raw)
        except EventRejected as exc:
            tally.read += 1
            self.reject(record, Rejection(exc.field or "(resource)", exc.reason, "invalid"))
            return []
        if self._fhir is None:
            self._fhir = make_mapper(self.engine.catalogue)
        touched: dict[str, PatientState] = {}
        unreadable: dict[str, str] = {}
        isolate = (fault or self.fault) is Fault.ISOLATE
        before: dict[str, bytes] = {}  # under Fault.ISOLATE: each patient's state before the resource

        def state_of(patient_id: str) -> PatientState:
            state = touched.get(patient_id)
            if state is None:
                try:
                    state = self.states.get(patient_id)
                except ValueError as exc:
                    unreadable[patient_id] = str(exc)
                    raise _Unreadable(patient_id) from None
                state = touched[patient_id] = state if state is not None else PatientState(patient_id)
            if isolate:
                before[patient_id] = state.to_bytes()
            return state

        key = None if not record.keyed else (record.key or b"").decode("utf-8", "replace")
        made: list[Event] = []
        steps = self._fhir.steps(items, state_of, key)
        while True:
            try:
                step = next(steps)
            except StopIteration:
                break
            except _Unreadable as exc:  # the mapping needed a state it cannot read: the rest of the line waits
                tally.read += 1
                reason = f"the patient's stored state cannot be read ({unreadable[exc.patient_id]})"
                self.reject(record, Rejection("(state)", reason, "state"))
                break
            if isinstance(step, Skipped):
                tally.read += 1
                tally.skipped += 1
                tally.skipped_by[step.why] += 1
                continue
            if isinstance(step, Refused):
                tally.read += 1
                self.reject(_entry_record(record, step.entry), Rejection(step.field, step.reason, step.kind))
                continue
            patient_id = step.event.patient_id if isinstance(step, Apply) else step.patient_id
            resources = len(step.where) if isinstance(step, Apply) else 1
            tally.read += resources
            state = touched.get(patient_id) or state_of(patient_id)  # the one the mapping worked on
            if isinstance(step, Duplicate):
                tally.duplicates += 1
                continue
            if isinstance(step, Joined):
                too_big = self._too_big(state) if isolate else None
                if too_big is not None:  # the join made the state too large for the changelog: undo it
                    self.states.put_raw(patient_id, before.get(patient_id))
                    touched.pop(patient_id, None)
                    self._reject_each(record, step, too_big)
                    continue
                tally.processed += 1
                self.states.put(state)
                continue
            future = self._future(step.event)
            result = future if future is not None else self._process(record, step.event, fault, state)
            if isinstance(result, Rejection):
                self._reject_each(record, step, result)
                touched.pop(patient_id, None)  # rolled back (Fault.ISOLATE) or left as it is: read it again
                continue
            for alias in step.event_ids[1:]:  # a resend of one Observation of the group alone is a duplicate
                state.remember(alias)
            if len(step.event_ids) > 1 and isinstance(step.event, EvaluationEvent):
                group_scores(state, step.event, step.event_ids)  # each Observation can be retracted alone
            self.states.put(state)
            self._count(step.event, result, resources)
            tally.unfollowed.update(step.unfollowed)
            made.append(step.event)
        return made

    def _too_big(self, state: PatientState) -> Rejection | None:
        if self.max_state_bytes is None:
            return None
        size = len(state.to_bytes()) + len(state.patient_id.encode()) + _RECORD_OVERHEAD
        if size <= self.max_state_bytes:
            return None
        return _fault_rejection(TooLarge("the patient's state", size, self.max_state_bytes))

    def _reject_each(self, record: Record, step: Apply | Joined | Duplicate, rejection: Rejection) -> None:
        wheres = step.where if isinstance(step, Apply) else [step.where]
        entries_ = step.entries if isinstance(step, Apply) and len(step.entries) == len(wheres) else \
            [None] * len(wheres)
        for where, entry in zip(wheres, entries_, strict=True):
            reason = rejection.reason if rejection.reason.startswith(where) else f"{where}: {rejection.reason}"
            self.reject(_entry_record(record, entry), replace(rejection, reason=reason))

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
            else:
                tally.accept(item.event)
                if item.late:
                    tally.late += 1
            if isinstance(item.event, FeedbackEvent):
                tally.count_feedback(item.event, item.feedback, item.recommendations)
            elif item.retraction is not None:
                tally.count_retraction(item.retraction)
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
                    self.tally.swept += sum(rec.status == "open" for rec in recs)
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


def _wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _duration(span: dt.timedelta) -> str:
    """A --max-future as people write it: 1 day, 36 hours, 90 minutes."""
    seconds = int(span.total_seconds())
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


MAX_DEAD_ENTRY = 64 * 1024
"""Bytes of a refused FHIR resource a dead letter keeps (the rest is cut, its size and hash kept)."""


def _entry_record(record: Record, entry: Entry | None) -> Record:
    """What a refused FHIR resource is dead-lettered as: the resource alone (never its whole Bundle),
    with where it was: the Bundle's id and type, the entry's index, the line and byte offset. A
    resource over MAX_DEAD_ENTRY bytes is cut, so a dead letter is bounded."""
    if entry is None or not entry.at:
        return record  # a bare resource: the line is the resource
    try:
        raw = orjson.dumps(entry.resource)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: the head of the line stands in
        raw = record.raw
    where: dict[str, object] = {"bundle_type": entry.bundle_type, "entry": entry.index}  # path: Bundle.entry[i]
    if entry.bundle_id is not None:
        where = {"bundle_id": entry.bundle_id, **where}
    if len(raw) > MAX_DEAD_ENTRY:
        where.update(size=len(raw), sha256=hashlib.sha256(raw).hexdigest(), truncated=True)
        raw = raw[:MAX_DEAD_ENTRY]
    return replace(record, raw=raw, fhir=where, line_bytes=record.line_bytes or len(record.raw))


def _held_record(event: Event, arrived: Record | None) -> Record:
    """A held event to dead-letter: its canonical JSON (the bytes it came in are not kept)."""
    raw = event.model_dump_json().encode()
    source = f"{arrived.source} (reorder window)" if arrived is not None else "(reorder window)"
    key = event.patient_id.encode()
    return Record(raw, source, key=key, keyed=arrived.keyed if arrived is not None else False,
                  partition=arrived.partition if arrived is not None else None)


def _is_feedback(raw: bytes) -> bool:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("type") == "feedback" and "resourceType" not in doc


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
