"""Embedded tasks: generated from a seed, written as JSONL, loaded through `datasets` like real data.

Two flavours mirror the papers' benchmarks:

- ``arith`` (GSM8K analog): a word problem that changes one quantity step by step; the response
  is a written-out chain of thought, one equation per step, then ``#### <answer>``. Every step
  uses the previous result, so one wrong token corrupts everything after it (errors compound).
  Its ``arith_plus`` test split (GSM-Plus analog) inserts distractor sentences about other people.
- ``summ`` (DialogSum / Dolly analog, scored by ROUGE-L): a dialogue in which speakers state
  plans and sometimes correct the day of the previous plan; the response summarises every plan in
  the third person with the corrected day. It needs copying, pronoun rewriting and tracking
  corrections across turns. Each reference is one of several valid phrasings, so the teacher's
  distribution carries information that a single reference does not.

Response lengths span more than 4x (one step / one plan to many) so length analyses mean something.
Every token is a whitespace-separated word; numbers 0..99 are single tokens.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from kdlib._io import atomic_path

NAMES = ["ana", "ben", "cara", "dan", "eva", "finn", "gus", "hana", "ivo", "jana", "kai", "lea"]
PRONOUN = {n: ("she" if n in {"ana", "cara", "eva", "hana", "jana", "lea"} else "he") for n in NAMES}
ITEMS = ["apples", "pears", "coins", "books", "stamps", "shells", "cards", "marbles"]
GAIN_VERBS = ["gets", "buys", "finds", "wins"]
LOSS_VERBS = ["gives away", "eats", "loses", "sells"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
ACTIONS = [
    ("visit", ["grandma", "the museum", "the zoo", "the doctor", "the lake"]),
    ("buy", ["milk", "a bike", "new shoes", "bread", "a gift"]),
    ("clean", ["the garage", "the kitchen", "the car", "the garden"]),
    ("call", ["the bank", "the school", "mom", "the plumber"]),
    ("fix", ["the roof", "the door", "the bike", "the sink"]),
]
# The reference picks one phrasing at random (mostly "will"): several summaries are valid, so the
# teacher's distribution carries information a single reference does not.
FUTURE_FORMS = ["will", "is going to", "plans to"]
FUTURE_WEIGHTS = [0.8, 0.1, 0.1]
MAX_NUMBER = 99
TASKS = ("arith", "summ")


@dataclass(frozen=True)
class TaskSpec:
    """How many rows of which task to generate; `seed` fixes every row."""

    task: str
    n_train: int = 20000
    n_test: int = 300
    min_steps: int = 1
    max_steps: int = 6
    seed: int = 0


def _arith_example(rng: random.Random, n_steps: int, n_distractors: int) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(1, 20)
    sentences = [f"{name} has {value} {item} ."]
    equations = []
    for _ in range(n_steps):
        gain = value <= 9 or (value < MAX_NUMBER - 9 and rng.random() < 0.5)
        delta = rng.randint(1, 9) if gain else rng.randint(1, min(9, value))
        verb = rng.choice(GAIN_VERBS if gain else LOSS_VERBS)
        sentences.append(f"{PRONOUN[name]} {verb} {delta}{' more' if gain else ''} .")
        new = value + delta if gain else value - delta
        equations.append(f"{value} {'+' if gain else '-'} {delta} = {new} .")
        value = new
    for _ in range(n_distractors):  # a fact about someone else, irrelevant to the question
        other = rng.choice([n for n in NAMES if n != name])
        pos = rng.randint(1, len(sentences))
        sentences.insert(pos, f"{other} has {rng.randint(1, 20)} {rng.choice(ITEMS)} .")
    question = f"how many {item} does {name} have now ?"
    return {
        "prompt": " ".join(sentences + [question]),
        "response": " ".join(equations + [f"#### {value}"]),
        "answer": str(value),
        "steps": n_steps,
    }


def _summ_example(rng: random.Random, n_plans: int) -> dict:
    speakers = rng.sample(NAMES, 2)
    turns, summary = [], []
    for i in range(n_plans):
        who = speakers[i % 2]
        verb, objects = rng.choice(ACTIONS)
        obj, day = rng.choice(objects), rng.choice(DAYS)
        turns.append(f"{who} : i will {verb} {obj} on {day} .")
        if rng.random() < 0.3:  # the other speaker asks, the first corrects the day
            day = rng.choice([d for d in DAYS if d != day])
            other = speakers[(i + 1) % 2]
            turns.append(f"{other} : really ? {who} : no , on {day} .")
        form = rng.choices(FUTURE_FORMS, FUTURE_WEIGHTS)[0]
        summary.append(f"{who} {form} {verb} {obj} on {day} .")
    return {
        "prompt": "summarize : " + " ".join(turns),
        "response": " ".join(summary),
        "answer": "",
        "steps": n_plans,
    }


def generate_rows(spec: TaskSpec, split: str) -> list[dict]:
    """Rows of one split: ``train``, ``test`` or (arith only) ``plus``; deterministic in spec.seed."""
    if spec.task not in TASKS:
        raise ValueError(f"unknown embedded task {spec.task!r}; choose one of {TASKS}")
    if split not in ("train", "test", "plus"):
        raise ValueError(f"unknown split {split!r}; choose train, test or plus")
    if split == "plus" and spec.task != "arith":
        raise ValueError("the perturbed 'plus' split exists for the arith task only")
    offset = {"train": 0, "test": 1, "plus": 2}[split]
    rng = random.Random(f"{spec.task}-{spec.seed}-{offset}")
    n = spec.n_train if split == "train" else spec.n_test
    rows = []
    for i in range(n):
        steps = rng.randint(spec.min_steps, spec.max_steps)
        if spec.task == "arith":
            distractors = 2 if split == "plus" else int(rng.random() < 0.15)
            row = _arith_example(rng, steps, distractors)
        else:
            row = _summ_example(rng, steps)
        rows.append({"id": f"{spec.task}-{split}-{i}", **row})
    return rows


def vocabulary() -> list[str]:
    """Every word the embedded tasks can produce, in a fixed order."""
    words = {str(i) for i in range(MAX_NUMBER + 1)}
    words |= {".", "?", ",", ":", "+", "-", "=", "####", "has", "more", "how", "many", "does",
              "have", "now", "she", "he", "summarize", "i", "on", "really", "no"}
    phrases = NAMES + ITEMS + GAIN_VERBS + LOSS_VERBS + DAYS + FUTURE_FORMS
    phrases += [verb for verb, _ in ACTIONS] + [o for _, objs in ACTIONS for o in objs]
    for phrase in phrases:
        words |= set(phrase.split())
    return sorted(words)


def write_jsonl(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows atomically: a reader never sees a half-written file."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return Path(path)
