"""Cross-entropy: soft labels, integer labels (with the options LLM training needs), sigmoid."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from ..base._caching import cached_eager
from ..base._typing import ArrayLike, Reduction
from ..base._validation import (
    Axis,
    accumulation_dtype,
    all_ok,
    as_float_array,
    as_integer_array,
    as_where,
    check_broadcastable,
    check_has_classes,
    check_reduction,
    check_same_shape,
    describe,
    normalize_axis,
    poison_unless,
    scheduled_number,
    upcast,
)
from ..engine import _tiles
from ..engine._loss_spec import make_spec, poison, static_softcap
from . import _formulas
from ._log_partition import (
    LogSoftmax,
    branch_on_exclusion,
    drop_axes,
    exclude,
    stable_log_softmax,
)
from ._reductions import reduce_loss


# ----------------------------------------------------------------------------- option checks
def check_label_smoothing(label_smoothing):
    """``label_smoothing`` in [0, 1): a float, or a traced scalar array (then unchecked)."""
    return scheduled_number(label_smoothing, "label_smoothing", low=0.0, high=1.0, high_open=True)[
        0
    ]


def check_z_loss(z_loss):
    """The z-loss coefficient, >= 0: a float, or a traced scalar array (then unchecked)."""
    return scheduled_number(z_loss, "z_loss", low=0.0)[0]


def soft_cap(logits: jax.Array, logit_softcap: float | None) -> jax.Array:
    """``s * tanh(logits / s)`` (Gemma 2), keeping -inf logits excluded."""
    logit_softcap = static_softcap(logit_softcap)
    if logit_softcap is None:
        return logits
    excluded = logits == -jnp.inf
    safe = jnp.where(excluded, 0.0, logits)
    return jnp.where(excluded, -jnp.inf, logit_softcap * jnp.tanh(safe / logit_softcap))


def smoothing_mass(normalized: LogSoftmax, label_smoothing: float | jax.Array) -> jax.Array:
    """eps / K per class over the K included classes of each row (0 on excluded classes)."""
    per_class = label_smoothing / jnp.maximum(normalized.num_included, 1)
    return jnp.where(normalized.included, per_class, 0.0)


def z_loss_term(normalized: LogSoftmax, coefficient: float | jax.Array) -> jax.Array:
    """coefficient * logsumexp^2, keepdims."""
    return coefficient * jnp.square(normalized.log_partition)


# ----------------------------------------------------------------------------- soft labels
def _label_dot_exact(logits, shift, labels, *, axes):
    (logits,) = logits
    return _formulas.sum_over(_formulas.weighted_log(labels, logits - shift), axes)


def _label_dot_plain(logits, shift, labels, *, axes):
    (logits,) = logits
    return _formulas.sum_over(labels * (logits - shift), axes)


@functools.cache  # one pair per `axes`: fresh branch functions would defeat JAX's caches
def _label_dot_branches(axes):
    return (
        functools.partial(_label_dot_exact, axes=axes),
        functools.partial(_label_dot_plain, axes=axes),
    )


def label_dot(logits: jax.Array, shift: jax.Array, labels: jax.Array, axes) -> jax.Array:
    """sum_k y_k (z_k - shift) (keepdims), with 0 * -inf = 0 and y_k > 0 at -inf giving -inf.

    A shifted logit is -inf at an excluded class, and also where a finite logit lies so far
    below the row max that the difference overflows (its probability is 0 in the range). A NaN
    label or logit is never dropped.
    """
    exact, plain = _label_dot_branches(axes)
    return branch_on_exclusion(exact, plain, (logits,), shift, labels)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def soft_label_cross_entropy(logits: jax.Array, labels: jax.Array, axes) -> jax.Array:
    """-sum y log q = sum(y) * logsumexp - sum y z, on the max-shifted logits (keepdims).

    No [N, V] log-softmax is formed. The JVP rule is the closed form
    ``_formulas.softmax_cross_entropy_grad`` (sum(y) q - y) for the logits and -log q for the
    labels, so reverse mode is one elementwise pass. Mass on an excluded class makes the loss
    +inf, as the math says.
    """
    normalized = stable_log_softmax(logits, axes)
    total_mass = _formulas.sum_over(labels, axes)
    return total_mass * normalized.shifted_log_partition - label_dot(
        logits, normalized.shift, labels, axes
    )


@functools.partial(soft_label_cross_entropy.defjvp, symbolic_zeros=True)
def _soft_label_cross_entropy_jvp(axes, primals, tangents):
    logits, labels = primals
    logits_dot, labels_dot = tangents
    loss = soft_label_cross_entropy(logits, labels, axes)
    normalized = stable_log_softmax(logits, axes)
    loss_dot = jnp.zeros_like(loss)
    if not isinstance(logits_dot, SymbolicZero):
        grad = _formulas.softmax_cross_entropy_grad(normalized.log_probs, labels, axes)
        loss_dot = loss_dot + _formulas.sum_over(grad * logits_dot, axes)
    if not isinstance(labels_dot, SymbolicZero):
        safe_shifted = jnp.where(normalized.included, normalized.shifted, 0.0)
        neg_log_q = normalized.shifted_log_partition - safe_shifted
        loss_dot = loss_dot + _formulas.sum_over(neg_log_q * labels_dot, axes)
    return loss, loss_dot


@cached_eager("axis", "logit_softcap", "reduction")
def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    label_smoothing: float | jax.Array = 0.0,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Cross-entropy between target probabilities and the softmax of ``logits``.

    .. math::
        H(y, q) = -\sum_k y_k \log q_k, \qquad q = \mathrm{softmax}(z)

    This is :math:`H(y) + \mathrm{KL}(y \,\|\, q)`: with a fixed target it differs from the KL
    divergence *from the target to the model* by a constant, so both have the same gradient.
    It is computed as :math:`(\sum_k y_k) \log Z - \sum_k y_k z_k` on max-shifted logits, whose
    autodiff is the closed form

    .. math::
        \frac{\partial H}{\partial z} = q \sum_k y_k - y \;(= q - y \text{ for normalized } y),
        \qquad \frac{\partial H}{\partial y} = -\log q .

    A drop-in for ``optax.losses.softmax_cross_entropy`` with the same positional arguments,
    but safe where optax is not: classes excluded by ``where`` or by a ``-inf`` logit with zero
    label mass give finite values and gradients (optax issue #896), and a fully masked row
    gives 0. Label mass on an excluded class gives ``+inf``, the true value.

    Options (all off by default, which keeps optax parity):

    * ``label_smoothing=eps`` in [0, 1): the target becomes :math:`(1-\epsilon) y +
      \epsilon / K` over the K included classes (PyTorch's convention).
    * ``z_loss=c`` (>= 0): adds :math:`c\,(\log Z)^2` per example (PaLM).

    ``label_smoothing`` and ``z_loss`` may be traced (scheduled); a traced value outside its
    range makes the result NaN. ``axis``, ``logit_softcap`` and ``reduction`` must be static.
    Integer or boolean one-hot ``labels`` are read as 0/1 probabilities, as in optax.
    * ``logit_softcap=s``: logits become :math:`s \tanh(z / s)` first (Gemma 2).
    * ``reduction``: ``"none"``, ``"sum"``, ``"mean"`` (over non-empty rows), ``"batchmean"``.

    Args:
      logits: floating-point array of unnormalized log-probabilities.
      labels: target probabilities, same shape as ``logits``.
      axis: the class axis or axes.
      where: optional boolean mask, read by its rank (never by broadcasting): the rank of
        ``logits`` is a class mask (False excludes a class from the normalizer and its label
        term from the sum, as in optax); the rank of the per-example result (``[batch]`` for
        ``[batch, K]`` logits) is a per-example mask (False drops the example, also from the
        mean).
      label_smoothing: smoothing mass in [0, 1).
      z_loss: coefficient of the z-loss penalty, >= 0.
      logit_softcap: positive soft cap, or None.
      reduction: how to reduce the per-example losses.

    Returns:
      Per-example cross-entropy (class axes removed), or its reduction. Half-precision inputs
        give float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import infoloss_jax as il
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
      >>> print(np.asarray(il.softmax_cross_entropy(logits, labels)).round(4))
      [0.2761 2.9518]

    References:
      optax ``softmax_cross_entropy``; Szegedy et al., "Rethinking the Inception Architecture",
      2016 (label smoothing); Team Gemma, "Gemma 2", 2024 (logit soft-capping).
    """
    check_reduction(reduction)
    eps, eps_ok = scheduled_number(
        label_smoothing, "label_smoothing", low=0.0, high=1.0, high_open=True
    )
    coefficient, coefficient_ok = scheduled_number(z_loss, "z_loss", low=0.0)
    logits = as_float_array(logits, "logits")
    labels = as_label_probabilities(labels, like=logits)
    check_same_shape(logits, "logits", labels, "labels")
    axes = normalize_axis(axis, logits.ndim)
    check_has_classes(logits, axes)
    dtype = jnp.result_type(logits.dtype, labels.dtype, jnp.float32)
    mask, example_mask = example_or_class_where(where, logits.shape, axes)
    logits = exclude(soft_cap(logits.astype(dtype), logit_softcap), mask)
    labels = labels.astype(dtype)
    if mask is not None:  # as in optax, masked classes drop out of the sum as well
        labels = jnp.where(mask, labels, 0.0)
    normalized = stable_log_softmax(logits, axes)
    if eps_ok is not None or eps:
        labels = (1.0 - eps) * labels + smoothing_mass(normalized, eps)
    loss = soft_label_cross_entropy(logits, labels, axes)
    if coefficient_ok is not None or coefficient:
        loss = loss + z_loss_term(normalized, coefficient)
    contributing = drop_axes(normalized.nonempty, axes)
    if example_mask is not None:
        contributing = contributing & example_mask
    loss = jnp.where(contributing, drop_axes(loss, axes), 0.0)
    loss = poison_unless(loss, all_ok(eps_ok, coefficient_ok))
    return reduce_loss(loss, reduction=reduction, where=contributing)


def as_label_probabilities(labels, like: jax.Array | None = None) -> jax.Array:
    """Soft labels as a float array; integer or boolean one-hot labels are read as 0/1 (as optax
    accepts them). Integer labels not shaped ``like`` the logits are class indices: the error
    names the loss that takes them (checked before the conversion hides their dtype)."""
    labels = jnp.asarray(labels)
    if labels.dtype == jnp.bool_ or jnp.issubdtype(labels.dtype, jnp.integer):
        if like is not None and jnp.issubdtype(labels.dtype, jnp.integer):
            _check_not_class_indices(labels, like)
        return labels.astype(jnp.float32)
    return as_float_array(labels, "labels")


def _check_not_class_indices(labels: jax.Array, logits: jax.Array) -> None:
    if labels.shape != logits.shape:
        raise ValueError(
            f"`labels` {describe(labels)} looks like integer class indices, but "
            f"`softmax_cross_entropy` takes target probabilities shaped like `logits` "
            f"{describe(logits)}. For class indices call "
            "`softmax_cross_entropy_with_integer_labels(logits, labels)`, or one-hot the labels."
        )


@cached_eager("axis")
def safe_softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Alias of softmax_cross_entropy, which is already safe at -inf logits.

    .. math::
        H(y, q) = -\sum_k y_k \log q_k, \qquad 0 \cdot \log 0 = 0

    Kept for parity with ``optax.losses.safe_softmax_cross_entropy``.

    Args:
      logits: floating-point array of unnormalized log-probabilities (``-inf`` allowed).
      labels: target probabilities, same shape as ``logits``.
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``.

    Returns:
      Per-example cross-entropy.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> logits = jnp.array([0.0, -jnp.inf])
      >>> print(float(il.safe_softmax_cross_entropy(logits, jnp.array([1.0, 0.0]))))
      0.0
    """
    return softmax_cross_entropy(logits, labels, axis=axis, where=where)


# ----------------------------------------------------------------------------- integer labels
def classes_last(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Moves the class axes to the end, **in the order given**, and flattens them (row-major).

    With ``axes=(3, 2)`` a flat class index k reads ``x[..., k // d3... ]`` over axis 3 first
    and axis 2 second, as optax reads a tuple ``axis``. Raises ValueError for zero classes.
    """
    num_classes = check_has_classes(x, axes)
    batch_axes = tuple(a for a in range(x.ndim) if a not in axes)
    x = jnp.transpose(x, batch_axes + axes) if batch_axes + axes != tuple(range(x.ndim)) else x
    return x.reshape(x.shape[: len(batch_axes)] + (num_classes,))


def example_or_class_where(where, shape: Sequence[int], axes: tuple[int, ...], to_name="logits"):
    """A ``where`` mask read by its **rank**, never by whether it happens to broadcast.

    * rank ``len(shape) - len(axes)`` (the shape of one value per example): a per-example mask,
      False drops the whole example (optax's ``where`` of shape ``[batch]``);
    * rank ``len(shape)``: a class mask broadcastable to ``shape``, False excludes a class.

    Returns ``(class_mask, example_mask)``, each None or broadcast to its full shape; any other
    rank raises ValueError naming ``where``.
    """
    if where is None:
        return None, None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask; got {describe(where)}.")
    example_shape = tuple(d for a, d in enumerate(shape) if a not in axes)
    if where.ndim == len(shape):
        return as_where(where, shape, to_name), None
    if where.ndim == len(example_shape):
        check_broadcastable(where, "where", example_shape, f"{to_name} without its class axes")
        return None, jnp.broadcast_to(where, example_shape)
    raise ValueError(
        f"`where` {describe(where)} has rank {where.ndim}; expected rank {len(shape)} (a class "
        f"mask broadcastable to `{to_name}` {list(shape)}) or rank {len(example_shape)} (a "
        f"per-example mask of shape {list(example_shape)})."
    )


def integer_where(where, logits: jax.Array, labels: jax.Array, axes) -> jax.Array | None:
    """``where`` by rank: the rank of ``labels`` is a per-example mask (False drops the row),
    the rank of ``logits`` a class mask. Returned as a class mask shaped like ``logits``, never
    chosen by broadcastability (N == K cannot flip the meaning)."""
    class_mask, example_mask = example_or_class_where(where, logits.shape, axes)
    if example_mask is None:
        return class_mask
    return jnp.broadcast_to(jnp.expand_dims(example_mask, axes), logits.shape)


def check_class_weights(class_weights, num_classes: int) -> jax.Array | None:
    if class_weights is None:
        return None
    weights = as_float_array(class_weights, "class_weights")
    if weights.shape != (num_classes,):
        raise ValueError(
            f"`class_weights` must have shape [{num_classes}] (one weight per class); got "
            f"{describe(weights)}: length {weights.size} != {num_classes} classes."
        )
    return upcast(weights)


def explicit_spec(x: jax.Array) -> tuple:
    """The mesh axes each dimension of ``x`` is split over, as its type says (explicit sharding).

    Empty when the type carries no sharding (automatic sharding, or none at all).
    """
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    return tuple(spec) if spec is not None and len(spec) == x.ndim else ()


def class_axis_is_explicitly_sharded(x: jax.Array) -> bool:
    """True when ``x``'s type says its last axis is split over a mesh (explicit sharding)."""
    spec = explicit_spec(x)
    return bool(spec) and spec[-1] is not None


def check_integer_labels(logits: jax.Array, labels: jax.Array, axes) -> None:
    """Labels must have the shape of the logits without the class axes."""
    expected = tuple(d for a, d in enumerate(logits.shape) if a not in axes)
    if labels.shape != expected:
        raise ValueError(
            f"`labels` must have the shape of `logits` without the class axis {axes}: expected "
            f"{list(expected)} for `logits` {describe(logits)}; got `labels` {describe(labels)}."
        )


def integer_label_spec(dtype, num_classes: int, class_weights, **options):
    """``(class weights, spec, coefficients, ok)`` of the integer-label CE over K classes.

    The weights come back checked, cast to ``dtype`` and without gradient (None if not given).
    """
    weights = check_class_weights(class_weights, num_classes)
    spec, coefs, ok = make_spec(
        "cross_entropy", num_classes, dtype, class_weights=weights is not None, **options
    )
    if weights is not None:
        weights = jax.lax.stop_gradient(weights).astype(dtype)
    return weights, spec, coefs, ok


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def integer_label_rows(logits, labels, class_weights, coefs, spec, explicit):
    """(per-row loss, denominator weight) of the integer-label CE on one full tile.

    The same tile formulas as the fused and sharded heads (:mod:`._tiles`), on ``[rows, K]``
    logits. The JVP rule is the tile's closed-form logit gradient, so reverse mode is one
    elementwise pass, with the softmax recomputed rather than stored. Half-precision logits come
    in as they are and are upcast inside, where the cast fuses into every pass over them.
    """

    source = (logits, upcast)
    stats = _tiles.ce_tile(upcast(logits), labels, class_weights, 0, spec, coefs, explicit, source)
    rows = _tiles.ce_rows(stats, labels, None, coefs, spec)
    return rows.loss, rows.weight


@integer_label_rows.defjvp
def _integer_label_rows_jvp(spec, explicit, primals, tangents):
    logits, labels, class_weights, coefs = primals
    rows, grad = _tiles.ce_full_tile(logits, labels, class_weights, coefs, spec, explicit)
    loss_dot = jnp.sum(grad * tangents[0], axis=-1).astype(rows.loss.dtype)
    return (rows.loss, rows.weight), (loss_dot, jnp.zeros_like(rows.weight))


@cached_eager("axis", "ignore_index", "logit_softcap", "reduction")
def softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    ignore_index: int | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Cross-entropy between integer class labels and the softmax of ``logits``.

    .. math::
        \ell_i = \log \sum_k e^{z_{ik}} - z_{i y_i} = -\log q_{i y_i}

    computed as a logsumexp minus the label's logit (no one-hot is formed, and it partitions
    over a vocabulary-sharded class axis). With every option:

    .. math::
        \ell_i = (1-\epsilon)\, w_{y_i} (-\log q_{i y_i})
               + \frac{\epsilon}{K} \sum_{k} w_k (-\log q_{ik}) + c\, (\log Z_i)^2

    where the sum runs over the K included classes (PyTorch's label smoothing). T5X spreads
    :math:`\epsilon/(K-1)` over the *other* classes instead, a target with
    :math:`1-\epsilon` on the label; to reproduce it pass
    ``label_smoothing = eps * K / (K - 1)``. The gradient w.r.t. the logits is
    :math:`q - y` (the one-hot form, scaled by the weights).

    Options (the defaults keep ``optax`` parity):

    * ``ignore_index``: rows whose label equals it give loss 0, gradient 0 and are left out of
      the mean (PyTorch uses -100).
    * ``label_smoothing=eps`` in [0, 1).
    * ``class_weights`` of shape [K]: PyTorch's per-class ``weight``; the ``"mean"`` reduction
      divides by :math:`\sum_i w_{y_i}` over non-ignored rows, as PyTorch does.
    * ``z_loss=c``: adds :math:`c (\log Z)^2` per non-ignored row, not class-weighted.
    * ``logit_softcap=s``: logits become :math:`s\tanh(z/s)` before everything else.
    * ``reduction``: ``"none"`` (default), ``"sum"``, ``"mean"``, ``"batchmean"``. A batch in
      which every row is ignored gives 0 and a 0 gradient under every reduction.

    A label outside ``[0, K)`` that is not ``ignore_index`` turns its row into NaN (it cannot
    raise inside ``jit``); :func:`infoloss_jax.checked` raises a clear error for it instead.

    Args:
      logits: floating-point array ``[..., K]`` of unnormalized log-probabilities.
      labels: integer array of class indices, the shape of ``logits`` without the class axes.
        With a tuple ``axis``, a label is the row-major flat index into those axes.
      axis: the class axis or axes.
      where: optional boolean mask, broadcastable to ``logits`` (False excludes a class) or
        shaped like ``labels`` (False drops the whole row).
      ignore_index: label value whose rows are ignored, or None.
      label_smoothing: smoothing mass in [0, 1).
      class_weights: optional per-class weights, shape [K].
      z_loss: coefficient of the z-loss penalty, >= 0.
      logit_softcap: positive soft cap, or None.
      reduction: how to reduce the per-example losses.

    Returns:
      Per-example losses (the shape of ``labels``) or their reduction, in at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import infoloss_jax as il
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> labels = jnp.array([0, 1])
      >>> print(np.asarray(il.softmax_cross_entropy_with_integer_labels(logits, labels)).round(4))
      [0.2761 2.9518]
      >>> loss = il.softmax_cross_entropy_with_integer_labels(
      ...     logits, jnp.array([0, -100]), ignore_index=-100, reduction="mean")
      >>> print(round(float(loss), 4))
      0.2761

    References:
      optax ``softmax_cross_entropy_with_integer_labels``; PyTorch ``F.cross_entropy``;
      Chowdhery et al., "PaLM", 2022 (z-loss); Team Gemma, "Gemma 2", 2024 (soft-capping).
    """
    check_reduction(reduction)
    logits = as_float_array(logits, "logits")
    labels = as_integer_array(labels, "labels")
    axes = normalize_axis(axis, logits.ndim)
    check_integer_labels(logits, labels, axes)
    mask = integer_where(where, logits, labels, axes)
    logits = classes_last(exclude(logits, mask), axes)
    num_classes = logits.shape[-1]
    weights, spec, coefs, ok = integer_label_spec(
        accumulation_dtype(logits.dtype),
        num_classes,
        class_weights,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        logit_softcap=logit_softcap,
        ignore_index=ignore_index,
    )
    explicit = class_axis_is_explicitly_sharded(logits)
    flat = logits.reshape(-1, num_classes)
    loss, weight = integer_label_rows(flat, labels.reshape(-1), weights, coefs, spec, explicit)
    loss, weight = loss.reshape(labels.shape), weight.reshape(labels.shape)
    return poison(reduce_loss(loss, reduction=reduction, weights=weight), ok)


# ----------------------------------------------------------------------------- sigmoid
@cached_eager()
def sigmoid_binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    pos_weight: ArrayLike | None = None,
) -> jax.Array:
    r"""Elementwise binary cross-entropy between labels and sigmoid(logits).

    .. math::
        \ell = -\big(w_+\, y \log \sigma(z) + (1 - y) \log \sigma(-z)\big)

    with :math:`\log\sigma` computed stably and ``0 * log 0 = 0``: an infinite logit whose
    label agrees with it gives 0 and a 0 gradient. The gradient is
    :math:`\partial\ell/\partial z = (w_+ y + 1 - y)\,\sigma(z) - w_+ y`.

    Args:
      logits: floating-point log-odds.
      labels: target probabilities in [0, 1], broadcastable to ``logits``; integer or
        boolean labels are read as 0/1, as in optax.
      pos_weight: optional weight of the positive term (PyTorch's ``pos_weight``),
        broadcastable to ``logits``.

    Returns:
      The elementwise loss, shaped like ``logits``, in at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> print(round(float(il.sigmoid_binary_cross_entropy(0.0, 1.0)), 6))
      0.693147

    References:
      optax ``sigmoid_binary_cross_entropy``; PyTorch ``F.binary_cross_entropy_with_logits``.
    """
    logits = as_float_array(logits, "logits")
    labels = as_label_probabilities(labels)
    check_broadcastable(labels, "labels", logits.shape, "logits")
    dtype = jnp.result_type(logits.dtype, labels.dtype, jnp.float32)
    logits, labels = logits.astype(dtype), jnp.broadcast_to(labels, logits.shape).astype(dtype)
    positive_weight = labels
    if pos_weight is not None:
        pos_weight = as_float_array(pos_weight, "pos_weight")
        check_broadcastable(pos_weight, "pos_weight", logits.shape, "logits")
        positive_weight = pos_weight.astype(dtype) * labels
    negative_weight = 1.0 - labels
    positive = _weighted_log(positive_weight, jax.nn.log_sigmoid(logits))
    negative = _weighted_log(negative_weight, jax.nn.log_sigmoid(-logits))
    return -(positive + negative)


def _weighted_log(weight: jax.Array, log_value: jax.Array) -> jax.Array:
    """weight * log_value with 0 * (-inf) = 0, in the value and in both derivatives."""
    vanishing = (weight == 0) & (log_value == -jnp.inf)
    return jnp.where(vanishing, 0.0, weight * jnp.where(vanishing, 0.0, log_value))
