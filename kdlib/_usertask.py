"""Your own task: a folder of JSONL files, scored by the metric you choose. Torch-free, so a config that
names one validates its files before anything is trained.

    my_task/
      train.jsonl    one JSON object per line: a prompt and a response (field names: task.yaml)
      test.jsonl     a held-out split; every other <split>.jsonl is one more
      task.yaml      optional: name, metric, field names, answer pattern (defaults below)

task.yaml (every key optional):
    name: my_task              # what tables, titles and provenance call it (default: the folder's name)
    metric: rougeL             # rougeL | exact (whitespace-normalised match) | accuracy (numeric answer)
    prompt_field: prompt
    response_field: response
    answer_field: answer       # accuracy: the reference answer (default: extracted from the response)
    answer_pattern: '#### (\\S+)'  # accuracy: a regex whose group 1 is the answer in a prediction
                                  # (default: after '####' or 'The answer is', else the last number)

`task=path/to/my_task` selects it (CLI, configs, notebooks). The config's hash includes a digest of the
files, so editing the data retrains instead of reading a stale cached run.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdlib._io import check_text, json_lines, read_text
from kdlib._metrics import _pattern_answer, extract_answer

METRICS = ("rougeL", "exact", "accuracy")
KEYS = ("name", "metric", "prompt_field", "response_field", "answer_field", "answer_pattern")


@dataclass(frozen=True)
class UserTask:
    path: str
    name: str
    metric: str
    prompt_field: str
    response_field: str
    answer_field: str
    answer_pattern: str
    splits: tuple  # every <split>.jsonl, train first
    digest: str  # sha256 of task.yaml and every split file, 12 hex digits


def is_user_task(task: str) -> bool:
    """A folder on disk (an embedded task or paper dataset name is a plain word)."""
    return ("/" in task or task.startswith(".")) or Path(task).expanduser().is_dir()


def spec(task: str) -> UserTask:
    """The task folder's description, every file checked (file, line and field named on an error)."""
    path = Path(task).expanduser().resolve()
    stamps = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(path.glob("*"))
                   if p.suffix in (".jsonl", ".yaml")) if path.is_dir() else ()
    return _spec(str(path), stamps)


@functools.lru_cache(maxsize=8)
def _spec(path: str, stamps: tuple) -> UserTask:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"task folder {folder} does not exist (a task of your own is a folder with "
                                "train.jsonl and test.jsonl)")
    options = _options(folder)
    splits = sorted(p.stem for p in folder.glob("*.jsonl"))
    for needed in ("train", "test"):
        if needed not in splits:
            raise FileNotFoundError(f"task folder {folder} has no {needed}.jsonl (it has {splits or 'no JSONL file'})")
    splits = ("train", *[s for s in splits if s != "train"])
    digest = hashlib.sha256()
    for name in ["task.yaml", *[f"{s}.jsonl" for s in splits]]:
        if (folder / name).exists():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    task = UserTask(path=str(folder), splits=splits, digest=digest.hexdigest()[:12], **options)
    for split in splits:
        _read(task, split)  # every row of every file checked now, before any training
    return task


def _options(folder: Path) -> dict:
    opts = {"name": folder.name, "metric": "rougeL", "prompt_field": "prompt", "response_field": "response",
            "answer_field": "answer", "answer_pattern": ""}
    f = folder / "task.yaml"
    if f.exists():
        try:
            given = yaml.safe_load(read_text(f)) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{f}: not valid YAML: {e}") from None
        if not isinstance(given, dict):
            raise ValueError(f"{f}: expected a mapping of {list(KEYS)}, got {type(given).__name__}")
        unknown = sorted(set(given) - set(KEYS))
        if unknown:
            raise ValueError(f"{f}: unknown key(s) {unknown}; known: {list(KEYS)}")
        for key, value in given.items():
            if not isinstance(value, str) or (not value and key != "answer_pattern"):
                raise ValueError(f"{f}: {key} must be a non-empty string, got {value!r}")
        opts.update(given)
    if opts["metric"] not in METRICS:
        raise ValueError(f"{f}: metric={opts['metric']!r} is unknown; choose one of {list(METRICS)}")
    if opts["answer_pattern"]:
        try:
            groups = re.compile(opts["answer_pattern"]).groups
        except re.error as e:
            raise ValueError(f"{f}: answer_pattern {opts['answer_pattern']!r} is not a regular expression: {e}") \
                from None
        if groups < 1:
            raise ValueError(f"{f}: answer_pattern {opts['answer_pattern']!r} needs a group: '(...)' around the answer")
    return opts


@functools.lru_cache(maxsize=16)
def _read(task: UserTask, split: str) -> tuple:
    path = Path(task.path) / f"{split}.jsonl"
    rows, lines = [], {}
    for n, (i, obj) in enumerate(json_lines(path)):
        row = _row(task, obj, f"{path}: line {i}", f"{task.name}-{split}-{n}")
        if row["id"] in lines:  # paired comparisons match items by id: two rows under one id would merge
            raise ValueError(f"{path}: lines {lines[row['id']]} and {i} have the same id {row['id']!r}; "
                             "ids must be unique within a split (or leave them out: kdlib numbers the rows)")
        lines[row["id"]] = i
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return tuple(rows)


def _row(task: UserTask, obj: dict, where: str, default_id: str) -> dict:
    given_id = obj.get("id")
    if given_id is not None and (isinstance(given_id, bool) or not isinstance(given_id, (str, int))
                                 or str(given_id).strip() == ""):
        raise ValueError(f"{where}: field 'id' must be a non-empty string or an integer, got {given_id!r}")
    out = {"id": default_id if given_id is None else str(given_id), "steps": None}
    for key, field in (("prompt", task.prompt_field), ("response", task.response_field)):
        value = obj.get(field)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: field {field!r} must be a non-empty string, got {value!r}"
                             + (f" (the line's fields: {sorted(obj)}; set {key}_field in task.yaml)"
                                if field not in obj else ""))
        check_text(value, where, field)
        out[key] = value
    answer = obj.get(task.answer_field)
    if task.metric == "accuracy":
        if answer is None:
            answer = extract(out["response"], task.answer_pattern)
        if answer is None or str(answer).strip() == "":
            raise ValueError(f"{where}: metric accuracy needs an answer: no field {task.answer_field!r} and none "
                             "found in the response" + (f" by answer_pattern {task.answer_pattern!r}"
                                                        if task.answer_pattern else " (no '####' or number)"))
    out["answer"] = "" if answer is None else str(answer)
    check_text(out["answer"], where, task.answer_field)
    check_text(out["id"], where, "id")
    if task.answer_pattern:
        out["answer_pattern"] = task.answer_pattern
    return out


def row_count(task: str, split: str) -> int:
    """The rows of a split of the task folder."""
    return len(_read(spec(task), split))


def extract(text: str, pattern: str = ""):
    """The answer in `text`: group 1 of the last match of `pattern`; without a pattern, kdlib's GSM rule
    (after '####' or 'The answer is', else the last number), as a string."""
    if pattern:
        return _pattern_answer(text, pattern)
    value = extract_answer(text)
    return None if value is None else (str(int(value)) if float(value).is_integer() else str(value))


def load_rows(task: str, split: str, n: int | None = None) -> list[dict]:
    """The first `n` rows of a split of the task folder (all when None), as kdlib's row dicts."""
    t = spec(task)
    if split not in t.splits:
        raise ValueError(f"task {t.name!r} ({t.path}) has no split {split!r}; it has {list(t.splits)}")
    rows = _read(t, split)
    return [dict(r) for r in (rows[:n] if n is not None else rows)]


def tokenizer_texts(task: str) -> list[str]:
    """The training prompts and responses: what an embedded-size pair's tokenizer is built from."""
    return [text for r in load_rows(task, "train") for text in (r["prompt"], r["response"])]
