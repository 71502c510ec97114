"""Wait for the Kafka cluster before the service starts, without hanging on it.

kafka-python 3.0's clients bootstrap in their constructors and block for
`bootstrap_timeout_ms` (30 s), deaf to signals. Here each attempt is a
short-lived `KafkaNetClient` bootstrap (connection, ApiVersions, Metadata),
bounded by `attempt_s`, run in a daemon thread. The caller only watches the
clock and `stop`, so SIGINT/SIGTERM are honoured within a fraction of a
second even when name resolution blocks.

Between attempts the wait backs off exponentially (0.5 s doubling to 10 s).
Each failed attempt logs one line with the exception's class name only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from kafka.errors import KafkaTimeoutError
from kafka.net.compat import KafkaNetClient

from otrules.schemas import OtrulesError

_POLL_S = 0.05  # how often the waiting thread looks at `stop`


class KafkaUnreachable(OtrulesError):
    """No bootstrap server answered with cluster metadata within the connect timeout."""

    def __init__(self, bootstrap_servers: str, timeout_s: float, error: str, attempts: int) -> None:
        super().__init__(f"could not reach Kafka at {bootstrap_servers} within {timeout_s:g} s ({error})")
        self.bootstrap_servers, self.timeout_s = bootstrap_servers, timeout_s
        self.error, self.attempts = error, attempts


def wait_for_cluster(bootstrap_servers: str, client_config: dict[str, Any], stop: threading.Event, timeout_s: float,
                     log: Any, *, attempt_s: float = 1.0, first_backoff_s: float = 0.5,
                     max_backoff_s: float = 10.0) -> bool:
    """True once the cluster answers; False if `stop` was set first; KafkaUnreachable after `timeout_s`
    (0: wait for ever).

    `stop` is only read (`is_set()`), never waited on, so a signal handler may set it at any moment
    without deadlocking on the event's lock."""
    started = time.monotonic()
    deadline = started + timeout_s if timeout_s > 0 else None
    backoff = first_backoff_s
    attempt = 0
    while not stop.is_set():
        attempt += 1
        budget = attempt_s if deadline is None else min(attempt_s, max(deadline - time.monotonic(), 0.25))
        outcome = _attempt(bootstrap_servers, client_config, budget, stop)
        if outcome is _STOPPED:
            return False
        if outcome is None:
            log.info("kafka reachable", bootstrap_servers=bootstrap_servers, attempt=attempt,
                     seconds=round(time.monotonic() - started, 3))
            return True
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            log.error("kafka not reachable; giving up", bootstrap_servers=bootstrap_servers, attempt=attempt,
                      error=outcome, timeout_s=timeout_s)
            raise KafkaUnreachable(bootstrap_servers, timeout_s, outcome, attempt)
        wait = backoff if remaining is None else min(backoff, remaining)
        log.warning("kafka not reachable", bootstrap_servers=bootstrap_servers, attempt=attempt,
                    retry_in_s=round(wait, 2), error=outcome)
        if _sleep(wait, stop):
            return False
        backoff = min(backoff * 2, max_backoff_s)
    return False


_STOPPED = object()


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
    """None when the cluster answered, the error's class name when not, _STOPPED if `stop` came first.

    The bootstrap runs in a daemon thread: a blocking DNS lookup can outlast its budget, and
    `stop` must not wait for it. An abandoned attempt ends on its own and closes its client."""
    result: dict[str, str | None] = {}

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


def _bootstrap(bootstrap_servers: str, client_config: dict[str, Any], budget_s: float) -> str | None:
    ms = max(100, int(budget_s * 1000))
    cause = _LastConnectionError()
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
        return None
    except Exception as exc:
        # The bootstrap retries a refused connection, a failed name lookup or a refused login
        # until its deadline and then reports only a timeout: name the last real cause if seen.
        return type(cause.error if cause.error is not None else exc).__name__
    finally:
        manager_log.removeFilter(cause)
        if client is not None:
            with contextlib.suppress(Exception):  # nothing to release that matters
                client.close()


class _LastConnectionError(logging.Filter):
    """Keeps the last exception kafka-python's connection manager logged on this thread
    (it logs, then retries, e.g. `Connection failed: %s`), other than the final timeout.
    Lets every record through."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.error: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self.thread and isinstance(record.args, tuple):
            for arg in record.args:
                if isinstance(arg, BaseException) and not isinstance(arg, KafkaTimeoutError):  # the outcome
                    self.error = arg
        return True
