"""The paper profile: the papers' model pairs, datasets, prompts and tables, for GPU machines.

Nothing here is special-cased: a paper run is a `RunConfig` with ``profile='paper'``, hub names for
teacher and student and a dataset name for ``task``, trained by the same loop as the embedded profile.
This module holds what differs — names, schemas, prompts, lengths, hyper-parameters — and a dry run
that lists every run of every table with an estimate of its GPU-hours (`estimate_gpu_hours`).

Offline use. ``$KDLIB_MODELS`` may point to a folder of local copies named like the hub
(``$KDLIB_MODELS/Qwen/Qwen2.5-7B-Instruct``); a name found there is loaded from there, else from the hub.
A config's ``data_dir`` (or ``$KDLIB_PAPER_DATA``) may hold ``<dataset>/<split>.jsonl`` files in the
dataset's hub schema, each exactly one split's rows, or the hub's own files (``dolly/raw.jsonl``), which are
cut into splits as on the hub; either is used instead of the hub. The tests run every loader and pair this way.

Sources are cited next to each value; values the papers do not state are marked CHOSEN.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from kdlib._config import METHODS, RunConfig
from kdlib._io import check_jsonl
from kdlib._names import SAMPLER_DEFAULTS, needs_teacher

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------------
# Models and pairs.


@dataclass(frozen=True)
class Model:
    """A hub model: its name, total parameters and logit width (from its config.json)."""

    hub_id: str
    params: int
    vocab: int
    arch: str  # the transformers model class family: gpt2, opt, llama, qwen2
    chat: bool  # instruct model with a chat template


MODELS = {m.hub_id: m for m in [
    # GPT-2 (Radford et al. 2019); counts from the configs (n_embd x n_layer, tied embeddings).
    Model("openai-community/gpt2", 124_439_808, 50257, "gpt2", False),
    Model("openai-community/gpt2-medium", 354_823_168, 50257, "gpt2", False),
    Model("openai-community/gpt2-large", 774_030_080, 50257, "gpt2", False),
    Model("openai-community/gpt2-xl", 1_557_611_200, 50257, "gpt2", False),
    Model("facebook/opt-125m", 125_239_296, 50272, "opt", False),
    Model("facebook/opt-350m", 331_196_416, 50272, "opt", False),
    Model("facebook/opt-1.3b", 1_315_758_080, 50272, "opt", False),
    Model("facebook/opt-2.7b", 2_651_596_800, 50272, "opt", False),
    Model("openlm-research/open_llama_3b_v2", 3_426_473_600, 32000, "llama", False),
    Model("openlm-research/open_llama_7b_v2", 6_738_415_616, 32000, "llama", False),
    # Qwen2.5: the 7B's logits are 152064 wide, the smaller models' 151936 (same tokenizer).
    Model("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768, 151936, "qwen2", True),
    Model("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304, 151936, "qwen2", True),
    Model("Qwen/Qwen2.5-3B-Instruct", 3_085_938_688, 151936, "qwen2", True),
    Model("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512, 152064, "qwen2", True),
    Model("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248, 128256, "llama", True),
    Model("meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400, 128256, "llama", True),
]}


@dataclass(frozen=True)
class Pair:
    """A teacher and the students distilled from it, with the settings the paper used for the pair."""

    name: str
    teacher: str
    students: tuple
    paper: str
    note: str = ""
    overrides: dict = field(default_factory=dict)  # per-student RunConfig fields: {student: {...}}
    teacher_sft: dict = field(default_factory=dict)  # the teacher's own fine-tuning first (DistiLLM)
    chat_template_from: str = "check"


# The teachers' own fine-tuning: one batch for every student of a pair (so it is trained once, cached),
# 32 sequences in micro-batches of 8, gradient checkpointing (1.5B-7B models). Batch CHOSEN.
TEACHER_BATCH = {"batch_size": 32, "micro_batch_size": 8, "gradient_checkpointing": True}

PAIRS = {p.name: p for p in [
    # SWITCH (Koo et al. 2025) uses the DistiLLM protocol and its pairs; hyper-parameters are
    # DistiLLM's official scripts (jongwooko/distillm scripts/{gpt2,opt,openllama2}/distillm/*.sh):
    # 4 GPUs x 8 sequences = batch 32; AdamW, cosine decay; teacher fine-tuned on Dolly first.
    Pair("gpt2", "openai-community/gpt2-xl",
         ("openai-community/gpt2", "openai-community/gpt2-medium", "openai-community/gpt2-large"), "switch",
         note="GPT-2 XL (1.5B) -> 0.1B / 0.3B / 0.7B",
         overrides={"openai-community/gpt2": {"lr": 5e-4, "epochs": 20},
                    "openai-community/gpt2-medium": {"lr": 5e-4, "epochs": 20},
                    # 0.7B: lr 1e-4, 4 per GPU, 10 epochs (train_0.7B_1.5B.sh)
                    "openai-community/gpt2-large": {"lr": 1e-4, "epochs": 10, "batch_size": 16}},
         teacher_sft={"lr": 5e-5, "epochs": 10, **TEACHER_BATCH}),  # LMOps minillm scripts/gpt2/sft/sft_xlarge.sh
    Pair("opt", "facebook/opt-2.7b", ("facebook/opt-125m", "facebook/opt-350m", "facebook/opt-1.3b"), "switch",
         note="OPT 2.7B -> 0.1B / 0.3B / 1.3B",
         overrides={"facebook/opt-125m": {"lr": 5e-5, "epochs": 20},
                    "facebook/opt-350m": {"lr": 5e-5, "epochs": 20},
                    "facebook/opt-1.3b": {"lr": 5e-5, "epochs": 10}},
         teacher_sft={"lr": 5e-5, "epochs": 10, **TEACHER_BATCH}),  # scripts/opt/sft/sft_2.7B.sh
    Pair("openllama2", "openlm-research/open_llama_7b_v2", ("openlm-research/open_llama_3b_v2",), "switch",
         note="OpenLLaMA-2 7B -> 3B, both with LoRA (DistiLLM: r 16)",
         overrides={"openlm-research/open_llama_3b_v2": {"lr": 5e-4, "epochs": 10, "lora_rank": 16}},
         teacher_sft={"lr": 5e-4, "epochs": 20, "lora_rank": 16, **TEACHER_BATCH}),  # sft_7B_lora.sh
    # AdaSwitch (Peng et al. 2025): the pairs as the brief names them; the paper's hyper-parameters are
    # not available to us: lr 1e-5 and 3 epochs are CHOSEN (SKD's reference setup, Xu et al. 2024).
    Pair("qwen2.5", "Qwen/Qwen2.5-7B-Instruct", ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
         "adaswitch", note="Qwen2.5-7B-Instruct -> 0.5B / 1.5B-Instruct (logit widths 152064 vs 151936)",
         overrides={s: {"lr": 1e-5, "epochs": 3} for s in
                    ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct")}),
    Pair("llama3", "meta-llama/Llama-3.1-8B-Instruct", ("meta-llama/Llama-3.2-1B-Instruct",), "adaswitch",
         note="Llama-3.1-8B-Instruct -> Llama-3.2-1B-Instruct; their chat templates differ only in the "
              "default system text, so both are fed the student's template",
         overrides={"meta-llama/Llama-3.2-1B-Instruct": {"lr": 1e-5, "epochs": 3}},
         chat_template_from="student"),
    # GKD (Agarwal et al. 2024) distils T5-XL into T5-small/base/large; kdlib targets decoder-only models,
    # so the SUBSTITUTE is a decoder-only family with the same ~4-40x size ratios. lr/epochs CHOSEN.
    Pair("gkd-substitute", "Qwen/Qwen2.5-3B-Instruct", ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
         "gkd", note="SUBSTITUTE for T5-XL -> T5-small/base/large (encoder-decoders are out of scope)",
         overrides={s: {"lr": 1e-5, "epochs": 3} for s in
                    ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct")}),
]}


def model_path(name: str) -> str:
    """Where `from_pretrained` should look: ``$KDLIB_MODELS/<name>`` if that copy exists, else `name`."""
    root = os.environ.get("KDLIB_MODELS")
    if root and (Path(root) / name / "config.json").exists():
        return str(Path(root) / name)
    return name


# ------------------------------------------------------------------------------------------------------
# Datasets: hub location, schema, prompt, lengths, metric.

# The MiniLLM / DistiLLM instruction template (jongwooko/distillm tools/process_data_dolly.py), used
# for base models without a chat template. Instruct models get the bare instruction in their template.
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes "
          "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


@dataclass(frozen=True)
class Split:
    """Where one split lives on the hub: `load_dataset(hub_id, config, data_files=..., split=...)`."""

    split: str = "train"
    data_files: Optional[str] = None
    skip: int = 0  # leading rows that belong to another split (MiniLLM's validation rows)
    limit: Optional[int] = None  # rows kept after `skip` (MiniLLM's UnNI: the first 10 000)


@dataclass(frozen=True)
class Dataset:
    name: str
    hub_id: str
    config: Optional[str]
    splits: dict  # kdlib split name -> Split
    fields: tuple  # fields every row must have, non-empty (hub schema; optional ones like input may be empty)
    to_row: Callable  # (hub row, chat: bool) -> {"prompt", "response", ["answer"], ["references"]}
    metric: str  # rougeL | accuracy
    max_prompt_tokens: int
    max_new_tokens: int
    typical_tokens: tuple  # (prompt, response) tokens of a typical row, for the GPU-hour estimate
    source: str = ""


def _instruction_row(instruction: str, context: str, response, chat: bool) -> dict:
    context = (context or "").strip()
    if chat:
        prompt = instruction.strip() + (f"\n\n{context}" if context else "")
    else:
        prompt = (ALPACA_INPUT.format(instruction=instruction.strip(), input=context) if context
                  else ALPACA.format(instruction=instruction.strip()))
    refs = [r for r in (response if isinstance(response, list) else [response]) if isinstance(r, str)]
    return {"prompt": prompt, "response": refs[0] if refs else "", "references": refs}


def _minillm_row(row: dict, chat: bool) -> dict:
    """A MiniLLM-processed row: instruction / input / output (output may be a list of references)."""
    return _instruction_row(row["instruction"], row.get("input") or "", row["output"], chat)


def _dolly_hub_row(row: dict, chat: bool) -> dict:
    return _instruction_row(row["instruction"], row.get("context") or "", row["response"], chat)


def _summary_row(text_field: str, instruction: str, summary_field: str = "summary"):
    def to_row(row: dict, chat: bool) -> dict:
        body = f"{instruction}\n\n{row[text_field].strip()}"
        prompt = body if chat else f"{body}\n\nSummary:"
        return {"prompt": prompt, "response": row[summary_field].strip()}
    return to_row


_GSM_CALC = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. <<48/2=24>>


def _gsm8k_row(row: dict, chat: bool) -> dict:
    solution, _, answer = row["answer"].rpartition("####")
    response = f"{_GSM_CALC.sub('', solution).strip()}\n#### {answer.strip()}"
    prompt = row["question"].strip() if chat else f"Question: {row['question'].strip()}\nAnswer:"
    return {"prompt": prompt, "response": response, "answer": answer.strip().replace(",", "")}


def _gsm_plus_row(row: dict, chat: bool) -> dict:
    answer = str(row["answer"]).strip().replace(",", "")
    prompt = row["question"].strip() if chat else f"Question: {row['question'].strip()}\nAnswer:"
    solution = str(row.get("solution") or "").strip()
    return {"prompt": prompt, "response": f"{solution}\n#### {answer}".strip(), "answer": answer}


_MINILLM = "MiniLLM/{} (microsoft/LMOps minillm README; DistiLLM evaluates the same files)"
DATASETS = {d.name: d for d in [
    # Dolly: MiniLLM's copy; raw.jsonl minus its first 1000 rows trains, those 1000 validate
    # (jongwooko/distillm tools/process_data_dolly.py, --dev-num 1000); valid.jsonl (500 rows) is the test set.
    Dataset("dolly", "MiniLLM/dolly", None,
            {"train": Split(data_files="raw.jsonl", skip=1000), "validation": Split(data_files="raw.jsonl", limit=1000),
             "test": Split(data_files="valid.jsonl")},
            ("instruction", "output"), _minillm_row, "rougeL", 256, 256, (90, 80), _MINILLM.format("dolly")),
    Dataset("dolly-hub", "databricks/databricks-dolly-15k", None, {"train": Split()},
            ("instruction", "response"), _dolly_hub_row, "rougeL", 256, 256, (90, 80),
            "databricks/databricks-dolly-15k (the original; 15 011 rows, train only)"),
    Dataset("selfinst", "MiniLLM/self-inst", None, {"test": Split(data_files="valid.jsonl")},
            ("instruction", "output"), _minillm_row, "rougeL", 256, 256, (60, 80), _MINILLM.format("self-inst")),
    Dataset("vicuna", "MiniLLM/Vicuna", None, {"test": Split(data_files="valid.jsonl")},
            ("instruction", "output"), _minillm_row, "rougeL", 256, 256, (40, 200), _MINILLM.format("Vicuna")),
    # S-NI and UnNI: the response >= 11 tokens subsets the eval scripts use (DATA_DIR=.../11_).
    Dataset("sni", "MiniLLM/sinst", None, {"test": Split(data_files="11_/valid.jsonl")},
            ("instruction", "output"), _minillm_row, "rougeL", 256, 256, (150, 30), _MINILLM.format("sinst")),
    Dataset("unni", "MiniLLM/uinst", None, {"test": Split(data_files="11_/valid.jsonl", limit=10000)},
            ("instruction", "output"), _minillm_row, "rougeL", 256, 256, (60, 30), _MINILLM.format("uinst")),
    # DialogSum (Chen et al. 2021): prompt wording and lengths CHOSEN (AdaSwitch's are not available).
    Dataset("dialogsum", "knkarthick/dialogsum", None,
            {"train": Split("train"), "validation": Split("validation"), "test": Split("test")},
            ("dialogue", "summary"), _summary_row("dialogue", "Summarize the following dialogue."), "rougeL",
            512, 128, (200, 30), "knkarthick/dialogsum (12 460 / 500 / 1 500)"),
    Dataset("gsm8k", "openai/gsm8k", "main", {"train": Split("train"), "test": Split("test")},
            ("question", "answer"), _gsm8k_row, "accuracy", 256, 512, (70, 130),
            "openai/gsm8k, config main (7 473 / 1 319); lengths as SKD's GSM setup (256 in, 768 total)"),
    Dataset("gsm_plus", "qintongli/GSM-Plus", None, {"test": Split("test"), "testmini": Split("testmini")},
            ("question", "answer"), _gsm_plus_row, "accuracy", 256, 512, (80, 130),
            "qintongli/GSM-Plus (10 552 perturbed GSM8K test questions); rows whose answer is not a "
            "number (critical-thinking items) are left out of the accuracy"),
    Dataset("xsum", "EdinburghNLP/xsum", None,
            {"train": Split("train"), "validation": Split("validation"), "test": Split("test")},
            ("document", "summary"), _summary_row("document", "Summarize the article in one sentence."),
            "rougeL", 1024, 64, (450, 30), "EdinburghNLP/xsum (204 045 / 11 332 / 11 334); lengths CHOSEN"),
]}


def parse_split(task: str, split: str) -> tuple[str, str]:
    """An eval split of a paper run: 'test' (of the run's dataset), or 'dataset' / 'dataset:split' of
    another one (SWITCH trains on Dolly and scores on five sets)."""
    if ":" in split:
        name, s = split.split(":", 1)
        return name, s
    if split in DATASETS:
        return split, "test"
    return task, split


def check_config(cfg: RunConfig) -> None:
    """A paper-profile config's task and splits against the dataset registry, before anything loads: a
    ValueError naming the unknown dataset or split and the known ones."""
    if cfg.task not in DATASETS:
        raise ValueError(f"task={cfg.task!r} is not a paper dataset; choose one of {sorted(DATASETS)}")
    for split in ("train", *cfg.eval_splits):
        name, s = parse_split(cfg.task, split)
        if name not in DATASETS or s not in DATASETS[name].splits:
            raise ValueError(f"eval split {split!r}: dataset {name!r} has no split {s!r}; known "
                             f"datasets {sorted(DATASETS)}" + (f", its splits {sorted(DATASETS[name].splits)}"
                                                                if name in DATASETS else ""))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_rows(name: str, split: str, n: Optional[int] = None, *, chat: bool,
              data_dir: Optional[str] = None) -> list[dict]:
    """Rows of a paper dataset as kdlib rows ({prompt, response, [answer], [references]}).

    Loaded with `datasets.load_dataset` from the hub, or in the hub schema when `data_dir` (or
    ``$KDLIB_PAPER_DATA``) is set: from ``<data_dir>/<name>/<split>.jsonl`` (the split's rows, as they are),
    else from the hub's own file under ``<data_dir>/<name>/`` (``dolly/raw.jsonl``), cut as the hub's is.
    `chat`: the bare task text (the tokenizer's chat template wraps it) or, for base models, the paper's
    plain-text template. A row missing a schema field fails naming the dataset, the file or hub split, the
    row and the field."""
    from datasets import load_dataset

    if name not in DATASETS:
        raise ValueError(f"unknown paper dataset {name!r}; known: {sorted(DATASETS)}")
    spec = DATASETS[name]
    if split not in spec.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; its splits: {sorted(spec.splits)}")
    where = spec.splits[split]
    data_dir = data_dir or os.environ.get("KDLIB_PAPER_DATA") or None
    sliced = True  # the hub's own file or split: cut by where.skip and where.limit
    if data_dir:
        # <split>.jsonl holds exactly the split's rows; else the hub's own file (dolly/raw.jsonl), cut as on the hub
        path = Path(data_dir) / name / f"{split}.jsonl"
        hub_file = Path(data_dir) / name / where.data_files if where.data_files else None
        sliced = not path.exists() and hub_file is not None and hub_file.exists()
        if sliced:
            path = hub_file
        elif not path.exists():
            raise FileNotFoundError(f"paper dataset {name!r}: no local file {path}"
                                    + (f" nor the hub's {hub_file}" if hub_file else "") + f" (data_dir={data_dir})")
        origin = str(path)

        check_jsonl(path)  # not UTF-8, not JSON, empty: named with its row before datasets reads it
        ds = load_dataset("json", data_files=str(path), split="train")
        if not sliced and where.limit is not None and len(ds) > where.limit:
            # e.g. MiniLLM's raw.jsonl copied as validation.jsonl: it would also hold the training rows
            raise ValueError(f"paper dataset {name!r}: {path} has {len(ds)} rows, but the hub's {split} split "
                             f"is at most {where.limit}: a <split>.jsonl must hold that split's rows only; put "
                             f"the hub's file as it is at {hub_file} and kdlib cuts it as on the hub")
    else:
        origin = f"{spec.hub_id}" + (f" ({where.data_files})" if where.data_files else f" split {where.split}")
        kwargs = {"data_files": where.data_files, "split": "train"} if where.data_files else {"split": where.split}
        ds = load_dataset(spec.hub_id, spec.config, **kwargs)
    if sliced and (where.skip or where.limit):
        stop = len(ds) if where.limit is None else min(len(ds), where.skip + where.limit)
        ds = ds.select(range(where.skip, stop))
    rows, dropped = [], 0
    for i, raw in enumerate(ds):
        if spec.metric == "accuracy" and name == "gsm_plus" and not _is_number(
                str(raw.get("answer") or "").strip().replace(",", "")):
            dropped += 1  # critical-thinking items have no numeric answer (and may lack a solution)
            continue
        for f in spec.fields:
            value = raw.get(f)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise ValueError(f"paper dataset {name!r} ({origin}): row {i}: field {f!r} is missing or "
                                 f"empty; the row has {sorted(k for k, v in raw.items() if v is not None)}")
        row = spec.to_row(raw, chat)
        if spec.metric == "accuracy" and not _is_number(row["answer"]):
            dropped += 1
            continue
        rows.append({"id": f"{name}-{split}-{i}", **row})
        if n is not None and len(rows) >= n:
            break
    if dropped:
        log.warning("paper dataset %s/%s: %d rows without a numeric answer left out", name, split, dropped)
    return rows


# ------------------------------------------------------------------------------------------------------
# The tables: which runs each paper table needs.

SWITCH_EVAL = ("dolly", "selfinst", "vicuna", "sni", "unni")


@dataclass(frozen=True)
class Table:
    """One paper table or figure: pairs x students x datasets x rows (methods or settings)."""

    name: str
    paper: str
    title: str
    pairs: tuple
    datasets: tuple
    rows: dict  # row label -> RunConfig fields (a method and its settings)
    eval_sets: dict = field(default_factory=dict)  # dataset -> eval splits
    students: Optional[tuple] = None  # None = every student of each pair
    notebook: str = ""


def _methods(*names):
    return {m: {"method": m} for m in names}


TABLES = {t.name: t for t in [
    Table("gkd_fig1", "gkd", "GKD Fig. 1: methods x student size", ("gkd-substitute",), ("xsum", "gsm8k"),
          _methods("sft", "kd", "seqkd", "onpolicy", "gkd"), notebook="01_gkd"),
    Table("gkd_fig6", "gkd", "GKD Fig. 6: divergence x student-data fraction", ("gkd-substitute",), ("xsum",),
          {f"{label} lambda={lam}": {"method": "gkd", "divergence": d, "divergence_params": p,
                                     "student_data_fraction": lam}
           for label, d, p in (("FKL", "fkl", {}), ("RKL", "rkl", {}), ("JSD(0.1)", "jsd", {"beta": 0.1}),
                               ("JSD(0.5)", "jsd", {"beta": 0.5}), ("JSD(0.9)", "jsd", {"beta": 0.9}))
           for lam in (0.0, 0.5, 1.0)},
          students=("Qwen/Qwen2.5-0.5B-Instruct",), notebook="01_gkd"),
    Table("gkd_fig3", "gkd", "GKD Fig. 3: data efficiency (on-policy on 5 % of prompts)", ("gkd-substitute",),
          ("xsum",), {"supervised KD, 100 %": {"method": "kd"},
                      "on-policy GKD, 5 %": {"method": "gkd", "student_data_fraction": 1.0, "prompt_share": 0.05},
                      "on-policy GKD, 100 %": {"method": "gkd", "student_data_fraction": 1.0}},
          students=("Qwen/Qwen2.5-0.5B-Instruct",), notebook="01_gkd"),
    Table("switch_main", "switch", "SWITCH main table: methods x 5 test sets, per pair",
          ("gpt2", "opt", "openllama2"), ("dolly",),
          _methods("sft", "kd", "seqkd", "imitkd", "gkd", "distillm", "switch"),
          eval_sets={"dolly": SWITCH_EVAL}, notebook="02_switch"),
    Table("switch_schedule", "switch", "SWITCH ablation: threshold schedule", ("gpt2",), ("dolly",),
          {s: {"method": "switch", "sampler_params": {"schedule": s}} for s in ("exp", "linear", "constant")},
          students=("openai-community/gpt2",), eval_sets={"dolly": SWITCH_EVAL}, notebook="02_switch"),
    Table("switch_decay", "switch", "SWITCH: teacher-token fraction against the threshold decay", ("gpt2",),
          ("dolly",), {f"decay={d}": {"method": "switch", "sampler_params": {"decay": d}}
                       for d in (0.0, 0.02, 0.05, 0.1)},
          students=("openai-community/gpt2",), eval_sets={"dolly": SWITCH_EVAL}, notebook="02_switch"),
    Table("adaswitch_main", "adaswitch", "AdaSwitch main table: methods x datasets x pairs",
          ("qwen2.5", "llama3"), ("dialogsum", "gsm8k"),
          _methods("sft", "kd", "seqkd", "onpolicy", "gkd", "imitkd", "distillm", "skd", "adaswitch"),
          eval_sets={"dialogsum": ("test",), "gsm8k": ("test", "gsm_plus:test")}, notebook="03_adaswitch"),
    Table("adaswitch_k_window", "adaswitch", "AdaSwitch K x window sensitivity", ("qwen2.5",), ("gsm8k",),
          {f"K={k} L={w}": {"method": "adaswitch", "sampler_params": {"k": k, "window": w}}
           for k in (1.5, 2.0, 3.0) for w in (2, 4, 8)},
          students=("Qwen/Qwen2.5-0.5B-Instruct",), eval_sets={"gsm8k": ("test", "gsm_plus:test")},
          notebook="03_adaswitch"),
    Table("adaswitch_distance", "adaswitch", "AdaSwitch distance robustness", ("qwen2.5",), ("gsm8k",),
          {d: {"method": "adaswitch", "sampler_params": {"distance": d}} for d in ("fkl", "rkl", "jsd", "tvd")},
          students=("Qwen/Qwen2.5-0.5B-Instruct",), eval_sets={"gsm8k": ("test", "gsm_plus:test")},
          notebook="03_adaswitch"),
]}

# Training rows per dataset in the papers' protocols (for steps = epochs x rows / batch).
TRAIN_ROWS = {"dolly": 12500,  # MiniLLM: "about 12.5K examples for training"
              "dialogsum": 12460, "xsum": 204045,
              "gsm8k": 7273}  # 7 473 minus the last 200, held out for validation (GSM8K has no such split)
EPOCHS_CAP_ROWS = {"xsum": 20000}  # CHOSEN: XSum runs see 20k documents per epoch, not all 204k
# Rows scored per evaluation set: all of Dolly (500), SelfInst, Vicuna, DialogSum (1500) and GSM8K (1319);
# the first 2000 of S-NI, UnNI, GSM-Plus (10 552) and XSum. CHOSEN to bound decoding time.
N_EVAL = 2000


@dataclass(frozen=True)
class PaperRun:
    table: str
    row: str
    pair: str
    dataset: str
    config: RunConfig
    teacher_sft_steps: int


def table_runs(name: str, seeds=(0,)) -> list[PaperRun]:
    """Every run of one paper table, as RunConfigs of the paper profile."""
    t = TABLES[name]
    out = []
    for pair_name in t.pairs:
        pair = PAIRS[pair_name]
        for student in (t.students or pair.students):
            over = dict(pair.overrides.get(student, {}))
            epochs = over.pop("epochs", 3)
            for dataset in t.datasets:
                spec = DATASETS[dataset]
                rows = EPOCHS_CAP_ROWS.get(dataset, TRAIN_ROWS[dataset])
                batch = over.get("batch_size", 32)
                steps = max(1, math.ceil(epochs * rows / batch))
                teacher_steps, tsft = 0, {}
                if pair.teacher_sft:
                    tsft = dict(pair.teacher_sft)
                    teacher_steps = math.ceil(tsft.pop("epochs") * rows / tsft["batch_size"])
                for label, fields in t.rows.items():
                    fields = dict(fields)
                    share = fields.pop("prompt_share", None)
                    if fields.get("method") == "distillm":  # its schedule needs validation scores
                        fields["eval_every"] = max(1, steps // 20)
                    sampler = fields.get("sampler") or METHODS[fields["method"]][1]
                    if sampler in PAPER_SAMPLER_PARAMS:  # the paper scale's values, not the embedded calibration
                        fields["sampler_params"] = {**PAPER_SAMPLER_PARAMS[sampler], **fields.get("sampler_params", {})}
                    if t.paper == "switch" and fields.get("method") == "switch":
                        # CHOSEN: the embedded defaults scaled to Dolly's ~10x longer responses (the
                        # threshold would otherwise be ~0 after 100 tokens); re-tune with 02_switch.
                        sp = dict(fields.get("sampler_params", {}))
                        sp["decay"] = sp.get("decay", 0.05) / 10
                        fields["sampler_params"] = sp
                    cfg = RunConfig(profile="paper", teacher=pair.teacher, student=student, task=dataset,
                                    n_train=rows, n_prompts=math.ceil(rows * share) if share else 0,
                                    steps=steps, max_new_tokens=spec.max_new_tokens,
                                    eval_splits=tuple(t.eval_sets.get(dataset, ("test",))), n_eval=N_EVAL,
                                    gradient_checkpointing=MODELS[student].params > 1e9,
                                    warmup_steps=0, weight_decay=0.01, checkpoint_every=500,
                                    **({} if "max_grad_norm" in {**over, **fields} else {"max_grad_norm": 1.0}),
                                    teacher_steps=teacher_steps, teacher_sft=tsft,
                                    chat_template_from=pair.chat_template_from,
                                    micro_batch_size=min(8, batch), **over, **fields)
                    if cfg.method == "sft":  # the SFT baseline is the warm-up itself; no teacher
                        cfg = cfg.replace(student_init="pretrained", teacher_steps=0, teacher_sft={})
                    for seed in seeds:
                        out.append(PaperRun(name, label, pair_name, dataset, cfg.replace(seed=seed),
                                            teacher_steps))
    return out


# ------------------------------------------------------------------------------------------------------
# GPU-hour estimate.

A100_BF16_FLOPS = 312e12  # peak dense bf16 FLOP/s of one A100
# The samplers' values at the papers' scale (vocabularies of 32k-256k), not the embedded calibration
# (kdlib.SAMPLER_DEFAULTS, chosen for a 197-word vocabulary): SKD's reference top_k 25; SWITCH's and
# AdaSwitch's are not in the papers' text and stay CHOSEN (the values first chosen for kdlib; re-tune them
# with notebooks 02 and 03 on a GPU). Gradient clipping stays at 1.0, the usual value for LLM fine-tuning.
# SKD's block 5: the reference code drafts 5 student tokens per teacher pass (the same rule; not timed at GPU
# scale here).
PAPER_SAMPLER_PARAMS = {"skd": {"top_k": 25, "block": 5}, "switch": {"tau0": 0.05, "decay": 0.05},
                        "adaswitch": {"k": 2.0, "window": 4}}

MFU_TRAIN = 0.40  # CHOSEN: achieved share of peak for forward/backward over full sequences
MFU_DECODE = 0.05  # CHOSEN: token-by-token generation is memory bound (small batches, KV cache reads)


def estimate_gpu_hours(cfg) -> float:
    """A100-hours of one distillation run, by a documented formula (not a measurement):

        T  = steps x batch x (prompt + response) tokens         trained tokens (typical lengths)
        G  = steps x batch x response x s                        generated tokens, s = share of sampled steps
        train   = 6 N_s T  +  2 N_t T'   (teacher forward when the loss needs teacher logits; T' leaves
                                          out sampled steps whose sampler ran the teacher: logits reused)
        decode  = 2 N_s G  (+ 2 N_t G when the teacher runs in the sampler)
                  + 2 N_t x n_train x response (SeqKD: teacher outputs once) + 2 N_s x n_eval x response x sets
        hours   = train / (peak x MFU_TRAIN) + decode / (peak x MFU_DECODE), / 3600

    N = parameters (LoRA still runs full forward and backward passes, so it is charged the same).
    s = 1 for sampler sources, λ for GKD's mix, 0.5 for DistiLLM's adaptive schedule (a CHOSEN average).
    The student's SFT warm-up and the teacher's fine-tuning are separate runs: `estimate_sft_hours`."""
    spec = DATASETS[cfg.task]
    ns, nt = MODELS[cfg.student].params, MODELS[cfg.teacher].params
    p_tok, r_tok = spec.typical_tokens
    r = cfg.resolved
    share = {"data": 0.0, "seqkd": 0.0, "sampler": 1.0, "mix": cfg.student_data_fraction,
             "distillm": 0.5}[r["source"]]
    teacher_in_sampler = r["sampler"] not in (None, "student")
    trained = cfg.steps * cfg.batch_size * (p_tok + r_tok)
    generated = cfg.steps * cfg.batch_size * r_tok * share
    train = 6 * ns * trained
    if needs_teacher(r["divergence"]):
        train += 2 * nt * trained * (1 - share if teacher_in_sampler else 1)
    decode = 2 * ns * generated + (2 * nt * generated if teacher_in_sampler else 0)
    decode += 2 * ns * cfg.n_eval * r_tok * len(cfg.eval_splits)
    if r["source"] == "seqkd":
        decode += 2 * nt * cfg.n_train * r_tok
    return (train / (A100_BF16_FLOPS * MFU_TRAIN) + decode / (A100_BF16_FLOPS * MFU_DECODE)) / 3600


def estimate_sft_hours(params: int, steps: int, batch_size: int, dataset: str) -> float:
    """A100-hours of a supervised fine-tuning run: 6 N x steps x batch x tokens at MFU_TRAIN."""
    p_tok, r_tok = DATASETS[dataset].typical_tokens
    return 6 * params * steps * batch_size * (p_tok + r_tok) / (A100_BF16_FLOPS * MFU_TRAIN) / 3600


def dry_run(tables=None, seeds=(0, 1, 2), out=print) -> dict:
    """Print every run of every table (pair, dataset, row, steps, A100-hours over the seeds) and the
    fine-tuning runs they start from (teacher fine-tuning per pair and dataset, the students' SFT
    warm-up per seed), each counted once per table. Returns A100-hours per table. Nothing is loaded."""
    totals = {}
    w = 74
    for name in tables or TABLES:
        t = TABLES[name]
        runs = table_runs(name, seeds)
        out(f"\n## {name}: {t.title}  (notebook {t.notebook}; {len(runs)} runs over seeds {list(seeds)})")
        out(f"{'row':<24} {'teacher -> student':<{w}} {'dataset':<10} {'steps':>6} {'A100-h':>7}")
        hours, inits = 0.0, {}
        for run in runs:
            c = run.config
            if run.teacher_sft_steps:
                inits[("teacher fine-tuning", c.teacher, c.teacher, c.task, 0)] = estimate_sft_hours(
                    MODELS[c.teacher].params, c.teacher_steps, c.teacher_sft.get("batch_size", c.batch_size),
                    c.task)
            if c.student_init == "sft":
                inits[("student SFT warm-up", c.teacher, c.student, c.task, c.seed)] = estimate_sft_hours(
                    MODELS[c.student].params, c.steps, c.batch_size, c.task)
            h = estimate_gpu_hours(c)
            hours += h
            if c.seed == seeds[0]:
                out(f"{run.row[:24]:<24} {c.teacher + ' -> ' + c.student:<{w}} {c.task:<10} {c.steps:>6} "
                    f"{h * len(seeds):>7.1f}")
        for (label, teacher, student, task, _), h in sorted(inits.items()):
            if _ == seeds[0] or label == "teacher fine-tuning":
                n = 1 if label == "teacher fine-tuning" else len(seeds)
                out(f"{label:<24} {teacher + ' -> ' + student:<{w}} {task:<10} {'':>6} {h * n:>7.1f}")
        hours += sum(inits.values())
        for dataset in t.datasets:  # what each run is scored on: nothing in the plan is left implicit
            sets = [f"{ds}:{sp}" for ds, sp in (parse_split(dataset, e) for e in t.eval_sets.get(dataset, ("test",)))]
            sources = "; ".join(dict.fromkeys(DATASETS[s.split(':')[0]].source for s in sets))
            out(f"evaluation of the {dataset} runs: {', '.join(sets)}, the first {N_EVAL} rows of each "
                f"(N_EVAL), greedy and sampled at T = 1 on the first; data: {sources}")
        out(f"total {name}: {hours:.0f} A100-hours")
        totals[name] = hours
    out(f"\nall tables: {sum(totals.values()):.0f} A100-hours. An estimate from model sizes and token counts "
        f"(kdlib._paper.estimate_gpu_hours: MFU {MFU_TRAIN} training, {MFU_DECODE} decoding), not a measurement.")
    return totals


# ------------------------------------------------------------------------------------------------------
# Config files: one YAML per table row under configs/paper/<table>/, written from the tables above.

# Where each method's settings come from (kdlib._config.METHODS holds the presets themselves).
METHOD_SOURCES = {
    "sft": "SFT on the dataset's responses (cross-entropy).",
    "kd": "supervised KD: forward KL on the dataset's responses (docs/methods.md §1).",
    "seqkd": "SeqKD (Kim & Rush 2016): cross-entropy on the teacher's greedy outputs, generated once.",
    "imitkd": "ImitKD (Lin et al. 2020): forward KL on student samples.",
    "onpolicy": "on-policy KD: forward KL on student samples (AdaSwitch's baseline).",
    "gkd": "GKD (Agarwal et al. 2024): JSD(beta) on a lambda mix of student samples and data; beta 0.5 and "
           "lambda 0.5 are TRL's GKDConfig defaults, the paper's per-task values are not available to us.",
    "distillm": "DistiLLM (Ko et al. 2024): skew KL, alpha 0.1 (distillm arguments.py --skew-alpha); "
                "adaptive student-output probability from 0, +0.1 when the validation loss rises by >= 0.1 "
                "(the authors' scripts: --init-threshold 0.0 --loss-eps 0.1); replay buffer of 1000.",
    "skd": "SKD (Xu et al. 2024): top_k 25 (google-research speculative_kd config/kd_train.yaml).",
    "switch": "SWITCH (Koo et al. 2025): tau0 and decay are CHOSEN (not in the paper text; a summary "
              "reports ~53 % teacher tokens); skew FKL alpha 0.1 is inferred from its DistiLLM protocol.",
    "adaswitch": "AdaSwitch (Peng et al. 2025): k and window are CHOSEN (not in the paper text); distance "
                 "KL(p||q) as the paper.",
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def write_configs(root) -> list[Path]:
    """configs/paper/<table>/[<dataset>/]<row>.yaml: the row's run for the table's first pair and student
    (one file per dataset when the table has several); the dry run and `reproduce --profile paper`
    expand the table's other pairs and students."""
    import yaml

    root, written = Path(root), []
    for name, t in TABLES.items():
        pair = PAIRS[t.pairs[0]]
        runs = table_runs(name)
        for label, dataset in ((lbl, ds) for ds in t.datasets for lbl in t.rows):
            r = next(x for x in runs if x.row == label and x.dataset == dataset)
            defaults = RunConfig().to_dict()
            d = {k: v for k, v in r.config.to_dict().items() if k in _CONFIG_KEYS or v != defaults[k]}
            d.pop("seed", None)
            sampler = r.config.resolved["sampler"]
            if sampler and SAMPLER_DEFAULTS[sampler]:  # spell out the sampler's parameters (some CHOSEN)
                d["sampler_params"] = {**SAMPLER_DEFAULTS[sampler], **r.config.sampler_params}
            header = [f"# {t.title} — row {label!r} ({t.paper}; notebook {t.notebook})",
                      "# generated by `python -m kdlib._paper --write-configs configs/paper`; edit kdlib/_paper.py",
                      f"# pair {pair.name}: {pair.note}",
                      f"# pairs in this table: {', '.join(t.pairs)}; datasets: {', '.join(t.datasets)}",
                      f"# method: {METHOD_SOURCES.get(d.get('method', ''), '')}",
                      f"# data: {DATASETS[r.dataset].source}",
                      f"# steps = ceil(epochs x {EPOCHS_CAP_ROWS.get(r.dataset, TRAIN_ROWS[r.dataset])} rows / batch); "
                      f"lr, epochs, batch: {_pair_source(pair)}"]
            path = root / name / (dataset if len(t.datasets) > 1 else "") / f"{_slug(label)}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(header) + "\n" + yaml.safe_dump(d, sort_keys=False))
            written.append(path)
    return written


def _pair_source(pair: Pair) -> str:
    return {"switch": "DistiLLM's official scripts (jongwooko/distillm scripts/*/distillm/), the protocol "
                      "SWITCH follows; teacher fine-tuning from LMOps minillm scripts/*/sft/",
            "adaswitch": "CHOSEN (AdaSwitch's are not available to us): SKD's lr 1e-5, 3 epochs, batch 32",
            "gkd": "CHOSEN for the decoder-only substitute: lr 1e-5, 3 epochs, batch 32"}[pair.paper]


_CONFIG_KEYS = ("method", "profile", "task", "teacher", "student", "steps", "lr", "batch_size")


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="The paper profile: dry run and config files.")
    ap.add_argument("--dry-run", action="store_true", help="list every table's runs with A100-hour estimates")
    ap.add_argument("--tables", nargs="*", help=f"tables to list (default all: {', '.join(TABLES)})")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per run (default 3)")
    ap.add_argument("--write-configs", metavar="DIR", help="write one YAML per table row under DIR")
    args = ap.parse_args(argv)
    if args.write_configs:
        for p in write_configs(args.write_configs):
            print(p)
    if args.dry_run or not args.write_configs:
        unknown = sorted(set(args.tables or ()) - set(TABLES))
        if unknown:
            ap.error(f"unknown table(s) {unknown}; known: {list(TABLES)}")
        dry_run(args.tables, seeds=tuple(range(args.seeds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
