"""Patient states in memory: compact bytes for most, decoded objects for the recent few.

Memory per patient decides how many patients one instance owns, and a decoded
state (dicts, dataclasses, dates) takes several times its ~1 KB of serialised
bytes. Events of a patient cluster in time (a plan of care runs for weeks), so
a small write-back cache of decoded states serves nearly every event, and the
rest wait as bytes. Used by `otrules run`, `backtest` and the Kafka service's
in-memory store alike.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from otrules.engine import PatientState

DEFAULT_HOT = 1024  # decoded states kept; about 5 MB


class PatientStates:
    """States by patient id; a state handed out by `get` stays live (and may be changed in
    place) until `hot` other patients have been used since."""

    def __init__(self, hot: int = DEFAULT_HOT) -> None:
        if hot < 1:
            raise ValueError(f"hot: must be at least 1, got {hot}")
        self.hot = hot
        self._live: OrderedDict[str, PatientState] = OrderedDict()
        self._raw: dict[str, bytes] = {}

    def get(self, patient_id: str, keep: bool = True) -> PatientState | None:
        """keep=False: a patient held as bytes is decoded without joining the decoded few
        (a sweep over every patient); the caller puts it back if it changes it."""
        state = self._live.get(patient_id)
        if state is not None:
            self._live.move_to_end(patient_id)
            return state
        if not keep:
            value = self._raw.get(patient_id)
            return None if value is None else PatientState.from_bytes(value)
        value = self._raw.get(patient_id)
        if value is None:
            return None
        state = PatientState.from_bytes(value)  # may raise: the bytes stay
        del self._raw[patient_id]
        self._keep(state)
        return state

    def get_or_new(self, patient_id: str) -> PatientState:
        state = self.get(patient_id)
        if state is None:
            state = PatientState(patient_id)
            self._keep(state)
        return state

    def put(self, state: PatientState) -> None:
        if self._live.get(state.patient_id) is state:
            return  # changed in place (and already the most recent)
        self._raw.pop(state.patient_id, None)
        if state.patient_id in self._live:
            self._live[state.patient_id] = state
            self._live.move_to_end(state.patient_id)
        else:
            self._keep(state)

    def put_raw(self, patient_id: str, value: bytes | None) -> None:
        """Serialised state (from a changelog, or a snapshot to roll back to); None forgets the patient."""
        self._live.pop(patient_id, None)
        if value is None:
            self._raw.pop(patient_id, None)
        else:
            self._raw[patient_id] = value

    def discard(self, patient_id: str) -> None:
        self.put_raw(patient_id, None)

    def patients(self) -> int:
        return len(self._live) + len(self._raw)

    def patient_ids(self) -> list[str]:
        """Sorted, so that sweeps run in the same order every time."""
        return sorted([*self._live, *self._raw])

    def __len__(self) -> int:
        return self.patients()

    def __contains__(self, patient_id: object) -> bool:
        return patient_id in self._live or patient_id in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self.patient_ids())

    def close(self) -> None:
        self._live.clear()
        self._raw.clear()

    def resize(self, hot: int) -> None:
        """Keep at most `hot` decoded from now on (the service shares one budget among its partitions)."""
        if hot < 1:
            raise ValueError(f"hot: must be at least 1, got {hot}")
        self.hot = hot
        while len(self._live) > hot:
            patient_id, old = self._live.popitem(last=False)
            self._raw[patient_id] = old.to_bytes()

    def _keep(self, state: PatientState) -> None:
        self._live[state.patient_id] = state
        if len(self._live) > self.hot:
            self.resize(self.hot)
