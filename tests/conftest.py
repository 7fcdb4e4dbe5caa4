"""Shared fixtures: a throw-away cache, the embedded tokenizer, tiny random models and a few rows."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never read or write the user's cache."""
    old = os.environ.get("KDLIB_CACHE")
    os.environ["KDLIB_CACHE"] = str(tmp_path_factory.mktemp("kdlib-cache"))
    yield
    if old is None:
        os.environ.pop("KDLIB_CACHE", None)
    else:
        os.environ["KDLIB_CACHE"] = old


def cache_sharing_task_data(path):
    """A fresh, empty cache folder at `path` whose generated task data and tokenizer are links to the
    session cache's (built there once): a test that needs its own cache does not regenerate the
    40 000-row task pools. Call it while KDLIB_CACHE still names the session cache."""
    from kdlib import _workload as workload

    for task in workload.TASK_SPECS:
        workload.task_dir(task)
    workload.tokenizer_dir()
    path.mkdir(parents=True)
    for kind in ("data", "tokenizer"):
        (path / kind).symlink_to(workload.cache_root() / kind, target_is_directory=True)
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from kdlib._models import build_word_tokenizer
    from kdlib._tasks.embedded import vocabulary

    return build_word_tokenizer(vocabulary())


@pytest.fixture(scope="session")
def arith_rows():
    from kdlib._tasks.embedded import TaskSpec, generate_rows

    return generate_rows(TaskSpec("arith", n_train=64, n_test=16, max_steps=3, seed=1), "train")


def tiny_llama(tokenizer, seed, layers=1, hidden=32):
    from kdlib._models import ModelSize, build_llama

    return build_llama(ModelSize(layers, hidden, 2, 2 * hidden), tokenizer, seed).eval()


@pytest.fixture
def models(tokenizer):
    """(student, teacher): two different random tiny Llamas over the embedded vocabulary."""
    return tiny_llama(tokenizer, 0), tiny_llama(tokenizer, 1, layers=2, hidden=48)
