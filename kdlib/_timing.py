"""Wall time with its context: how long a stretch (a notebook, `make reproduce`) took, what it trained, and how
much of the CPU it really had (steal and unaccounted time from /proc/stat). A time on this shared host is
evidence only with that context (docs/reproduce.md)."""
from __future__ import annotations

import os
import statistics
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


# Environment variables that choose the CPU kernels torch (ATen) and MKL run; unset, each picks the widest
# instruction set the CPU offers, and kernels of different widths sum in different orders
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def cpu_kernels() -> dict:
    """Which CPU kernels computed a run: torch's vectorised kernel set ('AVX2', 'AVX512', 'DEFAULT', ...)
    and any of `KERNEL_ENV` that was set. A run repeats bit for bit on the same kernels; on other kernels
    (another CPU, or these variables) its float sums round differently and the training drifts apart, by
    about the seeds' spread after a few hundred steps (docs/reproduce.md, "Same numbers on another machine")."""
    import torch

    return {"cpu_kernels": torch.backends.cpu.get_cpu_capability(),
            "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}}


def host_probe(steps: int = 30, warmup: int = 3) -> float:
    """Seconds per step of a fixed workload, the median of `steps` after `warmup` untimed ones: one training
    step (forward, backward, AdamW) of a randomly initialised Llama of student-s's shape when this was written
    (2 layers, width 64, 2 heads, MLP 128, a 197-token vocabulary), on a fixed batch of 32 × 48 tokens, with
    one CPU thread as every run uses. The shape is written out here, not read from the embedded sizes, so that
    the work stays the same when those change: its time measures the host (and the torch build), and a
    `make reproduce` time compares across days on one machine beside it, where the steal and accounting
    counters of `host_condition` miss a slowdown the guest cannot see (docs/reproduce.md). About 1 s; the
    caller's thread count and global random state are left as they were."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = 197
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = LlamaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)
        with torch.random.fork_rng(devices=[]):  # HF initialisation draws from the global generator
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
        ids = torch.randint(0, vocab, (32, 48), generator=torch.Generator().manual_seed(0))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        torch.set_num_threads(before)


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
