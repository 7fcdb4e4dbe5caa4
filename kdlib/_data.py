"""Rows → token ids → batches.

A batch has one layout everywhere, whether it comes from the dataset or from a sampler rollout:
``P`` left-padded prompt columns followed by ``N`` right-padded response columns.

    input_ids       (B, P+N)   prompt | response ... eos pad pad
    attention_mask  (B, P+N)   1 on real tokens (prompt and response up to and including EOS)
    response_mask   (B, P+N)   True on response tokens including EOS: the loss targets
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from kdlib._io import check_jsonl, check_text, json_lines

if TYPE_CHECKING:  # annotations only
    from collections.abc import Sequence

    from transformers import PreTrainedTokenizerBase

REQUIRED_FIELDS = ("prompt", "response")


@dataclass
class SequenceBatch:
    """Prompt and response token ids in the one layout every part of kdlib reads: a training step's
    micro-batch, and a sampler's rollout (`kdlib.Rollout` is this class). The fields after
    `prompt_length` are keyword-only."""

    input_ids: torch.Tensor  # (B, P+N) long: left-padded prompt | response, pad after a row's EOS
    attention_mask: torch.Tensor  # (B, P+N) long: 1 on real prompt tokens and response tokens up to EOS
    response_mask: torch.Tensor  # (B, P+N) bool: True on response tokens including EOS (the loss targets)
    prompt_length: int  # P
    teacher_logits: Optional[torch.Tensor] = field(default=None, kw_only=True)
    """(B, N, Vt) untempered teacher logits that predicted each response token: teacher_logits[:, j] is
    the distribution over input_ids[:, P+j]. Full teacher width. Set by a sampler only when asked for and
    the teacher ran; values after a row's EOS are not meaningful (masked by response_mask)."""
    from_teacher: Optional[torch.Tensor] = field(default=None, kw_only=True)
    """(B, P+N) bool: True where the teacher emitted the token (rollouts; None for dataset rows)."""
    stats: dict = field(default_factory=dict, kw_only=True)
    """A rollout's statistics: teacher_fraction (float), switch_positions ((B,) long: first teacher position
    in the response, or -1), switched ((B,) bool, adaswitch only), teacher_forwards / student_forwards
    (forward calls; a block of drafted tokens read at once is one call), student_row_steps ((B,) long: the
    student's decoding forwards that included the row, prefill not counted), new_tokens (response tokens
    incl. EOS), seconds (wall time), prefill_seconds and step_seconds (list, one wall time per decoding step,
    or per round of draft-and-verify: what `benchmarks/bench_samplers.py` compares step by step; on CUDA they
    are host times of asynchronous launches, only their sum is meaningful). Empty for dataset rows."""
    def to(self, device: torch.device | str) -> SequenceBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SequenceBatch(move(self.input_ids), move(self.attention_mask), move(self.response_mask),
                             self.prompt_length, teacher_logits=move(self.teacher_logits),
                             from_teacher=move(self.from_teacher), stats=self.stats)


def validate_rows(rows, source: str, fields=REQUIRED_FIELDS) -> None:
    """Fail on the first malformed row, naming the source, the row index (from 0) and the field."""
    for i, row in enumerate(rows):
        _validate_row(row, f"{source}: row {i}", fields)


def _validate_row(row, where: str, fields) -> None:
    for name in fields:
        value = row.get(name) if isinstance(row, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
        check_text(value, where, name)


def load_jsonl(path: str | Path, fields: Sequence[str] = REQUIRED_FIELDS) -> list[dict]:
    """Load a JSONL file through `datasets` exactly like a real dataset, after checking every line (a
    problem names the file, the line counted from 1 as an editor does, and the field)."""
    from datasets import load_dataset

    path = Path(path)
    check_jsonl(path)
    for i, obj in json_lines(path):
        _validate_row(obj, f"{path}: line {i}", fields)
    return load_dataset("json", data_files=str(path), split="train").to_list()


CHAT_TEMPLATE_DATE = "26 Jul 2024"  # the date Llama-3.2's template falls back to when given none


def format_prompt(tokenizer, prompt: str, bos: str | None = None) -> str:
    """The prompt as the model sees it: through the chat template when the tokenizer has one (the
    template writes any BOS itself); otherwise the plain text, after the BOS token for tokenizers
    that add one by default (OPT, Llama), as the models were trained. `bos`: see `leading_bos`."""
    if getattr(tokenizer, "chat_template", None):
        # Llama-3's template writes today's date into every prompt, which no run hash sees: give it a fixed
        # one (its own fallback), so a run reads the same prompts on every day. Other templates ignore it.
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True, date_string=CHAT_TEMPLATE_DATE)
    bos = leading_bos(tokenizer) if bos is None else bos
    return bos + prompt


def leading_bos(tokenizer) -> str:
    """The BOS token text if `tokenizer` puts one in front by default, else ''. kdlib encodes with
    add_special_tokens=False (prompts and responses are joined by hand), so it is written explicitly."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None or getattr(tokenizer, "chat_template", None):
        return ""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == bos_id else ""


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask, (B, P) each."""
    bos = leading_bos(tokenizer)
    texts = [format_prompt(tokenizer, p, bos) for p in prompts]
    enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False,
                    padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    return (ids.to(device), mask.to(device)) if device is not None else (ids, mask)


def encode_batch(tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], max_response_tokens: int
                 ) -> SequenceBatch:
    """Prompts left-padded, responses right-padded and ended with EOS (kept as a target even when
    pad == eos, because the mask is built from lengths, not from token values)."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    eos = tokenizer.eos_token_id
    resp = [_with_eos(tokenizer(r, add_special_tokens=False)["input_ids"], eos, max_response_tokens)
            for r in responses]
    n = max(len(r) for r in resp)
    resp_ids = torch.full((len(resp), n), tokenizer.pad_token_id, dtype=torch.long)
    resp_mask = torch.zeros((len(resp), n), dtype=torch.bool)
    for i, r in enumerate(resp):
        resp_ids[i, : len(r)] = torch.tensor(r)
        resp_mask[i, : len(r)] = True
    input_ids = torch.cat([prompt_ids, resp_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.bool(), resp_mask], dim=1).long()
    response_mask = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), resp_mask], dim=1)
    return SequenceBatch(input_ids, attention_mask, response_mask, prompt_ids.shape[1])


def _with_eos(ids: list[int], eos: int, max_tokens: int) -> list[int]:
    """The response ended with EOS; a response longer than max_tokens is cut to max_tokens *without*
    EOS (as a sampled response that hits max_new_tokens), so the student is never taught to stop at
    the cut."""
    return ids + [eos] if len(ids) < max_tokens else ids[:max_tokens]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
