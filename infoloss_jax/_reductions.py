"""Reducing per-example losses: none, sum, mean over contributing examples, batchmean."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._typing import ArrayLike
from ._validation import as_float_array, check_broadcastable, check_reduction


def loss_sum_and_count(
    per_example: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""The pair (sum of losses, number of contributing examples) behind every mean.

    .. math::
        S = \sum_i m_i \ell_i, \qquad C = \sum_i m_i w_i

    where :math:`m_i` is ``where`` (1 if omitted) and :math:`w_i` is ``weights`` (1 if
    omitted). The per-example losses are expected to carry their weights already, as the
    cross-entropy functions return them. Summing ``S`` and ``C`` over micro-batches and dividing
    once at the end gives exactly the full-batch mean, however unevenly ignored tokens fall.

    Args:
      per_example: per-example losses.
      weights: optional per-example weights for the denominator, e.g. ``class_weights[label]``.
      where: optional boolean mask of contributing examples.

    Returns:
      ``(sum, count)`` as float32 (or float64) scalars.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> s, c = il.loss_sum_and_count(jnp.array([1.0, 2.0, 0.0]), where=jnp.array([1, 1, 0]) > 0)
      >>> print(float(s), float(c))
      3.0 2.0
    """
    losses = as_float_array(per_example, "per_example")
    dtype = jnp.result_type(losses.dtype, jnp.float32)
    losses = losses.astype(dtype)
    count = jnp.ones(losses.shape, dtype)
    if weights is not None:
        weights = as_float_array(weights, "weights")
        check_broadcastable(weights, "weights", losses.shape, "per_example")
        count = count * weights.astype(dtype)
    if where is not None:
        where = jnp.asarray(where)
        check_broadcastable(where, "where", losses.shape, "per_example")
        losses = jnp.where(where, losses, 0.0)
        count = jnp.where(where, count, 0.0)
    return jnp.sum(losses), jnp.sum(count)


def safe_divide(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / count, and 0 (with a 0 gradient) when the denominator is 0.

    The one empty-mean rule of the core: an empty batch, every row ignored, or weights that
    sum to 0 all give 0 and a 0 gradient (``infoloss_jax.torch`` gives torch's NaN instead). A
    NaN total stays NaN: the rule never hides a poisoned row.
    """
    nonzero = count != 0
    nothing = jnp.where(jnp.isnan(total), jnp.nan, 0.0)
    return jnp.where(nonzero, total / jnp.where(nonzero, count, 1.0), nothing)


def reduce_loss(
    per_example: ArrayLike,
    *,
    reduction: str,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Reduces per-example losses the way PyTorch and large-model training code do.

    * ``"none"``: the per-example values, with excluded examples set to 0.
    * ``"sum"``: :math:`\sum_i m_i \ell_i`.
    * ``"mean"``: :math:`\sum_i m_i \ell_i / \sum_i m_i w_i`, the mean over contributing
      (non-ignored) examples; with class weights ``weights = w[y_i]`` this is PyTorch's weighted
      mean. When the denominator is 0 (an empty batch, every example ignored, or weights
      summing to 0) the result is 0 with a 0 gradient, not NaN; a NaN loss still propagates.
    * ``"batchmean"``: the sum divided by the size of the leading dimension, as
      ``torch.nn.functional.kl_div(..., reduction="batchmean")`` (0 for an empty batch).

    Args:
      per_example: per-example losses.
      reduction: one of ``"none"``, ``"sum"``, ``"mean"``, ``"batchmean"``.
      weights: optional per-example weights for the mean's denominator.
      where: optional boolean mask of contributing examples.

    Returns:
      The reduced loss (a scalar unless ``reduction="none"``).

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> print(float(il.reduce_loss(jnp.array([1.0, 3.0]), reduction="mean")))
      2.0
    """
    check_reduction(reduction)
    losses = as_float_array(per_example, "per_example")
    if reduction == "none":
        return losses if where is None else jnp.where(jnp.asarray(where), losses, 0.0)
    total, count = loss_sum_and_count(losses, weights=weights, where=where)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return safe_divide(total, count)
    leading = losses.shape[0] if losses.ndim else 1
    return total / max(leading, 1)
