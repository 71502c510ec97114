"""Create otrules' topics when missing; the changelog is co-partitioned with the input."""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from otrules.consumers.kafka.settings import KafkaSettings
from otrules.consumers.kafka.transaction import Limits

log = structlog.get_logger("otrules.consume")


def ensure_topics(settings: KafkaSettings) -> int:
    """Create missing topics; return the input topic's partition count."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="otrules-admin",
                             **settings.service_client)
    try:
        existing = set(admin.list_topics())
        partitions = settings.partitions
        if settings.input_topic in existing:
            described = admin.describe_topics([settings.input_topic])
            partitions = len(described[0]["partitions"])
        wanted = {
            settings.input_topic: {},
            settings.output_topic: {},
            settings.dlq_topic: {},
            settings.changelog_topic: {"cleanup.policy": "compact"},
            settings.open_topic: {"cleanup.policy": "compact"},
        }
        new = [NewTopic(name, partitions, settings.replication_factor, topic_configs=configs)
               for name, configs in wanted.items() if name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another instance created it first
                admin.create_topics(new)
        return partitions
    finally:
        admin.close()


def record_limits(settings: KafkaSettings) -> Limits:
    """The largest record each output topic takes: --max-record-bytes, or the topic's own
    max.message.bytes when that is smaller (an operator may have lowered it)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    names = {"output": settings.output_topic, "dlq": settings.dlq_topic, "changelog": settings.changelog_topic}
    limits = dict.fromkeys(names, settings.max_record_bytes)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="otrules-admin",
                             **settings.service_client)
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in names.values()]
        described = admin.describe_configs(resources, config_filter="all")
        for role, topic in names.items():
            entry = _topic_config(described, topic).get("max.message.bytes")
            if entry is not None:
                limits[role] = min(limits[role], int(entry["value"] if isinstance(entry, dict) else entry))
    except Exception as exc:  # an ACL may forbid it: the setting alone then decides
        log.warning("could not read the topics' max.message.bytes; using --max-record-bytes",
                    error=type(exc).__name__)
    finally:
        admin.close()
    return Limits(**limits)


def _topic_config(described: Any, topic: str) -> dict[str, Any]:
    if isinstance(described, dict):
        for by_name in described.values():
            if isinstance(by_name, dict) and topic in by_name:
                return dict(by_name[topic])
    return {}
