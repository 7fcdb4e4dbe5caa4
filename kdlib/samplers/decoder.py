"""The lockstep decoder: student and teacher advance one token per step, both KV-cached.

Every token-level sampler (docs/methods.md §3) is this loop plus a small policy that decides, per row and per step,
who emits the token. Layout of a rollout (the same as `kdlib.data`):

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
decisions and draws use the shared id prefix [:, :min(Vs, Vt)], renormalised (as `kdlib.divergences`).
"""
from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Optional, Sequence, Union

import torch

Tensor = torch.Tensor
EosIds = Union[int, Sequence[int], None]


@dataclass
class Rollout:
    """Sequences written by a sampler, in the shared batch layout (`kdlib.data.SequenceBatch`)."""

    input_ids: Tensor  # (B, P+N) long: left-padded prompt | response, pad after a row's EOS
    attention_mask: Tensor  # (B, P+N) long: 1 on real prompt tokens and response tokens up to EOS
    response_mask: Tensor  # (B, P+N) bool: True on response tokens including EOS (the loss targets)
    from_teacher: Tensor  # (B, P+N) bool: True where the teacher emitted the token
    prompt_length: int  # P
    teacher_logits: Optional[Tensor] = None
    """(B, N, Vt) untempered teacher logits that predicted each response token: teacher_logits[:, j] is
    the distribution over input_ids[:, P+j]. Full teacher width. Set only when asked for and the teacher
    ran; values after a row's EOS are not meaningful (masked by response_mask)."""
    stats: dict = field(default_factory=dict)
    """teacher_fraction (float), switch_positions ((B,) long: first teacher position in the response, or
    -1), switched ((B,) bool, adaswitch only), teacher_forwards / student_forwards (forward calls),
    new_tokens (response tokens incl. EOS), seconds (wall time), prefill_seconds and step_seconds (list,
    one wall time per decoding step: what `benchmarks/bench_samplers.py` compares step by step; on CUDA
    they are host times of asynchronous launches, only their sum is meaningful)."""


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
    cdf = probs.cumsum(-1)  # (n, V); CPU accumulates in float64, so no drift over 150k ids
    # drawn on the generator's own device (a CPU generator cannot fill a CUDA tensor), then moved
    u = torch.rand((probs.shape[0], 1), generator=generator,
                   device=generator.device if generator is not None else probs.device).to(probs.device)
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first id with cdf > u: never a p = 0 id
    return token.clamp_(max=probs.shape[-1] - 1).squeeze(-1)  # (n,)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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
    """A token-level sampler: `sample(...)` runs the lockstep decoder with this object's rule.

    Subclasses set `name`, `uses_student`, `uses_teacher` and implement `decide`; the rest is shared."""

    name = "?"
    uses_student = True
    uses_teacher = True

    def init_state(self, batch_size: int, device) -> object:
        """Per-rollout state of the rule (e.g. AdaSwitch's window of distances)."""
        return None

    def decide(self, t: int, student_logits: Tensor, teacher_logits: Tensor, student_token: Tensor,
               state) -> Tensor:
        """(B,) bool: True where the teacher emits token t. `student_logits` and `teacher_logits` are the
        untempered log-probabilities log q_t and log p_t (log_softmax over the shared id prefix, float32,
        (B, V)), so a rule may skip its own normalisation (`step_distance(..., log_probs=True)`); any rule
        written for raw logits still works on them, since softmax(log_softmax(z)) = softmax(z)."""
        raise NotImplementedError

    def student_still_needed(self, state, alive: Tensor) -> bool:
        """False once no live row can get a student token again (lets the loop drop the student)."""
        return True

    def sample(self, student, teacher, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int,
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
        eos_token_id, pad_token_id = _special_ids(student if self.uses_student else teacher, eos_token_id,
                                                  pad_token_id)
        with _eval_mode(student, teacher), torch.no_grad():  # no_grad, not inference_mode: the rollout
            return _decode(self, student, teacher, prompt_ids, prompt_mask,  # feeds autograd later
                           max_new_tokens=max_new_tokens, eos=eos_token_id, pad=pad_token_id,
                           draw=partial(draw_tokens, generator=generator, temperature=temperature,
                                        top_p=top_p, top_k=top_k),
                           keep_teacher_logits=return_teacher_logits)

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


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
    width = min(m.logits.shape[-1] for m in (s, t_model) if m is not None)  # shared id prefix
    state = policy.init_state(B, device)

    run_student, n = s is not None, N
    for t in range(N):
        if t_logits_buf is not None:
            t_logits_buf[:, t] = t_model.logits
        if not run_student:  # teacher sampler, or AdaSwitch once every live row has switched
            token, emits = draw(t_model.logits[:, :width]), alive
        elif t_model is None:  # student sampler: the teacher never runs
            token, emits = draw(s.logits), torch.zeros_like(alive)
        else:
            # one normalisation of both (2B, V) untempered rows serves the draw and the rule
            log_qp = torch.cat([s.logits[:, :width], t_model.logits[:, :width]]).float().log_softmax(-1)
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
            if run_student and t_model is not None and not policy.student_still_needed(state, alive):
                run_student = False
        step_mask, step_pos = mask[:, :P + t + 1], first_pos + t
        if run_student:
            s.step(token, step_mask, step_pos)
        if t_model is not None:
            t_model.step(token, step_mask, step_pos)
        now = time.perf_counter()
        laps.append(now - tick)
        tick = now
    laps.append(time.perf_counter() - tick)  # the last step: draw and bookkeeping, no forward

    rollout = _finish(policy, ids, mask, response, from_teacher, t_logits_buf, P, n, s, t_model, start)
    rollout.stats["prefill_seconds"], rollout.stats["step_seconds"] = laps[0], laps[1:]
    return rollout


def _finish(policy, ids, mask, response, from_teacher, t_logits, P, n, s, t_model, start) -> Rollout:
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
