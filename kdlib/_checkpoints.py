"""Checkpoints: atomic writes, keep the last N, exact resume.

A checkpoint holds everything the next step depends on: student weights, optimizer, scheduler, the
step and the metrics so far, and per process the source's generators, data position and replay buffer
and the global RNGs. It is written to a temporary file and renamed, so an interrupted save never leaves a file a
later run would trust.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path

import torch

from kdlib._io import atomic_path, writing  # noqa: F401 - writing: part of this module's API
from kdlib._runcache import run_hash

_NAME = re.compile(r"step-(\d+)\.pt$")


def checkpoint_dir(trainer) -> Path:
    return trainer.run_dir / "checkpoints"


def list_checkpoints(directory: Path) -> list[Path]:
    found = [p for p in Path(directory).glob("step-*.pt") if _NAME.search(p.name)]
    return sorted(found, key=lambda p: int(_NAME.search(p.name).group(1)))


def _process_state(trainer) -> dict:
    """What differs between processes: the source's sampling generator (and, for DistiLLM, its replay
    buffer) and the global RNGs."""
    return {"source": trainer.source.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}


def save(trainer) -> Path | None:
    from accelerate.utils import gather_object

    acc = trainer.acc
    acc.wait_for_everyone()
    processes = gather_object([_process_state(trainer)])  # every process's own state, in rank order
    # accelerate gathers the full weights (under FSDP each rank holds a shard): a collective, every rank calls it
    student_state = acc.get_state_dict(trainer.student)
    optimizer_state = _optimizer_state(trainer)  # the same under FSDP: gathered from every rank's shard
    if not acc.is_main_process:
        return None
    d = checkpoint_dir(trainer)
    d.mkdir(parents=True, exist_ok=True)
    state = {
        "step": trainer.state.step,
        "metrics": trainer.state.metrics,
        "forwards": vars(trainer.state.forwards),
        "seconds": trainer.state.seconds,
        "student": student_state,
        "optimizer": optimizer_state,
        "scheduler": trainer.sched.state_dict(),
        "processes": processes,
        "config": trainer.cfg.to_dict(),
        "config_hash": run_hash(trainer.cfg),
    }
    path = d / f"step-{trainer.state.step:06d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(d)[: -trainer.cfg.keep_checkpoints]:
        old.unlink()
    return path


def _optimizer_state(trainer) -> dict:
    """The whole optimizer state keyed by parameter names (torch.distributed.checkpoint): under FSDP each rank
    holds a shard and this gathers them (a collective: every rank calls it); otherwise the plain state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(trainer.student, trainer.opt,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _load_optimizer(trainer, saved: dict) -> None:
    """Restore what `_optimizer_state` wrote (each rank takes its shard under FSDP); a checkpoint from before
    2026-12-03 holds `optimizer.state_dict()` keyed by parameter index, loaded as it is."""
    groups = saved.get("param_groups") or [{}]
    if all(isinstance(i, int) for i in groups[0].get("params", [])):
        trainer.opt.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(trainer.student, trainer.opt, optim_state_dict=saved,
                             options=StateDictOptions(full_state_dict=True))


def latest(trainer) -> Path | None:
    found = list_checkpoints(checkpoint_dir(trainer))
    return found[-1] if found else None


def resume(trainer) -> Path | None:
    """Restore `trainer` from its newest checkpoint that can be read, and return that file (None: no
    checkpoint, a fresh start). A damaged one (truncated by a full disk or a kill during a copy) is skipped
    with a warning naming it and why, and renamed `*.unreadable` by the main process; the next older one is
    tried: keeping `keep_checkpoints` > 1 is what makes this fallback possible. A checkpoint of another
    config, or any other error, is raised, never skipped."""
    import pickle
    import zipfile

    damaged = (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, RuntimeError, OSError)
    for path in reversed(list_checkpoints(checkpoint_dir(trainer))):
        try:
            state = _read(path)
        except (FileNotFoundError, PermissionError):
            raise
        except damaged as e:  # a truncated file: torch raises RuntimeError, OSError (EINVAL) or EOFError
            warnings.warn(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); resuming from "
                          "the previous checkpoint if there is one", stacklevel=2)
            if trainer.acc.is_main_process:
                try:
                    os.replace(path, path.with_name(path.name + ".unreadable"))
                except FileNotFoundError:
                    pass
            continue
        _restore(trainer, path, state)
        return path
    return None


def _read(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = {"step", "student", "optimizer", "scheduler"} - set(state)
    if missing:
        raise KeyError(f"no {sorted(missing)} in it")
    return state


def load(trainer, path: Path) -> None:
    """Restore `trainer` to the exact state saved in `path`."""
    _restore(trainer, path, _read(path))


def _restore(trainer, path: Path, state: dict) -> None:
    saved, current = state["config"], trainer.cfg.to_dict()
    # the run's identity is its hash: bookkeeping fields (checkpoint_every, keep_checkpoints, report_to,
    # eval_every outside DistiLLM) may change between the interrupted run and its resumption
    same = state["config_hash"] == run_hash(trainer.cfg) if "config_hash" in state else saved == current
    if not same:
        diff = sorted(k for k in saved if saved[k] != current.get(k))
        raise ValueError(f"checkpoint {path} was written by a different config (fields {diff})")
    trainer.acc.unwrap_model(trainer.student).load_state_dict(state["student"])
    _load_optimizer(trainer, state["optimizer"])
    trainer.sched.load_state_dict(state["scheduler"])
    processes = state.get("processes") or [{"source": state["source"], "rng": state["rng"]}]  # older files
    rank, world = trainer.acc.process_index, trainer.acc.num_processes
    if len(processes) != world:
        warnings.warn(f"checkpoint {path} was written by {len(processes)} process(es), resumed by {world}: "
                      "the row order continues exactly, each process's sampling stream restarts from "
                      "rank 0's", stacklevel=2)
    mine = processes[rank] if len(processes) == world else processes[0]
    trainer.source.load_state_dict(mine["source"])
    torch.set_rng_state(mine["rng"]["torch"])
    random.setstate(mine["rng"]["python"])
    if mine["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["rng"]["cuda"])
    trainer.state.step = state["step"]
    trainer.state.metrics = state["metrics"]
    trainer.state.seconds = state["seconds"]
    for k, v in state["forwards"].items():
        setattr(trainer.state.forwards, k, v)
