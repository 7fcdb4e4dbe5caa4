"""The rows a run reads and the tokenizer it reads them with: an embedded task's split, a task folder of your
own, or a paper dataset (formatted for the pair's chat template, prompts cut to the dataset's length);
held-out validation rows; the metric each split is scored with."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from kdlib import _paper as paper
from kdlib import _usertask as usertask
from kdlib import _workload as workload
from kdlib._config import RunConfig
from kdlib._models import check_same_tokenizer, load_tokenizer
from kdlib._names import EMBEDDED_CONTEXT, EMBEDDED_SIZES, TASK_METRIC

if TYPE_CHECKING:  # annotations only
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def load_rows(cfg: RunConfig, split: str, n: int | None = None,
              tok: PreTrainedTokenizerBase | None = None) -> list[dict]:
    """Rows of `split` for `cfg`: an embedded task's split, or a paper dataset ('test', 'gsm_plus',
    'dolly:test'; see kdlib._paper.parse_split) formatted for the tokenizer's chat template or not."""
    if cfg.profile == "embedded":
        if cfg.user_task is not None:
            return usertask.load_rows(cfg.task, split, n)
        return workload.load_split(cfg.task, split, n)
    name, s = paper.parse_split(cfg.task, split)
    tok = tok if tok is not None else resolve_tokenizer(cfg)
    rows = paper.load_rows(name, s, n, chat=bool(getattr(tok, "chat_template", None)),
                           data_dir=cfg.data_dir or None)
    return truncate_prompts(rows, tok, paper.DATASETS[name].max_prompt_tokens, f"{name}/{s}")


def truncate_prompts(rows: list[dict], tok, max_tokens: int, what: str = "") -> list[dict]:
    """Cut each prompt to its first `max_tokens` tokens (MiniLLM's rule), so that prompt plus
    max_new_tokens fits the model; logs how many were cut."""
    cut = 0
    for row in rows:
        ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            row["prompt"] = tok.decode(ids[:max_tokens])
            cut += 1
    if cut:
        log.warning("%s: %d of %d prompts cut to %d tokens", what, cut, len(rows), max_tokens)
    return rows


def task_metric(cfg: RunConfig, split: str = "train") -> str:
    if cfg.profile == "embedded":
        task = cfg.user_task
        return task.metric if task is not None else TASK_METRIC[cfg.task]
    return paper.DATASETS[paper.parse_split(cfg.task, split)[0]].metric


def split_label(split: str) -> str:
    """The column name of a split's score: 'test', 'plus', 'gsm_plus' (from 'gsm_plus:test')."""
    return split.split(":", 1)[0]


def validation_rows(cfg: RunConfig, tok=None) -> list[dict]:
    """Held-out rows for model selection and DistiLLM's schedule: an embedded task's training rows past
    the n_train the student sees (the pool holds 40 000), a paper dataset's or a task folder's validation
    split (else the end of its training split, past n_train; RunConfig checks a folder has some)."""
    n = min(cfg.n_eval, 200)
    if cfg.profile == "paper" and "validation" in paper.DATASETS[cfg.task].splits:
        return load_rows(cfg, "validation", n, tok)
    if cfg.user_task is not None and "validation" in cfg.user_task.splits:  # a task folder's validation.jsonl
        return load_rows(cfg, "validation", n, tok)
    rows = load_rows(cfg, "train", None, tok)
    held = rows[cfg.n_train:cfg.n_train + n]
    if not held:
        raise ValueError(f"{cfg.task}: no training rows past n_train={cfg.n_train} to validate on")
    return held


def named_path(name: str) -> str:
    """A pretrained name of the embedded profile (smollm2, …), a local directory, or a hub name (from
    a local copy under $KDLIB_MODELS when there is one; see kdlib._paper.model_path)."""
    return str(workload.PRETRAINED[name]()) if name in workload.PRETRAINED else paper.model_path(name)


def _load_tokenizer(role: str, name: str):
    """The tokenizer of `name`, or an error naming the role and the name (the hub's own says neither)."""
    path = named_path(name)
    try:
        return load_tokenizer(path)
    except (OSError, ValueError) as e:
        where = "" if path == name else f" (read from {path})"
        raise ValueError(f"{role}={name!r}{where}: its tokenizer could not be loaded: {str(e).splitlines()[0][:300]}"
                         " — a hub name needs the network or a local copy (HF_HUB_OFFLINE=1 fails at once instead "
                         "of retrying); a local folder is written with './' or '/'") from e


def resolve_tokenizer(cfg: RunConfig):
    """The pair's tokenizer; teacher and student must share it (and its chat template)."""
    named = [n for n in (cfg.teacher, cfg.student) if n not in EMBEDDED_SIZES]
    if not named:
        return workload.embedded_tokenizer(cfg.task)
    if len(named) == 1:
        raise ValueError(f"teacher={cfg.teacher!r} and student={cfg.student!r}: an embedded size "
                         "cannot be paired with a pretrained model (their tokenizers differ)")
    if cfg.teacher == cfg.student:  # a named model's own fine-tuning run
        return _load_tokenizer("student", cfg.student)
    toks = [_load_tokenizer(role, n) for role, n in (("teacher", cfg.teacher), ("student", cfg.student))]
    if cfg.chat_template_from == "student":
        toks[0].chat_template = toks[1].chat_template
    elif cfg.chat_template_from == "teacher":
        toks[1].chat_template = toks[0].chat_template
    check_same_tokenizer(*toks)
    return toks[1]


def check_row_lengths(cfg: RunConfig, tok) -> None:
    """A task folder of your own: warn, before anything trains, when rows do not fit the pair's context
    (prompt + response for training rows, prompt + max_new_tokens for held-out ones), naming the file, the
    first such line's row and the lengths. Rotary models run past their context without an error, and read
    it worse; the paper profile cuts prompts instead (truncate_prompts)."""
    task = cfg.user_task
    if task is None:
        return
    limit = min(_context(cfg.teacher), _context(cfg.student))
    if not limit:
        return
    for split in ("train", *cfg.eval_splits):
        rows = usertask.load_rows(cfg.task, split, cfg.n_train if split == "train" else cfg.n_eval)
        extra = _token_counts(tok, [r["response"] for r in rows]) if split == "train" else \
            [cfg.max_new_tokens] * len(rows)
        n = [a + b for a, b in zip(_token_counts(tok, [r["prompt"] for r in rows]), extra)]
        long = [(i, row["id"], k) for i, (row, k) in enumerate(zip(rows, n)) if k > limit]
        if long:
            i, row_id, n = long[0]
            log.warning("%s/%s.jsonl: %d of %d rows are longer than the pair's context of %d positions (the first: "
                        "row %d, id %r, %d tokens%s); shorten them, or expect the models to read them worse",
                        task.path, split, len(long), len(rows), limit, i + 1, row_id, n,
                        "" if split == "train" else f" with max_new_tokens={cfg.max_new_tokens}")


def _token_counts(tok, texts: list[str]) -> list[int]:
    """Tokens per text, in one call (a fast tokenizer encodes the whole list at once)."""
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def _context(name: str) -> int:
    """The positions a model was made for: the embedded sizes' 512, else config.json's
    max_position_embeddings (0 when it says none)."""
    if name in EMBEDDED_SIZES:
        return EMBEDDED_CONTEXT
    config = Path(named_path(name)) / "config.json"
    if not config.is_file():
        return 0
    return int(json.loads(config.read_text()).get("max_position_embeddings") or 0)
