"""Kill-to-serving: after one of four `otrules consume` instances is SIGKILLed, how long until the
survivors serve every partition again.

Four instances on an 8-partition input under a steady produce (the synthetic stream). Each round
SIGKILLs one of them halfway through a batch of a backlog (tests/kafka_group_support.kill_mid_batch,
as tests/test_kafka_rolling.py does), then measures
1. ready: every survivor's /readyz answers 200 and together they own all partitions, restored
   (/metrics), polled every 0.1 s;
2. flowing: a survivor has committed a transaction on each partition the killed instance owned (from
   the survivors' log timestamps);
then restarts the killed instance under its own id and waits until four serve again. Prints each
round and the medians. The group's session timeout is what mostly decides (1): a dead member is
noticed only when it expires.

    .venv/bin/python bench/kafka_failover.py [--runs 5] [--session-timeout-ms 6000]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts scripts/kafka/broker.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts" / "kafka")]

from kafka_group_support import SteadyProducer, first_commits, kill_mid_batch, wait_until_serving  # noqa: E402
from test_kafka_service import Consumer, Topics, stream  # noqa: E402

PARTITIONS = 8
BATCH = 50
REBALANCE_S = 90.0


def rounds(bootstrap: str, work: Path, runs: int, session_ms: int, rate: float,
           burst: int) -> list[tuple[float, float]]:
    """(ready, flowing) seconds after each kill."""
    lines = stream(300 * (runs + 1), seed=61)  # ~10,700 events a round: the burst and a steady feed
    topics = Topics(bootstrap, partitions=PARTITIONS)
    args = ("--batch-max-records", str(BATCH), "--session-timeout-ms", str(session_ms))
    names = ["f0", "f1", "f2", "f3"]
    live = {name: Consumer(bootstrap, topics, name, work, *args) for name in names}
    results: list[tuple[float, float]] = []
    producer = None
    try:
        wait_until_serving(live, PARTITIONS, REBALANCE_S, "four instances starting")
        producer = SteadyProducer(bootstrap, topics.input, lines, rate)
        for run in range(runs):
            name = names[run % len(names)]
            _, seen = wait_until_serving(live, PARTITIONS, REBALANCE_S, f"before round {run + 1}")
            owned = set(next(s.owned for s in seen if s.name == name))
            survivors = {n: c for n, c in live.items() if n != name}
            kill = kill_mid_batch(name, live[name], survivors, producer, burst, BATCH)
            ready, _ = wait_until_serving(survivors, PARTITIONS, REBALANCE_S, f"after SIGKILL of {name}")
            flowing = max(first_commits(survivors, kill, owned).values())
            results.append((ready, flowing))
            print(f"round {run + 1}: killed {name} (partitions {sorted(owned)}): survivors ready after {ready:.1f} s, "
                  f"committing on all its partitions after {flowing:.1f} s", flush=True)
            live[name] = Consumer(bootstrap, topics, name, work, *args)
            wait_until_serving(live, PARTITIONS, REBALANCE_S, f"after {name} restarted")
            if producer.sent >= len(lines):
                print("the stream ran out; fewer rounds than asked", flush=True)
                break
    finally:
        if producer is not None:
            producer.close()
        for consumer in live.values():
            if consumer.proc.poll() is None:
                consumer.proc.terminate()
                consumer.proc.wait(timeout=60)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="kills (one instance each, in turn)")
    ap.add_argument("--session-timeout-ms", type=int, default=6000,
                    help="the group's session timeout (the broker's group.min.session.timeout.ms is 6000 by default)")
    ap.add_argument("--rate", type=float, default=150, help="steady feed, events/s")
    ap.add_argument("--burst", type=int, default=6000, help="events sent at once before each kill (a backlog)")
    args = ap.parse_args()

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from broker import Broker

        broker = Broker().start()
        bootstrap = broker.bootstrap_servers
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = rounds(bootstrap, Path(tmp), args.runs, args.session_timeout_ms, args.rate, args.burst)
    finally:
        if broker is not None:
            broker.close()
    ready, flowing = [r for r, _ in results], [f for _, f in results]
    print(f"4 instances, {PARTITIONS} partitions, session timeout {args.session_timeout_ms} ms, {len(results)} kills: "
          f"survivors ready (all partitions assigned and restored) median {statistics.median(ready):.1f} s "
          f"(min {min(ready):.1f}, max {max(ready):.1f}); committing on all the killed instance's partitions "
          f"median {statistics.median(flowing):.1f} s (min {min(flowing):.1f}, max {max(flowing):.1f})")


if __name__ == "__main__":
    main()
