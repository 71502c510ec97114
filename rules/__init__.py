"""Bundled data, not code: the instrument catalogue, the default ruleset
`ot-core.yaml`, its test cases, and a sample event stream.

Clinical leads copy and edit these files; `paths()` finds them whether
otrules runs from a checkout or from an installed wheel.
"""

from importlib.resources import files
from pathlib import Path

_HERE = files(__name__)


def path(name: str) -> Path:
    """Path of a bundled file, e.g. `path("ot-core.yaml")`."""
    return Path(str(_HERE.joinpath(name)))


DEFAULT_RULESET = "ot-core.yaml"
CATALOGUE = "instruments.yaml"
SAMPLE_STREAM = "samples/sample-stream.jsonl"
FHIR_CODES = "fhir-codes.yaml"
