#!/usr/bin/env python3
"""An independent FHIR R4 validator for tests: HAPI FHIR's instance validator, offline.

otrules takes FHIR R4 input; its tests check resources against an
implementation that is not otrules' own: HAPI FHIR's R4 instance validator
(the HL7 validator core behind it). As for the test Kafka broker, there is no
Docker and no FHIR package server here, so the validator is assembled from
Maven Central (see pom.xml next to this file), cached outside the repository,
and Validate.java (also next to this file) is compiled against it once. It runs
as one plain `java` process per call, every resource of every file in that
one JVM (start-up is the slow part, about 4-5 s), with no network at all: only
the R4 core definitions and the code systems HAPI checks in memory are known,
so codes of LOINC, CPT, SNOMED CT or a local system are warnings at most
("CodeSystem is unknown and can't be validated"), never errors on their own.

Python API (used by tests/fhir_validator_support.py)::

    results = validate(["a.ndjson"])      # one dict per non-blank line
    # {"file": "a.ndjson", "line": 1, "resourceType": "Observation", "id": "o1",
    #  "issues": [{"severity": "error", "location": "Observation.status", "message": "..."}]}

CLI::

    python scripts/fhir_validator/validator.py [--warnings] [--json] FILE.ndjson...

prints each problem as FILE:LINE: TYPE/ID: SEVERITY LOCATION: MESSAGE and exits
0 when no resource has an error, 1 when some has, 2 when the validator itself
could not run.

Environment: OTRULES_HAPI_FHIR_VERSION overrides the version pinned in pom.xml;
XDG_CACHE_HOME moves the cache (default ~/.cache/otrules/hapi-fhir-<v>/: lib/
holds the jars, classes/<hash>/ the compiled Validate.java).

Standard library only (usable before the venv exists).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # scripts/ (last: it holds a kafka/ folder)
import maven_jars

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
SOURCE = HERE / "Validate.java"
MAIN_CLASS = "Validate"

# One JVM at a time, single-threaded validation: a 1 GB heap is plenty (about
# 0.5 GB resident after 2,000 resources) and the serial collector keeps CPU use
# to the main thread plus the JIT. The JVM's own messages go to stderr: stdout
# carries the results.
JVM_OPTIONS = ["-Xmx1g", "-XX:+UseSerialGC", "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8",
               "-XX:+DisplayVMOutputToStderr", "-Xlog:disable", "-Xlog:all=warning:stderr"]


class ValidatorError(RuntimeError):
    """The validator could not be fetched, compiled or run (not: a resource is invalid)."""


# --------------------------------------------------------------------------
# Jars: fetched once per HAPI FHIR version into a shared cache
# --------------------------------------------------------------------------

def hapi_version() -> str:
    """The HAPI FHIR version to use: $OTRULES_HAPI_FHIR_VERSION, else the pom's pin."""
    version = os.environ.get("OTRULES_HAPI_FHIR_VERSION") or maven_jars.pom_property(POM, "hapi.version")
    if not version:
        raise ValidatorError(f"{POM}: no <hapi.version> property")
    return version


def cache_root() -> Path:
    return maven_jars.cache_root()


def _home(version: str) -> Path:
    return cache_root() / f"hapi-fhir-{version}"


def fetch_jars(version: str | None = None, *, timeout: float = 900) -> Path:
    """Return a directory holding HAPI FHIR's validator jars, fetching them with Maven if needed."""
    version = version or hapi_version()
    return maven_jars.fetch(POM, _home(version), label=f"HAPI FHIR {version}", properties={"hapi.version": version},
                            complete=lambda lib: (lib / f"hapi-fhir-validation-{version}.jar").is_file(),
                            error=ValidatorError, timeout=timeout)


# --------------------------------------------------------------------------
# Validate.java: compiled once per source text and HAPI version
# --------------------------------------------------------------------------

def compile_validator(version: str | None = None, *, timeout: float = 300) -> Path:
    """Return a classes directory holding the compiled Validate.java, compiling it if needed.

    The directory is named after a hash of the source, so an edited
    Validate.java is recompiled on next use while another checkout using the
    old one keeps it; like lib/, it appears by an atomic rename only once javac
    succeeded. Each use touches it; builds unused for a week are removed.
    """
    version = version or hapi_version()
    lib = fetch_jars(version)
    home = _home(version)
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    classes = home / "classes" / digest
    if (classes / f"{MAIN_CLASS}.class").is_file():
        _touch(classes)
        return classes
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (classes / f"{MAIN_CLASS}.class").is_file():
            _touch(classes)
            return classes
        javac = _jdk_tool("javac")
        partial = home / "classes" / f"{digest}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        cmd = [javac, "-nowarn", "-encoding", "UTF-8", "-cp", f"{lib}/*", "-d", str(partial), str(SOURCE)]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise ValidatorError(f"javac did not compile {SOURCE.name} within {timeout:.0f}s") from exc
        if done.returncode != 0 or not (partial / f"{MAIN_CLASS}.class").is_file():
            shutil.rmtree(partial, ignore_errors=True)
            raise ValidatorError(f"javac failed on {SOURCE} against HAPI FHIR {version} "
                                 f"(exit {done.returncode}):\n{_tail(done.stdout + done.stderr, 40)}")
        partial.rename(classes)
        week_ago = time.time() - 7 * 86400
        for old in classes.parent.iterdir():  # builds of an older Validate.java no checkout used lately
            if old != classes and old.stat().st_mtime < week_ago:
                shutil.rmtree(old, ignore_errors=True)
    return classes


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache still works, it is just never pruned
        os.utime(path)


def _jdk_tool(name: str) -> str:
    """$JAVA_HOME/bin/NAME, else NAME on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    path = str(Path(java_home) / "bin" / name) if java_home else shutil.which(name)
    if not path or not Path(path).is_file():
        where = f"$JAVA_HOME/bin ({java_home})" if java_home else "PATH"
        raise ValidatorError(f"{name} is not in {where}: the FHIR validator needs a JDK 17+ "
                             "(HAPI FHIR 8 requires Java 17)")
    return path


# --------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------

def command(paths: Iterable[str | os.PathLike[str]], *, warnings: bool = False,
            version: str | None = None) -> list[str]:
    """The java command line that validates these NDJSON files (fetching and compiling first if needed)."""
    version = version or hapi_version()
    lib = fetch_jars(version)
    classes = compile_validator(version)
    flags = ["--warnings"] if warnings else []
    return [_jdk_tool("java"), *JVM_OPTIONS, "-cp", f"{lib}/*{os.pathsep}{classes}", MAIN_CLASS,
            *flags, "--", *(str(p) for p in paths)]


def validate(paths: Iterable[str | os.PathLike[str]], *, warnings: bool = False,
             version: str | None = None, timeout: float | None = 1800) -> list[dict[str, Any]]:
    """Validate NDJSON files of FHIR R4 resources in one JVM; one result per non-blank line.

    Each result: {"file", "line", "resourceType", "id", "issues"}, issues
    being [{"severity", "location", "message"}] of severity error or fatal
    (warnings=True adds warnings). An invalid resource is a result with
    issues, not an exception: ValidatorError means the validator itself
    could not run (no Java or Maven, unreadable file, JVM failure).
    """
    files = [Path(p) for p in paths]
    if not files:
        return []
    for path in files:
        if not path.is_file():
            raise ValidatorError(f"no such file: {path}")
    cmd = command(files, warnings=warnings, version=version)
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, encoding="utf-8",
                              timeout=timeout, preexec_fn=_die_with_parent())
    except subprocess.TimeoutExpired as exc:
        raise ValidatorError(f"the FHIR validator did not finish within {timeout:.0f}s") from exc
    if done.returncode not in (0, 1):
        raise ValidatorError(f"the FHIR validator failed (exit {done.returncode}):\n"
                             f"$ {' '.join(cmd)}\n{_tail(done.stderr or done.stdout, 40)}")
    try:
        results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValidatorError(f"the FHIR validator printed something that is not a JSON result ({exc}):\n"
                             f"{_tail(done.stdout, 5)}") from exc
    has_error = any(i["severity"] in ("error", "fatal") for r in results for i in r["issues"])
    if has_error != (done.returncode == 1):  # the exit status and the results must tell the same story
        raise ValidatorError(f"the FHIR validator exited {done.returncode} but its results "
                             f"{'do' if has_error else 'do not'} hold errors:\n{_tail(done.stderr, 20)}")
    return results


def errors(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The error and fatal issues of one result."""
    return [i for i in result["issues"] if i["severity"] in ("error", "fatal")]


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

_tail = maven_jars.tail


def _die_with_parent() -> Callable[[], object] | None:
    """A preexec_fn that makes the JVM get SIGKILL when we die (Linux), else None.

    So a test session killed with SIGKILL doesn't leave a JVM validating on.
    The libc lookup happens here, in the parent, so the child runs almost
    nothing between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGKILL)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Validate FHIR R4 resources (NDJSON: one JSON resource per line) with HAPI FHIR, offline.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="NDJSON file of FHIR R4 resources")
    parser.add_argument("--warnings", action="store_true", help="report warnings too (they never fail)")
    parser.add_argument("--json", action="store_true", help="print the per-line results as JSON lines")
    args = parser.parse_args(argv)
    try:
        results = validate(args.files, warnings=args.warnings)
    except ValidatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    invalid = 0
    for result in results:
        invalid += bool(errors(result))
        if args.json:
            print(json.dumps(result))
            continue
        what = f"{result['resourceType'] or '?'}/{result['id'] or '?'}"
        for issue in result["issues"]:
            print(f"{result['file']}:{result['line']}: {what}: {issue['severity']} {issue['location']}: "
                  f"{issue['message']}")
    print(f"{len(results)} resource{'' if len(results) == 1 else 's'} (non-blank lines), {invalid} with errors",
          file=sys.stderr)
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
