"""Per-patient state: what the engine remembers between events.

Kept small on purpose, because memory per patient decides how many patients
one instance can own: a summary per score series (not every score), only the
goal fields the facts use (not the description), and remembered event ids as
64-bit digests (not the ids). `to_bytes`/`from_bytes` give the compact,
versioned JSON that state stores and the changelog hold.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from otrules.schemas import Goal

FORMAT = 2  # written as "v"; bump it when the layout below changes

# The state bound: one patient's state must stay well under Kafka's 1 MB record limit
# (it is one changelog record) whatever the feed sends. Past these, the oldest go first
# and the engine counts them (Outcome.dropped).
MAX_REMEMBERED_EVENTS = 4096  # event ids kept for idempotency: 32 KB; an older id sent again is processed again
MAX_PLANS = 16  # plans kept per patient; closed (discharged) plans go before open ones, oldest first
SEEN_BYTES = 8 * MAX_REMEMBERED_EVENTS


class ThrottleKey(NamedTuple):
    """What a throttle counts per: the rule (`ruleset/rule`), and the plan (per plan or goal) and
    the goal (per goal; "" when the recommendation has none). Text only in the stored state."""

    rule: str
    plan_id: str | None = None
    goal_id: str | None = None

    def text(self) -> str:
        """`rule`, `rule|plan` or `rule|plan|goal`: the stored form (format 2)."""
        return "|".join(part for part in self if part is not None)

    @classmethod
    def parse(cls, text: str) -> ThrottleKey:
        parts = text.split("|", 2)
        return cls(parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None)


@dataclass(slots=True)
class Series:
    """Scores of one instrument (for one goal, if any) within one plan."""

    first: float
    last: float
    last_date: dt.date
    count: int = 1
    stable_count: int | None = 0  # run of scores with abs(improvement) < mcid
    anchor: float | None = None  # score that began the current plateau run
    plateau_count: int | None = 0  # later scores within one MCID of the anchor

    def to_list(self) -> list[Any]:
        return [self.first, self.last, self.last_date.isoformat(), self.count, self.stable_count, self.anchor,
                self.plateau_count]

    @classmethod
    def from_list(cls, v: list[Any]) -> Series:
        return cls(v[0], v[1], dt.date.fromisoformat(v[2]), v[3], v[4], v[5], v[6])


@dataclass(slots=True)
class GoalState:
    """A goal of the plan (the fields facts use) and what its scores have shown."""

    goal_id: str
    instrument: str
    target: float
    baseline: float | None = None
    target_date: dt.date | None = None
    gas_weight: float = 1.0
    latest: float | None = None  # latest score in the goal's own instrument
    met_ever: bool = False
    gas_level: float | None = None

    @classmethod
    def of(cls, goal: Goal) -> GoalState:
        state = cls(goal.goal_id, goal.instrument, goal.target)
        state.update(goal)
        return state

    def update(self, goal: Goal) -> None:
        """A new plan snapshot restates the goal; its history stays."""
        self.instrument, self.target, self.baseline = goal.instrument, goal.target, goal.baseline
        self.target_date, self.gas_weight = goal.target_date, goal.gas_weight

    def to_list(self) -> list[Any]:
        return [self.instrument, self.target, self.baseline, _iso(self.target_date), self.gas_weight, self.latest,
                self.met_ever, self.gas_level]

    @classmethod
    def from_list(cls, goal_id: str, v: list[Any]) -> GoalState:
        return cls(goal_id, v[0], v[1], v[2], _date(v[3]), v[4], v[5], v[6], v[7])


@dataclass(slots=True)
class PlanState:
    plan_id: str
    setting: str | None = None
    frequency_per_week: int | None = None
    certified_from: dt.date | None = None
    certified_until: dt.date | None = None
    goals: dict[str, GoalState] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)  # key: instrument + "\x1f" + goal_id
    visits_attended: int = 0
    visits_missed_in_a_row: int = 0
    treatment_dates: set[dt.date] = field(default_factory=set)  # since the last progress report
    last_evaluation: dt.date | None = None
    discharged: bool = False
    closed_on: dt.date | None = None  # date of the discharge event; retention counts from it

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting, "frequency": self.frequency_per_week,
            "certified": [_iso(self.certified_from), _iso(self.certified_until)],
            "goals": {k: g.to_list() for k, g in self.goals.items()},
            "series": {k: s.to_list() for k, s in self.series.items()},
            "visits": [self.visits_attended, self.visits_missed_in_a_row],
            "treated": sorted(d.isoformat() for d in self.treatment_dates),
            "evaluated": _iso(self.last_evaluation), "discharged": self.discharged, "closed": _iso(self.closed_on),
        }

    @classmethod
    def from_dict(cls, plan_id: str, d: dict[str, Any]) -> PlanState:
        return cls(
            plan_id=plan_id, setting=d["setting"], frequency_per_week=d["frequency"],
            certified_from=_date(d["certified"][0]), certified_until=_date(d["certified"][1]),
            goals={k: GoalState.from_list(k, g) for k, g in d["goals"].items()},
            series={k: Series.from_list(s) for k, s in d["series"].items()},
            visits_attended=d["visits"][0], visits_missed_in_a_row=d["visits"][1],
            treatment_dates={dt.date.fromisoformat(x) for x in d["treated"]},
            last_evaluation=_date(d["evaluated"]), discharged=d["discharged"], closed_on=_date(d["closed"]),
        )


@dataclass(slots=True)
class PatientState:
    patient_id: str
    plans: dict[str, PlanState] = field(default_factory=dict)
    seen_events: bytes = b""  # 8-byte event_id digests (see event_digest), in arrival order
    throttle: dict[ThrottleKey, dt.datetime] = field(default_factory=dict)  # -> last emitted (event time)

    def plan(self, plan_id: str) -> PlanState:
        plan = self.plans.get(plan_id)
        if plan is None:
            plan = self.plans[plan_id] = PlanState(plan_id)
        return plan

    def has_seen(self, event_id: str) -> bool:
        return self._seen(event_digest(event_id))

    def remember(self, event_id: str) -> bool:
        """Remember an event id; False if it had been seen already."""
        digest = event_digest(event_id)
        if self._seen(digest):
            return False
        self.seen_events += digest
        return True

    def trim(self) -> int:
        """Apply the state bound; returns how many remembered ids and plans were let go."""
        dropped = 0
        excess = len(self.seen_events) // 8 - MAX_REMEMBERED_EVENTS
        if excess > 0:
            self.seen_events = self.seen_events[excess * 8:]
            dropped += excess
        while len(self.plans) > MAX_PLANS:
            oldest = next((p for p, plan in self.plans.items() if plan.discharged), next(iter(self.plans)))
            self.forget_plan(oldest)
            dropped += 1
        return dropped

    def forget_plan(self, plan_id: str) -> None:
        """A plan and its throttles."""
        del self.plans[plan_id]
        self.throttle = {k: v for k, v in self.throttle.items() if k.plan_id != plan_id}

    def _seen(self, digest: bytes) -> bool:
        seen = self.seen_events
        at = seen.find(digest)
        while at > 0 and at % 8:  # a match must start on a digest boundary
            at = seen.find(digest, at + 1)
        return at >= 0

    def to_bytes(self) -> bytes:
        """Compact JSON, keys sorted: the same state always gives the same bytes."""
        value = orjson.dumps({
            "v": FORMAT,
            "patient": self.patient_id,
            "plans": {k: p.to_dict() for k, p in self.plans.items()},
            "seen": base64.b64encode(self.seen_events).decode(),
            "throttle": {k.text(): _epoch(v) for k, v in self.throttle.items()},
        }, option=orjson.OPT_SORT_KEYS)
        # orjson's bytes keep the ~8 KB buffer they were written into; stores hold these
        # for every patient, so keep an exact-size copy instead
        return bytes(memoryview(value))

    @classmethod
    def from_bytes(cls, value: bytes) -> PatientState:
        d = orjson.loads(value)
        if not isinstance(d, dict) or d.get("v") != FORMAT:
            version = d.get("v", 1) if isinstance(d, dict) else "unknown"
            raise ValueError(f"patient state: format {version} is not the format {FORMAT} this otrules reads")
        return cls(
            patient_id=d["patient"],
            plans={k: PlanState.from_dict(k, p) for k, p in d["plans"].items()},
            seen_events=base64.b64decode(d["seen"]),
            throttle={ThrottleKey.parse(k): dt.datetime.fromtimestamp(v, dt.UTC) for k, v in d["throttle"].items()},
        )


def event_digest(event_id: str) -> bytes:
    """64 bits of BLAKE2b of an event id: what idempotency remembers, at 8 bytes an id.

    Two different ids of one patient collide with odds about n**2 / 2**65 for n
    events (n = 1,000: 3e-14), and a collision would skip one event.
    """
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def series_key(instrument: str, goal_id: str | None) -> str:
    return f"{instrument}\x1f{goal_id or ''}"


def _epoch(ts: dt.datetime) -> int | float:
    seconds = ts.timestamp()
    return int(seconds) if seconds.is_integer() else seconds


def _iso(d: dt.date | None) -> str | None:
    return d.isoformat() if d else None


def _date(s: str | None) -> dt.date | None:
    return dt.date.fromisoformat(s) if s else None
