"""JSONL files: events in (one per line, blank lines skipped), recommendations out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from otrules.schemas import Recommendation


@dataclass(frozen=True, slots=True)
class Line:
    """One input record and where it came from (for errors and dead letters)."""

    number: int
    raw: bytes


class JsonlSource:
    """Lines of a binary stream; the original bytes are kept for dead letters."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[Line]:
        for number, raw in enumerate(self._stream, start=1):
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield Line(number, raw)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RecommendationWriter:
    """Compact JSON per line; `emitted_at` is the only field that varies between runs."""

    def __init__(self, stream: TextIO, clock: Callable[[], str] = utc_now) -> None:
        self._stream = stream
        self._clock = clock

    def write(self, rec: Recommendation) -> None:
        self._stream.write(rec.model_copy(update={"emitted_at": self._clock()}).to_json())
        self._stream.write("\n")

    def flush(self) -> None:
        self._stream.flush()
