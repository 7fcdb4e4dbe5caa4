"""Data sources: where the sequences of one training step come from (docs/methods.md §1).

    data      the fixed rows with their ground-truth responses (SFT, supervised KD)
    seqkd     the fixed rows with the teacher's responses, generated once and cached (SeqKD)
    sampler   the token-level sampler run on the step's prompts (on-policy, ImitKD, SKD, SWITCH, AdaSwitch)
    mix       GKD: each step uses the sampler with probability λ, else the fixed rows
    distillm  DistiLLM: adaptive student-output probability, with a replay buffer of past rollouts

All randomness comes from `torch.Generator`s owned by the source, whose states are checkpointed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from kdlib import _workload as workload
from kdlib._data import SequenceBatch, encode_batch, encode_prompts
from kdlib._evaluate import greedy_decode, sample_decode
from kdlib._loss import response_logits


@dataclass
class StepContext:
    """What a source needs to build a micro-batch."""

    tokenizer: object
    student: torch.nn.Module
    teacher: Optional[torch.nn.Module]
    sampler: object  # from kdlib._samplers.build_sampler, or None
    max_new_tokens: int
    sample_temperature: float
    device: torch.device
    keep_teacher_logits: bool = True
    rank: int = 0  # this process
    world: int = 1  # number of processes: each takes its own slice of the step's rows
    teacher_cache: Optional[TeacherLogitCache] = None  # cache_teacher_logits: fixed rows' teacher logits


class TeacherLogitCache:
    """The teacher's logits over each labelled row's response, from one forward of that row alone (so the
    same for the row in any batch, at any step, after a resume), kept for the run: a fixed-data step then
    costs no teacher forward. Keyed by the row's prompt and response. Past `max_bytes` (a task folder of
    40 000 rows and a 2 000-token vocabulary would need gigabytes) new rows are still computed alone, the
    same logits, but not kept: the run is the same, only slower."""

    def __init__(self, max_bytes: int = 2 * 2**30):
        self.rows: dict[tuple[str, str], torch.Tensor] = {}
        self.max_bytes, self.bytes = max_bytes, 0

    def logits(self, ctx: StepContext, rows: list[dict], batch: SequenceBatch) -> tuple[torch.Tensor, int]:
        """(B, N, V) teacher logits aligned with `batch`'s response columns (zeros past a row's response,
        where response_mask is False), and how many rows needed their forward now."""
        got, now = [], {}  # now: rows computed for this batch (kept in self.rows too while they fit)
        for r in rows:
            key = (r["prompt"], r["response"])
            if key not in self.rows and key not in now:
                alone = encode_batch(ctx.tokenizer, [r["prompt"]], [r["response"]], ctx.max_new_tokens).to(ctx.device)
                with torch.no_grad():
                    now[key] = response_logits(ctx.teacher, alone)[0].clone()  # (n_row, V), not a view
                size = now[key].numel() * now[key].element_size()
                if self.bytes + size <= self.max_bytes:
                    self.rows[key], self.bytes = now[key], self.bytes + size
            got.append(self.rows[key] if key in self.rows else now[key])
        P, N = batch.prompt_length, batch.input_ids.shape[1] - batch.prompt_length
        out = got[0].new_zeros((len(rows), N, got[0].shape[-1]))  # (B, N, V)
        for b, cached in enumerate(got):
            if int(batch.response_mask[b, P:].sum()) != cached.shape[0]:
                raise RuntimeError(f"teacher logit cache: row {b} has {int(batch.response_mask[b, P:].sum())} "
                                   f"response tokens in the batch and {cached.shape[0]} alone")
            out[b, :cached.shape[0]] = cached
        return out, len(now)


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

    def __init__(self, rows: list[dict], seed: int, rank: int = 0, labelled: list[dict] | None = None):
        self.seed, self.rows, self.picker = seed, rows, RowPicker(len(rows), seed)
        # the rows whose reference responses may be read (n_labelled); the prompts' order when all are
        self.labelled = rows if labelled is None else labelled
        self.label_picker = self.picker if labelled is None else RowPicker(len(labelled), seed + 4)
        # sampling differs per process; the row order (and the coins below) are shared by all
        self.sample_gen = torch.Generator().manual_seed(seed + 1 + 1000 * rank)

    # The hooks the run calls; a source overrides the ones it needs.
    wants_validation = False  # True: the run measures the held-out loss and calls report_validation

    def prepare(self, teacher, tokenizer, *, max_new_tokens: int, cache_key: dict, temperature: float = 1.0) -> None:
        """Once, after the models are loaded and before the first step (SeqKD: the teacher's responses).
        `cache_key` names the teacher and the data, for whatever the source builds once and caches;
        `temperature` is the run's sampling temperature (SeqKD draws the teacher's responses at it)."""

    def new_step(self) -> None:
        """Once per optimizer step, before its micro-batches (per-step coins: GKD's λ, DistiLLM's mode)."""

    def report_validation(self, loss: float) -> None:
        """The held-out validation loss: before the first step and at every evaluation (DistiLLM's schedule)."""

    def batch(self, ctx: StepContext, k: int) -> tuple[SequenceBatch, str]:
        raise NotImplementedError

    def take_rows(self, ctx, k, labelled: bool = False) -> list[dict]:
        """This process's k rows out of the k * world rows every process draws in the same order,
        so N processes see exactly the rows one process would see at N times the batch. `labelled`: from
        the rows whose reference responses may be read."""
        picker, rows = (self.label_picker, self.labelled) if labelled else (self.picker, self.rows)
        idx = picker.take(k * ctx.world)[ctx.rank * k:(ctx.rank + 1) * k]
        return [rows[i] for i in idx]

    def fixed(self, ctx, k, field_name="response") -> SequenceBatch:
        rows = self.take_rows(ctx, k, labelled=field_name == "response")
        batch = encode_batch(ctx.tokenizer, [r["prompt"] for r in rows], [r[field_name] for r in rows],
                             ctx.max_new_tokens).to(ctx.device)
        if ctx.teacher_cache is not None and field_name == "response":
            batch.teacher_logits, filled = ctx.teacher_cache.logits(ctx, rows, batch)
            batch.stats = {"teacher_forwards": filled}
        return batch

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
        return rollout  # a Rollout is a SequenceBatch

    def state_dict(self):
        out = {"picker": self.picker.state_dict(), "sample_gen": self.sample_gen.get_state()}
        if self.label_picker is not self.picker:
            out["label_picker"] = self.label_picker.state_dict()
        return out

    def load_state_dict(self, s):
        self.picker.load_state_dict(s["picker"])
        self.sample_gen.set_state(s["sample_gen"])
        if "label_picker" in s:
            self.label_picker.load_state_dict(s["label_picker"])


class DataSource(Source):
    def batch(self, ctx, k):
        return self.fixed(ctx, k), "data"


class SeqKDSource(Source):
    """The rows with the teacher's responses (SeqKD data): generated in `prepare`, once per teacher, data,
    temperature and (when sampled) seed, cached under cache/seqkd, then read like fixed rows. One response per
    prompt, drawn from the teacher at the run's `sample_temperature` (1.0, the default: MiniLLM's and DistiLLM's
    SeqKD data, sampled with top-k 0, top-p 1.0, temperature 1.0) from a generator seeded by the run's seed;
    temperature 0 takes the teacher's greedy response instead. Rows that already carry a ``teacher_response``
    are used as they are."""

    SEED_OFFSET = 5  # the data's generator: seed + 5, apart from the source's other generators (seed + 0 ... 4)

    def prepare(self, teacher, tokenizer, *, max_new_tokens: int, cache_key: dict, temperature: float = 1.0) -> None:
        if all("teacher_response" in r for r in self.rows):
            return
        rows, prompts = self.rows, [r["prompt"] for r in self.rows]
        key = {**cache_key, "n": len(rows), "max_new_tokens": max_new_tokens}
        if temperature > 0:  # greedy data keeps the key it had when SeqKD was always greedy
            key.update(temperature=temperature, seed=self.seed)

        def build(d: Path):
            if temperature > 0:
                outs = sample_decode(teacher, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     temperature=temperature, seed=self.seed + self.SEED_OFFSET)
            else:
                outs = greedy_decode(teacher, tokenizer, prompts, max_new_tokens=max_new_tokens)
            (d / "rows.jsonl").write_text("".join(
                json.dumps({**r, "teacher_response": o or "."}) + "\n" for r, o in zip(rows, outs)))

        d = workload.cached_dir("seqkd", key, build)
        self.rows = [json.loads(line) for line in (d / "rows.jsonl").read_text().splitlines()]

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

    def __init__(self, rows, seed, student_data_fraction: float, rank: int = 0, labelled=None):
        super().__init__(rows, seed, rank, labelled)
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
    """Past student rollouts, reused instead of sampling anew (DistiLLM's efficiency device): a
    first-in-first-out store of `capacity` sequences, drawn from without replacement."""

    capacity: int = 1000
    items: list = field(default_factory=list)

    def add(self, batch: SequenceBatch):
        for i in range(batch.input_ids.shape[0]):
            row = batch.response_mask[i]
            self.items.append((batch.input_ids[i].cpu(), batch.attention_mask[i].cpu(), row.cpu(),
                               batch.prompt_length))
        del self.items[: max(0, len(self.items) - self.capacity)]

    @property
    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def draw(self, k: int, gen: torch.Generator, device) -> SequenceBatch:
        if k > len(self.items):
            raise ValueError(f"replay buffer holds {len(self.items)} sequences, {k} asked for")
        idx = torch.randperm(len(self.items), generator=gen)[:k].tolist()
        return _stack_rollouts([self.items[i] for i in idx], device)


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
    """DistiLLM's adaptive student-generated outputs (SGO) with a replay buffer (Ko et al. 2024, §3.2
    and Alg. 1; constants from the authors' scripts: initial probability 0, step 0.1, loss margin 0.1,
    capacity 1000).

    A step uses student outputs with probability `fraction` (else the fixed data). `fraction` starts at
    `initial_fraction` and rises by `increment` (to at most 1) whenever the held-out validation loss
    reported through `report_validation` is at least `loss_margin` above the reference loss, which is
    then moved to it (the first report, before training, sets the reference). Of the student-output
    steps, a share 1 − step/steps samples afresh and the rest replays stored rollouts, drawn without
    replacement; until the buffer is full, every student-output step samples afresh."""

    uses_sampler = True
    wants_validation = True

    def __init__(self, rows, seed, rank=0, *, steps: int, initial_fraction=0.0, increment=0.1,
                 loss_margin=0.1, capacity=1000, labelled=None):
        super().__init__(rows, seed, rank, labelled)
        self.steps, self.increment, self.loss_margin = steps, increment, loss_margin
        self.fraction, self.buffer = initial_fraction, ReplayBuffer(capacity)
        self.coin_gen = torch.Generator().manual_seed(seed + 3)  # shared by all processes
        self.reference_loss, self.step, self.mode = None, 0, "data"

    def report_validation(self, loss: float):
        if self.reference_loss is None:
            self.reference_loss = loss
        elif loss >= self.reference_loss + self.loss_margin:
            self.fraction = min(1.0, self.fraction + self.increment)
            self.reference_loss = loss

    def new_step(self):
        u = float(torch.rand((), generator=self.coin_gen))
        fresh = self.fraction * (1 - self.step / self.steps)
        self.step += 1
        if u < fresh or (u < self.fraction and not self.buffer.full):
            self.mode = "sampler"
        else:
            self.mode = "replay" if u < self.fraction else "data"

    def batch(self, ctx, k):
        if self.mode == "data":
            return self.fixed(ctx, k), "data"
        if self.mode == "replay":
            return self.buffer.draw(k, self.sample_gen, ctx.device), "replay"
        b = self.sampled(ctx, k)
        self.buffer.add(b)
        return b, "sampler"

    def state_dict(self):
        return {**super().state_dict(), "coin_gen": self.coin_gen.get_state(), "fraction": self.fraction,
                "reference_loss": self.reference_loss, "step": self.step, "buffer": self.buffer.items}

    def load_state_dict(self, s):
        super().load_state_dict(s)
        self.coin_gen.set_state(s["coin_gen"])
        self.fraction, self.reference_loss, self.step = s["fraction"], s["reference_loss"], s["step"]
        self.buffer.items = s["buffer"]


SOURCE_CLASSES = {"data": DataSource, "seqkd": SeqKDSource, "sampler": SamplerSource,
                  "distillm": DistiLLMSource}


def build_source(name: str, rows: list[dict], seed: int, student_data_fraction: float = 0.5,
                 rank: int = 0, steps: int = 0, labelled: list[dict] | None = None) -> Source:
    """The data source `name` over `rows`; `steps` (the run's optimizer steps) paces DistiLLM's replay;
    `labelled` (default: all of `rows`) are the rows whose reference responses fixed-data steps read."""
    if name == "mix":
        return MixSource(rows, seed, student_data_fraction, rank, labelled)
    if name == "distillm":
        if steps < 1:
            raise ValueError("the distillm source needs the run's number of optimizer steps (steps >= 1)")
        return DistiLLMSource(rows, seed, rank, steps=steps, labelled=labelled)
    if name not in SOURCE_CLASSES:
        raise ValueError(f"unknown data source {name!r}; choose one of {sorted(SOURCE_CLASSES) + ['mix']}")
    return SOURCE_CLASSES[name](rows, seed, rank, labelled)
