"""Token-level samplers: every decision re-derived from one full forward over the final sequences.

The rollout is produced with KV caches one token at a time; the checks recompute both models' logits
with a single uncached forward over `rollout.input_ids` (rollout attention mask, positions from its
cumsum) and the distances with `kdlib._divergences` (an independent implementation of the step distances
the samplers use). Decisions within MARGIN of their threshold are skipped (cached and uncached float32
differ by ~1e-6) and the tests assert that only a few are.
"""
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kdlib import _divergences as D
from kdlib._samplers import (
    SAMPLER_DEFAULTS,
    build_sampler,
    draw_tokens,
    position_ids,
    step_distance,
    validate_sampler_params,
)

V, PAD, EOS = 64, 0, 1
MARGIN = 1e-4
SEEDS = (0, 1, 2)
BLOCKS = (1, 2, 5, 8)  # draft-and-verify block sizes; 1 = the lockstep decoder
SWITCHING = ("skd", "switch", "adaswitch")  # the samplers with a block


def with_blocks(*cases):
    """pytest params: each case (a name or a tuple starting with one) at every block size for the switching
    samplers, at block 1 for the others."""
    cases = [c if isinstance(c, tuple) else (c,) for c in cases]
    return [(*c, b) for c in cases for b in (BLOCKS if c[0] in SWITCHING else (1,))]


def tiny_llama(seed: int, layers: int = 2, hidden: int = 32, vocab: int = V, eos_bias: float = 0.0):
    """A random tiny Llama; initializer_range 0.2 makes p and q peaked and different enough that
    every rule goes both ways. `eos_bias` raises the EOS logit so rows end at different steps."""
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=2 * hidden, max_position_embeddings=256,
                      pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None, initializer_range=0.2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    if eos_bias:
        head = torch.nn.Linear(hidden, vocab, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[EOS] = eos_bias
        model.lm_head = head
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting when the cores are shared (10-50x faster)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pair():
    return tiny_llama(0), tiny_llama(1)  # student, teacher


def prompts(seed: int, batch: int = 6, length: int = 7):
    """Left-padded prompts of different lengths (row b has b % 4 pad columns)."""
    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(2, V, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for b in range(batch):
        mask[b, : b % 4] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def run(name, student, teacher, seed, *, max_new_tokens=24, eos=None, pad=PAD, temperature=1.0,
        keep=False, batch=6, block=1, draw_top_k=0, draw_top_p=1.0, **params):
    """A rollout of sampler `name` (params over its defaults) on `prompts(seed, batch)`; draw_top_k and
    draw_top_p are the drawing filters (`top_k` here is SKD's parameter)."""
    ids, mask = prompts(seed, batch)
    if name in SWITCHING:
        params["block"] = block
    return build_sampler(name, **params).sample(
        student, teacher, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
        temperature=temperature, top_k=draw_top_k, top_p=draw_top_p, generator=torch.Generator().manual_seed(seed),
        return_teacher_logits=keep)


def full_logits(model, rollout):
    """Logits predicting each response token, (B, N, V), from ONE uncached forward."""
    P, m = rollout.prompt_length, rollout.attention_mask
    with torch.no_grad():
        out = model(input_ids=rollout.input_ids, attention_mask=m, position_ids=position_ids(m), use_cache=False)
    return out.logits[:, P - 1:-1]


def response(rollout):
    P = rollout.prompt_length
    return rollout.response_mask[:, P:], rollout.from_teacher[:, P:], rollout.input_ids[:, P:]


# ------------------------------------------------------------------------------------------------------
# The rules, re-derived.


def test_student_sampler_never_runs_the_teacher(pair):
    student, _ = pair

    class Exploding(torch.nn.Module):
        def forward(self, *a, **k):
            raise AssertionError("the student sampler ran the teacher")

    r = run("student", student, Exploding(), seed=0)
    resp, teacher_mask, _ = response(r)
    assert not teacher_mask.any() and r.stats["teacher_forwards"] == 0
    assert r.stats["teacher_fraction"] == 0.0 and (r.stats["switch_positions"] == -1).all()
    assert r.teacher_logits is None


def test_teacher_sampler_is_all_teacher_without_the_student(pair):
    _, teacher = pair
    r = run("teacher", None, teacher, seed=0, keep=True)
    resp, teacher_mask, _ = response(r)
    assert (teacher_mask == resp).all() and resp.all()
    assert r.stats["student_forwards"] == 0 and r.stats["teacher_fraction"] == 1.0
    assert (r.stats["switch_positions"] == 0).all()


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("schedule,tau0,decay", [("exp", 0.3, 0.04), ("linear", 0.3, 0.03),
                                                 ("constant", 0.22, 0.0)])
def test_switch_teacher_iff_jsd_above_threshold(pair, schedule, tau0, decay, block):
    student, teacher = pair
    sampler = build_sampler("switch", tau0=tau0, decay=decay, schedule=schedule)
    checked = skipped = 0
    outcomes = set()
    for seed in SEEDS:
        r = run("switch", student, teacher, seed, temperature=0.7, tau0=tau0, decay=decay, schedule=schedule,
                block=block)
        resp, teacher_mask, _ = response(r)
        d = D.jsd(full_logits(student, r), full_logits(teacher, r), beta=0.5)  # (B, N)
        t = torch.arange(d.shape[1], dtype=torch.float64)
        tau = {"exp": tau0 * torch.exp(-decay * t), "linear": tau0 * (1 - decay * t).clamp(min=0),
               "constant": tau0 + 0 * t}[schedule]
        assert torch.allclose(tau, torch.tensor([sampler.threshold(i) for i in range(len(t))], dtype=tau.dtype))
        clear = resp & ((d - tau).abs() > MARGIN)
        assert (teacher_mask[clear] == (d > tau)[clear]).all()
        checked, skipped = checked + int(clear.sum()), skipped + int((resp & ~clear).sum())
        outcomes |= set(teacher_mask[resp].tolist())
        frac = teacher_mask[resp].float().mean().item()
        assert r.stats["teacher_fraction"] == pytest.approx(frac)
    assert outcomes == {True, False}, "the test models must make SWITCH decide both ways"
    assert skipped <= 0.02 * checked


def adaswitch_first_trigger(d, resp_len, k, window):
    """Independent re-derivation for one row: first i >= window with d_i > k·mean(d[i-window:i]), the
    smallest |d_i − k·mean| among the checks up to it (for the tie margin), or (None, gap)."""
    gap = math.inf
    for i in range(window, resp_len):
        ref = k * sum(d[i - window:i]) / window
        gap = min(gap, abs(d[i] - ref))
        if d[i] > ref:
            return i, gap
    return None, gap


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("distance,fn,k", [("fkl", D.forward_kl, 1.6), ("rkl", D.reverse_kl, 1.6),
                                           ("jsd", D.jsd, 1.6), ("tvd", D.tvd, 1.25)])
def test_adaswitch_one_switch_at_the_first_trigger(pair, distance, fn, k, block):
    """The window a decision reads holds the distances of the row's own earlier positions: under
    draft-and-verify, a draft the rule rejected must leave no trace in it. A fourth seed makes 24 rows, so
    that the 5 % allowance for near-ties is one row (a row with |d_i − k·mean| < MARGIN turns up in about
    one of the 16 cases' 18 rows)."""
    student, teacher = pair
    window = 4
    rows = skipped = 0
    outcomes = set()
    for seed in (*SEEDS, 3):
        r = run("adaswitch", student, teacher, seed, temperature=0.7, k=k, window=window, distance=distance,
                block=block)
        resp, teacher_mask, _ = response(r)
        d = fn(full_logits(student, r), full_logits(teacher, r))  # (B, N)
        for b in range(d.shape[0]):
            n = int(resp[b].sum())
            first, gap = adaswitch_first_trigger(d[b].tolist(), n, k, window)
            rows += 1
            if gap < MARGIN:
                skipped += 1
                continue
            expected = torch.zeros(n, dtype=torch.bool)
            if first is not None:
                expected[first:] = True  # token `first` and every later one from the teacher
            assert (teacher_mask[b, :n] == expected).all(), (seed, b, first)
            assert int(r.stats["switch_positions"][b]) == (-1 if first is None else first)
            assert bool(r.stats["switched"][b]) == (first is not None)
            outcomes.add(first is not None)
    assert outcomes == {True, False}, "the test models must make AdaSwitch switch on some rows only"
    assert skipped <= 0.05 * rows


def test_adaswitch_drops_the_student_once_every_row_switched(pair):
    student, teacher = pair
    window = 3  # k = 0: every row switches at step `window` (d > 0 always)
    r = run("adaswitch", student, teacher, seed=0, k=0.0, window=window)
    resp, teacher_mask, _ = response(r)
    assert (r.stats["switch_positions"] == window).all()
    assert not teacher_mask[:, :window].any() and teacher_mask[:, window:][resp[:, window:]].all()
    assert r.stats["student_forwards"] == 1 + window  # prefill + steps 0 … window-1
    assert r.stats["teacher_forwards"] == 24  # prefill + 23 steps


def test_adaswitch_with_a_bf16_teacher_and_an_fp32_student(pair):
    """The paper profile's GPU dtypes: the teacher is stored in bfloat16, the student trains in float32. Once
    some rows have switched (and others not yet), the rows the student let go are filled from the teacher's
    logits: the two dtypes meet there, which an all-float32 test never sees."""
    student, _ = pair
    r = run("adaswitch", student, tiny_llama(1).to(torch.bfloat16), seed=0, k=1.0, window=2, keep=True)
    switched = r.stats["switch_positions"][r.stats["switched"]]
    assert len(switched.unique()) > 1, "rows must switch at different steps to reach the mixed-rows path"
    assert r.teacher_logits.dtype == torch.bfloat16


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("top_k", [1, 5, 25])
def test_skd_student_tokens_lie_in_teacher_top_k(pair, top_k, block):
    student, teacher = pair
    checked = skipped = 0
    outcomes = set()
    for seed in SEEDS:
        r = run("skd", student, teacher, seed, top_k=top_k, block=block)
        resp, teacher_mask, tokens = response(r)
        p = full_logits(teacher, r)  # (B, N, V)
        top = p.topk(top_k + 1, dim=-1).values  # (B, N, K+1)
        kth, next_ = top[..., -2], top[..., -1]  # K-th and (K+1)-th largest teacher logits
        chosen = p.gather(-1, tokens[..., None]).squeeze(-1)  # (B, N)
        student_tok = resp & ~teacher_mask
        clear = student_tok & (kth - next_ > MARGIN)  # skip a near-tie on the top-K boundary
        assert (chosen[clear] >= kth[clear]).all(), "a student token outside the teacher's top-K was kept"
        checked, skipped = checked + int(clear.sum()), skipped + int((student_tok & ~clear).sum())
        outcomes |= set(teacher_mask[resp].tolist())
    assert outcomes == {True, False}
    assert skipped <= 0.02 * checked


@pytest.mark.parametrize("block", BLOCKS)
def test_skd_limits(pair, block):
    student, teacher = pair
    r0 = run("skd", student, teacher, seed=0, top_k=0, block=block)  # K = 0: the teacher writes everything
    resp, teacher_mask, _ = response(r0)
    assert (teacher_mask == resp).all()
    rv = run("skd", student, teacher, seed=0, top_k=V, block=block)  # K = |V|: on-policy
    assert not rv.from_teacher.any()


@pytest.mark.parametrize("drawing", [{"temperature": 0.0}, {"draw_top_k": 1}, {"draw_top_p": 1e-6}],
                         ids=["greedy", "draw_top_k=1", "draw_top_p=1e-6"])
@pytest.mark.parametrize("name,params,block", with_blocks(
    ("student", {}), ("teacher", {}), ("skd", {"top_k": 5}), ("switch", {"tau0": 0.3, "decay": 0.04}),
    ("adaswitch", {"k": 1.6, "window": 4})))
def test_greedy_is_argmax_of_the_emitter(pair, name, params, block, drawing):
    """Temperature 0, or temperature 1 with a drawing filter that keeps one id (top_k = 1, a tiny top_p
    nucleus): every token is the argmax of the recomputed logits of whoever emitted it, so the filters
    reach the student's proposals (drafts) and the teacher's draws; for SKD the whole rule is then
    deterministic (argmax q kept iff inside the teacher's top-K, else argmax p)."""
    student, teacher = pair
    outcomes = set()
    for seed in SEEDS:
        r = run(name, student, teacher, seed, block=block, **drawing, **params)
        resp, teacher_mask, tokens = response(r)
        q, p = full_logits(student, r), full_logits(teacher, r)
        emitter = torch.where(teacher_mask[..., None], p, q)
        top2 = emitter.topk(2, dim=-1).values
        clear = resp & (top2[..., 0] - top2[..., 1] > MARGIN)
        assert (tokens[clear] == emitter.argmax(-1)[clear]).all()
        assert clear.sum() >= 0.95 * resp.sum()
        if name == "skd":
            kth = p.topk(params["top_k"], dim=-1).values[..., -1]
            inside = p.gather(-1, q.argmax(-1, keepdim=True)).squeeze(-1) >= kth
            assert (teacher_mask[resp] == ~inside[resp]).all()
        outcomes |= set(teacher_mask[resp].tolist())
    if name in ("skd", "switch", "adaswitch"):
        assert outcomes == {True, False}


# ------------------------------------------------------------------------------------------------------
# The rollout layout: EOS, padding, masks, teacher logits, determinism.


@pytest.fixture(scope="module")
def eos_pair():
    return tiny_llama(0, eos_bias=2.5), tiny_llama(1, eos_bias=2.5)


@pytest.mark.parametrize("pad", [PAD, EOS])  # pad == eos must not hide the real EOS
@pytest.mark.parametrize("name,block", with_blocks("student", "skd", "switch", "adaswitch"))
def test_rows_stop_at_eos_and_masks_include_it(eos_pair, name, pad, block):
    student, teacher = eos_pair
    lengths = set()
    for seed in SEEDS:
        r = run(name, student, teacher, seed, eos=EOS, pad=pad, batch=8, block=block,
                **({"top_k": 5} if name == "skd" else {}))
        P = r.prompt_length
        resp, teacher_mask, tokens = response(r)
        for b in range(tokens.shape[0]):
            hits = (tokens[b] == EOS).nonzero()
            n = int(hits[0]) + 1 if len(hits) else tokens.shape[1]  # up to and including the first EOS
            lengths.add(n)
            assert resp[b, :n].all() and not resp[b, n:].any()
            assert (tokens[b, n:] == pad).all()
            assert (r.attention_mask[b, P:P + n] == 1).all() and (r.attention_mask[b, P + n:] == 0).all()
            assert not teacher_mask[b, n:].any()
        _, pm = prompts(seed, 8)
        assert (r.attention_mask[:, :P] == pm).all() and not r.response_mask[:, :P].any()
        assert r.stats["new_tokens"] == int(resp.sum())
        assert tokens.shape[1] == max(int(resp[b].sum()) for b in range(tokens.shape[0]))  # trimmed
    assert len(lengths) >= 3, "rows should end at different steps"


def test_loop_stops_when_all_rows_end(eos_pair):
    student, _ = eos_pair
    r = run("student", student, None, seed=0, eos=EOS, max_new_tokens=200, batch=3)
    n = r.input_ids.shape[1] - r.prompt_length
    assert n < 200 and r.stats["student_forwards"] == n  # prefill + (n - 1) steps


@pytest.mark.parametrize("name,block", with_blocks("teacher", "skd", "switch", "adaswitch"))
def test_teacher_logits_equal_a_fresh_forward(eos_pair, name, block):
    student, teacher = eos_pair
    r = run(name, None if name == "teacher" else student, teacher, seed=1, eos=EOS, keep=True, block=block)
    resp, _, _ = response(r)
    assert r.teacher_logits.shape == (*resp.shape, V)
    fresh = full_logits(teacher, r)
    torch.testing.assert_close(r.teacher_logits[resp], fresh[resp], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,block", with_blocks("student", "skd", "switch", "adaswitch"))
def test_same_seed_same_rollout(pair, name, block):
    student, teacher = pair
    a, b = (run(name, student, teacher, seed=3, block=block) for _ in range(2))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.from_teacher, b.from_teacher)
    c = run(name, student, teacher, seed=4, block=block)
    assert not torch.equal(a.input_ids[:, a.prompt_length:], c.input_ids[:, c.prompt_length:])


@pytest.mark.parametrize("block", BLOCKS)
def test_global_rng_untouched_and_training_mode_restored(pair, block):
    student, teacher = pair
    student.train()
    state = torch.get_rng_state()
    run("switch", student, teacher, seed=0, block=block)
    assert torch.equal(state, torch.get_rng_state()) and student.training
    student.eval()


@pytest.mark.parametrize("name,block", with_blocks("student", "teacher", "switch", "adaswitch"))
def test_left_padding_gives_the_same_tokens_as_unpadded(pair, name, block):
    """Greedy: each row in a padded batch of mixed prompt lengths equals that row decoded alone (under
    draft-and-verify a row's blocks do not depend on the other rows either)."""
    student, teacher = pair
    ids, mask = prompts(seed=5)
    params = {"switch": {"tau0": 0.3, "decay": 0.04}, "adaswitch": {"k": 1.6, "window": 4}}.get(name, {})
    sampler = build_sampler(name, **params, **({"block": block} if name in SWITCHING else {}))
    kw = dict(max_new_tokens=12, eos_token_id=None, pad_token_id=PAD, temperature=0.0,
              generator=torch.Generator().manual_seed(0))
    batched = sampler.sample(student, teacher, ids, mask, **kw)
    P = ids.shape[1]
    for b in range(ids.shape[0]):
        real = ids[b : b + 1, mask[b].bool()]
        alone = sampler.sample(student, teacher, real, torch.ones_like(real), **kw)
        assert torch.equal(batched.input_ids[b, P:], alone.input_ids[0, real.shape[1]:]), b
        assert torch.equal(batched.from_teacher[b, P:], alone.from_teacher[0, real.shape[1]:]), b


@pytest.mark.parametrize("block", BLOCKS)
def test_wider_teacher_vocabulary_uses_the_shared_prefix(pair, block, monkeypatch):
    student, _ = pair
    monkeypatch.setattr(D, "_warned_widths", set())  # the width warning fires once a process
    wide = tiny_llama(1, vocab=V + 8)  # same family, 8 extra ids (like Qwen2.5 152064 vs 151936)
    with pytest.warns(UserWarning, match="kdlib samplers: student logits have width"):
        r = run("switch", student, wide, seed=0, keep=True, tau0=0.3, decay=0.04, block=block)
    resp, teacher_mask, tokens = response(r)
    assert (tokens < V).all() and r.teacher_logits.shape[-1] == V + 8
    with pytest.warns(UserWarning):
        d = D.jsd(full_logits(student, r), full_logits(wide, r))  # divergences compare on the prefix
    tau = 0.3 * torch.exp(-0.04 * torch.arange(d.shape[1]))
    clear = resp & ((d - tau).abs() > MARGIN)
    assert (teacher_mask[clear] == (d > tau)[clear]).all()


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_a_model_that_does_not_run_still_bounds_the_ids_drawn(pair, name, monkeypatch):
    """The teacher sampler never runs the student, nor the on-policy one the teacher: a wider model must still
    not write ids the other cannot read (the student's embedding would fail on them later)."""
    monkeypatch.setattr(D, "_warned_widths", set())
    student, teacher = pair
    wide = tiny_llama(1, vocab=V + 8)
    for s, t in ((student, wide), (wide, teacher)):  # a wider teacher, then a wider student
        with pytest.warns(UserWarning, match=f"width {s.config.vocab_size} and teacher logits "
                                             f"{t.config.vocab_size}") as caught:
            r = run(name, s, t, seed=0, max_new_tokens=32)
        assert caught[0].filename == __file__  # the warning names the caller's line, not kdlib's
        _, _, tokens = response(r)
        assert (tokens < V).all()
    # without the other model (evaluation) the student draws over its own full width
    r = run("student", wide, None, seed=0, max_new_tokens=32)
    assert r.input_ids.max() < V + 8


def test_adaswitch_warns_when_its_window_leaves_no_room_to_switch(pair):
    student, teacher = pair
    with pytest.warns(UserWarning, match="max_new_tokens=4 <= window=4: a row can switch only") as caught:
        r = run("adaswitch", student, teacher, seed=0, max_new_tokens=4, k=0.0, window=4)
    assert caught[0].filename == __file__ and not r.from_teacher.any()  # k = 0 would fire at the first chance
    r = run("adaswitch", student, teacher, seed=0, max_new_tokens=5, k=0.0, window=4)  # no warning: room for one
    assert r.from_teacher[:, r.prompt_length + 4].all()


# ------------------------------------------------------------------------------------------------------
# Drawing tokens, and parameter validation.


def test_draw_tokens_matches_the_tempered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    for temperature in (0.5, 1.0, 2.0):
        counts = torch.bincount(draw_tokens(logits, g, temperature), minlength=4).float() / 20000
        torch.testing.assert_close(counts, (logits[0] / temperature).softmax(-1), atol=0.015, rtol=0)
    assert (draw_tokens(logits, g, 1.0, top_k=2) < 2).all()
    assert (draw_tokens(logits, g, 1.0, top_p=0.6) == 0).all()  # p(0) = 0.64 covers the nucleus
    assert (draw_tokens(logits[:3], g, 0.0) == 0).all()
    a = draw_tokens(logits[:50], torch.Generator().manual_seed(7))
    assert torch.equal(a, draw_tokens(logits[:50], torch.Generator().manual_seed(7)))


def test_draw_from_log_probs_is_the_same_draw():
    """The decoder hands draw_tokens log-probabilities (log_probs=True skips a softmax at temperature 1):
    with the same generator state it must pick the same ids as from the raw logits, at every temperature
    and filter."""
    z = torch.randn(500, 300, generator=torch.Generator().manual_seed(1)) * 3 + 5  # unnormalised
    log_p = z.log_softmax(-1)
    for kw in ({}, {"temperature": 0.7}, {"top_k": 20}, {"top_p": 0.9}, {"temperature": 0.0}):
        a = draw_tokens(z, torch.Generator().manual_seed(3), **kw)
        b = draw_tokens(log_p, torch.Generator().manual_seed(3), log_probs=True, **kw)
        assert (a == b).float().mean() > 0.99, kw  # equal up to a rare tie at a CDF boundary (rounding)
        assert len(set(a.tolist())) > 50  # real draws, not one id


def test_cdf_is_summed_in_float64_and_cpu_draws_are_unchanged():
    """CUDA sums float32 in float32, so over a 150k vocabulary the running sum stops moving and tail ids are
    never drawn; the sum is asked for in float64 on every device (a CPU run cannot show CUDA's rounding, so
    the dtype the cumsum sees is checked). On CPU, where float32 was already summed in float64, every draw
    stays the one the plain float32 cumsum gave."""
    from torch.overrides import TorchFunctionMode

    from kdlib._samplers.decoder import _inverse_cdf

    class CumsumDtypes(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.cumsum, torch.Tensor.cumsum):
                self.seen.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    probs = (torch.randn(64, 151936, generator=torch.Generator().manual_seed(0)) * 4).softmax(-1)
    with CumsumDtypes() as mode:
        got = _inverse_cdf(probs, torch.Generator().manual_seed(1))
    assert mode.seen == [torch.float64]
    u = torch.rand((64, 1), generator=torch.Generator().manual_seed(1))
    cdf = probs.cumsum(-1)  # what the draw used before
    assert torch.equal(got, torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=151935).squeeze(-1))


@pytest.mark.parametrize("kind,fn", [("fkl", D.forward_kl), ("rkl", D.reverse_kl), ("jsd", D.jsd),
                                     ("tvd", D.tvd)])
def test_step_distance_equals_the_divergences(kind, fn):
    """The decoder's fast per-step distance (what SWITCH and AdaSwitch decide on) against the chunked
    training divergences, on ordinary, peaked, near-equal and disjoint distributions."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 4096, generator=g) * torch.tensor([0.5, 1, 3, 8, 1, 30])[:, None]
    p = torch.randn(6, 4096, generator=g) * torch.tensor([0.5, 1, 3, 8, 1, 30])[:, None]
    p[4] = q[4] + 1e-3 * torch.randn(4096, generator=g)  # near-equal: distance ~ 0
    q[5], p[5] = -1e4, -1e4
    q[5, 0], p[5, 1] = 0.0, 0.0  # disjoint one-hots: JSD = ln 2, TVD = 1
    d = step_distance(kind, q, p)
    expected = fn(q[:, None].double(), p[:, None].double())[:, 0]
    # the decoder passes log-probabilities and skips the normalisation: same values
    d_lp = step_distance(kind, q.log_softmax(-1), p.log_softmax(-1), log_probs=True)
    torch.testing.assert_close(d_lp, d, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(d.double()[:5], expected[:5], atol=1e-5, rtol=1e-4)
    if kind in ("jsd", "tvd"):
        assert d[5].item() == pytest.approx({"jsd": math.log(2), "tvd": 1.0}[kind], abs=1e-6)
    assert d[4].item() < (1e-3 if kind == "tvd" else 1e-5)  # TVD is first order in the difference
    assert (d >= 0).all()
    with pytest.raises(ValueError, match="unknown distance"):
        step_distance("kl", q, p)


def test_defaults_and_validation():
    assert set(SAMPLER_DEFAULTS) == {"student", "teacher", "skd", "switch", "adaswitch"}
    assert SAMPLER_DEFAULTS["skd"]["top_k"] == 2  # calibrated to the 197-word vocabulary (docs/workload.md)
    # draft-and-verify where it was measured faster on the embedded pair (benchmarks/bench_samplers.py)
    assert [SAMPLER_DEFAULTS[n]["block"] for n in ("skd", "switch", "adaswitch")] == [4, 1, 1]
    from kdlib._paper import PAPER_SAMPLER_PARAMS

    assert PAPER_SAMPLER_PARAMS["skd"]["top_k"] == 25  # the SKD reference setup, at the papers' scale
    for name, params in SAMPLER_DEFAULTS.items():
        validate_sampler_params(name, **params)
        assert build_sampler(name).name == name
    bad = [(("nope",), {}, "nope"), (("skd",), {"k": 3}, "'k'"), (("skd",), {"top_k": -1}, "top_k"),
           (("skd",), {"top_k": 2.5}, "top_k"), (("switch",), {"schedule": "cosine"}, "cosine"),
           (("switch",), {"tau0": -0.1}, "tau0"), (("switch",), {"decay": float("nan")}, "decay"),
           (("adaswitch",), {"window": 0}, "window"), (("adaswitch",), {"distance": "kl"}, "'kl'"),
           (("adaswitch",), {"k": True}, "k="), (("student",), {"top_k": 3}, "top_k"),
           (("skd",), {"block": 0}, "block=0"), (("switch",), {"block": 2.5}, "block=2.5"),
           (("adaswitch",), {"block": True}, "block=True"), (("teacher",), {"block": 2}, "'block'")]
    for args, params, needle in bad:
        with pytest.raises(ValueError, match=needle):
            validate_sampler_params(*args, **params)


def test_sample_rejects_bad_inputs(pair):
    student, teacher = pair
    ids, mask = prompts(0)
    kw = dict(max_new_tokens=4, eos_token_id=None, pad_token_id=PAD, generator=torch.Generator())
    with pytest.raises(ValueError, match="left-padded"):
        build_sampler("student").sample(student, None, ids, mask.flip(1), **kw)
    with pytest.raises(ValueError, match="teacher"):
        build_sampler("switch").sample(student, None, ids, mask, **kw)
    with pytest.raises(ValueError, match="temperature"):
        build_sampler("student").sample(student, None, ids, mask, temperature=-1.0, **kw)


def test_eos_and_pad_default_to_the_models_config():
    """Called as the issue's contract shows (no eos/pad ids), the sampler reads them from the model:
    the same rollout as passing the config's ids explicitly, rows stopping at that EOS."""
    student, teacher = tiny_llama(0, eos_bias=3.0), tiny_llama(1, eos_bias=3.0)
    ids, mask = prompts(0)
    for name in ("student", "switch"):
        sampler = build_sampler(name)
        implicit = sampler.sample(student, teacher, ids, mask, max_new_tokens=24, temperature=1.0,
                                  generator=torch.Generator().manual_seed(5))
        explicit = sampler.sample(student, teacher, ids, mask, max_new_tokens=24, temperature=1.0,
                                  eos_token_id=EOS, pad_token_id=PAD, generator=torch.Generator().manual_seed(5))
        assert torch.equal(implicit.input_ids, explicit.input_ids)
        assert implicit.input_ids.shape[1] - implicit.prompt_length < 24  # EOS came early: it was read


@pytest.mark.parametrize("name,block", with_blocks("student", "teacher", "skd", "switch", "adaswitch"))
def test_cached_decoding_uses_no_deprecated_transformers_argument(pair, name, block):
    """The KV cache goes by its current name (`cache`): transformers announces the removal of
    `past_key_values` (5.40) with a once-per-process log warning, so the warning cache is cleared first and
    every record of the rollout is collected."""
    import logging

    from transformers.utils import logging as hf_logging

    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logging.Logger.warning_once.cache_clear()
    handler, logger = Collect(level=logging.WARNING), hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        run(name, *pair, seed=0, max_new_tokens=6, block=block, **({"top_k": 5} if name == "skd" else {}))
    finally:
        logger.removeHandler(handler)
    assert not [m for m in records if "deprecated" in m.lower()], records
