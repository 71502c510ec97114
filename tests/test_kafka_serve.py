"""`otrules serve --bootstrap-servers` on the real broker: it catches up from ot.recommendations.open,
answers patient-view from it, and a clinician's feedback goes to ot.events, where `otrules consume`
closes the recommendation, and the card leaves (contracts.md §8, §9)."""

from __future__ import annotations

import time
import uuid

from test_kafka_service import (  # noqa: F401 - the fixture stops a failed test's consumers
    Consumer,
    Topics,
    _stop_leftover_consumers,
    embedded_run,
    open_table,
    produce,
    read_all,
    stream,
)
from test_serve import SERVICE, Server, hook


def test_serve_follows_the_open_table_and_feedback_closes_through_the_service(kafka_bootstrap, tmp_path):
    lines = stream(30, seed=31)
    expected, table = embedded_run(lines)
    topics = Topics(kafka_bootstrap, partitions=2)
    produce(kafka_bootstrap, topics.input, lines)
    consumer = Consumer(kafka_bootstrap, topics, "serve-e2e", tmp_path)
    read_all(kafka_bootstrap, topics.output, len(expected))
    deadline = time.monotonic() + 60
    while open_table(kafka_bootstrap, topics.open) != table and time.monotonic() < deadline:
        time.sleep(0.5)
    server = Server(tmp_path, "--bootstrap-servers", kafka_bootstrap, "--input-topic", topics.input,
                    "--open-topic", topics.open)
    try:
        patient, ids = max(table.items(), key=lambda kv: len(kv[1]))
        cards = server.client.post(SERVICE, json=hook(patient)).json()["cards"]
        assert {c["uuid"] for c in cards} == set(ids)
        card = cards[0]
        feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                                  "outcomeTimestamp": "2026-11-30T10:00:00Z",
                                  "overrideReason": {"reason": card["overrideReasons"][1]}}]}
        assert server.client.post(f"{SERVICE}/feedback", json=feedback).status_code == 200
        deadline = time.monotonic() + 60
        left = cards
        while card["uuid"] in {c["uuid"] for c in left} and time.monotonic() < deadline:
            time.sleep(0.3)
            left = server.client.post(SERVICE, json=hook(patient)).json()["cards"]
        assert {c["uuid"] for c in left} == set(ids) - {card["uuid"]}
        closed = [r for r in read_all(kafka_bootstrap, topics.output, len(expected) + 1)
                  if b'"closed_reason":"overridden"' in r.value]
        assert len(closed) == 1 and dict(closed[0].headers)["ce_type"] == b"org.otrules.recommendation.closed"
        assert uuid.UUID(card["uuid"])
    finally:
        server.stop()
        log = consumer.terminate()
    assert "rejected 0" in log
