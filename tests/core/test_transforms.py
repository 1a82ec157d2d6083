"""Every core loss composes with jit, vmap, grad, jvp and hessian, and does not retrace."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import infoloss_jax as il
from infoloss_jax import torch as F
from infoloss_jax.engine._loss_spec import declared_divergences
from infoloss_jax.gradients import _plain as ref

# Every transform of every loss, with and without jit: the slow selection.
pytestmark = pytest.mark.slow

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
    "log_partition": lambda z, t, p, y, b: il.log_partition(z),
    "z_loss": lambda z, t, p, y, b: il.z_loss(z),
}
BATCH = (Z, T, P, LABELS, BINARY)


def _divergence(fn, options):
    return lambda z, t, p, y, b: fn(z, t, **options)


# ... and every declared divergence, with the options its agreement tests use.
LOSSES |= {
    d.name: _divergence(getattr(il, d.name), dict(d.example)) for d in declared_divergences()
}

# The same losses from the plain references (no custom rule, no library kernel).
REFERENCES = {
    "entropy": lambda z, t, p, y, b: ref.entropy(z),
    "binary_entropy": lambda z, t, p, y, b: ref.binary_entropy(z).sum(-1),
    "entropy_from_probs": lambda z, t, p, y, b: ref.entropy_from_probs(jax.nn.softmax(z)),
    "softmax_cross_entropy": lambda z, t, p, y, b: ref.softmax_cross_entropy(z, p),
    "integer_labels": lambda z, t, p, y, b: ref.softmax_cross_entropy_with_integer_labels(z, y),
    "safe_softmax_cross_entropy": lambda z, t, p, y, b: ref.softmax_cross_entropy(z, p),
    "sigmoid_bce": lambda z, t, p, y, b: ref.sigmoid_binary_cross_entropy(z, b).sum(-1),
    "kl_divergence": lambda z, t, p, y, b: ref.kl_divergence(jax.nn.log_softmax(z), p),
    "kl_log_targets": lambda z, t, p, y, b: ref.kl_divergence_with_log_targets(
        jax.nn.log_softmax(z), jax.nn.log_softmax(t)
    ),
    "generalized_kl": lambda z, t, p, y, b: ref.generalized_kl_divergence(z, p),
    "log_partition": lambda z, t, p, y, b: ref.log_partition(z),
    "z_loss": lambda z, t, p, y, b: ref.log_partition(z) ** 2,
}
REFERENCES |= {
    d.name: _divergence(getattr(ref, d.name), dict(d.example)) for d in declared_divergences()
}


class TransformsTest(chex.TestCase):
    """Each loss, called eagerly and under jit, against its plain reference."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*((name, name) for name in sorted(LOSSES)))
    def test_value_vmap_grad_jvp_hessian(self, name):
        fn, reference = self.variant(LOSSES[name]), REFERENCES[name]
        chex.assert_trees_all_close(fn(*BATCH), reference(*BATCH), rtol=1e-12, atol=1e-14)
        per_row = jax.vmap(lambda *rows: fn(*(r[None] for r in rows))[0])(*BATCH)
        chex.assert_trees_all_close(per_row, reference(*BATCH), rtol=1e-12, atol=1e-14)
        total = lambda z: fn(z, *BATCH[1:]).sum()
        grad = jax.grad(total)(Z)
        chex.assert_trees_all_close(
            grad, jax.grad(lambda z: reference(z, *BATCH[1:]).sum())(Z), rtol=1e-10, atol=1e-14
        )
        tangent = jnp.asarray(RNG.normal(size=Z.shape))
        _, forward = jax.jvp(total, (Z,), (tangent,))
        chex.assert_trees_all_close(forward, jnp.vdot(grad, tangent), rtol=1e-10)
        first_row = tuple(r[:1] for r in BATCH[1:])
        hessian = jax.hessian(lambda row: fn(row[None], *first_row)[0])(Z[0])
        expected = jax.hessian(lambda row: reference(row[None], *first_row)[0])(Z[0])
        chex.assert_shape(hessian, (5, 5))
        chex.assert_tree_all_finite(hessian)
        chex.assert_trees_all_close(hessian, expected, rtol=1e-8, atol=1e-12)
        chex.assert_trees_all_close(hessian, hessian.T, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_custom_derivatives_match_finite_differences_float64(name):
    """``check_grads`` in float64, forward and reverse mode, to second order."""
    fn = LOSSES[name]
    check_grads(jax.jit(lambda z: fn(z, *BATCH[1:])), (Z,), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize(
    "loss",
    [
        lambda x: F.cross_entropy(x, P, label_smoothing=0.1),
        lambda x: F.binary_cross_entropy(jax.nn.sigmoid(x), BINARY),
        lambda x: F.binary_cross_entropy_with_logits(x, BINARY),
        lambda x: F.kl_div(jax.nn.log_softmax(x), P, reduction="batchmean"),
        lambda x: F.nll_loss(jax.nn.log_softmax(x), LABELS),
    ],
    ids=["cross_entropy", "binary_cross_entropy", "bce_with_logits", "kl_div", "nll_loss"],
)
def test_torch_layer_derivatives_match_finite_differences_float64(loss):
    check_grads(jax.jit(loss), (Z,), order=2, modes=("fwd", "rev"))


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
