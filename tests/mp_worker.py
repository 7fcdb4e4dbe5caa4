"""Run by tests/test_multiprocess.py under `torchrun --nproc_per_node 2` (and once in-process):
a tiny KD run whose final weights and losses are saved by rank 0."""
import sys

import torch


def main(out_path: str, steps: int = 4):
    from accelerate import Accelerator

    from kdlib._config import RunConfig
    from kdlib._models import ModelSize, build_llama, build_word_tokenizer
    from kdlib._sources import build_source
    from kdlib._tasks.embedded import TaskSpec, generate_rows, vocabulary
    from kdlib._train import Trainer

    acc = Accelerator(cpu=True)
    tok = build_word_tokenizer(vocabulary())
    rows = generate_rows(TaskSpec("arith", n_train=64, max_steps=4, seed=5), "train")
    student = build_llama(ModelSize(1, 32, 2, 64), tok, seed=0)
    teacher = build_llama(ModelSize(2, 48, 2, 96), tok, seed=1).eval()
    cfg = RunConfig(method="kd", batch_size=8, steps=steps + 1, max_new_tokens=32, lr=1e-3, warmup_steps=2)
    trainer = Trainer(cfg, student=student, teacher=teacher, tokenizer=tok,
                      source=build_source("data", rows, cfg.seed, rank=acc.process_index),
                      sampler=None, run_dir=out_path + ".run", accelerator=acc, progress=False)
    # the first step's gradients (after DDP's all-reduce), then the whole run's losses
    batches, _, _ = trainer.draw_step()
    trainer.accumulate_gradients(batches)
    model = acc.unwrap_model(trainer.student)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    trainer.opt.zero_grad()
    trainer.source.picker.load_state_dict({**trainer.source.picker.state_dict(), "pos": 0})
    trainer.fit()
    from kdlib import _checkpoints as checkpoints

    saved = checkpoints.save(trainer)  # every rank takes part (accelerate gathers the weights); rank 0 writes
    if acc.is_main_process:
        ckpt = torch.load(saved, weights_only=False)["student"]
        weights = acc.unwrap_model(trainer.student).state_dict()
        assert set(ckpt) == set(weights) and all(torch.equal(ckpt[k], weights[k]) for k in weights)
        torch.save({"grads": grads, "world": acc.num_processes,
                    "losses": [m["loss"] for m in trainer.state.metrics],
                    "lrs": [m["lr"] for m in trainer.state.metrics]}, out_path)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
