"""Properties of kdlib._divergences: closed forms, limits, gradients, chunking, masking, reduction."""

import math
import warnings

import pytest
import torch

from kdlib import _divergences as D


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a shared 2-core machine they only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TEACHER_NAMES = ["fkl", "rkl", "jsd", "tvd", "sfkl", "srkl"]
FUNCS = {"fkl": D.forward_kl, "rkl": D.reverse_kl, "jsd": D.jsd, "tvd": D.tvd,
         "sfkl": D.skew_forward_kl, "srkl": D.skew_reverse_kl}


def logits(*shape, seed=0, scale=2.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def reference(name, s, t, *, beta=0.5, alpha=0.1, temperature=1.0):
    """Independent float64 formulas on probabilities (not log-probs), under plain autograd."""
    p = torch.softmax(t.double() / temperature, -1)
    q = torch.softmax(s.double() / temperature, -1)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    return {
        "fkl": lambda: kl(p, q),
        "rkl": lambda: kl(q, p),
        "jsd": lambda: beta * kl(p, beta * p + (1 - beta) * q) + (1 - beta) * kl(q, beta * p + (1 - beta) * q),
        "tvd": lambda: 0.5 * (p - q).abs().sum(-1),
        "sfkl": lambda: kl(p, alpha * p + (1 - alpha) * q),
        "srkl": lambda: kl(q, (1 - alpha) * p + alpha * q),
    }[name]()


# ---- values ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEACHER_NAMES)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_zero_at_identity(name, temperature):
    x = logits(2, 5, 50)
    values = D.per_token_loss(name, x, teacher_logits=x.clone(), temperature=temperature)
    assert values.shape == (2, 5) and values.dtype == torch.float32
    torch.testing.assert_close(values, torch.zeros(2, 5), atol=2e-6, rtol=0)


P = [0.7, 0.2, 0.1]  # teacher
Q = [0.2, 0.5, 0.3]  # student


def _kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def _mix(w, a, b):
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


def _temper(dist, tau):
    w = [x ** (1 / tau) for x in dist]
    return [x / sum(w) for x in w]


def hand_value(name, p, q, beta=0.3, alpha=0.1):
    """The definitions of docs/methods.md §2 in plain Python on 3-element distributions."""
    if name == "fkl":
        return _kl(p, q)
    if name == "rkl":
        return _kl(q, p)
    if name == "jsd":
        m = _mix(beta, p, q)
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    if name == "tvd":
        return 0.5 * sum(abs(x - y) for x, y in zip(p, q))
    if name == "sfkl":
        return _kl(p, _mix(alpha, p, q))
    return _kl(q, _mix(1 - alpha, p, q))  # srkl: (1 - α) p + α q


@pytest.mark.parametrize("name", TEACHER_NAMES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_closed_form_on_hand_computed_distributions(name, temperature):
    s = torch.tensor(Q).log().view(1, 1, 3) + 1.7  # logits are log-probs up to a constant
    t = torch.tensor(P).log().view(1, 1, 3) - 0.4
    params = {"jsd": {"beta": 0.3}, "sfkl": {"alpha": 0.1}, "srkl": {"alpha": 0.1}}.get(name, {})
    got = FUNCS[name](s, t, temperature=temperature, **params).item()
    # τ divides the logits: softmax(log p / τ) ∝ p^(1/τ)
    want = hand_value(name, _temper(P, temperature), _temper(Q, temperature))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_forward_kl_is_kl_not_teacher_cross_entropy():
    s = torch.tensor(Q).log().view(1, 1, 3)
    t = torch.tensor(P).log().view(1, 1, 3)
    cross_entropy = -sum(x * math.log(y) for x, y in zip(P, Q))
    entropy = -sum(x * math.log(x) for x in P)
    assert D.forward_kl(s, t).item() == pytest.approx(cross_entropy - entropy, rel=1e-5)


def test_cross_entropy_values_and_ignored_positions():
    s = torch.tensor([Q, P]).log().view(1, 2, 3)
    ids = torch.tensor([[1, -100]])
    values = D.cross_entropy(s, ids)
    assert values.dtype == torch.float32
    assert values[0, 0].item() == pytest.approx(-math.log(0.5), rel=1e-6)
    assert values[0, 1].item() == 0.0
    with pytest.raises(ValueError, match="outside the student vocabulary"):
        D.cross_entropy(s, torch.tensor([[1, 3]]))


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_matches_independent_reference(name):
    s, t = logits(3, 4, 40, seed=1), logits(3, 4, 40, seed=2)
    got = D.per_token_loss(name, s, teacher_logits=t, temperature=1.3)
    want = reference(name, s, t, temperature=1.3).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_jsd_half_is_symmetric_and_bounded_by_ln2():
    s, t = logits(4, 6, 30, seed=3), logits(4, 6, 30, seed=4)
    torch.testing.assert_close(D.jsd(s, t, beta=0.5), D.jsd(t, s, beta=0.5), rtol=1e-5, atol=1e-7)
    # nearly disjoint supports approach the bound ln 2 from below
    far_s = torch.full((1, 2, 4), -40.0)
    far_t = far_s.clone()
    far_s[..., 0], far_t[..., 1] = 40.0, 40.0
    values = torch.cat([D.jsd(s, t).flatten(), D.jsd(far_s, far_t).flatten()])
    assert (values <= math.log(2) + 1e-6).all()
    assert D.jsd(far_s, far_t).min().item() == pytest.approx(math.log(2), rel=1e-5)


def test_jsd_beta_weights_the_teacher():
    # swapping the roles of p and q is the same as β -> 1 − β; a swapped mixture would fail this
    s, t = logits(2, 3, 20, seed=5), logits(2, 3, 20, seed=6)
    torch.testing.assert_close(D.jsd(s, t, beta=0.2), D.jsd(t, s, beta=0.8), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(D.jsd(s, t, beta=0.2), D.jsd(s, t, beta=0.8), rtol=1e-3)
    want = reference("jsd", s, t, beta=0.2).float()
    torch.testing.assert_close(D.jsd(s, t, beta=0.2), want, rtol=1e-5, atol=1e-6)


def test_jsd_limits_tend_to_forward_and_reverse_kl():
    s = logits(2, 3, 25, seed=7, scale=1.0, dtype=torch.float64).requires_grad_()
    t = logits(2, 3, 25, seed=8, scale=1.0, dtype=torch.float64)
    fkl, rkl = D.forward_kl(s, t), D.reverse_kl(s, t)
    errors = []
    for eps in [1e-2, 1e-3, 1e-4, 1e-5]:
        near0, near1 = D.jsd(s, t, beta=eps) / eps, D.jsd(s, t, beta=1 - eps) / eps
        errors.append(max(((near0 - fkl) / fkl).abs().max().item(), ((near1 - rkl) / rkl).abs().max().item()))
    assert errors[2] < 1e-3 and errors[3] < 1e-4  # JSD(β)/β − FKL = O(β)
    assert all(a > 5 * b for a, b in zip(errors, errors[1:]))  # each decade of β cuts the error
    # the gradient direction tends to FKL's as well
    (g_jsd,) = torch.autograd.grad(D.jsd(s, t, beta=1e-4).sum() / 1e-4, s)
    (g_fkl,) = torch.autograd.grad(D.forward_kl(s, t).sum(), s)
    torch.testing.assert_close(g_jsd, g_fkl, rtol=1e-2, atol=1e-4)
    # in float32 too, to a looser tolerance
    near0 = D.jsd(s.detach().float(), t.float(), beta=1e-3) / 1e-3
    torch.testing.assert_close(near0, fkl.detach().float(), rtol=2e-2, atol=1e-4)


def test_skew_divergences_at_alpha_zero_are_the_plain_kls():
    s, t = logits(2, 3, 20, seed=9), logits(2, 3, 20, seed=10)
    torch.testing.assert_close(D.skew_forward_kl(s, t, alpha=0.0), D.forward_kl(s, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(D.skew_reverse_kl(s, t, alpha=0.0), D.reverse_kl(s, t), rtol=1e-5, atol=1e-6)
    assert (D.skew_forward_kl(s, t, alpha=0.1) < D.forward_kl(s, t)).all()


def test_temperature_divides_both_logits():
    s, t = logits(2, 3, 20, seed=11), logits(2, 3, 20, seed=12)
    for name in TEACHER_NAMES:
        torch.testing.assert_close(D.per_token_loss(name, s, teacher_logits=t, temperature=2.5),
                                   D.per_token_loss(name, s / 2.5, teacher_logits=t / 2.5), rtol=1e-5, atol=1e-6)


def test_teacher_with_minus_inf_logits():
    # a truncated teacher (top-k, masked vocabulary) has p = 0 entries: 0·log 0 = 0, no NaN
    s = logits(1, 2, 6, seed=13)
    t = logits(1, 2, 6, seed=14)
    t[0, 0, :3] = -math.inf
    for name in ["fkl", "jsd", "tvd", "sfkl", "srkl"]:
        x = s.clone().requires_grad_()
        values = D.per_token_loss(name, x, teacher_logits=t)
        values.sum().backward()
        assert torch.isfinite(values).all() and torch.isfinite(x.grad).all(), name
        p, q = torch.softmax(t[0, 0].double(), -1).tolist(), torch.softmax(s[0, 0].double(), -1).tolist()
        if name == "fkl":  # the zero-probability teacher ids drop out of Σ p log(p/q)
            want = sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)
            assert values[0, 0].item() == pytest.approx(want, rel=1e-5)
    assert math.isinf(D.reverse_kl(s, t)[0, 0].item())  # KL(q‖p) is truly infinite where p = 0 < q


# ---- gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEACHER_NAMES + ["ce"])
def test_gradcheck_float64_chunked(name):
    s = logits(2, 3, 7, seed=15, dtype=torch.float64).requires_grad_()
    if name == "ce":
        other = {"target_ids": torch.tensor([[0, 6, -100], [3, 3, 1]])}
    else:
        other = {"teacher_logits": logits(2, 3, 7, seed=16, dtype=torch.float64)}
    params = {"jsd": {"beta": 0.3}, "sfkl": {"alpha": 0.2}, "srkl": {"alpha": 0.2}}.get(name, {})

    def f(x):
        return D.per_token_loss(name, x, temperature=1.5, chunk_size=2, **other, **params)

    assert torch.autograd.gradcheck(f, (s,))


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_gradient_equals_autograd_of_reference(name):
    s = logits(2, 4, 30, seed=17, dtype=torch.float64).requires_grad_()
    t = logits(2, 4, 30, seed=18, dtype=torch.float64)
    weights = torch.rand(2, 4, dtype=torch.float64)  # a non-uniform upstream gradient
    (got,) = torch.autograd.grad((D.per_token_loss(name, s, teacher_logits=t, temperature=0.7) * weights).sum(), s)
    (want,) = torch.autograd.grad((reference(name, s, t, temperature=0.7) * weights).sum(), s)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)


def test_teacher_gets_no_gradient_and_a_warning():
    s, t = logits(1, 2, 5).requires_grad_(), logits(1, 2, 5, seed=1).requires_grad_()
    D._warned_teacher_grad = False
    with pytest.warns(UserWarning, match="teacher is a fixed target"):
        D.forward_kl(s, t).sum().backward()
    assert t.grad is None and s.grad is not None


# ---- chunking, dtypes, widths ------------------------------------------------------------------------


def _values_and_grad(name, s, other, **kw):
    x = s.detach().clone().requires_grad_()
    key = "target_ids" if name == "ce" else "teacher_logits"
    values = D.per_token_loss(name, x, **{key: other}, **kw)
    (values * torch.linspace(0.5, 2.0, values.numel()).view(values.shape)).sum().backward()
    return values.detach(), x.grad


@pytest.mark.parametrize("name", TEACHER_NAMES + ["ce"])
def test_chunked_equals_unchunked(name):
    s, t = logits(3, 5, 64, seed=19), logits(3, 5, 64, seed=20)
    other = torch.randint(-1, 64, (3, 5), generator=torch.Generator().manual_seed(0)) if name == "ce" else t
    params = {"jsd": {"beta": 0.7}}.get(name, {})
    whole_v, whole_g = _values_and_grad(name, s, other, chunk_size=1000, **params)
    for chunk_size in [1, 3, 5, 7, None]:  # per-row, within a sequence, one sequence, several sequences
        v, g = _values_and_grad(name, s, other, chunk_size=chunk_size, **params)
        torch.testing.assert_close(v, whole_v, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(g, whole_g, rtol=1e-6, atol=1e-8)
    if name != "ce":  # and both equal the plain-autograd reference
        torch.testing.assert_close(whole_v, reference(name, s, t, **params).float(), rtol=1e-5, atol=1e-6)


def test_non_contiguous_shifted_logits():
    # the training loop passes logits[:, :-1]; chunks are views, so no copy and the same result
    s, t = logits(2, 6, 32, seed=21), logits(2, 6, 32, seed=22)
    got = D.forward_kl(s[:, :-1], t[:, 1:], chunk_size=2)
    want = D.forward_kl(s[:, :-1].contiguous(), t[:, 1:].contiguous())
    torch.testing.assert_close(got, want)


def test_saves_no_full_size_intermediate_for_backward():
    s, t = logits(2, 8, 100).requires_grad_(), logits(2, 8, 100, seed=1)
    saved = []

    def pack(x):
        saved.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        D.jsd(s, t, chunk_size=4)
    big = [x for x in saved if x.numel() >= s.numel()]
    assert saved and all(x.data_ptr() in (s.data_ptr(), t.data_ptr()) for x in big)
    # a plain autograd implementation would save (B, T, V) intermediates: the check can fail
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        reference("jsd", s, t)
    assert any(x.numel() >= s.numel() and x.data_ptr() != s.data_ptr() for x in saved)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["fkl", "jsd", "ce"])
def test_low_precision_inputs_are_computed_in_float32(name, dtype):
    s, t = logits(2, 3, 50, seed=23, dtype=dtype), logits(2, 3, 50, seed=24, dtype=dtype)
    other = torch.randint(0, 50, (2, 3)) if name == "ce" else t
    v_low, g_low = _values_and_grad(name, s, other, chunk_size=2)
    v32, g32 = _values_and_grad(name, s.float(), other if name == "ce" else t.float(), chunk_size=2)
    assert v_low.dtype == torch.float32 and g_low.dtype == dtype
    torch.testing.assert_close(v_low, v32, rtol=1e-6, atol=1e-7)  # same numbers: the upcast happens first
    torch.testing.assert_close(g_low.float(), g32.to(dtype).float())


def test_width_mismatch_uses_shared_prefix_and_warns_once():
    s, t = logits(2, 3, 10, seed=25), logits(2, 3, 12, seed=26)
    D._warned_widths.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = D.jsd(s, t)
        D.forward_kl(s, t)
    assert len([w for w in caught if "shared id prefix" in str(w.message)]) == 1
    torch.testing.assert_close(first, D.jsd(s, t[..., :10]))
    # a wider student: its extra ids are outside the comparison and get a zero gradient
    wide = logits(2, 3, 12, seed=27).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        D.forward_kl(wide, s).sum().backward()
    assert (wide.grad[..., 10:] == 0).all() and (wide.grad[..., :10] != 0).any()


# ---- masking and reduction ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_non_finite_logits_at_masked_positions_change_nothing(name):
    s, t = logits(2, 4, 16, seed=28), logits(2, 4, 16, seed=29)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = False
    bad_s, bad_t = s.clone(), t.clone()
    bad_s[0, 1, 3] = math.nan
    bad_t[1, 3] = math.inf

    def loss_and_grad(student, teacher):
        x = student.clone().requires_grad_()
        loss = D.reduce_loss(D.per_token_loss(name, x, teacher_logits=teacher, chunk_size=3), mask, mask.sum())
        loss.backward()
        return loss.detach(), x.grad

    clean_loss, clean_grad = loss_and_grad(s, t)
    bad_loss, bad_grad = loss_and_grad(bad_s, bad_t)
    assert torch.isfinite(bad_loss) and torch.isfinite(bad_grad).all()
    torch.testing.assert_close(bad_loss, clean_loss)
    torch.testing.assert_close(bad_grad, clean_grad)
    assert (bad_grad[~mask] == 0).all()


def test_masked_sum_uses_where_not_multiplication():
    values = torch.tensor([[1.0, math.nan, 2.0], [math.inf, 3.0, -math.inf]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    assert D.masked_sum(values, mask).item() == 6.0
    assert torch.isnan((values * mask).sum())  # what the multiply would have done


def test_all_masked_batch_gives_zero_and_finite_grads():
    s = logits(2, 3, 8).requires_grad_()
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for num_tokens in [0, torch.tensor(0)]:
        s.grad = None
        loss = D.reduce_loss(D.jsd(s, logits(2, 3, 8, seed=1)), mask, num_tokens)
        loss.backward()
        assert loss.item() == 0.0 and loss.dim() == 0
        assert torch.isfinite(s.grad).all() and (s.grad == 0).all()


def test_reduce_loss_divides_by_the_given_token_count():
    values = torch.tensor([[1.0, 2.0, 4.0]])
    mask = torch.tensor([[True, True, False]])
    assert D.reduce_loss(values, mask, 6).item() == pytest.approx(0.5)
    assert D.reduce_loss(values, mask, torch.tensor(6)).item() == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["fkl", "jsd", "ce"])
def test_gradient_accumulation_equals_one_big_batch(name):
    gen = torch.Generator().manual_seed(30)
    head = torch.nn.Linear(8, 24)
    hidden = torch.randn(8, 6, 8, generator=gen)  # 8 sequences
    teacher = logits(8, 6, 24, seed=31)
    targets = torch.randint(0, 24, (8, 6), generator=gen)
    lengths = torch.tensor([6, 1, 3, 5, 2, 6, 4, 1])  # variable response lengths
    mask = torch.arange(6)[None, :] < lengths[:, None]  # (8, 6)

    def loss(rows, num_tokens):
        other = {"target_ids": targets[rows]} if name == "ce" else {"teacher_logits": teacher[rows]}
        values = D.per_token_loss(name, head(hidden[rows]), chunk_size=4, **other)
        return D.reduce_loss(values, mask[rows], num_tokens)

    def grads(micro_batches, per_micro_batch_mean=False):
        head.zero_grad()
        for rows in micro_batches:
            loss(rows, mask[rows].sum() if per_micro_batch_mean else mask.sum()).backward()
        return [p.grad.clone() for p in head.parameters()]

    big = grads([slice(0, 8)])
    micro = [slice(i, i + 2) for i in range(0, 8, 2)]
    for g_big, g_acc in zip(big, grads(micro)):
        torch.testing.assert_close(g_acc, g_big, rtol=1e-5, atol=1e-7)
    # the "mean of means" (normalising each micro-batch by its own count) is a different objective
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(big, grads(micro, per_micro_batch_mean=True)))


# ---- registry and validation -------------------------------------------------------------------------


def test_registry_and_needs_teacher():
    assert set(D.DIVERGENCES) == {"fkl", "rkl", "jsd", "tvd", "sfkl", "srkl", "ce"}
    assert all(D.needs_teacher(n) for n in TEACHER_NAMES) and not D.needs_teacher("ce")
    s, t = logits(1, 2, 5), logits(1, 2, 5, seed=1)
    torch.testing.assert_close(D.per_token_loss("sfkl", s, teacher_logits=t, alpha=0.3),
                               D.skew_forward_kl(s, t, alpha=0.3))


@pytest.mark.parametrize("beta", [0, 1, 0.0, 1.0, -0.2, 1.5, math.nan])
def test_beta_outside_open_interval_is_an_error(beta):
    with pytest.raises(ValueError, match="beta") as err:
        D.validate_params("jsd", beta=beta)
    if beta in (0, 1):
        assert "forward_kl" in str(err.value) and "reverse_kl" in str(err.value)
    with pytest.raises(ValueError, match="beta"):
        D.jsd(logits(1, 1, 3), logits(1, 1, 3), beta=beta)


@pytest.mark.parametrize("name", ["sfkl", "srkl"])
@pytest.mark.parametrize("alpha", [1, 1.0, -0.1, 2.0])
def test_alpha_outside_range_is_an_error(name, alpha):
    with pytest.raises(ValueError, match="alpha"):
        D.validate_params(name, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        D.per_token_loss(name, logits(1, 1, 3), teacher_logits=logits(1, 1, 3), alpha=alpha)


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, math.inf])
def test_bad_temperature_is_an_error(temperature):
    with pytest.raises(ValueError, match="temperature"):
        D.validate_params("fkl", temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        D.cross_entropy(logits(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), temperature=temperature)


def test_unknown_names_params_and_missing_inputs():
    s, t = logits(1, 2, 5), logits(1, 2, 5, seed=1)
    ids = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        D.validate_params("kl")
    with pytest.raises(ValueError, match="'alpha'"):
        D.validate_params("jsd", alpha=0.1)
    with pytest.raises(ValueError, match="'beta'"):
        D.validate_params("ce", beta=0.5)
    with pytest.raises(ValueError, match="chunk_size"):
        D.validate_params("fkl", chunk_size=0)
    D.validate_params("jsd", beta=0.9, temperature=2, chunk_size=16)  # valid: no error
    with pytest.raises(ValueError, match="needs teacher_logits"):
        D.per_token_loss("fkl", s, target_ids=ids)
    with pytest.raises(ValueError, match="needs target_ids"):
        D.per_token_loss("ce", s, teacher_logits=t)
    with pytest.raises(ValueError, match="does not use teacher_logits"):
        D.per_token_loss("ce", s, target_ids=ids, teacher_logits=t)
    with pytest.raises(ValueError, match="differ in positions"):
        D.forward_kl(s, logits(1, 3, 5))


def test_function_defaults_match_the_registry():
    import inspect

    for name, fn in D.DIVERGENCES.items():
        defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and k not in ("temperature", "chunk_size")}
        assert defaults == D._RULES[name].params, name


# ---- stretch: student logits formed from hidden states and lm_head, chunk by chunk --------------------


def _hidden_case(seed=40, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 5, 6, generator=gen, dtype=dtype)
    weight = torch.randn(11, 6, generator=gen, dtype=dtype) / 2
    return hidden, weight


@pytest.mark.parametrize("name", TEACHER_NAMES + ["ce"])
def test_from_hidden_equals_logits_path(name):
    hidden, weight = _hidden_case()
    other = ({"target_ids": torch.randint(-1, 11, (2, 5), generator=torch.Generator().manual_seed(1))}
             if name == "ce" else {"teacher_logits": logits(2, 5, 11, seed=41)})
    weights = torch.linspace(0.5, 2.0, 10).view(2, 5)

    def run(fn):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        values = fn(h, w)
        (values * weights).sum().backward()
        return values.detach(), h.grad, w.grad

    got = run(lambda h, w: D.per_token_loss_from_hidden(name, h, w, chunk_size=3, temperature=1.4, **other))
    want = run(lambda h, w: D.per_token_loss(name, h @ w.T, temperature=1.4, **other))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fkl", "jsd", "ce"])
def test_from_hidden_gradcheck_float64(name):
    hidden, weight = _hidden_case(dtype=torch.float64)
    other = ({"target_ids": torch.tensor([[0, 10, -100, 3, 3], [1, 2, 5, 7, 9]])} if name == "ce"
             else {"teacher_logits": logits(2, 5, 11, seed=42, dtype=torch.float64)})

    def f(h, w):
        return D.per_token_loss_from_hidden(name, h, w, chunk_size=4, **other)

    assert torch.autograd.gradcheck(f, (hidden.requires_grad_(), weight.requires_grad_()))


def test_from_hidden_masked_nan_row_does_not_poison_the_weight_gradient():
    hidden, weight = _hidden_case()
    teacher = logits(2, 5, 11, seed=43)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 2] = False

    def weight_grad(h):
        w = weight.clone().requires_grad_()
        D.reduce_loss(D.per_token_loss_from_hidden("fkl", h, w, teacher_logits=teacher, chunk_size=2),
                      mask, mask.sum()).backward()
        return w.grad

    bad = hidden.clone()
    bad[1, 2, 0] = math.nan
    torch.testing.assert_close(weight_grad(bad), weight_grad(hidden))


def test_from_hidden_never_saves_logits():
    hidden, weight = _hidden_case()
    hidden.requires_grad_()
    saved = []

    def pack(x):
        saved.append(x)
        return x

    teacher = logits(2, 5, 11)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        D.per_token_loss_from_hidden("jsd", hidden, weight, teacher_logits=teacher, chunk_size=3)
    inputs = {hidden.data_ptr(), weight.data_ptr(), teacher.data_ptr()}
    assert saved and all(x.data_ptr() in inputs for x in saved if x.numel() > 10)  # else (B, T) statistics
