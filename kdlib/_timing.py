"""Wall time with its context: how long a stretch (a notebook, `make reproduce`) took, what it trained, and how
much of the CPU it really had (steal and unaccounted time from /proc/stat). A time on this shared host is
evidence only with that context (docs/reproduce.md)."""
from __future__ import annotations

import os
import statistics
import time

from kdlib._names import EMBEDDED_SIZES
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


def host_probe(steps: int = 30, warmup: int = 3) -> float:
    """Seconds per step of a fixed workload, the median of `steps` after `warmup` untimed ones: one training
    step (forward, backward, AdamW) of a randomly initialised student-s-shaped Llama with the embedded
    197-token vocabulary, on a fixed batch of 32 × 48 tokens, with one CPU thread as every run uses. The
    same code does the same work every time, so its time measures the host alone: a `make reproduce` time
    divided by it compares across days and machines, where the steal and accounting counters of
    `host_condition` miss a slowdown the guest cannot see (docs/reproduce.md). About 1-2 s."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    size, vocab = EMBEDDED_SIZES["student-s"], 197
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = LlamaConfig(vocab_size=vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                             num_attention_heads=size.heads, num_key_value_heads=size.heads,
                             intermediate_size=size.intermediate, max_position_embeddings=64)
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
