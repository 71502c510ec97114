"""otrules: an event-driven rules engine for therapy plans of care.

The packages: `otrules.schemas` (pydantic models), `otrules.engine` (rules
files, conditions, state, facts, matching), `otrules.consumers` (sources and
sinks), `otrules.rules` (bundled data) and `otrules.cli` (the command).
`OtrulesError` is the base of every exception otrules raises on purpose.
"""

from otrules.schemas import OtrulesError

__version__ = "0.1.0"

__all__ = ["OtrulesError", "__version__"]
