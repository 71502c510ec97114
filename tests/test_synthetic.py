"""Tests of the synthetic event stream: the event contract, determinism, and
that every patient archetype shows the pattern a rule is meant to catch."""

import datetime as dt
import io
import itertools
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from otrules import synthetic

ROOT = Path(__file__).resolve().parents[1]
START = dt.date(2026, 1, 5)
EPS = 1e-9

# Independent copy of the instrument table: (lo, hi, lo_exclusive, integer, step, higher_is_better, MCID)
RANGES = {
    "COPM-performance": (1, 10, False, False, None, True, 2),
    "COPM-satisfaction": (1, 10, False, False, None, True, 2),
    "GAS": (-2, 2, False, True, None, True, 1),
    "FIM-motor": (13, 91, False, True, None, True, 17),
    "FIM-total": (18, 126, False, True, None, True, 22),
    "Barthel-100": (0, 100, False, True, 5, True, 9.25),
    "BBT": (0, 150, False, True, None, True, 5.5),
    "NHPT": (0, 600, True, False, None, False, 32.8),
    "grip-kg": (0, 100, False, False, None, True, 5.0),
    "QuickDASH": (0, 100, False, False, None, False, 15.91),
    "AMPAC-daily-activity": (6, 24, False, True, None, True, 5.49),
    "MoCA": (0, 30, False, True, None, True, 2),
}
SETTINGS = {"inpatient-rehab", "outpatient", "home-health", "school", "skilled-nursing", "acute"}
COMMON = ["type", "event_id", "patient_id", "plan_id", "occurred_at"]
SPECIFIC = {
    "plan": ["setting", "frequency_per_week", "certified_from", "certified_until", "goals"],
    "evaluation": ["kind", "clinician_id", "measures"],
    "visit": ["status"],
    "discharge": ["reason"],
}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
ARCHETYPE_SEEDS = range(20)


def ts(event):
    return dt.datetime.strptime(event["occurred_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def better(instrument, before, after):
    """How much `after` improves on `before`, in the instrument's good direction."""
    return (after - before) if RANGES[instrument][5] else (before - after)


def mcid(instrument):
    return RANGES[instrument][6]


def reached(goal, score):
    return better(goal["instrument"], goal["target"], score) >= -EPS


def by_patient(events):
    """{patient_id: events}, in patient index order."""
    patients = defaultdict(list)
    for event in events:
        patients[event["patient_id"]].append(event)
    return dict(sorted(patients.items()))


def goal_series(events):
    """{goal_id: [(date, score), ...]} of each goal's own instrument, in evaluation order."""
    goals = {g["goal_id"]: g for g in events[0]["goals"]}
    series = defaultdict(list)
    for event in events:
        if event["type"] == "evaluation":
            for m in event["measures"]:
                if m.get("goal_id") in goals and m["instrument"] == goals[m["goal_id"]]["instrument"]:
                    series[m["goal_id"]].append((ts(event).date(), m["score"]))
    return goals, series


@pytest.fixture(scope="module")
def small():
    return list(synthetic.generate(patients=10, seed=0))


@pytest.fixture(scope="module")
def large():
    return list(synthetic.generate(patients=400, seed=3))


# --- determinism and size -------------------------------------------------

def lines(**kwargs):
    out = io.StringIO()
    synthetic.write_jsonl(out, synthetic.generate(**kwargs))
    return out.getvalue().splitlines()


def test_same_arguments_give_identical_lines():
    assert lines(patients=25, seed=11) == lines(patients=25, seed=11)
    assert lines(events=3000, seed=11) == lines(events=3000, seed=11)


def test_different_seed_or_start_gives_different_stream():
    assert lines(patients=25, seed=11) != lines(patients=25, seed=12)
    assert lines(events=500, seed=11) != lines(events=500, seed=11, start=dt.date(2026, 3, 2))


@pytest.mark.parametrize("n", [0, 1, 7, 100, 4321])
def test_events_yields_exactly_n(n):
    assert sum(1 for _ in synthetic.generate(events=n, seed=5)) == n


def test_events_stream_is_a_prefix_of_any_longer_one():
    short = list(synthetic.generate(events=1000, seed=2))
    longer = list(synthetic.generate(events=5000, seed=2))
    assert short == longer[:1000]


def test_events_mode_stops_mid_patient():
    stream = list(synthetic.generate(events=2000, seed=1))
    assert any(p[-1]["type"] != "discharge" for p in by_patient(stream).values())


def test_patients_mode_gives_whole_episodes_of_exactly_n_patients(large):
    patients = by_patient(large)
    assert sorted(patients) == [f"p-{i:05d}" for i in range(400)]
    for pid, events in patients.items():
        assert events[0]["type"] == "plan"
        if _lost(pid):
            assert events[-1]["type"] == "visit" and "discharge" not in [e["type"] for e in events]
        else:
            assert events[-1]["type"] == "discharge"
            assert [e["type"] for e in events].count("discharge") == 1


def _lost(patient_id: str) -> bool:
    """Every twelfth patient from index 11 on is lost to follow-up (no discharge)."""
    return int(patient_id.split("-")[1]) % 12 == 11


def test_lost_to_follow_up_patients_go_silent_with_an_open_plan(large):
    patients = by_patient(large)
    lost = [pid for pid in patients if _lost(pid)]
    assert len(lost) == 33  # indexes 11, 23, ..., 395
    for pid in lost:
        visit_days = {ts(e).date() for e in patients[pid] if e["type"] == "visit"}
        assert 8 <= len(visit_days) <= 14

def test_generate_is_lazy():
    """Neither mode builds the stream, or every patient, before the first event."""
    assert next(synthetic.generate(events=10**12))["type"] == "plan"
    assert next(synthetic.generate(patients=10**9))["type"] == "plan"


@pytest.mark.parametrize("kwargs", [{}, {"patients": 3, "events": 3}, {"patients": -1}, {"events": -5}])
def test_generate_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        synthetic.generate(**kwargs)


def test_patient_starts_are_staggered_about_eight_a_day(large):
    for index, events in enumerate(by_patient(large).values()):
        offset = (ts(events[0]).date() - START).days
        assert index // 8 <= offset <= index // 8 + 4
    span = max(map(ts, large)) - min(map(ts, large))
    assert dt.timedelta(weeks=3) <= span <= dt.timedelta(days=365)


# --- event contract ------------------------------------------------------

def test_events_are_ordered_by_time_then_patient_then_sequence(large):
    keys = [(e["occurred_at"], e["patient_id"], e["event_id"]) for e in large]
    assert keys == sorted(keys)


def test_timestamps_are_rfc3339_utc_on_weekdays_in_clinic_hours(large):
    for event in large:
        assert TIMESTAMP.match(event["occurred_at"])
        when = ts(event)
        assert when.weekday() < 5
        assert dt.time(8) <= when.time() <= dt.time(17)


def test_every_event_has_its_fields_in_contract_order(large):
    for event in large:
        assert list(event) == COMMON + SPECIFIC[event["type"]]
        index = event["patient_id"].removeprefix("p-")
        assert event["plan_id"] == f"poc-{index}-1"


def test_event_ids_are_unique_per_patient_and_in_sequence(large):
    for patient, events in by_patient(large).items():
        ids = [e["event_id"] for e in events]
        assert ids == [f"{patient}-e{seq:04d}" for seq in range(1, len(ids) + 1)]


def test_field_values_follow_the_contract(large):
    for event in large:
        if event["type"] == "plan":
            assert event["setting"] in SETTINGS
            assert 1 <= event["frequency_per_week"] <= 5
            start = dt.date.fromisoformat(event["certified_from"])
            assert dt.date.fromisoformat(event["certified_until"]) - start == dt.timedelta(days=89)
            assert 1 <= len(event["goals"]) <= 3
        elif event["type"] == "evaluation":
            assert event["kind"] in {"initial", "re-evaluation", "progress", "discharge"}
            assert re.fullmatch(r"ot-\d+", event["clinician_id"])
            assert event["measures"]
        elif event["type"] == "visit":
            assert event["status"] in {"attended", "missed", "cancelled"}
        else:
            assert event["reason"] in {"goals-met", "plateau", "patient-request", "transferred"}


def test_goals_are_well_formed_and_point_the_better_way(large):
    for event in large:
        if event["type"] != "plan":
            continue
        assert [g["goal_id"] for g in event["goals"]] == [f"g{n}" for n in range(1, len(event["goals"]) + 1)]
        assert len({g["instrument"] for g in event["goals"]}) == len(event["goals"])
        for goal in event["goals"]:
            assert goal["instrument"] in RANGES and goal["instrument"] != "GAS"
            assert better(goal["instrument"], goal["baseline"], goal["target"]) > 0
            assert goal["gas_weight"] in (1, 2, 3)
            assert goal["description"]
            dt.date.fromisoformat(goal["target_date"])


def test_every_score_is_in_range_and_on_its_grid(large):
    checked = 0
    for event in large:
        scores = [(m["instrument"], m["score"]) for m in event.get("measures", [])]
        scores += [(g["instrument"], g[key]) for g in event.get("goals", []) for key in ("baseline", "target")]
        for instrument, score in scores:
            lo, hi, lo_exclusive, integer, step, _, _ = RANGES[instrument]
            assert type(score) in (int, float)
            assert (lo < score if lo_exclusive else lo <= score) and score <= hi, (instrument, score)
            if integer:
                assert isinstance(score, int), (instrument, score)
            else:
                assert round(score, 1) == score, (instrument, score)
            if step:
                assert score % step == 0, (instrument, score)
            checked += 1
    assert checked > 5000


def test_initial_evaluation_scores_every_goal_at_baseline(large):
    for events in by_patient(large).values():
        goals = events[0]["goals"]
        initial = next(e for e in events if e["type"] == "evaluation")
        assert initial["kind"] == "initial"
        assert (ts(initial).date() - ts(events[0]).date()).days <= 3  # day 0 or the next weekday
        scored = {m["goal_id"]: m["score"] for m in initial["measures"] if m["instrument"] != "GAS"
                  and "goal_id" in m}
        assert scored == {g["goal_id"]: g["baseline"] for g in goals}


def test_gas_is_scored_at_every_evaluation_or_never(large):
    with_gas = 0
    for events in by_patient(large).values():
        evaluations = [e for e in events if e["type"] == "evaluation"]
        gas = [sorted(m["goal_id"] for m in e["measures"] if m["instrument"] == "GAS") for e in evaluations]
        goal_ids = sorted(g["goal_id"] for g in events[0]["goals"])
        assert gas == [[]] * len(gas) or gas == [goal_ids] * len(gas)
        if gas[0]:
            with_gas += 1
            assert all(m["score"] in (-2, -1) for m in evaluations[0]["measures"] if m["instrument"] == "GAS")
    assert 0.3 < with_gas / 400 < 0.7


def test_each_episode_has_one_initial_and_ends_with_a_discharge_evaluation(large):
    for pid, events in by_patient(large).items():
        kinds = [e["kind"] for e in events if e["type"] == "evaluation"]
        assert kinds[0] == "initial" and kinds.count("initial") == 1
        if _lost(pid):
            assert "discharge" not in kinds
            continue
        assert kinds[-1] == "discharge" and kinds.count("discharge") == 1
        assert events[-2]["type"] == "evaluation" and events[-2]["kind"] == "discharge"


def test_goals_met_discharge_means_every_goal_met(large):
    for pid, events in by_patient(large).items():
        if _lost(pid):
            continue
        goals, series = goal_series(events)
        all_met = all(reached(goals[g], series[g][-1][1]) for g in goals)
        assert (events[-1]["reason"] == "goals-met") == all_met


def test_visits_are_mostly_attended(large):
    statuses = [e["status"] for e in large if e["type"] == "visit"]
    share = {s: statuses.count(s) / len(statuses) for s in ("attended", "missed", "cancelled")}
    assert share["attended"] > 0.8 and share["missed"] > 0.05 and share["cancelled"] > 0.01


def test_some_days_have_two_attended_sessions(large):
    days: defaultdict[tuple[str, dt.date], int] = defaultdict(int)
    for event in large:
        if event["type"] == "visit" and event["status"] == "attended":
            days[event["patient_id"], ts(event).date()] += 1
    assert max(days.values()) == 2


def test_recertification_reissues_the_plan_with_a_new_period(large):
    recertified = 0
    for events in by_patient(large).values():
        plans = [e for e in events if e["type"] == "plan"]
        if len(plans) == 1:
            continue
        first, second = plans
        recertified += 1
        assert second["plan_id"] == first["plan_id"]
        until = dt.date.fromisoformat(first["certified_until"])
        assert dt.date.fromisoformat(second["certified_from"]) == until + dt.timedelta(days=1)
        assert until - dt.timedelta(days=6) <= ts(second).date() <= until
        assert ts(events[-1]).date() > until
    assert recertified >= 3


# --- archetype patterns --------------------------------------------------

def all_goals_met_then_discharged(events):
    goals, series = goal_series(events)
    return (events[-1]["type"] == "discharge" and events[-1]["reason"] == "goals-met"
            and all(reached(goals[g], series[g][-1][1]) for g in goals))


def lower_is_better_target_reached(events):
    goals, series = goal_series(events)
    return any(not RANGES[goals[g]["instrument"]][5] and any(reached(goals[g], s) for _, s in series[g])
               for g in goals)


def plateau_after_gain(events):
    goals, series = goal_series(events)
    for g, points in series.items():
        scores = [s for _, s in points]
        inst = goals[g]["instrument"]
        for i in range(1, len(scores) - 4):
            window = scores[i:i + 5]
            if (better(inst, scores[0], scores[i]) > 0
                    and all(abs(b - a) < mcid(inst) for a, b in itertools.pairwise(window))
                    and not any(reached(goals[g], s) for s in window)):
                return True
    return False


def decline_of(multiple):
    def check(events):
        goals, series = goal_series(events)
        return any(better(goals[g]["instrument"], a, b) <= -multiple * mcid(goals[g]["instrument"]) + EPS
                   for g, points in series.items()
                   for (_, a), (_, b) in itertools.pairwise(points))
    return check


def target_date_passed_unmet(events):
    goals, series = goal_series(events)
    return any(day > dt.date.fromisoformat(goals[g]["target_date"]) and not reached(goals[g], score)
               for g, points in series.items() for day, score in points)


def near_target_jump(events):
    goals, series = goal_series(events)
    for g, points in series.items():
        goal = goals[g]
        span = better(goal["instrument"], goal["baseline"], goal["target"])
        for (_, a), (_, b) in itertools.pairwise(points):
            if (better(goal["instrument"], a, b) >= mcid(goal["instrument"]) - EPS
                    and better(goal["instrument"], goal["baseline"], b) >= 0.75 * span - EPS
                    and not reached(goal, b)):
                return True
    return False


def three_missed_in_a_row(events):
    statuses = "".join(e["status"][0] for e in events if e["type"] == "visit")
    return "mmm" in statuses


def most_treatment_days_without_report(events):
    longest, days = 0, set[dt.date]()
    for event in events:
        if event["type"] == "evaluation" and event["kind"] in ("initial", "progress", "re-evaluation"):
            days = set()
        elif event["type"] == "visit" and event["status"] == "attended":
            days.add(ts(event).date())
            longest = max(longest, len(days))
    return longest


def seen_through_certification_end(events):
    until = dt.date.fromisoformat(events[0]["certified_until"])
    attended = {ts(e).date() for e in events if e["type"] == "visit" and e["status"] == "attended"}
    return (any(until - dt.timedelta(days=6) <= day <= until for day in attended)
            and any(day > until for day in attended))


ARCHETYPE_PATTERNS = [
    all_goals_met_then_discharged,
    lower_is_better_target_reached,
    plateau_after_gain,
    decline_of(1),
    decline_of(2),
    target_date_passed_unmet,
    near_target_jump,
    three_missed_in_a_row,
    lambda events: most_treatment_days_without_report(events) >= 10,
    seen_through_certification_end,
]


@pytest.mark.parametrize("seed", ARCHETYPE_SEEDS)
def test_patients_0_to_9_each_show_their_archetype(seed):
    patients = by_patient(synthetic.generate(patients=10, seed=seed))
    for index, pattern in enumerate(ARCHETYPE_PATTERNS):
        assert pattern(patients[f"p-{index:05d}"]), (seed, index)


def test_any_ten_patients_show_every_pattern(small):
    patients = list(by_patient(small).values())
    for pattern in ARCHETYPE_PATTERNS:
        assert any(pattern(events) for events in patients)


def test_severe_setback_is_not_an_ordinary_setback():
    """The setback archetype (index 3) declines by 1 to under 2 MCIDs."""
    for seed in ARCHETYPE_SEEDS:
        patient = by_patient(synthetic.generate(patients=4, seed=seed))["p-00003"]
        assert decline_of(1)(patient) and not decline_of(2)(patient), seed


def test_progress_reports_are_not_late_unless_meant_to_be(large):
    late = [most_treatment_days_without_report(events) >= 10 for events in by_patient(large).values()]
    assert late[8] and 0 < sum(late) < 0.15 * len(late)


def test_later_patients_mix_archetypes(large):
    patients = list(by_patient(large).values())[10:]
    for pattern in ARCHETYPE_PATTERNS:
        assert sum(pattern(events) for events in patients) >= 5


# --- output and command line ---------------------------------------------

def test_write_jsonl_writes_compact_lines_and_counts_them():
    events = list(synthetic.generate(events=50, seed=4))
    out = io.StringIO()
    assert synthetic.write_jsonl(out, iter(events)) == 50
    written = out.getvalue().splitlines()
    assert written == [json.dumps(e, separators=(",", ":")) for e in events]
    assert [json.loads(line) for line in written] == events


def test_main_writes_the_requested_stream(tmp_path):
    out = tmp_path / "stream.jsonl"
    args = ["--patients", "3", "--seed", "9", "--start", "2026-02-02", "--out", str(out)]
    assert synthetic.main(args) == 0
    assert out.read_text().splitlines() == lines(patients=3, seed=9, start=dt.date(2026, 2, 2))


def test_main_requires_exactly_one_size(capsys):
    for args in ([], ["--patients", "2", "--events", "2"], ["--events", "-1"]):
        with pytest.raises(SystemExit):
            synthetic.main(args)
    capsys.readouterr()


def test_runs_as_a_module_writing_to_stdout():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "otrules.synthetic", "--events", "25", "--seed", "1"],
                            capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert result.stdout.splitlines() == lines(events=25, seed=1)
