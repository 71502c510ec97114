"""`otrules backtest`: what a ruleset change would have recommended differently.

Both rulesets run over the same history in one pass. Recommendations are
compared by (rule id, patient, trigger event, goal), so a new version or a
renamed copy of a ruleset lines up with its baseline; one that appears only in
the new run is *added*, only in the baseline *removed*, in both with another
kind, indicator or summary *changed*.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from otrules.consumers import EventCore, PatientStates, Record, Rejection
from otrules.consumers.fhir.mapping import FhirMapper
from otrules.engine import Engine
from otrules.schemas import Recommendation

Key = tuple[str, str, str, str]  # rule, patient, event, goal


@dataclass(frozen=True, slots=True)
class Brief:
    """What is kept of each recommendation: enough to show a difference."""

    rule: str
    kind: str
    indicator: str
    goal: str | None
    event: str
    occurred_at: str
    summary: str

    @classmethod
    def of(cls, rec: Recommendation) -> Brief:
        return cls(rec.rule.id, rec.kind, rec.indicator, rec.goal_id, rec.triggered_by[0], rec.occurred_at, rec.summary)


@dataclass
class Counts:
    baseline: int = 0
    new: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0


@dataclass
class Report:
    baseline: str
    new: str
    events: int = 0
    rejected: int = 0
    engine_failures: int = 0  # events an engine failed on (dead-lettered, the backtest went on)
    by_rule: dict[str, Counts] = field(default_factory=dict)
    by_kind: dict[str, Counts] = field(default_factory=dict)
    patients_changed: int = 0
    patients_total: int = 0
    samples: dict[str, list[tuple[str, Brief]]] = field(default_factory=dict)  # patient -> [(+/-/~, brief)]
    # clinicians' answers in the history, per rule of the baseline (the rules they answered): what
    # clinical leads tune with (contracts.md §8); {"accepted": n, "overridden": n, "reasons": {code: n}}
    feedback: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        def counts(d: dict[str, Counts]) -> dict[str, dict[str, int]]:
            return {k: vars(v) for k, v in sorted(d.items())}

        return {
            "baseline": self.baseline, "new": self.new, "events": self.events, "rejected": self.rejected,
            "engine_failures": self.engine_failures,
            "by_rule": counts(self.by_rule), "by_kind": counts(self.by_kind),
            "patients_changed": self.patients_changed, "patients_total": self.patients_total,
            "samples": {p: [{"change": c, **asdict(b)} for c, b in items] for p, items in self.samples.items()},
            "feedback": self.feedback,
        }


class _Side:
    """One engine over the history: the event core with a sink that keeps what it recommends."""

    def __init__(self, engine: Engine, input_format: str = "auto", fhir: FhirMapper | None = None,
                 max_future: dt.timedelta | None = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.engine = engine
        self.states = PatientStates()
        self.found: dict[Key, Brief] = {}
        self.core = EventCore(engine, self.states, self, input_format=input_format, fhir=fhir, max_future=max_future,
                              clock=clock)

    def recommend(self, recs: Sequence[Recommendation], record: Record | None) -> None:
        for rec in recs:
            if rec.status == "closed":
                continue  # what was recommended is compared; closures follow from it
            self.found[(rec.rule.id, rec.patient_id, rec.triggered_by[0], rec.goal_id or "")] = Brief.of(rec)

    def dead_letter(self, record: Record, rejection: Rejection) -> None:
        pass  # counted in the core's tally


def backtest(new: Engine, baseline: Engine, records: Iterable[Record], samples: int = 5,
             progress: Callable[[int], None] | None = None, as_of: dt.datetime | None = None,
             input_format: str = "auto",
             fhir: tuple[FhirMapper | None, FhirMapper | None] = (None, None),
             max_future: dt.timedelta | None = None, clock: Callable[[], dt.datetime] | None = None) -> Report:
    """Run both engines over `records`, advance time to `as_of` (default: the last
    event's time, as `otrules run` does), and compare what they recommend. `fhir`: the
    baseline's and the new side's FHIR mapping (None: the bundled code table)."""
    report = Report(_label(baseline), _label(new))
    base = _Side(baseline, input_format, fhir[0], max_future, clock)
    fresh = _Side(new, input_format, fhir[1], max_future, clock)
    same_catalogue = new.catalogue == baseline.catalogue
    for record in records:
        event = fresh.core.handle(record)
        # one parse serves both when the catalogues agree (a rejected record is rejected by both); a FHIR
        # line is mapped by each side, against its own state
        if same_catalogue and event is not None and len(fresh.core.events) == 1 and not fresh.core.is_fhir(record):
            base.core.handle(record, event=event)
        else:
            base.core.handle(record)
        if progress is not None:
            progress(len(record.raw) + 1)
    for side in (base, fresh):
        side.core.flush()  # the end of the history releases what a reorder window holds
    tally = fresh.core.tally
    report.events, report.rejected = tally.read, tally.rejected
    report.engine_failures = tally.rejected_by["engine"] + base.core.tally.rejected_by["engine"]
    at = as_of or max(filter(None, (fresh.core.closing_time(), base.core.closing_time())), default=None)
    if at is not None:
        for side in (base, fresh):
            side.core.sweep(at)
    _compare(report, base.found, fresh.found, samples)
    report.feedback = _feedback(base.core.tally)
    report.patients_total = len(fresh.states)
    return report


def _compare(report: Report, old: dict[Key, Brief], new: dict[Key, Brief], samples: int) -> None:
    changed_patients: dict[str, list[tuple[str, Brief]]] = {}
    for key, brief in old.items():
        _count(report, brief, "baseline")
        other = new.get(key)
        if other is None:
            _count(report, brief, "removed")
            changed_patients.setdefault(key[1], []).append(("-", brief))
        elif (other.kind, other.indicator, other.summary) != (brief.kind, brief.indicator, brief.summary):
            _count(report, other, "changed")
            changed_patients.setdefault(key[1], []).append(("~", other))
    for key, brief in new.items():
        _count(report, brief, "new")
        if key not in old:
            _count(report, brief, "added")
            changed_patients.setdefault(key[1], []).append(("+", brief))
    report.patients_changed = len(changed_patients)
    for patient in sorted(changed_patients)[:samples]:
        report.samples[patient] = sorted(changed_patients[patient], key=lambda cb: (cb[1].occurred_at, cb[1].rule))


def _feedback(tally: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (rule, outcome), n in sorted(tally.feedback.items()):
        out.setdefault(rule, {"accepted": 0, "overridden": 0, "reasons": {}})[outcome] = n
    for (rule, code), n in sorted(tally.override_reasons.items()):
        out.setdefault(rule, {"accepted": 0, "overridden": 0, "reasons": {}})["reasons"][code] = n
    return out


def _count(report: Report, brief: Brief, column: str) -> None:
    for table, key in ((report.by_rule, brief.rule), (report.by_kind, brief.kind)):
        counts = table.setdefault(key, Counts())
        setattr(counts, column, getattr(counts, column) + 1)


def _label(engine: Engine) -> str:
    return ", ".join(f"{rs.name} {rs.version} ({rs.digest[:15]}…)" for rs in engine.rulesets)


def render(report: Report, out: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=out, width=120 if out is not None and not out.isatty() else None)
    failures = f", {report.engine_failures} failed in an engine" if report.engine_failures else ""
    console.print(f"Backtest over {report.events} events ({report.rejected} rejected{failures}), "
                  f"{report.patients_total} patients")
    console.print(f"  baseline: {report.baseline}\n  new:      {report.new}")
    for title, table_data in (("by rule", report.by_rule), ("by kind", report.by_kind)):
        table = Table(title=title, title_justify="left")
        for col in ("", "baseline", "new", "added", "removed", "changed"):
            table.add_column(col, justify="left" if not col else "right")
        for key, c in sorted(table_data.items()):
            style = "" if not (c.added or c.removed or c.changed) else "bold"
            table.add_row(key, str(c.baseline), str(c.new), _signed("+", c.added), _signed("-", c.removed),
                          _signed("~", c.changed), style=style)
        console.print(table)
    if report.feedback:
        table = Table(title="clinician feedback in the history, by baseline rule", title_justify="left")
        for col in ("", "accepted", "overridden", "override reasons"):
            table.add_column(col, justify="left" if col in ("", "override reasons") else "right")
        for rule, f in report.feedback.items():
            reasons = ", ".join(f"{code} {n}" for code, n in f["reasons"].items())
            table.add_row(rule, str(f["accepted"]), str(f["overridden"]), escape(reasons))
        console.print(table)
    console.print(f"{report.patients_changed} of {report.patients_total} patients would get different recommendations"
                  + (f"; the first {len(report.samples)}:" if report.samples else "."))
    for patient, items in report.samples.items():
        console.print(f"  {patient}")
        for change, b in items:
            goal = f" goal {b.goal}" if b.goal else ""
            console.print(f"    {change} {b.occurred_at[:10]} {b.rule} ({b.kind}, {b.indicator}{goal}) at {b.event}: "
                          f"{b.summary}", markup=False, highlight=False)


def _signed(sign: str, n: int) -> str:
    return f"{sign}{n}" if n else "0"
