"""Identifiers in logs are keyed hashes, never the values (no PHI above debug level).

The same key gives the same hash across instances, so an operator can follow
one patient or event through the logs without the logs holding the id; the
key is configuration (OTRULES_LOG_HASH_KEY), random per process if unset.

Tracebacks keep their frames but lose their messages: `redact_exceptions`, a
structlog processor, renders every exception of a chain as its class and,
for a rejected event, the field (`EventRejected: measures[0].score (value
withheld)`), because an exception's text may carry a score or an identifier.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
import traceback
from typing import Any

_key = secrets.token_bytes(32)


def set_key(key: str | None) -> None:
    global _key
    _key = key.encode() if key else secrets.token_bytes(32)


def hash_id(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else value.encode()
    return hmac.new(_key, raw, hashlib.sha256).hexdigest()[:16]


# ---------------------------------------------------------------- tracebacks

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_MAX_FIELD_CHARS = 200


def redact_exceptions(_logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: `exc_info` becomes `exception`, a traceback without messages or locals.

    Frames (file, line, function) and their source lines stay: they are code, not data. Each
    exception of the chain (`__cause__`, `__context__`, exception groups) shows only its class,
    plus its `field` when it has one. Put it before `format_exc_info` / `ConsoleRenderer`: they
    then find the rendered `exception` string and no `exc_info` (the console renderer would
    otherwise print the message and, with rich, the frames' local variables).

    Debug events pass through untouched: values may appear at debug level, and only there."""
    if method_name == "debug" or "exc_info" not in event_dict:
        return event_dict
    exc = _exception_of(event_dict.pop("exc_info"))
    if exc is not None:
        event_dict["exception"] = render_exception(exc)
    return event_dict


def render_exception(exc: BaseException) -> str:
    """The traceback of `exc` and its chain, as Python prints it, with every message withheld."""
    chain: list[tuple[BaseException, str | None]] = []  # newest first, with how it follows the older one
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__cause__ is not None:
            older, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            older, link = current.__context__, _CONTEXT
        else:
            older, link = None, None
        chain.append((current, link if older is not None and id(older) not in seen else None))
        current = older
    out: list[str] = []
    for item, link in reversed(chain):
        if link is not None:
            out.append(link)
        if item.__traceback__ is not None:
            out.append("Traceback (most recent call last):\n")
            frames = traceback.StackSummary.extract(traceback.walk_tb(item.__traceback__), capture_locals=False)
            out.extend(frames.format())
        out.append(_headline(item) + "\n")
        if isinstance(item, BaseExceptionGroup):
            for n, sub in enumerate(item.exceptions, 1):
                out.append(f"  +---------------- {n} of {len(item.exceptions)} ----------------\n")
                out.extend(f"  | {line}\n" for line in render_exception(sub).splitlines())
    return "".join(out).rstrip("\n")


def _headline(exc: BaseException) -> str:
    """`module.Class: field (value withheld)`, or `module.Class (message withheld)`; never the message
    (nor its notes, nor a SyntaxError's source text)."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    field = getattr(exc, "field", None)
    if isinstance(field, str) and field.strip():
        shown = " ".join(field.split())  # one line
        if len(shown) > _MAX_FIELD_CHARS:
            shown = shown[: _MAX_FIELD_CHARS - 1] + "…"
        return f"{name}: {shown} (value withheld)"
    return f"{name} (message withheld)"


def _exception_of(exc_info: Any) -> BaseException | None:
    """The exception an `exc_info` value stands for (as structlog reads it): an exception, an
    (type, value, traceback) tuple, or a true value for the exception being handled."""
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    if exc_info:
        return sys.exc_info()[1]
    return None
