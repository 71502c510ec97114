"""pytest plugin: a real Kafka broker for integration tests (never a mock).

Where the broker comes from, first match wins:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: that cluster (not started or stopped here).
2. A Docker engine answers and testcontainers is installed: a Kafka container.
3. Otherwise: a single-node KRaft broker on 127.0.0.1 from
   ``scripts/kafka/broker.py`` (Java 17 + Maven; jars cached outside the repo).

The broker starts lazily, once per session, only if a test asks for
``kafka_bootstrap`` or ``kafka_broker``; such tests are marked ``kafka``
automatically, so ``-m "not kafka"`` runs the suite without a broker.

``kafka_secure`` is a second local broker (whatever the first one is), with a
TLS listener that requires client certificates and a SASL_SSL listener with
SCRAM-SHA-512 logins, beside PLAINTEXT; its certificates are made with
openssl and keytool in a temporary folder (tests/tls_certs.py).
Set ``OTRULES_SKIP_KAFKA=1`` to skip them instead of failing when no broker
can be had (the default is to fail: CI must not silently skip them).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROKER_SCRIPT = ROOT / "scripts" / "kafka" / "broker.py"
KAFKA_FIXTURES = {"kafka_bootstrap", "kafka_broker", "kafka_secure"}


def _broker_module():
    """scripts/ is not a package: load broker.py by path, once."""
    name = "otrules_kafka_broker"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BROKER_SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pytest_configure(config: pytest.Config) -> None:
    # Registered here rather than in pyproject so the plugin is self-contained
    # (the suite runs with --strict-markers).
    config.addinivalue_line("markers", "kafka: needs a real Kafka broker (started on demand)")
    # kafka-python 3.0 loads its protocol schemas with importlib.resources'
    # legacy API: ~100 DeprecationWarnings per session on Python 3.11/3.12.
    config.addinivalue_line("filterwarnings", "ignore:read_text is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:open_text is deprecated:DeprecationWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


# --------------------------------------------------------------------------
# Where the broker comes from
# --------------------------------------------------------------------------

def _docker_answers() -> bool:
    """True only if testcontainers is installed and a Docker engine answers a ping."""
    try:
        import docker  # installed with testcontainers
        import testcontainers.kafka  # noqa: F401
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, permission denied, daemon down: all mean "no Docker"
        return False


def _testcontainers_kafka():
    """A KRaft Kafka container set up like the local broker (one replica of everything)."""
    from testcontainers.kafka import KafkaContainer

    image = os.environ.get("OTRULES_KAFKA_IMAGE", "confluentinc/cp-kafka:7.9.0")  # Kafka 3.9
    container = KafkaContainer(image).with_kraft()
    # testcontainers only lowers the offsets topic's replication factor; the
    # transaction state log would default to 3 replicas and transactions fail.
    for key, value in {"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
                       "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
                       "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1"}.items():
        container.with_env(key, value)
    return container


@pytest.fixture(scope="session")
def _kafka_cluster() -> Iterator[tuple[str, Any]]:
    """(bootstrap servers, Broker or None), for the whole session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external, None
        return
    if _docker_answers():
        with _testcontainers_kafka() as container:
            yield container.get_bootstrap_server(), None
        return
    broker_mod = _broker_module()
    broker = broker_mod.Broker()
    error = None
    try:
        broker.start()
    except broker_mod.BrokerError as exc:
        error = exc
    if error is not None:  # reported outside the except block: one message, not a chain
        broker.close()
        if os.environ.get("OTRULES_SKIP_KAFKA") == "1":
            pytest.skip(f"no Kafka broker: {error}")
        pytest.fail(f"could not start a local Kafka broker (set KAFKA_BOOTSTRAP_SERVERS to use "
                    f"another one): {error}", pytrace=False)
    try:
        yield broker.bootstrap_servers, broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_cluster: tuple[str, Any]) -> str:
    """Bootstrap servers ("host:port[,...]") of a real Kafka broker."""
    return _kafka_cluster[0]


@pytest.fixture(scope="session")
def kafka_broker(_kafka_cluster: tuple[str, Any]):
    """The local Broker (restart(), stop(kill=True) ...), or None for an external/container one."""
    return _kafka_cluster[1]


@dataclass(frozen=True)
class SecureKafka:
    """A broker with TLS and SASL listeners, and what a client needs to use them."""

    plaintext: str  # bootstrap servers of each listener
    ssl: str  # mutual TLS: --ssl-cafile ca, --ssl-certfile client_cert, --ssl-keyfile client_key
    sasl_ssl: str  # TLS (--ssl-cafile ca) and a SCRAM-SHA-512 login
    ca: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # signed nothing the broker holds
    username: str
    password: str = field(repr=False)
    mechanism: str = "SCRAM-SHA-512"


@pytest.fixture(scope="session")
def kafka_secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A second local broker (the PLAINTEXT one is left alone) with SSL and SASL_SSL listeners."""
    import tls_certs

    broker_mod = _broker_module()
    folder = tmp_path_factory.mktemp("kafka-secure")
    password = secrets.token_hex(16)
    error: Exception | None = None
    broker = None
    try:
        files = tls_certs.make(folder / "tls")
        security = broker_mod.BrokerSecurity(keystore=files.keystore, keystore_password=files.store_password,
                                             truststore=files.truststore, truststore_password=files.store_password,
                                             scram_users={"otrules": password})
        broker = broker_mod.Broker(folder / "broker", security=security)
        broker.start()
    except (broker_mod.BrokerError, tls_certs.ToolMissing, RuntimeError) as exc:
        error = exc
    if error is not None:  # reported outside the except block: one message, not a chain
        if broker is not None:
            broker.close()
        if os.environ.get("OTRULES_SKIP_KAFKA") == "1":
            pytest.skip(f"no TLS/SASL Kafka broker: {error}")
        pytest.fail(f"could not start a local Kafka broker with TLS and SASL: {error}", pytrace=False)
    assert broker is not None
    try:
        yield SecureKafka(broker.bootstrap_servers, broker.ssl_bootstrap_servers, broker.sasl_ssl_bootstrap_servers,
                          files.ca, files.client_cert, files.client_key, files.rogue_ca, "otrules", password)
    finally:
        broker.close()


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def unique_name(prefix: str) -> str:
    """A topic/group name unused so far: external clusters keep state between runs."""
    return f"{prefix}-{time.time_ns():x}"


def create_topic(bootstrap: str, name: str, partitions: int = 1, compacted: bool = False, *,
                 replication_factor: int = 1, configs: dict[str, str] | None = None,
                 timeout_s: float = 30) -> str:
    """Create a topic and wait until every partition has a leader, then return its name.

    Waiting matters on KRaft: CreateTopics returns before the new partitions
    reach the broker's metadata cache, and a producer racing it gets
    UNKNOWN_TOPIC_OR_PARTITION retries (or auto-creates a wrong topic).
    """
    from kafka import KafkaAdminClient

    topic_configs = dict(configs or {})
    if compacted:
        topic_configs.setdefault("cleanup.policy", "compact")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="otrules-tests-admin")
    try:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": replication_factor,
                                    "configs": topic_configs}},
                            timeout_ms=int(timeout_s * 1000))
        admin.wait_for_topics([name], timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()
    return name
