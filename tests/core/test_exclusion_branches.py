"""The plain and exact branches behind the core losses agree, and so do the two label picks.

Entropy, the soft-label cross-entropy and the logit KLs compute their reduction in plain form
when no logit is -inf, and in the exact (masked) form otherwise; ``lax.cond`` picks one for the
whole array. Appending an excluded class (a -inf logit with no target mass) must not change a
value or a gradient, yet it sends the same rows down the other branch. Under ``vmap`` the cond
becomes a select of both branches, which must give the same numbers as well.

The integer-label cross-entropy picks the label's logit with a gather, or with a masked sum
when the class axis is explicitly sharded; both must agree, for in-range, ignored and
out-of-range labels, on values and gradients.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import infoloss_jax as il
from infoloss_jax.core import _cross_entropy

RNG = np.random.default_rng(7)
N, V = 4, 6


def _logits(shape=(N, V), scale=2.0):
    return jnp.asarray(RNG.normal(size=shape) * scale)


def _probs(shape=(N, V)):
    return jax.nn.softmax(_logits(shape))


def _with_excluded_class(x, fill):
    """x with one more class at the end, set to ``fill``."""
    return jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), fill, x.dtype)], axis=-1)


# name -> (loss of (model logits, target)), target kind: "probs" or "logits".
LOSSES = {
    "entropy": (lambda z, t: il.entropy(z), "logits"),
    "softmax_cross_entropy": (lambda z, t: il.softmax_cross_entropy(z, t), "probs"),
    "softmax_cross_entropy_options": (
        lambda z, t: il.softmax_cross_entropy(z, t, label_smoothing=0.1, z_loss=1e-2),
        "probs",
    ),
    "forward_kl": (lambda z, t: il.forward_kl(z, t), "logits"),
    "reverse_kl": (lambda z, t: il.reverse_kl(z, t, temperature=2.0), "logits"),
}


def _pair(kind):
    target = _probs() if kind == "probs" else _logits()
    excluded_fill = 0.0 if kind == "probs" else -jnp.inf
    return _logits(), target, excluded_fill


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_an_excluded_class_changes_nothing(name):
    loss, kind = LOSSES[name]
    z, t, fill = _pair(kind)
    z_ex, t_ex = _with_excluded_class(z, -jnp.inf), _with_excluded_class(t, fill)
    total = lambda a, b: jnp.sum(loss(a, b))  # noqa: E731
    value, grads = jax.value_and_grad(total, argnums=(0, 1))(z, t)
    value_ex, grads_ex = jax.value_and_grad(total, argnums=(0, 1))(z_ex, t_ex)
    if name == "softmax_cross_entropy_options":  # label smoothing counts the included classes
        return np.testing.assert_allclose(value_ex, value, rtol=1e-12)
    chex.assert_trees_all_close(value_ex, value, rtol=1e-12, atol=1e-14)
    differentiated = grads_ex if kind == "logits" else grads_ex[:1]
    chex.assert_trees_all_close(
        tuple(g[:, :V] for g in differentiated),
        grads[: len(differentiated)],
        rtol=1e-10,
        atol=1e-14,
    )
    chex.assert_trees_all_equal(
        tuple(g[:, V] for g in differentiated), (jnp.zeros(N),) * len(differentiated)
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_vmap_over_rows_with_and_without_exclusions(name):
    loss, kind = LOSSES[name]
    z, t, fill = _pair(kind)
    z = z.at[1, 2].set(-jnp.inf)  # row 1 takes the exact branch, the others the plain one
    if kind == "logits":
        t = t.at[1, 2].set(-jnp.inf)
    else:
        t = t.at[1].set(jax.nn.softmax(jnp.where(jnp.arange(V) == 2, -jnp.inf, _logits((V,)))))
    row_grad = jax.value_and_grad(lambda a, b: loss(a, b), argnums=(0, 1))
    batched_value, batched_grads = jax.vmap(row_grad)(z, t)
    chex.assert_tree_all_finite(batched_grads)
    for i in range(N):
        batched_row = (batched_value[i], tuple(g[i] for g in batched_grads))
        chex.assert_trees_all_close(batched_row, row_grad(z[i], t[i]), rtol=1e-10, atol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_exact_branch_derivatives_match_finite_differences(name):
    loss, kind = LOSSES[name]
    z, t, _ = _pair(kind)
    z_ex = _with_excluded_class(z, -jnp.inf)
    t_ex = _with_excluded_class(t, 0.0 if kind == "probs" else -jnp.inf)
    # Only the finite entries are perturbed: the -inf column is held fixed.
    fn = lambda a: loss(jnp.concatenate([a, z_ex[:, V:]], axis=-1), t_ex)  # noqa: E731
    check_grads(jax.jit(fn), (z,), order=2)


def test_soft_label_tangents_split_between_logits_and_labels():
    """The JVP rule skips symbolic-zero tangents: each one alone matches plain autodiff."""
    z, y, dz, dy = _logits(), _probs(), _logits(), _logits()
    plain = lambda a, b: -jnp.sum(b * jax.nn.log_softmax(a), axis=-1)  # noqa: E731
    ours = il.softmax_cross_entropy
    for fn_ours, fn_plain, primal, tangent in [
        (lambda a: ours(a, y), lambda a: plain(a, y), z, dz),
        (lambda b: ours(z, b), lambda b: plain(z, b), y, dy),
    ]:
        chex.assert_trees_all_close(
            jax.jvp(fn_ours, (primal,), (tangent,)),
            jax.jvp(fn_plain, (primal,), (tangent,)),
            rtol=1e-10,
            atol=1e-14,
        )


def test_label_mass_on_an_excluded_class_is_infinite_in_both_forms():
    z = _logits().at[0, 1].set(-jnp.inf)
    y = jnp.zeros((N, V)).at[:, 1].set(1.0)
    loss = il.softmax_cross_entropy(z, y)
    assert loss[0] == jnp.inf
    assert np.all(np.isfinite(loss[1:]))
    int_loss = il.softmax_cross_entropy_with_integer_labels(z, jnp.full((N,), 1))
    assert int_loss[0] == jnp.inf
    assert np.all(np.isfinite(int_loss[1:]))


LABELS = jnp.array([0, V - 1, -100, V + 3])  # in range, in range, ignored, out of range


def _masked_sum_pick(logits, labels):
    is_label = jnp.arange(logits.shape[-1]) == labels[:, None]
    return jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)


def test_gather_and_masked_sum_picks_agree(monkeypatch):
    z = _logits().at[1, V - 1].set(-jnp.inf)
    options = dict(ignore_index=-100, class_weights=jnp.linspace(0.5, 1.5, V), z_loss=1e-3)

    def loss(a):
        return il.softmax_cross_entropy_with_integer_labels(a, LABELS, **options)

    gathered, gathered_grad = jax.value_and_grad(lambda a: jnp.sum(loss(a)[:3]))(z)
    full = loss(z)
    monkeypatch.setattr(_cross_entropy, "class_axis_is_explicitly_sharded", lambda x: True)
    masked, masked_grad = jax.value_and_grad(lambda a: jnp.sum(loss(a)[:3]))(z)
    chex.assert_trees_all_equal((masked, masked_grad), (gathered, gathered_grad))
    np.testing.assert_array_equal(_masked_sum_pick(z, LABELS)[0], z[0, 0])
    assert full[1] == jnp.inf  # the label's logit is -inf
    assert full[2] == 0.0  # ignored
    assert np.isnan(full[3])  # out of range poisons its row


@pytest.mark.slow
def test_integer_label_rule_matches_plain_autodiff_and_hessian():
    z, labels = _logits(), jnp.array([0, 3, 5, 2])

    def plain(a):
        return jax.nn.logsumexp(a, axis=-1) - _masked_sum_pick(a, labels)

    def ours(a):
        return il.softmax_cross_entropy_with_integer_labels(a, labels)

    np.testing.assert_allclose(jax.jacfwd(ours)(z), jax.jacfwd(plain)(z), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        jax.hessian(lambda a: ours(a).sum())(z),
        jax.hessian(lambda a: plain(a).sum())(z),
        rtol=1e-10,
        atol=1e-14,
    )
