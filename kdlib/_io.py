"""Files, torch-free: JSONL read line by line with each problem named by file and line; writes that a reader
never sees half of, with a full disk naming the file."""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Iterator


def json_lines(path) -> Iterator[tuple[int, dict]]:
    """(line number counted from 1, object) for every non-blank line of a JSONL file; a line that is not
    UTF-8, not JSON or not a JSON object raises ValueError naming the file and the line."""
    path = Path(path)
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: line {i}: not UTF-8 text "
                                 f"(byte {e.start}: {raw[e.start:e.start + 4]!r})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {i}: a JSON object {{...}} per line is expected, "
                                 f"got {type(obj).__name__}")
            yield i, obj


def check_text(value: str, where: str, field: str) -> None:
    """JSON may spell a lone UTF-16 surrogate ("\\ud800"), which no tokenizer can encode: name it here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: field {field!r} holds {value[e.start:e.end]!r} at character {e.start}, a lone "
                         "UTF-16 surrogate (an escape like \\ud800 without its pair): not text") from None


def read_text(path) -> str:
    """A text file's contents as UTF-8; a file that is not names itself, its line and the byte."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                         "save it as UTF-8") from None


@contextlib.contextmanager
def writing(path: Path):
    """Name the file and the cause when a write fails: torch's and safetensors' own messages on a full disk
    ("enforce fail at inline_container.cc", "No space left on device") do not say where."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        text = str(e)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in text or "inline_container" in text:
            raise OSError(errno.ENOSPC, f"no space left on the device while writing {path} "
                          f"({text.splitlines()[0][:200]}); "
                          "free space and run again: finished runs and checkpoints are kept") from e
        raise


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to; renamed onto `path` when the block ends without error, so a
    reader (or a resumed run) never finds a half-written file. A full disk names `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        yield tmp
    os.replace(tmp, path)


def atomic_write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_jsonl(path) -> int:
    """Read `path` line by line before `datasets` does, so a bad file is named with its line (counted from 1)
    and what is wrong: not UTF-8, not JSON, not an object, or no rows at all. Returns the number of rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    n = sum(1 for _ in json_lines(path))
    if n == 0:
        raise ValueError(f"{path}: no rows (the file is empty)")
    return n
