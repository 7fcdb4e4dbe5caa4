"""The figure style and the few helpers the notebooks share: save figures (PNG + PDF) and tables
(CSV + Markdown) under one output folder, with a provenance note beside them."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pandas.api.types import is_float_dtype

from kdlib._config import RunConfig
from kdlib._stats import signed

_CAPTION = {"text": ""}  # the line save_figure writes under each figure (style's caption)


def style(caption: str = "") -> None:
    """The notebooks' figure style. `caption` (e.g. `kdlib.notebook.caption(base)`: task, metric, student,
    steps) is written under every figure `save_figure` saves from then on; "" writes none."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "figure.figsize": (6, 3.6)})
    _CAPTION["text"] = caption


def save_figure(fig: Figure, out_dir: str | Path, name: str, caption: str | None = None) -> Path:
    """`fig` as `<name>.png` and `<name>.pdf` (no creation date: the same figure gives the same PDF) under
    `out_dir`, with a caption under it: `caption`, or by default style's ("" for none). A figure saved twice
    keeps the caption it was first saved with."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = _CAPTION["text"] if caption is None else caption
    if text and not any(t.get_gid() == "kdlib-caption" for t in fig.texts):
        fig.canvas.draw()  # lays the figure out: the caption goes under its lowest label
        below = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
        fig.text((below.x0 + 0.05) / fig.get_figwidth(), (below.y0 - 0.05) / fig.get_figheight(), text,
                 ha="left", va="top", fontsize="small", color="0.35", gid="kdlib-caption")
    for ext in ("png", "pdf"):
        fig.savefig(out / f"{name}.{ext}", metadata=None if ext == "png" else {"CreationDate": None})
    return out / f"{name}.png"


SIGNED_COLUMNS = ("difference", "ci_low", "ci_high")
"""A paired table's columns that the Markdown copy prints as `kdlib._stats.signed` does: a bound of 0.0002 beside
"reproduced" must not read 0.000."""


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str, floatfmt: str = ".3f") -> Path:
    """`df` as CSV (full precision) and as Markdown (`floatfmt`; paired differences and their bounds signed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False)
    signed_cols = [c for c in SIGNED_COLUMNS if c in df and is_float_dtype(df[c])]
    shown = df.assign(**{c: df[c].map(signed) for c in signed_cols})
    keep = [list(df.columns).index(c) for c in signed_cols] or False  # tabulate would parse "+0.0002" back to 0.000
    (out / f"{name}.md").write_text(shown.to_markdown(index=False, floatfmt=floatfmt, disable_numparse=keep) + "\n")
    return out / f"{name}.md"


def save_provenance(results: list[dict], out_dir: str | Path, extra: dict | None = None) -> Path:
    """Which configs, seeds and commit made the figures in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    defaults = RunConfig().to_dict()
    runs = [{"hash": r["hash"], "method": r["method"], "task": r["task"], "student": r["student"],
             "seed": r["seed"], "git_commit": r["provenance"]["git_commit"],
             # the CPU kernels that computed it (runs trained before 2026-12-05 do not record them)
             **({"cpu_kernels": r["provenance"]["cpu_kernels"]} if "cpu_kernels" in r["provenance"] else {}),
             # every config field that differs from RunConfig's default: the run is rebuildable from here
             "config": {k: r[k] for k in defaults if k in r and r[k] != defaults[k]}} for r in results]
    path = out / "provenance.json"
    path.write_text(json.dumps({"runs": runs, **(extra or {})}, indent=1))
    return path


def mean_std(df: pd.DataFrame, by: list[str], value: str = "score") -> pd.DataFrame:
    """Mean, standard deviation and seed count of `value` per group."""
    g = df.groupby(by, sort=False)[value]
    return g.agg(mean="mean", std="std", seeds="count").reset_index()


def mean_std_wide(df: pd.DataFrame, by: str | list[str], values: list[str], sort: bool = True) -> pd.DataFrame:
    """Per group, "<value>_mean" and "<value>_std" over its rows (the seeds) for each of `values`: flat
    column names, one row per group, ready for save_table."""
    table = df.groupby(by, sort=sort)[list(values)].agg(["mean", "std"])
    table.columns = [f"{v}_{s}" for v, s in table.columns]
    return table.reset_index()


def bars(df: pd.DataFrame, x: str, y: str = "score", *, hue: str | None = None, col: str | None = None,
         ylabel: str = "score", title: str = "",
         order: Sequence[str] | None = None) -> Figure:
    """Bars of the mean of `y` per `x` (per `hue`, one panel per `col`), error bars one standard
    deviation over the rows (seeds), each seed as a dot: the figure beside a mean ± sd table."""
    kw = dict(data=df, x=x, y=y, hue=hue, order=order)
    dots = dict(palette="dark:0.2") if hue is not None else dict(color="0.2")  # the seeds, dark
    if col is not None:
        g = sns.catplot(**kw, col=col, kind="bar", errorbar="sd", height=3.4, aspect=1.3, sharey=False,
                        alpha=0.8)
        g.map_dataframe(sns.stripplot, x=x, y=y, hue=hue, order=order, dodge=hue is not None, size=3,
                        jitter=False, legend=False, **dots)
        g.set_axis_labels(x, ylabel)
        g.set_xticklabels(rotation=30, ha="right")
        if title:
            g.figure.suptitle(title, y=1.03)
        return g.figure
    fig, ax = plt.subplots()
    sns.barplot(**kw, errorbar="sd", alpha=0.8, ax=ax)
    # no random jitter: the same figure, byte for byte, at every render of the same runs
    sns.stripplot(**kw, dodge=hue is not None, size=3, jitter=False, legend=False, ax=ax, **dots)
    ax.set(xlabel=x, ylabel=ylabel, title=title)
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def differences(table: pd.DataFrame, *, title: str = "", label: str = "paired difference (better − worse)") -> Figure:
    """The paired differences of `kdlib.notebook.paired_table` with their 95 % intervals, one row per
    comparison, one panel per decoding (greedy, sampled): a dot right of the zero line whose interval does
    not cross it is a separated effect in the paper's direction."""
    t = table.assign(comparison=(table["group"].astype(str) + ": " if "group" in table else "")
                     + table["better"].astype(str) + " − " + table["worse"].astype(str)
                     + (" (" + table["eval"] + ")" if table["eval"].nunique() > 1 else ""))
    panels = list(dict.fromkeys(t["decoding"]))
    rows = list(dict.fromkeys(t["comparison"]))
    height = max(2.6, 0.45 * len(rows) + 1.6)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, height), sharey=True, squeeze=False)
    colors = {"reproduced": "tab:green", "not separated": "0.45", "reversed": "tab:red"}
    for ax, panel in zip(axes[0], panels):
        sub = t[t["decoding"] == panel].set_index("comparison").reindex(rows)
        y = range(len(rows))
        for yi, (_, r) in zip(y, sub.iterrows()):
            if pd.isna(r["difference"]):
                continue
            ax.errorbar(r["difference"], yi, xerr=[[r["difference"] - r["ci_low"]], [r["ci_high"] - r["difference"]]],
                        fmt="o", color=colors.get(r["verdict"], "0.2"), capsize=3)
        ax.axvline(0, color="0.3", lw=0.8, ls="--")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # few ticks: "−0.0075" labels must not run together
        ax.set(title=panel, xlabel=label)
        ax.set_yticks(list(y), rows)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # the first comparison on top, half a row of margin
    if title:
        # above the panel titles, whatever the height
        fig.suptitle(title + _sample_size(table, title), y=1 + 0.35 / height)
    return fig


def setting_heatmaps(df: pd.DataFrame, index: str, columns: str, values: dict, *, paired: Sequence[str] = (),
                     by: str = "seed", title: str = "") -> Figure:
    """One heatmap per entry of `values` ({column: label}) over a two-setting grid (`index` × `columns`, e.g.
    AdaSwitch's k × window), each cell annotated with its mean ± sd over `by` (the seeds). A column in
    `paired` is drawn as each run's value minus its own seed's mean over the grid (a diverging map centred
    on 0): when the seeds' warm-ups differ more than the settings do, raw means colour the seeds' noise.
    Centring assumes every seed ran every setting (a seed missing one would shift its other cells)."""
    fig, axes = plt.subplots(1, len(values), figsize=(5 * len(values), 3.6), layout="constrained", squeeze=False)
    for ax, (value, label) in zip(axes[0], values.items()):
        centred = value in paired
        v = df[value] - df.groupby(by)[value].transform("mean") if centred else df[value]
        label = f"{label} − the {by}'s grid mean" if centred else label
        cell = df.assign(_v=v).groupby([index, columns])["_v"]
        mean, sd = cell.mean().unstack(), cell.std().unstack()  # each cell: mean and spread over `by`
        annot = mean.map(("{:+.3f}" if centred else "{:.3f}").format)
        if df[by].nunique() > 1:  # one seed has no spread to show
            annot = annot + "\n± " + sd.map("{:.3f}".format)
        sns.heatmap(mean, annot=annot, fmt="", cmap="RdBu" if centred else "viridis", center=0 if centred else None,
                    ax=ax, cbar_kws={"label": label})
        ax.set_yticks([i + 0.5 for i in range(len(mean.index))], [f"{k:g}" if isinstance(k, float) else str(k)
                                                                   for k in mean.index])  # 5, not 5.0
        ax.set(title=f"{title}{label} (mean ± sd, {df[by].nunique()} {by}s)")
    return fig


def reference_points(ax: Axes, points: pd.DataFrame, x: str, y: str, *, label: str = "{model}") -> None:
    """Grey crosses at `points`' (`x`, `y`), each annotated with `label` formatted by its row: the teacher's
    and the warm-up student's places on a plot whose axes are not a single score (e.g.
    `measure.quality_diversity_references` on GKD Fig. 4's quality against diversity)."""
    ax.scatter(points[x], points[y], marker="P", color="0.35", s=50, zorder=3)  # not a marker seaborn's styles use
    middle = sum(ax.get_xlim()) / 2
    for row in points.to_dict("records"):
        right = row[x] > middle  # a label right of the middle goes left of its point, inside the axes
        ax.annotate(label.format(**row), (row[x], row[y]), xytext=(-5 if right else 5, 3), textcoords="offset points",
                    ha="right" if right else "left", fontsize="small", color="0.35")


def _sample_size(table: pd.DataFrame, title: str) -> str:
    """" (5 seeds × 1 000 items)" from a paired table's seeds and items columns, for a title that does not
    give its seeds itself; a range where the rows differ."""
    if "seed" in title.lower() or "seeds" not in table or table["seeds"].isna().all():
        return ""

    def span(col: str) -> str:
        values = table[col].dropna().astype(int)
        lo, hi = f"{values.min():,}".replace(",", " "), f"{values.max():,}".replace(",", " ")
        return lo if lo == hi else f"{lo}–{hi}"

    items = f" × {span('items')} items" if "items" in table and table["items"].notna().any() else ""
    return f" ({span('seeds')} seeds{items})"


def reference_lines(ax: Axes, references: dict, *, styles: Sequence[str] = ("--", ":"),
                    fmt: str = "{name} {value:.3f}", legend: bool = False) -> None:
    """A horizontal line per reference score (e.g. the teacher's and the warm-up student's, from
    `kdlib.notebook.measure.reference_scores`), each labelled with its name and value for the legend;
    `legend`: draw the axes' legend beside them, right of the panel (none when `references` is empty)."""
    for (name, value), style in zip(references.items(), styles):
        ax.axhline(value, color="0.35", ls=style, lw=1, label=fmt.format(name=name, value=value))
    if legend and references:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
