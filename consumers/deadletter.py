"""Dead letters: rejected input is kept, with the reason, never dropped."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import IO


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str  # file name, "-" for stdin, or topic
    line: int | None
    reason: str  # names the field and the value: for the dead-letter sink only
    raw: bytes
    field: str  # the field alone: what stderr and logs may show
    byte_offset: int | None = None  # where the line starts in the file
    fhir: dict[str, object] | None = None  # a FHIR entry: its Bundle id/type, entry index (raw is the resource)


class DeadLetterSink:
    """JSONL dead letters: the reason and the original line, byte for byte.

    `original` holds the line as text when it is valid UTF-8; otherwise
    `original_base64` holds the bytes.
    """

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream
        self.count = 0

    def write(self, letter: DeadLetter) -> None:
        self.count += 1
        if self._stream is None:
            return
        record: dict[str, object] = {"source": letter.source, "line": letter.line, "reason": letter.reason,
                                     "field": letter.field}
        if letter.byte_offset is not None:
            record["byte_offset"] = letter.byte_offset
        if letter.fhir is not None:
            record["fhir"] = letter.fhir
        try:
            record["original"] = letter.raw.decode("utf-8")
        except UnicodeDecodeError:
            record["original_base64"] = base64.b64encode(letter.raw).decode("ascii")
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()
