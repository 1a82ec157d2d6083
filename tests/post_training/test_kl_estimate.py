"""infoloss_jax.kl_estimate: Schulman's k1/k2/k3 against PyTorch goldens and plain formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden import make_post_training_golden as CASES
from golden import post_training_golden
from jax.test_util import check_grads

import infoloss_jax as il

GOLDEN = post_training_golden.GOLDEN
LP = jnp.array(CASES.INPUTS["log_probs"], jnp.float64)
REF = jnp.array(CASES.INPUTS["ref_log_probs"], jnp.float64)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_values_and_gradients_match_torch(estimator):
    got = il.kl_estimate(LP, REF, estimator=estimator)
    np.testing.assert_allclose(got, GOLDEN[f"kl/{estimator}/values"], rtol=1e-13, atol=1e-15)
    grad = jax.grad(lambda x: jnp.sum(il.kl_estimate(x, REF, estimator=estimator)))(LP)
    np.testing.assert_allclose(grad, GOLDEN[f"grad/kl/{estimator}/sum"], rtol=1e-13, atol=1e-15)


def test_k3_is_accurate_for_nearly_equal_policies():
    # e^d - 1 - d for tiny d: d^2/2 (1 + d/3); the naive form loses every digit in float32.
    d = jnp.array([1e-4, -3e-3, 2e-6, 0.0, 0.05, -0.09], jnp.float32)
    got = il.kl_estimate(jnp.zeros_like(d), d)
    d64 = np.asarray(d, np.float64)
    expected = np.expm1(d64) - d64
    expected = np.where(np.abs(d64) < 1e-3, d64**2 / 2 * (1 + d64 / 3 + d64**2 / 12), expected)
    np.testing.assert_allclose(got, expected, rtol=2e-6)
    assert np.all(np.asarray(got) >= 0)


def test_k3_matches_expm1_beyond_the_series():
    d = jnp.array([0.1, -0.2, 1.5, -7.0, 30.0], jnp.float64)
    np.testing.assert_allclose(il.kl_estimate(jnp.zeros_like(d), d), np.expm1(d) - d, rtol=1e-14)


def test_unbiasedness_by_exact_expectation():
    # Expectation over q of k1 and k3 is KL(q || r) exactly; k2 is not.
    q = jnp.array([0.5, 0.3, 0.2], jnp.float64)
    r = jnp.array([0.2, 0.5, 0.3], jnp.float64)
    kl = jnp.sum(q * (jnp.log(q) - jnp.log(r)))
    for estimator in ("k1", "k3"):
        expected = jnp.sum(q * il.kl_estimate(jnp.log(q), jnp.log(r), estimator=estimator))
        np.testing.assert_allclose(expected, kl, rtol=1e-12)
    k2 = jnp.sum(q * il.kl_estimate(jnp.log(q), jnp.log(r), estimator="k2"))
    assert abs(float(k2 - kl)) > 1e-3


def test_expected_gradients_are_as_documented():
    # Score-function view: E_q[grad k] with only log q(x) differentiated, x fixed.
    logits = jnp.array([0.3, -0.2, 0.9], jnp.float64)
    r = jax.nn.softmax(jnp.array([-0.5, 0.4, 0.1], jnp.float64))

    def expected_grad(estimator):
        q = jax.lax.stop_gradient(jax.nn.softmax(logits))

        def f(z):
            lq = jax.nn.log_softmax(z)
            return jnp.sum(q * il.kl_estimate(lq, jnp.log(r), estimator=estimator))

        return jax.grad(f)(logits)

    reverse = jax.grad(lambda z: jnp.sum(jax.nn.softmax(z) * (jax.nn.log_softmax(z) - jnp.log(r))))
    forward = jax.grad(lambda z: jnp.sum(r * (jnp.log(r) - jax.nn.log_softmax(z))))
    np.testing.assert_allclose(expected_grad("k1"), 0.0, atol=1e-15)
    np.testing.assert_allclose(expected_grad("k2"), reverse(logits), rtol=1e-12)
    np.testing.assert_allclose(expected_grad("k3"), forward(logits), rtol=1e-12)


def test_mask_zeroes_values_and_gradients_of_nan_padding():
    lp = LP.at[1, 3:].set(jnp.nan)
    mask = jnp.array(CASES.INPUTS["mask"]) > 0
    for estimator in ("k1", "k2", "k3"):
        f = lambda x, e=estimator: jnp.sum(il.kl_estimate(x, REF, estimator=e, mask=mask))  # noqa: E731
        value, grad = jax.value_and_grad(f)(lp)
        assert np.isfinite(value)
        assert np.all(np.isfinite(grad))
        assert np.all(np.asarray(grad)[~np.asarray(mask)] == 0)


def test_excluded_reference_token_gives_inf_not_nan():
    got = il.kl_estimate(jnp.array([-1.0]), jnp.array([-jnp.inf]))
    assert np.isposinf(got[0])


@pytest.mark.slow
def test_check_grads_and_transforms():
    for estimator in ("k1", "k2", "k3"):
        f = lambda x, y, e=estimator: il.kl_estimate(x, y, estimator=e)  # noqa: E731
        check_grads(f, (LP, REF), order=2, modes=["fwd", "rev"])
        jitted = jax.jit(f)(LP, REF)
        vmapped = jax.vmap(f)(LP, REF)
        np.testing.assert_allclose(jitted, f(LP, REF), rtol=1e-14)
        np.testing.assert_allclose(vmapped, f(LP, REF), rtol=1e-14)


def test_half_precision_computes_in_float32():
    got = il.kl_estimate(LP.astype(jnp.bfloat16), REF.astype(jnp.bfloat16))
    assert got.dtype == jnp.float32


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ValueError, match="estimator"):
        il.kl_estimate(LP, REF, estimator="k4")
    with pytest.raises(ValueError, match="ref_log_probs"):
        il.kl_estimate(LP, REF[:, :3])
    with pytest.raises(TypeError, match="log_probs"):
        il.kl_estimate(jnp.ones((2, 3), jnp.int32), REF)
    with pytest.raises(TypeError, match="mask"):
        il.kl_estimate(LP, REF, mask=jnp.ones(LP.shape))
    with pytest.raises(ValueError, match="mask"):
        il.kl_estimate(LP, REF, mask=jnp.ones((2,), bool))
