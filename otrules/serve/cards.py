"""Open recommendations as CDS Hooks 2.0 cards (contracts.md §9).

A card's `uuid` is the recommendation id, so the EHR's feedback names the
recommendation it answers. Each card offers one suggestion, "Accept" (CDS Hooks
feedback can only say `accepted` with a suggestion to name), the override
reasons a clinician can give instead, and a link to the patient's page.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from urllib.parse import quote

from otrules.schemas.cds_hooks import Card, Coding, Link, Source, Suggestion
from otrules.schemas.recommendations import INDICATORS, Recommendation

SERVICE_ID = "otrules"
OVERRIDE_SYSTEM = "urn:otrules:override-reason"
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("not-clinically-relevant", "Not clinically relevant for this patient"),
    ("already-addressed", "Already addressed"),
    ("patient-declined", "Patient declined"),
    ("disagree-with-evidence", "The evidence does not support it"),
    ("other", "Other reason"),
)
KIND_SYSTEM = "urn:otrules:recommendation-kind"
ACCEPT_NAMESPACE = uuid.UUID("0b5b8e57-3c5e-4c8a-9a40-5d0f1d2b7e31")


def accept_uuid(recommendation_id: str) -> str:
    """The uuid of a card's one suggestion, "Accept"."""
    return str(uuid.uuid5(ACCEPT_NAMESPACE, recommendation_id))


def most_urgent_first(recs: Iterable[Recommendation]) -> list[Recommendation]:
    """critical, warning, info; within each the newest first, then by id (a stable order)."""
    recs = sorted(recs, key=lambda r: r.recommendation_id)
    recs.sort(key=lambda r: r.occurred_at, reverse=True)
    recs.sort(key=lambda r: INDICATORS.index(r.indicator), reverse=True)
    return recs


def card(rec: Recommendation, base_url: str) -> Card:
    link = f"{base_url.rstrip('/')}/patients/{patient_path(rec.patient_id)}"
    return Card(
        uuid=rec.recommendation_id,
        summary=rec.summary,
        detail=rec.detail or None,
        indicator=rec.indicator,
        source=Source(label=rec.source.label, topic=Coding(system=KIND_SYSTEM, code=rec.kind,
                                                           display=rec.kind.replace("_", " "))),
        suggestions=[Suggestion(label="Accept", uuid=accept_uuid(rec.recommendation_id), isRecommended=True)],
        selectionBehavior="at-most-one",
        overrideReasons=[Coding(system=OVERRIDE_SYSTEM, code=code, display=display)
                         for code, display in OVERRIDE_REASONS],
        links=[Link(label="Open in otrules", url=link, type="absolute")],
    )


def patient_path(patient_id: str) -> str:
    """A patient id after /patients/: every reserved character encoded; an id of dots alone as a query
    (a `..` segment, even written %2E%2E, is climbed out of by every URL parser)."""
    return "?id=" + quote(patient_id, safe="") if set(patient_id) <= {"."} else quote(patient_id, safe="")


def override_display(code: str) -> str | None:
    return dict(OVERRIDE_REASONS).get(code)
