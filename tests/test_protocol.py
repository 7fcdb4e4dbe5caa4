"""The embedded protocol v2: labelled rows vs prompts, a warm-up independent of the steps, both decodings,
per-item scores for paired claims, and the mechanism measurements."""
import json

import pytest
import torch
from conftest import cache_sharing_task_data, tiny_llama

from kdlib import _experiments as experiments
from kdlib import _mechanisms as mechanisms
from kdlib import _recipes as recipes
from kdlib import _scoring as scoring
from kdlib import notebook as knb
from kdlib._config import RunConfig
from kdlib._evaluate import evaluate, sample_decode
from kdlib._runcache import run_hash
from kdlib._sources import StepContext, build_source


def _ctx(tokenizer, student=None, sampler=None, teacher=None):
    return StepContext(tokenizer, student, teacher, sampler, max_new_tokens=24, sample_temperature=1.0,
                       device=torch.device("cpu"))


def test_fixed_steps_read_only_the_labelled_rows_and_samplers_every_prompt(tokenizer, arith_rows):
    labelled = arith_rows[:4]
    data = build_source("data", arith_rows, seed=0, labelled=labelled)
    seen = {tuple(r["prompt"] for r in data.take_rows(_ctx(tokenizer), 4, labelled=True)) for _ in range(6)}
    assert {p for batch in seen for p in batch} == {r["prompt"] for r in labelled}
    mix = build_source("mix", arith_rows, seed=0, student_data_fraction=1.0, labelled=labelled)
    prompts = {r["prompt"] for _ in range(10) for r in mix.take_rows(_ctx(tokenizer), 8)}
    assert len(prompts - {r["prompt"] for r in labelled}) > 20  # the sampled steps see the unlabelled prompts
    with pytest.raises(ValueError, match="n_labelled=2000 must be <= n_train"):
        RunConfig(n_labelled=2000, n_train=1000)


def test_without_n_labelled_the_row_order_is_unchanged(tokenizer, arith_rows):
    # n_labelled = 0 keeps one picker for every step, so runs cached before the field existed stay valid
    old, new = build_source("data", arith_rows, seed=3), build_source("data", arith_rows, seed=3, labelled=None)
    assert new.label_picker is new.picker
    assert [r["id"] for r in old.take_rows(_ctx(tokenizer), 9, labelled=True)] == \
           [r["id"] for r in new.take_rows(_ctx(tokenizer), 9)]
    assert run_hash(RunConfig(method="kd")) == run_hash(RunConfig(method="kd", n_labelled=0))


def test_labelled_row_order_survives_a_checkpoint(tokenizer, arith_rows):
    a = build_source("mix", arith_rows, seed=0, student_data_fraction=0.5, labelled=arith_rows[:5])
    a.take_rows(_ctx(tokenizer), 3, labelled=True)
    state = a.state_dict()
    b = build_source("mix", arith_rows, seed=0, student_data_fraction=0.5, labelled=arith_rows[:5])
    b.load_state_dict(state)
    assert [r["id"] for r in a.take_rows(_ctx(tokenizer), 7, labelled=True)] == \
           [r["id"] for r in b.take_rows(_ctx(tokenizer), 7, labelled=True)]


def test_the_warm_up_is_fixed_per_task_and_reads_the_labelled_rows():
    short, long = RunConfig(method="kd", task="summ", steps=20), RunConfig(method="kd", task="summ", steps=400)
    assert recipes.sft_init_recipe(short) == recipes.sft_init_recipe(long)  # one warm-up, any steps
    w = recipes.sft_init_recipe(RunConfig(method="kd", task="arith", n_train=4000, n_labelled=1000))
    assert (w.steps, w.n_train) == (recipes.SFT_INIT_STEPS["arith"], 1000)
    assert recipes.sft_init_recipe(RunConfig(method="kd", sft_init_steps=7)).steps == 7
    assert recipes.sft_init_recipe(RunConfig(method="kd", student="tiny")).steps == recipes.SFT_INIT_STEPS_TINY
    assert run_hash(RunConfig(method="kd", steps=20)) != run_hash(RunConfig(method="kd", steps=20, sft_init_steps=7))


def test_sampled_decoding_is_reproducible_and_differs_from_greedy(tokenizer, arith_rows):
    model = tiny_llama(tokenizer, 0)
    prompts = [r["prompt"] for r in arith_rows[:12]]
    a = sample_decode(model, tokenizer, prompts, max_new_tokens=12, temperature=1.0, seed=5)
    assert a == sample_decode(model, tokenizer, prompts, max_new_tokens=12, temperature=1.0, seed=5)
    assert a != sample_decode(model, tokenizer, prompts, max_new_tokens=12, temperature=1.0, seed=6)
    greedy = evaluate(model, tokenizer, arith_rows[:12], metric="accuracy", max_new_tokens=12)
    sampled = evaluate(model, tokenizer, arith_rows[:12], metric="accuracy", max_new_tokens=12, temperature=1.0,
                       seed=5)
    assert greedy["n"] == sampled["n"] == 12


def test_a_run_writes_per_item_scores_that_paired_claims_read(tmp_path, monkeypatch):
    cache_sharing_task_data(tmp_path / "cache")
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    base = dict(task="summ", student="tiny", teacher="tiny", teacher_steps=3, steps=2, batch_size=4, n_train=32,
                n_labelled=8, n_eval=6, max_new_tokens=16, eval_splits=("test",))
    results = [experiments.run(RunConfig(method=m, seed=s, **base), progress=False)
               for m in ("sft", "kd") for s in (0, 1)]
    assert {"score_test", "score_test_t1"} <= set(results[0])
    items = knb.item_scores(results, "test_t1")
    assert len(items) == 4 * 6 and set(items.method) == {"sft", "kd"}
    r0 = results[0]
    preds = (tmp_path / "cache" / "runs" / r0["hash"] / "predictions-test_t1.jsonl").read_text().splitlines()
    assert pytest.approx(sum(json.loads(x)["score"] for x in preds) / 6) == r0["score_test_t1"]
    table = knb.paired_table(results, [("kd", "sft")])
    assert list(table.decoding) == ["greedy", "sampled T=1"] and set(table.seeds) == {2}
    assert all(c.startswith("claim [test, ") for c in knb.paired_claims(table, "claim"))
    plan = knb.seeds_table(results, [("kd", "sft")])  # the seeds each difference would need (test_stats)
    assert list(plan.decoding) == ["greedy", "sampled T=1"] and set(plan.seeds) == {2}
    assert list(plan.difference) == pytest.approx(list(table.difference))
    with pytest.raises(FileNotFoundError, match="no per-item scores for 'plus'"):
        knb.item_scores(results, "plus")


def test_mechanisms_tell_a_one_hot_teacher_from_a_spread_one(tokenizer, arith_rows):
    rows = arith_rows[:8]
    model = tiny_llama(tokenizer, 0)
    sharp = tiny_llama(tokenizer, 0)
    with torch.no_grad():
        sharp.lm_head.weight.mul_(2000)  # the same argmax, a near one-hot distribution
    flat = mechanisms.teacher_on_references(model, tokenizer, rows, max_new_tokens=24)
    peaked = mechanisms.teacher_on_references(sharp, tokenizer, rows, max_new_tokens=24)
    assert peaked["teacher_entropy"] < 0.1 * flat["teacher_entropy"]
    assert peaked["teacher_top1_is_reference"] == pytest.approx(flat["teacher_top1_is_reference"])
    same = mechanisms.exposure_gap(model, sharp, tokenizer, rows, max_new_tokens=24)
    # the student agrees with a teacher of the same argmax everywhere, on any prefix: no gap
    assert same["agreement_on_reference_prefixes"] == same["agreement_on_own_prefixes"] == 1.0
    rec = mechanisms.teacher_recovery(model, sharp, tokenizer, rows, metric="accuracy", max_new_tokens=24)
    assert rec["slipped"] == 0.0 and rec["teacher_after_student_slip"] == rec["student"]


def test_distillm_schedule_fires_when_its_labelled_half_overfits(tmp_path, monkeypatch):
    """On the label-scarce protocol DistiLLM's fixed-data steps read a handful of labelled rows; the student
    overfits them, the held-out validation loss rises past the margin, and the student-output probability
    goes up. (On the embedded protocol's 100 labelled rows it does not fire within 150 steps: notebook 02
    reports it, figures/02_switch/claims.md.)"""
    cache_sharing_task_data(tmp_path / "cache")
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    cfg = RunConfig(method="distillm", task="summ", student="tiny", teacher="tiny", teacher_steps=3, steps=24,
                    batch_size=4, n_train=64, n_labelled=2, n_eval=8, max_new_tokens=16, eval_every=3, lr=0.05,
                    eval_splits=("test",))
    curve = experiments.run(cfg, progress=False)["curve"]
    fractions = [m["student_output_probability"] for m in curve if "student_output_probability" in m]
    assert fractions[-1] > 0.0 and fractions == sorted(fractions)  # it only ever rises
    assert any(m["source"] in ("sampler", "replay") for m in curve)


def _selection_run(tmp_path, monkeypatch, scores: dict, kill_at: int = 0, **over):
    """A tiny run selecting on validation, whose validation scores per step are `scores`; returns its result,
    the weights each candidate had when it was scored, and the saved model's weights. `kill_at`: the run
    is interrupted while step kill_at is being evaluated (before its checkpoint), then run again."""
    from transformers import AutoModelForCausalLM

    cache_sharing_task_data(tmp_path / "cache")
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    seen = {}

    def fake_score(trainer, rows):
        assert rows and all("response" in r for r in rows)  # the validation rows, not the test set
        model = trainer.acc.unwrap_model(trainer.student)
        seen[trainer.state.step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen.setdefault("calls", []).append(trainer.state.step)
        if trainer.state.step == kill_at and not seen.get("killed"):
            seen["killed"] = True
            raise KeyboardInterrupt
        return scores[trainer.state.step]

    monkeypatch.setattr(scoring, "_validation_score", fake_score)
    cfg = RunConfig(**{**dict(method="sft", task="summ", student="tiny", teacher="tiny", teacher_steps=3, steps=4,
                              batch_size=4, n_train=32, n_eval=6, max_new_tokens=16, eval_splits=("test",),
                              lr=0.05, eval_every=1, select_checkpoint="validation"), **over})
    if kill_at:
        with pytest.raises(KeyboardInterrupt):
            experiments.run(cfg, progress=False)
    result = experiments.run(cfg, progress=False)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "cache" / "runs" / result["hash"] / "model")
    return result, seen, saved.state_dict()


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in b if k in a)


def test_validation_selection_keeps_and_scores_the_best_step(tmp_path, monkeypatch):
    result, seen, saved = _selection_run(tmp_path, monkeypatch, {1: 0.3, 2: 0.9, 3: 0.9, 4: 0.1})
    assert result["selected_step"] == 2  # the earliest of the equal best scores
    assert _same(saved, seen[2]) and not _same(saved, seen[4])  # the kept weights are step 2's, not the last
    assert [m["selected"] for m in result["curve"]] == [False, True, False, False]
    assert [m["validation_score"] for m in result["curve"]] == [0.3, 0.9, 0.9, 0.1]


def test_validation_selection_survives_an_interrupted_run(tmp_path, monkeypatch):
    """Killed while step 3 is evaluated, after step 2 was kept and checkpointed: the resumed run re-trains
    step 3 from the step-2 checkpoint and still keeps step 2's weights, the same as a run never stopped."""
    scores = {1: 0.3, 2: 0.9, 3: 0.5, 4: 0.1}
    whole, _, whole_saved = _selection_run(tmp_path / "whole", monkeypatch, scores, checkpoint_every=1)
    result, seen, saved = _selection_run(tmp_path / "killed", monkeypatch, scores, kill_at=3, checkpoint_every=1)
    assert seen["calls"] == [1, 2, 3, 3, 4]  # resumed from the step-2 checkpoint: steps 1, 2 not evaluated again
    assert result["selected_step"] == whole["selected_step"] == 2
    assert _same(saved, whole_saved) and _same(saved, seen[2])


def test_validation_selection_also_weighs_the_last_step(tmp_path, monkeypatch):
    # steps 5, eval_every 2: the candidates are steps 2, 4 and the last one, 5
    result, seen, saved = _selection_run(tmp_path, monkeypatch, {2: 0.4, 4: 0.2, 5: 0.6}, steps=5, eval_every=2)
    assert seen["calls"] == [2, 4, 5] and result["selected_step"] == 5 and _same(saved, seen[5])


def test_select_checkpoint_is_checked_and_part_of_the_cache_key():
    base = dict(method="gkd", task="summ", student="tiny", teacher="tiny", teacher_steps=3, steps=4)
    with pytest.raises(ValueError, match="select_checkpoint='best'"):
        RunConfig(**base, select_checkpoint="best")
    with pytest.raises(ValueError, match="set eval_every >= 1"):
        RunConfig(**base, select_checkpoint="validation")
    final, by_val = RunConfig(**base), RunConfig(**base, select_checkpoint="validation", eval_every=2)
    assert run_hash(final) == run_hash(RunConfig(**base, eval_every=2))  # the curve alone changes no result
    assert run_hash(by_val) != run_hash(final)
    assert run_hash(by_val) != run_hash(RunConfig(**base, select_checkpoint="validation", eval_every=1))
