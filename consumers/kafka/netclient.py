"""A kafka-python network client that lets transactions survive a broker outage.

kafka-python 3.0.12's transactional sender treats `await_ready() -> False`
as "try again later", but the client raises `KafkaConnectionError` instead.
The pending transactional request is then dropped, and `commit_transaction`
or `send_offsets_to_transaction` block forever, even after the broker is back.
Returning False restores the retry the sender was written for. Passed to the
producer through its public `kafka_client` option.
"""

from __future__ import annotations

from typing import Any

from kafka.errors import KafkaConnectionError
from kafka.net.compat import KafkaNetClient


class RetryingNetClient(KafkaNetClient):
    def await_ready(self, node_id: Any, timeout_ms: int = 30000) -> bool:
        try:
            return bool(super().await_ready(node_id, timeout_ms=timeout_ms))
        except KafkaConnectionError:
            return False
