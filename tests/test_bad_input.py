"""Careless input fails at once, naming the field, value, file or variable — before any model loads."""
import pytest

from kdlib import _cli as cli
from kdlib import _runcache as runcache
from kdlib._config import RunConfig, load_config
from kdlib._env import env_flag
from kdlib._runcache import run_hash


@pytest.mark.parametrize("override, needle", [
    ("steps=abc", "steps='abc' must be a whole number"),
    ("steps=5.5", "steps=5.5 must be a whole number"),
    ("steps=true", "steps=True must be a whole number"),
    ("lr=fast", "lr='fast' must be a finite number"),
    ("seed=abc", "seed='abc' must be a whole number"),
    ("sampler_params=3", "sampler_params=3 must be a mapping"),
    ("task=bogus", "task='bogus' is not an embedded task; choose one of ['arith', 'summ']"),
    ("eval_splits=[test,bogus]", "no held-out split 'bogus'"),
    ("eval_splits=train", "no held-out split 'train'"),
    ("gradient_checkpointing=maybe", "gradient_checkpointing='maybe' must be true or false"),
])
def test_a_bad_value_names_the_field_and_what_it_must_be(override, needle):
    with pytest.raises(ValueError, match=__import__("re").escape(needle)):
        load_config(None, [override])


def test_scientific_notation_and_a_lone_split_read_as_meant():
    cfg = load_config(None, ["lr=1e-3", "weight_decay=5E-2", "eval_splits=plus", "report_to=tensorboard"])
    assert (cfg.lr, cfg.weight_decay, cfg.eval_splits, cfg.report_to) == (0.001, 0.05, ("plus",), ("tensorboard",))
    assert run_hash(load_config(None, ["lr=0.001"])) == run_hash(cfg.replace(weight_decay=0.0, eval_splits=("test",),
                                                                   report_to=()))


def test_sampler_params_without_a_sampler_are_refused():
    with pytest.raises(ValueError, match="method='kd' uses no sampler"):
        RunConfig(method="kd", sampler_params={"top_k": 3})
    assert RunConfig(method="kd", sampler="skd", source="sampler", sampler_params={"top_k": 3})


def test_a_sampler_on_a_method_that_never_samples_is_refused():
    with pytest.raises(ValueError, match="sampler='adaswitch' is unused: method='kd' reads the labelled data"):
        RunConfig(method="kd", sampler="adaswitch")
    with pytest.raises(ValueError, match=r"sampler='switch' is unused: .*the teacher's responses \(SeqKD\)"):
        RunConfig(method="kd", source="seqkd", sampler="switch")
    assert RunConfig(method="kd", source="sampler", sampler="switch").resolved["sampler"] == "switch"


def test_an_output_folder_that_cannot_be_written_fails_before_training(tmp_path, capsys, monkeypatch):
    from kdlib._experiments import check_export_folder

    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.safetensors").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    for folder, needle in ((tmp_path / "afile", "afile is a file; choose a new folder"),
                           (tmp_path / "afile" / "sub", "afile is a file, not a folder"),
                           (tmp_path / "full", "full is not empty")):
        with pytest.raises((ValueError, FileExistsError), match=needle):
            check_export_folder(folder)
    monkeypatch.setattr("os.access", lambda path, mode: str(path) != str(locked))  # root may write anywhere
    with pytest.raises(ValueError, match="locked is not writable"):
        check_export_folder(locked / "new" / "deeper")
    assert check_export_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"  # made at export
    # the CLI: one line, exit 2, before anything trains
    assert cli.main(["train", "teacher=tiny", "student=tiny", "--output", str(tmp_path / "afile" / "sub")]) == 2
    assert capsys.readouterr().err.strip().endswith("afile is a file, not a folder")


def test_a_non_boolean_debug_switch_is_named_and_the_error_still_printed(monkeypatch, capsys):
    monkeypatch.setenv("KDLIB_DEBUG", "maybe")
    assert cli.main(["show", "steps=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kdlib: error: KDLIB_DEBUG='maybe': use 1 or 0 (also true/false, yes/no, on/off)",
                   "kdlib: error: steps='abc' must be a whole number, not str"]


def test_a_grid_axis_given_as_a_string_is_refused():
    from kdlib.notebook import grid

    with pytest.raises(ValueError, match=r"grid axis method='kd,gkd' must be a list .*-y \"name: \[a, b\]\""):
        grid({}, method="kd,gkd")
    with pytest.raises(ValueError, match="grid axis seed=3 must be a list"):
        grid({}, seed=3)


def test_config_files_empty_broken_or_missing_are_named(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("method: kd  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.yaml: line 1: not UTF-8 text \(byte 17"):
        load_config(tmp_path / "latin1.yaml")
    (tmp_path / "empty.yaml").write_text("\n")
    (tmp_path / "broken.yaml").write_text("method: [kd\n")
    (tmp_path / "list.yaml").write_text("- kd\n")
    with pytest.raises(ValueError, match="empty.yaml: the config file is empty"):
        load_config(tmp_path / "empty.yaml")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML") as e:
        load_config(tmp_path / "broken.yaml")
    assert "<unicode string>" not in str(e.value)
    with pytest.raises(ValueError, match="list.yaml: expected a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_the_cli_prints_one_line_and_exits_2(capsys):
    assert cli.main(["show", "steps=abc"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "kdlib: error: steps='abc' must be a whole number, not str"
    with pytest.raises(ValueError):
        cli.main(["show", "steps=abc", "--debug"])
    assert cli.main(["show", "--quiet", "method=kd", "lr=1e-3"]) == 0  # overrides after a flag are read
    assert '"lr": 0.001' in capsys.readouterr().out


@pytest.mark.parametrize("value, expected", [("0", False), ("false", False), ("No", False), ("off", False),
                                             ("1", True), ("TRUE", True), ("yes", True), ("", True)])
def test_boolean_switches_take_the_usual_spellings(monkeypatch, value, expected):
    monkeypatch.setenv("KDLIB_SHIPPED", value)
    assert env_flag("KDLIB_SHIPPED") is expected


def test_a_boolean_switch_with_another_value_is_refused(monkeypatch):
    monkeypatch.setenv("KDLIB_SHIPPED", "nah")
    with pytest.raises(ValueError, match="KDLIB_SHIPPED='nah'"):
        env_flag("KDLIB_SHIPPED")


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tokenizer, arith_rows, tmp_path):
    import torch
    from test_train import make_trainer

    from kdlib import _checkpoints as checkpoints

    cfg = RunConfig(method="kd", batch_size=4, steps=4, checkpoint_every=1, max_new_tokens=24, keep_checkpoints=2)
    t = make_trainer(cfg, tokenizer, arith_rows, tmp_path)
    t.fit()
    files = checkpoints.list_checkpoints(checkpoints.checkpoint_dir(t))
    assert [f.name for f in files] == ["step-000003.pt", "step-000004.pt"]
    files[-1].write_bytes(files[-1].read_bytes()[:5000])  # truncated, as by a full disk
    again = make_trainer(cfg, tokenizer, arith_rows, tmp_path)
    with pytest.warns(UserWarning, match="step-000004.pt cannot be read"):
        used = checkpoints.resume(again)
    assert used == files[0] and again.state.step == 3
    assert (files[-1].parent / "step-000004.pt.unreadable").exists()
    for a, b in zip(again.student.parameters(), torch.load(files[0], weights_only=False)["student"].values()):
        assert torch.equal(a, b)


def test_a_nan_before_any_checkpoint_says_none_was_kept(tokenizer, arith_rows, tmp_path):
    from test_train import make_trainer

    from kdlib._train import NonFiniteLossError

    t = make_trainer(RunConfig(method="sft", batch_size=4, steps=2, max_new_tokens=24), tokenizer, arith_rows, tmp_path)
    with torch_nan(t), pytest.raises(NonFiniteLossError, match="no checkpoint was written yet"):
        t.fit()


class torch_nan:
    """Make the trainer's loss NaN for the block."""

    def __init__(self, trainer):
        self.t, self.orig = trainer, trainer.accumulate_gradients

    def __enter__(self):
        self.t.accumulate_gradients = lambda batches: float("nan")

    def __exit__(self, *a):
        self.t.accumulate_gradients = self.orig


def test_a_truncated_result_is_moved_aside_and_the_run_counts_as_unfinished(tmp_path, caplog):

    (tmp_path / "result.json").write_text('{"score": 0.5, "cur')
    assert runcache.finished(tmp_path) is False and (tmp_path / "result.json").exists()  # outside the lock
    assert runcache.finished(tmp_path, move_aside=True) is False
    assert (tmp_path / "result.json.unreadable").exists() and "cannot be read" in caplog.text
    (tmp_path / "result.json").write_text('{"score": 0.5}')
    assert runcache.finished(tmp_path) is True


def test_a_second_process_says_whose_lock_it_waits_for(tmp_path, capfd):
    import subprocess
    import sys
    import time

    from kdlib import _workload as workload

    lock = tmp_path / "run.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from kdlib import _workload as workload\n"
        "with workload.locked(__import__('pathlib').Path(%r), what='run x'):\n"
        "    print('held', flush=True); time.sleep(3)")
        % (str(__import__('pathlib').Path(workload.__file__).parents[1]), str(lock))],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.time()
    with workload.locked(lock, what="run x (kd arith seed 0)"):
        waited = time.time() - t0
    holder.wait()
    assert waited > 1
    assert f"waiting for run x (kd arith seed 0): locked by pid {holder.pid}" in capfd.readouterr().err


def test_reproduce_stops_at_the_first_failing_notebook():
    import threading
    import time
    from pathlib import Path

    from kdlib._reproduce import run_all

    started, gate = [], threading.Event()

    def one(nb):
        started.append(nb.name)
        if nb.name == "a":
            raise SystemExit("notebook a failed in cell 3: ValueError: bad")
        gate.wait(2)  # the notebook running beside it
        return 1.0

    t0 = time.time()
    with pytest.raises(SystemExit, match="notebook a failed in cell 3"):
        run_all(one, [Path("a"), Path("b"), Path("c"), Path("d")], jobs=2)
    assert time.time() - t0 < 1.5  # it did not wait for the queue to drain
    gate.set()
    time.sleep(0.1)
    assert "c" not in started and "d" not in started


def test_model_names_that_cannot_work_fail_before_anything_loads(monkeypatch):
    from kdlib._config import check_models_reachable

    with pytest.raises(ValueError, match="student='student-xs' is not an embedded size; choose one of"):
        RunConfig(student="student-xs")
    with pytest.raises(ValueError, match="no model directory at /nope/model"):
        RunConfig(teacher="/nope/model", student="/nope/other", student_init="pretrained")
    hub = RunConfig(teacher="someone/teacher-7b", student="someone/student-1b", student_init="pretrained")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="neither a local directory nor in the hub cache, and HF_HUB_OFFLINE"):
        check_models_reachable(hub)
    check_models_reachable(RunConfig())  # embedded sizes need nothing


def test_a_folder_that_is_no_model_or_a_mistyped_relative_path_is_named(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "mymodels").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"student='data': data is a folder but not a model \(no config.json"):
        RunConfig(teacher="smollm2", student="data", student_init="pretrained")
    with pytest.raises(ValueError, match=r"student='mymodels/student': no model directory at .*mymodels/student, "
                                         r"though mymodels/ exists here"):
        RunConfig(teacher="smollm2", student="mymodels/student", student_init="pretrained")
    (tmp_path / "Qwen").mkdir()  # the paper profile names hub ids: an org-named folder here changes nothing
    RunConfig(profile="paper", task="gsm8k", teacher="Qwen/Qwen2.5-7B-Instruct", student="Qwen/Qwen2.5-0.5B-Instruct",
              student_init="pretrained")


def test_a_local_model_folder_is_cached_by_its_content_not_only_its_path(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def save(folder, seed, hidden=16):
        torch.manual_seed(seed)
        LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)).save_pretrained(folder)

    save(tmp_path / "t", 0)
    save(tmp_path / "s", 1)
    cfg = RunConfig(teacher=str(tmp_path / "t"), student=str(tmp_path / "s"), student_init="pretrained")
    first = run_hash(cfg)
    assert run_hash(cfg) == first  # stable
    save(tmp_path / "s", 2)  # same shapes, other weights: another run
    second = run_hash(cfg)
    save(tmp_path / "s", 1, hidden=32)  # another architecture
    assert len({first, second, run_hash(cfg)}) == 3


def test_a_hub_name_that_cannot_load_names_its_role(monkeypatch):
    from kdlib import _rows

    def offline(path):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nsecond line")

    monkeypatch.setattr(_rows, "load_tokenizer", offline)
    cfg = RunConfig(teacher="someorg/teacher-7b", student="someorg/student-1b", student_init="pretrained")
    with pytest.raises(ValueError, match=r"teacher='someorg/teacher-7b': its tokenizer could not be loaded: We "
                                         r"couldn't connect .* a hub name needs the network or a local copy"):
        _rows.resolve_tokenizer(cfg)


def test_a_run_gives_the_same_weights_however_many_threads_the_process_had(tmp_path, monkeypatch):
    import torch
    from conftest import cache_sharing_task_data
    from safetensors.torch import load_file

    from kdlib import _experiments as experiments

    cfg = RunConfig(method="kd", task="arith", student="tiny", teacher="tiny", teacher_steps=3, steps=4,
                    batch_size=8, n_train=32, n_eval=4, max_new_tokens=16)
    seen, real = [], experiments._train_and_score
    monkeypatch.setattr(experiments, "_train_and_score",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    weights = []
    for threads in (1, 2):
        cache = cache_sharing_task_data(tmp_path / f"cache{threads}")
        monkeypatch.setenv("KDLIB_CACHE", str(cache))
        torch.set_num_threads(threads)
        result = experiments.run(cfg, progress=False)
        assert result["provenance"]["threads"] == experiments.RUN_THREADS
        weights.append(load_file(str(cache / "runs" / run_hash(cfg) / "model" / "model.safetensors")))
        assert torch.get_num_threads() == threads  # restored afterwards
    assert set(seen) == {experiments.RUN_THREADS}
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_validating_a_config_and_printing_help_import_no_torch():
    """A config error is reported without loading torch (it used to take 5-25 s)."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io\n"
            "from kdlib._config import load_config\n"
            "load_config(None, ['method=switch', 'sampler_params.tau0=0.2', 'student=student-m'])\n"
            "from kdlib import _cli as cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert cli.main(['show', 'steps=abc']) == 2\n"
            "    try: cli.main(['train', '--help'])\n"
            "    except SystemExit: pass\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("content, needle", [
    (b"", "no rows (the file is empty)"),
    (b'{"prompt": "a", "response": "b"}\n\xff\xfe bad\n', "line 2: not UTF-8 text"),
    (b'{"prompt": "a", "response": "b"}\nnot json\n', "line 2: not valid JSON"),
    (b'["a", "b"]\n', "line 1: a JSON object {...} per line is expected, got list"),
    (b'{"prompt": "a", "response": []}\n', "line 1: field 'response' must be a non-empty string, got []"),
    (b'{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "response": 42}\n',
     "line 3: field 'response' must be a non-empty string, got 42"),  # the editor's line, blank lines counted
    (b'{"prompt": "a", "response": NaN}\n', "line 1: field 'response' must be a non-empty string, got nan"),
    (b'{"prompt": "a \\ud800", "response": "b"}\n', "line 1: field 'prompt' holds '\\ud800' at character 2"),
])
def test_a_bad_data_file_is_named_with_its_row_and_field(tmp_path, content, needle):
    from kdlib._data import load_jsonl

    path = tmp_path / "mine.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=__import__("re").escape(needle)) as e:
        load_jsonl(path)
    assert str(path) in str(e.value)


def test_finite_numbers_a_named_directory_and_an_evaluation_set_are_required(tmp_path):
    with pytest.raises(ValueError, match="lr=nan must be a finite number"):
        load_config(None, ["lr=.nan"])
    with pytest.raises(ValueError, match="eval_splits=\\[\\] names no evaluation set"):
        load_config(None, ["eval_splits=[]"])
    with pytest.raises(ValueError, match="lr='-e5' must be a finite number"):
        load_config(None, ["lr=-e5"])
    mine = tmp_path / "student-finetuned"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    assert RunConfig(teacher=str(mine), student=str(mine), student_init="pretrained")  # not taken for a typo


def test_a_full_disk_is_named_with_the_file_being_written(tokenizer, arith_rows, tmp_path, monkeypatch):
    import errno

    import torch
    from test_train import make_trainer

    cfg = RunConfig(method="sft", batch_size=4, steps=2, checkpoint_every=1, max_new_tokens=24)
    t = make_trainer(cfg, tokenizer, arith_rows, tmp_path)

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 123 vs 456")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="no space left on the device while writing .*step-000001.pt") as e:
        t.fit()
    assert e.value.errno == errno.ENOSPC


def test_every_evaluation_set_is_read_before_the_first_step(tmp_path, monkeypatch):
    from conftest import cache_sharing_task_data

    from kdlib import _experiments as experiments

    cache_sharing_task_data(tmp_path / "cache")
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    read, real = [], experiments.load_rows
    monkeypatch.setattr(experiments, "load_rows",
                        lambda cfg, split, *a, **k: read.append(split) or real(cfg, split, *a, **k))
    fit = experiments.Trainer.fit
    monkeypatch.setattr(experiments.Trainer, "fit", lambda self: read.append("FIT") or fit(self))
    experiments.run(RunConfig(method="sft", task="arith", student="tiny", student_init="scratch", steps=1, batch_size=4,
                              n_train=8, n_eval=2, max_new_tokens=8, eval_splits=("test", "plus")), progress=False)
    assert read.index("plus") < read.index("FIT")


def test_a_failure_while_scoring_costs_a_rerun_only_the_scoring(tmp_path, monkeypatch):
    from conftest import cache_sharing_task_data

    from kdlib import _experiments as experiments

    cfg = RunConfig(method="sft", task="arith", student="tiny", student_init="scratch", steps=3, batch_size=4,
                    n_train=8, n_eval=3, max_new_tokens=8)
    results = []
    for name, fail in (("plain", False), ("failing", True)):
        cache_sharing_task_data(tmp_path / name)
        monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / name))
        real = experiments.score_splits
        if fail:
            def broken(*a, **k):
                raise OSError(28, "No space left on device")
            monkeypatch.setattr(experiments, "score_splits", broken)
            with pytest.raises(OSError):
                experiments.run(cfg, progress=False)
            monkeypatch.setattr(experiments, "score_splits", real)
            fits = []
            monkeypatch.setattr(experiments.Trainer, "fit", lambda self: fits.append(1))
            results.append(experiments.run(cfg, progress=False))
            assert fits == []  # the rerun did not train
        else:
            results.append(experiments.run(cfg, progress=False))
    keys = ("score", "score_test", "score_test_t1", "train_seconds", "final_loss")
    assert {k: results[0][k] for k in keys if k != "train_seconds"} == \
           {k: results[1][k] for k in keys if k != "train_seconds"}
    assert [m["loss"] for m in results[0]["curve"]] == [m["loss"] for m in results[1]["curve"]]
