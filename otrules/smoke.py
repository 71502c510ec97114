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
    tail = proc.stderr.strip().splitlines()
    return f"the smoke run failed: {tail[-1] if tail else f'exit status {proc.returncode}'}"


def main(argv: list[str] | None = None) -> int:
    from otrules import defaults
    from otrules.consumers import DeadLetterSink, Fault, JsonlSource, Pipeline
    from otrules.engine import Engine

    ap = argparse.ArgumentParser(prog="python -m otrules.smoke")
    ap.add_argument("--catalogue", type=Path, default=None)
    ap.add_argument("rules", nargs="+", type=Path)
    args = ap.parse_args(argv)
    cat = defaults.catalogue(args.catalogue)
    engine = Engine(defaults.rulesets(args.rules, cat), cat)
    with open(defaults.SAMPLE_STREAM, "rb") as stream:
        # an engine fault fails the smoke run (it would fail those events live)
        pipeline = Pipeline(engine, lambda rec: None, DeadLetterSink(None), fault=Fault.RAISE)
        summary = pipeline.feed(islice(JsonlSource(stream), SMOKE_EVENTS))
    return 0 if summary.balanced else 1


if __name__ == "__main__":
    sys.exit(main())
