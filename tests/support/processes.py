"""Run `dispatch-engine` as real processes, as users do, and read what they print."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from .helpers import poll_until

BIN = Path(sys.executable).parent / "dispatch-engine"
_RUNNING: set[Proc] = set()  # started and not yet stopped or killed by their test


def kill_leftovers() -> None:
    """SIGKILL what a failed test left running, so it cannot load the machine for hours."""
    for proc in list(_RUNNING):
        if proc.proc.poll() is None:
            os.killpg(proc.proc.pid, signal.SIGKILL)  # its own session: children go too
            proc.proc.wait(10)
        proc._out.close()
    _RUNNING.clear()


class Proc:
    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN), *args],
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _RUNNING.add(self)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, pattern: str, within: float = 60.0) -> re.Match[str]:
        def printed() -> re.Match[str] | None:
            match = re.search(pattern, self.output())
            if match is None and self.proc.poll() is not None:
                raise AssertionError(f"process exited {self.proc.returncode}:\n{self.output()}")
            return match

        return poll_until(
            printed, within, lambda: f"{pattern!r} not printed within {within} s:\n{self.output()}"
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()
        _RUNNING.discard(self)

    def stop(self, within: float = 30.0) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(within)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                    output = self.output()
                    raise AssertionError(f"did not stop within {within} s:\n{output}") from None
        finally:
            self._out.close()
            _RUNNING.discard(self)
        return self.proc.returncode


def without_urls(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL")} | {
        "PATH": os.environ["PATH"]
    }


def run_cli(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a short `dispatch-engine` command to completion (call it via asyncio.to_thread)."""
    return subprocess.run(
        [str(BIN), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def run_cli_input(
    args: list[str], env: Mapping[str, str], stdin: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
