"""docs/api.md runs: its Python blocks, in order, as one script; and `kdlib` exports what the page lists."""
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


def test_the_public_names_are_exported_and_nothing_else_is_promised():
    listed = set(re.findall(r"`([A-Za-z_]+)`", DOC.read_text().split("## Your pair")[0]))
    public = set(kdlib.__all__) - {"__version__"}
    assert public <= listed, f"exported but not documented: {sorted(public - listed)}"
    for name in public:
        assert getattr(kdlib, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        kdlib.Trainer  # internal: not part of the API


def test_import_kdlib_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, kdlib; kdlib.RunConfig; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    # a paper-profile config and its dataset check (what the CLI runs before reporting a config error) too
    code = ("import sys; from kdlib import _paper as paper; from kdlib._config import RunConfig\n"
            "cfg = RunConfig(profile='paper', task='gsm8k', teacher='Qwen/Qwen2.5-7B-Instruct',\n"
            "                student='Qwen/Qwen2.5-0.5B-Instruct', student_init='pretrained')\n"
            "paper.check_config(cfg); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
