"""The service's per-partition state stores, memory and SQLite: the same contract, real files."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3

import pytest

from otrules import defaults
from otrules.consumers import DeadLetterSink, JsonlSource, PatientStates, Pipeline
from otrules.consumers.kafka.stores import MemoryStore, SqliteStore, decode, encode
from otrules.engine import Engine
from otrules.engine.state import ThrottleKey


@pytest.fixture(scope="module")
def sample_states() -> dict[str, bytes]:
    """The encoded state of every patient of the bundled sample stream."""
    states = PatientStates()
    pipeline = Pipeline(Engine(defaults.rulesets(), defaults.catalogue()), lambda r: None, DeadLetterSink(None),
                        states=states)
    pipeline.feed(JsonlSource(io.BytesIO(defaults.SAMPLE_STREAM.read_bytes())))
    return {p: encode(states.get_or_new(p)) for p in states.patient_ids()}  # every one of them is there


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryStore(hot=4) if request.param == "memory" else SqliteStore(tmp_path / "g" / "partition-0.sqlite")
    yield s
    s.close()


def test_a_restore_gives_back_each_state_byte_for_byte_and_tombstones_remove(store, sample_states):
    first, *_, last = sorted(sample_states)
    with store.bulk():
        for patient, value in sample_states.items():
            store.put_raw(patient, value)
        store.put_raw(last, None)  # a tombstone later in the changelog
    assert store.patients() == len(sample_states) - 1
    assert store.patient_ids() == sorted(sample_states)[:-1]
    assert store.get(last) is None
    for patient in store.patient_ids():
        assert encode(store.get(patient)) == sample_states[patient]
    changed = decode(sample_states[first])
    changed.throttle[ThrottleKey("x")] = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    store.put(changed)
    assert store.get(first) == changed


def test_sqlite_bulk_is_one_transaction_visible_when_it_ends(tmp_path, sample_states):
    path = tmp_path / "partition-1.sqlite"
    store = SqliteStore(path)
    other = sqlite3.connect(str(path))
    with store.bulk():
        for patient, value in sample_states.items():
            store.put_raw(patient, value)
        assert other.execute("SELECT count(*) FROM state").fetchone()[0] == 0
    assert other.execute("SELECT count(*) FROM state").fetchone()[0] == len(sample_states)
    other.close()
    store.close()


def test_sqlite_bulk_rolls_back_when_the_restore_fails(tmp_path, sample_states):
    store = SqliteStore(tmp_path / "partition-2.sqlite")
    with pytest.raises(RuntimeError), store.bulk():
        for patient, value in sample_states.items():
            store.put_raw(patient, value)
        raise RuntimeError("the broker went away mid-restore")
    assert store.patients() == 0
    store.put_raw("p-1", next(iter(sample_states.values())))  # and the store is usable after
    assert store.patients() == 1
    store.close()


def test_sqlite_file_is_rebuilt_from_the_changelog_not_trusted(tmp_path, sample_states):
    """The file may be stale after a crash; the changelog is the truth, so a new store starts empty."""
    path = tmp_path / "partition-3.sqlite"
    store = SqliteStore(path)
    store.put_raw("p-1", next(iter(sample_states.values())))
    store.close()
    again = SqliteStore(path)
    assert again.patients() == 0
    again.close()
