"""Scheduling and listing at scale (issue 8): 100,000 recipients in one POST; the Sent list at 1M.

    flock /tmp/dispatch-bench.lock .venv-bench/bin/python bench/api_scale.py \
        [--sizes 10000 100000] [--repeat 3] [--total 1000000] [--requests 500] [--profile DIR]

(`chrt -r 1` before the interpreter runs it all at real-time priority, so that other people's
processes on a shared machine cannot preempt it; docs/performance.md's quiet rows did.)

What runs, all on this machine:
- a private PostgreSQL + Redis (dispatch_engine.embedded), unless --database-url and
  --redis-url are given (then the database should be empty: the fill counts every row);
- `dispatch-engine run --role api` (a real process; no worker, so what is scheduled stays
  scheduled), its token from `dispatch-engine token create --email dev@example.com` (the
  dev login's user, so the token and the dashboard session see the same rows).

Part 1, scheduling: POST /api/emails/schedule, one campaign of N recipients (distinct
addresses over a few hundred domains, JSON body serialized beforehand), sizes interleaved,
--repeat each, after an excluded warm-up. Time = request start → 201 body read, i.e. the
rows committed in PostgreSQL (COPY), queued in Redis and the outbox marker
(`campaigns.enqueued_at`) set; checked after each POST. CPU seconds of the api process,
PostgreSQL (postmaster + backends), Redis, and of everything else on the machine ("others").
A run during which others used more than --max-others of a core is redone (--retries).

Part 2, listing: the tables are filled to --total dispatches with SQL (generate_series) in
the shape the app writes: a few users with their default senders, many campaigns, dispatches
mostly `sent` (message_id, sent_at, finished_at, attempts, a `sent` ledger row with the SMTP
reply), some `failed` (last_error, their ledger row left `sending`), some `cancelled`; the
campaigns POSTed in part 1 are marked sent the same way, except the last one (a Scheduled
backlog). Then VACUUM ANALYZE. Measured over HTTP, one request at a time, --requests each
after 20 warm-ups: GET /api/emails/sent (bearer token, 50 per page) and GET /emails (the
dashboard page, signed in through the dev login: Scheduled and Sent, 25 each), on the first
page and on deep pages reached through the cursor. Then EXPLAIN (ANALYZE, BUFFERS) of the
Sent list's SQL (the store's own query, run through a pool that prefixes EXPLAIN).

--profile DIR: after the timed runs, one more 100,000 POST and one more listing loop under
`py-spy record` (flame graphs DIR/schedule.svg, DIR/listing.svg; py-spy comes with the
bench extra). Nothing asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arguments
import harness
import machine
from api_scale_fill import DEV_EMAIL, DOMAINS, fill
from harness import Engine, percentile, span, table
from machine import Cpu, CpuMeters

SUBJECT = "Scale {{ email }}"
BODY = "Hello {{ email }},\n\nthis is one of the scale benchmark's emails.\n"
CSRF = re.compile(r'(?:name="csrf-token" content|name="csrf_token" value)="([0-9a-f]+)"')


def addresses(n: int, tag: str) -> list[str]:
    names = ("anna", "Bob", "carla.m", "dimitri", "Eve_Q", "frank+news", "grace", "h.o'neil")
    return [f"{names[i % len(names)]}.{tag}{i}@{DOMAINS[(i * 7) % len(DOMAINS)]}" for i in range(n)]


def meters(srv: harness.Servers, api_pid: int) -> CpuMeters:
    return CpuMeters(
        {
            "api": Cpu([api_pid]),
            "postgres": Cpu([srv.postgres_pid], tree=True),
            "redis": Cpu([srv.redis_pid]),
            "driver": Cpu([os.getpid()]),  # this script
        }
    )


# ---- part 1: scheduling ----


@dataclass
class Post:
    n: int
    seconds: float
    cpu: dict[str, float]
    campaign_id: int


async def post_once(
    http: Any, db: Any, url: str, token: str, n: int, tag: str, cpu: CpuMeters
) -> Post:
    import orjson

    body = orjson.dumps({"subject": SUBJECT, "body": BODY, "recipients": addresses(n, tag)})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    cpu.start()
    t0 = time.perf_counter()
    async with http.post(f"{url}/api/emails/schedule", data=body, headers=headers) as r:
        answer = await r.json()
    seconds = time.perf_counter() - t0
    used = cpu.stop()
    if r.status != 201 or answer["accepted"] != n:
        raise RuntimeError(f"POST answered {r.status}: {str(answer)[:500]}")
    campaign_id = int(answer["campaign"]["id"])
    # What the 201 promises: the rows committed, the outbox marker set.
    rows, marked = await db.fetchrow(
        """SELECT (SELECT count(*) FROM dispatches WHERE campaign_id = $1),
                  (SELECT enqueued_at IS NOT NULL FROM campaigns WHERE id = $1)""",
        campaign_id,
    )
    if rows != n or not marked:
        raise RuntimeError(f"campaign {campaign_id}: {rows} rows, enqueued_at set: {marked}")
    return Post(n, seconds, used, campaign_id)


async def queue_depth(http: Any, url: str, token: str) -> int:
    async with http.get(f"{url}/api/stats", headers={"Authorization": f"Bearer {token}"}) as r:
        stats = await r.json()
    return sum(int(s["queue_depth"]) for s in stats["senders"])


async def schedule_part(
    args: argparse.Namespace, http: Any, db: Any, api: Engine, token: str, cpu: CpuMeters
) -> tuple[list[Post], int]:
    await post_once(http, db, api.url, token, args.warmup, "w", cpu)
    posts: list[Post] = []
    redone = 0
    for round_no in range(args.repeat):
        for n in args.sizes:
            for attempt in range(args.retries + 1):
                machine.wait_until_idle(args.max_others, args.max_wait)
                depth = await queue_depth(http, api.url, token)
                p = await post_once(http, db, api.url, token, n, f"r{round_no}a{attempt}n{n}x", cpu)
                queued = await queue_depth(http, api.url, token) - depth
                if queued != n:
                    raise RuntimeError(f"{queued} of {n} emails were queued in Redis")
                share = p.cpu["others"] / p.seconds
                print(
                    f"  POST {n:,}: {p.seconds:.3f} s, api CPU {p.cpu['api']:.2f} s, "
                    f"postgres {p.cpu['postgres']:.2f} s, others {share:.0%} of a core",
                    file=sys.stderr,
                )
                if share <= args.max_others or attempt == args.retries:
                    break
                redone += 1
            posts.append(p)
    return posts, redone


# ---- part 2: the listings ----


@dataclass
class Listing:
    target: str
    depth: str
    latencies_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    rows: int = 0


async def dev_session(url: str) -> Any:
    """An aiohttp session signed in through the dev login (cookies kept for 127.0.0.1)."""
    import aiohttp

    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.get(f"{url}/login") as r:
        found = CSRF.search(await r.text())
    assert found, "the login page carries no CSRF token"
    form = {"csrf_token": found.group(1), "next": "/emails"}
    async with http.post(f"{url}/auth/dev/start", data=form) as r:
        if r.status != 200 or r.url.path != "/emails":
            raise RuntimeError(f"dev login failed: {r.status} {r.url}")
    return http


async def cursors(db: Any, owner_id: int, depths: list[int]) -> dict[str, str | None]:
    """The page cursor the API (and the page) would hand out after `depth` Sent rows."""
    from dispatch_engine.web.paging import encode_cursor

    found: dict[str, str | None] = {"first page": None}
    for depth in depths:
        row = await db.fetchrow(
            """SELECT finished_at, id FROM dispatches
               WHERE owner_id = $1 AND status IN ('sent', 'failed')
               ORDER BY finished_at DESC, id DESC OFFSET $2 LIMIT 1""",
            owner_id,
            depth - 1,
        )
        if row is not None:
            found[f"after {depth:,} rows"] = encode_cursor(row["finished_at"], row["id"])
    return found


async def measure(http: Any, url: str, headers: dict[str, str], n: int, cpu: CpuMeters) -> Any:
    for _ in range(20):
        async with http.get(url, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {url} answered {r.status}: {(await r.text())[:300]}")
    latencies = []
    cpu.start()
    for _ in range(n):
        t0 = time.perf_counter()
        async with http.get(url, headers=headers) as r:
            body = await r.read()
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies, cpu.stop(), body


async def listing_part(
    args: argparse.Namespace, db: Any, api: Engine, token: str, dev_id: int, cpu: CpuMeters
) -> list[Listing]:
    import aiohttp
    import orjson

    pages = await cursors(db, dev_id, args.depths)
    results = []
    async with aiohttp.ClientSession() as http, await dev_session(api.url) as browser:
        for depth, cursor in pages.items():
            api_url = f"{api.url}/api/emails/sent" + (f"?cursor={cursor}" if cursor else "")
            page_url = f"{api.url}/emails" + (f"?sent_cursor={cursor}" if cursor else "")
            for target, client, url, headers in (
                ("GET /api/emails/sent (50)", http, api_url, {"Authorization": f"Bearer {token}"}),
                ("GET /emails page (25 + 25)", browser, page_url, {}),
            ):
                for attempt in range(args.retries + 1):
                    machine.wait_until_idle(args.max_others, args.max_wait)
                    lat, used, body = await measure(client, url, headers, args.requests, cpu)
                    if used["others"] / used["wall"] <= args.max_others or attempt == args.retries:
                        break
                    print(f"  {target} {depth}: noisy, redone (attempt {attempt + 1})",
                          file=sys.stderr)  # fmt: skip
                if target.startswith("GET /api"):
                    rows = len(orjson.loads(body)["items"])
                else:
                    rows = body.count(b"<tr data-dispatch=")
                results.append(Listing(target, depth, lat, used, rows))
                print(
                    f"  {target} {depth}: p50 {statistics.median(lat):.2f} ms, "
                    f"p99 {percentile(lat, 0.99):.2f} ms",
                    file=sys.stderr,
                )
    return results


class ExplainPool:
    """Stands in for the pool: runs a store query under EXPLAIN instead, returns the plan."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        rows = await self.conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)
        return [r[0] for r in rows]


async def explain(db: Any, dev_id: int, depths: list[int]) -> dict[str, list[str]]:
    from dispatch_engine.store.listings import ListingQueries
    from dispatch_engine.web.paging import decode_cursor

    await db.execute("SET plan_cache_mode = force_custom_plan")  # as the app's pool does
    queries = ListingQueries(ExplainPool(db))  # type: ignore[arg-type]
    plans = {}
    for depth, cursor in (await cursors(db, dev_id, depths[-1:])).items():
        plan: Any = await queries.list_finished(dev_id, 26, decode_cursor(cursor))
        plans[depth] = list(plan)
    return plans


# ---- report ----


def report_schedule(posts: list[Post], redone: int) -> None:
    rows = [["recipients", "runs", "POST s (median)", "min-max s", "recipients/s", "api CPU s",
             "postgres CPU s", "redis CPU s", "others' CPU s"]]  # fmt: skip
    for n in sorted({p.n for p in posts}):
        mine = [p for p in posts if p.n == n]
        secs = [p.seconds for p in mine]

        def cpu(name: str, runs: list[Post] = mine) -> str:
            return f"{statistics.median(p.cpu[name] for p in runs):.2f}"

        rows.append(
            [
                f"{n:,}",
                str(len(mine)),
                f"{statistics.median(secs):.3f}",
                span(secs, ".3f"),
                f"{n / statistics.median(secs):,.0f}",
                cpu("api"),
                cpu("postgres"),
                cpu("redis"),
                cpu("others"),
            ]
        )
    print(table(rows))
    print(f"({redone} noisy run(s) redone)")


def report_listings(results: list[Listing]) -> None:
    rows = [["request", "page", "rows", "p50 ms", "p99 ms", "max ms", "api CPU ms/req",
             "postgres CPU ms/req", "others' CPU s"]]  # fmt: skip
    for r in results:
        n = len(r.latencies_ms)
        rows.append(
            [
                r.target,
                r.depth,
                str(r.rows),
                f"{statistics.median(r.latencies_ms):.2f}",
                f"{percentile(r.latencies_ms, 0.99):.2f}",
                f"{max(r.latencies_ms):.2f}",
                f"{1000 * r.cpu['api'] / n:.2f}",
                f"{1000 * r.cpu['postgres'] / n:.2f}",
                f"{r.cpu['others']:.2f}",
            ]
        )
    print(table(rows))


async def bench(args: argparse.Namespace, srv: Any, api: Engine, token: str) -> None:
    import aiohttp
    import asyncpg

    cpu = meters(srv, api.proc.pid)
    db = await asyncpg.connect(srv.database_url)
    try:
        print("part 1: POST /api/emails/schedule…", file=sys.stderr)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            posts, redone = await schedule_part(args, http, db, api, token, cpu)
            if args.profile:
                with harness.profiler(str(args.profile / "schedule.svg"), api.proc.pid):
                    extra = await post_once(http, db, api.url, token, max(args.sizes), "prof", cpu)
                posts_profiled = [extra.campaign_id]
            else:
                posts_profiled = []
        print(f"part 2: filling to {args.total:,} dispatches…", file=sys.stderr)
        posted = sorted([p.campaign_id for p in posts] + posts_profiled)
        made = await fill(args, db, posted)
        results = await listing_part(args, db, api, token, made["dev_id"], cpu)
        if args.profile:
            with harness.profiler(str(args.profile / "listing.svg"), api.proc.pid):
                await listing_part(
                    argparse.Namespace(**{**vars(args), "depths": args.depths[-1:]}),
                    db, api, token, made["dev_id"], cpu,
                )  # fmt: skip
        plans = await explain(db, made["dev_id"], args.depths)
        pg = await db.fetchval("SHOW server_version")
    finally:
        await db.close()

    print()
    print(
        f"dispatch_engine at {harness.revision()}; PostgreSQL {pg}; Python "
        f"{sys.version.split()[0]}; {os.cpu_count()} CPUs; {args.load}"
    )
    print()
    print("Scheduling: one POST /api/emails/schedule (JSON) per run, request start → 201")
    print()
    report_schedule(posts, redone)
    print()
    print(
        f"Fill: {made['seconds']:.0f} s; {made['users']} users, {made['campaigns']:,} campaigns, "
        f"{made['ledger']:,} ledger rows, dispatches {made['size']} on disk; by owner and status:"
    )
    for dev, status, n in made["counts"]:
        print(f"  {'dev user' if dev else 'others  '} {status:<10} {n:>9,}")
    print()
    print(f"Listings: {args.requests} requests each, one at a time, after 20 warm-ups")
    print()
    report_listings(results)
    for depth, plan in plans.items():
        print()
        print(f"EXPLAIN (ANALYZE, BUFFERS) list_finished, {depth}:")
        for line in plan:
            print(f"    {line}")
    problems = api.problems()
    print()
    print(f"dispatch-engine logged {len(problems)} warnings/errors")
    for line in problems[:5]:
        print(f"  {line}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arguments.parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3, help="POSTs of each size (3)")
    parser.add_argument("--warmup", type=int, default=1000, help="first, untimed POST (1000)")
    parser.add_argument("--total", type=int, default=1_000_000, help="dispatches after the fill")
    parser.add_argument("--users", type=int, default=4, help="users owning them (4)")
    parser.add_argument("--requests", type=int, default=500, help="per listing measurement")
    parser.add_argument(
        "--depths", type=int, nargs="+", default=[1_000, 100_000, 400_000],
        help="deep pages: after this many Sent rows (1000 100000 400000)",
    )  # fmt: skip
    arguments.add_quiet(parser, max_load=1.5, max_wait=300, retries=2)
    parser.add_argument("--profile", type=Path, help="write flame graphs into this folder")
    arguments.add_servers(parser)
    args = arguments.parse(parser, argv)
    return args


def main() -> None:
    args = parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    args.load = machine.wait_for_quiet(args.max_load, args.max_wait)
    with tempfile.TemporaryDirectory(prefix="dispatch-api-scale-") as name:
        tmp = Path(name)
        with harness.private_servers(tmp / "servers", args.database_url, args.redis_url) as srv:
            # No worker runs: SMTP is never reached; what is scheduled stays scheduled.
            env = harness.engine_env(srv, tmp, DISPATCH_TRANSPORT="smtp", SMTP_HOST="127.0.0.1")
            token = harness.create_token(env, tmp, DEV_EMAIL)  # also applies the migrations
            api = Engine(env, tmp, ["--role", "api", "--no-migrate"])
            try:
                api.wait_ready()
                harness.run_on_loop(bench(args, srv, api, token))
            finally:
                api.stop()


if __name__ == "__main__":
    main()
