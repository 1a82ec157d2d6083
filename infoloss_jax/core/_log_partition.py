"""The log-partition function (logsumexp), the z-loss, and the stable log-softmax behind them."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..base._caching import cached_eager
from ..base._typing import ArrayLike
from ..base._validation import (
    Axis,
    as_float_array,
    as_where,
    check_has_classes,
    normalize_axis,
    upcast,
)


class LogSoftmax(NamedTuple):
    """A stable log-softmax and the pieces losses reuse (all keep the class axes as size 1)."""

    log_probs: jax.Array  # -inf at excluded classes
    log_partition: jax.Array  # logsumexp; 0 for a row with no included class
    included: jax.Array  # bool, classes that take part (finite logit and `where`)
    num_included: jax.Array  # count of included classes per row
    nonempty: jax.Array  # bool per row: at least one class is included
    shift: jax.Array  # the (stop-gradient) row max, 0 for an empty row
    shifted: jax.Array  # logits minus `shift`; -inf at excluded classes
    shifted_log_partition: jax.Array  # logsumexp of `shifted`, in [0, log K]


def is_excluded(x: jax.Array) -> jax.Array:
    """The one exclusion test: a class is excluded exactly when its logit is ``-inf``.

    NaN is never excluded (``x > -inf`` would be False for NaN and drop it silently); it stays
    in the computation and poisons its own row.
    """
    return x == -jnp.inf


def exclude(logits: jax.Array, where: jax.Array | None) -> jax.Array:
    """Sets classes masked out by ``where`` to -inf, the one exclusion mechanism inside."""
    return logits if where is None else jnp.where(where, logits, -jnp.inf)


def _log_sum_exp_of_shifted(shifted: jax.Array, axis: tuple[int, ...]) -> jax.Array:
    """log sum exp of logits already shifted by their row max; 0 for a row of only -inf."""
    sum_exp = jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True)
    return jnp.log(jnp.where(sum_exp == 0, 1.0, sum_exp))


def stable_log_softmax(logits: jax.Array, axis: tuple[int, ...]) -> LogSoftmax:
    """log softmax along ``axis`` with -inf logits excluded and empty rows kept finite.

    The shift by the row max is wrapped in ``stop_gradient`` (it cancels mathematically), and a
    row whose max is -inf is shifted by 0 instead, so -inf - (-inf) never happens. A NaN (or
    +inf) logit makes its row's max, and so every value of the row, NaN: the row is poisoned,
    never taken for empty. Shifted logits of finite inputs so far below the max that the
    difference overflows come out as -inf: their probability is exactly 0 in the range, and the
    exact forms treat them like excluded classes. Only the fields a loss uses are computed:
    under ``jit`` the rest is dead code.
    """
    row_max = jnp.max(logits, axis=axis, keepdims=True)
    empty = is_excluded(row_max)
    shift = lax.stop_gradient(jnp.where(empty, 0.0, row_max))
    shifted = logits - shift
    log_sum_exp = _log_sum_exp_of_shifted(shifted, axis)
    included = ~is_excluded(logits)
    return LogSoftmax(
        log_probs=shifted - log_sum_exp,
        log_partition=jnp.where(empty, 0.0, log_sum_exp + shift),
        included=included,
        num_included=jnp.sum(included, axis=axis, keepdims=True),
        nonempty=~empty,
        shift=shift,
        shifted=shifted,
        shifted_log_partition=log_sum_exp,
    )


def normalizers(normalized: LogSoftmax) -> tuple[jax.Array, jax.Array]:
    """The [N, 1] pieces that, with the logits, give the log-probabilities back."""
    return normalized.shift, normalized.shifted_log_partition


def log_probs_from(logits: jax.Array, shift: jax.Array, shifted_log_partition: jax.Array):
    """``LogSoftmax.log_probs`` recomputed from the logits and the [N, 1] normalizers."""
    return (logits - shift) - shifted_log_partition


def needs_exact_forms(x: jax.Array) -> jax.Array:
    """True when some shifted logit of ``x`` can be -inf: an excluded class, or finite logits
    so far apart that subtracting the row max overflows. NaN entries are ignored here (the plain
    forms poison exactly their rows), so one row's NaN cannot change another row's branch."""
    finite_or_inf = jnp.where(jnp.isnan(x), 0.0, x)
    span = jnp.max(finite_or_inf, initial=-jnp.inf) - jnp.min(finite_or_inf, initial=jnp.inf)
    return ~(span < jnp.inf)


def branch_on_exclusion(exact, plain, logits: tuple[jax.Array, ...], *operands):
    """``plain(logits, *operands)`` when no shifted logit can be -inf, else ``exact(...)``.

    The exact forms of the losses mask excluded classes with selects, and XLA's CPU backend
    cannot fuse a select into a reduction: it writes an [N, V] temporary first. When nothing
    is excluded (the common case, decided once for all the arrays by ``lax.cond``, with the
    NaN-aware test :func:`needs_exact_forms`) the plain forms are exact too. Pass only the
    logits and [N, 1] values (see :func:`normalizers`) into the branches: any other [N, V]
    operand would be materialized to cross the boundary.
    """
    flags = [needs_exact_forms(x) for x in logits]
    any_excluded = flags[0] if len(flags) == 1 else jnp.any(jnp.stack(flags))
    return lax.cond(any_excluded, exact, plain, logits, *operands)


def prepare_logits(logits: ArrayLike, axis: Axis, where, name: str = "logits"):
    """Validates and upcasts ``logits``, applies ``where``; returns ``(logits, axes)``."""
    logits = as_float_array(logits, name)
    axes = normalize_axis(axis, logits.ndim)
    check_has_classes(logits, axes, name)
    mask = as_where(where, logits.shape, name)
    return exclude(upcast(logits), mask), axes


def drop_axes(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Removes the size-1 class axes kept by ``keepdims`` reductions."""
    return jnp.squeeze(x, axis=axes)


@cached_eager("axis")
def log_partition(
    logits: ArrayLike, *, axis: Axis = -1, where: ArrayLike | None = None
) -> jax.Array:
    r"""The log-partition function (logsumexp) of the logits, for logging and z-loss.

    .. math::
        \log Z(z) = \log \sum_{k} e^{z_k}

    Classes masked out by ``where`` and classes with a ``-inf`` logit are excluded. A row with
    no included class returns 0 (not ``-inf``), so logging it never shows NaN or inf. A NaN or
    ``+inf`` logit makes its own row NaN (see "What happens on bad input" in the concepts page).

    Args:
      logits: floating-point array of unnormalized log-probabilities.
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``; False excludes a class.

    Returns:
      The logsumexp with the class axes removed, in at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> print(round(float(il.log_partition(jnp.zeros(4))), 6))
      1.386294

    References:
      Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022 (z-loss).
    """
    logits, axes = prepare_logits(logits, axis, where)
    return drop_axes(stable_log_softmax(logits, axes).log_partition, axes)


@cached_eager("axis")
def z_loss(logits: ArrayLike, *, axis: Axis = -1, where: ArrayLike | None = None) -> jax.Array:
    r"""The z-loss penalty (log Z)^2, which keeps the softmax normalizer near 1.

    .. math::
        \mathcal{L}_z(z) = \Big(\log \sum_k e^{z_k}\Big)^2

    Multiply it by a small coefficient (PaLM and T5X use ``1e-4``) and add it to the loss, or
    pass ``z_loss=coefficient`` to the cross-entropy functions.

    Args:
      logits: floating-point array of unnormalized log-probabilities.
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``; False excludes a class.

    Returns:
      The squared logsumexp per example (0 for a row with no included class).

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> print(round(float(il.z_loss(jnp.array([0.0, 0.0]))), 6))
      0.480453

    References:
      Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022, section 5.
    """
    return jnp.square(log_partition(logits, axis=axis, where=where))
