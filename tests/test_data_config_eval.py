"""Batches, configs, the CLI and the scoring functions."""
import json

import pytest
import torch

from kdlib import _config as cfgmod
from kdlib._data import encode_batch, load_jsonl, position_ids
from kdlib._evaluate import answer_correct, extract_answer, length_buckets, rouge_l
from kdlib._runcache import run_hash


def test_batch_layout_keeps_eos_target_when_pad_equals_eos(tokenizer):
    tok = tokenizer
    old_pad = tok.pad_token
    tok.pad_token = tok.eos_token  # the peers' bug: EOS masked out as padding
    try:
        b = encode_batch(tok, ["ana has 3 apples . how many ?", "ben has 1 coins ."],
                         ["3 + 1 = 4 . #### 4", "#### 1"], max_response_tokens=32)
    finally:
        tok.pad_token = old_pad
    P = b.prompt_length
    resp = b.response_mask[:, P:]
    assert resp.sum(1).tolist() == [9, 3]  # 8 words + EOS, 2 words + EOS
    for i in range(2):
        last = int(resp[i].nonzero().max())
        assert b.input_ids[i, P + last] == tok.eos_token_id
    assert not b.response_mask[:, :P].any()
    # left padding: the shorter prompt starts later, positions still count from 0 on real tokens
    pos = position_ids(b.attention_mask)
    first_real = b.attention_mask.argmax(1)
    assert (pos[torch.arange(2), first_real] == 0).all()


def test_a_reference_cut_at_the_length_limit_gets_no_eos(tokenizer):
    """A reference longer than the limit is cut without EOS (the student must not learn to stop at
    the cut); one that fits keeps its EOS; the limit counts the EOS."""
    b = encode_batch(tokenizer, ["a", "a"], ["3 + 1 = 4 . #### 4", "#### 1"], max_response_tokens=3)
    P = b.prompt_length
    resp_ids, resp = b.input_ids[:, P:], b.response_mask[:, P:]
    assert resp.sum(1).tolist() == [3, 3]
    assert tokenizer.eos_token_id not in resp_ids[0][resp[0]].tolist()
    assert resp_ids[1][resp[1]].tolist()[-1] == tokenizer.eos_token_id


def test_malformed_row_is_named_by_file_row_and_field(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"rows.jsonl: line 2: field 'response'"):
        load_jsonl(path)


def test_config_refuses_unknown_and_out_of_range_values_before_any_model_loads():
    with pytest.raises(ValueError, match="unknown field.*'stepz'"):
        cfgmod.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="method='nope'"):
        cfgmod.RunConfig(method="nope")
    with pytest.raises(ValueError, match="beta"):
        cfgmod.RunConfig(method="gkd", divergence_params={"beta": 1.0})
    with pytest.raises(ValueError, match="student_data_fraction"):
        cfgmod.RunConfig(method="gkd", student_data_fraction=1.5)
    with pytest.raises(ValueError, match="micro_batch_size"):
        cfgmod.RunConfig(batch_size=8, micro_batch_size=3)
    with pytest.raises(ValueError, match="loss_temperature"):
        cfgmod.RunConfig(loss_temperature=0)


def test_method_presets_and_overrides_resolve(tmp_path):
    c = cfgmod.RunConfig(method="switch")
    assert c.resolved["source"] == "sampler" and c.resolved["sampler"] == "switch"
    assert c.resolved["divergence"] == "sfkl" and c.resolved["divergence_params"] == {"alpha": 0.1}
    # changing the divergence drops the preset's params of the old one
    assert cfgmod.RunConfig(method="switch", divergence="fkl").resolved["divergence_params"] == {}
    path = tmp_path / "run.yaml"
    path.write_text("method: gkd\nsteps: 7\nsampler_params: {}\n")
    c = cfgmod.load_config(path, ["divergence_params.beta=0.9", "student_data_fraction=0.25"])
    assert (c.steps, c.resolved["divergence_params"]["beta"], c.student_data_fraction) == (7, 0.9, 0.25)
    assert run_hash(c) == run_hash(cfgmod.load_config(path, ["student_data_fraction=0.25",
                                                 "divergence_params.beta=0.9"]))
    assert run_hash(c) != run_hash(c.replace(seed=1))
    with pytest.raises(ValueError, match="unknown field 'nope'"):
        cfgmod.load_config(path, ["nope.x=1"])


def test_hash_ignores_spelled_out_defaults_and_operational_fields():
    from kdlib._samplers import SAMPLER_DEFAULTS

    base = cfgmod.RunConfig(method="adaswitch")
    explicit = base.replace(sampler_params=dict(SAMPLER_DEFAULTS["adaswitch"]))
    assert run_hash(base) == run_hash(explicit)  # the same run, one cache entry
    assert run_hash(base) != run_hash(base.replace(sampler_params={"k": 3.0}))
    assert run_hash(base) == run_hash(base.replace(eval_every=5, checkpoint_every=10, report_to=("tensorboard",)))
    assert run_hash(base) != run_hash(base.replace(chat_template_from="student"))  # later fields count when set
    kd = cfgmod.RunConfig(method="kd")
    assert run_hash(kd) == run_hash(kd.replace(student_data_fraction=1.0))  # λ is GKD's mix only
    gkd = cfgmod.RunConfig(method="gkd")
    assert run_hash(gkd) != run_hash(gkd.replace(student_data_fraction=1.0))


def test_cli_help_documents_every_field(capsys):
    from kdlib._cli import field_docs, main

    docs = field_docs()
    assert set(docs) == cfgmod.FIELD_NAMES and all(docs.values())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "sample_temperature" in out and "Not the loss temperature" in out
    assert main(["show", "method=gkd", "steps=3"]) == 0
    assert main(["show", "bogus=1"]) == 2  # a usage error: one line, exit 2
    assert "unknown field 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("text,value", [("so 3 + 4 = 7 . #### 7", 7), ("The answer is 1,234.", 1234),
                                        ("#### -5", -5), ("x 2 then 9", 9), ("none", None)])
def test_extract_answer(text, value):
    assert extract_answer(text) == value


def test_answer_correct_compares_numbers_not_strings():
    assert answer_correct("#### 12", "12.0") and not answer_correct("#### 13", "12")
    assert not answer_correct("no number", "3")


def test_rouge_l_and_buckets():
    assert rouge_l("ana will buy milk", "ana will buy milk") == pytest.approx(1.0)
    assert 0 < rouge_l("ana will buy milk on monday", "ana buys milk") < 1
    recs = [{"score": 1.0, "ref_words": 5}, {"score": 0.0, "ref_words": 6}, {"score": 0.5, "ref_words": 30}]
    buckets = length_buckets(recs, edges=(0, 10, 100))
    assert buckets == [{"bucket": "0-9", "n": 2, "score": 0.5}, {"bucket": "10-99", "n": 1, "score": 0.5}]


def test_every_config_file_loads():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parent.parent.glob("configs/**/*.yaml"))
    assert len(files) >= 10
    for f in files:
        cfgmod.load_config(f)


def test_self_bleu_is_high_for_copies_and_low_for_different_samples():
    from kdlib._evaluate import self_bleu

    assert self_bleu(["ana will buy milk on monday"] * 3) == pytest.approx(100.0)
    assert self_bleu(["ana will buy milk on monday", "ben fixes the roof", "cara calls mom today"]) < 10
    with pytest.raises(ValueError):
        self_bleu(["one"])


def test_base_model_prompts_start_with_bos_once_when_the_tokenizer_adds_one():
    """OPT and Llama tokenizers put BOS first by default; kdlib encodes without special tokens, so it
    writes BOS itself for tokenizers without a chat template, and only for those that add one."""
    from tokenizers import processors

    from kdlib._data import encode_prompts
    from kdlib._models import build_word_tokenizer

    plain = build_word_tokenizer(["<s>", "a", "b"])
    plain.chat_template = None
    ids, _ = encode_prompts(plain, ["a b"])
    assert ids[0].tolist() == plain.convert_tokens_to_ids(["a", "b"])  # GPT-2 style: nothing added
    with_bos = build_word_tokenizer(["<s>", "a", "b"])
    with_bos.chat_template = None
    bos_id = with_bos.convert_tokens_to_ids("<s>")
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos_id)])
    with_bos.add_special_tokens({"bos_token": "<s>"})  # a special token, split out of "<s>a b" as in BPE
    ids, _ = encode_prompts(with_bos, ["a b", "a"])
    assert ids[0].tolist() == [bos_id] + with_bos.convert_tokens_to_ids(["a", "b"])
    assert ids[1, -2:].tolist() == [bos_id, with_bos.convert_tokens_to_ids("a")]


def test_a_chat_template_that_prints_todays_date_gets_a_fixed_one(monkeypatch):
    """Llama-3.2's chat template writes "Today Date: <strftime_now>" into every prompt, and neither the run hash
    nor SeqKD's cache key sees the date: a run resumed on another day would read other prompts. The prompt must
    carry the template's own fallback date, whatever the calendar says."""
    import datetime

    import transformers.utils.chat_template_utils as ctu

    from kdlib._data import format_prompt
    from kdlib._models import build_word_tokenizer

    tok = build_word_tokenizer(["a", "b"])
    tok.chat_template = ('{%- if not date_string is defined %}{%- if strftime_now is defined %}'
                         '{%- set date_string = strftime_now("%d %b %Y") %}{%- else %}'
                         '{%- set date_string = "26 Jul 2024" %}{%- endif %}{%- endif %}'
                         "Today Date: {{ date_string }} {% for m in messages %}{{ m['content'] }}{% endfor %}")

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2031, 1, 2)

    monkeypatch.setattr(ctu, "datetime", Later)  # what strftime_now reads the clock from
    assert format_prompt(tok, "a b") == "Today Date: 26 Jul 2024 a b"


def test_eval_scores_an_existing_model_directory(tokenizer, tmp_path, capsys):
    """`python -m kdlib eval --model DIR`: the model is scored as it is (nothing trains), with its
    predictions and scores written beside it; the scores match kdlib._evaluate on the same rows."""
    from conftest import tiny_llama

    from kdlib._cli import main
    from kdlib._evaluate import evaluate
    from kdlib._rows import load_rows
    from kdlib._workload import embedded_tokenizer

    model_dir = tmp_path / "model"
    tiny_llama(embedded_tokenizer(), 3).save_pretrained(model_dir)
    assert main(["eval", "task=arith", "n_eval=6", "max_new_tokens=8", "eval_splits=[test,plus]",
                 "--model", str(model_dir), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((model_dir / "eval" / "scores.json").read_text())
    # each split greedy, the first also sampled at temperature 1 ("_t1")
    assert set(printed) == {"test", "plus", "test_t1"} and saved["scores"] == printed
    assert len((model_dir / "eval" / "predictions-plus.jsonl").read_text().splitlines()) == 6
    cfg = cfgmod.RunConfig(task="arith", n_eval=6, max_new_tokens=8)
    direct = evaluate(tiny_llama(embedded_tokenizer(), 3), embedded_tokenizer(), load_rows(cfg, "test", 6),
                      metric="accuracy", max_new_tokens=8)
    assert printed["test"] == direct["score"]
    assert not (tmp_path / "runs").exists()


def test_tokenizers_of_another_family_are_refused(tokenizer):
    from kdlib._models import build_word_tokenizer, check_same_tokenizer
    from kdlib._tasks.embedded import vocabulary

    words = vocabulary()
    other = build_word_tokenizer(list(reversed(words)))
    with pytest.raises(ValueError, match="tokenizers differ .*first at id"):
        check_same_tokenizer(tokenizer, other)
    check_same_tokenizer(tokenizer, build_word_tokenizer(words))  # the same family passes


def test_trl_names_are_aliases_and_ambiguous_or_misspelt_names_are_refused(tmp_path):
    from kdlib._config import load_config

    trl = load_config(None, ["method=gkd", "learning_rate=0.002", "max_steps=7", "lmbda=1", "beta=0.9"])
    ours = load_config(None, ["method=gkd", "lr=0.002", "steps=7", "student_data_fraction=1",
                              "divergence_params.beta=0.9"])
    assert run_hash(trl) == run_hash(ours) and trl.resolved["divergence_params"]["beta"] == 0.9
    path = tmp_path / "trl.yaml"
    path.write_text("method: gkd\nlearning_rate: 0.002\nmax_steps: 7\nlmbda: 1\nbeta: 0.9\n")
    assert run_hash(load_config(path)) == run_hash(ours)
    path.write_text("method: gkd\nlr: 0.001\nlearning_rate: 0.002\n")
    with pytest.raises(ValueError, match="'learning_rate' and 'lr' name the same field"):
        load_config(path)
    with pytest.raises(ValueError, match="ambiguous.*sample_temperature or loss_temperature"):
        load_config(None, ["temperature=0.5"])
    with pytest.raises(ValueError, match="unknown field 'lerning_rate'; did you mean learning_rate"):
        load_config(None, ["lerning_rate=0.5"])
    with pytest.raises(ValueError, match="unknown field 'stepz'; did you mean steps"):
        load_config(None, ["stepz=3"])


def test_cli_help_lists_the_aliases(capsys):
    from kdlib._cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "learning_rate = lr" in out and "lmbda = student_data_fraction" in out
    assert "beta = divergence_params.beta" in out
