"""docker-compose.yml: no Docker engine here, so check that it parses and wires the right things."""

from pathlib import Path

from ruamel.yaml import YAML

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def test_compose_file_parses_and_runs_otrules_consume_against_the_broker():
    data = YAML(typ="safe").load(COMPOSE.read_text())
    services = data["services"]
    assert set(services) == {"kafka", "topics", "otrules"}
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "cleanup.policy=compact" in services["topics"]["command"][0]
    assert "otrules consume" in services["otrules"]["command"][-1]
    assert services["otrules"]["environment"]["OTRULES_BOOTSTRAP_SERVERS"] == "kafka:29092"
