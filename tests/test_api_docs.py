"""docs/api.md runs: its Python blocks, in order, as one script; and `kdlib` exports what the page lists."""
import inspect
import re
from pathlib import Path

import pytest
from conftest import cache_sharing_task_data

import kdlib

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_every_block_of_the_api_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDLIB_CACHE", str(cache_sharing_task_data(tmp_path / "cache")))
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
    rollout, result = namespace["rollout"], namespace["result"]
    assert rollout.response_mask.any() and result["resolved_sampler"] == "student"
    assert (namespace["folder"] / "config.json").exists() and (namespace["folder"] / "tokenizer.json").exists()
    assert namespace["loss"].item() > 0
    # the AdaSwitch examples switch (a window as long as the responses never could)
    assert rollout.from_teacher.any() and namespace["trainer"].kd_last_rollout.from_teacher.any()


def test_the_public_names_are_exported_and_nothing_else_is_promised():
    listed = set(re.findall(r"`([A-Za-z_]+)`", DOC.read_text().split("## Your pair")[0]))
    public = set(kdlib.__all__) - {"__version__"}
    assert public <= listed, f"exported but not documented: {sorted(public - listed)}"
    for name in public:
        assert getattr(kdlib, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        kdlib.Trainer  # internal: not part of the API


def test_a_lazy_attribute_is_imported_on_first_use_and_kept_in_the_module():
    import json
    import sys
    import types

    from kdlib._lazy import lazy_attributes

    mod = types.ModuleType("kdlib_lazy_probe")
    sys.modules[mod.__name__] = mod
    try:
        mod.__getattr__ = lazy_attributes(mod.__name__, {"dumps": "json"})
        assert "dumps" not in vars(mod) and mod.dumps is json.dumps and vars(mod)["dumps"] is json.dumps
        with pytest.raises(AttributeError, match="'kdlib_lazy_probe' has no attribute 'loads'"):
            mod.loads
    finally:
        del sys.modules[mod.__name__]


def test_import_kdlib_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, kdlib; kdlib.RunConfig, kdlib.SAMPLER_DEFAULTS; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    # a paper-profile config and its dataset check (what the CLI runs before reporting a config error) too
    code = ("import sys; from kdlib import _paper as paper; from kdlib._config import RunConfig\n"
            "cfg = RunConfig(profile='paper', task='gsm8k', teacher='Qwen/Qwen2.5-7B-Instruct',\n"
            "                student='Qwen/Qwen2.5-0.5B-Instruct', student_init='pretrained')\n"
            "paper.check_config(cfg); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _unannotated(fn) -> list[str]:
    sig = inspect.signature(fn)
    missing = [p.name for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in ("self", "cls")]
    return missing + (["return"] if sig.return_annotation is inspect.Signature.empty else [])


def test_the_unannotated_finder_sees_a_missing_hint():
    def typed(a: int, *args, **kw) -> int: ...
    def untyped(a, b: int): ...
    assert _unannotated(typed) == [] and _unannotated(untyped) == ["a", "return"]


def _public_callables(owner_name: str, owner) -> dict:
    """A public function, or a public class with its own public methods (and __init__), by dotted name."""
    if inspect.isfunction(owner):
        return {owner_name: owner}
    if not inspect.isclass(owner):
        return {}
    out = {}
    for n, f in vars(owner).items():
        f = f.__func__ if isinstance(f, (staticmethod, classmethod)) else f
        if inspect.isfunction(f) and (not n.startswith("_") or n == "__init__"):
            out[f"{owner_name}.{n}"] = f
    return out


def test_the_public_surface_has_type_hints():
    """Every public function, and every public method of a public class, of `kdlib`, of the notebooks' toolkit
    (its parts and the names it re-exports from the runs) and of the TRL integration names the types it
    takes and returns."""
    import kdlib.notebook as knb
    from kdlib.notebook import claims, figures, grids, measure, plots, tables

    callables = {}
    for name in kdlib.__all__:
        callables |= _public_callables(name, getattr(kdlib, name))
    for mod in (grids, tables, claims, figures, plots, measure):
        for n, f in vars(mod).items():
            if not n.startswith("_") and getattr(f, "__module__", None) == mod.__name__:
                callables |= _public_callables(f"{mod.__name__}.{n}", f)
    for n in knb._FROM_RUNS:
        callables |= _public_callables(f"kdlib.notebook.{n}", getattr(knb, n))
    trl = pytest.importorskip("kdlib.integrations.trl")
    callables |= _public_callables("KDLibGKDTrainer", trl.KDLibGKDTrainer)
    assert len(callables) > 60 and "KDLibGKDTrainer.compute_loss" in callables and "RunConfig.key_fields" in callables
    missing = {name: m for name, f in callables.items() if (m := _unannotated(f))}
    assert missing == {}
