"""The laws of information theory as hypothesis properties.

Each law runs at a small number of examples in the default suite and at 1,000 examples in the
``slow`` suite (``pytest -m slow``). Shapes are fixed and every function is jitted once, so each
example costs one dispatch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
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
CI_EXAMPLES = 25
SLOW_EXAMPLES = 1_000


def _keep_one(mask):
    mask = mask.copy()
    mask[:, 0] = True  # every row keeps at least one class
    return mask


masks = hnp.arrays(np.bool_, SHAPE).map(_keep_one)
temperatures = st.floats(0.1, 10.0)
LAWS = {}


def law(*strategies):
    """Registers a law with the strategies of its arguments (run by the tests at the end)."""

    def register(fn):
        LAWS[fn.__name__] = (fn, strategies)
        return fn

    return register


entropy = jax.jit(il.entropy)
forward_kl = jax.jit(il.forward_kl)
reverse_kl = jax.jit(il.reverse_kl)
cross_entropy = jax.jit(il.softmax_cross_entropy)
jsd = jax.jit(il.jensen_shannon, static_argnames="beta")
masked_entropy = jax.jit(lambda z, m: il.entropy(z, where=m))
masked_forward_kl = jax.jit(lambda z, t, m: il.forward_kl(z, t, where=m))
kl_divergence = jax.jit(il.kl_divergence)
entropy_from_probs = jax.jit(il.entropy_from_probs)
integer_cross_entropy = jax.jit(il.softmax_cross_entropy_with_integer_labels)
binary_entropy = jax.jit(il.binary_entropy)
binary_cross_entropy = jax.jit(il.sigmoid_binary_cross_entropy)
tempered_forward_kl = jax.jit(
    lambda z, t, temperature: il.forward_kl(z, t, temperature=temperature)
)


@law(logit_arrays, logit_arrays)
def gibbs_inequality(z, t):
    assert np.all(np.asarray(forward_kl(z, t)) >= -TOL)
    assert np.all(np.asarray(reverse_kl(z, t)) >= -TOL)
    assert np.all(np.asarray(kl_divergence(jax.nn.log_softmax(z), jax.nn.softmax(t))) >= -TOL)


@law(logit_arrays, logit_arrays)
def cross_entropy_is_entropy_plus_kl(z, t):
    p = jax.nn.softmax(t)
    lhs = cross_entropy(z, p)
    rhs = entropy(t) + forward_kl(z, t)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-9)


@law(logit_arrays, masks)
def entropy_is_between_zero_and_log_k(z, mask):
    h = np.asarray(entropy(z))
    assert np.all(h >= -TOL) and np.all(h <= np.log(K) + TOL)
    masked = np.asarray(masked_entropy(z, mask))
    assert np.all(masked >= -TOL) and np.all(masked <= np.log(mask.sum(-1)) + TOL)


@law(logit_arrays, logit_arrays, betas)
def jensen_shannon_bounds_and_symmetry(z, t, beta):
    half = np.asarray(jsd(z, t, beta=0.5))
    assert np.all(half >= -TOL) and np.all(half <= np.log(2) + TOL)
    np.testing.assert_allclose(half, jsd(t, z, beta=0.5), rtol=1e-9, atol=1e-12)
    general = np.asarray(jsd(z, t, beta=beta))
    assert np.all(general >= -TOL)
    # Swapping roles swaps beta.
    np.testing.assert_allclose(general, jsd(t, z, beta=1.0 - beta), rtol=1e-8, atol=1e-12)


@law(logit_arrays, logit_arrays, shifts, shifts)
def shift_invariance(z, t, a, b):
    np.testing.assert_allclose(entropy(z + a), entropy(z), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(forward_kl(z + a, t + b), forward_kl(z, t), rtol=1e-7, atol=1e-9)
    p = jax.nn.softmax(t)
    np.testing.assert_allclose(cross_entropy(z + a, p), cross_entropy(z, p), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(jsd(z + a, t + b, beta=0.5), jsd(z, t, beta=0.5), atol=1e-9)


@law(logit_arrays, logit_arrays, permutations, masks)
def permutation_invariance(z, t, perm, mask):
    np.testing.assert_allclose(entropy(z[:, perm]), entropy(z), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        masked_forward_kl(z[:, perm], t[:, perm], mask[:, perm]),
        masked_forward_kl(z, t, mask),
        rtol=1e-9,
        atol=1e-12,
    )


@law(logit_arrays, masks)
def kl_of_a_distribution_with_itself_is_zero(z, mask):
    np.testing.assert_allclose(forward_kl(z, z), 0.0, atol=1e-12)
    np.testing.assert_allclose(reverse_kl(z, z), 0.0, atol=1e-12)
    np.testing.assert_allclose(masked_forward_kl(z, z, mask), 0.0, atol=1e-12)
    np.testing.assert_allclose(jsd(z, z, beta=0.3), 0.0, atol=1e-12)


@law(logit_arrays)
def gradients_sum_to_zero_along_classes(z):
    t = jnp.flip(jnp.asarray(z), axis=-1)
    grad = jax.grad(lambda x: forward_kl(x, t).sum())(z)
    np.testing.assert_allclose(np.sum(grad, -1), 0.0, atol=1e-12)
    grad = jax.grad(lambda x: entropy(x).sum())(z)
    np.testing.assert_allclose(np.sum(grad, -1), 0.0, atol=1e-12)


@law(logit_arrays)
def entropy_of_the_softmax_is_the_entropy_of_its_probabilities(z):
    np.testing.assert_allclose(entropy_from_probs(jax.nn.softmax(z)), entropy(z), atol=1e-9)


@law(logit_arrays, st.integers(0, K - 1))
def integer_labels_are_one_hot_soft_labels(z, label):
    labels = jnp.full(SHAPE[:-1], label)
    one_hot = jax.nn.one_hot(labels, K, dtype=z.dtype)
    np.testing.assert_allclose(
        integer_cross_entropy(z, labels), cross_entropy(z, one_hot), rtol=1e-9, atol=1e-9
    )


@law(logit_arrays, logit_arrays, temperatures)
def temperature_divides_both_logits(z, t, temperature):
    np.testing.assert_allclose(
        tempered_forward_kl(z, t, temperature),
        forward_kl(z / temperature, t / temperature),
        rtol=1e-8,
        atol=1e-10,
    )


@law(logit_arrays, logit_arrays)
def pinsker_inequality(z, t):
    """KL(p || q) >= ||p - q||_1^2 / 2."""
    l1 = np.abs(np.asarray(jax.nn.softmax(t) - jax.nn.softmax(z))).sum(-1)
    assert np.all(np.asarray(forward_kl(z, t)) >= 0.5 * l1**2 - TOL)


@law(logit_arrays, logit_arrays, betas)
def jensen_shannon_is_at_most_the_entropy_of_beta(z, t, beta):
    """JSD_beta(P, Q) <= H_b(beta) (Lin, 1991); log 2 at beta = 1/2."""
    bound = -(beta * np.log(beta) + (1 - beta) * np.log1p(-beta))
    assert np.all(np.asarray(jsd(z, t, beta=beta)) <= bound + TOL)


@law(logit_arrays, logit_arrays)
def binary_cross_entropy_is_at_least_the_binary_entropy(z, t):
    """Gibbs for a Bernoulli: H(sigma(t), sigma(z)) >= H_b(t), with equality at z = t."""
    y = jax.nn.sigmoid(t)
    assert np.all(np.asarray(binary_cross_entropy(z, y)) >= np.asarray(binary_entropy(t)) - TOL)
    np.testing.assert_allclose(binary_cross_entropy(t, y), binary_entropy(t), atol=1e-9)
    np.testing.assert_allclose(binary_entropy(-t), binary_entropy(t), atol=1e-12)
    assert np.all(np.asarray(binary_entropy(t)) <= np.log(2) + TOL)


def _run(name: str, max_examples: int) -> None:
    # A fresh hypothesis test per run: one function cannot carry two settings objects.
    fn, strategies = LAWS[name]
    settings(max_examples=max_examples)(given(*strategies)(fn))()


@pytest.mark.parametrize("name", sorted(LAWS))
def test_law(name):
    _run(name, CI_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAWS))
def test_law_at_1000_examples(name):
    _run(name, SLOW_EXAMPLES)
