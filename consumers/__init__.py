"""Sources and sinks around the engine, and the one event core they all drive.

`core.EventCore` is parse → state → engine → tally → emit, plus sweep and
expiry; `pipeline.Pipeline` is that core with JSONL file sinks (the embedded
default); the Kafka service (`consumers.kafka`) drives the same core inside
its transactions.
"""

from otrules.consumers.core import EventCore, EventFailed, Fault, Record, Rejection, Tally, TooLarge
from otrules.consumers.deadletter import DeadLetter, DeadLetterSink
from otrules.consumers.jsonl import JsonlSource, RecommendationWriter
from otrules.consumers.pipeline import FileSink, Pipeline
from otrules.consumers.states import PatientStates

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "EventCore",
    "EventFailed",
    "Fault",
    "FileSink",
    "JsonlSource",
    "PatientStates",
    "Pipeline",
    "RecommendationWriter",
    "Record",
    "Rejection",
    "Tally",
    "TooLarge",
]
