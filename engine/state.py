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

from otrules.schemas import Event, Goal, Recommendation, parse_event

FORMAT = 4  # written as "v"; bump it when the layout below changes (4: retractable scores, no patient watermark)

# The state bound: one patient's state must stay well under Kafka's 1 MB record limit
# (it is one changelog record) whatever the feed sends. Past these, the oldest go first
# and the engine counts them (Outcome.dropped).
MAX_REMEMBERED_EVENTS = 4096  # event ids kept for idempotency: 32 KB; an older id sent again is processed again
MAX_PLANS = 16  # plans kept per patient; closed (discharged) plans go before open ones, oldest first
SEEN_BYTES = 8 * MAX_REMEMBERED_EVENTS
# Event-time history (a late event takes its place by occurred_at): scores kept per series and
# visits kept per plan. A late event older than everything kept still counts, but cannot be
# placed (its neighbours are gone); 64 scores is years of a plan's evaluations.
MAX_POINTS = 64
MAX_VISITS = 64  # missed visits in a row kept with their times; more are counted
MAX_HELD = 256  # events held in the reorder window per patient; past it the oldest is released early
MAX_HELD_BYTES = 256_000  # and their JSON at most this large, so the state stays one changelog record
MAX_SCORED = 128  # evaluations per plan a retraction can still take back (their scores' places); older go first
MAX_SCORED_BYTES = 32_000  # and that index's JSON at most this large per plan (wide evaluations); older go first


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
class Point:
    """One score in event time, with the runs it ends (worked out from the points before it).

    Only the first and last points' runs are stored; the others' are worked out again
    (`known` False) when a late score needs them, which saves a third of a state."""

    at: float  # occurred_at, seconds since the epoch: the order
    day: dt.date  # the clinic's calendar date: what day counts use
    score: float
    # the runs: worked out from the points before, so not part of a point's identity
    stable_count: int | None = field(default=0, compare=False)  # run of scores with abs(improvement) < mcid
    anchor: float | None = field(default=None, compare=False)  # score that began the current plateau run
    plateau_count: int | None = field(default=0, compare=False)  # later scores within one MCID of the anchor
    known: bool = field(default=True, compare=False)  # the runs above hold

    def runs(self) -> list[Any]:
        return [self.stable_count, self.anchor, self.plateau_count]


@dataclass(slots=True)
class Series:
    """Scores of one instrument (for one goal, if any) within one plan, in event time.

    The last MAX_POINTS scores are kept, so a late score can be placed between its
    neighbours; `first` is the earliest score ever (the baseline when the goal has none)."""

    points: list[Point]
    first_at: float
    first: float
    dropped: int = 0  # older points let go

    @property
    def last(self) -> float:
        return self.points[-1].score

    @property
    def count(self) -> int:
        return self.dropped + len(self.points)

    def to_list(self) -> list[Any]:
        """[[at, day, score]...] (day: days since 1970-01-01), first, dropped, runs of the first and last."""
        points = self.points
        out = []
        for p in points:
            day = p.day.toordinal() - _EPOCH_DAY
            out.append([day, _compact(p.at - day * 86400), _compact(p.score)])  # seconds from the day's start
        return [out, _compact(self.first_at), _compact(self.first), self.dropped, points[0].runs(), points[-1].runs()]

    @classmethod
    def from_list(cls, v: list[Any]) -> Series:
        points = [Point(float(day * 86400 + at), dt.date.fromordinal(day + _EPOCH_DAY), float(score), None, None,
                        None, False) for day, at, score in v[0]]
        points[0].stable_count, points[0].anchor, points[0].plateau_count = v[4]
        points[-1].stable_count, points[-1].anchor, points[-1].plateau_count = v[5]
        points[0].known = points[-1].known = True
        return cls(points, float(v[1]), float(v[2]), v[3])


_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()


def _compact(at: float) -> int | float:
    """Whole seconds written without `.0`."""
    return int(at) if isinstance(at, float) and at.is_integer() else at


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
    """One plan of care, kept in event time: each part remembers when it was last changed,
    so a late event can take its place instead of overwriting newer facts."""

    plan_id: str
    setting: str | None = None
    frequency_per_week: int | None = None
    certified_from: dt.date | None = None
    certified_until: dt.date | None = None
    goals: dict[str, GoalState] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)  # key: instrument + "\x1f" + goal_id
    visits_attended: int = 0
    attended_at: float | None = None  # the latest attended visit
    missed_since: list[float] = field(default_factory=list)  # times of missed visits after it, in order
    missed_carry: int = 0  # misses after it let go (past MAX_VISITS)
    treated: dict[dt.date, float] = field(default_factory=dict)  # attended date -> latest visit time that day
    reported_at: float | None = None  # the latest progress report (evaluation that opens a period)
    last_evaluation: dt.date | None = None
    discharged: bool = False
    closed_on: dt.date | None = None  # date of the discharge event; retention counts from it
    opened_at: float | None = None  # the plan snapshot in force
    closed_at: float | None = None  # the discharge in force
    latest_at: float | None = None  # the latest event applied: an older one is late
    latest_day: dt.date | None = None  # that event's calendar date: "today" for a late event's facts
    # evaluations a retraction can take back: event-id digest (base64) -> [at, [[series digest, score]...]]
    # (series_digest; a format-4 state written before it holds the series key itself, read as well),
    # and for one record of a grouped evaluation a third item, the evaluation's event id
    scored: dict[str, list[Any]] = field(default_factory=dict)
    # the JSON bytes of `scored` (each entry's `"key":value` and a comma), kept as entries come and
    # go so the bound costs no serialisation per evaluation; None: work it out (not stored)
    scored_bytes: int | None = field(default=None, compare=False)

    @property
    def visits_missed_in_a_row(self) -> int:
        """Missed visits after the latest attended one, in event time."""
        return len(self.missed_since) + self.missed_carry

    @property
    def treatment_dates(self) -> set[dt.date]:
        """Dates with an attended visit since the last progress report."""
        since = self.reported_at
        return {day for day, at in self.treated.items() if since is None or at >= since}

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting, "frequency": self.frequency_per_week,
            "certified": [_iso(self.certified_from), _iso(self.certified_until)],
            "goals": {k: g.to_list() for k, g in self.goals.items()},
            "series": {k: s.to_list() for k, s in self.series.items()},
            "visits": [self.visits_attended, None if self.attended_at is None else _compact(self.attended_at),
                       [_compact(at) for at in self.missed_since], self.missed_carry],
            "treated": sorted([d.toordinal() - _EPOCH_DAY, _compact(at - (d.toordinal() - _EPOCH_DAY) * 86400)]
                              for d, at in self.treated.items()),
            "reported": None if self.reported_at is None else _compact(self.reported_at),
            "evaluated": _iso(self.last_evaluation), "discharged": self.discharged, "closed": _iso(self.closed_on),
            "times": [None if t is None else _compact(t) for t in (self.opened_at, self.closed_at, self.latest_at)]
            + [_iso(self.latest_day)],
            **({"scored": self.scored} if self.scored else {}),
        }

    @classmethod
    def from_dict(cls, plan_id: str, d: dict[str, Any]) -> PlanState:
        return cls(
            plan_id=plan_id, setting=d["setting"], frequency_per_week=d["frequency"],
            certified_from=_date(d["certified"][0]), certified_until=_date(d["certified"][1]),
            goals={k: GoalState.from_list(k, g) for k, g in d["goals"].items()},
            series={k: Series.from_list(s) for k, s in d["series"].items()},
            visits_attended=d["visits"][0], attended_at=d["visits"][1], missed_since=d["visits"][2],
            missed_carry=d["visits"][3],
            treated={dt.date.fromordinal(day + _EPOCH_DAY): day * 86400 + at for day, at in d["treated"]},
            reported_at=d["reported"],
            last_evaluation=_date(d["evaluated"]), discharged=d["discharged"], closed_on=_date(d["closed"]),
            opened_at=d["times"][0], closed_at=d["times"][1], latest_at=d["times"][2],
            latest_day=_date(d["times"][3]), scored=d.get("scored", {}),
        )


@dataclass(slots=True)
class PatientState:
    patient_id: str
    plans: dict[str, PlanState] = field(default_factory=dict)
    seen_events: bytes = b""  # 8-byte event_id digests (see event_digest), in arrival order
    throttle: dict[ThrottleKey, dt.datetime] = field(default_factory=dict)  # -> last emitted (event time)
    held: list[Event] = field(default_factory=list)  # the reorder window: events waiting, in event time
    held_bytes: int = field(default=0, compare=False)  # JSON size of `held` (worked out again when read)
    fhir: dict[str, Any] | None = None  # FHIR input's join state (consumers/fhir/mapping.py), JSON values only
    open: dict[str, Recommendation] = field(default_factory=dict)  # open recommendations by id (engine/open_recs.py)
    # held evaluations made of several source records (FHIR Observations): their ids, one per measure
    groups: dict[str, list[str]] = field(default_factory=dict)

    def plan(self, plan_id: str) -> PlanState:
        plan = self.plans.get(plan_id)
        if plan is None:
            plan = self.plans[plan_id] = PlanState(plan_id)
        return plan

    def watermark(self, plan_id: str) -> float | None:
        """The plan's reorder watermark: the latest occurred_at of its own plan, evaluation, visit and
        discharge events, held or applied. Feedback and retractions never move it, nor does any
        other plan's event (contracts.md §1: clocks are local)."""
        plan = self.plans.get(plan_id)
        mark = plan.latest_at if plan is not None else None
        for event in self.held:
            if event.plan_id == plan_id and event.type in CLOCK_TYPES:
                at = event.occurred_at.timestamp()
                if mark is None or at > mark:
                    mark = at
        return mark

    def has_seen(self, event_id: str) -> bool:
        return self._seen(event_digest(event_id))

    def remember(self, event_id: str) -> bool:
        """Remember an event id; False if it had been seen already."""
        digest = event_digest(event_id)
        if self._seen(digest):
            return False
        self.seen_events += digest
        return True

    def forget(self, event_id: str) -> None:
        """Let an event id go (an event dead-lettered after it was remembered, so it can come again)."""
        digest, seen = event_digest(event_id), self.seen_events
        for at in range(0, len(seen), 8):
            if seen[at:at + 8] == digest:
                self.seen_events = seen[:at] + seen[at + 8:]
                return

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
        """A plan, its throttles and its open recommendations."""
        del self.plans[plan_id]
        self.throttle = {k: v for k, v in self.throttle.items() if k.plan_id != plan_id}
        self.open = {k: rec for k, rec in self.open.items() if rec.plan_id != plan_id}

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
            "held": [event.model_dump(mode="json") for event in self.held],
            **({"fhir": self.fhir} if self.fhir else {}),
            **({"groups": self.groups} if self.groups else {}),
            # each as its own JSON text: the keys sorted above would reorder a recommendation's evidence
            **({"open": [rec.model_dump_json(exclude={"emitted_at"}) for rec in self.open.values()]}
               if self.open else {}),
        }, option=orjson.OPT_SORT_KEYS)
        # orjson's bytes keep the ~8 KB buffer they were written into; stores hold these
        # for every patient, so keep an exact-size copy instead
        return bytes(memoryview(value))

    @classmethod
    def from_bytes(cls, value: bytes) -> PatientState:
        d = orjson.loads(value)
        if isinstance(d, dict) and d.get("v") == 2:
            d = _from_format_2(d)
        if isinstance(d, dict) and d.get("v") == 3:
            # format 3 kept one watermark per patient ("mark"); each plan's is now worked out from its
            # own events (PatientState.watermark), and its evaluations cannot be retracted
            d = {**d, "v": FORMAT}
        if not isinstance(d, dict) or d.get("v") != FORMAT:
            version = d.get("v", 1) if isinstance(d, dict) else "unknown"
            raise ValueError(f"patient state: format {version} is not a format (2 to {FORMAT}) this otrules reads")
        return cls(
            patient_id=d["patient"],
            plans={k: PlanState.from_dict(k, p) for k, p in d["plans"].items()},
            seen_events=base64.b64decode(d["seen"]),
            throttle={ThrottleKey.parse(k): dt.datetime.fromtimestamp(v, dt.UTC) for k, v in d["throttle"].items()},
            held=(held := [parse_event(event) for event in d["held"]]),
            held_bytes=sum(held_size(event) for event in held),
            fhir=d.get("fhir"),
            groups=d.get("groups", {}),
            open={rec.recommendation_id: rec for rec in map(Recommendation.model_validate_json, d.get("open", ()))},
        )


CLOCK_TYPES = frozenset({"plan", "evaluation", "visit", "discharge"})
"""The event types that move their plan's clock and watermark (not feedback, not retractions)."""

_LONG_AGO = -62135596800.0  # 0001-01-01: the first score of a series from format 2 has no time


def _from_format_2(d: dict[str, Any]) -> dict[str, Any]:
    """State written by otrules before event time (a changelog from the previous release): each
    series kept its last score only, so that becomes its one point, and times start unknown
    (the next event of each plan is taken as on time)."""
    def day_start(day: str) -> float:
        """The earliest instant of that date anywhere (UTC+14), so every later event of the date
        sorts after what the old state kept of it."""
        return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp() - 14 * 3600

    plans = {}
    for plan_id, p in d["plans"].items():
        series = {}
        for key, (first, last, last_date, count, stable, anchor, plateau) in p["series"].items():
            at = day_start(last_date)
            day = dt.date.fromisoformat(last_date).toordinal() - _EPOCH_DAY
            series[key] = [[[day, at - day * 86400, last]], _LONG_AGO if count > 1 else at, first, count - 1,
                           [stable, anchor, plateau], [stable, anchor, plateau]]
        plans[plan_id] = {**p, "series": series, "visits": [p["visits"][0], None, [], p["visits"][1]],
                          "treated": [[dt.date.fromisoformat(day).toordinal() - _EPOCH_DAY, -14 * 3600]
                                      for day in p["treated"]], "reported": None,
                          "times": [None, None, None, None]}
    return {**d, "v": 3, "plans": plans, "held": [], "mark": None}


def held_size(event: Event) -> int:
    """The bytes an event held in a reorder window adds to the state."""
    return len(event.model_dump_json())


def series_digest(key: str) -> str:
    """A series key (instrument and goal id, up to 257 characters) in PlanState.scored: 48 bits of
    BLAKE2b, base64 (8 characters). Told apart only among one plan's series."""
    return base64.b64encode(hashlib.blake2b(key.encode(), digest_size=6).digest()).decode()


def scored_key(event_id: str) -> str:
    """An evaluation's key in PlanState.scored: its event-id digest, base64."""
    return base64.b64encode(event_digest(event_id)).decode()


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
