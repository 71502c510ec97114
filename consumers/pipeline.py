"""The embedded pipeline: the event core with file sinks (`otrules run`, smoke runs, benches).

Rejected records go to a `DeadLetterSink` (and `on_reject`, which `otrules run`
uses for its stderr line); an event the engine fails on is dead-lettered and
the run goes on (`Fault.DEAD_LETTER`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence

from otrules.consumers.core import EventCore, Fault, Record, Rejection, Tally
from otrules.consumers.deadletter import DeadLetter, DeadLetterSink
from otrules.consumers.fhir.mapping import FhirMapper
from otrules.consumers.states import PatientStates
from otrules.engine import Engine
from otrules.schemas import Recommendation


class FileSink:
    """Recommendations to a callable (a JSONL writer, a list), rejections to a dead-letter file."""

    def __init__(self, emit: Callable[[Recommendation], None], dead_letters: DeadLetterSink,
                 on_reject: Callable[[DeadLetter], None] | None = None) -> None:
        self.emit = emit
        self.dead_letters = dead_letters
        self.on_reject = on_reject

    def recommend(self, recs: Sequence[Recommendation], record: Record | None) -> None:
        for rec in recs:
            self.emit(rec)

    def dead_letter(self, record: Record, rejection: Rejection) -> None:
        read_to = None if record.byte_offset is None else \
            record.byte_offset + (record.line_bytes if record.line_bytes is not None else len(record.raw))
        letter = DeadLetter(record.source, record.line, rejection.reason, record.raw, rejection.field,
                            record.byte_offset, record.fhir, read_to)
        self.dead_letters.write(letter)
        if self.on_reject is not None:
            self.on_reject(letter)


class Pipeline:
    """Records through the engine, one in-memory state per patient; `summary` is the tally."""

    def __init__(self, engine: Engine, emit: Callable[[Recommendation], None], dead_letters: DeadLetterSink,
                 on_reject: Callable[[DeadLetter], None] | None = None, states: PatientStates | None = None,
                 fault: Fault = Fault.DEAD_LETTER, input_format: str = "auto", fhir: FhirMapper | None = None,
                 max_future: dt.timedelta | None = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.states = states if states is not None else PatientStates()
        self.core = EventCore(engine, self.states, FileSink(emit, dead_letters, on_reject), fault,
                              input_format=input_format, fhir=fhir, max_future=max_future, clock=clock)

    @property
    def summary(self) -> Tally:
        return self.core.tally

    def feed(self, records: Iterable[Record]) -> Tally:
        return self.core.feed(records)

    def sweep(self, at: dt.datetime, retention: dt.timedelta | None = None) -> int:
        """Advance the clock to `at` for every patient, then forget expired ones; returns
        the recommendations the sweep made."""
        before = self.core.tally.swept
        self.core.sweep(at, retention)
        return self.core.tally.swept - before
