"""Resident memory per patient held in state, at 10,000 and 100,000 patients.

Real states first: a generated stream of `--real` patients runs through the
engine, and each patient's state at the end of the stream (its whole history,
so the largest it gets) is serialised. Larger counts reuse those states under
new patient ids. Each count is then loaded into a fresh child process, and the
growth of its resident set (from /proc/self/statm) is divided by the count:

- store: `PatientStates`, what `otrules run`, backtest and the Kafka service's
  memory store hold (bytes, with the 1,024 most recently used decoded);
- baseline: the same states all decoded in a plain dict (what the stores held
  before, and what any store that keeps objects would hold).

    .venv/bin/python bench/state_memory.py [--counts 10000 100000] [--real 10000]
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from otrules import defaults, synthetic
from otrules.consumers import DeadLetterSink, JsonlSource, PatientStates, Pipeline
from otrules.engine import Engine, PatientState

_LEN = struct.Struct(">I")


def real_states(patients: int, seed: int) -> list[bytes]:
    buf = io.StringIO()
    synthetic.write_jsonl(buf, synthetic.generate(patients=patients, seed=seed))
    pipeline = Pipeline(Engine(defaults.rulesets(), defaults.catalogue()), lambda r: None, DeadLetterSink(None))
    pipeline.feed(JsonlSource(io.BytesIO(buf.getvalue().encode())))
    return [pipeline.states.get(p).to_bytes() for p in pipeline.states.patient_ids()]  # type: ignore[union-attr]


def write_states(path: Path, states: list[bytes], count: int) -> None:
    with path.open("wb") as out:
        for i in range(count):
            state = PatientState.from_bytes(states[i % len(states)])
            state.patient_id = f"{state.patient_id}-c{i // len(states)}"
            value = state.to_bytes()
            out.write(_LEN.pack(len(value)) + value)


def read_states(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while head := f.read(_LEN.size):
            yield f.read(_LEN.unpack(head)[0])


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(path: Path, kind: str) -> None:
    """Load every state of `path` into one store and print bytes of growth per patient."""
    store: PatientStates | dict[str, PatientState]  # held until the end: what is measured
    before = rss()
    start = time.perf_counter()
    n = 0
    if kind == "store":
        store = PatientStates()
        for value in read_states(path):  # as after processing: decoded states put, the older evicted to bytes
            store.put(PatientState.from_bytes(value))
            n += 1
    else:
        store = {}
        for value in read_states(path):
            state = PatientState.from_bytes(value)
            store[state.patient_id] = state
            n += 1
    seconds = time.perf_counter() - start
    print(n, (rss() - before) / n, seconds)


def measure(path: Path, kind: str) -> tuple[int, float, float]:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), kind], check=True, capture_output=True,
                         text=True).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--real", type=int, default=10_000, help="patients generated and run through the engine")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return

    states = real_states(args.real, args.seed)
    sizes = sorted(len(s) for s in states)
    print(f"real states: {len(states):,} patients; serialised bytes per patient: "
          f"median {statistics.median(sizes):,.0f}, p90 {sizes[int(len(sizes) * 0.9)]:,}, max {sizes[-1]:,} "
          f"(target <= 2,048)")
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            path = Path(tmp) / f"states-{count}.bin"
            write_states(path, states, count)
            for kind, label in (("store", "PatientStates (bytes + 1,024 decoded)"),
                                ("dict", "baseline: all decoded in a dict")):
                runs = [measure(path, kind) for _ in range(args.runs)]
                per = statistics.median(r[1] for r in runs)
                print(f"{count:>7,} patients  {label:<40} {per:>7,.0f} bytes resident per patient"
                      f"  (load {statistics.median(r[2] for r in runs):.2f} s)")


if __name__ == "__main__":
    main()
