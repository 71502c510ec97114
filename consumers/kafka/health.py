"""HTTP endpoints for orchestrators: /metrics, /healthz (alive), /readyz (serving).

A plain standard-library server on its own thread: it only reads flags and
the metrics registry, so it never touches the engine or the Kafka clients.
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

    def __init__(self) -> None:
        self.last_loop = time.monotonic()
        self.ready = False
        self.reason = "starting"

    def beat(self) -> None:
        self.last_loop = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last_loop < STALL_SECONDS


def serve(host: str, port: int, metrics: Metrics, health: Health) -> tuple[ThreadingHTTPServer, int]:
    """Start the endpoints on a daemon thread; return the server and its port."""

    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)),
        "/healthz": lambda: (200, "text/plain", b"ok\n") if health.alive() else (503, "text/plain", b"stalled\n"),
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
