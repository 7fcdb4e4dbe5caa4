"""Run configs end to end — models, data, training, evaluation — cached by config hash.

`run(cfg)` returns the result row of one run; a second call with the same config reads it from the
cache. `run_grid(configs)` returns a results table (a list of rows) for the notebooks to plot.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from kdlib import checkpoints, usertask, workload
from kdlib._env import env_flag
from kdlib._io import atomic_path, atomic_write_text, writing
from kdlib.config import RunConfig
from kdlib.models import EMBEDDED_SIZES, build_llama, keep_freed_memory, load_model, n_params, pick_device_dtype
from kdlib.sources import build_source
from kdlib.train import Trainer

log = logging.getLogger(__name__)

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
    splits = workload.TASK_SPLITS.get(task) or usertask.spec(task).splits
    return RunConfig(method="sft", task=task, student=size, student_init="scratch", n_train=40000,
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


def load_rows(cfg: RunConfig, split: str, n: int | None = None, tok=None) -> list[dict]:
    """Rows of `split` for `cfg`: an embedded task's split, or a paper dataset ('test', 'gsm_plus',
    'dolly:test'; see kdlib.paper.parse_split) formatted for the tokenizer's chat template or not."""
    if cfg.profile == "embedded":
        if cfg.user_task is not None:
            return usertask.load_rows(cfg.task, split, n)
        return workload.load_split(cfg.task, split, n)
    from kdlib import paper

    name, s = paper.parse_split(cfg.task, split)
    tok = tok if tok is not None else resolve_tokenizer(cfg)
    rows = paper.load_rows(name, s, n, chat=bool(getattr(tok, "chat_template", None)),
                           data_dir=cfg.data_dir or None)
    return truncate_prompts(rows, tok, paper.DATASETS[name].max_prompt_tokens, f"{name}/{s}")


def truncate_prompts(rows: list[dict], tok, max_tokens: int, what: str = "") -> list[dict]:
    """Cut each prompt to its first `max_tokens` tokens (MiniLLM's rule), so that prompt plus
    max_new_tokens fits the model; logs how many were cut."""
    cut = 0
    for row in rows:
        ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            row["prompt"] = tok.decode(ids[:max_tokens])
            cut += 1
    if cut:
        log.warning("%s: %d of %d prompts cut to %d tokens", what, cut, len(rows), max_tokens)
    return rows


def task_metric(cfg: RunConfig, split: str = "train") -> str:
    if cfg.profile == "embedded":
        task = cfg.user_task
        return task.metric if task is not None else workload.TASK_METRIC[cfg.task]
    from kdlib import paper

    return paper.DATASETS[paper.parse_split(cfg.task, split)[0]].metric


def split_label(split: str) -> str:
    """The column name of a split's score: 'test', 'plus', 'gsm_plus' (from 'gsm_plus:test')."""
    return split.split(":", 1)[0]


def run_dir(cfg: RunConfig) -> Path:
    return workload.cache_root() / "runs" / cfg.hash()


# Finished runs that come with kdlib, by config hash (model/ and result.json, as in the cache): the
# embedded arith and summ teachers, so that a fresh clone's quickstart and notebooks 01-04 do not start
# with their 1 200 and 1 000 training steps (see kdlib/shipped/README.md). KDLIB_SHIPPED=0 ignores them
# (trains everything).
SHIPPED = Path(__file__).resolve().parent / "shipped"


def shipped_run(cfg: RunConfig) -> Path | None:
    """The shipped copy of `cfg`'s finished run, or None."""
    d = SHIPPED / cfg.hash()
    if not env_flag("KDLIB_SHIPPED") or not (d / "result.json").exists() \
            or not (d / "model" / "model.safetensors").exists():
        return None
    return d


def run(cfg: RunConfig, *, progress: bool = True, teacher_cfg: RunConfig | None = None) -> dict:
    """Train and evaluate `cfg` (or read its cached or shipped result). Returns the result row."""
    d = run_dir(cfg)
    if _finished(d):
        return _cached(cfg, d)
    from kdlib.config import check_models_reachable

    check_models_reachable(cfg)  # offline: a hub name not in the cache fails now, not after a minute
    shipped = shipped_run(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and shipped is None:  # the ranks of one launch train it together
        return _run_uncached(cfg, d, progress=progress, teacher_cfg=teacher_cfg)
    with workload.locked(d.with_name(d.name + ".lock"), what=f"run {d.name} ({cfg.method} {cfg.task} seed {cfg.seed})"):
        if _finished(d, move_aside=True):  # another process may have run this config while we waited
            return _cached(cfg, d)
        if shipped is not None:
            return _install_shipped(shipped, d)
        return _run_uncached(cfg, d, progress=progress, teacher_cfg=teacher_cfg)


def _finished(d: Path, *, move_aside: bool = False) -> bool:
    """True if `d` holds a finished run. A result.json that does not parse (a kill or a full disk while an
    older kdlib wrote it) counts as not finished: with `move_aside` (called under the run's lock) it is
    renamed result.json.unreadable, with a warning naming it, and the run trains again (from its last
    checkpoint when it kept one)."""
    path = d / "result.json"
    try:
        json.loads(path.read_text())
        return True
    except FileNotFoundError:
        return False
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if move_aside:
            try:
                os.replace(path, path.with_name("result.json.unreadable"))
            except FileNotFoundError:
                pass
            log.warning("%s cannot be read (%s); moved to result.json.unreadable, so the run counts as not "
                        "finished", path, e)
        return False


def _cached(cfg: RunConfig, d: Path) -> dict:
    """The cached result of `cfg`. eval_every is not part of the hash (the curve does not change the trained
    model, so notebooks share runs), so a run cached by a caller with another eval_every may lack points of
    the learning curve `cfg` asks for: say so, naming the run, rather than plot a curve with points missing."""
    result = json.loads((d / "result.json").read_text())  # _finished() has read it once already
    cached_every = result.get("eval_every", cfg.eval_every)
    if cfg.eval_every and (not cached_every or cfg.eval_every % cached_every):  # a finer curve holds every point
        log.warning("%s (%s %s seed %s): cached with eval_every=%s, so its learning curve lacks points that "
                    "eval_every=%s asks for; delete %s to retrain it with this curve",
                    d.name, cfg.method, cfg.task, cfg.seed, cached_every, cfg.eval_every, d)
    return result


def stale_shipped_runs() -> list[str]:
    """Shipped runs that no current recipe would read (a teacher recipe changed since), each with why."""
    stale = []
    for d in sorted(p for p in SHIPPED.glob("*") if p.is_dir()):
        try:
            result = json.loads((d / "result.json").read_text())
            current = teacher_recipe(result["task"], result["student"]).hash()  # what teacher_config asks for
        except (OSError, ValueError, KeyError) as e:
            stale.append(f"{d}: unreadable result.json ({e})")
            continue
        if not (d / "model" / "model.safetensors").exists():
            stale.append(f"{d}: no model/model.safetensors")
        elif d.name != current:
            stale.append(f"{d}: teacher_recipe({result['task']!r}) now hashes to {current}; "
                         f"retrain it and ship_run it, or delete this copy")
    return stale


def ship_run(cfg: RunConfig) -> Path:
    """Copy `cfg`'s finished run from the cache into kdlib's shipped runs (its model and result.json; no
    checkpoints, no predictions): what a maintainer does after retraining a shipped teacher."""
    d = run_dir(cfg)
    if not (d / "result.json").exists():
        raise FileNotFoundError(f"{d}: no finished run of {cfg.method} {cfg.task} ({cfg.hash()}) to ship; "
                                f"run it first (kdlib.experiments.run)")
    if not (d / "model" / "model.safetensors").exists():
        raise FileNotFoundError(f"{d / 'model'}: no model.safetensors to ship")
    out = SHIPPED / cfg.hash()
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(d / "model", out / "model")
    result = json.loads((d / "result.json").read_text())
    result.pop("shipped", None)
    _write_json(out / "result.json", result)
    return out


def _install_shipped(shipped: Path, d: Path) -> dict:
    """Copy a shipped run into the cache: the model first, result.json (the mark of a finished run) last."""
    log.info("%s: using the run shipped with kdlib (%s); KDLIB_SHIPPED=0 trains it instead", d.name, shipped)
    d.mkdir(parents=True, exist_ok=True)
    _replace_model_dir(d, lambda tmp: shutil.copytree(shipped / "model", tmp))
    result = {**json.loads((shipped / "result.json").read_text()), "shipped": True}
    _write_json(d / "result.json", result)
    return result


def _replace_model_dir(d: Path, write) -> None:
    """Write `d`/model atomically: `write(tmp)` fills `d`/model.tmp, which then takes model's place, so an
    interruption never leaves a half-written model under the name later runs load."""
    shutil.rmtree(d / "model.tmp", ignore_errors=True)
    write(d / "model.tmp")
    shutil.rmtree(d / "model", ignore_errors=True)
    (d / "model.tmp").replace(d / "model")


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


def _train_and_score(cfg: RunConfig, d: Path, *, progress: bool, teacher_cfg) -> dict:
    from kdlib import evaluate as ev
    from kdlib import samplers

    t0 = time.time()
    _quiet_libraries()
    keep_freed_memory()
    device, dtype = pick_device_dtype(cfg.dtype)
    tok = resolve_tokenizer(cfg)
    if (d / "trained.json").exists() and (d / "model" / "model.safetensors").exists() \
            and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # (ranks of one launch train it again together)
        return _rescore(cfg, d, tok, device, dtype, progress)
    teacher = None
    if _needs_teacher(cfg):
        teacher = load_model(teacher_path(cfg, progress, teacher_cfg), device=device, dtype=dtype)
    # The trained weights stay float32; on bf16 devices the forward passes run in bf16 autocast (mixed
    # precision), so that small AdamW updates are not rounded away. The frozen teacher is stored in bf16.
    student = _initial_student(cfg, tok, progress).to(device=device, dtype=torch.float32)
    if cfg.lora_rank:
        student = with_lora(student, cfg.lora_rank)
    rows = load_rows(cfg, "train", cfg.n_train, tok)[: cfg.n_prompts or None]
    r = cfg.resolved
    if r["source"] == "seqkd":
        rows = seqkd_rows(cfg, teacher, tok, rows)
    from accelerate import PartialState

    labelled = rows[:cfg.n_labelled] if cfg.n_labelled else None  # None: every row is labelled
    source = build_source(r["source"], rows, cfg.seed, cfg.student_data_fraction,
                          rank=PartialState().process_index, steps=cfg.steps, labelled=labelled)
    sampler = samplers.build_sampler(r["sampler"], **r["sampler_params"]) if r["sampler"] else None
    curve_rows = load_rows(cfg, cfg.eval_splits[0], cfg.n_eval, tok)
    for split in cfg.eval_splits[1:]:  # every evaluation set is readable before the first step, not after training
        load_rows(cfg, split, 1, tok)
    val_rows = validation_rows(cfg, tok) if r["source"] == "distillm" or cfg.select_checkpoint == "validation" \
        else None
    trainer = Trainer(cfg, student=student, teacher=teacher, tokenizer=tok, source=source,
                      mixed_precision="bf16" if dtype == torch.bfloat16 else "no",
                      sampler=sampler, run_dir=d, progress=progress,
                      on_eval=lambda t: _eval_during_training(t, curve_rows, val_rows))
    last = checkpoints.resume(trainer)  # an interrupted run: resume exactly where it stopped
    if last is not None:
        log.info("resuming %s from %s", d, last)
    elif val_rows:  # DistiLLM: the reference validation loss, before any update (as the authors' code)
        source.report_validation(ev.validation_loss(student, tok, val_rows, max_new_tokens=cfg.max_new_tokens))
    trainer.fit()
    if cfg.select_checkpoint == "validation":
        _keep_selected(trainer, val_rows)
    # the full weights, gathered by accelerate on every rank (FSDP shards them); LoRA merges them itself
    state = None if cfg.lora_rank else trainer.acc.get_state_dict(trainer.student)
    if trainer.acc.is_main_process:  # one writer: the model, the predictions and result.json
        _save_and_score(cfg, d, trainer, tok, t0, device, dtype, progress, state)
    trainer.acc.wait_for_everyone()
    return json.loads((d / "result.json").read_text())


# The first evaluation split is scored twice: greedy, and one sample per row at temperature 1 (the protocol of the
# MiniLLM / DistiLLM tables that SWITCH follows; GKD reports both). The sampled score's column is
# "<split>_t1"; its samples are drawn from a generator seeded with the run's seed plus this offset, so two
# methods at one seed are scored on the same items with the same stream of random numbers.
SAMPLED_SUFFIX, SAMPLE_SEED_OFFSET = "_t1", 7919


def score_splits(cfg: RunConfig, model, tok, out_dir: Path | None, progress: bool) -> dict:
    """Decode and score `model` on each of `cfg.eval_splits` (n_eval rows each) greedily (`label`), and the
    first split also sampled at temperature 1 (`label` + "_t1"): {label: result of kdlib.evaluate.evaluate};
    per-example predictions to out_dir/predictions-<label>.jsonl when given."""
    from kdlib import evaluate as ev

    scores = {}
    for i, split in enumerate(cfg.eval_splits):
        rows = load_rows(cfg, split, cfg.n_eval, tok)
        decodings = [(split_label(split), 0.0)] + [(split_label(split) + SAMPLED_SUFFIX, 1.0)] * (i == 0)
        for label, temperature in decodings:
            scores[label] = ev.evaluate(model, tok, rows, metric=task_metric(cfg, split),
                                        max_new_tokens=cfg.max_new_tokens, temperature=temperature,
                                        seed=cfg.seed + SAMPLE_SEED_OFFSET,
                                        out_path=out_dir / f"predictions-{label}.jsonl" if out_dir else None,
                                        progress=progress)
    return scores


def _save_and_score(cfg: RunConfig, d: Path, trainer: Trainer, tok, t0: float, device, dtype, progress: bool,
                    state: dict | None = None):
    """Save the trained student (atomically; `state`: its full weights as accelerate gathered them) and what
    its training recorded (trained.json), then score it and write result.json. Saved before scoring: a
    failure while scoring (a full disk, an interrupt) costs a rerun only the scoring."""
    model = trainer.acc.unwrap_model(trainer.student)
    if cfg.lora_rank:
        model = model.merge_and_unload()  # a plain model: evaluation and later runs load it as usual
    with writing(d / "model"):
        _replace_model_dir(d, lambda tmp: model.save_pretrained(tmp, **({"state_dict": state} if state else {})))
    trained = {"step": trainer.state.step, "seconds": trainer.state.seconds, "metrics": trainer.state.metrics,
               "forwards": vars(trainer.state.forwards), "wall_seconds": time.time() - t0}
    _write_json(d / "trained.json", trained)
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
        "hash": cfg.hash(), **cfg.to_dict(), **{f"resolved_{k}": v for k, v in r.items()},
        "task_name": cfg.task_name, **({"task_digest": cfg.user_task.digest} if cfg.user_task else {}),
        "score": score,
        **{f"score_{s}": v["score"] for s, v in scores.items()},
        "buckets": {s: v["buckets"] for s, v in scores.items()},
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
    _write_json(d / "result.json", result)


def _rescore(cfg: RunConfig, d: Path, tok, device, dtype, progress: bool) -> dict:
    """A run whose model was saved but whose scoring did not finish: score the saved model, no training."""
    log.info("%s: the trained model is saved (trained.json); scoring it again, without training", d)
    model = load_model(str(d / "model"), device=device, dtype=dtype)
    _score_and_write(cfg, d, model, tok, json.loads((d / "trained.json").read_text()), time.time(), device, dtype,
                     progress)
    return json.loads((d / "result.json").read_text())


def score_model(cfg: RunConfig, model_path: str, *, out_dir=None, progress: bool = True) -> dict:
    """Score an existing model (a save_pretrained directory or a hub name) on `cfg`'s task and
    evaluation splits, as a run's final evaluation does: {split: score}. Predictions and the scores go to
    `out_dir` (default: <model_path>/eval when it is a directory)."""
    _quiet_libraries()
    keep_freed_memory()
    device, dtype = pick_device_dtype(cfg.dtype)
    tok = resolve_tokenizer(cfg)
    if model_path in workload.PRETRAINED:  # smollm2, smollm2-pruned: kdlib's offline copies, not the hub
        model_path = str(workload.PRETRAINED[model_path]())
    model = load_model(model_path, device=device, dtype=dtype)
    if model.get_input_embeddings().num_embeddings < len(tok):
        raise ValueError(f"{model_path}: its vocabulary ({model.get_input_embeddings().num_embeddings}) is "
                         f"smaller than the tokenizer of teacher={cfg.teacher!r} / student={cfg.student!r} "
                         f"({len(tok)}); pass the teacher/student names the model was trained with")
    out = Path(out_dir) if out_dir else (Path(model_path) / "eval" if Path(model_path).is_dir() else None)
    scores = {label: v["score"] for label, v in score_splits(cfg, model, tok, out, progress).items()}
    if out:
        _write_json(out / "scores.json", {"model": str(model_path), "task": cfg.task, "n_eval": cfg.n_eval,
                                          "scores": scores})
    return scores


def _quiet_libraries() -> None:
    """Our own tqdm bars say what is happening; the libraries' per-file bars only add noise."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _eval_during_training(trainer, rows, validation_rows=None) -> None:
    """Score the student every `eval_every` steps on the first evaluation set (the learning curve,
    reported, never trained on). DistiLLM's adaptive schedule is fed the cross-entropy of held-out
    *validation* rows (`validation_rows`; the authors' validation loss), never the test set."""
    from kdlib import evaluate as ev

    cfg = trainer.cfg
    model = trainer.acc.unwrap_model(trainer.student)
    if trainer.state.step < cfg.steps:  # the last step's point is the final score: the same rows, decoded once
        metric = task_metric(cfg, cfg.eval_splits[0])
        score = ev.evaluate(model, trainer.tokenizer, rows, metric=metric,
                            max_new_tokens=cfg.max_new_tokens)["score"]
        trainer.state.metrics[-1]["eval_score"] = score
    if trainer.source.wants_validation and validation_rows:
        val = ev.validation_loss(model, trainer.tokenizer, validation_rows, max_new_tokens=cfg.max_new_tokens)
        trainer.source.report_validation(val)
        trainer.state.metrics[-1].update(validation_loss=val, student_output_probability=trainer.source.fraction)
    if cfg.select_checkpoint == "validation":
        _validate_candidate(trainer, validation_rows)
    model.train()


# select_checkpoint="validation": the best weights so far live in the run folder (not only in memory), so a
# run resumed after a kill still has them; a resumed run re-evaluates the same weights to the same score.
SELECTED = "selected-weights.pt"


def _validate_candidate(trainer, rows: list[dict]) -> None:
    """Score the current weights greedily on the validation rows and save them if they are now the best."""
    metrics = trainer.state.metrics
    metrics[-1]["validation_score"] = _validation_score(trainer, rows)
    if trainer.acc.is_main_process and _best_step(metrics) == trainer.state.step:
        model = trainer.acc.unwrap_model(trainer.student)
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        with atomic_path(trainer.run_dir / SELECTED) as tmp:
            torch.save({"step": trainer.state.step, "weights": weights}, tmp)


def _best_step(metrics: list[dict]) -> int:
    """The evaluated step with the highest validation score; the earliest of equal scores."""
    return -max((m["validation_score"], -m["step"]) for m in metrics if "validation_score" in m)[1]


def _validation_score(trainer, rows: list[dict]) -> float:
    """The student's greedy score on the validation rows, with the task's metric."""
    from kdlib import evaluate as ev

    cfg = trainer.cfg
    return ev.evaluate(trainer.acc.unwrap_model(trainer.student), trainer.tokenizer, rows,
                       metric=task_metric(cfg, "train"), max_new_tokens=cfg.max_new_tokens)["score"]


def _keep_selected(trainer, rows: list[dict]) -> None:
    """After training: score the last step's weights on validation if its step was not an evaluation step,
    then load the best-scoring weights (which the run saves and scores); record the chosen step."""
    metrics = trainer.state.metrics
    if "validation_score" not in metrics[-1]:
        _validate_candidate(trainer, rows)
    best_step = _best_step(metrics)
    if best_step != trainer.state.step:
        saved = torch.load(trainer.run_dir / SELECTED, map_location="cpu", weights_only=True)
        if saved["step"] != best_step:
            raise RuntimeError(f"{trainer.run_dir / SELECTED} holds step {saved['step']}, but validation chose step "
                               f"{best_step}; delete the run folder and train it again")
        trainer.acc.unwrap_model(trainer.student).load_state_dict(saved["weights"])
    for m in metrics:
        if "validation_score" in m:
            m["selected"] = m["step"] == best_step


def validation_rows(cfg: RunConfig, tok=None) -> list[dict]:
    """Held-out rows for model selection and DistiLLM's schedule: an embedded task's training rows past
    the n_train the student sees (the pool holds 40 000), or a paper dataset's validation split (else
    the end of its training split, past n_train)."""
    n = min(cfg.n_eval, 200)
    if cfg.profile == "paper":
        from kdlib import paper

        if "validation" in paper.DATASETS[cfg.task].splits:
            return load_rows(cfg, "validation", n, tok)
    rows = load_rows(cfg, "train", None, tok)
    held = rows[cfg.n_train:cfg.n_train + n]
    if not held:
        raise ValueError(f"{cfg.task}: no training rows past n_train={cfg.n_train} to validate on")
    return held


def needs_teacher_run(cfg: RunConfig) -> bool:
    """True if `cfg` uses a teacher that a recipe trains first (an embedded size, or teacher_steps > 0)."""
    return _needs_teacher(cfg) and (cfg.teacher in EMBEDDED_SIZES or cfg.teacher_steps > 0)


def _needs_teacher(cfg: RunConfig) -> bool:
    from kdlib import divergences

    r = cfg.resolved
    return (divergences.needs_teacher(r["divergence"]) or r["source"] == "seqkd"
            or r["sampler"] not in (None, "student"))


def _initial_student(cfg: RunConfig, tok, progress: bool):
    if cfg.student_init == "sft":
        init = sft_init_recipe(cfg)
        run(init, progress=progress)
        return load_model(str(run_dir(init) / "model"))
    if cfg.student_init == "scratch":
        return build_llama(EMBEDDED_SIZES[cfg.student], tok, seed=cfg.seed)
    return load_model(_named_path(cfg.student))  # 'pretrained'



def with_lora(model, rank: int):
    """LoRA adapters (peft) on every linear layer; only they train."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))


def _named_path(name: str) -> str:
    """A pretrained name of the embedded profile (smollm2, …), a local directory, or a hub name (from
    a local copy under $KDLIB_MODELS when there is one; see kdlib.paper.model_path)."""
    from kdlib.paper import model_path

    return str(workload.PRETRAINED[name]()) if name in workload.PRETRAINED else model_path(name)


def teacher_path(cfg: RunConfig, progress: bool = True, teacher_cfg: RunConfig | None = None) -> str:
    """Where the teacher's weights are: an embedded size is trained by its recipe (cached)."""
    if cfg.teacher in EMBEDDED_SIZES or cfg.teacher_steps > 0:
        tcfg = teacher_cfg or teacher_config(cfg)
        run(tcfg, progress=progress)
        return str(run_dir(tcfg) / "model")
    return _named_path(cfg.teacher)


def resolve_tokenizer(cfg: RunConfig):
    """The pair's tokenizer; teacher and student must share it (and its chat template)."""
    from kdlib.models import check_same_tokenizer, load_tokenizer

    named = [n for n in (cfg.teacher, cfg.student) if n not in EMBEDDED_SIZES]
    if not named:
        return workload.embedded_tokenizer(cfg.task)
    if len(named) == 1:
        raise ValueError(f"teacher={cfg.teacher!r} and student={cfg.student!r}: an embedded size "
                         "cannot be paired with a pretrained model (their tokenizers differ)")
    if cfg.teacher == cfg.student:  # a named model's own fine-tuning run
        return load_tokenizer(_named_path(cfg.student))
    toks = [load_tokenizer(_named_path(n)) for n in named]
    if cfg.chat_template_from == "student":
        toks[0].chat_template = toks[1].chat_template
    elif cfg.chat_template_from == "teacher":
        toks[1].chat_template = toks[0].chat_template
    check_same_tokenizer(*toks)
    return toks[1]


def seqkd_rows(cfg: RunConfig, teacher, tok, rows: list[dict]) -> list[dict]:
    """The training rows with the teacher's greedy responses (SeqKD data), generated once and cached."""
    from kdlib.evaluate import greedy_decode

    def build(dd: Path):
        outs = greedy_decode(teacher, tok, [r["prompt"] for r in rows], max_new_tokens=cfg.max_new_tokens)
        (dd / "rows.jsonl").write_text("".join(
            json.dumps({**r, "teacher_response": o or "."}) + "\n" for r, o in zip(rows, outs)))

    teacher_key = (teacher_config(cfg).hash() if cfg.teacher in EMBEDDED_SIZES or cfg.teacher_steps
                   else cfg.teacher)
    key = {"teacher": teacher_key, "task": cfg.task, "n": len(rows),
           "max_new_tokens": cfg.max_new_tokens}
    if cfg.profile == "paper":  # prompts depend on the pair's chat template and on where the data came from
        key.update(profile="paper", student=cfg.student, data_dir=cfg.data_dir,
                   chat_template_from=cfg.chat_template_from)
    d = workload.cached_dir("seqkd", key, build)
    return [json.loads(line) for line in (d / "rows.jsonl").read_text().splitlines()]


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
            "pid": os.getpid()}  # which process trained it: a notebook's Stopwatch counts only its own runs


def run_grid(configs: list[RunConfig], *, progress: bool = True) -> list[dict]:
    """Run (or read from cache) every config; one result row each."""
    from tqdm.auto import tqdm

    return [run(c, progress=progress) for c in tqdm(configs, desc="runs", disable=not progress)]


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def trained_model(cfg: RunConfig, progress: bool = True):
    """The student a config trains (running it if not cached) and its tokenizer."""
    run(cfg, progress=progress)
    return load_run(cfg)[:2]


def load_run(cfg: RunConfig) -> tuple:
    """A finished run's (model, tokenizer, result), without training: FileNotFoundError naming the run's
    folder and the command that trains it when the run is not in the cache."""
    d = run_dir(cfg)
    if not _finished(d) or not (d / "model").is_dir():
        raise FileNotFoundError(f"no finished run {cfg.hash()} ({cfg.method} {cfg.task} seed {cfg.seed}) in {d}; "
                                "train it with kdlib.run(cfg) or `python -m kdlib train ...`")
    return load_model(str(d / "model")), resolve_tokenizer(cfg), json.loads((d / "result.json").read_text())


def check_export_folder(output_dir) -> Path:
    """`output_dir` as a path, if it is new or empty (FileExistsError otherwise): callable before training."""
    out = Path(output_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder {out} is not empty; choose a new one")
    return out


def export_run(cfg: RunConfig, output_dir) -> Path:
    """Copy a finished run out of the cache: `save_pretrained` model and tokenizer, and result.json, in
    `output_dir`, loadable with `AutoModelForCausalLM.from_pretrained(output_dir)`. The folder must be
    empty or new, so an export never mixes two runs."""
    out = check_export_folder(output_dir)
    model, tok, result = load_run(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _write_json(out / "result.json", result)
    return out
