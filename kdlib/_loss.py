"""The loss of one batch of sequences: the student's logits over the response, the teacher's (kept by the
sampler, or one forward), and a divergence per response token summed over the batch.

Needs no run config: evaluation (the validation loss DistiLLM's schedule reads), the trainer and TRL's
integration call it with a divergence name and its parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kdlib import _divergences as divergences
from kdlib._data import SequenceBatch, position_ids


@dataclass
class Forwards:
    """Forward-pass counts, for the cost tables and provenance."""

    teacher: int = 0
    student: int = 0

    def add_rollout(self, stats: dict):
        self.teacher += int(stats.get("teacher_forwards", 0))
        self.student += int(stats.get("student_forwards", 0))


def response_logits(model, batch: SequenceBatch) -> torch.Tensor:
    """Logits that predict each response token, (B, N, V): positions P-1 … P+N-2.

    Only the last N+1 positions are projected to the vocabulary (`logits_to_keep`), so the prompt
    never costs a (P, V) block."""
    n = batch.input_ids.shape[1] - batch.prompt_length
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=position_ids(batch.attention_mask), logits_to_keep=n + 1, use_cache=False)
    return out.logits[:, :-1]  # (B, N, V)


def sequence_loss_sum(student: torch.nn.Module, teacher: torch.nn.Module | None, batch: SequenceBatch, divergence: str,
                      params: dict | None = None, *,
                      temperature: float = 1.0, chunk_size: int | None = None,
                      forwards: Forwards | None = None) -> tuple[torch.Tensor, int]:
    """Sum over the response tokens of `batch` of the per-token `divergence` (a name of
    `kdlib.DIVERGENCES`, with its `params`), and the number of those tokens. A divergence against
    the teacher reads `batch.teacher_logits` when the sampler kept them, else runs `teacher` once (no
    gradient); 'ce' reads the response tokens as targets and needs no teacher. `forwards` counts the calls."""
    forwards = forwards if forwards is not None else Forwards()
    P = batch.prompt_length
    mask = batch.response_mask[:, P:]  # (B, N)
    student_logits = response_logits(student, batch)  # (B, N, V)
    forwards.student += 1
    kwargs = {"temperature": temperature, "chunk_size": chunk_size, **(params or {})}
    if divergences.needs_teacher(divergence):
        teacher_logits = batch.teacher_logits
        if teacher_logits is None:  # no logits kept by the sampler: one teacher forward
            with torch.no_grad():
                teacher_logits = response_logits(teacher, batch)
            forwards.teacher += 1
        kwargs["teacher_logits"] = teacher_logits
    else:
        kwargs["target_ids"] = batch.input_ids[:, P:].masked_fill(~mask, -100)
    values = divergences.per_token_loss(divergence, student_logits, **kwargs)  # (B, N)
    return divergences.masked_sum(values, mask), int(mask.sum())
