"""TLS and SASL settings without a broker: the kafka-python configuration every client gets, the
settings refused before connecting (exit 2), the password kept out of repr and logs, and which
client errors count as a refusal (exit 3 at once) rather than an outage (retried).
tests/test_kafka_tls.py proves the same on a real broker."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
)

from otrules.cli import main
from otrules.consumers.kafka.connect import refusal
from otrules.consumers.kafka.security import SECURITY_OPTIONS, client_config, problems
from otrules.consumers.kafka.settings import KafkaSettings, option_specs

SASL: dict[str, Any] = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "otrules"}


def test_plaintext_adds_nothing_to_the_clients():
    assert client_config(KafkaSettings()) == {}
    assert problems(KafkaSettings()) == []


def _tls_files(folder: Path) -> dict[str, Path]:
    """A self-signed certificate (also the CA file) and its key, another key, the key encrypted, and junk."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otrules-client")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))

    def pem(k: Any, encryption: Any = None) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               encryption or serialization.NoEncryption())

    files = {"cert": cert.public_bytes(serialization.Encoding.PEM), "key": pem(key), "other_key": pem(other),
             "encrypted_key": pem(key, serialization.BestAvailableEncryption(b"pass-phrase")),
             "junk": b"not a PEM file\n"}
    files["cert_and_key"] = files["cert"] + files["key"]
    out = {}
    for label, data in files.items():
        (folder / f"{label}.pem").write_bytes(data)
        out[label] = folder / f"{label}.pem"
    return out


def test_mutual_tls_settings_reach_the_client(tmp_path: Path):
    f = _tls_files(tmp_path)
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=str(f["cert"]), ssl_certfile=str(f["cert"]),
                             ssl_keyfile=str(f["key"]), ssl_check_hostname=False)
    assert problems(settings) == []
    assert settings.client == {"security_protocol": "SSL", "ssl_check_hostname": False, "ssl_cafile": str(f["cert"]),
                               "ssl_certfile": str(f["cert"]), "ssl_keyfile": str(f["key"])}
    assert settings.service_client == {**settings.client, "bootstrap_timeout_ms": 5000}


def test_the_password_comes_from_the_variable_or_a_file_without_its_newline(tmp_path: Path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    from_file = KafkaSettings(**SASL, sasl_password_file=str(secret))
    assert problems(from_file) == []
    assert from_file.client == {"security_protocol": "SASL_SSL", "ssl_check_hostname": True,
                                "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "otrules",
                                "sasl_plain_password": "s3cret"}
    assert KafkaSettings(**SASL, sasl_password="s3cret").client == from_file.client


def test_the_password_is_in_no_repr_and_masked_in_the_configuration_line():
    settings = KafkaSettings(**SASL, sasl_password="s3cret-value")
    assert "s3cret-value" not in repr(settings)
    assert settings.redacted()["sasl_password"] == "***"
    assert "s3cret-value" not in str(settings.redacted())


@pytest.mark.parametrize(("given", "said"), [
    ({"security_protocol": "SASL_SSL"}, ["needs --sasl-mechanism", "needs --sasl-username", "needs a password"]),
    ({**SASL}, ["needs a password: OTRULES_SASL_PASSWORD or --sasl-password-file"]),
    ({"sasl_username": "otrules", "sasl_password": "x"},
     ["--sasl-username, --sasl-password would be ignored with --security-protocol PLAINTEXT"]),
    ({"ssl_cafile": "ca.pem"}, ["--ssl-cafile would be ignored with --security-protocol PLAINTEXT"]),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p",
      "ssl_cafile": "ca.pem"}, ["--ssl-cafile would be ignored with --security-protocol SASL_PLAINTEXT"]),
    ({"security_protocol": "SSL", "ssl_keyfile": "client.key"}, ["--ssl-keyfile needs --ssl-certfile"]),
    ({**SASL, "sasl_password": "a", "sasl_password_file": __file__}, ["give the SASL password once"]),
    ({**SASL, "sasl_password_file": "/nonexistent/password"}, ["cannot read --sasl-password-file"]),
])
def test_settings_that_disagree_or_would_be_ignored_are_named(given: dict, said: list[str]):
    found = problems(KafkaSettings(**given))
    assert len(found) == len(said), found
    assert all(part in sentence for part, sentence in zip(said, found, strict=True)), found


def test_produce_and_serve_take_the_same_options_as_consume():
    names = {spec.name for spec in option_specs()}
    assert set(SECURITY_OPTIONS) <= names
    for command in ("consume", "produce", "serve"):
        params = {p.name for p in main.commands[command].params}
        assert set(SECURITY_OPTIONS) | {"connect_timeout"} <= params, command


@pytest.mark.parametrize("command", [["consume"], ["produce"], ["serve", "--bootstrap-servers", "127.0.0.1:1"]])
def test_contradicting_settings_are_a_usage_error_before_any_connection(command: list[str], tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not read")
    result = CliRunner().invoke(main, [*command, "--ssl-cafile", str(ca)], env={"OTRULES_SASL_USERNAME": "u"})
    assert result.exit_code == 2, result.output
    assert ("--sasl-username would be ignored with --security-protocol PLAINTEXT: use SASL_SSL (or SASL_PLAINTEXT); "
            "--ssl-cafile would be ignored with --security-protocol PLAINTEXT: use SSL or SASL_SSL") \
        in " ".join(result.output.split())


CONFIG = {"sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "otrules", "sasl_plain_password": "s3cret"}


def _wrapped(cause: BaseException) -> KafkaConnectionError:
    """What kafka-python raises for a failed TLS handshake: its own error, the ssl one as context."""
    try:
        raise cause
    except BaseException as exc:
        try:
            raise KafkaConnectionError(f"Handshake failed: {exc}")  # as kafka-python does: the ssl error becomes the context
        except KafkaConnectionError as wrapped:
            return wrapped
    raise AssertionError("not reached")


def test_a_failed_login_is_a_refusal_naming_the_user_never_the_password():
    reason = refusal(SaslAuthenticationFailedError("invalid credentials"), CONFIG)
    assert reason == ("the SASL SCRAM-SHA-512 login of user 'otrules' failed: check --sasl-username and the "
                      "password (OTRULES_SASL_PASSWORD or --sasl-password-file)")
    assert "s3cret" not in reason


def test_an_untrusted_or_misnamed_certificate_is_a_refusal():
    untrusted = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    untrusted.verify_message = "unable to get local issuer certificate"
    assert refusal(_wrapped(untrusted), {}) == ("its TLS certificate cannot be trusted (unable to get local issuer "
                                                "certificate): check --ssl-cafile")



@pytest.mark.parametrize(("message", "said"), [
    ("Hostname mismatch, certificate is not valid for 'kafka-1'.",
     "its TLS certificate does not name the host connected to (Hostname mismatch, certificate is not valid for "
     "'kafka-1'.): fix the certificate's subjectAltName, or connect by a name it holds (--bootstrap-servers, the "
     "brokers' advertised listeners)"),
    ("IP address mismatch, certificate is not valid for '10.0.0.7'.", "does not name the host connected to"),
    ("certificate has expired", "its TLS certificate is outside its validity period (certificate has expired): "
                                "renew it, or check the clocks of the brokers and of this host"),
    ("certificate is not yet valid", "outside its validity period (certificate is not yet valid)"),
    ("self-signed certificate in certificate chain", "cannot be trusted (self-signed certificate in certificate "
                                                     "chain): check --ssl-cafile"),
])
def test_a_certificate_refusal_says_what_to_fix(message: str, said: str):
    """Only a chain that leads to no trusted CA is a matter of --ssl-cafile; --ssl-check-hostname is never
    the advice (turning the name check off is not a fix)."""
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    error.verify_message = message
    reason = refusal(_wrapped(error), {})
    assert reason is not None and said in reason, reason
    assert "--ssl-check-hostname" not in reason
    if "chain" not in message:
        assert "--ssl-cafile" not in reason


def test_a_refused_client_certificate_and_unusable_tls_files_are_refusals():
    alert = KafkaConnectionError("[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate (_ssl.c:2580)")
    assert refusal(alert, {}) == ("the broker refused this client's TLS certificate, or wants one: check "
                                  "--ssl-certfile and --ssl-keyfile")
    files = ssl.SSLError(136, "[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found")
    files.reason = "NO_CERTIFICATE_OR_CRL_FOUND"
    assert refusal(files, {}) == ("the TLS files cannot be used (NO_CERTIFICATE_OR_CRL_FOUND): check --ssl-cafile, "
                                  "--ssl-certfile and --ssl-keyfile")


@pytest.mark.parametrize("error", [ConnectionRefusedError(111, "Connection refused"),
                                   KafkaConnectionError("socket disconnected"),
                                   _wrapped(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))])
def test_an_outage_is_not_a_refusal(error: BaseException):
    assert refusal(error, CONFIG) is None


def test_operations_md_lists_every_tls_and_sasl_option_with_its_variable():
    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    section = text.split("### TLS and SASL", 1)[1].split("\n### ", 1)[0]
    for spec in option_specs():
        if spec.name in SECURITY_OPTIONS:
            assert f"`{spec.flag}" in section and f"`{spec.envvar}`" in section, spec.flag


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def _line(self, level: str) -> Any:
        return lambda event, **kw: self.lines.append((level, event, kw))

    def __getattr__(self, level: str) -> Any:
        return self._line(level)


def test_waiting_for_ever_survives_thousands_of_attempts_with_capped_budgets(monkeypatch: pytest.MonkeyPatch):
    """--connect-timeout 0 (wait for ever): attempt 1025 once raised OverflowError (2 ** 1024 as a float)."""
    import threading

    from otrules.consumers.kafka import connect

    stop = threading.Event()
    budgets: list[float] = []

    def attempt(servers: str, config: dict, budget_s: float, stop_: threading.Event) -> str:
        budgets.append(budget_s)
        if len(budgets) == 2000:
            stop.set()
        return "KafkaConnectionError"

    monkeypatch.setattr(connect, "_attempt", attempt)
    monkeypatch.setattr(connect, "_sleep", lambda seconds, stop_: stop_.is_set())
    assert connect.wait_for_cluster("127.0.0.1:1", {}, stop, 0, _Log()) is False
    assert len(budgets) == 2000
    assert budgets[:6] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert set(budgets[4:]) == {10.0}


def test_the_password_file_is_read_once_when_the_settings_are_made(tmp_path: Path):
    """A FIFO, /dev/stdin or <(vault read ...) gives its text once, and a mounted secret may be gone by
    the time a later client connects: every client gets what the file held at start-up."""
    secret = tmp_path / "password"
    secret.write_text("s3cret-once\n")
    settings = KafkaSettings(**SASL, sasl_password_file=str(secret))
    secret.unlink()
    assert problems(settings) == []
    assert settings.client["sasl_plain_password"] == "s3cret-once"
    assert settings.service_client["sasl_plain_password"] == "s3cret-once"
    assert "s3cret-once" not in repr(settings) and "s3cret-once" not in str(settings.redacted())


def test_a_password_fifo_serves_every_client(tmp_path: Path):
    import os
    import threading

    fifo = tmp_path / "password"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as f:
            f.write("s3cret-fifo\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    settings = KafkaSettings(**SASL, sasl_password_file=str(fifo))
    writer.join(5)
    assert problems(settings) == []
    # a second read of the FIFO would block for ever (no writer left): the clients take the text read once
    assert [settings.client["sasl_plain_password"] for _ in range(3)] == ["s3cret-fifo"] * 3


@pytest.mark.parametrize("command", [["consume"], ["produce"], ["serve", "--bootstrap-servers", "127.0.0.1:1"]])
def test_a_password_file_that_is_not_text_is_a_usage_error_naming_the_option(command: list[str], tmp_path: Path):
    secret = tmp_path / "password"
    secret.write_bytes(b"\xff\xfe s3cret \x80\n")
    result = CliRunner().invoke(main, [*command, "--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN",
                                       "--sasl-username", "u", "--sasl-password-file", str(secret)])
    assert result.exit_code == 2, result.output
    assert f"--sasl-password-file {secret} is not UTF-8 text" in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "s3cret" not in result.output


@pytest.mark.parametrize(("given", "said"), [
    ({"ssl_certfile": "cert_and_key"}, None),  # the key may be in the certificate's file
    ({"ssl_cafile": "junk"}, "--ssl-cafile {junk} holds no CA certificate (PEM)"),
    ({"ssl_cafile": "key"}, "--ssl-cafile {key} holds no CA certificate (PEM)"),
    ({"ssl_certfile": "junk", "ssl_keyfile": "key"}, "--ssl-certfile {junk} holds no certificate (PEM)"),
    ({"ssl_certfile": "cert", "ssl_keyfile": "other_key"},
     "--ssl-keyfile {other_key} is not the key of --ssl-certfile {cert}"),
    ({"ssl_certfile": "cert", "ssl_keyfile": "encrypted_key"},
     "the private key in --ssl-keyfile {encrypted_key} is encrypted: otrules takes an unencrypted key"),
    ({"ssl_certfile": "cert", "ssl_keyfile": "junk"}, "--ssl-keyfile {junk} holds no private key (PEM)"),
    ({"ssl_certfile": "cert"}, "--ssl-certfile {cert} holds no private key: give it with --ssl-keyfile"),
    ({"ssl_cafile": "missing"}, "cannot read --ssl-cafile {missing}: No such file or directory"),
])
def test_unusable_tls_files_are_named_before_connecting(tmp_path: Path, given: dict[str, str], said: str | None):
    f = {label: str(path) for label, path in _tls_files(tmp_path).items()}
    f["missing"] = str(tmp_path / "missing.pem")
    chosen: dict[str, Any] = {k: f[v] for k, v in given.items()}
    settings = KafkaSettings(security_protocol="SSL", **chosen)
    found = problems(settings)
    if said is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(said.format(**f)), found


def test_an_encrypted_key_is_a_usage_error_not_a_pass_phrase_prompt(tmp_path: Path):
    """OpenSSL would ask "Enter PEM pass phrase:" on the terminal (and wait) without the refusing callback."""
    f = _tls_files(tmp_path)
    result = CliRunner().invoke(main, ["produce", "--bootstrap-servers", "127.0.0.1:1", "--security-protocol", "SSL",
                                       "--ssl-certfile", str(f["cert"]), "--ssl-keyfile", str(f["encrypted_key"])],
                                input="")
    assert result.exit_code == 2, result.output
    assert "is encrypted" in result.output and "--ssl-keyfile" in result.output


@pytest.mark.parametrize(("error", "said"), [
    (TopicAuthorizationFailedError, "user 'otrules' may not use otrules' topics (TopicAuthorizationFailed): allow "
                                    "READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS and (to create them) CREATE on them"),
    (ClusterAuthorizationFailedError, "user 'otrules' may not act on the cluster (ClusterAuthorizationFailed): allow "
                                      "IDEMPOTENT_WRITE on the cluster"),
    (TransactionalIdAuthorizationFailedError, "user 'otrules' may not use transactional id 'otrules-otrules-i1' "
                                              "(TransactionalIdAuthorizationFailed): allow WRITE and DESCRIBE on it"),
    (SaslAuthenticationFailedError, "the SASL SCRAM-SHA-512 login of user 'otrules' failed"),
])
def test_an_authorization_failure_at_start_is_a_refusal_not_an_outage(monkeypatch: pytest.MonkeyPatch, engine: Any,
                                                                      error: type, said: str):
    """Seen after the probe (the probe only logs in): retried as if the cluster were away, it ended as
    'could not reach Kafka' after --connect-timeout."""
    from otrules.consumers.kafka import service as service_module
    from otrules.consumers.kafka.connect import KafkaRefused

    calls: list[int] = []

    def ensure_topics(settings: KafkaSettings) -> int:
        calls.append(1)
        raise error("denied")

    monkeypatch.setattr(service_module, "ensure_topics", ensure_topics)
    settings = KafkaSettings(**SASL, sasl_password="s3cret-acl", instance_id="i1", connect_timeout=30)
    with pytest.raises(KafkaRefused) as refused:
        service_module.Service(settings, engine).run()
    assert calls == [1]  # not retried
    assert said in str(refused.value) and "s3cret-acl" not in str(refused.value)


def test_a_group_the_principal_may_not_read_is_a_refusal(monkeypatch: pytest.MonkeyPatch, engine: Any):
    from otrules.consumers.kafka import service as service_module
    from otrules.consumers.kafka.connect import KafkaRefused

    def step(self: Any) -> None:
        raise GroupAuthorizationFailedError("denied")

    monkeypatch.setattr(service_module.Service, "_start", lambda self: True)
    monkeypatch.setattr(service_module.Service, "_step", step)
    with pytest.raises(KafkaRefused, match=r"may not use consumer group 'otrules' \(GroupAuthorizationFailed\): "
                                           r"allow READ on it"):
        service_module.Service(KafkaSettings(), engine).run()


@pytest.mark.parametrize(("error", "said"), [
    (KafkaTimeoutError, r"otrules serve: Kafka at 127\.0\.0\.1:1 failed while opening ot\.recommendations\.open "
                        r"\(KafkaTimeoutError\)"),
    (TopicAuthorizationFailedError, r"otrules serve: Kafka at 127\.0\.0\.1:1 refused the connection: this client's "
                                    r"principal may not use otrules' topics \(TopicAuthorizationFailed\).*"),
])
def test_serve_says_in_one_line_why_the_open_table_could_not_be_opened(monkeypatch: pytest.MonkeyPatch, error: type,
                                                                       said: str):
    """After the probe, opening the table can still fail (an ACL, the cluster gone again): was a traceback."""
    import otrules.cli as cli
    from otrules.serve import runner

    def table(settings: Any) -> Any:
        raise error("opening")

    monkeypatch.setattr(cli, "_reach_kafka", lambda *args, **kwargs: None)
    monkeypatch.setattr(runner, "KafkaTable", table)
    result = CliRunner().invoke(main, ["serve", "--bootstrap-servers", "127.0.0.1:1", "--port", "0"])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and re.fullmatch(said, lines[0]), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["consume", "--http-port", "-1"], ["produce"],
                                     ["serve", "--bootstrap-servers", "127.0.0.1:1"]])
@pytest.mark.parametrize("where", ["flag", "variable"])
def test_a_password_on_the_command_line_is_warned_about_once_without_its_value(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str], where: str):
    from otrules.consumers.kafka import connect

    monkeypatch.setattr(connect, "wait_for_cluster", lambda *args, **kwargs: False)  # as if stopped by a signal
    monkeypatch.chdir(tmp_path)
    sasl = ["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "u"]
    args = [*command, *sasl] + (["--sasl-password", "s3cret-flag"] if where == "flag" else [])
    env = {"OTRULES_SASL_PASSWORD": "s3cret-flag"} if where == "variable" else {}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code in (0, 1), result.output  # stopped before Kafka was reached
    warned = result.output.count("the SASL password was given on the command line")
    assert warned == (1 if where == "flag" else 0), result.output
    assert "s3cret-flag" not in result.output


def test_the_help_says_a_password_flag_is_visible_and_warned_about():
    result = CliRunner().invoke(main, ["consume", "--help"], terminal_width=200)
    assert "other users can see it (otrules then warns at start-up)" in " ".join(result.output.split())


def test_no_ssl_check_hostname_without_tls_would_be_ignored():
    found = problems(KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                                   sasl_username="u", sasl_password="p", ssl_check_hostname=False))
    assert found == ["--no-ssl-check-hostname would be ignored with --security-protocol SASL_PLAINTEXT: use SSL or "
                     "SASL_SSL"]
    result = CliRunner().invoke(main, ["produce", "--no-ssl-check-hostname"])
    assert result.exit_code == 2
    assert "--no-ssl-check-hostname would be ignored" in " ".join(result.output.split())


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--sasl-username", "u"], {}, "--sasl-username"),
    (["--no-ssl-check-hostname"], {}, "--ssl-check-hostname"),
    ([], {"OTRULES_SASL_PASSWORD": "s3cret-env"}, "--sasl-password"),
    ([], {"OTRULES_SECURITY_PROTOCOL": "SSL"}, "--security-protocol"),
    (["--connect-timeout", "5"], {}, "--connect-timeout"),
])
def test_serve_without_kafka_refuses_kafka_options_it_would_ignore(tmp_path: Path, args: list[str],
                                                                  env: dict[str, str], named: str):
    result = CliRunner().invoke(main, ["serve", "--port", "0", *args], env=env)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{named} would be ignored without --bootstrap-servers" in text, text
    assert "s3cret-env" not in text


def test_plain_over_sasl_plaintext_is_warned_about_once(monkeypatch: pytest.MonkeyPatch):
    from otrules.consumers.kafka import connect

    monkeypatch.setattr(connect, "wait_for_cluster", lambda *args, **kwargs: False)
    plain = ["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN", "--sasl-username", "u"]
    result = CliRunner().invoke(main, ["produce", *plain], env={"OTRULES_SASL_PASSWORD": "s3cret-plain"})
    assert result.output.count("sends the password in clear text") == 1, result.output
    assert "s3cret-plain" not in result.output
    scram = CliRunner().invoke(main, ["produce", *plain[:3], "SCRAM-SHA-512", *plain[4:]],
                               env={"OTRULES_SASL_PASSWORD": "s3cret-plain"})
    assert "clear text" not in scram.output


@pytest.mark.parametrize(("command", "status"), [(["consume", "--http-port", "-1"], 0), (["produce"], 1),
                                                 (["serve", "--bootstrap-servers", "127.0.0.1:1", "--port", "0"], 0)])
def test_a_signal_during_the_wait_gives_the_status_operations_md_says(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path, command: list[str],
                                                                       status: int):
    """consume and serve (services) 0, produce (a one-off load that sent nothing) 1: docs/operations.md,
    "Exit statuses". The wait itself returning False on a signal is tested in test_consume_no_broker.py."""
    from otrules.consumers.kafka import connect

    monkeypatch.setattr(connect, "wait_for_cluster", lambda *args, **kwargs: False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == status, result.output
    name = command[0]
    assert f"otrules {name}: stopped before Kafka was reached" in result.output
    docs = " ".join((Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text().split())
    assert "`consume` and `serve`, services, exit 0" in docs
    assert "`produce`, a one-off load that has then sent nothing, exits 1" in docs


def test_a_broker_whose_certificate_does_not_name_its_advertised_address_stops_the_start(
        monkeypatch: pytest.MonkeyPatch):
    """The bootstrap address may be named by the certificates while an advertised one is not: the clients
    would then fail on every request to that broker, retried as an outage. A broker that merely does not
    answer is not waited for."""
    import threading
    from types import SimpleNamespace

    from otrules.consumers.kafka import connect
    from otrules.consumers.kafka.connect import KafkaRefused

    mismatch = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    mismatch.verify_message = "Hostname mismatch, certificate is not valid for 'kafka-2.internal'."
    brokers = [SimpleNamespace(node_id=1, host="kafka-1", port=9093),
               SimpleNamespace(node_id=2, host="kafka-2.internal", port=9093),
               SimpleNamespace(node_id=3, host="kafka-3", port=9093)]
    failures: dict[int, BaseException] = {3: KafkaConnectionError("Node 3 not ready after 1000 ms")}
    contacted: list[int] = []

    class Client:
        cluster = SimpleNamespace(brokers=lambda: brokers)

        def __init__(self, **config: Any) -> None:
            pass

        def check_version(self, timeout_ms: int) -> None:
            pass

        def await_ready(self, node_id: int, timeout_ms: int) -> bool:
            contacted.append(node_id)
            if node_id in failures:
                raise failures[node_id]
            return True

        def close(self) -> None:
            pass

    monkeypatch.setattr(connect, "KafkaNetClient", Client)
    assert connect.wait_for_cluster("kafka-1:9093", {}, threading.Event(), 5, _Log()) is True  # 3 is down: fine
    assert contacted == [1, 2, 3]
    failures[2] = _wrapped(mismatch)
    with pytest.raises(KafkaRefused, match=r"does not name the host connected to .*\(broker 2 at "
                                           r"kafka-2\.internal:9093\)$"):
        connect.wait_for_cluster("kafka-1:9093", {}, threading.Event(), 5, _Log())


def test_produce_refused_by_the_topic_acl_exits_3_with_the_refusal(monkeypatch: pytest.MonkeyPatch):
    from otrules import produce as producing
    from otrules.consumers.kafka import connect

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise TopicAuthorizationFailedError("ot.events")

    monkeypatch.setattr(connect, "wait_for_cluster", lambda *args, **kwargs: True)
    monkeypatch.setattr(producing, "produce", refused)
    result = CliRunner().invoke(main, ["produce", "--bootstrap-servers", "127.0.0.1:1"])
    assert result.exit_code == 3, result.output
    assert ("otrules produce: Kafka at 127.0.0.1:1 refused the connection: this client's principal may not use "
            "otrules' topics (TopicAuthorizationFailed)") in result.output
