"""The liveness watchdog's bookkeeping (consumers/kafka/health.py), on a fake clock; the real-broker
test is tests/test_kafka_group_join.py."""

from otrules.consumers.kafka.health import STALL_SECONDS, Health
from otrules.consumers.kafka.settings import MAX_UNSTABLE_SECONDS, KafkaSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unstable_longer_than_the_bound_fails_liveness_and_is_reported_once():
    clock = Clock()
    health = Health(max_unstable_s=30, clock=clock)
    assert health.liveness() == (True, "ok")  # starting: not a member yet, within the bound
    clock.now += 10
    assert health.member(True) is None and health.liveness() == (True, "ok")
    clock.now += 100
    health.beat()
    assert health.member(False, "member state REBALANCING") is None  # unstable from now on
    clock.now += 30
    health.beat()
    assert health.member(False, "member state REBALANCING") is None and health.alive()  # not longer than the bound
    clock.now += 1
    health.beat()
    assert health.member(False, "member state REBALANCING") == "too long"  # the one time the caller logs it
    assert health.liveness() == (False, "not a stable consumer-group member for 31 s (member state REBALANCING)")
    clock.now += 60
    health.beat()
    assert health.member(False, "group coordinator unknown") is None  # reported already
    assert health.liveness() == (False, "not a stable consumer-group member for 91 s (group coordinator unknown)")
    assert health.member(True) == "stable again" and health.liveness() == (True, "ok")
    assert health.member(True) is None
    clock.now += 31
    health.beat()
    health.member(False, "member state UNJOINED")
    clock.now += 31
    assert health.member(False, "member state UNJOINED") == "too long"  # a new episode is reported again


def test_the_clock_starts_before_the_first_join_and_zero_turns_the_watchdog_off():
    clock = Clock()
    never_joined = Health(max_unstable_s=5, clock=clock)
    off = Health(max_unstable_s=0, clock=clock)
    clock.now += 6
    never_joined.beat()
    off.beat()
    assert never_joined.liveness() == (False, "not a stable consumer-group member for 6 s (not joined yet)")
    assert off.member(False, "member state REBALANCING") is None and off.liveness() == (True, "ok")
    clock.now += STALL_SECONDS
    assert off.liveness() == (False, "stalled")  # the loop's own stall still counts


def test_the_default_bound_outlasts_a_healthy_rebalance():
    """The broker waits up to the rebalance timeout (kafka-python's max_poll_interval_ms, 300 s) for a
    busy member; a restart inside that would start another rebalance."""
    from kafka import KafkaConsumer

    settings = KafkaSettings()
    assert settings.max_unstable_seconds == MAX_UNSTABLE_SECONDS
    rebalance_timeout_s = KafkaConsumer.DEFAULT_CONFIG["max_poll_interval_ms"] / 1000
    assert rebalance_timeout_s + 3 * settings.session_timeout_ms / 1000 <= MAX_UNSTABLE_SECONDS
