"""Starting `otrules serve`: refuse an unsafe configuration, pick the source, listen, say where.

A non-loopback address is refused unless CDS Hooks client JWTs (a JWKS and at
least one issuer) and a bearer token for the rest are configured: every page
carries patient data. TLS is the job of a proxy in front (docs/cds-hooks.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from otrules import defaults
from otrules.engine import Engine
from otrules.serve.app import ServeConfig, create_app
from otrules.serve.auth import JwtVerifier, load_jwks
from otrules.serve.sources import Embedded, KafkaTable, OpenSource

log = structlog.get_logger("otrules.serve")


@dataclass(frozen=True)
class ServeOptions:
    rules: tuple[Path, ...] = ()
    catalogue: Path | None = None
    input_path: str | None = None
    follow: bool = False
    input_format: str = "auto"
    fhir_codes: Path | None = None
    bootstrap_servers: str | None = None
    input_topic: str = "ot.events"
    open_topic: str = "ot.recommendations.open"
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str | None = None
    jwks: str | None = None
    issuers: tuple[str, ...] = ()
    token: str | None = None
    kafka: Any = None  # KafkaSettings (TLS, SASL) for --bootstrap-servers; None: built from the fields above
    max_future: dt.timedelta = dt.timedelta(days=1)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(options: ServeOptions) -> None:
    """ValueError (exit 2) for what must not start."""
    if options.input_path and options.bootstrap_servers:
        raise ValueError("--input and --bootstrap-servers: give one source")
    if options.follow and not options.input_path:
        raise ValueError("--follow needs --input: the file whose new lines to read")
    if options.token is not None and not (options.token.isascii() and options.token.isprintable()
                                          and len(options.token) >= 16):
        raise ValueError("the token (OTRULES_SERVE_TOKEN) must be at least 16 printable ASCII characters: it "
                         "travels in HTTP headers and cookies")
    if bool(options.jwks) != bool(options.issuers):
        raise ValueError("--jwks and --issuer go together: the keys, and the clients allowed to use them")
    if not is_loopback(options.host) and not (options.jwks and options.issuers and options.token):
        raise ValueError(f"--host {options.host} is not loopback: every page holds patient data, so it needs "
                         "authentication: --jwks and --issuer (CDS Hooks clients) and --token (the rest)")


def allowed_hosts(base_url: str, host: str, port: int) -> frozenset[str]:
    """Host headers otrules answers (anything else is a DNS-rebinding page, or a mistake): the base
    URL's, the address it listens on (what a proxy may forward), and loopback's names on loopback."""
    names = {urlsplit(base_url).netloc.lower(), f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"}
    if is_loopback(host):
        names |= {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    return frozenset(names)


def run_server(options: ServeOptions, engine_of: Callable[[], Engine], mapper_of: Callable[[Engine], Any]) -> None:
    import uvicorn

    check(options)
    jwks = load_jwks(options.jwks) if options.jwks else None  # a bad JWKS stops the start (exit 2)
    sock = socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((options.host, options.port))
    port = sock.getsockname()[1]
    host = f"[{options.host}]" if ":" in options.host else options.host
    base_url = options.base_url or f"http://{host}:{port}"
    verifier = JwtVerifier(jwks, set(options.issuers), base_url) if jwks is not None else None
    source = _source(options, engine_of, mapper_of)
    hosts = allowed_hosts(base_url, options.host, port)
    app = create_app(source, ServeConfig(base_url, verifier, options.token, hosts))
    print(f"otrules serve: {base_url}  (CDS Hooks discovery: {base_url}/cds-services)", file=sys.stderr, flush=True)
    # an open dashboard holds a stream for ever: on SIGTERM, give connections 3 s, then close them
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=3)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        source.close()


def _source(options: ServeOptions, engine_of: Callable[[], Engine], mapper_of: Callable[[Engine], Any]) -> OpenSource:
    if options.bootstrap_servers:
        from otrules.consumers.kafka.settings import KafkaSettings

        settings = options.kafka or KafkaSettings(bootstrap_servers=options.bootstrap_servers,
                                                  input_topic=options.input_topic, open_topic=options.open_topic)
        table = KafkaTable(settings)
        if not table.wait_caught_up(60):  # serve anyway: /healthz says 503 until it has caught up
            log.warning("the open table is not caught up yet")
        return table
    engine = engine_of()
    path = Path(options.input_path) if options.input_path else defaults.SAMPLE_STREAM
    return Embedded.from_path(engine, path, follow=options.follow, input_format=options.input_format,
                              fhir=mapper_of(engine), max_future=options.max_future)
