"""accumulate_value_and_grad: micro-batch accumulation equals the full-batch mean exactly."""

from __future__ import annotations

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import infoloss_jax as il
from infoloss_jax.core._accumulation import accumulate_value_and_grad

M, T, D, K = 3, 6, 4, 5  # micro-batches, tokens per micro-batch, hidden size, classes
IGNORE = -100
CLASS_WEIGHTS = jnp.asarray([0.5, 1.0, 2.0, 1.5, 0.25])
OPTIONS = {"ignore_index": IGNORE, "label_smoothing": 0.1, "z_loss": 1e-3}


def make_batch(dtype=jnp.float64):
    key_h, key_y, key_w = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(key_h, (M, T, D), dtype)
    labels = jax.random.randint(key_y, (M, T), 0, K)
    # Very uneven: 1, 6 and 3 contributing tokens.
    kept = jnp.asarray([[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 0]], bool)
    labels = jnp.where(kept, labels, IGNORE)
    params = {
        "w": jax.random.normal(key_w, (D, K), dtype),
        "b": jnp.linspace(-1.0, 1.0, K, dtype=dtype),
    }
    return params, {"hidden": hidden, "labels": labels}


def per_token_loss(params, hidden, labels, class_weights):
    logits = hidden @ params["w"] + params["b"]
    return il.softmax_cross_entropy_with_integer_labels(
        logits, labels, class_weights=class_weights, **OPTIONS
    )


def sum_and_count(params, batch, class_weights=None):
    labels = batch["labels"]
    losses = per_token_loss(params, batch["hidden"], labels, class_weights)
    weights = None if class_weights is None else class_weights[jnp.maximum(labels, 0)]
    return il.loss_sum_and_count(losses, weights=weights, where=labels != IGNORE)


def full_batch_mean(params, batch, class_weights=None):
    hidden = batch["hidden"].reshape(M * T, D)
    labels = batch["labels"].reshape(M * T)
    logits = hidden @ params["w"] + params["b"]
    return il.softmax_cross_entropy_with_integer_labels(
        logits, labels, class_weights=class_weights, reduction="mean", **OPTIONS
    )


class FullBatchMeanTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("unweighted", None), ("class_weights", CLASS_WEIGHTS))
    def test_equals_full_batch_mean_value_and_grad(self, class_weights):
        params, batch = make_batch()
        fn = partial(sum_and_count, class_weights=class_weights)
        accumulate = self.variant(accumulate_value_and_grad, static_argnums=0)
        loss, grads = accumulate(fn, params, batch)
        expected_loss, expected_grads = jax.value_and_grad(full_batch_mean)(
            params, batch, class_weights
        )
        chex.assert_trees_all_close(loss, expected_loss, rtol=1e-12)
        chex.assert_trees_all_close(grads, expected_grads, rtol=1e-11, atol=1e-14)


def test_mean_of_micro_batch_means_is_wrong_here():
    """The flash-linear-attention #539 mistake, to show the test above is not vacuous."""
    params, batch = make_batch()
    means = [
        il.softmax_cross_entropy_with_integer_labels(
            batch["hidden"][m] @ params["w"] + params["b"],
            batch["labels"][m],
            reduction="mean",
            **OPTIONS,
        )
        for m in range(M)
    ]
    assert abs(float(np.mean(means)) - float(full_batch_mean(params, batch))) > 1e-3


def test_all_ignored_gives_zero_loss_and_zero_grads():
    params, batch = make_batch()
    batch = {**batch, "labels": jnp.full((M, T), IGNORE)}
    loss, grads = accumulate_value_and_grad(sum_and_count, params, batch)
    assert float(loss) == 0.0
    chex.assert_trees_all_equal(grads, jax.tree.map(jnp.zeros_like, params))


def test_half_precision_params_accumulate_in_float32():
    params, batch = make_batch(jnp.float32)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    loss, grads = accumulate_value_and_grad(sum_and_count, params, batch)
    assert loss.dtype == jnp.float32
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
    reference = full_batch_mean(jax.tree.map(lambda p: p.astype(jnp.float32), params), batch)
    np.testing.assert_allclose(loss, reference, rtol=2e-2)


def test_ragged_micro_batch_axes_are_an_error():
    params, batch = make_batch()
    with pytest.raises(ValueError, match="microbatches"):
        accumulate_value_and_grad(sum_and_count, params, {**batch, "labels": batch["labels"][:2]})
    with pytest.raises(ValueError, match="microbatches"):
        accumulate_value_and_grad(sum_and_count, params, {})
