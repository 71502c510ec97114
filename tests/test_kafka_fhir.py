"""FHIR R4 input through `otrules consume` on the real broker: the same recommendations as the native
stream, exactly once across a SIGKILL (contracts.md §7)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from kafka import KafkaProducer

from otrules import defaults, synthetic, synthetic_fhir
from otrules.consumers import DeadLetterSink, JsonlSource, Pipeline
from otrules.engine import Engine
from test_fhir_input import _briefs
from test_kafka_service import (  # noqa: F401 - the fixture stops a failed test's consumers
    Consumer,
    Topics,
    _stop_leftover_consumers,
    count_committed,
    read_all,
    wait_for_output,
)


def fhir_key(doc: dict) -> bytes:
    """The patient a FHIR line is about (contracts.md §7: the Kafka key is the patient id)."""
    resource = doc["entry"][0]["resource"] if doc["resourceType"] == "Bundle" else doc
    if resource["resourceType"] == "Patient":
        return resource["id"].encode()
    ref = (resource.get("subject") or resource.get("patient")
           or next(p["actor"] for p in resource.get("participant", ())))
    return ref["reference"].split("/")[-1].encode()


def test_fhir_stream_through_kafka_equals_the_native_run_across_a_sigkill(kafka_bootstrap, tmp_path):
    events = list(synthetic.generate(patients=80, seed=21))
    native = [json.dumps(e, separators=(",", ":")).encode() for e in events]
    out: list[str] = []
    Pipeline(Engine(defaults.rulesets(), defaults.catalogue()), lambda r: out.append(r.to_json()),
             DeadLetterSink(None)).feed(JsonlSource(io.BytesIO(b"\n".join(native))))
    expected = _briefs(out)
    lines = list(synthetic_fhir.to_fhir(events))
    topics = Topics(kafka_bootstrap, partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    for doc in lines:
        producer.send(topics.input, key=fhir_key(doc), value=json.dumps(doc).encode())
    producer.flush()
    producer.close()
    args = ("--input-format", "fhir", "--batch-max-records", "10")
    first = Consumer(kafka_bootstrap, topics, "fhir", tmp_path, *args)
    wait_for_output(kafka_bootstrap, topics.output, len(expected) // 5)
    first.kill()
    assert count_committed(kafka_bootstrap, topics.output) < len(expected), "killed too late to prove anything"
    second = Consumer(kafka_bootstrap, topics, "fhir", tmp_path, *args)
    records = read_all(kafka_bootstrap, topics.output, len(expected))
    log = second.terminate()
    assert _briefs([r.value.decode() for r in records]) == expected
    assert "rejected 0" in log and "+ skipped" in log
    assert count_committed(kafka_bootstrap, topics.dlq) == 0


def test_the_us_core_ot_episode_through_kafka_gives_the_native_recommendations(kafka_bootstrap, tmp_path):
    """The hand-written US Core OT episode (tests/fhir/): CarePlan assess-plan without timing, visits
    typed by CPT and service type, a primary-care visit and a dental no-show skipped as not OT."""
    here = Path(__file__).parent / "fhir"
    native = (here / "us-core-ot-episode.native.jsonl").read_bytes()
    out: list[str] = []
    Pipeline(Engine(defaults.rulesets(), defaults.catalogue()), lambda r: out.append(r.to_json()),
             DeadLetterSink(None)).feed(JsonlSource(io.BytesIO(native)))
    expected = _briefs(out)
    assert len(expected) >= 3
    topics = Topics(kafka_bootstrap, partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for text in (here / "us-core-ot-episode.ndjson").read_text().splitlines():
        producer.send(topics.input, key=fhir_key(json.loads(text)), value=text.encode())
    producer.flush()
    producer.close()
    consumer = Consumer(kafka_bootstrap, topics, "fhir-us-core", tmp_path, "--input-format", "fhir")
    records = read_all(kafka_bootstrap, topics.output, len(expected))
    log = consumer.terminate()
    assert _briefs([r.value.decode() for r in records]) == expected
    assert "rejected 0" in log and "skipped 2 (not OT 2)" in log
    assert count_committed(kafka_bootstrap, topics.dlq) == 0


def test_a_refused_fhir_entry_is_dead_lettered_alone_with_where_it_was(kafka_bootstrap, tmp_path):
    """contracts.md §7: the dead letter is the failing resource, not its Bundle; otrules.fhir.* headers
    say the Bundle id and type and the entry's index."""
    episode = (Path(__file__).parent / "fhir" / "us-core-ot-episode.ndjson").read_text().splitlines()
    bad = json.loads(episode[1])  # the evaluation Bundle: Encounter, MoCA, Barthel
    bad["id"] = "b-eval"
    bad["entry"][1]["resource"]["valueInteger"] = 45  # MoCA is 0-30
    topics = Topics(kafka_bootstrap, partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for doc in (json.loads(episode[0]), bad):
        producer.send(topics.input, key=b"usc-1", value=json.dumps(doc).encode())
    producer.flush()
    producer.close()
    consumer = Consumer(kafka_bootstrap, topics, "fhir-dlq", tmp_path, "--input-format", "fhir")
    (letter,) = read_all(kafka_bootstrap, topics.dlq, 1)
    consumer.terminate()
    headers = dict(letter.headers)
    assert json.loads(letter.value)["id"] == "obs-moca-1"
    assert (headers["otrules.fhir.bundle_id"], headers["otrules.fhir.bundle_type"], headers["otrules.fhir.entry"]) \
        == (b"b-eval", b"collection", b"1")
    assert len(letter.value) < len(json.dumps(bad))
