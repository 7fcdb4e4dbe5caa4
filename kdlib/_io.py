"""Writing files so that a reader never sees half of one, and a full disk names the file (torch-free)."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator


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
