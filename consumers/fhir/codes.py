"""Reading the FHIR code table (`rules/fhir-codes.yaml`) with `file:line` errors, like rules files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from otrules import rules as bundled
from otrules.engine.loader import Problem, RulesetError, _pos, _pydantic_problems, _read_yaml
from otrules.schemas import Catalogue
from otrules.schemas.fhir_codes import INSTRUMENT_SYSTEM, KIND_SYSTEM, SETTING_SYSTEM, CodeTable

DEFAULT_CODES = bundled.path(bundled.FHIR_CODES)


def load_code_table(path: str | Path | None = None, catalogue: Catalogue | None = None) -> CodeTable:
    """The code table at `path` (default: the bundled one); `RulesetError` with file:line problems.
    With the `catalogue` it will run against, instruments and answers are checked against it too."""
    path = Path(path or DEFAULT_CODES)
    data, problems = _read_yaml(path)
    if problems:
        raise RulesetError(problems)
    if not isinstance(data, dict) or "codes" not in data:
        raise RulesetError([Problem(str(path), 1, 1, "a FHIR code table is a mapping with codes, version and "
                                                     "instruments, evaluation_kinds, settings")])
    try:
        table = CodeTable.model_validate(data)
    except ValidationError as exc:
        raise RulesetError(_pydantic_problems(str(path), data, exc)) from None
    problems = _meaning_problems(str(path), data, table, catalogue)
    if problems:
        raise RulesetError(problems)
    return table


_OWN = {INSTRUMENT_SYSTEM, KIND_SYSTEM, SETTING_SYSTEM}


def _meaning_problems(filename: str, data: Any, table: CodeTable, catalogue: Catalogue | None) -> list[Problem]:
    """What the schema cannot see: a code of otrules' own systems made to mean something else, an
    instrument the catalogue does not know (its scores would go unchecked), answers outside its range,
    units on coded answers."""
    problems = []

    def at(section: str, i: int) -> tuple[int, int]:
        return _pos(data.get(section), i)

    for section in ("instruments", "evaluation_kinds", "settings"):
        for i, entry in enumerate(getattr(table, section)):
            if entry.system in _OWN:
                meaning = getattr(entry, {"instruments": "instrument", "evaluation_kinds": "kind",
                                          "settings": "setting"}[section])
                if entry.system != {"instruments": INSTRUMENT_SYSTEM, "evaluation_kinds": KIND_SYSTEM,
                                    "settings": SETTING_SYSTEM}[section] or meaning != entry.code:
                    problems.append(Problem(filename, *at(section, i), f"{section}[{i}]: {entry.system}|{entry.code} "
                                            f"is otrules' own code: it always means {entry.code} here",
                                            None, "use your own system for a local code"))
    for i, entry in enumerate(table.instruments):
        instrument = catalogue.get(entry.instrument) if catalogue is not None else None
        if catalogue is not None and instrument is None:
            problems.append(Problem(filename, *at("instruments", i), f"instruments[{i}].instrument: "
                                    f"{entry.instrument!r} is not in the instrument catalogue, so its scores would go "
                                    "unchecked", None, "use a catalogue id (rules/instruments.yaml) or add it there"))
        if entry.answers is not None and entry.units is not None:
            problems.append(Problem(filename, *at("instruments", i), f"instruments[{i}]: answers and units: a coded "
                                    "answer has no unit", None, "keep one of them"))
        for code, score in (entry.answers or {}).items():
            why = instrument.out_of_range(score) if instrument is not None else None
            if why:
                problems.append(Problem(filename, *at("instruments", i), f"instruments[{i}].answers.{code}: "
                                        f"{score:g} {why} of {entry.instrument}"))
    return problems


def is_code_table(path: Path) -> bool:
    """Whether a YAML file looks like a code table (a top-level `codes:` key) rather than rules."""
    try:
        with path.open("rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    return any(line.startswith(b"codes:") for line in head.splitlines())
