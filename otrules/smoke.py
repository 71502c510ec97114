"""Compile and smoke-run rulesets in a child process before they are trusted.

durable_rules is C code that can kill the process (segmentation faults were
seen) instead of raising. `otrules validate` therefore compiles the rules and
runs the bundled sample stream through them in a child; a crash there becomes
a validation error here.

    python -m otrules.smoke [--catalogue F] RULES...   # exit 0 when the rules compile and run
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from itertools import islice
from pathlib import Path
from typing import Any

SMOKE_EVENTS = 600


def check_in_child(rules: list[Path], catalogue: Path | None = None, timeout: float = 120,
                   command: list[str] | None = None) -> str | None:
    """None if the rules compiled and ran in a child process, else why not.

    `command` replaces the child's command line (tests use it to stage a crash)."""
    cmd = command or [sys.executable, "-m", "otrules.smoke", *([f"--catalogue={catalogue}"] if catalogue else []),
                      *map(str, rules)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"compiling and smoke-running the rules took over {timeout:.0f} s (durable_rules hung)"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return f"durable_rules crashed ({name}) while compiling or smoke-running these rules"
    lines = proc.stderr.strip().splitlines()
    named = [line for line in lines if ": rule " in line]  # file:line: rule <id>: ... from rule_problems
    if named:
        return "\n".join(named)
    return f"the smoke run failed: {lines[-1] if lines else f'exit status {proc.returncode}'}"


def main(argv: list[str] | None = None) -> int:
    from otrules import defaults
    from otrules.consumers import DeadLetterSink, Fault, JsonlSource, Pipeline
    from otrules.engine import Engine

    ap = argparse.ArgumentParser(prog="python -m otrules.smoke")
    ap.add_argument("--catalogue", type=Path, default=None)
    ap.add_argument("rules", nargs="+", type=Path)
    args = ap.parse_args(argv)
    cat = defaults.catalogue(args.catalogue)
    rulesets = defaults.rulesets(args.rules, cat)
    try:
        engine = Engine(rulesets, cat)
    except Exception:  # durable_rules refused a ruleset: find the rule (each alone)
        problems = [p for rs in rulesets for p in rule_problems(rs, None)] or ["durable_rules refused the rules"]
        print("\n".join(problems), file=sys.stderr)
        return 1
    problems = [p for loaded in engine._loaded for p in rule_problems(loaded.ruleset, loaded)]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    with open(defaults.SAMPLE_STREAM, "rb") as stream:
        # an engine fault fails the smoke run (it would fail those events live)
        pipeline = Pipeline(engine, lambda rec: None, DeadLetterSink(None), fault=Fault.RAISE)
        summary = pipeline.feed(islice(JsonlSource(stream), SMOKE_EVENTS))
    return 0 if summary.balanced else 1


def rule_problems(ruleset: Any, loaded: Any) -> list[str]:
    """`file:line: rule <id>: ...` for every rule durable_rules fails on.

    Every durable_rules ruleset the engine built (`loaded`) is fed fact sets that
    reach every rule: each event type with nothing else known, and every fact
    known. A ruleset that fails on one is taken apart, rule by rule, to name the
    rule; so is every rule when the engine could not be built at all."""
    from otrules.engine.compiler import compile_condition
    from otrules.engine.matcher import Matcher

    groups = [] if loaded is None else [loaded.per_event, loaded.per_measure]
    suspects = list(ruleset.rules) if loaded is None else []
    for group in groups:
        for matcher, rules in group.shards:
            if _fails(matcher):
                suspects += rules
    problems = []
    for rule in suspects:
        try:
            alone = Matcher([compile_condition(rule.condition, "s")], list(rule.facts), label="smoke")
            error = _fails(alone)
        except Exception as exc:  # creating it failed
            error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        if error:
            problems.append(f"{ruleset.source}:{rule.line}: rule {rule.id}: durable_rules fails on it ({error})")
    if suspects and not problems:  # only together: name the first
        first = suspects[0]
        problems.append(f"{ruleset.source}:{first.line}: rule {first.id}: durable_rules fails on the rules from here "
                        f"on together")
    return problems


def _fails(matcher: Any) -> str | None:
    """Why posting the probe fact sets fails, or None. Besides the fact sets, a message with
    every fact known and every yes/no value otrules derives set to true, so that every node
    durable_rules built is entered whatever values the probes give."""
    import orjson

    from otrules.engine.matcher import _durable_numbers

    probes = _probes()
    try:
        for facts in probes:
            matcher.match(facts)
        if matcher.active:
            everything = matcher.message(probes[-2])
            everything.update({d.key: True for d in matcher._derived if d.boolean})
            matcher.match_text(orjson.dumps(_durable_numbers(everything)).decode())
    except Exception as exc:
        return type(exc).__name__ + (f": {exc}" if str(exc) else "")
    return None


def _probes() -> list[dict[str, Any]]:
    """Fact sets that reach every rule: nothing known but the event type, and everything known."""
    from otrules.engine import FACTS

    def known(info: Any, small: bool) -> Any:
        if info.values:
            return info.values[0]
        return {"number": 1.0 if small else 1e15, "bool": small, "string": "x"}.get(info.type, "x")

    out: list[dict[str, Any]] = []
    for event_type in FACTS["event.type"].values:
        out.append({"event.type": event_type})
    for small in (True, False):
        out.append({name: known(info, small) for name, info in FACTS.items()})
    return out


if __name__ == "__main__":
    sys.exit(main())
