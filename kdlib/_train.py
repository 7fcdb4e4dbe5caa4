"""The training loop: one loop for every method (docs/methods.md §1, §4), on accelerate.

One optimizer step:
  1. the source draws every micro-batch of the step (sampling runs here, without gradients);
  2. the response tokens of the whole step are counted, summed over processes: that is the denominator;
  3. per micro-batch: student forward → per-position divergence (B, N) → masked sum / step tokens → backward;
  4. clip, optimizer step, scheduler step; a metrics row; a checkpoint when due.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kdlib import _checkpoints as checkpoints
from kdlib import _divergences as divergences
from kdlib._config import RunConfig
from kdlib._data import SequenceBatch
from kdlib._io import atomic_path
from kdlib._loss import Forwards, sequence_loss_sum
from kdlib._models import keep_freed_memory
from kdlib._sources import Source, StepContext, TeacherLogitCache

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss: the run stops, the last good checkpoint stays."""


def micro_batch_loss_sum(student, teacher, batch: SequenceBatch, cfg: RunConfig,
                         forwards: Forwards) -> tuple[torch.Tensor, int]:
    """`kdlib._loss.sequence_loss_sum` with the divergence, its parameters, the loss temperature and the chunk
    size that `cfg` resolves to."""
    r = cfg.resolved
    return sequence_loss_sum(student, teacher, batch, r["divergence"], r["divergence_params"],
                             temperature=cfg.loss_temperature, chunk_size=cfg.chunk_size or None, forwards=forwards)


def lr_lambda(cfg: RunConfig):
    """Linear warm-up over `warmup_steps`, then cosine decay to 10 % of the peak: transformers'
    `get_cosine_with_min_lr_schedule_with_warmup`, read one step ahead (warm-up and length + 1), so that the
    first optimizer step already trains at lr / (warm-up + 1) where transformers' own first step has lr 0.
    Equal, bit for bit, to the closed form kdlib used before (tests/test_train.py)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # only to obtain the lr factor
    factor = get_cosine_with_min_lr_schedule_with_warmup(
        probe, num_warmup_steps=cfg.warmup_steps + 1, num_training_steps=cfg.steps + 1, min_lr_rate=0.1).lr_lambdas[0]
    return lambda step: factor(step + 1)


def _own_accelerator_settings(mixed_precision: str) -> None:
    """accelerate keeps one state per process. Another library's trainer earlier in this process (TRL's GKD
    trainer runs in bf16 by default) leaves it at other settings, which a new Accelerator refuses to change;
    like transformers' Trainer, a kdlib run then resets it (the process group, if any, is kept)."""
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


@dataclass
class TrainState:
    step: int = 0
    metrics: list = field(default_factory=list)
    forwards: Forwards = field(default_factory=Forwards)
    seconds: float = 0.0


class Trainer:
    """Runs `cfg` on given models and rows; `run_dir` receives metrics, checkpoints and provenance."""

    def __init__(self, cfg: RunConfig, *, student, teacher, tokenizer, source: Source, sampler,
                 run_dir, accelerator=None, progress: bool = True, on_eval=None, log_with=None,
                 mixed_precision: str = "no"):
        from accelerate import Accelerator

        self.cfg, self.tokenizer, self.source, self.progress = cfg, tokenizer, source, progress
        keep_freed_memory()  # CPU: tensors reuse mapped heap memory instead of faulting it in every step
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_with = list(log_with or cfg.report_to) or None  # tracker names or GeneralTracker objects
        if accelerator is None:
            _own_accelerator_settings(mixed_precision)
        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(), log_with=log_with,
                                              mixed_precision=mixed_precision,
                                              project_dir=str(self.run_dir))
        if log_with:
            self.acc.init_trackers("kdlib", config={k: str(v) for k, v in cfg.to_dict().items()})
        self.on_eval = on_eval
        torch.manual_seed(cfg.seed)
        if cfg.gradient_checkpointing:  # recompute activations in backward; sampling (eval mode) is unaffected
            if hasattr(student, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name goes in v6
                student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if getattr(student, "enable_input_require_grads", None) and cfg.lora_rank:
                student.enable_input_require_grads()  # frozen embeddings + LoRA: keep the graph alive
        trainable = [p for p in student.parameters() if p.requires_grad]  # LoRA: the adapters only
        opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # The scheduler is not passed to accelerate: its wrapper steps a scheduler once per process on
        # every step (it assumes per-process batches), which would run warm-up and decay N times too
        # fast with N processes. Here one optimizer step is one scheduler step, whatever the world size.
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
        self.student, self.opt = self.acc.prepare(student, opt)
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            self.teacher = teacher.to(self.acc.device)
        self.ctx = StepContext(tokenizer, self.acc.unwrap_model(self.student), self.teacher, sampler,
                               cfg.max_new_tokens, cfg.sample_temperature, self.acc.device,
                               rank=self.acc.process_index, world=self.acc.num_processes,
                               teacher_cache=TeacherLogitCache() if cfg.cache_teacher_logits and self.teacher
                               is not None and divergences.needs_teacher(cfg.resolved["divergence"]) else None)
        self.state = TrainState()

    # ---- one optimizer step -------------------------------------------------------------------
    def draw_step(self) -> tuple[list[SequenceBatch], str, dict]:
        cfg, stats = self.cfg, {}
        self.source.new_step()
        n_micro = cfg.grad_accum_steps
        if cfg.micro_batch_size_resolved % self.acc.num_processes:
            raise ValueError(f"micro-batch {cfg.micro_batch_size_resolved} does not split over "
                             f"{self.acc.num_processes} processes")
        per_process = cfg.micro_batch_size_resolved // self.acc.num_processes
        batches, used = [], None
        self.student.eval()
        with torch.no_grad():
            for _ in range(n_micro):
                b, used = self.source.batch(self.ctx, per_process)
                if used == "sampler":
                    stats = _merge_stats(stats, self.source.last_stats)
                    self.state.forwards.add_rollout(self.source.last_stats)
                elif b.stats:  # fixed rows whose teacher logits the cache computed now
                    self.state.forwards.add_rollout(b.stats)
                batches.append(b)
        self.student.train()
        return batches, used, stats

    def global_tokens(self, batches) -> int:
        local = torch.tensor(sum(int(b.response_mask.sum()) for b in batches), device=self.acc.device)
        return int(self.acc.reduce(local, reduction="sum")) if self.acc.num_processes > 1 else int(local)

    def accumulate_gradients(self, batches: list[SequenceBatch]) -> float:
        """Backward over every micro-batch; gradients = d(sum of losses / step tokens)."""
        total = self.global_tokens(batches)
        loss_value = 0.0
        for i, b in enumerate(batches):
            last = i == len(batches) - 1
            with (_nullcontext() if last else self.acc.no_sync(self.student)):
                loss_sum, _ = micro_batch_loss_sum(self.student, self.teacher, b, self.cfg,
                                                   self.state.forwards)
                # DDP averages gradients over processes; multiply back so the result is sum / total.
                self.acc.backward(loss_sum / max(total, 1) * self.acc.num_processes)
            loss_value += float(loss_sum.detach()) / max(total, 1)
        if self.acc.num_processes > 1:
            loss_value = float(self.acc.reduce(torch.tensor(loss_value, device=self.acc.device), "sum"))
        return loss_value

    def step(self) -> dict:
        t0 = time.perf_counter()
        batches, used, stats = self.draw_step()
        loss_value = self.accumulate_gradients(batches)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value} at step {self.state.step + 1}; stopped, "
                                     f"{self._kept_checkpoint()}")
        # the norm is measured even without clipping (max_norm inf): a finite loss can still give an
        # inf/NaN gradient, which the optimizer step would write into the weights
        grad_norm = float(self.acc.clip_grad_norm_(self.student.parameters(), self.cfg.max_grad_norm or math.inf))
        if not math.isfinite(grad_norm):
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"gradient norm is {grad_norm} at step {self.state.step + 1} (loss {loss_value:.4g}); "
                f"stopped before the update, {self._kept_checkpoint()}")
        lr = self.sched.get_last_lr()[0]  # the rate this update uses
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.state.step += 1
        seconds = time.perf_counter() - t0
        self.state.seconds += seconds
        total = sum(int(b.response_mask.sum()) for b in batches)
        row = {"step": self.state.step, "loss": loss_value, "tokens": total, "source": used,
               "lr": lr, "grad_norm": grad_norm, "seconds": seconds,
               "tokens_per_s": total / seconds if seconds else 0.0,
               "teacher_fraction": stats.get("teacher_fraction", 0.0),
               "switch_rate": stats.get("switch_rate", float("nan"))}
        self.state.metrics.append(row)
        if self.acc.trackers:
            self.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["step"])
        return row

    def _kept_checkpoint(self) -> str:
        """What a stopped run leaves to resume from, said truthfully."""
        found = checkpoints.list_checkpoints(checkpoints.checkpoint_dir(self))
        return (f"the last good checkpoint {found[-1]} is kept" if found else
                "no checkpoint was written yet (set checkpoint_every to keep one)")

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainState:
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.state.step, disable=not self.progress,
                   desc=f"{cfg.method} {cfg.task}", leave=False)
        while self.state.step < cfg.steps:
            try:
                row = self.step()
            except NonFiniteLossError:
                self.write_metrics()  # the curve up to the failure stays readable
                bar.close()
                raise
            # refresh=False: the bar redraws at most every `mininterval` seconds (TQDM_MININTERVAL); a forced
            # redraw per step is one output message per step, which papermill stores and re-saves
            bar.set_postfix(loss=f"{row['loss']:.3f}", teacher=f"{row['teacher_fraction']:.2f}",
                            tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
            bar.update(1)
            if cfg.eval_every and self.state.step % cfg.eval_every == 0 and self.on_eval:
                self.on_eval(self)
            if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                checkpoints.save(self)
                self.write_metrics()  # the curve so far is readable while the run goes on
        bar.close()
        self.write_metrics()
        if self.acc.trackers:
            self.acc.end_training()
        return self.state

    def write_metrics(self):
        if not self.acc.is_main_process or not self.state.metrics:
            return
        with atomic_path(self.run_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            keys = list(dict.fromkeys(k for r in self.state.metrics for k in r))
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.state.metrics)


def _merge_stats(acc: dict, new: dict) -> dict:
    """Token-weighted teacher fraction and row-weighted switch rate over a step's micro-batches."""
    n_tok, n_rows = int(new.get("new_tokens", 0)), len(new.get("switch_positions", [])) or 1
    out = {"_tok": acc.get("_tok", 0) + n_tok, "_rows": acc.get("_rows", 0) + n_rows,
           "_teacher": acc.get("_teacher", 0.0) + float(new.get("teacher_fraction", 0.0)) * n_tok,
           "_switched": acc.get("_switched", 0.0) + float(torch.as_tensor(
               new.get("switched", [False])).float().sum())}
    out["teacher_fraction"] = out["_teacher"] / max(out["_tok"], 1)
    if "switched" in new or "switch_rate" in acc:
        out["switch_rate"] = out["_switched"] / out["_rows"]
    return out


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
