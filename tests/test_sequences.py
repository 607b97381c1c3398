"""Sequences: follow-ups after a wait, threaded to the first email, stopped per recipient.

Days are pacing days of DISPATCH_DAY_SECONDS (a few seconds here, as in test_warmup.py), so
a three-step sequence runs in seconds; nothing sleeps, every wait polls a condition.
"""

from __future__ import annotations

from dataclasses import replace
from email import message_from_bytes
from email.message import Message
from itertools import pairwise
from typing import Any

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for

DAY_S = 2


def sequence_payload(recipients: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "subject": "Hello {{ name }}",
        "body": "Step one for {{ name }}",
        "recipients": [{"email": e, "vars": {"name": e.split("@")[0]}} for e in recipients],
        "steps": [
            {"after_days": 1, "subject": None, "body": "Step two for {{ name }}"},
            {"after_days": 1, "subject": "Last note, {{ name }}", "body": "Step three"},
        ],
        **extra,
    }


async def schedule(client: AppClient, token: str, payload: dict[str, Any]) -> int:
    response = await client.post("/api/emails/schedule", json=payload, headers=auth(token))
    assert response.status == 201, await response.text()
    return int((await response.json())["campaign"]["id"])


async def received(store: Store, recipient: str) -> list[Message]:
    rows = await store.pool.fetch(
        "SELECT raw FROM captured_messages WHERE $1 = ANY(recipients) ORDER BY id", recipient
    )
    return [message_from_bytes(bytes(r["raw"])) for r in rows]


async def states(store: Store, campaign_id: int) -> dict[str, tuple[str, str | None]]:
    rows = await store.pool.fetch(
        "SELECT recipient, state, stop_reason FROM sequence_members WHERE campaign_id = $1",
        campaign_id,
    )
    return {r["recipient"]: (r["state"], r["stop_reason"]) for r in rows}


async def until_states(store: Store, campaign_id: int, want: dict[str, str]) -> None:
    async def reached() -> bool:
        now = await states(store, campaign_id)
        return all(now.get(r, ("", None))[0] == s for r, s in want.items())

    await wait_for(reached, within=60)


async def test_a_three_step_sequence_arrives_threaded_each_step_after_its_wait(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client(replace(settings, day_seconds=DAY_S))
    token = await new_token(store)
    people = [f"r{i}@example.com" for i in range(4)]
    campaign_id = await schedule(client, token, sequence_payload(people))
    early: list[int] = []

    async def finished() -> bool:
        # A follow-up's dispatch exists only once due: never one queued for later.
        early.append(
            await store.pool.fetchval(
                """SELECT count(*) FROM dispatches WHERE step > 0 AND scheduled_at > now()
                   AND status IN ('scheduled', 'rate_limited')"""
            )
        )
        now = await states(store, campaign_id)
        return all(now.get(p, ("", None))[0] == "finished" for p in people)

    await wait_for(finished, within=60)
    assert not any(early)

    for person in people:
        first, second, third = await received(store, person)  # exactly three each
        name = person.split("@")[0]
        assert first["Subject"] == f"Hello {name}" and first["In-Reply-To"] is None
        assert second["Subject"] == f"Re: Hello {name}"
        assert third["Subject"] == f"Last note, {name}"
        for follow_up in (second, third):
            assert follow_up["In-Reply-To"] == first["Message-ID"]
            assert follow_up["References"] == first["Message-ID"]
            assert follow_up["Message-ID"] != first["Message-ID"]
        assert "Step two for " + name in second.get_payload()
    rows = await store.pool.fetch(
        """SELECT d.recipient, d.step, d.sent_at, d.sender_id FROM dispatches d
           WHERE d.campaign_id = $1 ORDER BY d.recipient, d.step""",
        campaign_id,
    )
    by_person: dict[str, list[Any]] = {}
    for r in rows:
        by_person.setdefault(r["recipient"], []).append(r)
    for steps in by_person.values():
        assert [r["step"] for r in steps] == [0, 1, 2]
        assert len({r["sender_id"] for r in steps}) == 1  # the same sender throughout
        for earlier, later in pairwise(steps):  # each after a day's wait
            assert (later["sent_at"] - earlier["sent_at"]).total_seconds() >= DAY_S

    async def completed() -> bool:
        body = await (await client.get(f"/api/campaigns/{campaign_id}", headers=auth(token))).json()
        return bool(body["status"] == "completed")

    await wait_for(completed)
    detail = await (await client.get(f"/api/campaigns/{campaign_id}", headers=auth(token))).json()
    sequence = detail["sequence"]
    assert [s["step"] for s in sequence["steps"]] == [1, 2]
    assert sequence["members"]["finished"] == 4 and sequence["members"]["waiting"] == 0
    assert detail["progress"] == 1.0 and detail["counts"]["sent"] == 12  # 3 emails each
