"""Per-position divergences between teacher and student next-token distributions, and their reduction.

Notation (docs/methods.md §2): p is the teacher distribution, q the student distribution, both softmax(logits / τ)
over the vocabulary; KL(a‖b) = Σ_v a(v) (log a(v) − log b(v)). Every divergence returns one value per
position, in nats, as float32 (float64 inputs stay float64, so `gradcheck` can be used). Reduction over
positions is a separate function (`reduce_loss`) with an explicit denominator.

Memory. The logits are processed in chunks of positions: one (chunk, V) block at a time is upcast to
float32, and a custom autograd function keeps only the inputs and O(positions) statistics for backward,
where the gradient w.r.t. the student logits is rebuilt chunk by chunk from its closed form. A plain
Python loop over chunks would not help under autograd, since every chunk's intermediates would be saved
for backward. `chunk_size=None` picks `default_chunk_size(V, device)` positions per chunk: a float32 block of
16 MiB on CPU (131 positions at V = 32000, 27 at V = 151936), where cache-sized blocks run faster than whole-
tensor passes, and 64 MiB on GPU; inputs smaller than one block are a single chunk. Results do not
depend on the chunk size beyond float rounding.

Gradients. The student logits get their exact gradient. The teacher is a fixed target: its logits get no
gradient (run the teacher under `torch.no_grad()`). Positions whose upstream gradient is exactly zero
(masked out by `masked_sum`) get an exactly-zero gradient, even if their logits are not finite.

Width. Teacher and student logits of different widths from one tokenizer family (Qwen2.5: 152064 vs
151936) are compared on the shared id prefix `[..., :min(Vs, Vt)]`, with one warning per process and width
pair; both distributions are renormalised over that prefix. Extra student columns get a zero gradient.

No τ² factor is applied to the loss: the temperature only reshapes both distributions.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from kdlib._names import DIVERGENCE_PARAMS, _check_param, needs_teacher, stacklevel_outside_kdlib, validate_params  # noqa: F401 - part of this module's API

CHUNK_BYTES = 64 * 2**20  # default float32 (chunk, V) block on GPU
CHUNK_BYTES_CPU = 16 * 2**20  # on CPU: cache-sized blocks are faster (see benchmarks/bench_divergences.py)

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------------
# Row formulas. Each `value` maps log-probabilities of one chunk, logq (n, V) and logp (n, V), to (n,);
# each `grad` returns d value / d(student logits / τ), shape (n, V), from its closed form.
# With exact=False they use the fast expressions; these give NaN where 0·log 0 appears (a -inf logit).
# Such rows are detected by a non-finite value and recomputed with exact=True, which takes 0·log 0 = 0;
# torch.where costs several passes over the block, so it is kept off the common path.


def _xdiff(a: Tensor, log_a: Tensor, log_b: Tensor, exact: bool) -> Tensor:
    """a·(log a − log b) elementwise; exact: 0 where a = 0."""
    terms = (log_a - log_b).mul_(a)  # (n, V); in place on the temporary to hold one block fewer
    return torch.where(a > 0, terms, 0.0) if exact else terms


def _softmax_backward(q: Tensor, g: Tensor, exact: bool) -> Tensor:
    """Chain rule through softmax: dL/ds_j = q_j (g_j − Σ_v q_v g_v), given g = dL/dq."""
    qg = q * g  # (n, V)
    if exact:
        qg = torch.where(q > 0, qg, 0.0)
    return torch.addcmul(qg, q, qg.sum(-1, keepdim=True), value=-1.0)


def _mix_log(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """log(w·a + (1 − w)·b): mix probabilities, not logits (log-sum-exp of the weighted log-probs)."""
    log_w = math.log(w) if w > 0 else -math.inf  # w = 0 or 1 happen for the skew KLs at α = 0
    log_1mw = math.log1p(-w) if w < 1 else -math.inf
    return torch.logaddexp(log_a + log_w, log_b + log_1mw)  # (n, V)


def _fkl_value(logq, logp, exact):
    return _xdiff(logp.exp(), logp, logq, exact).sum(-1)


def _fkl_grad(logq, logp, value, exact):
    return logq.exp() - logp.exp()  # d KL(p‖q) / ds = q − p


def _rkl_value(logq, logp, exact):
    return _xdiff(logq.exp(), logq, logp, exact).sum(-1)


def _rkl_grad(logq, logp, value, exact):
    # d KL(q‖p) / ds = q ⊙ (log q − log p − KL(q‖p))
    return _softmax_backward(logq.exp(), logq - logp, exact)


def _jsd_value(logq, logp, exact, beta):
    logm = _mix_log(logp, logq, beta)  # M = β p + (1 − β) q
    teacher_part = _xdiff(logp.exp(), logp, logm, exact).sum(-1)
    student_part = _xdiff(logq.exp(), logq, logm, exact).sum(-1)
    return beta * teacher_part + (1 - beta) * student_part


def _jsd_grad(logq, logp, value, exact, beta):
    # d JSD / dq_v = (1 − β) log(q_v / M_v): the p-terms cancel, leaving a reverse-KL-like gradient to M.
    logm = _mix_log(logp, logq, beta)
    return (1 - beta) * _softmax_backward(logq.exp(), logq - logm, exact)


def _tvd_value(logq, logp, exact):
    return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)


def _tvd_grad(logq, logp, value, exact):
    q = logq.exp()
    return 0.5 * _softmax_backward(q, torch.sign(q - logp.exp()), exact)  # subgradient 0 where p = q


def _sfkl_value(logq, logp, exact, alpha):
    logm = _mix_log(logp, logq, alpha)  # α p + (1 − α) q
    return _xdiff(logp.exp(), logp, logm, exact).sum(-1)


def _sfkl_grad(logq, logp, value, exact, alpha):
    ratio = (logp - _mix_log(logp, logq, alpha)).exp()  # p / M, at most 1/α
    return -(1 - alpha) * _softmax_backward(logq.exp(), ratio, exact)  # d/dq_v = −(1 − α) p_v / M_v


def _srkl_value(logq, logp, exact, alpha):
    logm = _mix_log(logp, logq, 1 - alpha)  # (1 − α) p + α q
    return _xdiff(logq.exp(), logq, logm, exact).sum(-1)


def _srkl_grad(logq, logp, value, exact, alpha):
    log_ratio = logq - _mix_log(logp, logq, 1 - alpha)  # log(q / M)
    g = log_ratio - alpha * log_ratio.exp()  # d/dq_v = log(q_v / M_v) − α q_v / M_v (+1, cancels)
    return _softmax_backward(logq.exp(), g, exact)


def _ce_value(logq, target, exact):
    keep = target >= 0  # negative ids are ignored positions (e.g. -100)
    picked = logq.gather(-1, target.clamp_min(0)[:, None]).squeeze(-1)  # (n,)
    return torch.where(keep, -picked, 0.0)


def _ce_grad(logq, target, value, exact):
    grad = logq.exp()  # q − onehot(target)
    rows = (target >= 0).nonzero().squeeze(-1)
    grad[rows, target[rows]] -= 1.0
    grad[target < 0] = 0.0
    return grad


class _Rule(NamedTuple):
    value: Callable
    grad: Callable
    uses_teacher: bool
    params: dict  # name -> default, besides temperature and chunk_size


_RULES = {
    "fkl": _Rule(_fkl_value, _fkl_grad, True, DIVERGENCE_PARAMS["fkl"]),
    "rkl": _Rule(_rkl_value, _rkl_grad, True, DIVERGENCE_PARAMS["rkl"]),
    "jsd": _Rule(_jsd_value, _jsd_grad, True, DIVERGENCE_PARAMS["jsd"]),
    "tvd": _Rule(_tvd_value, _tvd_grad, True, DIVERGENCE_PARAMS["tvd"]),
    "sfkl": _Rule(_sfkl_value, _sfkl_grad, True, DIVERGENCE_PARAMS["sfkl"]),
    "srkl": _Rule(_srkl_value, _srkl_grad, True, DIVERGENCE_PARAMS["srkl"]),
    "ce": _Rule(_ce_value, _ce_grad, False, DIVERGENCE_PARAMS["ce"]),
}


def _rule(name: str) -> _Rule:
    if name not in _RULES:
        raise ValueError(f"unknown divergence {name!r}; known: {sorted(_RULES)}")
    return _RULES[name]


# Validation (plain Python, no tensors) lives in kdlib._names so that configs validate without torch.


# --------------------------------------------------------------------------------------------------------
# Chunked evaluation with a closed-form backward.

_warned_widths: set = set()  # (student V, teacher V, where) already reported, so the warning fires once


def _warn_width_once(vs: int, vt: int, where: str = "divergences") -> None:
    """One warning per process and width pair, pointing at the first caller outside kdlib."""
    if (vs, vt, where) not in _warned_widths:
        _warned_widths.add((vs, vt, where))
        warnings.warn(
            f"kdlib {where}: student logits have width {vs} and teacher logits {vt}; comparing on the "
            f"shared id prefix [0, {min(vs, vt)}) (same tokenizer family assumed: the logits cannot tell; "
            "kdlib.check_same_tokenizer(teacher_tokenizer, student_tokenizer) can)",
            stacklevel=stacklevel_outside_kdlib(),
        )


_warned_teacher_grad = False


def _warn_teacher_grad_once() -> None:
    global _warned_teacher_grad
    if not _warned_teacher_grad:
        _warned_teacher_grad = True
        warnings.warn(
            "kdlib divergences: teacher_logits require grad; the teacher is a fixed target and gets no "
            "gradient (run the teacher under torch.no_grad() to save memory)",
            stacklevel=4,
        )


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32  # bf16/fp16 are upcast


def default_chunk_size(vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Positions per chunk when chunk_size=None: one float32 (chunk, V) block of CHUNK_BYTES_CPU on CPU
    (blocks that stay in cache run faster than one pass over the whole logits), CHUNK_BYTES elsewhere
    (bigger blocks amortise kernel launches on GPU)."""
    budget = CHUNK_BYTES_CPU if torch.device(device).type == "cpu" else CHUNK_BYTES
    return max(1, budget // (4 * vocab_size))


def _blocks(B: int, T: int, rows: int):
    """Index blocks (B slice, T slice) of about `rows` positions covering (B, T), as views: no flatten copy
    even when the logits are a non-contiguous slice such as logits[:, :-1]."""
    if B * T == 0:
        return
    if T <= rows:
        step = rows // T
        for b0 in range(0, B, step):
            yield slice(b0, min(b0 + step, B)), slice(0, T)
    else:
        for b0 in range(B):
            for t0 in range(0, T, rows):
                yield slice(b0, b0 + 1), slice(t0, min(t0 + rows, T))


def _log_probs(logits: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """Upcast one block of logits (b, t, V), apply the temperature, return log-softmax as (b·t, V)."""
    x = logits.to(dtype)
    if temperature != 1.0:
        x = x / temperature
    return torch.log_softmax(x, -1).view(-1, logits.shape[-1])


class _ChunkedDivergence(torch.autograd.Function):
    """Per-position divergence over (B, T, V) logits, forward and backward one chunk at a time.

    Saves only the inputs, the (B, T) values and a (B, T) flag of rows that needed the exact formulas,
    so autograd holds no (B, T, V) intermediate; backward recomputes each chunk's log-softmax.
    The per-chunk work sits in helper functions so that a chunk's blocks are freed before the next one."""

    @staticmethod
    def forward(ctx, student, other, rule, params, temperature, rows, width):
        values = student.new_empty(student.shape[:2], dtype=_compute_dtype(student))  # (B, T)
        exact = torch.zeros(student.shape[:2], dtype=torch.bool, device=student.device)  # (B, T)
        for block in _blocks(*values.shape, rows):
            shape = values[block].shape
            v, bad = _chunk_values(student[block], other[block], rule, params, temperature, width, values.dtype)
            values[block], exact[block] = v.view(shape), bad.view(shape)
        ctx.save_for_backward(student, other, values, exact)
        ctx.args = (rule, params, temperature, rows, width)
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values):
        student, other, values, exact = ctx.saved_tensors
        rule, params, temperature, rows, width = ctx.args
        grad = torch.zeros_like(student) if width < student.shape[-1] else torch.empty_like(student)
        for block in _blocks(*values.shape, rows):
            out = grad[block][..., :width]  # (b, t, V) view of the result
            upstream = grad_values[block]  # (b, t)
            g = _chunk_grad(student[block], other[block], values[block], exact[block], rule, params, temperature,
                            width)  # (n, V)
            scale = upstream.to(g.dtype) / temperature  # d/dz = d/ds / τ, since s = z / τ
            torch.mul(g.view(out.shape), scale[..., None], out=out)  # scale, cast and store in one pass
            out[upstream == 0] = 0.0  # masked positions: exactly 0, even where the logits are not finite
        return grad, None, None, None, None, None, None


def _chunk_inputs(student, other, rule, temperature, width, dtype):
    """Student log-probs (n, V) of one block, and the teacher log-probs (n, V) or target ids (n,)."""
    logq = _log_probs(student[..., :width], temperature, dtype)
    if rule.uses_teacher:
        return logq, _log_probs(other[..., :width], temperature, dtype)
    return logq, other.reshape(-1)


def _chunk_values(student, other, rule, params, temperature, width, dtype):
    """Values (n,) of one block, and which rows needed the exact formulas."""
    logq, target = _chunk_inputs(student, other, rule, temperature, width, dtype)
    v = rule.value(logq, target, False, **params)  # (n,)
    bad = ~torch.isfinite(v)
    if bad.any():  # a -inf logit (0·log 0) or a genuinely non-finite row: redo these rows exactly
        v[bad] = rule.value(logq[bad], target[bad], True, **params)
    return v, bad


def _chunk_grad(student, other, values, exact, rule, params, temperature, width):
    """d values / d(student logits / τ) of one block, (n, V), in the compute dtype."""
    logq, target = _chunk_inputs(student, other, rule, temperature, width, values.dtype)
    v, bad = values.reshape(-1), exact.reshape(-1)  # (n,)
    g = rule.grad(logq, target, v, False, **params)  # (n, V)
    if bad.any():
        g[bad] = rule.grad(logq[bad], target[bad], v[bad], True, **params)
    return g


def _as_3d(x: Tensor) -> Tensor:
    """(B, T, V) as is; (N, V) -> (1, N, V); more leading dims are merged into B."""
    if x.dim() == 3:
        return x
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() < 2:
        raise ValueError(f"logits must have shape (..., V) with at least one position, got {tuple(x.shape)}")
    return x.reshape(-1, *x.shape[-2:])


def _check_other(rule, other, lead, vs):
    """Validate teacher logits (..., Vt) or target ids (...) against the student's positions `lead` and
    width vs; return the compared width and `other` as (B, T, Vt) or (B, T)."""
    if rule.uses_teacher:
        if not other.is_floating_point():
            raise ValueError(f"teacher_logits must be floating point, got {other.dtype}")
        if other.shape[:-1] != lead:
            raise ValueError(f"student positions {tuple(lead)} and teacher logits {tuple(other.shape)} differ "
                             "in positions; align them first (the caller's job)")
        vt = other.shape[-1]
        if vs != vt:
            _warn_width_once(vs, vt)
        if other.requires_grad and torch.is_grad_enabled():
            _warn_teacher_grad_once()
        return min(vs, vt), _as_3d(other.detach())
    if other.shape != lead or other.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target_ids must be integer ids of shape {tuple(lead)}, got {other.dtype} "
                         f"{tuple(other.shape)}")
    if other.numel() and int(other.max()) >= vs:
        raise ValueError(f"target id {int(other.max())} is outside the student vocabulary (V = {vs})")
    return vs, _as_3d(other.long()[..., None])[..., 0]


def _divergence(name, student_logits, other, params, temperature, chunk_size):
    rule = _rule(name)
    validate_params(name, temperature=temperature, chunk_size=chunk_size, **params)
    if not student_logits.is_floating_point():
        raise ValueError(f"student_logits must be floating point, got {student_logits.dtype}")
    width, other = _check_other(rule, other, student_logits.shape[:-1], student_logits.shape[-1])
    rows = chunk_size or default_chunk_size(width, student_logits.device)
    params = {k: float(v) for k, v in params.items()}
    values = _ChunkedDivergence.apply(_as_3d(student_logits), other, rule, params, float(temperature), rows, width)
    return values.reshape(student_logits.shape[:-1])


# --------------------------------------------------------------------------------------------------------
# Public divergences: (B, T, V) logits in any float dtype -> (B, T) float32 nats.


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0,
               chunk_size: int | None = None) -> Tensor:
    """Forward KL, KL(p‖q) = Σ_v p(v) (log p(v) − log q(v)), per position (mode covering).

    The true KL, not the teacher cross-entropy −Σ p log q (which adds the constant H(p)). Used by
    supervised KD, ImitKD, SKD and AdaSwitch (docs/methods.md §1-2); it is the β → 0 direction of GKD's JSD(β)
    (Agarwal et al. 2024, Eq. 1). Gradient w.r.t. the student logits: (q − p) / τ.
    student_logits, teacher_logits: (B, T, V); returns (B, T).
    """
    return _divergence("fkl", student_logits, teacher_logits, {}, temperature, chunk_size)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0,
               chunk_size: int | None = None) -> Tensor:
    """Reverse KL, KL(q‖p) = Σ_v q(v) (log q(v) − log p(v)), per position (mode seeking).

    On-policy KD's alternative (GKD, Agarwal et al. 2024, §3 and Fig. 6); the β → 1 direction of JSD(β).
    student_logits, teacher_logits: (B, T, V); returns (B, T).
    """
    return _divergence("rkl", student_logits, teacher_logits, {}, temperature, chunk_size)


def jsd(student_logits: Tensor, teacher_logits: Tensor, *, beta: float = 0.5, temperature: float = 1.0,
        chunk_size: int | None = None) -> Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024, Eq. 1), per position:

        M = β·p + (1 − β)·q,    JSD(β) = β·KL(p‖M) + (1 − β)·KL(q‖M),    0 < β < 1.

    β weights the teacher p in both places. M mixes probabilities (log-sum-exp of log p + log β and
    log q + log(1 − β)), not logits. JSD(0.5) is the symmetric JSD, bounded by ln 2. The value tends to 0
    at β → 0 and β → 1 (only JSD/β → KL(p‖q) and JSD/(1 − β) → KL(q‖p)), so β ∈ {0, 1} raises ValueError
    pointing to forward_kl / reverse_kl. SWITCH (Koo et al. 2025) uses JSD(0.5) as its switching distance.
    student_logits, teacher_logits: (B, T, V); returns (B, T).
    """
    return _divergence("jsd", student_logits, teacher_logits, {"beta": beta}, temperature, chunk_size)


def tvd(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0,
        chunk_size: int | None = None) -> Tensor:
    """Total variation distance, ½ Σ_v |p(v) − q(v)|, per position (in [0, 1]; DistiLLM's TVD option).

    student_logits, teacher_logits: (B, T, V); returns (B, T).
    """
    return _divergence("tvd", student_logits, teacher_logits, {}, temperature, chunk_size)


def skew_forward_kl(student_logits: Tensor, teacher_logits: Tensor, *, alpha: float = 0.1, temperature: float = 1.0,
                    chunk_size: int | None = None) -> Tensor:
    """Skew forward KL of DistiLLM (Ko et al. 2024, Eq. 2), per position: KL(p ‖ α·p + (1 − α)·q).

    α = 0 is forward_kl; 0 ≤ α < 1. The mixture keeps the value finite where q → 0 (it is ≤ log(1/α)).
    SWITCH's loss is assumed to be this with α = 0.1 (docs/methods.md §1: chosen, the paper does not pin it
    down). Shapes (B, T, V) -> (B, T).
    """
    return _divergence("sfkl", student_logits, teacher_logits, {"alpha": alpha}, temperature, chunk_size)


def skew_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, *, alpha: float = 0.1, temperature: float = 1.0,
                    chunk_size: int | None = None) -> Tensor:
    """Skew reverse KL of DistiLLM (Ko et al. 2024, Eq. 3), per position: KL(q ‖ (1 − α)·p + α·q).

    α = 0 is reverse_kl; 0 ≤ α < 1. Shapes (B, T, V) -> (B, T).
    """
    return _divergence("srkl", student_logits, teacher_logits, {"alpha": alpha}, temperature, chunk_size)


def cross_entropy(student_logits: Tensor, target_ids: Tensor, *, temperature: float = 1.0,
                  chunk_size: int | None = None) -> Tensor:
    """Cross-entropy against given tokens, −log q(y_t), per position (SFT on labels, SeqKD on teacher text).

    target_ids (B, T) long, aligned with the logits positions as given; ids < 0 are ignored (value 0,
    gradient 0). student_logits (B, T, V); returns (B, T).
    """
    return _divergence("ce", student_logits, target_ids, {}, temperature, chunk_size)


DIVERGENCES = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "jsd": jsd,
    "tvd": tvd,
    "sfkl": skew_forward_kl,
    "srkl": skew_reverse_kl,
    "ce": cross_entropy,
}


def _pick_other(name, teacher_logits, target_ids):
    """The one comparison input divergence `name` uses; an unused input is an error, not ignored."""
    need, unused = ("teacher_logits", "target_ids") if needs_teacher(name) else ("target_ids", "teacher_logits")
    given = {"teacher_logits": teacher_logits, "target_ids": target_ids}
    if given[need] is None:
        raise ValueError(f"divergence {name!r} needs {need}")
    if given[unused] is not None:
        raise ValueError(f"divergence {name!r} does not use {unused}; pass only {need}")
    return given[need]


def per_token_loss(name: str, student_logits: Tensor, *, teacher_logits: Tensor | None = None,
                   target_ids: Tensor | None = None, **params) -> Tensor:
    """Dispatch by config name ('fkl', 'rkl', 'jsd', 'tvd', 'sfkl', 'srkl', 'ce') -> (B, T) values.

    'ce' takes target_ids and no teacher_logits; every other name takes teacher_logits and no target_ids,
    so a mis-wired call fails instead of silently ignoring an input.
    """
    validate_params(name, **params)
    return DIVERGENCES[name](student_logits, _pick_other(name, teacher_logits, target_ids), **params)


# --------------------------------------------------------------------------------------------------------
# Stretch: the student's logits computed chunk by chunk from its last hidden states and lm_head.


class _ChunkedHiddenDivergence(torch.autograd.Function):
    """As _ChunkedDivergence, with each block of student logits computed as hidden @ Wᵀ in forward and
    again in backward: neither the (B, T, V) student logits nor their gradient are ever materialised."""

    @staticmethod
    def forward(ctx, hidden, weight, other, rule, params, temperature, rows, width):
        head = weight[:width]  # (V, H); ids past the compared width play no part
        values = hidden.new_empty(hidden.shape[:2], dtype=_compute_dtype(head))  # (B, T)
        exact = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)  # (B, T)
        for block in _blocks(*values.shape, rows):
            v, bad = _chunk_values(hidden[block] @ head.T, other[block], rule, params, temperature, width,
                                   values.dtype)
            values[block], exact[block] = v.view(values[block].shape), bad.view(values[block].shape)
        ctx.save_for_backward(hidden, weight, other, values, exact)
        ctx.args = (rule, params, temperature, rows, width)
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values):
        hidden, weight, other, values, exact = ctx.saved_tensors
        rule, params, temperature, rows, width = ctx.args
        head = weight[:width]
        grad_h = torch.zeros_like(hidden)  # (B, T, H)
        grad_w = torch.zeros(weight.shape, dtype=values.dtype, device=weight.device)  # accumulated in fp32
        for block in _blocks(*values.shape, rows):
            h = hidden[block].reshape(-1, hidden.shape[-1])  # (n, H)
            g = _chunk_grad(h @ head.T, other[block], values[block], exact[block], rule, params, temperature, width)
            upstream = grad_values[block]  # (b, t)
            keep = upstream != 0  # masked positions contribute exactly 0: drop their rows, NaN or not
            g, h = g[keep.view(-1)], h[keep.view(-1)]
            g.mul_((upstream[keep].to(g.dtype) / temperature)[:, None])  # d/dz = d/ds / τ
            grad_h[block][keep] = g.to(head.dtype) @ head  # (kept, H)
            grad_w[:width].addmm_(g.T, h.to(g.dtype))  # (V, H)
        return grad_h, grad_w.to(weight.dtype), None, None, None, None, None, None


def per_token_loss_from_hidden(name, hidden_states, lm_head_weight, *, teacher_logits=None, target_ids=None,
                               **params):
    """per_token_loss with student logits = hidden_states @ lm_head_weightᵀ, formed one chunk at a time.

    hidden_states (B, T, H) are the student's final hidden states (after its last norm), lm_head_weight
    (V, H) its output projection (no bias, as in Llama/Qwen heads). Values equal
    per_token_loss(name, hidden_states @ lm_head_weight.T, ...); gradients flow to both inputs, and the
    (B, T, V) logits and their gradient never exist: memory beyond the inputs is a few (chunk, V) blocks
    plus a float32 (V, H) accumulator for the weight gradient. The logits matmul runs twice (forward and
    backward), the price of not storing them.
    """
    validate_params(name, **params)
    other = _pick_other(name, teacher_logits, target_ids)
    if not hidden_states.is_floating_point() or lm_head_weight.dim() != 2 \
            or lm_head_weight.shape[1] != hidden_states.shape[-1]:
        raise ValueError(f"need float hidden_states (B, T, H) and lm_head_weight (V, H); got "
                         f"{tuple(hidden_states.shape)} {hidden_states.dtype} and {tuple(lm_head_weight.shape)}")
    temperature, chunk_size = params.pop("temperature", 1.0), params.pop("chunk_size", None)
    rule = _rule(name)
    params = {**rule.params, **{k: float(v) for k, v in params.items()}}
    width, other = _check_other(rule, other, hidden_states.shape[:-1], lm_head_weight.shape[0])
    rows = chunk_size or default_chunk_size(width, hidden_states.device)
    values = _ChunkedHiddenDivergence.apply(_as_3d(hidden_states), lm_head_weight, other, rule, params,
                                            float(temperature), rows, width)
    return values.reshape(hidden_states.shape[:-1])


# --------------------------------------------------------------------------------------------------------
# Reduction (docs/methods.md §4).


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Σ values over mask == True, as a 0-dim tensor. torch.where (not values·mask) so that NaN or inf at
    masked-out positions cannot leak into the sum (NaN·0 = NaN) or into the gradient."""
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    return torch.where(mask.bool(), values, 0.0).sum()


def reduce_loss(values: Tensor, mask: Tensor, num_tokens: int | float | Tensor) -> Tensor:
    """Loss of one micro-batch: Σ_{mask} values / max(num_tokens, 1).

    num_tokens is the number of response tokens in the whole optimizer step (all micro-batches, all
    processes), counted by the caller, so that accumulated micro-batches and data-parallel ranks give the
    gradient of one big batch (not a mean of per-micro-batch means). An empty step gives 0, not NaN.
    """
    if isinstance(num_tokens, Tensor):
        denom = num_tokens.to(values.device, torch.float32).clamp_min(1)
    else:
        denom = float(max(int(num_tokens), 1))
    return masked_sum(values, mask) / denom
