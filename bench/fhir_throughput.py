"""FHIR input against the native path, in one run: the same synthetic stream as otrules JSONL and as
FHIR R4 NDJSON (`otrules generate --format fhir`), each through the embedded pipeline, alternating
so machine noise falls on both; medians of events/s, where an event is one native event (the FHIR
stream's resources make the same events). FHIR is read as by default (`--fhir-validation mapped`:
what the mapping reads is checked as it reads it) and with `full` (each mapped resource also
validated whole with fhir.resources); the cost of that per resource comes from the two.

    .venv/bin/python bench/fhir_throughput.py --patients 1000 --runs 3

docs/benchmarks.md quotes its output; the issue's target is FHIR within 0.5x of native.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable

from otrules import defaults, synthetic, synthetic_fhir
from otrules.consumers import DeadLetterSink, Fault, JsonlSource, PatientStates, Pipeline
from otrules.consumers.fhir import FhirMapper, load_code_table, make_mapper
from otrules.engine import Engine


def _lines(patients: int, seed: int) -> tuple[bytes, bytes, int, int]:
    events = list(synthetic.generate(patients=patients, seed=seed))
    native, fhir = io.StringIO(), io.StringIO()
    synthetic.write_jsonl(native, events)
    synthetic_fhir.write_ndjson(fhir, synthetic_fhir.to_fhir(events))
    resources = sum(len(d.get("entry", ())) if d["resourceType"] == "Bundle" else 1
                    for d in map(json.loads, fhir.getvalue().splitlines()))
    return native.getvalue().encode(), fhir.getvalue().encode(), len(events), resources


def _timed(data: bytes, fmt: str, engine: Engine, mapper: FhirMapper | None) -> float:
    pipeline = Pipeline(engine, lambda rec: None, DeadLetterSink(None), states=PatientStates(), input_format=fmt,
                        fhir=mapper, fault=Fault.DEAD_LETTER)
    start = time.perf_counter()
    tally = pipeline.feed(JsonlSource(io.BytesIO(data)))
    elapsed = time.perf_counter() - start
    assert tally.rejected == 0 and tally.balanced, tally
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    native, fhir, events, resources = _lines(args.patients, args.seed)
    engine = Engine(defaults.rulesets(), defaults.catalogue())
    codes = load_code_table()
    mapped = make_mapper(engine.catalogue, codes)  # the default
    full = make_mapper(engine.catalogue, codes, "full")
    runs: dict[str, list[float]] = {"native": [], "fhir": [], "fhir, full validation": []}
    cases: dict[str, Callable[[], float]] = {
        "native": lambda: _timed(native, "otrules", engine, None),
        "fhir": lambda: _timed(fhir, "fhir", engine, mapped),
        "fhir, full validation": lambda: _timed(fhir, "fhir", engine, full),
    }
    _timed(fhir, "fhir", engine, full)  # warm up: imports the models once
    for _ in range(args.runs):
        for name, case in cases.items():
            runs[name].append(case())
    median = {name: statistics.median(times) for name, times in runs.items()}
    lines = fhir.count(b"\n")
    print(f"{events:,} events ({args.patients:,} patients, seed {args.seed}) = {resources:,} FHIR resources "
          f"in {lines:,} lines; medians of {args.runs} alternating runs")
    for name, seconds in median.items():
        print(f"{name:22} {events / seconds:9,.0f} events/s  {seconds:6.2f} s  "
              f"vs native {median['native'] / seconds:.2f}x")
    full_s = median["fhir, full validation"]
    per_resource = (full_s - median["fhir"]) / resources * 1e6
    print(f"fhir.resources validation: {per_resource:.0f} µs per resource read "
          f"({(full_s - median['fhir']) / full_s:.0%} of the fully validated run)")


if __name__ == "__main__":
    main()
