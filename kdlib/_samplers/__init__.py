"""Token-level samplers (docs/methods.md §3): who writes token t of a response, the student or the teacher.

    sampler = build_sampler("switch", tau0=0.1)                 # missing params take SAMPLER_DEFAULTS
    rollout = sampler.sample(student, teacher, prompt_ids, prompt_mask, max_new_tokens=64,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             temperature=1.0, generator=torch.Generator().manual_seed(0))

Names and parameters (also the config names):

    student    on-policy: every token from the student q.                       (no params)
    teacher    SeqKD data: every token from the teacher p.                      (no params)
    skd        student proposal kept iff inside the teacher's top_k, else a draw from p.     top_k, block
    switch     teacher emits token t iff JSD(0.5)(p_t, q_t) > τ_t.             tau0, decay, schedule, block
    adaswitch  one irreversible switch to the teacher when d_i > k·mean(last `window` d).  k, window, distance,
                                                                                            block

Every sampler runs on one KV-cached lockstep decoder (`decoder.py`); the rules are in `policies.py`. `block`
= k > 1 decodes the same rule by draft-and-verify: the student drafts k tokens, the teacher reads them in one
forward (`decoder._decode_blocks`).
"""
from __future__ import annotations

from kdlib._names import SAMPLER_DEFAULTS, validate_sampler_params
from kdlib._samplers.decoder import Rollout, Sampler, draw_tokens, position_ids
from kdlib._samplers.policies import (
    AdaSwitchSampler,
    SKDSampler,
    StudentSampler,
    SwitchSampler,
    TeacherSampler,
    step_distance,
)

__all__ = ["SAMPLER_DEFAULTS", "Rollout", "Sampler", "build_sampler", "validate_sampler_params",
           "draw_tokens", "position_ids", "step_distance", "StudentSampler", "TeacherSampler",
           "SKDSampler", "SwitchSampler", "AdaSwitchSampler"]

_CLASSES = {"student": StudentSampler, "teacher": TeacherSampler, "skd": SKDSampler,
            "switch": SwitchSampler, "adaswitch": AdaSwitchSampler}


def build_sampler(name: str, **params) -> Sampler:
    """The sampler `name` with `params` over SAMPLER_DEFAULTS[name]; validated first."""
    validate_sampler_params(name, **params)
    return _CLASSES[name](**{**SAMPLER_DEFAULTS[name], **params})
