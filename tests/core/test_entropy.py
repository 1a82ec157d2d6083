"""Entropy family: scipy parity, the background notes' numbers, masks, dtypes, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from jax.test_util import check_grads

import infoloss_jax as il

RNG = np.random.default_rng(0)


def softmax_np(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("shape,axis", [((5,), -1), ((3, 6), -1), ((4, 3, 5), 1), ((2, 3, 4), 0)])
@pytest.mark.parametrize("base", [None, 2, 10])
def test_entropy_matches_scipy(shape, axis, base):
    logits = RNG.normal(size=shape) * 3
    probs = softmax_np(logits, axis)
    expected = scipy.stats.entropy(probs, base=base, axis=axis)
    got = jax.jit(lambda x: il.entropy(x, axis=axis, base=base))(logits)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    from_probs = jax.jit(lambda p: il.entropy_from_probs(p, axis=axis, base=base))(probs)
    np.testing.assert_allclose(from_probs, expected, rtol=1e-12)


def test_entropy_from_probs_matches_scipy_entr_with_zeros():
    probs = np.array([[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        il.entropy_from_probs(probs), scipy.special.entr(probs).sum(-1), rtol=1e-12
    )
    grad = jax.grad(lambda p: il.entropy_from_probs(p).sum())(jnp.asarray(probs))
    assert np.all(np.isfinite(grad))


def test_background_notes_numbers_from_counts():
    assert float(il.entropy_from_counts({"a": 2, "b": 2, "c": 4}, base=2)) == pytest.approx(
        1.5, abs=1e-12
    )
    assert float(il.entropy_from_counts([1, 1, 1], base=2)) == pytest.approx(np.log2(3), 1e-12)
    counts = np.array([[2, 2, 4], [1, 1, 1], [0, 0, 0]])
    np.testing.assert_allclose(
        il.entropy_from_counts(counts, base=2), [1.5, np.log2(3), 0.0], rtol=1e-12
    )


def test_entropy_tuple_axis_equals_flattened():
    logits = RNG.normal(size=(3, 4, 5))
    got = il.entropy(logits, axis=(1, 2))
    np.testing.assert_allclose(got, il.entropy(logits.reshape(3, 20)), rtol=1e-12)


def test_entropy_where_and_neg_inf_are_the_same_exclusion():
    logits = RNG.normal(size=(4, 6))
    mask = np.ones((4, 6), bool)
    mask[:, :2] = False
    with_inf = np.where(mask, logits, -np.inf)
    np.testing.assert_allclose(il.entropy(logits, where=mask), il.entropy(with_inf), rtol=1e-12)
    np.testing.assert_allclose(il.entropy(with_inf), il.entropy(logits[:, 2:]), rtol=1e-12)
    grad = jax.grad(lambda x: il.entropy(x).sum())(jnp.asarray(with_inf))
    assert np.all(np.isfinite(grad)) and np.all(grad[:, :2] == 0)


def test_fully_masked_row_gives_zero_value_and_gradient():
    logits = jnp.asarray(RNG.normal(size=(2, 4)))
    mask = jnp.array([[True] * 4, [False] * 4])
    value, grad = jax.value_and_grad(lambda x: il.entropy(x, where=mask).sum())(logits)
    assert np.isfinite(value)
    np.testing.assert_array_equal(grad[1], 0.0)
    all_inf = jnp.full((3,), -jnp.inf)
    assert float(il.entropy(all_inf)) == 0.0
    np.testing.assert_array_equal(jax.grad(lambda x: il.entropy(x))(all_inf), 0.0)


def test_huge_logits_stay_finite():
    logits = jnp.array([1e30, -1e30, 0.0, 1e30], jnp.float32)
    value, grad = jax.value_and_grad(il.entropy)(logits)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert float(value) == pytest.approx(np.log(2), abs=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_accumulates_in_float32(dtype):
    logits = jnp.asarray(RNG.normal(size=(8, 300)), dtype)
    got = il.entropy(logits)
    assert got.dtype == jnp.float32
    reference = scipy.stats.entropy(softmax_np(np.asarray(logits, np.float64)), axis=-1)
    np.testing.assert_allclose(got, reference, rtol=1e-5)
    assert il.binary_entropy(logits).dtype == jnp.float32
    assert il.entropy_from_probs(jax.nn.softmax(logits)).dtype == jnp.float32


def test_binary_entropy_matches_scipy_and_is_finite_at_infinity():
    logits = np.array([-15.0, -3.0, 0.0, 0.7, 12.0])
    # expit(-z) rather than 1 - expit(z), so that the reference keeps its precision in the tails.
    expected = scipy.special.entr(scipy.special.expit(logits))
    expected = expected + scipy.special.entr(scipy.special.expit(-logits))
    np.testing.assert_allclose(il.binary_entropy(logits), expected, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(il.binary_entropy(0.0, base=2), 1.0)
    tails = np.array([-50.0, 40.0])  # H ~ e^{-|z|} (|z| + 1), where scipy's 1 - p loses it
    asymptote = np.exp(-np.abs(tails)) * (np.abs(tails) + 1)
    np.testing.assert_allclose(il.binary_entropy(tails), asymptote, rtol=1e-12)
    extreme = jnp.array([jnp.inf, -jnp.inf, 1e30, -1e30], jnp.float32)
    value, grad = jax.value_and_grad(lambda x: il.binary_entropy(x).sum())(extreme)
    assert float(value) == 0.0 and np.all(grad == 0)


def plain_entropy(logits):
    return -jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), axis=-1)


def plain_binary_entropy(logits):
    p = jax.nn.sigmoid(logits)
    return -(p * jnp.log(p) + (1 - p) * jnp.log1p(-p))


@pytest.mark.slow
def test_custom_derivatives_match_plain_autodiff_and_finite_differences():
    logits = jnp.asarray(RNG.normal(size=(3, 5)))
    np.testing.assert_allclose(
        jax.grad(lambda x: il.entropy(x).sum())(logits),
        jax.grad(lambda x: plain_entropy(x).sum())(logits),
        rtol=1e-12,
        atol=1e-15,
    )
    np.testing.assert_allclose(
        jax.hessian(lambda x: il.entropy(x))(logits[0]),
        jax.hessian(plain_entropy)(logits[0]),
        rtol=1e-10,
        atol=1e-14,
    )
    x = jnp.asarray(RNG.normal(size=(6,)))
    np.testing.assert_allclose(
        jax.grad(lambda v: il.binary_entropy(v).sum())(x),
        jax.grad(lambda v: plain_binary_entropy(v).sum())(x),
        rtol=1e-12,
    )
    check_grads(il.entropy, (logits,), order=2, modes=["fwd", "rev"])
    check_grads(il.binary_entropy, (x,), order=2, modes=["fwd", "rev"])
    probs = jnp.asarray(softmax_np(RNG.normal(size=(3, 5))))
    check_grads(il.entropy_from_probs, (probs,), order=2, modes=["fwd", "rev"])


def test_entropy_under_vmap_and_jvp():
    logits = jnp.asarray(RNG.normal(size=(4, 5)))
    np.testing.assert_allclose(jax.vmap(il.entropy)(logits), il.entropy(logits), rtol=1e-12)
    tangent = jnp.ones_like(logits)
    _, jvp_out = jax.jvp(il.entropy, (logits,), (tangent,))
    np.testing.assert_allclose(jvp_out, 0.0, atol=1e-12)  # shift invariance, forward mode


@pytest.mark.parametrize("base", [0, -2, 1, 1.0, float("inf")])
def test_bad_base_is_a_value_error_naming_base(base):
    with pytest.raises(ValueError, match="`base`"):
        il.entropy(jnp.zeros(3), base=base)
    with pytest.raises(ValueError, match="`base`"):
        il.entropy_from_counts([1, 2], base=base)


def test_entropy_errors_name_the_argument():
    with pytest.raises(TypeError, match="`logits`.*int32"):
        il.entropy(jnp.arange(3, dtype=jnp.int32))
    with pytest.raises(TypeError, match="`probs`"):
        il.entropy_from_probs(jnp.arange(3, dtype=jnp.int32))
    with pytest.raises(ValueError, match="`where`.*\\[3\\].*\\[2, 4\\]"):
        il.entropy(jnp.zeros((2, 4)), where=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="`axis`"):
        il.entropy(jnp.zeros((2, 4)), axis=2)
    with pytest.raises(TypeError, match="`counts`"):
        il.entropy_from_counts(jnp.array([True, False]))


def test_negative_probability_poisons_the_row():
    got = il.entropy_from_probs(jnp.array([[0.5, 0.5], [1.5, -0.5]]))
    assert np.isfinite(got[0]) and np.isnan(got[1])


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_reduction(reduction):
    z = np.random.default_rng(3).normal(size=(2, 3, 5))
    p = scipy.special.softmax(z, axis=-1)
    for loss, x in ((il.entropy, z), (il.entropy_from_probs, p)):
        rows = np.asarray(loss(x))
        expected = {"sum": rows.sum(), "mean": rows.mean(), "batchmean": rows.sum() / 2}
        np.testing.assert_allclose(loss(x, reduction=reduction), expected[reduction])
        np.testing.assert_allclose(
            loss(x, base=2, reduction=reduction), expected[reduction] / np.log(2)
        )
