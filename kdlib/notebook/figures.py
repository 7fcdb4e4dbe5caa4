"""Composite figures the notebooks share: a paper's main table, with its paired differences and claims."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdlib.notebook import plots
from kdlib.notebook.claims import best_baseline, paired_claims, paired_table_by
from kdlib.notebook.tables import score_table

__all__ = ["main_table"]


def main_table(results: list[dict], method: str, methods: list[str], *, versus: list[str], label: str, task: str,
               out_dir: str | Path, shown: list[str] | None = None,
               by_pair: bool = False) -> tuple[pd.DataFrame, str, list[str]]:
    """A paper's main table, as notebooks 02 and 03 draw it.

    Writes main_table.md (mean score per method of `shown`, default `methods`; per pair as well when
    `by_pair`, the paper profile), main_differences.md and main_table.png (`method` minus each method in
    `versus` and minus the best of the other `methods`, paired per seed and item, 95 % CI). Returns the
    score table, the best other method (by greedy mean) and one claim line per comparison."""
    table = score_table(results, shown or methods, by=("student", "method") if by_pair else ("method",))
    plots.save_table(table, out_dir, "main_table")
    compared = [r for r in results if r["method"] in methods]
    best = best_baseline(compared, method)  # the highest greedy mean
    diffs = paired_table_by(compared, "student", list(dict.fromkeys([(method, v) for v in versus] + [(method, best)])))
    plots.save_table(diffs, out_dir, "main_differences")
    seeds = len({r["seed"] for r in compared})
    title = f"{task}: {label} minus {', '.join(versus)} and the best other method ({best}); {seeds} seeds, 95 % CI"
    plots.save_figure(plots.differences(diffs, title=title), out_dir, "main_table")
    return table, best, paired_claims(diffs, f"main table: {label} beats")
