"""otrules serve: the CDS Hooks service and dashboard."""
