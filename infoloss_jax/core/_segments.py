"""Packed sequences: per-sequence sums and counts over documents that share a row.

A batch of token values has shape ``[..., T]``. Without segment ids each row is one sequence.
With ``segment_ids`` (integers of the same shape) several documents are packed into one row:
the tokens of a row that carry id ``s`` form the sequence ``(row, s)``. Ids run over
``0 .. num_segments - 1``; a negative id marks padding, which never contributes. An id at or
beyond ``num_segments`` is a value mistake: it turns every sequence of its row into NaN rather
than silently dropping tokens.

Everything here is shared by :func:`infoloss_jax.reduce_loss` and the per-sequence reductions
of :mod:`infoloss_jax.policy` and :mod:`infoloss_jax.preference`: one place that decides which
token belongs to which sequence, and one formula for each per-sequence quantity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ..base._validation import describe, is_traced


def check_mask(mask, shape, name: str = "mask", to_name: str = "log_probs") -> jax.Array | None:
    """A boolean token mask of exactly ``shape`` (broadcast from a compatible shape), or None."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"`{name}` must be a boolean array (True = the token counts); got {describe(mask)}. "
            f"Convert an integer attention mask with `mask > 0`."
        )
    try:
        out = np.broadcast_shapes(tuple(mask.shape), tuple(shape))
    except ValueError:
        out = None
    if out != tuple(shape):
        raise ValueError(
            f"`{name}` with shape {list(mask.shape)} is not broadcastable to the shape of "
            f"`{to_name}` {list(shape)}."
        )
    return jnp.broadcast_to(mask, tuple(shape))


def check_segment_ids(segment_ids, shape, to_name: str = "log_probs") -> jax.Array | None:
    """Integer segment ids of exactly ``shape`` (int32, or int64 under x64), or None.

    Ids that do not fit the canonical integer dtype are clamped to it: a huge positive id stays
    out of range (its row becomes NaN) and a huge negative one stays padding, so no dtype
    conversion can turn one into the other or wrap it onto a real segment.
    """
    if segment_ids is None:
        return None
    target = np.dtype(jax.dtypes.canonicalize_dtype(np.int64))
    info = np.iinfo(target)
    if not isinstance(segment_ids, jax.Array) and not is_traced(segment_ids):
        host = np.asarray(segment_ids)
        if host.dtype.kind in "iu":
            if host.size and host.max() > info.max:
                host = np.where(host > info.max, np.asarray(info.max, host.dtype), host)
            if host.size and host.dtype.kind == "i" and host.min() < info.min:
                host = np.where(host < info.min, np.asarray(info.min, host.dtype), host)
            segment_ids = host.astype(target)
    ids = jnp.asarray(segment_ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(
            f"`segment_ids` must be an integer array (one document id per token, negative for "
            f"padding); got {describe(ids)}. Cast it with `.astype(jnp.int32)`."
        )
    if tuple(ids.shape) != tuple(shape):
        raise ValueError(
            f"`segment_ids` must have the shape of `{to_name}` {list(shape)} (one id per "
            f"token); got {describe(ids)}."
        )
    if jnp.iinfo(ids.dtype).max > info.max:  # unsigned of the canonical width
        ids = jnp.minimum(ids, jnp.asarray(info.max, ids.dtype))
    return ids.astype(target)


def resolve_num_segments(num_segments, segment_ids, length: int) -> int:
    """The static number of segments per row: 1 without ids, ``length`` by default."""
    if segment_ids is None:
        if num_segments is not None:
            raise ValueError("`num_segments` is only meaningful together with `segment_ids`.")
        return 1
    if num_segments is None:
        return max(int(length), 1)
    if isinstance(num_segments, Tracer):
        raise TypeError("`num_segments` must be a static Python int: it sets the output's shape.")
    if isinstance(num_segments, bool) or not isinstance(num_segments, int | np.integer):
        raise TypeError(f"`num_segments` must be a positive Python int; got {num_segments!r}.")
    if num_segments < 1:
        raise ValueError(f"`num_segments` must be at least 1; got {num_segments!r}.")
    return int(num_segments)


def token_keep(
    valid: jax.Array | None,
    segment_ids: jax.Array | None,
    num_segments: int,
    shape: tuple[int, ...],
) -> tuple[jax.Array, jax.Array | None]:
    """Which tokens count, and which rows an out-of-range id poisons.

    Returns ``(keep, bad_row)``: ``keep`` (shape ``shape``) is ``valid`` without padding (a
    negative id) and without out-of-range ids; ``bad_row`` (``[..., 1]``) is True for a row with
    a valid token whose id is at or beyond ``num_segments``, None without ``segment_ids``.
    """
    keep = jnp.ones(shape, bool) if valid is None else valid
    if segment_ids is None:
        return keep, None
    keep = keep & (segment_ids >= 0)
    out_of_range = keep & (segment_ids >= num_segments)
    bad_row = jnp.any(out_of_range, axis=-1, keepdims=True)
    return keep & ~out_of_range, bad_row


def segment_sums(
    values: jax.Array,
    valid: jax.Array | None,
    segment_ids: jax.Array | None,
    num_segments: int,
    *,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-sequence sums of ``values`` over valid tokens, and the number of valid tokens.

    ``values`` is ``[..., T]``; the result is ``([..., S], [..., S])`` with ``S = num_segments``
    (``S = 1`` and ids all 0 when ``segment_ids`` is None). Tokens outside ``valid`` or with a
    negative id are replaced by 0 before summing (double ``where``), so NaN or infinite padding
    changes neither the sums nor their gradients. Counts come back in the dtype of ``values``;
    with ``weights`` (of the shape of ``values``) they are the sums of the valid tokens'
    weights instead. A row with an out-of-range id has NaN sums and counts.
    """
    shape = values.shape
    lead = shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64)) if lead else 1
    keep, bad_row = token_keep(valid, segment_ids, num_segments, shape)
    ids = jnp.zeros(shape, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    zero = jnp.zeros((), values.dtype)
    safe = jnp.where(keep, values, zero)
    ones = keep.astype(values.dtype) if weights is None else jnp.where(keep, weights, zero)
    row = jnp.arange(rows, dtype=jnp.int32).reshape(lead + (1,)) if lead else jnp.int32(0)
    # Dropped tokens go to one extra bucket past the end, which is sliced away.
    flat = jnp.where(keep, row * num_segments + ids, rows * num_segments)
    flat = jnp.broadcast_to(flat, shape).reshape(-1)
    total = rows * num_segments + 1
    sums = jax.ops.segment_sum(safe.reshape(-1), flat, num_segments=total)[:-1]
    counts = jax.ops.segment_sum(ones.reshape(-1), flat, num_segments=total)[:-1]
    sums = sums.reshape(lead + (num_segments,))
    counts = counts.reshape(lead + (num_segments,))
    if bad_row is not None:
        sums = jnp.where(bad_row, jnp.nan, sums)
        counts = jnp.where(bad_row, jnp.nan, counts)
    return sums, counts


def safe_divide(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / count, and 0 (with a 0 gradient) when the denominator is 0.

    The one empty-mean rule of the core: an empty batch, every row ignored, an empty sequence,
    or weights that sum to 0 all give 0 and a 0 gradient (``infoloss_jax.torch`` gives torch's
    NaN instead). A NaN total stays NaN: the rule never hides a poisoned row.
    """
    nonzero = count != 0
    nothing = jnp.where(jnp.isnan(total), jnp.nan, jnp.zeros((), total.dtype))
    return jnp.where(nonzero, total / jnp.where(nonzero, count, 1), nothing)


def count_sequences(counts: jax.Array) -> jax.Array:
    """The number of sequences with a nonzero denominator (those whose mean is defined).

    ``counts`` are per-sequence token counts (or weight sums) from :func:`segment_sums`; a NaN
    count (a poisoned row) makes the number NaN.
    """
    present = jnp.where(counts != 0, jnp.ones((), counts.dtype), jnp.zeros((), counts.dtype))
    return jnp.sum(jnp.where(jnp.isnan(counts), jnp.nan, present))


def sum_of_sequence_means(sums: jax.Array, counts: jax.Array) -> jax.Array:
    r"""``sum_i sums_i / counts_i`` over sequences, an empty sequence adding 0.

    Divided by :func:`count_sequences` (or a global number of sequences) this is GRPO's
    mean of per-sequence token means.
    """
    return jnp.sum(safe_divide(sums, counts))
