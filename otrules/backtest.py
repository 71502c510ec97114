"""`otrules backtest`: what a ruleset change would have recommended differently.

Both rulesets run over the same history in one pass. Recommendations are
compared by (rule id, patient, trigger event, goal), so a new version or a
renamed copy of a ruleset lines up with its baseline; one that appears only in
the new run is *added*, only in the baseline *removed*, in both with another
kind, indicator or summary *changed*.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from otrules.consumers import Line, PatientStates
from otrules.engine import Engine
from otrules.schemas import EventRejected, Recommendation, parse_event

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
    def of(cls, rec: Recommendation) -> "Brief":
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
    by_rule: dict[str, Counts] = field(default_factory=dict)
    by_kind: dict[str, Counts] = field(default_factory=dict)
    patients_changed: int = 0
    patients_total: int = 0
    samples: dict[str, list[tuple[str, Brief]]] = field(default_factory=dict)  # patient -> [(+/-/~, brief)]

    def as_json(self) -> dict[str, Any]:
        def counts(d: dict[str, Counts]) -> dict[str, dict[str, int]]:
            return {k: vars(v) for k, v in sorted(d.items())}

        return {
            "baseline": self.baseline, "new": self.new, "events": self.events, "rejected": self.rejected,
            "by_rule": counts(self.by_rule), "by_kind": counts(self.by_kind),
            "patients_changed": self.patients_changed, "patients_total": self.patients_total,
            "samples": {p: [{"change": c, **asdict(b)} for c, b in items] for p, items in self.samples.items()},
        }


class _Side:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.states = PatientStates()
        self.found: dict[Key, Brief] = {}

    def feed(self, event: Any) -> None:
        state = self.states.get_or_new(event.patient_id)
        self._keep(self.engine.process(state, event).recommendations)

    def sweep(self, at: dt.datetime) -> None:
        for patient_id in self.states.patient_ids():
            self._keep(self.engine.sweep(self.states.get_or_new(patient_id), at))

    def _keep(self, recs: Iterable[Recommendation]) -> None:
        for rec in recs:
            self.found[(rec.rule.id, rec.patient_id, rec.triggered_by[0], rec.goal_id or "")] = Brief.of(rec)


def backtest(new: Engine, baseline: Engine, lines: Iterable[Line], samples: int = 5,
             progress: Callable[[int], None] | None = None, as_of: dt.datetime | None = None) -> Report:
    """Run both engines over `lines`, advance time to `as_of` (default: the last
    event's time, as `otrules run` does), and compare what they recommend."""
    report = Report(_label(baseline), _label(new))
    sides = (_Side(baseline), _Side(new))
    same_catalogue = new.catalogue == baseline.catalogue
    last: dt.datetime | None = None
    for line in lines:
        report.events += 1
        try:
            events = [parse_event(line.raw, new.catalogue)] * 2 if same_catalogue else [
                parse_event(line.raw, side.engine.catalogue) for side in sides]
        except EventRejected:
            report.rejected += 1
            continue
        for side, event in zip(sides, events):
            side.feed(event)
        last = events[0].occurred_at if last is None else max(last, events[0].occurred_at)
        if progress is not None:
            progress(len(line.raw) + 1)
    if as_of or last:
        for side in sides:
            side.sweep(as_of or last)  # type: ignore[arg-type]
    _compare(report, sides[0].found, sides[1].found, samples)
    report.patients_total = len(sides[1].states)
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


def _count(report: Report, brief: Brief, column: str) -> None:
    for table, key in ((report.by_rule, brief.rule), (report.by_kind, brief.kind)):
        counts = table.setdefault(key, Counts())
        setattr(counts, column, getattr(counts, column) + 1)


def _label(engine: Engine) -> str:
    return ", ".join(f"{rs.name} {rs.version} ({rs.digest[:15]}…)" for rs in engine.rulesets)


def render(report: Report, out: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=120 if out is not None and not out.isatty() else None)
    console.print(f"Backtest over {report.events} events ({report.rejected} rejected), "
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
