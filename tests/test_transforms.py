"""Every core loss composes with jit, vmap, grad, jvp and hessian, and does not retrace."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infoloss_jax as il

RNG = np.random.default_rng(3)
Z = jnp.asarray(RNG.normal(size=(4, 5)))
T = jnp.asarray(RNG.normal(size=(4, 5)))
P = jax.nn.softmax(T)
LABELS = jnp.asarray(RNG.integers(0, 5, 4))
BINARY = jnp.asarray(RNG.random((4, 5)))

# name -> a function of (logits, target logits, target probs, labels, binary labels), batch axis
# 0 everywhere; the logits are the differentiated argument.
LOSSES = {
    "entropy": lambda z, t, p, y, b: il.entropy(z),
    "binary_entropy": lambda z, t, p, y, b: il.binary_entropy(z).sum(-1),
    "entropy_from_probs": lambda z, t, p, y, b: il.entropy_from_probs(jax.nn.softmax(z)),
    "softmax_cross_entropy": lambda z, t, p, y, b: il.softmax_cross_entropy(z, p),
    "integer_labels": lambda z, t, p, y, b: il.softmax_cross_entropy_with_integer_labels(z, y),
    "safe_softmax_cross_entropy": lambda z, t, p, y, b: il.safe_softmax_cross_entropy(z, p),
    "sigmoid_bce": lambda z, t, p, y, b: il.sigmoid_binary_cross_entropy(z, b).sum(-1),
    "kl_divergence": lambda z, t, p, y, b: il.kl_divergence(jax.nn.log_softmax(z), p),
    "kl_log_targets": lambda z, t, p, y, b: il.kl_divergence_with_log_targets(
        jax.nn.log_softmax(z), jax.nn.log_softmax(t)
    ),
    "generalized_kl": lambda z, t, p, y, b: il.generalized_kl_divergence(z, p),
    "forward_kl": lambda z, t, p, y, b: il.forward_kl(z, t, temperature=1.5),
    "reverse_kl": lambda z, t, p, y, b: il.reverse_kl(z, t),
    "jensen_shannon": lambda z, t, p, y, b: il.jensen_shannon(z, t, beta=0.4),
    "log_partition": lambda z, t, p, y, b: il.log_partition(z),
    "z_loss": lambda z, t, p, y, b: il.z_loss(z),
}
BATCH = (Z, T, P, LABELS, BINARY)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_vmap_grad_jvp_hessian(name):
    fn = LOSSES[name]
    eager = fn(*BATCH)
    np.testing.assert_allclose(jax.jit(fn)(*BATCH), eager, rtol=1e-12)
    per_row = jax.vmap(lambda *rows: fn(*(r[None] for r in rows))[0])(*BATCH)
    np.testing.assert_allclose(per_row, eager, rtol=1e-12)
    total = lambda z: fn(z, *BATCH[1:]).sum()
    grad = jax.grad(total)(Z)
    tangent = jnp.asarray(RNG.normal(size=Z.shape))
    _, forward = jax.jvp(total, (Z,), (tangent,))
    np.testing.assert_allclose(forward, jnp.vdot(grad, tangent), rtol=1e-10)
    first_row = tuple(r[:1] for r in BATCH[1:])
    hessian = jax.hessian(lambda row: fn(row[None], *first_row)[0])(Z[0])
    assert hessian.shape == (5, 5) and np.all(np.isfinite(hessian))
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-12)


def test_float32_stays_float32_and_x64_gives_float64():
    as32 = lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x
    batch32 = tuple(as32(x) for x in BATCH)
    for name, fn in LOSSES.items():
        assert fn(*batch32).dtype == jnp.float32, name
        assert fn(*BATCH).dtype == jnp.float64, name


def test_no_retracing_across_calls():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(z, t, labels):
        return (
            il.softmax_cross_entropy_with_integer_labels(z, labels).sum()
            + il.forward_kl(z, t).sum()
            + il.entropy(z).sum()
        )

    for _ in range(3):
        step(Z + 1.0, T, LABELS)
        step(Z, T * 2.0, (LABELS + 1) % 5)
