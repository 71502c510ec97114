"""One Kafka transaction: what a batch (or a sweep) sends, and how it commits or rolls back.

A `BatchTransaction` is the unit of exactly-once: the recommendations, the
dead letters, the changed patients' states and (for a batch) the consumed
offsets commit together, or none of them do. It owns what a rollback needs:
the states as they were before the batch touched them and the tally as it
was (the loop seeks back to the first offsets it polled).

`KafkaSink` is the event core's sink inside a transaction. Nothing it sends
can exceed the record size limit: a recommendation that would is refused
before anything of its event is sent (`TooLarge`, and the core dead-letters
the event), and a dead letter that would is cut to a bounded copy (the head
of the original, its size and sha256).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import KafkaProducer, TopicPartition
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.structs import OffsetAndMetadata

from otrules.consumers.core import Record, Rejection, Tally, TooLarge
from otrules.consumers.kafka import cloudevents, redact
from otrules.consumers.kafka.metrics import Metrics
from otrules.consumers.kafka.settings import KafkaSettings
from otrules.consumers.kafka.stores import StateStore
from otrules.engine import PatientState
from otrules.schemas import Recommendation

log = structlog.get_logger("otrules.consume")

Headers = list[tuple[str, bytes]]
DEAD_LETTER_HEAD = 4096  # bytes of the original kept when a whole dead letter would be too large
REASON_BYTES = 1024  # of a reason or field header (they quote input, which may be of any size)


class Interrupted(Exception):
    """The service is stopping and the broker does not answer: stop waiting. Nothing of the open
    transaction is visible; the broker aborts it, or a restart under the same id fences it."""


def finish(producer: KafkaProducer, result: Any, stop: threading.Event, grace_s: float) -> None:
    """Wait for a transactional request in short slices, so that a stop request during a broker
    outage is honoured after `grace_s` instead of whenever the broker comes back (kafka-python's
    own commit_transaction/abort_transaction wait without a bound)."""
    _internals(producer)._sender.wakeup()
    stopped_at: float | None = None
    while not result.wait(timeout_ms=200):
        if stop.is_set():
            stopped_at = stopped_at or time.monotonic()
            if time.monotonic() - stopped_at >= grace_s:
                raise Interrupted()


def _internals(producer: KafkaProducer) -> Any:
    """kafka-python 3.0's private transaction manager and sender (pinned <4 in pyproject.toml):
    its public commit/abort wait on them without a bound."""
    return producer


def close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Close, even with the broker away. kafka-python 3.0 raises out of close() when its flush
    times out, leaving the producer open, and then tries again (and prints a traceback) when it
    is collected: force its sender closed and mark it closed instead."""
    try:
        producer.close(timeout=timeout_s)
    except Exception:
        internals = _internals(producer)
        if internals._sender is not None:
            internals._sender.force_close()
        internals._closed = True


def commit(producer: KafkaProducer, stop: threading.Event, grace_s: float) -> None:
    # kafka-python 3.0's KafkaProducer.commit_transaction, with the wait bounded (see finish)
    finish(producer, _internals(producer)._transaction_manager.begin_commit(), stop, grace_s)


def abort(producer: KafkaProducer, stop: threading.Event, grace_s: float) -> None:
    finish(producer, _internals(producer)._transaction_manager.begin_abort(), stop, grace_s)


def send_offsets(producer: KafkaProducer, offsets: dict[TopicPartition, OffsetAndMetadata], group_metadata: Any,
                 stop: threading.Event, grace_s: float) -> None:
    result = _internals(producer)._transaction_manager.send_offsets_to_transaction(offsets, group_metadata)
    finish(producer, result, stop, grace_s)


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """What kafka-python (and the broker) count for a record alone in its batch."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers))


class BatchView:
    """The owned stores as the event core sees them during one transaction: the first time a
    patient is touched, its serialised state is kept, so an abort can put it back."""

    def __init__(self, stores: dict[int, StateStore]) -> None:
        self.stores = stores
        self.partition = -1  # the partition of the record being handled
        self.before: dict[tuple[int, str], bytes | None] = {}  # as they were, for an abort
        # changed since, in order, as last written (a live state, or bytes; None: gone): for the changelog
        self.written: dict[tuple[int, str], PatientState | bytes | None] = {}

    def _snapshot(self, patient_id: str, state: PatientState | None) -> None:
        key = (self.partition, patient_id)
        if key not in self.before:
            self.before[key] = None if state is None else state.to_bytes()

    def get(self, patient_id: str, keep: bool = True) -> PatientState | None:
        state = self.stores[self.partition].get(patient_id, keep)
        self._snapshot(patient_id, state)
        return state

    def put(self, state: PatientState) -> None:
        self.written[(self.partition, state.patient_id)] = state
        self.stores[self.partition].put(state)

    def put_raw(self, patient_id: str, value: bytes | None) -> None:
        """Only for a patient already read through `get` (so its snapshot is kept)."""
        self.written[(self.partition, patient_id)] = value
        self.stores[self.partition].put_raw(patient_id, value)

    def patient_ids(self) -> list[str]:
        return self.stores[self.partition].patient_ids()

    def changed(self) -> list[tuple[int, str, bytes | None]]:
        """(partition, patient, serialised state or None for a tombstone), without reading the stores."""
        return [(p, patient, value.to_bytes() if isinstance(value, PatientState) else value)
                for (p, patient), value in self.written.items()
                if value is not None or self.before.get((p, patient)) is not None]  # no tombstone for nobody


@dataclass
class Limits:
    """Largest record each output topic takes (the setting, or a topic's smaller max.message.bytes)."""

    output: int
    dlq: int
    changelog: int


class KafkaSink:
    """Recommendations and dead letters into the open transaction, within the size limits."""

    def __init__(self, producer: KafkaProducer, settings: KafkaSettings, limits: Limits, metrics: Metrics,
                 clock: Callable[[], str]) -> None:
        self.producer = producer
        self.settings = settings
        self.limits = limits
        self.metrics = metrics
        self.clock = clock
        self.sent: list[tuple[Any, Record | None]] = []  # (future, the record it came from), for attribution
        self.rec_timestamps: list[int] = []  # Kafka timestamps (ms) of events that recommended

    def recommend(self, recs: Sequence[Recommendation], record: Record | None) -> None:
        out = []
        for rec in recs:
            rec = rec.model_copy(update={"emitted_at": self.clock()})
            key, value, headers = rec.patient_id.encode(), rec.to_json().encode(), cloudevents.headers(rec)
            size = record_size(key, value, headers)
            if size > self.limits.output:
                raise TooLarge("a recommendation", size, self.limits.output)  # nothing of this event sent yet
            out.append((rec, key, value, headers))
        for rec, key, value, headers in out:
            future = self.producer.send(self.settings.output_topic, key=key, value=value, headers=headers)
            self.sent.append((future, record))
            if rec.status == "closed":
                self.metrics.closed.labels(rec.closed_reason or "").inc()
                if rec.closed_reason == "capped":
                    self.metrics.capped.inc()
            else:
                self.metrics.recommendations.labels(rec.kind, rec.rule.id).inc()
            if record is not None and record.timestamp_ms is not None:
                self.rec_timestamps.append(record.timestamp_ms)

    def dead_letter(self, record: Record, rejection: Rejection) -> None:
        headers: Headers = [
            ("otrules.reason", rejection.reason.encode()[:REASON_BYTES]),
            ("otrules.field", rejection.field.encode()[:REASON_BYTES]),
            ("otrules.kind", rejection.kind.encode()),
            ("otrules.source.topic", record.source.encode()),
            ("otrules.source.partition", str(record.partition).encode()),
            ("otrules.source.offset", str(record.offset).encode()),
        ]
        for name, val in (record.fhir or {}).items():  # a refused FHIR entry: the value is that resource alone
            if val is not None:
                headers.append((f"otrules.fhir.{name}", str(val).encode()[:REASON_BYTES]))
        original: Headers = list(record.headers or ())
        value: bytes | None = record.raw
        bounded = rejection.kind == "refused"  # the broker refused it once: never send it whole again
        if bounded or record_size(record.key, value, original + headers) > self.limits.dlq:
            # too large to keep whole: a bounded copy that still identifies the original
            headers += [("otrules.original.size", str(len(record.raw)).encode()),
                        ("otrules.original.sha256", hashlib.sha256(record.raw).hexdigest().encode()),
                        ("otrules.original.truncated", b"true")]
            value, original = record.raw[:DEAD_LETTER_HEAD], []
            key = None if record.key is None else record.key[:256]
        else:
            key = record.key
        future = self.producer.send(self.settings.dlq_topic, key=key, value=value, headers=original + headers)
        self.sent.append((future, record))
        log.warning("rejected", partition=record.partition, offset=record.offset, field=rejection.field,
                    kind=rejection.kind, key=redact.hash_id(record.key))

    def failed_records(self) -> dict[tuple[int, int], str]:
        """After a failed commit: the records whose outputs the broker refused, with the error
        class, so that the retry dead-letters them (they would fail again)."""
        out: dict[tuple[int, int], str] = {}
        for future, record in self.sent:
            if record is None or record.offset is None or record.partition is None:
                continue
            if future.is_done and future.failed() and not getattr(future.exception, "retriable", True):
                out[(record.partition, record.offset)] = type(future.exception).__name__
        return out


@dataclass
class BatchTransaction:
    """What one transaction needs to commit or roll back."""

    view: BatchView
    sink: KafkaSink
    counted: Tally  # the tally before it: an abort puts it back
    offsets: dict[TopicPartition, OffsetAndMetadata] = field(default_factory=dict)

    def consumed(self, tp: TopicPartition, last: int) -> None:
        self.offsets[tp] = OffsetAndMetadata(last + 1, "", -1)

    def changed_states(self) -> list[tuple[int, str, bytes | None]]:
        return self.view.changed()

    def restore_states(self) -> None:
        for (partition, patient), before in self.view.before.items():
            store = self.view.stores.get(partition)
            if store is not None:
                store.put_raw(patient, before)
