"""Changelog restore time for many patients, through a real Kafka broker.

When an instance of `otrules consume` is assigned partitions (start-up,
scale-out, another instance's crash), it reads their patients back from the
compacted changelog before it processes any of their events, and it is not
ready until then. This measures how long that takes for `--patients` patients
(100,000 by default), against the plain cost of reading the same records:

    .venv/bin/python bench/state_restore.py [--patients 100000] [--runs 3] [--store memory|sqlite|both]

What is measured, and how:

- States are real, then cloned. `otrules.synthetic.generate(patients=5000)`
  (`--real-patients`) runs through the engine in `consumers.Pipeline`, as in
  `otrules run`. Each of those patients has a whole episode behind it, so its
  state is about as large as a state gets, and the restore is timed at its
  slowest. State n of `--patients` is real state n mod 5,000 rebuilt for
  patient n: patient id, plan ids, event ids (remembered through the state's
  own `remember`) and throttle keys all embed the patient number, and each one
  gets the new number. Rebuilding a real state under its own id must give back
  its exact bytes, which is checked for each one, so states 0-4,999 are the
  real ones.
- The states are encoded with the service's changelog encoding
  (`stores.encode`) and produced, key = patient id, to a changelog topic made
  by the service's `ensure_topics` (compacted, `KafkaSettings.partitions`
  partitions). The default partitioner puts each patient in the partition its
  events would go to, which is where the service writes the state. Records go
  out in transactions of `batch_max_records`, as the service commits them, so
  the log holds commit markers like a real changelog. A changelog with one
  record per patient is fully compacted; one that is not holds more records.
- The restore is the service's code. A `Service` is built from `KafkaSettings`,
  as `otrules consume` builds it (it connects to nothing until `run`). Its
  `_restore(partitions)` is the method its poll loop calls for newly assigned
  partitions, called here for all of them, and none of it is copied. The time
  runs from the call to its return: the restorer connects, reads every
  partition to its end and fills one store per partition.
- The baseline is measured in the same run: a kafka-python KafkaConsumer made
  with the restorer's arguments (read_committed, otherwise the default fetch
  settings) reads the same partitions from the beginning to their end offsets,
  polling the same way, and drops the values.
- First access is timed on its own. The memory store keeps the restored bytes
  and decodes a patient at its first `get`. It keeps only the most recently
  used patients decoded (`consumers/states.py`) and encodes again each one it
  lets go. The sqlite store decodes at every `get`. `store.get` for every patient is timed, and a sample is checked to
  encode back to the bytes that were produced.
- Each measurement runs in a fresh Python process, so its memory figures are
  its own: the peak RSS of that process, and for a restore the growth of its
  RSS from just before the restore to just after it, and to just after first
  access. One unmeasured read comes first, while the broker's log cleaner
  makes its first pass over what was just written. Then each run measures the
  baseline, memory and sqlite, and each of the three goes first in turn.
  Medians are over `--runs`.
- kafka-python checks every fetched batch's CRC32C. Without the `crc32c`
  package that check runs in pure Python and takes most of the read time, both
  the baseline's and the restore's, so the report says which one ran.

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts scripts/kafka/broker.py
(127.0.0.1 only). The topics made here are deleted at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from otrules import defaults, synthetic
from otrules.consumers import DeadLetterSink, Pipeline, Record
from otrules.consumers.kafka.service import Service
from otrules.consumers.kafka.settings import KafkaSettings
from otrules.consumers.kafka.stores import encode
from otrules.consumers.kafka.topics import ensure_topics
from otrules.engine import Engine, PatientState

if TYPE_CHECKING:
    from broker import Broker  # scripts/kafka/broker.py, imported when needed (see start_broker)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "kafka"))

T = TypeVar("T")
SAMPLE = 1000  # produced values kept to check that first access gives back the same states


@dataclasses.dataclass
class Changelog:
    records: int = 0
    transactions: int = 0
    value_bytes: int = 0
    key_bytes: int = 0
    sizes: list[int] = dataclasses.field(default_factory=list)
    sample: dict[str, bytes] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Baseline:
    seconds: float
    records: int
    peak_rss_mib: float


@dataclasses.dataclass
class Restored:
    seconds: float
    first_access_seconds: float
    rss_after_restore_mib: float  # growth over the RSS before the restore
    rss_after_first_access_mib: float
    peak_rss_mib: float


# ---------------------------------------------------------------- states


@dataclasses.dataclass(frozen=True)
class RealPatient:
    state: PatientState
    event_ids: list[str]  # the ids of the events it was built from, in order (the state remembers them)


def real_states(patients: int, seed: int) -> tuple[list[RealPatient], int]:
    """Every event of `patients` generated patients through the engine: the patients by id, and the event count."""
    engine = Engine(defaults.rulesets(), defaults.catalogue())
    pipeline = Pipeline(engine, emit=lambda rec: None, dead_letters=DeadLetterSink(None))
    event_ids: dict[str, list[str]] = defaultdict(list)

    def lines() -> Iterator[Record]:
        for n, event in enumerate(synthetic.generate(patients=patients, seed=seed), 1):
            event_ids[event["patient_id"]].append(event["event_id"])
            yield Record(json.dumps(event, separators=(",", ":")).encode(), "synthetic", line=n)

    summary = pipeline.feed(lines())
    assert summary.balanced and summary.rejected == summary.duplicates == 0, summary
    real = [RealPatient(pipeline.states.get_or_new(p), event_ids[p]) for p in pipeline.states.patient_ids()]
    for patient in real:  # renaming to its own id must rebuild the state byte for byte
        assert encode(renamed(patient, patient.state.patient_id)) == encode(patient.state), patient.state.patient_id
    return real, summary.read


def renamed(patient: RealPatient, patient_id: str) -> PatientState:
    """The same state rebuilt for another patient: each id holding the patient number gets the new number."""
    state = patient.state
    old, new = state.patient_id.removeprefix("p-"), patient_id.removeprefix("p-")
    clone = PatientState(patient_id)
    for plan_id, plan in state.plans.items():
        assert old in plan_id, f"plan id {plan_id} does not hold the patient number {old}"
        new_id = plan_id.replace(old, new, 1)
        clone.plans[new_id] = dataclasses.replace(plan, plan_id=new_id)
    for event_id in patient.event_ids:
        clone.remember(event_id.replace(old, new, 1))
    clone.throttle = {key._replace(plan_id=key.plan_id and key.plan_id.replace(old, new, 1)): at
                      for key, at in state.throttle.items()}
    return clone


def changelog_records(real: list[RealPatient], patients: int) -> Iterator[tuple[str, bytes]]:
    """(patient id, encoded state) for patients 0..patients-1, lazily, so the values are never all in memory."""
    width = max(5, len(str(patients - 1)))  # synthetic's own format: p-00042
    for n in range(patients):
        state = renamed(real[n % len(real)], f"p-{n:0{width}d}")
        yield state.patient_id, encode(state)


# ---------------------------------------------------------------- Kafka


def start_broker() -> tuple[str, Broker | None, str]:
    """(bootstrap servers, Broker to close or None, a description)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return external, None, f"Kafka at {external} ($KAFKA_BOOTSTRAP_SERVERS)"
    from broker import Broker

    broker = Broker().start()
    return broker.bootstrap_servers, broker, f"Kafka {broker.version} at {broker.bootstrap_servers} (broker.py)"


def bench_settings(bootstrap: str, partitions: int, state_dir: Path) -> KafkaSettings:
    prefix = f"bench-restore-{uuid.uuid4().hex[:8]}"
    return KafkaSettings(bootstrap_servers=bootstrap, group_id=prefix, instance_id="bench-restore",
                         input_topic=f"{prefix}.events", output_topic=f"{prefix}.recs", dlq_topic=f"{prefix}.dlq",
                         changelog_topic=f"{prefix}.changelog", partitions=partitions, state_dir=state_dir)


def topic_names(s: KafkaSettings) -> list[str]:
    return [s.input_topic, s.output_topic, s.dlq_topic, s.changelog_topic]


def create_topics(s: KafkaSettings) -> int:
    """The service's own ensure_topics, then wait until the new partitions have leaders (KRaft answers first)."""
    partitions = ensure_topics(s)
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers, **s.client)
    try:
        admin.wait_for_topics(topic_names(s), timeout_ms=30_000)
    finally:
        admin.close()
    return partitions


def delete_topics(s: KafkaSettings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers, **s.client)
    try:
        admin.delete_topics(topic_names(s))
    finally:
        admin.close()


def produce(s: KafkaSettings, records: Iterator[tuple[str, bytes]], keep_every: int) -> Changelog:
    """Write the records as the service does: transactional, key = patient id, batch_max_records per transaction.

    Every `keep_every`-th value is kept as a sample to check the restore against."""
    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, transactional_id=f"{s.transactional_id}-load",
                             enable_idempotence=True, acks="all", linger_ms=5, **s.client)
    producer.init_transactions()
    log = Changelog()
    try:
        for patient, value in records:
            if log.records % s.batch_max_records == 0:
                if log.records:
                    producer.commit_transaction()
                producer.begin_transaction()
                log.transactions += 1
            key = patient.encode()
            producer.send(s.changelog_topic, key=key, value=value)
            if log.records % keep_every == 0:
                log.sample[patient] = value
            log.records += 1
            log.value_bytes += len(value)
            log.key_bytes += len(key)
            log.sizes.append(len(value))
        producer.commit_transaction()
        producer.flush()
    finally:
        producer.close()
    return log


def changelog_partitions(s: KafkaSettings, partitions: int) -> list[TopicPartition]:
    return [TopicPartition(s.changelog_topic, p) for p in range(partitions)]


def _position(consumer: KafkaConsumer, tp: TopicPartition) -> int:
    position = consumer.position(tp)  # with no timeout it waits until the position is known
    assert position is not None
    return position


def baseline_read(s: KafkaSettings, partitions: int) -> Baseline:
    """Read every changelog partition to its end with the restorer's consumer settings, dropping the values."""
    started = time.perf_counter()
    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed", client_id=f"otrules-baseline-{s.instance_id}",
                             **s.client)
    records = 0
    try:
        tps = changelog_partitions(s, partitions)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if _position(consumer, tp) < end[tp]}
        while remaining:
            for messages in consumer.poll(timeout_ms=200).values():
                records += len(messages)
            remaining = {tp for tp in remaining if _position(consumer, tp) < end[tp]}
    finally:
        consumer.close()
    return Baseline(time.perf_counter() - started, records, peak_rss_mib())


# ---------------------------------------------------------------- restore


def restore(s: KafkaSettings, partitions: int, records: int, sample: dict[str, bytes]) -> Restored:
    """The service's own restore of every changelog partition, then store.get of every patient."""
    quiet_logs()
    service = Service(s, Engine(defaults.rulesets(), defaults.catalogue()))  # _restore does not use the engine
    before = rss_mib()
    try:
        started = time.perf_counter()
        service._restore(set(range(partitions)))  # what its poll loop does for newly assigned partitions
        seconds = time.perf_counter() - started
        after_restore = rss_mib() - before
        held = sum(store.patients() for store in service.stores.values())
        assert held == records, f"the {s.store} store holds {held} patients, {records} were produced"

        ids = {store: store.patient_ids() for store in service.stores.values()}
        started = time.perf_counter()
        for store, patients in ids.items():
            for patient in patients:
                store.get(patient)  # decodes; MemoryStore keeps the latest decoded, SqliteStore none
        first_access = time.perf_counter() - started
        after_first_access = rss_mib() - before
        for patient, value in sample.items():
            found = [state for store in service.stores.values() if (state := store.get(patient)) is not None]
            assert len(found) == 1 and encode(found[0]) == value, f"{patient}: not restored as it was produced"
    finally:
        service._close()  # closes the stores (SQLite files), nothing else was opened
    return Restored(seconds, first_access, after_restore, after_first_access, peak_rss_mib())


def isolated(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) in a fresh Python process: memory figures of its own, nothing left over from earlier runs."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def quiet_logs() -> None:
    """The service logs a line per restore (structlog's default: stdout); keep the report clean."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# ---------------------------------------------------------------- report


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Since exec. Not getrusage's ru_maxrss: Linux carries that over from the forking parent through exec."""
    return rss_mib("VmHWM")


def seconds_text(values: list[float]) -> str:
    """The median, then every run."""
    runs = f" (runs: {', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""
    return f"{statistics.median(values):.2f} s{runs}"


def report(args: argparse.Namespace, where: str, partitions: int, events: int, real: int, log: Changelog,
           baseline: list[Baseline], restored: dict[str, list[Restored]], building_peak: float) -> None:
    mb, n = 1_000_000, log.records
    base = statistics.median(b.seconds for b in baseline)
    crc = "C (crc32c package)" if importlib.util.find_spec("crc32c") else "pure Python (no crc32c package)"
    print(f"{where}; {partitions} changelog partitions; kafka-python CRC32C: {crc}")
    print(f"patients: {n:,} ({real:,} real states from {events:,} generated events through the engine, "
          f"cloned under new ids)")
    print(f"changelog: {n:,} records in {log.transactions:,} transactions; values {log.value_bytes / mb:,.1f} MB "
          f"(median {statistics.median(log.sizes):,.0f} bytes per record, max {max(log.sizes):,}), "
          f"keys {log.key_bytes / mb:,.1f} MB")
    print(f"building the states and producing them: peak RSS {building_peak:,.0f} MiB")
    print(f"medians of {args.runs} run(s), each in a fresh process:")
    print(f"  baseline read (kafka-python, read_committed, values dropped): "
          f"{seconds_text([b.seconds for b in baseline])}, {n / base:,.0f} records/s; "
          f"peak RSS {statistics.median(b.peak_rss_mib for b in baseline):,.0f} MiB")
    for store, results in restored.items():
        def median(field: str, results: list[Restored] = results) -> float:
            return statistics.median(getattr(r, field) for r in results)

        seconds, first = median("seconds"), median("first_access_seconds")
        print(f"  restore, {store} store (Service._restore): {seconds_text([r.seconds for r in results])}, "
              f"{n / seconds:,.0f} records/s, {seconds / base:.2f}x the baseline")
        print(f"    then store.get of every patient (first access): "
              f"{seconds_text([r.first_access_seconds for r in results])}, {n / first:,.0f} patients/s; "
              f"restore + first access {(seconds + first) / base:.2f}x the baseline")
        print(f"    RSS growth: {median('rss_after_restore_mib'):,.0f} MiB after the restore, "
              f"{median('rss_after_first_access_mib'):,.0f} MiB after first access; "
              f"peak RSS {median('peak_rss_mib'):,.0f} MiB")


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=100_000, help="patients on the changelog (one record each)")
    ap.add_argument("--real-patients", type=int, default=5_000,
                    help="patients generated and run through the engine; the rest are renamed copies")
    ap.add_argument("--seed", type=int, default=1, help="seed of the generated stream")
    ap.add_argument("--partitions", type=int, default=KafkaSettings.partitions,
                    help="partitions of the topics (default: what otrules creates)")
    ap.add_argument("--store", choices=["memory", "sqlite", "both"], default="both")
    ap.add_argument("--runs", type=int, default=3, help="runs of each measurement; medians are reported")
    args = ap.parse_args()
    if min(args.patients, args.real_patients, args.partitions, args.runs) < 1:
        ap.error("--patients, --real-patients, --partitions and --runs must be at least 1")
    return args


def measure(settings: KafkaSettings, partitions: int, stores: list[str], runs: int,
            log: Changelog) -> tuple[list[Baseline], dict[str, list[Restored]]]:
    """`runs` rounds of the baseline and each store's restore, each in a fresh process, each first in turn."""
    isolated(baseline_read, settings, partitions)  # unmeasured: the first read after writing pays for the cleaner
    baseline: list[Baseline] = []
    restored: dict[str, list[Restored]] = {store: [] for store in stores}
    order = ["baseline", *stores]
    for run in range(runs):
        for what in order[run % len(order):] + order[:run % len(order)]:
            if what == "baseline":
                baseline.append(isolated(baseline_read, settings, partitions))
                assert baseline[-1].records == log.records, f"the baseline read {baseline[-1].records} records"
            else:
                s = dataclasses.replace(settings, store=what)
                restored[what].append(isolated(restore, s, partitions, log.records, log.sample))
    return baseline, restored


def main() -> None:
    args = parse_args()
    stores = ["memory", "sqlite"] if args.store == "both" else [args.store]
    real, events = real_states(min(args.real_patients, args.patients), args.seed)

    bootstrap, broker, where = start_broker()
    try:
        with tempfile.TemporaryDirectory(prefix="otrules-bench-restore-") as tmp:
            settings = bench_settings(bootstrap, args.partitions, Path(tmp))
            partitions = create_topics(settings)
            try:
                log = produce(settings, changelog_records(real, args.patients), max(1, args.patients // SAMPLE))
                building_peak = peak_rss_mib()
                baseline, restored = measure(settings, partitions, stores, args.runs, log)
            finally:
                delete_topics(settings)
        report(args, where, partitions, events, len(real), log, baseline, restored, building_peak)
    finally:
        if broker is not None:
            broker.close()


if __name__ == "__main__":
    main()
