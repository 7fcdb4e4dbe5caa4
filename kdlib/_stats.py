"""Paired comparisons of two methods that share seeds and test items, with 95 % confidence intervals.

Every method at a seed starts from the same warm-up student and is scored on the same test items, so
two methods are compared item by item: the per-item difference d[s, i] = score_a[s, i] − score_b[s, i].
The estimate is the mean of d over seeds and items. Seeds and items are crossed (every seed scores every
item), so the variance of that mean has two parts, estimated from d as in a two-way random-effects ANOVA:

- the seeds' part, var(seed means of d) / S: the training runs (each seed's warm-up and its sampling)
  together with the item-by-seed noise;
- the items' part, the variance between the item means of d less their seed noise, / N: the test set,
  which more seeds do not average away.

The interval is mean ± t × √(sum of the parts), t with S − 1 degrees of freedom (5 seeds: 2.78, not 1.96):
conservative where the items' part is large (coverage near 100 %), exact for the seeds' part, which dominates
on the embedded runs (their per-seed effects are several times the items' standard error). With one seed only
items vary: a paired t interval over items. A percentile bootstrap that resamples seeds and items together,
which this module used before, covered a true difference in only 85–90 % of simulated 5-seed experiments with
per-seed effects as large as the real runs' (measured 2026-12-06; tests/test_stats.py checks the coverage):
five values cannot show the tails of the seeds' spread. Welch–Satterthwaite degrees of freedom for the sum
were tried too: with 2–3 seeds they covered 87–93 %, since a seeds' part estimated small by chance also raises
its degrees of freedom.

A claim is *reproduced* when the whole interval lies on the paper's side of zero, *reversed* when it
lies on the other side, and *not separated* when it contains zero.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as _scipy

REPRODUCED, NOT_SEPARATED, REVERSED = "reproduced", "not separated", "reversed"


@dataclass(frozen=True)
class PairedDifference:
    """Mean of score_a − score_b over seeds × items, its 95 % interval, and the verdict. `df`: the degrees
    of freedom of the interval's t quantile."""

    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    n_seeds: int
    n_items: int
    df: float = float("nan")

    @property
    def verdict(self) -> str:
        """reproduced / reversed / not separated, reading a > b as the paper's direction."""
        if self.low > 0:
            return REPRODUCED
        if self.high < 0:
            return REVERSED
        return NOT_SEPARATED

    def describe(self, a: str, b: str) -> str:
        return (f"{a} {self.mean_a:.3f} vs {b} {self.mean_b:.3f}, paired difference {signed(self.diff)} "
                f"[95 % CI {signed(self.low)}, {signed(self.high)}] over {self.n_seeds} seed(s) × {self.n_items} "
                f"items → {self.verdict}")


def signed(x: float) -> str:
    """A difference as +0.012; a bound that would print as ±0.000 keeps two significant digits (+0.00031), so
    an interval printed as touching zero never carries a verdict that says it does not."""
    text = f"{x:+.3f}"
    return f"{x:+.2g}" if x != 0 and float(text) == 0 else text


def _t_interval(estimate: float, variance: float, df: float, level: float) -> tuple[float, float]:
    """estimate ± t(df) × √variance; a zero variance gives a point."""
    if variance <= 0:
        return estimate, estimate
    half = float(_scipy.t.ppf(1 - (1 - level) / 2, df)) * variance ** 0.5
    return estimate - half, estimate + half


def _parts(d: np.ndarray) -> tuple[float, float]:
    """The variance of d's grand mean, d of shape (seeds, items), in its two parts: the seeds' (training runs
    plus item-by-seed noise) and the items' (the test set less its seed noise). One seed: all of it items'."""
    S, N = d.shape
    if S == 1:
        return 0.0, (float(d[0].var(ddof=1)) / N if N > 1 else 0.0)
    seed_means, item_means = d.mean(axis=1), d.mean(axis=0)
    if N == 1:
        return float(seed_means.var(ddof=1)) / S, 0.0
    resid = d - seed_means[:, None] - item_means[None, :] + d.mean()
    v_resid = float((resid ** 2).sum()) / ((S - 1) * (N - 1))
    return float(seed_means.var(ddof=1)) / S, max(0.0, float(item_means.var(ddof=1)) - v_resid / S) / N


def _scores(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"paired scores need equal (seeds, items) shapes; got {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired scores contain NaN: a run is missing an item's score")
    if a.size < 2:
        raise ValueError("one score per method gives no interval: it needs two seeds or two items")
    return a, b


def paired_interval(a, b, *, level: float = 0.95) -> PairedDifference:
    """`a`, `b`: scores of shape (seeds, items), row s and column i the same seed and test item in both (a 1-D
    pair: one seed). Returns the mean difference with its interval over seeds and items (module docstring).
    Scores of shape (seeds, 1), one number per run, give the paired t interval over seeds."""
    a, b = _scores(a, b)
    d = a - b
    df = d.shape[0] - 1 if d.shape[0] > 1 else d.shape[1] - 1
    low, high = _t_interval(float(d.mean()), sum(_parts(d)), df, level)
    return PairedDifference(float(a.mean()), float(b.mean()), float(d.mean()), low, high, *d.shape, df)


def aligned(items, better: str, worse: str, *, value: str = "score", by: str = "method"):
    """The (seeds, items) score arrays of two groups of a long per-item frame (columns `by`, seed, item,
    `value`), on the seeds and items both groups have, in one order. Raises ValueError when they share none."""
    ma = items[items[by] == better].pivot_table(index="seed", columns="item", values=value, aggfunc="mean")
    mb = items[items[by] == worse].pivot_table(index="seed", columns="item", values=value, aggfunc="mean")
    seeds = sorted(set(ma.index) & set(mb.index))
    cols = sorted(set(ma.columns) & set(mb.columns))
    if not seeds or not cols:
        raise ValueError(f"{better!r} and {worse!r} share no (seed, item) to compare: seeds "
                         f"{sorted(ma.index)} vs {sorted(mb.index)}")
    return ma.loc[seeds, cols].to_numpy(), mb.loc[seeds, cols].to_numpy()


def compare(items, better: str, worse: str, *, value: str = "score", by: str = "method",
            level: float = 0.95) -> PairedDifference:
    """Paired comparison of two groups of a long per-item frame (columns `by`, seed, item, `value`): only the
    seeds and items both groups have are compared (`aligned`). Raises ValueError when they share none."""
    a, b = aligned(items, better, worse, value=value, by=by)
    return paired_interval(a, b, level=level)


def independent_interval(a, b, *, level: float = 0.95) -> PairedDifference:
    """Difference of the means of two independent samples (e.g. one value per seed on two different tasks,
    where nothing pairs them), with Welch's t interval (unequal variances; scipy.stats.ttest_ind's with
    equal_var=False). Returned in the same form as `paired_interval` (n_items = 1)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("unpaired values contain NaN: a run is missing its number")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"an unpaired interval needs at least two values per group; got {len(a)} and {len(b)}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else np.inf
    low, high = _t_interval(float(a.mean() - b.mean()), va + vb, df, level)
    return PairedDifference(float(a.mean()), float(b.mean()), float(a.mean() - b.mean()), low, high,
                            min(len(a), len(b)), 1, df)


def gain_gap(d_high, d_low, *, level: float = 0.95) -> PairedDifference:
    """Is a paired gain larger on one subset of the items than on another (e.g. long vs short responses)?
    `d_high`, `d_low`: per-item differences (better − worse), shape (seeds, items of that subset), the same
    seeds in the same row order. The estimate is mean(d_high) − mean(d_low); its variance is the seeds' part
    of the per-seed gap (the subsets share each seed's runs) plus each subset's items' part."""
    hi, lo = np.atleast_2d(np.asarray(d_high, dtype=float)), np.atleast_2d(np.asarray(d_low, dtype=float))
    if hi.shape[0] != lo.shape[0] or hi.size == 0 or lo.size == 0:
        raise ValueError(f"both subsets need the same seeds and at least one item; got {hi.shape} and {lo.shape}")
    if np.isnan(hi).any() or np.isnan(lo).any():
        raise ValueError("per-item differences contain NaN: a run is missing an item's score")
    S = hi.shape[0]
    if S == 1:  # one run: Welch over the two subsets' items, counted as one seed and its items
        return replace(independent_interval(hi.ravel(), lo.ravel(), level=level), n_seeds=1,
                       n_items=hi.shape[1] + lo.shape[1])
    gaps = hi.mean(axis=1) - lo.mean(axis=1)
    variance = float(gaps.var(ddof=1)) / S + _parts(hi)[1] + _parts(lo)[1]
    diff = float(hi.mean() - lo.mean())
    low, high = _t_interval(diff, variance, S - 1, level)
    return PairedDifference(float(hi.mean()), float(lo.mean()), diff, low, high, S, hi.shape[1] + lo.shape[1],
                            S - 1)


@dataclass(frozen=True)
class SeedPlan:
    """How many seeds a paired comparison needs (`seeds_needed`): `seeds` is None when more seeds cannot
    do it (a zero effect, or the test items' own variance already keeps the interval wider than the effect:
    then more items, not seeds), or when it would take over 100 000 (`limited_by_items` False)."""

    effect: float
    seeds: int | None
    seed_variance: float  # of one seed's mean difference: training-run variance (plus its items' noise)
    item_variance: float  # of the grand mean from the finite test set, which more seeds do not shrink
    half_width_now: float  # half-width of the interval at the seeds measured
    level: float = 0.95  # of that interval
    limited_by_items: bool = True  # when seeds is None: False = more seeds would do it, but over 100 000

    def describe(self) -> str:
        if self.seeds is None and not self.limited_by_items:
            return f"an effect of {self.effect:+.2g} needs more than 100 000 seeds"
        if self.seeds is None:
            z = _scipy.norm.ppf(1 - (1 - self.level) / 2)
            return (f"an effect of {self.effect:+.3f} cannot be separated by more seeds alone: the test items "
                    f"give the interval a half-width near {z * self.item_variance ** 0.5:.3f} whatever the seeds")
        return f"an effect of {self.effect:+.3f} needs about {self.seeds} seeds"


def seeds_needed(a, b, *, effect: float | None = None, power: float = 0.8, level: float = 0.95) -> SeedPlan:
    """Planning estimate: the smallest number of seeds at which the paired interval of `paired_interval`
    (same test items) would exclude zero with probability `power` for a true difference `effect` (default:
    the difference measured in `a` − `b`, which is how large the effect *might* be, not how large it is).

    `a`, `b`: (seeds, items) scores as for `paired_interval`, from at least 2 seeds. With S seeds the
    interval's variance is V_seed / S + V_item / N (module docstring: V_seed the variance of the per-seed mean
    differences, training runs plus their items' noise; V_item / N the test set's, which more seeds do not
    shrink), its half-width t × √ of that; the plan asks for (t_level + t_power)² × variance ≤ effect², t at
    S − 1 degrees of freedom (the usual approximation of a noncentral t). With few seeds
    V_seed is itself uncertain (5 seeds: a factor ~2 either way), so read the answer as an order of magnitude."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"planning seeds needs (seeds, items) scores from at least 2 seeds; got {a.shape} "
                         f"and {b.shape}")
    d = a - b
    S, N = d.shape
    effect = float(d.mean()) if effect is None else float(effect)
    v_seeds, v_items = _parts(d)
    v_seed = v_seeds * S  # of one seed's mean difference
    low, high = _t_interval(0.0, v_seeds + v_items, S - 1, level)  # paired_interval's, at the seeds measured
    half_now = (high - low) / 2
    candidates = np.arange(2, 100_001)
    total = v_seed / candidates + v_items
    t = _scipy.t.ppf(1 - (1 - level) / 2, candidates - 1) + _scipy.t.ppf(power, candidates - 1)
    enough = np.flatnonzero(t ** 2 * total <= effect ** 2) if effect != 0 else []
    if len(enough):
        return SeedPlan(effect, int(candidates[enough[0]]), v_seed, v_items, half_now, level)
    z = _scipy.norm.ppf(1 - (1 - level) / 2) + _scipy.norm.ppf(power)
    by_items = effect == 0 or z ** 2 * v_items >= effect ** 2  # else seeds would do it, past the search's end
    return SeedPlan(effect, None, v_seed, v_items, half_now, level, limited_by_items=by_items)
