"""The run cache: where a run's folder is, whether it is finished, and the finished runs kdlib ships.

A run's folder is ``<cache>/runs/<run_hash(cfg)>``. The hash covers every field that changes the result
(`RunConfig.key_fields`) and the hashes of the runs it starts from (its teacher's training run, its student's
warm-up; `kdlib._recipes`), so that a changed recipe invalidates every run built on it. A folder holds a
finished run once its result.json is written (last, atomically).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from kdlib import _paper as paper
from kdlib import _recipes as recipes
from kdlib import _workload as workload
from kdlib._config import RunConfig
from kdlib._env import env_flag
from kdlib._io import atomic_write_text
from kdlib._names import EMBEDDED_SIZES

log = logging.getLogger(__name__)


def run_hash(cfg: RunConfig) -> str:
    """Stable short hash of everything that changes `cfg`'s result, upstream runs included (the cache key)."""
    d = cfg.key_fields()
    if recipes.needs_teacher_run(cfg):
        d["teacher_run"] = run_hash(recipes.teacher_config(cfg))
    if cfg.student_init == "sft":
        d["warmup_run"] = run_hash(recipes.sft_init_recipe(cfg))
    if cfg.profile == "paper":  # local copies under $KDLIB_MODELS are other weights than the hub's
        local = {n: paper.model_path(n) for n in (cfg.teacher, cfg.student) if paper.model_path(n) != n}
        if local:
            d["model_paths"] = local
    folders = {role: model_folder_digest(name) for role, name in (("teacher", cfg.teacher), ("student", cfg.student))
               if name not in EMBEDDED_SIZES and Path(name).expanduser().is_dir()
               and (cfg.profile == "embedded" or name.startswith(("/", "./", "../", "~")))}  # (paper: hub ids)
    if folders:  # a local model folder of your own: overwrite it and the runs from it train again
        d["model_folders"] = folders
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def model_folder_digest(folder: str) -> str:
    """A local model folder's fingerprint: config.json's content and every file's name, size and modification
    time. A model saved again in place (retrained, even partly) changes it; reading every byte of a 7B model's
    weights would take a minute per config. (A copy elsewhere is another path, hence another run anyway.)"""
    path = Path(folder).expanduser().resolve()
    h = hashlib.sha256()
    for p in sorted(path.iterdir()):  # the folder's own files (not, e.g., an eval/ folder scoring wrote)
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    if (path / "config.json").is_file():
        h.update((path / "config.json").read_bytes())
    return h.hexdigest()[:12]


def run_dir(cfg: RunConfig) -> Path:
    """The cache folder of `cfg`'s run (model/, result.json, predictions-<split>.jsonl, metrics.csv, ...)."""
    return folder_of(run_hash(cfg))


def folder_of(h: str) -> Path:
    """The cache folder of the run whose hash is `h` (a result's "hash")."""
    return workload.cache_root() / "runs" / h


# Finished runs that come with kdlib, by config hash (model/ and result.json, as in the cache): the
# embedded arith and summ teachers, so that a fresh clone's quickstart and notebooks 01-04 do not start
# with their 1 200 and 1 000 training steps (see kdlib/shipped/README.md). KDLIB_SHIPPED=0 ignores them
# (trains everything).
SHIPPED = Path(__file__).resolve().parent / "shipped"


def shipped_run(cfg: RunConfig) -> Path | None:
    """The shipped copy of `cfg`'s finished run, or None."""
    d = SHIPPED / run_hash(cfg)
    if not env_flag("KDLIB_SHIPPED") or not (d / "result.json").exists() \
            or not (d / "model" / "model.safetensors").exists():
        return None
    return d


def finished(d: Path, *, move_aside: bool = False) -> bool:
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


def cached_result(cfg: RunConfig, d: Path) -> dict:
    """The cached result of `cfg`. eval_every is not part of the hash (the curve does not change the trained
    model, so notebooks share runs), so a run cached by a caller with another eval_every may lack points of
    the learning curve `cfg` asks for: say so, naming the run, rather than plot a curve with points missing."""
    result = json.loads((d / "result.json").read_text())  # finished() has read it once already
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
            # what teacher_config asks for
            current = run_hash(recipes.teacher_recipe(result["task"], result["student"]))
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
        raise FileNotFoundError(f"{d}: no finished run of {cfg.method} {cfg.task} ({run_hash(cfg)}) to ship; "
                                f"run it first (kdlib.run)")
    if not (d / "model" / "model.safetensors").exists():
        raise FileNotFoundError(f"{d / 'model'}: no model.safetensors to ship")
    out = SHIPPED / run_hash(cfg)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(d / "model", out / "model")
    result = json.loads((d / "result.json").read_text())
    result.pop("shipped", None)
    write_json(out / "result.json", result)
    return out


def install_shipped(shipped: Path, d: Path) -> dict:
    """Copy a shipped run into the cache: the model first, result.json (the mark of a finished run) last."""
    log.info("%s: using the run shipped with kdlib (%s); KDLIB_SHIPPED=0 trains it instead", d.name, shipped)
    d.mkdir(parents=True, exist_ok=True)
    replace_model_dir(d, lambda tmp: shutil.copytree(shipped / "model", tmp))
    result = {**json.loads((shipped / "result.json").read_text()), "shipped": True}
    write_json(d / "result.json", result)
    return result


def replace_model_dir(d: Path, write) -> None:
    """Write `d`/model atomically: `write(tmp)` fills `d`/model.tmp, which then takes model's place, so an
    interruption never leaves a half-written model under the name later runs load."""
    shutil.rmtree(d / "model.tmp", ignore_errors=True)
    write(d / "model.tmp")
    shutil.rmtree(d / "model", ignore_errors=True)
    (d / "model.tmp").replace(d / "model")


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


# ---- accounting: which runs the cache holds, who trained them, how long they took --------------------------


def finished_runs() -> set:
    """Hashes of the runs whose result is in the cache (`.cache/kdlib/runs/<hash>/result.json`)."""
    return {p.parent.name for p in folder_of("").glob("*/result.json")}


def result_of(h: str) -> dict:
    """The result.json of the cached run `h`."""
    return json.loads((folder_of(h) / "result.json").read_text())


def shipped_among(hashes) -> set:
    """Those of `hashes` whose cached result was copied from kdlib's shipped runs, not trained here."""
    return {h for h in hashes if result_of(h).get("shipped")}


def run_seconds(hashes) -> float:
    """The sum of these cached runs' own wall times (`wall_seconds` in result.json: training, evaluation and
    saving), whichever invocation trained them; a run without the field counts 0."""
    return sum(float(result_of(h).get("wall_seconds") or 0) for h in hashes)


RUN_KIND = ("method", "task", "student", "steps")


def run_seconds_by_kind(hashes) -> list[tuple[tuple, int, float]]:
    """Where these cached runs' own wall time went: (method, task, student, steps), the number of runs of that
    kind and their summed `wall_seconds`, the most expensive kind first (a field a result lacks reads "?"; a
    run trained from scratch, an SFT warm-up or a teacher, reads "sft from scratch"). What a cut in a cold
    run's compute should aim at."""
    kinds: dict[tuple, list] = {}
    for h in hashes:
        r = result_of(h)
        kind = tuple(r.get(k, "?") for k in RUN_KIND)
        if r.get("student_init") == "scratch":
            kind = (f"{kind[0]} from scratch",) + kind[1:]
        row = kinds.setdefault(kind, [0, 0.0])
        row[0] += 1
        row[1] += float(r.get("wall_seconds") or 0)
    return sorted(((k, n, s) for k, (n, s) in kinds.items()), key=lambda x: (-x[2], str(x[0])))
