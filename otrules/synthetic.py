"""Deterministic synthetic event streams of occupational-therapy episodes of care.

The rules engine needs realistic input that holds no patient data: the bundled
sample, test fixtures, backtests and benchmarks of up to millions of events.
This module simulates each patient's episode (plan, evaluations, visits,
discharge) from a seed, so the same arguments always give the same stream.
Patients are generated lazily and merged by time, so memory stays bounded
however long the stream is. Patients 0-9 walk through the ten trajectory
archetypes in order, so any stream of ten or more patients gives every rule
something to fire on; later patients draw an archetype at random.

    python -m otrules.synthetic --patients 40 --seed 7 --out sample.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import functools
import heapq
import itertools
import json
import math
import random
import sys
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

Score = int | float
DAY = datetime.timedelta(days=1)
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # what json.dumps(ev, separators=...) uses


@dataclass(frozen=True)
class Instrument:
    id: str
    lo: float
    hi: float
    step: float  # scores are multiples of this: 0.1, 1 or 5
    higher_is_better: bool
    mcid: float
    typical: tuple[float, float]  # baseline range of a patient referred to OT
    goal: str  # description of a goal measured with it

    @property
    def sign(self) -> int:
        return 1 if self.higher_is_better else -1

    def steps(self, mcids: float) -> int:
        """Fewest score steps that make a change of at least `mcids` MCIDs."""
        return math.ceil(round(mcids * self.mcid / self.step, 6))

    def grid(self, lo: float, hi: float) -> tuple[int, int]:
        """The score steps lying in [lo, hi]."""
        return math.ceil(round(lo / self.step, 6)), math.floor(round(hi / self.step, 6))

    def score(self, grid: int) -> Score:
        value = grid * self.step
        return round(value, 1) if self.step < 1 else int(value)


INSTRUMENTS = {i.id: i for i in (
    Instrument("COPM-performance", 1, 10, 0.1, True, 2, (2, 5),
               "Perform self-chosen daily occupations more effectively"),
    Instrument("COPM-satisfaction", 1, 10, 0.1, True, 2, (2, 5),
               "Be more satisfied with performance of self-chosen occupations"),
    Instrument("FIM-motor", 13, 91, 1, True, 17, (25, 55),
               "Increase independence in self-care, transfers and locomotion"),
    Instrument("FIM-total", 18, 126, 1, True, 22, (40, 80),
               "Increase overall independence in daily living"),
    Instrument("Barthel-100", 0, 100, 5, True, 9.25, (20, 60),
               "Carry out basic activities of daily living with less help"),
    Instrument("BBT", 0, 150, 1, True, 5.5, (15, 40),
               "Improve gross manual dexterity for household tasks"),
    Instrument("NHPT", 0.1, 600, 0.1, False, 32.8, (120, 300),  # valid range is > 0
               "Improve fine-motor dexterity for buttons and utensils"),
    Instrument("grip-kg", 0, 100, 0.1, True, 5.0, (8, 25),
               "Increase grip strength to open jars and carry shopping"),
    Instrument("QuickDASH", 0, 100, 0.1, False, 15.91, (40, 75),
               "Reduce upper-limb disability in everyday tasks"),
    Instrument("AMPAC-daily-activity", 6, 24, 1, True, 5.49, (10, 16),
               "Increase independence in daily activities on the ward"),
    Instrument("MoCA", 0, 30, 1, True, 2, (16, 23),
               "Use cognitive strategies to manage medication and appointments"),
)}

SETTINGS_BY_FREQUENCY = {
    1: ("outpatient", "school"),
    2: ("outpatient", "home-health", "school"),
    3: ("outpatient", "home-health", "skilled-nursing"),
    4: ("inpatient-rehab", "skilled-nursing", "acute"),
    5: ("inpatient-rehab", "acute"),
}
WEEKLY_PATTERNS = {  # weekdays (Monday = 0) of the visits, by frequency
    1: ((0,), (1,), (2,), (3,), (4,)),
    2: ((0, 3), (1, 4), (0, 2)),
    3: ((0, 2, 4),),
    4: ((0, 1, 3, 4),),
    5: ((0, 1, 2, 3, 4),),
}
SETTING_MEASURE = {  # a measure taken at admission and discharge, not tied to a goal
    "inpatient-rehab": "FIM-motor",
    "skilled-nursing": "Barthel-100",
    "acute": "AMPAC-daily-activity",
}


# --- Trajectories --------------------------------------------------------
# A course gives the primary goal's improvement, in score steps towards the
# target (`gap` steps away), at each evaluation from the initial one on, and
# the number of treatment days before each later evaluation.

@dataclass
class _Course:
    steps: list[int]
    cycles: list[int]
    reason: str  # discharge reason unless every goal is met


def _short_of(gap: int, fraction: float) -> int:
    """`fraction` of the way to the target, never reaching it."""
    return min(gap - 1, round(gap * fraction))


def _reached(rng: random.Random, inst: Instrument, gap: int) -> int:
    return gap + rng.randint(0, inst.steps(0.5))


def _cycles(rng: random.Random, evaluations: int) -> list[int]:
    """Progress reports every 8-9 treatment days; the discharge comes 4-9 days after the last."""
    return [rng.randint(8, 9) for _ in range(evaluations - 1)] + [rng.randint(4, 9)]


def _steady(rng: random.Random, inst: Instrument, gap: int) -> _Course:
    n = rng.randint(2, 4)
    steps = [_short_of(gap, k / n) for k in range(n)] + [_reached(rng, inst, gap)]
    return _Course(steps, _cycles(rng, n), "goals-met")


def _fast(rng: random.Random, inst: Instrument, gap: int) -> _Course:
    steps = [0, _short_of(gap, rng.uniform(0.6, 0.8)), _reached(rng, inst, gap)]
    return _Course(steps, [rng.randint(6, 8), rng.randint(4, 6)], "goals-met")


def _plateau(rng: random.Random, inst: Instrument, gap: int) -> _Course:
    """A gain, then four scores each less than an MCID from the one before."""
    steps = [0, _short_of(gap, rng.uniform(0.4, 0.6))]
    wobble = (inst.steps(1) - 1) // 3
    for _ in range(4):
        steps.append(min(gap - 1, max(1, steps[-1] + rng.randint(-wobble, wobble))))
    return _Course(steps, _cycles(rng, 5), "plateau")


def _setback(rng: random.Random, inst: Instrument, gap: int) -> _Course:
    """A decline of 1-1.3 MCIDs after some gain, then recovery."""
    peak = _short_of(gap, rng.uniform(0.4, 0.6))
    low = peak - inst.steps(1) - rng.randint(1, inst.steps(0.3))
    final = _reached(rng, inst, gap) if rng.random() < 0.5 else _short_of(gap, 0.8)
    steps = [0, peak, low, _short_of(gap, 0.65), final]
    return _Course(steps, _cycles(rng, 4), rng.choice(("plateau", "patient-request")))


def _severe_setback(rng: random.Random, inst: Instrument, gap: int) -> _Course:
    """A decline of over 2 MCIDs, then a transfer a few treatment days later."""
    peak = _short_of(gap, rng.uniform(0.5, 0.7))
    low = peak - inst.steps(2) - rng.randint(1, inst.steps(0.3))
    steps = [0, peak, low, low + rng.randint(0, inst.steps(0.3))]
    cycles = [rng.randint(8, 9), rng.randint(8, 9), rng.randint(2, 4)]
    return _Course(steps, cycles, "transferred")


def _slow(rng: random.Random, inst: Instrument, gap: int,
          reasons: tuple[str, ...] = ("plateau", "patient-request", "transferred")) -> _Course:
    """Gets at most 80% of the way to the target."""
    n = rng.randint(3, 4)
    steps = [_short_of(gap, 0.8 * k / n) for k in range(n + 1)]
    return _Course(steps, _cycles(rng, n), rng.choice(reasons))


def _near_target(rng: random.Random, inst: Instrument, gap: int) -> _Course:
    """Improves by more than an MCID to 75-99% of the way, then may reach the target."""
    near = min(gap - 1, math.ceil(gap * 0.8))  # >= 75% because gap >= 4
    before = near - inst.steps(1) - rng.randint(1, inst.steps(0.25))
    final = _reached(rng, inst, gap) if rng.random() < 0.5 else near
    return _Course([0, before, near, final], _cycles(rng, 3), "plateau")


def _late_report(rng: random.Random, inst: Instrument, gap: int) -> _Course:
    """A steady improver whose progress report slips to the 11th-13th treatment day."""
    course = _steady(rng, inst, gap)
    course.cycles[rng.randrange(len(course.cycles) - 1)] = rng.randint(11, 13)
    return course


def _long_haul(rng: random.Random, inst: Instrument, gap: int) -> _Course:
    """Slow gains that never reach the target; the episode ends by date, not by course."""
    steps = [_short_of(gap, 0.85 * (1 - 0.7 ** k)) for k in range(24)]
    cycles = [rng.randint(8, 9) for _ in range(23)]
    return _Course(steps, cycles, rng.choice(("plateau", "transferred")))


def _companion(rng: random.Random, inst: Instrument, gap: int, evaluations: int, met: bool) -> list[int]:
    """A secondary goal's steps: met at discharge with the primary goal, else partial gains."""
    n = evaluations - 1
    if met:
        return [_short_of(gap, k / n) for k in range(n)] + [_reached(rng, inst, gap)]
    return [_short_of(gap, 0.8 * (1 - 0.6 ** k)) for k in range(evaluations)]


@dataclass(frozen=True)
class _Archetype:
    name: str
    weight: int
    course: Callable[[random.Random, Instrument, int], _Course]
    instruments: tuple[str, ...] = tuple(INSTRUMENTS)  # for the primary goal
    early_target: bool = False  # primary goal's target date falls 2-3 weeks in
    missed_run: bool = False  # 3-4 visits missed in a row
    past_certification: bool = False  # seen through the last week of the certification


ARCHETYPES = (
    _Archetype("steady-improver", 30, _steady),
    _Archetype("fast-improver-lower-is-better", 8, _fast, ("NHPT", "QuickDASH")),
    _Archetype("plateau", 10, _plateau),
    _Archetype("setback", 8, _setback),
    _Archetype("severe-setback", 4, _severe_setback,
               ("COPM-performance", "FIM-motor", "FIM-total", "Barthel-100", "BBT", "grip-kg")),
    _Archetype("target-date-missed", 8, _slow, early_target=True),
    _Archetype("near-target", 10, _near_target),
    _Archetype("poor-adherence", 8, functools.partial(_slow, reasons=("patient-request",)),
               missed_run=True),
    _Archetype("late-progress-report", 6, _late_report),
    _Archetype("certification-running-out", 10, _long_haul, past_certification=True),
)


# --- Patients --------------------------------------------------------------

@dataclass
class _Goal:
    goal_id: str
    instrument: Instrument
    gap: int
    steps: list[int]
    baseline: int  # in score steps
    target_date: datetime.date
    weight: int
    gas_start: int | None  # GAS level at the initial evaluation; None when GAS is not scored

    def score(self, k: int) -> Score:
        return self.instrument.score(self.baseline + self.instrument.sign * self.steps[k])

    def met(self, k: int) -> bool:
        return self.steps[k] >= self.gap

    def gas(self, k: int) -> int | None:
        progress = self.steps[k]
        if progress >= 1.25 * self.gap:
            return 1
        if progress >= self.gap:
            return 0
        if progress >= self.gap / 2:
            return -1
        return -2 if progress < 0 else self.gas_start

    def measures(self, k: int) -> Iterator[dict]:
        yield {"instrument": self.instrument.id, "score": self.score(k), "goal_id": self.goal_id}
        if self.gas_start is not None:
            yield {"instrument": "GAS", "score": self.gas(k), "goal_id": self.goal_id}

    def plan_entry(self, target_date: datetime.date) -> dict:
        inst = self.instrument
        return {
            "goal_id": self.goal_id,
            "description": inst.goal,
            "instrument": inst.id,
            "baseline": inst.score(self.baseline),
            "target": inst.score(self.baseline + inst.sign * self.gap),
            "target_date": target_date.isoformat(),
            "gas_weight": self.weight,
        }


def _gap(rng: random.Random, inst: Instrument) -> int:
    """Baseline-to-target distance in score steps: 1.5-2.5 MCIDs, at most half
    the scale (which leaves room for setbacks), at least 4 steps."""
    lo, hi = inst.grid(inst.lo, inst.hi)
    return max(4, min(inst.steps(rng.uniform(1.5, 2.5)), (hi - lo) // 2))


def _baseline(rng: random.Random, inst: Instrument, gap: int, steps: list[int]) -> int:
    """A typical baseline that keeps the target and every score of `steps` in range."""
    worst, best = min(0, *steps), max(gap, *steps)
    lo, hi = inst.grid(inst.lo, inst.hi)
    feasible = (lo - worst, hi - best) if inst.higher_is_better else (lo + best, hi + worst)
    typical_lo, typical_hi = inst.grid(*inst.typical)
    low, high = max(feasible[0], typical_lo), min(feasible[1], typical_hi)
    return rng.randint(low, high) if low <= high else rng.randint(*feasible)


def _weekday_from(day: datetime.date) -> datetime.date:
    while day.weekday() >= 5:
        day += DAY
    return day


def _visit_status(rng: random.Random) -> str:
    draw = rng.random()
    return "attended" if draw < 0.85 else "missed" if draw < 0.95 else "cancelled"


class _Patient:
    """One patient's episode, drawn from their own random stream."""

    def __init__(self, index: int, seed: int, start: datetime.date):
        rng = self.rng = random.Random(f"{seed}:{index}")
        # Every twelfth patient from index 11 on is lost to follow-up: visits stop
        # after a few weeks and the plan is never discharged (what sweeps are for).
        self.lost_after = 8 + index % 7 if index % 12 == 11 else None
        archetype = (ARCHETYPES[index] if index < len(ARCHETYPES)
                     else rng.choices(ARCHETYPES, [a.weight for a in ARCHETYPES])[0])
        self.day0 = _weekday_from(start + (index // 8 + rng.randint(0, 2)) * DAY)
        self.until = self.day0 + 89 * DAY
        primary = INSTRUMENTS[rng.choice(archetype.instruments)]
        gap = _gap(rng, primary)
        self.course = archetype.course(rng, primary, gap)
        self.goals = self._goals(archetype, primary, gap)
        self.frequency = self._frequency(archetype)
        self.weekdays = rng.choice(WEEKLY_PATTERNS[self.frequency])
        self.setting = rng.choice(SETTINGS_BY_FREQUENCY[self.frequency])
        self.extra = self._setting_measure()
        self.clinician = f"ot-{rng.randint(1, 12)}"
        self.slot = 9 * 60 + rng.randrange(0, 6 * 60, 15)  # 09:00-14:45
        first_missed = rng.randint(4, 10)
        self.missed_run = (range(first_missed, first_missed + rng.randint(3, 4))
                           if archetype.missed_run else range(0))
        self.end_day: datetime.date | None = None
        self.recert_day: datetime.date | None = None
        self.attend_from: datetime.date | None = None
        self.renewal: tuple[int, tuple[int, ...]] | None = None  # (frequency, weekdays) after a recertification
        if archetype.past_certification:
            self._plan_certification_end()

    def _goals(self, archetype: _Archetype, primary: Instrument, gap: int) -> list[_Goal]:
        rng = self.rng
        with_gas = rng.random() < 0.5
        met = self.course.steps[-1] >= gap
        others = [i for i in INSTRUMENTS.values() if i is not primary]
        specs = [(primary, gap, self.course.steps)]
        for inst in rng.sample(others, rng.randint(0, 2)):
            other_gap = _gap(rng, inst)
            specs.append((inst, other_gap, _companion(rng, inst, other_gap, len(self.course.steps), met)))
        goals = []
        for n, (inst, goal_gap, steps) in enumerate(specs, 1):
            early = archetype.early_target and n == 1
            weeks_to_target = rng.randint(2, 3) if early else rng.randint(8, 12)
            goals.append(_Goal(
                f"g{n}", inst, goal_gap, steps, _baseline(rng, inst, goal_gap, steps),
                self.day0 + (7 * weeks_to_target + rng.randint(0, 4)) * DAY,
                rng.randint(1, 3), rng.choice((-2, -1)) if with_gas else None,
            ))
        return goals

    def _frequency(self, archetype: _Archetype) -> int:
        """Visits a week: low when the episode runs out the certification, else
        enough to fit the course's treatment days into 6-12 weeks."""
        if archetype.past_certification:
            return self.rng.choice((1, 2, 2, 3))
        weeks = self.rng.uniform(6, 12)
        return min(5, math.ceil(sum(self.course.cycles) / (0.85 * weeks)))

    def _setting_measure(self) -> tuple[Instrument, dict[str, Score]] | None:
        inst = INSTRUMENTS.get(SETTING_MEASURE.get(self.setting, ""))
        if inst is None or any(goal.instrument is inst for goal in self.goals):
            return None
        lo, hi = inst.grid(inst.lo, inst.hi)
        admission = self.rng.randint(*inst.grid(*inst.typical))
        discharge = min(hi, max(lo, admission + inst.sign * self.rng.randint(0, inst.steps(1))))
        return inst, {"initial": inst.score(admission), "discharge": inst.score(discharge)}

    def _plan_certification_end(self) -> None:
        """Attend every visit in the certification's last week; a third of these
        patients are recertified then, the others are discharged just after it ends."""
        rng = self.rng
        self.attend_from = self.until - 6 * DAY
        if rng.random() < 1 / 3:
            last_week = (self.until - n * DAY for n in range(1, 7))
            self.recert_day = rng.choice([day for day in last_week if day.weekday() < 5])
            frequency = rng.randint(1, 3)
            self.renewal = frequency, rng.choice(WEEKLY_PATTERNS[frequency])
            self.end_day = self.until + rng.randint(14, 35) * DAY
        else:
            self.end_day = self.until + rng.randint(1, 5) * DAY

    # --- the story -------------------------------------------------------

    def story(self) -> Iterator[tuple[datetime.date, int, str, dict]]:
        """(day, minute of the day, event type, type-specific fields), in time order."""
        rng = self.rng
        yield self.day0, 8 * 60 + rng.randrange(0, 60, 15), "plan", self._plan(self.day0, self.frequency)
        day = self.day0 if rng.random() < 0.6 else _weekday_from(self.day0 + DAY)
        yield day, self.slot, "evaluation", self._evaluation("initial", 0)
        k = treatment_days = visits = 0
        while True:
            day += DAY
            if day == self.recert_day:
                yield day, 8 * 60, "plan", self._recertification()
            if self.renewal and day == self.until + DAY:
                self.frequency, self.weekdays = self.renewal
            if day.weekday() not in self.weekdays:
                continue
            visits += 1
            sessions = self._sessions(day, visits)
            for minute, status in sessions:
                yield day, minute, "visit", {"status": status}
            if self.lost_after is not None and visits >= self.lost_after:
                return  # lost to follow-up: the plan stays open with no discharge
            last_minute, last_status = sessions[-1]
            if last_status != "attended":
                continue
            treatment_days += 1
            due = treatment_days == self.course.cycles[k]
            if self._finished(day, k, due):
                yield day, last_minute + 45, "evaluation", self._evaluation("discharge", k + 1)
                yield day, last_minute + 60, "discharge", {"reason": self._reason(k + 1)}
                return
            if due:
                k, treatment_days = k + 1, 0
                kind = "re-evaluation" if rng.random() < 0.15 else "progress"
                yield day, last_minute + 45, "evaluation", self._evaluation(kind, k)

    def _finished(self, day: datetime.date, k: int, due: bool) -> bool:
        if self.end_day is not None:
            return day >= self.end_day
        return due and k + 2 == len(self.course.steps)

    def _sessions(self, day: datetime.date, visit: int) -> list[tuple[int, str]]:
        """(minute, status) of the day's sessions: now and then a.m. and p.m. sessions."""
        if visit in self.missed_run:
            return [(self.slot, "missed")]
        if self.attend_from is not None and self.attend_from <= day <= self.until:
            return [(self.slot, "attended")]
        if self.frequency >= 3 and self.rng.random() < 0.03:
            return [(9 * 60, "attended"), (14 * 60, "attended")]
        return [(self.slot, _visit_status(self.rng))]

    def _plan(self, certified_from: datetime.date, frequency: int,
              target_date: datetime.date | None = None) -> dict:
        return {
            "setting": self.setting,
            "frequency_per_week": frequency,
            "certified_from": certified_from.isoformat(),
            "certified_until": (certified_from + 89 * DAY).isoformat(),
            "goals": [goal.plan_entry(target_date or goal.target_date) for goal in self.goals],
        }

    def _recertification(self) -> dict:
        """The plan again, certified from the day after the current period ends,
        at the frequency the visits switch to then."""
        certified_from = self.until + DAY
        target_date = certified_from + 75 * DAY
        assert self.renewal is not None  # set with recert_day, the only day this is called
        return self._plan(certified_from, self.renewal[0], target_date)

    def _evaluation(self, kind: str, k: int) -> dict:
        measures = [measure for goal in self.goals for measure in goal.measures(k)]
        if self.extra is not None and kind in ("initial", "discharge"):
            inst, scores = self.extra
            measures.append({"instrument": inst.id, "score": scores[kind]})
        clinician = self.clinician if self.rng.random() < 0.9 else f"ot-{self.rng.randint(1, 12)}"
        return {"kind": kind, "clinician_id": clinician, "measures": measures}

    def _reason(self, k: int) -> str:
        return "goals-met" if all(goal.met(k) for goal in self.goals) else self.course.reason


def _patient_events(index: int, seed: int, start: datetime.date) -> Iterator[dict]:
    patient = _Patient(index, seed, start)
    patient_id = f"p-{index:05d}"
    plan_id = f"poc-{index:05d}-1"
    for seq, (day, minute, kind, fields) in enumerate(patient.story(), 1):
        yield {
            "type": kind,
            "event_id": f"{patient_id}-e{seq:04d}",
            "patient_id": patient_id,
            "plan_id": plan_id,
            "occurred_at": f"{day.isoformat()}T{minute // 60:02d}:{minute % 60:02d}:00Z",
            **fields,
        }


def _earliest(index: int, start: datetime.date) -> str:
    """No event of patient `index` occurs before this (their plan is dated start + index // 8 days or later)."""
    return f"{(start + (index // 8) * DAY).isoformat()}T00:00:00Z"


def _merge(indexes: Iterable[int], seed: int, start: datetime.date) -> Iterator[dict]:
    """Merge the patients' streams by (occurred_at, patient index).

    This is heapq.merge, except that a patient joins the heap only once the
    merged clock reaches their earliest possible event: heapq.merge would open
    every patient up front, while this holds only the patients in care at once.
    """
    heap: list[tuple[str, int, dict, Iterator[dict]]] = []
    waiting = ((_earliest(index, start), index) for index in indexes)
    opens, index = next(waiting, ("", None))
    while heap or index is not None:
        while index is not None and (not heap or opens <= heap[0][0]):
            events = _patient_events(index, seed, start)
            first = next(events)
            heapq.heappush(heap, (first["occurred_at"], index, first, events))
            opens, index = next(waiting, ("", None))
        _, current, event, events = heap[0]
        yield event
        following = next(events, None)
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (following["occurred_at"], current, following, events))


# --- Public API ----------------------------------------------------------

def generate(*, patients: int | None = None, events: int | None = None, seed: int = 0,
             start: datetime.date = datetime.date(2026, 1, 5)) -> Iterator[dict]:
    """Yield event dicts in occurred_at order (ties broken by patient index, then per-patient sequence).

    Give exactly one of `patients` (every event of that many patients) or
    `events` (exactly that many events; new patients keep arriving, about
    eight a day from `start`, and the stream stops mid-patient).
    """
    given = [n for n in (patients, events) if n is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of patients= or events=")
    size = given[0]
    if size < 0:
        raise ValueError(f"the stream size must not be negative, got {size}")
    if patients is not None:
        return _merge(range(patients), seed, start)
    return itertools.islice(_merge(itertools.count(), seed, start), events)


def write_jsonl(out: typing.IO[str], events: Iterable[dict]) -> int:
    """Write one compact JSON object per line; return how many were written."""
    count = 0
    for event in events:
        out.write(_ENCODER.encode(event) + "\n")
        count += 1
    return count


def _size(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m otrules.synthetic",
        description="Write a deterministic synthetic event stream as JSON lines.")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--patients", type=_size, help="every event of N patients")
    size.add_argument("--events", type=_size, help="exactly N events")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=datetime.date.fromisoformat, default=datetime.date(2026, 1, 5),
                        help="date of the first plan, YYYY-MM-DD (default 2026-01-05)")
    parser.add_argument("--out", help="output file (default: stdout)")
    args = parser.parse_args(argv)
    stream = generate(patients=args.patients, events=args.events, seed=args.seed, start=args.start)
    if args.out is None:
        write_jsonl(sys.stdout, stream)
    else:
        with open(args.out, "w", encoding="utf-8") as out:
            write_jsonl(out, stream)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
