"""Where the bundled catalogue, default ruleset and sample stream live."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from otrules import rules as bundled
from otrules.engine import CompiledRuleset, load_catalogue, load_rulesets
from otrules.schemas import Catalogue

DEFAULT_RULES = bundled.path(bundled.DEFAULT_RULESET)
CATALOGUE = bundled.path(bundled.CATALOGUE)
SAMPLE_STREAM = bundled.path(bundled.SAMPLE_STREAM)


def rulesets(paths: Sequence[str | Path] = (), catalogue: Catalogue | None = None) -> list[CompiledRuleset]:
    """The rules files at `paths` (default: ot-core); with the `catalogue` they will run
    against, a rejected file's errors also name unknown instruments and bad overrides."""
    return load_rulesets(list(paths) or [DEFAULT_RULES], catalogue)


def catalogue(path: str | Path | None = None) -> Catalogue:
    return load_catalogue(path or CATALOGUE)
