"""What `otrules consume` connects to and how it batches."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "otrules"
    instance_id: str = field(default_factory=socket.gethostname)  # stable per instance: fences its own zombies
    input_topic: str = "ot.events"
    output_topic: str = "ot.recommendations"
    dlq_topic: str = "ot.events.dlq"
    changelog_topic: str = "otrules-state-changelog"
    partitions: int = 6  # when otrules creates the topics
    replication_factor: int = 1
    batch_max_records: int = 2000  # per-batch costs (a transaction, a changelog record per patient) spread over more events
    batch_max_ms: int = 100
    transaction_timeout_ms: int = 10_000  # how long a dead instance's open transaction can block readers
    session_timeout_ms: int = 10_000
    sweep_interval_s: float = 300.0  # advance the clock over owned plans this often (0: never)
    retention_days: int = 90  # a discharged plan's state is kept this long (event time), then tombstoned
    store: str = "memory"  # or "sqlite"
    decoded_states: int = 1024  # memory store: patients kept decoded, shared by all owned partitions
    state_dir: Path = Path(".otrules-state")
    client: dict[str, Any] = field(default_factory=dict)  # passed to every kafka-python client (security etc.)

    @property
    def transactional_id(self) -> str:
        return f"otrules-{self.group_id}-{self.instance_id}"
