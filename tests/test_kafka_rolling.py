"""Four `otrules consume` processes on eight partitions, as production runs them: a rolling restart, a
SIGKILL mid-batch and a fifth instance joining, all under a steady produce, lose and repeat nothing.

What reaches `ot.recommendations` (read_committed), the open table (`ot.recommendations.open`, the
last row per patient) and each patient's state (the changelog, the last record per patient) must be
what the embedded `otrules run` gives for the same stream. The time from the SIGKILL until the
survivors serve every partition again is measured and printed.

Timing settings, chosen for a loaded 2-core machine:
- `--session-timeout-ms 6000`: the broker's smallest allowed (group.min.session.timeout.ms), so a
  SIGKILLed member is noticed 3-6 s after the kill: the session runs from its last heartbeat, sent
  every 3 s (kafka-python's default; the service has no setting for it). A SIGTERMed member leaves
  the group at once, so the rolling restart does not wait for it.
- `--transaction-timeout-ms 5000` (the Consumer helper's): how long the killed instance's open
  transaction holds back read_committed readers of its output, plus the broker's abort sweep
  (transaction.abort.timed.out.transaction.cleanup.interval.ms, 10 s by default).
- `--batch-max-records 50`: many commits a run. The kill comes halfway through a batch of a backlog
  (after three full ones); whether that transaction's first outputs had reached the broker is
  printed (recommendations in aborted transactions), as it depends on timing.
- Readiness is not the whole story: a partition whose offsets the killed instance had already sent
  to its transaction waits (KIP-447) until the broker aborts it, so the first commit per partition
  and when read_committed readers catch up are printed too.
- 150 events/s offered: a steady feed that lasts the whole choreography (about a minute here),
  then the rest of the stream at once.
"""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from kafka_group_support import (
    SteadyProducer,
    committed_lines,
    count_uncommitted,
    differences,
    embedded_outcome,
    first_commits,
    kill_mid_batch,
    last_values,
    lost_and_duplicated,
    wait_until_serving,
)
from test_kafka_service import (  # noqa: F401 - the fixture stops a failed test's consumers
    Consumer,
    Topics,
    _stop_leftover_consumers,
    open_table,
    read_all,
    recommendations,
    stream,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 8
ARGS = ("--batch-max-records", "50", "--session-timeout-ms", "6000")
RATE = 150.0  # events/s offered while the instances roll
REBALANCE_S = 90.0  # bound on one rebalance, restore included, on a loaded 2-core machine
BURST = 6000  # events sent at once before the kill: a backlog of seconds, so the victim is inside a batch


def _visible_again(bootstrap: str, topic: str, timeout: float = 60) -> float:
    """Seconds until read_committed readers of `topic` can read everything written before now (the
    last stable offset reaches today's high watermark on every partition): the killed instance's
    open transaction no longer holds them back."""
    started = time.monotonic()
    committed = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    uncommitted = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(uncommitted.partitions_for_topic(topic) or ())]
        high = uncommitted.end_offsets(tps)
        while True:
            stable = committed.end_offsets(tps)
            behind = {tp.partition: high[tp] - stable[tp] for tp in tps if stable[tp] < high[tp]}
            if not behind:
                return time.monotonic() - started
            if time.monotonic() - started >= timeout:
                raise AssertionError(f"{topic}: read_committed readers still held back after {timeout:.0f} s "
                                     f"(records behind the last stable offset, by partition: {behind})")
            time.sleep(0.2)
    finally:
        committed.close()
        uncommitted.close()


def test_four_instances_roll_lose_one_to_sigkill_gain_a_fifth_and_lose_and_repeat_nothing(
        kafka_bootstrap, tmp_path, capsys):
    lines = stream(600, seed=52)  # ~21,000 events of 600 patients
    expected = embedded_outcome(lines)
    topics = Topics(kafka_bootstrap, partitions=PARTITIONS)
    timeline: list[str] = []
    started = time.monotonic()

    def step(what: str, seconds: float) -> None:
        timeline.append(f"{time.monotonic() - started:6.1f} s  {what} ({seconds:.1f} s)")

    live: dict[str, Consumer] = {}
    for name in ("r0", "r1", "r2", "r3"):
        live[name] = Consumer(kafka_bootstrap, topics, name, tmp_path, *ARGS)
    took, _ = wait_until_serving(live, PARTITIONS, REBALANCE_S, "four instances starting")
    step("four instances serving", took)
    producer = SteadyProducer(kafka_bootstrap, topics.input, lines, RATE)
    try:
        # A rolling restart, one at a time, as a deployment does it.
        for name in ("r0", "r1", "r2", "r3"):
            live.pop(name).terminate()  # asserts exit status 0
            took, _ = wait_until_serving(live, PARTITIONS, REBALANCE_S, f"after SIGTERM of {name}")
            step(f"{name} stopped; three serve", took)
            live[name] = Consumer(kafka_bootstrap, topics, name, tmp_path, *ARGS)
            took, _ = wait_until_serving(live, PARTITIONS, REBALANCE_S, f"after {name} restarted")
            step(f"{name} restarted; four serve", took)

        # A SIGKILL inside a batch: in a backlog, after the victim committed three full batches of it.
        _, seen = wait_until_serving(live, PARTITIONS, REBALANCE_S, "before the kill")
        victim_name = "r1"
        victim = live[victim_name]
        owned = set(next(s.owned for s in seen if s.name == victim_name))
        survivors = {n: c for n, c in live.items() if n != victim_name}
        kill = kill_mid_batch(victim_name, victim, survivors, producer, BURST, batch=50)
        kill_to_serving, _ = wait_until_serving(survivors, PARTITIONS, REBALANCE_S,
                                                f"after SIGKILL of {victim_name} (it owned {sorted(owned)})")
        step(f"{victim_name} killed; three serve", kill_to_serving)
        first_commit = first_commits(survivors, kill, owned)
        _visible_again(kafka_bootstrap, topics.output)
        visible = time.monotonic() - kill.monotonic
        del live[victim_name]

        # One more instance joins.
        live["r4"] = Consumer(kafka_bootstrap, topics, "r4", tmp_path, *ARGS)
        took, _ = wait_until_serving(live, PARTITIONS, REBALANCE_S, "after r4 joined")
        step("r4 joined; four serve", took)
        fed_live = producer.sent
        sent = producer.finish()
    except BaseException:
        producer.close()
        raise

    records = read_all(kafka_bootstrap, topics.output, len(expected.recommendations), timeout=120)
    table = open_table(kafka_bootstrap, topics.open)
    aborted = count_uncommitted(kafka_bootstrap, topics.output) - len(records)
    changelog = last_values(read_all(kafka_bootstrap, topics.changelog, len(expected.states), timeout=60, settle=1))
    for consumer in live.values():
        consumer.terminate()
    rolled_back = sum(log.read_text().count("batch rolled back") for log in Consumer.logs if log.parent == tmp_path)
    step("drained and read back", 0)
    with capsys.disabled():
        print(f"\nfour instances rolling ({len(lines)} events, {fed_live} of them fed at {RATE:.0f}/s while they "
              "rolled):\n" + "\n".join(timeline))
        print(f"kill-to-serving: {kill_to_serving:.1f} s (survivors ready, all {PARTITIONS} partitions assigned "
              f"and restored); first commit on each of the killed instance's partitions "
              f"{ {p: round(s, 1) for p, s in sorted(first_commit.items())} } s; output readable again by "
              f"read_committed readers (the killed instance's open transaction aborted) after {visible:.1f} s; "
              f"{aborted} recommendations in aborted transactions, {rolled_back} batches rolled back by the instances")

    assert sent == len(lines)
    assert fed_live < len(lines), "the stream ran out before the instances finished rolling"
    problem = lost_and_duplicated(recommendations(records), expected.recommendations)
    assert not problem, f"ot.recommendations is not the embedded run's: {problem}"
    assert table == expected.open_table and table
    diff = differences("changelog", changelog, expected.states)
    assert not diff, diff
    events_by = {name: sum(line["events"] for line in committed_lines(c)) for name, c in live.items()}
    assert all(events_by.values()), f"an instance committed nothing in its last run: {events_by}"
