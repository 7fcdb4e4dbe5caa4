"""The names a config may use and what each takes — divergences, samplers, embedded model sizes — with their
validation in plain Python: the config system checks a run (and `--help` lists the fields) without
importing torch. The math lives in `kdlib._divergences`, `kdlib._samplers` and `kdlib._models`."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

# ---- embedded tasks and pretrained models: the names (kdlib._workload builds and loads them) -----------------
TASK_METRIC = {"arith": "accuracy", "summ": "rougeL"}
TASK_SPLITS = {"arith": ("train", "test", "plus"), "summ": ("train", "test")}
PRETRAINED_NAMES = ("smollm2", "smollm2-pruned")  # named models the embedded profile uses without training

# ---- divergences: name -> its parameters and their defaults (besides temperature and chunk_size) ----------
DIVERGENCE_PARAMS = {"fkl": {}, "rkl": {}, "jsd": {"beta": 0.5}, "tvd": {}, "sfkl": {"alpha": 0.1},
                     "srkl": {"alpha": 0.1}, "ce": {}}
USES_TEACHER = {name: name != "ce" for name in DIVERGENCE_PARAMS}  # ce compares with target ids


# --------------------------------------------------------------------------------------------------------
# Validation: plain Python, no tensors, so the config system can call it at construction.


def _check_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_param(name: str, value) -> None:
    if name == "chunk_size":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"chunk_size must be None or a positive int (positions per chunk), got {value!r}")
        return
    x = _check_number(name, value)
    if name == "temperature" and x <= 0:
        raise ValueError(f"temperature must be > 0 (it divides the logits), got {value!r}")
    if name == "beta" and not 0 < x < 1:
        raise ValueError(
            f"beta must be in the open interval (0, 1), got {value!r}: JSD(β) tends to 0 at both ends; "
            "use forward_kl ('fkl') for the β → 0 direction and reverse_kl ('rkl') for β → 1"
        )
    if name == "alpha" and not 0 <= x < 1:
        raise ValueError(f"alpha must be in [0, 1), got {value!r} (alpha = 1 makes the skew divergence 0)")


def _known(name: str) -> str:
    if name not in DIVERGENCE_PARAMS:
        raise ValueError(f"unknown divergence {name!r}; known: {sorted(DIVERGENCE_PARAMS)}")
    return name


def validate_params(name: str, **params) -> None:
    """Raise ValueError for an unknown divergence name, an unknown parameter or an out-of-range value."""
    allowed = {"temperature", "chunk_size", *DIVERGENCE_PARAMS[_known(name)]}
    for key, value in params.items():
        if key not in allowed:
            raise ValueError(f"divergence {name!r} takes no parameter {key!r}; allowed: {sorted(allowed)}")
        _check_param(key, value)


def needs_teacher(name: str) -> bool:
    """True if divergence `name` compares against teacher logits, False if against target ids ('ce')."""
    return USES_TEACHER[_known(name)]


# ---- samplers ------------------------------------------------------------------------------------------
SCHEDULES = ("exp", "linear", "constant")
DISTANCES = ("fkl", "rkl", "jsd", "tvd")

SAMPLER_DEFAULTS: dict[str, dict] = {
    "student": {},
    "teacher": {},
    # K = 25 is the SKD reference setup (Xu et al. 2024), of a 256k vocabulary. At the embedded vocabulary (197
    # words) K = 25 let the teacher replace 1.1 % (summ) and 1.5 % (arith) of the tokens at the start of
    # distillation: SKD was on-policy in all but name. CHOSEN: K = 2, which replaces 16 % (summ) and 9 %
    # (arith) at the start (measured on the warmed-up student-s, 128 training prompts, temperature 1; K = 1
    # gave 26 % / 13 %). The SKD paper's own replacement rate is not stated in the text we could read: the
    # student proposes most tokens and the teacher corrects a minority, as here. docs/methods.md.
    # block (draft-and-verify, docs/methods.md §3) MEASURED with benchmarks/bench_samplers.py --pair arith|summ
    # (warmed-up student-s and the teacher, batch 32, 3-5 prompt batches, three runs): block 4 takes 0.80-0.90x
    # the time of block 1 (median over batches; arith 0.80, 0.81, 0.90; summ 0.84, 0.89, 0.89); blocks 2, 3,
    # 5, 6 and 8 saved less or less reliably.
    "skd": {"top_k": 2, "block": 4},
    # tau0 and decay are NOT given in the SWITCH paper text; its tuned setting gave about 53 % teacher tokens.
    # CHOSEN for about half teacher tokens on the embedded workload: at the start of distillation (warmed-up
    # student-s, 128 training prompts, temperature 1) tau0 0.01 / decay 0.1 hands the teacher 64 % of the
    # summ tokens and 49 % of the arith tokens; the share falls as the student improves, and the notebooks
    # report its mean over training. (tau0 0.05 / decay 0.05, the earlier default, gave 42 % / 27 % at the
    # start and 27 % averaged over training.) JSD(0.5) lies in [0, ln 2]; with decay 0.1 the threshold halves
    # about every 7 tokens. The paper's best schedule is "exp". block 1 (lockstep), MEASURED as skd's: with
    # 15 % (arith) and 64 % (summ) teacher tokens drafting saved nothing at any block tried, 0.99-1.06x
    # (arith) and 1.15-1.17x (summ) the time of block 1 at block 2, 1.07-1.67x at block 4.
    "switch": {"tau0": 0.01, "decay": 0.1, "schedule": "exp", "block": 1},
    # k and window are NOT given in the AdaSwitch paper text: CHOSEN, swept in the AdaSwitch notebook. No
    # switch can happen before token `window`, and the first tokens of an embedded response (names, "+",
    # "=") have a near-zero divergence, so a small window makes the rule fire at once: window 4, k 2 switched
    # 90 % of the rollouts at token 4-8 on both tasks and the teacher wrote 73-75 % of the tokens. Window 8,
    # k 5 switches 76 % of arith and 70 % of summ rollouts at the start of distillation, summ's switches
    # spread from token 8 to 17 (quartiles), and the teacher writes 58 % / 50 %. The paper reports > 95 %
    # switches on GSM and fewer on summarisation. The paper's distance is KL(p‖q) ("fkl"); it reports
    # robustness to the choice. block 1 (lockstep), MEASURED as skd's: 1.00-1.18x the time of block 1 at
    # blocks 2-6, since a switched row gets one teacher token per forward whatever the block.
    "adaswitch": {"k": 5.0, "window": 8, "distance": "fkl", "block": 1},
}

def validate_sampler_params(name: str, **params) -> None:
    """Raise ValueError naming the bad sampler name, parameter or value. Cheap: no models needed."""
    if name not in SAMPLER_DEFAULTS:
        raise ValueError(f"sampler {name!r} is unknown; choose one of {sorted(SAMPLER_DEFAULTS)}")
    allowed = SAMPLER_DEFAULTS[name]
    for key in params:
        if key not in allowed:
            raise ValueError(f"sampler {name!r} has no parameter {key!r}; its parameters are "
                             f"{sorted(allowed) or 'none'}")
    p = {**allowed, **params}
    if "block" in allowed:
        _check_int(name, "block", p["block"], low=1)
    if name == "skd":
        _check_int(name, "top_k", p["top_k"], low=0)
    elif name == "switch":
        _check_sampler_number(name, "tau0", p["tau0"], low=0.0)
        _check_sampler_number(name, "decay", p["decay"], low=0.0)
        _check_choice(name, "schedule", p["schedule"], SCHEDULES)
    elif name == "adaswitch":
        _check_sampler_number(name, "k", p["k"], low=0.0)
        _check_int(name, "window", p["window"], low=1)
        _check_choice(name, "distance", p["distance"], DISTANCES)


def _check_sampler_number(name, key, value, low):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low:
        raise ValueError(f"sampler {name!r}: {key}={value!r} must be a finite number >= {low}")


def _check_int(name, key, value, low):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"sampler {name!r}: {key}={value!r} must be an int >= {low}")


def _check_choice(name, key, value, choices):
    if value not in choices:
        raise ValueError(f"sampler {name!r}: {key}={value!r} is unknown; choose one of {list(choices)}")


# ---- embedded model sizes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSize:
    """A Llama shape: layers x hidden width, attention heads, MLP width."""

    layers: int
    hidden: int
    heads: int
    intermediate: int


# Embedded sizes; parameter counts for the embedded vocabulary are printed by the workload report.
EMBEDDED_SIZES = {
    "teacher": ModelSize(layers=4, hidden=256, heads=4, intermediate=512),
    "student-m": ModelSize(layers=2, hidden=128, heads=4, intermediate=256),
    "student-s": ModelSize(layers=2, hidden=64, heads=2, intermediate=128),
    "tiny": ModelSize(layers=1, hidden=32, heads=2, intermediate=64),  # tests and smoke runs
}


EMBEDDED_CONTEXT = 512  # max_position_embeddings of the embedded sizes (kdlib._models.build_llama)

_KDLIB_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def stacklevel_outside_kdlib() -> int:
    """`warnings.warn`'s stacklevel, computed in the function that warns: the first frame outside kdlib, so a
    warning names the user's line (a notebook cell, a script), not kdlib's."""
    frame, level = sys._getframe(2), 2  # level 1 = the function that calls warnings.warn
    while frame is not None and (frame.f_code.co_filename.startswith(_KDLIB_DIR)
                                 or frame.f_code.co_filename == "<string>" and frame.f_code.co_name == "__init__"
                                 or frame.f_code.co_filename.endswith(f"{os.sep}dataclasses.py")):
        # (a dataclass's generated __init__, and dataclasses.replace, call RunConfig's checks)
        frame, level = frame.f_back, level + 1
    return level
