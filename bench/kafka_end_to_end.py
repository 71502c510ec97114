"""End-to-end figures through a real Kafka broker, exactly-once on.

1. Throughput: a pre-produced generated stream is consumed by `otrules consume`
   (a real process); events/s = events committed / time from its first to its
   last committed transaction (from its own log lines, so start-up is not
   counted). Baseline in the same run: a plain kafka-python consume-then-produce
   passthrough of the same messages (no transactions, no engine).
2. Latency: events offered at a fixed rate; for each recommendation, the time
   from sending its triggering event to seeing the recommendation with a
   read_committed consumer. Median and p99.

    .venv/bin/python bench/kafka_end_to_end.py [--patients 1000] [--rate 500] [--seconds 20] [--runs 3]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts scripts/kafka/broker.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from otrules import synthetic
from otrules.consumers.kafka.join_guard import keep_join_driven
from otrules.consumers.kafka.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "kafka"))


def lines_for(patients: int, seed: int) -> list[bytes]:
    buf = io.StringIO()
    synthetic.write_jsonl(buf, synthetic.generate(patients=patients, seed=seed))
    return [line.encode() for line in buf.getvalue().splitlines()]


def topics(bootstrap: str, partitions: int) -> dict[str, str]:
    p = f"bench-{uuid.uuid4().hex[:8]}"
    names = {"input": f"{p}.events", "output": f"{p}.recs", "dlq": f"{p}.dlq", "changelog": f"{p}.changelog",
             "passthrough": f"{p}.copy", "group": f"{p}-group"}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(names["input"], partitions, 1), NewTopic(names["passthrough"], partitions, 1),
                         NewTopic(names["changelog"], partitions, 1, topic_configs={"cleanup.policy": "compact"})])
    admin.close()
    return names


def produce(bootstrap: str, topic: str, lines: list[bytes], rate: float | None = None,
            sent: dict[str, float] | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    start = time.monotonic()
    for i, line in enumerate(lines):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        event = json.loads(line)
        if sent is not None:
            sent[f"{event['patient_id']}/{event['event_id']}"] = time.monotonic()
        producer.send(topic, key=event["patient_id"].encode(), value=line)
    producer.flush()
    producer.close()


def start_consume(bootstrap: str, t: dict[str, str], log: Path, batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "otrules", "consume", "--bootstrap-servers", bootstrap, "--instance-id", "bench",
           "--batch-max-records", str(batch),
           "--input-topic", t["input"], "--output-topic", t["output"], "--dlq-topic", t["dlq"],
           "--changelog-topic", t["changelog"], "--group-id", t["group"], "--sweep-interval-seconds", "0",
           "--http-port", "0"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def committed_rate(log: Path, total: int, timeout: float = 600) -> tuple[float, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batches = [json.loads(line) for line in log.read_text().splitlines() if '"committed"' in line]
        if sum(b["events"] for b in batches) >= total:
            break
        time.sleep(0.5)
    first, last = batches[0], batches[-1]
    span = _ts(last["timestamp"]) - _ts(first["timestamp"])
    events = sum(b["events"] for b in batches[1:])  # the first batch's work happened before its timestamp
    return events / span, len(batches)


def _ts(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def passthrough_rate(bootstrap: str, t: dict[str, str], total: int, batch: int) -> float:
    """Consume, produce a copy, commit offsets: polls of the same size as the service's batches."""
    consumer = keep_join_driven(KafkaConsumer(  # as the service's: kafka-python 3.0.12 can drop a group join
        t["input"], bootstrap_servers=bootstrap, group_id=f"{t['group']}-copy", auto_offset_reset="earliest",
        enable_auto_commit=False, max_poll_records=batch))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    done, start = 0, None
    while done < total:
        for msgs in consumer.poll(timeout_ms=200).values():
            start = start or time.monotonic()
            for m in msgs:
                producer.send(t["passthrough"], key=m.key, value=m.value)
            done += len(msgs)
        if done:
            consumer.commit()
    producer.flush()
    assert start is not None  # total > 0, so some poll returned records
    elapsed = time.monotonic() - start
    consumer.close()
    producer.close()
    return total / elapsed


def latency(bootstrap: str, lines: list[bytes], rate: float, workdir: Path, batch: int) -> list[float]:
    t = topics(bootstrap, 4)
    proc = start_consume(bootstrap, t, workdir / "latency.log", batch)
    time.sleep(6)  # let it join the group
    sent: dict[str, float] = {}
    seen: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        consumer = KafkaConsumer(t["output"], bootstrap_servers=bootstrap, group_id=None,
                                 isolation_level="read_committed", auto_offset_reset="earliest")
        while not stop.is_set():
            for msgs in consumer.poll(timeout_ms=50).values():
                now = time.monotonic()
                for m in msgs:
                    rec = json.loads(m.value)
                    key = f"{rec['patient_id']}/{rec['triggered_by'][0]}"
                    if key in sent:
                        seen.append((now - sent[key]) * 1000)
        consumer.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    produce(bootstrap, t["input"], lines, rate=rate, sent=sent)
    time.sleep(5)
    stop.set()
    watcher.join()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500, help="offered load for the latency run, events/s")
    ap.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs (the median is printed)")
    ap.add_argument("--batch-max-records", type=int, default=KafkaSettings.batch_max_records,
                    help="the service's batch size, and the passthrough's poll size (default: the service's default)")
    args = ap.parse_args()

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from broker import Broker

        broker = Broker().start()
        bootstrap = broker.bootstrap_servers
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            lines = lines_for(args.patients, seed=3)
            batch = args.batch_max_records
            bases, rates = [], []
            for run in range(args.runs):  # fresh topics and groups each run; both read the same messages
                t = topics(bootstrap, 4)
                produce(bootstrap, t["input"], lines)
                bases.append(passthrough_rate(bootstrap, t, len(lines), batch))
                proc = start_consume(bootstrap, t, work / f"throughput-{run}.log", batch)
                rate, batches = committed_rate(work / f"throughput-{run}.log", len(lines))
                rates.append(rate)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            base, rate = statistics.median(bases), statistics.median(rates)
            ratios = sorted(r / b for r, b in zip(rates, bases, strict=True))
            print(f"events: {len(lines)} ({args.patients} patients), 4 partitions, one otrules process, "
                  f"batches (polls) of up to {batch} records; medians of {args.runs} runs")
            print(f"passthrough baseline (consume + produce, no transactions): {base:,.0f} events/s")
            print(f"otrules consume, exactly-once: {rate:,.0f} events/s, about {batches} transactions a run "
                  f"({rate / base:.2f}x the passthrough; per run {', '.join(f'{x:.2f}' for x in ratios)}; "
                  "target >= 0.5x)")

            n = int(args.rate * args.seconds)
            offered = lines_for(max(1, n // 35), seed=4)[:n]
            lat = latency(bootstrap, offered, args.rate, work, batch)
            if lat:
                q = statistics.quantiles(lat, n=100)
                print(f"latency at {args.rate:.0f} events/s offered for {args.seconds:.0f} s: "
                      f"{len(lat)} recommendations, median {statistics.median(lat):.0f} ms, p99 {q[98]:.0f} ms, "
                      f"max {max(lat):.0f} ms (produce -> committed recommendation seen; target p99 <= 300 ms)")
    finally:
        if broker is not None:
            broker.close()


if __name__ == "__main__":
    main()
