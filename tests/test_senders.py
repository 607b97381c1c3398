"""Senders: their own accounts and limits, passwords that never leak, a check that says why."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import replace
from email import message_from_bytes
from typing import Any

import orjson
import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, just_after_next_window, new_token, wait_for
from .support.processes import run_cli, run_cli_input
from .support.smtp_sink import SmtpSink, free_port

PASSWORD = "hunter2-correct-horse-battery"


def smtp_sender(address: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "from_address": address,
        "transport": "smtp",
        "settings": {"host": "127.0.0.1", "port": port, "tls": "none", **extra},
    }


async def _json(response: Any) -> Any:
    return await response.json()


async def test_two_senders_two_accounts_each_at_its_own_pace(
    make_client: Start, settings: Settings, store: Store
) -> None:
    with SmtpSink() as sales_sink, SmtpSink() as support_sink:
        client = await make_client(replace(settings, rate_window_seconds=2))
        headers = auth(await new_token(store))
        sales = await _json(
            await client.post(
                "/api/senders",
                json=smtp_sender(
                    "sales@example.com",
                    sales_sink.port,
                )
                | {"hourly_limit": 5},
                headers=headers,
            )
        )
        support = await _json(
            await client.post(
                "/api/senders",
                json=smtp_sender("support@example.com", support_sink.port),
                headers=headers,
            )
        )
        assert (
            sales["hourly_limit"] == 5 and support["hourly_limit"] == settings.max_emails_per_hour
        )
        start = just_after_next_window(2)
        for sender, n in ((sales, 20), (support, 30)):
            payload = {
                "subject": "s",
                "body": "b",
                "sender": sender["id"],
                "recipients": [f"{sender['id']}-{i}@example.com" for i in range(n)],
                "start_at": start,
            }
            response = await client.post("/api/emails/schedule", json=payload, headers=headers)
            assert response.status == 201, await response.text()

        async def support_done() -> bool:
            return len(support_sink.sink.message_ids()) == 30

        await wait_for(support_done)
        # The busy, limited sales sender did not slow support down: 5 per window at most.
        assert len(sales_sink.sink.message_ids()) <= 10

        async def sales_done() -> bool:
            return len(sales_sink.sink.message_ids()) == 20

        await wait_for(sales_done, within=60)
        for sink, address in ((sales_sink, "sales"), (support_sink, "support")):
            senders = {message_from_bytes(m)["From"] for m in sink.sink.messages}
            assert senders == {f"{address}@example.com"}, senders
        query = (
            "SELECT sent_at FROM dispatches d JOIN senders s ON s.id = d.sender_id "
            "WHERE s.from_address = 'sales@example.com'"
        )

        async def sales_recorded() -> bool:  # delivery comes first, its record just after
            return all(r["sent_at"] is not None for r in await store.pool.fetch(query))

        await wait_for(sales_recorded)
        rows = await store.pool.fetch(query)
        per_window = Counter(int(r["sent_at"].timestamp() * 1000) // 2000 for r in rows)
        assert max(per_window.values()) <= 5


async def test_a_password_never_leaves_and_is_not_stored_plain(
    make_client: Start, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    port = free_port()  # nothing listens: the check must fail, and say so without the password
    created = await client.post(
        "/api/senders",
        json=smtp_sender("ops@example.com", port, username="ops", password=PASSWORD),
        headers=headers,
    )
    bodies = [await created.text()]
    sender = await created.json()
    assert sender["settings"]["password_set"] is True
    for method, path, body in (
        ("GET", "/api/senders", None),
        ("GET", f"/api/senders/{sender['id']}", None),
        ("PATCH", f"/api/senders/{sender['id']}", {"display_name": "Ops"}),
        ("POST", f"/api/senders/{sender['id']}/test", {}),
        ("PATCH", f"/api/senders/{sender['id']}", {"settings": {"password": 7}}),
    ):
        response = await client.request(method, path, json=body, headers=headers)
        bodies.append(await response.text())
    assert all(PASSWORD not in b for b in bodies)
    assert '"error":"refused"' in bodies[4] and "127.0.0.1" in bodies[4]
    stored = await store.pool.fetchval(
        "SELECT transport_settings->>'password' FROM senders WHERE id = $1", sender["id"]
    )
    assert stored.startswith("sealed:v1:") and PASSWORD not in stored
    assert PASSWORD not in caplog.text


class Authenticator:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.user,
            self.password,
        )
        return AuthResult(success=ok, handled=False)


async def test_check_reports_the_servers_reply_and_sends_on_request(
    make_client: Start, settings: Settings, store: Store
) -> None:
    with SmtpSink(authenticator=Authenticator("ops", PASSWORD)) as sink:
        client = await make_client(replace(settings, retry_base_ms=50))
        headers = auth(await new_token(store, "owner@example.com"))
        good = await _json(
            await client.post(
                "/api/senders",
                json=smtp_sender("ops@example.com", sink.port, username="ops", password=PASSWORD),
                headers=headers,
            )
        )
        bad = await _json(
            await client.post(
                "/api/senders",
                json=smtp_sender("bad@example.com", sink.port, username="ops", password="wrong"),
                headers=headers,
            )
        )
        result = await _json(await client.post(f"/api/senders/{good['id']}/test", headers=headers))
        assert result["ok"] is True and "logged in as ops" in result["message"]
        assert sink.sink.messages == [], "a check sends nothing unless asked"
        result = await _json(await client.post(f"/api/senders/{bad['id']}/test", headers=headers))
        assert result["ok"] is False and result["error"] == "auth_failed", result
        result = await _json(
            await client.post(
                f"/api/senders/{good['id']}/test", json={"send_test_message": True}, headers=headers
            )
        )
        assert result["ok"] is True and result["test_message"]["to"] == "owner@example.com"
        assert len(sink.sink.messages) == 1

        # Emails of the sender with the wrong password wait: the sender is parked with the
        # server's reply (tests/test_smtp_peer.py counts the logins against smtp-server).
        payload = {
            "subject": "s",
            "body": "b",
            "sender": bad["id"],
            "recipients": ["x@example.com"],
        }
        campaign = (
            await _json(await client.post("/api/emails/schedule", json=payload, headers=headers))
        )["campaign"]["id"]

        async def parked() -> bool:
            listed = await _json(await client.get(f"/api/senders/{bad['id']}", headers=headers))
            status = await store.pool.fetchval("SELECT status FROM dispatches")
            return listed["parked"] is not None and status == "scheduled"  # recorded

        await wait_for(parked)
        row = await store.pool.fetchrow("SELECT status, last_error, attempts FROM dispatches")
        assert row is not None
        assert row["status"] == "scheduled" and "535" in row["last_error"]
        assert row["attempts"] == 0, "a refused login is not an attempt of the email"

        # Fixing the password unparks the sender: the waiting email goes.
        await client.patch(
            f"/api/senders/{bad['id']}", json={"settings": {"password": PASSWORD}}, headers=headers
        )

        async def sent() -> bool:
            detail = await _json(await client.get(f"/api/campaigns/{campaign}", headers=headers))
            return bool(detail["counts"]["sent"] == 1)

        await wait_for(sent)


async def test_deleting_a_sender_with_queued_emails_is_refused_or_cancels(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    extra = await _json(
        await client.post(
            "/api/senders",
            json={"from_address": "news@example.com", "transport": "capture"},
            headers=headers,
        )
    )
    payload = {
        "subject": "s",
        "body": "b",
        "sender": "news@example.com",
        "start_at": "2099-01-01T00:00:00Z",
        "recipients": ["a@example.com", "b@example.com"],
    }
    assert (await client.post("/api/emails/schedule", json=payload, headers=headers)).status == 201
    refused = await client.delete(f"/api/senders/{extra['id']}", headers=headers)
    body = await refused.json()
    assert refused.status == 409 and body["error"]["code"] == "sender_has_queued_emails"
    assert body["error"]["details"] == {"queued": 2}
    done = await _json(
        await client.delete(f"/api/senders/{extra['id']}?cancel_queued=true", headers=headers)
    )
    assert done == {"deleted": True, "cancelled": 2}
    listed = await _json(await client.get("/api/senders", headers=headers))
    assert [s["from_address"] for s in listed["items"]] == ["ada@example.com"]
    last = await client.delete(f"/api/senders/{listed['items'][0]['id']}", headers=headers)
    assert last.status == 409 and (await last.json())["error"]["code"] == "last_sender"
    bad = await client.post(
        "/api/senders", json={"from_address": "nope", "transport": "smtp"}, headers=headers
    )
    assert (await bad.json())["error"]["field"] == "from_address"
    bad = await client.post(
        "/api/senders",
        json=smtp_sender("x@example.com", 25) | {"settings": {"host": "h", "tls": "maybe"}},
        headers=headers,
    )
    assert (await bad.json())["error"]["field"] == "settings.tls"
    bad = await client.post(
        "/api/senders", json=smtp_sender("x@example.com", 25, pipelining="no"), headers=headers
    )
    assert (await bad.json())["error"]["field"] == "settings.pipelining"
    plain = await _json(
        await client.post(
            "/api/senders", json=smtp_sender("x@example.com", 25, pipelining=False), headers=headers
        )
    )
    assert plain["settings"]["pipelining"] is False


async def test_cli_adds_lists_tests_and_reseals_after_a_key_rotation(
    env: dict[str, str], store: Store
) -> None:
    with SmtpSink(authenticator=Authenticator("ops", PASSWORD)) as sink:
        added = await asyncio.to_thread(
            run_cli_input,
            [
                "sender",
                "add",
                "--email",
                "cli@example.com",
                "--from",
                "ops@example.com",
                "--host",
                "127.0.0.1",
                "--port",
                str(sink.port),
                "--username",
                "ops",
                "--tls",
                "none",
                "--password-stdin",
            ],
            env,
            PASSWORD + "\n",
        )
        assert added.returncode == 0, added.stderr
        sender_id = orjson.loads(added.stdout)["id"]
        listed = await asyncio.to_thread(
            run_cli, ["sender", "list", "--email", "cli@example.com"], env
        )
        assert "ops@example.com" in listed.stdout and PASSWORD not in listed.stdout
        checked = await asyncio.to_thread(
            run_cli, ["sender", "test", "--email", "cli@example.com", str(sender_id)], env
        )
        assert checked.returncode == 0 and "logged in as ops" in checked.stdout

        rotated = env | {
            "DISPATCH_SECRET_KEY": "a-brand-new-secret-key-987654",
            "DISPATCH_OLD_SECRET_KEYS": env["DISPATCH_SECRET_KEY"],
        }
        before = await store.pool.fetchval(
            "SELECT transport_settings->>'password' FROM senders WHERE id = $1", sender_id
        )
        resealed = await asyncio.to_thread(run_cli, ["sender", "reseal"], rotated)
        assert resealed.returncode == 0 and "Resealed 1" in resealed.stdout
        after = await store.pool.fetchval(
            "SELECT transport_settings->>'password' FROM senders WHERE id = $1", sender_id
        )
        assert after != before and PASSWORD not in after
        new_key_only = rotated | {"DISPATCH_OLD_SECRET_KEYS": ""}
        checked = await asyncio.to_thread(
            run_cli, ["sender", "test", "--email", "cli@example.com", str(sender_id)], new_key_only
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        old_key_only = env
        checked = await asyncio.to_thread(
            run_cli, ["sender", "test", "--email", "cli@example.com", str(sender_id)], old_key_only
        )
        assert checked.returncode == 1 and "cannot be decrypted" in checked.stdout
