"""Wait for the Kafka cluster before the service starts, without hanging on it.

kafka-python 3.0's clients bootstrap in their constructors and block for
`bootstrap_timeout_ms` (30 s), deaf to signals. Here each attempt is a
short-lived `KafkaNetClient` bootstrap (connection, ApiVersions, Metadata),
then a connection to each broker the metadata names (where only a refusal
counts: a certificate that does not name the address a broker advertises),
bounded by `attempt_s` at first and twice as long at each failed attempt (up
to the longest backoff, 10 s: a TLS handshake and a SCRAM login to a distant
or busy cluster can take longer than a plain connection), run in a daemon
thread. The caller only watches the clock and `stop`, so SIGINT/SIGTERM are
honoured within a fraction of a second even when name resolution blocks.

Between attempts the wait backs off exponentially (0.5 s doubling to 10 s).
Each failed attempt logs one line with the exception's class name only.

A cluster that answers and refuses this client is not waited for: a failed SASL
login, a broker certificate that does not chain to the trusted CAs, does not
name the host or is out of its validity period, a client certificate the
broker refuses, TLS files that cannot be loaded. Retrying cannot change
those, so `KafkaRefused` is raised at once, saying which setting to look at
(and never the password). `access_refusal` does the same for what the
service's clients are refused after the probe (ACLs).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from kafka.errors import (
    AuthorizationError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from kafka.net.compat import KafkaNetClient

from otrules.schemas import OtrulesError

_POLL_S = 0.05  # how often the waiting thread looks at `stop`


class KafkaUnreachable(OtrulesError):
    """No bootstrap server answered with cluster metadata within the connect timeout."""

    def __init__(self, bootstrap_servers: str, timeout_s: float, error: str, attempts: int, hint: str = "") -> None:
        super().__init__(f"could not reach Kafka at {bootstrap_servers} within {timeout_s:g} s ({error})"
                         + (f": {hint}" if hint else ""))
        self.bootstrap_servers, self.timeout_s = bootstrap_servers, timeout_s
        self.error, self.attempts = error, attempts


class KafkaRefused(OtrulesError):
    """The cluster answered and refused this client (credentials, certificates): retrying cannot help."""

    def __init__(self, bootstrap_servers: str, reason: str) -> None:
        super().__init__(f"Kafka at {bootstrap_servers} refused the connection: {reason}")
        self.bootstrap_servers, self.reason = bootstrap_servers, reason


@dataclass(frozen=True)
class _Refusal:
    reason: str


# What the broker's TLS alert says when it refuses the client's certificate (or its absence).
_CLIENT_CERT_ALERTS = ("ALERT_BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "ALERT_UNKNOWN_CA",
                       "ALERT_CERTIFICATE_UNKNOWN", "ALERT_UNSUPPORTED_CERTIFICATE")


def refusal(error: BaseException, client_config: dict[str, Any]) -> str | None:
    """Why the cluster refused this client, when retrying cannot help; None for errors that may pass
    (a refused or dropped connection, a timeout). Names settings, never their secret values."""
    for exc in (error, error.__cause__, error.__context__):
        if isinstance(exc, SaslAuthenticationFailedError):
            return (f"the SASL {client_config.get('sasl_mechanism')} login of user "
                    f"{client_config.get('sasl_plain_username')!r} failed: check --sasl-username and the password "
                    "(OTRULES_SASL_PASSWORD or --sasl-password-file)")
        if isinstance(exc, UnsupportedSaslMechanismError):
            return f"the broker does not offer SASL {client_config.get('sasl_mechanism')}: check --sasl-mechanism"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return _certificate_refusal(exc.verify_message or exc.reason or "verification failed")
    if isinstance(error, ssl.SSLError):  # raised bare only while loading the TLS files, before any connection
        return f"the TLS files cannot be used ({error.reason or type(error).__name__}): check --ssl-cafile, " \
               "--ssl-certfile and --ssl-keyfile"
    text = str(error)
    if any(alert in text for alert in _CLIENT_CERT_ALERTS):
        return ("the broker refused this client's TLS certificate, or wants one: check --ssl-certfile and "
                "--ssl-keyfile")
    return None


def _certificate_refusal(why: str) -> str:
    """What to do about a broker certificate that failed verification: only a chain that does not
    lead to a trusted CA is a matter of --ssl-cafile."""
    lower = why.lower()
    if "hostname mismatch" in lower or "ip address mismatch" in lower:
        return (f"its TLS certificate does not name the host connected to ({why}): fix the certificate's "
                "subjectAltName, or connect by a name it holds (--bootstrap-servers, the brokers' advertised "
                "listeners)")
    if "expired" in lower or "not yet valid" in lower:
        return (f"its TLS certificate is outside its validity period ({why}): renew it, or check the clocks of "
                "the brokers and of this host")
    if "revoked" in lower:
        return f"its TLS certificate has been revoked ({why}): the broker needs a new one"
    return f"its TLS certificate cannot be trusted ({why}): check --ssl-cafile"


def access_refusal(error: BaseException, settings: Any) -> str | None:
    """Why the cluster, once reached, refuses what otrules asked of it (an ACL, a login): retrying
    cannot help. One sentence naming the permission missing and where (docs/operations.md, "ACLs");
    None for anything else. `settings`: KafkaSettings."""
    who = f"user {settings.sasl_username!r}" if settings.sasl_username else "this client's principal"
    acls = "(docs/operations.md, \"ACLs\")"
    for exc in (error, error.__cause__, error.__context__):
        if isinstance(exc, SaslAuthenticationFailedError):
            return refusal(exc, settings.client)
        if isinstance(exc, TopicAuthorizationFailedError):
            return (f"{who} may not use otrules' topics (TopicAuthorizationFailed): allow READ, WRITE, DESCRIBE, "
                    f"DESCRIBE_CONFIGS and (to create them) CREATE on them {acls}")
        if isinstance(exc, GroupAuthorizationFailedError):
            return (f"{who} may not use consumer group {settings.group_id!r} (GroupAuthorizationFailed): allow "
                    f"READ on it {acls}")
        if isinstance(exc, TransactionalIdAuthorizationFailedError):
            return (f"{who} may not use transactional id {settings.transactional_id!r} "
                    f"(TransactionalIdAuthorizationFailed): allow WRITE and DESCRIBE on it {acls}")
        if isinstance(exc, ClusterAuthorizationFailedError):
            return (f"{who} may not act on the cluster (ClusterAuthorizationFailed): allow IDEMPOTENT_WRITE on the "
                    f"cluster {acls}")
        if isinstance(exc, AuthorizationError):
            return f"{who} is not authorized ({type(exc).__name__}) {acls}"
    return None


def wait_for_cluster(bootstrap_servers: str, client_config: dict[str, Any], stop: threading.Event, timeout_s: float,
                     log: Any, *, attempt_s: float = 1.0, first_backoff_s: float = 0.5,
                     max_backoff_s: float = 10.0) -> bool:
    """True once the cluster answers; False if `stop` was set first; KafkaUnreachable after `timeout_s`
    (0: wait for ever); KafkaRefused as soon as the cluster refuses this client.

    `stop` is only read (`is_set()`), never waited on, so a signal handler may set it at any moment
    without deadlocking on the event's lock."""
    started = time.monotonic()
    deadline = started + timeout_s if timeout_s > 0 else None
    backoff = first_backoff_s
    longest_attempt_s = max(attempt_s, max_backoff_s)
    grown = attempt_s  # each attempt's budget: doubled after each failure, capped (never 2 ** attempt)
    attempt = 0
    while not stop.is_set():
        attempt += 1
        budget = grown if deadline is None else min(grown, max(deadline - time.monotonic(), 0.25))
        outcome = _attempt(bootstrap_servers, client_config, budget, stop)
        if outcome is _STOPPED:
            return False
        if outcome is None:
            log.info("kafka reachable", bootstrap_servers=bootstrap_servers, attempt=attempt,
                     seconds=round(time.monotonic() - started, 3))
            return True
        if isinstance(outcome, _Refusal):
            log.error("kafka refused the connection", bootstrap_servers=bootstrap_servers, attempt=attempt,
                      reason=outcome.reason)
            raise KafkaRefused(bootstrap_servers, outcome.reason)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            log.error("kafka not reachable; giving up", bootstrap_servers=bootstrap_servers, attempt=attempt,
                      error=outcome, timeout_s=timeout_s)
            raise KafkaUnreachable(bootstrap_servers, timeout_s, outcome, attempt, _hint(outcome, client_config))
        wait = backoff if remaining is None else min(backoff, remaining)
        log.warning("kafka not reachable", bootstrap_servers=bootstrap_servers, attempt=attempt,
                    retry_in_s=round(wait, 2), error=outcome)
        if _sleep(wait, stop):
            return False
        backoff = min(backoff * 2, max_backoff_s)
        grown = min(grown * 2, longest_attempt_s)
    return False


_STOPPED = object()


def _hint(error: str, client_config: dict[str, Any]) -> str:
    """What a connection closed (or left unanswered) on every attempt most likely means with SASL.
    kafka-python 3.0.12 sometimes
    sees the broker close a failed SASL login's connection before it reads the login's answer, so
    a wrong password can look like an outage (docs/operations.md, "Known issues")."""
    if error in ("KafkaConnectionError", "RequestTimedOutError") and client_config.get("sasl_mechanism"):
        return ("the broker closed or did not answer the connections during the login; with SASL that is most "
                "often a wrong "
                "--sasl-username or password (OTRULES_SASL_PASSWORD or --sasl-password-file)")
    return ""


def _sleep(seconds: float, stop: threading.Event) -> bool:
    """Sleep up to `seconds`; True as soon as `stop` is set."""
    until = time.monotonic() + seconds
    while not stop.is_set():
        left = until - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(_POLL_S, left))
    return True


def _attempt(bootstrap_servers: str, client_config: dict[str, Any], budget_s: float,
             stop: threading.Event) -> Any:
    """None when the cluster answered, a _Refusal when it refused this client, the error's class name
    when it did not answer, _STOPPED if `stop` came first.

    The bootstrap runs in a daemon thread: a blocking DNS lookup can outlast its budget, and
    `stop` must not wait for it. An abandoned attempt ends on its own and closes its client."""
    result: dict[str, str | _Refusal | None] = {}

    def run() -> None:
        try:
            result["error"] = _bootstrap(bootstrap_servers, client_config, budget_s)
        except BaseException as exc:  # reported by class name, never raised here
            result["error"] = type(exc).__name__

    worker = threading.Thread(target=run, name="otrules-kafka-connect", daemon=True)
    worker.start()
    while worker.is_alive():
        if stop.is_set():
            return _STOPPED
        worker.join(_POLL_S)
    if stop.is_set():
        return _STOPPED
    return result.get("error", "RuntimeError")


def _bootstrap(bootstrap_servers: str, client_config: dict[str, Any], budget_s: float) -> str | _Refusal | None:
    ms = max(100, int(budget_s * 1000))
    cause = _LastConnectionError(client_config)
    manager_log = logging.getLogger("kafka.net.manager")
    manager_log.addFilter(cause)
    client = None
    try:
        client = KafkaNetClient(bootstrap_servers=bootstrap_servers, client_id="otrules-connect",
                                request_timeout_ms=ms, socket_connection_setup_timeout_ms=ms,
                                socket_connection_setup_timeout_max_ms=ms, **client_config)
        # No IO thread is started: the bootstrap (connect, ApiVersions, Metadata) runs on this thread
        # and raises KafkaTimeoutError once `ms` has passed without cluster metadata.
        client.check_version(timeout_ms=ms)
        return _each_broker(client, cause, client_config, ms)
    except Exception as exc:
        # The bootstrap retries a refused connection, a failed name lookup or a refused login
        # until its deadline and then reports only a timeout: a refusal seen on the way wins
        # (the broker may drop a failed login's connection before its answer arrives, so a
        # later attempt can end otherwise), else the last real cause, else the exception.
        reason = cause.refusal or refusal(exc, client_config)
        if reason is not None:
            return _Refusal(reason)
        return type(cause.error if cause.error is not None else exc).__name__
    finally:
        manager_log.removeFilter(cause)
        if client is not None:
            with contextlib.suppress(Exception):  # nothing to release that matters
                client.close()


def _each_broker(client: Any, cause: _LastConnectionError, client_config: dict[str, Any], ms: int) -> _Refusal | None:
    """After the bootstrap, the clients talk to each broker by the address it advertises, which its
    certificate must name as well (and which must take this client's certificate and login): connect to
    each once, within `ms` in all, so such a refusal stops the start too. A broker that does not answer
    is not waited for (the clients retry it, as they do any broker that goes away): only a refusal counts."""
    deadline = time.monotonic() + ms / 1000
    for broker in client.cluster.brokers():
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms < 100:
            break
        cause.error, cause.refusal = None, None
        try:
            client.await_ready(broker.node_id, timeout_ms=left_ms)
        except Exception as exc:
            reason = cause.refusal or refusal(exc, client_config)
            if reason is not None:
                return _Refusal(f"{reason} (broker {broker.node_id} at {broker.host}:{broker.port})")
    return None


class _LastConnectionError(logging.Filter):
    """Keeps the last exception kafka-python's connection manager logged on this thread
    (it logs, then retries, e.g. `Connection failed: %s`), other than the final timeout,
    and the first refusal among them. Lets every record through."""

    def __init__(self, client_config: dict[str, Any]) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.client_config = client_config
        self.error: BaseException | None = None
        self.refusal: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self.thread and isinstance(record.args, tuple):
            for arg in record.args:
                if isinstance(arg, BaseException) and not isinstance(arg, KafkaTimeoutError):  # the outcome
                    self.error = arg
                    self.refusal = self.refusal or refusal(arg, self.client_config)
        return True
