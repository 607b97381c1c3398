"""CPU accounting on a shared machine: load waits, per-process meters, what others used.

- `wait_for_quiet` (the 1-minute load average) and `wait_until_idle` (busy CPU over a few
  seconds), before a run;
- `Cpu`: CPU seconds of some processes (or process trees); `CpuMeters`: named meters read
  together, plus `others`, the machine's busy time that none of them used.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable
from pathlib import Path


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(threshold: float, max_wait_s: float, poll_s: float = 30.0) -> str:
    """Wait (up to max_wait_s) until the 1-minute load average is at most `threshold`."""
    start = time.monotonic()
    load = load_average()
    while load > threshold and time.monotonic() - start < max_wait_s:
        print(
            f"load average {load:.2f} > {threshold}: another job runs; waiting {poll_s:.0f} s…",
            file=sys.stderr,
        )
        time.sleep(poll_s)
        load = load_average()
    waited = time.monotonic() - start
    verdict = "quiet" if load <= threshold else "still busy, measured anyway"
    return f"1-min load average {load:.2f} at start ({verdict}; waited {waited:.0f} s)"


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (every core, every process) so far."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def wait_until_idle(max_share: float, max_wait_s: float, sample_s: float = 3.0) -> float:
    """Wait until the whole machine used at most `max_share` of a core over `sample_s`.

    Between runs nothing of ours is busy, so this is other people's work (a test suite)."""
    start = time.monotonic()
    while True:
        busy = machine_busy()
        time.sleep(sample_s)
        share = (machine_busy() - busy) / sample_s
        if share <= max_share or time.monotonic() - start > max_wait_s:
            return share
        print(
            f"the machine is busy ({share:.0%} of a core over {sample_s:.0f} s): waiting 20 s…",
            file=sys.stderr,
        )
        time.sleep(20)


class Cpu:
    """CPU seconds (user + system, reaped children included) of some processes, or trees."""

    def __init__(self, pids: Iterable[int | None], tree: bool = False) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in pids if pid]
        self.tree = tree

    def seconds(self) -> float:
        import psutil

        if not self.procs:
            return float("nan")
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                family = [proc, *(proc.children(recursive=True) if self.tree else [])]
                for p in family:
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        total += t.user + t.system + t.children_user + t.children_system
        return total


class CpuMeters:
    """Named `Cpu` meters read together; `others` = the machine's busy time minus theirs."""

    def __init__(self, meters: dict[str, Cpu]) -> None:
        self.meters = meters
        self._start: dict[str, float] = {}
        self._busy = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._start = {name: m.seconds() for name, m in self.meters.items()}
        self._busy = machine_busy()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per meter since start(), plus `others` and `wall` (seconds)."""
        cpu = {name: m.seconds() - self._start[name] for name, m in self.meters.items()}
        ours = sum(v for v in cpu.values() if v == v)  # NaN: a meter without a process
        cpu["others"] = max(0.0, machine_busy() - self._busy - ours)  # ticks can dip below 0
        cpu["wall"] = time.monotonic() - self._t0
        return cpu
