"""The broker and client behaviour the Kafka consumer of otrules relies on, proven
against a real broker: round trip, exactly-once consume-transform-produce with
offsets in the transaction, fencing of zombie producers and of stale group
generations (KIP-447), and data surviving a broker restart."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from kafka_support import create_topic, unique_name
from otrules.consumers.kafka.join_guard import keep_join_driven

pytestmark = pytest.mark.kafka

TIMEOUT_S = 30


def _consumer(bootstrap: str, **config) -> KafkaConsumer:
    """A consumer as otrules makes them: in a group, with the join guard (docs/operations.md, "Known issues")."""
    config.setdefault("auto_offset_reset", "earliest")
    config.setdefault("enable_auto_commit", False)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="otrules-tests", **config)
    return keep_join_driven(consumer) if config.get("group_id") else consumer


def _position(consumer: KafkaConsumer, tp: TopicPartition) -> int:
    position = consumer.position(tp)  # with no timeout it waits until the position is known
    assert position is not None
    return position


def read_all(bootstrap: str, topic: str, **config) -> list[ConsumerRecord]:
    """Every record of `topic` visible under the given isolation level, from the start.

    Reads by assignment (no group) until each partition's position reaches the
    end offset, so "not visible" is proven by reading past it, not by a timeout.
    """
    consumer = _consumer(bootstrap, **config)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + TIMEOUT_S
        while any(_position(consumer, tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"timed out reading {topic}: {len(records)} records so far"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def poll_exactly(consumer: KafkaConsumer, n: int) -> list[ConsumerRecord]:
    """The next n records of a subscribed consumer; max_records keeps a poll from overshooting."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(records) < n:
        assert time.monotonic() < deadline, f"timed out: {len(records)} of {n} records"
        for batch in consumer.poll(timeout_ms=500, max_records=n - len(records)).values():
            records.extend(batch)
    return records


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for v in values:
            producer.send(topic, key=b"p-1", value=v)
        producer.flush(timeout=TIMEOUT_S)
    finally:
        producer.close()


def test_round_trip(kafka_bootstrap):
    topic = create_topic(kafka_bootstrap, unique_name("rt"), partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent = [(f"p-{i % 4}".encode(), f"event-{i}".encode()) for i in range(20)]
    for key, value in sent:
        producer.send(topic, key=key, value=value, headers=[("ce_type", b"ot.test")])
    producer.flush(timeout=TIMEOUT_S)
    producer.close()

    records = read_all(kafka_bootstrap, topic)

    assert sorted((r.key, r.value) for r in records) == sorted(sent)
    assert all(r.headers == [("ce_type", b"ot.test")] for r in records)
    # Same key, same partition, in send order: what per-patient ordering rests on.
    for key in {k for k, _ in sent}:
        mine = [r for r in records if r.key == key]
        assert len({r.partition for r in mine}) == 1
        assert [r.value for r in sorted(mine, key=lambda r: r.offset)] == [v for k, v in sent if k == key]


def test_exactly_once_transaction_with_consumer_offsets(kafka_bootstrap):
    source = create_topic(kafka_bootstrap, unique_name("eos-in"))
    sink = create_topic(kafka_bootstrap, unique_name("eos-out"))
    group = unique_name("eos-group")
    tp = TopicPartition(source, 0)
    produce(kafka_bootstrap, source, [f"in-{i}".encode() for i in range(9)])

    consumer = _consumer(kafka_bootstrap, group_id=group, isolation_level="read_committed")
    consumer.subscribe([source])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique_name("eos-txn"),
                             enable_idempotence=True)
    try:
        producer.init_transactions()

        def transform_batch(commit: bool) -> list:
            records = poll_exactly(consumer, 3)
            producer.begin_transaction()
            for r in records:
                producer.send(sink, key=r.key, value=b"out-" + r.value)
            # The KIP-447 identity (member id + generation) goes with the offsets,
            # so a zombie from an older generation would be fenced by the broker.
            metadata = consumer.group_metadata()
            assert metadata.group_id == group and metadata.generation_id > 0 and metadata.member_id
            # a record's leader_epoch may be None (not known), which kafka-python takes; the stubs want an int
            offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", records[-1].leader_epoch)}  # type: ignore[arg-type]
            producer.send_offsets_to_transaction(offsets, metadata)
            if commit:
                producer.commit_transaction()
            else:
                # Flush first: abort_transaction drops records still in the
                # accumulator, and the test wants aborted records in the log.
                producer.flush(timeout=TIMEOUT_S)
                producer.abort_transaction()
            return records

        transform_batch(commit=True)                       # in-0..2 -> committed
        aborted = transform_batch(commit=False)            # in-3..5 -> aborted
        assert consumer.committed(tp) == 3                 # the aborted offsets did not land
        consumer.seek(tp, aborted[0].offset)               # what a real processor does on abort
        transform_batch(commit=True)                       # in-3..5 again -> committed
        transform_batch(commit=True)                       # in-6..8 -> committed
    finally:
        producer.close()
        consumer.close(autocommit=False)

    committed_view = [r.value for r in read_all(kafka_bootstrap, sink, isolation_level="read_committed")]
    assert committed_view == [f"out-in-{i}".encode() for i in range(9)]  # none lost, none twice

    uncommitted_view = [r.value for r in read_all(kafka_bootstrap, sink, isolation_level="read_uncommitted")]
    assert uncommitted_view == [f"out-in-{i}".encode() for i in [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8]]

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    assert {t: o.offset for t, o in offsets.items()} == {tp: 9}


def test_zombie_producer_is_fenced(kafka_bootstrap):
    """A second producer with the same transactional_id fences the first: the
    zombie's open transaction is aborted and it can neither commit nor abort."""
    topic = create_topic(kafka_bootstrap, unique_name("zombie"))
    txn_id = unique_name("zombie-txn")
    zombie = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    zombie.init_transactions()
    zombie.begin_transaction()
    zombie.send(topic, value=b"zombie")
    zombie.flush(timeout=TIMEOUT_S)

    successor = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    successor.init_transactions()  # bumps the epoch, aborts the zombie's transaction
    # kafka-python 3.0 surfaces this as InvalidProducerEpochError on the send and
    # then a plain KafkaError ("Invalid transition ...") on commit/abort, not as
    # ProducerFencedError: treat any KafkaError here as "fenced, close and rebuild".
    with pytest.raises(KafkaError):
        zombie.send(topic, value=b"zombie-2").get(timeout=TIMEOUT_S)
    with pytest.raises(KafkaError):
        zombie.commit_transaction()
    zombie.close(timeout=5)

    successor.begin_transaction()
    successor.send(topic, value=b"successor")
    successor.commit_transaction()
    successor.close()
    assert [r.value for r in read_all(kafka_bootstrap, topic, isolation_level="read_committed")] == [b"successor"]


def test_stale_group_generation_is_fenced(kafka_bootstrap):
    """KIP-447: offsets sent with the group metadata of an older generation are
    refused (the partition may belong to someone else now); the transaction
    aborts and the producer stays usable."""
    source = create_topic(kafka_bootstrap, unique_name("gen-in"), partitions=2)
    sink = create_topic(kafka_bootstrap, unique_name("gen-out"))
    group = unique_name("gen-group")
    produce(kafka_bootstrap, source, [b"x"])
    first = _consumer(kafka_bootstrap, group_id=group)
    first.subscribe([source])
    poll_exactly(first, 1)
    stale = first.group_metadata()

    second = _consumer(kafka_bootstrap, group_id=group)
    second.subscribe([source])
    deadline = time.monotonic() + TIMEOUT_S
    while not (first.assignment() and second.assignment()
               and first.group_metadata().generation_id > stale.generation_id):
        assert time.monotonic() < deadline, "the group did not rebalance"
        first.poll(timeout_ms=100)
        second.poll(timeout_ms=100)

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique_name("gen-txn"))
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(sink, value=b"from-stale-generation")
        tp = next(iter(first.assignment()))
        with pytest.raises(CommitFailedError):
            producer.send_offsets_to_transaction({tp: OffsetAndMetadata(1, "", -1)}, stale)
        producer.abort_transaction()

        producer.begin_transaction()
        producer.send(sink, value=b"from-current-generation")
        producer.send_offsets_to_transaction({tp: OffsetAndMetadata(1, "", -1)}, first.group_metadata())
        producer.commit_transaction()
    finally:
        producer.close()
        first.close(autocommit=False)
        second.close(autocommit=False)
    assert [r.value for r in read_all(kafka_bootstrap, sink, isolation_level="read_committed")] == [
        b"from-current-generation"]


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_broker_restart_keeps_data_and_offsets(kafka_bootstrap, kafka_broker, kill):
    if kafka_broker is None:
        pytest.skip("the broker is external or a container: this session cannot restart it")
    topic = create_topic(kafka_bootstrap, unique_name("restart"))
    group = unique_name("restart-group")
    tp = TopicPartition(topic, 0)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(5):
        producer.send(topic, value=f"before-{i}".encode())
    producer.flush(timeout=TIMEOUT_S)
    consumer = _consumer(kafka_bootstrap, group_id=group)
    consumer.subscribe([topic])
    poll_exactly(consumer, 3)
    consumer.commit({tp: OffsetAndMetadata(3, "", -1)})
    consumer.close(autocommit=False)

    kafka_broker.restart(kill=kill)  # same port, same data; clients reconnect by themselves

    # The producer created before the restart carries on (mid-stream).
    for i in range(2):
        producer.send(topic, value=f"after-{i}".encode())
    producer.flush(timeout=TIMEOUT_S)
    producer.close()

    assert [r.value for r in read_all(kafka_bootstrap, topic)] == (
        [f"before-{i}".encode() for i in range(5)] + [f"after-{i}".encode() for i in range(2)])
    consumer = _consumer(kafka_bootstrap, group_id=group)
    consumer.subscribe([topic])
    try:
        assert [r.value for r in poll_exactly(consumer, 4)] == [b"before-3", b"before-4", b"after-0", b"after-1"]
    finally:
        consumer.close(autocommit=False)
