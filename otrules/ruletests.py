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
patient, plan and times are filled in, and so are the fields a real event
must carry (a plan's setting, frequency and certification, a goal's
description, an evaluation's kind and clinician, a discharge's reason);
measures may be written "INSTRUMENT SCORE [GOAL]"; `visits: {days: [1, 2, 3],
status: missed}` writes several visits; `clock: {day: 120}` advances time with
no event (a sweep of every open plan, as `otrules run --as-of` and the Kafka
service do). Any field of the real event may be given as well; YAML dates and
date-times become the ISO strings they stand for. A case that cannot be
expanded is a `SuiteError` naming file, line, case and field.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from otrules.consumers import EventCore, Fault, PatientStates, Record, Rejection
from otrules.engine import Engine, Problem
from otrules.engine.loader import parse_yaml, read_text
from otrules.schemas import EventRejected, OtrulesError, Recommendation, parse_event
from otrules.schemas.events import DateTime

_HOURS = {"plan": 8, "evaluation": 10, "visit": 9, "discharge": 16}
_DATE_TIME: TypeAdapter[dt.datetime] = TypeAdapter(DateTime, config={"strict": True})
_MATCH_KEYS = ("rule", "kind", "goal", "indicator", "event", "patient", "summary_contains")


class SuiteError(OtrulesError, ValueError):
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
    event_lines: list[int | None] = field(default_factory=list)  # YAML line of each event, for messages


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


class CaseError(OtrulesError, ValueError):
    """A malformed case; `line`/`col` (1-based) point at the offending YAML node when known."""

    def __init__(self, message: str, at: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.at = at


def find_suites(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        out.extend(sorted(p.glob("*.tests.y*ml")) if p.is_dir() else [p])
    return out


def _pos(node: Any, key: Any = None) -> tuple[int, int] | None:
    """1-based (line, column) of `node`, or of its item `key`, when ruamel kept it."""
    lc = getattr(node, "lc", None)
    if lc is None:
        return None
    try:
        if key is None:
            line, col = lc.line, lc.col
        elif isinstance(key, int):
            line, col = lc.item(key)
        else:
            line, col = lc.key(key)
    except (AttributeError, KeyError, IndexError, TypeError):
        return None
    return line + 1, col + 1


def _plain(value: Any) -> Any:
    """YAML values as the JSON an event pipeline would send: a YAML date or
    date-time becomes its ISO 8601 / RFC 3339 string (a date-time written with
    no offset stays without one, and the event is then rejected for it)."""
    if isinstance(value, dt.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value  # anything else (a YAML set, a tagged value) is rejected as not JSON when the event is parsed


def _start_date(data: dict[str, Any], path: Path) -> dt.date:
    value = data.get("start", "2026-01-05")
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        line, col = _pos(data, "start") or (1, 1)
        raise SuiteError([Problem(str(path), line, col, f"start: expected a date YYYY-MM-DD, got {value!r}")]) from None


def load_suite(path: Path) -> Suite:
    # as rules files are read: size limit, UTF-8, no anchors or aliases (refused while parsing)
    text, unread = read_text(path)
    data, unread = (None, unread) if unread else parse_yaml(text, str(path))
    if unread:
        raise SuiteError(unread)
    if not isinstance(data, dict) or "cases" not in data or "rules" not in data:
        raise SuiteError([Problem(str(path), 1, 1, "a test file needs `rules:` (the rules file) and `cases:`")])
    start = _start_date(data, path)
    raw_cases = data["cases"] or []
    if not isinstance(raw_cases, list):
        line, col = _pos(data, "cases") or (1, 1)
        raise SuiteError([Problem(str(path), line, col,
                                  "cases: expected a list of cases, each starting with `- name:`")])
    problems: list[Problem] = []
    cases: list[Case] = []
    for i, raw in enumerate(raw_cases):
        case_at = _pos(raw) or _pos(raw_cases, i) or (1, 1)
        line = case_at[0]
        if not isinstance(raw, dict):
            problems.append(Problem(str(path), *case_at, f"case {i + 1}: expected a mapping with name, events, "
                                                         f"expect, expect_not; got {_plain(raw)!r}"))
            continue
        name = str(raw.get("name", f"case at line {line}"))
        unknown = set(raw) - {"name", "events", "expect", "expect_not", "exactly", "description"}
        if unknown:
            first = sorted(unknown, key=str)[0]
            problems.append(Problem(str(path), *(_pos(raw, first) or case_at),
                                    f"case {name!r}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                                    "use name, events, expect, expect_not, exactly"))
            continue
        try:
            expanded = _expand(_list_of(raw, "events"), start)
            expect = [_matcher(m, "expect", raw) for m in _list_of(raw, "expect")]
            expect_not = [_matcher(m, "expect_not", raw) for m in _list_of(raw, "expect_not")]
        except CaseError as exc:
            problems.append(Problem(str(path), *(exc.at or case_at), f"case {name!r}: {exc}"))
            continue
        cases.append(Case(name, line, [e for e, _ in expanded], expect, expect_not, bool(raw.get("exactly", False)),
                          [at for _, at in expanded]))
    if problems:
        raise SuiteError(problems)
    return Suite(path, (path.parent / str(data["rules"])).resolve(), cases)


def _list_of(case: dict[str, Any], key: str) -> list[Any]:
    value = case.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise CaseError(f"{key}: expected a list (each item starting with `- `), got {_plain(value)!r}",
                        _pos(case, key))
    return value


def _matcher(m: Any, key: str, case: Any) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise CaseError(f"{key}: an expectation is a mapping of {', '.join(_MATCH_KEYS)}; got {_plain(m)!r}",
                        _pos(case, key))
    unknown = set(m) - set(_MATCH_KEYS)
    if unknown:
        first = sorted(unknown, key=str)[0]
        raise CaseError(f"{key}: unknown expectation key(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"use {', '.join(_MATCH_KEYS)}", _pos(m, first) or _pos(case, key))
    return _plain(dict(m))


def expand_events(raw_events: list[Any], start: dt.date) -> list[dict[str, Any]]:
    """Compact events to real ones (see the module doc); `CaseError` names the field."""
    return [event for event, _ in _expand(raw_events, start)]


_EVENT_KEYS = "plan, evaluation, visit, visits, discharge or clock"


def _expand(raw_events: list[Any], start: dt.date) -> list[tuple[dict[str, Any], int | None]]:
    """(event, its YAML line) for each compact event."""
    out: list[tuple[dict[str, Any], int | None]] = []
    for i, item in enumerate(raw_events):
        at = _pos(raw_events, i)
        where = f"events[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise CaseError(f"{where}: each event is one key ({_EVENT_KEYS}); got {_plain(item)!r}", at)
        (kind, body), = item.items()
        where = f"{where} ({kind})"
        if kind not in _HOURS and kind not in ("visits", "clock"):
            raise CaseError(f"{where}: unknown event type {kind!r}; use {_EVENT_KEYS}", at)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise CaseError(f"{where}: expected a mapping of fields such as {{day: 3}}, got {_plain(body)!r}", at)
        node = body
        body = _plain(dict(body))
        line = at[0] if at else None
        try:
            if kind == "visits":
                days = body.pop("days", None)
                if not isinstance(days, list) or not days:
                    got = "it is missing" if days is None else f"got {days!r}"
                    raise CaseError(f"days: expected a list of day numbers such as "
                                    f"visits: {{days: [3, 5, 8], status: missed}}; {got}", _pos(node, "days"))
                for day in days:
                    out.append((_event("visit", {**body, "day": day}, start, len(out) + 1), line))
                continue
            if kind == "clock":
                day = _whole(body.pop("day", 0), "day")
                time = _hh_mm(body.pop("time", "23:00"))
                clock_at = _clock_at(body.pop("at", f"{(start + dt.timedelta(days=day)).isoformat()}T{time}:00Z"))
                out.append(({"type": "clock", "at": clock_at}, line))
                continue
            out.append((_event(kind, body, start, len(out) + 1), line))
        except CaseError as exc:
            raise CaseError(f"{where}: {exc}", exc.at or _field_pos(node, str(exc).split(":", 1)[0]) or at) from None
    return out


def _field_pos(node: Any, path: str) -> tuple[int, int] | None:
    """Where `goals[0].target_day` was written in an event's mapping, as deep as it goes."""
    found = None
    for part in re.findall(r"[^.\[\]]+", path):
        key: Any = int(part) if part.isdigit() else part
        in_list = isinstance(node, list) and isinstance(key, int) and key < len(node)
        if in_list or (isinstance(node, dict) and key in node):
            found = _pos(node, key) or found
            node = node[key]
        else:
            break
    return found


def _whole(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CaseError(f"{field}: expected a whole number of days, got {value!r}")
    return value


def _hh_mm(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"[0-2][0-9]:[0-5][0-9]", text) or int(text[:2]) > 23:
        raise CaseError(f"time: expected HH:MM (24-hour, quoted or not), got {value!r}")
    return text


def _clock_at(value: Any) -> str:
    """The clock's time, held to the same RFC 3339 rule as an event's occurred_at."""
    try:
        at = _DATE_TIME.validate_json(json.dumps(value))
    except (ValidationError, TypeError):
        raise CaseError(f"at: expected an RFC 3339 date-time with an offset such as 2026-05-01T09:00:00Z, "
                        f"got {value!r}") from None
    return at.isoformat().replace("+00:00", "Z")


def _event(kind: str, body: dict[str, Any], start: dt.date, n: int) -> dict[str, Any]:
    day = _whole(body.pop("day", 0), "day")
    time = _hh_mm(body.pop("time", f"{_HOURS[kind]:02d}:00"))
    date = start + dt.timedelta(days=day)
    event: dict[str, Any] = {"type": kind, "event_id": body.pop("event_id", f"e-{n:03d}"),
                             "patient_id": body.pop("patient", body.pop("patient_id", "p-1")),
                             "plan_id": body.pop("plan", body.pop("plan_id", "poc-1")),
                             "occurred_at": body.pop("at", f"{date.isoformat()}T{time}:00Z")}
    if kind == "plan":
        cert_days = _whole(body.pop("cert_days", 90), "cert_days")
        if cert_days < 1:
            raise CaseError(f"cert_days: expected at least 1 day, got {cert_days!r}")
        event.update(setting="outpatient", frequency_per_week=2, certified_from=date.isoformat(),
                     certified_until=(date + dt.timedelta(days=cert_days - 1)).isoformat(),
                     goals=[_goal(g, i, start) for i, g in enumerate(_field_list(body.pop("goals", []), "goals"))])
    elif kind == "evaluation":
        event["kind"] = body.pop("kind", "progress")
        event["clinician_id"] = body.pop("clinician_id", "ot-1")
        event["measures"] = [_measure(m, i) for i, m in enumerate(_field_list(body.pop("measures", []), "measures"))]
    elif kind == "visit":
        event["status"] = body.pop("status", "attended")
    elif kind == "discharge":
        event["reason"] = body.pop("reason", "goals-met")
    event.update(body)
    return event


def _field_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise CaseError(f"{field}: expected a list, got {value!r}")
    return value


def _goal(goal: Any, i: int, start: dt.date) -> dict[str, Any]:
    if not isinstance(goal, dict):
        raise CaseError(f"goals[{i}]: expected a mapping such as {{goal_id: g1, instrument: COPM-performance, "
                        f"target: 7}}, got {goal!r}")
    goal = dict(goal)
    if "target_day" in goal:
        days = _whole(goal.pop("target_day"), f"goals[{i}].target_day")
        goal["target_date"] = (start + dt.timedelta(days=days)).isoformat()
    goal.setdefault("description", f"goal {goal.get('goal_id', i + 1)}")
    return goal


def _measure(m: Any, i: int = 0) -> dict[str, Any]:
    if isinstance(m, dict):
        return dict(m)
    parts = str(m).split()
    if len(parts) not in (2, 3):
        raise CaseError(f"measures[{i}]: a measure is 'INSTRUMENT SCORE [GOAL]', got {m!r}")
    try:
        score = float(parts[1])
    except ValueError:
        raise CaseError(f"measures[{i}]: score {parts[1]!r} in {m!r} is not a number") from None
    out: dict[str, Any] = {"instrument": parts[0], "score": int(score) if score.is_integer() else score}
    if len(parts) == 3:
        out["goal_id"] = parts[2]
    return out


# ---------------------------------------------------------------- running


class _CaseSink:
    """The event core's sink for one case: what it recommends, and what it set aside."""

    def __init__(self, result: CaseResult) -> None:
        self.result = result
        self.failed: list[Rejection] = []

    def recommend(self, recs: Sequence[Recommendation], record: Record | None) -> None:
        self.result.produced.extend(r for r in recs if r.status == "open")  # cases expect what is recommended

    def dead_letter(self, record: Record, rejection: Rejection) -> None:
        self.failed.append(rejection)


def run_case(engine: Engine, case: Case) -> CaseResult:
    result = CaseResult(case)
    sink = _CaseSink(result)
    core = EventCore(engine, PatientStates(), sink, Fault.ISOLATE)
    index_of: dict[str, int] = {}
    for n, raw in enumerate(case.events, start=1):
        line = case.event_lines[n - 1] if n <= len(case.event_lines) else None
        where = f"event {n}{f' (line {line})' if line else ''}"
        if raw["type"] == "clock":  # time advances with no event: sweep every patient
            at = dt.datetime.fromisoformat(raw["at"].replace("Z", "+00:00"))
            index_of[f"clock@{at.isoformat().replace('+00:00', 'Z')}"] = n
            core.sweep(at)
            continue
        try:
            event = parse_event(raw, engine.catalogue)
        except EventRejected as exc:
            result.error = f"{where} is not valid: {exc.reason}"
            return result
        index_of[event.event_id] = n
        core.handle(Record(b"", "case", line=line), event=event)
        if sink.failed:
            result.error = f"{where}: {sink.failed[0].reason}"
            return result
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
