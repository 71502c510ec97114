"""Embedded-mode throughput: events/s through the whole engine, against a baseline.

The baseline, measured in the same run, is reading and validating the same
events without the engine (JSON + pydantic), so the ratio shows what rules,
state and matching cost on top of input handling. Prints medians over runs.

    .venv/bin/python bench/embedded_throughput.py --events 100000 --runs 3
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import time

from otrules import defaults, synthetic
from otrules.consumers import DeadLetterSink, JsonlSource, Pipeline
from otrules.engine import Engine
from otrules.schemas import parse_event


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    buf = io.StringIO()
    synthetic.write_jsonl(buf, synthetic.generate(events=args.events, seed=args.seed))
    data = buf.getvalue().encode()
    catalogue = defaults.catalogue()

    def baseline() -> float:
        start = time.perf_counter()
        for line in JsonlSource(io.BytesIO(data)):
            parse_event(line.raw, catalogue)
        return time.perf_counter() - start

    def engine_run() -> tuple[float, int]:
        engine = Engine(defaults.rulesets(), catalogue)
        recs: list[object] = []
        pipeline = Pipeline(engine, recs.append, DeadLetterSink(None))
        start = time.perf_counter()
        pipeline.feed(JsonlSource(io.BytesIO(data)))
        return time.perf_counter() - start, len(recs)

    base = [baseline() for _ in range(args.runs)]
    runs = [engine_run() for _ in range(args.runs)]
    eng = [t for t, _ in runs]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"events: {args.events}, runs: {args.runs}, recommendations per run: {runs[0][1]}")
    print(f"baseline read+validate: median {args.events / statistics.median(base):,.0f} events/s")
    print(f"engine (otrules run):   median {args.events / statistics.median(eng):,.0f} events/s")
    print(f"engine / baseline time: {statistics.median(eng) / statistics.median(base):.1f}x")
    print(f"peak RSS of this process: {peak_mb:.0f} MB (holds the generated stream in memory too)")


if __name__ == "__main__":
    main()
