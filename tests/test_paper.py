"""The paper profile offline: every dataset loader on rows in its hub schema, every pair loaded by name
from local copies of tiny random models of each architecture, the dry run, the config files, and one
paper config end to end on a tiny stand-in pair."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from kdlib import _paper as paper
from kdlib._config import RunConfig, load_config
from kdlib._models import CHAT_TEMPLATE, build_word_tokenizer
from kdlib._runcache import run_hash

ROOT = Path(__file__).resolve().parent.parent

# A few rows per dataset, in the schema the hub serves (field names as on the hub).
MINILLM_ROWS = [
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue and yellow."},
    {"instruction": "Summarize the text.", "input": "The cat sat on the mat all day.",
     "output": ["A cat sat on a mat.", "The cat stayed on the mat."]},
]
FIXTURES = {
    ("dolly", "train"): MINILLM_ROWS, ("dolly", "validation"): MINILLM_ROWS, ("dolly", "test"): MINILLM_ROWS,
    ("dolly-hub", "train"): [{"instruction": "Who wrote Hamlet?", "context": "", "response": "Shakespeare.",
                              "category": "open_qa"}],
    ("selfinst", "test"): MINILLM_ROWS, ("vicuna", "test"): MINILLM_ROWS[:1], ("sni", "test"): MINILLM_ROWS,
    ("unni", "test"): MINILLM_ROWS,
    ("dialogsum", "train"): [{"id": "train_0", "dialogue": "#Person1#: Hi. #Person2#: Hello.",
                              "summary": "Two people greet.", "topic": "greeting"}] * 3,
    ("dialogsum", "test"): [{"id": "test_0", "dialogue": "#Person1#: Bye. #Person2#: See you.",
                             "summary": "They say goodbye.", "topic": "farewell"}] * 2,
    ("gsm8k", "train"): [{"question": "Tom has 3 apples and buys 4 more. How many?",
                          "answer": "He has 3+4=<<3+4=7>>7 apples.\n#### 7"}] * 3,
    ("gsm8k", "test"): [{"question": "A box holds 1,200 pens; 200 are sold. How many are left?",
                         "answer": "1200-200=<<1200-200=1000>>1000\n#### 1,000"}] * 2,
    ("gsm_plus", "test"): [
        {"question": "Tom has 3 apples and buys 5 more. How many?", "solution": "3+5=8", "answer": "8",
         "perturbation_type": "numerical substitution", "seed_question": "", "seed_solution": "",
         "seed_answer": "7"},
        {"question": "Tom has apples and buys 5 more. How many?", "solution": "Not enough information.",
         "answer": "None", "perturbation_type": "critical thinking", "seed_question": "",
         "seed_solution": "", "seed_answer": "7"}],
    ("xsum", "test"): [{"document": "The council approved the new park on Monday after a long debate.",
                        "summary": "A new park was approved.", "id": "1"}],
}


def write_fixtures(root: Path, fixtures=FIXTURES) -> Path:
    for (name, split), rows in fixtures.items():
        path = root / name / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("paper-data"))


# ---- datasets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,split", sorted(FIXTURES))
def test_every_dataset_split_loads_from_its_hub_schema(data_dir, name, split):
    for chat in (True, False):
        rows = paper.load_rows(name, split, chat=chat, data_dir=str(data_dir))
        assert rows, (name, split)
        for row in rows:
            assert row["prompt"].strip() and row["response"].strip()
        if paper.DATASETS[name].metric == "accuracy":  # every kept row has a numeric answer
            assert all(isinstance(float(r["answer"]), float) for r in rows)


def test_instruction_prompts_follow_the_template_for_base_models_only(data_dir):
    base = paper.load_rows("dolly", "test", chat=False, data_dir=str(data_dir))
    chat = paper.load_rows("dolly", "test", chat=True, data_dir=str(data_dir))
    assert base[0]["prompt"].startswith("Below is an instruction") and base[0]["prompt"].endswith("### Response:\n")
    assert "### Input:\nThe cat sat" in base[1]["prompt"]  # the input field goes to the Input section
    assert chat[0]["prompt"] == "Name three primary colors."
    assert "The cat sat on the mat" in chat[1]["prompt"] and "###" not in chat[1]["prompt"]
    assert chat[1]["references"] == MINILLM_ROWS[1]["output"]  # several references are all kept


def test_gsm_rows_strip_calculator_notes_and_parse_answers(data_dir):
    rows = paper.load_rows("gsm8k", "test", chat=True, data_dir=str(data_dir))
    assert "<<" not in rows[0]["response"] and rows[0]["response"].endswith("#### 1,000")
    assert rows[0]["answer"] == "1000"
    plus = paper.load_rows("gsm_plus", "test", chat=True, data_dir=str(data_dir))
    assert [r["answer"] for r in plus] == ["8"]  # the critical-thinking row ("None") is left out


def test_multiple_references_score_the_best_match():
    from kdlib._evaluate import score_rows

    row = {"prompt": "p", "response": "a cat sat on a mat", "references": ["a cat sat on a mat", "the dog ran"]}
    assert score_rows([row], ["the dog ran"], "rougeL")[0]["score"] == pytest.approx(1.0)


def test_malformed_row_names_dataset_file_row_and_field(tmp_path):
    bad = {("dialogsum", "test"): [{"id": "a", "dialogue": "x", "summary": "y"}, {"id": "b", "dialogue": "x"}]}
    root = write_fixtures(tmp_path, bad)
    with pytest.raises(ValueError, match=r"dialogsum.*test\.jsonl.*row 1: field 'summary'"):
        paper.load_rows("dialogsum", "test", chat=True, data_dir=str(root))
    with pytest.raises(ValueError, match="no split 'dev'"):
        paper.load_rows("dialogsum", "dev", chat=True, data_dir=str(root))
    with pytest.raises(FileNotFoundError, match="xsum"):
        paper.load_rows("xsum", "train", chat=True, data_dir=str(root))


def test_a_local_copy_of_a_hub_file_is_split_as_on_the_hub(tmp_path, monkeypatch):
    """MiniLLM's Dolly train and validation splits are two slices of one hub file (raw.jsonl[1000:] and [:1000]).
    Its local copy under data_dir must be cut the same way, and that file copied under a split's name (which
    would put the validation rows in training) is refused, not read as the split."""
    raw = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(1200)]
    (tmp_path / "dolly").mkdir()
    (tmp_path / "dolly" / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    local = {s: paper.load_rows("dolly", s, chat=True, data_dir=str(tmp_path)) for s in ("train", "validation")}

    class Hub(list):  # datasets.load_dataset's answer for MiniLLM/dolly raw.jsonl
        def select(self, idx):
            return Hub(self[i] for i in idx)

    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: Hub(raw))
    hub = {s: paper.load_rows("dolly", s, chat=True) for s in ("train", "validation")}
    assert local == hub and [len(local["train"]), len(local["validation"])] == [200, 1000]
    assert local["train"][0]["prompt"] == "q1000" and local["validation"][-1]["prompt"] == "q999"
    monkeypatch.undo()
    (tmp_path / "dolly" / "validation.jsonl").write_text((tmp_path / "dolly" / "raw.jsonl").read_text())
    with pytest.raises(ValueError, match=r"validation\.jsonl has 1200 rows, but the hub's validation split is "
                                         r"at most 1000"):
        paper.load_rows("dolly", "validation", chat=True, data_dir=str(tmp_path))


def test_hub_loading_asks_for_the_registered_names(monkeypatch):
    """Without a data_dir the loader calls datasets.load_dataset with the hub id, config and files of the
    registry, and applies MiniLLM's row ranges (first 1000 raw rows validate, the rest train)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        rows = [{"instruction": f"task {i}", "input": "", "output": f"answer {i}"} for i in range(1005)]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("KDLIB_PAPER_DATA", raising=False)
    train = paper.load_rows("dolly", "train", chat=True)
    assert calls[-1] == ("MiniLLM/dolly", None, {"data_files": "raw.jsonl", "split": "train"})
    assert [r["response"] for r in train] == [f"answer {i}" for i in range(1000, 1005)]
    assert len(paper.load_rows("dolly", "validation", chat=True)) == 1000
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: calls.append((path, name, kw))
                        or datasets.Dataset.from_list([{"question": "q", "answer": "x\n#### 3"}]))
    paper.load_rows("gsm8k", "test", chat=True)
    assert calls[-1] == ("openai/gsm8k", "main", {"split": "test"})


# ---- pairs: tiny random models of each architecture, saved like the hub and loaded by name ----------

WORDS = "the a cat sat on mat red blue yellow tom has apples how many # 1 2 3 4 5 6 7 8 9 0".split()


def _tiny(arch: str, vocab: int, tok):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(vocab_size=vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  bos_token_id=tok.eos_token_id)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=512, **common))
    if arch == "opt":
        return OPTForCausalLM(OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                                        word_embed_proj_dim=32, max_position_embeddings=512, **common))
    shape = dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=512, **common)
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape))
    return LlamaForCausalLM(LlamaConfig(**shape))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """$KDLIB_MODELS with a tiny random model under every registered hub name, in its own architecture;
    each Qwen2.5-7B stand-in is 16 logits wider than the small Qwens, as the real ones (152064 vs 151936);
    the Llama 3.1 and 3.2 stand-ins differ in their chat templates, as the real ones do."""
    root = tmp_path_factory.mktemp("models")
    for hub_id, m in paper.MODELS.items():
        tok = build_word_tokenizer(WORDS)
        tok.chat_template = CHAT_TEMPLATE if m.chat else None
        if hub_id == "meta-llama/Llama-3.1-8B-Instruct":
            tok.chat_template = "{# llama 3.1 #}" + CHAT_TEMPLATE
        vocab = len(tok) + (16 if hub_id == "Qwen/Qwen2.5-7B-Instruct" else 0)
        torch.manual_seed(0)
        _tiny(m.arch, vocab, tok).save_pretrained(root / hub_id)
        tok.save_pretrained(root / hub_id)
    return root


def test_every_pair_loads_by_name_with_its_architecture(model_dir, monkeypatch):
    from kdlib._models import load_model
    from kdlib._rows import named_path, resolve_tokenizer

    monkeypatch.setenv("KDLIB_MODELS", str(model_dir))
    classes = {"gpt2": "GPT2LMHeadModel", "opt": "OPTForCausalLM", "llama": "LlamaForCausalLM",
               "qwen2": "Qwen2ForCausalLM"}
    for pair in paper.PAIRS.values():
        for name in (pair.teacher, *pair.students):
            path = named_path(name)
            assert path == str(model_dir / name)
            assert type(load_model(path)).__name__ == classes[paper.MODELS[name].arch]
        for student in pair.students:
            cfg = RunConfig(profile="paper", task="gsm8k", teacher=pair.teacher, student=student,
                            student_init="pretrained", chat_template_from=pair.chat_template_from)
            tok = resolve_tokenizer(cfg)
            assert bool(tok.chat_template) == paper.MODELS[student].chat


def test_differing_chat_templates_are_refused_unless_one_is_chosen(model_dir, monkeypatch):
    from kdlib._rows import resolve_tokenizer

    monkeypatch.setenv("KDLIB_MODELS", str(model_dir))
    pair = paper.PAIRS["llama3"]
    cfg = RunConfig(profile="paper", task="gsm8k", teacher=pair.teacher, student=pair.students[0],
                    student_init="pretrained")
    with pytest.raises(ValueError, match="chat templates differ"):
        resolve_tokenizer(cfg)
    assert resolve_tokenizer(cfg.replace(chat_template_from="teacher")).chat_template.startswith("{# llama 3.1")
    assert resolve_tokenizer(cfg.replace(chat_template_from="student")).chat_template == CHAT_TEMPLATE


def test_unknown_hub_name_is_left_to_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLIB_MODELS", str(tmp_path))
    assert paper.model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


# ---- tables, estimates, config files ------------------------------------------------------------------

def test_dry_run_lists_every_table_with_positive_hours():
    lines = []
    totals = paper.dry_run(seeds=(0, 1, 2), out=lines.append)
    assert set(totals) == set(paper.TABLES) and all(h > 0 for h in totals.values())
    text = "\n".join(lines)
    for t in paper.TABLES.values():
        for pair in t.pairs:
            assert paper.PAIRS[pair].teacher in text
    assert "teacher fine-tuning" in text and "student SFT warm-up" in text
    # every evaluation set a table scores is named in the plan, GSM-Plus (AdaSwitch's tables) among them
    assert "evaluation of the gsm8k runs: gsm8k:test, gsm_plus:test" in text
    for t in paper.TABLES.values():
        for dataset in t.datasets:
            assert f"evaluation of the {dataset} runs:" in text


def test_estimate_grows_with_model_size_and_sampling():
    runs = {(r.config.student, r.row): r.config for r in paper.table_runs("adaswitch_main") if r.dataset == "gsm8k"}
    small, big = "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"
    est = paper.estimate_gpu_hours
    assert est(runs[(big, "kd")]) > est(runs[(small, "kd")])
    assert est(runs[(small, "onpolicy")]) > est(runs[(small, "kd")])  # sampling costs decoding time
    assert est(runs[(small, "adaswitch")]) > est(runs[(small, "onpolicy")])  # and the teacher decodes too


def test_config_files_are_current_valid_and_cite_sources(tmp_path):
    written = paper.write_configs(tmp_path)
    committed = sorted((ROOT / "configs" / "paper").rglob("*.yaml"))
    assert [p.relative_to(tmp_path) for p in sorted(written)] == [p.relative_to(ROOT / "configs" / "paper")
                                                                   for p in committed], \
        "configs/paper is stale: run `python -m kdlib._paper --write-configs configs/paper`"
    for new, old in zip(sorted(written), committed):
        assert new.read_text() == old.read_text(), f"{old} is stale"
        cfg = load_config(old)
        assert cfg.profile == "paper" and cfg.task in paper.DATASETS
        text = old.read_text()
        method_line = next(line for line in text.splitlines() if line.startswith("# method:"))
        if cfg.method in ("switch", "adaswitch"):  # their thresholds are not in the papers
            assert "CHOSEN" in method_line and "sampler_params:" in text
        assert "# data:" in text and "lr, epochs, batch:" in text


def test_switch_and_adaswitch_parameters_are_marked_chosen():
    assert "CHOSEN" in paper.METHOD_SOURCES["switch"] and "CHOSEN" in paper.METHOD_SOURCES["adaswitch"]


# ---- one paper config end to end on a tiny stand-in pair -----------------------------------------------

def test_paper_config_runs_end_to_end_on_a_tiny_stand_in_pair(model_dir, data_dir, tmp_path, monkeypatch):
    """configs/paper/adaswitch_main/gsm8k/adaswitch.yaml with the Qwen2.5 names resolved to tiny local copies
    (the 7B stand-in has wider logits, as the real one): SFT warm-up, AdaSwitch rollouts, the loss on the
    shared vocabulary prefix with one warning, evaluation on GSM8K and GSM-Plus."""
    from kdlib._experiments import run

    monkeypatch.setenv("KDLIB_MODELS", str(model_dir))
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    cfg = load_config(ROOT / "configs" / "paper" / "adaswitch_main" / "gsm8k" / "adaswitch.yaml",
                      [f"data_dir={data_dir}", "steps=2", "batch_size=2", "micro_batch_size=2", "n_train=3",
                       "n_eval=2", "dtype=float32", "checkpoint_every=0"])
    assert cfg.teacher == "Qwen/Qwen2.5-7B-Instruct" and cfg.task == "gsm8k" and cfg.max_new_tokens == 512
    cfg = cfg.replace(max_new_tokens=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(cfg, progress=False)
    assert any("shared id prefix" in str(w.message) for w in caught)
    assert set(result) >= {"score_test", "score_gsm_plus", "teacher_forwards", "provenance"}
    assert result["teacher_forwards"] > 0 and 0 <= result["score_gsm_plus"] <= 1
    assert (Path(tmp_path / "cache" / "runs" / run_hash(cfg) / "predictions-gsm_plus.jsonl")).exists()


def test_each_gpu_rank_loads_onto_its_own_device(monkeypatch):
    """Under accelerate launch / torchrun a bare torch.device("cuda") is cuda:0 in every rank until accelerate's
    PartialState sets the rank's device, and the first model of a run loads before the Trainer makes one: eight
    ranks put eight teachers on GPU 0. The device a run resolves (its first line, before any load) is the
    state's. A stand-in state for rank 3 shows it without a GPU; on CPU nothing changes and no state is made."""
    import accelerate

    from kdlib._models import pick_device_dtype

    made = []

    class Rank3State:
        device = torch.device("cuda", 3)

        def __init__(self):
            made.append(self)

    monkeypatch.setattr(accelerate, "PartialState", Rank3State)
    if not torch.cuda.is_available():
        assert pick_device_dtype() == (torch.device("cpu"), torch.float32) and not made
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_device_dtype() == (torch.device("cuda", 3), torch.bfloat16) and made


def test_notebooks_name_existing_paper_tables():
    """Every `knb.table_configs(profile, "<table>", ...)` in a notebook names a table of kdlib._paper, and
    every table is used by the notebook it names."""
    import re

    from kdlib import notebook as knb

    used = {}
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for name in re.findall(r'table_configs\(profile, \\"(\w+)\\"', nb.read_text()):
            used[name] = nb.stem
    assert set(used) == set(paper.TABLES)
    for name, stem in used.items():
        assert paper.TABLES[name].notebook == stem
        configs = knb.table_configs("paper", name, [], seeds=[0, 1])
        assert configs and all(c.profile == "paper" for c in configs)
    assert knb.table_configs("embedded", "gkd_fig6", ["x"], seeds=[0]) == ["x"]


def test_paper_runs_share_warmups_and_teachers_across_rows():
    """One teacher fine-tuning per pair and dataset (whatever the student's batch), one SFT warm-up per
    student and seed, and the SFT row is that warm-up's own run (no teacher)."""
    from kdlib._recipes import sft_init_recipe, teacher_config

    runs = [r.config for r in paper.table_runs("switch_main")]
    teachers = {run_hash(teacher_config(c)) for c in runs if c.method != "sft" and c.teacher_steps}
    assert len(teachers) == len({(c.teacher, c.task) for c in runs})  # gpt2-large's batch 16 does not fork it
    for c in runs:
        if c.method == "sft":
            assert c.teacher_steps == 0 and c.student_init == "pretrained"
    warmups = {(c.student, c.seed): run_hash(sft_init_recipe(c)) for c in runs if c.student_init == "sft"}
    assert len(set(warmups.values())) == len(warmups)


def test_paper_datasets_and_splits_are_checked_before_anything_loads(monkeypatch, capsys):
    """An unknown dataset or split fails in paper.check_config, which run() and the CLI call before the cache
    is even looked at (the config module itself knows no paper datasets: it sits below kdlib._paper)."""
    from kdlib import _cli as cli
    from kdlib import _experiments as experiments

    kw = dict(profile="paper", teacher="Qwen/Qwen2.5-7B-Instruct", student="Qwen/Qwen2.5-0.5B-Instruct",
              student_init="pretrained")
    bad_split = RunConfig(task="gsm8k", eval_splits=("test", "gsm-plus:test"), **kw)
    bad_task = RunConfig(task="gsm9k", **kw)
    with pytest.raises(ValueError, match="gsm-plus"):
        paper.check_config(bad_split)
    with pytest.raises(ValueError, match=r"task='gsm9k' is not a paper dataset; choose one of .*'gsm8k'"):
        paper.check_config(bad_task)
    paper.check_config(RunConfig(task="gsm8k", eval_splits=("test", "gsm_plus:test"), **kw))  # known: no error

    monkeypatch.setattr(experiments, "run_dir", lambda cfg: pytest.fail("the cache was consulted first"))
    with pytest.raises(ValueError, match="gsm-plus"):
        experiments.run(bad_split)
    assert cli.main(["show", "profile=paper", "task=gsm9k", "teacher=Qwen/Qwen2.5-7B-Instruct",
                     "student=Qwen/Qwen2.5-0.5B-Instruct", "student_init=pretrained"]) == 2
    assert "task='gsm9k' is not a paper dataset" in capsys.readouterr().err


def test_local_models_and_data_are_part_of_the_run_hash(model_dir, data_dir, monkeypatch):
    kw = dict(profile="paper", task="gsm8k", teacher="Qwen/Qwen2.5-7B-Instruct",
              student="Qwen/Qwen2.5-0.5B-Instruct", student_init="pretrained", method="kd")
    monkeypatch.delenv("KDLIB_MODELS", raising=False)
    monkeypatch.delenv("KDLIB_PAPER_DATA", raising=False)
    hub = run_hash(RunConfig(**kw))
    monkeypatch.setenv("KDLIB_MODELS", str(model_dir))
    assert run_hash(RunConfig(**kw)) != hub
    monkeypatch.delenv("KDLIB_MODELS")
    monkeypatch.setenv("KDLIB_PAPER_DATA", str(data_dir))
    assert RunConfig(**kw).data_dir == str(data_dir) and run_hash(RunConfig(**kw)) != hub
