"""Identifiers in logs are keyed hashes, never the values (no PHI above debug level).

The same key gives the same hash across instances, so an operator can follow
one patient or event through the logs without the logs holding the id; the
key is configuration (OTRULES_LOG_HASH_KEY), random per process if unset.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_key = secrets.token_bytes(32)


def set_key(key: str | None) -> None:
    global _key
    _key = key.encode() if key else secrets.token_bytes(32)


def hash_id(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else value.encode()
    return hmac.new(_key, raw, hashlib.sha256).hexdigest()[:16]
