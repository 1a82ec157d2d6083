"""Shannon entropy from logits, probabilities or counts, and the binary entropy."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ..base._caching import cached_eager
from ..base._typing import ArrayLike, Reduction
from ..base._validation import (
    Axis,
    as_float_array,
    as_where,
    check_has_classes,
    check_reduction,
    in_base,
    log_of_base,
    normalize_axis,
    upcast,
)
from ..engine import _tiles
from ..engine._pairs import needs_exact
from . import _formulas
from ._cross_entropy import classes_last
from ._log_partition import prepare_logits
from ._reductions import reduce_loss


def _entropy_rows(exact: bool, z: jax.Array) -> jax.Array:
    """H per row of ``[rows, classes]`` logits: ``log S - sum e (z - m) / S`` (the engine's
    entropy statistic, on one full tile)."""
    _, sh = _tiles.shifted(z)
    return _tiles.entropy_of(jnp.sum(jnp.exp(sh), axis=1), _tiles.entropy_sum(sh, exact))


_EXACT, _PLAIN = (functools.partial(_entropy_rows, exact) for exact in (True, False))


@jax.custom_jvp
def _entropy_of_logits(z: jax.Array) -> jax.Array:
    """H per row, in plain form when no shifted logit can be -inf (one ``lax.cond``)."""
    return lax.cond(needs_exact(z, None), _EXACT, _PLAIN, z)


def entropy_grad_rows(z: jax.Array, value: jax.Array | None = None) -> jax.Array:
    r"""dH/dz of ``[rows, classes]`` logits: :math:`-q (\log q + H)` (H computed if not given)."""
    _, sh = _tiles.shifted(z)
    sumexp = jnp.sum(jnp.exp(sh), axis=1)
    if value is None:
        value = _tiles.entropy_of(sumexp, _tiles.entropy_sum(sh))
    return _tiles.entropy_grad(sh - _tiles.log_sumexp(sumexp)[:, None], value)


@_entropy_of_logits.defjvp
def _entropy_of_logits_jvp(primals, tangents):
    (z,), (z_dot,) = primals, tangents
    value = _entropy_of_logits(z)
    return value, jnp.sum(entropy_grad_rows(z, value) * z_dot, axis=1)


@cached_eager("axis", "base", "reduction")
def entropy(
    logits: ArrayLike,
    *,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    base: float | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Shannon entropy of the softmax of ``logits``.

    .. math::
        H(p) = -\sum_k p_k \log p_k, \qquad p = \mathrm{softmax}(z)

    computed from the stable log-softmax, so ``0 log 0 = 0`` in the value and the gradient.
    Classes masked out by ``where`` or with a ``-inf`` logit are excluded; a row with no
    included class has entropy 0. :math:`0 \le H \le \log K` for K included classes. A NaN or
    ``+inf`` logit makes its own row NaN (and only that row); finite logits of any magnitude,
    up to the float limit, never give NaN.

    The derivative is a closed form (``jax.custom_jvp``, so forward mode and Hessians work):

    .. math::
        \frac{\partial H}{\partial z} = -p \odot (\log p + H)

    Args:
      logits: floating-point array of unnormalized log-probabilities.
      axis: the class axis, or a tuple of axes that together index the classes.
      where: optional boolean mask broadcastable to ``logits``; False excludes a class.
      base: logarithm base of the result; None for nats, 2 for bits.
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` (over the examples) or
        ``"batchmean"`` (the sum over the size of the first dimension).

    Returns:
      The entropy per example, class axes removed (or reduced). Half-precision inputs give
        float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> print(round(float(il.entropy(jnp.zeros(4), base=2)), 6))
      2.0

    References:
      Shannon, "A Mathematical Theory of Communication", 1948.
    """
    log_of_base(base)
    check_reduction(reduction)
    logits, axes = prepare_logits(logits, axis, where)
    rows = classes_last(logits, axes)
    value = _entropy_of_logits(rows.reshape(-1, rows.shape[-1])).reshape(rows.shape[:-1])
    return reduce_loss(in_base(value, base), reduction=reduction)


@cached_eager("axis", "base", "reduction")
def entropy_from_probs(
    probs: ArrayLike,
    *,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    base: float | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Shannon entropy of a distribution given as probabilities.

    .. math::
        H(p) = -\sum_k p_k \log p_k, \qquad 0 \log 0 = 0

    The probabilities are used as given (not renormalized); use :func:`entropy_from_counts`
    for unnormalized weights. At :math:`p_k = 0` the derivative is taken as 0 rather than
    the one-sided :math:`+\infty`, so gradients stay finite. A negative or NaN probability makes
    its row NaN (as ``scipy.stats.entropy`` does): it is a value-level mistake, and
    :func:`infoloss_jax.checked` reports it.

    Args:
      probs: floating-point array of probabilities.
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``probs``; False drops a term.
      base: logarithm base of the result; None for nats, 2 for bits.
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` (over the examples) or
        ``"batchmean"`` (the sum over the size of the first dimension).

    Returns:
      The entropy per example, class axes removed (or reduced), in at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> print(round(float(il.entropy_from_probs(jnp.array([0.25, 0.25, 0.5]), base=2)), 6))
      1.5

    References:
      ``scipy.special.entr`` and ``scipy.stats.entropy`` compute the same quantity.
    """
    log_of_base(base)
    probs = upcast(as_float_array(probs, "probs"))
    axes = normalize_axis(axis, probs.ndim)
    check_has_classes(probs, axes, "probs")
    mask = as_where(where, probs.shape, "probs")
    check_reduction(reduction)
    terms = _formulas.xlogx(probs)
    if mask is not None:
        terms = jnp.where(mask, terms, 0.0)
    return reduce_loss(in_base(-jnp.sum(terms, axis=axes), base), reduction=reduction)


@cached_eager("axis", "base")
def entropy_from_counts(
    counts: ArrayLike | Sequence[float] | Mapping[object, float],
    *,
    axis: Axis = -1,
    base: float | None = None,
) -> jax.Array:
    r"""Shannon entropy of the empirical distribution of event counts.

    .. math::
        H = -\sum_k \frac{c_k}{C} \log \frac{c_k}{C}, \qquad C = \sum_k c_k

    Counts may be integers or floats, or a mapping from events to counts. A row whose counts
    are all zero has entropy 0; a negative count makes its row NaN.

    Args:
      counts: array of non-negative counts, or a mapping such as ``{'a': 2, 'b': 2, 'c': 4}``.
      axis: the event axis or axes.
      base: logarithm base of the result; None for nats, 2 for bits.

    Returns:
      The entropy per row, event axes removed, in at least float32.

    Example:
      >>> import infoloss_jax as il
      >>> print(round(float(il.entropy_from_counts({'a': 2, 'b': 2, 'c': 4}, base=2)), 6))
      1.5
      >>> print(round(float(il.entropy_from_counts([1, 1, 1], base=2)), 3))
      1.585
    """
    log_of_base(base)
    counts = jnp.asarray(list(counts.values()) if isinstance(counts, Mapping) else counts)
    if jnp.issubdtype(counts.dtype, jnp.integer):
        counts = counts.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
    counts = upcast(as_float_array(counts, "counts"))
    axes = normalize_axis(axis, counts.ndim)
    check_has_classes(counts, axes, "counts")
    total = jnp.sum(counts, axis=axes, keepdims=True)
    probs = counts / jnp.where(total == 0, 1.0, total)
    probs = jnp.where(counts < 0, jnp.nan, probs)
    return entropy_from_probs(probs, axis=axes, base=base)


@jax.custom_jvp
def _binary_entropy_nats(logits: jax.Array) -> jax.Array:
    certain = jnp.isinf(logits)  # +-inf: a certain outcome; NaN stays NaN
    safe = jnp.where(certain, 0.0, logits)
    value = jax.nn.sigmoid(safe) * jax.nn.softplus(-safe) + jax.nn.sigmoid(-safe) * jax.nn.softplus(
        safe
    )
    return jnp.where(certain, 0.0, value)


@_binary_entropy_nats.defjvp
def _binary_entropy_nats_jvp(primals, tangents):
    (logits,), (logits_dot,) = primals, tangents
    return _binary_entropy_nats(logits), _formulas.binary_entropy_grad(logits) * logits_dot


@cached_eager("base")
def binary_entropy(logits: ArrayLike, *, base: float | None = None) -> jax.Array:
    r"""Entropy of the Bernoulli distribution with success probability sigmoid(logits).

    .. math::
        H_b(z) = -\sigma(z)\log\sigma(z) - \sigma(-z)\log\sigma(-z)
               = \sigma(z)\,\mathrm{softplus}(-z) + \sigma(-z)\,\mathrm{softplus}(z)

    with the closed-form derivative :math:`\partial H_b/\partial z = -z\,\sigma(z)\,\sigma(-z)`.
    Infinite logits (certain outcomes) give 0 and a 0 gradient.

    Args:
      logits: floating-point array of log-odds; every element is an independent Bernoulli.
      base: logarithm base of the result; None for nats, 2 for bits.

    Returns:
      The elementwise entropy, same shape as ``logits``, in at least float32.

    Example:
      >>> import infoloss_jax as il
      >>> print(round(float(il.binary_entropy(0.0, base=2)), 6))
      1.0
    """
    log_of_base(base)
    logits = upcast(as_float_array(logits, "logits"))
    return in_base(_binary_entropy_nats(logits), base)
