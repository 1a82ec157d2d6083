"""Reducing per-example losses: none, sum, mean over contributing examples, batchmean, and
the per-sequence reductions of packed sequences."""

from __future__ import annotations

import typing
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from ..base._caching import cached_eager
from ..base._typing import ArrayLike, Reduction, SequenceReduction
from ..base._validation import (
    REDUCTIONS,
    accumulation_dtype,
    as_float_array,
    check_broadcastable,
    check_reduction,
    describe,
)
from ._segments import (
    check_segment_ids,
    count_sequences,
    resolve_num_segments,
    safe_divide,
    segment_sums,
    sum_of_sequence_means,
    token_keep,
)

PairReduction = Literal["mean", "sequence_mean", "per_sequence_mean"]


class SumAndCount(NamedTuple):
    """What loss_sum_and_count returns: a mean's numerator and denominator over micro-batches.

    Attributes:
      loss_sum: the sum of the contributing losses (or of sequence means).
      loss_count: the number of contributing examples (or their weights, or sequences).
    """

    loss_sum: jax.Array
    loss_count: jax.Array


def _packed(losses, where, segment_ids, num_segments):
    """Validates the packed-sequence inputs: ``(segment ids, num_segments, token mask)``."""
    if losses.ndim < 1:
        raise ValueError(
            f"Per-sequence reductions and `segment_ids` need `per_example` of shape [..., T] "
            f"(tokens last); got {describe(losses)}."
        )
    shape = losses.shape
    seg = check_segment_ids(segment_ids, shape, to_name="per_example")
    num_seg = resolve_num_segments(num_segments, seg, shape[-1])
    valid = None
    if where is not None:
        where = jnp.asarray(where)
        check_broadcastable(where, "where", shape, "per_example")
        valid = jnp.broadcast_to(where, shape).astype(bool)
    return seg, num_seg, valid


def _sequence_totals(losses, weights, where, segment_ids, num_segments):
    """Validated per-sequence ``(sums, counts)``, ``[..., S]``, in at least float32."""
    seg, num_seg, valid = _packed(losses, where, segment_ids, num_segments)
    dtype = accumulation_dtype(losses.dtype)
    w = None
    if weights is not None:
        w = as_float_array(weights, "weights")
        check_broadcastable(w, "weights", losses.shape, "per_example")
        w = jnp.broadcast_to(w, losses.shape).astype(dtype)
    return segment_sums(losses.astype(dtype), valid, seg, num_seg, weights=w)


@cached_eager("reduction", "num_segments")
def loss_sum_and_count(
    per_example: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    reduction: PairReduction = "mean",
    segment_ids: ArrayLike | None = None,
    num_segments: int | None = None,
) -> SumAndCount:
    r"""The pair (numerator, denominator) behind a mean, which adds up over micro-batches.

    With ``reduction="mean"`` (the default), the loss sum and the number of contributing
    examples:

    .. math::
        S = \sum_i m_i \ell_i, \qquad C = \sum_i m_i w_i

    where :math:`m_i` is ``where`` (1 if omitted; 0 also for padding tokens, those with a
    negative segment id) and :math:`w_i` is ``weights`` (1 if omitted). The per-example losses
    are expected to carry their weights already, as the cross-entropy functions return them.
    Summing ``S`` and ``C`` over micro-batches and dividing once at the end gives exactly the
    full-batch mean, however unevenly ignored tokens fall.

    The per-sequence means of packed sequences (see :func:`reduce_loss`) have pairs too:

    * ``"sequence_mean"``: :math:`S = \sum_s \bar\ell_s`, the sum of the per-sequence token
      means :math:`\bar\ell_s = S_s / C_s`, and :math:`C` = the number of sequences with
      :math:`C_s \neq 0`. Adding both over micro-batches gives GRPO's mean of sequence means
      of the whole batch, provided no sequence is split between micro-batches.
    * ``"per_sequence_mean"``: the arrays :math:`(S_s, C_s)`, ``[..., num_segments]``. They add
      even when a sequence is split along its tokens (chunked long sequences).

    Args:
      per_example: per-example losses (``[..., T]``, tokens last, for the per-sequence pairs
        and with ``segment_ids``).
      weights: optional per-example weights for the denominator, e.g. ``class_weights[label]``.
      where: optional boolean mask of contributing examples.
      reduction: ``"mean"``, ``"sequence_mean"`` or ``"per_sequence_mean"``.
      segment_ids: optional integer ``[..., T]`` ids of documents packed in one row (negative
        = padding), as in :func:`reduce_loss`; without them each row is one sequence.
      num_segments: static number of ids per row (default ``T``), only with ``segment_ids``.

    Returns:
      The NamedTuple :class:`SumAndCount` ``(loss_sum, loss_count)``, which unpacks as a pair:
        float32 (or float64) scalars, or ``[..., num_segments]`` arrays for
        ``"per_sequence_mean"`` (``[...]`` without ``segment_ids``).

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> s, c = il.loss_sum_and_count(jnp.array([1.0, 2.0, 0.0]), where=jnp.array([1, 1, 0]) > 0)
      >>> print(float(s), float(c))
      3.0 2.0
      >>> s, c = il.loss_sum_and_count(jnp.array([[1.0, 3.0, 5.0, 9.0]]), reduction="sequence_mean",
      ...                              segment_ids=jnp.array([[0, 0, 1, -1]]), num_segments=2)
      >>> print(float(s), float(c))  # means 2 and 5 of 2 sequences
      7.0 2.0
    """
    check_reduction(reduction, typing.get_args(PairReduction))
    losses = as_float_array(per_example, "per_example")
    if reduction == "mean" and segment_ids is None and num_segments is None:
        return SumAndCount(*_token_sum_and_count(losses, weights, where))
    sums, counts = _sequence_totals(losses, weights, where, segment_ids, num_segments)
    if reduction == "mean":
        return SumAndCount(jnp.sum(sums), jnp.sum(counts))
    if reduction == "sequence_mean":
        return SumAndCount(sum_of_sequence_means(sums, counts), count_sequences(counts))
    if segment_ids is None:
        return SumAndCount(sums[..., 0], counts[..., 0])
    return SumAndCount(sums, counts)


def _token_sum_and_count(losses, weights, where):
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


@cached_eager("reduction", "num_segments")
def reduce_loss(
    per_example: ArrayLike,
    *,
    reduction: Reduction | SequenceReduction,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    num_segments: int | None = None,
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

    **Packed sequences.** The per-sequence reductions read ``per_example`` as token losses
    ``[..., T]``. With ``segment_ids`` (integers of the same shape) several documents share a
    row: the tokens of a row with id :math:`k` form the sequence :math:`s = (\text{row}, k)`,
    ids run over ``0 .. num_segments - 1`` and a negative id marks padding. Without
    ``segment_ids`` each row is one sequence. With the sums and denominators

    .. math::
        S_s = \sum_{t \in s} m_t \ell_t, \qquad C_s = \sum_{t \in s} m_t w_t

    * ``"per_sequence_sum"``: :math:`S_s`, shape ``[..., num_segments]`` (``[...]`` without
      ``segment_ids``), e.g. a sequence's log-probability from token log-probabilities.
    * ``"per_sequence_mean"``: :math:`\bar\ell_s = S_s / C_s`, same shape; an empty sequence
      (an absent id, or every token masked) gives 0, not NaN.
    * ``"sequence_mean"``: :math:`\frac{1}{N}\sum_{s:\,C_s \neq 0} \bar\ell_s` with :math:`N`
      the number of non-empty sequences: every sequence weighs the same, whatever its length
      (GRPO's normalization, ``normalization="sequence_mean"`` of
      :func:`infoloss_jax.policy.clipped_surrogate`). ``"mean"`` is the token-level
      alternative (DAPO), where every token weighs the same; Dr. GRPO's constant normalizer is
      ``"sum"`` divided by :math:`N \cdot L_{max}`.

    Segments do not change ``"none"``, ``"sum"``, ``"mean"`` and ``"batchmean"`` beyond
    excluding padding tokens (``"none"`` still returns one value per token). An id at or
    beyond ``num_segments`` is a value mistake: every result of its row (every token for
    ``"none"``) becomes NaN, and so does a scalar reduction.

    **Micro-batches.** Per-sequence sums add: with sequences split over micro-batches along
    their tokens, summing each micro-batch's :math:`S_s` and :math:`C_s` (the pair
    :func:`loss_sum_and_count` returns for ``"per_sequence_mean"``) and dividing once is exact.
    For ``"sequence_mean"`` keep sequences whole within a micro-batch and divide each
    micro-batch's sum of sequence means by the **global** number of non-empty sequences; the
    micro-batch values then add up to the full-batch value, in value and gradient.
    :func:`loss_sum_and_count` with ``reduction="sequence_mean"`` returns exactly that
    (sum, count) pair, which :func:`infoloss_jax.accumulate_value_and_grad` accumulates.

    Half-precision losses are reduced in float32; every reduction but ``"none"`` returns at
    least float32.

    Args:
      per_example: per-example losses; ``[..., T]`` (tokens last) for the per-sequence
        reductions and with ``segment_ids``.
      reduction: one of ``"none"``, ``"sum"``, ``"mean"``, ``"batchmean"``,
        ``"per_sequence_sum"``, ``"per_sequence_mean"``, ``"sequence_mean"``.
      weights: optional per-example weights for the means' denominators.
      where: optional boolean mask of contributing examples.
      segment_ids: optional integer ids of packed documents, with the shape of
        ``per_example``; negative ids are padding.
      num_segments: static Python int, the number of ids per row (default ``T``); only with
        ``segment_ids``. It sets the output's last dimension, so it cannot be traced.

    Returns:
      The reduced loss: a scalar for ``"sum"``, ``"mean"``, ``"batchmean"`` and
        ``"sequence_mean"``, the shape of ``per_example`` for ``"none"``, and one value per
        sequence for ``"per_sequence_sum"`` and ``"per_sequence_mean"``.

    Raises:
      TypeError: ``segment_ids`` is not an integer array, or ``num_segments`` is not a static
        int.
      ValueError: ``segment_ids`` does not have the shape of ``per_example``, ``num_segments``
        is given without ``segment_ids`` or is below 1, or a per-sequence reduction gets a
        scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> print(float(il.reduce_loss(jnp.array([1.0, 3.0]), reduction="mean")))
      2.0
      >>> losses = jnp.array([[1.0, 3.0, 2.0, 4.0, 6.0, 7.0]])
      >>> ids = jnp.array([[0, 0, 1, 1, 1, -1]])  # two documents and a padding token
      >>> print(il.reduce_loss(losses, reduction="per_sequence_mean", segment_ids=ids,
      ...                      num_segments=3))  # id 2 is absent: an empty sequence
      [[2. 4. 0.]]
      >>> print(float(il.reduce_loss(losses, reduction="sequence_mean", segment_ids=ids)))
      3.0
      >>> print(round(float(il.reduce_loss(losses, reduction="mean", segment_ids=ids)), 4))
      3.2

    References:
      Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
      Models", 2024 (GRPO: the mean of per-sequence token means).

      Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", 2025
      (the token-level mean).

      Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective", 2025
      (Dr. GRPO: the length bias of both means, and a constant normalizer).
    """
    check_reduction(reduction, REDUCTIONS + typing.get_args(SequenceReduction))
    losses = as_float_array(per_example, "per_example")
    if segment_ids is None and num_segments is None and reduction in REDUCTIONS:
        if reduction == "none":
            return losses if where is None else jnp.where(jnp.asarray(where), losses, 0.0)
        total, count = _token_sum_and_count(losses, weights, where)
    elif reduction == "none":
        return _tokens(losses, where, segment_ids, num_segments)
    else:
        sums, counts = _sequence_totals(losses, weights, where, segment_ids, num_segments)
        if reduction == "per_sequence_sum" or reduction == "per_sequence_mean":
            out = sums if reduction == "per_sequence_sum" else safe_divide(sums, counts)
            return out if segment_ids is not None else out[..., 0]
        if reduction == "sequence_mean":
            return safe_divide(sum_of_sequence_means(sums, counts), count_sequences(counts))
        total, count = jnp.sum(sums), jnp.sum(counts)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return safe_divide(total, count)
    leading = losses.shape[0] if losses.ndim else 1
    return total / max(leading, 1)


def _tokens(losses, where, segment_ids, num_segments):
    """``"none"`` with segment ids: padding and masked tokens 0, a poisoned row NaN."""
    seg, num_seg, valid = _packed(losses, where, segment_ids, num_segments)
    keep, bad_row = token_keep(valid, seg, num_seg, losses.shape)
    out = jnp.where(keep, losses, jnp.zeros((), losses.dtype))
    return out if bad_row is None else jnp.where(bad_row, jnp.nan, out)
