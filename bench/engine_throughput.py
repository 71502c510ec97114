"""Engine throughput against two baselines measured in the same run.

- raw durable_rules: the very messages the engine posted (recorded during an
  engine run), posted again straight into the same compiled durable_rules
  rulesets through its public API (`Host.assert_fact` then `retract_fact`).
  The ratio engine / raw is the issue's target (>= 0.7x).
- durable_rules core: the same messages, serialised beforehand, through the
  engine's own path into durable_rules' C core (engine/matcher.py). The ratio
  engine / core is the engine's overhead over the cheapest posting there is
  (parsing, state, fact derivation, message building, recommendations).
- read + validate: JSON parsing and pydantic validation of the same lines
  without the engine, the floor of any consumer.

Events come from the project's generator. Prints medians over runs.

    .venv/bin/python bench/engine_throughput.py --events 100000 --runs 3
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import time
from typing import Any

from durable import engine as durable

from otrules import defaults, synthetic
from otrules.consumers import DeadLetterSink, JsonlSource, Pipeline
from otrules.engine import Engine
from otrules.engine.matcher import Matcher
from otrules.schemas import parse_event


def stream(events: int, seed: int) -> bytes:
    buf = io.StringIO()
    synthetic.write_jsonl(buf, synthetic.generate(events=events, seed=seed))
    return buf.getvalue().encode()


def run_engine(data: bytes) -> tuple[float, int]:
    engine = Engine(defaults.rulesets(), defaults.catalogue())
    recs: list[object] = []
    pipeline = Pipeline(engine, recs.append, DeadLetterSink(None))
    start = time.perf_counter()
    pipeline.feed(JsonlSource(io.BytesIO(data)))
    return time.perf_counter() - start, len(recs)


def record_posts(data: bytes) -> list[tuple[Matcher, dict[str, Any]]]:
    """(matcher, message) for every post an engine run makes, in order."""
    posts: list[tuple[Matcher, dict[str, Any]]] = []
    original = Matcher.match

    def recording(self: Matcher, facts: dict[str, Any]) -> list[int]:
        if self.active:
            posts.append((self, self.message(facts)))
        return original(self, facts)

    Matcher.match = recording  # type: ignore[method-assign]
    try:
        run_engine(data)
    finally:
        Matcher.match = original  # type: ignore[method-assign]
    return posts


class _QuietHost(durable.Host):
    """durable's Host without its background timer threads (nothing here uses timers)."""

    def _run(self) -> None:
        return None


def run_public_api(posts: list[tuple[Matcher, dict[str, Any]]]) -> float:
    """The recorded messages through durable_rules' public API (Host.assert_fact, then retract_fact),
    into a Host holding the same compiled rulesets."""
    host = _QuietHost()
    matchers = list(dict.fromkeys(m for m, _ in posts))
    names = {m: f"public-{m.name}" for m in matchers}
    host.set_rulesets({names[m]: {rule: {**spec, "run": _ignore} for rule, spec in m.definition.items()}
                       for m in matchers})
    start = time.perf_counter()
    for matcher, msg in posts:
        name = names[matcher]
        try:  # noqa: SIM105 - contextlib.suppress would add its own cost to the timed loop
            host.assert_fact(name, msg)
        except durable.MessageNotHandledException:
            pass
        try:  # noqa: SIM105 - as above
            host.retract_fact(name, msg)
        except durable.MessageNotHandledException:
            pass
    return time.perf_counter() - start


def _ignore(c: Any) -> None:
    return None


def run_core(posts: list[tuple[Matcher, dict[str, Any]]]) -> float:
    """The recorded messages, already serialised, through the engine's own path into durable_rules' C core."""
    texts = [(m, json.dumps(msg, ensure_ascii=False)) for m, msg in posts]
    start = time.perf_counter()
    for matcher, text in texts:
        matcher.match_text(text)
    return time.perf_counter() - start


def run_validate(data: bytes) -> float:
    catalogue = defaults.catalogue()
    start = time.perf_counter()
    for line in JsonlSource(io.BytesIO(data)):
        parse_event(line.raw, catalogue)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    data = stream(args.events, args.seed)
    posts = record_posts(data)
    times: dict[str, list[float]] = {"engine": [], "public": [], "core": [], "validate": []}
    recs = 0
    for _ in range(args.runs):  # interleaved, so drift on a noisy machine hits all of them alike
        t, recs = run_engine(data)
        times["engine"].append(t)
        times["public"].append(run_public_api(posts))
        times["core"].append(run_core(posts))
        times["validate"].append(run_validate(data))
    n = args.events
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"events: {n:,}  runs: {args.runs}  recommendations per run: {recs:,}  durable posts: {len(posts):,}")
    rows = (("engine (otrules run, in process)", "engine"), ("raw durable_rules, public API", "public"),
            ("raw durable_rules, C core", "core"), ("read + validate only", "validate"))
    for label, key in rows:
        print(f"{label:<34}{n / med[key]:>9,.0f} events/s  ({med[key]:.2f} s)")
    print(f"engine / raw public-API rate:     {med['public'] / med['engine']:.2f}x  (target >= 0.70x)")
    print(f"engine / raw C-core rate:         {med['core'] / med['engine']:.2f}x")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
          "(holds the stream and the recorded posts too)")


if __name__ == "__main__":
    main()
