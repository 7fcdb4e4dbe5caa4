"""Seconds per optimizer step of every method, relative to on-policy KD, with where the step's time goes, and
kdlib's on-policy GKD step against TRL's GKD trainer. Everything measured side by side in one run.

    python benchmarks/bench_methods.py            # 5 repetitions, 8 steps each
    python benchmarks/bench_methods.py --quick    # 3 repetitions, 2 steps each (make bench QUICK=1)

Same batch, same models (the embedded teacher and student-s shapes, random weights so nothing needs training
first), same maximum response length. Random models rarely emit EOS, so every sampled response runs to
`max_new_tokens`; switching rates of random pairs are not those of trained ones. Each sampler runs at its
default block size.

Side by side: every method's trainer is built first; then each repetition times `--steps` steps of every
method in turn, so a stall of this shared host lands in one repetition of one method. A ratio to on-policy is
taken within a repetition and printed as the median over repetitions [min, max].

Where the time goes: after the whole steps, each repetition also runs the step's parts one at a time on
the same trainer, from the source state the whole steps started from (so GKD's and DistiLLM's coins pick the
same mix of sampled and fixed steps), each timed alone: drawing the step's sequences (`Trainer.draw_step`:
the rollout, or the data), the loss with its backward (`accumulate_gradients`: student forward and backward,
and a teacher forward unless the sampler kept the teacher's logits), and the update (clip, AdamW, scheduler). "step /
parts" is the whole step over the sum of its parts (target <= 1.1: the loop adds nothing of its own).

TRL (when `trl` is installed: `pip install kdlib[trl]`): TRL's `GKDTrainer` with lmbda 1 on the same models,
prompts, batch and token count, in its default configuration (gradient checkpointing on, which turns its
generation cache off) and with gradient checkpointing off (KV cache on), against kdlib's GKD with
student_data_fraction 1 (the same algorithm). Its steps are timed by a callback, `--steps` per repetition.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdlib._config import METHODS, RunConfig  # noqa: E402
from kdlib._data import encode_batch  # noqa: E402
from kdlib._models import EMBEDDED_SIZES, build_llama  # noqa: E402
from kdlib._samplers import build_sampler  # noqa: E402
from kdlib._sources import build_source  # noqa: E402
from kdlib._tasks.embedded import TaskSpec, generate_rows  # noqa: E402
from kdlib._train import Trainer  # noqa: E402
from kdlib._workload import embedded_tokenizer  # noqa: E402


def make_trainer(cfg: RunConfig, tok, rows, run_dir: str) -> Trainer:
    r = cfg.resolved
    student = build_llama(EMBEDDED_SIZES["student-s"], tok, 0)
    teacher = build_llama(EMBEDDED_SIZES["teacher"], tok, 1).eval()
    sampler = build_sampler(r["sampler"], **r["sampler_params"]) if r["sampler"] else None
    t = Trainer(cfg, student=student, teacher=teacher, tokenizer=tok, sampler=sampler,
                source=build_source(r["source"], rows, 0, cfg.student_data_fraction, steps=cfg.steps),
                run_dir=run_dir, progress=False)
    if cfg.method == "distillm":  # its probability starts at 0 and moves with the validation loss: time it at
        t.source.fraction = 0.5  # 0.5, like GKD's λ (fresh samples: the replay buffer is not yet full)
    return t


def method_config(method: str, args, **over) -> RunConfig:
    return RunConfig(**{"method": method, "batch_size": args.batch, "steps": 10_000, "max_new_tokens": args.tokens,
                        "student_data_fraction": 0.5, "student_init": "scratch", "eval_every": 1000, **over})


def time_steps(t: Trainer, n: int) -> tuple[float, float]:
    """Seconds per whole step over `n` steps, and the steps' mean teacher fraction."""
    t0 = time.perf_counter()
    fractions = [t.step()["teacher_fraction"] for _ in range(n)]
    return (time.perf_counter() - t0) / n, sum(fractions) / n


def time_parts(t: Trainer, n: int) -> dict:
    """Seconds per step of each part of the step, each timed alone, over `n` steps."""
    out = {"draw": 0.0, "loss+backward": 0.0, "update": 0.0}
    for _ in range(n):
        t0 = time.perf_counter()
        batches, _, _ = t.draw_step()
        t1 = time.perf_counter()
        t.accumulate_gradients(batches)
        t2 = time.perf_counter()
        t.acc.clip_grad_norm_(t.student.parameters(), t.cfg.max_grad_norm or math.inf)
        t.opt.step()
        t.sched.step()
        t.opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        for k, v in zip(out, (t1 - t0, t2 - t1, t3 - t2)):
            out[k] += v / n
    return out


def verdict(value: float, target: float) -> str:
    """'met', or by how much a ratio misses its target (an upper bound)."""
    return "met" if value <= target else f"missed by {value - target:.2f}"


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


@contextlib.contextmanager
def quiet():
    """TRL's advice, transformers' deprecation notes and the train summary, printed once per repetition."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def trl_trainer(tok, rows, args, out_dir: str, gradient_checkpointing: bool, max_steps: int):
    """TRL's GKDTrainer, lmbda 1 (every step on the student's samples), JSD(0.5), the bench's models."""
    import os

    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    hf_logging.set_verbosity_error()  # TRL's per-trainer advice and deprecation notes, once per repetition
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    chat = Dataset.from_list([{"messages": [{"role": "user", "content": r["prompt"]},
                                            {"role": "assistant", "content": r["response"]}]} for r in rows])
    cfg = GKDConfig(output_dir=out_dir, per_device_train_batch_size=args.batch, max_steps=max_steps, lmbda=1.0,
                    beta=0.5, max_new_tokens=args.tokens, temperature=1.0, learning_rate=1e-3, report_to=[],
                    use_cpu=True, bf16=False, save_strategy="no", logging_strategy="no", seed=0,
                    gradient_checkpointing=gradient_checkpointing, disable_tqdm=True)
    student = build_llama(EMBEDDED_SIZES["student-s"], tok, 0)
    teacher = build_llama(EMBEDDED_SIZES["teacher"], tok, 1).eval()
    with warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")  # trl.experimental announces itself
        return GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=chat, processing_class=tok)


def time_trl(trainer, n: int) -> float:
    """Seconds per TRL training step over `n` steps after one untimed step (the callback times each step)."""
    from transformers import TrainerCallback

    laps = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            laps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            laps[-1] = time.perf_counter() - laps[-1]

    trainer.add_callback(Clock())
    with warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        trainer.train()
    return sum(laps[1:]) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 repetitions of 2 steps (make bench QUICK=1)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="steps per repetition (default 8, 2 quick)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5, 3 quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-trl", action="store_true", help="skip the comparison with TRL's GKD trainer")
    args = ap.parse_args()
    steps = args.steps or (2 if args.quick else 8)
    reps = args.reps or (3 if args.quick else 5)
    torch.set_num_threads(args.threads)
    tok = embedded_tokenizer()
    rows = generate_rows(TaskSpec("arith", n_train=512, seed=0), "train")
    rows = [{**r, "teacher_response": r["response"]} for r in rows]  # SeqKD cost = fixed-data cost
    tmp = tempfile.mkdtemp(prefix="kdlib-bench-methods-")
    trainers = {m: make_trainer(method_config(m, args), tok, rows, f"{tmp}/{m}") for m in METHODS}
    # supervised KD with cache_teacher_logits, timed once its cache holds every row (a run's labelled rows are
    # read many times: summ's 100 about 48 times each in 150 steps); the fill, one forward per row, timed apart
    cached = trainers["kd, cached"] = make_trainer(method_config("kd", args, cache_teacher_logits=True), tok, rows,
                                                  f"{tmp}/kd-cached")
    t0 = time.perf_counter()
    for i in range(0, len(rows), args.batch):
        chunk = rows[i:i + args.batch]
        batch = encode_batch(tok, [r["prompt"] for r in chunk], [r["response"] for r in chunk], args.tokens)
        cached.ctx.teacher_cache.logits(cached.ctx, chunk, batch)
    fill = (time.perf_counter() - t0) / len(rows)
    for t in trainers.values():
        t.step()  # warm-up: allocations, first-call overheads
    # a method's steps per timing: at least `steps`, and enough for 0.25 s, so that a 16-ms step is not timed
    # against the timer's and the host's millisecond noise
    n_steps = {}
    for m, t in trainers.items():
        t0 = time.perf_counter()
        t.step()
        n_steps[m] = max(steps, math.ceil(0.25 / max(time.perf_counter() - t0, 1e-3)))
    whole = {m: [] for m in trainers}
    parts = {m: [] for m in trainers}
    fraction = {m: 0.0 for m in trainers}
    for _ in range(reps):
        sources = {}
        for m, t in trainers.items():
            sources[m] = copy.deepcopy(t.source.state_dict())  # the parts replay these steps' coins and rows
            seconds, frac = time_steps(t, n_steps[m])
            whole[m].append(seconds)
            fraction[m] += frac / reps
        for m, t in trainers.items():
            t.source.load_state_dict(sources[m])
            parts[m].append(time_parts(t, n_steps[m]))
    print(f"batch {args.batch}, max_new_tokens {args.tokens}, {reps} repetitions x {steps}+ steps (0.25 s at least), "
          f"{args.threads} thread(s); teacher {EMBEDDED_SIZES['teacher']}, student {EMBEDDED_SIZES['student-s']}")
    print("median over repetitions [min, max]; parts each timed alone, median s/step")
    print(f"{'method':<10} {'s/step':>20} {'x on-policy':>20} {'draw':>7} {'loss+bwd':>9} {'update':>7} "
          f"{'step / parts':>20} {'teacher tok':>11}")
    for m in trainers:
        ratio = [w / o for w, o in zip(whole[m], whole["onpolicy"])]
        over = [w / sum(p.values()) for w, p in zip(whole[m], parts[m])]
        med = {k: statistics.median(p[k] for p in parts[m]) for k in parts[m][0]}
        print(f"{m:<10} {spread(whole[m], '{:.3f}'):>20} {spread(ratio):>20} {med['draw']:7.3f} "
              f"{med['loss+backward']:9.3f} {med['update']:7.3f} {spread(over):>20} {fraction[m]:11.2f}")
    over_med = {m: statistics.median(w / sum(p.values()) for w, p in zip(whole[m], parts[m])) for m in trainers}
    worst = max(over_med, key=over_med.get)
    print(f"target step / parts <= 1.1: the largest median is {worst}'s, {over_med[worst]:.2f} "
          f"({verdict(over_med[worst], 1.1)})")
    kd_cache = [c / k for c, k in zip(whole["kd, cached"], whole["kd"])]
    print(f"supervised KD with cache_teacher_logits, its cache full: {spread(kd_cache)} x KD's step; filling it "
          f"cost {fill * 1000:.1f} ms per row (one forward of the row alone)")
    ada = [a / o for a, o in zip(whole["adaswitch"], whole["onpolicy"])]
    ada_skd = [a / s for a, s in zip(whole["adaswitch"], whole["skd"])]
    print(f"AdaSwitch step: {spread(ada)} x on-policy (target <= 1.2: {verdict(statistics.median(ada), 1.2)}), "
          f"{spread(ada_skd)} x SKD (target < 1: {verdict(statistics.median(ada_skd), 1.0)})")
    if args.no_trl:
        return
    try:
        import trl
    except ImportError:
        print("TRL: not installed (pip install kdlib[trl]); comparison skipped")
        return
    ours = make_trainer(method_config("gkd", args, student_data_fraction=1.0), tok, rows, f"{tmp}/gkd-l1")
    ours.step()
    trl_runs = {"TRL default (grad. checkpointing, no KV cache)": True, "TRL, KV cache on": False}
    times = {"kdlib": [], **{name: [] for name in trl_runs}}
    for rep in range(reps):  # a fresh TRL trainer per repetition: its first step is untimed, as ours was
        times["kdlib"].append(time_steps(ours, steps)[0])
        for i, (name, gc) in enumerate(trl_runs.items()):
            trainer = trl_trainer(tok, rows, args, f"{tmp}/trl-{rep}-{i}", gc, max_steps=steps + 1)
            times[name].append(time_trl(trainer, steps))
    print(f"\non-policy GKD (lmbda 1, JSD 0.5), kdlib vs trl {trl.__version__}: s/step, median [min, max]")
    print(f"{'kdlib':<50} {spread(times['kdlib'], '{:.3f}')}")
    for name in trl_runs:
        ratio = [k / t for k, t in zip(times["kdlib"], times[name])]
        print(f"{name:<50} {spread(times[name], '{:.3f}')}   kdlib / TRL {spread(ratio)} "
              f"(target <= 0.6: {verdict(statistics.median(ratio), 0.6)})")


if __name__ == "__main__":
    main()
