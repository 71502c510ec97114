"""docker-compose.yml and the Dockerfile: no Docker engine here, so nothing is built or run.

What can be checked without one is: the files parse; the broker is the Kafka
version the tests run; the image installs this project and starts a real
`otrules` command; the service's options and OTRULES_* variables are ones that
command has, with values it accepts (parsed by click itself); the healthcheck,
port and topics agree with those options; and a wheel of the project holds
every subpackage (an editable install hides a missing one, an image does not).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import click
import pytest
from ruamel.yaml import YAML

from otrules.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
POM = ROOT / "scripts" / "kafka" / "pom.xml"
PYPROJECT = ROOT / "pyproject.toml"


@pytest.fixture(scope="module")
def services() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())["services"]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def pinned_kafka_version() -> str:
    """The version pinned for the tests (not $OTRULES_KAFKA_VERSION, which only overrides a run)."""
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", {"m": "http://maven.apache.org/POM/4.0.0"})
    assert node is not None and node.text
    return node.text.strip()


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), " ".join(args.split())))
    return stages


def exec_form(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    values = [args for ins, args in stage if ins == instruction]
    assert values, f"no {instruction} in the final stage"
    return json.loads(values[-1])  # the last one wins; exec form (a JSON list)


def consume_context(service: dict, monkeypatch: pytest.MonkeyPatch) -> tuple[click.Command, click.Context]:
    """Parse the service's command and environment exactly as `otrules` in the container would."""
    command = service["command"]
    assert isinstance(command, list) and command, "command: an exec-form list, e.g. [consume, --flag, value]"
    name, *args = command
    assert name in main.commands, f"`otrules {name}` is not a command ({', '.join(sorted(main.commands))})"
    cmd = main.commands[name]
    for key in [k for k in os.environ if k.startswith("OTRULES_")]:
        monkeypatch.delenv(key)
    for key, value in service.get("environment", {}).items():
        monkeypatch.setenv(key, str(value))
    ctx = cmd.make_context(name, list(args), parent=click.Context(main, info_name="otrules"))
    return cmd, ctx


def test_compose_file_parses_and_runs_otrules_consume_against_the_broker(services: dict):
    assert set(services) == {"kafka", "topics", "otrules"}
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "cleanup.policy=compact" in services["topics"]["command"][0]
    assert services["otrules"]["command"][0] == "consume"
    assert services["otrules"]["environment"]["OTRULES_BOOTSTRAP_SERVERS"] == "kafka:29092"
    assert services["otrules"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_the_broker_is_the_kafka_version_the_tests_run(services: dict):
    version = pinned_kafka_version()
    assert services["kafka"]["image"] == f"apache/kafka:{version}"
    assert services["topics"]["image"] == f"apache/kafka:{version}"


def test_the_service_command_and_variables_are_real_options_with_valid_values(services: dict,
                                                                              monkeypatch: pytest.MonkeyPatch):
    service = services["otrules"]
    cmd, ctx = consume_context(service, monkeypatch)
    # click ignores a variable no option reads: a misspelt one would silently do nothing
    known = {v for p in cmd.params if isinstance(p, click.Option) and p.envvar
             for v in ([p.envvar] if isinstance(p.envvar, str) else p.envvar)}
    unknown = sorted(k for k in service["environment"] if k.startswith("OTRULES_") and k not in known)
    assert not unknown, f"`otrules {service['command'][0]}` reads no {unknown}"
    assert ctx.params["bootstrap_servers"] == "kafka:29092"
    assert ctx.params["http_host"] == "0.0.0.0", "inside a container the endpoints must listen on all interfaces"
    assert ctx.params["instance_id"], "a stable --instance-id lets a restarted container fence its predecessor"

    port = ctx.params["http_port"]
    assert f"{port}:{port}" in service["ports"]
    probe = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in probe

    topics = services["topics"]["command"][0]
    for option in ("input_topic", "output_topic", "dlq_topic", "changelog_topic"):
        assert ctx.params[option] in topics, f"topics does not create --{option.replace('_', '-')}"
    assert f"--partitions {ctx.params['partitions']}" in topics


def test_the_dockerfile_installs_this_project_and_runs_otrules(services: dict, pyproject: dict):
    assert services["otrules"]["build"] == "."
    stages = dockerfile_stages()
    for stage in stages:
        assert stage[0][1].split()[0] == "python:3.12-slim"
    supported = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", pyproject["project"]["requires-python"].split("#")[0].strip()
                             .replace(" ", ""))
    assert supported, pyproject["project"]["requires-python"]
    low, high = supported.groups()
    assert int(low) <= 12 < int(high), "the image's Python must be one the project supports"

    build, final = stages[0], stages[-1]
    runs = [args for ins, args in build if ins == "RUN"]
    assert any("build-essential" in r for r in runs), "durable_rules' C extension needs a compiler"
    assert ("COPY", ". .") in build
    assert any(re.search(r"\bpip (wheel|install)\b.* \.$", r) for r in runs), "the copied project is not installed"
    name = pyproject["project"]["name"]
    assert any(re.search(rf"\bpip install\b.*\b{name}\b", args) for ins, args in final if ins == "RUN")

    user = [args for ins, args in final if ins == "USER"]
    assert user and user[-1] not in ("root", "0"), "the service must not run as root"
    assert exec_form(final, "ENTRYPOINT") == [name] and name in pyproject["project"]["scripts"]
    assert exec_form(final, "CMD") == ["consume"]
    assert ("EXPOSE", "9464") in final
    assert main.commands["consume"].params  # the default command exists (its options are checked above)


def test_dockerignore_keeps_local_state_out_and_the_sources_in():
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", ".git"} <= patterns
    needed = {"pyproject.toml", "README.md", "LICENSE", "otrules", "engine", "schemas", "consumers", "rules"}
    assert not needed & patterns


def test_the_wheel_holds_every_subpackage(pyproject: dict):
    """Each folder with Python files under a package-dir entry is listed in `packages`."""
    setuptools = pyproject["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    expected = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(ROOT / folder)
            expected.add(".".join((package, *rel.parts)))
    assert not expected - listed, f"not in [tool.setuptools] packages: {sorted(expected - listed)}"
