"""Peak extra memory and time of kdlib's chunked divergences vs the same formulas under plain autograd.

    python benchmarks/bench_divergences.py            # 4096 positions (8 x 512), V = 32000, ~2-3 min
    python benchmarks/bench_divergences.py --quick    # 1024 positions, a smoke run

For every divergence, two modes each run forward + backward on student logits that require grad:
- unchunked: log_softmax of the whole (N, V) logits, then the row formula of kdlib.divergences, all under
  plain autograd (what a straightforward implementation does; it saves (N, V) intermediates for backward);
- chunked: kdlib's public function (custom autograd function, chunk_size default or --chunk-size).

Memory is measured on CPU as the growth of the process's peak resident set size (VmHWM in
/proc/self/status, reset through /proc/self/clear_refs) over the resident size once the inputs exist, in a
fresh subprocess per measurement so no allocator cache carries over (torch's CPU allocations are invisible
to tracemalloc). The workers run with MALLOC_MMAP_THRESHOLD_=1 MiB so that glibc serves every block of
1 MiB or more by mmap and returns it on free: RSS then follows the live tensors instead of glibc's heap
retention, which otherwise adds up to a few blocks to the chunked peak (--default-malloc to see it).
"beyond grad" subtracts the (N, V) gradient of the student logits, which both modes must return. With CUDA available (--device cuda) it uses
torch.cuda.max_memory_allocated instead.

Time is the faster of two runs (the machine is shared, so runs are noisy), forward + backward.
--threads defaults to 1: on a 2-core machine shared with other work, a second intra-op thread mostly waits
at barriers and makes every timing erratic. All ratios in the table come from one run of this script.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

NAMES = ["fkl", "rkl", "jsd", "tvd", "sfkl", "srkl", "ce"]


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _unchunked(name, student, other):
    """The same row formulas on the whole (N, V) block under plain autograd: saves (N, V) intermediates."""
    import torch

    from kdlib.divergences import _RULES

    rule = _RULES[name]
    V = student.shape[-1]
    logq = torch.log_softmax(student.float(), -1).view(-1, V)  # (N, V)
    target = torch.log_softmax(other.float(), -1).view(-1, V) if rule.uses_teacher else other.reshape(-1)
    return rule.value(logq, target, False, **rule.params)


def _chunked(name, student, other, chunk_size):
    from kdlib.divergences import per_token_loss

    key = "teacher_logits" if name != "ce" else "target_ids"
    return per_token_loss(name, student, chunk_size=chunk_size, **{key: other})


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    B, T, V = args.batch, args.positions // args.batch, args.vocab
    device = torch.device(args.device)
    student = (torch.randn(B, T, V, generator=gen) * 2).to(device, dtype).requires_grad_()
    if args.name == "ce":
        other = torch.randint(0, V, (B, T), generator=gen).to(device)
    else:
        other = (torch.randn(B, T, V, generator=gen) * 2).to(device, dtype)

    def step():
        if args.mode == "unchunked":
            values = _unchunked(args.name, student, other)
        else:
            values = _chunked(args.name, student, other, args.chunk_size)
        values.sum().backward()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak()
        base = _status_mib("VmRSS")
    times = []
    for i in range(2):
        student.grad = None
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if i == 0:  # memory of the first run, while its gradient is still alive
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _status_mib("VmHWM")
            extra = peak - (base / 2**20 if cuda else base)
    grad_mib = student.numel() * student.element_size() / 2**20
    return {"extra_mib": extra, "grad_mib": grad_mib, "time_s": min(times)}


def run_worker(args, name, mode) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--name", name, "--mode", mode,
           "--positions", str(args.positions), "--batch", str(args.batch), "--vocab", str(args.vocab),
           "--threads", str(args.threads), "--dtype", args.dtype, "--device", args.device]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not args.default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"worker {name}/{mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args) -> None:
    from kdlib.divergences import default_chunk_size

    import torch

    rows = args.chunk_size or default_chunk_size(args.vocab, torch.device(args.device))
    print(f"N = {args.positions} positions ({args.batch} x {args.positions // args.batch}), V = {args.vocab}, "
          f"{args.dtype} logits, {args.threads} thread(s), device {args.device}, chunk = {rows} positions "
          f"({rows * args.vocab * 4 / 2**20:.0f} MiB float32 block)")
    malloc = "glibc default" if args.default_malloc else "MALLOC_MMAP_THRESHOLD_=1MiB"
    print(f"peak extra RSS (MiB) over the inputs ({malloc}); 'beyond grad' excludes the (N, V) logits gradient")
    header = (f"{'div':5} {'unchunked':>10} {'chunked':>8} {'ratio':>6} | {'beyond grad: unch.':>18} "
              f"{'chunk.':>7} {'ratio':>6} | {'time unch.':>10} {'chunk.':>7} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for name in args.names:
        u, c = run_worker(args, name, "unchunked"), run_worker(args, name, "chunked")
        ug, cg = u["extra_mib"] - u["grad_mib"], c["extra_mib"] - c["grad_mib"]
        print(f"{name:5} {u['extra_mib']:10.0f} {c['extra_mib']:8.0f} {c['extra_mib'] / u['extra_mib']:6.3f} | "
              f"{ug:18.0f} {cg:7.0f} {cg / ug:6.3f} | "
              f"{u['time_s']:9.2f}s {c['time_s']:6.2f}s {c['time_s'] / u['time_s']:6.2f}", flush=True)
    print("targets: memory ratio <= 0.125, time ratio <= 1.2")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1024 positions instead of 4096")
    ap.add_argument("--positions", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8, help="B; positions are split as B x (positions / B)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--chunk-size", type=int, default=None, help="positions per chunk (default: kdlib's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's dynamic mmap threshold")
    ap.add_argument("--names", nargs="+", default=NAMES, choices=NAMES)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["unchunked", "chunked"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.positions = 1024
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        main(args)
