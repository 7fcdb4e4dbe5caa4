"""kdlib's samplers and divergences inside TRL's GKD trainer (`pip install kdlib[trl]`; tested with trl 1.16).

    from kdlib.integrations.trl import KDLibGKDTrainer
    trainer = KDLibGKDTrainer(model=student, teacher_model=teacher, args=GKDConfig(..., lmbda=1.0),
                              train_dataset=rows, processing_class=tok,
                              sampler="adaswitch", sampler_params={"k": 5.0}, divergence="fkl")
    trainer.train()

The seam. TRL's `GKDTrainer.training_step` draws, with probability `lmbda`, a student step: it calls
`self.generate_on_policy_outputs(model, inputs, generation_config)` and then trains `self.compute_loss` on
what comes back. This subclass overrides exactly those two public methods: the rollout is written by a
kdlib sampler (student, skd, switch, adaswitch; the teacher writes some tokens), and the loss is any kdlib
divergence, summed over the response tokens and divided by the step's token count as kdlib's own trainer
does. Data, optimizer, schedule, logging, checkpoints and accelerate stay TRL's. TRL's maintained
`DistillationTrainer` generates inside private methods (`_generate_single_turn`, with its vLLM and
tool-call paths), so putting a mixing sampler there would mean overriding private code; GKDTrainer exposes
the rollout and the loss as public methods.
"""
from __future__ import annotations

import torch
from transformers import GenerationConfig
from trl.experimental.gkd import GKDTrainer

from kdlib import _divergences as divergences
from kdlib._loss import Forwards, sequence_loss_sum
from kdlib._names import DIVERGENCE_PARAMS, SAMPLER_DEFAULTS
from kdlib._samplers import build_sampler, position_ids

TESTED_TRL = "1.16"


class KDLibGKDTrainer(GKDTrainer):
    """TRL's GKDTrainer with a kdlib sampler writing the on-policy rollouts and a kdlib divergence as the loss.

    `sampler`: a name of `kdlib.SAMPLER_DEFAULTS` (its params over the defaults); `divergence`: a name of
    `kdlib.DIVERGENCES` but 'ce' (its params, e.g. beta for jsd). The sampling temperature, max_new_tokens
    and lmbda are GKDConfig's (`temperature`, `max_new_tokens`, `lmbda`); `seed` seeds the sampler's
    generator. The loss temperature is 1 (TRL's GKD loss applies `temperature` to the loss as well; kdlib
    keeps the two apart: pass `loss_temperature` to change it).

    On a rollout whose sampler ran the teacher over every response position (SKD, SWITCH, AdaSwitch, the
    teacher alone), the loss reads the teacher logits the sampler kept: no second teacher forward
    (`reuse_teacher_logits=False` runs it again, at the cost of one more forward and none of (B, N, V)
    memory). After the student sampler, one teacher forward over the response positions."""

    def __init__(self, *args, sampler: str = "student", sampler_params: dict | None = None,
                 divergence: str = "jsd", divergence_params: dict | None = None, loss_temperature: float = 1.0,
                 reuse_teacher_logits: bool = True, **kwargs) -> None:
        if sampler not in SAMPLER_DEFAULTS:
            raise ValueError(f"sampler={sampler!r} is unknown; choose one of {sorted(SAMPLER_DEFAULTS)}")
        if divergence not in DIVERGENCE_PARAMS or not divergences.needs_teacher(divergence):
            raise ValueError(f"divergence={divergence!r}: choose one of "
                             f"{sorted(d for d in DIVERGENCE_PARAMS if divergences.needs_teacher(d))}")
        self.kd_sampler = build_sampler(sampler, **(sampler_params or {}))
        self.kd_divergence = divergence
        self.kd_divergence_params = {**DIVERGENCE_PARAMS[divergence], **(divergence_params or {})}
        divergences.validate_params(divergence, **self.kd_divergence_params)
        self.kd_loss_temperature = loss_temperature
        self.kd_reuse_teacher_logits = reuse_teacher_logits
        super().__init__(*args, **kwargs)
        self.kd_generator = torch.Generator().manual_seed(self.args.seed)
        self.kd_last_rollout = None  # the last Rollout: who wrote each token, switch positions, timings
        self.kd_forwards = Forwards()  # the loss's own forward calls (the sampler's are in each rollout's stats)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                      num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
        self.kd_rolled_out = False  # set when this step's sequences come from a rollout
        return super().training_step(model, inputs, num_items_in_batch)

    def generate_on_policy_outputs(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                                   generation_config: GenerationConfig,
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A kdlib rollout from the step's left-padded prompts, in TRL's (input_ids, attention_mask, labels).
        TRL also calls this with the teacher as `model` for its seq_kd steps: the teacher then writes alone."""
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        sampler, student = (self.kd_sampler, model) if model is not teacher else (build_sampler("teacher"), None)
        eos = generation_config.eos_token_id
        rollout = sampler.sample(
            student, teacher, inputs["prompts"], inputs["prompt_attention_mask"],
            max_new_tokens=generation_config.max_new_tokens,
            eos_token_id=eos if eos is not None else "model",
            pad_token_id=self.processing_class.pad_token_id, temperature=generation_config.temperature,
            generator=self.kd_generator, return_teacher_logits=self.kd_reuse_teacher_logits)
        self.kd_last_rollout, self.kd_rolled_out = rollout, True
        labels = rollout.input_ids.masked_fill(~rollout.response_mask, -100)
        return rollout.input_ids, rollout.attention_mask, labels

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor | tuple:
        """Σ over the response tokens (labels != -100) of the kdlib divergence between student and teacher
        next-token distributions, / a token count. On a rollout, the count is the rollout's response tokens:
        TRL's `num_items_in_batch` counts the dataset's reference tokens, which the rollout replaced (equal to
        kdlib's own normalisation with gradient_accumulation_steps=1; with accumulation kdlib divides by the
        whole step's count, which TRL does not know before the micro-batches are rolled out). On the dataset's
        own rows, `num_items_in_batch` as TRL gives it."""
        rollout = self.kd_last_rollout if getattr(self, "kd_rolled_out", False) else None
        if rollout is not None and not return_outputs and torch.equal(inputs["input_ids"], rollout.input_ids):
            # kdlib's own loss on the rollout: the teacher logits the sampler kept, else one teacher forward over
            # the response positions only
            self.teacher_model.eval()
            loss_sum, n = sequence_loss_sum(model, self.teacher_model, rollout, self.kd_divergence,
                                            self.kd_divergence_params, temperature=self.kd_loss_temperature,
                                            forwards=self.kd_forwards)
            return loss_sum / max(n, 1)
        kwargs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                      position_ids=position_ids(inputs["attention_mask"]), use_cache=False)
        student_outputs = model(**kwargs)
        self.teacher_model.eval()
        with torch.no_grad():
            teacher_logits = self.teacher_model(**kwargs).logits[:, :-1]
        mask = inputs["labels"][:, 1:] != -100  # (B, T-1): position t predicts token t+1
        values = divergences.per_token_loss(self.kd_divergence, student_outputs.logits[:, :-1],
                                            teacher_logits=teacher_logits, temperature=self.kd_loss_temperature,
                                            **self.kd_divergence_params)
        use_trl_count = num_items_in_batch is not None and not getattr(self, "kd_rolled_out", False)
        loss = divergences.reduce_loss(values, mask, num_items_in_batch if use_trl_count else mask.sum())
        return (loss, student_outputs) if return_outputs else loss
