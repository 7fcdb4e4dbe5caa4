"""Results as data frames and tables: one row per run, per step, per item, per method."""
from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from kdlib._runcache import folder_of
from kdlib.notebook.measure import divergence_label, workload_frame  # noqa: F401 - the notebooks read them here


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


def scores_long(results: list[dict]) -> pd.DataFrame:
    """One row per (run, evaluation set): method, task, eval set, set ("task/eval"), seed, score."""
    rows = []
    for r in results:
        for key, value in r.items():
            if key.startswith("score_"):
                rows.append({"method": r["method"], "task": r["task"], "student": r["student"],
                             "eval": key[len("score_"):], "set": f"{r['task']}/{key[len('score_'):]}",
                             "seed": r["seed"], "score": value})
    return pd.DataFrame(rows)


def score_table(results: list[dict], methods: list[str], by: tuple = ("method",)) -> pd.DataFrame:
    """Methods x (task / evaluation set): the number of seeds behind each row (`seeds`: a table may mix
    methods run on 5 seeds with ones on 2, whose means are then not comparable), and per set a column with
    the mean over seeds and one "<set> sd" with their standard deviation across seeds (empty with one
    seed), methods in the given order."""
    long = scores_long(results)
    stats = long.groupby(list(by) + ["set"], sort=False)["score"].agg(["mean", "std"])
    table = stats.unstack("set")
    sets = list(dict.fromkeys(long["set"]))  # first-seen order
    table = pd.concat({"seeds": long.groupby(list(by), sort=False)["seed"].nunique(),
                       **{c: table[(stat, s)] for s in sets for c, stat in ((s, "mean"), (f"{s} sd", "std"))}},
                      axis=1)
    if list(by) == ["method"]:
        table = table.reindex([m for m in methods if m in table.index])
    return table.reset_index()


def item_scores(results: list[dict], split: str = "test", settings: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-item scores of finished runs on one evaluation set (`split`, e.g. "test", "plus", "test_t1" for
    the temperature-1 samples): one row per (run, item) with method, seed, student, task, item id, score,
    and `settings[i]` as column "setting" for the i-th run when given; read from each run's
    predictions-<split>.jsonl in the run cache."""
    rows = []
    for k, r in enumerate(results):
        path = folder_of(r["hash"]) / f"predictions-{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: run {r['hash']} ({r['method']} seed {r['seed']}) has no per-item "
                                    f"scores for {split!r}; its evaluation sets are {r.get('eval_splits')}")
        for i, line in enumerate(path.read_text().splitlines()):
            rec = json.loads(line)
            rows.append({"method": r["method"], "seed": r["seed"], "student": r["student"], "task": r["task"],
                         "item": rec.get("id") or i, "ref_words": rec.get("ref_words"), "score": rec["score"],
                         **({"setting": settings[k]} if settings is not None else {})})
    return pd.DataFrame(rows)


def evaluated(curves: pd.DataFrame) -> pd.DataFrame:
    """The `curves_frame` rows that carry a score: the steps evaluated during training (none when every run
    had eval_every 0, whose frame has no eval_score column)."""
    return curves.dropna(subset=["eval_score"]) if "eval_score" in curves else curves.iloc[:0]


def runtime_table(runs: pd.DataFrame, by: str = "setting", refs: Sequence[str] = ("onpolicy", "skd")) -> pd.DataFrame:
    """Seconds per step per method (rows) and `by` value (columns), mean over seeds, plus "<col> / <ref>"
    ratio columns for each reference method present (a missing reference is skipped, not an error)."""
    rt = runs.groupby([by, "method"], sort=False)["seconds_per_step"].mean().unstack(by)
    present = list(rt.columns)
    for ref in refs:
        if ref in rt.index:
            rt[[f"{c} / {ref}" for c in present]] = rt[present].div(rt.loc[ref, present])
    return rt.reset_index()


def relative_to(runs: pd.DataFrame, ref: str, value: str = "seconds_per_step", by: str = "setting") -> pd.DataFrame:
    """`runs` (one row per run) with a "relative" column: each run's `value` over the mean `value` of the
    `ref` method's runs in the same `by` group (what the runtime figure plots per seed). Groups without a
    `ref` run are dropped; an empty frame if `ref` never ran."""
    mean_ref = runs[runs.method == ref].groupby(by)[value].mean().rename("_ref")
    out = runs.join(mean_ref, on=by, how="inner")  # keeps the rows' order
    return out.assign(relative=out[value] / out["_ref"]).drop(columns="_ref")
