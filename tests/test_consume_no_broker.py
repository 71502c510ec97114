"""`otrules consume` with no broker reachable: it says so, stops on a signal, gives up on time.

These run the real command as a subprocess against a local port with nothing
listening; they need no broker."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    """A local port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Consume:
    def __init__(self, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.stderr = tmp / "consume.stderr"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OTRULES_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "otrules", "consume", "--bootstrap-servers", f"127.0.0.1:{self.port}",
             "--http-port", "-1", "--state-dir", str(tmp / "state"), *extra],
            stdout=subprocess.DEVNULL, stderr=self.stderr.open("wb"), cwd=tmp,
            env={**clean, "PYTHONUNBUFFERED": "1", **(env or {})})

    def text(self) -> str:
        return self.stderr.read_text(encoding="utf-8")

    def attempts(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines()
                if line.startswith("{") and '"kafka not reachable"' in line]

    def wait_for_attempt(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.attempts():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, f"no 'kafka not reachable' line within {timeout} s:\n{self.text()}"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_it_at_once_while_it_waits_for_kafka(tmp_path, sig):
    consume = Consume(tmp_path)
    try:
        consume.wait_for_attempt()
        time.sleep(2)  # a few attempts and backoffs in
        sent = time.monotonic()
        consume.proc.send_signal(sig)
        status = consume.proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        consume.kill()
    text = consume.text()
    assert status == 0, text
    assert took < 1.0, f"exited {took:.2f} s after {sig.name}"
    assert "Traceback" not in text
    attempts = consume.attempts()
    assert attempts and all(a["level"] == "warning" and a["error"].isidentifier() for a in attempts), text
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert [a["retry_in_s"] for a in attempts[:3]] == [0.5, 1.0, 2.0][:len(attempts)]  # backing off
    assert all(a["bootstrap_servers"] == f"127.0.0.1:{consume.port}" for a in attempts)
    assert text.splitlines()[-1] == "otrules consume: stopped before Kafka was reached"


@pytest.mark.parametrize("how", ["flag", "envvar"])
def test_it_gives_up_after_the_connect_timeout_with_status_3_and_one_line(tmp_path, how):
    started = time.monotonic()
    if how == "flag":
        consume = Consume(tmp_path, "--connect-timeout", "2")
    else:
        consume = Consume(tmp_path, env={"OTRULES_CONNECT_TIMEOUT": "2"})
    try:
        status = consume.proc.wait(timeout=60)
    finally:
        consume.kill()
    took = time.monotonic() - started
    text = consume.text()
    assert status == 3, text
    assert took < 15, f"took {took:.1f} s with --connect-timeout 2"
    assert "Traceback" not in text
    assert consume.attempts(), text
    last = text.splitlines()[-1]
    assert re.fullmatch(rf"otrules consume: could not reach Kafka at 127\.0\.0\.1:{consume.port} within 2 s "
                        r"\([A-Za-z]+\)", last), last


def test_a_stop_that_does_not_end_in_time_exits_4_with_one_error_line_and_the_stacks():
    """The hard bound on a graceful stop (--stop-timeout-seconds): whatever the main thread is stuck
    in, the deadline thread logs why, writes every thread's stack and exits 4."""
    script = (
        "import threading, time, structlog\n"
        "from otrules.cli import _configure_logging, _stop_deadline\n"
        "_configure_logging()\n"
        "stopping, stopped = threading.Event(), threading.Event()\n"
        "threading.Thread(target=_stop_deadline, args=(stopping, stopped, 0.5, structlog.get_logger('t')),\n"
        "                 daemon=True).start()\n"
        "stopping.set()\n"
        "def stuck_in_a_wait_without_a_bound():\n"
        "    time.sleep(60)\n"
        "stuck_in_a_wait_without_a_bound()\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 4, done.stderr
    assert time.monotonic() - started < 30
    errors = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(e["level"], e["seconds"]) for e in errors] == [("error", 0.5)]
    assert errors[0]["event"].startswith("did not stop within --stop-timeout-seconds")
    assert "stuck_in_a_wait_without_a_bound" in done.stderr  # the main thread's stack says where


def test_a_stop_that_ends_in_time_is_not_cut_short():
    script = (
        "import threading, time, structlog\n"
        "from otrules.cli import _stop_deadline\n"
        "stopping, stopped = threading.Event(), threading.Event()\n"
        "t = threading.Thread(target=_stop_deadline, args=(stopping, stopped, 30, structlog.get_logger('t')))\n"
        "t.start()\n"
        "stopping.set(); time.sleep(0.2); stopped.set(); t.join(10)\n"
        "print('alive' if t.is_alive() else 'ended')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ended"), done.stderr
