"""The open-recommendations table (`ot.recommendations.open`, contracts.md §8): one compacted row per
patient, the JSON list of its open recommendations, or a tombstone when none is open. Dashboards and
`otrules serve` catch up from it instead of replaying the history."""

from __future__ import annotations

import orjson


def open_row(state: bytes | None) -> bytes | None:
    """A patient's row, from its state as stored (None: no open recommendation, or no state)."""
    if state is None or b'"open":' not in state:
        return None
    recs = orjson.loads(state).get("open")  # each the recommendation's own JSON text (engine/state.py)
    return b"[" + b",".join(rec.encode() for rec in recs) + b"]" if recs else None


def fit_row(row: bytes | None, limit: int) -> bytes | None:
    """The row within the record size limit: past it, the Markdown `detail` goes first (the card's
    summary, evidence and ids stay), then the oldest recommendations (the newest are kept)."""
    if row is None or len(row) + 200 <= limit:
        return row
    recs = [{k: v for k, v in rec.items() if k != "detail"} for rec in orjson.loads(row)]
    while recs and len(orjson.dumps(recs)) + 200 > limit:
        recs.pop(0)
    return orjson.dumps(recs) if recs else None
