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
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import MemberState, OffsetAndMetadata

from otrules.consumers.jsonl import utc_now
from otrules.consumers.kafka import cloudevents, redact
from otrules.consumers.kafka.netclient import RetryingNetClient
from otrules.consumers.kafka.health import Health
from otrules.consumers.kafka.metrics import Metrics
from otrules.consumers.kafka.settings import KafkaSettings
from otrules.consumers.kafka.stores import MemoryStore, SqliteStore, StateStore, encode
from otrules.consumers.kafka.topics import ensure_topics
from otrules.engine import CompiledRuleset, Engine, PatientState
from otrules.schemas import Catalogue, EventRejected, parse_event

log = structlog.get_logger("otrules.consume")


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
    rec_timestamps: list[int] = field(default_factory=list)  # Kafka timestamps (ms) of events that recommended
    counted: Counters = field(default_factory=Counters)  # the counters before it: an abort puts them back


class _EventFailed(Exception):
    """The engine raised on one event: the batch is rolled back, and on the retry that
    event alone is dead-lettered (a poison event must not stop the partition for good)."""

    def __init__(self, partition: int, offset: int, error: BaseException) -> None:
        super().__init__(f"partition {partition} offset {offset}: {type(error).__name__}")
        self.partition, self.offset, self.error = partition, offset, error


class Service(ConsumerRebalanceListener):
    """Consumes ot.events, produces recommendations exactly once."""

    def __init__(self, settings: KafkaSettings, engine: Engine, clock: Callable[[], str] = utc_now,
                 metrics: Metrics | None = None, health: Health | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.metrics.set_rulesets(list(engine.rulesets))
        self.counters = Counters()
        self._next_rules: tuple[list[CompiledRuleset], Catalogue] | None = None  # validated by the watcher
        self._joined = False
        self._sizes: dict[int, dict[str, int]] = {}  # partition -> patient -> serialised bytes
        self._last_lag = 0.0
        self.stores: dict[int, StateStore] = {}
        self._to_restore: set[int] = set()
        self._to_sweep: set[int] = set()  # restored partitions are swept straight away
        self._poisoned: dict[tuple[int, int], str] = {}  # (partition, offset) -> error class, for the retry
        self._last_sweep = time.monotonic()
        self._stop = threading.Event()
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Finish the current batch, then close (safe from a signal handler)."""
        self._stop.set()

    def offer_rulesets(self, rulesets: list[CompiledRuleset], catalogue: Catalogue) -> None:
        """Validated rules from the watcher thread; they go live between batches."""
        self._next_rules = (rulesets, catalogue)

    def refuse_rulesets(self, why: str) -> None:
        self.metrics.reloads.labels("refused").inc()
        log.error("rules reload refused; the live rules stay", reason=why)

    def _swap_rules(self) -> None:
        offered, self._next_rules = self._next_rules, None
        if offered is None:
            return
        rulesets, catalogue = offered
        try:
            engine = Engine(rulesets, catalogue)
        except Exception as exc:  # compiled fine in the child; refuse rather than stop
            self.refuse_rulesets(f"could not be built: {exc}")
            return
        self.engine = engine
        self.metrics.set_rulesets(rulesets)
        self.metrics.reloads.labels("applied").inc()
        log.info("rules reloaded", rulesets=[f"{rs.name} {rs.version} {rs.digest[:19]}" for rs in rulesets])

    def run(self) -> Counters:
        s = self.settings
        ensure_topics(s)
        common = {"bootstrap_servers": s.bootstrap_servers, **s.client}
        self.producer = self._new_producer()
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

    def _new_producer(self) -> KafkaProducer:
        s = self.settings
        producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, transactional_id=s.transactional_id,
                                 enable_idempotence=True, acks="all", linger_ms=5,
                                 transaction_timeout_ms=s.transaction_timeout_ms, kafka_client=RetryingNetClient,
                                 **s.client)
        producer.init_transactions()  # fences and aborts a previous incarnation of this instance
        return producer

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
            for poisoned in [k for k in self._poisoned if k[0] == tp.partition]:
                del self._poisoned[poisoned]
            self._sizes.pop(tp.partition, None)
            for gauge in (self.metrics.patients, self.metrics.state_bytes, self.metrics.lag):
                try:
                    gauge.remove(str(tp.partition))
                except KeyError:
                    pass
        if revoked:
            log.info("partitions revoked", partitions=sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._joined = True
        for tp in assigned:
            self._to_restore.add(tp.partition)

    def on_partitions_lost(self, lost: Any) -> None:
        self.on_partitions_revoked(lost)

    def _new_store(self, partition: int) -> StateStore:
        if self.settings.store == "sqlite":
            return SqliteStore(self.settings.state_dir / self.settings.group_id / f"partition-{partition}.sqlite")
        return MemoryStore(hot=self._decoded_share(len(self.stores) + 1))

    def _decoded_share(self, partitions: int) -> int:
        return max(1, self.settings.decoded_states // max(1, partitions))

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
                    sizes = self._sizes.setdefault(tp.partition, {})
                    store = self.stores[tp.partition]
                    with store.bulk():
                        for msg in messages:
                            patient = msg.key.decode()
                            store.put_raw(patient, msg.value)
                            if msg.value is None:
                                sizes.pop(patient, None)
                            else:
                                sizes[patient] = len(msg.value)
                    records += len(messages)
                remaining = {tp for tp in remaining if restorer.position(tp) < end[tp]}
        finally:
            restorer.close()
        share = self._decoded_share(len(self.stores))  # one budget of decoded states, whatever is owned
        for store in self.stores.values():
            if isinstance(store, MemoryStore):
                store.resize(share)
        seconds = time.monotonic() - started
        self.metrics.restore_seconds.observe(seconds)
        for p in partitions:
            self._observe_state(p)
        log.info("restored", partitions=sorted(partitions), records=records, seconds=round(seconds, 3))

    # ------------------------------------------------------------ observation

    def _observe_state(self, partition: int) -> None:
        store = self.stores.get(partition)
        if store is None:
            return
        self.metrics.patients.labels(str(partition)).set(store.patients())
        self.metrics.state_bytes.labels(str(partition)).set(sum(self._sizes.get(partition, {}).values()))

    def _observe_lag(self) -> None:
        assert self.consumer is not None
        self._last_lag = time.monotonic()
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, high - self.consumer.position(tp)))

    def _update_readiness(self) -> None:
        """Ready: a stable member of the group (heartbeats answered), every assigned partition restored,
        and the transactional producer initialised (run() does that before the first poll)."""
        assert self.consumer is not None
        stable = self.consumer.group_metadata().state == MemberState.STABLE
        if not self._joined:
            self.health.ready, self.health.reason = False, "waiting for partitions from the consumer group"
        elif self._to_restore:
            self.health.ready, self.health.reason = False, "restoring state"
        elif not stable:
            self.health.ready, self.health.reason = False, "not a stable member of the consumer group"
        else:
            self.health.ready, self.health.reason = True, "ready"

    # ------------------------------------------------------------ the loop

    def _step(self) -> None:
        assert self.consumer is not None and self.producer is not None
        self.health.beat()
        self._swap_rules()
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
        self._update_readiness()
        if time.monotonic() - self._last_lag >= 1.0:
            self._observe_lag()
        if not polled:
            return
        batch = _Batch(counted=replace(self.counters))
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
                    value = encode(state)
                    self._sizes.setdefault(partition, {})[patient] = len(value)
                    self.producer.send(self.settings.changelog_topic, key=patient.encode(), value=value,
                                       partition=partition)
            self.producer.send_offsets_to_transaction(batch.offsets, self.consumer.group_metadata())
            committing = time.monotonic()
            self.producer.commit_transaction()
            done = time.monotonic()
            self.metrics.commit_seconds.observe(done - committing)
            self.metrics.batch_size.observe(self.counters.read - before[0])
            wall = time.time()
            for ts in batch.rec_timestamps:
                self.metrics.latency.observe(max(0.0, wall - ts / 1000))
            for partition in {p for p, _ in batch.snapshots}:
                self._observe_state(partition)
            self.counters.batches += 1
            log.info("committed", partitions=sorted(tp.partition for tp in polled),
                     events=self.counters.read - before[0], recommendations=self.counters.recommendations - before[1],
                     ms=round((time.monotonic() - started) * 1000, 1))
        except _EventFailed as failed:
            # class name only: an exception's text may carry an identifier or a score
            log.error("event failed in the engine; batch rolled back, the event will be dead-lettered",
                      partition=failed.partition, offset=failed.offset, error=type(failed.error).__name__)
            log.debug("engine failure", exc_info=failed.error)
            self._poisoned[(failed.partition, failed.offset)] = type(failed.error).__name__
            self._abort(batch)
        except Exception:
            log.exception("batch failed; aborting and rewinding")
            self._abort(batch)

    def _sweep(self, partitions: list[int]) -> None:  # noqa: C901 - one transaction, kept in one place
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
        batch = _Batch(counted=replace(self.counters))
        made = expired = 0
        self.producer.begin_transaction()
        try:
            for partition in partitions:
                store = self.stores[partition]
                for patient in store.patient_ids():
                    state = store.get(patient, keep=False)  # most are unchanged: no decoded copy kept
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
                        self._sizes.get(partition, {}).pop(patient, None)
                        expired += 1
                    else:
                        store.put_raw(patient, after)
                    self.producer.send(self.settings.changelog_topic, key=patient.encode(), value=after,
                                       partition=partition)
            self.producer.commit_transaction()
        except Exception:
            log.exception("sweep failed; aborting")
            self.counters = replace(batch.counted, aborted=self.counters.aborted + 1)
            self.producer.abort_transaction()
            for (partition, patient), before in batch.snapshots.items():
                if partition in self.stores:
                    self.stores[partition].put_raw(patient, before)
            return
        self.counters.sweeps += 1
        self.metrics.sweeps.inc()
        self.counters.swept += made
        self.counters.expired += expired
        log.info("swept", partitions=partitions, at=now.isoformat(), recommendations=made, expired=expired)

    def _send_recommendation(self, rec: Any) -> None:
        assert self.producer is not None
        rec = rec.model_copy(update={"emitted_at": self.clock()})
        self.producer.send(self.settings.output_topic, key=rec.patient_id.encode(), value=rec.to_json().encode(),
                           headers=cloudevents.headers(rec))
        self.counters.recommendations += 1
        self.metrics.recommendations.labels(rec.kind, rec.rule.id).inc()

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
        error = self._poisoned.pop((tp.partition, msg.offset), None)
        if error is not None:
            self._dead_letter(tp, msg, f"internal error: the rules engine failed on this event ({error}); "
                                       "it was rolled back and set aside")
            return
        try:
            outcome = self.engine.process(state, event)
        except Exception as exc:
            raise _EventFailed(tp.partition, msg.offset, exc) from exc
        store.put(state)
        if outcome.duplicate:
            self.counters.duplicates += 1
            self.metrics.events.labels(event.type, "duplicate").inc()
            return
        self.counters.processed += 1
        self.metrics.events.labels(event.type, "processed").inc()
        for rec in outcome.recommendations:
            self._send_recommendation(rec)
            batch.rec_timestamps.append(msg.timestamp)

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
        self.metrics.events.labels("invalid", "rejected").inc()
        self.metrics.dead_letters.inc()
        log.warning("rejected", topic=tp.topic, partition=tp.partition, offset=msg.offset, field=_no_values(reason),
                    key=redact.hash_id(msg.key))

    def _abort(self, batch: _Batch) -> None:
        assert self.consumer is not None and self.producer is not None
        # what was read in this batch will be read again: count it when it commits
        self.counters = replace(batch.counted, aborted=self.counters.aborted + 1)
        self.metrics.aborted.inc()
        try:
            self.producer.abort_transaction()
        except Exception:
            # The producer is unusable (fenced, or its state machine is stuck after an
            # outage): a new one with the same transactional id fences it and aborts
            # its open transaction, so nothing of this batch becomes visible.
            log.warning("abort failed; replacing the transactional producer", exc_info=True)
            try:
                self.producer.close(timeout=5)
            except Exception:
                pass
            self.producer = self._new_producer()
        for (partition, patient), before in batch.snapshots.items():
            store = self.stores.get(partition)
            if store is not None:
                store.put_raw(patient, before)
        for tp, offset in batch.first.items():
            self.consumer.seek(tp, offset)


def _no_values(reason: str) -> str:
    """The field of a rejection without its value (values may be scores or identifiers)."""
    return reason.split(":", 1)[0]
