"""How often fresh consumers of a group never finish joining (kafka-python 3.0.12, docs/operations.md "Known issues").

Each round creates a fresh topic and group; `--consumers` plain kafka-python
KafkaConsumers, one thread each, started `--stagger-s` apart (as in a rolling
start: the first is alone in the group for a moment), subscribe and poll with
`--poll-ms` timeouts.
A round is good once every member is STABLE and their assignments cover the
topic; stuck if that has not happened within `--deadline-s` of the last start
(a healthy join takes a few seconds). Without `--guard` nothing of otrules is used; with it,
each consumer gets otrules' join guard (consumers/kafka/join_guard.py).

    .venv/bin/python bench/group_join_stuck.py [--rounds 20] [--consumers 4] [--partitions 8] [--poll-ms 1]
        [--stagger-s 1] [--deadline-s 30] [--guard]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts scripts/kafka/broker.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import MemberState

ROOT = Path(__file__).resolve().parent.parent


def converged(consumers: list[KafkaConsumer], topic: str, partitions: int) -> bool:
    """Every member STABLE, and the members' assignments together are the whole topic."""
    if any(c.group_metadata().state != MemberState.STABLE for c in consumers):
        return False
    owned: set[TopicPartition] = set()
    for c in consumers:
        owned |= c.assignment()
    return owned == {TopicPartition(topic, p) for p in range(partitions)}


def one_round(bootstrap: str, consumers: int, partitions: int, poll_ms: int, stagger_s: float, deadline_s: float,
              guard: Callable[[KafkaConsumer], KafkaConsumer] | None) -> float | None:
    """Seconds until the group converged, or None if it was stuck at the deadline."""
    name = f"join-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
        admin.wait_for_topics([name], timeout_ms=30_000)
    finally:
        admin.close()
    stop = threading.Event()
    members: list[KafkaConsumer] = []
    for i in range(consumers):
        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=name, client_id=f"{name}-{i}",
                          enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=10_000)
        members.append(guard(c) if guard else c)

    def poll(c: KafkaConsumer) -> None:
        c.subscribe([name])
        while not stop.is_set():
            c.poll(timeout_ms=poll_ms)

    threads = [threading.Thread(target=poll, args=(c,), daemon=True) for c in members]
    for i, t in enumerate(threads):
        if i:
            time.sleep(stagger_s)
        t.start()
    started = time.monotonic()  # from the last member's start
    took = None
    while time.monotonic() - started < deadline_s:
        if converged(members, name, partitions):
            took = time.monotonic() - started
            break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    for c in members:
        c.close(autocommit=False)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--consumers", type=int, default=4)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--poll-ms", type=int, default=1)
    ap.add_argument("--stagger-s", type=float, default=1.0, help="seconds between two consumers' starts")
    ap.add_argument("--deadline-s", type=float, default=30.0)
    ap.add_argument("--guard", action="store_true", help="apply otrules' join guard to each consumer")
    args = ap.parse_args()
    guard = None
    if args.guard:
        from otrules.consumers.kafka.join_guard import keep_join_driven

        guard = keep_join_driven
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        sys.path.insert(0, str(ROOT / "scripts" / "kafka"))
        from broker import Broker

        broker = Broker().start()
        bootstrap = broker.bootstrap_servers
    try:
        stuck = 0
        times = []
        for n in range(1, args.rounds + 1):
            took = one_round(bootstrap, args.consumers, args.partitions, args.poll_ms, args.stagger_s, args.deadline_s,
                             guard)
            stuck += took is None
            if took is not None:
                times.append(took)
            print(f"round {n}: " + ("STUCK" if took is None else f"converged in {took:.1f} s"), flush=True)
        slowest = f", slowest join {max(times):.1f} s" if times else ""
        print(f"stuck {stuck}/{args.rounds} ({100 * stuck / args.rounds:.0f}%) with guard={'on' if guard else 'off'}, "
              f"{args.consumers} consumers {args.stagger_s:g} s apart, {args.partitions} partitions, "
              f"poll {args.poll_ms} ms{slowest}")
    finally:
        if broker is not None:
            broker.close()


if __name__ == "__main__":
    main()
