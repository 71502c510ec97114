"""Hot reload of rules: a changed rules directory (or SIGHUP) goes live only if it
validates and survives a smoke run in a child process.

The watcher thread only checks; the service loop builds the new engine and
swaps it in between batches, so durable_rules is still driven from one thread
and no event sees half a ruleset. A failed reload keeps the old rules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from otrules.engine import CompiledRuleset, RulesetError, load_catalogue, load_rulesets
from otrules.engine.loader import instrument_problems
from otrules.schemas import Catalogue

log = structlog.get_logger("otrules.reload")


def fingerprint(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of the rules files: cheap to poll."""
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.y*ml")) if p.is_dir() else [p]
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)


class RulesWatcher:
    """Polls the rules paths (and wakes on `request()`, e.g. from SIGHUP)."""

    def __init__(self, paths: Sequence[Path], catalogue: Path,
                 on_valid: Callable[[list[CompiledRuleset], Catalogue], None], on_invalid: Callable[[str], None],
                 poll_seconds: float = 5.0) -> None:
        self.paths = list(paths)
        self.catalogue = catalogue
        self.on_valid = on_valid
        self.on_invalid = on_invalid
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seen = fingerprint(self.paths)
        self._thread = threading.Thread(target=self._run, name="otrules-rules-watch", daemon=True)

    def start(self) -> RulesWatcher:
        self._thread.start()
        return self

    def request(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            forced = self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = fingerprint(self.paths)
            if now == self._seen and not forced:
                continue
            self._seen = now
            try:
                self.check()
            except Exception as exc:  # the watcher outlives anything; the live rules stay
                log.error("rules reload check failed; still watching", error=type(exc).__name__)
                log.debug("rules reload check failure", exc_info=exc)

    def check(self) -> None:
        """Load, check and smoke-run the rules; `on_valid` if they pass, else `on_invalid` with why."""
        from otrules.smoke import check_in_child

        try:
            catalogue = load_catalogue(self.catalogue)
            loaded = load_rulesets(self.paths, catalogue)
            problems = [p for rs in loaded for p in instrument_problems(rs, catalogue)]
            if problems:
                raise RulesetError(problems)
            crash = check_in_child(self.paths, self.catalogue)
        except RulesetError as exc:
            self.on_invalid("; ".join(str(p) for p in exc.problems[:5]))
            return
        except Exception as exc:  # a loader bug must not stop the watcher: refuse like a bad file
            log.error("rules could not be loaded", error=type(exc).__name__)
            log.debug("rules load failure", exc_info=exc)
            self.on_invalid(f"the rules could not be loaded ({type(exc).__name__})")
            return
        if crash:
            self.on_invalid(crash)
            return
        self.on_valid(loaded, catalogue)
