"""The laws of information theory as hypothesis properties (200 examples each in CI).

Shapes are fixed and every function is jitted once, so each example costs one dispatch.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import infoloss_jax as il

SHAPE = (3, 6)
K = SHAPE[-1]
logit_arrays = hnp.arrays(np.float64, SHAPE, elements=st.floats(-30, 30, width=64))
shifts = st.floats(-1e3, 1e3, width=64)
permutations = st.permutations(range(K)).map(np.asarray)
betas = st.sampled_from([0.05, 0.25, 0.5, 0.7, 0.95])  # static: one compile each
TOL = 1e-9


def _keep_one(mask):
    mask = mask.copy()
    mask[:, 0] = True  # every row keeps at least one class
    return mask


masks = hnp.arrays(np.bool_, SHAPE).map(_keep_one)
entropy = jax.jit(il.entropy)
forward_kl = jax.jit(il.forward_kl)
reverse_kl = jax.jit(il.reverse_kl)
cross_entropy = jax.jit(il.softmax_cross_entropy)
jsd = jax.jit(il.jensen_shannon, static_argnames="beta")
masked_entropy = jax.jit(lambda z, m: il.entropy(z, where=m))
masked_forward_kl = jax.jit(lambda z, t, m: il.forward_kl(z, t, where=m))
kl_divergence = jax.jit(il.kl_divergence)


@given(logit_arrays, logit_arrays)
def test_gibbs_inequality(z, t):
    assert np.all(np.asarray(forward_kl(z, t)) >= -TOL)
    assert np.all(np.asarray(reverse_kl(z, t)) >= -TOL)
    assert np.all(np.asarray(kl_divergence(jax.nn.log_softmax(z), jax.nn.softmax(t))) >= -TOL)


@given(logit_arrays, logit_arrays)
def test_cross_entropy_is_entropy_plus_kl(z, t):
    p = jax.nn.softmax(t)
    lhs = cross_entropy(z, p)
    rhs = entropy(t) + forward_kl(z, t)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-9)


@given(logit_arrays, masks)
def test_entropy_is_between_zero_and_log_k(z, mask):
    h = np.asarray(entropy(z))
    assert np.all(h >= -TOL) and np.all(h <= np.log(K) + TOL)
    masked = np.asarray(masked_entropy(z, mask))
    assert np.all(masked >= -TOL) and np.all(masked <= np.log(mask.sum(-1)) + TOL)


@given(logit_arrays, logit_arrays, betas)
def test_jensen_shannon_bounds_and_symmetry(z, t, beta):
    half = np.asarray(jsd(z, t, beta=0.5))
    assert np.all(half >= -TOL) and np.all(half <= np.log(2) + TOL)
    np.testing.assert_allclose(half, jsd(t, z, beta=0.5), rtol=1e-9, atol=1e-12)
    general = np.asarray(jsd(z, t, beta=beta))
    assert np.all(general >= -TOL)
    # Swapping roles swaps beta.
    np.testing.assert_allclose(general, jsd(t, z, beta=1.0 - beta), rtol=1e-8, atol=1e-12)


@given(logit_arrays, logit_arrays, shifts, shifts)
def test_shift_invariance(z, t, a, b):
    np.testing.assert_allclose(entropy(z + a), entropy(z), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(forward_kl(z + a, t + b), forward_kl(z, t), rtol=1e-7, atol=1e-9)
    p = jax.nn.softmax(t)
    np.testing.assert_allclose(cross_entropy(z + a, p), cross_entropy(z, p), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(jsd(z + a, t + b, beta=0.5), jsd(z, t, beta=0.5), atol=1e-9)


@given(logit_arrays, logit_arrays, permutations, masks)
def test_permutation_invariance(z, t, perm, mask):
    np.testing.assert_allclose(entropy(z[:, perm]), entropy(z), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        masked_forward_kl(z[:, perm], t[:, perm], mask[:, perm]),
        masked_forward_kl(z, t, mask),
        rtol=1e-9,
        atol=1e-12,
    )


@given(logit_arrays, masks)
def test_kl_of_a_distribution_with_itself_is_zero(z, mask):
    np.testing.assert_allclose(forward_kl(z, z), 0.0, atol=1e-12)
    np.testing.assert_allclose(reverse_kl(z, z), 0.0, atol=1e-12)
    np.testing.assert_allclose(masked_forward_kl(z, z, mask), 0.0, atol=1e-12)
    np.testing.assert_allclose(jsd(z, z, beta=0.3), 0.0, atol=1e-12)


@given(logit_arrays)
def test_gradients_sum_to_zero_along_classes(z):
    t = jnp.flip(jnp.asarray(z), axis=-1)
    grad = jax.grad(lambda x: forward_kl(x, t).sum())(z)
    np.testing.assert_allclose(np.sum(grad, -1), 0.0, atol=1e-12)
    grad = jax.grad(lambda x: entropy(x).sum())(z)
    np.testing.assert_allclose(np.sum(grad, -1), 0.0, atol=1e-12)
