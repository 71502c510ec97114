"""The state changelog: restore owned partitions from it, write changed patients to it.

The compacted changelog topic is the source of truth for patient state; the
stores are caches of it for the partitions this instance owns. Records are
keyed by patient id and co-partitioned with the input, so a partition's
events and its state move together when the group rebalances.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from kafka import KafkaConsumer, TopicPartition

from otrules.consumers.kafka.settings import KafkaSettings
from otrules.consumers.kafka.stores import StateStore

log = structlog.get_logger("otrules.consume")


class Changelog:
    """Restores stores from the changelog and keeps the serialised size of each patient."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.sizes: dict[int, dict[str, int]] = {}  # partition -> patient -> serialised bytes

    def restore(self, stores: dict[int, StateStore], new_store: Callable[[int], StateStore],
                partitions: set[int], stop: threading.Event | None = None) -> int:
        """Load each partition's patients up to the end of its changelog (read_committed) into a
        new store; returns the records read. A stop request ends it early (the caller then must not
        use the stores: they may be incomplete)."""
        s = self.settings
        restorer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
                                 isolation_level="read_committed", client_id=f"otrules-restore-{s.instance_id}",
                                 **s.service_client)
        records = 0
        try:
            tps = [TopicPartition(s.changelog_topic, p) for p in sorted(partitions)]
            restorer.assign(tps)
            restorer.seek_to_beginning(*tps)
            end = restorer.end_offsets(tps)
            for p in partitions:
                stores[p] = new_store(p)
            remaining = {tp for tp in tps if (restorer.position(tp) or 0) < end[tp]}
            while remaining and not (stop is not None and stop.is_set()):
                for tp, messages in restorer.poll(timeout_ms=200).items():
                    sizes = self.sizes.setdefault(tp.partition, {})
                    store = stores[tp.partition]
                    with store.bulk():
                        for msg in messages:
                            patient = msg.key.decode()
                            store.put_raw(patient, msg.value)
                            if msg.value is None:
                                sizes.pop(patient, None)
                            else:
                                sizes[patient] = len(msg.value)
                    records += len(messages)
                remaining = {tp for tp in remaining if (restorer.position(tp) or 0) < end[tp]}
        finally:
            restorer.close()
        return records

    def written(self, partition: int, patient: str, value: bytes | None) -> None:
        sizes = self.sizes.setdefault(partition, {})
        if value is None:
            sizes.pop(patient, None)
        else:
            sizes[patient] = len(value)

    def forget(self, partition: int) -> None:
        self.sizes.pop(partition, None)

    def state_bytes(self, partition: int) -> int:
        return sum(self.sizes.get(partition, {}).values())

