"""kdlib: a runnable companion to GKD, SWITCH and AdaSwitch (knowledge distillation of LLMs).

The public API (documented with runnable examples in docs/api.md). Names load on first use, so
`import kdlib` stays light (no torch until a tensor-facing name is touched):

    rollouts      build_sampler, SAMPLER_DEFAULTS, Rollout, Sampler (the base of a rule of your own)
    divergences   per_token_loss, reduce_loss, masked_sum, forward_kl, reverse_kl, jsd, tvd,
                  skew_forward_kl, skew_reverse_kl, DIVERGENCES, sequence_loss_sum
    runs          RunConfig, load_config, run, run_hash, trained_model, load_run, export_run
    data          encode_prompts, encode_batch, load_jsonl, position_ids, check_same_tokenizer

Two namespaces are public too: `kdlib.notebook` (the notebooks' toolkit) and `kdlib.integrations.trl`
(kdlib[trl]). The `_`-prefixed modules are internal and may change between releases.
"""
from __future__ import annotations

from kdlib._lazy import lazy_attributes

__version__ = "0.1.0"

_PUBLIC = {
    "build_sampler": "kdlib._samplers", "SAMPLER_DEFAULTS": "kdlib._names", "Rollout": "kdlib._samplers",
    "Sampler": "kdlib._samplers",
    "per_token_loss": "kdlib._divergences", "reduce_loss": "kdlib._divergences", "masked_sum": "kdlib._divergences",
    "forward_kl": "kdlib._divergences", "reverse_kl": "kdlib._divergences", "jsd": "kdlib._divergences",
    "tvd": "kdlib._divergences", "skew_forward_kl": "kdlib._divergences", "skew_reverse_kl": "kdlib._divergences",
    "DIVERGENCES": "kdlib._divergences", "sequence_loss_sum": "kdlib._loss",
    "RunConfig": "kdlib._config", "load_config": "kdlib._config",
    "run": "kdlib._experiments", "trained_model": "kdlib._experiments", "load_run": "kdlib._experiments",
    "export_run": "kdlib._experiments", "run_hash": "kdlib._runcache",
    "encode_prompts": "kdlib._data", "encode_batch": "kdlib._data", "load_jsonl": "kdlib._data",
    "position_ids": "kdlib._data", "check_same_tokenizer": "kdlib._models",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


__getattr__ = lazy_attributes(__name__, _PUBLIC)


def __dir__():
    return __all__
