"""Measurements beyond the runs themselves, which load, sample or train models: the workload table, the
mechanisms the papers rely on, quality against diversity, the reference scores a plot draws, where a switching
sampler hands over. Each takes run configs (the notebooks build them with `kdlib.notebook.grid` and
`kdlib.notebook.protocol`) and returns a data frame or a dict; the notebook layer only formats and plots."""
from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd
import torch

from kdlib import _mechanisms as mechanisms
from kdlib import _samplers as samplers
from kdlib import _workload as workload
from kdlib._config import RunConfig
from kdlib._data import encode_prompts
from kdlib._evaluate import quality_and_diversity
from kdlib._experiments import run, run_grid, trained_model
from kdlib._models import load_model
from kdlib._names import EMBEDDED_SIZES
from kdlib._recipes import sft_init_recipe, teacher_config
from kdlib._rows import load_rows, named_path, task_metric
from kdlib._runcache import run_dir
from kdlib._scoring import score_model


def workload_report(configs_by_task: dict[str, list[RunConfig]]) -> pd.DataFrame:
    """The embedded workload table: per task, the teacher (`kdlib._recipes.teacher_recipe`) and, per config,
    the student warmed up by SFT on the protocol's labelled rows (`sft_init_recipe`, the start every
    distillation method shares), with parameters, training minutes, steps, rows and a score per held-out set
    (greedy, and "_t1": sampled at temperature 1). Trains what is not cached yet."""
    parts = []
    for task, configs in configs_by_task.items():
        sft = [sft_init_recipe(c) for c in configs]
        report = [run(teacher_config(configs[0]))] + run_grid(sft)
        roles = ["teacher"] + ["student (SFT warm-up)"] * len(sft)
        parts.append(workload_frame(report, roles).assign(task=task))
    table = pd.concat(parts, ignore_index=True)
    return table[["task"] + [c for c in table if c != "task"]]


def mechanisms_report(config_by_task: dict[str, RunConfig], *, n_rows: int = 200) -> pd.DataFrame:
    """What the papers' methods rely on, per task (`kdlib._mechanisms`), on `n_rows` test rows: the teacher's
    entropy and top-1 agreement with the references, the warmed-up student's exposure gap, and whether the
    teacher recovers after the student's first slip. Reads the config's cached teacher and warm-up."""
    out = []
    for task, cfg in config_by_task.items():
        student_model, tok = trained_model(sft_init_recipe(cfg), progress=False)
        teacher = load_model(str(run_dir(teacher_config(cfg)) / "model"))
        rows = load_rows(cfg, "test", n_rows)
        kw = dict(max_new_tokens=cfg.max_new_tokens)
        own = mechanisms.own_responses(student_model, tok, rows, **kw)  # decoded once for both measurements
        out.append({"task": task, **mechanisms.teacher_on_references(teacher, tok, rows, **kw),
                    **mechanisms.exposure_gap(student_model, teacher, tok, rows, own=own, **kw),
                    **{f"recovery_{k}": v for k, v in mechanisms.teacher_recovery(
                        student_model, teacher, tok, rows, metric=task_metric(cfg), own=own, **kw).items()}})
    return pd.DataFrame(out)


def quality_diversity_frame(configs: list[RunConfig], temperatures: Sequence[float], *, n_rows: int,
                            n_samples: int = 4) -> pd.DataFrame:
    """GKD Fig. 4's points: for each trained run (trained first if not cached) and temperature, the mean
    score of `n_samples` samples per test prompt (first `n_rows` prompts) and their mean self-BLEU; one row
    per (run, temperature) with the run's divergence label and seed."""
    points = []
    for cfg in configs:
        model, tok = trained_model(cfg)
        rows = load_rows(cfg, "test", n_rows, tok)
        for t in temperatures:
            qd = quality_and_diversity(model, tok, rows, metric=task_metric(cfg), temperature=t,
                                       n_samples=n_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
            points.append({"divergence": divergence_label(cfg), "seed": cfg.seed, **qd})
    return pd.DataFrame(points)


def quality_diversity_references(configs: list[RunConfig], temperatures: Sequence[float], *, n_rows: int,
                                 n_samples: int = 4) -> pd.DataFrame:
    """The reference points of a quality-diversity plot (`quality_diversity_frame`): the teacher's and the
    warmed-up student's samples at each temperature, on the same prompts, the warm-up averaged over the
    configs' seeds; one row per (model, temperature) with "model", "temperature", "score", "self_bleu"."""
    teacher = quality_diversity_frame([teacher_config(configs[0])], temperatures, n_rows=n_rows, n_samples=n_samples)
    warm = quality_diversity_frame([sft_init_recipe(c) for c in {c.seed: c for c in configs}.values()], temperatures,
                                   n_rows=n_rows, n_samples=n_samples)
    parts = [teacher.assign(model="teacher"), warm.assign(model="warm-up student")]
    return (pd.concat(parts).groupby(["model", "temperature"], sort=False)[["score", "self_bleu"]].mean()
            .reset_index())


def reference_scores(configs: list[RunConfig], score: str = "score") -> dict:
    """The lines a score plot needs: the teacher's score and the warmed-up student's mean over the configs'
    seeds (both read from the cache, trained if missing), on the first evaluation set."""
    warm = [run(sft_init_recipe(c), progress=False)[score] for c in {c.seed: c for c in configs}.values()]
    return {"teacher": run(teacher_config(configs[0]), progress=False)[score], "warm-up student": sum(warm) / len(warm)}


def pair_references(cfg: RunConfig) -> dict:
    """The lines a comparison of `cfg`'s pair needs, on its first evaluation split: the teacher's score and
    the starting student's (none for a student trained from scratch). Trained runs (an embedded teacher's
    recipe, a teacher's fine-tuning, the SFT warm-up) are read from the cache or trained; a model used as
    loaded is scored once and cached by model, task and evaluation settings."""
    def loaded(name: str) -> float:
        key = {"model": name, "task": (cfg.user_task.digest if cfg.user_task else cfg.task), "n_eval": cfg.n_eval,
               "splits": list(cfg.eval_splits), "max_new_tokens": cfg.max_new_tokens, "profile": cfg.profile,
               "chat_template_from": cfg.chat_template_from}
        d = workload.cached_dir("scores", key,
                                lambda dd: score_model(cfg, named_path(name), out_dir=dd, progress=False))
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


def divergence_label(cfg: RunConfig) -> str:
    """FKL, RKL, JSD(0.5), … as in GKD's figures."""
    r = cfg.resolved
    name = r["divergence"]
    if name == "jsd":
        return f"JSD({r['divergence_params'].get('beta', 0.5)})"
    return {"fkl": "FKL", "rkl": "RKL", "tvd": "TVD", "sfkl": "SKL", "srkl": "SRKL", "ce": "CE"}[name]
