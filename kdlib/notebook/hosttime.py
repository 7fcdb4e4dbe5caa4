"""This execution's own time and what it trained: the run cache's accounting and the host's CPU condition
(steal, unaccounted time) from /proc/stat, for time.md."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def finished_runs() -> set:
    """Hashes of the runs whose result is in the cache (`.cache/kdlib/runs/<hash>/result.json`)."""
    from kdlib.workload import cache_root

    return {p.parent.name for p in (cache_root() / "runs").glob("*/result.json")}


def _cached_result(h: str) -> dict:
    """The result.json of the cached run `h`."""
    from kdlib.workload import cache_root

    return json.loads((cache_root() / "runs" / h / "result.json").read_text())


def shipped_among(hashes) -> set:
    """Those of `hashes` whose cached result was copied from kdlib's shipped runs, not trained here."""
    return {h for h in hashes if _cached_result(h).get("shipped")}


def run_seconds(hashes) -> float:
    """The sum of these cached runs' own wall times (`wall_seconds` in result.json: training, evaluation and
    saving), whichever invocation trained them; a run without the field counts 0."""
    return sum(float(_cached_result(h).get("wall_seconds") or 0) for h in hashes)


def trained_by(hashes, pid: int) -> set:
    """Those of `hashes` whose cached run was trained by process `pid` (result.json provenance `pid`)."""
    return {h for h in hashes if _cached_result(h).get("provenance", {}).get("pid") == pid}


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
    """How long a notebook took and how much of it was training: started in the first cell, `save` in the
    last writes `<out_dir>/<name>.md` (wall minutes, runs trained vs read from the cache, date, cores), so
    the README quotes a recorded time, and says whether the cache was cold."""

    def __init__(self):
        self.start, self.runs_before, self.ticks = time.time(), finished_runs(), cpu_ticks()

    def elapsed(self) -> dict:
        """Since the start: wall seconds, the runs trained (by any process; `trained_here`: by this one, e.g.
        this notebook's kernel while `make reproduce` runs another notebook beside it) and those copied from
        the shipped runs, and the host's CPU condition (`host_condition`, "" where unknown)."""
        seconds = time.time() - self.start
        new = finished_runs() - self.runs_before
        shipped = shipped_among(new)
        return {"seconds": seconds, "trained": len(new - shipped), "shipped": len(shipped),
                "trained_here": len(trained_by(new - shipped, os.getpid())),
                "trained_seconds": run_seconds(new - shipped),
                "host": host_condition(self.ticks, cpu_ticks(), seconds)}

    def save(self, out_dir, name: str = "time") -> str:
        e = self.elapsed()
        line = (f"{e['seconds'] / 60:.1f} min wall on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU core(s): "
                f"{e['trained_here']} run(s) trained (teachers, SFT warm-ups, methods)"
                + (f", {e['shipped']} copied from kdlib's shipped runs (teachers)" if e["shipped"] else "")
                + (f"; {e['trained'] - e['trained_here']} more finished meanwhile in other processes (notebooks "
                   f"run at once), not counted" if e["trained"] > e["trained_here"] else "")
                + ("; nothing was cached before (cold)" if not self.runs_before else
                   f"; {len(self.runs_before)} run(s) were in the cache before")
                + (f"; {e['host']}" if e["host"] else ""))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.md").write_text(line + "\n")
        return line
