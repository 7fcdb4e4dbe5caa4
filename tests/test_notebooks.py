"""Notebooks: committed clean, parameterised, and every one executes at its smallest settings."""
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import cache_sharing_task_data

from kdlib import _reproduce as reproduce

NOTEBOOKS = reproduce.notebooks()


def test_there_are_numbered_notebooks_started_longest_first():
    names = [p.stem for p in NOTEBOOKS]
    assert "00_quickstart" in names and names[:2] == ["01_gkd", "03_adaswitch"]
    assert names.index("02_switch") > names.index("01_gkd")  # 02 reads 01's runs: it starts after


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_one_parameters_cell(path):
    nb = json.loads(Path(path).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path.name} has outputs: clear them before committing"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    for name in ("profile", "smoke", "seeds", "out_dir"):
        assert f"{name} =" in source, f"{path.name}: parameter {name!r} missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_cell_fits_on_a_screen(path):
    """A notebook holds parameters, calls and prose: code cells of at most 12 lines (the parameters cell, one
    line per knob, at most 20), lines of at most 120 characters; loops and tables belong to kdlib.notebook."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        lines = "".join(cell["source"]).strip().splitlines()
        limit = 20 if "parameters" in cell["metadata"].get("tags", []) else 12
        assert len(lines) <= limit, f"{path.name}: code cell {i} has {len(lines)} lines (at most {limit})"
        wide = [line for line in lines if len(line) > 120]
        assert not wide, f"{path.name}: code cell {i} has lines over 120 characters: {wide}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path):
    """papermill parses the parameters cell line by line (`name = value  # comment`); a line it cannot
    parse (an "=" inside the comment was one) makes it warn that a passed parameter is unknown."""
    import ast

    import papermill

    nb = json.loads(Path(path).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assigned = {t.id for node in ast.parse("".join(cell["source"])).body if isinstance(node, ast.Assign)
                for t in node.targets}
    assert set(papermill.inspect_notebook(str(path))) == assigned


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_at_smoke_settings(path, tmp_path):
    """The smoke run: every cell of every notebook, tiny models, outputs to a temp folder."""
    out = tmp_path / "figures"
    cache = cache_sharing_task_data(tmp_path / "cache")
    params = {"smoke": True, "seeds": [0], "out_dir": str(out)}
    extra = reproduce.EXTRA_SEEDS.get(path.stem, {}).get("smoke")  # as make smoke: 02's extra-seeds cell runs too
    reproduce.execute(path, params | ({"extra_seeds": extra} if extra else {}), tmp_path / path.name,
                      env={"KDLIB_CACHE": str(cache)})
    produced = {p.suffix for p in out.rglob("*")}
    assert {".png", ".pdf", ".csv", ".md"} <= produced, f"{path.name} wrote {sorted(produced)}"
    if extra:  # the headline pair compared over the main and the extra seeds
        assert set(pd.read_csv(out / "best_baseline_seeds.csv").seeds) == {1 + len(extra)}


def test_smoke_grids_keep_a_compared_student_size_but_warm_it_up_briefly():
    """At smoke settings an axis naming embedded sizes keeps them (the notebook's groups exist), but their SFT
    warm-ups run tiny's few steps, not the protocol's 300 / 1 500; the full grid keeps the protocol's."""
    from kdlib._recipes import SFT_INIT_STEPS, SFT_INIT_STEPS_TINY, sft_init_recipe
    from kdlib.notebook import grid, protocol

    for task in ("summ", "arith"):
        smoke = grid(protocol(task), True, student=["student-s", "student-m"])
        assert [c.student for c in smoke] == ["student-s", "student-m"]
        assert [sft_init_recipe(c).steps for c in smoke] == [SFT_INIT_STEPS_TINY] * 2
        full = grid(protocol(task), False, student=["student-s", "student-m"])
        assert [sft_init_recipe(c).steps for c in full] == [SFT_INIT_STEPS[task]] * 2


def test_score_table_has_mean_and_spread_per_set():
    from kdlib.notebook import score_table

    def result(method, seed, test, plus=None):
        r = {"method": method, "task": "arith", "student": "s", "seed": seed, "score_test": test}
        return r if plus is None else {**r, "score_plus": plus}

    res = [result("kd", 0, 0.5, 0.2), result("kd", 1, 0.7, 0.4), result("sft", 0, 0.1, 0.0),
           result("sft", 1, 0.3, 0.0), {**result("sft", 0, 0.9), "task": "summ"}, result("sft", 2, 0.2, 0.1)]
    t = score_table(res, ["sft", "kd"]).set_index("method")
    assert list(t.index) == ["sft", "kd"]
    assert list(t.columns) == ["seeds", "arith/test", "arith/test sd", "arith/plus", "arith/plus sd", "summ/test",
                               "summ/test sd"]
    assert t["seeds"].tolist() == [3, 2]  # sft ran on a seed kd did not: its mean is over other warm-ups
    assert t.loc["kd", "arith/test"] == pytest.approx(0.6)
    assert t.loc["kd", "arith/test sd"] == pytest.approx(0.1414, abs=1e-4)
    assert t.loc["sft", "arith/plus sd"] == pytest.approx(0.0577, abs=1e-4) and t.loc["sft", "summ/test"] == 0.9
    assert t["summ/test sd"].isna().all() and t.loc["kd"].drop(["summ/test", "summ/test sd"]).notna().all()


def test_mean_std_wide_has_flat_columns_per_group():
    import pandas as pd

    from kdlib.notebook.plots import mean_std_wide

    df = pd.DataFrame({"k": [2, 2, 1, 1], "score": [0.1, 0.3, 0.5, 0.5], "frac": [1.0, 0.0, 0.2, 0.4]})
    t = mean_std_wide(df, "k", ["score", "frac"])
    assert list(t.columns) == ["k", "score_mean", "score_std", "frac_mean", "frac_std"]
    assert list(t.k) == [1, 2] and list(mean_std_wide(df, "k", ["score"], sort=False).k) == [2, 1]
    assert t.score_mean.tolist() == pytest.approx([0.5, 0.2])
    assert t.score_std.tolist() == pytest.approx([0.0, 0.1414], abs=1e-4)


def test_runtime_table_ratios_and_missing_reference():
    import pandas as pd

    from kdlib.notebook import runtime_table

    runs = pd.DataFrame({"setting": ["a"] * 6 + ["b"] * 2,
                         "method": ["onpolicy", "onpolicy", "skd", "skd", "ada", "ada", "onpolicy", "ada"],
                         "seconds_per_step": [1.0, 3.0, 4.0, 4.0, 3.0, 3.0, 2.0, 1.0]})
    rt = runtime_table(runs).set_index("method")
    assert rt.loc["ada", "a"] == 3.0 and rt.loc["ada", "a / onpolicy"] == 1.5 and rt.loc["ada", "a / skd"] == 0.75
    assert rt.loc["ada", "b / onpolicy"] == 0.5 and pd.isna(rt.loc["ada", "b / skd"])  # no SKD run in b
    no_skd = runtime_table(runs[runs.method != "skd"])
    assert not any("/ skd" in c for c in no_skd.columns) and "a / onpolicy" in no_skd.columns


def test_stopwatch_counts_the_runs_trained_while_it_ran(tmp_path, monkeypatch):
    from kdlib._timing import Stopwatch

    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "cache" / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "old" / "result.json").write_text("{}")
    watch = Stopwatch()
    here = '{"provenance": {"pid": %d}, "wall_seconds": 30}' % os.getpid()
    for h, result in (("a", here), ("b", here), ("x", '{"provenance": {"pid": %d}}' % (os.getpid() + 1))):
        (runs / h).mkdir()
        (runs / h / "result.json").write_text(result)  # x: trained meanwhile by another notebook's kernel
    (runs / "c").mkdir()  # an interrupted run: no result, not counted
    (runs / "t").mkdir()  # copied from kdlib's shipped runs: not trained here
    (runs / "t" / "result.json").write_text('{"shipped": true}')
    e = watch.elapsed()
    assert (e["trained"], e["shipped"]) == (3, 1)  # every process's runs (x too), not the interrupted c
    assert e["trained_seconds"] == 60 and e["seconds"] >= 0


def test_relative_to_divides_by_the_reference_mean_of_the_same_group():
    import pandas as pd

    from kdlib.notebook import relative_to

    runs = pd.DataFrame({"setting": ["a", "a", "a", "b", "b", "c"],
                         "method": ["onpolicy", "onpolicy", "skd", "onpolicy", "skd", "skd"],
                         "seconds_per_step": [1.0, 3.0, 4.0, 0.5, 1.0, 9.0]})
    out = relative_to(runs, "onpolicy")
    assert list(out.relative) == [0.5, 1.5, 2.0, 1.0, 2.0]  # a: / 2.0, b: / 0.5; c has no on-policy run
    assert relative_to(runs, "kd").empty


def test_reproduce_gives_a_lone_notebook_every_thread_and_names_an_unknown_one(tmp_path, monkeypatch, capsys):
    """Two notebooks at a time get one thread each; one notebook (--only) must keep both cores."""
    import os

    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "as before")  # restored after the test: main() sets it
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    seen = []
    outs = []
    monkeypatch.setattr(reproduce, "execute", lambda nb, params, out, env=None: outs.append(params["out_dir"])
                        or seen.append((nb.stem, os.environ["OMP_NUM_THREADS"])) or 1.0)
    reproduce.main(["--only", "00_quickstart"])
    assert seen == [("00_quickstart", "as before")]
    assert outs == ["figures/00_quickstart"]  # only make reproduce writes the figures; no machine's path
    from kdlib.notebook import output_dir

    assert output_dir(outs[0], "00_quickstart") == reproduce.ROOT / "figures" / "00_quickstart"
    seen.clear()
    reproduce.main(["--only", "00_quickstart", "01_gkd"])
    assert sorted(seen) == [("00_quickstart", "1"), ("01_gkd", "1")]
    with pytest.raises(SystemExit):
        reproduce.main(["--only", "no_such_notebook"])
    assert "no_such_notebook" in capsys.readouterr().err
    # another number of steps: notebooks 01-03 only, into their own folder, never the committed figures
    seen.clear()
    outs.clear()
    params_seen = []
    monkeypatch.setattr(reproduce, "execute", lambda nb, params, out, env=None: params_seen.append((nb.stem, params))
                        or 1.0)
    reproduce.main(["--steps", "300", "--jobs", "1"])
    assert sorted((stem, p["steps"], p["out_dir"]) for stem, p in params_seen) == [
        (stem, 300, f"figures/steps-300/{stem}") for stem in ("01_gkd", "02_switch", "03_adaswitch")]
    # notebook 02's headline pair gets seeds 5-9 there (and only there: not at the protocol's 150 steps)
    assert {stem: p.get("extra_seeds") for stem, p in params_seen} == {
        "01_gkd": None, "02_switch": [5, 6, 7, 8, 9], "03_adaswitch": None}
    params_seen.clear()
    reproduce.main(["--only", "02_switch"])
    assert "extra_seeds" not in params_seen[0][1]
    for bad in (["--steps", "0"], ["--steps", "300", "--smoke"], ["--steps", "300", "--profile", "paper"]):
        with pytest.raises(SystemExit):
            reproduce.main(bad)
        assert "--steps takes a positive number" in capsys.readouterr().err


def test_host_probe_times_a_training_step_and_leaves_threads_and_random_state_as_they_were():
    import torch

    from kdlib._timing import host_probe

    found, set_to = torch.get_num_threads(), []
    real_set = torch.set_num_threads

    def recording(n):
        set_to.append(n)
        real_set(n)

    real_set(2)
    try:
        torch.set_num_threads = recording
        rng = torch.get_rng_state()
        seconds = host_probe(steps=2, warmup=1)
        assert 0 < seconds < 60 and set_to == [1, 2] and torch.get_num_threads() == 2  # one thread inside
        assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    finally:
        torch.set_num_threads = real_set
        real_set(found)


def test_a_full_reproduce_writes_the_host_probes_beside_its_times(tmp_path, monkeypatch):
    """reproduce_times.md carries the host's speed measured before and after the notebooks; a partial run
    (--only, --steps) writes no times and measures none."""
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    monkeypatch.setattr(reproduce, "execute", lambda nb, params, out, env=None: 60.0)
    probes = iter([0.05, 0.1])
    monkeypatch.setattr(reproduce, "host_probe", lambda: next(probes))
    (tmp_path / "figures").mkdir()
    reproduce.main(["--jobs", "1"])
    times = (tmp_path / "figures" / "reproduce_times.md").read_text()
    assert "50.0 ms before the notebooks, 100.0 ms after" in times
    assert "| 00_quickstart | 1.0 |" in times
    from kdlib._timing import cpu_kernels

    assert f"torch's {cpu_kernels()['cpu_kernels']} kernels" in times  # the kernels the numbers came from
    monkeypatch.setattr(reproduce, "host_probe", lambda: pytest.fail("a partial run measured the host"))
    reproduce.main(["--only", "00_quickstart"])
    reproduce.main(["--steps", "3", "--jobs", "1"])


def test_cpu_kernels_name_torchs_kernel_set_and_the_variables_that_chose_it(monkeypatch):
    """A run's numbers repeat only on the same CPU kernels: provenance names them, and a variable that
    forces other kernels shows both in the name and in the recorded environment."""
    import subprocess
    import sys

    import torch

    from kdlib._timing import KERNEL_ENV, cpu_kernels

    for name in KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    assert cpu_kernels() == {"cpu_kernels": torch.backends.cpu.get_cpu_capability(), "kernel_env": {}}
    forced = subprocess.run([sys.executable, "-c", "import json; from kdlib._timing import cpu_kernels; "
                             "print(json.dumps(cpu_kernels()))"], capture_output=True, text=True, check=True,
                            env={**os.environ, "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"})
    assert json.loads(forced.stdout) == {"cpu_kernels": "DEFAULT",
                                         "kernel_env": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}}


def test_figure_provenance_carries_each_runs_cpu_kernels_where_the_run_recorded_them(tmp_path):
    from kdlib.notebook.plots import save_provenance

    base = {"method": "kd", "task": "summ", "student": "student-s", "seed": 0}
    results = [{**base, "hash": "new", "provenance": {"git_commit": "c", "cpu_kernels": "AVX512"}},
               {**base, "hash": "old", "provenance": {"git_commit": "c"}}]  # trained before runs recorded them
    runs = json.loads(save_provenance(results, tmp_path).read_text())["runs"]
    assert runs[0]["cpu_kernels"] == "AVX512" and "cpu_kernels" not in runs[1]


def test_host_condition_reports_steal_and_unaccounted_time(tmp_path):
    from kdlib._timing import cpu_ticks, host_condition

    before = [100, 0, 50, 800, 0, 0, 0, 50, 7, 7]
    # 10 s on 2 cores at 100 Hz = 2000 ticks expected; 1000 accounted, 250 of them stolen
    after = [400, 0, 150, 1150, 0, 0, 0, 300, 9, 9]
    line = host_condition(before, after, 10.0, cores=2, hz=100)
    assert "25 % stolen" in line and "50 % of wall time × cores accounted" in line
    assert host_condition(None, after, 10.0) == "" and host_condition(before, after, 0.0) == ""
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert cpu_ticks(str(stat)) == [1, 2, 3, 4, 5, 6, 7, 8, 0, 0]
    assert cpu_ticks(str(tmp_path / "none")) is None


def test_reproduce_records_its_time_and_the_runs_it_trained(tmp_path, monkeypatch):
    """A full embedded `make reproduce` writes figures/reproduce_times.md: a row per notebook, the total,
    and how many runs it trained (here: each notebook 'trains' one run) versus copied from shipped runs."""
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "as before")
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    (tmp_path / "figures").mkdir()
    earlier = tmp_path / "cache" / "runs" / "earlier"  # trained by an interrupted invocation: 1 h
    earlier.mkdir(parents=True)
    (earlier / "result.json").write_text('{"wall_seconds": 3600, "method": "sft", "student_init": "scratch", '
                                         '"task": "summ", "student": "student-s", "steps": 300}')

    def fake_execute(nb, params, out, env=None):  # each notebook 'trains' a GKD run of 18 min (00: ships one)
        run = tmp_path / "cache" / "runs" / nb.stem
        run.mkdir(parents=True)
        (run / "result.json").write_text('{"shipped": true, "wall_seconds": 99}' if nb.stem.startswith("00") else
                                         '{"wall_seconds": 1080, "method": "gkd", "task": "summ", '
                                         '"student": "student-s", "steps": 150}')
        return 60.0

    monkeypatch.setattr(reproduce, "execute", fake_execute)
    reproduce.main([])
    text = (tmp_path / "figures" / "reproduce_times.md").read_text()
    n = len(NOTEBOOKS) - 1
    assert f"{n} run(s) trained, 1 copied from kdlib's shipped runs" in text
    assert all(f"| {nb.stem} | 1.0 |" in text for nb in NOTEBOOKS) and "**total (wall)**" in text
    # the runs' own times: this invocation's (shipped excluded), and the whole cache's (the earlier run too)
    assert f"this invocation trained took {n * 0.3:.2f} h" in text
    assert f"All {n + 1} trained runs in the cache (not shipped) took {n * 0.3 + 1:.2f} h" in text
    # by kind, the costliest first, with its share; the shipped run is no one's cost here
    gkd = f"| gkd | summ | student-s | 150 | {n} | {n * 18:.1f} |"
    warmup = "| sft from scratch | summ | student-s | 300 | 1 | 60.0 |"
    assert gkd in text and warmup in text and (text.index(gkd) < text.index(warmup)) == (n * 18 > 60)
    assert f"{n * 18 / (n * 18 + 60):.0%} |" in text and "| 99" not in text


def test_workload_frame_says_which_minutes_were_measured_here():
    """A shipped teacher's training minutes are another machine's: the table says so per row."""
    from kdlib.notebook import workload_frame

    def result(student, seconds, **extra):
        return {"student": student, "student_params": 10, "train_seconds": seconds, "steps": 5, "n_train": 7,
                "score_test": 0.5, "score_plus": 0.25, **extra}

    t = workload_frame([result("teacher", 600, shipped=True), result("student-s", 30)], ["teacher", "student"])
    assert list(t["trained"]) == ["shipped", "here"]
    assert list(t["train_minutes"]) == [10.0, 0.5]
    assert list(t["test"]) == [0.5, 0.5] and list(t["plus"]) == [0.25, 0.25]


def test_training_claims_compare_phases_per_seed_and_the_first_evaluation():
    import pandas as pd

    from kdlib.notebook import training_claims

    def score(method, seed, step):  # adaswitch leads at its first evaluation (10), on-policy leads at 20
        lead = {10: {"adaswitch": 0.5, "onpolicy": 0.2, "sft": 0.1},
                20: {"adaswitch": 0.1, "onpolicy": 0.6, "sft": 0.3}}
        return lead[step][method] + seed / 100 if step in lead else None

    rows = []
    for seed in range(3):
        for step in range(1, 21):  # adaswitch's loss falls from ~1 to ~0.5; the others' stay flat
            for method, loss in (("adaswitch", 1.0 - step / 40 + seed / 100), ("onpolicy", 0.7 + seed / 100),
                                 ("sft", 0.7)):
                rows.append({"method": method, "seed": seed, "step": step, "loss": loss,
                             "eval_score": score(method, seed, step)})
    curves = pd.DataFrame(rows)
    falls, early = training_claims(curves, "adaswitch", n_steps=5)
    # a value per seed and phase
    assert "first 5 steps" in falls and "over 3 seed(s)" in falls and "reproduced" in falls
    assert "step 10" in early and "(onpolicy)" in early and "reproduced" in early and "95 % CI" in early
    assert "adaswitch 0.510 vs onpolicy 0.210" in early  # the mean over the seeds at step 10, not over all steps
    rising = curves.assign(loss=[r["loss"] if r["method"] != "adaswitch" else r["step"] / 40 for r in rows])
    assert "reversed" in training_claims(rising, "adaswitch", n_steps=5)[0]
    # the first evaluation is adaswitch's own: a rival evaluated earlier does not move it
    early_rival = pd.concat([curves, pd.DataFrame([{"method": "sft", "seed": 0, "step": 5, "loss": 0.7,
                                                    "eval_score": 0.9}])])
    assert "step 10" in training_claims(early_rival, "adaswitch", n_steps=5)[1]
    alone = curves[curves.method == "adaswitch"]
    assert "no other method was evaluated at step 10" in training_claims(alone, "adaswitch")[1]
    assert "eval_every" in training_claims(curves.drop(columns="eval_score"), "adaswitch")[1]
    # a 3-step run: the two phases never overlap (1 step each), and a 1-step run is too short to compare
    short = curves[curves.step <= 3]
    assert "first 1 steps" in training_claims(short, "adaswitch")[0]
    assert "too few" in training_claims(curves[curves.step == 1], "adaswitch")[0]


def test_plateau_claims_tell_rising_flat_falling_and_undetermined_curves_apart():
    import pandas as pd

    from kdlib.notebook import plateau_claims

    small = [0.002, -0.001, 0.0005, -0.0015, 0.001]  # per seed, around zero, well inside ±0.005
    large = [0.03, -0.02, 0.025, -0.03, 0.01]  # around zero but wide: cannot say flat
    gain = {"rising": (0.05, small), "flat": (0.0, small), "tiny": (0.002, [x / 4 for x in small]),
            "falling": (-0.05, small), "noisy": (0.0, large)}  # score change from step 100 to step 150
    rows = [{"method": m, "seed": seed, "step": step, "loss": 0.1,
             "eval_score": 0.4 + step / 1000 * (step < 150) + (0.1 + g + noise[seed]) * (step == 150) + seed / 10}
            for m, (g, noise) in gain.items() for seed in range(5) for step in (50, 100, 150)]
    rows += [{"method": "once", "seed": 0, "step": 150, "loss": 0.1, "eval_score": 0.5}]
    lines = dict(zip([*gain, "once"], plateau_claims(pd.DataFrame(rows))))
    assert lines["rising"].endswith("→ still rising") and "last 50 steps" in lines["rising"]
    assert "+0.050" in lines["rising"] and "over 5 seed(s)" in lines["rising"]  # step 150 minus step 100
    assert "→ flat" in lines["flat"] and lines["falling"].endswith("→ falling")
    assert "→ flat" in lines["tiny"]  # a consistent but negligible gain is a plateau, not a rise
    assert "→ still rising" in plateau_claims(pd.DataFrame(rows), tolerance=0.001)[2]  # unless told otherwise
    assert "undetermined" in lines["noisy"] and "too few" in lines["once"]
    assert plateau_claims(pd.DataFrame(rows).drop(columns="eval_score")) == []  # nothing evaluated
    # a seed evaluated more often (another eval_every) does not move the steps compared: 150 against 100
    extra = [{**r, "step": 125, "eval_score": 0.0} for r in rows if r["seed"] == 0 and r["step"] == 150]
    assert plateau_claims(pd.DataFrame(rows + extra))[0] == lines["rising"]
    one_seed = pd.DataFrame([r for r in rows if r["seed"] == 0])
    assert all("too few" in line for line in plateau_claims(one_seed))  # no interval from one seed
    # two tasks are never averaged together: each gets its own line, named
    other = pd.DataFrame(rows).assign(task="arith", eval_score=lambda d: d.eval_score + 0.3)
    two = plateau_claims(pd.concat([pd.DataFrame(rows).assign(task="summ"), other]))
    assert len(two) == 2 * len(lines) and any(line.startswith("protocol check, arith, rising:") for line in two)
    assert [line.split(": ", 1)[1] for line in two[:len(lines)]] == [line.split(": ", 1)[1] for line in lines.values()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_open_on_the_kdlib_kernel_that_setup_installs_into_the_venv(path):
    nb = json.loads(Path(path).read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "kdlib"
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "ipykernel install --sys-prefix --name kdlib" in makefile and "\nlab: setup" in makefile


def test_a_notebook_run_by_hand_writes_outside_the_committed_figures(tmp_path, monkeypatch):
    from kdlib.notebook import ROOT, output_dir

    monkeypatch.chdir(tmp_path)  # a kernel started anywhere: paths still start at the repository root
    assert output_dir("", "01_gkd") == ROOT / ".cache" / "figures" / "01_gkd"
    assert output_dir("figures/01_gkd", "01_gkd") == ROOT / "figures" / "01_gkd"
    assert output_dir(str(tmp_path / "mine"), "01_gkd") == tmp_path / "mine" and (tmp_path / "mine").is_dir()


@pytest.mark.slow
def test_the_workbench_runs_on_a_jsonl_task_of_its_own(tmp_path):
    """04_your_pair on a task folder written here: the tables and the provenance carry the task's own name,
    with the teacher's and the starting student's scores."""
    from test_usertask import write_task

    task = write_task(tmp_path / "apples", n_train=64)
    out = tmp_path / "figures"
    reproduce.execute(reproduce.NOTEBOOKS / "04_your_pair.ipynb",
                      {"smoke": True, "seeds": [0], "out_dir": str(out), "task": str(task), "methods": ["sft", "gkd"]},
                      tmp_path / "04.ipynb", env={"KDLIB_CACHE": str(tmp_path / "cache")})
    provenance = (out / "provenance.json").read_text()
    assert '"task": "apples"' in provenance and "teacher score" in provenance and "starting student score" in provenance
    assert (out / "comparison.csv").exists() and (out / "comparison.png").exists() and (out / "curves.png").exists()
