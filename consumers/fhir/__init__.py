"""FHIR R4 input (contracts.md §7): an adapter in front of the event core.

`resources` reads lines into resources, `mapping` turns them into otrules
events (joining what arrives in separate lines in the patient's state), and
`codes` reads the code table that says which codes mean what. The engine
never sees FHIR.
"""

from otrules.consumers.fhir.codes import DEFAULT_CODES, load_code_table
from otrules.consumers.fhir.mapping import GOAL_BASELINE, GOAL_GAS_WEIGHT, VALIDATION, FhirMapper, make_mapper
from otrules.consumers.fhir.resources import Entry, entries, is_fhir

__all__ = ["DEFAULT_CODES", "GOAL_BASELINE", "GOAL_GAS_WEIGHT", "VALIDATION", "Entry", "FhirMapper", "entries",
           "is_fhir", "load_code_table", "make_mapper"]
