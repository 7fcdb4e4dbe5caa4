"""A run config end to end: the orchestration. Load the pair and the rows, train, save, score, write result.json.

`run(cfg)` returns the result row of one run; a second call with the same config reads it from the run cache
(`kdlib._runcache`). `run_grid(configs)` returns a results table (a list of rows) for the notebooks to plot.
The parts live apart: the teacher's and the warm-up's runs in `kdlib._recipes`, the rows and the tokenizer in
`kdlib._rows`, the training loop in `kdlib._train`, the evaluation and checkpoint selection in `kdlib._scoring`.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kdlib import _checkpoints as checkpoints
from kdlib import _evaluate as ev
from kdlib import _paper as paper
from kdlib import _samplers as samplers
from kdlib import _workload as workload
from kdlib._config import RunConfig, check_models_reachable
from kdlib._io import writing
from kdlib._models import (
    EMBEDDED_SIZES,
    build_llama,
    keep_freed_memory,
    load_model,
    n_params,
    pick_device_dtype,
)
from kdlib._recipes import sft_init_recipe, teacher_config, uses_teacher
from kdlib._rows import check_row_lengths, load_rows, named_path, resolve_tokenizer, split_label, validation_rows
from kdlib._runcache import (
    cached_result,
    finished,
    install_shipped,
    replace_model_dir,
    run_dir,
    run_hash,
    shipped_run,
    write_json,
)
from kdlib._scoring import (
    eval_during_training,
    keep_selected,
    quiet_libraries,
    score_splits,
)
from kdlib._sources import build_source
from kdlib._timing import cpu_kernels
from kdlib._train import Trainer

if TYPE_CHECKING:  # annotations only
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def run(cfg: RunConfig, *, progress: bool = True, teacher_cfg: RunConfig | None = None) -> dict:
    """Train and evaluate `cfg` (or read its cached or shipped result). Returns the result row."""
    if cfg.profile == "paper":
        paper.check_config(cfg)
    d = run_dir(cfg)
    if finished(d):
        return cached_result(cfg, d)
    # offline: a hub name not in the cache fails now, not after a minute
    check_models_reachable(cfg, paper.model_path if cfg.profile == "paper" else None)
    shipped = shipped_run(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and shipped is None:  # the ranks of one launch train it together
        return _run_uncached(cfg, d, progress=progress, teacher_cfg=teacher_cfg)
    with workload.locked(d.with_name(d.name + ".lock"), what=f"run {d.name} ({cfg.method} {cfg.task} seed {cfg.seed})"):
        if finished(d, move_aside=True):  # another process may have run this config while we waited
            return cached_result(cfg, d)
        if shipped is not None:
            return install_shipped(shipped, d)
        return _run_uncached(cfg, d, progress=progress, teacher_cfg=teacher_cfg)


# CPU threads of one run's own arithmetic: float sums come out differently with 1 and 2 threads (from the
# third step on here), so a run's numbers would depend on how it was launched (a notebook alone, or two
# beside each other under make reproduce). Every run uses this count, whatever the process had, and records
# it in its provenance; KDLIB_RUN_THREADS changes it (and so, possibly, the last digits of every result).
RUN_THREADS = 1


def run_threads() -> int:
    value = os.environ.get("KDLIB_RUN_THREADS", str(RUN_THREADS))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"KDLIB_RUN_THREADS={value!r} must be a whole number >= 1")
    return int(value)


def _run_uncached(cfg: RunConfig, d: Path, *, progress: bool, teacher_cfg) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(run_threads())
    try:
        return _train_and_score(cfg, d, progress=progress, teacher_cfg=teacher_cfg)
    finally:
        torch.set_num_threads(before)
        # Under bf16 mixed precision accelerate binds the student's new forward to the student: a cycle that
        # only the cyclic GC frees, maybe long after. A teacher fine-tune or warm-up would then stay in GPU
        # memory while the run that needs it trains; collect now, and hand CUDA's cached blocks back.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _train_and_score(cfg: RunConfig, d: Path, *, progress: bool, teacher_cfg) -> dict:
    quiet_libraries()
    keep_freed_memory()
    device, dtype = pick_device_dtype(cfg.dtype)
    tok = resolve_tokenizer(cfg)
    check_row_lengths(cfg, tok)  # your own task's rows against the pair's context, before any training
    if (d / "trained.json").exists() and (d / "model" / "model.safetensors").exists() \
            and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # (ranks of one launch train it again together)
        return _rescore(cfg, d, tok, device, dtype, progress)
    _run_dependencies(cfg, progress, teacher_cfg)
    t0 = time.time()  # after the teacher's and the warm-up's own runs: their time is in their own result.json
    teacher = None
    if uses_teacher(cfg):
        teacher = load_model(teacher_path(cfg, progress, teacher_cfg), device=device, dtype=dtype)
    # The trained weights stay float32; on bf16 devices the forward passes run in bf16 autocast (mixed
    # precision), so that small AdamW updates are not rounded away. The frozen teacher is stored in bf16.
    student = _initial_student(cfg, tok, progress).to(device=device, dtype=torch.float32)
    if cfg.lora_rank:
        student = with_lora(student, cfg.lora_rank)
    rows = load_rows(cfg, "train", cfg.n_train, tok)[: cfg.n_prompts or None]
    r = cfg.resolved
    from accelerate import PartialState

    labelled = rows[:cfg.n_labelled] if cfg.n_labelled else None  # None: every row is labelled
    source = build_source(r["source"], rows, cfg.seed, cfg.student_data_fraction,
                          rank=PartialState().process_index, steps=cfg.steps, labelled=labelled)
    source.prepare(teacher, tok, max_new_tokens=cfg.max_new_tokens, cache_key=teacher_data_key(cfg),
                   temperature=cfg.sample_temperature)
    sampler = samplers.build_sampler(r["sampler"], **r["sampler_params"]) if r["sampler"] else None
    curve_rows = load_rows(cfg, cfg.eval_splits[0], cfg.n_eval, tok)
    for split in cfg.eval_splits[1:]:  # every evaluation set is readable before the first step, not after training
        load_rows(cfg, split, 1, tok)
    val_rows = validation_rows(cfg, tok) if cfg.reads_validation_rows else None
    trainer = Trainer(cfg, student=student, teacher=teacher, tokenizer=tok, source=source,
                      mixed_precision="bf16" if dtype == torch.bfloat16 else "no",
                      sampler=sampler, run_dir=d, progress=progress,
                      on_eval=lambda t: eval_during_training(t, curve_rows, val_rows))
    last = checkpoints.resume(trainer)  # an interrupted run: resume exactly where it stopped
    if last is not None:
        log.info("resuming %s from %s", d, last)
    elif val_rows:  # DistiLLM: the reference validation loss, before any update (as the authors' code)
        source.report_validation(ev.validation_loss(student, tok, val_rows, max_new_tokens=cfg.max_new_tokens))
    trainer.fit()
    if cfg.select_checkpoint == "validation":
        keep_selected(trainer, val_rows)
    # the full weights, gathered by accelerate on every rank (FSDP shards them); LoRA merges them itself
    state = None if cfg.lora_rank else trainer.acc.get_state_dict(trainer.student)
    if trainer.acc.is_main_process:  # one writer: the model, the predictions and result.json
        _save_and_score(cfg, d, trainer, tok, t0, device, dtype, progress, state)
    trainer.acc.wait_for_everyone()
    return json.loads((d / "result.json").read_text())


def _save_and_score(cfg: RunConfig, d: Path, trainer: Trainer, tok, t0: float, device, dtype, progress: bool,
                    state: dict | None = None):
    """Save the trained student (atomically; `state`: its full weights as accelerate gathered them) and what
    its training recorded (trained.json), then score it and write result.json. Saved before scoring: a
    failure while scoring (a full disk, an interrupt) costs a rerun only the scoring."""
    model = trainer.acc.unwrap_model(trainer.student)
    if cfg.lora_rank:
        model = model.merge_and_unload()  # a plain model: evaluation and later runs load it as usual
    with writing(d / "model"):
        replace_model_dir(d, lambda tmp: model.save_pretrained(tmp, **({"state_dict": state} if state else {})))
    trained = {"step": trainer.state.step, "seconds": trainer.state.seconds, "metrics": trainer.state.metrics,
               "forwards": vars(trainer.state.forwards), "wall_seconds": time.time() - t0}
    write_json(d / "trained.json", trained)
    _score_and_write(cfg, d, model, tok, trained, time.time(), device, dtype, progress)
    trainer.write_metrics()  # with the final score at the curve's last point


def _score_and_write(cfg: RunConfig, d: Path, model, tok, trained: dict, t_score: float, device, dtype,
                     progress: bool) -> None:
    """Score a trained model on every evaluation split and write result.json from `trained` (trained.json)."""
    r = cfg.resolved
    scores = score_splits(cfg, model, tok, d, progress)
    score = scores[split_label(cfg.eval_splits[0])]["score"]
    metrics = trained["metrics"]
    if cfg.eval_every and metrics and metrics[-1]["step"] % cfg.eval_every == 0:  # the curve's last point
        metrics[-1]["eval_score"] = score
    result = {
        "hash": run_hash(cfg), **cfg.to_dict(), **{f"resolved_{k}": v for k, v in r.items()},
        "task_name": cfg.task_name, **({"task_digest": cfg.user_task.digest} if cfg.user_task else {}),
        "score": score,
        **{f"score_{s}": v["score"] for s, v in scores.items()},
        "buckets": {s: v["buckets"] for s, v in scores.items()},
        "n_scored": {s: v["n"] for s, v in scores.items()},
        "student_params": n_params(model), "train_seconds": trained["seconds"],
        "wall_seconds": trained["wall_seconds"] + time.time() - t_score,
        "seconds_per_step": trained["seconds"] / max(1, trained["step"]),
        "teacher_forwards": trained["forwards"]["teacher"],
        "student_forwards": trained["forwards"]["student"],
        "teacher_fraction": _mean(m["teacher_fraction"] for m in metrics if m["source"] == "sampler"),
        "final_loss": metrics[-1]["loss"] if metrics else float("nan"),
        "selected_step": next((m["step"] for m in metrics if m.get("selected")), trained["step"]),
        "curve": metrics,
        "provenance": provenance(device, dtype),
    }
    write_json(d / "result.json", result)


def _rescore(cfg: RunConfig, d: Path, tok, device, dtype, progress: bool) -> dict:
    """A run whose model was saved but whose scoring did not finish: score the saved model, no training."""
    log.info("%s: the trained model is saved (trained.json); scoring it again, without training", d)
    model = load_model(str(d / "model"), device=device, dtype=dtype)
    _score_and_write(cfg, d, model, tok, json.loads((d / "trained.json").read_text()), time.time(), device, dtype,
                     progress)
    return json.loads((d / "result.json").read_text())


def _run_dependencies(cfg: RunConfig, progress: bool, teacher_cfg) -> None:
    """Train (or find cached) the runs `cfg` starts from: its teacher (an embedded size, or a named model that
    `teacher_steps` fine-tunes; a named model as it is needs no run) and its SFT warm-up. Run before
    `cfg`'s clock starts, so a run's `wall_seconds` never counts a warm-up or a teacher it happened to train
    first (summed over a cache, as figures/reproduce_times.md does, they would count twice)."""
    if uses_teacher(cfg):
        teacher_path(cfg, progress, teacher_cfg)
    if cfg.student_init == "sft":
        run(sft_init_recipe(cfg), progress=progress)


def _initial_student(cfg: RunConfig, tok, progress: bool):
    if cfg.student_init == "sft":
        init = sft_init_recipe(cfg)
        run(init, progress=progress)
        return load_model(str(run_dir(init) / "model"))
    if cfg.student_init == "scratch":
        return build_llama(EMBEDDED_SIZES[cfg.student], tok, seed=cfg.seed)
    return load_model(named_path(cfg.student))  # 'pretrained'


def with_lora(model, rank: int):
    """LoRA adapters (peft) on every linear layer; only they train."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))


def teacher_path(cfg: RunConfig, progress: bool = True, teacher_cfg: RunConfig | None = None) -> str:
    """Where the teacher's weights are: an embedded size is trained by its recipe (cached)."""
    if cfg.teacher in EMBEDDED_SIZES or cfg.teacher_steps > 0:
        tcfg = teacher_cfg or teacher_config(cfg)
        run(tcfg, progress=progress)
        return str(run_dir(tcfg) / "model")
    return named_path(cfg.teacher)


def teacher_data_key(cfg: RunConfig) -> dict:
    """What names a run's teacher and training prompts, for data a source builds from them once (SeqKD's
    responses): the teacher's run hash (or name), the task, and on the paper profile what shapes the prompts."""
    teacher_key = (run_hash(teacher_config(cfg)) if cfg.teacher in EMBEDDED_SIZES or cfg.teacher_steps
                   else cfg.teacher)
    key = {"teacher": teacher_key, "task": cfg.task}
    if cfg.profile == "paper":  # prompts depend on the pair's chat template and on where the data came from
        key.update(profile="paper", student=cfg.student, data_dir=cfg.data_dir,
                   chat_template_from=cfg.chat_template_from)
    return key


def provenance(device, dtype) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions = {}
    for pkg in ("torch", "transformers", "accelerate", "datasets", "kdlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"git_commit": commit, "versions": versions, "python": platform.python_version(),
            "device": str(device), "dtype": str(dtype), "threads": torch.get_num_threads(),
            **cpu_kernels(), "pid": os.getpid()}  # which process trained it


def run_grid(configs: list[RunConfig], *, progress: bool = True) -> list[dict]:
    """Run (or read from cache) every config; one result row each."""
    from tqdm.auto import tqdm

    return [run(c, progress=progress) for c in tqdm(configs, desc="runs", disable=not progress)]


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def trained_model(cfg: RunConfig, progress: bool = True) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The student a config trains (running it if not cached) and its tokenizer."""
    run(cfg, progress=progress)
    return load_run(cfg)[:2]


def load_run(cfg: RunConfig) -> tuple:
    """A finished run's (model, tokenizer, result), without training: FileNotFoundError naming the run's
    folder and the command that trains it when the run is not in the cache."""
    if cfg.profile == "paper":
        paper.check_config(cfg)
    d = run_dir(cfg)
    if not finished(d) or not (d / "model").is_dir():
        raise FileNotFoundError(f"no finished run {run_hash(cfg)} ({cfg.method} {cfg.task} seed {cfg.seed}) in {d}; "
                                "train it with kdlib.run(cfg) or `python -m kdlib train ...`")
    return load_model(str(d / "model")), resolve_tokenizer(cfg), json.loads((d / "result.json").read_text())


def check_export_folder(output_dir) -> Path:
    """`output_dir` as a path, if it is an empty folder or can be made one (FileExistsError when it is not
    empty or is a file, ValueError when it cannot be written): callable before training."""
    out = Path(output_dir).expanduser()
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"output folder {out} is a file; choose a new folder")
        if any(out.iterdir()):
            raise FileExistsError(f"output folder {out} is not empty; choose a new one")
    where = out
    while not where.exists():  # the nearest existing folder is where it will be made
        where = where.parent
    if not where.is_dir():
        raise ValueError(f"output folder {out} cannot be made: {where} is a file, not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {out} cannot be made: {where} is not writable")
    return out


def export_run(cfg: RunConfig, output_dir: str | Path) -> Path:
    """Copy a finished run out of the cache: `save_pretrained` model and tokenizer, and result.json, in
    `output_dir`, loadable with `AutoModelForCausalLM.from_pretrained(output_dir)`. The folder must be
    empty or new, so an export never mixes two runs."""
    out = check_export_folder(output_dir)
    model, tok, result = load_run(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_json(out / "result.json", result)
    return out
