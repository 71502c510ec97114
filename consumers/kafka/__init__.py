"""The Kafka service: `otrules consume`.

Separate pieces, as in Kafka Streams and quix-streams: `settings` (every
option, its default and help, once), `connect` (waiting for a cluster at
start-up), `topics` (creating them, reading their record limits),
`changelog` (restoring and sizing patient state), `stores` (per-partition
state), `transaction` (what one transaction sends, the size-limited sink and
the rollback), `cloudevents` (output headers) and `service` (the loop that
drives the one event core inside those transactions).
"""
