"""The loop of `otrules consume`: poll, run the event core inside a transaction, commit.

The pieces are separate, as in quix-streams: `settings` (every option, once),
`changelog` (restoring and sizing state), `transaction` (what one transaction
sends and how it rolls back, and the size-limited sink), and this loop, which
uses them for batches and sweeps alike.

Exactly once: one Kafka transaction per batch (bounded by count and time)
carries the recommendations, the dead letters, the changed patients' states
on the compacted changelog, and the consumed offsets
(`send_offsets_to_transaction(offsets, consumer.group_metadata())`, KIP-447).

A failure isolates one event, never a partition. The fast path runs a batch
with `Fault.RAISE`; when anything fails, the batch is aborted (state, tally and
offsets rolled back; a fenced producer replaced) and read again with
`Fault.ISOLATE` up to where it ended: each event then runs against a snapshot
of its patient and is dead-lettered on its own if the engine fails on it, its
output is too large, or its patient's state would outgrow the record limit.
Outputs the broker refused name their events, which the retry dead-letters.
Retries back off; a failure that names no event (the broker is away) is
retried, never dead-lettered. So k poison events cost one abort, not 2^k.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError

from otrules.consumers.core import EventCore, EventFailed, Fault, Record, Rejection, Tally
from otrules.consumers.fhir import FhirMapper, load_code_table, make_mapper
from otrules.consumers.jsonl import utc_now
from otrules.consumers.kafka.changelog import Changelog
from otrules.consumers.kafka.connect import KafkaRefused, KafkaUnreachable, access_refusal
from otrules.consumers.kafka.health import Health
from otrules.consumers.kafka.join_guard import keep_join_driven, membership
from otrules.consumers.kafka.metrics import Metrics
from otrules.consumers.kafka.netclient import RetryingNetClient
from otrules.consumers.kafka.open_table import fit_row, open_row
from otrules.consumers.kafka.settings import CLIENT_BLOCK_MS, KafkaSettings
from otrules.consumers.kafka.stores import MemoryStore, SqliteStore, StateStore
from otrules.consumers.kafka.topics import ensure_topics, record_limits
from otrules.consumers.kafka.transaction import (
    BatchTransaction,
    BatchView,
    Interrupted,
    KafkaSink,
    Limits,
    abort,
    close_producer,
    commit,
    record_size,
    send_offsets,
)
from otrules.engine import CompiledRuleset, Engine
from otrules.schemas import Catalogue, OtrulesError, parse_duration

log = structlog.get_logger("otrules.consume")

STOP_GRACE_S = 5.0  # after a stop request, how long a commit or abort may still wait for the broker
UNPLACED_WARN_S = 60.0  # owned partitions without a fetch position this long: one warning


class StateTooLarge(OtrulesError):
    """A patient's state would not fit in one changelog record (found at commit; the careful
    retry finds the event that grew it)."""


class Service(ConsumerRebalanceListener):
    """Consumes ot.events, produces recommendations exactly once."""

    def __init__(self, settings: KafkaSettings, engine: Engine, clock: Callable[[], str] = utc_now,
                 metrics: Metrics | None = None, health: Health | None = None,
                 stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.health = health or Health(settings.max_unstable_seconds)
        self.metrics.set_rulesets(list(engine.rulesets))
        self.tally = Tally()
        self.batches = self.aborted = self.sweeps = 0
        self.changelog = Changelog(settings)
        self.stores: dict[int, StateStore] = {}
        self.limits = Limits(settings.max_record_bytes, settings.max_record_bytes, settings.max_record_bytes)
        self._next_rules: tuple[list[CompiledRuleset], Catalogue] | None = None  # validated by the watcher
        self._joined = False
        self._last_lag = 0.0
        self._unplaced_since: float | None = None  # since when owned partitions have had no fetch position
        self._unplaced_warned = False
        self._to_restore: set[int] = set()
        self._to_sweep: set[int] = set()  # restored partitions are swept straight away
        self._careful: dict[TopicPartition, int] = {}  # read with Fault.ISOLATE below these offsets
        self._refused: dict[tuple[int, int], str] = {}  # (partition, offset) -> error: outputs the broker refused
        self._failures = 0  # consecutive failed transactions: the backoff grows with them
        self._last_sweep = time.monotonic()
        self._stop = stop or threading.Event()
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        # FHIR input's code table, read at start-up (a broken one stops the service before it joins)
        self._codes = (None if settings.input_format == "otrules" else
                       load_code_table(settings.fhir_codes, engine.catalogue))
        self._mapper: FhirMapper | None = None

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
            engine = Engine(rulesets, catalogue, self.engine.reorder_window)
        except Exception as exc:  # compiled fine in the child; refuse rather than stop
            self.refuse_rulesets(f"could not be built: {type(exc).__name__}")
            return
        self.engine = engine
        self.metrics.set_rulesets(rulesets)
        self.metrics.reloads.labels("applied").inc()
        log.info("rules reloaded", rulesets=[f"{rs.name} {rs.version} {rs.digest[:19]}" for rs in rulesets])

    def _fhir_mapper(self) -> FhirMapper | None:
        """One mapping per engine (a rules reload may bring another catalogue)."""
        if self._codes is None:
            return None
        if self._mapper is None or self._mapper.catalogue is not self.engine.catalogue:
            self._mapper = make_mapper(self.engine.catalogue, self._codes, self.settings.fhir_validation)
        return self._mapper

    def run(self) -> Tally:
        """Start (retrying while Kafka is away, up to --connect-timeout), then loop until stopped.
        KafkaRefused, at once, when the cluster refuses what otrules asks of it (an ACL, a login)."""
        try:
            if self._start():
                while not self._stop.is_set():
                    self._step()
        except KafkaError as exc:  # e.g. joining a consumer group this principal may not read
            self._refuse(exc)
            raise
        finally:
            self._close()
        return self.tally

    def _refuse(self, exc: BaseException) -> None:
        """KafkaRefused when retrying cannot help (an authorization failure, a failed login)."""
        why = access_refusal(exc, self.settings)
        if why is not None:
            log.error("kafka refused the connection", bootstrap_servers=self.settings.bootstrap_servers,
                      reason=why)
            raise KafkaRefused(self.settings.bootstrap_servers, why) from None

    def _start(self) -> bool:
        """Topics, record limits, the transactional producer and the consumer. False if stopped
        first; KafkaUnreachable once --connect-timeout has passed without them."""
        s = self.settings
        started = time.monotonic()
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                ensure_topics(s)
                self.limits = record_limits(s)
                self.producer = self._new_producer()
                if self.producer is None:
                    return False
                self.consumer = keep_join_driven(KafkaConsumer(  # kafka-python 3.0.12 can drop a join
                    group_id=s.group_id, enable_auto_commit=False, isolation_level="read_committed",
                    auto_offset_reset="earliest", max_poll_records=s.batch_max_records,
                    session_timeout_ms=s.session_timeout_ms, client_id=f"otrules-{s.instance_id}",
                    bootstrap_servers=s.bootstrap_servers, **s.service_client))
                self.consumer.subscribe([s.input_topic], listener=self)
            except KafkaError as exc:
                self._close_clients()
                self._refuse(exc)  # an ACL or a login: not an outage, not retried
                waited = time.monotonic() - started
                if s.connect_timeout and waited >= s.connect_timeout:
                    log.error("kafka not reachable; giving up", bootstrap_servers=s.bootstrap_servers,
                              attempt=attempt, error=type(exc).__name__, timeout_s=s.connect_timeout)
                    raise KafkaUnreachable(s.bootstrap_servers, s.connect_timeout, type(exc).__name__, attempt) \
                        from None
                log.warning("kafka start-up failed; retrying", attempt=attempt, error=type(exc).__name__)
                self._pause(min(s.retry_backoff_max_seconds, 0.5 * 2 ** (attempt - 1)))
                continue
            log.info("started", group=s.group_id, instance=s.instance_id, input=s.input_topic,
                     max_record_bytes=vars(self.limits))
            return True
        return False

    def _new_producer(self) -> KafkaProducer | None:
        """A transactional producer under this instance's id: it fences and aborts a previous
        incarnation. Initialising waits for the transaction coordinator, in steps that watch for
        stop (None if stopped first)."""
        s = self.settings
        producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, transactional_id=s.transactional_id,
                                 enable_idempotence=True, acks="all", linger_ms=5, max_block_ms=CLIENT_BLOCK_MS,
                                 max_request_size=max(vars(self.limits).values()) + 1024,
                                 # a batch must fit the smallest topic's max.message.bytes, or the broker
                                 # refuses it whole and the client splits and retries
                                 batch_size=min(16384, min(vars(self.limits).values())),
                                 transaction_timeout_ms=s.transaction_timeout_ms, kafka_client=RetryingNetClient,
                                 **s.service_client)
        while True:
            try:
                producer.init_transactions()  # retried after a timeout, it goes on waiting for the same request
                return producer
            except KafkaTimeoutError:
                if self._stop.is_set():
                    close_producer(producer, 0)
                    return None
                log.warning("transaction coordinator not reachable; still waiting")

    def _close_clients(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):  # its LeaveGroup waits request_timeout_ms (30 s) unless bounded
                self.consumer.close(autocommit=False, timeout_ms=int(STOP_GRACE_S * 1000))
            self.consumer = None
        if self.producer is not None:
            close_producer(self.producer, STOP_GRACE_S)
            self.producer = None

    def _close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.stores.clear()
        self._close_clients()
        log.info("stopped", **self.counts())

    def counts(self) -> dict[str, int]:
        t = self.tally
        return {"read": t.read, "processed": t.processed, "rejected": t.rejected, "duplicates": t.duplicates,
                "recommendations": t.recommendations, "batches": self.batches, "aborted": self.aborted,
                "sweeps": self.sweeps, "swept": t.swept, "expired": t.expired, "dropped": t.dropped,
                "late": t.late, "skipped": t.skipped}

    # ------------------------------------------------------------ rebalancing

    def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            store = self.stores.pop(tp.partition, None)
            if store is not None:
                store.close()
            self._to_restore.discard(tp.partition)
            self._careful.pop(tp, None)
            for key in [k for k in self._refused if k[0] == tp.partition]:
                del self._refused[key]
            self.changelog.forget(tp.partition)
            for gauge in (self.metrics.patients, self.metrics.state_bytes, self.metrics.lag):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(tp.partition))
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
        started = time.monotonic()
        records = self.changelog.restore(self.stores, self._new_store, partitions, self._stop)
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
        self.metrics.state_bytes.labels(str(partition)).set(self.changelog.state_bytes(partition))

    def _observe_lag(self) -> None:
        assert self.consumer is not None
        self._last_lag = time.monotonic()
        unplaced = []
        for tp in self.consumer.assignment():
            # timeout_ms=0: never wait here. Without it kafka-python waits for the committed offsets without a
            # bound, and a group whose committed offset stays unstable (a hanging transaction: docs/operations.md,
            # "Known issues") held the loop for ever, deaf to SIGTERM; poll goes on fetching them in steps
            high, position = self.consumer.highwater(tp), self.consumer.position(tp, timeout_ms=0)
            if position is None:
                unplaced.append(tp.partition)
            elif high is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, high - position))
        self._warn_unplaced(sorted(unplaced))

    def _warn_unplaced(self, partitions: list[int]) -> None:
        """One warning when owned partitions have had no fetch position for UNPLACED_WARN_S: nothing of
        them is read (kafka-python retries reading their committed offsets without a word)."""
        if not partitions:
            self._unplaced_since, self._unplaced_warned = None, False
            return
        now = time.monotonic()
        self._unplaced_since = self._unplaced_since or now
        if not self._unplaced_warned and now - self._unplaced_since >= UNPLACED_WARN_S:
            self._unplaced_warned = True
            log.warning("owned partitions have no position: their committed offsets cannot be read, so nothing of "
                        "them is processed; with the group coordinator known, a transaction of this group that "
                        "never ended keeps them unstable (docs/operations.md, 'Known issues')",
                        partitions=partitions, seconds=round(now - self._unplaced_since, 1))

    def _update_readiness(self) -> None:
        """Ready: a stable member of the group (heartbeats answered), every assigned partition restored,
        and the transactional producer initialised (run() does that before the first poll). Alive (the
        watchdog): a stable member within --max-unstable-seconds; one error line when that fails."""
        assert self.consumer is not None
        stable, why = membership(self.consumer)
        unstable_for = self.health.unstable_for()
        change = self.health.member(stable, why)
        if change == "too long":
            log.error("not a stable consumer-group member for longer than --max-unstable-seconds; /healthz fails "
                      "so that the instance is restarted", why=why, seconds=round(unstable_for, 1),
                      max_unstable_seconds=self.settings.max_unstable_seconds, owned=len(self.consumer.assignment()))
        elif change == "stable again":
            log.info("a stable consumer-group member again; /healthz passes", seconds=round(unstable_for, 1))
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
        assert self.consumer is not None
        self.health.beat()
        self._swap_rules()
        polled = self.consumer.poll(timeout_ms=self.settings.batch_max_ms, max_records=self.settings.batch_max_records)
        if self._to_restore:
            pending, self._to_restore = set(self._to_restore), set()
            self._restore(pending)
            if self._stop.is_set():  # the restore may have been cut short: nothing runs against its stores
                return
            self._to_sweep |= pending
        interval = self.settings.sweep_interval_seconds
        if interval > 0 and time.monotonic() - self._last_sweep >= interval:
            self._to_sweep |= set(self.stores)
        if interval > 0 and self._to_sweep:
            partitions, self._to_sweep = sorted(self._to_sweep & set(self.stores)), set()
            self._sweep(partitions)
        self._update_readiness()
        if time.monotonic() - self._last_lag >= 1.0:
            self._observe_lag()
        if polled:
            self._batch(polled)

    def _begin(self) -> tuple[BatchTransaction, EventCore]:
        assert self.producer is not None
        view = BatchView(self.stores)
        sink = KafkaSink(self.producer, self.settings, self.limits, self.metrics, self.clock)
        txn = BatchTransaction(view, sink, self.tally.copy())
        core = EventCore(self.engine, view, sink, Fault.RAISE, self.tally, max_state_bytes=self.limits.changelog,
                         input_format=self.settings.input_format, fhir=self._fhir_mapper(),
                         max_future=parse_duration(self.settings.max_future))
        return txn, core

    def _batch(self, polled: dict[TopicPartition, list[Any]]) -> None:
        assert self.consumer is not None and self.producer is not None
        started = time.monotonic()
        before = self.tally.read, self.tally.recommendations
        txn, core = self._begin()
        try:
            self.producer.begin_transaction()
            for tp, messages in polled.items():
                txn.consumed(tp, messages[-1].offset)
                txn.view.partition = tp.partition
                careful_below = self._careful.get(tp, -1)
                for msg in messages:
                    record = Record(msg.value or b"", tp.topic, partition=tp.partition, offset=msg.offset,
                                    key=msg.key, keyed=True, timestamp_ms=msg.timestamp,
                                    headers=tuple(msg.headers or ()))
                    refused = self._refused.get((tp.partition, msg.offset))  # forgotten once committed
                    if refused is not None:  # its outputs failed once: they would fail again
                        core.set_aside(record, Rejection("(event)", f"refused by the broker: an output of this "
                                                                    f"event could not be published ({refused})",
                                                         "refused"))
                        continue
                    core.handle(record, Fault.ISOLATE if msg.offset < careful_below else None)
            self._write_changelog(txn)
            send_offsets(self.producer, txn.offsets, self.consumer.group_metadata(), self._stop, STOP_GRACE_S)
            committing = time.monotonic()
            commit(self.producer, self._stop, STOP_GRACE_S)
        except Exception as exc:  # whatever failed, the batch is rolled back and read again carefully
            self._abort(txn, exc, polled)
            return
        done = time.monotonic()
        self._committed(txn)
        self.metrics.commit_seconds.observe(done - committing)
        self.metrics.batch_size.observe(self.tally.read - before[0])
        wall = time.time()
        for ts in txn.sink.rec_timestamps:
            self.metrics.latency.observe(max(0.0, wall - ts / 1000))
        for tp, messages in polled.items():
            if self._careful.get(tp, -1) <= messages[-1].offset + 1:
                self._careful.pop(tp, None)
        if self._refused:
            done_below = {tp.partition: messages[-1].offset + 1 for tp, messages in polled.items()}
            self._refused = {k: v for k, v in self._refused.items() if k[1] >= done_below.get(k[0], -1)}
        log.info("committed", partitions=sorted(tp.partition for tp in polled),
                 events=self.tally.read - before[0], recommendations=self.tally.recommendations - before[1],
                 ms=round((time.monotonic() - started) * 1000, 1))

    def _write_changelog(self, txn: BatchTransaction) -> None:
        """The changed patients' states, each one record on its partition of the changelog; and
        for each whose open recommendations changed, its row of the open table (contracts.md §8),
        in the same transaction."""
        assert self.producer is not None
        for partition, patient, value in txn.changed_states():
            key = patient.encode()
            if value is not None and record_size(key, value, []) > self.limits.changelog:
                raise StateTooLarge(f"partition {partition}: a state of {len(value)} bytes")
            self.producer.send(self.settings.changelog_topic, key=key, value=value, partition=partition)
            self.changelog.written(partition, patient, value)
            row = open_row(value)
            if row != open_row(txn.view.before.get((partition, patient))):
                self.producer.send(self.settings.open_topic, key=key, value=fit_row(row, self.limits.output))

    def _committed(self, txn: BatchTransaction) -> None:
        self.batches += 1
        self._failures = 0
        for partition in {p for p, _ in txn.view.written}:
            self._observe_state(partition)
        m = self.metrics
        for name, counter in (("dropped", m.state_dropped), ("late", m.late), ("unpublished", m.unpublished),
                              ("sweep_failures", m.sweep_failures), ("retracted", m.retractions.labels("applied")),
                              ("retractions_ignored", m.retractions.labels("ignored"))):
            n = getattr(self.tally, name) - getattr(txn.counted, name)
            if n:
                counter.inc(n)
        for (kind, outcome), n in (self.tally.by_type - txn.counted.by_type).items():
            self.metrics.events.labels(kind, outcome).inc(n)
        for why, n in (self.tally.skipped_by - txn.counted.skipped_by).items():
            self.metrics.skipped.labels(why).inc(n)
        for why, n in (self.tally.unfollowed - txn.counted.unfollowed).items():
            self.metrics.unfollowed.labels(why).inc(n)
        for why, n in (self.tally.rejected_by - txn.counted.rejected_by).items():  # counted once, at commit
            self.metrics.dead_letters.labels(why).inc(n)
            self.metrics.events.labels(why, "rejected").inc(n)

    def _abort(self, txn: BatchTransaction, exc: BaseException, polled: dict[TopicPartition, list[Any]] | None) -> None:
        """Roll back everything of the transaction, then decide how its records are read again."""
        assert self.consumer is not None and self.producer is not None
        self.aborted += 1
        self._failures += 1
        self.metrics.aborted.inc()
        self.tally = txn.counted  # what was read in it will be read again: count it when it commits
        refused = txn.sink.failed_records()
        self._refused.update(refused)
        attributed = isinstance(exc, (EventFailed, StateTooLarge)) or bool(refused)
        self.metrics.retries.labels("yes" if attributed else "no").inc()
        # class names only: an exception's text may carry an identifier or a score
        where = exc.record.where if isinstance(exc, EventFailed) else None
        if isinstance(exc, Interrupted):
            log.info("stopping while the broker is away; the open transaction is left uncommitted")
        else:
            log.error("batch rolled back; reading it again event by event", error=type(exc).__name__,
                      cause=type(exc.__cause__).__name__ if exc.__cause__ else None,
                      kind=exc.rejection.kind if isinstance(exc, EventFailed) else None,
                      offset=where and where.rsplit("@", 1)[-1], refused=len(refused), attempt=self._failures)
        log.debug("batch failure", exc_info=exc)
        txn.restore_states()
        if polled is not None:
            for tp, messages in polled.items():
                if tp in self.consumer.assignment():
                    self._careful[tp] = max(self._careful.get(tp, -1), messages[-1].offset + 1)
                    self.consumer.seek(tp, messages[0].offset)
        if isinstance(exc, Interrupted):
            return  # stopping while the broker is away: the open transaction never becomes visible
        try:
            abort(self.producer, self._stop, STOP_GRACE_S)
        except Interrupted:
            return
        except Exception as abort_error:
            # The producer is unusable (fenced, or its state machine is stuck after an
            # outage): a new one with the same transactional id fences it and aborts
            # its open transaction, so nothing of this batch becomes visible.
            log.warning("abort failed; replacing the transactional producer", error=type(abort_error).__name__)
            self._replace_producer()
        self._pause(self._backoff())

    def _replace_producer(self) -> None:
        """Until a new producer is initialised, or the service is stopped (the cluster may be away)."""
        if self.producer is not None:
            close_producer(self.producer, STOP_GRACE_S)
        self.producer = None
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                self.producer = self._new_producer()
                return
            except KafkaError as exc:
                log.warning("could not replace the transactional producer; retrying", attempt=attempt,
                            error=type(exc).__name__)
                self._pause(min(self.settings.retry_backoff_max_seconds, 0.5 * 2 ** (attempt - 1)))

    def _pause(self, seconds: float) -> None:
        """Sleep in short slices, watching for stop. Not `Event.wait`: a signal handler that sets
        the event while this thread holds the event's lock would deadlock."""
        until = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < until:
            time.sleep(min(0.05, until - time.monotonic()))

    def _backoff(self) -> float:
        """The first retry is immediate (the careful pass isolates a poison event at once);
        later ones wait 0.1 s, doubling up to --retry-backoff-max-seconds."""
        if self._failures <= 1:
            return 0.0
        return min(self.settings.retry_backoff_max_seconds, 0.1 * 2 ** (self._failures - 2))

    def _sweep(self, partitions: list[int]) -> None:
        """Advance the clock to now over the owned plans, in one transaction of its own.

        Recommendations from the sweep, the changed states and the tombstones of
        expired patients commit together; a failed sweep rolls back like a batch and
        is retried at the next interval."""
        self._last_sweep = time.monotonic()
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        retention = dt.timedelta(days=self.settings.retention_days)
        before = self.tally.recommendations, self.tally.expired, self.tally.sweep_failures
        txn, core = self._begin()
        view = txn.view
        try:
            assert self.producer is not None
            self.producer.begin_transaction()
            for partition in partitions:
                view.partition = partition
                core.sweep(now, retention, states=view, changes=True)
            self._write_changelog(txn)
            commit(self.producer, self._stop, STOP_GRACE_S)
        except Exception as exc:
            self._abort(txn, exc, None)
            return
        self._committed(txn)
        self.sweeps += 1
        self.metrics.sweeps.inc()
        failed = self.tally.sweep_failures - before[2]
        (log.warning if failed else log.info)(
            "swept", partitions=partitions, at=now.isoformat(), recommendations=self.tally.recommendations - before[0],
            expired=self.tally.expired - before[1], failed_patients=failed)
