"""What validates, runs: the rules files of issue 12's table, each through `otrules validate`
(the checks, the compile and the smoke run in a child) and then `otrules run` over the bundled
sample, or refused statically with file:line in under a second.

Before the compiler respected durable_rules' limits (engine/limits.py), each of these passed
validate and then failed every event (error 303), failed to load (error 113) or hung.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HEAD = 'ruleset: scale\nversion: "1"\nrules:\n'


def rule(rule_id: str, when: str) -> str:
    return (f"  - id: {rule_id}\n    when: {json.dumps(when)}\n"
            f"    recommend: {{kind: clinical_review, indicator: info, summary: \"{rule_id}\"}}\n")


def otrules(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otrules", *args], capture_output=True, text=True, timeout=timeout)


def validates_and_runs(path: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """The file validates, and then every event of the sample runs without a dead letter."""
    checked = otrules("validate", str(path))
    assert checked.returncode == 0, checked.stderr[-3000:]
    dlq, out = tmp_path / "dlq.jsonl", tmp_path / "out.jsonl"
    ran = otrules("run", "--rules", str(path), "--output", str(out), "--dlq", str(dlq))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert dlq.read_text() == "", dlq.read_text()[:2000]
    assert "rejected 0" in ran.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def write(tmp_path: Path, rules: list[str]) -> Path:
    path = tmp_path / "scale.yaml"
    path.write_text(HEAD + "".join(rules))
    return path


@pytest.mark.parametrize("per", ["event", "measure"])
def test_65_rules_that_all_hold_run(tmp_path, per):
    """64 worked, the 65th failed every event with error 303 (one ruleset's pending-node stack)."""
    fact = "plan.goals_total" if per == "event" else "measure.score"
    path = write(tmp_path, [rule(f"r{i}", f"{fact} > {-1000 - i}") for i in range(65)])
    recs = validates_and_runs(path, tmp_path)
    assert {r["rule"]["id"] for r in recs} == {f"r{i}" for i in range(65)}  # every rule fired somewhere


@pytest.mark.parametrize("shape", ["or", "any"])
def test_an_or_of_15_comparisons_compiles_and_matches(tmp_path, shape):
    """15 disjuncts: durable_rules refused the ruleset (error 113) and validate named no rule."""
    parts = [f"measure.score == {n}" for n in range(1, 16)]
    when = " or ".join(parts) if shape == "or" else None
    text = rule("wide", when) if when else (
        "  - id: wide\n    when:\n      any:\n" + "".join(f"        - {json.dumps(p)}\n" for p in parts)
        + '    recommend: {kind: clinical_review, indicator: info, summary: "wide"}\n')
    recs = validates_and_runs(write(tmp_path, [text]), tmp_path)
    assert recs and all(r["evidence"]["measure.score"] in range(1, 16) for r in recs)


def test_in_with_512_values_runs(tmp_path):
    """`in` over 512 values hung durable_rules (and validate for 120 s)."""
    values = ", ".join(str(n) for n in range(512))
    recs = validates_and_runs(write(tmp_path, [rule("member", f"measure.score in [{values}]")]), tmp_path)
    assert recs and all(0 <= r["evidence"]["measure.score"] < 512 for r in recs)


def test_2000_rules_validate_and_run(tmp_path):
    """2,000 rules hung validate after 120 s. Each rule's guards hold for every event (so every
    durable_rules ruleset is walked deep) while its comparison never does (so the run stays short)."""
    rules = [rule(f"r{i}", f"plan.goals_total < {-1 - i}" if i % 2 else f"measure.score < {-1000 - i}")
             for i in range(2000)]
    started = time.monotonic()
    assert validates_and_runs(write(tmp_path, rules), tmp_path) == []
    print(f"2,000 rules: validate and run over the sample in {time.monotonic() - started:.1f} s")


@pytest.mark.parametrize(("when", "message"), [
    ("measure.score < 1e999", "the number 1e999 is out of range"),
    ("measure.score > -1e999", "the number -1e999 is out of range"),
])
def test_an_infinite_literal_is_refused_statically(tmp_path, when, message):
    path = write(tmp_path, [rule("inf", when)])
    started = time.monotonic()
    checked = otrules("validate", str(path))
    assert time.monotonic() - started < 30  # a process start; the refusal itself is immediate
    assert checked.returncode == 1
    assert checked.stderr.startswith(f"{path}:5:") and message in checked.stderr


def test_10000_rules_are_refused_statically_naming_the_line(tmp_path):
    """10,000 rules hung validate for 132 s; a file over the rule limit is refused at once."""
    from otrules.engine import RulesetError, parse_ruleset_text
    from otrules.engine.loader import MAX_RULES

    text = HEAD + "".join(rule(f"r{i}", "plan.goals_total > 0") for i in range(10_000))
    started = time.monotonic()
    with pytest.raises(RulesetError) as refused:
        parse_ruleset_text(text, "big.yaml")
    assert time.monotonic() - started < 1
    (problem,) = refused.value.problems
    assert str(problem).startswith(f"big.yaml:{4 + 3 * MAX_RULES}:5: the file has 10,000 rules, over the 2,500-rule")


def test_the_smoke_run_names_a_rule_durable_rules_fails_on(tmp_path, monkeypatch):
    """Every rule is fed fact sets in the child; one that durable_rules fails on is named with
    its line (here a stand-in: the matcher made to fail for one rule's condition)."""
    from otrules import smoke
    from otrules.engine import Engine, parse_ruleset_text
    from otrules.engine.matcher import Matcher

    text = HEAD + rule("fine", "plan.goals_total > 0") + rule("bad", "plan.goals_total > 12345")
    ruleset = parse_ruleset_text(text, "s.yaml")
    from otrules import defaults

    engine = Engine([ruleset], defaults.catalogue())
    real = Matcher.match

    def failing(self, facts):
        if "12345" in json.dumps(self.definition):
            raise RuntimeError("Could not assert event, error code: 303")
        return real(self, facts)

    monkeypatch.setattr(Matcher, "match", failing)
    assert smoke.rule_problems(ruleset, engine._loaded[0]) == [
        "s.yaml:7: rule bad: durable_rules fails on it (RuntimeError: Could not assert event, error code: 303)"]


def test_rules_that_start_with_the_same_derived_test_do_not_share_a_node(tmp_path):
    """Red team: 33 rules starting with one ratio (a value otrules derives) shared that
    durable_rules node, whose children overflowed its 64-node stack on 649 of the sample's
    events, after validate had accepted the file. Derived values are now keyed per rule."""
    when = ("plan.visits_attended / plan.frequency_per_week > 4 and "
            "(plan.goals_met >= 0 or plan.treatment_days_since_report >= 0)")
    recs = validates_and_runs(write(tmp_path, [rule(f"r{i}", when) for i in range(33)]), tmp_path)
    assert recs, "the ratio passes 4 on some of the sample's events: the rules must fire there"


def test_the_rule_limit_holds_for_files_loaded_together(tmp_path):
    from otrules.engine import RulesetError, load_rulesets
    from otrules.engine.loader import MAX_RULES

    for n in range(2):
        text = HEAD.replace("scale", f"part{n}") + "".join(
            rule(f"r{i}", "plan.goals_total > 0") for i in range(MAX_RULES // 2 + 1))
        (tmp_path / f"part{n}.yaml").write_text(text)
    with pytest.raises(RulesetError) as refused:
        load_rulesets([tmp_path])
    (problem,) = refused.value.problems
    assert str(problem).startswith(f"{tmp_path / 'part1.yaml'}:{4 + 3 * (MAX_RULES // 2 - 1)}:1: rule r1249: "
                                   "the rules files hold 2,502 rules together, over the 2,500-rule limit")
