"""Environment switches, read one way everywhere."""
from __future__ import annotations

import os

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_flag(name: str, default: bool = True) -> bool:
    """The boolean environment variable `name` (1/0, true/false, yes/no, on/off, any case; unset or empty:
    `default`); any other value is an error that names the variable and the value."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE | _FALSE:
        return raw in _TRUE
    raise ValueError(f"{name}={os.environ[name]!r}: use 1 or 0 (also true/false, yes/no, on/off)")
