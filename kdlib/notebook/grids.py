"""The run configs a notebook builds: the smoke settings, the embedded protocol, grids, output folders,
the paper profile's swap, and a pair's defaults."""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from kdlib import _paper as paper
from kdlib import _usertask as usertask
from kdlib._config import RunConfig
from kdlib._names import EMBEDDED_SIZES, TASK_SPLITS
from kdlib._recipes import SFT_INIT_STEPS_TINY
from kdlib._rows import task_metric

# Smallest settings: every cell runs, in seconds, on tiny models (used by `make smoke` / the tests). A grid
# whose axis names an embedded student size keeps that size, but its SFT warm-up is as short as tiny's
# (the protocol's 300 / 1 500 steps on the real sizes took most of `make test` on a slow host).
SMOKE = dict(teacher="tiny", teacher_steps=5, student="tiny", steps=3, n_train=64, n_labelled=16, n_eval=8,
             batch_size=8, max_new_tokens=48, eval_every=2, sft_init_steps=SFT_INIT_STEPS_TINY)

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


ROOT = Path(__file__).resolve().parents[2]


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
    for name, values in axes.items():  # papermill -p methods kd,gkd passes a string: it would split by letter
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ValueError(f"grid axis {name}={values!r} must be a list of values, e.g. {name}=[{values!r}]"
                             + (" (papermill: pass a list with -y \"name: [a, b]\", not -p name a,b)"
                                if isinstance(values, str) and "," in values else ""))
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


def eval_splits(task: str) -> tuple:
    """The held-out sets a notebook scores on: every split of the task but train (arith: test and its
    perturbed "plus" split). Notebooks use the same sets so the runs they share are trained once."""
    if task in TASK_SPLITS:
        splits = TASK_SPLITS[task]
    else:
        splits = usertask.spec(task).splits if usertask.is_user_task(task) else ("train", "test")
    return tuple(s for s in splits if s != "train")


def table_configs(profile: str, table: str, embedded: list[RunConfig], seeds: Sequence[int]) -> list[RunConfig]:
    """The configs behind one paper table or figure: the embedded grid the notebook built, or, with
    profile='paper', the paper table's runs (`kdlib._paper.TABLES[table]`: hub pairs and datasets)."""
    if profile == "embedded":
        return embedded
    if profile != "paper":
        raise ValueError(f"profile={profile!r}: choose 'embedded' or 'paper'")

    return [r.config for r in paper.table_runs(table, tuple(seeds))]


def pair_defaults(teacher: str, student: str) -> dict:
    """lr and batch size that suit a pair. Embedded sizes: the embedded protocol's lr 1e-3 and batch 32
    (docs/workload.md). A pretrained model: lr 5e-5 (CHOSEN: transformers' TrainingArguments default, a
    fine-tuning rate for models of this size; the tiny models' 1e-3 made SmolLM2's pruned student write
    "The The The" after 2 steps) and batch 8 (CHOSEN: a CPU's memory at SmolLM2's 49 152-token vocabulary)."""
    if teacher in EMBEDDED_SIZES and student in EMBEDDED_SIZES:
        return {"lr": 1e-3, "batch_size": 32}
    return {"lr": 5e-5, "batch_size": 8}


METRIC_NAMES = {"rougeL": "ROUGE-L", "accuracy": "accuracy", "exact": "exact match"}


def caption(base: dict | RunConfig, smoke: bool = False, tasks: Sequence[str] = ()) -> str:
    """The line a notebook writes under each of its figures (`plots.style(caption=...)`): the task and its
    metric, the student and the distillation steps of `base` (a `protocol` dict or a config; `smoke` as the
    notebook's grids apply it), so that a figure shown alone, on a slide, still says what it measured; the
    figure's title gives the seeds. A dict without "student" (a notebook whose figures compare students)
    leaves the student out; a student given as a folder is named by the folder. `tasks`: a figure that
    compares tasks (each with its metric) names them instead of one task and metric."""
    cfg = base if isinstance(base, RunConfig) else grid(base, smoke)[0]
    metric = task_metric(cfg)
    named = isinstance(base, RunConfig) or "student" in base
    student = f"student {Path(cfg.student).name}; " if named else ""
    what = f"tasks {', '.join(tasks)}" if tasks else f"task {cfg.task_name}, metric {METRIC_NAMES.get(metric, metric)}"
    return f"{what}; {student}{cfg.steps} distillation steps per run"
