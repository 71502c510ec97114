"""Rule test cases: a compact YAML form that lives next to a ruleset.

A clinical lead writes a short patient story and the recommendations it must
(and must not) produce; `otrules test` runs it through the real engine::

    rules: ot-core.yaml            # the rules file under test, relative to this file
    start: 2026-01-05              # day 0 (optional)
    cases:
      - name: a goal reached for the first time is advanced
        events:
          - plan: {goals: [{goal_id: g1, instrument: COPM-performance, baseline: 3, target: 7}]}
          - evaluation: {day: 14, measures: ["COPM-performance 5 g1"]}
          - evaluation: {day: 28, measures: ["COPM-performance 7 g1"]}
        expect:
          - {rule: goal-met, kind: advance_goal, goal: g1, indicator: info, event: 3}
        expect_not:
          - {rule: plateau}

Compact events: one key, the event type; `day` counts from `start`; ids,
patient, plan and times are filled in; measures may be written
"INSTRUMENT SCORE [GOAL]"; `visits: {days: [1, 2, 3], status: missed}` writes
several visits; `clock: {day: 120}` advances time with no event (a sweep of
every open plan, as `otrules run --as-of` and the Kafka service do). Any field
of the real event may be given as well.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from otrules.engine import Engine, PatientState, Problem
from otrules.schemas import EventRejected, Recommendation, parse_event

_HOURS = {"plan": 8, "evaluation": 10, "visit": 9, "discharge": 16}
_MATCH_KEYS = ("rule", "kind", "goal", "indicator", "event", "patient", "summary_contains")


class SuiteError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


@dataclass(frozen=True)
class Case:
    name: str
    line: int
    events: list[dict[str, Any]]
    expect: list[dict[str, Any]]
    expect_not: list[dict[str, Any]]
    exactly: bool = False


@dataclass(frozen=True)
class Suite:
    path: Path
    rules: Path
    cases: list[Case]


@dataclass
class CaseResult:
    case: Case
    produced: list[Recommendation] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    forbidden: list[tuple[dict[str, Any], Recommendation]] = field(default_factory=list)
    unexpected: list[Recommendation] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not (self.missing or self.forbidden or self.unexpected or self.error)


# ---------------------------------------------------------------- loading


def find_suites(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        out.extend(sorted(p.glob("*.tests.y*ml")) if p.is_dir() else [p])
    return out


def load_suite(path: Path) -> Suite:
    try:
        data = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise SuiteError([Problem(str(path), (mark.line + 1) if mark else 1, (mark.column + 1) if mark else 1,
                                  f"not valid YAML: {exc.problem}")]) from None
    if not isinstance(data, dict) or "cases" not in data or "rules" not in data:
        raise SuiteError([Problem(str(path), 1, 1, "a test file needs `rules:` (the rules file) and `cases:`")])
    start = dt.date.fromisoformat(str(data.get("start", "2026-01-05")))
    problems: list[Problem] = []
    cases: list[Case] = []
    for raw in data["cases"] or []:
        line = raw.lc.line + 1 if hasattr(raw, "lc") else 1
        name = str(raw.get("name", f"case at line {line}"))
        unknown = set(raw) - {"name", "events", "expect", "expect_not", "exactly", "description"}
        if unknown:
            first = sorted(unknown)[0]
            kline, kcol = raw.lc.key(first) if hasattr(raw, "lc") else (line - 1, 0)
            problems.append(Problem(str(path), kline + 1, kcol + 1,
                                    f"case {name!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                                    "use name, events, expect, expect_not, exactly"))
            continue
        try:
            events = expand_events(raw.get("events") or [], start)
            expect = [_matcher(m) for m in raw.get("expect") or []]
            expect_not = [_matcher(m) for m in raw.get("expect_not") or []]
        except ValueError as exc:
            problems.append(Problem(str(path), line, raw.lc.col + 1 if hasattr(raw, "lc") else 1, f"case {name!r}: {exc}"))
            continue
        cases.append(Case(name, line, events, expect, expect_not, bool(raw.get("exactly", False))))
    if problems:
        raise SuiteError(problems)
    return Suite(path, (path.parent / str(data["rules"])).resolve(), cases)


def _matcher(m: Any) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise ValueError(f"an expectation is a mapping of {', '.join(_MATCH_KEYS)}; got {m!r}")
    unknown = set(m) - set(_MATCH_KEYS)
    if unknown:
        raise ValueError(f"unknown expectation key(s) {', '.join(sorted(unknown))}; use {', '.join(_MATCH_KEYS)}")
    return dict(m)


def expand_events(raw_events: list[Any], start: dt.date) -> list[dict[str, Any]]:
    """Compact events to real ones (see the module doc)."""
    out: list[dict[str, Any]] = []
    for item in raw_events:
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"each event is one key (plan, evaluation, visit, visits, discharge); got {dict(item) if isinstance(item, dict) else item!r}")
        (kind, body), = item.items()
        body = dict(body or {})
        if kind == "visits":
            for day in body.pop("days"):
                out.append(_event("visit", {**body, "day": day}, start, len(out) + 1))
            continue
        if kind == "clock":
            day = int(body.pop("day", 0))
            at = body.pop("at", f"{(start + dt.timedelta(days=day)).isoformat()}T{body.pop('time', '23:00')}:00Z")
            out.append({"type": "clock", "at": at})
            continue
        if kind not in _HOURS:
            raise ValueError(f"unknown event type {kind!r}; use plan, evaluation, visit, visits, discharge or clock")
        out.append(_event(kind, body, start, len(out) + 1))
    return out


def _event(kind: str, body: dict[str, Any], start: dt.date, n: int) -> dict[str, Any]:
    day = body.pop("day", 0)
    time = str(body.pop("time", f"{_HOURS[kind]:02d}:00"))
    date = start + dt.timedelta(days=int(day))
    event: dict[str, Any] = {"type": kind, "event_id": body.pop("event_id", f"e-{n:03d}"),
                             "patient_id": body.pop("patient", body.pop("patient_id", "p-1")),
                             "plan_id": body.pop("plan", body.pop("plan_id", "poc-1")),
                             "occurred_at": body.pop("at", f"{date.isoformat()}T{time}:00Z")}
    if kind == "plan":
        cert_days = int(body.pop("cert_days", 90))
        event.update(setting="outpatient", frequency_per_week=2, certified_from=date.isoformat(),
                     certified_until=(date + dt.timedelta(days=cert_days - 1)).isoformat(), goals=[])
        for goal in body.get("goals", []):
            if "target_day" in goal:
                goal = dict(goal)
                goal["target_date"] = (start + dt.timedelta(days=int(goal.pop("target_day")))).isoformat()
            event["goals"].append(dict(goal))
        body.pop("goals", None)
    elif kind == "evaluation":
        event["kind"] = body.pop("kind", "progress")
        event["measures"] = [_measure(m) for m in body.pop("measures", [])]
    elif kind == "visit":
        event["status"] = body.pop("status", "attended")
    event.update(body)
    return event


def _measure(m: Any) -> dict[str, Any]:
    if isinstance(m, dict):
        return dict(m)
    parts = str(m).split()
    if len(parts) not in (2, 3):
        raise ValueError(f"a measure is 'INSTRUMENT SCORE [GOAL]', got {m!r}")
    try:
        score = float(parts[1])
    except ValueError:
        raise ValueError(f"score {parts[1]!r} in {m!r} is not a number") from None
    out: dict[str, Any] = {"instrument": parts[0], "score": int(score) if score.is_integer() else score}
    if len(parts) == 3:
        out["goal_id"] = parts[2]
    return out


# ---------------------------------------------------------------- running


def run_case(engine: Engine, case: Case) -> CaseResult:
    result = CaseResult(case)
    states: dict[str, PatientState] = {}
    index_of: dict[str, int] = {}
    for n, raw in enumerate(case.events, start=1):
        if raw["type"] == "clock":  # time advances with no event: sweep every patient
            at = dt.datetime.fromisoformat(raw["at"].replace("Z", "+00:00"))
            index_of[f"clock@{at.isoformat().replace('+00:00', 'Z')}"] = n
            for patient_id in sorted(states):
                result.produced.extend(engine.sweep(states[patient_id], at))
            continue
        try:
            event = parse_event(raw, engine.catalogue)
        except EventRejected as exc:
            result.error = f"event {n} is not valid: {exc.reason}"
            return result
        index_of[event.event_id] = n
        state = states.setdefault(event.patient_id, PatientState(event.patient_id))
        result.produced.extend(engine.process(state, event).recommendations)
    unmatched = list(result.produced)
    for want in case.expect:
        hit = next((r for r in unmatched if _matches(want, r, index_of)), None)
        if hit is None:
            result.missing.append(want)
        else:
            unmatched.remove(hit)
    for never in case.expect_not:
        result.forbidden += [(never, r) for r in result.produced if _matches(never, r, index_of)]
    if case.exactly:
        result.unexpected = unmatched
    return result


def _matches(want: dict[str, Any], rec: Recommendation, index_of: dict[str, int]) -> bool:
    actual = {"rule": rec.rule.id, "kind": rec.kind, "goal": rec.goal_id, "indicator": rec.indicator,
              "patient": rec.patient_id}
    for key, value in want.items():
        if key == "event":
            trigger = rec.triggered_by[0]
            if value != trigger and value != index_of.get(trigger):
                return False
        elif key == "summary_contains":
            if str(value) not in rec.summary:
                return False
        elif actual[key] != value:
            return False
    return True


def run_suites(paths: list[Path], engine_for: Callable[[Path], Engine],
               echo: Callable[[str], None]) -> tuple[int, int]:
    """Run every case; print PASS/FAIL lines and differences; return (passed, failed)."""
    passed = failed = 0
    for path in find_suites(paths):
        suite = load_suite(path)
        engine = engine_for(suite.rules)
        ruleset = engine.rulesets[0]
        echo(f"{path} ({ruleset.name} {ruleset.version})")
        for case in suite.cases:
            result = run_case(engine, case)
            if result.passed:
                passed += 1
                echo(f"  PASS  {case.name}")
                continue
            failed += 1
            echo(f"  FAIL  {case.name}  ({path}:{case.line})")
            for line in describe_failure(result):
                echo(f"        {line}")
    return passed, failed


def describe_failure(result: CaseResult) -> list[str]:
    lines = []
    if result.error:
        return [result.error]
    for want in result.missing:
        lines.append(f"expected   {_show_want(want)}  -- not produced")
    for never, rec in result.forbidden:
        lines.append(f"must not   {_show_want(never)}  -- but got {_show_rec(rec)}")
    for rec in result.unexpected:
        lines.append(f"unexpected {_show_rec(rec)}")
    if result.missing:
        lines.append("produced:" if result.produced else "produced:  nothing")
        lines += [f"           {_show_rec(r)}" for r in result.produced]
    return lines


def _show_want(want: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in want.items()) + "}"


def _show_rec(rec: Recommendation) -> str:
    goal = f" goal {rec.goal_id}" if rec.goal_id else ""
    return f"{rec.rule.id} ({rec.kind}, {rec.indicator}{goal}) at {rec.triggered_by[0]}: {rec.summary}"
