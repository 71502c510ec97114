"""HTTP endpoints for orchestrators: /metrics, /healthz (alive), /readyz (serving).

A plain standard-library server on its own thread: it only reads flags and
the metrics registry, so it never touches the engine or the Kafka clients.

Alive means two things: the loop turns, and the instance has been a stable
consumer-group member within --max-unstable-seconds. A loop that turns while
its member never finishes joining owns nothing and says nothing; only a
restart helps it, so /healthz fails and the orchestrator restarts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from otrules.consumers.kafka.metrics import Metrics

STALL_SECONDS = 60.0  # the loop has not turned for this long: not alive


class Health:
    """Flags the service loop updates and the HTTP handlers read."""

    def __init__(self, max_unstable_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.max_unstable_s = max_unstable_s  # 0: membership is not watched
        self.last_loop = clock()
        self.ready = False
        self.reason = "starting"
        self.unstable_since: float | None = self.last_loop  # not a member yet
        self.unstable_why = "not joined yet"
        self._reported = False

    def beat(self) -> None:
        self.last_loop = self.clock()

    def member(self, stable: bool, why: str = "") -> str | None:
        """The loop's view of its group membership. "too long" once it has been unstable for longer
        than the bound, "stable again" when it is stable after that (the caller logs both), else None."""
        now = self.clock()
        if stable:
            regained = self._reported
            self.unstable_since, self._reported = None, False
            return "stable again" if regained else None
        if self.unstable_since is None:
            self.unstable_since = now
        self.unstable_why = why
        if self._reported or not self.max_unstable_s or now - self.unstable_since <= self.max_unstable_s:
            return None
        self._reported = True
        return "too long"

    def unstable_for(self) -> float:
        since = self.unstable_since  # read once: the loop's thread may clear it meanwhile
        return 0.0 if since is None else self.clock() - since

    def liveness(self) -> tuple[bool, str]:
        """(alive, why not)."""
        if self.clock() - self.last_loop >= STALL_SECONDS:
            return False, "stalled"
        unstable = self.unstable_for()
        if self.max_unstable_s and unstable > self.max_unstable_s:
            return False, f"not a stable consumer-group member for {unstable:.0f} s ({self.unstable_why})"
        return True, "ok"

    def alive(self) -> bool:
        return self.liveness()[0]


def _healthz(health: Health) -> tuple[int, str, bytes]:
    alive, why = health.liveness()
    return (200 if alive else 503), "text/plain", f"{why}\n".encode()


def serve(host: str, port: int, metrics: Metrics, health: Health) -> tuple[ThreadingHTTPServer, int]:
    """Start the endpoints on a daemon thread; return the server and its port."""

    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)),
        "/healthz": lambda: _healthz(health),
        "/readyz": lambda: (200, "text/plain", b"ready\n") if health.ready and health.alive()
        else (503, "text/plain", f"not ready: {health.reason}\n".encode()),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name is http.server's API
            route = routes.get(self.path.split("?", 1)[0])
            status, ctype, body = route() if route else (404, "text/plain", b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # probes every few seconds: keep them out of the logs
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="otrules-http", daemon=True).start()
    return server, server.server_address[1]
