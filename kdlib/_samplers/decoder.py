"""The lockstep decoder: student and teacher advance one token per step, both KV-cached.

Every token-level sampler (docs/methods.md §3) is this loop plus a small policy that decides, per row and per step,
who emits the token. Layout of a rollout (the same as `kdlib._data`):

    columns   0 … P-1                 P … P+N-1
    input_ids prompt (left-padded)  | response … eos pad pad      (pad after a row's EOS)
    mask      1 on real prompt      | 1 up to and including EOS
    response  False                 | True up to and including EOS   (from lengths, so pad == eos is fine)

One step t (t counted from 0 inside the response):
    q_t, p_t = student / teacher log-probabilities for column P+t    (B, V), untempered: one log_softmax
                                                                     of both, shared by draw and rule
    y_s ~ q_t, y_t ~ p_t  (tempered; temperature 0 = argmax)         drawn from the explicit generator
    emits = policy.decide(t, q_t, p_t, y_s)                          decisions use untempered q_t, p_t
    token = where(emits, y_t, y_s); feed `token` to both caches      one forward per model per step

Teacher and student logits may differ in width inside one tokenizer family (Qwen2.5: 152064 vs 151936):
decisions and draws use the shared id prefix [:, :min(Vs, Vt)], renormalised (as `kdlib._divergences`).

Draft-and-verify (`block` = k > 1, `_decode_blocks`) runs rounds instead of steps; in one round, per row:
    the student feeds the row's last emitted token, then drafts y_0 … y_{k-1} ~ q on its own cache
    the teacher reads [last emitted token, y_0 … y_{k-2}] in ONE forward: p_0 … p_{k-1}
    the rule runs position by position (the same `decide`, the same untempered q_j, p_j); at a row's first
    teacher position j the row gets y_t ~ p_j and its round ends; each row keeps its own length
Rejected drafts stay in both caches with attention mask 0 on their columns, and later tokens get explicit
position ids that continue the row's real count, so every kept token sees exactly its row's real prefix.
"""
from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from functools import partial
from typing import Optional, Sequence, Union

import torch

from kdlib._data import SequenceBatch, position_ids
from kdlib._divergences import _warn_width_once

Tensor = torch.Tensor
EosIds = Union[int, Sequence[int], None]


Rollout = SequenceBatch
"""Sequences written by a sampler: a `kdlib._data.SequenceBatch`, with `from_teacher` and `stats` set (and
`teacher_logits` when asked for), so a training step reads a rollout as it is."""


# ------------------------------------------------------------------------------------------------------
# Drawing a token: a pure function of (logits, generator, temperature, top_p, top_k).


def draw_tokens(logits: Tensor, generator: torch.Generator, temperature: float = 1.0,
                top_p: float = 1.0, top_k: int = 0, *, log_probs: bool = False) -> Tensor:
    """One token id per row of `logits` (n, V): argmax if temperature == 0, else a draw from
    softmax(logits / temperature), optionally restricted to the top_k ids and the top_p nucleus.
    `log_probs=True` promises the rows are already log-probabilities (log_softmax output): the same draw,
    one pass cheaper at temperature 1."""
    if temperature == 0:
        return logits.argmax(-1)
    if log_probs and temperature == 1.0 and top_k == 0 and top_p == 1.0:
        return _inverse_cdf(logits.float().exp(), generator)
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (n, 1)
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # mass before this id already exceeds top_p; keeps >= 1 id
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -torch.inf))
    return _inverse_cdf(logits.softmax(-1), generator)


def _inverse_cdf(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One id per row of `probs` (n, V), by inverse CDF: one uniform per row. torch.multinomial draws one
    exponential per vocabulary entry, which costs more than a small model's forward step on CPU."""
    # (n, V), summed in float64 on every device: CUDA's float32 cumsum would drift over 150k ids and skip tail
    # ids. CPU already accumulates float32 in float64, so rounding back keeps its float32 draws bit for bit.
    cdf = probs.double().cumsum(-1).to(probs.dtype)
    # drawn on the generator's own device (a CPU generator cannot fill a CUDA tensor), then moved
    u = torch.rand((probs.shape[0], 1), generator=generator,
                   device=generator.device if generator is not None else probs.device).to(probs.device)
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first id with cdf > u: never a p = 0 id
    return token.clamp_(max=probs.shape[-1] - 1).squeeze(-1)  # (n,)


@contextmanager
def _eval_mode(*models):
    """Sample with dropout off (dropout would also draw from global RNG); restore the modes after."""
    models = [m for m in models if m is not None]
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(models, was_training):
            m.train(flag)


class _CachedModel:
    """A causal LM advanced one token per step on its own KV cache; counts its forward calls."""

    def __init__(self, model, prompt_ids: Tensor, prompt_mask: Tensor):
        self.model, self.forwards = model, 0
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                    use_cache=True, logits_to_keep=1)
        self.cache, self.logits, self.forwards = _cache_of(out), out.logits[:, -1], 1  # (B, V)
        self._cache_arg = _cache_argument(model)

    def step(self, token: Tensor, attention_mask: Tensor, positions: Tensor) -> None:
        out = self.model(input_ids=token[:, None], attention_mask=attention_mask,
                         position_ids=positions[:, None], use_cache=True, **{self._cache_arg: self.cache})
        self.cache, self.logits = _cache_of(out), out.logits[:, -1]  # (B, V)
        self.forwards += 1

    def read(self, tokens: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
        """Feed a block of tokens (B, w) in one forward; the logits after each, (B, w, V)."""
        out = self.model(input_ids=tokens, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                         **{self._cache_arg: self.cache})
        self.cache, self.logits = _cache_of(out), out.logits[:, -1]
        self.forwards += 1
        return out.logits

    def keep_rows(self, index: Tensor) -> None:
        """Keep only the batch rows `index` (positions in the current batch) in the cache and the logits."""
        self.cache.batch_select_indices(index)
        self.logits = self.logits[index]

    def drop_columns(self, n: int) -> None:
        """Forget the last `n` cache columns (drafts no row kept). crop(-n) removes n columns in every
        transformers release that has DynamicCache (a positive argument means a length only in 4.x)."""
        self.cache.crop(-n)


def _cache_argument(model) -> str:
    """The forward's name for the KV cache: `cache` (transformers >= 5.2x; `past_key_values` is deprecated
    there and goes in 5.40) or `past_key_values` (older releases and models that kept the old name)."""
    forward = getattr(model, "forward", model)
    try:
        return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def _cache_of(out):
    """The KV cache of a model output under its current name, without touching the deprecated alias."""
    cache = out.get("cache") if "cache" in out.keys() else None
    return cache if cache is not None else out.past_key_values


# ------------------------------------------------------------------------------------------------------
# The policy interface and the loop.


class Sampler:
    """A token-level sampler: `sample(...)` runs the lockstep decoder with this object's rule, or
    draft-and-verify when `block` > 1 (the same rule, a block of student drafts per teacher forward).

    Subclasses set `name`, `uses_student`, `uses_teacher` and implement `decide`; the rest is shared."""

    name = "?"
    uses_student = True
    uses_teacher = True
    block = 1
    """Draft-and-verify block: tokens the student drafts per teacher forward (1 = the lockstep decoder)."""

    def init_state(self, batch_size: int, device: torch.device | str) -> object:
        """Per-rollout state of the rule (e.g. AdaSwitch's window of distances)."""
        return None

    def decide(self, t: int | Tensor, student_logits: Tensor, teacher_logits: Tensor, student_token: Tensor,
               state: object, active: Optional[Tensor] = None) -> Tensor:
        """(B,) bool: True where the teacher emits token t. `student_logits` and `teacher_logits` are the
        untempered log-probabilities log q_t and log p_t (log_softmax over the shared id prefix, float32,
        (B, V)), so a rule may skip its own normalisation (`step_distance(..., log_probs=True)`); any rule
        written for raw logits still works on them, since softmax(log_softmax(z)) = softmax(z).

        `t` is an int in the lockstep decoder (every row at the same response position) and a (B,) long
        tensor under draft-and-verify (each row at its own). `active` ((B,) bool; None = every row) marks
        the rows whose position t is real: a rule with state must advance only those."""
        raise NotImplementedError

    def check_length(self, max_new_tokens: int) -> None:
        """Warn when the rule cannot act within `max_new_tokens` (AdaSwitch's window); the default: nothing."""

    def student_rows(self, state: object) -> Optional[Tensor]:
        """(B,) bool: the rows that may still get a student token; the decoders drop the others (and ended
        rows with them) from the student's batch. None, the default: every row, always."""
        return None

    def sample(self, student: torch.nn.Module | None, teacher: torch.nn.Module | None, prompt_ids: Tensor,
               prompt_mask: Tensor, *, max_new_tokens: int,
               eos_token_id: EosIds | str = "model", pad_token_id: int | str = "model",
               temperature: float = 1.0, top_p: float = 1.0,
               top_k: int = 0, generator: torch.Generator, return_teacher_logits: bool = False) -> Rollout:
        """Write a response to each left-padded prompt (prompt_ids, prompt_mask: (B, P)).

        Who writes each token follows this sampler's rule, decided on the untempered distributions.
        `temperature` (0 = greedy), `top_p` and `top_k` only shape the draw of a token; `top_k` here is the
        drawing filter, unrelated to SKD's own `top_k`. All randomness comes from `generator`: the same
        generator state gives the same rollout. Rows stop at EOS (any of `eos_token_id` if a list; None
        = never; "model", the default, = the models' generation config) or after `max_new_tokens`; padding
        uses `pad_token_id` (default: the models' pad id, else their EOS). Models are put in eval mode during
        sampling and restored."""
        _check_inputs(self, student, teacher, prompt_ids, prompt_mask, max_new_tokens, temperature, top_p,
                      top_k)
        self.check_length(max_new_tokens)
        eos_token_id, pad_token_id = _special_ids(student if self.uses_student else teacher, eos_token_id,
                                                  pad_token_id)
        kw = dict(max_new_tokens=max_new_tokens, eos=eos_token_id, pad=pad_token_id,
                  draw=partial(draw_tokens, generator=generator, temperature=temperature, top_p=top_p, top_k=top_k),
                  keep_teacher_logits=return_teacher_logits)
        with _eval_mode(student, teacher), torch.no_grad():  # no_grad, not inference_mode: the rollout
            if self.block == 1:  # feeds autograd later
                return _decode(self, student, teacher, prompt_ids, prompt_mask, **kw)
            return _decode_blocks(self, student, teacher, prompt_ids, prompt_mask, block=self.block, **kw)

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


def _vocab_width(model) -> Optional[int]:
    """The width of a model's logits without running it: its output embedding's rows, else config.vocab_size."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    width = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(width) if width else None


def _shared_width(student, teacher, s: Optional[_CachedModel], t_model: Optional[_CachedModel]) -> int:
    """The shared id prefix every draw and decision uses: the narrower of the two models' logits, counting
    a model that is passed but does not run (the teacher sampler's student, an on-policy rollout's teacher),
    so no token is drawn that the other model cannot read. One warning per width pair when they differ."""
    widths = {}
    for role, model, cached in (("student", student, s), ("teacher", teacher, t_model)):
        if cached is not None:
            widths[role] = cached.logits.shape[-1]
        elif model is not None and (width := _vocab_width(model)) is not None:
            widths[role] = width
    if len(widths) == 2 and widths["student"] != widths["teacher"]:
        _warn_width_once(widths["student"], widths["teacher"], where="samplers")
    return min(widths.values())


def _special_ids(model, eos, pad):
    """EOS and pad ids; those left at "model" are read from the model's generation config, else its config."""
    def from_model(key):
        for c in (getattr(model, "generation_config", None), model.config):
            if c is not None and getattr(c, key, None) is not None:
                return getattr(c, key)
        return None

    if eos == "model":
        eos = from_model("eos_token_id")
    if pad == "model":
        pad = from_model("pad_token_id")
        if pad is None:
            pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        if pad is None:
            raise ValueError("the model config names no pad or EOS id: pass pad_token_id")
    return eos, pad


def _check_inputs(sampler, student, teacher, ids, mask, max_new_tokens, temperature, top_p, top_k):
    if sampler.uses_student and student is None:
        raise ValueError(f"sampler {sampler.name!r} needs a student model, got None")
    if sampler.uses_teacher and teacher is None:
        raise ValueError(f"sampler {sampler.name!r} needs a teacher model, got None")
    if ids.dim() != 2 or ids.shape != mask.shape:
        raise ValueError(f"prompt_ids and prompt_mask must both be (B, P), got {tuple(ids.shape)} and "
                         f"{tuple(mask.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k (drawing filter) must be an int >= 0 (0 = off), got {top_k!r}")
    block = sampler.block
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"sampler {sampler.name!r}: block={block!r} must be an int >= 1 (1 = lockstep)")
    m = mask.long()
    if not bool((m[:, 1:] >= m[:, :-1]).all() & (m[:, -1] == 1).all()):
        raise ValueError("prompts must be left-padded (mask 0…0 1…1, ending in a real token); "
                         "set tokenizer.padding_side = 'left'")


def _is_eos(token: Tensor, eos: EosIds) -> Tensor:
    if eos is None:
        return torch.zeros_like(token, dtype=torch.bool)
    if isinstance(eos, int):
        return token == eos
    return torch.isin(token, torch.as_tensor(list(eos), device=token.device))


def _decode(policy: Sampler, student, teacher, prompt_ids, prompt_mask, *, max_new_tokens, eos, pad, draw,
            keep_teacher_logits) -> Rollout:
    start = time.perf_counter()
    B, P = prompt_ids.shape
    N, device = max_new_tokens, prompt_ids.device
    ids = prompt_ids.new_full((B, P + N), pad)
    ids[:, :P] = prompt_ids
    mask = torch.zeros((B, P + N), dtype=torch.long, device=device)
    mask[:, :P] = prompt_mask
    response = torch.zeros((B, N), dtype=torch.bool, device=device)
    from_teacher = torch.zeros((B, N), dtype=torch.bool, device=device)
    first_pos = prompt_mask.long().sum(1)  # (B,) position id of response token 0
    alive = torch.ones(B, dtype=torch.bool, device=device)
    # On a GPU "are all rows done?" is a host sync; ask every few steps. On CPU it is free: ask every step.
    check_every = 1 if device.type == "cpu" else 8

    s = _CachedModel(student, prompt_ids, prompt_mask) if policy.uses_student else None
    t_model = _CachedModel(teacher, prompt_ids, prompt_mask) if policy.uses_teacher else None
    tick = time.perf_counter()
    laps = [tick - start]  # prefill, then one wall time per decoding step (host time: see Rollout.stats)
    t_logits_buf = None
    if keep_teacher_logits and t_model is not None:
        t_logits_buf = t_model.logits.new_empty((B, N, t_model.logits.shape[-1]))  # (B, N, Vt)
    width = _shared_width(student, teacher, s, t_model)
    state = policy.init_state(B, device)
    rows = None  # the student's batch rows (ids), None = all B
    row_steps = torch.zeros(B, dtype=torch.long, device=device)

    run_student, n = s is not None, N
    for t in range(N):
        if t_logits_buf is not None:
            t_logits_buf[:, t] = t_model.logits
        if not run_student:  # teacher sampler, or AdaSwitch once every live row has switched
            token, emits = draw(t_model.logits[:, :width]), alive
        elif t_model is None:  # student sampler: the teacher never runs (its width still bounds the draw)
            token, emits = draw(s.logits[:, :width]), torch.zeros_like(alive)
        else:
            q = s.logits[:, :width]
            if rows is not None:  # rows the student let go read as the teacher: the rule sends them to it
                # on the GPU path a bfloat16 teacher meets a float32 student here: copy into the wider dtype
                wide = torch.promote_types(q.dtype, t_model.logits.dtype)
                q = t_model.logits[:, :width].to(wide).index_copy(0, rows, q.to(wide))
            # one normalisation of both (2B, V) untempered rows serves the draw and the rule
            log_qp = torch.cat([q, t_model.logits[:, :width]]).float().log_softmax(-1)
            y = draw(log_qp, log_probs=True)  # one call draws both proposals, (2B,)
            y_student, y_teacher = y[:B], y[B:]
            emits = policy.decide(t, log_qp[:B], log_qp[B:], y_student, state)
            token = torch.where(emits, y_teacher, y_student)
        token = torch.where(alive, token, pad)
        ids[:, P + t] = token
        mask[:, P + t] = alive
        response[:, t] = alive
        from_teacher[:, t] = emits & alive
        alive = alive & ~_is_eos(token, eos)
        if t == N - 1:
            break
        if (t + 1) % check_every == 0:
            if not bool(alive.any()):
                n = t + 1
                break
            if run_student and t_model is not None:
                rows = _let_go(policy, state, alive, s, rows)
                run_student = rows is None or len(rows) > 0
        step_mask, step_pos = mask[:, :P + t + 1], first_pos + t
        if run_student:
            if rows is None:
                s.step(token, step_mask, step_pos)
                row_steps += 1
            else:
                s.step(token[rows], step_mask[rows], step_pos[rows])
                row_steps[rows] += 1
        if t_model is not None:
            t_model.step(token, step_mask, step_pos)
        now = time.perf_counter()
        laps.append(now - tick)
        tick = now
    laps.append(time.perf_counter() - tick)  # the last step: draw and bookkeeping, no forward

    rollout = _finish(policy, ids, mask, response, from_teacher, t_logits_buf, P, n, s, t_model, row_steps, start)
    rollout.stats["prefill_seconds"], rollout.stats["step_seconds"] = laps[0], laps[1:]
    return rollout


def _let_go(policy: Sampler, state, alive: Tensor, s: _CachedModel, rows: Optional[Tensor]) -> Optional[Tensor]:
    """The student's batch rows after dropping those the policy no longer needs (and ended rows with them):
    `rows` holds the batch's row ids (None = all B rows, in order); the student's cache follows. An empty
    tensor once no row is left."""
    need = policy.student_rows(state)
    if need is None:
        return rows
    current = rows if rows is not None else torch.arange(len(need), device=need.device)
    keep = (need & alive)[current]
    if bool(keep.all()):
        return rows
    index = keep.nonzero().squeeze(1)
    if len(index):
        s.keep_rows(index)
    return current[index]


def _decode_blocks(policy: Sampler, student, teacher, prompt_ids, prompt_mask, *, block, max_new_tokens, eos,
                   pad, draw, keep_teacher_logits) -> Rollout:
    """Draft-and-verify (module docstring): rounds of k = `block` drafted tokens, one teacher forward each.

    Both caches gain the same columns each round, [last emitted token, y_0 … y_{k-2}] (without the first
    in round one, whose q_0 and p_0 come from the prefill), and drop trailing columns no row kept.
    Response tokens go straight to their row's own positions (a spare column N takes the writes of rows
    with nothing to write, so no position needs a host sync): that is already the Rollout layout."""
    start = time.perf_counter()
    B, P = prompt_ids.shape
    N, k, device = max_new_tokens, block, prompt_ids.device
    at = torch.arange(B, device=device)
    out_ids = prompt_ids.new_full((B, N + 1), pad)
    from_teacher = torch.zeros((B, N + 1), dtype=torch.bool, device=device)
    count = torch.zeros(B, dtype=torch.long, device=device)  # response tokens emitted per row
    alive = torch.ones(B, dtype=torch.bool, device=device)
    first_pos = prompt_mask.long().sum(1)  # (B,) position id of response token 0
    # a round adds at most k columns and gives every live row >= 1 token, so N rounds at most
    cache_mask = torch.zeros((B, P + N * k), dtype=torch.long, device=device)
    cache_mask[:, :P] = prompt_mask
    cols = P

    s = _CachedModel(student, prompt_ids, prompt_mask)
    t_model = _CachedModel(teacher, prompt_ids, prompt_mask)
    p_first = t_model.logits  # the prefill's p for response position 0
    tick = time.perf_counter()
    laps = [tick - start]  # prefill, then one wall time per round
    t_logits_buf = None
    if keep_teacher_logits:
        t_logits_buf = t_model.logits.new_empty((B, N + 1, t_model.logits.shape[-1]))
    width = _shared_width(student, teacher, s, t_model)
    state = policy.init_state(B, device)
    rows = None  # the student's batch rows (ids), None = all B; empty once the student has stopped
    row_steps = torch.zeros(B, dtype=torch.long, device=device)
    last = torch.full_like(count, pad)  # each row's last emitted token, in neither cache yet
    lead = 0  # 1 from round two on: the last emitted token opens the round's columns

    while bool(alive.any()):
        student_on = rows is None or len(rows) > 0
        sr = rows if rows is not None else slice(None)
        drafting = alive if rows is None else torch.zeros_like(alive).index_fill_(0, rows, True) & alive
        w = lead + (k - 1 if student_on else 0)  # the round's new cache columns
        if lead:
            cache_mask[:, cols] = alive
        cache_mask[:, cols + lead:cols + w] = drafting[:, None]  # until the rule rejects them
        positions = first_pos[:, None] + count[:, None] - lead + torch.arange(w, device=device)  # (B, w)

        # the student reads the last token, then drafts k tokens from its own q
        y_s = torch.zeros((B, k), dtype=out_ids.dtype, device=device)  # any id: rows without drafts ignore it
        log_q = []
        if student_on:
            if lead:
                s.step(last[sr], cache_mask[sr, :cols + 1], positions[sr, 0])
                row_steps[sr] += 1
            drafts = []
            for j in range(k):
                log_q.append(s.logits[:, :width].float().log_softmax(-1))
                drafts.append(draw(log_q[j], log_probs=True))
                if j < k - 1:
                    c = lead + j  # the draft's column in this round
                    s.step(drafts[j], cache_mask[sr, :cols + c + 1], positions[sr, c])
                    row_steps[sr] += 1
            y_s[sr] = torch.stack(drafts, 1)
        # the teacher reads the round's columns in one forward: p for every position the round decides
        t_in = torch.cat([last[:, None], y_s[:, :w - 1]], 1) if lead else y_s[:, :w]
        p_raw = t_model.read(t_in, cache_mask[:, :cols + w], positions)  # (B, w, Vt)
        if not lead:
            p_raw = torch.cat([p_first[:, None], p_raw], 1)
        kk = p_raw.shape[1]  # k, or 1 once the student has stopped
        log_p = p_raw[..., :width].float().log_softmax(-1)  # (B, kk, V), shared by draw and rule
        y_t = draw(log_p.reshape(B * kk, width), log_probs=True).view(B, kk)
        log_q_all = log_p.clone()  # rows without drafts read as the teacher; the rule gives them its token
        if student_on:
            log_q_all[sr] = torch.stack(log_q, 1)

        # the rule, position by position; a row's round ends at its first teacher token or its EOS
        kept = torch.zeros((B, w - lead), dtype=torch.long, device=device)
        going, emitted = alive, torch.zeros_like(count)
        for j in range(kk):
            active = going & (count + j < N)
            if not bool(active.any()):
                break
            emits = policy.decide(count + j, log_q_all[:, j], log_p[:, j], y_s[:, j], state, active=active)
            emits = emits | ~drafting
            token = torch.where(emits, y_t[:, j], y_s[:, j])
            slot = torch.where(active, count + j, N)
            out_ids[at, slot] = torch.where(active, token, pad)
            from_teacher[at, slot] = emits & active
            if t_logits_buf is not None:
                t_logits_buf[at, slot] = p_raw[:, j]
            if j < w - lead:
                kept[:, j] = active & ~emits
            last = torch.where(active, token, last)
            emitted += active
            ended = active & _is_eos(token, eos)
            alive = alive & ~ended
            going = active & ~emits & ~ended
        cache_mask[:, cols + lead:cols + w] = kept
        count = count + emitted
        alive = alive & (count < N)
        # columns no row kept at the end of the round leave both caches
        unused = int((cache_mask[:, cols:cols + w].any(0).flip(0).cumsum(0) == 0).sum())
        if unused:
            t_model.drop_columns(unused)
            if student_on:
                s.drop_columns(unused)
        cols += w - unused
        if student_on:
            rows = _let_go(policy, state, alive, s, rows)
        lead = 1
        now = time.perf_counter()
        laps.append(now - tick)
        tick = now

    ids = torch.cat([prompt_ids, out_ids[:, :N]], 1)
    response = torch.arange(N, device=device) < count[:, None]
    mask = torch.cat([prompt_mask.long(), response.long()], 1)
    rollout = _finish(policy, ids, mask, response, from_teacher[:, :N],
                      None if t_logits_buf is None else t_logits_buf[:, :N], P, N, s, t_model, row_steps, start)
    rollout.stats["prefill_seconds"], rollout.stats["step_seconds"] = laps[0], laps[1:]
    return rollout


def _finish(policy, ids, mask, response, from_teacher, t_logits, P, n, s, t_model, row_steps, start) -> Rollout:
    """Trim to the longest response, build the (B, P+N) masks and the stats."""
    n = min(n, int(response.sum(1).max()))  # with check_every > 1, trailing all-pad columns
    response, from_teacher = response[:, :n], from_teacher[:, :n]
    B = ids.shape[0]
    n_tokens = int(response.sum())
    first_teacher = torch.where(from_teacher.any(1), from_teacher.float().argmax(1), -1)  # (B,)
    stats = {
        "teacher_fraction": float(from_teacher.sum()) / max(n_tokens, 1),
        "switch_positions": first_teacher.long().cpu(),
        "teacher_forwards": t_model.forwards if t_model is not None else 0,
        "student_forwards": s.forwards if s is not None else 0,
        "student_row_steps": row_steps.cpu(),
        "new_tokens": n_tokens,
    }
    if policy.name == "adaswitch":
        stats["switched"] = (first_teacher >= 0).cpu()
    prompt_false = torch.zeros((B, P), dtype=torch.bool, device=ids.device)
    rollout = Rollout(
        input_ids=ids[:, :P + n], attention_mask=mask[:, :P + n],
        response_mask=torch.cat([prompt_false, response], 1), from_teacher=torch.cat([prompt_false, from_teacher], 1),
        prompt_length=P, teacher_logits=None if t_logits is None else t_logits[:, :n], stats=stats)
    stats["seconds"] = time.perf_counter() - start
    return rollout
