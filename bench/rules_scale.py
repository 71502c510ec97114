"""How validation, loading and matching scale with the number of rules.

Rulesets of 13 (ot-core itself), 100, 1,000 and 2,000 rules are written as
variants of ot-core: each copy of a rule gets its own id and one more clause
that is true for any real plan (`plan.goals_total < <a distinct number>`), so
every rule is distinct for durable_rules and still fires where ot-core's does.

For each size it prints, beside the 13-rule figure from the same run:
- validate: `otrules validate FILE` as a whole process (the checks, the
  compile and the smoke run in a child), seconds;
- load: building the Engine in process (compile + creating the durable_rules
  rulesets), seconds, median of the runs;
- events/s: `otrules run`'s loop over a generated stream, in process, median.

Targets (issue 12): 2,000 rules validate and load in under 15 s; events/s at
1,000 rules at least 0.25x the 13-rule rate.

    .venv/bin/python bench/rules_scale.py [--sizes 13,100,1000,2000] [--events 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

from otrules import defaults, synthetic
from otrules.consumers import DeadLetterSink, JsonlSource, Pipeline
from otrules.engine import Engine, parse_ruleset_text


def variant(size: int) -> str:
    """ot-core with `size` rules (13: ot-core itself)."""
    yaml = YAML()
    doc = yaml.load(defaults.DEFAULT_RULES.read_text(encoding="utf-8"))
    base = list(doc["rules"])
    if size == len(base):
        return defaults.DEFAULT_RULES.read_text(encoding="utf-8")
    rules = []
    for n in range(size):
        rule = copy.deepcopy(base[n % len(base)])  # shared objects would be written as YAML anchors
        when = rule["when"]
        extra = f"plan.goals_total < {1000 + n}"
        if isinstance(when, str):
            rule["when"] = f"({' '.join(when.split())}) and {extra}"
        elif "all" in when:
            rule["when"] = {"all": [*when["all"], extra]}
        else:
            rule["when"] = {"all": [when, extra]}
        rule["id"] = f"{rule['id']}-v{n}"
        rules.append(rule)
    doc["rules"] = rules
    doc["ruleset"] = f"ot-core-x{size}"
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def events(n: int) -> bytes:
    buf = io.StringIO()
    synthetic.write_jsonl(buf, synthetic.generate(events=n, seed=11))
    return buf.getvalue().encode()


def measure(path: Path, data: bytes, runs: int) -> tuple[float, float, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "otrules", "validate", str(path)], capture_output=True, text=True)
    validate = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{path.name} does not validate:\n{done.stderr[-2000:]}")
    loads, rates = [], []
    text = path.read_text(encoding="utf-8")
    for _ in range(runs):
        started = time.perf_counter()
        engine = Engine([parse_ruleset_text(text, str(path), defaults.catalogue())], defaults.catalogue())
        loads.append(time.perf_counter() - started)
        pipeline = Pipeline(engine, lambda rec: None, DeadLetterSink(None))
        started = time.perf_counter()
        tally = pipeline.feed(JsonlSource(io.BytesIO(data)))
        rates.append(tally.read / (time.perf_counter() - started))
    return validate, statistics.median(loads), statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="13,100,1000,2000")
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    data = events(args.events)
    print(f"events: {args.events} generated; in-process figures are medians of {args.runs} runs")
    first: tuple[float, float, float] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"ot-core-x{size}.yaml"
            path.write_text(variant(size), encoding="utf-8")
            validate, load, rate = measure(path, data, args.runs)
            first = first or (validate, load, rate)
            print(f"{size:>5} rules: validate {validate:6.2f} s ({validate / first[0]:5.2f}x)  "
                  f"load {load:6.2f} s ({load / first[1]:6.2f}x)  "
                  f"{rate:8,.0f} events/s ({rate / first[2]:4.2f}x the {sizes[0]}-rule rate)", flush=True)


if __name__ == "__main__":
    main()
