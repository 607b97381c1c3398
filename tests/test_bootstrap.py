"""dispatch_engine.bootstrap: which servers a command gets, and the dev user's token."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.bootstrap import dev_token, private_servers_for, servers_for
from dispatch_engine.config import Settings, SettingsError
from dispatch_engine.store import Store
from dispatch_engine.testing import appliance

ONE_URL_ALONE = [
    ({"database_url": "postgresql://127.0.0.1:1/x"}, "REDIS_URL must be set too"),
    ({"redis_url": "redis://127.0.0.1:1/0"}, "DATABASE_URL must be set too"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("urls", "message"), ONE_URL_ALONE)
def test_one_url_alone_is_refused_before_anything_starts(
    tmp_path: Path, urls: dict[str, Any], message: str
) -> None:
    with (
        pytest.raises(SettingsError, match=message),
        servers_for(Settings(data_dir=tmp_path, **urls)),
    ):
        pass  # pragma: no cover
    assert list(tmp_path.iterdir()) == []  # no private server was made


@pytest.mark.unit
@pytest.mark.parametrize(("urls", "message"), ONE_URL_ALONE)
async def test_the_test_appliance_refuses_one_url_alone_too(
    urls: dict[str, str], message: str
) -> None:
    """It used to start private servers for both and ignore the URL it was given."""
    with pytest.raises(SettingsError, match=message):
        async with appliance(**urls):
            pass  # pragma: no cover


@pytest.mark.unit
def test_without_urls_or_a_running_up_a_long_lived_role_is_refused(tmp_path: Path) -> None:
    refused = pytest.raises(SettingsError, match=f"no `dispatch-engine up` runs on .*{tmp_path}")
    with refused, servers_for(Settings(data_dir=tmp_path), may_start=False):
        pass  # pragma: no cover


async def test_configured_urls_are_used_as_they_are(settings: Settings) -> None:
    with servers_for(settings, may_start=False) as resolved:
        assert resolved is settings
    async with private_servers_for(settings, settings.data_dir / "unused") as resolved:
        assert resolved is settings
    assert not (settings.data_dir / "unused").exists()


async def test_dev_token_is_kept_while_valid_and_replaced_once_revoked(
    settings: Settings, store: Store
) -> None:
    first = await dev_token(settings)
    assert (settings.data_dir / "dev_token").read_text() == first
    assert (settings.data_dir / "dev_token").stat().st_mode & 0o777 == 0o600
    assert await dev_token(settings) == first  # a restart of `up` prints the same token
    found = await store.token_user(first)
    assert found is not None and found[0].email == DEV_EMAIL
    await store.revoke_token(found[1], None)
    second = await dev_token(settings)
    assert second != first
    assert (settings.data_dir / "dev_token").read_text() == second
    assert await store.user_for_token(second) is not None


async def test_dev_users_sender_follows_the_transport_and_limit_of_this_start(
    settings: Settings, store: Store
) -> None:
    await dev_token(replace(settings, transport="capture", max_emails_per_hour=50))
    await dev_token(replace(settings, transport="smtp", max_emails_per_hour=70))
    user = await store.ensure_user(DEV_EMAIL)
    [sender] = await store.senders_of(user.id)
    assert (sender.transport, sender.hourly_limit) == ("smtp", 70)
