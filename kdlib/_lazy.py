"""Module attributes that load on first use (PEP 562), so that `import kdlib` stays light: no torch until a
tensor-facing name is touched."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_attributes(module: str, sources: dict[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` of `module`: a name in `sources` is imported from the module named there on first use
    and kept in `module`'s namespace (later lookups skip this function); any other name is an AttributeError."""

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(sources[name]), name)
        setattr(sys.modules[module], name, value)
        return value

    return __getattr__
