"""FHIR written by others, for the tests (issue 24): fetched once from the package registries into
a cache outside the repository (like scripts/maven_jars.py), never committed.

- The HL7 FHIR R4 specification's examples: npm package `hl7.fhir.r4.examples` 4.0.1, fetched with
  `npm pack`, every example resource of up to 1 MB written as one NDJSON line.
- Synthea-generated patients: Synthea itself (org.mitre.synthea:synthea 3.3.0 from Maven Central,
  through scripts/maven_jars.py), run with a fixed seed for 10 patients of Massachusetts with 5
  years of history, R4 transaction Bundles, one patient per line, as Synthea writes them.

Standard library only. `python scripts/fhir_corpora/corpora.py r4-examples|synthea` prints the
NDJSON path.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import maven_jars
from maven_jars import cache_root

R4_EXAMPLES = ("hl7.fhir.r4.examples", "4.0.1")
MAX_RESOURCE = 1_000_000  # the specification's own multi-megabyte Bundles of definitions are not patient data


class CorpusError(Exception):
    pass


def npm_package(name: str, version: str) -> Path:
    """The unpacked `package/` folder of an npm package, fetched with `npm pack` once."""
    home = cache_root() / "npm" / f"{name}-{version}"
    done = home / "package"
    if done.is_dir():
        return done
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_dir():
            return done
        npm = shutil.which("npm")
        if npm is None:
            raise CorpusError(f"npm is not on PATH: it is needed once to fetch {name}@{version}")
        partial = home / f"partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        run = subprocess.run([npm, "pack", "--silent", f"{name}@{version}"], cwd=partial, capture_output=True,
                             text=True, timeout=900, check=False)
        tgz = next(partial.glob("*.tgz"), None)
        if run.returncode != 0 or tgz is None:
            raise CorpusError(f"npm pack {name}@{version} failed: {run.stderr.strip()[-400:]}")
        with tarfile.open(tgz) as tar:
            tar.extractall(partial, filter="data")
        (partial / "package").rename(done)
        shutil.rmtree(partial, ignore_errors=True)
    return done


def r4_examples() -> Path:
    """The R4 examples as NDJSON (one resource a line, sorted by file name)."""
    package = npm_package(*R4_EXAMPLES)
    out = package.parent / "r4-examples.ndjson"
    if out.is_file():
        return out
    tmp = out.with_suffix(f".partial-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for path in sorted(package.glob("*.json")):
            if path.name == "package.json" or path.name.startswith("ig-") or path.stat().st_size > MAX_RESOURCE:
                continue
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(doc, dict) and "resourceType" in doc:
                f.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n")
    tmp.rename(out)
    return out


SYNTHEA_POM = Path(__file__).resolve().parent / "synthea-pom.xml"
SYNTHEA_SEED = 24
SYNTHEA_PATIENTS = 10


def synthea() -> Path:
    """10 Synthea patients as NDJSON, one patient's transaction Bundle a line (generated once)."""
    version = maven_jars.pom_property(SYNTHEA_POM, "synthea.version")
    home = cache_root() / "synthea" / version
    out = home / f"patients-seed{SYNTHEA_SEED}-n{SYNTHEA_PATIENTS}.ndjson"
    if out.is_file():
        return out
    lib = maven_jars.fetch(SYNTHEA_POM, home, label=f"Synthea {version}", properties={"synthea.version": version},
                           complete=lambda d: any(d.glob("synthea-*.jar")), error=CorpusError)
    java = shutil.which("java")
    if java is None:
        raise CorpusError("java is not on PATH: it is needed to run Synthea")
    work = home / f"run-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    cmd = [java, "-Xmx1g", "-cp", f"{lib}/*", "App", "-s", str(SYNTHEA_SEED), "-cs", str(SYNTHEA_SEED),
           "-p", str(SYNTHEA_PATIENTS), "-r", "20260101", f"--exporter.baseDirectory={work}",
           "--exporter.fhir.export=true", "--exporter.fhir.bulk_data=false", "--exporter.csv.export=false",
           "--exporter.hospital.fhir.export=false", "--exporter.practitioner.fhir.export=false",
           "--exporter.years_of_history=5", "Massachusetts"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, stdin=subprocess.DEVNULL)
    bundles = sorted((work / "fhir").glob("*.json"))
    if run.returncode != 0 or not bundles:
        raise CorpusError(f"Synthea failed (exit {run.returncode}): {maven_jars.tail(run.stdout + run.stderr, 20)}")
    tmp = out.with_suffix(f".partial-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for path in bundles:
            f.write(json.dumps(json.loads(path.read_text(encoding="utf-8")), separators=(",", ":"),
                               ensure_ascii=False) + "\n")
    tmp.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["r4-examples"]:
        print(r4_examples())
    elif sys.argv[1:] == ["synthea"]:
        print(synthea())
    else:
        sys.exit("usage: corpora.py r4-examples|synthea")
