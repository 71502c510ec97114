"""What `otrules consume` connects to and how it batches: every setting, its default and its help, once.

The `otrules consume` options are generated from these fields (`option_specs`),
so a default or a help text lives here and nowhere else; each option reads
`OTRULES_<NAME>` as well (contracts.md §6).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from otrules.consumers.kafka.security import client_config, load_password_file


def _setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, minimum: float | None = None,
             maximum: float | None = None, secret: bool = False, path: str | None = None,
             show_default: bool = True) -> Any:
    """A field that is also a command-line option (see option_specs)."""
    meta = {"help": help, "choices": choices, "min": minimum, "max": maximum, "secret": secret, "path": path,
            "show_default": show_default}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta, repr=not secret)  # a secret stays out of repr() and tracebacks


CLIENT_BLOCK_MS = 5000  # longest a Kafka client call may block (bootstrap, metadata, transactional init)
# The watchdog's default bound (docs/operations.md, "Kubernetes probes"): during a rebalance the broker waits
# up to the rebalance timeout, kafka-python's max_poll_interval_ms (300 s), for a member busy between two polls
# (a long restore or batch); three default session timeouts (30 s) more let a dead member be noticed and the
# JoinGroup/SyncGroup round trips finish. Rounded up to 6 minutes.
MAX_UNSTABLE_SECONDS = 360.0


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers (host:port[,...]).")
    group_id: str = _setting("otrules", "Consumer group: run more instances with the same id to scale out.")
    instance_id: str = _setting(socket.gethostname, "Stable name of this instance (default: host name); a restart "
                                "with the same id fences the old one.", show_default=False)
    input_topic: str = _setting("ot.events", "Input events (key = patient_id): otrules JSON, FHIR R4 or both "
                                "(--input-format); e.g. ot.fhir for a FHIR feed of its own.")
    input_format: str = _setting("auto", "otrules JSON events, FHIR R4 resources or Bundles, or auto (FHIR when a "
                                 "record is a JSON object with resourceType).", choices=("auto", "otrules", "fhir"))
    fhir_codes: str | None = _setting(None, "FHIR code table (default: the bundled rules/fhir-codes.yaml).",
                                      path="file")
    fhir_validation: str = _setting("mapped", "FHIR input: check what the mapping reads (mapped), or also validate "
                                    "each mapped resource whole with fhir.resources (full, slower).",
                                    choices=("mapped", "full"))
    output_topic: str = _setting("ot.recommendations", "Recommendations (CloudEvents binary mode).")
    dlq_topic: str = _setting("ot.events.dlq", "Rejected input, with the reason in headers.")
    open_topic: str = _setting("ot.recommendations.open", "Compacted: each patient's open recommendations "
                               "(key = patient_id; a tombstone when none), written in the same transaction.")
    changelog_topic: str = _setting("otrules-state-changelog", "Compacted patient-state changelog, co-partitioned "
                                    "with the input.")
    partitions: int = _setting(6, "Partitions of topics otrules creates.", minimum=1)
    replication_factor: int = _setting(1, "Replication factor of topics otrules creates.", minimum=1)
    batch_max_records: int = _setting(2000, "Events per transaction at most (per-batch costs spread over more "
                                      "events).", minimum=1)
    batch_max_ms: int = _setting(100, "How long a poll waits for a batch to fill.", minimum=1)
    transaction_timeout_ms: int = _setting(10_000, "How long a dead instance's open transaction can block readers.",
                                           minimum=1000)
    session_timeout_ms: int = _setting(10_000, "Consumer group session timeout.", minimum=1000)
    max_unstable_seconds: float = _setting(MAX_UNSTABLE_SECONDS, "Longest an instance may go without being a stable "
                                           "consumer-group member before /healthz fails, so the orchestrator restarts "
                                           "it (0: never). A healthy rebalance can wait the rebalance timeout (300 s) "
                                           "for a busy member, plus a few session timeouts.", minimum=0)
    max_record_bytes: int = _setting(1_000_000, "Largest record otrules publishes (recommendation, dead letter, "
                                     "state); a topic's smaller max.message.bytes wins. An event whose output would "
                                     "be larger is dead-lettered.", minimum=10_000)
    retry_backoff_max_seconds: float = _setting(5.0, "Longest wait between retries of a failed batch.", minimum=0)
    store: str = _setting("memory", "Where owned patients' state is kept (the changelog is the source of truth).",
                          choices=("memory", "sqlite"))
    state_dir: Path = _setting(Path(".otrules-state"), "Folder of the sqlite store.",  # noqa: RUF009 - a frozen value
                               path="dir")
    decoded_states: int = _setting(1024, "Memory store: patients kept decoded, across all owned partitions; the "
                                   "rest are held as compact bytes.", minimum=1)
    sweep_interval_seconds: float = _setting(300.0, "Advance the clock over owned open plans this often (0: never).",
                                             minimum=0)
    reorder_window: str = _setting("0m", "Hold each event this long in event time (e.g. 2d) so events out of order "
                                   "by less are taken in order; sweeps release them once the clock is that far "
                                   "past. Older events are late: they correct the history and recommend nothing.")
    max_future: str = _setting("1d", "Reject an event whose occurred_at is more than this after the wall clock (a "
                               "mistyped year must not move any clock); dead-lettered with kind future.")
    retention_days: int = _setting(90, "Days a discharged plan's state is kept (event time) before it is "
                                   "tombstoned.", minimum=0)
    connect_timeout: float = _setting(60.0, "Seconds to wait for Kafka at start-up before exiting with status 3 "
                                      "(0: wait for ever).", minimum=0)
    stop_timeout_seconds: float = _setting(25.0, "After SIGTERM or SIGINT, exit with status 4 (one error line and "
                                           "every thread's stack on stderr) if the graceful stop has not ended "
                                           "within this many seconds (0: wait for ever). Below Kubernetes' 30 s "
                                           "grace period, so the reason is logged before SIGKILL.", minimum=0)
    http_host: str = _setting("127.0.0.1", "Address of /metrics, /healthz and /readyz (0.0.0.0 inside a container).")
    http_port: int = _setting(9464, "Port of the endpoints; 0 picks a free one, -1 turns them off.", minimum=-1,
                              maximum=65535)
    reload_poll_seconds: float = _setting(5.0, "How often to look for changed rules files (0: only on SIGHUP).",
                                          minimum=0)
    # TLS and SASL (docs/operations.md, "TLS and SASL"): the same options on consume, produce and serve,
    # checked by security.problems and turned into kafka-python settings by security.client_config.
    security_protocol: str = _setting("PLAINTEXT", "How to talk to the brokers: SSL is TLS, SASL_SSL is TLS and a "
                                      "SASL login, SASL_PLAINTEXT a login without TLS.",
                                      choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    sasl_mechanism: str | None = _setting(None, "SASL mechanism (with SASL_SSL or SASL_PLAINTEXT).",
                                          choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    sasl_username: str | None = _setting(None, "SASL user name.")
    sasl_password: str | None = _setting(None, "SASL password: set it with the environment variable or "
                                         "--sasl-password-file, not on the command line, where other users can see "
                                         "it (otrules then warns at start-up). Never logged.", secret=True)
    sasl_password_file: str | None = _setting(None, "File holding the SASL password (e.g. a mounted secret); one "
                                              "trailing newline is ignored.", path="file")
    ssl_cafile: str | None = _setting(None, "CA certificates (PEM) the brokers' certificates must chain to "
                                      "(default: the system's trusted CAs).", path="file")
    ssl_certfile: str | None = _setting(None, "Client certificate (PEM), for brokers that require mutual TLS.",
                                        path="file")
    ssl_keyfile: str | None = _setting(None, "The client certificate's private key (PEM, unencrypted).", path="file")
    ssl_check_hostname: bool = _setting(True, "Check that the broker's certificate names the host connected to "
                                        "(--no-ssl-check-hostname keeps the CA check but skips the name check).")
    log_hash_key: str | None = _setting(None, "Key for hashing identifiers in logs (default: a random key per "
                                        "process).", secret=True)
    # Not options: what --sasl-password-file held when the settings were made (read once, so a FIFO,
    # /dev/stdin or a secret file removed later gives every client the same password), or why it
    # could not be read (security.problems reports it: exit 2).
    sasl_password_from_file: str | None = field(default=None, init=False, repr=False, compare=False)
    sasl_password_file_error: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sasl_password_file:
            password, error = load_password_file(self.sasl_password_file)
            object.__setattr__(self, "sasl_password_from_file", password)
            object.__setattr__(self, "sasl_password_file_error", error)

    @property
    def transactional_id(self) -> str:
        return f"otrules-{self.group_id}-{self.instance_id}"

    @property
    def client(self) -> dict[str, Any]:
        """Security settings passed to every kafka-python client (consumer, producer, admin, the
        connect probe, serve's table and `otrules produce`): security.client_config."""
        return client_config(self)

    @property
    def service_client(self) -> dict[str, Any]:
        """`client`, plus bounds on how long a client may block while the cluster is away (so a
        signal is honoured within seconds, not the clients' default 30-60 s)."""
        return {**self.client, "bootstrap_timeout_ms": CLIENT_BLOCK_MS}

    def redacted(self) -> dict[str, Any]:
        """The settings for the start-up log line, secrets masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if not f.init:  # the password read from the file, or why it could not be
                continue
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata.get("secret") and value else (
                str(value) if isinstance(value, Path) else value)
        return out


@dataclass(frozen=True)
class OptionSpec:
    """One `otrules consume` option, derived from a KafkaSettings field."""

    name: str  # the field, e.g. batch_max_records
    flag: str  # --batch-max-records
    envvar: str  # OTRULES_BATCH_MAX_RECORDS
    default: Any
    help: str
    kind: type
    choices: tuple[str, ...] | None
    minimum: float | None
    maximum: float | None
    path: str | None
    show_default: bool


def option_specs() -> list[OptionSpec]:
    specs = []
    for f in fields(KafkaSettings):
        if not f.init:  # not an option
            continue
        meta = f.metadata
        default = f.default_factory() if callable(f.default_factory) else f.default
        kind = {"int": int, "float": float, "bool": bool, "Path": Path}.get(str(f.type), str)
        specs.append(OptionSpec(f.name, "--" + f.name.replace("_", "-"), "OTRULES_" + f.name.upper(), default,
                                meta["help"], kind, meta["choices"], meta["min"], meta["max"], meta["path"],
                                meta["show_default"]))
    return specs
