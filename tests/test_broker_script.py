"""Pieces of scripts/kafka/broker.py that need no JVM."""

from __future__ import annotations

import base64

from kafka_support import _broker_module


def test_cluster_ids_never_start_with_a_dash_which_storage_tool_would_take_for_an_option():
    broker = _broker_module()
    ids = [broker._cluster_id() for _ in range(5000)]  # about 78 would start with '-' without the guard
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)


def test_security_adds_the_tls_and_sasl_listeners_and_scram_users_at_format_time(tmp_path):
    broker = _broker_module()
    security = broker.BrokerSecurity(keystore=tmp_path / "broker.p12", keystore_password="store-pw",
                                     truststore=tmp_path / "trust.p12", truststore_password="store-pw",
                                     scram_users={"otrules": "pw-1"})
    assert "store-pw" not in repr(security) and "pw-1" not in repr(security)
    assert security.format_args() == ["--add-scram", "SCRAM-SHA-512=[name=otrules,password=pw-1]"]
    b = broker.Broker(tmp_path / "b", security=security)
    b.port, b.controller_port, b.ssl_port, b.sasl_ssl_port = 1, 2, 3, 4
    props = b._properties()
    assert props["listeners"] == ("PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2,SSL://127.0.0.1:3,"
                                  "SASL_SSL://127.0.0.1:4")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1,SSL://127.0.0.1:3,SASL_SSL://127.0.0.1:4"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["listener.name.ssl.ssl.client.auth"] == "required"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert (b.ssl_bootstrap_servers, b.sasl_ssl_bootstrap_servers) == ("127.0.0.1:3", "127.0.0.1:4")
    plain = broker.Broker(tmp_path / "p")
    plain.port, plain.controller_port = 1, 2
    assert plain._properties()["listeners"] == "PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2"
