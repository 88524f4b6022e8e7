"""No Docker engine runs here, so the compose file and the Dockerfile are checked against the code instead."""

import hashlib
import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from escrow.cli import build_parser
from escrow.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def dockerfile_instructions(name: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in dockerfile_instructions("ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", instruction)))
    return env


class TestCompose:
    def test_database_is_postgres_17_with_healthcheck_and_volume(self) -> None:
        db = COMPOSE["services"]["db"]
        assert db["image"].split(":")[1].startswith("17")
        assert "pg_isready" in " ".join(db["healthcheck"]["test"])
        volume = db["volumes"][0].split(":")[0]
        assert volume in COMPOSE["volumes"]

    def test_service_waits_for_healthy_database(self) -> None:
        escrow = COMPOSE["services"]["escrow"]
        assert escrow["depends_on"]["db"]["condition"] == "service_healthy"
        assert escrow["build"] == "."

    def test_environment_is_valid_settings(self) -> None:
        environment = COMPOSE["services"]["escrow"]["environment"]
        fields = {f"ESCROW_{name.upper()}" for name in Settings.model_fields}
        assert set(environment) <= fields, set(environment) - fields
        settings = Settings(**{k.removeprefix("ESCROW_").lower(): v for k, v in environment.items()})
        assert settings.host == "0.0.0.0"

    def test_database_url_points_at_the_db_service(self) -> None:
        db_env = COMPOSE["services"]["db"]["environment"]
        url = urlsplit(COMPOSE["services"]["escrow"]["environment"]["ESCROW_DATABASE_URL"])
        assert url.hostname == "db" and (url.port or 5432) == 5432
        assert (url.username, url.password) == (db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"])
        assert url.path.lstrip("/") == db_env["POSTGRES_DB"]

    def test_secret_key_survives_restarts(self) -> None:
        escrow = COMPOSE["services"]["escrow"]
        key_dir = str(Path(escrow["environment"]["ESCROW_SECRET_KEY_FILE"]).parent)
        mounted = {volume.split(":")[1]: volume.split(":")[0] for volume in escrow["volumes"]}
        assert mounted[key_dir] in COMPOSE["volumes"]
        assert dockerfile_env()["ESCROW_SECRET_KEY_FILE"] == escrow["environment"]["ESCROW_SECRET_KEY_FILE"]
        assert f"chown escrow {key_dir}" in DOCKERFILE

    def test_ports_agree(self) -> None:
        escrow = COMPOSE["services"]["escrow"]
        port = int(escrow["environment"]["ESCROW_PORT"])
        assert escrow["ports"] == [f"{port}:{port}"]
        assert dockerfile_instructions("EXPOSE") == [str(port)]
        assert int(dockerfile_env()["ESCROW_PORT"]) == port
        assert f":{port}/readyz" in DOCKERFILE


class TestDockerfile:
    def test_command_is_a_real_cli_command(self) -> None:
        command = json.loads(dockerfile_instructions("CMD")[0])
        assert command == COMPOSE["services"]["escrow"]["command"]
        assert command[0] == "escrow"
        args = build_parser().parse_args(command[1:])
        assert args.command == "serve"

    def test_image_carries_package_and_migrations(self) -> None:
        copied = {instruction.split()[0] for instruction in dockerfile_instructions("COPY")}
        assert {"escrow", "migrations", "pyproject.toml"} <= copied
        assert dockerfile_instructions("FROM")[0].startswith("python:3.11")

    def test_runs_as_unprivileged_user(self) -> None:
        assert dockerfile_instructions("USER") == ["escrow"]

    def test_env_names_are_settings(self) -> None:
        fields = {f"ESCROW_{name.upper()}" for name in Settings.model_fields}
        escrow_env = {k for k in dockerfile_env() if k.startswith("ESCROW_")}
        assert escrow_env <= fields

    def test_installs_the_tested_versions(self) -> None:
        copied = [source for instruction in dockerfile_instructions("COPY") for source in instruction.split()[:-1]]
        assert "constraints.txt" in copied
        installs = [run for run in dockerfile_instructions("RUN") if "pip install" in run]
        assert installs and all("pip install -c constraints.txt " in run for run in installs)


def constraints() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = Version(version)
    return pins


class TestConstraints:
    """constraints.txt pins every dependency pyproject.toml declares, at a version pyproject.toml allows."""

    PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    @pytest.mark.parametrize("extra", [None, "test"])
    def test_every_declared_dependency_is_pinned_within_its_range(self, extra: str | None) -> None:
        declared = self.PROJECT["optional-dependencies"][extra] if extra else self.PROJECT["dependencies"]
        pins = constraints()
        for requirement in map(Requirement, declared):
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
            assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"

    def test_the_project_itself_is_not_pinned(self) -> None:
        assert canonicalize_name(self.PROJECT["name"]) not in constraints()


class TestLicense:
    def test_license_file_is_the_apache_license_pyproject_declares(self) -> None:
        text = (ROOT / "LICENSE").read_text()
        assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
        assert hashlib.md5(text.encode()).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"  # apache.org's text
