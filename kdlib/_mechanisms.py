"""Does a workload have what the papers' methods rely on? Measured on a teacher, a student and held-out rows.

- `teacher_on_references`: the teacher's mean entropy on the reference responses and how often its top-1
  token is the reference token. A one-hot teacher (entropy ≈ 0, top-1 ≈ 100 %) tells a student nothing a
  reference does not, so supervised KD equals SFT by construction.
- `exposure_gap`: the student's per-token agreement with the teacher's top-1 on reference prefixes (what
  teacher forcing trains) against on its own greedy prefixes (what it meets when it writes). A gap is
  what on-policy training can close.
- `teacher_recovery`: the score when the teacher takes over the student's own greedy response right after
  the student's first slip (its first token that is not the teacher's top-1): if this is far above the
  student's own score, the teacher can recover from the student's errors and the metric credits it, so
  supervision on the student's own prefixes is worth something.
"""
from __future__ import annotations

import torch

from kdlib._data import encode_batch, encode_prompts
from kdlib._evaluate import greedy_decode, score_rows
from kdlib._loss import response_logits


@torch.no_grad()
def teacher_on_references(teacher, tokenizer, rows: list[dict], *, max_new_tokens: int, batch_size: int = 64
                          ) -> dict:
    """Mean entropy (nats) of the teacher's next-token distribution over reference response positions, the
    share of positions above 0.1 nats, and the share where its top-1 token is the reference token."""
    teacher.eval()
    ent_sum, high, agree, n = 0.0, 0, 0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        b = encode_batch(tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk], max_new_tokens)
        logp = response_logits(teacher, b).float().log_softmax(-1)  # (B, N, V)
        mask = b.response_mask[:, b.prompt_length:]  # (B, N)
        ent = -(logp.exp() * logp).sum(-1)  # (B, N)
        ent_sum += float(ent[mask].sum())
        high += int((ent[mask] > 0.1).sum())
        agree += int((logp.argmax(-1) == b.input_ids[:, b.prompt_length:])[mask].sum())
        n += int(mask.sum())
    return {"teacher_entropy": ent_sum / max(n, 1), "share_above_0.1_nats": high / max(n, 1),
            "teacher_top1_is_reference": agree / max(n, 1), "positions": n}


def own_responses(student, tokenizer, rows: list[dict], *, max_new_tokens: int) -> list[str]:
    """The student's greedy responses to `rows`' prompts: what `exposure_gap` and `teacher_recovery` read."""
    return greedy_decode(student, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens)


@torch.no_grad()
def _agreement(student, teacher, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) bool: the batch's response token is the teacher's top-1 there; and the response mask."""
    t_top = response_logits(teacher, batch).argmax(-1)  # (B, N)
    return t_top == batch.input_ids[:, batch.prompt_length:], batch.response_mask[:, batch.prompt_length:]


@torch.no_grad()
def exposure_gap(student, teacher, tokenizer, rows: list[dict], *, max_new_tokens: int, batch_size: int = 64,
                 own: list[str] | None = None) -> dict:
    """Per-token agreement of the student's top-1 with the teacher's top-1, on reference prefixes (teacher
    forcing) and on the student's own greedy prefixes (`own`, decoded here when not given); the gap is the
    first minus the second."""
    student.eval(), teacher.eval()
    ref_hits, ref_n, own_hits, own_n = 0, 0, 0, 0
    own = own if own is not None else own_responses(student, tokenizer, rows, max_new_tokens=max_new_tokens)
    for i in range(0, len(rows), batch_size):
        chunk, mine = rows[i:i + batch_size], own[i:i + batch_size]
        b = encode_batch(tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk], max_new_tokens)
        s_top = response_logits(student, b).argmax(-1)  # (B, N)
        t_top = response_logits(teacher, b).argmax(-1)
        mask = b.response_mask[:, b.prompt_length:]
        ref_hits, ref_n = ref_hits + int((s_top == t_top)[mask].sum()), ref_n + int(mask.sum())
        # on its own greedy response the student's top-1 is its own token: compare it with the teacher's
        ob = encode_batch(tokenizer, [r["prompt"] for r in chunk], [m or "." for m in mine], max_new_tokens)
        hits, mask = _agreement(student, teacher, ob)
        own_hits, own_n = own_hits + int(hits[mask].sum()), own_n + int(mask.sum())
    ref, mine = ref_hits / max(ref_n, 1), own_hits / max(own_n, 1)
    return {"agreement_on_reference_prefixes": ref, "agreement_on_own_prefixes": mine, "exposure_gap": ref - mine}


@torch.no_grad()
def teacher_recovery(student, teacher, tokenizer, rows: list[dict], *, metric: str, max_new_tokens: int,
                     batch_size: int = 64, own: list[str] | None = None) -> dict:
    """Scores of: the student's greedy responses (`own`, decoded here when not given); the teacher's own
    greedy responses; and the teacher continuing each student response right after the student's first slip
    (the slip kept). Rows without a slip keep the student's response. `slipped` is the share of rows with a
    slip."""
    student.eval(), teacher.eval()
    prompts = [r["prompt"] for r in rows]
    own = own if own is not None else own_responses(student, tokenizer, rows, max_new_tokens=max_new_tokens)
    teacher_own = greedy_decode(teacher, tokenizer, prompts, max_new_tokens=max_new_tokens)
    recovered, slipped = [], 0
    for i in range(0, len(rows), batch_size):
        chunk, mine = rows[i:i + batch_size], own[i:i + batch_size]
        b = encode_batch(tokenizer, [r["prompt"] for r in chunk], [m or "." for m in mine], max_new_tokens)
        hits, mask = _agreement(student, teacher, b)
        slips = (~hits & mask)
        for j, text in enumerate(mine):
            if not slips[j].any():
                recovered.append(text)
                continue
            slipped += 1
            cut = int(slips[j].float().argmax())  # the first slip, kept in the prefix
            prefix_ids = b.input_ids[j, b.prompt_length:b.prompt_length + cut + 1]
            prefix = tokenizer.decode(prefix_ids, skip_special_tokens=True)
            ids, m = encode_prompts(tokenizer, [chunk[j]["prompt"]])
            ext = tokenizer(" " + prefix, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids, m = torch.cat([ids, ext], 1), torch.cat([m, torch.ones_like(ext)], 1)
            out = teacher.generate(input_ids=ids, attention_mask=m, max_new_tokens=max(1, max_new_tokens - cut - 1),
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
            rest = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            recovered.append((prefix + " " + rest).strip())

    def mean(preds):
        recs = score_rows(rows, preds, metric)
        return sum(r["score"] for r in recs) / max(len(recs), 1)

    return {"student": mean(own), "teacher": mean(teacher_own), "teacher_after_student_slip": mean(recovered),
            "slipped": slipped / max(len(rows), 1)}
