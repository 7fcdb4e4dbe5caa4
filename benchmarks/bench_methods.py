"""Seconds per optimizer step of every method, relative to on-policy KD, measured in one run.

Same batch, same models (the embedded teacher and student-s shapes, random weights so nothing needs
training first), same maximum response length. Random models rarely emit EOS, so every sampled
response runs to `max_new_tokens`; switching rates of random pairs are not those of trained ones.

    python benchmarks/bench_methods.py [--quick]
"""
import argparse
import time

import torch

from kdlib.config import METHODS, RunConfig
from kdlib.models import EMBEDDED_SIZES, build_llama
from kdlib.samplers import build_sampler
from kdlib.sources import build_source
from kdlib.tasks.embedded import TaskSpec, generate_rows
from kdlib.train import Trainer
from kdlib.workload import embedded_tokenizer


def seconds_per_step(method, tok, rows, args) -> tuple[float, float]:
    cfg = RunConfig(method=method, batch_size=args.batch, steps=10_000, max_new_tokens=args.tokens,
                    student_data_fraction=0.5, student_init="scratch", eval_every=1000)
    r = cfg.resolved
    student = build_llama(EMBEDDED_SIZES["student-s"], tok, 0)
    teacher = build_llama(EMBEDDED_SIZES["teacher"], tok, 1).eval()
    sampler = build_sampler(r["sampler"], **r["sampler_params"]) if r["sampler"] else None
    t = Trainer(cfg, student=student, teacher=teacher, tokenizer=tok, sampler=sampler,
                source=build_source(r["source"], rows, 0, cfg.student_data_fraction, steps=cfg.steps),
                run_dir="/tmp/kdlib-bench-methods", progress=False)
    if method == "distillm":  # its probability starts at 0 and moves with the validation loss: time it at
        t.source.fraction = 0.5  # 0.5, like GKD's λ (fresh samples: the replay buffer is not yet full)
    t.step()  # warm-up
    t0 = time.perf_counter()
    fractions = [t.step()["teacher_fraction"] for _ in range(args.steps)]
    return (time.perf_counter() - t0) / args.steps, sum(fractions) / len(fractions)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    if args.quick:
        args.steps = 2
    torch.set_num_threads(2)
    tok = embedded_tokenizer()
    rows = generate_rows(TaskSpec("arith", n_train=512, seed=0), "train")
    rows = [{**r, "teacher_response": r["response"]} for r in rows]  # SeqKD cost = fixed-data cost
    results = {m: seconds_per_step(m, tok, rows, args) for m in METHODS}
    ref = results["onpolicy"][0]
    print(f"batch {args.batch}, max_new_tokens {args.tokens}, {args.steps} timed steps each; "
          f"teacher {EMBEDDED_SIZES['teacher']}, student {EMBEDDED_SIZES['student-s']}")
    print(f"{'method':<10} {'s/step':>8} {'x on-policy':>12} {'teacher tokens':>15}")
    for m, (s, frac) in results.items():
        print(f"{m:<10} {s:8.3f} {s / ref:12.2f} {frac:15.2f}")


if __name__ == "__main__":
    main()
