"""The `otrules` command (contracts.md §6).

Exit status: 0 success, 1 validation or test failure, 2 usage error. Every
option also reads an OTRULES_* environment variable.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click

from otrules import __version__, defaults
from otrules.consumers import DeadLetter, DeadLetterSink, JsonlSource, Pipeline, RecommendationWriter, Tally
from otrules.consumers.fhir.mapping import FhirMapper
from otrules.engine import Engine, RulesetError
from otrules.schemas import PlanEvent, Recommendation
from otrules.schemas.rulesets import parse_duration


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="otrules")
def main() -> None:
    """Watch occupational-therapy plan-of-care events and recommend decisions."""


rules_option = click.option(
    "--rules", "rules", multiple=True, type=click.Path(exists=True, path_type=Path), envvar="OTRULES_RULES",
    help="Rules file or folder (repeatable). Default: the bundled ot-core.yaml.",
)
class _Duration(click.ParamType):
    """A duration as rules files write one: 30m, 12h, 2d, 1w (0m: none)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()


class _DurationText(_Duration):
    """A duration checked, but kept as written (KafkaSettings holds text)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        super().convert(value, param, ctx)
        return str(value)
reorder_window_option = click.option(
    "--reorder-window", "reorder_window", type=DURATION, default="0m", envvar="OTRULES_REORDER_WINDOW",
    show_default=True, metavar="DURATION",
    help="Hold each event this long in event time (e.g. 2d) so events that arrive out of order by less are "
         "taken in order; recommendations wait as long. Older events are late: they correct the history and "
         "recommend nothing. 0m: no holding.")
max_future_option = click.option(
    "--max-future", "max_future", type=DURATION, default="1d", envvar="OTRULES_MAX_FUTURE", show_default=True,
    metavar="DURATION",
    help="Reject an event whose occurred_at is more than this after processing time (the wall clock, or --as-of "
         "where the command has it): a mistyped year must not move any clock (docs/event-time.md).")
input_format_option = click.option(
    "--input-format", "input_format", type=click.Choice(["auto", "otrules", "fhir"]), default="auto",
    envvar="OTRULES_INPUT_FORMAT", show_default=True,
    help="otrules JSON events, FHIR R4 resources or Bundles (one per line, or one pretty-printed Bundle), or "
         "auto: FHIR when a line is a JSON object with resourceType (docs/fhir.md).")
_fhir_codes = click.option(
    "--fhir-codes", "fhir_codes", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="OTRULES_FHIR_CODES", help="FHIR code table. Default: the bundled rules/fhir-codes.yaml.")
_fhir_validation = click.option(
    "--fhir-validation", type=click.Choice(["mapped", "full"]), default="mapped", show_default=True,
    envvar="OTRULES_FHIR_VALIDATION", help="FHIR input: check what the mapping reads (mapped), or also validate "
    "each mapped resource whole with fhir.resources (full, about 3x slower).")


def fhir_codes_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--fhir-codes and --fhir-validation: how FHIR input is read."""
    return _fhir_codes(_fhir_validation(f))


catalogue_option = click.option(
    "--catalogue", type=click.Path(exists=True, dir_okay=False, path_type=Path), envvar="OTRULES_CATALOGUE",
    help="Instrument catalogue. Default: the bundled rules/instruments.yaml.",
)


@main.command()
@rules_option
@catalogue_option
@click.option("--input", "input_path", default=None, envvar="OTRULES_INPUT", metavar="F|-",
              help="JSONL events; '-' for stdin. Default: the bundled sample stream.")
@click.option("--output", "output_path", default="-", envvar="OTRULES_OUTPUT", metavar="F|-", show_default=True,
              help="Where recommendations go.")
@click.option("--dlq", "dlq_path", default=None, envvar="OTRULES_DLQ", metavar="F",
              help="JSONL file for rejected input (reason + original line).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="jsonl", envvar="OTRULES_FORMAT",
              show_default=True, help="jsonl for machines, table for people.")
@click.option("--quiet", is_flag=True, envvar="OTRULES_QUIET", help="No per-line rejection messages on stderr.")
@click.option("--as-of", "as_of", default=None, envvar="OTRULES_AS_OF", metavar="T",
              help="Processing time (RFC 3339) for replays and tests: the future bound counts from it, and after the "
                   "input the clock advances to T for every open plan. Default: the wall clock, and the latest "
                   "accepted event's time (never past the wall clock).")
@click.option("--retention-days", type=click.IntRange(min=0), default=90, envvar="OTRULES_RETENTION_DAYS",
              show_default=True, help="Days a discharged plan's state is kept (event time) before it is forgotten.")
@reorder_window_option
@max_future_option
@input_format_option
@fhir_codes_option
def run(rules: tuple[Path, ...], catalogue: Path | None, input_path: str | None, output_path: str,
        dlq_path: str | None, fmt: str, quiet: bool, as_of: str | None, retention_days: int,
        reorder_window: dt.timedelta, max_future: dt.timedelta, input_format: str, fhir_codes: Path | None,
        fhir_validation: str) -> None:
    """Embedded mode, no Kafka: JSONL events in, JSONL recommendations out.

    After the input, time advances to --as-of (default: the latest accepted
    event's time) for every open plan, so plans that went silent get their
    recommendations too (expired certification, overdue re-evaluation, a
    target date passed unscored). An event more than --max-future after
    processing time is rejected."""
    sweep_at = _parse_time(as_of, "--as-of") if as_of else None
    _refuse_same_files(("--input", input_path or str(defaults.SAMPLE_STREAM)), ("--output", output_path),
                       ("--dlq", dlq_path))
    engine = _engine(rules, catalogue, reorder_window)
    source_name = input_path or str(defaults.SAMPLE_STREAM)
    table: list[Recommendation] = []
    with _open_in(input_path) as events, _open_out(output_path) as out, _open_out(dlq_path) as dlq:
        assert out is not None  # --output has a default
        writer = RecommendationWriter(out)
        emit = table.append if fmt == "table" else writer.write

        where = f"the full reason is in {_short(dlq_path)}" if dlq_path else "add --dlq FILE for the full reason"

        def report(letter: DeadLetter) -> None:
            # the field, not its value: a value may be a score or a patient identifier
            if not quiet:
                at = f":{letter.line}" if letter.line is not None else " (an event the reorder window held)"
                click.echo(f"{_short(source_name)}{at}: rejected: {letter.field} ({where})", err=True)

        dead_letters = DeadLetterSink(dlq)
        pipeline = Pipeline(engine, emit, dead_letters, on_reject=report, input_format=input_format,
                            fhir=_fhir_mapper(engine, fhir_codes, fhir_validation), max_future=max_future,
                            clock=(lambda: sweep_at) if sweep_at is not None else None)
        goals: dict[tuple[str, str, str], str] = {}  # (patient, plan, goal) -> description, for the table
        for record in JsonlSource(events, source_name, documents=input_format != "otrules"):
            pipeline.core.handle(record)
            if fmt == "table":
                for event in pipeline.core.events:
                    if isinstance(event, PlanEvent):
                        goals.update({(event.patient_id, event.plan_id, g.goal_id): g.description
                                      for g in event.goals})
        pipeline.core.flush()  # the end of the input releases what the reorder window holds
        dead_letters.flush()
        summary = pipeline.summary
        at = sweep_at or pipeline.core.closing_time()  # the latest accepted event, never past processing time
        if at is not None:
            pipeline.sweep(at, dt.timedelta(days=retention_days))
        if fmt == "table":
            _print_table(table, out, goals)
        writer.flush()
    click.echo(_summary_text(summary), err=True)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@catalogue_option
def validate(paths: tuple[Path, ...], catalogue: Path | None) -> None:
    """Check rules files; print every error as file:line:col and exit 1 on any.

    Files that check out are then compiled and smoke-run in a child process, so
    a durable_rules crash cannot reach a running service.
    """
    from otrules.consumers.fhir.codes import is_code_table
    from otrules.engine.loader import instrument_problems
    from otrules.smoke import check_in_child

    tables = [p for p in paths if p.is_file() and is_code_table(p)]
    if tables:
        _validate_code_tables(tables, catalogue)
        paths = tuple(p for p in paths if p not in tables)
        if not paths:
            return
    try:
        cat = defaults.catalogue(catalogue)
        loaded = defaults.rulesets(paths, cat)
        problems = [p for rs in loaded for p in instrument_problems(rs, cat)]
        if problems:
            raise RulesetError(problems)
    except RulesetError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{len(exc.problems)} error(s)", err=True)
        sys.exit(1)
    crash = check_in_child(list(paths), catalogue)
    if crash:
        for line in crash.splitlines():  # each names file:line: rule <id> where it can
            click.echo(line if ": rule " in line else f"{', '.join(map(str, paths))}: {line}", err=True)
        sys.exit(1)
    for rs in loaded:
        click.echo(f"{rs.source}: ok, ruleset {rs.name} {rs.version}, {len(rs.rules)} rules, {rs.digest[:19]}…, "
                   "compiled and smoke-run")


def _validate_code_tables(tables: list[Path], catalogue: Path | None) -> None:
    """`otrules validate rules/fhir-codes.yaml`: the FHIR code table, errors as file:line; exit 1 on any."""
    from otrules.consumers.fhir import load_code_table

    failed = 0
    cat = defaults.catalogue(catalogue)
    for path in tables:
        try:
            table = load_code_table(path, cat)
        except RulesetError as exc:
            failed += len(exc.problems)
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            continue
        click.echo(f"{path}: ok, FHIR code table {table.codes} {table.version}, {len(table.instruments)} instrument "
                   f"codes, {len(table.evaluation_kinds)} evaluation kinds, {len(table.settings)} settings")
    if failed:
        click.echo(f"{failed} error(s)", err=True)
        sys.exit(1)


@main.command("test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--rules", "rules_override", type=click.Path(exists=True, path_type=Path), default=None,
              envvar="OTRULES_TEST_RULES", help="Run the cases against this rules file instead of the one they name.")
@catalogue_option
def test_command(paths: tuple[Path, ...], rules_override: Path | None, catalogue: Path | None) -> None:
    """Run rule test cases (*.tests.yaml); exit 1 if any fails. Default: the bundled ones."""
    from otrules import ruletests

    cat = defaults.catalogue(catalogue)
    engines: dict[Path, Engine] = {}

    def engine_for(rules_path: Path) -> Engine:
        path = rules_override or rules_path
        if path not in engines:
            engines[path] = Engine(defaults.rulesets([path], cat), cat)
        return engines[path]

    try:
        passed, failed = ruletests.run_suites(list(paths) or [defaults.DEFAULT_RULES.parent], engine_for, click.echo)
    except (ruletests.SuiteError, RulesetError) as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    click.echo(f"{passed} passed, {failed} failed")
    if failed or not passed:
        sys.exit(1)


@main.command()
@rules_option
@catalogue_option
@click.option("--input", "input_path", required=True, envvar="OTRULES_INPUT", metavar="F|-",
              help="The JSONL stream that holds the event (and everything before it).")
@click.option("--event-id", required=True, envvar="OTRULES_EVENT_ID", help="The event to explain.")
@click.option("--patient", default=None, envvar="OTRULES_PATIENT",
              help="Its patient, if event ids repeat across patients.")
@click.option("--json", "as_json", is_flag=True, envvar="OTRULES_JSON", help="Machine-readable output.")
@max_future_option
@input_format_option
@fhir_codes_option
def explain(rules: tuple[Path, ...], catalogue: Path | None, input_path: str, event_id: str, patient: str | None,
            as_json: bool, max_future: dt.timedelta, input_format: str, fhir_codes: Path | None,
            fhir_validation: str) -> None:
    """Every rule one event was checked against; for a rule that did not fire, the first false clause."""
    import json

    from otrules import explain as explainer

    engine = _engine(rules, catalogue)
    with _open_in(input_path) as events:
        try:
            ex = explainer.explain(engine, JsonlSource(events, input_path, documents=input_format != "otrules"),
                                   event_id, patient, input_format=input_format,
                                   fhir=_fhir_mapper(engine, fhir_codes, fhir_validation), max_future=max_future)
        except explainer.EventNotFound as exc:
            raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(explainer.as_json(ex), indent=2, default=str))
    else:
        for line in explainer.render(ex):
            click.echo(line)


@main.command()
@click.option("--rules", "rules", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              envvar="OTRULES_RULES", help="The new rules (file or folder, repeatable).")
@click.option("--baseline", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              envvar="OTRULES_BASELINE", help="The rules to compare against (file or folder, repeatable).")
@catalogue_option
@click.option("--input", "input_path", default=None, envvar="OTRULES_INPUT", metavar="F|-",
              help="JSONL history. Default: the bundled sample stream.")
@click.option("--json", "as_json", is_flag=True, envvar="OTRULES_JSON", help="Machine-readable report.")
@click.option("--samples", type=click.IntRange(min=0), default=5, show_default=True, envvar="OTRULES_SAMPLES",
              help="Patients to show whose recommendations changed.")
@click.option("--progress/--no-progress", default=None, envvar="OTRULES_PROGRESS",
              help="Progress bar (default: when stderr is a terminal).")
@reorder_window_option
@max_future_option
@input_format_option
@fhir_codes_option
def backtest(rules: tuple[Path, ...], baseline: tuple[Path, ...], catalogue: Path | None, input_path: str | None,
             as_json: bool, samples: int, progress: bool | None, reorder_window: dt.timedelta,
             max_future: dt.timedelta, input_format: str, fhir_codes: Path | None, fhir_validation: str
             ) -> None:
    """What a ruleset change would have recommended differently over a history."""
    import json

    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from otrules import backtest as bt

    new_engine, base_engine = _engine(rules, catalogue, reorder_window), _engine(baseline, catalogue, reorder_window)
    path = input_path or str(defaults.SAMPLE_STREAM)
    total = Path(path).stat().st_size if path != "-" and Path(path).is_file() else None
    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress("backtest", BarColumn(), DownloadColumn(), TimeRemainingColumn(), disable=not show or total is None,
                   transient=True)
    with bar, _open_in(input_path) as events:
        task = bar.add_task("backtest", total=total)
        report = bt.backtest(new_engine, base_engine, JsonlSource(events, path, documents=input_format != "otrules"),
                             samples, progress=lambda n: bar.advance(task, n), input_format=input_format,
                             fhir=(_fhir_mapper(base_engine, fhir_codes, fhir_validation),
                                   _fhir_mapper(new_engine, fhir_codes, fhir_validation)),
                             max_future=max_future)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        bt.render(report, sys.stdout)


def _load_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> None:
    """`--config FILE` (YAML): option values below flags and OTRULES_* variables in precedence."""
    if not path:
        return
    from ruamel.yaml import YAML

    try:
        data = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must be a mapping of option names to values", param_hint="--config")
    known = {p.name for p in ctx.command.params}
    unknown = sorted(k for k in (str(k).replace("-", "_") for k in data) if k not in known)
    if unknown:
        raise click.BadParameter(f"{path}: unknown option(s) {', '.join(unknown)}", param_hint="--config")
    ctx.default_map = {str(k).replace("-", "_"): v for k, v in data.items()}


def _settings_options(fn: Any, only: tuple[str, ...] | None = None) -> Any:
    """The consume options (or those named in `only`), generated from KafkaSettings (one place for
    names, defaults and help)."""
    from otrules.consumers.kafka.settings import option_specs

    for spec in reversed([s for s in option_specs() if only is None or s.name in only]):
        kind: Any
        if spec.kind is bool:  # --name/--no-name
            fn = click.option(f"{spec.flag}/--no-{spec.flag[2:]}", spec.name, default=spec.default,
                              envvar=spec.envvar, show_default=spec.show_default, help=spec.help)(fn)
            continue
        if spec.choices:
            kind = click.Choice(spec.choices)
        elif spec.path == "dir":
            kind = click.Path(file_okay=False, path_type=Path)
        elif spec.path == "file":
            kind = click.Path(exists=True, dir_okay=False)
        elif spec.kind is int:
            kind = click.IntRange(min=spec.minimum, max=spec.maximum)  # type: ignore[arg-type]
        elif spec.kind is float:
            kind = click.FloatRange(min=spec.minimum, max=spec.maximum)
        elif spec.name in ("reorder_window", "max_future"):
            kind = _DurationText()
        else:
            kind = str
        fn = click.option(spec.flag, spec.name, type=kind, default=spec.default, envvar=spec.envvar,
                          show_default=spec.show_default, help=spec.help)(fn)
    return fn


def _kafka_client_options(fn: Any) -> Any:
    """What `produce` and `serve` share with `consume` to reach Kafka: TLS, SASL and --connect-timeout."""
    from otrules.consumers.kafka.security import SECURITY_OPTIONS

    return _settings_options(fn, only=(*SECURITY_OPTIONS, "connect_timeout"))


def _kafka_settings(**options: Any) -> Any:
    """KafkaSettings from the options; a usage error (exit 2) for TLS/SASL settings that disagree."""
    from otrules.consumers.kafka.security import problems
    from otrules.consumers.kafka.settings import KafkaSettings

    settings = KafkaSettings(**options)
    found = problems(settings)
    if found:
        raise click.UsageError("; ".join(found))
    return settings


def _refuse_unused_kafka_options() -> None:
    """serve without --bootstrap-servers reads no Kafka: TLS, SASL or --connect-timeout given (as flags
    or OTRULES_* variables) would be silently ignored, so they are a usage error, as elsewhere."""
    from click.core import ParameterSource

    from otrules.consumers.kafka.security import SECURITY_OPTIONS

    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in (*SECURITY_OPTIONS, "connect_timeout")
             if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"{', '.join(given)} would be ignored without --bootstrap-servers (serve then reads "
                               "no Kafka): give --bootstrap-servers, or unset them")


def _warn_password_on_command_line(log: Any) -> None:
    """--sasl-password works, but every user of the host sees it in `ps`: say so once (never the value)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.get_parameter_source("sasl_password") == ParameterSource.COMMANDLINE:
        log.warning("the SASL password was given on the command line, where other users of this host can see it "
                    "(ps): use OTRULES_SASL_PASSWORD or --sasl-password-file")


STOP_DEADLINE_STATUS = 4  # docs/operations.md, "Exit statuses"


def _stop_deadline(stopping: Any, stopped: Any, seconds: float, log: Any) -> None:
    """The hard bound on a graceful stop (a thread of its own): once a stop has been requested, wait
    `seconds` for run() to return; if it has not, log one error line, write every thread's stack to
    stderr and exit at once with status 4. Every wait of the service is meant to be bounded; this
    bounds the ones that are not known yet."""
    import contextlib
    import faulthandler
    import os

    stopping.wait()  # not in the main thread, where the signal handler that sets it runs
    if stopped.wait(seconds):
        return
    log.error("did not stop within --stop-timeout-seconds of the stop request; exiting with status 4, the stacks "
              "of its threads follow", seconds=seconds)
    with contextlib.suppress(ValueError, OSError, AttributeError):  # a stderr without a file descriptor
        sys.stderr.flush()
        faulthandler.dump_traceback(all_threads=True)
    os._exit(STOP_DEADLINE_STATUS)  # not sys.exit: the main thread is the one that is stuck


def _reach_kafka(command: str, settings: Any, log: Any, stop: Any = None, stopped_status: int = 0) -> None:
    """Wait for the cluster (connect.wait_for_cluster). Exit 3 with one line when it cannot be reached
    within --connect-timeout or refuses this client (a failed login, an untrusted certificate); exit
    `stopped_status` when SIGTERM/SIGINT came first (`stop`: the caller's event, else one set here)."""
    import signal
    import threading

    from otrules.consumers.kafka.connect import KafkaRefused, KafkaUnreachable, wait_for_cluster
    from otrules.consumers.kafka.security import warnings

    _warn_password_on_command_line(log)
    for warning in warnings(settings):
        log.warning(warning)
    previous = {}
    if stop is None:
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        reached = wait_for_cluster(settings.bootstrap_servers, settings.client, stop, settings.connect_timeout, log)
    except (KafkaUnreachable, KafkaRefused) as exc:
        # could not reach Kafka at <servers> within <N> s (<error>) | Kafka at <servers> refused the connection: <why>
        click.echo(f"otrules {command}: {exc}", err=True)
        sys.exit(3)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not reached:
        click.echo(f"otrules {command}: stopped before Kafka was reached", err=True)
        sys.exit(stopped_status)


@main.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), is_eager=True, expose_value=False,
              callback=_load_config, envvar="OTRULES_CONFIG",
              help="YAML file of option values (flags and OTRULES_* variables take precedence).")
@rules_option
@catalogue_option
@_settings_options
def consume(rules: tuple[Path, ...], catalogue: Path | None, **options: Any) -> None:
    """The Kafka service: ot.events in, recommendations out, exactly once.

    Exit status: 0 stopped (SIGTERM/SIGINT), 1 the rules failed validation,
    2 usage error, 3 Kafka could not be reached within --connect-timeout, or refused
    the login, the certificates or an operation otrules needs (ACLs), or the installed
    kafka-python is not one its consumer-group join guard fits."""
    import contextlib
    import faulthandler
    import signal
    import threading

    import structlog
    from kafka.errors import KafkaError

    from otrules.consumers.kafka import redact
    from otrules.consumers.kafka.connect import KafkaRefused, KafkaUnreachable
    from otrules.consumers.kafka.health import Health, serve
    from otrules.consumers.kafka.join_guard import JoinGuardRefused
    from otrules.consumers.kafka.metrics import Metrics
    from otrules.consumers.kafka.reload import RulesWatcher
    from otrules.consumers.kafka.service import Service

    # `kill -USR1 <pid>`: every thread's Python stack on stderr, the service going on (file, line and
    # function names only, never a value); for a service that does not stop or does not progress
    with contextlib.suppress(ValueError, OSError, AttributeError):  # io.UnsupportedOperation: a stderr without a
        faulthandler.register(signal.SIGUSR1, all_threads=True)   # file descriptor (click's CliRunner)
    settings = _kafka_settings(**options)
    _configure_logging()
    log = structlog.get_logger("otrules.consume")
    redact.set_key(settings.log_hash_key)
    log.info("configuration", rules=[str(r) for r in rules], catalogue=str(catalogue) if catalogue else None,
             **settings.redacted())
    engine = _engine(rules, catalogue, parse_duration(settings.reorder_window))
    if settings.input_format != "otrules" and settings.fhir_codes:
        _fhir_mapper(engine, Path(settings.fhir_codes), settings.fhir_validation)  # a broken table: exit 2
    stopping = threading.Event()  # set by SIGTERM/SIGINT, before and after the service exists
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    _reach_kafka("consume", settings, log, stopping)
    metrics, health = Metrics(), Health(settings.max_unstable_seconds)
    service = Service(settings, engine, metrics=metrics, health=health, stop=stopping)
    if settings.http_port >= 0:
        _, port = serve(settings.http_host, settings.http_port, metrics, health)
        log.info("http", host=settings.http_host, port=port, paths=["/metrics", "/healthz", "/readyz"])
    rule_paths = list(rules) or [defaults.DEFAULT_RULES]
    watcher = RulesWatcher(rule_paths, catalogue or defaults.CATALOGUE, service.offer_rulesets,
                           service.refuse_rulesets, poll_seconds=settings.reload_poll_seconds or 3600 * 24).start()
    signal.signal(signal.SIGHUP, lambda *_: watcher.request())
    stopped = threading.Event()  # run() returned: the stop deadline is off
    if settings.stop_timeout_seconds > 0:
        threading.Thread(target=_stop_deadline, args=(stopping, stopped, settings.stop_timeout_seconds, log),
                         name="otrules-stop-deadline", daemon=True).start()
    try:
        tally = service.run()
    except (KafkaUnreachable, KafkaRefused, JoinGuardRefused) as exc:  # it went away again while the service was
        # starting, for --connect-timeout; it refused what otrules asked of it (an ACL, a login); or a kafka-python
        # whose group join the guard does not fit
        click.echo(f"otrules consume: {exc}", err=True)
        sys.exit(3)
    except KafkaError as exc:  # anything else the client gave up on
        click.echo(f"otrules consume: Kafka failed: {type(exc).__name__}", err=True)
        sys.exit(3)
    finally:
        stopped.set()
        watcher.stop()
    c = service.counts()
    skipped = _skipped_text(tally)
    click.echo(f"read {tally.read} = processed {tally.processed} + rejected {tally.rejected} + "
               f"duplicates {tally.duplicates}{skipped}; {tally.recommendations} recommendations in "
               f"{c['batches']} transactions ({c['aborted']} aborted); {c['sweeps']} sweeps made "
               f"{tally.swept} of them; {tally.expired} patients expired", err=True)


@main.command()
@rules_option
@catalogue_option
@click.option("--input", "input_path", default=None, envvar="OTRULES_INPUT", metavar="F",
              help="Run the engine over this file and serve what stays open. Default: the bundled sample stream "
                   "(without --bootstrap-servers).")
@click.option("--follow", is_flag=True, envvar="OTRULES_FOLLOW",
              help="With --input: read lines appended to the file as they come (as tail -f); the worklist updates "
                   "live.")
@max_future_option
@input_format_option
@fhir_codes_option
@click.option("--bootstrap-servers", default=None, envvar="OTRULES_BOOTSTRAP_SERVERS", metavar="HOST:PORT",
              help="Kafka: follow ot.recommendations.open (read_committed) and send feedback to the input topic.")
@click.option("--input-topic", default="ot.events", show_default=True, envvar="OTRULES_INPUT_TOPIC",
              help="Kafka: where feedback events go.")
@click.option("--open-topic", default="ot.recommendations.open", show_default=True, envvar="OTRULES_OPEN_TOPIC",
              help="Kafka: the open-recommendations table.")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="OTRULES_HOST",
              help="Address to listen on. Anything but loopback needs --jwks, --issuer and --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, envvar="OTRULES_PORT",
              help="Port (0: a free one, printed).")
@click.option("--base-url", default=None, envvar="OTRULES_BASE_URL", metavar="URL",
              help="The address clients use (behind a TLS proxy: its https URL): links in cards, and the audience "
                   "CDS Hooks client JWTs must name. Default: http://HOST:PORT.")
@click.option("--jwks", default=None, envvar="OTRULES_JWKS", metavar="FILE|URL",
              help="The CDS Hooks clients' public keys (a JWKS file or https URL): client JWTs are then required.")
@click.option("--issuer", "issuers", multiple=True, envvar="OTRULES_ISSUER", metavar="ISS",
              help="A CDS Hooks client allowed to call (its JWT iss; repeatable).")
@click.option("--token", default=None, envvar="OTRULES_SERVE_TOKEN", metavar="TOKEN",
              help="Bearer token for the pages and the API (set it with the environment variable, not on the "
                   "command line, where other users can see it).")
@_kafka_client_options
def serve(rules: tuple[Path, ...], catalogue: Path | None, input_path: str | None, follow: bool,
          max_future: dt.timedelta, input_format: str,
          fhir_codes: Path | None, fhir_validation: str, bootstrap_servers: str | None, input_topic: str,
          open_topic: str, host: str,
          port: int, base_url: str | None, jwks: str | None, issuers: tuple[str, ...], token: str | None,
          **kafka_options: Any) -> None:
    """The CDS Hooks service and dashboard (contracts.md §9): open recommendations as cards, feedback back.

    With --bootstrap-servers, exit 3 when Kafka cannot be reached within --connect-timeout, or refuses
    the login, the certificates or reading the table (TLS and SASL: the same options as `consume`, which
    are refused without --bootstrap-servers)."""
    import structlog
    from kafka.errors import KafkaError

    from otrules.serve.runner import ServeOptions, check, run_server

    kafka = None
    if not bootstrap_servers:
        _refuse_unused_kafka_options()
    else:
        kafka = _kafka_settings(bootstrap_servers=bootstrap_servers, input_topic=input_topic, open_topic=open_topic,
                                **kafka_options)
    options = ServeOptions(rules=rules, catalogue=catalogue, input_path=input_path, follow=follow,
                           input_format=input_format,
                           fhir_codes=fhir_codes, bootstrap_servers=bootstrap_servers, input_topic=input_topic,
                           open_topic=open_topic, host=host, port=port, base_url=base_url, jwks=jwks,
                           issuers=issuers, token=token, kafka=kafka, max_future=max_future)
    _configure_logging()
    try:
        if kafka is not None:
            check(options)  # what must not start says so before the wait for Kafka
            _reach_kafka("serve", kafka, structlog.get_logger("otrules.serve"))
        run_server(options, lambda: _engine(rules, catalogue),
                   lambda engine: _fhir_mapper(engine, fhir_codes, fhir_validation))
    except click.UsageError:
        raise
    except ValueError as exc:  # a refused configuration: said once, exit 2
        click.echo(f"otrules serve: {exc}", err=True)
        sys.exit(2)
    except KafkaError as exc:  # opening the table after the probe: an ACL, or the cluster went away again
        from otrules.consumers.kafka.connect import access_refusal

        why = access_refusal(exc, kafka) if kafka is not None else None
        structlog.get_logger("otrules.serve").error(
            "kafka refused the connection" if why else "kafka failed", bootstrap_servers=bootstrap_servers,
            reason=why, error=type(exc).__name__)
        click.echo(f"otrules serve: Kafka at {bootstrap_servers} refused the connection: {why}" if why else
                   f"otrules serve: Kafka at {bootstrap_servers} failed while opening {open_topic} "
                   f"({type(exc).__name__})", err=True)
        sys.exit(3)


@main.command()
@click.option("--patients", type=click.IntRange(min=1), default=None, envvar="OTRULES_PATIENTS",
              help="Number of patients.")
@click.option("--events", type=click.IntRange(min=1), default=None, envvar="OTRULES_EVENTS",
              help="Exact number of events.")
@click.option("--seed", type=int, default=0, show_default=True, envvar="OTRULES_SEED")
@click.option("--out", "out_path", default="-", metavar="F|-", show_default=True, envvar="OTRULES_OUT")
@click.option("--format", "fmt", type=click.Choice(["otrules", "fhir"]), default="otrules", show_default=True,
              envvar="OTRULES_FORMAT", help="otrules JSONL events, or the same stream as FHIR R4 NDJSON (Patient, "
                                            "CarePlan, Goal, Observation, Encounter, Appointment, EpisodeOfCare).")
def generate(patients: int | None, events: int | None, seed: int, out_path: str, fmt: str) -> None:
    """Write a synthetic, clinically plausible event stream (deterministic per seed)."""
    from otrules import synthetic

    if (patients is None) == (events is None):
        raise click.UsageError("give exactly one of --patients or --events")
    stream = synthetic.generate(patients=patients, events=events, seed=seed)
    with _open_out(out_path) as out:
        assert out is not None  # --out has a default
        if fmt == "fhir":
            from otrules import synthetic_fhir

            counted = _Counted(stream)
            lines = synthetic_fhir.write_ndjson(out, synthetic_fhir.to_fhir(counted))
            click.echo(f"wrote {counted.n} events as {lines} FHIR lines", err=True)
            return
        n = synthetic.write_jsonl(out, stream)
    click.echo(f"wrote {n} events", err=True)


class _Counted:
    """An iterable that counts what passed through it."""

    def __init__(self, items: Any) -> None:
        self.items, self.n = items, 0

    def __iter__(self) -> Any:
        for item in self.items:
            self.n += 1
            yield item


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, envvar="OTRULES_OUT",
              help="Write the schema files here. Default: print the rules-file schema to stdout.")
def schema(out_dir: Path | None) -> None:
    """JSON Schemas (2020-12) of events, recommendations, rules files and the catalogue."""
    from otrules.schemas import jsonschema

    if out_dir is None:
        click.echo(jsonschema.render(jsonschema.documents()["rules.schema.json"]), nl=False)
        return
    for path in jsonschema.write(out_dir):
        click.echo(str(path))


@main.command("produce")
@click.option("--input", "input_path", default=None, envvar="OTRULES_INPUT", metavar="F|-",
              help="JSONL events; '-' for stdin. Default: the bundled sample stream.")
@click.option("--bootstrap-servers", default="127.0.0.1:9092", envvar="OTRULES_BOOTSTRAP_SERVERS", show_default=True)
@click.option("--topic", default="ot.events", envvar="OTRULES_INPUT_TOPIC", show_default=True,
              help="Where the events go (the topic `consume` reads, hence its variable).")
@_kafka_client_options
def produce_command(input_path: str | None, bootstrap_servers: str, topic: str, **kafka: Any) -> None:
    """Load a JSONL file into Kafka, keyed by patient_id: something for `consume` to read.

    Each line is sent as it is (acks=all). A line without a readable
    patient_id is not sent and is reported by line number; the exit status is
    then 1. Exit 3 when Kafka cannot be reached within --connect-timeout, or
    refuses the login, the certificates or (before the first event is sent)
    writing to the topic (nothing is sent)."""
    import structlog
    from kafka.errors import KafkaError

    from otrules import produce as producing

    settings = _kafka_settings(bootstrap_servers=bootstrap_servers, input_topic=topic, **kafka)
    source_name = input_path or str(defaults.SAMPLE_STREAM)

    def report(s: producing.Skipped) -> None:  # the line and the reason, not its content
        click.echo(f"{_short(source_name)}:{s.line}: skipped: {s.reason}", err=True)

    with _open_in(input_path) as events:
        _configure_logging("WARNING")  # the wait's `kafka not reachable` lines (if any), on stderr
        _reach_kafka("produce", settings, structlog.get_logger("otrules.produce"), stopped_status=1)
        try:
            result = producing.produce(events, bootstrap_servers, topic, on_skip=report, client=settings.client)
        except KafkaError as exc:
            from otrules.consumers.kafka.connect import access_refusal

            why = access_refusal(exc, settings)
            if why is not None:  # an ACL (or a login) refused what the probe could not check: as the probe's
                click.echo(f"otrules produce: Kafka at {bootstrap_servers} refused the connection: {why}", err=True)
                sys.exit(3)
            text = str(exc) if type(exc).__name__ in str(exc) else f"{type(exc).__name__}: {exc}"
            click.echo(f"error: cannot send to {topic} at {bootstrap_servers}: {text}", err=True)
            sys.exit(1)
    click.echo(f"sent {result.sent} events to {topic} ({len(result.skipped)} skipped)", err=True)
    if result.failed:
        click.echo(f"error: {result.failed} events were not acknowledged, the first: {result.first_error}", err=True)
    if result.failed or result.skipped:
        sys.exit(1)


# ---------------------------------------------------------------- helpers


def _configure_logging(level: str = "INFO") -> None:
    """Structured lines on stderr: JSON when not a terminal, readable when it is."""
    import logging

    import structlog

    from otrules.consumers.kafka.redact import redact_exceptions

    # redact_exceptions first: tracebacks keep their frames, never a message or a local variable
    # (above debug level); the renderers then print its `exception` string as it is
    if sys.stderr.isatty():
        renderers: list = [redact_exceptions, structlog.dev.ConsoleRenderer()]
    else:  # tracebacks as text in the JSON line, not "exc_info": true
        renderers = [redact_exceptions, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), *renderers],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _engine(rules: tuple[Path, ...], catalogue: Path | None,
            reorder_window: dt.timedelta = dt.timedelta(0)) -> Engine:
    try:
        cat = defaults.catalogue(catalogue)
        return Engine(defaults.rulesets(rules, cat), cat, reorder_window)
    except RulesetError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)


class _open_in:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.f: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        if self.path == "-":
            return sys.stdin.buffer
        try:
            self.f = open(self.path or defaults.SAMPLE_STREAM, "rb")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {self.path}: {exc.strerror}", param_hint="--input") from None
        return self.f

    def __exit__(self, *exc: Any) -> None:
        if self.f:
            self.f.close()


class _open_out:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.f: IO[str] | None = None

    def __enter__(self) -> IO[str] | None:
        if self.path is None:
            return None
        if self.path == "-":
            return sys.stdout
        try:
            self.f = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot write {self.path}: {exc.strerror}") from None
        return self.f

    def __exit__(self, *exc: Any) -> None:
        if self.f:
            self.f.close()


def _short(path: str) -> str:
    return Path(path).name if path.startswith(str(Path(defaults.SAMPLE_STREAM).parent)) else path


def _skipped_text(s: Tally) -> str:
    """` + skipped N (not OT 139, unmapped code 812, ...)`: the reasons are a fixed vocabulary."""
    if not s.skipped:
        return _unfollowed_text(s)
    why = ", ".join(f"{k} {n}" for k, n in s.skipped_by.most_common() if n)
    text = f" + skipped {s.skipped} ({why})" if why else f" + skipped {s.skipped}"
    return text + _unfollowed_text(s)


def _unfollowed_text(s: Tally) -> str:
    """`; references not followed N (goal by identifier 1, ...)`: a fixed vocabulary too."""
    n = sum(s.unfollowed.values())
    if not n:
        return ""
    return f"; references not followed {n} ({', '.join(f'{k} {v}' for k, v in s.unfollowed.most_common())})"


def _summary_text(s: Tally) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.by_kind.items())) or "none"
    swept = f", {s.swept} of them when time advanced" if s.swept else ""
    late = f"; late {s.late} (placed in history, recommended nothing)" if s.late else ""
    skipped = _skipped_text(s)  # FHIR resources otrules does not read, by reason
    closed = ""
    if s.closed:
        why = ", ".join(f"{k} {n}" for k, n in sorted(s.closed.items()))
        closed = f"; {sum(s.closed.values())} closed ({why})"
    future = s.rejected_by["future"]
    future_text = f" ({future} dated past --max-future)" if future else ""
    text = (f"read {s.read} = processed {s.processed} + rejected {s.rejected}{future_text} + duplicates "
            f"{s.duplicates}{skipped}; {s.recommendations} recommendations ({kinds}){swept}{closed}{late}")
    return "\n".join([text, *_feedback_lines(s), *_retraction_lines(s)])


def _retraction_lines(s: Tally) -> list[str]:
    """Scores taken back (contracts.md §1), and retractions of nothing the engine knows."""
    if not s.retracted and not s.retractions_ignored:
        return []
    return [f"retractions: {s.retracted} applied, {s.retractions_ignored} of an unknown or already retracted "
            "evaluation (changed nothing)"]


def _feedback_lines(s: Tally) -> list[str]:
    """Per rule, what clinicians answered (contracts.md §8): what clinical leads tune rules with."""
    if not s.feedback and not s.feedback_ignored:
        return []
    lines = []
    for rule in sorted({rule for rule, _ in s.feedback}):
        reasons = ", ".join(f"{code} {n}" for (r, code), n in sorted(s.override_reasons.items()) if r == rule)
        lines.append(f"feedback {rule}: accepted {s.feedback[rule, 'accepted']}, overridden "
                     f"{s.feedback[rule, 'overridden']}" + (f" ({reasons})" if reasons else ""))
    if s.feedback_ignored:
        lines.append(f"feedback on no open recommendation (unknown or already closed): {s.feedback_ignored}")
    return lines


def _fhir_mapper(engine: Engine, fhir_codes: Path | None, validation: str = "mapped") -> FhirMapper | None:
    """The FHIR mapping with the code table at `fhir_codes`, read now so its errors stop the
    command before any input is read (exit 2); None: the bundled table, read on first use."""
    if fhir_codes is None and validation == "mapped":
        return None
    from otrules.consumers.fhir import make_mapper

    try:
        return make_mapper(engine.catalogue, fhir_codes, validation)
    except RulesetError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(2)


def _refuse_same_files(*named: tuple[str, str | None]) -> None:
    """Exit 2, touching nothing, when two of the paths are one file: writing the output over the
    input would empty it before it is read, and two outputs into one file would lose one."""
    seen: dict[Path, str] = {}
    for option, path in named:
        if path is None or path == "-":
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise click.UsageError(f"{option} {path} is the same file as {seen[resolved]}: nothing was written")
        seen[resolved] = f"{option} {path}"
        if resolved.exists():  # a link or another name for a file already named
            for other, label in list(seen.items()):
                if other != resolved and other.exists() and resolved.samefile(other):
                    raise click.UsageError(f"{option} {path} is the same file as {label}: nothing was written")


def _parse_time(text: str, option: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an RFC 3339 date-time, e.g. 2026-03-01T00:00:00Z",
                                 param_hint=option) from None
    if value.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no offset; add Z or +hh:mm", param_hint=option)
    return value


def _print_table(recs: list[Recommendation], out: IO[str] | None,
                 goals: dict[tuple[str, str, str], str] | None = None) -> None:
    """For people: goals by their description, critical rows marked (in words and in colour), and
    what was found when time advanced said so. Text from events is shown as text, never markup."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    goals = goals or {}
    closed = {r.recommendation_id for r in recs if r.status == "closed"}
    recs = [r for r in recs if r.status == "open"]
    still = sum(r.recommendation_id not in closed for r in recs)
    table = Table(title=f"{len(recs)} recommendations ({still} still open; the closures are in the JSONL output)",
                  show_lines=False, expand=True)
    widths = {"when": 15, "patient": 12, "goal": 28, "kind": 20, "level": 11, "rule": 24}
    for col, style in (("when", "dim"), ("patient", ""), ("goal", ""), ("kind", "bold"), ("level", ""),
                       ("summary", ""), ("rule", "dim")):
        table.add_column(col, style=style, overflow="fold", max_width=widths.get(col),
                         ratio=1 if col == "summary" else None)
    colours = {"info": "green", "warning": "yellow", "critical": "bold red"}
    for r in sorted(recs, key=lambda r: r.indicator != "critical"):  # critical first: stable otherwise
        swept = r.triggered_by[0].startswith("clock@")
        when = f"{r.occurred_at[:10]}\n(time advanced)" if swept else r.occurred_at[:10]
        goal = ""
        if r.goal_id:
            description = goals.get((r.patient_id, r.plan_id, r.goal_id))
            goal = f"{r.goal_id}: {description}" if description else r.goal_id
        level = f"[{colours[r.indicator]}]{'!! ' if r.indicator == 'critical' else ''}{r.indicator}[/]"
        if r.recommendation_id not in closed:
            level += "\n(open)"
        table.add_row(when, escape(r.patient_id), escape(goal), r.kind, level, escape(r.summary), r.rule.id,
                      style="bold" if r.indicator == "critical" else None)
    Console(file=out, width=160 if out is not None and not out.isatty() else None).print(table)


def _show_envvars(group: click.Group) -> None:
    """Every --help names each option's OTRULES_* variable (set here once, not per option)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _show_envvars(command)
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True


_show_envvars(main)


if __name__ == "__main__":  # pragma: no cover
    main()
