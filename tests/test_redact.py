"""No values in logs above debug level, tracebacks included (redact.redact_exceptions).

An exception chain that carries a score and a patient id is logged through the
logger `otrules consume` configures, on a pipe (JSON lines) and on a terminal
(the console renderer): frames, field names, class names and file names show;
the values, the messages and the local variables do not."""

from __future__ import annotations

import io
import json
import re
import secrets
import sys

import pytest
import structlog

from otrules.cli import _configure_logging
from otrules.consumers.kafka.redact import redact_exceptions, render_exception
from otrules.schemas import EventRejected

SCORE = 123456789  # no line number or other text of a traceback looks like this
PATIENT = f"patient-{secrets.token_hex(6)}"  # made at run time: in no source line


class _Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def logged(monkeypatch):
    """Configure logging as `otrules consume` does on a pipe or a terminal; return what it wrote."""
    def configure(tty: bool) -> _Stderr:
        err = _Stderr(tty)
        monkeypatch.setattr(sys, "stderr", err)
        _configure_logging()
        return err

    yield configure
    structlog.reset_defaults()


def _validate(score: int, patient: str) -> None:
    reason = f"measures[0].score: {score} is outside the range 1–10 of COPM-performance (patient {patient})"
    raise EventRejected(reason, field="measures[0].score")


def _process(score: int, patient: str) -> None:
    held_score, held_patient = score, patient  # locals: must never be printed  # noqa: F841
    try:
        _validate(score, patient)
    except EventRejected as exc:
        raise RuntimeError(f"event of {patient} failed with score {score}") from exc


def _fail_a_batch(log) -> None:
    try:
        try:
            _process(SCORE, PATIENT)
        except RuntimeError:
            raise KeyError(PATIENT)  # noqa: B904 - raised while handling: __context__, not __cause__
    except KeyError:
        log.exception("batch failed; aborting and rewinding", partition=3)


def _assert_redacted(text: str) -> None:
    assert str(SCORE) not in text
    assert PATIENT not in text
    assert "held_score =" not in text and "held_patient =" not in text  # no locals (rich shows them by default)
    # what stays: classes, the field, the chain, the frames with file names and functions
    assert "EventRejected: measures[0].score (value withheld)" in text
    assert "RuntimeError (message withheld)" in text
    assert "KeyError (message withheld)" in text
    assert "The above exception was the direct cause of the following exception:" in text
    assert "During handling of the above exception, another exception occurred:" in text
    assert text.count("Traceback (most recent call last):") == 3
    assert "test_redact.py" in text
    for function in ("_validate", "_process", "_fail_a_batch"):
        assert re.search(rf'File ".*test_redact\.py", line \d+, in {function}\b', text), function


def test_json_lines_carry_the_traceback_without_values(logged):
    err = logged(tty=False)
    _fail_a_batch(structlog.get_logger("otrules.consume"))
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "batch failed; aborting and rewinding" and record["level"] == "error"
    assert "exc_info" not in record
    _assert_redacted(record["exception"])
    _assert_redacted(lines[0].replace("\\n", "\n").replace('\\"', '"'))


def test_the_terminal_renderer_prints_the_same_redacted_traceback(logged):
    err = logged(tty=True)
    _fail_a_batch(structlog.get_logger("otrules.consume"))
    text = re.sub(r"\x1b\[[0-9;]*m", "", err.getvalue())
    assert "batch failed; aborting and rewinding" in text
    _assert_redacted(text)


def test_warning_with_exc_info_true_is_redacted_too(logged):
    err = logged(tty=False)
    log = structlog.get_logger("otrules.consume")
    try:
        _validate(SCORE, PATIENT)
    except EventRejected:
        log.warning("abort failed; replacing the transactional producer", exc_info=True)
    record = json.loads(err.getvalue())
    assert record["exception"].endswith("EventRejected: measures[0].score (value withheld)")
    assert str(SCORE) not in err.getvalue() and PATIENT not in err.getvalue()


def test_the_processor_alone():
    try:
        _validate(SCORE, PATIENT)
    except EventRejected as exc:
        caught = exc
    # an exception given as exc_info, at error level: rendered; at debug level: left as it is
    out = redact_exceptions(None, "error", {"event": "x", "exc_info": caught})
    assert "exc_info" not in out and out["exception"] == render_exception(caught)
    assert str(SCORE) not in out["exception"]
    debug = {"event": "x", "exc_info": caught}
    assert redact_exceptions(None, "debug", dict(debug)) == debug
    assert redact_exceptions(None, "info", {"event": "x"}) == {"event": "x"}
    assert redact_exceptions(None, "error", {"event": "x", "exc_info": False}) == {"event": "x"}


def test_an_exception_without_a_field_a_group_and_a_cycle():
    class Odd(Exception):
        field = 42  # not a field name: ignored

    group = ExceptionGroup(f"two failures of {PATIENT}", [ValueError(str(SCORE)), Odd(PATIENT)])
    try:
        raise group
    except ExceptionGroup as exc:
        caught = exc
    a, b = ValueError(PATIENT), ValueError(str(SCORE))
    a.__context__, b.__context__ = b, a  # a cycle ends the chain instead of looping
    for text in (render_exception(caught), render_exception(a)):
        assert PATIENT not in text and str(SCORE) not in text
    text = render_exception(caught)
    assert "ExceptionGroup (message withheld)" in text and "ValueError (message withheld)" in text
    assert "Odd (message withheld)" in text
