"""The training loop: the step's token normalisation, faults, checkpoints and exact resume."""
import math

import pytest
import torch
from conftest import tiny_llama

from kdlib import _checkpoints as checkpoints
from kdlib import _recipes as recipes
from kdlib import _runcache as runcache
from kdlib._config import RunConfig
from kdlib._data import encode_batch
from kdlib._runcache import run_hash
from kdlib._samplers import build_sampler
from kdlib._sources import build_source
from kdlib._train import Forwards, NonFiniteLossError, Trainer, micro_batch_loss_sum


def make_trainer(cfg, tokenizer, rows, run_dir, seed_student=0, seed_teacher=1):
    student = tiny_llama(tokenizer, seed_student)
    teacher = tiny_llama(tokenizer, seed_teacher, layers=2, hidden=48)
    r = cfg.resolved
    sampler = build_sampler(r["sampler"], **r["sampler_params"]) if r["sampler"] else None
    source = build_source(r["source"], rows, cfg.seed, cfg.student_data_fraction, steps=cfg.steps)
    return Trainer(cfg, student=student, teacher=teacher, tokenizer=tokenizer, source=source,
                   sampler=sampler, run_dir=run_dir, progress=False)


def interrupt_after(trainer, n_steps):
    """Run `trainer` and kill it (KeyboardInterrupt) once it has finished `n_steps` steps."""
    original_step = trainer.step

    def step():
        if trainer.state.step == n_steps:
            raise KeyboardInterrupt
        return original_step()

    trainer.step = step
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("method", ["kd", "sft"])
def test_accumulated_micro_batches_give_the_one_batch_gradient(method, tokenizer, arith_rows, tmp_path):
    """8 sequences of different lengths in one batch == 4 micro-batches of 2, normalised by the
    response tokens of the whole step (the 'mean of means' bug would fail this)."""
    base = dict(method=method, batch_size=8, max_new_tokens=48, steps=1)
    results = []
    for micro in (8, 2):
        t = make_trainer(RunConfig(**base, micro_batch_size=micro), tokenizer, arith_rows, tmp_path / str(micro))
        batches, _, _ = t.draw_step()
        loss = t.accumulate_gradients(batches)
        results.append((loss, grads(t.student)))
    (l1, g1), (l2, g2) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert torch.allclose(g1, g2, atol=1e-6, rtol=1e-4)
    # and micro-batch means would have differed: the lengths really vary
    lengths = [len(r["response"].split()) for r in arith_rows[:8]]
    assert len(set(lengths)) > 1


def test_all_masked_batch_gives_zero_loss_and_finite_gradients(tokenizer, models):
    student, teacher = models
    b = encode_batch(tokenizer, ["ana has 3 apples ."], ["#### 3"], 16)
    b.response_mask[:] = False
    for method in ("kd", "sft", "gkd"):
        student.zero_grad()
        loss, n = micro_batch_loss_sum(student, teacher, b, RunConfig(method=method), Forwards())
        loss.backward()
        assert n == 0 and loss.item() == 0.0
        assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_the_loss_needs_no_run_config_and_validation_is_the_mean_cross_entropy(tokenizer, models):
    """kdlib._loss.sequence_loss_sum takes a divergence name and its parameters: the trainer's micro-batch loss
    is it with the config's values, and evaluate.validation_loss is the mean reference-token cross-entropy."""
    from kdlib._evaluate import validation_loss
    from kdlib._loss import sequence_loss_sum

    student, teacher = models
    rows = [{"prompt": "ana has 3 apples .", "response": "#### 3"},
            {"prompt": "bo has 12 pens and gets 4 more .", "response": "12 + 4 = 16 #### 16"}]
    b = encode_batch(tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows], 16)
    cfg = RunConfig(method="gkd", divergence_params={"beta": 0.3}, loss_temperature=2.0)
    with torch.no_grad():
        ours = micro_batch_loss_sum(student, teacher, b, cfg, Forwards())
        plain = sequence_loss_sum(student, teacher, b, "jsd", {"beta": 0.3}, temperature=2.0)
        assert ours[1] == plain[1] and torch.equal(ours[0], plain[0])
        other = sequence_loss_sum(student, teacher, b, "jsd", {"beta": 0.7}, temperature=2.0)[0]
        assert not torch.equal(other, plain[0])  # the parameters reach the divergence

        P = b.prompt_length
        logits = student(input_ids=b.input_ids, attention_mask=b.attention_mask,
                         position_ids=(b.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, P - 1:-1]
        targets = b.input_ids[:, P:].masked_fill(~b.response_mask[:, P:], -100)
        expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                                     ignore_index=-100)
    assert validation_loss(student, tokenizer, rows, max_new_tokens=16) == pytest.approx(float(expected), rel=1e-5)


def test_progress_bar_redraws_at_its_interval_not_at_every_step(tokenizer, arith_rows, tmp_path, monkeypatch,
                                                                  capsys):
    """Each redraw is one output message, which papermill appends to the executed notebook and re-saves: the
    loss shown beside the bar must not force a redraw per step (TQDM_MININTERVAL sets the interval)."""
    import functools

    import tqdm.auto

    from kdlib import _train as train

    def draws(mininterval, name):
        monkeypatch.setattr(train, "tqdm", functools.partial(tqdm.auto.tqdm, mininterval=mininterval,
                                                             maxinterval=max(mininterval, 10)))
        t = make_trainer(RunConfig(method="sft", batch_size=4, steps=12, checkpoint_every=0), tokenizer,
                         arith_rows, tmp_path / name)
        t.progress = True
        t.fit()
        err = capsys.readouterr().err
        return err.count("\r"), err

    every_step, err = draws(0, "eager")
    assert every_step >= 12 and "loss=" in err  # the counter sees redraws: one per step at interval 0
    hourly, _ = draws(3600, "hourly")
    assert 1 <= hourly <= 3  # the first draw, and the carriage returns that clear the bar at the end


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tokenizer, arith_rows, tmp_path):
    cfg = RunConfig(method="kd", batch_size=4, steps=5, checkpoint_every=1, max_new_tokens=48)
    t = make_trainer(cfg, tokenizer, arith_rows, tmp_path)
    original_step = t.step

    def poison_third_step():
        if t.state.step == 2:  # after the step-2 checkpoint, the weights go bad
            with torch.no_grad():
                next(t.student.parameters()).fill_(float("nan"))
        return original_step()

    t.step = poison_third_step
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        t.fit()
    kept = checkpoints.list_checkpoints(tmp_path / "checkpoints")
    assert kept and kept[-1].name == "step-000002.pt"
    state = torch.load(kept[-1], weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["student"].values())


def test_inf_gradient_with_a_finite_loss_stops_before_the_update(tokenizer, arith_rows, tmp_path):
    """A finite loss can still give an inf gradient; the step must stop before AdamW writes it into the
    weights (and into the next 'good' checkpoint), and the metrics so far stay on disk."""
    cfg = RunConfig(method="kd", batch_size=4, steps=5, checkpoint_every=1, max_new_tokens=48)
    t = make_trainer(cfg, tokenizer, arith_rows, tmp_path)
    weight = next(t.student.parameters())
    original_step = t.step

    def poison_third_step():
        if t.state.step == 2:
            weight.register_hook(lambda g: g * float("inf"))
        return original_step()

    t.step = poison_third_step
    with pytest.raises(NonFiniteLossError, match="gradient norm is (nan|inf) at step 3"):
        t.fit()
    assert torch.isfinite(weight).all()
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 2
    assert checkpoints.list_checkpoints(tmp_path / "checkpoints")[-1].name == "step-000002.pt"


@pytest.mark.parametrize("method", ["onpolicy", "gkd", "gkd+cache"])
def test_interrupted_run_resumes_to_the_same_weights_and_metrics(method, tokenizer, arith_rows, tmp_path):
    """A run killed after step 2 and resumed from its checkpoint ends exactly like one never stopped:
    model, optimizer, scheduler, the source's generators and data position all restored (with
    cache_teacher_logits, the resumed process refills its cache with the same per-row logits)."""
    cfg = RunConfig(method=method.split("+")[0], batch_size=4, steps=4, checkpoint_every=2, max_new_tokens=24,
                    student_data_fraction=0.5, lr=1e-2, cache_teacher_logits=method.endswith("+cache"))
    rows = arith_rows[:6] if cfg.cache_teacher_logits else arith_rows  # cached rows read again after the stop
    full = make_trainer(cfg, tokenizer, rows, tmp_path / "full")
    full.fit()

    interrupt_after(make_trainer(cfg, tokenizer, rows, tmp_path / "resumed"), 2)
    torch.manual_seed(1234)  # the resumed process starts with other global RNG state
    second = make_trainer(cfg, tokenizer, rows, tmp_path / "resumed")
    checkpoints.load(second, checkpoints.latest(second))
    second.fit()
    for a, b in zip(full.student.parameters(), second.student.parameters()):
        assert torch.equal(a, b)
    key = lambda rows: [(r["step"], r["loss"], r["source"], r["tokens"]) for r in rows]  # noqa: E731
    assert key(full.state.metrics) == key(second.state.metrics)
    if not cfg.cache_teacher_logits:
        assert full.state.forwards == second.state.forwards
    else:  # the resumed process computed again the rows its data steps read: more teacher forwards, same run
        assert second.state.forwards.teacher >= full.state.forwards.teacher
        assert {m["source"] for m in full.state.metrics[2:]} >= {"data"}  # rows of the cache read after the stop


def test_interrupted_distillm_run_resumes_with_its_schedule_and_replay_buffer(tokenizer, arith_rows, tmp_path):
    """DistiLLM's state — student-output probability, step count, replay buffer — survives a restart:
    the resumed run draws the same fresh / replayed / fixed batches and ends with the same weights."""
    cfg = RunConfig(method="distillm", batch_size=4, steps=6, checkpoint_every=3, max_new_tokens=24,
                    eval_every=100, lr=1e-2)

    def trainer(d):
        t = make_trainer(cfg, tokenizer, arith_rows, tmp_path / d)
        t.source.fraction, t.source.buffer.capacity = 1.0, 8  # full after two sampled steps: replay begins
        return t

    full = trainer("full")
    full.fit()
    assert {m["source"] for m in full.state.metrics} >= {"sampler", "replay"}
    interrupt_after(trainer("resumed"), 3)
    second = trainer("resumed")
    second.source.fraction = 0.0  # must come back from the checkpoint
    checkpoints.load(second, checkpoints.latest(second))
    assert second.source.fraction == 1.0 and len(second.source.buffer.items) == 8
    second.fit()
    for a, b in zip(full.student.parameters(), second.student.parameters()):
        assert torch.equal(a, b)
    assert [m["source"] for m in full.state.metrics] == [m["source"] for m in second.state.metrics]


def test_distillm_schedule_follows_the_validation_loss_margin(arith_rows):
    """The authors' rule: +0.1 only when the validation loss is >= 0.1 above the reference, which then
    moves to it; the first report (before training) only sets the reference."""
    src = build_source("distillm", arith_rows, seed=0, steps=10)
    fractions = []
    for loss in (2.0, 2.05, 2.1, 2.15, 2.3, 2.35, 1.0, 2.4):
        src.report_validation(loss)
        fractions.append(round(src.fraction, 6))
    assert fractions == [0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.2, 0.3]
    for _ in range(12):
        src.report_validation(src.reference_loss + 1)
    assert src.fraction == 1.0


def test_distillm_replays_more_as_training_goes_on(arith_rows):
    """With a full buffer and probability 1: fresh samples with probability 1 − step/steps, replay
    otherwise; the buffer is drawn from without replacement."""
    src = build_source("distillm", arith_rows, seed=0, steps=400)
    src.fraction = 1.0
    src.buffer.capacity = 3
    src.buffer.items = [(torch.tensor([i, 7]), torch.ones(2), torch.tensor([False, True]), 1) for i in range(3)]
    modes = []
    for _ in range(400):
        src.new_step()
        modes.append(src.mode)
    first, last = modes[:100].count("sampler") / 100, modes[300:].count("sampler") / 100
    assert set(modes) == {"sampler", "replay"} and first > 0.75 and last < 0.25
    drawn = src.buffer.draw(3, torch.Generator().manual_seed(0), "cpu").input_ids[:, 0].tolist()
    assert sorted(drawn) == [0, 1, 2]
    with pytest.raises(ValueError, match="holds 3 sequences, 4 asked"):
        src.buffer.draw(4, torch.Generator(), "cpu")


def test_distillm_needs_eval_every():
    with pytest.raises(ValueError, match="eval_every >= 1"):
        RunConfig(method="distillm")


def test_bookkeeping_fields_may_change_between_a_run_and_its_resumption(tokenizer, arith_rows, tmp_path):
    cfg = RunConfig(method="kd", batch_size=4, steps=1, checkpoint_every=1, max_new_tokens=24)
    make_trainer(cfg, tokenizer, arith_rows, tmp_path).fit()
    other = make_trainer(cfg.replace(checkpoint_every=5, keep_checkpoints=4, eval_every=3), tokenizer,
                         arith_rows, tmp_path)
    checkpoints.load(other, checkpoints.latest(other))
    assert other.state.step == 1


def test_checkpoint_from_another_config_is_refused(tokenizer, arith_rows, tmp_path):
    cfg = RunConfig(method="kd", batch_size=4, steps=1, checkpoint_every=1, max_new_tokens=24)
    t = make_trainer(cfg, tokenizer, arith_rows, tmp_path)
    t.fit()
    other = make_trainer(cfg.replace(lr=0.5), tokenizer, arith_rows, tmp_path)
    with pytest.raises(ValueError, match=r"different config \(fields \['lr'\]\)"):
        checkpoints.load(other, checkpoints.latest(other))


def test_gkd_coin_uses_its_own_generator_and_fraction(tokenizer, arith_rows):
    src = build_source("mix", arith_rows, seed=3, student_data_fraction=0.3)
    random_state = torch.get_rng_state()
    draws = []
    for _ in range(400):
        src.new_step()
        draws.append(src.use_sampler)
    assert torch.equal(torch.get_rng_state(), random_state)  # global RNG untouched
    assert abs(sum(draws) / 400 - 0.3) < 0.07
    src2 = build_source("mix", arith_rows, seed=3, student_data_fraction=0.3)
    again = []
    for _ in range(400):
        src2.new_step()
        again.append(src2.use_sampler)
    assert again == draws


def test_teacher_logits_from_rollout_replace_a_second_teacher_forward(tokenizer, arith_rows, tmp_path):
    cfg = RunConfig(method="skd", batch_size=4, steps=1, max_new_tokens=16)
    t = make_trainer(cfg, tokenizer, arith_rows, tmp_path)
    batches, used, _ = t.draw_step()
    assert used == "sampler" and batches[0].teacher_logits is not None
    f_reuse = Forwards()
    l_reuse, _ = micro_batch_loss_sum(t.student, t.teacher, batches[0], cfg, f_reuse)
    batches[0].teacher_logits = None
    f_fresh = Forwards()
    l_fresh, _ = micro_batch_loss_sum(t.student, t.teacher, batches[0], cfg, f_fresh)
    assert (f_reuse.teacher, f_fresh.teacher) == (0, 1)
    assert l_reuse.item() == pytest.approx(l_fresh.item(), rel=1e-4, abs=1e-5)


def test_lora_trains_only_adapters_and_saves_a_plain_model(tokenizer, arith_rows, tmp_path):
    from kdlib._experiments import with_lora

    student = with_lora(tiny_llama(tokenizer, 0), rank=4)
    base = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    cfg = RunConfig(method="sft", batch_size=4, steps=2, max_new_tokens=24, lora_rank=4, lr=1e-2)
    t = Trainer(cfg, student=student, teacher=None, tokenizer=tokenizer,
                source=build_source("data", arith_rows, 0), sampler=None, run_dir=tmp_path, progress=False)
    lora_before = {n: p.detach().clone() for n, p in student.named_parameters() if "lora_B" in n}
    t.fit()
    for n, p in student.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n  # frozen base weights untouched
    assert any(not torch.equal(p, lora_before[n]) for n, p in student.named_parameters() if n in lora_before)
    merged = student.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_metrics_reach_accelerate_trackers_and_csv(tokenizer, arith_rows, tmp_path):
    from accelerate.tracking import GeneralTracker

    class Memory(GeneralTracker):
        name, requires_logging_directory = "memory", False

        def __init__(self):
            super().__init__()
            self.rows, self.config = [], None

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.rows.append((step, values))

    mem = Memory()
    cfg = RunConfig(method="kd", batch_size=4, steps=3, max_new_tokens=24)
    t = Trainer(cfg, student=tiny_llama(tokenizer, 0), teacher=tiny_llama(tokenizer, 1), tokenizer=tokenizer,
                source=build_source("data", arith_rows, 0), sampler=None, run_dir=tmp_path,
                progress=False, log_with=[mem])
    t.fit()
    assert [s for s, _ in mem.rows] == [1, 2, 3] and mem.config["method"] == "kd"
    assert all(math.isfinite(v["loss"]) for _, v in mem.rows)
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,loss") and len(csv_lines) == 4


_FAULTS = """
import resource, torch
from kdlib._models import keep_freed_memory
on = keep_freed_memory()
def cycle():  # a forward pass in miniature: 8 MiB activations pile up, then are all freed
    xs = [torch.ones(2 ** 21) for _ in range(8)]
    del xs
cycle()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print(int(on), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def test_kept_freed_memory_stops_refaulting_memory_freed_by_the_last_pass():
    import os
    import resource
    import subprocess
    import sys
    from pathlib import Path

    def faults(keep: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                             env={**os.environ, "KDLIB_KEEP_FREED_MEMORY": keep, "OMP_NUM_THREADS": "1"})
        on, n = out.stdout.split()
        return int(on), int(n)

    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" in thp.read_text():
        pytest.skip("transparent huge pages always on: the heap faults in 2 MiB pages, too few to count")
    damon = Path("/sys/kernel/mm/damon/admin/kdamonds")
    if any((d / "state").read_text().strip() == "on" and any(
            a.read_text().strip() == "pageout" for a in d.glob("contexts/*/schemes/*/action"))
           for d in damon.glob("[0-9]*")):
        pytest.skip("the kernel's DAMON pages out cold memory on this host: kept heap pages fault in again "
                    "whatever glibc does, so faults cannot show the setting")
    on, kept = faults("1")
    if not on:
        pytest.skip("not glibc: mallopt is not available")
    off_flag, returned = faults("0")
    assert off_flag == 0
    # glibc's default returns the freed top of the heap to the kernel: every cycle faults pages in again
    pages = 2 ** 23 // resource.getpagesize()  # pages of one 8 MiB tensor
    assert returned >= 10 * pages // 2
    # at most one tensor's pages, once: then the freed heap is reused as it is (plus a few pages of the
    # interpreter's own: 2049 faults were seen once, against >= 10 240 with glibc's default)
    assert kept <= pages + 16


def test_a_shipped_run_fills_an_empty_cache_without_training(tmp_path, monkeypatch):
    import json

    from kdlib import _experiments as experiments

    cfg = recipes.teacher_recipe("arith", "tiny", steps=3)
    shipped = tmp_path / "shipped" / run_hash(cfg)
    (shipped / "model").mkdir(parents=True)
    (shipped / "model" / "config.json").write_text("{}")
    (shipped / "model" / "model.safetensors").write_bytes(b"w")
    (shipped / "result.json").write_text(json.dumps({"hash": run_hash(cfg), "score": 0.5}))
    monkeypatch.setattr(runcache, "SHIPPED", tmp_path / "shipped")
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KDLIB_SHIPPED", raising=False)

    def no_training(*a, **k):
        raise AssertionError("trained a run that is shipped")

    monkeypatch.setattr(experiments, "_run_uncached", no_training)
    result = experiments.run(cfg)
    assert result["score"] == 0.5 and result["shipped"] is True
    d = runcache.run_dir(cfg)
    assert (d / "model" / "config.json").exists() and json.loads((d / "result.json").read_text())["shipped"]
    # KDLIB_SHIPPED=0: a fully cold run trains it (in a fresh cache)
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cold"))
    monkeypatch.setenv("KDLIB_SHIPPED", "0")
    with pytest.raises(AssertionError, match="trained a run that is shipped"):
        experiments.run(cfg)


def test_no_shipped_run_is_stale_and_a_stale_one_is_named(tmp_path, monkeypatch):
    """A changed teacher recipe must ship its new teacher (or drop the old one): a stale copy would sit
    unused while a fresh clone trains the teacher again."""
    import json

    monkeypatch.delenv("KDLIB_SHIPPED", raising=False)
    assert runcache.stale_shipped_runs() == []
    assert runcache.shipped_run(recipes.teacher_recipe("arith")) is not None  # the quickstart's teacher
    assert runcache.shipped_run(recipes.teacher_recipe("summ")) is not None  # 01-03's summ teacher
    monkeypatch.setattr(runcache, "SHIPPED", tmp_path)
    cfg = recipes.teacher_recipe("arith", "tiny")  # the default steps: what teacher_config asks for
    for name, steps in (("current", cfg.steps), ("old", 4)):  # old: a recipe whose steps have changed since
        d = tmp_path / (run_hash(cfg) if name == "current" else run_hash(recipes.teacher_recipe("arith", "tiny", 4)))
        (d / "model").mkdir(parents=True)
        (d / "model" / "model.safetensors").write_bytes(b"w")
        (d / "result.json").write_text(json.dumps({"task": "arith", "student": "tiny", "steps": steps}))
    (tmp_path / "broken").mkdir()
    stale = sorted(runcache.stale_shipped_runs())
    assert len(stale) == 2
    old_hash = run_hash(recipes.teacher_recipe("arith", "tiny", 4))
    assert any(f"{old_hash}: teacher_recipe('arith') now hashes to {run_hash(cfg)}" in m for m in stale)
    assert any("broken: unreadable" in m for m in stale)


def test_ship_run_copies_a_finished_run_that_run_then_installs(tmp_path, monkeypatch):
    import json

    from kdlib import _experiments as experiments

    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KDLIB_SHIPPED", raising=False)
    monkeypatch.setattr(runcache, "SHIPPED", tmp_path / "shipped")
    cfg = recipes.teacher_recipe("arith", "tiny", steps=3)
    with pytest.raises(FileNotFoundError, match="no finished run"):
        runcache.ship_run(cfg)
    d = runcache.run_dir(cfg)
    (d / "model").mkdir(parents=True)
    (d / "model" / "model.safetensors").write_bytes(b"w" * 10)
    (d / "checkpoints").mkdir()
    (d / "result.json").write_text(json.dumps({"hash": run_hash(cfg), "score": 0.25}))
    out = runcache.ship_run(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["model", "result.json"]  # no checkpoints
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "fresh"))  # a fresh clone: empty cache
    assert experiments.run(cfg) == {"hash": run_hash(cfg), "score": 0.25, "shipped": True}
    assert (runcache.run_dir(cfg) / "model" / "model.safetensors").read_bytes() == b"w" * 10


def test_the_learning_curve_ends_at_the_final_score_decoded_once(tmp_path, monkeypatch):
    """A curve point at the last step is the final score of the same rows: it is copied, not decoded
    again (one evaluation saved per run whenever eval_every divides steps)."""
    import csv

    from conftest import cache_sharing_task_data

    from kdlib import _evaluate as ev
    from kdlib import _experiments as experiments

    cache_sharing_task_data(tmp_path / "cache")
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    calls = []
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    cfg = RunConfig(method="sft", task="arith", student="tiny", student_init="scratch", steps=4, eval_every=2,
                    batch_size=4, n_train=16, n_eval=4, eval_splits=("test",), max_new_tokens=8,
                    checkpoint_every=0)
    result = experiments.run(cfg, progress=False)
    points = {m["step"]: m.get("eval_score") for m in result["curve"]}
    assert points[1] is None and points[2] is not None and points[4] == result["score"]
    # step 2's curve point, then the final scores (greedy, sampled at T = 1); step 4's point is not decoded again
    assert calls == [4, 4, 4]
    with open(tmp_path / "cache" / "runs" / run_hash(cfg) / "metrics.csv") as f:
        assert float(list(csv.DictReader(f))[-1]["eval_score"]) == result["score"]


def test_a_finished_bf16_run_frees_its_student_before_returning(tmp_path, monkeypatch):
    """With bf16 mixed precision (the GPU path) accelerate replaces the student's forward by a method bound to
    the student: a reference cycle, which reference counting never frees. A paper run trains its teacher and
    warm-up in the same process, so each finished run must let go of its models itself, or they stay in GPU
    memory while the next one trains. Python's cyclic GC is off here, as it may not run for a long time."""
    import gc
    import weakref

    from conftest import cache_sharing_task_data

    from kdlib import _experiments as experiments

    cache_sharing_task_data(tmp_path / "cache")
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    # the GPU path's dtypes on CPU: the Trainer asks accelerate for mixed_precision="bf16"
    monkeypatch.setattr(experiments, "pick_device_dtype", lambda requested="auto": (torch.device("cpu"),
                                                                                     torch.bfloat16))
    students = []
    real = experiments._initial_student
    monkeypatch.setattr(experiments, "_initial_student",
                        lambda *a: students.append(weakref.ref(m := real(*a))) or m)
    cfg = RunConfig(method="sft", task="arith", student="tiny", student_init="scratch", steps=1, batch_size=2,
                    n_train=4, n_eval=2, eval_splits=("test",), max_new_tokens=4, checkpoint_every=0)
    gc.disable()
    try:
        result = experiments.run(cfg, progress=False)
        alive = [r() is not None for r in students]
    finally:
        gc.enable()
    assert result["provenance"]["dtype"] == "torch.bfloat16" and alive == [False]


def test_a_cached_run_with_another_learning_curve_is_named(tmp_path, monkeypatch, caplog):
    """eval_every is outside the hash (notebooks share runs): a run cached without a curve is returned, but
    a caller asking for a curve is told which run lacks it and how to retrain it."""
    import json
    import logging

    from kdlib import _experiments as experiments
    from kdlib._config import RunConfig

    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    plain = RunConfig(method="kd", task="arith", student="tiny", steps=4)
    d = runcache.run_dir(plain)
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"hash": run_hash(plain), "eval_every": 0, "score": 0.5}))
    monkeypatch.setattr(experiments, "_run_uncached", lambda *a, **k: pytest.fail("trained a cached run"))
    with caplog.at_level(logging.WARNING, logger="kdlib._runcache"):
        assert experiments.run(plain)["score"] == 0.5
        assert experiments.run(RunConfig(method="kd", task="arith", student="tiny", steps=4, eval_every=0))
        assert not caplog.records  # same curve (none) asked for: nothing to say
        curve = RunConfig(method="kd", task="arith", student="tiny", steps=4, eval_every=2)
        assert run_hash(curve) == run_hash(plain) and experiments.run(curve)["score"] == 0.5
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert run_hash(plain) in message and "eval_every=0" in message and "eval_every=2" in message
    # a curve cached every 2 steps holds every point of one asked every 4 steps, but not of one every 3
    (d / "result.json").write_text(json.dumps({"hash": run_hash(plain), "eval_every": 2, "score": 0.5}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdlib._runcache"):
        for every in (2, 4, 0):
            experiments.run(RunConfig(method="kd", task="arith", student="tiny", steps=4, eval_every=every))
        assert not caplog.records
        experiments.run(RunConfig(method="kd", task="arith", student="tiny", steps=4, eval_every=3))
    assert len(caplog.records) == 1 and "eval_every=2" in caplog.records[0].getMessage()


def test_optimizer_state_is_saved_by_parameter_name_and_older_checkpoints_still_resume(tokenizer, arith_rows,
                                                                                        tmp_path):
    """Checkpoints hold the optimizer state keyed by parameter names (torch.distributed.checkpoint, which also
    gathers FSDP shards); a checkpoint written before, keyed by parameter index, resumes to the same weights."""
    cfg = RunConfig(method="sft", batch_size=4, steps=4, checkpoint_every=2, max_new_tokens=24, lr=1e-2)
    full = make_trainer(cfg, tokenizer, arith_rows, tmp_path / "full")
    full.fit()
    interrupt_after(make_trainer(cfg, tokenizer, arith_rows, tmp_path / "old"), 2)
    path = checkpoints.latest(make_trainer(cfg, tokenizer, arith_rows, tmp_path / "old"))
    state = torch.load(path, weights_only=False)
    names = state["optimizer"]["param_groups"][0]["params"]
    assert names and all(isinstance(n, str) for n in names) and set(state["optimizer"]["state"]) <= set(names)
    # rewrite it as an older kdlib did: optimizer.state_dict(), keyed by the parameters' positions
    index = {n: i for i, n in enumerate(names)}
    state["optimizer"] = {"state": {index[n]: v for n, v in state["optimizer"]["state"].items()},
                          "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                                           for g in state["optimizer"]["param_groups"]]}
    torch.save(state, path)
    old = make_trainer(cfg, tokenizer, arith_rows, tmp_path / "old")
    checkpoints.load(old, path)
    old.fit()
    for a, b in zip(full.student.parameters(), old.student.parameters()):
        assert torch.equal(a, b)


def test_report_to_tensorboard_writes_the_loss_curve(tokenizer, arith_rows, tmp_path):
    """accelerate's TensorBoard tracker (extra `tensorboard`): the run's metrics rows as scalars, by step."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = RunConfig(method="sft", batch_size=4, steps=3, max_new_tokens=24, report_to=("tensorboard",))
    t = make_trainer(cfg, tokenizer, arith_rows, tmp_path)
    t.fit()
    t.acc.end_training()
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {tmp_path}"
    acc = EventAccumulator(str(events[0].parent)).Reload()
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in t.state.metrics])


@pytest.mark.parametrize("warmup", [0, 10, 50])
@pytest.mark.parametrize("steps", [3, 150, 1500])
def test_the_schedule_is_transformers_cosine_and_equals_kdlibs_closed_form(warmup, steps):
    """Linear warm-up from lr/(warmup + 1), then cosine to 10 % of the peak; transformers' schedule read one
    step ahead gives exactly the values of kdlib's earlier closed form (so cached runs stay valid)."""
    import math

    from kdlib._train import lr_lambda

    def closed_form(step):
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    f = lr_lambda(RunConfig(warmup_steps=warmup, steps=steps))
    assert [f(i) for i in range(steps)] == [closed_form(i) for i in range(steps)]


def test_the_seqkd_source_writes_the_teachers_responses_once(tokenizer, arith_rows, models, monkeypatch):
    """SeqKD builds its own data in `prepare`: at temperature 0 the teacher's greedy responses, cached by the key the
    run gives (a second source over the same rows and key reads them without running the teacher); other sources
    ignore the hook."""
    from kdlib import _evaluate as evaluate
    from kdlib import _sources as sources

    _, teacher = models
    rows, key = arith_rows[:6], {"teacher": "t-test", "task": "arith"}
    calls = []
    real = evaluate.greedy_decode
    monkeypatch.setattr(sources, "greedy_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = build_source("seqkd", rows, seed=0)
    first.prepare(teacher, tokenizer, max_new_tokens=8, cache_key=key, temperature=0.0)
    expected = real(teacher, tokenizer, [r["prompt"] for r in rows], max_new_tokens=8)
    assert [r["teacher_response"] for r in first.rows] == [o or "." for o in expected]
    assert [r["response"] for r in first.rows] == [r["response"] for r in rows]  # the labels stay
    second = build_source("seqkd", rows, seed=0)
    second.prepare(None, tokenizer, max_new_tokens=8, cache_key=key, temperature=0.0)  # cached: no teacher needed
    assert second.rows == first.rows and calls == [1]
    data = build_source("data", rows, seed=0)
    data.prepare(None, tokenizer, max_new_tokens=8, cache_key=key)
    assert data.rows == rows


def test_the_seqkd_source_samples_the_teacher_at_the_run_temperature(tokenizer, arith_rows, models):
    """By default (temperature 1, MiniLLM's SeqKD data) each prompt gets one response drawn from the teacher with
    a generator seeded by the run's seed: the same seed reads the same cached responses without the teacher,
    another seed draws others, and neither is the greedy data."""
    from kdlib._evaluate import sample_decode

    _, teacher = models
    rows, key = arith_rows[:16], {"teacher": "t-test-sampled", "task": "arith"}
    prompts = [r["prompt"] for r in rows]
    sampled = build_source("seqkd", rows, seed=3)
    sampled.prepare(teacher, tokenizer, max_new_tokens=8, cache_key=key)
    drawn = sample_decode(teacher, tokenizer, prompts, max_new_tokens=8, temperature=1.0, seed=3 + 5)
    assert [r["teacher_response"] for r in sampled.rows] == [o or "." for o in drawn]
    again = build_source("seqkd", rows, seed=3)
    again.prepare(None, tokenizer, max_new_tokens=8, cache_key=key)  # cached per seed: no teacher needed
    assert again.rows == sampled.rows
    other = build_source("seqkd", rows, seed=4)
    other.prepare(teacher, tokenizer, max_new_tokens=8, cache_key=key)
    greedy = build_source("seqkd", rows, seed=3)
    greedy.prepare(teacher, tokenizer, max_new_tokens=8, cache_key=key, temperature=0.0)
    responses = {name: [r["teacher_response"] for r in src.rows]
                 for name, src in (("seed 3", sampled), ("seed 4", other), ("greedy", greedy))}
    assert responses["seed 3"] != responses["seed 4"] and responses["seed 3"] != responses["greedy"]


def test_cached_teacher_logits_are_each_rows_own_forward_and_spare_the_teacher(tokenizer, arith_rows, tmp_path):
    """cache_teacher_logits: a fixed-data batch reads each row's teacher logits from one forward of that row
    alone (exactly), which the batched forward matches to rounding; the teacher runs once per distinct row,
    not once per micro-batch, and the run trains as the uncached one does, up to that rounding."""
    from kdlib._loss import response_logits

    rows = arith_rows[:12]
    base = dict(method="kd", batch_size=8, micro_batch_size=4, max_new_tokens=48, steps=6, lr=1e-3)
    cached = make_trainer(RunConfig(**base, cache_teacher_logits=True), tokenizer, rows, tmp_path / "c")
    batches, used, _ = cached.draw_step()
    assert used == "data" and all(b.teacher_logits is not None for b in batches)
    P = batches[0].prompt_length
    for b in batches:
        idx = [next(r for r in rows if encode_batch(tokenizer, [r["prompt"]], [r["response"]], 48).input_ids[0]
                    .tolist() == b.input_ids[i][b.attention_mask[i].bool()].tolist()) for i in range(len(b.input_ids))]
        for i, r in enumerate(idx):
            alone = encode_batch(tokenizer, [r["prompt"]], [r["response"]], 48)
            with torch.no_grad():
                own = response_logits(cached.teacher, alone)[0]
            n = int(b.response_mask[i, P:].sum())
            assert torch.equal(b.teacher_logits[i, :n], own) and (b.teacher_logits[i, n:] == 0).all()
        with torch.no_grad():
            batched = response_logits(cached.teacher, b)
        mask = b.response_mask[:, P:]
        torch.testing.assert_close(b.teacher_logits[mask], batched[mask], atol=1e-4, rtol=1e-4)
    cached = make_trainer(RunConfig(**base, cache_teacher_logits=True), tokenizer, rows, tmp_path / "c2")  # fresh
    plain = make_trainer(RunConfig(**base), tokenizer, rows, tmp_path / "p")
    cached.fit()
    plain.fit()
    assert cached.state.forwards.teacher == 12  # each of the 12 rows once (6 steps × 8 rows read them 4 times)
    assert plain.state.forwards.teacher == 6 * 2  # one forward per micro-batch
    assert cached.state.metrics[-1]["loss"] == pytest.approx(plain.state.metrics[-1]["loss"], rel=1e-3)
    assert run_hash(RunConfig(**base)) != run_hash(RunConfig(**base, cache_teacher_logits=True))
    assert "cache_teacher_logits" not in RunConfig(**base).key_fields()  # off: every cached run keeps its hash
    with pytest.raises(ValueError, match="cache_teacher_logits keeps"):
        RunConfig(profile="paper", task="gsm8k", teacher="Qwen/Qwen2.5-7B-Instruct", student="Qwen/Qwen2.5-0.5B",
                  student_init="pretrained", cache_teacher_logits=True)
    with pytest.raises(ValueError, match="not teacher='smollm2'"):
        RunConfig(teacher="smollm2", student="smollm2-pruned", student_init="pretrained", cache_teacher_logits=True)
    # no cache where the loss reads no teacher logits (SFT), and none for SeqKD's teacher-written rows
    sft = make_trainer(RunConfig(method="sft", batch_size=4, steps=1, cache_teacher_logits=True), tokenizer, rows,
                       tmp_path / "sft")
    assert sft.ctx.teacher_cache is None
    seqkd = make_trainer(RunConfig(method="seqkd", divergence="fkl", batch_size=4, steps=1, max_new_tokens=48,
                                   cache_teacher_logits=True), tokenizer,
                         [{**r, "teacher_response": r["response"]} for r in rows], tmp_path / "seqkd")
    b = seqkd.source.fixed(seqkd.ctx, 4, "teacher_response")
    assert seqkd.ctx.teacher_cache is not None and b.teacher_logits is None


def test_a_full_teacher_logit_cache_computes_new_rows_alone_without_keeping_them(tokenizer, arith_rows, tmp_path):
    cfg = RunConfig(method="kd", batch_size=8, micro_batch_size=4, max_new_tokens=48, steps=2,
                    cache_teacher_logits=True)
    kept = make_trainer(cfg, tokenizer, arith_rows[:12], tmp_path / "kept")
    full = make_trainer(cfg, tokenizer, arith_rows[:12], tmp_path / "full")
    full.ctx.teacher_cache.max_bytes = 0  # nothing fits: every row computed alone at every use
    a, _, _ = kept.draw_step()
    b, _, _ = full.draw_step()
    for x, y in zip(a, b):
        assert torch.equal(x.teacher_logits, y.teacher_logits)  # the same run, only slower
    assert len(kept.ctx.teacher_cache.rows) == 8 and full.ctx.teacher_cache.rows == {}
    assert sum(y.stats["teacher_forwards"] for y in b) == 8
