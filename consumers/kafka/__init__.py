"""The Kafka service: `otrules consume`.

Separate pieces, as in Kafka Streams and quix-streams: `settings` (every
option, its default and help, once), `security` (TLS and SASL: the checks
and the kafka-python settings every client gets), `connect` (waiting for a
cluster at start-up, and telling a refusal from an outage), `topics` (creating them, reading their record limits),
`changelog` (restoring and sizing patient state), `stores` (per-partition
state), `transaction` (what one transaction sends, the size-limited sink and
the rollback), `cloudevents` (output headers) and `service` (the loop that
drives the one event core inside those transactions).
"""
