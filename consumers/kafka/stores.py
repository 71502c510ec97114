"""Per-partition patient state: in memory by default, SQLite for state larger than memory.

The source of truth is the compacted changelog topic; a store is a cache of
it for the partitions this instance owns. Stores hold serialised state (JSON
bytes), so what is restored is byte for byte what was written.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from otrules.consumers.states import PatientStates
from otrules.engine import PatientState


class StateStore(Protocol):
    """Patient states of one input partition."""

    def get(self, patient_id: str, keep: bool = True) -> PatientState | None: ...
    def put(self, state: PatientState) -> None: ...
    def put_raw(self, patient_id: str, value: bytes | None) -> None: ...
    def patients(self) -> int: ...
    def patient_ids(self) -> list[str]: ...
    def bulk(self) -> AbstractContextManager[None]: ...
    def close(self) -> None: ...


def encode(state: PatientState) -> bytes:
    return state.to_bytes()


def decode(value: bytes) -> PatientState:
    return PatientState.from_bytes(value)


class MemoryStore(PatientStates):
    """In memory: compact bytes, with recently used states decoded (see consumers/states.py)."""

    def bulk(self) -> AbstractContextManager[None]:
        """Many writes in a row (a restore): nothing to group in memory."""
        return contextlib.nullcontext()


class SqliteStore:
    """States as JSON in a SQLite file per partition: for state larger than memory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # the changelog, not this file, is durable
        self._db.execute("CREATE TABLE IF NOT EXISTS state (patient TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._db.execute("DELETE FROM state")  # always rebuilt from the changelog on assignment

    def get(self, patient_id: str, keep: bool = True) -> PatientState | None:
        """Decoded from the file at every call (so `keep` changes nothing here)."""
        row = self._db.execute("SELECT value FROM state WHERE patient = ?", (patient_id,)).fetchone()
        return decode(row[0]) if row else None

    def put(self, state: PatientState) -> None:
        self.put_raw(state.patient_id, encode(state))

    def put_raw(self, patient_id: str, value: bytes | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM state WHERE patient = ?", (patient_id,))
        else:
            self._db.execute("INSERT OR REPLACE INTO state (patient, value) VALUES (?, ?)", (patient_id, value))

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Many writes in a row (a restore) as one SQLite transaction, not one each."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def patients(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM state").fetchone()[0])

    def patient_ids(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT patient FROM state ORDER BY patient")]

    def close(self) -> None:
        self._db.close()
