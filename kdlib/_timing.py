"""Wall time with its context: how long a stretch (a notebook, `make reproduce`) took, what it trained, and how
much of the CPU it really had (steal and unaccounted time from /proc/stat). A time on this shared host is
evidence only with that context (docs/reproduce.md)."""
from __future__ import annotations

import os
import time

from kdlib._runcache import finished_runs, run_seconds, shipped_among


def cpu_ticks(stat: str = "/proc/stat") -> list[int] | None:
    """All cores' clock ticks so far (user, nice, system, idle, iowait, irq, softirq, steal, ...) from
    /proc/stat's first line; None where there is no /proc/stat."""
    try:
        with open(stat) as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def host_condition(before, after, seconds: float, cores: int | None = None, hz: int | None = None) -> str:
    """How much of the CPU a timed stretch really had, from two `cpu_ticks` readings: the share the
    hypervisor stole (steal), and the share of wall time × cores that the kernel accounted at all (a
    healthy machine: steal about 0 %, accounted about 100 %). A time measured on a starved VM says so."""
    if not before or not after or len(before) < 8 or len(after) < 8 or seconds <= 0:
        return ""
    cores = cores or os.cpu_count() or 1
    hz = hz or (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
    delta = [a - b for a, b in zip(after, before)]
    total = sum(delta[:8])  # guest and guest_nice are already counted in user and nice
    if total <= 0:
        return ""
    return (f"host CPU: {100 * delta[7] / total:.0f} % stolen by the hypervisor, "
            f"{100 * total / (seconds * cores * hz):.0f} % of wall time × cores accounted")


class Stopwatch:
    """How long a stretch took and what it trained: `make reproduce` starts one before the first notebook and
    writes its `elapsed()` to figures/reproduce_times.md (wall minutes, runs trained vs copied from the
    shipped runs, the runs' own time, the host's condition)."""

    def __init__(self):
        self.start, self.runs_before, self.ticks = time.time(), finished_runs(), cpu_ticks()

    def elapsed(self) -> dict:
        """Since the start: wall seconds, the runs trained (by any process: the notebooks' kernels) and those
        copied from the shipped runs, the trained runs' own time, and the host's CPU condition
        (`host_condition`, "" where unknown)."""
        seconds = time.time() - self.start
        new = finished_runs() - self.runs_before
        shipped = shipped_among(new)
        return {"seconds": seconds, "trained": len(new - shipped), "shipped": len(shipped),
                "trained_seconds": run_seconds(new - shipped),
                "host": host_condition(self.ticks, cpu_ticks(), seconds)}
