"""TLS and SASL for every Kafka client otrules opens: what the settings must agree on, and the
kafka-python configuration they make.

`client_config` is the one place where settings become kafka-python's `security_protocol`,
`ssl_*` and `sasl_*` options; `consume`, `produce` and `serve` (its open table and its feedback
producer) and the start-up probe all take it from there. `problems` names settings that
contradict each other or would be silently ignored (a CA file with PLAINTEXT, a SASL user
without SASL), so the command stops with a usage error before it connects. The password comes
from `--sasl-password` / `OTRULES_SASL_PASSWORD` or from `--sasl-password-file`, and is never
part of a log line or an error message.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otrules.consumers.kafka.settings import KafkaSettings

# The options `produce` and `serve` share with `consume` (names of KafkaSettings fields).
SECURITY_OPTIONS = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file",
                    "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")

_TLS = ("SSL", "SASL_SSL")
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")


def uses_tls(settings: KafkaSettings) -> bool:
    return settings.security_protocol in _TLS


def uses_sasl(settings: KafkaSettings) -> bool:
    return settings.security_protocol in _SASL


def problems(settings: KafkaSettings) -> list[str]:
    """What stops the command before it connects (a usage error): one sentence each."""
    out: list[str] = []
    protocol = f"--security-protocol {settings.security_protocol}"
    if uses_sasl(settings):
        if not settings.sasl_mechanism:
            out.append(f"{protocol} needs --sasl-mechanism (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN)")
        if not settings.sasl_username:
            out.append(f"{protocol} needs --sasl-username")
        if settings.sasl_password is None and not settings.sasl_password_file:
            out.append(f"{protocol} needs a password: OTRULES_SASL_PASSWORD or --sasl-password-file")
    else:
        given = [flag for flag, value in (("--sasl-mechanism", settings.sasl_mechanism),
                                          ("--sasl-username", settings.sasl_username),
                                          ("--sasl-password", settings.sasl_password),
                                          ("--sasl-password-file", settings.sasl_password_file)) if value]
        if given:
            out.append(f"{', '.join(given)} would be ignored with {protocol}: use SASL_SSL (or SASL_PLAINTEXT)")
    if settings.sasl_password is not None and settings.sasl_password_file:
        out.append("give the SASL password once: OTRULES_SASL_PASSWORD (or --sasl-password) or --sasl-password-file")
    if not uses_tls(settings):
        given = [flag for flag, value in (("--ssl-cafile", settings.ssl_cafile),
                                          ("--ssl-certfile", settings.ssl_certfile),
                                          ("--ssl-keyfile", settings.ssl_keyfile),
                                          ("--no-ssl-check-hostname", not settings.ssl_check_hostname)) if value]
        if given:
            out.append(f"{', '.join(given)} would be ignored with {protocol}: use SSL or SASL_SSL")
    if settings.ssl_keyfile and not settings.ssl_certfile:
        out.append("--ssl-keyfile needs --ssl-certfile: the certificate the key belongs to")
    elif uses_tls(settings):
        out.extend(tls_file_problems(settings))
    if settings.sasl_password_file:
        if settings.sasl_password_file_error:
            out.append(settings.sasl_password_file_error)
        elif not settings.sasl_password_from_file:
            out.append(f"--sasl-password-file {settings.sasl_password_file} is empty")
    return out


class _EncryptedKey(Exception):
    """The private key wants a pass phrase: raised by the password callback instead of a prompt."""


def _refuse_pass_phrase() -> str:
    raise _EncryptedKey


def tls_file_problems(settings: KafkaSettings) -> list[str]:
    """Load the TLS files into an SSL context as kafka-python will, before any connection, so an
    unusable file is a usage error naming its option, not an outage retried (or, for an encrypted
    key, OpenSSL's "Enter PEM pass phrase:" prompt on the terminal)."""
    named = [(flag, path) for flag, path in (("--ssl-cafile", settings.ssl_cafile),
                                             ("--ssl-certfile", settings.ssl_certfile),
                                             ("--ssl-keyfile", settings.ssl_keyfile)) if path]
    out: list[str] = []
    for flag, path in named:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            out.append(f"cannot read {flag} {path}: {exc.strerror or type(exc).__name__}")
    if out:
        return out
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.ssl_cafile:
        try:
            context.load_verify_locations(cafile=settings.ssl_cafile)
        except (ssl.SSLError, ValueError):
            out.append(f"--ssl-cafile {settings.ssl_cafile} holds no CA certificate (PEM)")
        except OSError as exc:
            out.append(f"cannot read --ssl-cafile {settings.ssl_cafile}: {exc.strerror or type(exc).__name__}")
    certfile, keyfile = settings.ssl_certfile, settings.ssl_keyfile
    if certfile:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
        except (ssl.SSLError, ValueError, OSError):
            out.append(f"--ssl-certfile {certfile} holds no certificate (PEM)")
            return out
        key = f"--ssl-keyfile {keyfile}" if keyfile else f"--ssl-certfile {certfile}"
        try:
            context.load_cert_chain(certfile, keyfile, password=_refuse_pass_phrase)
        except _EncryptedKey:
            out.append(f"the private key in {key} is encrypted: otrules takes an unencrypted key (e.g. "
                       "`openssl pkey -in KEY -out KEY.plain`, readable only by otrules)")
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                out.append(f"--ssl-keyfile {keyfile} is not the key of --ssl-certfile {certfile}"
                           if keyfile else f"the private key in --ssl-certfile {certfile} is not its certificate's")
            elif keyfile:
                out.append(f"--ssl-keyfile {keyfile} holds no private key (PEM)")
            else:
                out.append(f"--ssl-certfile {certfile} holds no private key: give it with --ssl-keyfile")
        except OSError as exc:
            out.append(f"cannot read {key}: {exc.strerror or type(exc).__name__}")
    return out


def warnings(settings: KafkaSettings) -> list[str]:
    """Settings that work but deserve a word at start-up (logged once, never a secret)."""
    if settings.security_protocol == "SASL_PLAINTEXT" and settings.sasl_mechanism == "PLAIN":
        return ["SASL PLAIN over SASL_PLAINTEXT sends the password in clear text: anyone on the network path can "
                "read it; use SASL_SSL (or a SCRAM mechanism)"]
    return []


def read_password_file(path: str) -> str:
    """The file's text without one trailing newline (what `echo` or a secret mount leaves)."""
    text = Path(path).read_text(encoding="utf-8")
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def load_password_file(path: str) -> tuple[str | None, str | None]:
    """(the password, None), or (None, why it cannot be read: a sentence naming the option, never
    the file's content). Read once, when the settings are made: a FIFO or /dev/stdin gives its
    text only once, and a secret file may be gone by the time a later client connects."""
    try:
        return read_password_file(path), None
    except UnicodeDecodeError:
        return None, f"--sasl-password-file {path} is not UTF-8 text"
    except OSError as exc:
        return None, f"cannot read --sasl-password-file {path}: {exc.strerror or type(exc).__name__}"


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python's security options for these settings (empty for PLAINTEXT, kafka-python's default)."""
    config: dict[str, Any] = {}
    if settings.security_protocol != "PLAINTEXT":
        config["security_protocol"] = settings.security_protocol
    if uses_tls(settings):
        config["ssl_check_hostname"] = settings.ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(settings, key):
                config[key] = str(getattr(settings, key))
    if uses_sasl(settings):
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = (settings.sasl_password_from_file if settings.sasl_password_file
                                         else settings.sasl_password)
    return config
