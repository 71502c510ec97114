"""The embedded pipeline: events in, engine, recommendations and dead letters out.

Nothing is lost and the counts add up: read = processed + rejected + duplicates.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from otrules.consumers.deadletter import DeadLetter, DeadLetterSink
from otrules.consumers.jsonl import Line
from otrules.consumers.states import PatientStates
from otrules.engine import Engine
from otrules.schemas import EventRejected, Recommendation, parse_event


@dataclass
class RunSummary:
    read: int = 0
    processed: int = 0
    rejected: int = 0
    duplicates: int = 0
    swept: int = 0  # recommendations made when time advanced (sweeps), part of by_kind
    expired: int = 0  # patients forgotten after their plans' retention
    last_event_at: dt.datetime | None = None
    by_kind: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)

    @property
    def recommendations(self) -> int:
        return sum(self.by_kind.values())

    @property
    def balanced(self) -> bool:
        return self.read == self.processed + self.rejected + self.duplicates


class Pipeline:
    """Feeds lines through the engine with one in-memory state per patient."""

    def __init__(
        self,
        engine: Engine,
        emit: Callable[[Recommendation], None],
        dead_letters: DeadLetterSink,
        on_reject: Callable[[DeadLetter], None] | None = None,
        source_name: str = "-",
        states: PatientStates | None = None,
    ) -> None:
        self.engine = engine
        self.emit = emit
        self.dead_letters = dead_letters
        self.on_reject = on_reject
        self.source_name = source_name
        self.states = states if states is not None else PatientStates()
        self.summary = RunSummary()

    def feed(self, lines: Iterable[Line]) -> RunSummary:
        for line in lines:
            self.feed_one(line)
        return self.summary

    def feed_one(self, line: Line) -> None:
        summary = self.summary
        summary.read += 1
        try:
            event = parse_event(line.raw, self.engine.catalogue)
        except EventRejected as exc:
            self._reject(line, exc.reason)
            return
        state = self.states.get_or_new(event.patient_id)
        try:
            outcome = self.engine.process(state, event)
        except Exception as exc:  # an engine fault on one event must not stop a years-long run
            # Not rolled back (a snapshot per event would cost a quarter of the run's time):
            # the patient keeps what was applied before the fault. The Kafka service rolls back.
            self._reject(line, f"internal error: the rules engine failed on this event ({type(exc).__name__})")
            return
        if outcome.duplicate:
            summary.duplicates += 1
            return
        summary.processed += 1
        if summary.last_event_at is None or event.occurred_at > summary.last_event_at:
            summary.last_event_at = event.occurred_at
        self._emit(outcome.recommendations)

    def sweep(self, at: dt.datetime, retention: dt.timedelta | None = None) -> int:
        """Advance the clock to `at` for every patient (sorted, so output is deterministic);
        then forget patients whose plans all closed more than `retention` ago."""
        made = 0
        for patient_id in self.states.patient_ids():
            state = self.states.get_or_new(patient_id)
            recs = self.engine.sweep(state, at)
            made += len(recs)
            self._emit(recs)
            if retention is not None and self.engine.expire(state, at, retention):
                self.states.discard(patient_id)
                self.summary.expired += 1
        self.summary.swept += made
        return made

    def _emit(self, recs: Iterable[Recommendation]) -> None:
        for rec in recs:
            self.summary.by_kind[rec.kind] += 1
            self.summary.by_rule[f"{rec.rule.ruleset}/{rec.rule.id}"] += 1
            self.emit(rec)

    def _reject(self, line: Line, reason: str) -> None:
        self.summary.rejected += 1
        letter = DeadLetter(self.source_name, line.number, reason, line.raw)
        self.dead_letters.write(letter)
        if self.on_reject is not None:
            self.on_reject(letter)
