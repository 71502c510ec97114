"""Helpers for tests (and bench/kafka_failover.py) that run several `otrules consume` processes as one
consumer group on the real broker: who owns which partition, a steady producer, and the embedded
run's outcome to compare the group's output, open table and changelog with.

Ownership is read from each instance's own HTTP endpoints, as an orchestrator would: `/readyz`, and
the per-partition gauge `otrules_state_patients` of `/metrics`, which exists exactly for the
partitions the instance has restored and still owns (removed on revocation).
"""

from __future__ import annotations

import collections
import datetime as dt
import io
import json
import re
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kafka import KafkaProducer

from otrules import defaults
from otrules.consumers import DeadLetterSink, JsonlSource, Pipeline
from otrules.engine import Engine

_EMITTED = re.compile(r'"emitted_at":(?:null|"[^"]*")')
_ID_AND_STATUS = re.compile(r'"recommendation_id":"([^"]*)".*"status":"([^"]*)"')
_OWNED = re.compile(r'^otrules_state_patients\{partition="(\d+)"\}', re.MULTILINE)


# ---------------------------------------------------------------- the embedded run


@dataclass
class Embedded:
    """What `otrules run` gives for a stream: the recommendations (emitted_at removed, sorted), each
    patient's open recommendation ids at the end, and each patient's state as the changelog holds it."""

    recommendations: list[str]
    open_table: dict[str, list[str]]
    states: dict[str, bytes]


def embedded_outcome(lines: Sequence[bytes]) -> Embedded:
    out: list[str] = []
    pipeline = Pipeline(Engine(defaults.rulesets(), defaults.catalogue()), lambda r: out.append(r.to_json()),
                        DeadLetterSink(None))
    pipeline.feed(JsonlSource(io.BytesIO(b"\n".join(lines) + b"\n")))
    table: dict[str, list[str]] = {}
    states: dict[str, bytes] = {}
    for patient in pipeline.states.patient_ids():
        state = pipeline.states.get(patient)
        if state is None:
            continue
        states[patient] = state.to_bytes()
        if state.open:
            table[patient] = list(state.open)
    return Embedded(sorted(_EMITTED.sub("", r) for r in out), table, states)


def last_values(records: Iterable) -> dict[str, bytes]:
    """A compacted topic as its reader sees it: the last value per key, a tombstone removing the key."""
    rows: dict[str, bytes] = {}
    for record in records:
        key = record.key.decode()
        if record.value is None:
            rows.pop(key, None)
        else:
            rows[key] = record.value
    return rows


def differences(name: str, got: dict[str, bytes], expected: dict[str, bytes]) -> str:
    """An empty string when equal; else which keys are missing, extra or different (ids only)."""
    if got == expected:
        return ""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    return (f"{name}: {len(missing)} keys missing {missing[:5]}, {len(extra)} extra {extra[:5]}, "
            f"{len(changed)} different {changed[:5]}")


def lost_and_duplicated(got: Sequence[str], expected: Sequence[str]) -> str:
    """An empty string when `got` is `expected` (as multisets); else how many were lost, repeated or
    never expected, with a few of their recommendation ids."""
    have, want = collections.Counter(got), collections.Counter(expected)
    if have == want:
        return ""

    def ids(counter: collections.Counter) -> list[str]:  # the texts lack emitted_at, so are not JSON
        found = (_ID_AND_STATUS.search(r) for r in list(counter)[:5])
        return [" ".join(m.groups()) if m else "?" for m in found]

    lost, extra = want - have, have - want
    repeated = collections.Counter({r: n for r, n in extra.items() if r in want})
    unexpected = extra - repeated
    return (f"{sum(lost.values())} lost {ids(lost)}, {sum(repeated.values())} duplicated {ids(repeated)}, "
            f"{sum(unexpected.values())} not in the embedded run {ids(unexpected)}")


# ---------------------------------------------------------------- a steady producer


def patient_key(line: bytes) -> bytes:
    try:
        return str(json.loads(line)["patient_id"]).encode()
    except (ValueError, KeyError, TypeError):
        return b"unparseable"


class SteadyProducer:
    """Sends `lines` in order at about `rate` events a second from a thread, as a live feed would.

    `burst(n)` sends the next n at once (a backlog for the instances to work through); `finish()`
    sends whatever is left at once, flushes and returns how many were sent. One producer, keyed by
    patient: each patient's events stay in order on their partition, as in the embedded run."""

    def __init__(self, bootstrap: str, topic: str, lines: Sequence[bytes], rate: float) -> None:
        self.topic, self.lines, self.rate = topic, lines, rate
        self.sent = 0
        self._burst = 0
        self._rest = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        self._thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)
        self._thread.start()

    def burst(self, n: int) -> None:
        with self._lock:
            self._burst += n

    def _run(self) -> None:
        try:
            budget, last = 0.0, time.monotonic()
            while self.sent < len(self.lines) and not self._stop.is_set():
                now = time.monotonic()
                budget, last = budget + (now - last) * self.rate, now
                with self._lock:
                    extra, self._burst = self._burst, 0
                n = len(self.lines) if self._rest.is_set() else int(budget) + extra
                for line in self.lines[self.sent:self.sent + n]:
                    self._producer.send(self.topic, key=patient_key(line), value=line)
                    self.sent += 1
                budget -= int(budget)
                time.sleep(0.05)
            self._producer.flush()
        except BaseException as exc:  # reported by finish(), in the test's thread
            self._error = exc

    def close(self) -> None:
        """Stop sending (a failed test): what was not sent yet is dropped."""
        self._stop.set()
        self._thread.join(30)
        self._producer.close(timeout=5)

    def finish(self, timeout: float = 120) -> int:
        self._rest.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the producer had not sent its {len(self.lines)} events after {timeout} s"
        self._producer.close()
        if self._error is not None:
            raise AssertionError(f"the steady producer failed: {self._error!r}")
        return self.sent


# ---------------------------------------------------------------- who serves what


class Instance(Protocol):
    """What tests/test_kafka_service.Consumer offers: a process and its structlog JSON log."""

    log: Path

    @property
    def proc(self) -> subprocess.Popen: ...


def http_port(instance: Instance) -> int | None:
    """The port the instance logged (None before it has)."""
    for line in instance.log.read_text(errors="replace").splitlines():
        if '"event": "http"' in line:
            return int(json.loads(line)["port"])
    return None


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@dataclass
class Seen:
    """One instance, as its endpoints answered."""

    name: str
    ready: bool
    why: str  # /readyz's body, or why it could not be asked
    owned: frozenset[int]

    def __str__(self) -> str:
        return f"{self.name}: {'ready' if self.ready else self.why}, partitions {sorted(self.owned)}"


def look(name: str, instance: Instance) -> Seen:
    if instance.proc.poll() is not None:
        tail = instance.log.read_text(errors="replace")[-2000:]
        raise AssertionError(f"instance {name} exited with status {instance.proc.returncode}:\n{tail}")
    port = http_port(instance)
    if port is None:
        return Seen(name, False, "no HTTP port logged yet (starting)", frozenset())
    try:
        status, body = _get(port, "/readyz")
        _, metrics = _get(port, "/metrics")
    except OSError as exc:
        return Seen(name, False, f"endpoints unreachable ({type(exc).__name__})", frozenset())
    return Seen(name, status == 200, body.strip(), frozenset(int(p) for p in _OWNED.findall(metrics)))


def serving(seen: Sequence[Seen], partitions: int) -> str:
    """An empty string when every instance is ready, owns a partition, and together they own each
    partition exactly once; else what is missing, naming instances and partitions. (With no more
    instances than partitions every member gets one: one that owns nothing is not serving.)"""
    problems = [str(s) for s in seen if not s.ready]
    problems += [f"{s.name} is ready but owns no partition" for s in seen if s.ready and not s.owned]
    owners: dict[int, list[str]] = collections.defaultdict(list)
    for s in seen:
        for p in s.owned:
            owners[p].append(s.name)
    unowned = sorted(set(range(partitions)) - set(owners))
    if unowned:
        problems.append(f"partitions {unowned} owned by no ready instance")
    twice = {p: names for p, names in sorted(owners.items()) if len(names) > 1}
    if twice:
        problems.append(f"partitions owned twice: {twice}")
    return "; ".join(problems)


def wait_until_serving(instances: Mapping[str, Instance], partitions: int, timeout: float, why: str,
                       interval: float = 0.1) -> tuple[float, list[Seen]]:
    """Poll the instances' endpoints until the group serves every partition (`serving`); return the
    seconds it took and the last view. Fails after `timeout` s with the instances' last answers."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        seen = [look(name, instance) for name, instance in instances.items()]
        problem = serving(seen, partitions)
        if not problem:
            return time.monotonic() - started, seen
        if time.monotonic() >= deadline:
            raise AssertionError(f"{why}: the group of {sorted(instances)} was not serving all {partitions} "
                                 f"partitions after {timeout:.0f} s: {problem}\n" + "\n".join(map(str, seen)))
        time.sleep(interval)


def committed_lines(instance: Instance, since: int = 0) -> list[dict]:
    """The instance's `committed` log lines after byte `since` of its log."""
    with instance.log.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [json.loads(line) for line in text.splitlines() if '"event": "committed"' in line]


def count_uncommitted(bootstrap: str, topic: str, timeout: float = 60) -> int:
    """Every record in `topic`, those of aborted and open transactions included (read_uncommitted):
    less those a read_committed reader sees, what transactions that never committed wrote."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        count, deadline = 0, time.monotonic() + timeout
        while any((consumer.position(tp) or 0) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{topic}: not read to its end within {timeout:.0f} s"
            count += sum(len(batch) for batch in consumer.poll(timeout_ms=300).values())
        return count
    finally:
        consumer.close()


@dataclass
class Kill:
    """When a SIGKILL was sent, and where each survivor's log stood then."""

    wall: float  # time.time(), to compare with log timestamps
    monotonic: float
    marks: dict[str, int]  # survivor -> byte offset of its log


def kill_mid_batch(name: str, victim: Instance, survivors: Mapping[str, Instance], producer: SteadyProducer,
                   burst: int, batch: int, timeout: float = 60) -> Kill:
    """SIGKILL `victim` halfway through a batch: send `burst` events at once, wait until it has
    committed three full batches of them (so it works through a backlog, a batch straight after
    another), then wait half a batch's time, so the next batch's first outputs are on their way."""
    mark = victim.log.stat().st_size
    producer.burst(burst)
    deadline = time.monotonic() + timeout
    while len(full := [line["ms"] for line in committed_lines(victim, mark) if line["events"] == batch]) < 3:
        assert time.monotonic() < deadline, f"{name} committed no three full batches within {timeout:.0f} s of a burst"
        time.sleep(0.02)
    time.sleep(statistics.median(full) / 2000)
    kill = Kill(time.time(), time.monotonic(), {n: s.log.stat().st_size for n, s in survivors.items()})
    victim.proc.kill()
    victim.proc.wait(timeout=30)
    return kill


def _timestamp(line: dict) -> float:
    return dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def first_commits(survivors: Mapping[str, Instance], kill: Kill, partitions: set[int],
                  timeout: float = 60) -> dict[int, float]:
    """Seconds from the kill to the first transaction a survivor committed on each of `partitions`
    (the killed instance's), from the survivors' own log timestamps: recommendations flow again there."""
    deadline = time.monotonic() + timeout
    first: dict[int, float] = {}
    while True:
        for name, instance in survivors.items():
            for line in committed_lines(instance, kill.marks[name]):
                for p in set(line["partitions"]) & partitions:
                    first[p] = min(first.get(p, float("inf")), _timestamp(line) - kill.wall)
        if set(first) == partitions:
            return first
        if time.monotonic() >= deadline:
            raise AssertionError(f"no survivor of {sorted(survivors)} committed on partitions "
                                 f"{sorted(partitions - set(first))} within {timeout:.0f} s of the kill")
        time.sleep(0.2)
