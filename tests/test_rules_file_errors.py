"""Rules files that used to crash or slip through: each is now a clean `file:line:col:` error.

Bytes that are not UTF-8, control characters and overlong throttle periods are
errors with a position, not tracebacks; `validate` lists every error in one pass
(also in `all:` lists, summaries, duplicate rules and instruments); instrument
overrides are validated as the instrument they produce; and the hot-reload
watcher outlives any failure while loading.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from otrules import defaults
from otrules.cli import main
from otrules.engine import Engine, RulesetError, load_catalogue, load_rulesets, parse_ruleset_text
from otrules.engine.loader import instrument_problems
from otrules.schemas import Catalogue, InstrumentOverride, parse_duration

RULE = b'    when: measure.score > 5\n    recommend: {kind: advance_goal, indicator: info, summary: "x"}\n'
HEAD = b'ruleset: t\nversion: "1"\nrules:\n  - id: a\n'


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def validate(*paths: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["validate", *map(str, paths)])
    return result.exit_code, result.output.splitlines()


def problems_of(call, *args, **kwargs) -> list[str]:
    with pytest.raises(RulesetError) as info:
        call(*args, **kwargs)
    return [str(p) for p in info.value.problems]


# ---------------------------------------------------------------- defect 1: crashes become errors


def test_a_latin1_byte_is_an_error_at_its_line_and_column(tmp_path):
    path = write(tmp_path / "r.yaml", HEAD + b"    description: caf\xe9\n" + RULE)
    expected = f"{path}:5:21: not UTF-8 text: byte 0xe9 cannot be read (hint: save the file as UTF-8)"
    assert validate(path) == (1, [expected, "1 error(s)"])
    assert problems_of(load_rulesets, [path]) == [expected]


def test_a_latin1_file_in_a_folder_is_reported_not_skipped(tmp_path):
    write(tmp_path / "r.yaml", HEAD + b"    description: caf\xe9\n" + RULE)
    assert problems_of(load_rulesets, [tmp_path]) == [
        f"{tmp_path / 'r.yaml'}:5:21: not UTF-8 text: byte 0xe9 cannot be read (hint: save the file as UTF-8)"]


def test_the_column_of_a_bad_byte_counts_characters_not_bytes(tmp_path):
    path = write(tmp_path / "r.yaml", HEAD + "    description: ça fait\n".encode() + b"    references: [\xff]\n" + RULE)
    assert problems_of(load_rulesets, [path]) == [
        f"{path}:6:18: not UTF-8 text: byte 0xff cannot be read (hint: save the file as UTF-8)"]


def test_a_catalogue_that_is_not_utf8_is_an_error(tmp_path):
    path = write(tmp_path / "cat.yaml", b"instruments:\n  X:\n    name: \xe9\n")
    assert problems_of(load_catalogue, path) == [
        f"{path}:3:11: not UTF-8 text: byte 0xe9 cannot be read (hint: save the file as UTF-8)"]


def test_a_control_character_is_an_error_at_its_line_and_column(tmp_path):
    path = write(tmp_path / "r.yaml", HEAD + b'    description: "a\x07b"\n' + RULE)
    expected = (f"{path}:5:20: not valid YAML: unacceptable character #x0007: special characters are not allowed "
                "(hint: delete it; YAML files cannot hold control characters)")
    assert validate(path) == (1, [expected, "1 error(s)"])


def test_an_overlong_throttle_period_is_an_error(tmp_path):
    path = write(tmp_path / "r.yaml", HEAD + RULE + b"    throttle: {once_within: 999999999999w}\n")
    assert validate(path) == (1, [
        f"{path}:7:29: rule a: throttle.once_within: Value error, '999999999999w' is too long; "
        f'a duration can be at most 999999999 days (got "999999999999w")',
        "1 error(s)"])


def test_the_longest_duration_is_the_longest_timedelta():
    assert parse_duration("999999999d") == dt.timedelta(days=999999999)
    with pytest.raises(ValueError, match=r"^'1000000000d' is too long; a duration can be at most 999999999 days$"):
        parse_duration("1000000000d")
    with pytest.raises(ValueError, match="'142857143w' is too long"):
        parse_duration("142857143w")


def test_run_refuses_a_file_that_is_not_utf8_cleanly(tmp_path):
    path = write(tmp_path / "r.yaml", HEAD + b"    description: caf\xe9\n" + RULE)
    result = CliRunner().invoke(main, ["run", "--rules", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{path}:5:21: not UTF-8 text: byte 0xe9 cannot be read (hint: save the file as UTF-8)"]


def test_nesting_too_deep_is_an_error_not_a_recursion_crash():
    text = HEAD.decode() + '    when: "' + "(" * 3000 + "goal.met" + ")" * 3000 + '"\n' + RULE.decode().split("\n", 1)[1]
    assert problems_of(parse_ruleset_text, text, "deep.yaml") == ["deep.yaml:1:1: nested too deeply to check"]
    flow = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    assert problems_of(parse_ruleset_text, flow, "deep.yaml") == ["deep.yaml:1:1: not valid YAML: nested too deeply"]


# ---------------------------------------------------------------- defect 3: one pass shows every error

BADV = """\
ruleset: t
version: "1"
rules:
  - id: a
    when: measure.scor > 5
    recommend: {kind: advance_goal, indicator: info, summary: "x"}
  - id: b
    when: goal.met == 1
    recommend: {kind: advance_goal, indicator: info, summary: "Goal {goal.idd}"}
  - id: a
    when: measure.score > 5
    recommend: {kind: advance_gaol, indicator: infoo, summary: "x"}
    throttle: {once_within: 14x, per: goals}
    extra_key: 1
  - id: s
    when:
      all:
        - measure.nope > 1
        - measure.instrument == 'FIM-motr'
    recommend: {kind: advance_goal, indicator: info, summary: "x"}
"""

BADV_SECOND_PASS = [  # what a first pass used to hide
    "rule b: recommend.summary: unknown fact {goal.idd} (hint: did you mean goal.id?)",
    "rule a: duplicate rule id (first at line 4)",
    "rule s: when: unknown fact 'measure.nope' (hint: did you mean measure.score?)",
    "rule s: when: unknown instrument 'FIM-motr' compared with measure.instrument (hint: did you mean FIM-motor?)",
]


def test_validate_lists_every_error_in_one_pass(tmp_path):
    path = tmp_path / "badv.yaml"
    path.write_text(BADV)
    code, lines = validate(path)
    assert code == 1
    assert lines == [f"{path}:{line}" for line in [
        "5:11: rule a: when: unknown fact 'measure.scor' (hint: did you mean measure.score?)",
        "8:20: rule b: when: cannot compare yes/no (goal.met) with a number (1) "
        "(hint: a yes/no fact is tested on its own, e.g. goal.met or not goal.met)",
        "9:63: rule b: recommend.summary: unknown fact {goal.idd} (hint: did you mean goal.id?)",
        "10:9: rule a: duplicate rule id (first at line 4)",
        "12:23: rule a: recommend.kind: \"advance_gaol\" is not allowed; expected 'advance_goal', 'modify_plan', "
        "'increase_frequency', 'decrease_frequency', 're_evaluate', 'progress_report_due', 'recertify_plan', "
        "'discharge', 'clinical_review' or 'adherence_review'",
        "12:48: rule a: recommend.indicator: \"infoo\" is not allowed; expected 'info', 'warning' or 'critical'",
        "13:29: rule a: throttle.once_within: Value error, '14x' is not a duration; write a whole number and a unit, "
        'e.g. 14d, 12h, 2w, 30m (got "14x")',
        "13:39: rule a: throttle.per: \"goals\" is not allowed; expected 'goal', 'plan' or 'patient'",
        "14:16: rule a: extra_key: unknown field (value 1) (hint: check the spelling; see the rules-file JSON Schema)",
        "18:11: rule s: when: unknown fact 'measure.nope' (hint: did you mean measure.score?)",
        "19:33: rule s: when: unknown instrument 'FIM-motr' compared with measure.instrument "
        "(hint: did you mean FIM-motor?)",
    ]] + ["11 error(s)"]


def test_fixing_the_schema_errors_reveals_nothing_new(tmp_path):
    path = tmp_path / "badv.yaml"
    path.write_text(BADV)
    _, first = validate(path)
    fixed = (BADV.replace("advance_gaol, indicator: infoo", "advance_goal, indicator: info")
             .replace("14x, per: goals", "14d, per: goal").replace("extra_key: 1", "references: []"))
    path.write_text(fixed)
    code, second = validate(path)
    assert code == 1 and set(second[:-1]) <= set(first[:-1])
    assert [line.split(": ", 1)[1] for line in second[:-1]][2:] == BADV_SECOND_PASS
    fixed = (fixed.replace("{goal.idd}", "{goal.id}").replace("  - id: a\n    when: measure.score", "  - id: c\n    when: measure.score")
             .replace("measure.nope", "measure.score").replace("measure.scor >", "measure.score >")
             .replace("goal.met == 1", "goal.met"))
    path.write_text(fixed)
    code, third = validate(path)
    assert code == 1 and third == [f"{path}:19:33: {BADV_SECOND_PASS[-1]}", "1 error(s)"]


def test_a_rule_with_a_schema_error_is_still_checked_inside_all_any_and_not():
    text = """\
        ruleset: t
        version: "1"
        rules:
          - id: s
            when:
              any:
                - all: [goal.met, measure.nope > 1]
                - not: goal.mett
            recommend: {kind: celebrate, indicator: info, summary: "x {goal.idd}"}
        """
    assert problems_of(parse_ruleset_text, _dedent(text), "my.yaml") == [
        "my.yaml:7:27: rule s: when: unknown fact 'measure.nope' (hint: did you mean measure.score?)",
        "my.yaml:8:16: rule s: when: unknown fact 'goal.mett' (hint: did you mean goal.met?)",
        "my.yaml:9:23: rule s: recommend.kind: \"celebrate\" is not allowed; expected 'advance_goal', 'modify_plan', "
        "'increase_frequency', 'decrease_frequency', 're_evaluate', 'progress_report_due', 'recertify_plan', "
        "'discharge', 'clinical_review' or 'adherence_review'",
        "my.yaml:9:60: rule s: recommend.summary: unknown fact {goal.idd} (hint: did you mean goal.id?)",
    ]


def test_a_schema_error_adds_no_spurious_errors_for_good_rules():
    text = """\
        ruleset: t
        version: "1"
        rules:
          - id: ok
            when: {all: [goal.met, "measure.score > 5"]}
            recommend: {kind: advance_goal, indicator: info, summary: "Goal {goal.id} at {measure.score}"}
          - id: bad
            when: {all: [goal.met, 5]}
            recommend: {kind: advance_goal, indicator: info, summary: "x"}
            throttle: {once_within: 14d}
          - id: ok2
            when: goal.met
            recommend: {kind: advance_goal, indicator: info, summary: "x"}
            colour: blue
        """
    found = problems_of(parse_ruleset_text, _dedent(text), "my.yaml", load_catalogue(defaults.CATALOGUE))
    assert all(p.startswith(("my.yaml:8:", "my.yaml:14:")) for p in found), found
    assert "my.yaml:14:13: rule ok2: colour: unknown field (value \"blue\") " \
           "(hint: check the spelling; see the rules-file JSON Schema)" in found
    assert not any("unknown fact" in p or "duplicate" in p or "instrument" in p for p in found)


def test_a_duplicate_rule_is_still_checked():
    text = """\
        ruleset: t
        version: "1"
        rules:
          - id: a
            when: goal.met
            recommend: {kind: advance_goal, indicator: info, summary: "x"}
          - id: a
            when: goal.mett
            recommend: {kind: advance_goal, indicator: info, summary: "x"}
        """
    assert problems_of(parse_ruleset_text, _dedent(text), "my.yaml") == [
        "my.yaml:7:9: rule a: duplicate rule id (first at line 4)",
        "my.yaml:8:11: rule a: when: unknown fact 'goal.mett' (hint: did you mean goal.met?)",
    ]


def test_instruments_are_checked_in_a_rejected_file_only_when_a_catalogue_is_given():
    text = _dedent("""\
        ruleset: t
        version: "1"
        rules:
          - id: a
            when: measure.instrument == "FIM-motr" and measure.scor > 1
            recommend: {kind: advance_goal, indicator: info, summary: "x"}
        """)
    unknown = "my.yaml:5:48: rule a: when: unknown fact 'measure.scor' (hint: did you mean measure.score?)"
    assert problems_of(parse_ruleset_text, text, "my.yaml") == [unknown]
    assert problems_of(parse_ruleset_text, text, "my.yaml", load_catalogue(defaults.CATALOGUE)) == [
        "my.yaml:5:33: rule a: when: unknown instrument 'FIM-motr' compared with measure.instrument "
        "(hint: did you mean FIM-motor?)",
        unknown]


def test_a_rejected_file_does_not_hide_instrument_errors_in_a_file_that_loads(tmp_path):
    good = write(tmp_path / "a.yaml", b'ruleset: a\nversion: "1"\nrules:\n  - id: a\n'
                                      b'    when: measure.instrument == "FIM-motr"\n'
                                      b'    recommend: {kind: advance_goal, indicator: info, summary: "x"}\n')
    bad = write(tmp_path / "b.yaml", HEAD.replace(b"ruleset: t", b"ruleset: b") + RULE.replace(b"score", b"scor"))
    code, lines = validate(good, bad)
    assert code == 1 and lines == [
        f"{good}:5:33: rule a: when: unknown instrument 'FIM-motr' compared with measure.instrument "
        "(hint: did you mean FIM-motor?)",
        f"{bad}:5:11: rule a: when: unknown fact 'measure.scor' (hint: did you mean measure.score?)",
        "2 error(s)"]


# ---------------------------------------------------------------- defect 4: instrument overrides are validated


def test_an_override_that_empties_the_range_fails_validate(tmp_path):
    path = write(tmp_path / "ov.yaml", b'ruleset: t\nversion: "1"\ninstruments:\n  COPM-performance: {min: 20}\n'
                                       b"rules:\n  - id: a\n" + RULE)
    expected = (f"{path}:4:27: instruments.COPM-performance: min 20 must be below max 10 "
                "(hint: the catalogue range is 1–10; override both min and max)")
    assert validate(path) == (1, [expected, "1 error(s)"])
    result = CliRunner().invoke(main, ["run", "--rules", str(path)])
    assert result.exit_code == 1 and result.output.splitlines() == [expected]


def test_override_errors_point_at_the_field_and_cover_new_instruments(tmp_path):
    path = write(tmp_path / "ov.yaml", b'ruleset: t\nversion: "1"\ninstruments:\n  FIM-motor:\n    mcid: 3\n'
                                       b"    max: 10\n  My-scale: {min: 5, max: 5, better: higher}\n"
                                       b"  COPM-satisfaction: {mcid: 3}\nrules:\n  - id: a\n" + RULE)
    assert validate(path) == (1, [
        f"{path}:6:10: instruments.FIM-motor: min 13 must be below max 10 "
        "(hint: the catalogue range is 13–91; override both min and max)",
        f"{path}:7:19: instruments.My-scale: min 5 must be below max 5",
        "2 error(s)"])


def test_instrument_problems_take_the_catalogue_or_its_ids():
    catalogue = load_catalogue(defaults.CATALOGUE)
    rs = parse_ruleset_text('ruleset: t\nversion: "1"\ninstruments:\n  COPM-performance: {max: 0.5}\nrules:\n'
                            '  - id: a\n' + RULE.decode(), "ov.yaml")
    expected = ["ov.yaml:4:27: instruments.COPM-performance: min 1 must be below max 0.5 "
                "(hint: the catalogue range is 1–10; override both min and max)"]
    assert [str(p) for p in instrument_problems(rs, catalogue)] == expected
    assert instrument_problems(rs, set(catalogue.instruments)) == []  # ids only: no values to check against
    with pytest.raises(RulesetError) as info:  # the engine is given the catalogue itself
        Engine([rs], catalogue)
    assert [str(p) for p in info.value.problems] == expected


def test_apply_validates_the_merged_instrument():
    base = load_catalogue(defaults.CATALOGUE).instruments["COPM-performance"]
    assert InstrumentOverride(mcid=3).apply(base, "COPM-performance") == base.model_copy(update={"mcid": 3.0})
    assert InstrumentOverride(min=20).problems(base, "COPM-performance") == [("", "min 20 must be below max 10")]
    with pytest.raises(ValueError, match=r"^COPM-performance: min 20 must be below max 10$"):
        InstrumentOverride(min=20).apply(base, "COPM-performance")
    with pytest.raises(ValueError, match=r"^New: better: required field is missing$"):
        InstrumentOverride(min=0, max=1).apply(None, "New")
    assert Catalogue(instruments={"COPM-performance": base}).with_overrides(
        {"COPM-performance": InstrumentOverride(min=0)}).instruments["COPM-performance"].min == 0


# ---------------------------------------------------------------- defect 2: the reload watcher survives


def _watcher(paths, events):
    from otrules.consumers.kafka.reload import RulesWatcher

    return RulesWatcher(paths, defaults.CATALOGUE, lambda rs, cat: events.append(("valid", [r.version for r in rs])),
                        lambda why: events.append(("refused", why)), poll_seconds=0.05)


def _wait_for(events, n, seconds=60.0):
    deadline = time.monotonic() + seconds
    while len(events) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return events


def test_reload_refuses_a_file_that_is_not_utf8_and_keeps_watching(tmp_path):
    path = tmp_path / "ot-core.yaml"
    good = Path(defaults.DEFAULT_RULES).read_bytes()
    path.write_bytes(good)
    events: list = []
    watcher = _watcher([tmp_path], events).start()
    try:
        time.sleep(0.2)
        path.write_bytes(good.replace(b"description: Core", b"description: Caf\xe9 Core", 1))
        assert _wait_for(events, 1)[0] == (
            "refused", f"{path}:8:17: not UTF-8 text: byte 0xe9 cannot be read (hint: save the file as UTF-8)")
        path.write_bytes(good.replace(b'version: "2026.11.2"', b'version: "2026.11.3"'))
        assert _wait_for(events, 2)[1] == ("valid", ["2026.11.3"])
        assert watcher._thread.is_alive()
    finally:
        watcher.stop()


def test_any_error_while_loading_is_a_refused_reload(tmp_path, monkeypatch):
    from otrules.consumers.kafka import reload

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(reload, "load_rulesets", broken)
    events: list = []
    _watcher([defaults.DEFAULT_RULES], events).check()
    assert events == [("refused", "the rules could not be loaded (KeyError)")]


def test_the_watcher_thread_outlives_an_error_in_a_check(tmp_path, monkeypatch):
    from otrules.consumers.kafka import reload

    path = tmp_path / "ot-core.yaml"
    good = Path(defaults.DEFAULT_RULES).read_bytes()
    path.write_bytes(good)
    real, calls = reload.load_rulesets, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")
        return real(*args, **kwargs)

    monkeypatch.setattr(reload, "load_rulesets", flaky)
    events: list = []
    failing_once = threading.Event()

    def on_invalid(why):
        events.append(("refused", why))
        if not failing_once.is_set():
            failing_once.set()
            raise RuntimeError("a callback failed too")

    watcher = reload.RulesWatcher([tmp_path], defaults.CATALOGUE, lambda rs, cat: events.append(("valid", len(rs))),
                                  on_invalid, poll_seconds=0.05).start()
    try:
        time.sleep(0.2)
        path.write_bytes(good + b"# edited\n")
        assert _wait_for(events, 1) == [("refused", "the rules could not be loaded (UnicodeDecodeError)")]
        time.sleep(0.2)
        path.write_bytes(good + b"# edited again\n")
        assert _wait_for(events, 2)[1] == ("valid", 1)
        assert watcher._thread.is_alive()
    finally:
        watcher.stop()


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text)
