"""`otrules run` end to end through the real command: counts, dead letters, determinism."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from otrules import defaults
from otrules.cli import main
from otrules.engine import Engine

RULE_IDS = {"goal-met", "all-goals-met", "measure-declined", "severe-decline", "plateau", "target-date-passed",
            "near-target", "missed-visits", "progress-report-due", "recertify", "recertify-expired",
            "target-date-passed-unscored", "re-evaluation-overdue"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otrules", *args], capture_output=True, text=True, timeout=300)


def test_every_default_rule_fires_on_the_bundled_sample():
    result = run_cli("run")
    assert result.returncode == 0, result.stderr
    recs = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["rule"]["id"] for r in recs} == RULE_IDS
    assert re.search(r"read (\d+) = processed \1 \+ rejected 0 \+ duplicates 0", result.stderr)
    for r in recs:
        assert len(r["summary"]) < 140 and r["source"]["label"] == "otrules ot-core 2026.11.2"
        assert r["triggered_by"] and r["evidence"]


def test_two_runs_are_byte_identical_apart_from_emitted_at(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert run_cli("run", "--output", str(a)).returncode == 0
    assert run_cli("run", "--output", str(b)).returncode == 0
    strip = re.compile(rb'"emitted_at":"[^"]*"')
    first, second = strip.sub(b"", a.read_bytes()), strip.sub(b"", b.read_bytes())
    assert first == second and first.count(b"\n") > 50


BAD_LINES = [
    b"this is not json",
    b'{"type":"referral","event_id":"x1","patient_id":"p-9","plan_id":"poc-9","occurred_at":"2026-01-05T09:00:00Z"}',
    b'{"type":"evaluation","event_id":"x2","patient_id":"p-9","plan_id":"poc-9","occurred_at":"2026-01-05T09:00:00Z","clinician_id":"ot-1",'
    b'"kind":"progress","measures":[{"instrument":"COPM-performance","score":11}]}',
    b'{"type":"visit","event_id":"x3","patient_id":"p-9","plan_id":"poc-9","status":"attended"}',
    b"\xff\xfe not utf-8",
]


def test_malformed_lines_are_dead_lettered_counted_and_the_run_goes_on(tmp_path):
    good = defaults.SAMPLE_STREAM.read_bytes().splitlines()
    lines = [*good[:100], BAD_LINES[0], *good[100:200], b"", BAD_LINES[1], BAD_LINES[2], *good[200:300],
             BAD_LINES[3], BAD_LINES[4], good[5], *good[300:]]
    stream = tmp_path / "events.jsonl"
    stream.write_bytes(b"\n".join(lines) + b"\n")
    dlq = tmp_path / "dlq.jsonl"
    result = run_cli("run", "--input", str(stream), "--dlq", str(dlq), "--output", str(tmp_path / "out.jsonl"))
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": rejected: " in line]
    see = f"(the full reason is in {dlq})"
    assert errors == [  # the field, never the value: a score or an identifier stays out of stderr
        f"{stream}:101: rejected: not valid JSON {see}",
        f"{stream}:203: rejected: type {see}",
        f"{stream}:204: rejected: measures[0].score {see}",
        f"{stream}:305: rejected: occurred_at {see}",
        f"{stream}:306: rejected: not UTF-8 text {see}",
    ]
    assert [json.loads(line)["reason"] for line in dlq.read_text().splitlines()] == [
        "not valid JSON: expected ident at line 1 column 2",
        'type: unknown event type "referral"; expected one of plan, evaluation, visit, discharge, feedback, retraction',
        "measures[0].score: 11 is outside the range 1–10 of COPM-performance",
        "occurred_at: required field is missing",
        "not UTF-8 text: byte 0xff at position 0",
    ]
    assert "11 is outside" not in result.stderr
    total = len(good) + 5 + 1  # good lines, five bad ones and one duplicate; the blank line is not an event
    assert f"read {total} = processed {len(good)} + rejected 5 + duplicates 1" in result.stderr
    letters = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert [letter["line"] for letter in letters] == [101, 203, 204, 305, 306]
    assert letters[0]["original"] == "this is not json" and letters[0]["reason"].startswith("not valid JSON")
    assert "original_base64" in letters[4]
    out_good = run_cli("run", "--output", "-").stdout
    out_mixed = (tmp_path / "out.jsonl").read_text()
    strip = re.compile(r'"emitted_at":"[^"]*"')
    assert strip.sub("", out_good) == strip.sub("", out_mixed)  # bad input changed nothing else


def test_stdin_input_and_table_format():
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--input", "-", "--format", "table"], input=defaults.SAMPLE_STREAM.read_bytes())
    assert result.exit_code == 0
    assert "recommendations" in result.output and "advance_goal" in result.output


def test_options_read_otrules_environment_variables(tmp_path):
    out = tmp_path / "env-out.jsonl"
    runner = CliRunner()
    result = runner.invoke(main, ["run"], env={"OTRULES_OUTPUT": str(out), "OTRULES_INPUT": str(defaults.SAMPLE_STREAM)})
    assert result.exit_code == 0 and out.read_text().count("\n") > 50


def test_every_option_of_every_command_reads_an_otrules_variable():
    """contracts.md §6: "Every option also reads an OTRULES_* environment variable"."""
    import click

    missing = [f"{name} {p.opts[0]}" for name, cmd in main.commands.items() for p in cmd.params
               if isinstance(p, click.Option) and not (isinstance(p.envvar, str) and p.envvar.startswith("OTRULES_"))]
    assert missing == []


def test_generate_reads_its_seed_from_the_environment():
    runner = CliRunner()
    seeded = runner.invoke(main, ["generate", "--patients", "2"], env={"OTRULES_SEED": "5"})
    assert seeded.exit_code == 0
    assert seeded.output == runner.invoke(main, ["generate", "--patients", "2", "--seed", "5"]).output
    assert seeded.output != runner.invoke(main, ["generate", "--patients", "2"]).output


def test_a_changed_ruleset_changes_the_output(tmp_path):
    text = defaults.DEFAULT_RULES.read_text().replace("plan.visits_missed_in_a_row >= 3", "plan.visits_missed_in_a_row >= 2")
    mine = tmp_path / "mine.yaml"
    mine.write_text(text)
    count = lambda out: sum(1 for line in out.splitlines() if '"rule":{"id":"missed-visits"' in line)  # noqa: E731
    base = count(run_cli("run").stdout)
    changed = count(run_cli("run", "--rules", str(mine)).stdout)
    assert changed > base > 0


def test_validate_exit_codes(tmp_path):
    assert run_cli("validate", str(defaults.DEFAULT_RULES)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text('ruleset: x\nversion: "1"\nrules:\n  - id: a\n    when: goal.mett\n'
                   '    recommend: {kind: advance_goal, indicator: info, summary: s}\n')
    result = run_cli("validate", str(bad))
    assert result.returncode == 1
    assert f"{bad}:5:11: rule a: when: unknown fact 'goal.mett' (hint: did you mean goal.met?)" in result.stderr
    assert run_cli("run", "--rules", str(bad)).returncode == 1
    assert run_cli("run", "--nonsense").returncode == 2


@pytest.mark.parametrize("n", [500])
def test_generator_streams_are_valid_input(tmp_path, n):
    stream = tmp_path / "gen.jsonl"
    assert run_cli("generate", "--events", str(n), "--seed", "3", "--out", str(stream)).returncode == 0
    result = run_cli("run", "--input", str(stream), "--output", "/dev/null")
    assert f"read {n} = processed {n} + rejected 0 + duplicates 0" in result.stderr


def test_as_of_sweeps_silent_plans_deterministically(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    late = run_cli("run", "--as-of", "2026-12-01T00:00:00Z", "--output", str(a))
    run_cli("run", "--as-of", "2026-12-01T00:00:00Z", "--output", str(b))
    default = run_cli("run", "--output", str(tmp_path / "c.jsonl"))
    strip = re.compile(rb'"emitted_at":"[^"]*"')
    assert strip.sub(b"", a.read_bytes()) == strip.sub(b"", b.read_bytes())
    swept = [json.loads(line) for line in a.read_text().splitlines() if '"clock@2026-12-01T00:00:00Z"' in line]
    assert swept and {r["rule"]["id"] for r in swept} >= {"recertify-expired", "re-evaluation-overdue"}
    assert all(r["occurred_at"] == "2026-12-01T00:00:00Z" and r["triggered_by"] == ["clock@2026-12-01T00:00:00Z"]
               for r in swept)
    said = re.search(r"(\d+) of them when time advanced", late.stderr)
    assert said, late.stderr
    n_late = int(said.group(1))
    assert n_late == len(swept)
    # without --as-of, the clock advances to the last event's time instead
    last = max(json.loads(line)["occurred_at"] for line in defaults.SAMPLE_STREAM.read_text().splitlines())
    clocks = {r["triggered_by"][0] for r in map(json.loads, (tmp_path / "c.jsonl").read_text().splitlines())
              if r["triggered_by"][0].startswith("clock@")}
    assert default.returncode == 0 and clocks == {f"clock@{last}"}


def test_bad_as_of_is_a_usage_error():
    result = run_cli("run", "--as-of", "next tuesday")
    assert result.returncode == 2 and "is not an RFC 3339 date-time" in result.stderr
    assert run_cli("run", "--as-of", "2026-12-01T00:00:00").returncode == 2  # no offset


def test_retention_forgets_closed_plans_in_event_time():
    import datetime as dt

    from conftest import Story, goal
    from otrules.consumers import DeadLetterSink, Pipeline, Record

    engine = Engine(defaults.rulesets(), defaults.catalogue())
    story = Story().plan(0, [goal("g1", "COPM-performance", 3, 8)]).discharge(20)
    other = Story(patient="p-2", plan_id="poc-2").plan(0)
    pipeline = Pipeline(engine, lambda r: None, DeadLetterSink(None))
    pipeline.feed(Record(json.dumps(e).encode(), "t", line=i) for i, e in enumerate(story.events + other.events, 1))
    day = lambda n: dt.datetime(2026, 1, 5, tzinfo=dt.UTC) + dt.timedelta(days=n)  # noqa: E731
    pipeline.sweep(day(109), dt.timedelta(days=90))  # 89 days after the discharge: kept
    assert set(pipeline.states) == {"p-1", "p-2"}
    pipeline.sweep(day(110), dt.timedelta(days=90))  # 90 days: forgotten; the open plan stays
    assert set(pipeline.states) == {"p-2"} and pipeline.summary.expired == 1


def test_an_engine_fault_on_one_event_is_dead_lettered_and_the_run_goes_on():
    """A stand-in fault (the real engine, raising on one event id); the run must not stop."""
    import io

    from otrules import defaults
    from otrules.consumers import JsonlSource, Pipeline
    from otrules.consumers.deadletter import DeadLetterSink
    from otrules.engine import Engine

    class FailsOn(Engine):
        def process(self, state, event):
            if event.event_id == "p-00003-e0005":
                raise RuntimeError("injected")
            return super().process(state, event)

    sink = io.StringIO()
    letters = DeadLetterSink(sink)
    pipeline = Pipeline(FailsOn(defaults.rulesets(), defaults.catalogue()), lambda r: None, letters)
    summary = pipeline.feed(JsonlSource(io.BytesIO(defaults.SAMPLE_STREAM.read_bytes())))
    assert (summary.rejected, summary.processed) == (1, summary.read - 1)
    letter = json.loads(sink.getvalue())
    assert letter["reason"] == "internal error: the rules engine failed on this event (RuntimeError)"
    assert '"event_id":"p-00003-e0005"' in letter["original"]


@pytest.mark.parametrize("same", ["output", "dlq", "hardlink"])
def test_outputs_that_are_the_input_or_each_other_are_refused_and_nothing_is_touched(tmp_path, same):
    """`--input f --output f` used to empty f and exit 0; `--output x --dlq x` kept only the dead letters."""
    import os

    events = tmp_path / "events.jsonl"
    events.write_bytes(defaults.SAMPLE_STREAM.read_bytes())
    out = tmp_path / "out.jsonl"
    out.write_text("kept\n")
    if same == "output":
        args = ["--input", str(events), "--output", str(events)]
    elif same == "dlq":
        args = ["--input", str(events), "--output", str(out), "--dlq", str(out)]
    else:
        os.link(events, tmp_path / "other-name.jsonl")
        args = ["--input", str(events), "--output", str(tmp_path / "other-name.jsonl")]
    result = run_cli("run", *args)
    assert result.returncode == 2 and "is the same file as" in result.stderr and "nothing was written" in result.stderr
    assert events.read_bytes() == defaults.SAMPLE_STREAM.read_bytes() and out.read_text() == "kept\n"


def test_the_table_shows_goal_descriptions_marks_critical_rows_and_sweeps_and_never_renders_markup(tmp_path):
    from conftest import Story, goal

    g = goal("g1", "COPM-performance", 3, 7, target_day=20)
    g["description"] = "[red]Dress[/] <b>x</b>"  # short: one line in the goal column
    story = (Story().plan(0, [g]).evaluation(14, ("COPM-performance", 8, "g1"))
             .evaluation(21, ("COPM-performance", 2, "g1")))
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in story.events) + "\n")
    result = run_cli("run", "--input", str(events), "--format", "table", "--as-of", "2026-06-01T00:00:00Z")
    assert result.returncode == 0, result.stderr
    assert "g1: [red]Dress[/] <b>x</b>" in result.stdout  # shown as written: rich did not read it as markup
    first_row = next(line for line in result.stdout.splitlines() if line.startswith("│"))
    assert "!! critical" in first_row  # critical rows first, marked in words as well as colour
    assert "(time advanced)" in result.stdout
