"""Patient state: the compact serialised form, and the in-memory store that holds it."""

from __future__ import annotations

import io
import json

import pytest

from otrules import defaults
from otrules.consumers import DeadLetterSink, JsonlSource, PatientStates, Pipeline
from otrules.engine import Engine, PatientState


def stored(states: PatientStates, patient_id: str, keep: bool = True) -> PatientState:
    """states.get, for a patient that must be there."""
    state = states.get(patient_id, keep=keep)
    assert state is not None, patient_id
    return state


def _run(states: PatientStates) -> tuple[list[str], Pipeline]:
    engine = Engine(defaults.rulesets(), defaults.catalogue())
    recs: list[str] = []
    pipeline = Pipeline(engine, lambda r: recs.append(r.to_json()), DeadLetterSink(None), states=states)
    pipeline.feed(JsonlSource(io.BytesIO(defaults.SAMPLE_STREAM.read_bytes())))
    assert pipeline.summary.last_event_at is not None
    pipeline.sweep(pipeline.summary.last_event_at)
    return recs, pipeline


def test_every_sample_state_survives_the_round_trip():
    _, pipeline = _run(PatientStates())
    assert len(pipeline.states) == 40
    for patient_id in pipeline.states.patient_ids():
        state = stored(pipeline.states, patient_id)
        value = state.to_bytes()
        again = PatientState.from_bytes(value)
        assert again == state and again.to_bytes() == value


def test_states_evicted_to_bytes_give_the_same_recommendations():
    """hot=1: every event of another patient pushes the last one out to bytes and back."""
    everything_live, _ = _run(PatientStates(hot=10_000))
    always_evicted, _ = _run(PatientStates(hot=1))
    assert len(everything_live) > 100
    assert always_evicted == everything_live


def test_a_duplicate_is_still_recognised_after_the_round_trip(engine):
    from conftest import Story, goal

    story = Story().plan(0, [goal("g1", "COPM-performance", 3, 8)]).visit(2)
    from otrules.schemas import parse_event

    events = [parse_event(json.dumps(e), engine.catalogue) for e in story.events]
    state = PatientState("p-1")
    for event in events:
        assert not engine.process(state, event).duplicate
    restored = PatientState.from_bytes(state.to_bytes())
    assert engine.process(restored, events[1]).duplicate
    assert restored.plans["poc-1"].visits_attended == 1


def test_remembered_event_ids_cost_eight_bytes_whatever_their_length():
    short, long = PatientState("p"), PatientState("p")
    for i in range(100):
        short.remember(f"e{i}")
        long.remember(f"{i:04d}-" + "x" * 60)
    assert len(long.to_bytes()) == len(short.to_bytes()) < 100 * 12


def test_an_unknown_format_is_refused_with_its_version():
    with pytest.raises(ValueError, match=r"format 1 is not a format \(2 to 4\)"):
        PatientState.from_bytes(b'{"patient_id":"p-1","plans":{}}')


def test_hot_must_be_positive():
    with pytest.raises(ValueError, match="hot: must be at least 1, got 0"):
        PatientStates(hot=0)


def test_a_digest_counts_only_on_its_own_eight_byte_boundary():
    from otrules.engine.state import event_digest

    digest = event_digest("e-1")
    state = PatientState("p", seen_events=b"\x00" * 4 + digest + b"\x00" * 4)  # straddles two entries
    assert not state.has_seen("e-1")
    state.seen_events = b"\x00" * 8 + digest
    assert state.has_seen("e-1")


def test_serialised_states_hold_no_more_memory_than_their_length():
    """orjson's bytes keep the larger buffer they were written into (seen: ~8 KB for 1 KB);
    stores keep one per patient, so to_bytes must hand out exact-size bytes."""
    import tracemalloc

    _, pipeline = _run(PatientStates())
    states = [stored(pipeline.states, p) for p in pipeline.states.patient_ids()]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [s.to_bytes() for s in states for _ in range(25)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1.5 * sum(len(v) for v in kept) + 100 * len(kept)


def test_a_sweep_read_decodes_without_keeping_or_evicting():
    store = PatientStates(hot=1)
    store.put(PatientState("p-1"))
    store.put(PatientState("p-2"))  # p-1 goes out to bytes
    swept = stored(store, "p-1", keep=False)
    swept.remember("e-1")  # not put back: the stored bytes are unchanged
    assert store.get("p-2", keep=False) is store.get("p-2")  # still the live one
    assert not stored(store, "p-1").has_seen("e-1")
    assert store.patient_ids() == ["p-1", "p-2"] and store.get("nobody", keep=False) is None


def test_resize_sends_the_least_recently_used_out_to_bytes():
    store = PatientStates(hot=3)
    for p in ("p-1", "p-2", "p-3"):
        store.put(PatientState(p))
    store.get("p-1")  # now the most recent
    store.resize(1)
    assert list(store._live) == ["p-1"] and sorted(store._raw) == ["p-2", "p-3"]
    assert store.patient_ids() == ["p-1", "p-2", "p-3"]
