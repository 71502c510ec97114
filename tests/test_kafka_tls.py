"""TLS and SASL on a real broker: `otrules produce`, `consume` and `serve --bootstrap-servers` through
mutual TLS and through SASL_SSL (SCRAM-SHA-512), and a wrong password or an untrusted certificate
stopping each of them at start-up with one line and status 3, never a traceback, never the password.

The broker is `kafka_secure` (tests/kafka_support.py): a second local broker with those listeners
beside PLAINTEXT, which the tests use only to create topics and to read what the commands wrote."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kafka_support import SecureKafka, unique_name
from test_kafka_service import (  # noqa: F401 - the fixture stops a failed test's consumers
    Consumer,
    Topics,
    _stop_leftover_consumers,
    embedded_run,
    open_table,
    read_all,
    recommendations,
    stream,
)
from test_serve import SERVICE, Server, hook

pytestmark = pytest.mark.kafka


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without OTRULES_* settings of the developer's own, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("OTRULES_")}, "PYTHONUNBUFFERED": "1", **extra}


def _tls(kafka: SecureKafka, ca: Path | None = None, client_cert: bool = True) -> tuple[str, list[str]]:
    """(bootstrap servers, options) of the mutual-TLS listener."""
    args = ["--security-protocol", "SSL", "--ssl-cafile", str(ca or kafka.ca)]
    if client_cert:
        args += ["--ssl-certfile", str(kafka.client_cert), "--ssl-keyfile", str(kafka.client_key)]
    return kafka.ssl, args


def _sasl(kafka: SecureKafka, ca: Path | None = None) -> tuple[str, list[str]]:
    """(bootstrap servers, options but the password) of the SASL_SSL listener."""
    return kafka.sasl_ssl, ["--security-protocol", "SASL_SSL", "--sasl-mechanism", kafka.mechanism,
                            "--sasl-username", kafka.username, "--ssl-cafile", str(ca or kafka.ca)]


@pytest.mark.parametrize("listener", ["mutual-tls", "sasl-ssl"])
def test_produce_consume_and_serve_work_through_tls_and_sasl(kafka_secure: SecureKafka, tmp_path: Path, listener: str):
    kafka = kafka_secure
    lines = stream(30, seed=31)  # as test_kafka_serve: a patient is left with an open recommendation
    expected, table = embedded_run(lines)
    assert expected and table
    topics = Topics(kafka.plaintext, partitions=2)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    password_file = tmp_path / "sasl-password"
    password_file.write_text(kafka.password + "\n")  # as a secret mount or `echo` leaves it
    if listener == "mutual-tls":
        bootstrap, args = _tls(kafka)
        env, consume_args = _clean_env(), args
    else:
        bootstrap, args = _sasl(kafka)
        env = _clean_env(OTRULES_SASL_PASSWORD=kafka.password)  # produce and serve: the variable
        consume_args = [*args, "--sasl-password-file", str(password_file)]  # consume: the file

    produced = subprocess.run([sys.executable, "-m", "otrules", "produce", "--input", str(events),
                               "--bootstrap-servers", bootstrap, "--topic", topics.input, *args],
                              capture_output=True, text=True, env=env, timeout=120)
    assert produced.returncode == 0, produced.stderr
    assert f"sent {len(lines)} events to {topics.input}" in produced.stderr

    consumer = Consumer(bootstrap, topics, unique_name(listener), tmp_path, *consume_args)
    server = None
    try:
        assert recommendations(read_all(kafka.plaintext, topics.output, len(expected))) == expected
        deadline = time.monotonic() + 60
        while open_table(kafka.plaintext, topics.open) != table and time.monotonic() < deadline:
            time.sleep(0.5)
        server = Server(tmp_path, "--bootstrap-servers", bootstrap, "--input-topic", topics.input,
                        "--open-topic", topics.open, *args, env=env)
        patient, ids = max(table.items(), key=lambda kv: len(kv[1]))
        deadline = time.monotonic() + 60
        cards = server.client.post(SERVICE, json=hook(patient)).json()["cards"]
        while {c["uuid"] for c in cards} != set(ids) and time.monotonic() < deadline:  # catching up
            time.sleep(0.3)
            cards = server.client.post(SERVICE, json=hook(patient)).json()["cards"]
        assert {c["uuid"] for c in cards} == set(ids)
        # feedback goes back through serve's producer, and consume closes the card
        feedback = {"feedback": [{"card": cards[0]["uuid"], "outcome": "overridden",
                                  "outcomeTimestamp": "2026-11-30T10:00:00Z",
                                  "overrideReason": {"reason": cards[0]["overrideReasons"][1]}}]}
        assert server.client.post(f"{SERVICE}/feedback", json=feedback).status_code == 200
        left = cards
        while cards[0]["uuid"] in {c["uuid"] for c in left} and time.monotonic() < deadline + 60:
            time.sleep(0.3)
            left = server.client.post(SERVICE, json=hook(patient)).json()["cards"]
        assert {c["uuid"] for c in left} == set(ids) - {cards[0]["uuid"]}
    finally:
        serve_log = server.stop() if server is not None else ""
        consume_log = consumer.terminate()
    assert "rejected 0" in consume_log
    for text in (produced.stderr, consume_log, serve_log):
        assert kafka.password not in text
        assert "Traceback" not in text
    if listener == "sasl-ssl":
        assert '"sasl_password_file": "' in consume_log  # the configuration line names the file, not what it holds


def _start(command: str, bootstrap: str, args: list[str], env: dict[str, str], tmp: Path) -> list[str]:
    topic = unique_name("t")
    extra = {"consume": ["--http-port", "-1", "--state-dir", str(tmp / "state"), "--input-topic", topic],
             "produce": ["--topic", topic],
             "serve": ["--port", "0", "--input-topic", topic, "--open-topic", f"{topic}.open"]}[command]
    return [sys.executable, "-m", "otrules", command, "--bootstrap-servers", bootstrap, *extra, *args]


REFUSALS = {
    "wrong-password": r"the SASL SCRAM-SHA-512 login of user 'otrules' failed: check --sasl-username and the "
                      r"password \(OTRULES_SASL_PASSWORD or --sasl-password-file\)",
    "untrusted-certificate": r"its TLS certificate cannot be trusted \([^()]+\): check --ssl-cafile",
    "no-client-certificate": r"the broker refused this client's TLS certificate, or wants one: check --ssl-certfile "
                             r"and --ssl-keyfile",
}


@pytest.mark.parametrize(("command", "failure"), [
    (command, failure) for command in ("consume", "produce", "serve")
    for failure in ("wrong-password", "untrusted-certificate", "no-client-certificate")
])
def test_a_refused_login_or_certificate_stops_the_command_at_once_with_one_line_and_status_3(
        kafka_secure: SecureKafka, tmp_path: Path, command: str, failure: str):
    kafka = kafka_secure
    wrong = f"wrong-{secrets.token_hex(8)}"
    env = _clean_env(OTRULES_SASL_PASSWORD=kafka.password)
    if failure == "wrong-password":
        bootstrap, args = _sasl(kafka)
        env["OTRULES_SASL_PASSWORD"] = wrong
    elif failure == "untrusted-certificate":
        bootstrap, args = _sasl(kafka, ca=kafka.rogue_ca)  # the right password, sent to no one
    else:
        bootstrap, args = _tls(kafka, client_cert=False)
        del env["OTRULES_SASL_PASSWORD"]
    started = time.monotonic()
    # The default --connect-timeout (60 s) is left: a refusal must not wait for it.
    done = subprocess.run(_start(command, bootstrap, args, env, tmp_path), capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    took = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert kafka.password not in done.stderr and wrong not in done.stderr
    said = [line for line in done.stderr.splitlines() if not line.startswith("{")]  # the rest are JSON log lines
    assert len(said) == 1, done.stderr
    if failure == "wrong-password":
        # kafka-python 3.0.12 sometimes reads the broker's close of a failed login before the login's
        # answer (in about 1 start in 3 here), on one attempt or on all of them: the refusal then comes
        # late, or it looks like an outage and the line says what that most often means
        # (docs/operations.md, "Known issues"). Either way: status 3, one line, no secret.
        if "could not reach Kafka" in said[0]:
            assert said[0].endswith("with SASL that is most often a wrong --sasl-username or password "
                                    "(OTRULES_SASL_PASSWORD or --sasl-password-file)"), said[0]
            return
    else:
        assert took < 30, f"took {took:.1f} s: it waited instead of stopping\n{done.stderr[-3000:]}"
    assert re.fullmatch(rf"otrules {command}: Kafka at {re.escape(bootstrap)} refused the connection: "
                        + REFUSALS[failure], said[0]), said[0]
