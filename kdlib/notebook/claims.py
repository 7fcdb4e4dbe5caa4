"""Paired comparisons and the claims files: paired differences with their intervals, the verdict lines
(reproduced / not separated / reversed), the length and training-curve claims."""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

import pandas as pd

from kdlib import _stats as stats
from kdlib._scoring import SAMPLED_SUFFIX
from kdlib.notebook.tables import curves_frame, evaluated, item_scores, results_frame


def _scored_sets(results: list[dict], evals: Sequence[str] | None) -> list[str]:
    """`evals`, or every evaluation set the first run was scored on (greedy "test", sampled "test_t1", ...)."""
    return list(evals or [k[len("score_"):] for k in results[0] if k.startswith("score_")])


def _split_labels(split: str) -> dict:
    """A paired table's "eval" and "decoding" columns for an evaluation set ("test_t1": test, sampled T=1)."""
    return {"eval": split.removesuffix(SAMPLED_SUFFIX),
            "decoding": "sampled T=1" if split.endswith(SAMPLED_SUFFIX) else "greedy"}


def paired_table(results: list[dict], pairs: Sequence[tuple[str, str]], *, evals: Sequence[str] | None = None,
                 settings: Sequence[str] | None = None) -> pd.DataFrame:
    """Paired comparisons (`kdlib._stats.compare`) of runs that share seeds and test items: for each
    (better, worse) in `pairs` (methods, or values of `settings`, one label per run, when given) and each
    evaluation set (`evals`, default every scored set: greedy "test", sampled "test_t1", ...), one row with both means,
    the mean paired difference, its 95 % interval, the seeds and items compared, and the verdict."""
    rows = []
    for split in _scored_sets(results, evals):
        items = item_scores(results, split, settings)
        for better, worse in pairs:
            d = stats.compare(items, better, worse, by="method" if settings is None else "setting")
            rows.append(_difference_row(d, better, worse, split))
    return pd.DataFrame(rows)


def seeds_table(results: list[dict], pairs: Sequence[tuple[str, str]], *, evals: Sequence[str] | None = None,
                power: float = 0.8) -> pd.DataFrame:
    """How many seeds each paired comparison of `paired_table` would need to separate a difference of the
    size measured (`kdlib._stats.seeds_needed`, a planning estimate from at least 2 seeds): one row per pair
    and evaluation set with the difference, the seeds measured, the half-width of the interval now,
    and `seeds_needed` (None: more seeds alone cannot, the test items' variance is the limit)."""
    rows = []
    for split in _scored_sets(results, evals):
        items = item_scores(results, split)
        for better, worse in pairs:
            a, b = stats.aligned(items, better, worse)
            plan = stats.seeds_needed(a, b, power=power)
            rows.append({**_split_labels(split), "better": better, "worse": worse, "difference": plan.effect,
                         "seeds": len(a),
                         "half_width": plan.half_width_now, "seed_sd": plan.seed_variance ** 0.5,
                         "seeds_needed": plan.seeds})
    return pd.DataFrame(rows).astype({"seeds_needed": "Int64"})  # <NA>: more seeds alone cannot


def _difference_row(d, better: str, worse: str, split: str) -> dict:
    """One row of a paired table from a `kdlib._stats.PairedDifference`."""
    return {**_split_labels(split), "better": better, "worse": worse, "mean_better": d.mean_a, "mean_worse": d.mean_b,
            "difference": d.diff, "ci_low": d.low, "ci_high": d.high, "seeds": d.n_seeds,
            "items": d.n_items, "verdict": d.verdict}


def paired_table_by(results: list[dict], field: str, pairs: Sequence[tuple[str, str]], **kw) -> pd.DataFrame:
    """`paired_table` within each value of a result field (e.g. student, task), with that value as "group"."""
    groups = list(dict.fromkeys(r[field] for r in results))
    return pd.concat([paired_table([r for r in results if r[field] == g], pairs, **kw).assign(group=g)
                      for g in groups], ignore_index=True)


LENGTH_EDGES = (0, 12, 24, 36, 1_000_000)  # reference length in words, as kdlib._evaluate.length_buckets


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
    items, present = _bucketed_items(results, split)
    return pd.DataFrame([{"group": b, **_difference_row(stats.compare(items[items.bucket == b], better, worse),
                                                        better, worse, split)} for b in present])


def gain_grows_claim(results: list[dict], better: str, worse: str, *, paper: str, split: str = "test") -> str:
    """`better`'s paired gain over `worse` is larger on the longest responses (last LENGTH_EDGES bucket) than
    on the shortest, with the 95 % interval of the difference of the two gains (`kdlib._stats.gain_gap`)."""
    items, present = _bucketed_items(results, split)
    if len(present) < 2:
        return f"{paper}: fewer than two length buckets"

    def gains(bucket):  # (seeds, items) of better − worse within the bucket
        a, b = stats.aligned(items[items.bucket == bucket], better, worse)
        return a - b

    r = stats.gain_gap(gains(present[-1]), gains(present[0]))
    return (f"{paper}: {better} − {worse} is {r.mean_a:+.3f} on responses of {present[-1]} words and {r.mean_b:+.3f} "
            f"on {present[0]} words; their difference {stats.signed(r.diff)} [95 % CI {stats.signed(r.low)}, "
            f"{stats.signed(r.high)}] over "
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
            f"paired difference {stats.signed(r.difference)} [95 % CI {stats.signed(r.ci_low)}, "
            f"{stats.signed(r.ci_high)}] over {r.seeds} "
            f"seed(s) × {r.items} items → {r.verdict}"
            + (" (one seed: the interval is over items only, not over warm-ups)" if r.seeds == 1 else
               " (2 seeds: t has one degree of freedom, 12.7, so the interval is wide)" if r.seeds == 2 else "")
            for r in table.itertuples()]


def seed_claim(df: pd.DataFrame, by: str, better: Hashable, worse: Hashable, *, value: str = "score", paper: str = "",
               paired: bool = True) -> str:
    """A claim on one number per run (a sampled score, self-BLEU, a switch rate): `better` > `worse`, values
    of column `by`, with the 95 % t interval of the difference over seeds — paired by seed when the two
    groups share each seed's warm-up (`paired`), else Welch's unpaired interval (e.g. two tasks). Fewer than
    MIN_INTERVAL_SEEDS seeds: each seed's values and no verdict."""
    a = df[df[by] == better].groupby("seed")[value].mean()
    b = df[df[by] == worse].groupby("seed")[value].mean()
    n_seeds = len(set(a.index) & set(b.index)) if paired else min(len(a), len(b))
    if 0 < n_seeds < MIN_INTERVAL_SEEDS:
        return f"{paper}: {_few_seeds(a, b, str(better), str(worse), paired)}"
    try:
        if paired:
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                raise ValueError(f"{better!r} and {worse!r} share no seed")
            r = stats.paired_interval(a.loc[seeds].to_numpy()[:, None], b.loc[seeds].to_numpy()[:, None])
        else:
            r = stats.independent_interval(a.to_numpy(), b.to_numpy())
    except ValueError as e:
        return f"{paper}: {e}"
    text = r.describe(str(better), str(worse)).replace(f" × {r.n_items} items", "")
    if not paired:
        text = text.replace("paired difference", "difference (unpaired: Welch's interval)", 1)
    return f"{paper}: {text}"


MIN_INTERVAL_SEEDS = 3
"""Fewer seeds than this give a claim on one number per run no verdict: two values give a t interval with one
degree of freedom (t = 12.7), and each seed's own values say more."""


def _few_seeds(a: pd.Series, b: pd.Series, better: str, worse: str, paired: bool) -> str:
    """Too few seeds for an interval: every seed's numbers, and whether all of them point the same way."""
    if paired:
        seeds = sorted(set(a.index) & set(b.index))
        d = a.loc[seeds] - b.loc[seeds]
        shown = ", ".join(stats.signed(v) for v in d)
        low, high = d.min(), d.max()
        what = f"difference per seed {shown}"
        n = len(seeds)
    else:
        low, high = a.min() - b.max(), a.max() - b.min()
        what = f"{better} per seed {', '.join(f'{v:.3f}' for v in a)}, {worse} {', '.join(f'{v:.3f}' for v in b)}"
        n = min(len(a), len(b))
    verdict = ("the same direction on every seed" if low > 0 else "reversed on every seed" if high < 0 else
               "not separated")
    return (f"{better} {a.mean():.3f} vs {worse} {b.mean():.3f}, {what} ({n} seed(s): too few for an interval) "
            f"→ {verdict}, not a verdict on the paper's claim")


def items_difference(a: pd.Series, b: pd.Series, a_name: str, b_name: str, *, what: str = "") -> str:
    """`a` − `b` over the items both scored (two Series of per-item scores indexed by item id), with its 95 %
    t interval over items, and no verdict: for two runs that should agree (one trainer against
    another), where "reproduced" would name the wrong question. One seed: the interval is over items only."""
    shared = a.index.intersection(b.index)
    if len(shared) == 0:
        raise ValueError(f"{a_name} and {b_name} share no scored item")
    r = stats.paired_interval(a.loc[shared].to_numpy()[None], b.loc[shared].to_numpy()[None])
    return (f"{what + ': ' if what else ''}{a_name} {r.mean_a:.3f} vs {b_name} {r.mean_b:.3f}, difference "
            f"{stats.signed(r.diff)} [95 % CI {stats.signed(r.low)}, {stats.signed(r.high)}] over {len(shared)} "
            "items (one run each: the interval is over items, not over seeds)")


def save_claims(claims: list[str], out_dir: str | Path, name: str = "claims") -> None:
    """The notebook's claim lines, as Markdown beside its figures (quoted by the README)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("".join(f"- {c}\n" for c in claims))


def training_claims(curves: pd.DataFrame, method: str, *, n_steps: int = 10) -> list[str]:
    """AdaSwitch's two training-dynamics claims, from `curves_frame` rows of one task and one student, each
    with a 95 % t interval over seeds, paired by seed (`seed_claim`):

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


def plateau_claims(curves: pd.DataFrame, *, tolerance: float = 0.005) -> list[str]:
    """A protocol check, not a paper claim: has each evaluated method's learning curve flattened by the end?
    Per task, student and method, each seed's score at the last evaluation minus its score at the one before,
    with the 95 % t interval over seeds (paired by seed). An equivalence reading: "flat" when the whole
    interval lies within ±`tolerance` (a change of score between two evaluations, so it depends on
    `eval_every`; the default, half a point, suits evaluations 50 steps apart), else "still rising" or
    "falling" when it excludes zero, else "undetermined". Fewer than MIN_INTERVAL_SEEDS seeds give no reading."""
    scored = evaluated(curves)
    keys = [k for k in ("task", "student") if k in scored and scored[k].nunique() > 1] + ["method"]
    lines = []
    for key, own in scored.groupby(keys, sort=False):
        name = ", ".join(map(str, key if isinstance(key, tuple) else (key,)))
        # the steps every seed was evaluated at (runs of one config may differ in eval_every, outside the cache key)
        steps = sorted(set.intersection(*(set(g.step) for _, g in own.groupby("seed"))))
        if len(steps) < 2:
            lines.append(f"protocol check, {name}: evaluated at {len(steps)} step(s) in every seed, too few to see a "
                         "plateau")
            continue
        before, last = steps[-2:]
        wide = own.pivot_table(index="seed", columns="step", values="eval_score")[[before, last]].dropna()
        if len(wide) < MIN_INTERVAL_SEEDS:
            lines.append(f"protocol check, {name}: {len(wide)} seed(s) evaluated, too few for an interval")
            continue
        r = stats.paired_interval(wide[last].to_numpy()[:, None], wide[before].to_numpy()[:, None])
        if -tolerance <= r.low and r.high <= tolerance:
            verdict = f"flat (the interval lies within ±{tolerance:g})"
        else:
            verdict = "still rising" if r.low > 0 else "falling" if r.high < 0 else \
                f"undetermined (the interval reaches past ±{tolerance:g})"
        text = r.describe(f"step {last}", f"step {before}").replace(f" × {r.n_items} items", "").rsplit(" → ", 1)[0]
        lines.append(f"protocol check, {name}: score gain over the last {last - before} steps: {text} → {verdict}")
    return lines


def distillm_schedule_claim(results: list[dict]) -> tuple[str | None, pd.DataFrame]:
    """Whether DistiLLM's adaptive schedule fired in these runs: the claim line (student-output probability at
    the end, mean and range over seeds; None when no run recorded the schedule) and the schedule's table
    (seed, step, validation loss, student-output probability)."""
    schedule = curves_frame([r for r in results if r["method"] == "distillm"])
    if "student_output_probability" not in schedule:
        return None, schedule
    final = schedule.dropna(subset=["student_output_probability"]).groupby("seed")["student_output_probability"].last()
    fired = "fires" if final.max() > 0 else \
        "never fires on this run (the validation loss never rose 0.1 above its reference)"
    claim = (f"DistiLLM's adaptive schedule {fired}: student-output probability 0 at the start, "
             f"{final.mean():.2f} at the end (mean of {len(final)} seeds; range {final.min():.1f}-{final.max():.1f})")
    return claim, schedule[["seed", "step", "validation_loss", "student_output_probability"]].dropna()
