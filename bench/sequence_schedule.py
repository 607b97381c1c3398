"""The 100,000-recipient schedule with and without a sequence (issue 16, sequences).

    .venv/bin/python bench/sequence_schedule.py [--size 100000] [--repeat 5]

Private PostgreSQL + Redis (dispatch_engine.embedded) in a temporary folder, the app's api
role in this process (aiohttp's test server; no worker, so nothing is sent), one POST
/api/emails/schedule of --size distinct recipients per run: plain, and with two follow-up
steps (the `sequence_members` COPY and the steps' template checks on top), interleaved,
after one excluded warm-up of each. Time = request start -> the 201 body. Prints the median
and the spread; nothing asserts. Run it on the code before a change with PYTHONPATH pointing
at that code's checkout to compare (the `steps` field is then ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient, TestServer

from dispatch_engine.app import create_app
from dispatch_engine.config import Settings
from dispatch_engine.embedded import EmbeddedServers
from dispatch_engine.migrate import migrate
from dispatch_engine.store import Store

STEPS = [
    {"after_days": 3, "body": "Any thoughts, {{ email }}?"},
    {"after_days": 4, "business_days": True, "subject": "Last note", "body": "Bye {{ email }}"},
]


def body(size: int, run: int, steps: bool) -> bytes:
    payload: dict[str, Any] = {
        "subject": "Scale {{ email }}",
        "body": "Hello {{ email }}",
        "recipients": [f"r{run}-{n}@d{n % 300}.example" for n in range(size)],
    }
    if steps:
        payload["steps"] = STEPS
    return orjson.dumps(payload)


async def main(size: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as folder, EmbeddedServers(Path(folder)) as servers:
        urls = servers.urls
        conn = await asyncpg.connect(urls.database_url)
        await migrate(conn)
        await conn.close()
        settings = Settings(
            database_url=urls.database_url, redis_url=urls.redis_url, data_dir=Path(folder),
            secret_key="bench-secret-key-0123456789", port=0,
        )  # fmt: skip
        client = TestClient(TestServer(create_app(settings, {"api"})))
        await client.start_server()
        try:
            pool = await asyncpg.create_pool(urls.database_url, min_size=1, max_size=2)
            user = await Store(pool).ensure_user("bench@example.com", "Bench")
            token = await Store(pool).create_token(user.id, "bench")
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            times: dict[bool, list[float]] = {False: [], True: []}
            for run in range(repeat + 1):
                for steps in (False, True):
                    data = body(size, run * 2 + steps, steps)
                    started = time.perf_counter()
                    response = await client.post("/api/emails/schedule", data=data, headers=headers)
                    await response.read()
                    took = time.perf_counter() - started
                    assert response.status == 201, await response.text()
                    if run:  # the first of each is a warm-up
                        times[steps].append(took)
            try:
                members = await pool.fetchval("SELECT count(*) FROM sequence_members")
            except asyncpg.UndefinedTableError:  # the code before sequences
                members = 0
            await pool.close()
        finally:
            await client.close()
    for steps, runs in times.items():
        label = "with 2 steps" if steps else "plain"
        print(
            f"{size:,} recipients, {label}: median {statistics.median(runs):.2f} s "
            f"(min {min(runs):.2f}, max {max(runs):.2f}, {len(runs)} runs)"
        )
    print(f"sequence members written: {members:,}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.size, args.repeat))
