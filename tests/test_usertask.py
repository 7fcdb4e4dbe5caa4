"""Your own task: a folder of JSONL files (kdlib._usertask) used through the CLI and the Python API."""
import json
import shutil
import warnings

import pytest

from kdlib import _cli as cli
from kdlib import _usertask as usertask
from kdlib._config import load_config
from kdlib._metrics import score_prediction
from kdlib._runcache import run_hash

TINY = ["teacher=tiny", "teacher_steps=5", "student=tiny", "steps=2", "n_train=16", "n_eval=4",
        "batch_size=4", "max_new_tokens=24"]


def write_task(folder, n_train=40, yaml_text="name: apples\nmetric: accuracy\nprompt_field: question\n"
                                            "response_field: solution\n", extra=()):
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", 6), ("hard", 4)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                a = 2 + i % 7
                f.write(json.dumps({"question": f"{a} friends bring {a - 1} apples each. how many ?",
                                    "solution": f"{a} * {a - 1} = {a * (a - 1)} . The answer is {a * (a - 1)}"}) + "\n")
            for line in extra if split == "hard" else ():
                f.write(line + "\n")
    if yaml_text is not None:
        (folder / "task.yaml").write_text(yaml_text)
    return folder


def test_a_task_folder_is_a_config_task_with_its_name_metric_and_splits(tmp_path):
    task = write_task(tmp_path / "mine")
    cfg = load_config(None, [f"task={task}", "eval_splits=[test,hard]"])
    assert cfg.task_name == "apples" and cfg.user_task.metric == "accuracy"
    assert cfg.user_task.splits == ("train", "hard", "test")
    rows = usertask.load_rows(str(task), "test")
    assert rows[0]["prompt"].startswith("2 friends") and rows[0]["answer"] == "2"  # extracted from the response
    # the hash follows the data, not the folder: a copy elsewhere is the same run, an edit is another one
    moved = shutil.copytree(task, tmp_path / "elsewhere" / "mine")
    assert run_hash(load_config(None, [f"task={moved}", "eval_splits=[test,hard]"])) == run_hash(cfg)
    with open(moved / "train.jsonl", "a") as f:
        f.write(json.dumps({"question": "1 friends ?", "solution": "1 * 0 = 0 . The answer is 0"}) + "\n")
    assert run_hash(load_config(None, [f"task={moved}", "eval_splits=[test,hard]"])) != run_hash(cfg)


@pytest.mark.parametrize("change,match", [
    (lambda d: (d / "test.jsonl").unlink(), "has no test.jsonl"),
    (lambda d: (d / "hard.jsonl").write_text('{"question": "q", "solution": "1"}\n{oops\n'),
     r"hard.jsonl: line 2: not valid JSON"),
    (lambda d: (d / "hard.jsonl").write_text('{"question": "q"}\n'),
     r"hard.jsonl: line 1: field 'solution' must be a non-empty string.*set response_field"),
    (lambda d: (d / "hard.jsonl").write_text('{"question": "q", "solution": "no number here"}\n'),
     r"hard.jsonl: line 1: metric accuracy needs an answer"),
    (lambda d: (d / "task.yaml").write_text("metric: bleu\n"), r"metric='bleu' is unknown"),
    (lambda d: (d / "task.yaml").write_text("metric: accuracy\nanswer_pattern: 'answer is \\d+'\n"),
     "needs a group"),
    (lambda d: (d / "task.yaml").write_text("metrc: exact\n"), r"unknown key\(s\) \['metrc'\]"),
    (lambda d: (d / "task.yaml").write_bytes(b"metric: exact\nname: caf\xe9\n"), r"task.yaml: line 2: not UTF-8"),
])
def test_a_bad_task_folder_fails_before_training_naming_file_line_and_field(tmp_path, change, match):
    task = write_task(tmp_path / "bad")
    change(task)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_config(None, [f"task={task}", "method=gkd"])


@pytest.mark.parametrize("lines,match", [
    (['{"id": "e1", "question": "q", "solution": "1"}', '{"id": "e1", "question": "r", "solution": "2"}'],
     r"hard.jsonl: lines 5 and 6 have the same id 'e1'"),
    (['{"question": "q \\ud800", "solution": "1"}'],
     r"hard.jsonl: line 5: field 'question' holds '\\ud800' at character 2, a lone UTF-16 surrogate"),
    (['{"id": [1], "question": "q", "solution": "1"}'], r"hard.jsonl: line 5: field 'id' must be"),
])
def test_rows_that_would_fail_or_merge_later_fail_now(tmp_path, lines, match):
    task = write_task(tmp_path / "bad", extra=lines)
    with pytest.raises(ValueError, match=match):
        load_config(None, [f"task={task}", "method=kd"])


def test_rows_without_ids_or_with_null_ids_are_numbered(tmp_path):
    task = write_task(tmp_path / "mine", extra=['{"id": null, "question": "q", "solution": "1"}',
                                                '{"id": null, "question": "r", "solution": "2"}', '{"id": 7, '
                                                '"question": "s", "solution": "3"}'])
    load_config(None, [f"task={task}", "method=kd", "n_train=30"])
    ids = [r["id"] for r in usertask.load_rows(str(task), "hard")]
    assert ids == ["apples-hard-0", "apples-hard-1", "apples-hard-2", "apples-hard-3", "apples-hard-4",
                   "apples-hard-5", "7"]


def test_sizes_beyond_the_files_are_cut_to_them_with_a_warning_and_recorded(tmp_path):
    task = write_task(tmp_path / "mine")  # 40 train rows; test 6, hard 4
    with pytest.warns(UserWarning, match=r"train.jsonl has 40 rows: n_train=4000 → 40, n_prompts=50 → 0 \(all\), "
                                         r"n_labelled=1000 → 0 \(all\) — every row is labelled") as caught:
        big = load_config(None, [f"task={task}", "n_train=4000", "n_labelled=1000", "n_prompts=50"])
    assert caught[0].filename == __file__  # the warning names the caller's line
    assert (big.n_train, big.n_labelled, big.n_prompts) == (40, 0, 0)  # what runs, in the hash and result.json
    assert run_hash(big) == run_hash(load_config(None, [f"task={task}", "n_train=40"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sizes inside the file, or the default n_train cut: no warning
        fits = load_config(None, [f"task={task}", "n_train=30", "n_labelled=10", "n_prompts=20", "n_eval=300"])
        default = load_config(None, [f"task={task}"])
    assert (fits.n_train, fits.n_labelled, fits.n_prompts, fits.n_eval) == (30, 10, 20, 300)
    assert default.n_train == 40 and fits.replace(seed=1).n_train == 30


def test_sizes_that_fit_the_file_are_left_alone_and_inconsistent_ones_still_refused(tmp_path):
    task = write_task(tmp_path / "mine")  # 40 train rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(None, [f"task={task}", "n_train=40", "n_prompts=40", "n_labelled=40"])
    assert (cfg.n_train, cfg.n_prompts, cfg.n_labelled) == (40, 40, 40)
    with pytest.raises(ValueError, match=r"n_labelled=1000 must be <= n_train=40"):
        load_config(None, [f"task={task}", "n_train=40", "n_labelled=1000"])
    with pytest.raises(ValueError, match="eval_every >= 1"):  # the config's own error before the folder's
        load_config(None, [f"task={task}", "method=distillm", "eval_every=0"])


def test_a_run_that_validates_finds_its_rows_before_anything_trains(tmp_path):
    from kdlib._rows import validation_rows

    task = write_task(tmp_path / "mine")
    for method in ("distillm", "kd"):
        with pytest.raises(ValueError, match=r"has no validation.jsonl, and .*train.jsonl has no rows past "
                                             r"n_train=40 \(it has 40\)"):
            load_config(None, [f"task={task}", f"method={method}", "n_train=40", "eval_every=5",
                               "select_checkpoint=validation"])
    cfg = load_config(None, [f"task={task}", "method=distillm", "n_train=30", "eval_every=5"])
    past = usertask.load_rows(str(task), "train")[30:]
    assert [r["prompt"] for r in validation_rows(cfg)] == [r["prompt"] for r in past]
    before = run_hash(cfg)
    (task / "validation.jsonl").write_text((task / "hard.jsonl").read_text())  # a validation split of its own
    cfg = load_config(None, [f"task={task}", "method=distillm", "n_train=40", "eval_every=5"])
    assert [r["id"] for r in validation_rows(cfg)] == [r["id"] for r in usertask.load_rows(str(task), "validation")]
    assert "validation_rows" in cfg.key_fields() and run_hash(cfg) != before
    assert "validation_rows" not in load_config(None, [f"task={task}", "method=kd"]).key_fields()  # no selection


def test_rows_longer_than_the_pairs_context_are_named_before_training(tmp_path, caplog):
    from kdlib._rows import check_row_lengths

    def words(texts, add_special_tokens=False):  # a tokenizer of whitespace words
        return {"input_ids": [text.split() for text in texts]}

    task = write_task(tmp_path / "mine", extra=['{"id": "long", "question": "' + "1 plus " * 250 + '?", '
                                                '"solution": "The answer is 1"}'])
    cfg = load_config(None, [f"task={task}", "n_train=30", "eval_splits=[test,hard]", "max_new_tokens=64"])
    with caplog.at_level("WARNING", logger="kdlib._rows"):
        check_row_lengths(cfg, words)
    assert len(caplog.records) == 1  # train and test fit, hard's last row does not: 501 words + 64 > 512
    assert "hard.jsonl: 1 of 5 rows are longer than the pair's context of 512 positions (the first: row 5, " \
           "id 'long', 565 tokens with max_new_tokens=64)" in caplog.text


def test_the_cli_distils_on_your_task_with_a_tokenizer_built_from_it(tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "cache"))
    task = write_task(tmp_path / "mine")
    out = tmp_path / "exported"
    assert cli.main(["train", f"task={task}", "method=gkd", "eval_splits=[test,hard]", *TINY, "--quiet",
                     "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"score_test", "score_hard", "score_test_t1"} <= set(printed)
    result = json.loads((out / "result.json").read_text())
    assert result["task_name"] == "apples" and result["task_digest"] == usertask.spec(str(task)).digest
    # n_eval=4 of test's 6 rows; hard has 4: what was scored, per split and decoding
    assert result["n_eval"] == 4 and result["n_scored"] == {"test": 4, "test_t1": 4, "hard": 4}
    tok = AutoTokenizer.from_pretrained(out)  # the BPE learnt from the task travels with the model
    text = "7 * 6 = 42 . The answer is 42"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_metrics_of_your_task():
    row = {"response": "a b  c", "answer": "42", "answer_pattern": r"ANSWER: (\S+)"}
    assert score_prediction("exact", " a b c ", row) == 1.0 and score_prediction("exact", "a b", row) == 0.0
    assert score_prediction("accuracy", "so ANSWER: 42.0", row) == 1.0  # numbers compare as numbers
    assert score_prediction("accuracy", "ANSWER: 41 then ANSWER: 42", row) == 1.0  # the last match counts
    assert score_prediction("accuracy", "42", row) == 0.0  # the pattern must match
    text = {"response": "x", "answer": "paris", "answer_pattern": r"city: (\w+)"}
    assert score_prediction("accuracy", "city: paris", text) == 1.0
    assert score_prediction("accuracy", "city: rome", text) == 0.0
    assert score_prediction("accuracy", "#### 42", {"answer": "42"}) == 1.0  # no pattern: the GSM rule
    with pytest.raises(ValueError, match="metric 'bleu' is unknown"):
        score_prediction("bleu", "x", row)
