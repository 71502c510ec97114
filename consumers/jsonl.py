"""JSONL files: events in (one per line, blank lines skipped), recommendations out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import IO

from otrules.consumers.core import Record
from otrules.schemas import Recommendation


class JsonlSource:
    """Records of a binary stream, one per non-blank line; the original bytes are kept for
    dead letters. A UTF-8 byte-order mark before the first line is not part of it."""

    def __init__(self, stream: IO[bytes], name: str = "-") -> None:
        self._stream = stream
        self.name = name

    def __iter__(self) -> Iterator[Record]:
        for number, raw in enumerate(self._stream, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield Record(raw, self.name, number)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RecommendationWriter:
    """Compact JSON per line; `emitted_at` is the only field that varies between runs."""

    def __init__(self, stream: IO[str], clock: Callable[[], str] = utc_now) -> None:
        self._stream = stream
        self._clock = clock

    def write(self, rec: Recommendation) -> None:
        self._stream.write(rec.model_copy(update={"emitted_at": self._clock()}).to_json())
        self._stream.write("\n")

    def flush(self) -> None:
        self._stream.flush()
