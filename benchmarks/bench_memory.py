"""Page faults and kernel time per training step, with and without `kdlib._models.keep_freed_memory`.

    python benchmarks/bench_memory.py [--steps 12] [--method kd]

glibc hands large freed blocks back to the kernel (an mmap per tensor over its threshold, a trimmed heap
top), so every forward and backward pass faults the same memory in again, page by page, and the kernel
zeroes every page. `keep_freed_memory` (called by every Trainer) sets glibc's mmap threshold to its
maximum and turns trimming off, so the next pass reuses mapped memory. The two settings are read by glibc
at allocation time, so each runs in a process of its own (KDLIB_KEEP_FREED_MEMORY=0 / 1), the two
alternating `--rounds` times on the same steps (embedded teacher and student-s shapes, random weights,
the same batch and seed).

Page-fault counts do not depend on what else the machine does; kernel (sys) and wall seconds do, and on
this shared CPU a step is now and then frozen for 0.3-1 s, so seconds are reported as the per-step
minimum over the rounds, beside the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def child(args) -> None:
    """One process: warm-up step, then per-step faults, user, sys and wall seconds, as JSON on stdout."""
    import torch

    from kdlib._config import RunConfig
    from kdlib._models import EMBEDDED_SIZES, build_llama, keep_freed_memory
    from kdlib._samplers import build_sampler
    from kdlib._sources import build_source
    from kdlib._tasks.embedded import TaskSpec, generate_rows
    from kdlib._train import Trainer
    from kdlib._workload import embedded_tokenizer

    torch.set_num_threads(args.threads)
    tok = embedded_tokenizer()
    rows = generate_rows(TaskSpec("arith", n_train=512, seed=0), "train")
    cfg = RunConfig(method=args.method, batch_size=args.batch, steps=10_000, student_init="scratch",
                    student_data_fraction=1.0, max_new_tokens=args.tokens)
    r = cfg.resolved
    t = Trainer(cfg, student=build_llama(EMBEDDED_SIZES["student-s"], tok, 0),
                teacher=build_llama(EMBEDDED_SIZES["teacher"], tok, 1),
                tokenizer=tok, source=build_source(r["source"], rows, 0, 1.0, steps=cfg.steps),
                sampler=build_sampler(r["sampler"], **r["sampler_params"]) if r["sampler"] else None,
                run_dir=f"/tmp/kdlib-bench-memory-{os.getpid()}", progress=False)
    t.step()  # warm-up: the first step maps the memory either way
    steps = []
    for _ in range(args.steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        t.step()
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        steps.append({"faults": r1.ru_minflt - r0.ru_minflt, "user": r1.ru_utime - r0.ru_utime,
                      "sys": r1.ru_stime - r0.ru_stime, "wall": wall})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kept": keep_freed_memory(), "steps": steps, "peak_mb": peak_mb}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="kd")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    runs = {"0": [], "1": []}
    for _ in range(args.rounds):
        for keep in runs:  # alternate, so both settings see the same stretch of machine
            out = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], check=True,
                                 capture_output=True, text=True,
                                 env={**os.environ, "KDLIB_KEEP_FREED_MEMORY": keep})
            runs[keep].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.method}: batch {args.batch}, {args.steps} steps x {args.rounds} rounds per setting, "
          f"{args.threads} threads; embedded teacher + student-s shapes")
    print(f"{'glibc default / kept':<22} {'faults/step':>12} {'sys s/step':>12} {'user s/step':>12} "
          f"{'wall s/step*':>12} {'peak RSS MB':>12}")
    summary = {}
    for keep, label in (("0", "default (returned)"), ("1", "keep_freed_memory")):
        steps = [s for run in runs[keep] for s in run["steps"]]
        per_step = list(zip(*[run["steps"] for run in runs[keep]]))  # step i over the rounds
        min_wall = sum(min(s["wall"] for s in reps) for reps in per_step) / len(per_step)
        row = {"faults": statistics.median(s["faults"] for s in steps),
               "sys": statistics.median(s["sys"] for s in steps),
               "user": statistics.median(s["user"] for s in steps),
               "wall_min": min_wall, "wall_median": statistics.median(s["wall"] for s in steps),
               "peak": max(run["peak_mb"] for run in runs[keep]),
               "kept": all(run["kept"] for run in runs[keep])}
        summary[keep] = row
        print(f"{label:<22} {row['faults']:12.0f} {row['sys']:12.3f} {row['user']:12.3f} "
              f"{row['wall_min']:12.3f} {row['peak']:8.0f}   (median wall {row['wall_median']:.3f})")
    print("* wall: step by step the fastest of the rounds, averaged over the steps")
    a, b = summary["0"], summary["1"]
    if not b["kept"]:
        print("keep_freed_memory is not in effect here (not glibc): nothing to compare")
        return
    ratio = a["wall_min"] / b["wall_min"] if b["wall_min"] else float("nan")
    print(f"default / kept: faults {a['faults'] / max(b['faults'], 1):.0f}x, "
          f"per-step-minimum wall {ratio:.2f}x; peak RSS {b['peak'] - a['peak']:+.0f} MB")


if __name__ == "__main__":
    main()
