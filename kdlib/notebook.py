"""What the notebooks share: the smoke settings, config grids, and results as data frames.

Notebooks set parameters and call these; no training logic lives in a cell.
"""
from __future__ import annotations

import itertools

import pandas as pd

from kdlib.config import RunConfig

# Smallest settings: every cell runs, in seconds, on tiny models (used by `make smoke` / the tests).
SMOKE = dict(teacher="tiny", teacher_steps=5, student="tiny", steps=3, n_train=64, n_eval=8,
             batch_size=8, max_new_tokens=48, eval_every=2)


def grid(base: dict, smoke: bool = False, **axes) -> list[RunConfig]:
    """One config per combination of `axes` values (each a list), on top of `base`.

    With `smoke`, the smallest settings override the base, but not the axes being compared, and every
    axis but `method` keeps its first two values (each value's code path has its own unit tests)."""
    if smoke:
        axes = {k: (v if k == "method" else v[:2]) for k, v in axes.items()}
    names = list(axes)
    out = []
    for values in itertools.product(*(axes[n] for n in names)):
        d = {**base, **(SMOKE if smoke else {}), **dict(zip(names, values))}
        if smoke:
            d = {**d, **{k: v for k, v in SMOKE.items() if k not in names}}
        out.append(RunConfig(**d))
    return out


def results_frame(results: list[dict]) -> pd.DataFrame:
    """One row per run, the nested fields dropped."""
    return pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, (dict, list))}
                         for r in results])


def curves_frame(results: list[dict]) -> pd.DataFrame:
    """Long format: one row per (run, step) with the metrics logged at that step."""
    rows = []
    for r in results:
        for m in r.get("curve", []):
            rows.append({"method": r["method"], "seed": r["seed"], "task": r["task"],
                         "student": r["student"], **m})
    return pd.DataFrame(rows)


def workload_frame(results: list[dict], roles: list[str]) -> pd.DataFrame:
    """The workload report: role, size, parameters, score per split, training minutes."""
    rows = []
    for role, r in zip(roles, results):
        row = {"role": role, "model": r["student"], "params": r["student_params"],
               "train_minutes": r["train_seconds"] / 60, "steps": r["steps"], "rows": r["n_train"]}
        row.update({k.replace("score_", ""): v for k, v in r.items() if k.startswith("score_")})
        rows.append(row)
    return pd.DataFrame(rows)
