"""Rules files: every error in one pass, each pointing at file:line:col and the rule."""

from __future__ import annotations

import textwrap

import pytest

from otrules import defaults
from otrules.engine import RulesetError, load_rulesets, parse_ruleset_text


def problems(text: str) -> list[str]:
    with pytest.raises(RulesetError) as info:
        parse_ruleset_text(textwrap.dedent(text), "my.yaml")
    return [str(p) for p in info.value.problems]


GOOD_RULE = """
  - id: ok
    when: goal.met
    recommend: {kind: advance_goal, indicator: info, summary: "Goal {goal.id} met"}
"""


def test_bundled_ruleset_loads_with_every_default_behaviour():
    (ruleset,) = defaults.rulesets()
    kinds = {r.recommend.kind for r in ruleset.rules}
    assert {"advance_goal", "discharge", "re_evaluate", "clinical_review", "modify_plan", "decrease_frequency",
            "adherence_review", "progress_report_due", "recertify_plan"} <= kinds
    assert ruleset.digest.startswith("sha256:") and len(ruleset.digest) == 71
    assert all(r.references or r.id == "missed-visits" for r in ruleset.rules)


def test_several_errors_in_one_file_are_all_reported_with_positions():
    found = problems("""\
        ruleset: mine
        version: "1"
        rules:
          - id: a
            when: measure.scor >= 5
            recommend: {kind: re_evaluate, indicator: warning, summary: "x"}
          - id: b
            when: goal.met == 1
            recommend: {kind: advance_goal, indicator: info, summary: "Goal {goal.idd}"}
          - id: a
            when: goal.met
            recommend: {kind: advance_goal, indicator: info, summary: "dup"}
          - id: s
            when:
              all:
                - goal.met
                - measure.nope > 1
            recommend: {kind: advance_goal, indicator: info, summary: "x"}
        """)
    assert found == [
        "my.yaml:5:11: rule a: when: unknown fact 'measure.scor' (hint: did you mean measure.score?)",
        "my.yaml:8:20: rule b: when: cannot compare yes/no (goal.met) with a number (1) "
        "(hint: a yes/no fact is tested on its own, e.g. goal.met or not goal.met)",
        "my.yaml:9:63: rule b: recommend.summary: unknown fact {goal.idd} (hint: did you mean goal.id?)",
        "my.yaml:10:9: rule a: duplicate rule id (first at line 4)",
        "my.yaml:17:11: rule s: when: unknown fact 'measure.nope' (hint: did you mean measure.score?)",
    ]


def test_schema_errors_name_rule_field_and_line():
    found = problems("""\
        ruleset: mine
        version: "1"
        rules:
          - id: c
            when: goal.met
            recommend: {kind: celebrate, indicator: info, summary: "x"}
            throttle: {once_within: fortnight}
            colour: blue
        """)
    text = "\n".join(found)
    assert "my.yaml:6:" in text and "rule c: recommend.kind: \"celebrate\" is not allowed" in text
    assert "my.yaml:7:" in text and "throttle.once_within" in text and "fortnight" in text
    assert "my.yaml:8:" in text and "colour: unknown field" in text


def test_condition_errors_are_reported_even_when_the_schema_fails_elsewhere():
    found = problems("""\
        ruleset: mine
        version: "1"
        rules:
          - id: c
            when: goal.mett
            recommend: {kind: celebrate, indicator: info, summary: "x"}
        """)
    text = "\n".join(found)
    assert "celebrate" in text and "unknown fact 'goal.mett'" in text


def test_yaml_syntax_error_has_a_line():
    found = problems("ruleset: mine\nrules:\n  - id: a\n    when: [unclosed\n")
    assert found[0].startswith("my.yaml:") and "not valid YAML" in found[0]


def test_long_summary_is_an_error():
    found = problems(f"""\
        ruleset: mine
        version: "1"
        rules:
          - id: long
            when: goal.met
            recommend: {{kind: advance_goal, indicator: info, summary: "{'x' * 130} {{measure.instrument}}"}}
        """)
    assert "rule long: recommend.summary can reach about 147 characters" in found[0]


def test_structured_when_all_any_not():
    rs = parse_ruleset_text(textwrap.dedent("""\
        ruleset: mine
        version: "1"
        rules:
          - id: s
            when:
              all:
                - goal.met
                - any: ["measure.score > 5", "measure.improved"]
                - not: "plan.discharged"
            recommend: {kind: advance_goal, indicator: info, summary: "x"}
        """), "s.yaml")
    assert rs.rules[0].condition_text == (
        "goal.met and (measure.score > 5 or measure.improved) and not plan.discharged")
    assert rs.rules[0].per_measure


def test_a_folder_loads_rulesets_and_skips_other_yaml(tmp_path):
    (tmp_path / "a.yaml").write_text('ruleset: a\nversion: "1"\nrules:' + GOOD_RULE)
    (tmp_path / "notes.yaml").write_text("just: data\n")
    assert [rs.name for rs in load_rulesets([tmp_path])] == ["a"]


def test_digest_changes_with_content_not_with_comments():
    base = 'ruleset: a\nversion: "1"\nrules:' + GOOD_RULE
    d1 = parse_ruleset_text(base).digest
    assert parse_ruleset_text("# a comment\n" + base).digest == d1
    assert parse_ruleset_text(base.replace("goal.met", "not goal.met")).digest != d1


def test_unknown_instruments_in_conditions_and_overrides(tmp_path):
    from click.testing import CliRunner

    from otrules.cli import main

    path = tmp_path / "inst.yaml"
    path.write_text(textwrap.dedent("""\
        ruleset: x
        version: "1"
        instruments:
          COPM-perfomance: {mcid: 3}
          My-scale: {min: 0, max: 10, better: higher, mcid: 1}
        rules:
          - id: a
            when: measure.instrument == "COPM-perfomance" and measure.improved
            recommend: {kind: advance_goal, indicator: info, summary: s}
          - id: b
            when: measure.instrument in ["My-scale", "FIM-motr"]
            recommend: {kind: advance_goal, indicator: info, summary: s}
        """))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines()[:3] == [
        f"{path}:4:3: instruments.COPM-perfomance: not in the catalogue; a new instrument needs min, max, better "
        "(hint: did you mean COPM-performance?)",
        f"{path}:8:33: rule a: when: unknown instrument 'COPM-perfomance' compared with measure.instrument "
        "(hint: did you mean COPM-performance?)",
        f"{path}:11:30: rule b: when: unknown instrument 'FIM-motr' compared with measure.instrument "
        "(hint: did you mean FIM-motor?)",
    ]


def test_validate_compiles_and_smoke_runs_in_a_child():
    from click.testing import CliRunner

    from otrules.cli import main

    result = CliRunner().invoke(main, ["validate", str(defaults.DEFAULT_RULES)])
    assert result.exit_code == 0 and "compiled and smoke-run" in result.output


def test_a_crash_in_the_child_is_a_validation_error_not_ours():
    import sys

    from otrules.smoke import check_in_child

    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    assert check_in_child([], command=crash) == "durable_rules crashed (SIGSEGV) while compiling or smoke-running these rules"
    assert check_in_child([defaults.DEFAULT_RULES]) is None
