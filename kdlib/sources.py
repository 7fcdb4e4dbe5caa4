"""Data sources: where the sequences of one training step come from (SPEC §1).

    data      the fixed rows with their ground-truth responses (SFT, supervised KD)
    seqkd     the fixed rows with the teacher's responses, generated once and cached (SeqKD)
    sampler   the token-level sampler run on the step's prompts (on-policy, ImitKD, SKD, SWITCH, AdaSwitch)
    mix       GKD: each step uses the sampler with probability λ, else the fixed rows
    distillm  DistiLLM: adaptive student-output probability, with a replay buffer of past rollouts

All randomness comes from `torch.Generator`s owned by the source, whose states are checkpointed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from kdlib.data import SequenceBatch, encode_batch, encode_prompts


@dataclass
class StepContext:
    """What a source needs to build a micro-batch."""

    tokenizer: object
    student: torch.nn.Module
    teacher: Optional[torch.nn.Module]
    sampler: object  # from kdlib.samplers.build_sampler, or None
    max_new_tokens: int
    sample_temperature: float
    device: torch.device
    keep_teacher_logits: bool = True
    rank: int = 0  # this process
    world: int = 1  # number of processes: each takes its own slice of the step's rows


class RowPicker:
    """Draws micro-batches of row indices: a fresh permutation per epoch, from its own generator."""

    def __init__(self, n_rows: int, seed: int):
        self.n_rows, self.gen = n_rows, torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(n_rows, generator=self.gen), 0

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n_rows:
                self.order, self.pos = torch.randperm(self.n_rows, generator=self.gen), 0
            take = min(k - len(out), self.n_rows - self.pos)
            out += self.order[self.pos:self.pos + take].tolist()
            self.pos += take
        return out

    def state_dict(self):
        return {"gen": self.gen.get_state(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, s):
        self.gen.set_state(s["gen"])
        self.order, self.pos = s["order"], s["pos"]


class Source:
    """Base: `batch(ctx, k)` returns a SequenceBatch of k sequences and a label of what was used."""

    uses_sampler = False

    def __init__(self, rows: list[dict], seed: int, rank: int = 0):
        self.rows, self.picker = rows, RowPicker(len(rows), seed)
        # sampling differs per process; the row order (and the coins below) are shared by all
        self.sample_gen = torch.Generator().manual_seed(seed + 1 + 1000 * rank)

    def batch(self, ctx: StepContext, k: int) -> tuple[SequenceBatch, str]:
        raise NotImplementedError

    def take_rows(self, ctx, k) -> list[dict]:
        """This process's k rows out of the k * world rows every process draws in the same order,
        so N processes see exactly the rows one process would see at N times the batch."""
        idx = self.picker.take(k * ctx.world)[ctx.rank * k:(ctx.rank + 1) * k]
        return [self.rows[i] for i in idx]

    def fixed(self, ctx, k, field_name="response") -> SequenceBatch:
        rows = self.take_rows(ctx, k)
        return encode_batch(ctx.tokenizer, [r["prompt"] for r in rows], [r[field_name] for r in rows],
                            ctx.max_new_tokens).to(ctx.device)

    def sampled(self, ctx, k) -> SequenceBatch:
        rows = self.take_rows(ctx, k)
        prompt_ids, prompt_mask = encode_prompts(ctx.tokenizer, [r["prompt"] for r in rows], ctx.device)
        tok = ctx.tokenizer
        rollout = ctx.sampler.sample(
            ctx.student, ctx.teacher, prompt_ids, prompt_mask, max_new_tokens=ctx.max_new_tokens,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            temperature=ctx.sample_temperature, generator=self.sample_gen,
            return_teacher_logits=ctx.keep_teacher_logits and ctx.teacher is not None)
        self.last_stats = rollout.stats
        return SequenceBatch(rollout.input_ids, rollout.attention_mask, rollout.response_mask,
                             rollout.prompt_length, rollout.teacher_logits, rollout.from_teacher)

    def state_dict(self):
        return {"picker": self.picker.state_dict(), "sample_gen": self.sample_gen.get_state()}

    def load_state_dict(self, s):
        self.picker.load_state_dict(s["picker"])
        self.sample_gen.set_state(s["sample_gen"])


class DataSource(Source):
    def batch(self, ctx, k):
        return self.fixed(ctx, k), "data"


class SeqKDSource(Source):
    """Rows whose ``teacher_response`` field was filled once by the teacher (see workload.seqkd_rows)."""

    def batch(self, ctx, k):
        return self.fixed(ctx, k, "teacher_response"), "seqkd"


class SamplerSource(Source):
    uses_sampler = True

    def batch(self, ctx, k):
        return self.sampled(ctx, k), "sampler"


class MixSource(Source):
    """GKD: with probability λ (student_data_fraction) a step uses sampled data. The coin is drawn
    once per optimizer step (`new_step`), from its own generator, never from global RNG."""

    uses_sampler = True

    def __init__(self, rows, seed, student_data_fraction: float, rank: int = 0):
        super().__init__(rows, seed, rank)
        self.fraction = student_data_fraction
        self.coin_gen = torch.Generator().manual_seed(seed + 2)
        self.use_sampler = False

    def new_step(self):
        self.use_sampler = bool(torch.rand((), generator=self.coin_gen) < self.fraction)

    def batch(self, ctx, k):
        return (self.sampled(ctx, k), "sampler") if self.use_sampler else (self.fixed(ctx, k), "data")

    def state_dict(self):
        return {**super().state_dict(), "coin_gen": self.coin_gen.get_state()}

    def load_state_dict(self, s):
        super().load_state_dict(s)
        self.coin_gen.set_state(s["coin_gen"])


@dataclass
class ReplayBuffer:
    """Past student rollouts, reused instead of sampling anew (DistiLLM's efficiency device)."""

    capacity: int = 1000
    items: list = field(default_factory=list)

    def add(self, batch: SequenceBatch):
        for i in range(batch.input_ids.shape[0]):
            row = batch.response_mask[i]
            self.items.append((batch.input_ids[i].cpu(), batch.attention_mask[i].cpu(), row.cpu(),
                               batch.prompt_length))
        del self.items[: max(0, len(self.items) - self.capacity)]

    def draw(self, k: int, gen: torch.Generator, device) -> SequenceBatch:
        idx = torch.randint(len(self.items), (k,), generator=gen).tolist()
        picked = [self.items[i] for i in idx]
        return _stack_rollouts(picked, device)


def _stack_rollouts(items, device) -> SequenceBatch:
    """Re-pad stored sequences (each with its own prompt length) to one shared layout."""
    P = max(p for *_, p in items)
    N = max(ids.shape[0] - p for ids, _, _, p in items)
    B = len(items)
    ids = torch.zeros((B, P + N), dtype=torch.long)
    att = torch.zeros((B, P + N), dtype=torch.long)
    resp = torch.zeros((B, P + N), dtype=torch.bool)
    for b, (i_, a_, r_, p) in enumerate(items):
        n = i_.shape[0] - p
        ids[b, P - p:P + n], att[b, P - p:P + n], resp[b, P - p:P + n] = i_, a_, r_
    return SequenceBatch(ids.to(device), att.to(device), resp.to(device), P)


class DistiLLMSource(Source):
    """DistiLLM (Ko et al. 2024) adaptive student-generated outputs (SGO): the probability of using
    student outputs starts at 0 and rises by `increment` whenever the held-out loss did not improve
    (`report_validation`), up to `max_fraction`; a sampled step reuses a stored rollout from the replay
    buffer with probability `replay_ratio` instead of sampling anew. The exact schedule constants of the
    paper are parameters here."""

    uses_sampler = True

    def __init__(self, rows, seed, rank=0, increment=0.1, max_fraction=1.0, replay_ratio=0.5,
                 capacity=1000):
        super().__init__(rows, seed, rank)
        self.fraction, self.increment, self.max_fraction = 0.0, increment, max_fraction
        self.replay_ratio, self.buffer = replay_ratio, ReplayBuffer(capacity)
        self.coin_gen = torch.Generator().manual_seed(seed + 3)
        self.best_val, self.mode = float("inf"), "data"

    def report_validation(self, loss: float):
        if loss >= self.best_val:
            self.fraction = min(self.max_fraction, self.fraction + self.increment)
        self.best_val = min(self.best_val, loss)

    def new_step(self):
        u = torch.rand(2, generator=self.coin_gen).tolist()
        if u[0] >= self.fraction:
            self.mode = "data"
        else:
            self.mode = "replay" if (self.buffer.items and u[1] < self.replay_ratio) else "sampler"

    def batch(self, ctx, k):
        if self.mode == "data":
            return self.fixed(ctx, k), "data"
        if self.mode == "replay":
            return self.buffer.draw(k, self.coin_gen, ctx.device), "replay"
        b = self.sampled(ctx, k)
        self.buffer.add(b)
        return b, "sampler"

    def state_dict(self):
        return {**super().state_dict(), "coin_gen": self.coin_gen.get_state(), "fraction": self.fraction,
                "best_val": self.best_val, "buffer": self.buffer.items}

    def load_state_dict(self, s):
        super().load_state_dict(s)
        self.coin_gen.set_state(s["coin_gen"])
        self.fraction, self.best_val, self.buffer.items = s["fraction"], s["best_val"], s["buffer"]


SOURCE_CLASSES = {"data": DataSource, "seqkd": SeqKDSource, "sampler": SamplerSource,
                  "distillm": DistiLLMSource}


def build_source(name: str, rows: list[dict], seed: int, student_data_fraction: float = 0.5,
                 rank: int = 0) -> Source:
    if name == "mix":
        return MixSource(rows, seed, student_data_fraction, rank)
    if name not in SOURCE_CLASSES:
        raise ValueError(f"unknown data source {name!r}; choose one of {sorted(SOURCE_CLASSES) + ['mix']}")
    return SOURCE_CLASSES[name](rows, seed, rank)
