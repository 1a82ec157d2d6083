"""Divergences: scipy and optax parity, directions, JSD end points, safety, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
from jax.test_util import check_grads

import infoloss_jax as il
from infoloss_jax.gradients import _plain

RNG = np.random.default_rng(2)


def softmax_np(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_background_notes_kl_value_and_direction():
    x, y = jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8])
    # KL(softmax(y) || softmax(x)): the target y, the model x.
    assert float(il.forward_kl(x, y)) == pytest.approx(0.043053, abs=5e-7)
    assert float(il.reverse_kl(y, x)) == pytest.approx(0.043053, abs=5e-7)
    assert float(il.kl_divergence(jax.nn.log_softmax(x), jax.nn.softmax(y))) == pytest.approx(
        0.043053, abs=5e-7
    )
    # KL is not symmetric.
    assert float(il.forward_kl(y, x)) != pytest.approx(float(il.forward_kl(x, y)), rel=1e-3)


@pytest.mark.parametrize(
    "shape,axis", [((6,), -1), ((4, 6), -1), ((3, 4, 5), 1), ((2, 3, 4), (1, 2))]
)
def test_kl_divergences_match_scipy_and_optax(shape, axis):
    p = softmax_np(RNG.normal(size=shape), axis)
    q = softmax_np(RNG.normal(size=shape), axis)
    p[(0,) * len(shape)] = 0.0  # a zero target
    expected = np.sum(scipy.special.rel_entr(p, q), axis=axis)
    log_q, log_p = np.log(q), np.log(np.where(p > 0, p, 1e-300))
    log_p = np.where(p > 0, log_p, -np.inf)
    np.testing.assert_allclose(il.kl_divergence(log_q, p, axis=axis), expected, rtol=1e-12)
    np.testing.assert_allclose(
        il.kl_divergence_with_log_targets(log_q, log_p, axis=axis), expected, rtol=1e-12
    )
    np.testing.assert_allclose(
        il.kl_divergence(log_q, p, axis=axis),
        optax.losses.kl_divergence(log_q, p, axis=axis),
        rtol=1e-12,
    )
    unnormalized = 2.0 * q
    np.testing.assert_allclose(
        il.generalized_kl_divergence(np.log(unnormalized), p, axis=axis),
        np.sum(scipy.special.kl_div(p, unnormalized), axis=axis),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        il.generalized_kl_divergence(np.log(unnormalized), p, axis=axis),
        optax.losses.generalized_kl_divergence(np.log(unnormalized), p, axis=axis),
        rtol=1e-12,
    )


def test_kl_where_matches_optax():
    p, q = softmax_np(RNG.normal(size=(4, 6))), softmax_np(RNG.normal(size=(4, 6)))
    where = RNG.random((4, 6)) > 0.4
    np.testing.assert_allclose(
        il.kl_divergence(np.log(q), p, where=where),
        optax.losses.kl_divergence(np.log(q), p, where=where),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        il.kl_divergence_with_log_targets(np.log(q), np.log(p), where=where),
        optax.losses.kl_divergence_with_log_targets(np.log(q), np.log(p), where=where),
        rtol=1e-12,
    )


def test_zero_targets_and_neg_inf_log_targets_have_finite_gradients():
    log_q = jnp.array([[-jnp.inf, np.log(0.5), np.log(0.5)]])
    p = jnp.array([[0.0, 0.3, 0.7]])
    value, grads = jax.value_and_grad(lambda a, b: il.kl_divergence(a, b).sum(), argnums=(0, 1))(
        log_q, p
    )
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    optax_grad = jax.grad(lambda a: optax.losses.kl_divergence(a, p).sum())(log_q)
    ours = grads[0]
    np.testing.assert_allclose(ours[0, 1:], optax_grad[0, 1:])
    log_p = jnp.log(p)  # -inf at the zero target
    value, grads = jax.value_and_grad(
        lambda a, b: il.kl_divergence_with_log_targets(a, b).sum(), argnums=(0, 1)
    )(log_q, log_p)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


def np_kl(p, q):
    return np.sum(scipy.special.rel_entr(p, q), axis=-1)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_logit_divergences_match_scipy(temperature):
    z, t = RNG.normal(size=(5, 7)) * 2, RNG.normal(size=(5, 7)) * 2
    q, p = softmax_np(z / temperature), softmax_np(t / temperature)
    fkl = il.forward_kl(z, t, temperature=temperature)
    np.testing.assert_allclose(fkl, np_kl(p, q), rtol=1e-12)
    np.testing.assert_allclose(
        il.reverse_kl(z, t, temperature=temperature), np_kl(q, p), rtol=1e-12
    )
    for beta in (0.1, 0.5, 0.9):
        m = beta * p + (1 - beta) * q
        np.testing.assert_allclose(
            il.jensen_shannon(z, t, beta=beta, temperature=temperature),
            beta * np_kl(p, m) + (1 - beta) * np_kl(q, m),
            rtol=1e-10,
        )


def test_jensen_shannon_end_points_and_bounds():
    z, t = RNG.normal(size=(4, 5)) * 3, RNG.normal(size=(4, 5)) * 3
    np.testing.assert_allclose(il.jensen_shannon(z, t, beta=0.0), il.forward_kl(z, t))
    np.testing.assert_allclose(il.jensen_shannon(z, t, beta=1.0), il.reverse_kl(z, t))
    # Near the end points the mixture formula tends to 0: the documented discontinuity.
    assert np.all(np.asarray(il.jensen_shannon(z, t, beta=1e-6)) < 1e-4)
    symmetric = il.jensen_shannon(z, t)
    np.testing.assert_allclose(symmetric, il.jensen_shannon(t, z), rtol=1e-12)
    assert np.all(np.asarray(symmetric) <= np.log(2) + 1e-12)
    disjoint = il.jensen_shannon(jnp.array([0.0, -jnp.inf]), jnp.array([-jnp.inf, 0.0]))
    assert float(disjoint) == pytest.approx(np.log(2), abs=1e-12)


def test_logit_divergences_are_safe_with_excluded_classes():
    z = jnp.asarray(RNG.normal(size=(3, 5))).at[:, 0].set(-jnp.inf)
    t = jnp.asarray(RNG.normal(size=(3, 5))).at[:, 0].set(-jnp.inf)
    where = jnp.ones((3, 5), bool).at[2].set(False)
    for fn in (
        il.forward_kl,
        il.reverse_kl,
        lambda a, b, **k: il.jensen_shannon(a, b, beta=0.3, **k),
    ):
        value, grads = jax.value_and_grad(
            lambda a, b, f=fn: f(a, b, where=where).sum(), argnums=(0, 1)
        )(z, t)
        assert np.isfinite(value)
        assert all(np.all(np.isfinite(g)) for g in grads)
        np.testing.assert_array_equal(grads[0][2], 0.0)
        np.testing.assert_array_equal(grads[1][2], 0.0)


@pytest.mark.slow
def test_custom_jvps_match_plain_autodiff_and_finite_differences():
    z, t = jnp.asarray(RNG.normal(size=(3, 5))), jnp.asarray(RNG.normal(size=(3, 5)))
    cases = [
        (il.forward_kl, _plain.forward_kl),
        (il.reverse_kl, _plain.reverse_kl),
        (
            lambda a, b: il.jensen_shannon(a, b, beta=0.3),
            lambda a, b: _plain.jensen_shannon(a, b, beta=0.3),
        ),
    ]
    for ours, plain in cases:
        g_ours = jax.grad(lambda a, b, f=ours: f(a, b).sum(), argnums=(0, 1))(z, t)
        g_plain = jax.grad(lambda a, b, f=plain: f(a, b).sum(), argnums=(0, 1))(z, t)
        for a, b in zip(g_ours, g_plain, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(
            jax.hessian(lambda a, f=ours: f(a, t[0]))(z[0]),
            jax.hessian(lambda a, f=plain: f(a, t[0]))(z[0]),
            rtol=1e-8,
            atol=1e-12,
        )
        check_grads(jax.jit(ours), (z, t), order=2)
    check_grads(jax.jit(lambda a, b: il.forward_kl(a, b, temperature=2.0)), (z, t), order=1)


def test_temperature_chain_factor():
    z, t = jnp.asarray(RNG.normal(size=(6,))), jnp.asarray(RNG.normal(size=(6,)))
    grad_t = jax.grad(lambda a: il.forward_kl(a, t, temperature=3.0))(z)
    expected = (jax.nn.softmax(z / 3.0) - jax.nn.softmax(t / 3.0)) / 3.0
    np.testing.assert_allclose(grad_t, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.slow
def test_half_precision_divergences_return_float32():
    z = jnp.asarray(RNG.normal(size=(3, 40)), jnp.bfloat16)
    t = jnp.asarray(RNG.normal(size=(3, 40)), jnp.bfloat16)
    for fn in (il.forward_kl, il.reverse_kl, il.jensen_shannon):
        out = fn(z, t)
        assert out.dtype == jnp.float32
        ref = fn(z.astype(jnp.float64), t.astype(jnp.float64))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    log_q = jax.nn.log_softmax(z)
    assert il.kl_divergence(log_q, jax.nn.softmax(t)).dtype == jnp.float32


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature_is_a_value_error(temperature):
    with pytest.raises(ValueError, match="`temperature`"):
        il.forward_kl(jnp.zeros(3), jnp.zeros(3), temperature=temperature)
    with pytest.raises(ValueError, match="`temperature`"):
        il.jensen_shannon(jnp.zeros(3), jnp.zeros(3), temperature=temperature)


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_bad_beta_is_a_value_error(beta):
    with pytest.raises(ValueError, match="`beta`.*\\[0, 1\\]"):
        il.jensen_shannon(jnp.zeros(3), jnp.zeros(3), beta=beta)


def test_divergence_errors_name_the_argument():
    with pytest.raises(ValueError, match="`logits`.*`target_logits`"):
        il.forward_kl(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(TypeError, match="`target_logits`"):
        il.reverse_kl(jnp.zeros(3), jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="`log_predictions`"):
        il.kl_divergence(jnp.zeros(3, jnp.int32), jnp.zeros(3))
    with pytest.raises(ValueError, match="`targets`.*not broadcastable"):
        il.kl_divergence(jnp.zeros((2, 3)), jnp.zeros((4,)))
    with pytest.raises(ValueError, match="`where`"):
        il.forward_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), where=jnp.ones((2, 2), bool))


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_reduction(reduction):
    z, t = RNG.normal(size=(2, 3, 5)), RNG.normal(size=(2, 3, 5))
    log_q, p = np.log(softmax_np(z)), softmax_np(t)
    for loss, args in (
        (il.forward_kl, (z, t)),
        (il.reverse_kl, (z, t)),
        (il.jensen_shannon, (z, t)),
        (il.kl_divergence, (log_q, p)),
        (il.kl_divergence_with_log_targets, (log_q, np.log(p))),
        (il.generalized_kl_divergence, (log_q, p)),
    ):
        rows = np.asarray(loss(*args))
        expected = {"sum": rows.sum(), "mean": rows.mean(), "batchmean": rows.sum() / 2}
        np.testing.assert_allclose(loss(*args, reduction=reduction), expected[reduction])
    with pytest.raises(ValueError, match="`reduction`"):
        il.forward_kl(z, t, reduction="batch")
