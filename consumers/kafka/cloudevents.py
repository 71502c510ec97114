"""CloudEvents 1.0 Kafka protocol binding, binary mode, for recommendations.

The value is the recommendation's JSON; the attributes travel as `ce_*`
headers (clinical.md, "Output conventions").
"""

from __future__ import annotations

from otrules.schemas import Recommendation

SPEC_VERSION = b"1.0"
TYPE_PREFIX = "org.otrules.recommendation."


def headers(rec: Recommendation) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", rec.recommendation_id.encode()),
        # a closure (contracts.md §8) is its own type: consumers that list open ones drop it by type
        ("ce_type", (TYPE_PREFIX + ("closed" if rec.status == "closed" else rec.kind)).encode()),
        ("ce_source", f"otrules/{rec.rule.ruleset}/{rec.rule.id}".encode()),
        ("ce_time", (rec.emitted_at or rec.occurred_at).encode()),
        ("ce_subject", rec.plan_id.encode()),
        ("ce_partitionkey", rec.patient_id.encode()),
        ("content-type", b"application/json"),
    ]
