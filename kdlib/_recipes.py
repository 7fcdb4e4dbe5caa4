"""The runs a run starts from: its teacher's training run and its student's supervised warm-up.

A run with `student_init='sft'` starts from `sft_init_recipe(cfg)`; a run with an embedded teacher (or
`teacher_steps > 0`) reads the teacher that `teacher_config(cfg)` trains. Both are ordinary `RunConfig`s,
cached like any run; `kdlib._runcache.run_hash` folds their hashes into the hash of every run built on them.
"""
from __future__ import annotations

from kdlib import _usertask as usertask
from kdlib._config import RunConfig
from kdlib._names import EMBEDDED_SIZES, TASK_SPLITS, needs_teacher

# The teacher recipe per task: SFT from scratch on the full training pool (measured in the workload
# report, figures/01_gkd/workload.md).
TEACHER_STEPS = {"arith": 1200, "summ": 1000}
USER_TEACHER_STEPS = 1000  # a task folder of your own (CHOSEN: summ's budget; set teacher_steps to change it)
# The student's supervised warm-up before distillation (GKD and AdaSwitch start from an SFT student): run to
# its plateau on the labelled rows, the same for every method and independent of the distillation's steps
# (measured in docs/workload.md). The `tiny` size of tests and smoke runs takes a few steps.
SFT_INIT_STEPS = {"arith": 1500, "summ": 300}
SFT_INIT_STEPS_TINY = 12


def teacher_recipe(task: str, size: str = "teacher", steps: int | None = None) -> RunConfig:
    """The embedded teacher: SFT from scratch on the whole training pool, scored on 300 held-out rows per
    split (8 for the `tiny` size of tests and smoke runs, whose score nobody reads)."""
    splits = TASK_SPLITS.get(task) or usertask.spec(task).splits
    n_train = 40000 if task in TASK_SPLITS else min(40000, usertask.row_count(task, "train"))  # the whole pool
    return RunConfig(method="sft", task=task, student=size, student_init="scratch", n_train=n_train,
                     steps=steps or TEACHER_STEPS.get(task, USER_TEACHER_STEPS), batch_size=32, lr=1e-3,
                     warmup_steps=50, max_grad_norm=1.0, checkpoint_every=100,
                     eval_splits=tuple(s for s in splits if s != "train"),
                     n_eval=8 if size == "tiny" else 300)


def teacher_config(cfg: RunConfig) -> RunConfig:
    """The run that trains `cfg`'s teacher: an embedded size by its recipe; a named teacher with
    teacher_steps > 0 is fine-tuned on the run's training rows first (DistiLLM's protocol)."""
    if cfg.teacher in EMBEDDED_SIZES:
        return teacher_recipe(cfg.task, cfg.teacher, cfg.teacher_steps or None)
    shared = _shared_fields(cfg)
    return RunConfig(**{**shared, "method": "sft", "teacher": cfg.teacher, "student": cfg.teacher,
                        "student_init": "pretrained", "steps": cfg.teacher_steps, "n_prompts": 0,
                        "eval_splits": (cfg.eval_splits[0],), **cfg.teacher_sft})


def sft_init_steps(cfg: RunConfig) -> int:
    """The warm-up's steps: `cfg.sft_init_steps`, else the task's SFT_INIT_STEPS (SFT_INIT_STEPS_TINY for the
    `tiny` size), else the run's own steps (a task of the user's or the paper profile's)."""
    if cfg.sft_init_steps:
        return cfg.sft_init_steps
    if cfg.student == "tiny":
        return SFT_INIT_STEPS_TINY
    return SFT_INIT_STEPS.get(cfg.task, cfg.steps) if cfg.profile == "embedded" else cfg.steps


def sft_init_recipe(cfg: RunConfig) -> RunConfig:
    """The supervised warm-up that `student_init='sft'` starts from: same student, task, labelled rows
    (`n_labelled`, else all `n_train`), seed. Embedded: `sft_init_steps` at lr 3e-3, clipped at 1.0.
    Paper profile: the run's own lr (CHOSEN: the papers start from SFT students but their warm-up budgets
    are not all stated)."""
    if cfg.student in EMBEDDED_SIZES:
        return RunConfig(method="sft", task=cfg.task, student=cfg.student, student_init="scratch",
                         n_train=cfg.n_labelled or cfg.n_train, steps=sft_init_steps(cfg), batch_size=32,
                         lr=3e-3, warmup_steps=20, max_grad_norm=1.0, seed=cfg.seed, n_eval=cfg.n_eval,
                         eval_splits=cfg.eval_splits, max_new_tokens=cfg.max_new_tokens)
    return RunConfig(**{**_shared_fields(cfg), "method": "sft", "teacher": cfg.teacher, "student": cfg.student,
                        "student_init": "pretrained", "steps": sft_init_steps(cfg), "lr": cfg.lr, "n_prompts": 0,
                        "n_train": cfg.n_labelled or cfg.n_train, "lora_rank": cfg.lora_rank, "seed": cfg.seed,
                        "eval_splits": cfg.eval_splits,
                        "chat_template_from": cfg.chat_template_from})


def _shared_fields(cfg: RunConfig) -> dict:
    """What a named model's fine-tuning run inherits from the run it serves."""
    keep = ("profile", "task", "n_train", "batch_size", "micro_batch_size", "warmup_steps", "weight_decay",
            "max_grad_norm", "max_new_tokens", "n_eval", "dtype", "data_dir", "gradient_checkpointing",
            "checkpoint_every", "chunk_size")
    return {k: getattr(cfg, k) for k in keep}


def uses_teacher(cfg: RunConfig) -> bool:
    """True if `cfg` reads a teacher at all: its divergence compares against the teacher, its data is the
    teacher's (SeqKD), or its sampler lets the teacher write or check tokens."""
    r = cfg.resolved
    return needs_teacher(r["divergence"]) or r["source"] == "seqkd" or r["sampler"] not in (None, "student")


def needs_teacher_run(cfg: RunConfig) -> bool:
    """True if `cfg` uses a teacher that a recipe trains first (an embedded size, or teacher_steps > 0)."""
    return uses_teacher(cfg) and (cfg.teacher in EMBEDDED_SIZES or cfg.teacher_steps > 0)
