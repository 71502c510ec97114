"""Create otrules' topics when missing; the changelog is co-partitioned with the input."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from otrules.consumers.kafka.settings import KafkaSettings


def ensure_topics(settings: KafkaSettings) -> int:
    """Create missing topics; return the input topic's partition count."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="otrules-admin", **settings.client)
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
        }
        new = [NewTopic(name, partitions, settings.replication_factor, topic_configs=configs)
               for name, configs in wanted.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another instance created it first
        return partitions
    finally:
        admin.close()
