"""Dead letters: rejected input is kept, with the reason, never dropped."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import IO

MAX_ORIGINAL = 64 * 1024
"""Bytes of the original a dead letter keeps (a longer one is cut, its size and SHA-256 kept)."""
SLACK = 4096
"""Bytes a dead-letter file may run ahead of its input: the first letter of a small file (a 16-byte
line that is not JSON) is larger than the line, and still keeps it."""
GROUP_REASON = 512  # characters of the first reason a grouped letter quotes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str  # file name, "-" for stdin, or topic
    line: int | None
    reason: str  # names the field and the value: for the dead-letter sink only
    raw: bytes
    field: str  # the field alone: what stderr and logs may show
    byte_offset: int | None = None  # where the line starts in the file
    fhir: dict[str, object] | None = None  # a FHIR entry: its Bundle id/type, entry index (raw is the resource)
    read_to: int | None = None  # bytes of the input read up to the end of this letter's line


class DeadLetterSink:
    """JSONL dead letters: the reason and the original line, byte for byte.

    `original` holds the line as text when it is valid UTF-8; otherwise
    `original_base64` holds the bytes. A dead-letter file is never larger than
    the input read so far (contracts.md §7), give or take SLACK bytes and one
    grouped letter per line:

    - an original over MAX_ORIGINAL bytes is cut there, with `original_size`,
      `original_sha256` and `original_truncated`;
    - a letter that would take the file past the bytes of input read so far
      keeps no original, only its `original_size` and `original_sha256`;
    - when even that does not fit (many small refused entries of one Bundle),
      the rest of that line's letters are written as one: `count` letters, the
      `first_entry` and `last_entry` of them, the first one's field and reason.
    """

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream
        self.count = 0
        self.bytes = 0
        self._group: dict[str, object] | None = None  # letters of one line and field written as one
        self._group_key: tuple[str, int | None] | None = None

    def write(self, letter: DeadLetter) -> None:
        self.count += 1
        if self._stream is None:
            return
        key = (letter.source, letter.line)
        if self._group_key is not None and self._group_key != key:
            self._write_group()
        record: dict[str, object] = {"source": letter.source, "line": letter.line, "reason": letter.reason,
                                     "field": letter.field}
        if letter.byte_offset is not None:
            record["byte_offset"] = letter.byte_offset
        if letter.fhir is not None:
            record["fhir"] = letter.fhir
        raw = letter.raw
        cut = len(raw) > MAX_ORIGINAL
        if cut:
            record.update(original_size=len(raw), original_sha256=hashlib.sha256(raw).hexdigest(),
                          original_truncated=True)
            raw = raw[:MAX_ORIGINAL]
        try:
            record["original"] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if cut and exc.start >= len(raw) - 3:  # the cut went through a character
                record["original"] = raw[:exc.start].decode("utf-8")
            else:
                record["original_base64"] = base64.b64encode(raw).decode("ascii")
        text = _dumps(record)
        budget = None if letter.read_to is None else letter.read_to + SLACK
        if self._group_key == key and letter.fhir is not None:  # the line's letters are grouped already
            self._add_to_group(key, letter)
            return
        if budget is not None and self.bytes + len(text.encode("utf-8")) > budget:
            record.pop("original", None)
            record.pop("original_base64", None)
            record.pop("original_truncated", None)
            record.update(original_size=len(letter.raw), original_sha256=hashlib.sha256(letter.raw).hexdigest())
            text = _dumps(record)
            if letter.fhir is not None and self.bytes + len(text.encode("utf-8")) > budget:
                self._add_to_group(key, letter)
                return
        self._emit(text)

    def _add_to_group(self, key: tuple[str, int | None], letter: DeadLetter) -> None:
        entry = (letter.fhir or {}).get("entry")
        if self._group is None:
            self._group_key = key
            reason = letter.reason if len(letter.reason) <= GROUP_REASON else letter.reason[:GROUP_REASON] + "…"
            self._group = {"source": letter.source, "line": letter.line, "count": 0, "first_entry": entry,
                           "last_entry": entry, "field": letter.field, "reason": f"(the first of these) {reason}"}
            if letter.byte_offset is not None:
                self._group["byte_offset"] = letter.byte_offset
        self._group["count"] = int(str(self._group["count"])) + 1
        self._group["last_entry"] = entry

    def _write_group(self) -> None:
        if self._group is not None:
            self._emit(_dumps(self._group))
        self._group = self._group_key = None

    def _emit(self, text: str) -> None:
        assert self._stream is not None
        self._stream.write(text)
        self.bytes += len(text.encode("utf-8"))

    def flush(self) -> None:
        """Write what is grouped, then flush the stream (call at the end of the input)."""
        if self._stream is not None:
            self._write_group()
            self._stream.flush()


def _dumps(record: dict[str, object]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
