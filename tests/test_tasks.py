"""The embedded tasks: deterministic, well-formed, long enough, and scored the way they are meant to be."""
import re

import pytest

from kdlib._tasks.embedded import TaskSpec, generate_rows, vocabulary


def replay_arith(prompt: str) -> int:
    """Recompute the answer from the prompt text alone, independently of the generator."""
    sentences = [s.strip() for s in prompt.split(".") if s.strip()]
    value = int(sentences[0].split()[2])
    for s in sentences[1:]:
        words = s.split()
        if words[0] in ("he", "she"):
            delta = int(next(w for w in words if w.isdigit()))
            value += delta if "more" in words else -delta
    return value


@pytest.mark.parametrize("split", ["train", "test", "plus"])
def test_arith_answers_follow_from_prompt_and_chain(split):
    rows = generate_rows(TaskSpec("arith", n_train=300, n_test=300, seed=3), split)
    for row in rows:
        assert int(row["answer"]) == replay_arith(row["prompt"])
        equations = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", row["response"])
        assert len(equations) == row["steps"]
        previous = None
        for a, op, b, c in equations:  # every step uses the previous result: errors compound
            a, b, c = int(a), int(b), int(c)
            assert c == (a + b if op == "+" else a - b) and 0 <= c <= 99
            assert previous is None or a == previous
            previous = c
        assert row["response"].endswith(f"#### {row['answer']}")


def test_plus_split_adds_distractors_and_train_mostly_does_not():
    spec = TaskSpec("arith", n_train=400, n_test=200, seed=0)
    n_has = lambda r: len(re.findall(r"\b\w+ has \d+ \w+ \.", r["prompt"]))  # noqa: E731
    assert all(n_has(r) == 3 for r in generate_rows(spec, "plus"))
    share = sum(n_has(r) > 1 for r in generate_rows(spec, "train")) / 400
    assert 0.05 < share < 0.3


def test_summary_uses_corrected_day_for_every_plan():
    rows = generate_rows(TaskSpec("summ", n_train=200, seed=2), "train")
    corrected = 0
    for row in rows:
        plans = re.findall(r"(\w+) : i will (\w+) (.+?) on (\w+) \.( \w+ : really \? \w+ : no , on (\w+) \.)?",
                           row["prompt"])
        summary = [s.strip() for s in row["response"].split(".") if s.strip()]
        assert len(plans) == len(summary) == row["steps"]
        for (who, verb, obj, day, corr, new_day), sent in zip(plans, summary):
            final_day = new_day or day
            corrected += bool(new_day)
            assert sent.startswith(who + " ") and sent.endswith(f"{verb} {obj} on {final_day}")
    assert corrected > 20


@pytest.mark.parametrize("task", ["arith", "summ"])
def test_generation_is_deterministic_and_response_lengths_span_4x(task):
    spec = TaskSpec(task, n_train=500, seed=7)
    a, b = generate_rows(spec, "train"), generate_rows(spec, "train")
    assert a == b
    assert generate_rows(TaskSpec(task, n_train=500, seed=8), "train") != a
    lengths = [len(r["response"].split()) for r in a]
    assert max(lengths) >= 4 * min(lengths)


def test_tokenizer_covers_every_word_and_splits_on_whitespace(tokenizer):
    rows = generate_rows(TaskSpec("summ", n_train=100), "train") + generate_rows(
        TaskSpec("arith", n_train=100, n_test=100), "plus")
    for row in rows:
        for text in (row["prompt"], row["response"]):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert len(ids) == len(text.split())
    assert len(set(vocabulary())) == len(vocabulary())


def test_unknown_task_and_split_are_refused():
    with pytest.raises(ValueError, match="unknown embedded task"):
        generate_rows(TaskSpec("nope"), "train")
    with pytest.raises(ValueError, match="plus"):
        generate_rows(TaskSpec("summ"), "plus")


def test_cached_dir_builds_once_when_two_processes_race(tmp_path):
    """Two processes asking for the same artifact at once: one builds it, the other waits and reuses it."""
    import subprocess
    import sys

    code = ("import os, sys, time\n"
            "from pathlib import Path\n"
            "from kdlib import _workload as workload\n"
            "def build(d):\n"
            "    time.sleep(1.0)\n"
            "    (d / 'x.txt').write_text(str(os.getpid()))\n"
            "    with open(sys.argv[1], 'a') as f: f.write('built\\n')\n"
            "print(workload.cached_dir('race', {'k': 1}, build))\n")
    log = tmp_path / "builds.log"
    env = {**__import__("os").environ, "KDLIB_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(log)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and log.read_text() == "built\n"  # built exactly once, same folder for both
