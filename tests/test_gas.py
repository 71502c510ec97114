import pytest

from otrules.engine.gas import gas_t_score


def test_worked_example_from_clinical_md():
    # levels (-2,0,-1,2,0,1), weights (3,5,1,4,2,6): sum wx 7, root 14, T = 55
    assert gas_t_score([-2, 0, -1, 2, 0, 1], [3, 5, 1, 4, 2, 6]) == pytest.approx(55.0)


def test_all_goals_as_expected_is_fifty():
    assert gas_t_score([0, 0, 0], [1, 1, 1]) == pytest.approx(50.0)


def test_undefined_cases_are_none():
    assert gas_t_score([], []) is None
    assert gas_t_score([1, 1], [0, 0]) is None


def test_plan_gas_t_needs_every_goal_to_have_a_level(engine):
    from conftest import Story, goal
    from otrules.engine import PatientState
    from otrules.schemas import parse_event

    story = (Story().plan(0, [goal("g1", "COPM-performance", 3, 7), goal("g2", "BBT", 10, 30, weight=2)])
             .evaluation(7, ("GAS", 1, "g1")).evaluation(14, ("GAS", -1, "g2")))
    state = PatientState("p-1")
    facts = [engine.explain_facts(state, parse_event(e, engine.catalogue)).base["plan.gas_t"] for e in story.events]
    # T = 50 + 10 * (1*1 + 2*-1) / sqrt(0.7*5 + 0.3*9) = 50 - 10/sqrt(6.2)
    assert facts[:2] == [None, None] and facts[2] == pytest.approx(50 - 10 / 6.2 ** 0.5, abs=0.01)
