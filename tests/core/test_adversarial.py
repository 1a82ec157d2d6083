"""Every public core loss and the torch layer under bad input.

Each test asserts the outcome documented in docs/concepts.md, "What happens on bad input", and
cites its row. References are independent: plain jnp written here, scipy and optax.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import infoloss_jax as il
from infoloss_jax import torch as F

NAN, INF = float("nan"), float("inf")
F32 = jnp.float32

# Three examples, four classes; example 1 is the one made bad.
CLEAN = np.array([[0.3, -1.2, 2.0, 0.5], [1.0, 0.2, -0.7, 0.4], [-0.5, 0.9, 0.1, -2.0]], np.float32)
LABELS = np.array([2, 1, 0])
SOFT = np.array([[0.1, 0.2, 0.6, 0.1], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]], np.float32)
TARGET = np.array([[0.0, 1.0, -0.3, 0.2], [0.5, -0.5, 1.5, 0.0], [0.2, 0.2, 0.9, -1.0]], np.float32)


def _plain_log_softmax(x):
    return x - scipy.special.logsumexp(x, axis=-1, keepdims=True)


# Bad placements in example 1 (the label of example 1 is class 1).
PLACEMENTS = {
    "one_entry": [(3, NAN)],
    "at_label": [(1, NAN)],
    "whole_row": [(c, NAN) for c in range(4)],
    "beside_minus_inf": [(0, -INF), (3, NAN)],
    "plus_inf": [(2, INF)],
}
# A batch of the clean examples 0 and 2 around one copy of example 1 per placement.
ROWS = np.array([0] + [1] * len(PLACEMENTS) + [2])


def _rows(a, x):
    """``a`` for the three clean examples, or expanded to the placement batch."""
    return a if x.shape[0] == a.shape[0] else a[ROWS]


# name -> per-example loss of the logits (the argument under test), shape [N].
LOGIT_LOSSES = {
    "entropy": lambda x: il.entropy(x),
    "log_partition": lambda x: il.log_partition(x),
    "z_loss": lambda x: il.z_loss(x),
    "softmax_cross_entropy": lambda x: il.softmax_cross_entropy(x, _rows(SOFT, x)),
    "softmax_cross_entropy/options": lambda x: il.softmax_cross_entropy(
        x, _rows(SOFT, x), label_smoothing=0.1, z_loss=1e-3
    ),
    "safe_softmax_cross_entropy": lambda x: il.safe_softmax_cross_entropy(x, _rows(SOFT, x)),
    "integer_ce": lambda x: il.softmax_cross_entropy_with_integer_labels(x, _rows(LABELS, x)),
    "integer_ce/options": lambda x: il.softmax_cross_entropy_with_integer_labels(
        x, _rows(LABELS, x), label_smoothing=0.1, z_loss=1e-3, ignore_index=-100
    ),
    "forward_kl/model": lambda x: il.forward_kl(x, _rows(TARGET, x)),
    "forward_kl/target": lambda x: il.forward_kl(_rows(TARGET, x), x),
    "reverse_kl/model": lambda x: il.reverse_kl(x, _rows(TARGET, x)),
    "reverse_kl/target": lambda x: il.reverse_kl(_rows(TARGET, x), x),
    "jensen_shannon/model": lambda x: il.jensen_shannon(x, _rows(TARGET, x), beta=0.3),
    "jensen_shannon/target": lambda x: il.jensen_shannon(_rows(TARGET, x), x, beta=0.3),
    "torch.cross_entropy/index": lambda x: F.cross_entropy(x, _rows(LABELS, x), reduction="none"),
    "torch.cross_entropy/index_smoothing": lambda x: F.cross_entropy(
        x, _rows(LABELS, x), reduction="none", label_smoothing=0.1
    ),
    "torch.cross_entropy/probs": lambda x: F.cross_entropy(x, _rows(SOFT, x), reduction="none"),
}


def _placement_batch():
    x = CLEAN[ROWS].copy()
    for row, entries in enumerate(PLACEMENTS.values(), start=1):
        for col, value in entries:
            x[row, col] = value
    return jnp.asarray(x)


def _place(entries):
    x = CLEAN.copy()
    for col, value in entries:
        x[1, col] = value
    return jnp.asarray(x)


def _grad(fn, x):
    return np.asarray(jax.grad(lambda z: jnp.sum(fn(z)))(x))


# --------------------------------------------------------------------------- row 1: NaN logits
@pytest.mark.parametrize("name", list(LOGIT_LOSSES))
def test_nan_logit_poisons_only_its_row(name):
    # docs/concepts.md: bad input, row 1 (one example per placement: one entry, at the label,
    # a whole row, beside -inf, +inf)
    fn = LOGIT_LOSSES[name]
    bad = _placement_batch()
    clean_value, value = np.asarray(fn(jnp.asarray(CLEAN))), np.asarray(fn(bad))
    poisoned = np.arange(1, len(ROWS) - 1)
    assert np.isnan(value[poisoned]).all(), (name, value)
    # other rows: unchanged (up to the exact and plain forms' round-off)
    np.testing.assert_allclose(value[[0, -1]], clean_value[[0, 2]], rtol=1e-6)
    grad, clean_grad = _grad(fn, bad), _grad(fn, jnp.asarray(CLEAN))
    assert np.isnan(grad[poisoned]).any(axis=-1).all(), (name, grad)
    np.testing.assert_allclose(grad[[0, -1]], clean_grad[[0, 2]], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(LOGIT_LOSSES))
def test_nan_in_one_row_and_minus_inf_in_another(name):
    # docs/concepts.md: bad input, rows 1 and 2: one batch-wide branch must not spread the NaN.
    fn = LOGIT_LOSSES[name]
    x = CLEAN.copy()
    x[0, 3] = -INF  # excluded class in example 0 (no label mass on it: SOFT[0, 3] > 0 though)
    x[1, 2] = NAN
    value = np.asarray(fn(jnp.asarray(x)))
    assert np.isnan(value[1])
    assert not np.isnan(value[0]) and np.isfinite(value[2])
    grad = _grad(fn, jnp.asarray(x))
    assert not np.isnan(grad[[0, 2]]).any()


def test_nan_logits_in_jit_and_vmap_keep_to_their_row():
    # docs/concepts.md: bad input, row 1
    bad = _place(PLACEMENTS["at_label"])
    fn = lambda x: il.softmax_cross_entropy_with_integer_labels(x, LABELS)  # noqa: E731
    jitted = np.asarray(jax.jit(fn)(bad))
    mapped = np.asarray(
        jax.vmap(lambda r, y: il.softmax_cross_entropy_with_integer_labels(r, y))(
            bad, jnp.asarray(LABELS)
        )
    )
    for out in (jitted, mapped):
        assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()


def test_elementwise_losses_poison_only_the_nan_element():
    # docs/concepts.md: bad input, rows 1 and 3
    x = jnp.array([0.5, NAN, -1.0])
    for out in (
        il.binary_entropy(x),
        il.sigmoid_binary_cross_entropy(x, jnp.array([1.0, 0.0, 0.0])),
        F.binary_cross_entropy_with_logits(x, jnp.array([1.0, 0.0, 0.0]), reduction="none"),
    ):
        out = np.asarray(out)
        assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()
    labels = jnp.array([1.0, NAN, 0.0])
    out = np.asarray(il.sigmoid_binary_cross_entropy(jnp.zeros(3), labels))
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()


# --------------------------------------------------------------------------- row 2: -inf
def test_minus_inf_is_an_excluded_class_with_exact_values():
    # docs/concepts.md: bad input, row 2
    x = CLEAN.copy()
    x[1, 3] = -INF
    keep = np.array([True, True, True, False])
    log_q = _plain_log_softmax(CLEAN[1, keep].astype(np.float64))
    value = il.softmax_cross_entropy_with_integer_labels(jnp.asarray(x), LABELS)
    np.testing.assert_allclose(value[1], -log_q[1], rtol=1e-6)
    np.testing.assert_allclose(
        il.entropy(jnp.asarray(x))[1], scipy.stats.entropy(np.exp(log_q)), rtol=1e-6
    )
    assert np.isfinite(_grad(LOGIT_LOSSES["entropy"], jnp.asarray(x))).all()
    # label mass on the excluded class: +inf, the true value.
    assert float(il.softmax_cross_entropy(jnp.asarray(x[1]), jnp.asarray(SOFT[1]))) == INF
    # a row with nothing left: 0 in the core, NaN in the torch layer (as PyTorch).
    empty = np.full((1, 4), -INF, np.float32)
    assert float(il.softmax_cross_entropy_with_integer_labels(empty, np.array([0]))[0]) == 0.0
    assert np.isnan(float(F.cross_entropy(jnp.asarray(empty), jnp.array([0]), reduction="sum")))


# --------------------------------------------------------------------------- row 3: NaN targets
def test_nan_targets_are_never_dropped_as_zeros():
    # docs/concepts.md: bad input, row 3 (the table: optax and scipy give NaN)
    logits = jnp.zeros(3)
    soft = jnp.array([NAN, 0.5, 0.5])
    assert np.isnan(optax.softmax_cross_entropy(logits, soft))
    assert np.isnan(il.softmax_cross_entropy(logits, soft))
    log_q = jnp.log(jnp.ones(3) / 3)
    log_t = jnp.array([NAN, -0.7, -0.7])
    assert np.isnan(optax.losses.kl_divergence_with_log_targets(log_q, log_t))
    assert np.isnan(il.kl_divergence_with_log_targets(log_q, log_t))
    assert np.isnan(il.kl_divergence(log_q, soft))
    assert np.isnan(il.generalized_kl_divergence(log_q, soft))
    assert np.isnan(scipy.stats.entropy([NAN, 0.5]))
    assert np.isnan(il.entropy_from_probs(jnp.array([NAN, 0.5])))
    assert np.isnan(scipy.special.rel_entr(NAN, 0.5))
    assert np.isnan(il.entropy_from_counts(jnp.array([NAN, 1.0])))
    assert np.isnan(F.kl_div(log_q, soft, reduction="sum"))
    # a NaN log-prediction where the target is 0 also poisons (optax gives NaN as well).
    assert np.isnan(il.kl_divergence(jnp.array([NAN, 0.0]), jnp.array([0.0, 1.0])))


def test_nan_target_poisons_only_its_row_and_its_gradient():
    # docs/concepts.md: bad input, row 3
    targets = np.tile(np.array([0.2, 0.3, 0.5], np.float32), (3, 1))
    targets[1, 0] = NAN
    log_q = jnp.log(jnp.full((3, 3), 1 / 3, F32))
    for fn in (il.kl_divergence, il.generalized_kl_divergence):
        value = np.asarray(fn(log_q, targets))
        assert np.isnan(value[1]) and np.isfinite(value[[0, 2]]).all()
        grad = np.asarray(jax.grad(lambda t, fn=fn: jnp.sum(fn(log_q, t)))(jnp.asarray(targets)))
        assert np.isnan(grad[1]).any() and np.isfinite(grad[[0, 2]]).all()
    value = np.asarray(il.softmax_cross_entropy(jnp.zeros((3, 3)), targets))
    assert np.isnan(value[1]) and np.isfinite(value[[0, 2]]).all()


def test_zero_targets_are_exactly_zero_terms():
    # docs/concepts.md: bad input, row 3
    log_q = jnp.array([-INF, 0.0])
    p = jnp.array([0.0, 1.0])
    assert float(il.kl_divergence(log_q, p)) == 0.0
    grads = jax.grad(lambda a, b: il.kl_divergence(a, b), argnums=(0, 1))(log_q, p)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert float(il.entropy_from_probs(p)) == 0.0
    negative = jnp.array([-0.1, 1.1])
    assert np.isnan(il.entropy_from_probs(negative)) and np.isnan(il.kl_divergence(log_q, negative))


# --------------------------------------------------------------------------- row 4: supports
def _reference_kl(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) in float64 numpy, -inf as excluded; inf for lost support."""
    p = np.exp(p_logits - scipy.special.logsumexp(p_logits))
    q = np.exp(q_logits - scipy.special.logsumexp(q_logits))
    return float(np.sum(scipy.special.rel_entr(p, q)))


_K = 5


def _kl_value_and_grads(fn):
    return jax.jit(jax.value_and_grad(lambda a, b: fn(a, b), argnums=(0, 1)))


_KL_LAWS = {
    "forward_kl": _kl_value_and_grads(il.forward_kl),
    "reverse_kl": _kl_value_and_grads(il.reverse_kl),
}


@st.composite
def _support_pairs(draw):
    finite = st.floats(-30, 30, allow_nan=False, width=32)
    values = np.array(
        draw(st.lists(st.lists(finite, min_size=_K, max_size=_K), min_size=2, max_size=2)),
        np.float64,
    )
    masks = np.array(
        draw(st.lists(st.lists(st.booleans(), min_size=_K, max_size=_K), min_size=2, max_size=2))
    )
    for m in masks:  # each side keeps at least one class
        if m.all():
            m[draw(st.integers(0, _K - 1))] = False
    values[masks] = -np.inf
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return values[0], values[1], dtype


def _check_kl_support_law(case):
    model, target, dtype = case
    for name, p_logits, q_logits in (
        ("forward_kl", target, model),
        ("reverse_kl", model, target),
    ):
        m, t = jnp.asarray(model, dtype), jnp.asarray(target, dtype)
        value, grads = _KL_LAWS[name](m, t)
        value = float(value)
        expected = _reference_kl(p_logits, q_logits)
        assert not math.isnan(value)
        if math.isinf(expected):
            assert value == INF
        else:
            tol = 1e-3 if dtype == np.float32 else 1e-9
            assert value == pytest.approx(expected, rel=tol, abs=tol)
        assert all(not np.isnan(np.asarray(g)).any() for g in grads)


@settings(max_examples=200)
@given(_support_pairs())
def test_kl_with_different_exclusions_is_inf_never_nan(case):
    # docs/concepts.md: bad input, row 4
    _check_kl_support_law(case)


@pytest.mark.slow
@settings(max_examples=1000)
@given(_support_pairs())
def test_kl_with_different_exclusions_is_inf_never_nan_thorough(case):
    # docs/concepts.md: bad input, row 4
    _check_kl_support_law(case)


def test_gradient_of_an_infinite_kl_is_defined():
    # docs/concepts.md: bad input, row 4
    a = jnp.array([0.0, -INF, 1.0])  # excludes class 1
    b = jnp.array([-INF, 0.0, 1.0])  # excludes class 0
    assert float(il.forward_kl(a, b)) == INF  # the target has mass on class 1
    g_model, g_target = jax.grad(il.forward_kl, argnums=(0, 1))(a, b)
    q = np.exp(_plain_log_softmax(np.array([0.0, -np.inf, 1.0])))
    p = np.exp(_plain_log_softmax(np.array([-np.inf, 0.0, 1.0])))
    np.testing.assert_allclose(g_model, q - p, atol=1e-12)
    np.testing.assert_array_equal(g_target, np.zeros(3))
    g_model, g_target = jax.grad(il.reverse_kl, argnums=(0, 1))(a, b)
    np.testing.assert_array_equal(g_model, np.zeros(3))
    np.testing.assert_allclose(g_target, p - q, atol=1e-12)
    assert np.isfinite(float(il.jensen_shannon(a, b)))


# --------------------------------------------------------------------------- row 5: extremes
EXTREME = np.array([[3e38, -3e38, 0.0], [3e38, 3e38, 0.0], [-3e38, -3e38, -3e38]], np.float32)


@pytest.mark.parametrize(
    "name",
    [
        "entropy",
        "log_partition",
        "softmax_cross_entropy",
        "integer_ce",
        "forward_kl/model",
        "forward_kl/target",
        "reverse_kl/model",
        "reverse_kl/target",
        "jensen_shannon/model",
        "jensen_shannon/target",
    ],
)
def test_extreme_finite_logits_never_give_nan(name):
    # docs/concepts.md: bad input, row 5
    soft = np.array([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], np.float32)
    target = np.zeros((3, 3), np.float32)
    fns = {
        "entropy": lambda x: il.entropy(x),
        "log_partition": lambda x: il.log_partition(x),
        "softmax_cross_entropy": lambda x: il.softmax_cross_entropy(x, soft),
        "integer_ce": lambda x: il.softmax_cross_entropy_with_integer_labels(
            x, jnp.array([0, 1, 2])
        ),
        "forward_kl/model": lambda x: il.forward_kl(x, target),
        "forward_kl/target": lambda x: il.forward_kl(target, x),
        "reverse_kl/model": lambda x: il.reverse_kl(x, target),
        "reverse_kl/target": lambda x: il.reverse_kl(target, x),
        "jensen_shannon/model": lambda x: il.jensen_shannon(x, target),
        "jensen_shannon/target": lambda x: il.jensen_shannon(target, x),
    }
    fn = fns[name]
    x = jnp.asarray(EXTREME)
    value = np.asarray(fn(x))
    assert not np.isnan(value).any(), value
    assert not np.isnan(_grad(fn, x)).any()
    assert not np.isnan(np.asarray(jax.jit(fn)(x))).any()


def test_extreme_finite_logits_give_exact_values():
    # docs/concepts.md: bad input, row 5 (rows whose logit differences stay in range)
    x = jnp.asarray(EXTREME)
    np.testing.assert_allclose(il.entropy(x), [0.0, math.log(2), math.log(3)], atol=1e-6)
    one_hot = jax.nn.one_hot(jnp.array([0, 1, 2]), 3)
    np.testing.assert_allclose(
        il.softmax_cross_entropy(x, one_hot)[1:], [math.log(2), math.log(3)], rtol=1e-6
    )
    np.testing.assert_allclose(
        il.reverse_kl(x, jnp.zeros((3, 3), F32))[:2], [math.log(3), 0.4054651]
    )
    np.testing.assert_allclose(float(il.forward_kl(x, jnp.zeros((3, 3), F32))[1]), 1e38, rtol=1e-6)
    grad = jax.grad(
        lambda z: jnp.sum(il.softmax_cross_entropy_with_integer_labels(z, jnp.array([0, 1, 2])))
    )(x)
    np.testing.assert_allclose(grad[2], [1 / 3, 1 / 3, -2 / 3], rtol=1e-6)


# Ties at the float32 limit in one distribution facing the opposite limit in the other (issue
# 20: the gradient of forward_kl's target and of reverse_kl's model were NaN there).
_TIES = np.array(
    [[3e38, 3e38, 1.0], [3e38, -3e38, 1.0], [-3e38, -3e38, 1.0], [3e38, 3e38, -3e38]], np.float32
)


def _tie_pairs():
    rows = range(len(_TIES))
    pairs = [(i, j) for i in rows for j in rows]
    return jnp.asarray(_TIES[[i for i, _ in pairs]]), jnp.asarray(_TIES[[j for _, j in pairs]])


@pytest.mark.parametrize(
    "name", ["forward_kl", "reverse_kl", "jensen_shannon", "total_variation", "alpha_divergence"]
)
def test_ties_at_the_float_limit_give_no_nan(name):
    # docs/concepts.md: bad input, row 5
    model, target = _tie_pairs()
    fn = getattr(il, name)
    value = np.asarray(fn(model, target))
    assert not np.isnan(value).any(), value
    grads = jax.grad(lambda a, b: jnp.sum(fn(a, b)), argnums=(0, 1))(model, target)
    for grad in grads:
        assert not np.isnan(np.asarray(grad)).any(), grad


def test_log_probs_entropy_at_the_float_limit_is_that_of_entropy():
    # docs/concepts.md: bad input, row 5 (issue 20: the log_probs entropy was NaN)
    rows = jnp.asarray(np.concatenate([_TIES, EXTREME]))
    _, entropy = il.log_probs(rows, jnp.zeros(len(rows), jnp.int32), with_entropy=True)
    np.testing.assert_allclose(entropy, il.entropy(rows), atol=1e-6)
    assert float(entropy[1]) == 0.0  # [3e38, -3e38, 1]: one class holds all the mass


def test_integer_cross_entropy_at_the_float_limit_keeps_its_o1_part():
    # docs/concepts.md: bad input, row 5: log Z - z_y is computed as (max - z_y) + log S
    x = jnp.asarray([[3e38, 3e38, 0.0], [1e30, 1e30, 1e30], [1e30, 1e30 - 2e23, 1e30]], F32)
    labels = jnp.array([0, 2, 1])
    loss = il.softmax_cross_entropy_with_integer_labels(x, labels)
    np.testing.assert_allclose(loss[:2], [math.log(2), math.log(3)], rtol=1e-6)
    gap = float(np.float64(x[2, 0]) - np.float64(x[2, 1]))  # about 2e23: exact, not inf
    np.testing.assert_allclose(loss[2], gap + math.log(2), rtol=1e-6)
    log_probs = il.log_probs(x, labels)
    np.testing.assert_allclose(log_probs[:2], [-math.log(2), -math.log(3)], rtol=1e-6)


def _np_forward_kl(z, t, temperature):
    log_q = _plain_log_softmax(z.astype(np.float64) / temperature)
    log_p = _plain_log_softmax(t.astype(np.float64) / temperature)
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


@pytest.mark.parametrize("temperature", [1e-3, 1e-6])
def test_low_temperature_divergences_are_exact(temperature):
    # Issue 20: forward_kl at T = 1e-6 was off by 4e-7 / T relative (197,630 for 200,000); the
    # logits are now shifted by their row max before the temperature divides them.
    z, t = CLEAN, TARGET
    expected = _np_forward_kl(z, t, temperature)
    for fn in (il.forward_kl, jax.jit(il.forward_kl, static_argnames="temperature")):
        np.testing.assert_allclose(fn(z, t, temperature=temperature), expected, rtol=1e-6)
    np.testing.assert_allclose(il.reverse_kl(t, z, temperature=temperature), expected, rtol=1e-6)


def test_low_temperature_log_probs_entropy_is_exact_and_non_negative():
    # Issue 20: log_probs(..., temperature=1e-3, with_entropy=True) had 4e-4 errors, some
    # entropies negative.
    z = np.random.default_rng(1).standard_normal((500, 32)).astype(np.float32)
    log_q = _plain_log_softmax(z.astype(np.float64) / 1e-3)
    expected = -np.sum(np.exp(log_q) * log_q, axis=-1)
    labels = jnp.zeros(500, jnp.int32)
    log_probs, entropy = il.log_probs(z, labels, temperature=1e-3, with_entropy=True)
    assert np.all(np.asarray(entropy) >= 0)
    np.testing.assert_allclose(entropy, expected, atol=1e-6)
    np.testing.assert_allclose(log_probs, log_q[:, 0], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- row 6: labels
BAD_LABELS = [4, -1, -100, 2**31 - 1]


@pytest.mark.parametrize("bad", BAD_LABELS)
@pytest.mark.parametrize("jit", [False, True])
def test_out_of_range_label_poisons_only_its_row(bad, jit):
    # docs/concepts.md: bad input, row 6
    labels = jnp.array([2, bad, 0])
    fns = [
        lambda x, y: il.softmax_cross_entropy_with_integer_labels(x, y),
        lambda x, y: il.softmax_cross_entropy_with_integer_labels(x, y, label_smoothing=0.1),
        lambda x, y: F.cross_entropy(x, y, reduction="none", ignore_index=-7),
        lambda x, y: F.nll_loss(jax.nn.log_softmax(x), y, reduction="none", ignore_index=-7),
    ]
    for fn in fns:
        fn = jax.jit(fn) if jit else fn
        value = np.asarray(fn(jnp.asarray(CLEAN), labels))
        assert np.isnan(value[1]) and np.isfinite(value[[0, 2]]).all()


@pytest.mark.parametrize("bad", BAD_LABELS)
def test_out_of_range_label_poisons_the_gradient_alone(bad):
    # docs/concepts.md: bad input, rows 1 and 6 (a training step that never looks at the value)
    labels = jnp.array([2, bad, 0])
    grad = jax.jit(
        jax.grad(lambda x: jnp.sum(il.softmax_cross_entropy_with_integer_labels(x, labels)))
    )(jnp.asarray(CLEAN))
    grad = np.asarray(grad)
    assert np.isnan(grad[1]).all() and np.isfinite(grad[[0, 2]]).all()


@pytest.mark.parametrize(
    ("labels", "expected_nan"),
    [
        (np.array([2**32 - 100, 1, 2**32 - 1], np.uint32), [True, False, True]),
        (np.array([255, 1, 0], np.uint8), [True, False, False]),
        (np.array([-100, 1, 127], np.int8), [False, False, True]),
        (np.array([2, 1, 2**16 - 100], np.uint16), [False, False, True]),
    ],
)
def test_labels_of_every_integer_dtype_are_read_by_value(labels, expected_nan):
    # docs/concepts.md: bad input, row 6 (ignore_index=-100: only a real -100 is ignored)
    out = il.softmax_cross_entropy_with_integer_labels(jnp.zeros((3, 4)), labels, ignore_index=-100)
    np.testing.assert_array_equal(np.isnan(np.asarray(out)), expected_nan)


def test_uint8_label_below_a_large_class_count_is_valid():
    # docs/concepts.md: bad input, row 6 (300 classes: a uint8 comparison would wrap)
    out = il.softmax_cross_entropy_with_integer_labels(
        jnp.zeros((2, 300)), np.array([255, 1], np.uint8)
    )
    np.testing.assert_allclose(out, [math.log(300)] * 2, rtol=1e-6)


def test_int64_labels_beyond_int32_without_x64_are_out_of_range():
    # docs/concepts.md: bad input, row 6 (the NumPy int64 label 2**32 + 1 must not read as 1)
    with jax.enable_x64(False):
        out = il.softmax_cross_entropy_with_integer_labels(
            np.zeros((3, 4), np.float32),
            np.array([2**32 + 1, 2**32 - 100, 1], np.int64),
            ignore_index=-100,
        )
    np.testing.assert_array_equal(np.isnan(np.asarray(out)), [True, True, False])


def test_ignore_index_beyond_the_label_dtype_never_matches():
    # docs/concepts.md: bad input, row 6 (int8 labels, ignore_index=300 would wrap to 44)
    out = il.softmax_cross_entropy_with_integer_labels(
        jnp.zeros((2, 4)), np.array([44, 1], np.int8), ignore_index=300
    )
    assert np.isnan(out[0]) and np.isfinite(out[1])


# --------------------------------------------------------------------------- row 7: options
def _kl(fn, temperature):
    return fn(jnp.asarray(CLEAN), jnp.asarray(TARGET), temperature=temperature)


@pytest.mark.parametrize("fn", [il.forward_kl, il.reverse_kl, il.jensen_shannon])
def test_traced_temperature(fn):
    # docs/concepts.md: bad input, row 7
    traced = jax.jit(lambda t: _kl(fn, t))
    np.testing.assert_allclose(traced(2.0), _kl(fn, 2.0), rtol=1e-6)
    for bad in (0.0, -1.0, NAN, INF):
        assert np.isnan(np.asarray(traced(bad))).all(), bad
        with pytest.raises(ValueError, match="`temperature`"):
            _kl(fn, bad)
    grad = jax.grad(lambda t: jnp.sum(_kl(fn, t)))(2.0)
    assert np.isfinite(grad)


def test_traced_beta():
    # docs/concepts.md: bad input, row 7
    x, t = jnp.asarray(CLEAN), jnp.asarray(TARGET)
    traced = jax.jit(lambda b: il.jensen_shannon(x, t, beta=b))
    # rtol 1e-5: float32 round-off of jit vs eager differs by backend (about 1e-6 on a GPU).
    for beta in (0.0, 0.3, 1.0):
        np.testing.assert_allclose(traced(beta), il.jensen_shannon(x, t, beta=beta), rtol=1e-5)
    np.testing.assert_allclose(traced(0.0), il.forward_kl(x, t), rtol=1e-5)
    np.testing.assert_allclose(traced(1.0), il.reverse_kl(x, t), rtol=1e-5)
    for bad in (-0.1, 1.5, NAN):
        assert np.isnan(np.asarray(traced(bad))).all()
        with pytest.raises(ValueError, match="`beta`"):
            il.jensen_shannon(x, t, beta=bad)
    # d/d beta = KL(P || M) - KL(Q || M), against a central difference.
    g = jax.grad(lambda b: jnp.sum(il.jensen_shannon(x, t, beta=b)))(0.3)
    h = 1e-6
    x64, t64 = x.astype(jnp.float64), t.astype(jnp.float64)
    fd = (
        jnp.sum(il.jensen_shannon(x64, t64, beta=0.3 + h))
        - jnp.sum(il.jensen_shannon(x64, t64, beta=0.3 - h))
    ) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-4)


@pytest.mark.parametrize(
    ("option", "good", "bads"),
    [("label_smoothing", 0.2, (-0.1, 1.0, NAN)), ("z_loss", 1e-2, (-1.0, INF))],
)
def test_traced_soft_label_coefficients(option, good, bads):
    # docs/concepts.md: bad input, row 7
    x = jnp.asarray(CLEAN)
    traced = jax.jit(lambda c: il.softmax_cross_entropy(x, SOFT, **{option: c}))
    np.testing.assert_allclose(
        traced(good), il.softmax_cross_entropy(x, SOFT, **{option: good}), rtol=1e-6
    )
    for bad in bads:
        assert np.isnan(np.asarray(traced(bad))).all()
        with pytest.raises(ValueError, match=f"`{option}`"):
            il.softmax_cross_entropy(x, SOFT, **{option: bad})


def test_traced_torch_label_smoothing():
    # docs/concepts.md: bad input, row 7
    x = jnp.asarray(CLEAN)
    traced = jax.jit(lambda e: F.cross_entropy(x, LABELS, label_smoothing=e))
    np.testing.assert_allclose(traced(0.2), F.cross_entropy(x, LABELS, label_smoothing=0.2))
    assert np.isnan(traced(1.5))


@pytest.mark.parametrize(
    ("option", "good", "bad"), [("label_smoothing", 0.2, 1.5), ("z_loss", 0.1, -1.0)]
)
def test_traced_integer_label_coefficients(option, good, bad):
    # docs/concepts.md: bad input, row 7
    x = jnp.asarray(CLEAN)
    fn = jax.jit(lambda c: il.softmax_cross_entropy_with_integer_labels(x, LABELS, **{option: c}))
    np.testing.assert_allclose(
        fn(good), il.softmax_cross_entropy_with_integer_labels(x, LABELS, **{option: good})
    )
    assert np.isnan(np.asarray(fn(bad))).all()


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda v: il.entropy(CLEAN, base=v), "base"),
        (lambda v: il.entropy(CLEAN, axis=v), "axis"),
        (lambda v: il.softmax_cross_entropy(CLEAN, SOFT, logit_softcap=v), "logit_softcap"),
        (
            lambda v: il.softmax_cross_entropy_with_integer_labels(CLEAN, LABELS, logit_softcap=v),
            "logit_softcap",
        ),
        (lambda v: il.softmax_cross_entropy(CLEAN, SOFT, axis=v), "axis"),
        (lambda v: il.forward_kl(CLEAN, TARGET, axis=v), "axis"),
        (lambda v: il.reduce_loss(jnp.ones(3), reduction=v), "reduction"),
        (lambda v: F.cross_entropy(CLEAN, LABELS, ignore_index=v), "ignore_index"),
        (lambda v: F.nll_loss(CLEAN, LABELS, ignore_index=v), "ignore_index"),
    ],
)
def test_traced_structural_options_are_a_type_error(call, argument):
    # docs/concepts.md: bad input, row 7
    with pytest.raises(TypeError, match=f"`{argument}`"):
        jax.jit(call)(1)


def test_non_integer_axis_is_a_type_error():
    # docs/concepts.md: bad input, row 8
    with pytest.raises(TypeError, match="`axis`"):
        il.entropy(CLEAN, axis=1.0)
    with pytest.raises(TypeError, match="`axis`"):
        il.softmax_cross_entropy_with_integer_labels(CLEAN, LABELS, axis="1")


# --------------------------------------------------------------------------- row 8: empty
EMPTY_N = {
    "softmax_cross_entropy": lambda r: il.softmax_cross_entropy(
        jnp.zeros((0, 5)), jnp.zeros((0, 5)), reduction=r
    ),
    "integer_ce": lambda r: il.softmax_cross_entropy_with_integer_labels(
        jnp.zeros((0, 5)), jnp.zeros((0,), int), reduction=r
    ),
    "integer_ce/weights": lambda r: il.softmax_cross_entropy_with_integer_labels(
        jnp.zeros((0, 5)), jnp.zeros((0,), int), class_weights=jnp.ones(5), reduction=r
    ),
    "reduce_loss": lambda r: il.reduce_loss(jnp.zeros((0,)), reduction=r),
}


@pytest.mark.parametrize("name", list(EMPTY_N))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
def test_empty_batch_in_the_core(name, reduction):
    # docs/concepts.md: bad input, row 8
    out = np.asarray(EMPTY_N[name](reduction))
    if reduction == "none":
        assert out.shape == (0,)
    else:
        assert out == 0.0


def test_empty_batch_for_the_unreduced_losses():
    # docs/concepts.md: bad input, row 8
    zeros = jnp.zeros((0, 5))
    for out in (il.entropy(zeros), il.forward_kl(zeros, zeros), il.log_partition(zeros)):
        assert out.shape == (0,)
    g = jax.grad(lambda x: il.softmax_cross_entropy(x, x, reduction="mean"))(zeros)
    assert g.shape == (0, 5)


@pytest.mark.parametrize("target", ["index", "probs"])
def test_empty_batch_in_the_torch_layer(target):
    # docs/concepts.md: bad input, row 8 (PyTorch: NaN for mean, 0 for sum, [] for none)
    x = jnp.zeros((0, 5))
    y = jnp.zeros((0,), int) if target == "index" else jnp.zeros((0, 5))
    assert np.isnan(F.cross_entropy(x, y))
    assert float(F.cross_entropy(x, y, reduction="sum")) == 0.0
    assert F.cross_entropy(x, y, reduction="none").shape == (0,)
    if target == "index":
        assert np.isnan(F.nll_loss(x, y))
        assert float(F.nll_loss(x, y, reduction="sum")) == 0.0
    assert np.isnan(F.kl_div(x, x))
    assert np.isnan(F.kl_div(x, x, reduction="batchmean"))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: il.entropy(jnp.zeros((2, 0))), "logits"),
        (lambda: il.log_partition(jnp.zeros((2, 0))), "logits"),
        (lambda: il.softmax_cross_entropy(jnp.zeros((2, 0)), jnp.zeros((2, 0))), "logits"),
        (
            lambda: il.softmax_cross_entropy_with_integer_labels(
                jnp.zeros((2, 0)), jnp.zeros((2,), int)
            ),
            "logits",
        ),
        (lambda: il.forward_kl(jnp.zeros((2, 0)), jnp.zeros((2, 0))), "logits"),
        (lambda: il.jensen_shannon(jnp.zeros((2, 0)), jnp.zeros((2, 0))), "logits"),
        (lambda: il.entropy_from_probs(jnp.zeros((2, 0))), "probs"),
        (lambda: il.kl_divergence(jnp.zeros((2, 0)), jnp.zeros((2, 0))), "log_predictions"),
        (lambda: F.cross_entropy(jnp.zeros((2, 0)), jnp.zeros((2,), int)), "input"),
        (lambda: F.nll_loss(jnp.zeros((2, 0)), jnp.zeros((2,), int)), "input"),
    ],
)
def test_no_classes_is_a_named_value_error(call, argument):
    # docs/concepts.md: bad input, row 8
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


# --------------------------------------------------------------------------- row 9: weights
def test_zero_sum_weights_under_mean():
    # docs/concepts.md: bad input, row 9 (core: 0 with a 0 gradient; torch: NaN, as PyTorch)
    x = jnp.asarray(CLEAN)
    weights = jnp.array([0.0, 0.0, 0.0, 1.0])  # the targets 2, 1, 0 all weigh 0

    def core(z):
        return il.softmax_cross_entropy_with_integer_labels(
            z, LABELS, class_weights=weights, reduction="mean"
        )

    assert float(core(x)) == 0.0
    np.testing.assert_array_equal(jax.grad(core)(x), np.zeros_like(CLEAN))
    assert np.isnan(F.cross_entropy(x, LABELS, weight=weights))
    assert np.isnan(F.nll_loss(jax.nn.log_softmax(x), LABELS, weight=weights))
    assert float(il.reduce_loss(jnp.ones(3), reduction="mean", weights=jnp.zeros(3))) == 0.0
    # A NaN loss is never hidden by the empty-mean rule.
    assert np.isnan(il.reduce_loss(jnp.array([NAN, 1.0]), reduction="mean", weights=jnp.zeros(2)))


def test_all_ignored_mean():
    # docs/concepts.md: bad input, row 9
    x = jnp.asarray(CLEAN)
    ignored = jnp.array([-100, -100, -100])
    core = il.softmax_cross_entropy_with_integer_labels(
        x, ignored, ignore_index=-100, reduction="mean"
    )
    assert float(core) == 0.0
    assert np.isnan(F.cross_entropy(x, ignored))


def test_negative_weights_are_used_as_given():
    # docs/concepts.md: bad input, row 9
    x = jnp.asarray(CLEAN)
    weights = np.array([1.0, -2.0, 0.5, 1.0], np.float32)
    nll = -_plain_log_softmax(CLEAN.astype(np.float64))[np.arange(3), LABELS]
    w = weights[LABELS]
    expected = np.sum(w * nll) / np.sum(w)
    np.testing.assert_allclose(
        il.softmax_cross_entropy_with_integer_labels(
            x, LABELS, class_weights=weights, reduction="mean"
        ),
        expected,
        rtol=1e-5,
    )
    np.testing.assert_allclose(F.cross_entropy(x, LABELS, weight=weights), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="`class_weights`"):
        il.checked(il.softmax_cross_entropy_with_integer_labels)(x, LABELS, class_weights=weights)


# --------------------------------------------------------------------------- row 10: masks
def test_where_is_read_by_rank_when_examples_equal_classes():
    # docs/concepts.md: bad input, row 10 (N == K == 3)
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 3)))
    labels = jnp.array([0, 1, 2])
    one_hot = jax.nn.one_hot(labels, 3)
    mask = jnp.array([True, True, False])
    per_example = il.softmax_cross_entropy_with_integer_labels(logits, labels, where=mask)
    np.testing.assert_allclose(
        per_example, optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=mask)
    )
    np.testing.assert_allclose(
        il.softmax_cross_entropy(logits, one_hot, where=mask),
        optax.softmax_cross_entropy(logits, one_hot, where=mask),
        atol=1e-12,
    )
    # the class mask needs the logits' rank; its value is the plain masked softmax.
    class_mask = mask[None, :]
    plain = jnp.where(class_mask, logits, -jnp.inf)
    expected = -jnp.take_along_axis(jax.nn.log_softmax(plain), labels[:, None], -1)[:, 0]
    got = il.softmax_cross_entropy_with_integer_labels(logits, labels, where=class_mask)
    np.testing.assert_allclose(got[:2], expected[:2], rtol=1e-12)
    assert float(got[2]) == INF  # the label's own class is masked out
    with pytest.raises(ValueError, match="`where`.*rank"):
        il.softmax_cross_entropy(logits[None], one_hot[None], where=mask[None, None, None, :])


def test_per_example_where_of_optax():
    # docs/concepts.md: bad input, rows 10 and 11 (optax's documented [batch] mask)
    logits, labels = jnp.asarray(CLEAN[:2]), jnp.asarray(SOFT[:2])
    mask = jnp.array([True, False])
    np.testing.assert_allclose(
        il.softmax_cross_entropy(logits, labels, where=mask),
        optax.softmax_cross_entropy(logits, labels, where=mask),
        rtol=1e-6,
    )
    assert float(il.softmax_cross_entropy(logits, labels, where=mask, reduction="mean")) == (
        pytest.approx(float(optax.softmax_cross_entropy(logits[:1], labels[:1])[0]), rel=1e-6)
    )


# --------------------------------------------------------------------------- row 11: optax calls
def test_optax_calls_that_are_accepted():
    # docs/concepts.md: bad input, row 11
    logits = jnp.asarray(CLEAN)
    int_one_hot = jax.nn.one_hot(LABELS, 4, dtype=jnp.int32)
    np.testing.assert_allclose(
        il.softmax_cross_entropy(logits, int_one_hot),
        optax.softmax_cross_entropy(logits, int_one_hot),
        rtol=1e-6,
    )
    binary = jnp.array([0, 1, 1, 0])
    np.testing.assert_allclose(
        il.sigmoid_binary_cross_entropy(logits[0], binary),
        optax.sigmoid_binary_cross_entropy(logits[0], binary),
        rtol=1e-6,
    )


@pytest.mark.parametrize("axis", [(3, 2), (-1, -2), (2, 3), (-2, -1)])
def test_tuple_axis_in_any_order_matches_optax(axis):
    # docs/concepts.md: bad input, row 11 (a label is the flat index over the axes as given)
    shape = (2, 3, 4, 5)
    logits = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape) / 7.0
    labels = jnp.array([[0, 19, 7], [13, 2, 18]])
    np.testing.assert_allclose(
        il.softmax_cross_entropy_with_integer_labels(logits, labels, axis=axis),
        optax.softmax_cross_entropy_with_integer_labels(logits, labels, axis=axis),
        rtol=1e-5,
    )


# --------------------------------------------------------------------------- torch layer
def test_torch_layer_follows_pytorch_edge_cases():
    # docs/concepts.md: bad input, rows 2, 8 and 9; docs/migration.md, torch vs PyTorch
    x = jnp.asarray(CLEAN)
    log_q = _plain_log_softmax(CLEAN.astype(np.float64))
    # label_smoothing=1.0 is accepted: the loss is the mean of -log q over all classes.
    np.testing.assert_allclose(
        F.cross_entropy(x, LABELS, label_smoothing=1.0, reduction="none"),
        -log_q.mean(axis=-1),
        rtol=1e-6,
    )
    # smoothing reaches a -inf logit: inf, as in PyTorch.
    excluded = CLEAN.copy()
    excluded[0, 3] = -INF
    out = F.cross_entropy(jnp.asarray(excluded), LABELS, label_smoothing=0.1, reduction="none")
    assert float(out[0]) == INF and np.isfinite(out[1:]).all()
    # kl_div's batchmean divides by the *input's* first dimension.
    log_q1 = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    target = jnp.tile(jnp.array([0.5, 0.25, 0.25]), (4, 1))
    total = F.kl_div(log_q1, target, reduction="sum")
    np.testing.assert_allclose(F.kl_div(log_q1, target, reduction="batchmean"), total / 3)
    # binary_cross_entropy outside [0, 1]: NaN (PyTorch raises).
    out = F.binary_cross_entropy(
        jnp.array([0.5, 0.5, 1.5]), jnp.array([2.0, 1.0, 1.0]), reduction="none"
    )
    assert np.isnan(out[0]) and np.isfinite(out[1]) and np.isnan(out[2])


# --------------------------------------------------------------------------- row 12: checked
def test_checked_reports_every_value_mistake():
    # docs/concepts.md: bad input, row 12
    x = jnp.asarray(CLEAN)
    with pytest.raises(ValueError, match="NaN"):
        il.checked(il.entropy)(_place(PLACEMENTS["one_entry"]))
    with pytest.raises(ValueError, match="`labels`"):
        il.checked(il.softmax_cross_entropy_with_integer_labels)(x, jnp.array([0, 4, 1]))
    with pytest.raises(ValueError, match="`labels`"):
        il.checked(il.softmax_cross_entropy_with_integer_labels)(
            x, np.array([0, 2**32 - 100, 1], np.uint32), ignore_index=-100
        )
    with pytest.raises(ValueError, match="NaN"):
        il.checked(il.kl_divergence)(jnp.log(jnp.ones(3) / 3), jnp.array([NAN, 0.5, 0.5]))


def test_checked_accepts_valid_bfloat16_probabilities():
    # docs/concepts.md: bad input, row 12
    probs = (jnp.ones((2, 3)) / 3).astype(jnp.bfloat16)
    out = il.checked(il.softmax_cross_entropy)(jnp.zeros((2, 3), jnp.bfloat16), probs)
    np.testing.assert_allclose(out, [math.log(3)] * 2, rtol=1e-2)
    il.checked(il.entropy_from_probs)(jnp.full((10,), 0.1, jnp.bfloat16))


def test_checked_per_example_mask_and_integer_labels():
    # docs/concepts.md: bad input, rows 10 and 12
    out = il.checked(il.softmax_cross_entropy)(
        jnp.asarray(CLEAN[:2]),
        jax.nn.one_hot(LABELS[:2], 4, dtype=jnp.int32),
        where=jnp.array([True, False]),
    )
    assert float(out[1]) == 0.0


def test_checked_reports_an_invalid_option():
    # docs/concepts.md: bad input, rows 7 and 12
    with pytest.raises(ValueError, match="`temperature`"):
        il.checked(il.forward_kl)(CLEAN, TARGET, temperature=0.0)
