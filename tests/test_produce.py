"""`otrules produce` against a real broker: what lands on the topic is each line, byte for
byte, keyed by its patient_id in UTF-8; a line without one is reported by number and not sent."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from click.testing import CliRunner
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from kafka_support import create_topic, unique_name
from otrules import defaults
from otrules.cli import main
from otrules.produce import patient_key


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30) -> list[ConsumerRecord]:
    """Every record of `topic`, by assignment, until each partition's end offset is reached."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             isolation_level="read_committed", client_id="otrules-tests")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while any((consumer.position(tp) or 0) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"timed out reading {topic}: {len(records)} records so far"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def by_key(pairs) -> dict[bytes, list[bytes]]:
    """Values per key, in order: the order Kafka keeps (one key, one partition)."""
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in pairs:
        out[key].append(value)
    return dict(out)


def test_produce_loads_the_bundled_sample_keyed_by_patient_id(kafka_bootstrap: str):
    topic = create_topic(kafka_bootstrap, unique_name("produce-sample"), partitions=3)

    result = CliRunner().invoke(main, ["produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic])

    assert result.exit_code == 0, result.stderr
    lines = [line.rstrip(b"\n") for line in defaults.SAMPLE_STREAM.read_bytes().splitlines(keepends=True)
             if line.strip()]
    assert result.stderr.strip().splitlines()[-1] == f"sent {len(lines)} events to {topic} (0 skipped)"
    expected = by_key((json.loads(line)["patient_id"].encode("utf-8"), line) for line in lines)
    records = read_topic(kafka_bootstrap, topic)
    assert len(records) == len(lines)
    assert by_key((r.key, r.value) for r in records) == expected
    # one patient, one partition
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for r in records:
        partitions[r.key].add(r.partition)
    assert all(len(p) == 1 for p in partitions.values())


def test_a_line_without_patient_id_is_reported_by_number_not_sent_and_fails_the_run(kafka_bootstrap: str,
                                                                                    tmp_path: Path):
    topic = create_topic(kafka_bootstrap, unique_name("produce-skip"))
    good1 = '{"type":"visit","event_id":"e-1","patient_id":"p-Zoë","status":"attended"}'.encode()
    secret = b'{"type":"visit","event_id":"e-secret-2","patient":"p-secret","status":"attended"}'
    good2 = b'{"patient_id": "p-2", "event_id": "e-3",  "spacing":  "kept"}'
    path = tmp_path / "events.jsonl"
    path.write_bytes(good1 + b"\n" + secret + b"\n\n" + good2 + b"\r\n")

    result = CliRunner().invoke(main, ["produce", "--input", str(path), "--bootstrap-servers", kafka_bootstrap,
                                       "--topic", topic])

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"{path}:2: skipped: no patient_id",
                                          f"sent 2 events to {topic} (1 skipped)"]
    assert "secret" not in result.stderr and "secret" not in result.stdout
    records = read_topic(kafka_bootstrap, topic)
    assert [(r.key, r.value) for r in records] == [(b"p-Zo\xc3\xab", good1), (b"p-2", good2)]  # the key in UTF-8


def test_patient_key_says_why_a_line_has_no_key_without_quoting_it():
    assert patient_key(b'{"patient_id": "p-1"}') == b"p-1"
    assert patient_key(b'{"event_id": "e-1"}') == "no patient_id"
    assert patient_key(b'{"patient_id": 17}') == "patient_id is not a non-empty string"
    assert patient_key(b'{"patient_id": " "}') == "patient_id is not a non-empty string"
    assert patient_key(b"[1, 2]") == "not a JSON object"
    assert patient_key(b'{"patient_id": "p-\xff"}') == "not valid JSON (UTF-8)"
