"""Sources and sinks around the engine.

The embedded default reads and writes JSONL files (`pipeline.run_stream`);
the Kafka service, state stores and metrics build on the same pieces.
"""

from otrules.consumers.deadletter import DeadLetter, DeadLetterSink
from otrules.consumers.jsonl import JsonlSource, Line, RecommendationWriter
from otrules.consumers.pipeline import Pipeline, RunSummary
from otrules.consumers.states import PatientStates

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "JsonlSource",
    "Line",
    "PatientStates",
    "Pipeline",
    "RecommendationWriter",
    "RunSummary",
]
