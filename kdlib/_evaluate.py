"""Evaluation (docs/methods.md §5): batched greedy decoding, ROUGE-L F (stemmed), numeric-answer accuracy,
per-example outputs and scores by response-length bucket."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from kdlib._data import encode_batch, encode_prompts
from kdlib._io import atomic_write_text
from kdlib._loss import sequence_loss_sum
from kdlib._metrics import answer_correct, extract_answer, rouge_l, score_prediction  # noqa: F401 - API
from kdlib._samplers import build_sampler

if TYPE_CHECKING:  # annotations only
    from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def greedy_decode(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 64,
                  progress: bool = False) -> list[str]:
    """Greedy responses, batched with left padding; special tokens stripped."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for i in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="decode", leave=False):
        ids, mask = encode_prompts(tokenizer, prompts[i:i + batch_size], device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        outputs += tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [o.strip() for o in outputs]


@torch.no_grad()
def sample_decode(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float, seed: int,
                  batch_size: int = 64) -> list[str]:
    """One response per prompt sampled at `temperature` (the student sampler, KV-cached), from an explicit
    generator seeded with `seed`: the same call gives the same samples."""
    model.eval()
    sampler, gen = build_sampler("student"), torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    texts = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = encode_prompts(tokenizer, prompts[i:i + batch_size], device)
        ro = sampler.sample(model, None, ids, mask, max_new_tokens=max_new_tokens,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            temperature=temperature, generator=gen)
        resp = ro.input_ids[:, ro.prompt_length:].masked_fill(~ro.response_mask[:, ro.prompt_length:],
                                                              tokenizer.pad_token_id)
        texts += [t.strip() for t in tokenizer.batch_decode(resp, skip_special_tokens=True)]
    return texts


def score_rows(rows: list[dict], predictions: list[str], metric: str) -> list[dict]:
    """Per-example records: prompt, reference, prediction, score, reference length."""
    records = []
    for row, pred in zip(rows, predictions):
        score = score_prediction(metric, pred, row)
        records.append({"id": row.get("id"), "prompt": row["prompt"], "reference": row["response"],
                        "prediction": pred, "score": score, "ref_words": len(row["response"].split()),
                        "steps": row.get("steps")})
    return records


def length_buckets(records: list[dict], edges=(0, 12, 24, 36, 1_000_000)) -> list[dict]:
    """Mean score per reference-length bucket (in words), with counts."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = [r["score"] for r in records if lo <= r["ref_words"] < hi]
        if sel:
            label = f"{lo}-{hi - 1}" if hi < 1_000_000 else f"{lo}+"
            out.append({"bucket": label, "n": len(sel), "score": sum(sel) / len(sel)})
    return out


def evaluate(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[dict], *, metric: str,
             max_new_tokens: int, out_path: str | Path | None = None, progress: bool = False,
             temperature: float = 0.0, seed: int = 0) -> dict:
    """Score `model` on `rows`, greedy (temperature 0) or one sample per row at `temperature` drawn with
    `seed`; write per-example outputs to `out_path` (JSONL) when given."""
    prompts = [r["prompt"] for r in rows]
    if temperature > 0:
        preds = sample_decode(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                              seed=seed)
    else:
        preds = greedy_decode(model, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=progress)
    records = score_rows(rows, preds, metric)
    if out_path is not None:
        atomic_write_text(out_path, "".join(json.dumps(r) + "\n" for r in records))
    return {"metric": metric, "score": sum(r["score"] for r in records) / max(1, len(records)),
            "n": len(records), "buckets": length_buckets(records)}


@torch.no_grad()
def validation_loss(model, tokenizer, rows: list[dict], *, max_new_tokens: int, batch_size: int = 32) -> float:
    """Mean cross-entropy per response token of `rows`' reference responses (teacher forcing): the
    held-out loss DistiLLM's adaptive schedule reads. One forward per batch, no decoding."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        b = encode_batch(tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk],
                         max_new_tokens).to(device)
        loss_sum, n = sequence_loss_sum(model, None, b, "ce")  # the training step's own CE on labels
        total, tokens = total + float(loss_sum), tokens + n
    model.train(was_training)
    return total / max(tokens, 1)


def self_bleu(samples: list[str]) -> float:
    """Mean BLEU (sacrebleu, 0-100) of each sample against the other samples of the same prompt:
    high = the samples repeat each other (low diversity). GKD Fig. 4 uses it as the diversity axis."""
    import sacrebleu

    if len(samples) < 2:
        raise ValueError("self-BLEU needs at least two samples per prompt")
    scores = [sacrebleu.sentence_bleu(s, samples[:i] + samples[i + 1:]).score for i, s in enumerate(samples)]
    return sum(scores) / len(scores)


@torch.no_grad()
def quality_and_diversity(model, tokenizer, rows: list[dict], *, metric: str, temperature: float,
                          n_samples: int, max_new_tokens: int, seed: int = 0) -> dict:
    """Sample `n_samples` responses per prompt at `temperature`: mean score and mean self-BLEU."""
    prompts = [r["prompt"] for r in rows for _ in range(n_samples)]
    texts = sample_decode(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                          seed=seed)
    groups = [texts[i:i + n_samples] for i in range(0, len(texts), n_samples)]
    records = score_rows([r for r in rows for _ in range(n_samples)], texts, metric)
    return {"temperature": temperature, "score": sum(r["score"] for r in records) / len(records),
            "self_bleu": sum(self_bleu(g) for g in groups) / len(groups)}
