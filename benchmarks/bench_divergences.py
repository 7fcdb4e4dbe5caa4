"""Peak extra memory and time of kdlib's chunked divergences vs the same formulas under plain autograd.

    python benchmarks/bench_divergences.py            # 4096 positions (8 x 512), V = 32000, ~2-4 min
    python benchmarks/bench_divergences.py --quick    # 1024 positions, a smoke run

For every divergence, two modes each run forward + backward on student logits that require grad:
- unchunked: log_softmax of the whole (N, V) logits, then the row formula of kdlib._divergences, all under
  plain autograd (what a straightforward implementation does; it saves (N, V) intermediates for backward);
- chunked: kdlib's public function (custom autograd function, chunk_size default or --chunk-size).
With --hidden H the student logits come from hidden states (N, H) @ lm_head (V, H) instead: the unchunked
mode materialises the logits, the chunked one is per_token_loss_from_hidden (the logits never exist).

Memory is measured on CPU in a fresh subprocess per measurement, in two ways. "live": the peak of bytes
held by torch's CPU allocator, from the signed allocation records of torch.profiler(profile_memory=True)
summed in time order (torch's CPU allocations are invisible to tracemalloc). "RSS": the growth of the
process's peak resident set size (VmHWM in /proc/self/status, reset through /proc/self/clear_refs) over the
resident size once the inputs exist; it also counts freed blocks that glibc keeps in its heap. "beyond grad"
subtracts the gradients of the inputs that require grad (the (N, V) student logits, or hidden states
and lm_head), which both modes must return. With --device cuda it
uses torch.cuda.max_memory_allocated instead.

Time is forward + backward of the measured run, or the fastest of it and --repeats more runs. One run
per mode keeps the benchmark near two minutes; each run is a cold one for both modes alike.
--threads defaults to 1: on a 2-core machine shared with other work, a second intra-op thread mostly waits
at barriers and makes every timing erratic. All ratios in the table come from one run of this script.
"""

import argparse
import itertools
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

    from kdlib._divergences import _RULES

    rule = _RULES[name]
    V = student.shape[-1]
    logq = torch.log_softmax(student.float(), -1).view(-1, V)  # (N, V)
    target = torch.log_softmax(other.float(), -1).view(-1, V) if rule.uses_teacher else other.reshape(-1)
    return rule.value(logq, target, False, **rule.params)


def _chunked(name, student, other, chunk_size):
    from kdlib._divergences import per_token_loss

    key = "teacher_logits" if name != "ce" else "target_ids"
    return per_token_loss(name, student, chunk_size=chunk_size, **{key: other})


def _profiled_peak_mib(step) -> float:
    """Peak of live bytes held by torch's CPU allocator during step(), over the bytes live before it:
    the running sum of the profiler's signed allocation/free records, in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == e.device_type().CPU)
    return max(itertools.accumulate(n for _, n in records), default=0) / 2**20


def _chunked_from_hidden(name, hidden, weight, other, chunk_size):
    from kdlib._divergences import per_token_loss_from_hidden

    key = "teacher_logits" if name != "ce" else "target_ids"
    return per_token_loss_from_hidden(name, hidden, weight, chunk_size=chunk_size, **{key: other})


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    B, T, V = args.batch, args.positions // args.batch, args.vocab
    device = torch.device(args.device)
    if args.hidden:  # student logits = hidden @ weight.T; both get gradients
        hidden = torch.randn(B, T, args.hidden, generator=gen).to(device, dtype).requires_grad_()
        weight = (torch.randn(V, args.hidden, generator=gen) * 2 / args.hidden**0.5).to(device, dtype)
        weight.requires_grad_()
        leaves = [hidden, weight]
    else:
        student = (torch.randn(B, T, V, generator=gen) * 2).to(device, dtype).requires_grad_()
        leaves = [student]
    if args.name == "ce":
        other = torch.randint(0, V, (B, T), generator=gen).to(device)
    else:
        other = (torch.randn(B, T, V, generator=gen) * 2).to(device, dtype)

    def step():
        for leaf in leaves:
            leaf.grad = None
        if args.hidden and args.mode == "chunked":
            values = _chunked_from_hidden(args.name, hidden, weight, other, args.chunk_size)
        else:
            logits = hidden @ weight.T if args.hidden else student  # (B, T, V)
            if args.mode == "unchunked":
                values = _unchunked(args.name, logits, other)
            else:
                values = _chunked(args.name, logits, other, args.chunk_size)
        values.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step()
        live = rss = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        _reset_peak()
        base = _status_mib("VmRSS")
        t0 = time.perf_counter()
        live = _profiled_peak_mib(step)
        rss = _status_mib("VmHWM") - base
    times = [time.perf_counter() - t0]  # the profiler's bookkeeping is small next to (N, V) passes
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    grad_mib = sum(leaf.numel() * leaf.element_size() for leaf in leaves) / 2**20
    return {"live_mib": live, "rss_mib": rss, "grad_mib": grad_mib, "time_s": min(times)}


def run_worker(args, name, mode) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--name", name, "--mode", mode,
           "--positions", str(args.positions), "--batch", str(args.batch), "--vocab", str(args.vocab),
           "--threads", str(args.threads), "--dtype", args.dtype, "--device", args.device,
           "--repeats", str(args.repeats), "--hidden", str(args.hidden)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"worker {name}/{mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args) -> None:
    import torch

    from kdlib._divergences import default_chunk_size

    rows = args.chunk_size or default_chunk_size(args.vocab, torch.device(args.device))
    print(f"N = {args.positions} positions ({args.batch} x {args.positions // args.batch}), V = {args.vocab}, "
          f"{args.dtype} logits, {args.threads} thread(s), device {args.device}, chunk = {rows} positions "
          f"({rows * args.vocab * 4 / 2**20:.0f} MiB float32 block)")
    if args.hidden:
        print(f"student logits from hidden states (N, {args.hidden}) @ lm_head (V, {args.hidden}); chunked = "
              "per_token_loss_from_hidden")
    print("peak extra memory (MiB) over the inputs, forward + backward; 'live' = bytes held by torch's allocator,")
    print("'beyond grad' = live minus the gradients of the inputs that require grad (both modes return them),")
    print("'RSS' = growth of the process's peak resident set (includes glibc's retention of freed blocks)")
    header = (f"{'div':5} | {'live unch.':>10} {'chunk.':>6} {'ratio':>5} | {'beyond grad unch.':>17} {'chunk.':>6} "
              f"{'ratio':>5} | {'RSS unch.':>9} {'chunk.':>6} {'ratio':>5} | "
              f"{'time unch.':>10} {'chunk.':>6} {'ratio':>5}")
    print(header)
    print("-" * len(header))
    for name in args.names:
        u, c = run_worker(args, name, "unchunked"), run_worker(args, name, "chunked")
        ug, cg = u["live_mib"] - u["grad_mib"], c["live_mib"] - c["grad_mib"]
        print(f"{name:5} | {u['live_mib']:10.0f} {c['live_mib']:6.0f} {c['live_mib'] / u['live_mib']:5.3f} | "
              f"{ug:17.0f} {cg:6.0f} {cg / ug:5.3f} | "
              f"{u['rss_mib']:9.0f} {c['rss_mib']:6.0f} {c['rss_mib'] / u['rss_mib']:5.3f} | "
              f"{u['time_s']:9.2f}s {c['time_s']:5.2f}s {c['time_s'] / u['time_s']:5.2f}", flush=True)
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
    ap.add_argument("--repeats", type=int, default=0, help="extra timed runs; the fastest run counts")
    ap.add_argument("--hidden", type=int, default=0,
                    help="H > 0: student logits come from hidden (B, T, H) @ lm_head (V, H); the chunked mode "
                         "is per_token_loss_from_hidden, the unchunked one materialises the logits")
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
