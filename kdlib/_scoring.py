"""Scoring a model on a run's held-out splits: the final evaluation (greedy, and sampled at temperature 1 on the
first split), scoring a model that kdlib did not train, the learning curve during training, and the checkpoint
selection on validation rows (`select_checkpoint="validation"`)."""
from __future__ import annotations

from pathlib import Path

import torch

from kdlib import _evaluate as ev
from kdlib import _paper as paper
from kdlib import _workload as workload
from kdlib._config import RunConfig
from kdlib._io import atomic_path
from kdlib._models import keep_freed_memory, load_model, pick_device_dtype
from kdlib._rows import load_rows, resolve_tokenizer, split_label, task_metric
from kdlib._runcache import write_json

# The first evaluation split is scored twice: greedy, and one sample per row at temperature 1 (the protocol of the
# MiniLLM / DistiLLM tables that SWITCH follows; GKD reports both). The sampled score's column is
# "<split>_t1"; its samples are drawn from a generator seeded with the run's seed plus this offset, so two
# methods at one seed are scored on the same items with the same stream of random numbers.
SAMPLED_SUFFIX, SAMPLE_SEED_OFFSET = "_t1", 7919


def score_splits(cfg: RunConfig, model, tok, out_dir: Path | None, progress: bool) -> dict:
    """Decode and score `model` on each of `cfg.eval_splits` (n_eval rows each) greedily (`label`), and the
    first split also sampled at temperature 1 (`label` + "_t1"): {label: result of kdlib._evaluate.evaluate};
    per-example predictions to out_dir/predictions-<label>.jsonl when given."""
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
            scores[label]["n"] = len(rows)  # n_eval is "at most": a split may hold fewer
    return scores


def quiet_libraries() -> None:
    """Our own tqdm bars say what is happening; the libraries' per-file bars only add noise."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def score_model(cfg: RunConfig, model_path: str, *, out_dir=None, progress: bool = True) -> dict:
    """Score an existing model (a save_pretrained directory or a hub name) on `cfg`'s task and
    evaluation splits, as a run's final evaluation does: {split: score}. Predictions and the scores go to
    `out_dir` (default: <model_path>/eval when it is a directory)."""
    if cfg.profile == "paper":
        paper.check_config(cfg)
    quiet_libraries()
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
        write_json(out / "scores.json", {"model": str(model_path), "task": cfg.task, "n_eval": cfg.n_eval,
                                          "scores": scores})
    return scores


def eval_during_training(trainer, rows, validation_rows=None) -> None:
    """Score the student every `eval_every` steps on the first evaluation set (the learning curve,
    reported, never trained on). DistiLLM's adaptive schedule is fed the cross-entropy of held-out
    *validation* rows (`validation_rows`; the authors' validation loss), never the test set."""
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
    cfg = trainer.cfg
    return ev.evaluate(trainer.acc.unwrap_model(trainer.student), trainer.tokenizer, rows,
                       metric=task_metric(cfg, "train"), max_new_tokens=cfg.max_new_tokens)["score"]


def keep_selected(trainer, rows: list[dict]) -> None:
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
