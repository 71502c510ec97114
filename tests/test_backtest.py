"""`otrules backtest`: identical rulesets differ nowhere; a changed threshold shows exactly where."""

from __future__ import annotations

import json

from click.testing import CliRunner

from otrules import defaults
from otrules.cli import main


def backtest_json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["backtest", "--json", "--no-progress", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_same_rules_under_another_version_change_nothing(tmp_path):
    copy = tmp_path / "copy.yaml"
    copy.write_text(defaults.DEFAULT_RULES.read_text().replace('version: "2026.11.2"', 'version: "2099.1"'))
    report = backtest_json("--rules", str(copy), "--baseline", str(defaults.DEFAULT_RULES))
    assert report["patients_changed"] == 0 and report["samples"] == {}
    run = CliRunner().invoke(main, ["run", "--output", str(tmp_path / "out.jsonl")])
    assert run.exit_code == 0
    produced = sum('"status":"open"' in line for line in (tmp_path / "out.jsonl").open())  # closures aside
    assert sum(c["baseline"] for c in report["by_rule"].values()) == produced
    assert all(c["added"] == c["removed"] == c["changed"] == 0 for c in report["by_rule"].values())


def test_a_lower_threshold_adds_recommendations_for_that_rule_only(tmp_path):
    draft = tmp_path / "draft.yaml"
    draft.write_text(defaults.DEFAULT_RULES.read_text().replace("plan.visits_missed_in_a_row >= 3",
                                                                "plan.visits_missed_in_a_row >= 2"))
    report = backtest_json("--rules", str(draft), "--baseline", str(defaults.DEFAULT_RULES), "--samples", "3")
    missed = report["by_rule"]["missed-visits"]
    assert missed["new"] > missed["baseline"] and missed["added"] > 0
    others = {k: v for k, v in report["by_rule"].items() if k != "missed-visits"}
    assert all(v["added"] == v["removed"] == 0 for v in others.values())
    assert report["by_kind"]["adherence_review"] == missed
    assert 0 < len(report["samples"]) <= 3
    first = next(iter(report["samples"].values()))
    assert {item["rule"] for item in first} == {"missed-visits"} and first[0]["change"] in "+-~"


def test_human_report_names_rulesets_and_patients(tmp_path):
    draft = tmp_path / "draft.yaml"
    draft.write_text(defaults.DEFAULT_RULES.read_text().replace('version: "2026.11.2"', 'version: "draft"')
                     .replace("goal.progress >= 0.75", "goal.progress >= 0.5"))
    result = CliRunner().invoke(main, ["backtest", "--rules", str(draft), "--baseline", str(defaults.DEFAULT_RULES)])
    assert result.exit_code == 0
    assert "baseline: ot-core 2026.11.2" in result.output and "new:      ot-core draft" in result.output
    assert "patients would get different recommendations" in result.output
    assert "near-target (decrease_frequency, info goal" in result.output
