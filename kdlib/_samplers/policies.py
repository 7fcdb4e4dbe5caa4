"""The five rules of docs/methods.md §3: who emits token t. Each is a few lines on top of the shared decoder.

All decisions use the untempered distributions p (teacher) and q (student) over the shared id prefix, in
float32 and natural log; the sampling temperature only shapes the draws.
"""
from __future__ import annotations

import math
import warnings

import torch

from kdlib._names import stacklevel_outside_kdlib
from kdlib._samplers.decoder import Sampler

Tensor = torch.Tensor


def step_distance(kind: str, student_logits: Tensor, teacher_logits: Tensor, *,
                  log_probs: bool = False) -> Tensor:
    """Per-row distance between p = softmax(teacher_logits) and q = softmax(student_logits), (B, V) → (B,).

        fkl  KL(p‖q) = Σ p (log p − log q)
        rkl  KL(q‖p), the same with the roles swapped
        jsd  ½ KL(p‖m) + ½ KL(q‖m), m = ½(p + q)  =  ½ [Σ p log p + Σ q log q − Σ s log s] + ln 2,  s = p + q
        tvd  ½ Σ |p − q|

    The same values as `kdlib._divergences` at one position (to ~1e-5 absolute in float32; tested), written
    with few full-width passes because this runs once per decoding step (log_softmax + exp instead of
    softmax + logsumexp: about 30 % less time at V = 4096); logits must be finite (a causal LM's are). No
    chunking or autograd: the input is one (B, V) block and sampling needs no gradient. `log_probs=True`
    promises both inputs are log-probabilities already (what the decoder passes a rule) and skips the
    normalisation."""
    norm = (lambda z: z) if log_probs else (lambda z: z.log_softmax(-1))
    if kind == "tvd":
        return 0.5 * (norm(teacher_logits).exp() - norm(student_logits).exp()).abs().sum(-1)
    if kind == "fkl":
        return _kl(norm(teacher_logits), norm(student_logits))
    if kind == "rkl":
        return _kl(norm(student_logits), norm(teacher_logits))
    if kind == "jsd":
        log_p, log_q = norm(teacher_logits), norm(student_logits)
        p, q = log_p.exp(), log_q.exp()
        s = p + q
        log_s = s.clamp_min(torch.finfo(s.dtype).tiny).log()  # 0·log 0 = 0 where both vanish
        vd = torch.linalg.vecdot
        return (0.5 * (vd(p, log_p) + vd(q, log_q) - vd(s, log_s)) + math.log(2)).clamp_min(0)  # rounding
    raise ValueError(f"unknown distance {kind!r}")


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a ‖ b) per row from log-probabilities."""
    return torch.linalg.vecdot(log_a.exp(), log_a - log_b).clamp_min(0)  # no -1e-7 from rounding


class StudentSampler(Sampler):
    """On-policy (GKD, ImitKD, on-policy KD): every token from q. The teacher never runs."""

    name, uses_teacher = "student", False

    def decide(self, t, student_logits, teacher_logits, student_token, state, active=None):
        return torch.zeros_like(student_token, dtype=torch.bool)


class TeacherSampler(Sampler):
    """SeqKD data: every token from p. The student never runs."""

    name, uses_student = "teacher", False

    def decide(self, t, student_logits, teacher_logits, student_token, state, active=None):
        return torch.ones_like(student_token, dtype=torch.bool)


class SKDSampler(Sampler):
    """Speculative KD (Xu et al. 2024): the student proposes y ~ q; if y is not among the teacher's top_k
    ids (by untempered p; ties at the K-th value count as inside), the token is a fresh draw from p.
    top_k = |V| is on-policy, top_k = 0 is the teacher.

    `block` = k > 1 decodes by draft-and-verify (docs/methods.md §3): the student drafts k tokens, the
    teacher scores them in one forward, and the same rule runs position by position; a row's first
    replaced token ends its block. block = 1 is the lockstep decoder, one token per step."""

    name = "skd"

    def __init__(self, top_k: int, block: int = 1):
        self.top_k, self.block = top_k, block

    def decide(self, t, student_logits, teacher_logits, student_token, state, active=None):
        k = min(self.top_k, teacher_logits.shape[-1])
        if k == 0:
            return torch.ones_like(student_token, dtype=torch.bool)
        kth = teacher_logits.topk(k, dim=-1).values[:, -1]  # (B,) K-th largest teacher logit
        proposed = teacher_logits.gather(-1, student_token[:, None]).squeeze(-1)  # (B,)
        return proposed < kth  # outside the top-K: the teacher replaces it


class SwitchSampler(Sampler):
    """SWITCH (Koo et al. 2025): the teacher emits token t iff JSD(0.5)(p_t, q_t) > τ_t, per token and
    reversibly. τ_t = τ0·exp(−decay·t) ("exp", the paper's), τ0·max(0, 1 − decay·t) ("linear") or τ0
    ("constant"); t counted from 0 inside the response. JSD in nats, bounded by ln 2.

    `block` = k > 1: draft-and-verify, the student drafts k tokens and the teacher scores them in one
    forward; the same rule at each position, a row's first teacher token ends its block (SKDSampler)."""

    name = "switch"

    def __init__(self, tau0: float, decay: float, schedule: str, block: int = 1):
        self.tau0, self.decay, self.schedule, self.block = tau0, decay, schedule, block

    def threshold(self, t: int | Tensor) -> float | Tensor:
        """τ_t; for a tensor of positions, one τ per entry (float64)."""
        if isinstance(t, Tensor):
            t = t.double()
            if self.schedule == "exp":
                return self.tau0 * torch.exp(-self.decay * t)
            if self.schedule == "linear":
                return self.tau0 * (1.0 - self.decay * t).clamp(min=0.0)
            return torch.full_like(t, self.tau0)
        if self.schedule == "exp":
            return self.tau0 * math.exp(-self.decay * t)
        if self.schedule == "linear":
            return self.tau0 * max(0.0, 1.0 - self.decay * t)
        return self.tau0

    def decide(self, t, student_logits, teacher_logits, student_token, state, active=None):
        d = step_distance("jsd", student_logits, teacher_logits, log_probs=True)
        # compared in d's float32, as a Python float τ is in the lockstep decoder
        tau = self.threshold(t)
        return d > (tau.to(d.dtype) if isinstance(tau, Tensor) else tau)


class AdaSwitchSampler(Sampler):
    """AdaSwitch (Peng et al. 2025): the student writes while d_i = distance(p_i, q_i) stays ordinary; at
    the first step i >= window with d_i > k · mean(d_{i−window} … d_{i−1}) the row switches, and token i
    and every later token come from the teacher (one irreversible switch per row). A row that switched
    (or ended) leaves the student's batch; once none is left the student stops running.

    `block` = k_draft > 1: while a row has not switched, the student drafts `block` tokens and the teacher
    scores them in one forward; the rule runs position by position on the row's accepted positions only,
    so its window is the lockstep one. After its switch a row gets teacher tokens one per forward."""

    name = "adaswitch"

    def __init__(self, k: float, window: int, distance: str, block: int = 1):
        self.k, self.window, self.distance, self.block = k, window, distance, block

    def init_state(self, batch_size, device):
        return {"switched": torch.zeros(batch_size, dtype=torch.bool, device=device),
                "recent": torch.zeros(batch_size, self.window, device=device)}  # ring buffer of d

    def decide(self, t, student_logits, teacher_logits, student_token, state, active=None):
        d = step_distance(self.distance, student_logits, teacher_logits, log_probs=True)  # (B,)
        if isinstance(t, int):
            if t >= self.window:
                state["switched"] = state["switched"] | (d > self.k * state["recent"].mean(1))
            state["recent"][:, t % self.window] = d  # rows that switched no longer read it
            return state["switched"]
        fire = (t >= self.window) & (d > self.k * state["recent"].mean(1)) & active
        state["switched"] = state["switched"] | fire
        slot = (t % self.window)[:, None]
        state["recent"].scatter_(1, slot, torch.where(active, d, state["recent"].gather(1, slot)[:, 0])[:, None])
        return state["switched"]

    def check_length(self, max_new_tokens: int) -> None:
        if max_new_tokens <= self.window:
            warnings.warn(f"adaswitch: max_new_tokens={max_new_tokens} <= window={self.window}: a row can switch "
                          f"only from response token {self.window} on, so no row will; lower `window` or write "
                          "longer responses", stacklevel=stacklevel_outside_kdlib())

    def student_rows(self, state):
        return ~state["switched"]
