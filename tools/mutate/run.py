"""`make mutate`: mutation testing of the core modules (cosmic-ray) and of the Lua scripts.

Everything runs in a copy of the work tree under a temporary folder, so an interrupted run
never leaves a mutant in the sources. The tests of the copy import the copy
(PYTHONPATH), the `dispatch-engine` processes they start too, and no bytecode is written
(a mutant of the same size in the same second must not reuse the original's .pyc).

Per module: one baseline run of its tests (they must pass; the per-mutant timeout is a
multiple of that run), then cosmic-ray's mutants one at a time with that timeout. The Lua
scripts get a curated list of mutants (lua_mutants.json) run against the queue tests.
Results (score, and the diff of every surviving mutant) go to build/mutate/.

    python tools/mutate/run.py                 # every module, then Lua
    python tools/mutate/run.py recipients lua  # some of them
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OUT = ROOT / "build" / "mutate"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Target:
    sources: tuple[str, ...]
    tests: tuple[str, ...]  # the fast selection that exercises these sources


TARGETS: dict[str, Target] = {
    "queue": Target(("dispatch_engine/queue.py",), ("tests/test_queue.py",)),
    "pacing": Target(
        ("dispatch_engine/pacing.py", "dispatch_engine/builtins/pacing.py"),
        # Injected clocks only: the end-to-end pacing tests measure send times, which a
        # loaded machine stretches (a false kill is no score); they run in `make test`.
        ("tests/test_pacer.py", "tests/test_limits.py"),
    ),
    "worker": Target(
        tuple(
            f"dispatch_engine/worker/{stage}.py"
            for stage in ("claim", "prepare", "share", "pace", "begin", "send", "leases", "pool")
        ),
        # Quick ones first (`-x`). Not the timed end-to-end pacing tests (a loaded machine
        # stretches their send times: a false kill is no score; they run in `make test`).
        (
            "tests/test_leases.py",
            "tests/test_delivery.py",
            "tests/test_worker_stages.py",
            "tests/test_settle.py",
            "tests/test_provider_parking.py",
            "tests/test_smtp_transport.py",
            "tests/test_controls.py",
            "tests/test_pacing.py::test_a_small_campaign_is_not_stuck_behind_a_big_one",
            "tests/test_isolation.py::test_a_campaign_that_cannot_compile_fails_alone_and_the_batch_goes_on",
            "tests/test_lease_renewal.py",
        ),
    ),
    "recorder": Target(
        ("dispatch_engine/worker/record.py", "dispatch_engine/worker/settle.py"),
        # Quickest first (`-x` stops at the first failure); the 8-refusal outage last (25 s).
        (
            "tests/test_delivery.py",
            "tests/test_metrics_counts.py",
            "tests/test_settle.py",
            "tests/test_recorder_stop.py",
            "tests/test_hooks_events.py",
            "--deselect=tests/test_hooks_events.py::test_hook_sender_limited",  # pacing's, 5 s
            "tests/test_recorder_outage.py",
        ),
    ),
    "recipients": Target(
        ("dispatch_engine/recipients.py",),
        (
            "tests/test_recipients.py",
            "tests/test_recipients_edges.py",
            "tests/test_recipients_requests.py",
            "tests/test_recipients_no_dns.py",
        ),
    ),
    "render": Target(
        ("dispatch_engine/render.py",),
        ("tests/test_render.py", "tests/test_render_edges.py", "tests/test_render_preview.py"),
    ),
    "guard": Target(
        ("dispatch_engine/web/guard.py",),
        ("tests/test_auth_csrf.py", "tests/test_csrf_multipart.py", "tests/test_guard.py"),
    ),
    "google_oidc": Target(
        ("dispatch_engine/builtins/google_oidc.py",),
        (
            "tests/test_auth.py",
            "tests/test_auth_id_tokens.py",
            "tests/test_auth_provider_answers.py",
        ),
    ),
}
LUA_TESTS = ("tests/test_queue.py",)

# The operators that model real slips; the rest (every binary operator into every other,
# `==` into `is`, inserted or swapped variables, removed decorators) mostly make
# equivalent or absurd mutants and would triple the run. `|` is left alone too: here it is
# almost always in annotations, which `from __future__ import annotations` never runs.
COMPARISONS = "Eq_NotEq NotEq_Eq Lt_LtE LtE_Lt Gt_GtE GtE_Gt Lt_GtE GtE_Lt Gt_LtE LtE_Gt"
BINARY = "Add_Sub Sub_Add Mul_Div Div_Mul FloorDiv_Mul Mod_FloorDiv"
OTHERS = (
    "ReplaceUnaryOperator_USub_UAdd ReplaceUnaryOperator_Delete_Not AddNot ReplaceAndWithOr "
    "ReplaceOrWithAnd ReplaceTrueWithFalse ReplaceFalseWithTrue ReplaceBreakWithContinue "
    "ReplaceContinueWithBreak ZeroIterationForLoop ExceptionReplacer NumberReplacer"
)
KEEP = [
    *(f"ReplaceComparisonOperator_{pair}" for pair in f"{COMPARISONS} Is_IsNot IsNot_Is".split()),
    *(f"ReplaceBinaryOperator_{pair}" for pair in BINARY.split()),
    *OTHERS.split(),
]
EXCLUDE = [f"core/(?!({'|'.join(KEEP)})$)"]


def run(cmd: list[str], tree: Path, timeout: float | None = None) -> tuple[int, str]:
    """Run in its own process group: a timeout or our own stop ends its whole tree."""
    with subprocess.Popen(
        cmd, cwd=tree, env=test_env(tree), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return proc.returncode, output


def copy_tree(dest: Path) -> None:
    """The work tree as git sees it (tracked and new files), plus the npm test peers."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    peers = ROOT / "tests" / "peers" / "node_modules"
    if peers.is_dir():
        (dest / "tests" / "peers" / "node_modules").symlink_to(peers)


def test_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}


def pytest_command(tests: tuple[str, ...]) -> list[str]:
    # --basetemp inside the copy: the private servers a killed run leaves are found by path
    return [str(BIN / "python"), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            "--basetemp=.pytest-tmp", *tests]  # fmt: skip


def kill_leftovers(tree: Path) -> None:
    """Servers or processes of a timed-out run (their own sessions) still using the copy."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            cwd = str((proc / "cwd").resolve())
        except OSError:
            continue
        if str(tree) in cmdline or cwd.startswith(str(tree)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def baseline(tree: Path, tests: tuple[str, ...]) -> float:
    started = time.monotonic()
    code, output = run(pytest_command(tests), tree)
    if code != 0:
        sys.exit(f"the tests fail without any mutant:\n{output[-3000:]}")
    return time.monotonic() - started


def run_module(name: str, target: Target, tree: Path) -> dict[str, object]:
    seconds = baseline(tree, target.tests)
    timeout = max(60.0, 3 * seconds)
    work = OUT / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config, session = work / "config.toml", work / "session.sqlite"
    command = " ".join(pytest_command(target.tests))
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(list(target.sources))}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
        "[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = {json.dumps(EXCLUDE)}\n"
    )
    for step in (
        [str(BIN / "cosmic-ray"), "init", str(config), str(session)],
        [str(BIN / "cr-filter-operators"), str(session), str(config)],
        [str(BIN / "cosmic-ray"), "exec", str(config), str(session)],
    ):
        code, output = run(step, tree)
        if code != 0:
            sys.exit(f"{' '.join(step[:2])} failed:\n{output[-3000:]}")
    dump = subprocess.run(
        [str(BIN / "cosmic-ray"), "dump", str(session)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    killed = survived = incompetent = 0
    survivors: list[str] = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is None or result.get("worker_outcome") == "skipped":
            continue
        outcome = result.get("test_outcome")
        if outcome == "killed":
            killed += 1
        elif outcome == "survived":
            survived += 1
            survivors.append(result.get("diff") or json.dumps(item))
        else:
            incompetent += 1
    (work / "survivors.diff").write_text("\n".join(survivors))
    return {"killed": killed, "survived": survived, "incompetent": incompetent,
            "baseline_s": round(seconds, 1)}  # fmt: skip


def run_lua(tree: Path) -> dict[str, object]:
    seconds = baseline(tree, LUA_TESTS)
    timeout = max(60.0, 3 * seconds)
    mutants = json.loads((HERE / "lua_mutants.json").read_text())
    killed, survivors = 0, []
    for mutant in mutants:
        path = tree / "dispatch_engine" / "lua" / mutant["file"]
        original = path.read_text()
        if original.count(mutant["search"]) != 1:
            sys.exit(f"lua mutant {mutant['why']!r}: its search text is not in {path.name} once")
        path.write_text(original.replace(mutant["search"], mutant["replace"]))
        try:
            caught = run(pytest_command(LUA_TESTS), tree, timeout)[0] != 0
        except subprocess.TimeoutExpired:
            caught = True
        finally:
            path.write_text(original)
        killed += caught
        if not caught:
            survivors.append(f"{mutant['file']}: {mutant['why']}")
        print(f"  lua {'killed  ' if caught else 'SURVIVED'} {mutant['file']}: {mutant['why']}")
    work = OUT / "lua"
    work.mkdir(parents=True, exist_ok=True)
    (work / "survivors.txt").write_text("\n".join(survivors))
    return {"killed": killed, "survived": len(survivors), "incompetent": 0,
            "baseline_s": round(seconds, 1)}  # fmt: skip


def run_all(names: list[str], tree: Path) -> None:
    for name in names:
        print(f"{name}: running", flush=True)
        started = time.monotonic()
        result = run_lua(tree) if name == "lua" else run_module(name, TARGETS[name], tree)
        killed, survived = int(str(result["killed"])), int(str(result["survived"]))
        result["score"] = round(100 * killed / (killed + survived), 1) if killed else 0.0
        result["minutes"] = round((time.monotonic() - started) / 60, 1)
        kill_leftovers(tree)
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(f"{name}: {json.dumps(result)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"of {', '.join(TARGETS)}, lua (default: all)")
    names = parser.parse_args().names or [*TARGETS, "lua"]
    unknown = set(names) - {*TARGETS, "lua"}
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    OUT.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the copy on a stop
    with tempfile.TemporaryDirectory(prefix="dispatch-mutate-") as tmp, shared_servers():
        tree = Path(tmp)
        copy_tree(tree)
        try:
            run_all(names, tree)
        finally:
            kill_leftovers(tree)


@contextlib.contextmanager
def shared_servers() -> Iterator[None]:
    """One PostgreSQL and Redis for every test run of every mutant (tests/conftest.py takes
    them from DISPATCH_TEST_*_URL): each run then skips an initdb and two server starts,
    seconds per mutant on a loaded machine. Each run still gets a fresh database of its own
    and a flushed Redis. They live outside the copy, so `kill_leftovers` spares them."""
    if os.environ.get("DISPATCH_TEST_DATABASE_URL") and os.environ.get("DISPATCH_TEST_REDIS_URL"):
        yield
        return
    from dispatch_engine.embedded import EmbeddedServers

    with (
        tempfile.TemporaryDirectory(prefix="dispatch-mutate-db-") as data,
        EmbeddedServers(Path(data)) as servers,
    ):
        os.environ["DISPATCH_TEST_DATABASE_URL"] = servers.urls.database_url
        os.environ["DISPATCH_TEST_REDIS_URL"] = servers.urls.redis_url
        yield


if __name__ == "__main__":
    main()
