"""Every method of the table in docs/methods.md §1 trains and evaluates from its config file (configs/embedded),
through the command line, on tiny models; the result names the method's source, sampler and divergence."""
import json
import os
from pathlib import Path

import pytest
from conftest import cache_sharing_task_data

from kdlib import _cli as cli
from kdlib._config import METHODS, RunConfig, load_config
from kdlib._runcache import run_hash

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs" / "embedded").glob("*.yaml"))
TINY = ["teacher=tiny", "teacher_steps=5", "student=tiny", "steps=2", "n_train=16", "n_eval=4",
        "batch_size=4", "max_new_tokens=12"]


def test_there_is_a_config_file_per_method():
    assert sorted(p.stem for p in CONFIGS) == sorted(METHODS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_file_trains_and_evaluates_from_the_command_line(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDLIB_CACHE", str(cache_sharing_task_data(tmp_path / "cache")))
    assert cli.main(["train", str(path), *TINY, "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    cfg = load_config(path, TINY)
    assert printed["method"] == path.stem and printed["hash"] == run_hash(cfg)
    result = json.loads((tmp_path / "cache" / "runs" / run_hash(cfg) / "result.json").read_text())
    source, sampler, divergence, _ = METHODS[path.stem]
    assert (result["resolved_source"], result["resolved_sampler"], result["resolved_divergence"]) == \
        (source, sampler, divergence)
    assert 0.0 <= result["score"] <= 1.0 and len(result["curve"]) == 2
    assert result["provenance"]["pid"] == os.getpid()  # trained in this process (a notebook's Stopwatch counts it)
    assert result["provenance"]["cpu_kernels"]  # the CPU kernels its numbers came from (AVX2, AVX512, ...)
    # SeqKD's teacher writes its data once, before the run (cached, shared): the run makes no teacher forward
    assert (result["teacher_forwards"] > 0) == (path.stem not in ("sft", "seqkd"))
    # eval reads the cached result without training again
    assert cli.main(["eval", str(path), *TINY, "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == printed["score"]


def test_train_output_exports_a_model_that_from_pretrained_loads(tmp_path, monkeypatch, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdlib import load_run

    monkeypatch.setenv("KDLIB_CACHE", str(cache_sharing_task_data(tmp_path / "cache")))
    cfg = load_config(None, ["method=sft", *TINY])
    with pytest.raises(FileNotFoundError, match=run_hash(cfg)):  # not trained yet: load_run names the run
        load_run(cfg)
    out = tmp_path / "my-student"
    assert cli.main(["train", "method=sft", *TINY, "--quiet", "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(out)
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    cached, _, result = load_run(cfg)
    assert json.loads((out / "result.json").read_text())["score"] == result["score"]
    ids = tok("3 + 4 = 7 .", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, cached(ids).logits)
    # a second export into the same (now full) folder fails before any training, in one line
    assert cli.main(["train", "method=kd", *TINY, "--quiet", "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "runs" / run_hash(load_config(None, ["method=kd", *TINY]))).exists()


# Cache keys of runs that the cache, the shipped runs and every user's finished work are stored under. A change
# to how a config is hashed, or a new default in SAMPLER_DEFAULTS / a new field that enters the hash at its
# default, silently retrains everything: new fields go to config.ADDED_FIELDS, new sampler parameters must
# leave the hash alone at their default.
PINNED_HASHES = {
    "sft": (dict(method="sft", task="arith"), "6f237167ed19"),
    "gkd": (dict(task="summ", n_train=4000, n_labelled=100, steps=150, n_eval=1000, method="gkd", seed=3,
                 student_data_fraction=1.0), "01cb561d2e70"),
    "adaswitch": (dict(task="arith", n_train=4000, n_labelled=1000, steps=150, n_eval=1000,
                       eval_splits=("test", "plus"), method="adaswitch", sampler_params={"k": 10.0, "window": 4}),
                  "2e189388d8dc"),
    "switch": (dict(task="summ", n_train=4000, n_labelled=100, steps=150, n_eval=1000, method="switch",
                    sampler_params={"schedule": "linear"}), "a4b1404fd456"),
    "distillm": (dict(task="summ", n_train=4000, n_labelled=100, steps=150, n_eval=1000, method="distillm",
                      eval_every=50), "b4b4b86ea91d"),
    # greedy SeqKD data (sample_temperature 0) keeps the key of the runs made when SeqKD was always greedy
    "seqkd": (dict(task="summ", n_train=4000, n_labelled=100, steps=150, n_eval=1000, method="seqkd",
                   student="student-m", seed=1, sample_temperature=0.0), "5a21aa2f39a7"),
}


@pytest.mark.parametrize("name", sorted(PINNED_HASHES))
def test_cache_keys_of_existing_runs_do_not_change(name):
    fields, pinned = PINNED_HASHES[name]
    assert run_hash(RunConfig(**fields)) == pinned


def test_sampled_seqkd_data_is_a_new_run_and_greedy_keeps_its_key():
    """SeqKD's data is drawn at sample_temperature (1.0 by default): such a run must not read a cached run that was
    trained on the greedy data, while a greedy one (0) is the same run as before and reads it."""
    fields = dict(PINNED_HASHES["seqkd"][0])
    greedy = run_hash(RunConfig(**fields))
    del fields["sample_temperature"]
    sampled = {run_hash(RunConfig(**fields)), run_hash(RunConfig(**fields, sample_temperature=0.5))}
    assert greedy == PINNED_HASHES["seqkd"][1] and greedy not in sampled and len(sampled) == 2


def test_a_runs_wall_time_leaves_out_the_teacher_and_warm_up_it_trains_first(tmp_path, monkeypatch, capsys):
    """A KD run on an empty cache trains its teacher and its SFT warm-up first; each has its own result.json,
    so the KD run's wall_seconds must not count them again (reproduce_times.md sums wall_seconds over the
    cache). A fake clock makes every dependency take 1 000 s."""
    import time

    from kdlib import _experiments as experiments

    monkeypatch.setenv("KDLIB_CACHE", str(cache_sharing_task_data(tmp_path / "cache")))
    cfg = load_config(None, ["method=kd", *TINY])
    offset = [0.0]
    monkeypatch.setattr(experiments, "time", type("Clock", (), {"time": staticmethod(lambda: time.time() + offset[0])}))
    real = experiments._train_and_score
    trained = []

    def slow_dependencies(c, d, **kw):
        out = real(c, d, **kw)
        trained.append(c.method if run_hash(c) == run_hash(cfg) else "dependency")
        if run_hash(c) != run_hash(cfg):
            offset[0] += 1000.0
        return out

    monkeypatch.setattr(experiments, "_train_and_score", slow_dependencies)
    assert cli.main(["train", "method=kd", *TINY, "--quiet"]) == 0
    capsys.readouterr()
    assert trained == ["dependency", "dependency", "kd"]  # the teacher, the warm-up, then the run itself
    result = json.loads((tmp_path / "cache" / "runs" / run_hash(cfg) / "result.json").read_text())
    assert 0 < result["wall_seconds"] < 1000
