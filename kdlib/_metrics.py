"""Metrics, torch-free: ROUGE-L F (stemmed), exact match, and GSM-style numeric-answer accuracy."""
from __future__ import annotations

import re

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_ANSWER_PATTERNS = [re.compile(r"####\s*(" + _NUMBER + ")"),
                    re.compile(r"[Tt]he answer is:?\s*\$?(" + _NUMBER + ")")]


def extract_answer(text: str):
    """The final number of a response: after `####` or "The answer is"; else the last number."""
    for pattern in _ANSWER_PATTERNS:
        found = pattern.findall(text)
        if found:
            return _to_number(found[-1])
    numbers = re.findall(_NUMBER, text)
    return _to_number(numbers[-1]) if numbers else None


def _to_number(s: str):
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def answer_correct(response: str, reference_answer: str) -> bool:
    got, want = extract_answer(response), _to_number(str(reference_answer))
    return got is not None and want is not None and abs(got - want) < 1e-6


_SCORER = None


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure with stemming, from the `rouge-score` package."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure


def exact_match(reference: str, prediction: str) -> float:
    """1.0 when the two texts are equal after collapsing whitespace, else 0.0."""
    return float(" ".join(reference.split()) == " ".join(prediction.split()))


def _pattern_answer(text: str, pattern: str):
    found = [m.group(1) for m in re.finditer(pattern, text)]
    return found[-1].strip() if found else None


def score_prediction(metric: str, prediction: str, row: dict) -> float:
    """The score of one prediction for `row`: 'accuracy' compares its answer with row['answer'] (numerically;
    by row['answer_pattern'] when the row's task gives one, numerically when both are numbers, else as text),
    'exact' the whole text, 'rougeL' the best match over row['references'] (MiniLLM's eval sets) or the
    response."""
    if metric == "accuracy":
        pattern = row.get("answer_pattern")
        if not pattern:
            return float(answer_correct(prediction, row["answer"]))
        got, want = _pattern_answer(prediction, pattern), str(row["answer"]).strip()
        if got is None:
            return 0.0
        a, b = _to_number(got), _to_number(want)
        return float(abs(a - b) < 1e-6) if a is not None and b is not None else float(got == want)
    if metric == "exact":
        return exact_match(row["response"], prediction)
    if metric == "rougeL":
        return max(rouge_l(ref, prediction) for ref in (row.get("references") or [row["response"]]))
    raise ValueError(f"metric {metric!r} is unknown; choose rougeL, exact or accuracy")
