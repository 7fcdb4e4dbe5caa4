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
SMOKE = dict(teacher="tiny", teacher_steps=5, student="tiny", steps=3, n_train=64, n_labelled=16, n_eval=8,
             batch_size=8, max_new_tokens=48, eval_every=2)

# The embedded protocol (docs/workload.md): labels are scarcer than prompts, as in real distillation (GKD
# Fig. 3). The student is warmed up by SFT to its plateau on the n_labelled labelled rows; then every method
# runs `steps` optimizer steps from it: SFT and supervised KD on the labelled rows, SeqKD and the samplers on
# all n_train prompts. Scores on 1 000 held-out rows, greedy and sampled at temperature 1.
PROTOCOL = {"summ": dict(n_train=4000, n_labelled=100), "arith": dict(n_train=4000, n_labelled=1000)}
PROTOCOL_STEPS, PROTOCOL_EVAL = 150, 1000


def protocol(task: str, **over) -> dict:
    """The base config of the embedded protocol for `task` (PROTOCOL), with `over` on top."""
    return {"task": task, **PROTOCOL.get(task, {}), "steps": PROTOCOL_STEPS, "n_eval": PROTOCOL_EVAL,
            "eval_splits": eval_splits(task), **over}


ROOT = Path(__file__).resolve().parent.parent


def output_dir(out_dir: str, notebook: str) -> Path:
    """Where a notebook writes its figures and tables: `out_dir`, a relative one read from the repository root
    (not the kernel's working directory); empty, `.cache/figures/<notebook>`, so that running a notebook by
    hand never rewrites the committed figures (`make reproduce` passes `figures/<notebook>`)."""
    path = Path(out_dir).expanduser() if out_dir else ROOT / ".cache" / "figures" / notebook
    path = path if path.is_absolute() else ROOT / path
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    from kdlib import usertask, workload

    if task in workload.TASK_SPLITS:
        splits = workload.TASK_SPLITS[task]
    else:
        splits = usertask.spec(task).splits if usertask.is_user_task(task) else ("train", "test")
    return tuple(s for s in splits if s != "train")


def workload_report(tasks: list[str], students: list[str], *, smoke: bool = False) -> pd.DataFrame:
    """The embedded workload table: per task, the teacher (`kdlib.experiments.teacher_recipe`) and each
    student warmed up by SFT on the protocol's labelled rows (`sft_init_recipe`, the start every distillation
    method shares), with parameters, training minutes, steps, rows and a score per held-out set (greedy, and
    "_t1": sampled at temperature 1). Trains what is not cached yet."""
    from kdlib.experiments import run, run_grid, sft_init_recipe, teacher_config

    parts = []
    for task in tasks:
        base = protocol(task)
        sft = [sft_init_recipe(c) for c in grid(base, smoke, student=students)]
        report = [run(teacher_config(grid(base, smoke)[0]))] + run_grid(sft)
        roles = ["teacher"] + ["student (SFT warm-up)"] * len(sft)
        parts.append(workload_frame(report, roles).assign(task=task))
    table = pd.concat(parts, ignore_index=True)
    return table[["task"] + [c for c in table if c != "task"]]


def mechanisms_report(tasks: list[str], student: str = "student-s", *, n_rows: int = 200,
                      smoke: bool = False) -> pd.DataFrame:
    """What the papers' methods rely on, per task (`kdlib.mechanisms`), on `n_rows` test rows: the teacher's
    entropy and top-1 agreement with the references, the warmed-up student's exposure gap, and whether the
    teacher recovers after the student's first slip. Reads the cached teacher and seed-0 warm-up."""
    from kdlib import mechanisms
    from kdlib.experiments import load_rows, run_dir, sft_init_recipe, task_metric, teacher_config, trained_model

    out = []
    for task in tasks:
        cfg = grid(protocol(task, student=student), smoke)[0]
        student_model, tok = trained_model(sft_init_recipe(cfg), progress=False)
        from kdlib.models import load_model

        teacher = load_model(str(run_dir(teacher_config(cfg)) / "model"))
        rows = load_rows(cfg, "test", 16 if smoke else n_rows)
        kw = dict(max_new_tokens=cfg.max_new_tokens)
        own = mechanisms.own_responses(student_model, tok, rows, **kw)  # decoded once for both measurements
        out.append({"task": task, **mechanisms.teacher_on_references(teacher, tok, rows, **kw),
                    **mechanisms.exposure_gap(student_model, teacher, tok, rows, own=own, **kw),
                    **{f"recovery_{k}": v for k, v in mechanisms.teacher_recovery(
                        student_model, teacher, tok, rows, metric=task_metric(cfg), own=own, **kw).items()}})
    return pd.DataFrame(out)


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


def item_scores(results: list[dict], split: str = "test", settings=None) -> pd.DataFrame:
    """Per-item scores of finished runs on one evaluation set (`split`, e.g. "test", "plus", "test_t1" for
    the temperature-1 samples): one row per (run, item) with method, seed, student, task, item id, score,
    and `settings[i]` as column "setting" for the i-th run when given; read from each run's
    predictions-<split>.jsonl in the run cache."""
    from kdlib.workload import cache_root

    rows = []
    for k, r in enumerate(results):
        path = cache_root() / "runs" / r["hash"] / f"predictions-{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: run {r['hash']} ({r['method']} seed {r['seed']}) has no per-item "
                                    f"scores for {split!r}; its evaluation sets are {r.get('eval_splits')}")
        for i, line in enumerate(path.read_text().splitlines()):
            rec = json.loads(line)
            rows.append({"method": r["method"], "seed": r["seed"], "student": r["student"], "task": r["task"],
                         "item": rec.get("id") or i, "ref_words": rec.get("ref_words"), "score": rec["score"],
                         **({"setting": settings[k]} if settings is not None else {})})
    return pd.DataFrame(rows)


def paired_table(results: list[dict], pairs, *, evals=None, settings=None) -> pd.DataFrame:
    """Paired comparisons (`kdlib.stats.compare`) of runs that share seeds and test items: for each
    (better, worse) in `pairs` (methods, or values of `settings`, one label per run, when given) and each
    evaluation set (`evals`, default every scored set: greedy "test", sampled "test_t1", ...), one row with both means,
    the mean paired difference, its 95 % interval, the seeds and items compared, and the verdict."""
    from kdlib import stats

    sets = evals or [k[len("score_"):] for k in results[0] if k.startswith("score_")]
    rows = []
    for split in sets:
        items = item_scores(results, split, settings)
        for better, worse in pairs:
            d = stats.compare(items, better, worse, by="method" if settings is None else "setting")
            rows.append(_difference_row(d, better, worse, split))
    return pd.DataFrame(rows)


def _difference_row(d, better: str, worse: str, split: str) -> dict:
    """One row of a paired table from a `kdlib.stats.PairedDifference`."""
    from kdlib.experiments import SAMPLED_SUFFIX

    return {"eval": split.removesuffix(SAMPLED_SUFFIX),
            "decoding": "sampled T=1" if split.endswith(SAMPLED_SUFFIX) else "greedy",
            "better": better, "worse": worse, "mean_better": d.mean_a, "mean_worse": d.mean_b,
            "difference": d.diff, "ci_low": d.low, "ci_high": d.high, "seeds": d.n_seeds,
            "items": d.n_items, "verdict": d.verdict}


def paired_table_by(results: list[dict], field: str, pairs, **kw) -> pd.DataFrame:
    """`paired_table` within each value of a result field (e.g. student, task), with that value as "group"."""
    groups = list(dict.fromkeys(r[field] for r in results))
    return pd.concat([paired_table([r for r in results if r[field] == g], pairs, **kw).assign(group=g)
                      for g in groups], ignore_index=True)


LENGTH_EDGES = (0, 12, 24, 36, 1_000_000)  # reference length in words, as kdlib.evaluate.length_buckets


def _bucket(words: int, edges=LENGTH_EDGES) -> str:
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= words < hi:
            return f"{lo}-{hi - 1}" if hi < 1_000_000 else f"{lo}+"
    raise ValueError(f"reference length {words} is outside {edges}")


def _bucketed_items(results: list[dict], split: str) -> tuple[pd.DataFrame, list[str]]:
    """`item_scores` with each item's reference-length bucket (LENGTH_EDGES), and the buckets present,
    shortest first."""
    items = item_scores(results, split)
    items["bucket"] = [_bucket(w) for w in items["ref_words"]]
    present = [b for b in dict.fromkeys(_bucket(lo) for lo in LENGTH_EDGES[:-1]) if b in set(items.bucket)]
    return items, present


def paired_by_length(results: list[dict], better: str, worse: str, split: str = "test") -> pd.DataFrame:
    """`better` − `worse` paired per seed and item within each reference-length bucket (LENGTH_EDGES), one row
    per bucket (as `paired_table`, with the bucket as "group"), shortest first."""
    from kdlib import stats

    items, present = _bucketed_items(results, split)
    return pd.DataFrame([{"group": b, **_difference_row(stats.compare(items[items.bucket == b], better, worse),
                                                        better, worse, split)} for b in present])


def gain_grows_claim(results: list[dict], better: str, worse: str, *, paper: str, split: str = "test") -> str:
    """`better`'s paired gain over `worse` is larger on the longest responses (last LENGTH_EDGES bucket) than
    on the shortest, with the 95 % interval of the difference of the two gains (`kdlib.stats.gain_gap`)."""
    from kdlib import stats

    items, present = _bucketed_items(results, split)
    if len(present) < 2:
        return f"{paper}: fewer than two length buckets"

    def gains(bucket):  # (seeds, items) of better − worse within the bucket
        a, b = stats.aligned(items[items.bucket == bucket], better, worse)
        return a - b

    r = stats.gain_gap(gains(present[-1]), gains(present[0]))
    return (f"{paper}: {better} − {worse} is {r.mean_a:+.3f} on responses of {present[-1]} words and {r.mean_b:+.3f} "
            f"on {present[0]} words; their difference {r.diff:+.3f} [95 % CI {r.low:+.3f}, {r.high:+.3f}] over "
            f"{r.n_seeds} seed(s) → {r.verdict}")


def best_baseline(results: list[dict], method: str, score: str = "score") -> str:
    """The method other than `method` with the highest mean `score` (greedy, first evaluation set)."""
    means = results_frame(results).groupby("method")[score].mean().drop(method, errors="ignore")
    if means.empty:
        raise ValueError(f"no baseline besides {method!r} among the results")
    return str(means.idxmax())


def paired_claims(table: pd.DataFrame, paper: str) -> list[str]:
    """One claim line per row of `paired_table`, prefixed with what the paper claims."""
    return [f"{paper} [{(r.group + ', ') if 'group' in table else ''}{r.eval}, {r.decoding}]: "
            f"{r.better} {r.mean_better:.3f} vs {r.worse} {r.mean_worse:.3f}, "
            f"paired difference {r.difference:+.3f} [95 % CI {r.ci_low:+.3f}, {r.ci_high:+.3f}] over {r.seeds} "
            f"seed(s) × {r.items} items → {r.verdict}" for r in table.itertuples()]


def seed_claim(df: pd.DataFrame, by: str, better, worse, *, value: str = "score", paper: str = "",
               paired: bool = True) -> str:
    """A claim on one number per run (a sampled score, self-BLEU, a switch rate): `better` > `worse`, values
    of column `by`, with the 95 % bootstrap interval of the difference over seeds — paired by seed when the
    two groups share each seed's warm-up (`paired`), else resampled independently (e.g. two tasks)."""
    from kdlib import stats

    a = df[df[by] == better].groupby("seed")[value].mean()
    b = df[df[by] == worse].groupby("seed")[value].mean()
    try:
        if paired:
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                raise ValueError(f"{better!r} and {worse!r} share no seed")
            r = stats.paired_bootstrap(a.loc[seeds].to_numpy()[:, None], b.loc[seeds].to_numpy()[:, None])
        else:
            r = stats.independent_bootstrap(a.to_numpy(), b.to_numpy())
    except ValueError as e:
        return f"{paper}: {e}"
    text = r.describe(str(better), str(worse)).replace(f" × {r.n_items} items", "")
    return f"{paper}: {text}" + ("" if paired else " (unpaired)")


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
    """AdaSwitch's two training-dynamics claims, from `curves_frame` rows of one task and one student, each
    with a 95 % bootstrap interval over seeds, paired by seed (`seed_claim`):

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
            return own[own.step.isin(window)].groupby("seed")["loss"].mean().reset_index().assign(phase=label)

        first, last = f"first {n} steps", f"last {n} steps"
        phases = pd.concat([phase(first, steps[:n]), phase(last, steps[-n:])])
        lines = [seed_claim(phases, "phase", first, last, value="loss",
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
    return lines + [seed_claim(at, "method", method, best, value="eval_score",
                               paper=f"fastest early improvement: score at step {step}, {method} vs the best other "
                                     f"method there ({best})")]


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


def reference_scores(configs: list[RunConfig], score: str = "score") -> dict:
    """The lines a score plot needs: the teacher's score and the warmed-up student's mean over the configs'
    seeds (both read from the cache, trained if missing), on the first evaluation set."""
    from kdlib.experiments import run, sft_init_recipe, teacher_config

    warm = [run(sft_init_recipe(c), progress=False)[score] for c in {c.seed: c for c in configs}.values()]
    return {"teacher": run(teacher_config(configs[0]), progress=False)[score], "warm-up student": sum(warm) / len(warm)}


def pair_defaults(teacher: str, student: str) -> dict:
    """lr and batch size that suit a pair. Embedded sizes: the embedded protocol's lr 1e-3 and batch 32
    (docs/workload.md). A pretrained model: lr 5e-5 (CHOSEN: transformers' TrainingArguments default, a
    fine-tuning rate for models of this size; the tiny models' 1e-3 made SmolLM2's pruned student write
    "The The The" after 2 steps) and batch 8 (CHOSEN: a CPU's memory at SmolLM2's 49 152-token vocabulary)."""
    from kdlib.names import EMBEDDED_SIZES

    if teacher in EMBEDDED_SIZES and student in EMBEDDED_SIZES:
        return {"lr": 1e-3, "batch_size": 32}
    return {"lr": 5e-5, "batch_size": 8}


def pair_references(cfg: RunConfig) -> dict:
    """The lines a comparison of `cfg`'s pair needs, on its first evaluation split: the teacher's score and
    the starting student's (none for a student trained from scratch). Trained runs (an embedded teacher's
    recipe, a teacher's fine-tuning, the SFT warm-up) are read from the cache or trained; a model used as
    loaded is scored once and cached by model, task and evaluation settings."""
    from kdlib import workload
    from kdlib.experiments import _named_path, run, score_model, sft_init_recipe, teacher_config
    from kdlib.names import EMBEDDED_SIZES

    def loaded(name: str) -> float:
        key = {"model": name, "task": (cfg.user_task.digest if cfg.user_task else cfg.task), "n_eval": cfg.n_eval,
               "splits": list(cfg.eval_splits), "max_new_tokens": cfg.max_new_tokens, "profile": cfg.profile,
               "chat_template_from": cfg.chat_template_from}
        d = workload.cached_dir("scores", key,
                                lambda dd: score_model(cfg, _named_path(name), out_dir=dd, progress=False))
        return json.loads((d / "scores.json").read_text())["scores"][cfg.eval_splits[0].split(":", 1)[0]]

    trained_teacher = cfg.teacher in EMBEDDED_SIZES or cfg.teacher_steps > 0  # whatever cfg's method
    out = {"teacher": run(teacher_config(cfg), progress=False)["score"] if trained_teacher else loaded(cfg.teacher)}
    if cfg.student_init == "sft":
        out["starting student"] = run(sft_init_recipe(cfg), progress=False)["score"]
    elif cfg.student_init == "pretrained":
        out["starting student"] = loaded(cfg.student)
    return out


def switch_positions(cfg: RunConfig, *, n_rows: int = 256, seed: int = 0) -> pd.DataFrame:
    """Where `cfg`'s sampler hands over to the teacher, at the start of its distillation: its sampler run with
    the warmed-up student (`sft_init_recipe`) and the teacher on `n_rows` training prompts past the
    distillation's own, at the sampling temperature. One row per prompt: switched, position (tokens) and
    position relative to the response length."""
    import torch

    from kdlib import samplers
    from kdlib.data import encode_prompts
    from kdlib.experiments import load_rows, run_dir, sft_init_recipe, teacher_config, trained_model
    from kdlib.models import load_model

    student, tok = trained_model(sft_init_recipe(cfg), progress=False)
    teacher = load_model(str(run_dir(teacher_config(cfg)) / "model"))
    rows = load_rows(cfg, "train")[cfg.n_train:cfg.n_train + n_rows]
    r = cfg.resolved
    sampler = samplers.build_sampler(r["sampler"], **r["sampler_params"])
    ids, mask = encode_prompts(tok, [row["prompt"] for row in rows])
    ro = sampler.sample(student, teacher, ids, mask, max_new_tokens=cfg.max_new_tokens,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        temperature=cfg.sample_temperature, generator=torch.Generator().manual_seed(seed))
    pos = ro.stats["switch_positions"]
    length = ro.response_mask.sum(1).clamp_min(1)
    return pd.DataFrame({"task": cfg.task, "switched": (pos >= 0).numpy(), "position": pos.numpy(),
                         "relative_position": (pos.clamp_min(0) / length).numpy(),
                         "teacher_fraction": ro.stats["teacher_fraction"]})


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
