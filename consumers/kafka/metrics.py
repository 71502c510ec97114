"""Prometheus metrics of the Kafka service (one registry per service instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """What operators alert on: see docs/operations.md."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("otrules_events", "Input events by type and outcome", ["type", "outcome"], registry=r)
        self.recommendations = Counter("otrules_recommendations", "Recommendations by kind and rule",
                                       ["kind", "rule"], registry=r)
        self.dead_letters = Counter("otrules_dead_letters", "Events sent to the dead-letter topic, by why "
                                    "(invalid, key, future, engine, too-large, state-too-large, state, refused)",
                                    ["kind"], registry=r)
        self.state_dropped = Counter("otrules_state_dropped", "Remembered event ids and plans let go by the "
                                     "per-patient state bound", registry=r)
        self.late = Counter("otrules_late_events", "Events older than their plan's latest: placed in history, "
                            "recommended nothing", registry=r)
        self.closed = Counter("otrules_recommendations_closed", "Recommendations closed (contracts.md §8), by why: "
                              "superseded, resolved, accepted, overridden, discharged, retracted, capped", ["reason"],
                              registry=r)
        self.capped = Counter("otrules_recommendations_capped", "Open recommendations closed by the per-patient cap "
                              "(the oldest of the lowest urgency first; docs/operations.md)", registry=r)
        self.retractions = Counter("otrules_retractions", "Retraction events, by outcome: applied (an evaluation's "
                                   "scores taken back) or ignored (unknown or already retracted target)",
                                   ["outcome"], registry=r)
        self.skipped = Counter("otrules_fhir_skipped_resources", "FHIR resources otrules does not read (another "
                               "type, a code not in the code table, a status it ignores), by why", ["why"],
                               registry=r)
        self.unfollowed = Counter("otrules_fhir_unfollowed_references", "References of a FHIR resource otrules "
                                  "read but could not follow (a CarePlan.goal by identifier only), by why", ["why"],
                                  registry=r)
        self.unpublished = Counter("otrules_unpublished_recommendations", "Sweep recommendations over the record "
                                   "size limit (not published)", registry=r)
        self.sweep_failures = Counter("otrules_sweep_failures", "Patients whose sweep failed (left as they were; "
                                      "the sweep went on)", registry=r)
        self.retries = Counter("otrules_batch_retries", "Failed batches retried, by whether the failure named an "
                               "event", ["attributed"], registry=r)
        self.batch_size = Histogram("otrules_batch_size_events", "Events per transaction",
                                    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000), registry=r)
        self.commit_seconds = Histogram("otrules_transaction_commit_seconds", "Time to commit one transaction",
                                        buckets=_FAST, registry=r)
        self.latency = Histogram("otrules_event_to_recommendation_seconds",
                                 "From the event's Kafka timestamp to its recommendation's commit",
                                 buckets=(*_FAST, 30, 60, 300), registry=r)
        self.lag = Gauge("otrules_consumer_lag", "Events not yet consumed, per input partition", ["partition"],
                         registry=r)
        self.patients = Gauge("otrules_state_patients", "Patients held, per owned partition", ["partition"],
                              registry=r)
        self.state_bytes = Gauge("otrules_state_bytes", "Serialised state held, per owned partition", ["partition"],
                                 registry=r)
        self.restore_seconds = Histogram("otrules_restore_seconds", "Time to restore partitions from the changelog",
                                         buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r)
        self.aborted = Counter("otrules_transactions_aborted", "Transactions aborted (and retried)", registry=r)
        self.sweeps = Counter("otrules_sweeps", "Sweeps of owned open plans", registry=r)
        self.reloads = Counter("otrules_rule_reloads", "Rules reloads by outcome", ["outcome"], registry=r)
        self.ruleset = Info("otrules_ruleset", "The live ruleset(s)", registry=r)

    def set_rulesets(self, rulesets: list) -> None:
        self.ruleset.info({
            "rulesets": ",".join(rs.name for rs in rulesets),
            "versions": ",".join(rs.version for rs in rulesets),
            "digests": ",".join(rs.digest for rs in rulesets),
        })
