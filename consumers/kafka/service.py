"""The exactly-once loop of `otrules consume`.

One Kafka transaction per batch (bounded by count and time) carries the
recommendations, the dead letters, the changed patients' states on the
compacted changelog, and the consumed offsets
(`send_offsets_to_transaction(offsets, consumer.group_metadata())`, KIP-447).
Either all of it is visible to `read_committed` readers or none of it is, so a
process killed at any moment and restarted yields each recommendation once.

State belongs to partitions: on assignment, a partition's patients are
restored from its changelog partition (up to the end, read_committed) before
any of its events are processed; on revocation they are dropped. An aborted
batch rolls the in-memory state back to its snapshot and rewinds the offsets.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from otrules.consumers.kafka import cloudevents
from otrules.consumers.kafka.netclient import RetryingNetClient
from otrules.consumers.kafka.settings import KafkaSettings
from otrules.consumers.kafka.stores import MemoryStore, SqliteStore, StateStore, encode
from otrules.consumers.kafka.topics import ensure_topics
from otrules.engine import Engine, PatientState
from otrules.schemas import EventRejected, parse_event

log = structlog.get_logger("otrules.consume")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Counters:
    read: int = 0
    processed: int = 0
    rejected: int = 0
    duplicates: int = 0
    recommendations: int = 0
    batches: int = 0
    aborted: int = 0
    sweeps: int = 0
    swept: int = 0  # recommendations made by sweeps (part of recommendations)
    expired: int = 0  # patients tombstoned after retention


@dataclass
class _Batch:
    offsets: dict[TopicPartition, OffsetAndMetadata] = field(default_factory=dict)
    first: dict[TopicPartition, int] = field(default_factory=dict)
    snapshots: dict[tuple[int, str], bytes | None] = field(default_factory=dict)  # (partition, patient) -> before


class Service(ConsumerRebalanceListener):
    """Consumes ot.events, produces recommendations exactly once."""

    def __init__(self, settings: KafkaSettings, engine: Engine, clock: Callable[[], str] = utc_now) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.counters = Counters()
        self.stores: dict[int, StateStore] = {}
        self._to_restore: set[int] = set()
        self._to_sweep: set[int] = set()  # restored partitions are swept straight away
        self._last_sweep = time.monotonic()
        self._stop = threading.Event()
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Finish the current batch, then close (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> Counters:
        s = self.settings
        ensure_topics(s)
        common = {"bootstrap_servers": s.bootstrap_servers, **s.client}
        self.producer = KafkaProducer(transactional_id=s.transactional_id, enable_idempotence=True, acks="all",
                                      linger_ms=5, transaction_timeout_ms=s.transaction_timeout_ms,
                                      kafka_client=RetryingNetClient, **common)
        self.producer.init_transactions()  # fences and aborts a previous incarnation of this instance
        self.consumer = KafkaConsumer(group_id=s.group_id, enable_auto_commit=False, isolation_level="read_committed",
                                      auto_offset_reset="earliest", max_poll_records=s.batch_max_records,
                                      session_timeout_ms=s.session_timeout_ms, client_id=f"otrules-{s.instance_id}",
                                      **common)
        self.consumer.subscribe([s.input_topic], listener=self)
        log.info("started", group=s.group_id, instance=s.instance_id, input=s.input_topic)
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            self._close()
        return self.counters

    def _close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.stores.clear()
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
        if self.producer is not None:
            self.producer.close()
        log.info("stopped", **vars(self.counters))

    # ------------------------------------------------------------ rebalancing

    def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            store = self.stores.pop(tp.partition, None)
            if store is not None:
                store.close()
            self._to_restore.discard(tp.partition)
        if revoked:
            log.info("partitions revoked", partitions=sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            self._to_restore.add(tp.partition)

    def on_partitions_lost(self, lost: Any) -> None:
        self.on_partitions_revoked(lost)

    def _new_store(self, partition: int) -> StateStore:
        if self.settings.store == "sqlite":
            return SqliteStore(self.settings.state_dir / self.settings.group_id / f"partition-{partition}.sqlite")
        return MemoryStore()

    def _restore(self, partitions: set[int]) -> None:
        """Load each partition's patients from its changelog partition, up to the end."""
        s = self.settings
        started = time.monotonic()
        restorer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
                                 isolation_level="read_committed", client_id=f"otrules-restore-{s.instance_id}",
                                 **s.client)
        try:
            tps = [TopicPartition(s.changelog_topic, p) for p in sorted(partitions)]
            restorer.assign(tps)
            restorer.seek_to_beginning(*tps)
            end = restorer.end_offsets(tps)
            for p in partitions:
                self.stores[p] = self._new_store(p)
            records = 0
            remaining = {tp for tp in tps if restorer.position(tp) < end[tp]}
            while remaining:
                for tp, messages in restorer.poll(timeout_ms=200).items():
                    for msg in messages:
                        self.stores[tp.partition].put_raw(msg.key.decode(), msg.value)
                        records += 1
                remaining = {tp for tp in remaining if restorer.position(tp) < end[tp]}
        finally:
            restorer.close()
        log.info("restored", partitions=sorted(partitions), records=records,
                 seconds=round(time.monotonic() - started, 3))

    # ------------------------------------------------------------ the loop

    def _step(self) -> None:
        assert self.consumer is not None and self.producer is not None
        polled = self.consumer.poll(timeout_ms=self.settings.batch_max_ms, max_records=self.settings.batch_max_records)
        if self._to_restore:
            pending, self._to_restore = set(self._to_restore), set()
            self._restore(pending)
            self._to_sweep |= pending
        interval = self.settings.sweep_interval_s
        if interval > 0 and time.monotonic() - self._last_sweep >= interval:
            self._to_sweep |= set(self.stores)
        if interval > 0 and self._to_sweep:
            partitions, self._to_sweep = sorted(self._to_sweep & set(self.stores)), set()
            self._sweep(partitions)
        if not polled:
            return
        batch = _Batch()
        started = time.monotonic()
        before = self.counters.read, self.counters.recommendations
        self.producer.begin_transaction()
        try:
            for tp, messages in polled.items():
                batch.first[tp] = messages[0].offset
                for msg in messages:
                    self._handle(tp, msg, batch)
                batch.offsets[tp] = OffsetAndMetadata(messages[-1].offset + 1, "", -1)
            for (partition, patient), _ in batch.snapshots.items():
                state = self.stores[partition].get(patient)
                if state is not None:
                    self.producer.send(self.settings.changelog_topic, key=patient.encode(), value=encode(state),
                                       partition=partition)
            self.producer.send_offsets_to_transaction(batch.offsets, self.consumer.group_metadata())
            self.producer.commit_transaction()
            self.counters.batches += 1
            log.info("committed", partitions=sorted(tp.partition for tp in polled),
                     events=self.counters.read - before[0], recommendations=self.counters.recommendations - before[1],
                     ms=round((time.monotonic() - started) * 1000, 1))
        except Exception:
            log.exception("batch failed; aborting and rewinding")
            self._abort(batch)

    def _sweep(self, partitions: list[int]) -> None:
        """Advance the clock to now over the owned plans, in one transaction of its own.

        Recommendations from the sweep, the changed states and the tombstones
        of expired patients commit together; a failed sweep rolls back and is
        retried at the next interval."""
        assert self.producer is not None
        if not partitions:
            return
        self._last_sweep = time.monotonic()
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        retention = dt.timedelta(days=self.settings.retention_days)
        batch = _Batch()
        made = expired = 0
        self.producer.begin_transaction()
        try:
            for partition in partitions:
                store = self.stores[partition]
                for patient in store.patient_ids():
                    state = store.get(patient)
                    if state is None:
                        continue
                    before = encode(state)
                    recs = self.engine.sweep(state, now)
                    gone = self.engine.expire(state, now, retention)
                    after = None if gone else encode(state)
                    if after == before:
                        continue
                    batch.snapshots[(partition, patient)] = before
                    for rec in recs:
                        self._send_recommendation(rec)
                    made += len(recs)
                    if gone:
                        store.put_raw(patient, None)
                        expired += 1
                    else:
                        store.put(state)
                    self.producer.send(self.settings.changelog_topic, key=patient.encode(), value=after,
                                       partition=partition)
            self.producer.commit_transaction()
        except Exception:
            log.exception("sweep failed; aborting")
            self.producer.abort_transaction()
            for (partition, patient), before in batch.snapshots.items():
                if partition in self.stores:
                    self.stores[partition].put_raw(patient, before)
            return
        self.counters.sweeps += 1
        self.counters.swept += made
        self.counters.expired += expired
        log.info("swept", partitions=partitions, at=now.isoformat(), recommendations=made, expired=expired)

    def _send_recommendation(self, rec: Any) -> None:
        assert self.producer is not None
        rec = rec.model_copy(update={"emitted_at": self.clock()})
        self.producer.send(self.settings.output_topic, key=rec.patient_id.encode(), value=rec.to_json().encode(),
                           headers=cloudevents.headers(rec))
        self.counters.recommendations += 1

    def _handle(self, tp: TopicPartition, msg: Any, batch: _Batch) -> None:
        assert self.producer is not None
        self.counters.read += 1
        try:
            event = parse_event(msg.value or b"", self.engine.catalogue)
        except EventRejected as exc:
            self._dead_letter(tp, msg, exc.reason)
            return
        store = self.stores[tp.partition]
        key = (tp.partition, event.patient_id)
        state = store.get(event.patient_id)
        if key not in batch.snapshots:
            batch.snapshots[key] = None if state is None else encode(state)
        if state is None:
            state = PatientState(event.patient_id)
        outcome = self.engine.process(state, event)
        store.put(state)
        if outcome.duplicate:
            self.counters.duplicates += 1
            return
        self.counters.processed += 1
        for rec in outcome.recommendations:
            self._send_recommendation(rec)

    def _dead_letter(self, tp: TopicPartition, msg: Any, reason: str) -> None:
        assert self.producer is not None
        self.counters.rejected += 1
        headers = list(msg.headers or []) + [
            ("otrules.reason", reason.encode()),
            ("otrules.source.topic", tp.topic.encode()),
            ("otrules.source.partition", str(tp.partition).encode()),
            ("otrules.source.offset", str(msg.offset).encode()),
        ]
        self.producer.send(self.settings.dlq_topic, key=msg.key, value=msg.value, headers=headers)
        log.warning("rejected", topic=tp.topic, partition=tp.partition, offset=msg.offset, reason=_no_values(reason))

    def _abort(self, batch: _Batch) -> None:
        assert self.consumer is not None and self.producer is not None
        self.counters.aborted += 1
        try:
            self.producer.abort_transaction()
        except Exception:
            log.exception("abort failed")
            raise
        for (partition, patient), before in batch.snapshots.items():
            store = self.stores.get(partition)
            if store is not None:
                store.put_raw(patient, before)
        for tp, offset in batch.first.items():
            self.consumer.seek(tp, offset)


def _no_values(reason: str) -> str:
    """The field of a rejection without its value (values may be scores or identifiers)."""
    return reason.split(":", 1)[0]
