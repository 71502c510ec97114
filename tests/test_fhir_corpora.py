"""FHIR written by others (issue 24): a hand-written US Core OT episode and the HL7 R4
specification's examples, read as a clinician would expect.

The HL7 examples are fetched once from npm by scripts/fhir_corpora/corpora.py into a cache outside
the repository. Set OTRULES_SKIP_FHIR_CORPORA=1 to skip those tests when npm cannot be reached.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_validator_support import errors
from otrules.cli import main
from test_fhir_input import _briefs

HERE = Path(__file__).parent / "fhir"
EPISODE = HERE / "us-core-ot-episode.ndjson"
NATIVE = HERE / "us-core-ot-episode.native.jsonl"
ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> tuple[list[str], str]:
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 0, result.output
    return [x for x in result.stdout.splitlines() if x], result.stderr


def _open(lines: list[str]) -> list[str]:
    return [x for x in lines if json.loads(x).get("status", "open") == "open"]


def test_the_us_core_ot_episode_gives_the_recommendations_of_its_native_stream(tmp_path):
    """CarePlan assess-plan without timing, Encounters typed by CPT, Appointments by service type, a
    primary-care visit and a dental no-show among them: goal met, adherence and decline, as native."""
    dlq = tmp_path / "dead.jsonl"
    fhir_recs, summary = _run("--input", str(EPISODE), "--dlq", str(dlq))
    native_recs, _ = _run("--input", str(NATIVE))
    assert _briefs(fhir_recs) == _briefs(native_recs)
    kinds = sorted(json.loads(x)["kind"] for x in _open(fhir_recs))
    assert kinds == ["adherence_review", "advance_goal", "clinical_review"]
    # the primary-care visit neither resets the missed OT visits nor answers the adherence review; the
    # dental no-show is not a missed OT visit
    assert "rejected 0" in summary and "skipped 2 (not OT 2)" in summary, summary
    assert dlq.read_bytes() == b""


def test_the_hand_written_us_core_episode_is_valid_fhir_r4(fhir_validator):
    results = fhir_validator(EPISODE)
    assert [errors(r) for r in results] == [[] for _ in results]
    assert len(results) == len(EPISODE.read_text().splitlines())


def _corpora():
    spec = importlib.util.spec_from_file_location("fhir_corpora", ROOT / "scripts" / "fhir_corpora" / "corpora.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def r4_examples() -> Path:
    module = _corpora()
    try:
        return module.r4_examples()
    except module.CorpusError as exc:
        if os.environ.get("OTRULES_SKIP_FHIR_CORPORA") == "1":
            pytest.skip(f"no HL7 R4 examples: {exc}")
        pytest.fail(f"could not fetch the HL7 R4 examples: {exc}", pytrace=False)


def test_the_hl7_r4_examples_give_no_crash_no_recommendation_and_no_flood_of_dead_letters(r4_examples, tmp_path):
    """None of the specification's examples is an OT episode: nothing to recommend, and a feed of
    them is skipped by reason (other types, unmapped codes, care of other services)."""
    dlq = tmp_path / "dead.jsonl"
    recs, summary = _run("--quiet", "--input", str(r4_examples), "--input-format", "fhir", "--dlq", str(dlq))
    read = int(summary.split("read ", 1)[1].split(" ", 1)[0])
    letters = dlq.read_text().splitlines()
    assert read > 7000 and recs == []
    assert len(letters) <= read // 100, letters[:3]
    assert dlq.stat().st_size <= r4_examples.stat().st_size
    assert "not OT" in summary and "unmapped code" in summary


@pytest.fixture(scope="session")
def synthea_patients() -> Path:
    module = _corpora()
    try:
        return module.synthea()
    except module.CorpusError as exc:
        if os.environ.get("OTRULES_SKIP_FHIR_CORPORA") == "1":
            pytest.skip(f"no Synthea patients: {exc}")
        pytest.fail(f"could not generate Synthea patients: {exc}", pytrace=False)


def test_synthea_patients_with_no_ot_care_give_nothing_and_few_small_dead_letters(synthea_patients, tmp_path):
    """10 Synthea patients (Synthea 3.3.0, seed 24): primary care, emergencies, labs, no OT. Their
    Encounters are not OT visits, their care plans not OT plans: 0 recommendations, dead letters at
    most 1% of the resources, and never more bytes than the input."""
    dlq = tmp_path / "dead.jsonl"
    recs, summary = _run("--quiet", "--input", str(synthea_patients), "--input-format", "fhir", "--dlq", str(dlq))
    read = int(summary.split("read ", 1)[1].split(" ", 1)[0])
    assert recs == [] and read > 1000
    assert len(dlq.read_text().splitlines()) <= read // 100
    assert dlq.stat().st_size <= synthea_patients.stat().st_size
    assert "not OT" in summary, summary
