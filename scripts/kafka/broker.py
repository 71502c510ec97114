#!/usr/bin/env python3
"""A real single-node Apache Kafka (KRaft) for tests, without Docker.

Development and CI machines have Java 17 and Maven but no Docker engine, and
the tests must talk to a real broker, never a mock. So the broker is assembled
from Maven Central (see pom.xml next to this file), cached outside the
repository, and run as a plain `java` subprocess listening on 127.0.0.1 only.

Python API (used by tests/kafka_support.py)::

    with Broker() as broker:          # fetch jars (once), format, start, wait
        use(broker.bootstrap_servers)
        broker.restart()              # same ports, same data

    security = BrokerSecurity(keystore=..., keystore_password=..., truststore=...,
                              scram_users={"otrules": "..."})
    with Broker(security=security) as broker:   # PLAINTEXT, plus SSL (mTLS) and SASL_SSL (SCRAM)
        use(broker.ssl_bootstrap_servers, broker.sasl_ssl_bootstrap_servers)

The certificates (a PKCS12 keystore holding the broker's key and certificate,
and a truststore of the CA that signs client certificates) are the caller's:
tests/tls_certs.py makes them with openssl and keytool in a temporary folder.
SCRAM users are written into the metadata log when the storage is formatted
(StorageTool --add-scram), so they exist before the first client connects.

CLI::

    python scripts/kafka/broker.py start|stop|status [--dir D]
    python scripts/kafka/broker.py console-consumer [--bootstrap-server HOST:PORT] --topic T [ARGS...]

The console consumer (Kafka's own, org.apache.kafka.tools.consumer.ConsoleConsumer)
runs from the same cache: the Maven artifact kafka-tools is fetched with the
broker's jars (or added to an older cache on first use).

Environment: OTRULES_KAFKA_VERSION overrides the version pinned in pom.xml;
XDG_CACHE_HOME moves the jar cache (default ~/.cache/otrules/kafka-<v>/lib).

Standard library only; kafka-python is not needed here (readiness is checked
with a raw Metadata request, so the module also works before the venv exists).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # scripts/ (last: it holds a kafka/ folder)
import maven_jars

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"

# Client-facing and controller traffic stay on loopback: tests must never
# expose a broker to the network.
HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted, started or reached."""


# --------------------------------------------------------------------------
# Jars: fetched once per Kafka version into a shared cache
# --------------------------------------------------------------------------

def kafka_version() -> str:
    """The Kafka version to run: $OTRULES_KAFKA_VERSION, else the pom's pin."""
    version = os.environ.get("OTRULES_KAFKA_VERSION") or maven_jars.pom_property(POM, "kafka.version")
    if not version:
        raise BrokerError(f"{POM}: no <kafka.version> property")
    return version


def cache_root() -> Path:
    return maven_jars.cache_root()


def fetch_jars(version: str | None = None, *, tools: bool = False, timeout: float = 900) -> Path:
    """Return a directory holding Kafka's jars, fetching them with Maven if needed (maven_jars.fetch).

    tools=True also wants Kafka's command-line tools, which a lib/ fetched before pom.xml listed
    them lacks: they are then added to it (the broker alone never needs them, so it never waits
    for that)."""
    version = version or kafka_version()
    return maven_jars.fetch(
        POM, cache_root() / f"kafka-{version}", label=f"Kafka {version}", properties={"kafka.version": version},
        ready=(lambda lib: _complete(lib, version)) if tools else Path.is_dir,
        complete=lambda lib: any(lib.glob("kafka_2.13-*.jar")) and _complete(lib, version),
        merge=lambda fetched, lib: _add_missing_jars(fetched, lib, version), error=BrokerError, timeout=timeout)


def _complete(lib: Path, version: str) -> bool:
    """The broker's jars and the tools' (kafka-tools is the last jar to arrive in lib/)."""
    return (lib / f"kafka-tools-{version}.jar").is_file()


def _add_missing_jars(fetched: Path, lib: Path, version: str) -> None:
    """Complete a lib/ fetched before the tools were listed in pom.xml.

    A broker may be running from it, so nothing there is replaced or removed:
    each missing jar is renamed in whole (same file system), kafka-tools last,
    so that its presence still means "complete".
    """
    for jar in sorted(fetched.glob("*.jar"), key=lambda j: j.name == f"kafka-tools-{version}.jar"):
        if not (lib / jar.name).exists():
            jar.replace(lib / jar.name)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def free_port() -> int:
    """A loopback port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


_tail = maven_jars.tail
_ERROR_LINE = re.compile(r" ERROR |^Caused by: |^[\w.$]+(Exception|Error)\b")


def _failure_report(path: Path, since: int = 0) -> str:
    """The first errors of this run, then its last lines.

    A failed start is followed by hundreds of shutdown lines, so the tail
    alone would hide the cause (a BindException, a bad property...).
    """
    try:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    errors = [line for line in text.splitlines() if _ERROR_LINE.search(line)][:12]
    report = f"{path}, last lines:\n{_tail(text, 25)}"
    if errors:
        report = "first errors:\n" + "\n".join(errors) + "\n" + report
    return report


def _cluster_id() -> str:
    """Kafka's Uuid text form (url-safe base64 of 16 bytes, no padding), without a JVM.

    Never one starting with '-' (one in 64 would): StorageTool's argument parser takes
    `-t -xyz...` for a missing value and an unknown option, and formatting fails. Kafka's own
    Uuid.randomUuid() draws again for the same reason."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return buf


def metadata_broker_count(host: str, port: int, timeout: float = 2.0) -> int:
    """Send a raw Metadata v1 request; return how many brokers the answer lists.

    Stdlib only on purpose: readiness must not depend on the client library
    under test. KRaft brokers only open their client listener once they have
    caught up with the metadata log, so an answer listing a broker means ready.
    """
    client_id = b"otrules-readiness"
    # header: api_key=3 (Metadata), api_version=1, correlation_id, client_id;
    # body: topics array of -1 (null) = all topics.
    body = struct.pack(">hhih", 3, 1, 7, len(client_id)) + client_id + struct.pack(">i", -1)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        size, = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    correlation_id, brokers = struct.unpack(">ii", payload[:8])
    if correlation_id != 7:
        raise ConnectionError(f"unexpected correlation id {correlation_id}")
    return brokers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent():
    """Return a preexec_fn that makes the child get SIGKILL when we die (Linux).

    So a pytest session killed with SIGKILL doesn't leave a JVM holding 512 MB
    and two ports. The libc lookup happens here, in the parent, so the child
    runs almost nothing between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG = 1
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# --------------------------------------------------------------------------
# TLS and SASL listeners
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerSecurity:
    """Two more client listeners on loopback, beside PLAINTEXT (which readiness and the
    controller keep using):

    - SSL: TLS with the keystore's certificate; with `truststore`, clients must present a
      certificate signed by a CA in it (mutual TLS, ssl.client.auth=required);
    - SASL_SSL: the same TLS, no client certificate, and SASL/`scram_mechanism` logins of
      `scram_users` (name -> password), created when the storage is formatted.
    """

    keystore: Path  # PKCS12: the broker's private key and certificate chain
    keystore_password: str = field(repr=False)
    truststore: Path | None = None  # PKCS12 of trusted client CAs: mutual TLS on the SSL listener
    truststore_password: str | None = field(default=None, repr=False)
    scram_mechanism: str = "SCRAM-SHA-512"
    scram_users: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.scram_mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise BrokerError(f"unsupported SCRAM mechanism {self.scram_mechanism}")
        for name, password in self.scram_users.items():
            # StorageTool parses name=...,password=... itself: a comma, a bracket or a quote would split it
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or not re.fullmatch(r"[A-Za-z0-9._~!@#%^*+-]+", password):
                raise BrokerError("SCRAM user names and passwords here are limited to letters, digits and ._- "
                                  "(passwords also ~!@#%^*+)")

    def properties(self) -> dict[str, str]:
        """The broker settings of both listeners (their addresses are the Broker's)."""
        props = {
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": self.keystore_password,
            "ssl.key.password": self.keystore_password,
            "sasl.enabled.mechanisms": self.scram_mechanism,
            f"listener.name.sasl_ssl.{self.scram_mechanism.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        }
        if self.truststore is not None:
            props.update({"listener.name.ssl.ssl.client.auth": "required",
                          "listener.name.ssl.ssl.truststore.type": "PKCS12",
                          "listener.name.ssl.ssl.truststore.location": str(self.truststore),
                          "listener.name.ssl.ssl.truststore.password": self.truststore_password or ""})
        return props

    def format_args(self) -> list[str]:
        """StorageTool format arguments that create the SCRAM users."""
        args: list[str] = []
        for name, password in self.scram_users.items():
            args += ["--add-scram", f"{self.scram_mechanism}=[name={name},password={password}]"]
        return args


# --------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------

class Broker:
    """One single-node KRaft Kafka (broker + controller) on loopback.

    The working directory holds server.properties, the data (log.dirs), the
    broker's log and broker.json (ports, pid). Ports are chosen on first start
    and then kept, so restart() brings the broker back where clients expect it.
    A directory this object created itself is deleted by close() / __exit__.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, *, version: str | None = None,
                 heap: str = "512m", startup_timeout: float = 90.0, stop_timeout: float = 30.0,
                 detach: bool = False, extra_properties: dict[str, str] | None = None,
                 security: BrokerSecurity | None = None):
        self.version = version or kafka_version()
        self._owns_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="otrules-kafka-")).resolve()
        self.heap = heap
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.detach = detach  # CLI: outlive this Python process
        self.extra_properties = dict(extra_properties or {})
        self.security = security
        self.port: int | None = None
        self.controller_port: int | None = None
        self.ssl_port: int | None = None  # with `security`: the SSL and SASL_SSL listeners
        self.sasl_ssl_port: int | None = None
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0
        self._load_state()

    # -- public API --------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("broker has no port yet: call start() first")
        return f"{HOST}:{self.port}"

    @property
    def ssl_bootstrap_servers(self) -> str:
        """The TLS listener (mutual TLS when BrokerSecurity has a truststore)."""
        if self.ssl_port is None:
            raise BrokerError("broker has no SSL listener: give it a BrokerSecurity and start() it")
        return f"{HOST}:{self.ssl_port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """The TLS listener that takes SASL/SCRAM logins."""
        if self.sasl_ssl_port is None:
            raise BrokerError("broker has no SASL_SSL listener: give it a BrokerSecurity and start() it")
        return f"{HOST}:{self.sasl_ssl_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / LOG_FILE

    def start(self) -> Broker:
        """Fetch jars if needed, format storage on first start, launch, wait until ready."""
        if self.is_running():
            return self
        lib = fetch_jars(self.version)
        self.dir.mkdir(parents=True, exist_ok=True)
        first_start = not (self.dir / "data" / "meta.properties").exists()
        if first_start:
            # A port picked by free_port() can be taken before Java binds it;
            # nothing is stored yet, so retrying on fresh ports is safe.
            for attempt in range(3):
                self.port, self.controller_port = self.port or free_port(), self.controller_port or free_port()
                if self.security is not None:
                    self.ssl_port, self.sasl_ssl_port = self.ssl_port or free_port(), self.sasl_ssl_port or free_port()
                self._write_properties()
                self._format(lib)
                try:
                    self._launch(lib)
                    return self
                except BrokerError as exc:
                    if "Address already in use" not in str(exc) or attempt == 2:
                        raise
                    shutil.rmtree(self.dir / "data", ignore_errors=True)
                    self.port = self.controller_port = self.ssl_port = self.sasl_ssl_port = None
        self._write_properties()
        self._launch(lib)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean controlled shutdown), then SIGKILL after stop_timeout.

        kill=True sends SIGKILL straight away: a crash, for recovery tests.
        """
        pid = self.pid
        if pid is None or not self.is_running():
            self._forget_process()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        if not self._wait_exit(self.stop_timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(10)
        self._forget_process()

    def restart(self, *, kill: bool = False) -> Broker:
        """Stop and start again on the same ports with the same data."""
        self.stop(kill=kill)
        return self.start()

    def close(self) -> None:
        """Stop, and delete the working directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _pid_alive(self.pid) and self._pid_is_ours(self.pid)

    def is_ready(self) -> bool:
        try:
            return self.port is not None and metadata_broker_count(HOST, self.port) > 0
        except (OSError, struct.error):
            return False

    def __enter__(self) -> Broker:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Broker kafka-{self.version} {HOST}:{self.port} dir={self.dir} pid={self.pid}>"

    # -- internals ---------------------------------------------------------

    def _properties(self) -> dict[str, str]:
        """Single-node KRaft, tuned for a fast start and small footprint on 2 cores."""
        p, c = self.port, self.controller_port
        listeners, advertised = [f"PLAINTEXT://{HOST}:{p}", f"CONTROLLER://{HOST}:{c}"], [f"PLAINTEXT://{HOST}:{p}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if self.security is not None:  # the broker and the controller still talk PLAINTEXT among themselves
            secure = [f"SSL://{HOST}:{self.ssl_port}", f"SASL_SSL://{HOST}:{self.sasl_ssl_port}"]
            listeners += secure
            advertised += secure
            protocols += ["SSL:SSL", "SASL_SSL:SASL_SSL"]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{c}",
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocols),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            # One replica of everything: there is one broker.
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            # Internal topics created on first use: one partition each is
            # created (and loaded after a restart) far faster than 50.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.num.partitions": "1",
            # Consumers join at once instead of waiting 3 s for more members.
            "group.initial.rebalance.delay.ms": "0",
            # Small segments and a prompt cleaner so compaction is observable.
            "log.segment.bytes": str(1024 * 1024),
            "log.cleaner.backoff.ms": "1000",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            # Two cores: fewer threads than the server defaults.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "auto.create.topics.enable": "true",
            # After a SIGKILL the controller refuses the new incarnation until
            # the old broker session expires: 9 s by default, 3 s here.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        if self.security is not None:
            props.update(self.security.properties())
        props.update(self.extra_properties)
        return props

    def _write_properties(self) -> None:
        text = "".join(f"{k}={v}\n" for k, v in self._properties().items())
        (self.dir / "server.properties").write_text("# written by scripts/kafka/broker.py\n" + text)
        self._save_state()

    def _java(self) -> str:
        return java()

    def _jvm_args(self) -> list[str]:
        # C1-only JIT and the serial GC start a JVM noticeably faster on a
        # small machine; a test broker never runs long enough to miss C2.
        return [f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS"]

    def _format(self, lib: Path) -> None:
        cmd = [self._java(), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", f"{lib}/*",
               "kafka.tools.StorageTool", "format", "-t", _cluster_id(),
               "-c", str(self.dir / "server.properties"),
               *(self.security.format_args() if self.security is not None else [])]
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        # A failure seen now and then was most likely a cluster id starting with '-' (see _cluster_id),
        # which the retry, with the same id, could not mend; one more try is kept for anything else.
        if done.returncode != 0:
            print(f"formatting Kafka storage failed (exit {done.returncode}); trying once more:\n"
                  f"{_tail(done.stdout + done.stderr, 10)}", file=sys.stderr)
            shutil.rmtree(self.dir / "data", ignore_errors=True)
            time.sleep(2)
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed (exit {done.returncode}):\n"
                              f"{_tail(done.stdout + done.stderr, 40)}")

    def _launch(self, lib: Path) -> None:
        cmd = [self._java(), *self._jvm_args(), "-cp", f"{lib}/*", "kafka.Kafka",
               str(self.dir / "server.properties")]
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"\n===== {time.strftime('%H:%M:%S')} starting Kafka {self.version} on "
                      f"{self.bootstrap_servers} =====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=self.detach,
                preexec_fn=None if self.detach else _die_with_parent())
        self.pid = self._proc.pid
        self._save_state()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self._proc.returncode if self._proc else "?"
                self._forget_process()
                raise BrokerError(f"Kafka exited during startup (exit {code}); "
                                  f"{_failure_report(self.log_path, self._log_offset)}")
            if self.is_ready():
                return
            time.sleep(0.2)
        self.stop(kill=True)
        raise BrokerError(f"Kafka did not answer a metadata request on {self.bootstrap_servers} "
                          f"within {self.startup_timeout:.0f}s; {_failure_report(self.log_path, self._log_offset)}")

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid is None or not _pid_alive(self.pid):
                return True
            time.sleep(0.1)
        return False

    def _forget_process(self) -> None:
        self._proc = None
        self.pid = None
        self._save_state()

    def _pid_is_ours(self, pid: int) -> bool:
        """Guard against a recycled pid: the process must run our server.properties."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return sys.platform != "linux"  # no /proc: trust the pid file
        return str(self.dir / "server.properties").encode() in cmdline

    def _save_state(self) -> None:
        if not self.dir.is_dir():
            return
        state = {"version": self.version, "port": self.port, "controller_port": self.controller_port,
                 "ssl_port": self.ssl_port, "sasl_ssl_port": self.sasl_ssl_port, "pid": self.pid,
                 "bootstrap_servers": f"{HOST}:{self.port}" if self.port else None}
        (self.dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _load_state(self) -> None:
        try:
            state = json.loads((self.dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return
        self.port, self.controller_port = state.get("port"), state.get("controller_port")
        self.ssl_port, self.sasl_ssl_port = state.get("ssl_port"), state.get("sasl_ssl_port")
        self.pid = state.get("pid")
        if state.get("version") and state["version"] != self.version:
            raise BrokerError(f"{self.dir} holds data of Kafka {state['version']}, not {self.version}")


# --------------------------------------------------------------------------
# Kafka's own command-line tools, from the same cache
# --------------------------------------------------------------------------

# The console consumer moved to the kafka-tools jar in Kafka 3.7.
CONSOLE_CONSUMER = ("org.apache.kafka.tools.consumer.ConsoleConsumer", "kafka.tools.ConsoleConsumer")


def java() -> str:
    """$JAVA_HOME/bin/java, else java on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    path = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not path or not os.access(path, os.X_OK):
        raise BrokerError("java is not on PATH (Kafka needs Java 17+)")
    return path


def _main_class(lib: Path, version: str, candidates: tuple[str, ...]) -> str:
    """The first of `candidates` that Kafka's jars of this version hold."""
    import zipfile

    entries: set[str] = set()
    for jar in (lib / f"kafka-tools-{version}.jar", lib / f"kafka_2.13-{version}.jar"):
        with contextlib.suppress(OSError, zipfile.BadZipFile), zipfile.ZipFile(jar) as z:
            entries.update(z.namelist())
    for name in candidates:
        if name.replace(".", "/") + ".class" in entries:
            return name
    raise BrokerError(f"none of {', '.join(candidates)} is in Kafka {version}'s jars in {lib}")


def tool_command(candidates: tuple[str, ...], args: list[str], *, version: str | None = None) -> list[str]:
    """argv that runs one of Kafka's command-line tools (e.g. CONSOLE_CONSUMER) from the cache.

    Fetches the tools on first use. Kafka's own log lines are held to warnings,
    so stdout and stderr carry the tool's output.
    """
    version = version or kafka_version()
    lib = fetch_jars(version, tools=True)
    return [java(), "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", f"{lib}/*",
            _main_class(lib, version, candidates), *args]


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def _default_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"otrules-kafka-{os.getuid()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A local single-node Kafka (KRaft) for otrules tests, on 127.0.0.1.", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stop keeps the data: start again resumes on the same ports; delete --dir to start afresh.\n\n"
               "console-consumer runs Kafka's ConsoleConsumer from the same cache and passes it every other\n"
               "argument; without --bootstrap-server it reads from the broker in --dir. E.g.\n"
               "  broker.py console-consumer --topic ot.recommendations --from-beginning \\\n"
               "    --isolation-level read_committed --formatter-property print.key=true --timeout-ms 5000")
    parser.add_argument("command", choices=["start", "stop", "status", "console-consumer"])
    parser.add_argument("--dir", type=Path, default=_default_dir(),
                        help="working directory: config, data, log (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "console-consumer":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "console-consumer":
        return _console_consumer(args.dir, extra)
    try:
        broker = Broker(args.dir, detach=True)
        if args.command == "start":
            t0 = time.monotonic()
            broker.start()
            print(f"Kafka {broker.version} ready at {broker.bootstrap_servers} "
                  f"(pid {broker.pid}, {time.monotonic() - t0:.1f}s; log {broker.log_path})", file=sys.stderr)
            print(broker.bootstrap_servers)
        elif args.command == "stop":
            was_running = broker.is_running()
            broker.stop()
            print("stopped" if was_running else "not running", file=sys.stderr)
        else:
            running, ready = broker.is_running(), broker.is_ready()
            print(json.dumps({"running": running, "ready": ready, "pid": broker.pid if running else None,
                              "bootstrap_servers": broker.bootstrap_servers if broker.port else None,
                              "version": broker.version, "dir": str(broker.dir)}))
            return 0 if ready else 1
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _console_consumer(workdir: Path, args: list[str]) -> int:
    """Replace this process with Kafka's console consumer (Ctrl-C and exit status are the tool's)."""
    try:
        if not any(a == "--bootstrap-server" or a.startswith("--bootstrap-server=") for a in args):
            broker = Broker(workdir)
            if not broker.is_ready():
                raise BrokerError(f"no --bootstrap-server given and no broker answers in {workdir} "
                                  "(start one: broker.py start)")
            args = ["--bootstrap-server", broker.bootstrap_servers, *args]
        cmd = tool_command(CONSOLE_CONSUMER, args)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
