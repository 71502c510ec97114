"""A backtest over a long history (1,000,000 events by default): wall time and peak memory.

The history comes from the project's generator (`otrules generate`). The new
rules are the default ot-core with one threshold changed (plateau after 2
stable scores instead of 3), as a clinical lead would try it. Each command runs
as its own process; peak memory is that process's maximum resident set.
Baseline in the same run: `otrules run` over the same history (one ruleset;
backtest runs two, so about twice its time is the expected cost).

    .venv/bin/python bench/backtest_history.py [--events 1000000] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from otrules import defaults

OTRULES = [sys.executable, "-m", "otrules"]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    start = time.perf_counter()
    pid = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with status {status}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        history, rules = Path(tmp) / "history.jsonl", Path(tmp) / "ot-core-plateau-2.yaml"
        subprocess.run([*OTRULES, "generate", "--events", str(args.events), "--seed", str(args.seed),
                        "--out", str(history)], check=True, stderr=subprocess.DEVNULL)
        original = defaults.DEFAULT_RULES.read_text()
        changed = original.replace("measure.plateau_count >= 3", "measure.plateau_count >= 2")
        if changed == original:
            raise SystemExit("the plateau threshold to change was not found in the default rules")
        rules.write_text(changed.replace('version: "', 'version: "plateau-2-'))
        backtest = [*OTRULES, "backtest", "--rules", str(rules), "--baseline", str(defaults.DEFAULT_RULES),
                    "--input", str(history), "--no-progress"]
        run = [*OTRULES, "run", "--input", str(history), "--output", os.devnull, "--quiet"]
        results: dict[str, list[tuple[float, float]]] = {"backtest": [], "run": []}
        for _ in range(args.runs):
            results["backtest"].append(timed(backtest))
            results["run"].append(timed(run))
    print(f"history: {args.events:,} generated events (seed {args.seed}); runs: {args.runs}")
    for name, label in (("backtest", "otrules backtest (two rulesets)"), ("run", "baseline: otrules run (one)")):
        wall = statistics.median(w for w, _ in results[name])
        peak = statistics.median(p for _, p in results[name])
        print(f"{label:<34} {wall:>7.1f} s wall  {args.events / wall:>8,.0f} events/s  peak {peak:,.0f} MB")
    print("target: backtest over 1,000,000 events <= 120 s")


if __name__ == "__main__":
    main()
