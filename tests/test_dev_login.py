"""The password-less dev login exists only in local mode: a loopback bind without OIDC, or an
explicit DISPATCH_DEV_LOGIN=true that warns at start."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import replace

import pytest

from dispatch_engine.config import Settings, SettingsError, load_settings

from .support.app_client import Start
from .support.web_session import csrf_of, dev_login
from .test_containers import ROOT, _compose

CONTAINERFILE = (ROOT / "Containerfile").read_text()


async def test_no_dev_login_when_bound_to_every_interface(
    make_client: Start, settings: Settings
) -> None:
    client = await make_client(replace(settings, host="0.0.0.0"), roles=frozenset({"api"}))
    page = await client.get("/login")
    html = await page.text()
    assert page.status == 200 and "dev user" not in html and "/auth/dev/start" not in html
    response = await client.post(
        "/auth/dev/start", data={"csrf_token": csrf_of(html)}, allow_redirects=False
    )
    assert response.status == 404
    assert (await client.get("/api/me", allow_redirects=False)).status in (401, 303)


async def test_the_opt_in_offers_it_anywhere_with_a_warning(
    make_client: Start, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    opted = replace(settings, host="0.0.0.0", dev_login=True)
    with caplog.at_level(logging.WARNING):
        client = await make_client(opted, roles=frozenset({"api"}))
        await dev_login(client)
    me = await (await client.get("/api/me")).json()
    assert me["email"] == "dev@example.com"
    assert any("DISPATCH_DEV_LOGIN is on" in r.getMessage() for r in caplog.records)


async def test_the_dev_login_can_be_turned_off_on_loopback(
    make_client: Start, settings: Settings
) -> None:
    client = await make_client(replace(settings, dev_login=False), roles=frozenset({"api"}))
    html = await (await client.get("/login")).text()
    assert "dev user" not in html
    response = await client.post("/auth/dev/start", data={"csrf_token": csrf_of(html)})
    assert response.status == 404


@pytest.mark.parametrize(
    ("env", "offered"),
    [
        ({}, True),
        ({"DISPATCH_HOST": "localhost"}, True),
        ({"DISPATCH_HOST": "::1"}, True),
        ({"DISPATCH_HOST": "0.0.0.0"}, False),
        ({"DISPATCH_HOST": "::"}, False),
        ({"DISPATCH_HOST": "192.168.1.20"}, False),
        ({"DISPATCH_HOST": "0.0.0.0", "DISPATCH_DEV_LOGIN": "true"}, True),
        ({"DISPATCH_DEV_LOGIN": "false"}, False),
        ({"GOOGLE_CLIENT_ID": "a", "GOOGLE_CLIENT_SECRET": "b"}, False),
    ],
)
def test_where_the_dev_login_exists(env: dict[str, str], offered: bool) -> None:
    assert load_settings(env).dev_login_enabled is offered


def test_the_opt_in_is_checked() -> None:
    with pytest.raises(SettingsError, match="DISPATCH_DEV_LOGIN"):
        load_settings({"DISPATCH_DEV_LOGIN": "please"})
    with pytest.raises(SettingsError, match="DISPATCH_DEV_LOGIN"):
        load_settings(
            {"DISPATCH_DEV_LOGIN": "1", "GOOGLE_CLIENT_ID": "a", "GOOGLE_CLIENT_SECRET": "b"}
        )


def _compose_environment(service: str) -> dict[str, str]:
    """`docker compose config`'s environment of `service` (its YAML, read line by line)."""
    result = subprocess.run(
        [*_compose(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        env={**os.environ, "DISPATCH_SECRET_KEY": "compose-check-secret-0123456789"},
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, str] = {}
    path: list[str] = []
    for line in result.stdout.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        key, _, value = line.strip().partition(":")
        path = [*path[:depth], key]
        if path[:3] == ["services", service, "environment"] and depth == 3:
            found[key] = value.strip().strip("'\"")
    return found


def test_the_compose_file_publishes_no_password_less_login() -> None:
    image = dict(re.findall(r"(\w+)=(\S+)", re.findall(r"^ENV (.+)$", CONTAINERFILE, re.M)[0]))
    environment = _compose_environment("api")
    assert environment, "the api service has no environment"
    settings = load_settings({**image, **environment})
    assert settings.host == "0.0.0.0"  # published through the load balancer on port 8080
    assert not settings.dev_login_enabled and not settings.private_targets_allowed
