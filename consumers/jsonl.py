"""JSONL files: events in (one per line, blank lines skipped), recommendations out."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import IO

import orjson

from otrules.consumers.core import Record
from otrules.schemas import Recommendation


class JsonlSource:
    """Records of a binary stream, one per non-blank line; the original bytes are kept for
    dead letters. A UTF-8 byte-order mark before the first line is not part of it.

    With `documents`, a file holding one pretty-printed JSON document (a FHIR Bundle saved from
    a server, say) is one record: told apart by a first line that is `{` alone, which no JSONL
    line is, and a whole that parses. Anything else is read line by line as it comes."""

    def __init__(self, stream: IO[bytes], name: str = "-", documents: bool = False) -> None:
        self._stream = stream
        self.name = name
        self.documents = documents

    def __iter__(self) -> Iterator[Record]:
        lines: Iterable[bytes] = self._stream
        if self.documents:
            head: list[bytes] = []
            for line in self._stream:
                head.append(line)
                if line.strip():
                    break
            first = head[-1].removeprefix(b"\xef\xbb\xbf") if head else b""
            if first.strip() == b"{":
                rest = head + list(self._stream)
                whole = b"".join(rest).removeprefix(b"\xef\xbb\xbf")
                if _is_json(whole):
                    yield Record(whole.strip(), self.name, len(head), byte_offset=0)
                    return
                lines = rest
            else:
                lines = itertools.chain(head, self._stream)
        offset = 0
        for number, raw in enumerate(lines, start=1):
            start, offset = offset, offset + len(raw)
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield Record(raw, self.name, number, byte_offset=start)


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


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
