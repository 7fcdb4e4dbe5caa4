"""kdlib inside TRL (kdlib.integrations.trl): one TRL training step with a kdlib sampler and divergence
equals kdlib's own step on the same rollout, in loss and gradient; the sampler's rules hold on the rollouts
TRL trains on. Skipped when trl is not installed (`pip install kdlib[trl]`)."""
import pytest
import torch
from conftest import tiny_llama

trl = pytest.importorskip("trl")

from kdlib import _divergences as D  # noqa: E402
from kdlib._config import RunConfig  # noqa: E402
from kdlib._data import SequenceBatch  # noqa: E402
from kdlib._loss import sequence_loss_sum  # noqa: E402
from kdlib._samplers import position_ids  # noqa: E402


def make_trainer(tokenizer, arith_rows, tmp_path, sampler, sampler_params, divergence, **div_params):
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig

    from kdlib.integrations.trl import KDLibGKDTrainer

    rows = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
            for r in arith_rows[:8]]
    args = GKDConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, lmbda=1.0, beta=0.5,
                     max_new_tokens=16, temperature=1.0, learning_rate=1e-3, report_to=[], use_cpu=True, seed=0,
                     save_strategy="no", logging_strategy="no", max_grad_norm=0.0, bf16=False)  # float32, as kdlib
    student, teacher = tiny_llama(tokenizer, 0), tiny_llama(tokenizer, 1, layers=2, hidden=48)
    return KDLibGKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                           processing_class=tokenizer, sampler=sampler, sampler_params=sampler_params,
                           divergence=divergence, divergence_params=div_params)


@pytest.mark.parametrize("sampler,params,divergence,div_params", [
    ("adaswitch", {"k": 1.05, "window": 2}, "jsd", {"beta": 0.5}),
    ("adaswitch", {"k": 1.05, "window": 2}, "fkl", {}),
    ("switch", {"tau0": 0.002, "decay": 0.1}, "sfkl", {"alpha": 0.1}),
    ("student", {}, "jsd", {"beta": 0.3}),
])
def test_a_trl_step_equals_kdlibs_own_step_on_the_same_rollout(tokenizer, arith_rows, tmp_path, sampler, params,
                                                               divergence, div_params):
    from transformers import TrainerCallback

    trainer = make_trainer(tokenizer, arith_rows, tmp_path, sampler, params, divergence, **div_params)
    model, seen = trainer.model, {}

    class Grads(TrainerCallback):  # the gradient TRL's optimizer is about to apply (no clipping: max_grad_norm 0)
        def on_pre_optimizer_step(self, args, state, control, **kw):
            seen["grads"] = [p.grad.detach().clone() for p in model.parameters()]
            seen["params"] = [p.detach().clone() for p in model.parameters()]

    compute_loss = trainer.compute_loss
    trainer.compute_loss = lambda *a, **k: seen.setdefault("loss", compute_loss(*a, **k))
    trainer.add_callback(Grads())
    trainer.train()  # one step of TRL's own loop; lmbda = 1: the kdlib sampler writes the rollout
    trl_loss, trl_grads = seen["loss"], seen["grads"]
    with torch.no_grad():  # back to the weights the step saw
        for p, before in zip(model.parameters(), seen["params"]):
            p.copy_(before)
    ro = trainer.kd_last_rollout
    assert ro is not None and ro.response_mask.any()
    if sampler != "student":
        assert ro.from_teacher[ro.response_mask].any()  # the teacher wrote some of the tokens TRL trained on

    model.zero_grad()
    sb = SequenceBatch(ro.input_ids, ro.attention_mask, ro.response_mask, ro.prompt_length)  # no kept logits
    loss_sum, n = sequence_loss_sum(model, trainer.teacher_model, sb, divergence, div_params)
    (loss_sum / n).backward()
    assert float(trl_loss) == pytest.approx(float(loss_sum / n), rel=1e-5, abs=1e-7)
    for g_trl, p in zip(trl_grads, model.parameters()):
        torch.testing.assert_close(g_trl, p.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("sampler,params,teacher_forwards", [
    ("adaswitch", {"k": 1.05, "window": 2}, 0),  # the sampler ran the teacher at every response position
    ("student", {}, 1),  # the teacher never ran: one forward over the response
])
def test_the_loss_reuses_the_teacher_logits_the_sampler_kept(tokenizer, arith_rows, tmp_path, sampler, params,
                                                             teacher_forwards):
    """A step never runs the teacher twice over the same positions: after a switching rollout the loss reads the
    sampler's teacher logits; `reuse_teacher_logits=False` runs the teacher again and gives the same loss."""
    losses = []
    for reuse in (True, False):
        trainer = make_trainer(tokenizer, arith_rows, tmp_path / str(reuse), sampler, params, "fkl")
        trainer.kd_reuse_teacher_logits = reuse
        compute_loss = trainer.compute_loss
        trainer.compute_loss = lambda *a, **k: losses.append(compute_loss(*a, **k)) or losses[-1]
        trainer.train()
        kept = trainer.kd_last_rollout.teacher_logits is not None
        assert trainer.kd_forwards.teacher == (teacher_forwards if reuse else 1)
        assert kept == (reuse and sampler != "student")
    assert float(losses[0]) == pytest.approx(float(losses[1]), rel=1e-5)


def test_on_the_datasets_own_rows_the_loss_is_the_divergence_over_trls_labels(tokenizer, arith_rows, tmp_path):
    """Steps without a rollout (lmbda < 1: the dataset's rows) and calls asking for the outputs take the
    full-sequence path: Σ of the divergence over the label positions / TRL's num_items_in_batch, recomputed
    here from one forward of each model."""
    trainer = make_trainer(tokenizer, arith_rows, tmp_path, "adaswitch", {"k": 1.05, "window": 2}, "jsd", beta=0.3)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.kd_rolled_out = False  # the dataset's rows, as TRL's training_step passes them when no rollout ran
    model, teacher = trainer.model, trainer.teacher_model
    with torch.no_grad():
        n_items = int((batch["labels"] != -100).sum()) + 3  # any count TRL passes is the denominator
        loss = trainer.compute_loss(model, batch, num_items_in_batch=n_items)
        kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=position_ids(batch["attention_mask"]))
        q, p = model(**kw).logits[:, :-1], teacher(**kw).logits[:, :-1]
        mask = batch["labels"][:, 1:] != -100
        expected = D.masked_sum(D.per_token_loss("jsd", q, teacher_logits=p, beta=0.3), mask) / n_items
        assert mask.any() and float(loss) == pytest.approx(float(expected), rel=1e-5)
        trainer.kd_rolled_out = True  # a rollout, but the outputs are asked for: the same path, its own count
        loss2, outputs = trainer.compute_loss(model, batch, return_outputs=True, num_items_in_batch=n_items)
        assert outputs.logits.shape[:2] == batch["input_ids"].shape
        assert float(loss2) == pytest.approx(float(expected) * n_items / int(mask.sum()), rel=1e-5)


def test_adaswitch_rule_holds_on_the_rollouts_trl_trains_on(tokenizer, arith_rows, tmp_path):
    """Recomputed from one uncached forward of both models over the final sequences: each row switches once,
    at the first step i >= window where KL(p_i || q_i) > k * mean of the previous `window` values."""
    k, window = 1.5, 2
    trainer = make_trainer(tokenizer, arith_rows, tmp_path, "adaswitch", {"k": k, "window": window}, "fkl")
    batch = next(iter(trainer.get_train_dataloader()))
    ids, att, labels = trainer.generate_on_policy_outputs(trainer.model, batch, trainer.generation_config)
    ro = trainer.kd_last_rollout
    P = ro.prompt_length
    with torch.no_grad():
        kw = dict(input_ids=ids, attention_mask=att, position_ids=position_ids(att))
        q, p = trainer.model(**kw).logits[:, P - 1:-1], trainer.teacher_model(**kw).logits[:, P - 1:-1]
    d = D.forward_kl(q, p)  # (B, N): KL(p || q) per response position
    checked = 0
    for b in range(ids.shape[0]):
        resp = ro.response_mask[b, P:]
        teacher = ro.from_teacher[b, P:][resp]
        first = int(teacher.float().argmax()) if teacher.any() else None
        if first is not None:
            assert teacher[first:].all()  # one irreversible switch
        for i in range(window, int(resp.sum()) if first is None else first + 1):
            trigger = float(d[b, i]) > k * float(d[b, i - window:i].mean())
            if abs(float(d[b, i]) - k * float(d[b, i - window:i].mean())) < 1e-4:
                continue  # too close to call in float32
            assert trigger == (i == first), (b, i, first)
            checked += 1
    assert checked > 0
    assert torch.equal(labels[ro.response_mask], ids[ro.response_mask]) and (labels[~ro.response_mask] == -100).all()


def test_trl_seq_kd_steps_are_written_by_the_teacher_alone(tokenizer, arith_rows, tmp_path):
    trainer = make_trainer(tokenizer, arith_rows, tmp_path, "adaswitch", {"k": 1.05, "window": 2}, "fkl")
    batch = next(iter(trainer.get_train_dataloader()))
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    trainer.generate_on_policy_outputs(teacher, batch, trainer.generation_config)  # TRL's seq_kd branch
    ro = trainer.kd_last_rollout
    assert ro.from_teacher[ro.response_mask].all() and ro.stats["student_forwards"] == 0


def test_unknown_names_are_refused_before_trl_builds_anything(tokenizer, arith_rows, tmp_path):
    with pytest.raises(ValueError, match="sampler='adaswich' is unknown"):
        make_trainer(tokenizer, arith_rows, tmp_path, "adaswich", {}, "fkl")
    with pytest.raises(ValueError, match="divergence='ce'"):
        make_trainer(tokenizer, arith_rows, tmp_path, "student", {}, "ce")


def test_a_kdlib_run_after_a_trl_trainer_in_the_same_process(tokenizer, arith_rows, tmp_path):
    """TRL's GKDConfig trains in bf16 by default and leaves accelerate's process-wide state so; a kdlib run
    afterwards (float32 on CPU) sets its own instead of failing."""
    from accelerate.state import AcceleratorState
    from test_train import make_trainer as kdlib_trainer

    trainer = make_trainer(tokenizer, arith_rows, tmp_path / "trl", "student", {}, "fkl")
    trainer.args.bf16 = True
    AcceleratorState._reset_state()
    from accelerate import Accelerator

    Accelerator(cpu=True, mixed_precision="bf16")  # what a bf16 TRL trainer leaves behind
    t = kdlib_trainer(RunConfig(method="sft", batch_size=4, steps=2, max_new_tokens=24), tokenizer, arith_rows,
                      tmp_path / "kdlib")
    t.fit()
    assert t.acc.mixed_precision == "no" and t.state.step == 2
