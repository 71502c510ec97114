"""Engine throughput on two Pythons in one run: `bench/engine_throughput.py` under each
interpreter in turn (alternating, so machine noise falls on both), medians compared.

    .venv/bin/python bench/python_versions.py .venv/bin/python .venv-3.13/bin/python --events 100000

Each interpreter needs otrules installed, e.g. `make venv PYTHON=python3.11` (in .venv) and
`make venv VENV=.venv-3.13`: this is how docs/benchmarks.md compares 3.11 and 3.13.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).with_name("engine_throughput.py")
_LINE = re.compile(r"^(engine \(otrules run, in process\)|raw durable_rules, public API)\s+([\d,]+) events/s", re.M)


def one(python: str, events: int) -> dict[str, int]:
    out = subprocess.run([python, str(BENCH), "--events", str(events), "--runs", "1"], check=True,
                         capture_output=True, text=True).stdout
    return {name: int(rate.replace(",", "")) for name, rate in _LINE.findall(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pythons", nargs=2)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    found: dict[str, list[dict[str, int]]] = {p: [] for p in args.pythons}
    for _ in range(args.rounds):
        for python in args.pythons:
            found[python].append(one(python, args.events))
    base = None
    for python in args.pythons:
        version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        engine = statistics.median(r["engine (otrules run, in process)"] for r in found[python])
        raw = statistics.median(r["raw durable_rules, public API"] for r in found[python])
        base = base or engine
        print(f"CPython {version:8}  engine {engine:9,.0f} events/s  raw public API {raw:9,.0f} events/s  "
              f"engine/raw {engine / raw:.2f}x  engine vs the first {engine / base:.2f}x  "
              f"(median of {args.rounds}, {args.events:,} events)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
