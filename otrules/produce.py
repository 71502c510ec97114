"""`otrules produce`: load a JSONL event file into Kafka, so `consume` has something to read.

Each line goes to the topic as it is (the bytes of the line, without its line
ending) keyed by the line's `patient_id` in UTF-8, the key `otrules consume`
partitions by. Lines are numbered, and blank lines and a UTF-8 byte-order mark
skipped, as `otrules run` reads them. A line whose patient_id cannot be read
is not sent; the caller hears of it by line number and reason, never by value
(a line may hold identifiers or scores). Nothing else is checked here: an
event that is invalid in other ways is sent, and `consume` dead-letters it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Skipped:
    line: int
    reason: str  # names what is wrong, never a value


@dataclass
class ProduceResult:
    sent: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    failed: int = 0
    first_error: str | None = None


def patient_key(raw: bytes) -> bytes | str:
    """The record key of one JSONL line (its patient_id in UTF-8), or why there is none."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "not valid JSON (UTF-8)"
    if not isinstance(event, dict):
        return "not a JSON object"
    if "patient_id" not in event:
        return "no patient_id"
    pid = event["patient_id"]
    if not isinstance(pid, str) or not pid.strip():
        return "patient_id is not a non-empty string"
    return pid.encode("utf-8")


def lines(stream: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line ending) of each non-blank line."""
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        raw = raw.rstrip(b"\r\n")
        if raw.strip():
            yield number, raw


def keyed(stream: Iterable[bytes], on_skip: Callable[[Skipped], None]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each line that has a patient_id; on_skip for each that has not."""
    for number, raw in lines(stream):
        key = patient_key(raw)
        if isinstance(key, str):
            on_skip(Skipped(number, key))
        else:
            yield key, raw


def produce(stream: Iterable[bytes], bootstrap_servers: str, topic: str, *,
            on_skip: Callable[[Skipped], None] = lambda s: None,
            client: dict[str, Any] | None = None, producer: Any = None) -> ProduceResult:
    """Send every keyed line of `stream` to `topic` (acks=all), flush, and count.

    `producer` (a KafkaProducer) is for tests; otherwise one is made from
    `bootstrap_servers` and `client` (extra kafka-python settings) and closed.
    """
    from kafka import KafkaProducer

    result = ProduceResult()

    def skipped(s: Skipped) -> None:
        result.skipped.append(s)
        on_skip(s)

    def failed(exc: BaseException) -> None:
        result.failed += 1
        if result.first_error is None:
            result.first_error = f"{type(exc).__name__}: {exc}"

    own = producer is None
    if own:
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=20,
                                 client_id="otrules-produce", **(client or {}))
    try:
        for key, value in keyed(stream, skipped):
            producer.send(topic, key=key, value=value).add_errback(failed)
            result.sent += 1
        producer.flush()
    finally:
        if own:
            producer.close()
    result.sent -= result.failed
    return result
