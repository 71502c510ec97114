"""The Kafka service: `otrules consume`.

Separate pieces, as in Kafka Streams and quix-streams: `settings` (what to
connect to), `topics` (creating them), `cloudevents` (output headers),
`stores` (per-partition patient state), `changelog` (restoring it) and
`service` (the exactly-once loop that ties them together).
"""
