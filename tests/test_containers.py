"""The container files: docker-compose.yml validates, the image runs as non-root with a
health check. Running them needs a Docker engine, which this machine does not have."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if shutil.which("docker") and probe.returncode == 0:
        return ["docker", "compose"]
    if os.environ.get("CI"):
        pytest.fail("docker-compose is missing in CI: `make system-deps` installs it")
    pytest.skip("no docker compose client here (make system-deps installs it as root)")


def test_compose_file_is_valid_and_has_every_role() -> None:
    result = subprocess.run(
        [*_compose(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        env={**os.environ, "DISPATCH_SECRET_KEY": "compose-check-secret-0123456789"},
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    services: dict[str, list[str]] = {}
    section = ""
    for line in result.stdout.splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
        elif section == "services" and re.match(r"^  \w[\w-]*:$", line):
            services[line.strip().rstrip(":")] = []
        elif section == "services" and services:
            services[list(services)[-1]].append(line.strip())
    assert {"postgres", "redis", "migrate", "api", "worker", "sweeper", "lb", "mailpit"} <= set(
        services
    )
    assert "- noeviction" in services["redis"] and "- --appendonly" in services["redis"]
    replicas = {
        name: [x for x in body if x.startswith("replicas:")] for name, body in services.items()
    }
    assert replicas["api"] == ["replicas: 2"] and replicas["worker"] == ["replicas: 2"]
    assert "- --no-migrate" in services["worker"], "workers wait for the migrate service"


def test_image_runs_as_a_non_root_user_with_a_health_check() -> None:
    containerfile = (ROOT / "Containerfile").read_text()
    user = re.findall(r"^USER (\S+)", containerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n.*healthz", containerfile, re.M)
    assert re.search(r"^FROM python:3\.\d+-slim$", containerfile, re.M)


def _pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a `uv pip compile --generate-hashes` file."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            name = canonicalize_name(match.group(1))
            pins[name] = (match.group(2), 0)
        elif "--hash=sha256:" in line and name:
            pins[name] = (pins[name][0], pins[name][1] + 1)
    return pins


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("requirements.lock", ["uvloop"]), ("requirements-dev.lock", ["embedded", "uvloop", "dev"])],
)
def test_the_locks_hash_every_pin_and_satisfy_pyproject(lock: str, extras: list[str]) -> None:
    """A dependency added to pyproject.toml without `make lock` fails here, not in an image."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    pins = _pins(ROOT / lock)
    assert all(count > 0 for _version, count in pins.values()), "every pin carries its hashes"
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"python_version": "3.11"}):
            continue
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned, f"{requirement.name} is not in {lock}: run `make lock`"
        assert requirement.specifier.contains(pinned[0], prereleases=True), (
            f"{lock} pins {requirement.name}=={pinned[0]}, outside {requirement.specifier}: "
            "run `make lock`"
        )
    containerfile = (ROOT / "Containerfile").read_text()
    assert "--require-hashes -r /tmp/requirements.lock" in containerfile
