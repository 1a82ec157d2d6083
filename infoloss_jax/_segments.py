"""Packed sequences: per-sequence sums and counts over documents that share a row.

A batch of token values has shape ``[..., T]``. Without segment ids each row is one sequence.
With ``segment_ids`` (integers of the same shape) several documents are packed into one row:
the tokens of a row that carry id ``s`` form the sequence ``(row, s)``. Ids run over
``0 .. num_segments - 1``; a negative id marks padding, which never contributes. An id at or
beyond ``num_segments`` is a value mistake: it turns every sequence of its row into NaN rather
than silently dropping tokens.

Everything here is shared by the per-sequence reductions of :mod:`infoloss_jax.policy` and
:mod:`infoloss_jax.preference`: one place that decides which token belongs to which sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ._validation import as_integer_array, describe


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
    """Integer segment ids of exactly ``shape``, or None."""
    if segment_ids is None:
        return None
    segment_ids = as_integer_array(segment_ids, "segment_ids")
    if tuple(segment_ids.shape) != tuple(shape):
        raise ValueError(
            f"`segment_ids` must have the shape of `{to_name}` {list(shape)} (one id per "
            f"token); got {describe(segment_ids)}."
        )
    return segment_ids


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


def segment_sums(
    values: jax.Array,
    valid: jax.Array | None,
    segment_ids: jax.Array | None,
    num_segments: int,
) -> tuple[jax.Array, jax.Array]:
    """Per-sequence sums of ``values`` over valid tokens, and the number of valid tokens.

    ``values`` is ``[..., T]``; the result is ``([..., S], [..., S])`` with ``S = num_segments``
    (``S = 1`` and ids all 0 when ``segment_ids`` is None). Tokens outside ``valid`` or with a
    negative id are replaced by 0 before summing (double ``where``), so NaN or infinite padding
    changes neither the sums nor their gradients. Counts come back in the dtype of ``values``.
    """
    shape = values.shape
    lead = shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64)) if lead else 1
    keep = jnp.ones(shape, bool) if valid is None else valid
    if segment_ids is None:
        ids = jnp.zeros(shape, jnp.int32)
    else:
        ids = segment_ids.astype(jnp.int32)
        keep = keep & (ids >= 0)
    out_of_range = keep & (ids >= num_segments)
    keep = keep & ~out_of_range
    safe = jnp.where(keep, values, jnp.zeros((), values.dtype))
    ones = keep.astype(values.dtype)
    row = jnp.arange(rows, dtype=jnp.int32).reshape(lead + (1,)) if lead else jnp.int32(0)
    # Dropped tokens go to one extra bucket past the end, which is sliced away.
    flat = jnp.where(keep, row * num_segments + ids, rows * num_segments)
    flat = jnp.broadcast_to(flat, shape).reshape(-1)
    total = rows * num_segments + 1
    sums = jax.ops.segment_sum(safe.reshape(-1), flat, num_segments=total)[:-1]
    counts = jax.ops.segment_sum(ones.reshape(-1), flat, num_segments=total)[:-1]
    sums = sums.reshape(lead + (num_segments,))
    counts = counts.reshape(lead + (num_segments,))
    if segment_ids is not None:
        bad_row = jnp.any(out_of_range, axis=-1, keepdims=True)
        sums = jnp.where(bad_row, jnp.nan, sums)
        counts = jnp.where(bad_row, jnp.nan, counts)
    return sums, counts


def safe_divide(total: jax.Array, count: jax.Array) -> jax.Array:
    """``total / count``, and 0 with a 0 gradient where ``count`` is 0."""
    nonzero = count != 0
    return jnp.where(nonzero, total / jnp.where(nonzero, count, 1), jnp.zeros((), total.dtype))
