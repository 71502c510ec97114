"""Keep a consumer-group join that is in flight driven until it completes (kafka-python 3.0.12 drops it).

Why: kafka-python 3.0.12's `ConsumerCoordinator.poll` drives a join only
`if self.need_rejoin()`. A short poll that times out leaves the JoinGroup/
SyncGroup round trip in flight as `_join_task` "for the next poll", but the
leader's `_perform_assignment` resets the assignment snapshot, so
`need_rejoin()` is false again and no later poll awaits the task: the member
stays REBALANCING with heartbeats off, never gets its partitions and never
rejoins (docs/operations.md, "Known issues"). And when a later poll does get
there, a task that finished between two polls is thrown away and a new
JoinGroup sent, which for the leader starts another rebalance.

The Java client's semantics are restored on the consumers otrules creates:
`rejoinNeededOrPending() = rejoinNeeded || joinFuture != null`, and a finished
join is consumed, never replaced. `keep_join_driven(consumer)` swaps the
class of that one consumer's coordinator for a subclass that overrides two
methods; nothing global is patched.

On a kafka-python upgrade, re-read `kafka/coordinator/base.py`
(`join_group_async`: where `_join_task` is set, kept and cleared) and
`kafka/coordinator/consumer.py` (`poll`, `need_rejoin`, `_perform_assignment`),
run `bench/group_join_stuck.py` with and without `--guard` and
tests/test_kafka_group_join.py, then raise VERIFIED_WITH. Another version is
warned about at start-up; one without the attributes relied on is refused.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import structlog
from kafka import KafkaConsumer
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.future import Future
from kafka.structs import MemberState

from otrules.schemas import OtrulesError

log = structlog.get_logger("otrules.consume")

VERIFIED_WITH = "3.0.12"  # the kafka-python release whose coordinator this guard was checked against
_RELIED_ON = ("_join_task", "_manager", "need_rejoin", "join_group_async")


class JoinGuardRefused(OtrulesError):
    """The installed kafka-python's coordinator does not look like the one the guard was verified against."""


class KeepJoinDriven(ConsumerCoordinator):
    """kafka-python's ConsumerCoordinator with Java's `rejoinNeededOrPending` (no state of its own)."""

    _join_task: Future | None  # kafka-python's, untyped in its stubs: declared, not added
    _manager: Any

    def need_rejoin(self) -> bool:
        """A join in flight, or finished and not yet consumed, still needs this member's polls."""
        return self._join_task is not None or bool(super().need_rejoin())

    async def join_group_async(self, timeout_ms: Any = None) -> Any:
        """A round trip that finished between two polls is handed to kafka-python's loop as a
        future that settles on the next turn of the IO loop, so its result is applied rather
        than replaced by a new JoinGroup (kafka-python starts a new one for a done task)."""
        task = self._join_task
        if task is not None and task.is_done:
            relay = Future()

            def settle() -> None:
                task.chain(relay)

            self._join_task = relay
            self._manager.call_soon(settle)
        return await super().join_group_async(timeout_ms)


def keep_join_driven(consumer: KafkaConsumer) -> KafkaConsumer:
    """Apply the guard to one consumer (created with a group_id); return it."""
    coordinator = consumer._coordinator  # type: ignore[attr-defined]
    missing = [name for name in _RELIED_ON if not hasattr(coordinator, name)]
    if type(coordinator) is not ConsumerCoordinator or missing:
        raise JoinGuardRefused(
            f"kafka-python {version('kafka-python')}: the consumer-group join guard was verified with {VERIFIED_WITH} "
            f"and does not fit this coordinator ({type(coordinator).__name__}, missing {missing or 'nothing'}); "
            "see docs/operations.md, 'Known issues'")
    installed = version("kafka-python")
    if installed != VERIFIED_WITH:
        log.warning("kafka-python differs from the version the consumer-group join guard was verified with; "
                    "re-check it (docs/operations.md, 'Known issues')", installed=installed,
                    verified=VERIFIED_WITH)
    coordinator.__class__ = KeepJoinDriven
    return consumer


def membership(consumer: KafkaConsumer) -> tuple[bool, str]:
    """(a stable member, why not): STABLE and its group coordinator known. kafka-python keeps a
    member STABLE through a broker outage; only the unknown coordinator tells it is cut off."""
    state = consumer.group_metadata().state
    if state != MemberState.STABLE:
        return False, f"member state {str(state).strip('<>').upper()}"  # '<rebalancing>': REBALANCING
    if consumer._coordinator.coordinator_unknown():  # type: ignore[attr-defined]
        return False, "group coordinator unknown"
    return True, "stable"
