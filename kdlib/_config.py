"""One frozen run configuration, validated on construction, loaded from YAML plus key=value overrides.

Every method is ``data source × token-level sampler × divergence`` (docs/methods.md §1). ``method`` names a preset
of the three; any of them can be overridden, so a new method is a new preset or a new config file.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from kdlib import _names as names
from kdlib import _usertask as usertask
from kdlib._io import read_text
from kdlib._names import DIVERGENCE_PARAMS, EMBEDDED_SIZES, SAMPLER_DEFAULTS, TASK_SPLITS
from kdlib._names import PRETRAINED_NAMES as PRETRAINED

SOURCES = ("data", "seqkd", "sampler", "mix", "distillm")

# method → (data source, sampler, divergence, divergence params). docs/methods.md §1, the table.
METHODS: dict[str, tuple[str, Optional[str], str, dict]] = {
    "sft": ("data", None, "ce", {}),
    "kd": ("data", None, "fkl", {}),
    "seqkd": ("seqkd", None, "ce", {}),
    "imitkd": ("sampler", "student", "fkl", {}),
    "onpolicy": ("sampler", "student", "fkl", {}),
    "gkd": ("mix", "student", "jsd", {"beta": 0.5}),
    "distillm": ("distillm", "student", "sfkl", {"alpha": 0.1}),
    "skd": ("sampler", "skd", "fkl", {}),
    "switch": ("sampler", "switch", "sfkl", {"alpha": 0.1}),  # skew FKL inferred, not confirmed
    "adaswitch": ("sampler", "adaswitch", "fkl", {}),
}


@dataclass(frozen=True)
class RunConfig:
    """A distillation run. Fields left ``None`` take the method preset's value (see `resolved`)."""

    method: str = "sft"
    """Preset naming the source, sampler and divergence: one of METHODS."""
    task: str = "arith"
    """Embedded task name (arith, summ), a folder of your own JSONL files (kdlib._usertask, docs/your_task.md),
    or a paper dataset name (paper profile)."""
    profile: str = "embedded"
    """'embedded' (CPU, self-made models and data) or 'paper' (hub models and datasets, GPU)."""
    teacher: str = "teacher"
    """Teacher: an embedded size name, a local directory or a hub name."""
    teacher_steps: int = 0
    """Embedded: SFT steps of the teacher recipe (0 = the task's default, TEACHER_STEPS). Named teacher:
    fine-tune it on the training rows for this many steps first (0 = use it as loaded)."""
    teacher_sft: dict = field(default_factory=dict)
    """Fields of the named teacher's own fine-tuning run, e.g. {'lr': 5e-5, 'lora_rank': 16} (DistiLLM
    fine-tunes its teachers on Dolly first); used when teacher_steps > 0."""
    student: str = "student-s"
    """Student: an embedded size name, a local directory or a hub name."""
    student_init: str = "sft"
    """'sft': start from the student fine-tuned on the labelled rows (cached); 'scratch': random init of
    an embedded size; 'pretrained': a named model's weights as loaded (paper profile, SmolLM2)."""
    sft_init_steps: int = 0
    """Steps of the SFT warm-up that student_init='sft' starts from (0 = the task's recipe, run to its plateau;
    see kdlib._recipes.sft_init_steps). Independent of `steps`, so every method starts from one student."""
    source: Optional[str] = None
    """Where a step's sequences come from: data | seqkd | sampler | mix | distillm."""
    sampler: Optional[str] = None
    """Token-level sampler for sampled steps: student | teacher | skd | switch | adaswitch."""
    sampler_params: dict = field(default_factory=dict)
    """Sampler parameters, e.g. {'tau0': 0.3, 'decay': 0.01} for switch (overrides its defaults)."""
    divergence: Optional[str] = None
    """Per-position loss: ce | fkl | rkl | jsd | tvd | sfkl | srkl."""
    divergence_params: dict = field(default_factory=dict)
    """Divergence parameters, e.g. {'beta': 0.5} for jsd or {'alpha': 0.1} for sfkl/srkl."""
    student_data_fraction: float = 0.5
    """GKD's λ: probability that a step uses sampled (student) data instead of the fixed data (mix)."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences per optimizer step (over all micro-batches and processes)."""
    micro_batch_size: int = 0
    """Sequences per forward pass; 0 = batch_size (no accumulation)."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 10
    """Linear warm-up steps before cosine decay to 10 % of lr."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 5.0
    """Gradient clipping norm; 0 disables clipping. 5: the median distillation gradient norm is 1-2 on the
    embedded workload, so only outliers are clipped (at 1.0 nearly every step was, equalising step sizes)."""
    max_new_tokens: int = 64
    """Longest sampled or decoded response, in tokens."""
    sample_temperature: float = 1.0
    """Temperature when a sampler draws a token, and of the teacher's responses SeqKD trains on (0 = greedy).
    Not the loss temperature."""
    loss_temperature: float = 1.0
    """Temperature dividing both logits inside the divergence. Not the sampling temperature."""
    n_train: int = 1000
    """Training rows (prompts, and their responses where the source uses them)."""
    n_prompts: int = 0
    """Rows the distillation run itself uses (the first n_prompts of n_train; 0 = all n_train). The SFT
    warm-up always uses all n_train labelled rows (GKD Fig. 3: on-policy with 5 % of the prompts)."""
    n_labelled: int = 0
    """Rows whose reference responses the run may read: the first n_labelled of the n_train rows (0 = all).
    The SFT warm-up, SFT, supervised KD and the fixed-data steps of GKD and DistiLLM read only these; SeqKD
    and the samplers use every prompt. Prompts are cheap and labels are not (GKD Fig. 3)."""
    n_eval: int = 200
    """Held-out rows scored at the end (and at every eval_every)."""
    eval_every: int = 0
    """Score on n_eval held-out rows every this many steps (0 = only at the end)."""
    select_checkpoint: str = "final"
    """Which weights a run keeps and scores: 'final', the last step's (GKD, AdaSwitch); 'validation', those
    with the best greedy score on held-out validation rows among every eval_every-th step and the last (the
    MiniLLM / DistiLLM protocol that SWITCH's table follows). Never selected on the test rows."""
    eval_splits: tuple = ("test",)
    """Splits scored at the end: test, and plus (arith's perturbed split)."""
    seed: int = 0
    """Seed for data order, the λ coin, sampling and initialisation."""
    data_dir: str = ""
    """Paper profile: a folder of <dataset>/<split>.jsonl files in the hub schema, read instead of the
    hub ('' = the hub, or $KDLIB_PAPER_DATA)."""
    chat_template_from: str = "check"
    """'check': refuse a pair whose chat templates differ; 'student' / 'teacher': format every prompt
    with that model's template (both models read the same token ids)."""
    gradient_checkpointing: bool = False
    """Recompute the student's activations in backward: less memory for large students, ~30 % slower."""
    report_to: tuple = ()
    """accelerate trackers to log metrics to as well as metrics.csv, e.g. ['tensorboard'] or ['wandb']."""
    lora_rank: int = 0
    """Train LoRA adapters of this rank on every linear layer of the student (peft); 0 = full fine-tuning."""
    dtype: str = "auto"
    """auto (bf16 on CUDA where supported, else float32) | float32 | bfloat16."""
    chunk_size: int = 0
    """Positions per chunk in the divergence (0 = library default)."""
    cache_teacher_logits: bool = False
    """Fixed-data steps (supervised KD, GKD's and DistiLLM's data steps) read the teacher's logits of each
    labelled row from a cache filled by one forward of that row alone, instead of a teacher forward per
    micro-batch: 0.22-0.40x the training time of a supervised-KD run (docs/reproduce.md). Exact per row, but
    not bit-identical to the batched forward (padding changes the kernels' blocking), so it is a different
    run. Embedded teacher sizes only (a 49k-152k vocabulary does not fit). The cache lives on the run's
    device (at most 2 GiB; rows past it are computed alone each time) and a resumed process fills it again,
    so its teacher_forwards count those rows twice."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep."""

    def __post_init__(self):
        _check_types(self)
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is unknown; choose one of {sorted(METHODS)}")
        if self.profile not in ("embedded", "paper"):
            raise ValueError(f"profile={self.profile!r}: choose 'embedded' or 'paper'")
        if self.student_init not in ("sft", "scratch", "pretrained"):
            raise ValueError(f"student_init={self.student_init!r}: choose 'sft', 'scratch' or 'pretrained'")
        for role in ("teacher", "student"):
            _check_model_name(role, getattr(self, role), paper_names=self.profile == "paper")
        embedded_student = self.student in EMBEDDED_SIZES
        if self.student_init == "scratch" and not embedded_student:
            raise ValueError(f"student_init='scratch' builds an embedded size; student={self.student!r} is a "
                             "named model: use student_init='pretrained' (or 'sft')")
        if self.student_init == "pretrained" and embedded_student:
            raise ValueError(f"student_init='pretrained' loads a named model; student={self.student!r} is an "
                             "embedded size: use 'scratch' or 'sft'")
        if self.chat_template_from not in ("check", "student", "teacher"):
            raise ValueError(f"chat_template_from={self.chat_template_from!r}: choose check, student or teacher")
        if self.profile == "paper":  # the dataset and its splits are checked by kdlib._paper.check_config
            if not self.data_dir and os.environ.get("KDLIB_PAPER_DATA"):  # part of the run: hash it
                object.__setattr__(self, "data_dir", os.environ["KDLIB_PAPER_DATA"])
        elif self.data_dir:
            raise ValueError("data_dir is for profile='paper' (embedded tasks are generated, not read)")
        else:
            if self.task in TASK_SPLITS:
                splits = TASK_SPLITS[self.task]
            elif usertask.is_user_task(self.task):
                splits = usertask.spec(self.task).splits  # every row of every file checked now
                self._fit_user_task_sizes()
            else:
                raise ValueError(f"task={self.task!r} is not an embedded task; choose one of {sorted(TASK_SPLITS)}, "
                                 "a folder of your own JSONL files (docs/your_task.md), or profile='paper' for "
                                 "the papers' datasets")
            for split in self.eval_splits:  # fail now, not after training
                if split not in splits or split == "train":
                    raise ValueError(f"eval_splits: task {self.task!r} has no held-out split {split!r}; it has "
                                     f"{[s for s in splits if s != 'train']}")
        r = self.resolved
        if self.sampler_params and r["sampler"] is None:
            raise ValueError(f"sampler_params={self.sampler_params!r}: method={self.method!r} uses no sampler "
                             f"(source {r['source']!r}); drop them, or set sampler= as well")
        if r["source"] not in SOURCES:
            raise ValueError(f"source={r['source']!r} is unknown; choose one of {SOURCES}")
        if self.sampler is not None and r["source"] in ("data", "seqkd"):
            raise ValueError(f"sampler={self.sampler!r} is unused: method={self.method!r} reads "
                             + ("the labelled data" if r["source"] == "data" else "the teacher's responses (SeqKD)")
                             + f" (source {r['source']!r}) and never samples; drop it, or pick a method or "
                             "source that samples (sampler, mix, distillm)")
        if r["source"] in ("sampler", "mix", "distillm") and r["sampler"] is None:
            raise ValueError(f"source={r['source']!r} needs a sampler")
        if r["source"] == "distillm" and self.eval_every < 1:
            raise ValueError("source='distillm' adapts its student-output probability to the validation loss "
                             "measured every eval_every steps: set eval_every >= 1 (e.g. eval_every=25)")
        if self.select_checkpoint not in ("final", "validation"):
            raise ValueError(f"select_checkpoint={self.select_checkpoint!r}: choose 'final' (the last step's "
                             "weights) or 'validation' (the best on held-out validation rows)")
        if self.select_checkpoint == "validation" and self.eval_every < 1:
            raise ValueError("select_checkpoint='validation' chooses among the weights of every eval_every-th step: "
                             "set eval_every >= 1 (e.g. eval_every=50)")
        _positive(self, "steps", "batch_size", "lr", "max_new_tokens", "n_train", "n_eval")
        _non_negative(self, "warmup_steps", "weight_decay", "max_grad_norm", "sample_temperature",
                      "micro_batch_size", "eval_every", "chunk_size", "checkpoint_every",
                      "teacher_steps", "lora_rank", "n_prompts", "n_labelled", "sft_init_steps")
        if self.n_labelled > self.n_train:
            raise ValueError(f"n_labelled={self.n_labelled} must be <= n_train={self.n_train} (the labelled rows "
                             "are the first n_labelled of the n_train rows)")
        self._check_user_task_validation()
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints={self.keep_checkpoints} must be >= 1 (the last good checkpoint "
                             "is what a resumed or failed run falls back on)")
        if self.loss_temperature <= 0:
            raise ValueError(f"loss_temperature={self.loss_temperature} must be > 0")
        if not 0.0 <= self.student_data_fraction <= 1.0:
            raise ValueError(f"student_data_fraction={self.student_data_fraction} must be in [0, 1]")
        if self.batch_size % self.micro_batch_size_resolved:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of "
                             f"micro_batch_size={self.micro_batch_size}")
        if self.cache_teacher_logits and (self.profile == "paper" or self.teacher not in EMBEDDED_SIZES):
            raise ValueError("cache_teacher_logits keeps (rows, response, vocabulary) logits: for the embedded "
                             f"sizes' 200-2 000-token vocabularies, not teacher={self.teacher!r}'s (32k-256k)")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r}: choose auto, float32 or bfloat16")
        names.validate_params(r["divergence"], **r["divergence_params"])
        if r["sampler"] is not None:
            names.validate_sampler_params(r["sampler"], **r["sampler_params"])

    def _fit_user_task_sizes(self) -> None:
        """A task folder of your own holds what it holds: n_train, n_prompts and n_labelled larger than its
        train.jsonl are cut to it (the config, its hash and result.json then say what runs), with a warning
        unless the value was the default; n_eval stays "at most" (result.json's n_scored says how many were
        scored)."""
        task = usertask.spec(self.task)
        n_rows = usertask.row_count(self.task, "train")
        cut = {}
        if self.n_train > n_rows:
            cut["n_train"] = n_rows
        if self.n_prompts > n_rows:
            cut["n_prompts"] = 0  # 0 = all n_train
        if n_rows < self.n_labelled <= self.n_train:  # (n_labelled > n_train is an error below)
            cut["n_labelled"] = 0  # 0 = all n_train
        defaults = _defaults()
        said = [f"{k}={getattr(self, k)} → {v}" + (" (all)" if v == 0 else "") for k, v in cut.items()
                if getattr(self, k) != defaults[k]]
        if said:
            warnings.warn(f"{Path(task.path) / 'train.jsonl'} has {n_rows} rows: " + ", ".join(said)
                          + (" — every row is labelled now" if "n_labelled" in cut else ""),
                          stacklevel=names.stacklevel_outside_kdlib())
        for k, v in cut.items():
            object.__setattr__(self, k, v)

    @property
    def reads_validation_rows(self) -> bool:
        """Whether the run reads held-out validation rows: to select its checkpoint, or for DistiLLM's schedule."""
        return self.select_checkpoint == "validation" or self.resolved["source"] == "distillm"

    def _check_user_task_validation(self) -> None:
        """A run that validates (select_checkpoint='validation', DistiLLM) on a task folder finds its rows now,
        not after its teacher and warm-up trained: validation.jsonl if the folder has one, else train.jsonl's
        rows past n_train."""
        task = self.user_task
        if task is None or not self.reads_validation_rows or "validation" in task.splits:
            return
        n_rows = usertask.row_count(self.task, "train")
        if self.n_train >= n_rows:
            why = "select_checkpoint='validation'" if self.select_checkpoint == "validation" else "DistiLLM's schedule"
            raise ValueError(f"{why} needs held-out validation rows: {task.path} has no validation.jsonl, and "
                             f"{Path(task.path) / 'train.jsonl'} has no rows past n_train={self.n_train} (it has "
                             f"{n_rows}); add a validation.jsonl, or set n_train below the file's rows")

    @property
    def resolved(self) -> dict[str, Any]:
        """Source, sampler, divergence and their params after applying the method preset."""
        source, sampler, divergence, div_params = METHODS[self.method]
        return {
            "source": self.source or source,
            "sampler": self.sampler or sampler,
            "sampler_params": dict(self.sampler_params),
            "divergence": self.divergence or divergence,
            "divergence_params": {**(div_params if self.divergence in (None, divergence) else {}),
                                  **self.divergence_params},
        }

    @property
    def micro_batch_size_resolved(self) -> int:
        return self.micro_batch_size or self.batch_size

    @property
    def grad_accum_steps(self) -> int:
        return self.batch_size // self.micro_batch_size_resolved

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["eval_splits"] = list(self.eval_splits)
        d["report_to"] = list(self.report_to)
        return d

    def key_fields(self, exclude: Sequence[str] = (
            "eval_every", "checkpoint_every", "keep_checkpoints", "report_to")) -> dict:
        """Every field that changes this run's own result, in one canonical form: what
        `kdlib.run_hash` hashes, together with the hashes of the runs this one starts from."""
        defaults = _defaults()
        d = {k: v for k, v in self.to_dict().items()
             if k not in exclude and not (k in ADDED_FIELDS and v == defaults[k])}
        d.update(self._canonical())
        if self.resolved["source"] == "distillm":  # its schedule reacts to the evaluations
            d["eval_every"] = self.eval_every
            d["distillm_schedule"] = 2  # 2: the authors' loss-margin rule, validation loss, decaying replay
        if self.resolved["source"] == "seqkd":  # sample_temperature is the temperature of SeqKD's teacher data
            if self.sample_temperature == 0:  # greedy: the data every SeqKD run read before sampling, same key
                d["sample_temperature"] = 1.0
            else:
                d["seqkd_data"] = "sampled"  # not the greedy data that this temperature's runs once read
        if self.select_checkpoint == "validation":  # the evaluated steps are the candidates
            d["eval_every"] = self.eval_every
        task = self.user_task
        if task is not None:  # your own data: its name and content, wherever the folder lies
            d["task"] = f"{task.name}@{task.digest}"
            if self.reads_validation_rows and "validation" in task.splits:  # validation.jsonl, not train's tail
                d["validation_rows"] = "validation.jsonl"
        return d

    @property
    def user_task(self):
        """The `kdlib._usertask.UserTask` when `task` is a folder of your own JSONL files, else None."""
        if self.profile == "paper" or self.task in TASK_SPLITS or not usertask.is_user_task(self.task):
            return None
        return usertask.spec(self.task)

    @property
    def task_name(self) -> str:
        """What tables and titles call the task: an embedded or paper name, or your task's own name."""
        task = self.user_task
        return task.name if task is not None else self.task

    def _canonical(self) -> dict:
        """The fields that name the algorithm, in one form per run: a value spelled out at the preset's
        or the library's default is the same run as leaving it out (e.g. gkd with divergence 'jsd',
        beta 0.5 is gkd), and λ only counts for GKD's mix."""
        source, sampler, divergence, div_params = METHODS[self.method]
        r = self.resolved
        base = div_params if r["divergence"] == divergence else DIVERGENCE_PARAMS[r["divergence"]]
        out = {"source": None if r["source"] == source else r["source"],
               "sampler": None if r["sampler"] == sampler else r["sampler"],
               "divergence": None if r["divergence"] == divergence else r["divergence"],
               "divergence_params": {k: v for k, v in r["divergence_params"].items() if base.get(k) != v}}
        if r["source"] != "mix":
            out["student_data_fraction"] = _defaults()["student_data_fraction"]
        if r["sampler"] is not None:
            params = {**SAMPLER_DEFAULTS[r["sampler"]], **self.sampler_params}
            if params.get("block") == 1:  # the lockstep decoder, as before `block` existed: the same cache keys
                del params["block"]
            out["sampler_params"] = params
        return out

    def replace(self, **changes) -> "RunConfig":
        return from_dict({**self.to_dict(), **changes})


# Fields added after runs were first cached: left out of the hash while at their default, so that an
# upgrade keeps every existing cache entry (trained teachers, finished runs) valid.
ADDED_FIELDS = ("teacher_sft", "data_dir", "chat_template_from", "gradient_checkpointing", "n_labelled",
                "sft_init_steps", "select_checkpoint", "cache_teacher_logits")


def _defaults() -> dict:
    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in fields(RunConfig)}


def _check_types(cfg) -> None:
    """Every field against its declared type, naming field, value and expected type: ints are ints (not 5.5,
    not true), floats take ints too, a lone string where a list is expected becomes a list of one."""
    hints = typing.get_type_hints(RunConfig)
    for f in fields(RunConfig):
        value, want = getattr(cfg, f.name), hints[f.name]
        optional = typing.get_origin(want) is typing.Union and type(None) in typing.get_args(want)
        base = next(a for a in typing.get_args(want) if a is not type(None)) if optional else want
        if optional and value is None:
            continue
        if base is tuple:
            if isinstance(value, str):
                object.__setattr__(cfg, f.name, (value,))
                continue
            ok = isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)
            if ok and not value and f.name == "eval_splits":
                raise ValueError("eval_splits=[] names no evaluation set; give at least one, e.g. [test]")
            if ok:
                object.__setattr__(cfg, f.name, tuple(value))
            expected = "a list of strings"
        elif base is bool:
            ok, expected = isinstance(value, bool), "true or false"
        elif base is int:
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif base is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            expected = "a finite number"
        elif base is str:
            ok, expected = isinstance(value, str), "a string"
        elif base is dict:
            ok, expected = isinstance(value, dict), "a mapping (key: value, or key.item=value on the command line)"
        else:  # pragma: no cover - every field has one of the types above
            continue
        if not ok:
            raise ValueError(f"{f.name}={value!r} must be {expected}, not {type(value).__name__}")


def _check_model_name(role: str, name: str, local: str | None = None, check_offline: bool = False,
                      paper_names: bool = False) -> None:
    """Fail now, not after a minute of trying the hub: a typo of an embedded size, a path that does not
    exist, or (`check_offline`, with HF_HUB_OFFLINE set) a hub name that is not in the local cache. `local` is
    where the name is read from when that differs (the paper profile's copies under $KDLIB_MODELS)."""
    if name in EMBEDDED_SIZES or name in PRETRAINED:
        return
    known = f"embedded sizes {sorted(EMBEDDED_SIZES)}, pretrained {sorted(PRETRAINED)}"
    if Path(name).expanduser().is_dir():  # a local model directory, whatever its name
        _check_model_folder(role, name, Path(name).expanduser())
        return
    if re.fullmatch(r"(student|teacher|tiny)([-_]\w*)?", name):
        raise ValueError(f"{role}={name!r} is not an embedded size; choose one of {known}, a local "
                         "directory or a hub name")
    local = local or name
    path = Path(local).expanduser()
    if path.is_dir():
        _check_model_folder(role, name, path)
        return
    if local.startswith(("/", "./", "../", "~")) or path.exists():
        raise ValueError(f"{role}={name!r}: no model directory at {path} ({known})")
    if not paper_names and "/" in local and Path(local.split("/")[0]).is_dir():  # mymodels/x, ./mymodels here
        raise ValueError(f"{role}={name!r}: no model directory at {path.resolve()}, though "
                         f"{local.split('/')[0]}/ exists here; a hub name would be tried otherwise ({known})")
    if check_offline and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(local, "config.json"), str):
            raise ValueError(f"{role}={name!r} is neither a local directory nor in the hub cache, and "
                             f"HF_HUB_OFFLINE is set: download it first or give its directory ({known})")


def _check_model_folder(role: str, name: str, path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ValueError(f"{role}={name!r}: {path} is a folder but not a model (no config.json; a model folder "
                         "is what save_pretrained writes)")


def check_models_reachable(cfg: RunConfig, local_path=None) -> None:
    """Before a run loads anything: with HF_HUB_OFFLINE set, every hub name must be in the local cache (a
    config alone, e.g. the paper plan, does not need the models). `local_path(name)` gives where a name is
    read from (the paper profile passes `kdlib._paper.model_path`)."""
    for role in ("teacher", "student"):
        name = getattr(cfg, role)
        _check_model_name(role, name, local_path(name) if local_path else None, check_offline=True)


def _positive(cfg, *names):
    for n in names:
        if getattr(cfg, n) <= 0:
            raise ValueError(f"{n}={getattr(cfg, n)} must be > 0")


def _non_negative(cfg, *names):
    for n in names:
        if getattr(cfg, n) < 0:
            raise ValueError(f"{n}={getattr(cfg, n)} must be >= 0")


FIELD_NAMES = {f.name for f in fields(RunConfig)}
# The names TRL's GKDConfig and transformers' TrainingArguments give the same knobs, accepted in YAML files
# and overrides (`--help` lists them). Only exact equivalents: per_device_train_batch_size is not
# batch_size (that is per optimizer step, over every process).
ALIASES = {"learning_rate": "lr", "max_steps": "steps", "lmbda": "student_data_fraction",
           "beta": "divergence_params.beta"}
# Names that mean two different kdlib fields: refused, naming both.
AMBIGUOUS = {"temperature": ("sample_temperature", "loss_temperature")}


def _canonical(key: str, source: str) -> str:
    """`key` under kdlib's name: an alias resolved, an ambiguous or unknown name refused with a suggestion."""
    if key in AMBIGUOUS:
        raise ValueError(f"{source}: {key!r} is ambiguous here; did you mean {' or '.join(AMBIGUOUS[key])}?")
    key = ALIASES.get(key, key)
    outer = key.split(".", 1)[0]
    if outer not in FIELD_NAMES:
        close = difflib.get_close_matches(outer, sorted(FIELD_NAMES | set(ALIASES)), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known fields: {sorted(FIELD_NAMES)}"
        raise ValueError(f"{source}: unknown field {outer!r}; {hint}")
    return key


def _resolve_aliases(d: dict, source: str) -> dict:
    out = {}
    for key, value in d.items():
        name = _canonical(key, source)
        if "." in name:  # beta -> divergence_params.beta
            outer, inner = name.split(".", 1)
            out.setdefault(outer, {})
            if not isinstance(out[outer], dict):
                raise ValueError(f"{source}: {outer} must be a mapping, got {out[outer]!r}")
            out[outer] = {**out[outer], inner: value}
            continue
        if name in out and name != key:
            raise ValueError(f"{source}: {key!r} and {name!r} name the same field; give one")
        out[name] = {**out.get(name, {}), **value} if isinstance(value, dict) and isinstance(out.get(name), dict) \
            else value
    return out


def from_dict(d: dict, source: str = "config") -> RunConfig:
    d = _resolve_aliases(d, source)
    for key in ("eval_splits", "report_to"):
        if isinstance(d.get(key), str):  # a lone name is a list of one
            d[key] = (d[key],)
        elif isinstance(d.get(key), list):
            d[key] = tuple(d[key])
    return RunConfig(**d)


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: 1e-3 and 5E4 are floats (YAML 1.1 reads them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?\d[\d_]*(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*(?:[eE][-+]?\d+)?$"
                             r"|^[-+]?\.\d+(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def _yaml(text: str, source: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: not valid YAML: {e}".replace('"<unicode string>"', source)) from None


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' with the value parsed as YAML (numbers, lists, dicts); dotted keys set a dict item:
    ``sampler_params.tau0=0.3``."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    return key.strip(), _yaml(value, f"override {text!r}")


def apply_overrides(d: dict, overrides: list[str] | dict) -> dict:
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        key = _canonical(key, f"override {key}={value!r}")
        if "." in key:
            outer, inner = key.split(".", 1)
            d[outer] = {**d.get(outer, {}), inner: value}
        else:
            d[key] = value
    return d


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """A config from a YAML file (or defaults) with key=value overrides applied last."""
    d = {}
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {path} does not exist (configs/ holds the shipped ones)")
        d = _yaml(read_text(path), str(path))
        if d is None:
            raise ValueError(f"{path}: the config file is empty; give at least `method:` (or no file, "
                             "only key=value overrides, for every default)")
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(d).__name__}")
    return from_dict(apply_overrides(d, overrides), source=str(path or "overrides"))
