"""The join guard checks what it patches (consumers/kafka/join_guard.py); that it works is shown on a
real broker in tests/test_kafka_group_join.py."""

from types import SimpleNamespace

import pytest
from kafka.coordinator.consumer import ConsumerCoordinator
from structlog.testing import capture_logs

from otrules.consumers.kafka import join_guard
from otrules.consumers.kafka.join_guard import JoinGuardRefused, KeepJoinDriven, keep_join_driven


def _bare_coordinator(**attrs) -> ConsumerCoordinator:
    """A ConsumerCoordinator object without its constructor (which needs a client)."""
    coordinator = ConsumerCoordinator.__new__(ConsumerCoordinator)
    vars(coordinator).update(attrs)
    return coordinator


def test_another_kafka_python_is_warned_about_and_still_guarded(monkeypatch):
    monkeypatch.setattr(join_guard, "version", lambda _name: "3.1.0")
    consumer = SimpleNamespace(_coordinator=_bare_coordinator(_join_task=None, _manager=None))
    with capture_logs() as logs:
        guarded = keep_join_driven(consumer)  # type: ignore[arg-type]
    assert guarded is consumer  # type: ignore[comparison-overlap]
    assert type(consumer._coordinator) is KeepJoinDriven
    assert [(e["log_level"], e["installed"], e["verified"]) for e in logs] == [("warning", "3.1.0", "3.0.12")]


def test_the_verified_version_is_guarded_silently():
    consumer = SimpleNamespace(_coordinator=_bare_coordinator(_join_task=None, _manager=None))
    with capture_logs() as logs:
        keep_join_driven(consumer)  # type: ignore[arg-type]
    assert type(consumer._coordinator) is KeepJoinDriven and logs == []


@pytest.mark.parametrize("coordinator", [_bare_coordinator(_manager=None), object()], ids=["no _join_task", "another class"])
def test_a_coordinator_unlike_the_verified_one_is_refused(coordinator):
    with pytest.raises(JoinGuardRefused, match=r"verified with 3\.0\.12 and does not fit"):
        keep_join_driven(SimpleNamespace(_coordinator=coordinator))  # type: ignore[arg-type]


def test_a_join_in_flight_needs_polls_whatever_the_snapshots_say(monkeypatch):
    """kafka-python 3.0.12's own need_rejoin() is false here (step 3 of the known issue); the guard's is true."""
    monkeypatch.setattr(ConsumerCoordinator, "need_rejoin", lambda self: False)
    coordinator = _bare_coordinator(_join_task=None, _manager=None)
    keep_join_driven(SimpleNamespace(_coordinator=coordinator))  # type: ignore[arg-type]
    assert coordinator.need_rejoin() is False
    coordinator._join_task = object()  # type: ignore[attr-defined]
    assert coordinator.need_rejoin() is True
