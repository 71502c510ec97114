"""pytest plugin: an independent FHIR R4 validator (HAPI FHIR, offline) for tests.

``fhir_validator`` is a session fixture returning a callable::

    results = fhir_validator([resource_dict, ...])   # or a path to an NDJSON file
    assert not errors(results[0]), results[0]

Each result is ``{"file", "line", "resourceType", "id", "issues"}``, one per
resource in order, ``issues`` holding error and fatal issues only
(``warnings=True`` adds warnings). Every call starts one JVM (4-5 s of
start-up, then about 10 ms a resource), so pass all a module's resources in
one call rather than one call per test.

The validator is ``scripts/fhir_validator/validator.py``: HAPI FHIR's jars
fetched once with Maven into ~/.cache/otrules (Java 17 + Maven needed), no
network at run time. Tests using the fixture are marked ``fhir_validator``
automatically, so ``-m "not fhir_validator"`` runs the suite without Java.
Set ``OTRULES_SKIP_FHIR_VALIDATOR=1`` to skip them instead of failing when
the validator cannot be had (the default is to fail: CI must not silently
skip them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR_SCRIPT = ROOT / "scripts" / "fhir_validator" / "validator.py"

Result = dict[str, Any]
FhirValidator = Callable[..., list[Result]]


def _validator_module() -> ModuleType:
    """scripts/ is not a package: load validator.py by path, once."""
    name = "otrules_fhir_validator"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, VALIDATOR_SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pytest_configure(config: pytest.Config) -> None:
    # Registered here rather than in pyproject so the plugin is self-contained
    # (the suite runs with --strict-markers).
    config.addinivalue_line("markers", "fhir_validator: needs the HAPI FHIR validator (Java 17 + Maven, fetched once)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "fhir_validator" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fhir_validator)


def errors(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The error and fatal issues of one result."""
    return [i for i in result["issues"] if i["severity"] in ("error", "fatal")]


@pytest.fixture(scope="session")
def fhir_validator(tmp_path_factory: pytest.TempPathFactory) -> FhirValidator:
    """A callable: resources (dicts) or an NDJSON path -> one result per resource, one JVM per call."""
    module = _validator_module()
    error = None
    try:  # fetch and compile up front, so a missing Java or Maven is one clear failure
        module.compile_validator()
    except module.ValidatorError as exc:
        error = exc
    if error is not None:  # reported outside the except block: one message, not a chain
        if os.environ.get("OTRULES_SKIP_FHIR_VALIDATOR") == "1":
            pytest.skip(f"no FHIR validator: {error}")
        pytest.fail(f"could not build the HAPI FHIR validator: {error}", pytrace=False)
    workdir = tmp_path_factory.mktemp("fhir-validator")
    calls = 0

    def validate(resources: Iterable[Mapping[str, Any]] | str | os.PathLike[str], *,
                 warnings: bool = False) -> list[Result]:
        nonlocal calls
        if isinstance(resources, str | os.PathLike):
            path = Path(resources)
        else:
            calls += 1
            path = workdir / f"resources-{calls}.ndjson"
            # json.dumps escapes newlines inside strings: one resource, one line.
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in resources), encoding="utf-8")
        try:
            return list(module.validate([path], warnings=warnings))
        except module.ValidatorError as exc:
            pytest.fail(f"the FHIR validator could not run: {exc}", pytrace=False)

    return validate
