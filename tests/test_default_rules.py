"""One scenario per behaviour of clinical.md's default-ruleset table, with negative twins."""

from __future__ import annotations

from conftest import Story, by_rule, goal, run_story

COPM = "COPM-performance"


def _kinds(recs):
    return [(r.rule.id, r.kind, r.indicator, r.goal_id) for r in recs]


# ---------------------------------------------------------------- goal reached


def test_goal_reached_first_time_advances_goal(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 7)])
             .evaluation(1, (COPM, 3, "g1"), kind="initial")
             .evaluation(14, (COPM, 5, "g1"))
             .evaluation(28, (COPM, 7, "g1"))
             .evaluation(42, (COPM, 8, "g1")))
    recs = by_rule(run_story(engine, story), "goal-met")
    assert _kinds(recs) == [("goal-met", "advance_goal", "info", "g1")]
    assert recs[0].triggered_by == [story.events[3]["event_id"]]
    assert recs[0].evidence["goal.met"] is True and recs[0].evidence["goal.met_before"] is False
    assert recs[0].summary.startswith("Goal g1 reached: COPM-performance 7 (target 7)")


def test_goal_met_again_after_a_dip_is_not_first_time(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 7)])
             .evaluation(14, (COPM, 7, "g1")).evaluation(60, (COPM, 6, "g1")).evaluation(90, (COPM, 7, "g1")))
    assert len(by_rule(run_story(engine, story), "goal-met")) == 1


def test_lower_is_better_goal_reached_when_score_falls_to_target(engine):
    story = (Story().plan(0, [goal("g1", "NHPT", 90, 40)])
             .evaluation(1, ("NHPT", 90, "g1"), kind="initial")
             .evaluation(20, ("NHPT", 38.5, "g1")))
    assert _kinds(by_rule(run_story(engine, story), "goal-met")) == [("goal-met", "advance_goal", "info", "g1")]


def test_lower_is_better_goal_not_met_by_a_higher_score(engine):
    story = (Story().plan(0, [goal("g1", "NHPT", 90, 40)])
             .evaluation(1, ("NHPT", 90, "g1"), kind="initial")
             .evaluation(20, ("NHPT", 120, "g1")))
    assert by_rule(run_story(engine, story), "goal-met") == []


def test_gas_measure_of_a_met_goal_does_not_fire_goal_met_twice(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 7)])
             .evaluation(14, (COPM, 7, "g1"), ("GAS", 0, "g1"))
             .evaluation(28, ("GAS", 1, "g1")))
    assert len(by_rule(run_story(engine, story), "goal-met")) == 1


# ---------------------------------------------------------------- all goals met


def test_every_goal_met_recommends_discharge(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 7), goal("g2", "BBT", 20, 35)])
             .evaluation(14, (COPM, 7, "g1"), ("BBT", 30, "g2"))
             .evaluation(28, (COPM, 7, "g1"), ("BBT", 36, "g2")))
    recs = by_rule(run_story(engine, story), "all-goals-met")
    assert _kinds(recs) == [("all-goals-met", "discharge", "info", None)]
    assert recs[0].triggered_by == [story.events[2]["event_id"]]
    assert recs[0].evidence["plan.all_goals_met"] is True


def test_one_goal_of_two_met_is_not_discharge(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 7), goal("g2", "BBT", 20, 35)])
             .evaluation(14, (COPM, 7, "g1"), ("BBT", 30, "g2")))
    assert by_rule(run_story(engine, story), "all-goals-met") == []


def test_no_discharge_recommendation_after_discharge_event(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 7)])
             .discharge(10).evaluation(14, (COPM, 7, "g1"), kind="discharge"))
    assert by_rule(run_story(engine, story), "all-goals-met") == []


# ---------------------------------------------------------------- declines


def test_decline_by_one_mcid_recommends_re_evaluation(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 9)])
             .evaluation(14, (COPM, 6, "g1")).evaluation(28, (COPM, 4, "g1")))
    recs = run_story(engine, story)
    assert _kinds(by_rule(recs, "measure-declined")) == [("measure-declined", "re_evaluate", "warning", "g1")]
    assert by_rule(recs, "severe-decline") == []
    assert by_rule(recs, "measure-declined")[0].evidence["measure.improvement"] == -2


def test_decline_below_mcid_is_not_re_evaluation(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 9)])
             .evaluation(14, (COPM, 6, "g1")).evaluation(28, (COPM, 4.5, "g1")))
    assert by_rule(run_story(engine, story), "measure-declined") == []


def test_lower_is_better_rise_is_a_decline(engine):
    story = Story().plan(0, []).evaluation(14, ("NHPT", 60)).evaluation(28, ("NHPT", 95))
    recs = by_rule(run_story(engine, story), "measure-declined")
    assert _kinds(recs) == [("measure-declined", "re_evaluate", "warning", None)]
    assert recs[0].evidence["measure.improvement"] == -35


def test_lower_is_better_fall_is_not_a_decline(engine):
    story = Story().plan(0, []).evaluation(14, ("NHPT", 95)).evaluation(28, ("NHPT", 60))
    recs = run_story(engine, story)
    assert by_rule(recs, "measure-declined") == [] and by_rule(recs, "severe-decline") == []


def test_decline_by_twice_mcid_is_critical_clinical_review(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 9)])
             .evaluation(14, (COPM, 8, "g1")).evaluation(28, (COPM, 4, "g1")))
    recs = run_story(engine, story)
    assert _kinds(by_rule(recs, "severe-decline")) == [("severe-decline", "clinical_review", "critical", "g1")]
    assert by_rule(recs, "measure-declined") == []  # the critical card replaces the warning


def test_unknown_instrument_has_no_mcid_facts_and_no_decline(engine):
    story = Story().plan(0, []).evaluation(14, ("Made-up-scale", 60)).evaluation(28, ("Made-up-scale", 1))
    recs = run_story(engine, story)
    assert recs == []


# ---------------------------------------------------------------- plateau


def test_three_scores_without_mcid_change_and_goal_unmet_modifies_plan(engine):
    story = (Story().plan(0, [goal("g1", COPM, 2, 9)])
             .evaluation(7, (COPM, 5, "g1")).evaluation(21, (COPM, 5.5, "g1"))
             .evaluation(35, (COPM, 5, "g1")).evaluation(49, (COPM, 6, "g1")))
    recs = by_rule(run_story(engine, story), "plateau")
    assert _kinds(recs) == [("plateau", "modify_plan", "warning", "g1")]
    assert recs[0].triggered_by == [story.events[4]["event_id"]]
    assert recs[0].evidence["measure.plateau_count"] == 3


def test_slow_steady_gains_are_not_a_plateau(engine):
    # each step is below the 2-point MCID (so stable_count grows), but together they are real progress
    story = Story().plan(0, [goal("g1", COPM, 2, 9)])
    for i, score in enumerate([3, 4, 5, 6, 7]):
        story.evaluation(7 + 14 * i, (COPM, score, "g1"))
    assert by_rule(run_story(engine, story), "plateau") == []
    from otrules.engine import PatientState
    from otrules.schemas import parse_event

    state = PatientState("p-1")
    last = [engine.explain_facts(state, parse_event(e, engine.catalogue)) for e in story.events][-1]
    assert last.per_measure[0][1]["measure.stable_count"] == 4  # the contract's fact, as defined


def test_two_flat_scores_are_not_yet_a_plateau(engine):
    story = (Story().plan(0, [goal("g1", COPM, 2, 9)])
             .evaluation(7, (COPM, 5, "g1")).evaluation(21, (COPM, 5.5, "g1")).evaluation(35, (COPM, 5, "g1")))
    assert by_rule(run_story(engine, story), "plateau") == []


def test_flat_scores_at_a_met_goal_are_not_a_plateau(engine):
    story = (Story().plan(0, [goal("g1", COPM, 2, 5)])
             .evaluation(7, (COPM, 5, "g1")).evaluation(21, (COPM, 5.5, "g1"))
             .evaluation(35, (COPM, 5, "g1")).evaluation(49, (COPM, 5.5, "g1")))
    assert by_rule(run_story(engine, story), "plateau") == []


# ---------------------------------------------------------------- target date


def test_target_date_passed_with_goal_unmet_modifies_plan(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 8, target_day=30)])
             .evaluation(14, (COPM, 4, "g1")).evaluation(35, (COPM, 5, "g1")))
    recs = by_rule(run_story(engine, story), "target-date-passed")
    assert _kinds(recs) == [("target-date-passed", "modify_plan", "warning", "g1")]
    assert recs[0].evidence["goal.days_to_target"] == -5


def test_target_date_passed_with_goal_met_is_no_modify(engine):
    story = (Story().plan(0, [goal("g1", COPM, 3, 5, target_day=30)])
             .evaluation(14, (COPM, 4, "g1")).evaluation(35, (COPM, 6, "g1")))
    assert by_rule(run_story(engine, story), "target-date-passed") == []


def test_target_date_today_is_not_passed(engine):
    story = Story().plan(0, [goal("g1", COPM, 3, 8, target_day=30)]).evaluation(30, (COPM, 4, "g1"))
    assert by_rule(run_story(engine, story), "target-date-passed") == []


# ---------------------------------------------------------------- near target


def test_meaningful_gain_to_three_quarters_of_target_decreases_frequency(engine):
    story = (Story().plan(0, [goal("g1", COPM, 2, 10)])
             .evaluation(14, (COPM, 4, "g1")).evaluation(28, (COPM, 8, "g1")))
    recs = by_rule(run_story(engine, story), "near-target")
    assert _kinds(recs) == [("near-target", "decrease_frequency", "info", "g1")]
    assert recs[0].evidence["goal.progress"] == 0.75


def test_gain_short_of_three_quarters_is_no_taper(engine):
    story = (Story().plan(0, [goal("g1", COPM, 2, 10)])
             .evaluation(14, (COPM, 4, "g1")).evaluation(28, (COPM, 7, "g1")))
    assert by_rule(run_story(engine, story), "near-target") == []


def test_near_target_without_a_meaningful_gain_is_no_taper(engine):
    story = (Story().plan(0, [goal("g1", COPM, 2, 10)])
             .evaluation(14, (COPM, 7.5, "g1")).evaluation(28, (COPM, 8, "g1")))
    assert by_rule(run_story(engine, story), "near-target") == []


# ---------------------------------------------------------------- adherence


def test_three_missed_visits_in_a_row_recommend_adherence_review(engine):
    story = Story().plan(0).visit(1).visit(3, "missed").visit(5, "missed").visit(8, "missed")
    recs = by_rule(run_story(engine, story), "missed-visits")
    assert _kinds(recs) == [("missed-visits", "adherence_review", "warning", None)]
    assert recs[0].triggered_by == [story.events[-1]["event_id"]]


def test_an_attended_visit_breaks_the_run_of_misses(engine):
    story = Story().plan(0).visit(3, "missed").visit(5, "missed").visit(8).visit(10, "missed")
    assert by_rule(run_story(engine, story), "missed-visits") == []


def test_a_cancelled_visit_neither_counts_nor_breaks_the_run(engine):
    story = Story().plan(0).visit(3, "missed").visit(5, "missed").visit(6, "cancelled")
    assert by_rule(run_story(engine, story), "missed-visits") == []
    story.visit(8, "missed")
    assert len(by_rule(run_story(engine, story), "missed-visits")) == 1


# ---------------------------------------------------------------- progress report


def test_ten_treatment_days_since_report_make_progress_report_due(engine):
    story = Story().plan(0).evaluation(0, (COPM, 3), kind="initial")
    for day in range(1, 11):
        story.visit(day)
    recs = by_rule(run_story(engine, story), "progress-report-due")
    assert _kinds(recs) == [("progress-report-due", "progress_report_due", "warning", None)]
    assert recs[0].triggered_by == [story.events[-1]["event_id"]]


def test_two_visits_on_one_date_are_one_treatment_day(engine):
    story = Story().plan(0).evaluation(0, (COPM, 3), kind="initial")
    for day in range(1, 6):
        story.visit(day, hour=9).visit(day, hour=14)
    assert by_rule(run_story(engine, story), "progress-report-due") == []


def test_a_progress_report_resets_the_treatment_day_count(engine):
    story = Story().plan(0).evaluation(0, (COPM, 3), kind="initial")
    for day in range(1, 7):
        story.visit(day)
    story.evaluation(7, (COPM, 4))
    for day in range(8, 14):
        story.visit(day)
    assert by_rule(run_story(engine, story), "progress-report-due") == []


def test_a_re_evaluation_also_resets_the_count(engine):
    story = Story().plan(0).evaluation(0, (COPM, 3), kind="initial")
    for day in range(1, 7):
        story.visit(day)
    story.evaluation(7, (COPM, 4), kind="re-evaluation")
    for day in range(8, 14):
        story.visit(day)
    assert by_rule(run_story(engine, story), "progress-report-due") == []


# ---------------------------------------------------------------- certification


def test_certification_ending_within_seven_days_recommends_recertification(engine):
    story = Story().plan(0, cert_days=90).visit(80).visit(82)  # certified_until = day 89
    recs = by_rule(run_story(engine, story), "recertify")
    assert _kinds(recs) == [("recertify", "recertify_plan", "warning", None)]
    assert recs[0].evidence["plan.days_until_cert_end"] == 7


def test_certification_eight_days_away_is_not_yet_due(engine):
    story = Story().plan(0, cert_days=90).visit(81)
    assert by_rule(run_story(engine, story), "recertify") == []


def test_expired_certification_still_recommends_recertification(engine):
    story = Story().plan(0, cert_days=90).visit(95)
    recs = run_story(engine, story)
    assert by_rule(recs, "recertify") == []
    expired = by_rule(recs, "recertify-expired")
    assert _kinds(expired) == [("recertify-expired", "recertify_plan", "warning", None)]
    assert expired[0].evidence["plan.days_until_cert_end"] == -6
    assert expired[0].summary == "Plan poc-1 certification has ended and the plan is still open: recertify now or discharge"


def test_recertification_by_a_new_plan_event_stops_the_reminder(engine):
    story = Story().plan(0, cert_days=90).plan(85, cert_days=90).visit(86)
    assert by_rule(run_story(engine, story), "recertify") == []


# ---------------------------------------------------------------- throttles and ids


def test_throttle_once_within_window_in_event_time(engine):
    story = Story().plan(0, cert_days=100)  # certified until day 99; reminders from day 92
    for day in (92, 94, 98, 99):  # window 7d per plan: day 92, then day 99 (7 days later)
        story.visit(day)
    recs = by_rule(run_story(engine, story), "recertify")
    assert [r.occurred_at[:10] for r in recs] == ["2026-04-07", "2026-04-14"]


def test_throttle_per_goal_keeps_goals_apart(engine):
    story = (Story().plan(0, [goal("g1", COPM, 2, 9), goal("g2", "BBT", 10, 40)])
             .evaluation(7, (COPM, 6, "g1"), ("BBT", 30, "g2"))
             .evaluation(14, (COPM, 4, "g1"), ("BBT", 24, "g2"))
             .evaluation(20, (COPM, 2, "g1"), ("BBT", 18, "g2")))
    recs = by_rule(run_story(engine, story), "measure-declined")
    assert sorted((r.goal_id, r.occurred_at[:10]) for r in recs) == [("g1", "2026-01-19"), ("g2", "2026-01-19")]


def test_recommendation_ids_are_stable_and_distinct_per_goal(engine):
    story = (Story().plan(0, [goal("g1", COPM, 2, 9), goal("g2", "BBT", 10, 40)])
             .evaluation(7, (COPM, 6, "g1"), ("BBT", 30, "g2"))
             .evaluation(14, (COPM, 4, "g1"), ("BBT", 24, "g2")))
    first = [r.recommendation_id for r in run_story(engine, story)]
    second = [r.recommendation_id for r in run_story(engine, story)]
    assert first == second and len(set(first)) == len(first) == 2


def test_duplicate_event_id_is_skipped(engine):
    from otrules.engine import PatientState
    from otrules.schemas import parse_event

    story = Story().plan(0).visit(3, "missed").visit(5, "missed").visit(8, "missed")
    state = PatientState("p-1")
    events = [parse_event(e, engine.catalogue) for e in story.events]
    outcomes = [engine.process(state, e) for e in [*events, events[-1]]]
    assert [o.duplicate for o in outcomes] == [False, False, False, False, True]
    assert outcomes[-1].recommendations == ()
    assert state.plans["poc-1"].visits_missed_in_a_row == 3  # the duplicate changed nothing


def test_evidence_holds_every_fact_the_condition_names(engine):
    story = (Story().plan(0, [goal("g1", COPM, 2, 10)])
             .evaluation(14, (COPM, 4, "g1")).evaluation(28, (COPM, 8, "g1")))
    for rec in run_story(engine, story):
        rule = next(r for r in engine.rulesets[0].rules if r.id == rec.rule.id)
        assert set(rule.facts) <= set(rec.evidence)
