"""Jars of a pom's dependencies, fetched once from Maven Central into a cache outside the repository.

Shared by the test tools that need a real Java program but have no Docker: the Kafka broker
(scripts/kafka/broker.py) and the FHIR validator (scripts/fhir_validator/validator.py). Standard
library only: they run before the project's virtual environment exists.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cache_root() -> Path:
    """Outside the repository, so clones and `git clean` don't fetch again ($XDG_CACHE_HOME moves it)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "otrules"


def pom_property(pom: Path, name: str) -> str:
    """A `<properties>` value of the pom ("" when it has none)."""
    node = ET.parse(pom).getroot().find(f"m:properties/m:{name}", {"m": "http://maven.apache.org/POM/4.0.0"})
    return (node.text or "").strip() if node is not None else ""


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def fetch(pom: Path, home: Path, *, label: str, properties: dict[str, str], complete: Callable[[Path], bool],
          error: type[Exception], ready: Callable[[Path], bool] = Path.is_dir,
          merge: Callable[[Path, Path], None] | None = None, timeout: float = 900) -> Path:
    """`home/lib`, holding the pom's runtime dependencies, fetched with Maven unless `ready` says
    it is there. The folder appears by an atomic rename only once Maven succeeded (and `complete`
    agrees), so its existence means complete; a file lock keeps two test sessions from fetching at
    once. A lib/ that exists but is not `ready` gets what it lacks through `merge(fetched, lib)`."""
    lib = home / "lib"
    if ready(lib):
        return lib
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready(lib):  # another process fetched while we waited
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise error(f"Maven (mvn) is not on PATH: it is needed once to fetch the {label} jars")
        partial = home / f"lib.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        print(f"{'completing' if lib.is_dir() else 'fetching'} {label} from Maven Central into {lib} (once)",
              file=sys.stderr)
        cmd = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
               *(f"-D{k}={v}" for k, v in properties.items()), "-DincludeScope=runtime",
               f"-DoutputDirectory={partial}"]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise error(f"Maven did not fetch {label} within {timeout:.0f}s") from exc
        if done.returncode != 0 or not complete(partial):
            shutil.rmtree(partial, ignore_errors=True)
            raise error(f"Maven failed to fetch {label} (exit {done.returncode}):\n"
                        f"$ {' '.join(cmd)}\n{ANSI.sub('', tail(done.stdout + done.stderr, 40))}")
        if lib.is_dir() and merge is not None:
            merge(partial, lib)
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.rename(lib)
    return lib
