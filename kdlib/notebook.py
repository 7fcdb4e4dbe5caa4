"""What the notebooks share: the smoke settings, config grids, and results as data frames.

Notebooks set parameters and call these; no training logic lives in a cell.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

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
    """The workload report: role, size, parameters, score per split, training minutes, and where those
    minutes were measured: "here" (trained by this cache's machine) or "shipped" (a run copied from
    kdlib/shipped/, its minutes those of the machine that trained it)."""
    rows = []
    for role, r in zip(roles, results):
        row = {"role": role, "model": r["student"], "params": r["student_params"],
               "train_minutes": r["train_seconds"] / 60, "trained": "shipped" if r.get("shipped") else "here",
               "steps": r["steps"], "rows": r["n_train"]}
        row.update({k.replace("score_", ""): v for k, v in r.items() if k.startswith("score_")})
        rows.append(row)
    return pd.DataFrame(rows)


def eval_splits(task: str) -> tuple:
    """The held-out sets a notebook scores on: every split of the task but train (arith: test and its
    perturbed "plus" split). Notebooks use the same sets so the runs they share are trained once."""
    from kdlib import workload

    return tuple(s for s in workload.TASK_SPLITS.get(task, ("train", "test")) if s != "train")


def workload_report(tasks: list[str], students: list[str], *, n_train: int, steps: int,
                    smoke: bool = False) -> pd.DataFrame:
    """The embedded workload table: per task, the teacher (`kdlib.experiments.teacher_recipe`) and each
    student trained by SFT alone on `n_train` rows (`sft_init_recipe`, the warm-up every distillation
    method starts from), with parameters, training minutes, steps, rows and a score per held-out set.
    Trains what is not cached yet."""
    from kdlib.experiments import run, run_grid, sft_init_recipe, teacher_config

    parts = []
    for task in tasks:
        base = dict(task=task, n_train=n_train, steps=steps, eval_splits=eval_splits(task))
        sft = [sft_init_recipe(c) for c in grid(base, smoke, student=students)]
        report = [run(teacher_config(grid(base, smoke)[0]))] + run_grid(sft)
        roles = ["teacher"] + ["student (SFT only)"] * len(sft)
        parts.append(workload_frame(report, roles).assign(task=task))
    table = pd.concat(parts, ignore_index=True)
    return table[["task"] + [c for c in table if c != "task"]]


def table_configs(profile: str, table: str, embedded: list[RunConfig], seeds) -> list[RunConfig]:
    """The configs behind one paper table or figure: the embedded grid the notebook built, or, with
    profile='paper', the paper table's runs (`kdlib.paper.TABLES[table]`: hub pairs and datasets)."""
    if profile == "embedded":
        return embedded
    if profile != "paper":
        raise ValueError(f"profile={profile!r}: choose 'embedded' or 'paper'")
    from kdlib import paper

    return [r.config for r in paper.table_runs(table, tuple(seeds))]


def divergence_label(cfg: RunConfig) -> str:
    """FKL, RKL, JSD(0.5), … as in GKD's figures."""
    r = cfg.resolved
    name = r["divergence"]
    if name == "jsd":
        return f"JSD({r['divergence_params'].get('beta', 0.5)})"
    return {"fkl": "FKL", "rkl": "RKL", "tvd": "TVD", "sfkl": "SKL", "srkl": "SRKL", "ce": "CE"}[name]


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
    """Methods x (task / evaluation set): per set a column with the mean over seeds and one "<set> sd"
    with their standard deviation (empty with one seed), methods in the given order."""
    long = scores_long(results)
    stats = long.groupby(list(by) + ["set"], sort=False)["score"].agg(["mean", "std"])
    table = stats.unstack("set")
    sets = list(dict.fromkeys(long["set"]))  # first-seen order
    table = pd.concat({c: table[(stat, s)] for s in sets
                       for c, stat in ((s, "mean"), (f"{s} sd", "std"))}, axis=1)
    if list(by) == ["method"]:
        table = table.reindex([m for m in methods if m in table.index])
    return table.reset_index()


def claim(df: pd.DataFrame, by: str, better, worse, *, value: str = "score", paper: str = "") -> str:
    """One line comparing two groups of runs the way a paper claims `better` > `worse`: the means and
    standard deviations over seeds, and a verdict — reproduced, reversed, or not separated (the
    difference is within twice its standard error over the seeds). `better` / `worse` are values of
    column `by` (or lists of values, pooled)."""
    import math

    def pick(v):
        sel = df[df[by].isin(v if isinstance(v, (list, tuple)) else [v])][value].dropna()
        n = len(sel)
        return sel.mean(), (sel.std() if n > 1 else float("nan")), n

    (ma, sa, na), (mb, sb, nb) = pick(better), pick(worse)
    if na == 0 or nb == 0:
        return f"{paper}: no runs for {better if na == 0 else worse}"
    se = math.sqrt((sa ** 2 if na > 1 else 0) / na + (sb ** 2 if nb > 1 else 0) / nb)
    diff = ma - mb
    if na < 2 or nb < 2:
        verdict = "one seed: no spread to judge by"
    elif abs(diff) <= 2 * se:
        verdict = "NOT SEPARATED on this workload (difference within 2 standard errors over seeds)"
    elif diff > 0:
        verdict = "reproduced"
    else:
        verdict = "NOT REPRODUCED: the order is reversed here"
    return (f"{paper}: {better} {ma:.3f} ± {sa:.3f} (n={na}) vs {worse} {mb:.3f} ± {sb:.3f} (n={nb}), "
            f"difference {diff:+.3f} → {verdict}")


def save_claims(claims: list[str], out_dir, name: str = "claims") -> None:
    """The notebook's claim lines, as Markdown beside its figures (quoted by the README)."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("".join(f"- {c}\n" for c in claims))


def evaluated(curves: pd.DataFrame) -> pd.DataFrame:
    """The `curves_frame` rows that carry a score: the steps evaluated during training (none when every run
    had eval_every 0, whose frame has no eval_score column)."""
    return curves.dropna(subset=["eval_score"]) if "eval_score" in curves else curves.iloc[:0]


def training_claims(curves: pd.DataFrame, method: str, *, n_steps: int = 10) -> list[str]:
    """AdaSwitch's two training-dynamics claims, from `curves_frame` rows of one task and one student:

    - the divergence falls during training: `method`'s training loss, each seed's mean over its first
      `n_steps` logged steps against its mean over its last `n_steps` (fewer, never overlapping, in short runs);
    - the fastest early improvement: the score at `method`'s first evaluation, against the best other method
      evaluated at the same step. Every run starts from the same SFT student per seed, so the score there
      orders the early gains."""
    own = curves[curves.method == method]
    if own.empty:
        return [f"training dynamics: no {method} runs"]
    steps = sorted(own.step.unique())
    n = min(n_steps, len(steps) // 2)
    if n < 1:
        lines = [f"the divergence falls during training: {method} logged {len(steps)} step(s), too few to compare"]
    else:
        def phase(label: str, window: list) -> pd.DataFrame:  # each seed's mean loss over the window
            return own[own.step.isin(window)].groupby("seed")["loss"].mean().to_frame().assign(phase=label)

        first, last = f"first {n} steps", f"last {n} steps"
        phases = pd.concat([phase(first, steps[:n]), phase(last, steps[-n:])])
        lines = [claim(phases, "phase", first, last, value="loss",
                       paper=f"the divergence falls during training ({method}'s training loss per token)")]
    scored = evaluated(curves)
    own_scored = scored[scored.method == method]
    if own_scored.empty:
        return lines + [f"fastest early improvement: {method} was not evaluated during training (set eval_every)"]
    step = own_scored.step.min()
    at = scored[scored.step == step]
    others = at[at.method != method].groupby("method")["eval_score"].mean()
    if others.empty:
        return lines + [f"fastest early improvement: no other method was evaluated at step {step}"]
    best = others.idxmax()
    return lines + [claim(at, "method", method, best, value="eval_score",
                          paper=f"fastest early improvement: score at step {step}, {method} vs the best other "
                                f"method there ({best})")]


def robustness_claim(table: pd.DataFrame, what: str) -> str:
    """A claim line for "the score does not depend on <what>": `table` has one row per setting with the
    mean and std over seeds (`plots.mean_std`). Robust when the spread of the means is within twice the
    seeds' average standard deviation."""
    lo, hi, sd = table["mean"].min(), table["mean"].max(), table["std"].mean()
    verdict = ("robust: the spread is within the seeds' spread" if hi - lo <= 2 * sd
               else "NOT robust on this workload")
    return (f"{what} robustness: mean score from {lo:.3f} to {hi:.3f} across {len(table)} settings of {what} "
            f"(spread {hi - lo:.3f}); seed sd {sd:.3f} on average → {verdict}")


def runtime_table(runs: pd.DataFrame, by: str = "setting", refs=("onpolicy", "skd")) -> pd.DataFrame:
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


def quality_diversity_frame(configs: list[RunConfig], temperatures, *, n_rows: int,
                            n_samples: int = 4) -> pd.DataFrame:
    """GKD Fig. 4's points: for each trained run (trained first if not cached) and temperature, the mean
    score of `n_samples` samples per test prompt (first `n_rows` prompts) and their mean self-BLEU; one row
    per (run, temperature) with the run's divergence label and seed."""
    from kdlib.evaluate import quality_and_diversity
    from kdlib.experiments import load_rows, task_metric, trained_model

    points = []
    for cfg in configs:
        model, tok = trained_model(cfg)
        rows = load_rows(cfg, "test", n_rows, tok)
        for t in temperatures:
            qd = quality_and_diversity(model, tok, rows, metric=task_metric(cfg), temperature=t,
                                       n_samples=n_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
            points.append({"divergence": divergence_label(cfg), "seed": cfg.seed, **qd})
    return pd.DataFrame(points)


def finished_runs() -> set:
    """Hashes of the runs whose result is in the cache (`.cache/kdlib/runs/<hash>/result.json`)."""
    from kdlib.workload import cache_root

    return {p.parent.name for p in (cache_root() / "runs").glob("*/result.json")}


def _cached_result(h: str) -> dict:
    """The result.json of the cached run `h`."""
    from kdlib.workload import cache_root

    return json.loads((cache_root() / "runs" / h / "result.json").read_text())


def shipped_among(hashes) -> set:
    """Those of `hashes` whose cached result was copied from kdlib's shipped runs, not trained here."""
    return {h for h in hashes if _cached_result(h).get("shipped")}


def run_seconds(hashes) -> float:
    """The sum of these cached runs' own wall times (`wall_seconds` in result.json: training, evaluation and
    saving), whichever invocation trained them; a run without the field counts 0."""
    return sum(float(_cached_result(h).get("wall_seconds") or 0) for h in hashes)


def trained_by(hashes, pid: int) -> set:
    """Those of `hashes` whose cached run was trained by process `pid` (result.json provenance `pid`)."""
    return {h for h in hashes if _cached_result(h).get("provenance", {}).get("pid") == pid}


def cpu_ticks(stat: str = "/proc/stat") -> list[int] | None:
    """All cores' clock ticks so far (user, nice, system, idle, iowait, irq, softirq, steal, ...) from
    /proc/stat's first line; None where there is no /proc/stat."""
    try:
        with open(stat) as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def host_condition(before, after, seconds: float, cores: int | None = None, hz: int | None = None) -> str:
    """How much of the CPU a timed stretch really had, from two `cpu_ticks` readings: the share the
    hypervisor stole (steal), and the share of wall time × cores that the kernel accounted at all (a
    healthy machine: steal about 0 %, accounted about 100 %). A time measured on a starved VM says so."""
    if not before or not after or len(before) < 8 or len(after) < 8 or seconds <= 0:
        return ""
    cores = cores or os.cpu_count() or 1
    hz = hz or (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
    delta = [a - b for a, b in zip(after, before)]
    total = sum(delta[:8])  # guest and guest_nice are already counted in user and nice
    if total <= 0:
        return ""
    return (f"host CPU: {100 * delta[7] / total:.0f} % stolen by the hypervisor, "
            f"{100 * total / (seconds * cores * hz):.0f} % of wall time × cores accounted")


class Stopwatch:
    """How long a notebook took and how much of it was training: started in the first cell, `save` in the
    last writes `<out_dir>/<name>.md` (wall minutes, runs trained vs read from the cache, date, cores), so
    the README quotes a recorded time, and says whether the cache was cold."""

    def __init__(self):
        self.start, self.runs_before, self.ticks = time.time(), finished_runs(), cpu_ticks()

    def elapsed(self) -> dict:
        """Since the start: wall seconds, the runs trained (by any process; `trained_here`: by this one, e.g.
        this notebook's kernel while `make reproduce` runs another notebook beside it) and those copied from
        the shipped runs, and the host's CPU condition (`host_condition`, "" where unknown)."""
        seconds = time.time() - self.start
        new = finished_runs() - self.runs_before
        shipped = shipped_among(new)
        return {"seconds": seconds, "trained": len(new - shipped), "shipped": len(shipped),
                "trained_here": len(trained_by(new - shipped, os.getpid())),
                "trained_seconds": run_seconds(new - shipped),
                "host": host_condition(self.ticks, cpu_ticks(), seconds)}

    def save(self, out_dir, name: str = "time") -> str:
        e = self.elapsed()
        line = (f"{e['seconds'] / 60:.1f} min wall on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU core(s): "
                f"{e['trained_here']} run(s) trained (teachers, SFT warm-ups, methods)"
                + (f", {e['shipped']} copied from kdlib's shipped runs (teachers)" if e["shipped"] else "")
                + (f"; {e['trained'] - e['trained_here']} more finished meanwhile in other processes (notebooks "
                   f"run at once), not counted" if e["trained"] > e["trained_here"] else "")
                + ("; nothing was cached before (cold)" if not self.runs_before else
                   f"; {len(self.runs_before)} run(s) were in the cache before")
                + (f"; {e['host']}" if e["host"] else ""))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.md").write_text(line + "\n")
        return line
