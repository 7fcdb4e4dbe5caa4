# ruff: noqa: F811
"""Draft-and-verify (`block` > 1) and the student's batch under AdaSwitch: the forward calls a rollout makes.

The rule itself is re-derived for every block size in tests/test_samplers.py (its recompute tests run at
block 1, 2, 5 and 8); here the counts of forwards and rounds are checked against what each row's own
decisions imply: rows accept different lengths in one round, and a row that switched (or ended) leaves the
student's batch.
"""
import pytest
import torch

# the same fixtures as the sampler tests (one thread, the tiny pairs); tests take them as arguments, which
# ruff reads as redefinitions (F811)
from test_samplers import EOS, PAD, eos_pair, one_thread, pair, prompts, response, run  # noqa: F401

from kdlib._config import RunConfig
from kdlib._samplers import SKDSampler, build_sampler

N = 24  # max_new_tokens of `run`


def own_rounds(teacher_row, length: int, block: int, upto: int | None = None) -> list[int]:
    """The tokens a row gets in each round, from its own decisions: a round covers the next `block`
    positions, or fewer when the teacher emits one of them (that position is the round's last).
    `upto`: stop once that position is covered."""
    end = length if upto is None else upto + 1
    pos, rounds = 0, []
    while pos < end:
        seg = teacher_row[pos:min(pos + block, length)]
        hits = seg.nonzero()
        rounds.append(int(hits[0]) + 1 if len(hits) else len(seg))
        pos += rounds[-1]
    return rounds


@pytest.mark.parametrize("block", [2, 5, 8])
def test_every_draft_accepted_gives_one_teacher_forward_per_block(pair, block):
    """τ0 above ln 2 (JSD's bound): the teacher never takes over, so every round emits `block` tokens."""
    r = run("switch", *pair, seed=0, tau0=1.0, decay=0.0, schedule="constant", block=block)
    resp, teacher_mask, _ = response(r)
    assert resp.all() and not teacher_mask.any()
    rounds = -(-N // block)
    assert r.stats["teacher_forwards"] == 1 + rounds  # the prefill, then one per round
    assert r.stats["student_forwards"] == block * rounds  # prefill + (block - 1) + block per later round


@pytest.mark.parametrize("block", [2, 5])
def test_every_draft_rejected_gives_one_token_per_round(pair, block):
    """τ0 = 0: the teacher takes over at the first position of every round."""
    r = run("switch", *pair, seed=0, tau0=0.0, decay=0.0, schedule="constant", block=block)
    resp, teacher_mask, _ = response(r)
    assert resp.all() and teacher_mask.all()
    assert r.stats["teacher_forwards"] == 1 + N
    assert r.stats["student_forwards"] == block * N


@pytest.mark.parametrize("block", [2, 5, 8])
@pytest.mark.parametrize("name,params", [("switch", {"tau0": 0.3, "decay": 0.04}), ("skd", {"top_k": 5})])
def test_rows_accept_their_own_lengths(eos_pair, name, params, block):
    """One round advances each row to its own first teacher token (or by the whole block), so the rollout
    takes as many rounds as its slowest row needs alone; accepting the minimum over rows would take more."""
    student, teacher = eos_pair
    uneven = False
    for seed in (0, 1, 2):
        r = run(name, student, teacher, seed, eos=EOS, batch=8, block=block, **params)
        resp, teacher_mask, _ = response(r)
        rounds = [own_rounds(teacher_mask[b], int(n), block) for b, n in enumerate(resp.sum(1))]
        n_rounds = max(len(x) for x in rounds)
        assert r.stats["teacher_forwards"] == 1 + n_rounds, seed
        assert r.stats["student_forwards"] == block * n_rounds  # prefill + (block - 1) + block per later round
        assert (r.stats["student_row_steps"] == r.stats["student_forwards"] - 1).all()  # no row leaves
        # two rows, neither in its last round, that got different numbers of tokens in the same round
        uneven |= any(len({x[i] for x in rounds if i < len(x) - 1}) > 1 for i in range(n_rounds))
    assert uneven, "rows should accept different lengths in one round"


def test_lockstep_adaswitch_drops_switched_and_ended_rows_from_the_student(eos_pair):
    """Block 1: a row leaves the student's batch right after its switch (or its EOS): the student is fed
    its tokens 0 … s-1 only, while rows that did not switch keep it running."""
    student, teacher = eos_pair
    dropped = False
    for seed in (0, 1, 2):
        r = run("adaswitch", student, teacher, seed, eos=EOS, batch=8, k=1.6, window=4)
        resp, teacher_mask, _ = response(r)
        steps, n = r.stats["student_row_steps"], resp.shape[1]
        for b in range(resp.shape[0]):
            s = int(r.stats["switch_positions"][b])
            stop = int(resp[b].sum()) - 1 if s < 0 else min(s, int(resp[b].sum()) - 1)
            assert int(steps[b]) == min(stop, n - 1), (seed, b)
        assert r.stats["student_forwards"] == 1 + int(steps.max())
        dropped |= bool((r.stats["switched"] & (steps < steps.max())).any())
    assert dropped, "some row should switch while others keep the student running"


@pytest.mark.parametrize("block", [2, 5])
def test_block_adaswitch_drops_switched_rows_from_the_student(pair, eos_pair, block):
    """A row drafts until the round of its switch (or its end) and then leaves the student's batch; its
    later tokens are teacher tokens, one per teacher forward."""
    dropped = False
    for (student, teacher), eos, seed in [(pair, None, s) for s in (0, 1, 2)] + [(eos_pair, EOS, s) for s in (0, 1, 2)]:
        r = run("adaswitch", student, teacher, seed, eos=eos, batch=8, k=1.6, window=4, block=block)
        resp, teacher_mask, _ = response(r)
        steps = r.stats["student_row_steps"]
        drafting, total = [], []  # per row: rounds with the student, all rounds
        for b in range(resp.shape[0]):
            s, n = int(r.stats["switch_positions"][b]), int(resp[b].sum())
            drafting.append(len(own_rounds(teacher_mask[b], n, block, upto=None if s < 0 else s)))
            total.append(drafting[-1] + (n - 1 - s if s >= 0 else 0))  # then one teacher token per round
            assert int(steps[b]) == block * drafting[-1] - 1, (seed, b)  # block - 1 in round one, block after
        assert r.stats["student_forwards"] == block * max(drafting)
        assert r.stats["teacher_forwards"] == 1 + max(total)
        dropped |= bool((r.stats["switched"] & (steps < steps.max())).any())
    assert dropped, "some row should switch while others keep the student running"


def test_block_is_checked_where_a_sampler_is_built_and_where_it_samples(pair):
    with pytest.raises(ValueError, match=r"'skd'.*block=0"):
        build_sampler("skd", block=0)
    with pytest.raises(ValueError, match=r"block=0"):
        RunConfig(method="skd", sampler_params={"block": 0})
    ids, mask = prompts(0)
    with pytest.raises(ValueError, match=r"block=0"):  # built without build_sampler's check
        SKDSampler(top_k=2, block=0).sample(*pair, ids, mask, max_new_tokens=4, eos_token_id=None,
                                            pad_token_id=PAD, generator=torch.Generator())
