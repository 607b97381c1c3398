"""Hostile tenants: one user's templates or slow server never stop or starve another user.

Every test runs the real app (API, worker and sweeper in one process) against real SMTP
servers (aiosmtpd) on loopback.
"""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatch_engine import campaigns
from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_sink import Sink, SmtpSink
from .support.web_session import dev_login

POISON = "{% for a in [1] %}" * 21 + "x" + "{% endfor %}" * 21  # CPython: 20 nested blocks max
LEASE_S = 20  # "on time" below means: before the batch's leases could have expired


class HeldSink(Sink):
    """An SMTP server that holds every DATA until the test releases it (a stuck peer)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.data_started += 1
        await asyncio.to_thread(self.release.wait)
        with self.lock:
            self.messages.append(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


@pytest.fixture
def bounded_memory() -> Iterator[None]:
    """At most 2 GB more address space for this process while a bomb runs (MemoryError
    instead of the kernel's OOM killer on a shared machine)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm_kb * 1024 + 2 * 1024**3, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextmanager
def held_sink() -> Iterator[SmtpSink]:
    server = SmtpSink()
    server.sink = HeldSink()
    server.controller.handler = server.sink
    with server:
        try:
            yield server
        finally:
            assert isinstance(server.sink, HeldSink)
            server.sink.release.set()


async def user_with_sender(client: AppClient, store: Store, email: str, port: int) -> Any:
    headers = auth(await new_token(store, email))
    response = await client.post(
        "/api/senders",
        json={
            "from_address": f"news@{email.split('@')[1]}",
            "transport": "smtp",
            "settings": {"host": "127.0.0.1", "port": port, "tls": "none"},
        },
        headers=headers,
    )
    assert response.status == 201, await response.text()
    return headers, (await response.json())["id"]


async def schedule(client: AppClient, headers: Any, **payload: Any) -> int:
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    return int((await response.json())["campaign"]["id"])


async def schedule_unchecked(
    client: AppClient, headers: Any, monkeypatch: pytest.MonkeyPatch, **payload: Any
) -> int:
    """A campaign the schedule-time check would now refuse: stored as an older version, or a
    gap in the check, would have let it in. The worker must contain it all the same."""

    async def no_check(request: Any) -> None:
        return None

    with monkeypatch.context() as patch:
        patch.setattr(campaigns, "check_campaign_templates", no_check, raising=False)
        return await schedule(client, headers, **payload)


async def statuses(store: Store, campaign_id: int) -> list[tuple[str, str]]:
    rows = await store.pool.fetch(
        "SELECT status, coalesce(last_error, '') AS e FROM dispatches WHERE campaign_id = $1",
        campaign_id,
    )
    return [(r["status"], r["e"]) for r in rows]


def soon(seconds: float = 4.0) -> str:
    """A shared due time, so the campaigns of both users land in the same claimed batch."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def delivered_to(sink: SmtpSink) -> int:
    with sink.sink.lock:
        return len(sink.sink.messages)


async def test_a_campaign_that_cannot_compile_fails_alone_and_the_batch_goes_on(
    make_client: Start, settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SmtpSink() as mallory_sink, SmtpSink() as bob_sink:
        client = await make_client(replace(settings, lease_seconds=LEASE_S))
        mallory, mallory_sender = await user_with_sender(
            client, store, "mallory@evil.example", mallory_sink.port
        )
        bob, bob_sender = await user_with_sender(client, store, "bob@good.example", bob_sink.port)
        at = soon()
        poison = await schedule_unchecked(
            client,
            mallory,
            monkeypatch,
            subject="s",
            body=POISON,
            recipients=[f"m{i}@example.com" for i in range(3)],
            sender=mallory_sender,
            start_at=at,
        )
        good = await schedule(
            client,
            bob,
            subject="Hi",
            body="Hello {{ email }}",
            recipients=["b1@example.com", "b2@example.com"],
            sender=bob_sender,
            start_at=at,
        )

        async def bob_delivered() -> bool:
            return delivered_to(bob_sink) == 2

        # Before the batch's leases could expire: the old worker dropped the whole batch.
        await wait_for(bob_delivered, within=LEASE_S)

        async def poison_settled() -> bool:
            return all(s == "failed" for s, _ in await statuses(store, poison))

        await wait_for(poison_settled, within=LEASE_S)
        for _, error in await statuses(store, poison):
            assert "body" in error and "too many statically nested blocks" in error, error
        assert delivered_to(mallory_sink) == 0

        async def bob_recorded() -> bool:
            return [s for s, _ in await statuses(store, good)] == ["sent", "sent"]

        await wait_for(bob_recorded)


async def test_must_show_poison_and_bombs_while_another_user_is_served_and_healthz_answers(
    make_client: Start,
    settings: Settings,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    bounded_memory: None,
) -> None:
    """User 1 runs a poison pill and two template bombs that pass the schedule-time check
    (heavy only for recipients after the first); user 2's emails go out on time, and
    /healthz answers throughout (polled all along; the max latency is printed)."""
    with SmtpSink() as mallory_sink, SmtpSink() as bob_sink:
        client = await make_client(replace(settings, lease_seconds=LEASE_S))
        mallory, mallory_sender = await user_with_sender(
            client, store, "mallory@evil.example", mallory_sink.port
        )
        bob, bob_sender = await user_with_sender(client, store, "bob@good.example", bob_sink.port)
        latencies: list[float] = []
        answers: list[int] = []
        stop = asyncio.Event()

        async def poll_healthz() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                response = await client.get("/healthz")
                answers.append(response.status)
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

        poller = asyncio.create_task(poll_healthz())
        at = soon()
        n = 60
        # Bounded even without limits (CPU only, ~9 M iterations; 140 MB strings): a test
        # must not take the shared machine down when the sandbox regresses.
        loops = (
            "{% for i in range(size|int) %}{% for j in range(size|int) %}{% endfor %}{% endfor %}"
        )
        common = {"sender": mallory_sender, "start_at": at, "subject": "s"}
        # The first recipient is harmless (the check renders for it); the others are not.
        people = [{"email": "m0@example.com", "vars": {"size": "1"}}] + [
            {"email": f"m{i}@example.com", "vars": {"size": "3000"}} for i in range(1, n)
        ]
        # First: its emails share the first claimed batch with Bob's.
        poison = await schedule_unchecked(
            client,
            mallory,
            monkeypatch,
            body=POISON,
            recipients=[f"p{i}@example.com" for i in range(n)],
            **common,
        )
        loop_bomb = await schedule(client, mallory, body=loops, recipients=people, **common)
        size_bomb = await schedule(
            client,
            mallory,
            body="{{ email * (size|int) }}",
            recipients=[{"email": "m0@example.com", "vars": {"size": "1"}}]
            + [{"email": f"m{i}@example.com", "vars": {"size": "10000000"}} for i in range(1, n)],
            **common,
        )
        good = await schedule(
            client,
            bob,
            subject="Hi",
            body="Hello {{ email }}",
            recipients=["b1@example.com", "b2@example.com"],
            sender=bob_sender,
            start_at=at,
        )

        async def bob_delivered() -> bool:
            return delivered_to(bob_sink) == 2

        await wait_for(bob_delivered, within=LEASE_S)
        bad = (loop_bomb, size_bomb, poison)

        async def mallory_settled() -> bool:
            rows = [s for c in bad for s, _ in await statuses(store, c)]
            return rows.count("sent") + rows.count("failed") == len(rows)

        await wait_for(mallory_settled, within=60)
        stop.set()
        await poller
        print(
            f"\n/healthz: {len(answers)} answers, max latency {max(latencies) * 1000:.0f} ms, "
            f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms"
        )
        assert answers and all(status == 200 for status in answers)
        assert [s for s, _ in await statuses(store, good)] == ["sent", "sent"]
        reasons = {
            "loop": ("loop iterations", "took longer", "went over a limit"),
            "size": ("would exceed",),
            "poison": ("too many statically nested blocks",),
        }
        for name, campaign_id in zip(reasons, bad, strict=True):
            rows = await statuses(store, campaign_id)
            failed = [e for s, e in rows if s == "failed"]
            # only the harmless first recipient of a bomb may have gone
            assert len(failed) >= n - 1, (name, rows[:3])
            assert all(any(r in e for r in reasons[name]) for e in failed), (name, failed[:3])


async def test_a_stuck_smtp_server_of_one_owner_leaves_the_other_owner_its_share(
    make_client: Start, settings: Settings, store: Store
) -> None:
    concurrency = 4
    with held_sink() as stuck, SmtpSink() as bob_sink:
        held = stuck.sink
        assert isinstance(held, HeldSink)
        client = await make_client(replace(settings, worker_concurrency=concurrency))
        alice, alice_sender = await user_with_sender(client, store, "alice@a.example", stuck.port)
        bob, bob_sender = await user_with_sender(client, store, "bob@b.example", bob_sink.port)
        # Bob sends a steady stream (one email every 100 ms): he is in every claim.
        await schedule(
            client,
            bob,
            subject="s",
            body="b",
            recipients=[f"b{i}@example.com" for i in range(60)],
            sender=bob_sender,
            delay_between_ms=100,
        )

        def bob_sent(count: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return delivered_to(bob_sink) >= count

            return check

        await wait_for(bob_sent(1))
        # Alice's server accepts connections and then never answers DATA.
        alice_campaign = await schedule(
            client,
            alice,
            subject="s",
            body="b",
            recipients=[f"a{i}@example.com" for i in range(20)],
            sender=alice_sender,
        )

        async def alice_stuck() -> bool:
            return held.data_started >= concurrency // 2

        await wait_for(alice_stuck)
        before = delivered_to(bob_sink)
        # Alice's sends all hang (her server's timeout is 30 s): Bob's keep going.
        await wait_for(bob_sent(before + 5), within=20)
        assert not held.release.is_set() and len(held.messages) == 0
        assert held.data_started <= concurrency // 2  # she never held more than her share
        held.release.set()

        async def alice_done() -> bool:
            return [s for s, _ in await statuses(store, alice_campaign)].count("sent") == 20

        await wait_for(alice_done, within=60)


# A work limit: the step count or, on a busy machine, the deadline comes first.
WORK = ("loop iterations", "took longer")


def _alternatives(needle: str | tuple[str, ...]) -> tuple[str, ...]:
    return needle if isinstance(needle, tuple) else (needle,)


TEMPLATE_BOMBS = [
    ({"body": POISON}, "body", "too many statically nested blocks"),
    ({"subject": "{{ 7 ** 3000000 }}"}, "subject", "integers are limited"),
    ({"body": "{% for c in 'x' * 100000 %}{% for d in 'y' * 100000 %}{% endfor %}{% endfor %}"},
     "body", WORK),
    ({"html": "<p>{{ email * 1000000000 }}</p>"}, "html", "would exceed"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "field", "needle"), TEMPLATE_BOMBS)
async def test_the_preview_runs_the_senders_sandbox_and_limits(
    make_client: Start, payload: dict[str, Any], field: str, needle: str | tuple[str, ...]
) -> None:
    """The compose preview renders as the worker will: a bomb is a 422 there too, not a 500
    or seconds of the API's event loop."""
    client = await make_client(roles=frozenset({"api"}))
    csrf = {"X-CSRF-Token": await dev_login(client)}
    body = {"subject": "s", "body": "b", "recipient": {"email": "a@example.com"}, **payload}
    response = await client.post("/api/compose/preview", json=body, headers=csrf)
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["field"] == field, error
    assert any(n in error["message"] for n in _alternatives(needle)), error


@pytest.mark.parametrize(
    ("payload", "field", "needle"),
    [
        *TEMPLATE_BOMBS,
        ({"subject": "Hi {{ name }}",
          "recipients": [{"email": "a@example.com", "vars": {"name": "Ada"}},
                         {"email": "b@example.com", "vars": {"name": "B\r\nBcc: v@example.net"}}]},
         "recipients", "line break"),
    ],
)  # fmt: skip
async def test_schedule_refuses_what_cannot_compile_or_exceeds_a_limit(
    make_client: Start,
    store: Store,
    payload: dict[str, Any],
    field: str,
    needle: str | tuple[str, ...],
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    body = {"subject": "s", "body": "b", "recipients": ["a@example.com"], **payload}
    response = await client.post("/api/emails/schedule", json=body, headers=headers)
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["field"] == field, error
    assert any(n in error["message"] for n in _alternatives(needle)), error
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"display_name": "Eve\r\nBcc: victim@example.net"}, "display_name"),
        ({"display_name": "Eve\nBcc: victim@example.net"}, "display_name"),
        ({"display_name": "Eve\u2028Bcc: victim@example.net"}, "display_name"),
        ({"reply_to": "help@example.com\r\nBcc: victim@example.net"}, "reply_to"),
    ],
)
async def test_sender_header_values_with_line_breaks_are_refused(
    make_client: Start, store: Store, change: dict[str, str], field: str
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    headers = auth(await new_token(store))
    base = {"from_address": "news@example.com", "transport": "capture"}
    created = await client.post("/api/senders", json={**base, **change}, headers=headers)
    assert created.status == 422, await created.text()
    assert (await created.json())["error"]["field"] == field
    ok = await client.post("/api/senders", json=base, headers=headers)
    assert ok.status == 201, await ok.text()
    sender_id = (await ok.json())["id"]
    patched = await client.patch(f"/api/senders/{sender_id}", json=change, headers=headers)
    assert patched.status == 422, await patched.text()
    assert (await patched.json())["error"]["field"] == field
