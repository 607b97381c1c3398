"""The command line the bench scripts share: the parser, the options they have in common and
the checks of the parsed values.

    parser = arguments.parser(__doc__)
    parser.add_argument(...)                      # the script's own options
    arguments.add_servers(parser)                 # --database-url, --redis-url
    args = arguments.parse(parser, argv, positive=("n", "repeat"))
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

LOOPS = ("auto", "uvloop", "asyncio")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the script's docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def add_servers(
    parser: argparse.ArgumentParser,
    *,
    database: str | None = "use this PostgreSQL (with --redis-url)",
    redis: str = "use this Redis (with --database-url)",
) -> None:
    """--database-url and --redis-url (both or neither: `parse` checks), or --redis-url alone
    when `database` is None; each help text says what the script does with it."""
    if database is not None:
        parser.add_argument("--database-url", help=database)
    parser.add_argument("--redis-url", help=redis)


def add_loop(parser: argparse.ArgumentParser, of: str) -> None:
    """--loop: the event loop `of` what (harness.run_on_loop runs it)."""
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help=f"event loop of {of} (auto: uvloop when installed, as dispatch-engine runs)",
    )


def add_worker_concurrency(parser: argparse.ArgumentParser, default: int = 200) -> None:
    parser.add_argument(
        "--concurrency", type=int, default=default, help=f"WORKER_CONCURRENCY ({default})"
    )


def add_quiet(
    parser: argparse.ArgumentParser,
    *,
    max_load: float,
    max_wait: float,
    retries: int,
    max_others: float = 0.3,
) -> None:
    """--max-load, --max-wait, --max-others, --retries: measuring on a shared machine."""
    parser.add_argument(
        "--max-load",
        type=float,
        default=max_load,
        help=f"first wait while the 1-minute load average is above this ({max_load})",
    )
    parser.add_argument(
        "--max-wait", type=float, default=max_wait, help=f"wait at most this many s ({max_wait})"
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=max_others,
        help="redo a run during which other processes used more than this share of a core "
        f"({max_others})",
    )
    parser.add_argument(
        "--retries", type=int, default=retries, help=f"redos per run at most ({retries})"
    )


def parse(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    positive: Iterable[str] = (),
) -> argparse.Namespace:
    """Parse `argv`; the `positive` options (every value of a list; None: not given) must be
    at least 1, and --database-url and --redis-url come together when the script has both."""
    args = parser.parse_args(argv)
    if hasattr(args, "database_url") and bool(args.database_url) != bool(args.redis_url):
        parser.error("give both --database-url and --redis-url, or neither")
    names = list(positive)
    values = [getattr(args, name) for name in names]
    flat = (x for v in values if v is not None for x in (v if isinstance(v, list) else [v]))
    if any(value < 1 for value in flat):
        options = ", ".join("--" + name.replace("_", "-") for name in names)
        parser.error(f"{options} must be positive")
    return args
