"""Gradient accumulation over micro-batches that gives exactly the full-batch mean."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ..base._caching import cached_eager
from ._reductions import safe_divide

PyTree = Any


@cached_eager("loss_sum_and_count_fn")
def accumulate_value_and_grad(
    loss_sum_and_count_fn: Callable[[PyTree, PyTree], tuple[jax.Array, jax.Array]],
    params: PyTree,
    microbatches: PyTree,
) -> tuple[jax.Array, PyTree]:
    r"""The full-batch mean loss and its gradient, computed one micro-batch at a time.

    Averaging per-micro-batch *means* is wrong whenever micro-batches hold different numbers of
    contributing tokens (ignored padding, variable-length sequences, class weights): the
    mean of means weights a token in a sparse micro-batch more than one in a dense micro-batch.
    Instead, each micro-batch reports its loss **sum** :math:`S_m` and its token **count**
    :math:`C_m` (for instance from :func:`infoloss_jax.loss_sum_and_count`), and

    .. math::
        \bar\ell = \frac{\sum_m S_m}{\sum_m C_m}, \qquad
        \nabla_\theta \bar\ell = \frac{\sum_m \nabla_\theta S_m}{\sum_m C_m},

    which is exactly the mean over the whole batch, because the counts do not depend on the
    parameters. Only the running sums are kept, so memory is that of one micro-batch. When no
    token contributes at all, the loss and the gradient are 0, not NaN.

    The same holds for any mean whose denominator does not depend on the parameters. For
    GRPO's mean of per-sequence token means (packed sequences included), return
    ``loss_sum_and_count(per_token, reduction="sequence_mean", segment_ids=..., num_segments=...)``:
    :math:`S_m` is then the sum of the micro-batch's sequence means and :math:`C_m` its number of
    non-empty sequences, and the result is the mean over every sequence of the batch, provided
    no sequence is split between micro-batches (see :func:`infoloss_jax.reduce_loss`).

    The micro-batches are stacked along a new leading axis (every leaf of ``microbatches`` has
    shape ``[num_microbatches, ...]``) and visited with :func:`jax.lax.scan`, so they must share
    one shape: pad short ones with ignored tokens, which count 0.

    Args:
      loss_sum_and_count_fn: ``fn(params, microbatch) -> (loss_sum, count)``, both scalars;
        ``loss_sum`` is differentiated with respect to ``params``, ``count`` is not.
      params: a pytree of floating-point arrays.
      microbatches: a pytree whose leaves have a leading micro-batch axis.

    Returns:
      ``(mean_loss, grads)``: the full-batch mean and its gradient, ``grads`` with the structure
        and dtypes of ``params`` (accumulated in at least float32).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> def sum_and_count(w, batch):
      ...     logits = batch["x"] * w
      ...     losses = il.softmax_cross_entropy_with_integer_labels(
      ...         logits, batch["y"], ignore_index=-100)
      ...     return il.loss_sum_and_count(losses, where=batch["y"] != -100)
      >>> x = jnp.arange(12.0).reshape(2, 3, 2) / 10  # 2 micro-batches of 3 tokens
      >>> y = jnp.array([[0, 1, -100], [1, -100, -100]])  # 2 tokens, then 1 token
      >>> batches = {"x": x, "y": y}
      >>> loss, grad = il.accumulate_value_and_grad(sum_and_count, jnp.float32(1.0), batches)
      >>> full = lambda w: il.softmax_cross_entropy_with_integer_labels(
      ...     x.reshape(6, 2) * w, y.reshape(6), ignore_index=-100, reduction="mean")
      >>> print(bool(jnp.allclose(loss, full(1.0))), bool(jnp.allclose(grad, jax.grad(full)(1.0))))
      True True

      Packed sequences, averaged per sequence (two micro-batches of one row each):

      >>> ids = jnp.array([[[0, 0, 1, -1]], [[0, 0, 0, 0]]])  # 2 documents, then 1
      >>> def sequence_sum_and_count(w, batch):
      ...     return il.loss_sum_and_count(w * batch["x"], reduction="sequence_mean",
      ...                                  segment_ids=batch["ids"], num_segments=2)
      >>> batches = {"x": jnp.array([[[1.0, 3.0, 5.0, 7.0]], [[2.0, 2.0, 2.0, 2.0]]]), "ids": ids}
      >>> loss, grad = il.accumulate_value_and_grad(sequence_sum_and_count, jnp.float32(1.0),
      ...                                           batches)
      >>> print(float(loss), float(grad))  # (2 + 5 + 2) / 3 sequences
      3.0 3.0

    References:
      fla-org/flash-linear-attention issue #539 (per-micro-batch means under accumulation).
    """
    _check_microbatches(microbatches)
    one_microbatch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x)[1:], jnp.result_type(x)), microbatches
    )
    out = jax.eval_shape(loss_sum_and_count_fn, params, one_microbatch)
    sum_dtype = jnp.result_type(out[0].dtype, jnp.float32)
    count_dtype = jnp.result_type(out[1].dtype, jnp.float32)
    value_and_grad = jax.value_and_grad(loss_sum_and_count_fn, has_aux=True)

    def step(carry, microbatch):
        loss_sum, count, grad_sum = carry
        (s, c), g = value_and_grad(params, microbatch)
        grad_sum = jax.tree.map(lambda acc, new: acc + new.astype(acc.dtype), grad_sum, g)
        count = count + lax.stop_gradient(c).astype(count_dtype)
        return (loss_sum + s.astype(sum_dtype), count, grad_sum), None

    init = (
        jnp.zeros((), sum_dtype),
        jnp.zeros((), count_dtype),
        jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), _accumulator_dtype(p)), params),
    )
    (loss_sum, count, grad_sum), _ = lax.scan(step, init, microbatches)
    grads = jax.tree.map(
        lambda g, p: safe_divide(g, count).astype(jnp.result_type(p)), grad_sum, params
    )
    return safe_divide(loss_sum, count), grads


def _accumulator_dtype(x) -> jnp.dtype:
    return jnp.result_type(jnp.result_type(x), jnp.float32)


def _check_microbatches(microbatches: PyTree) -> int:
    """Returns the number of micro-batches, or raises ``ValueError`` for ragged leading axes."""
    leaves = jax.tree.leaves(microbatches)
    if not leaves:
        raise ValueError("`microbatches` must hold at least one array; got an empty pytree.")
    sizes = {int(jnp.shape(x)[0]) for x in leaves if jnp.ndim(x)}
    if any(jnp.ndim(x) == 0 for x in leaves) or len(sizes) != 1 or 0 in sizes:
        shapes = [list(jnp.shape(x)) for x in leaves]
        raise ValueError(
            "Every leaf of `microbatches` must have the same non-zero leading (micro-batch) "
            f"axis; got leaf shapes {shapes}."
        )
    return sizes.pop()
