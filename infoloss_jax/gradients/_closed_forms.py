"""Closed-form gradients, Hessians and HVPs (the public face and its conventions: ``__init__``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..base._caching import cached_eager
from ..base._typing import ArrayLike
from ..base._validation import (
    Axis,
    accumulation_dtype,
    all_ok,
    as_float_array,
    as_integer_array,
    as_where,
    check_broadcastable,
    check_same_shape,
    in_base,
    is_traced,
    normalize_axis,
    scheduled_number,
)
from ..core import _formulas
from ..core._cross_entropy import (
    check_integer_labels,
    check_label_smoothing,
    check_z_loss,
    classes_last,
    integer_label_spec,
    integer_where,
    smoothing_mass,
    soft_cap,
)
from ..core._entropy import entropy_grad_rows
from ..core._log_partition import exclude, stable_log_softmax
from ..engine import _pairs, _tiles
from ..engine._loss_spec import divergence_coefficient, loss_named, poison
from ..post_training._log_probs import token_grads, token_log_probs_spec

# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _prepare_logits(logits: ArrayLike, name: str = "logits") -> jax.Array:
    x = as_float_array(logits, name)
    return x.astype(accumulation_dtype(x.dtype))


def _single_axis(axis, ndim: int) -> int:
    axes = normalize_axis(axis, ndim)
    if len(axes) != 1:
        raise ValueError(f"`axis` must name a single class axis here; got {axis!r}.")
    return axes[0]


def _zero_masked(grad: jax.Array, where: jax.Array | None) -> jax.Array:
    return grad if where is None else jnp.where(where, grad, 0.0)


def _normalized(logits, where, axis, name="logits"):
    """Validates logits and applies the mask; returns (LogSoftmax, axes, mask).

    The log-probabilities are -inf at excluded classes (everywhere, not NaN, for an empty row).
    """
    x = _prepare_logits(logits, name)
    axes = normalize_axis(axis, x.ndim)
    mask = as_where(where, x.shape, name)
    return stable_log_softmax(exclude(x, mask), axes), axes, mask


def _on_rows(fn, x: jax.Array, axes, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The outputs of ``fn`` of ``arrays`` (shaped like ``x``) taken as ``[rows, classes]``,
    each moved back to the layout of ``x`` (the class axes in place)."""
    to_rows = functools.partial(classes_last, axes=axes)
    rows = [to_rows(a) for a in arrays]
    out = fn(*(r.reshape(-1, r.shape[-1]) for r in rows))
    back = jax.linear_transpose(to_rows, x)  # to_rows only moves entries: its transpose inverts
    return tuple(back(o.reshape(rows[0].shape))[0] for o in out)


def _select(grads: tuple[jax.Array, ...], argnums) -> jax.Array | tuple[jax.Array, ...]:
    """Picks from the gradients of each argument the way ``jax.grad(..., argnums)`` would."""
    if not isinstance(argnums, tuple | list):
        return grads[_check_argnum(argnums, len(grads))]
    return tuple(grads[_check_argnum(a, len(grads))] for a in argnums)


def _check_argnum(argnum, count: int) -> int:
    if is_traced(argnum) or not isinstance(argnum, int | np.integer):
        raise TypeError(
            f"`argnums` must hold static Python ints; got {type(argnum).__name__}. Under "
            "jax.jit, bind it with functools.partial or pass static_argnames=('argnums',)."
        )
    if not 0 <= argnum < count:
        valid = ", ".join(str(k) for k in range(count))
        raise ValueError(f"`argnums` may contain only {valid}; got {argnum!r}.")
    return int(argnum)


# --------------------------------------------------------------------------------------------
# Cross-entropy
# --------------------------------------------------------------------------------------------


@cached_eager("axis", "label_smoothing", "z_loss", "logit_softcap")
def softmax_cross_entropy_grad(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis=-1,
    where: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
) -> jax.Array:
    r"""Gradient of softmax_cross_entropy with respect to the logits.

    With :math:`q = \mathrm{softmax}(z)`, :math:`\log q_k = z_k - \log\sum_j e^{z_j}` and
    :math:`L = -\sum_k y_k \log q_k`:

    .. math::

        \frac{\partial L}{\partial z_k} = q_k \sum_j y_j - y_k
        \quad\text{(} q - y \text{ for normalized targets).}

    Options add their own terms. Label smoothing replaces :math:`y` by
    :math:`(1 - \varepsilon) y + \varepsilon / K` over the :math:`K` unmasked classes. The z-loss
    :math:`c\,(\log Z)^2` adds :math:`2 c \log Z \, q`. A soft cap
    :math:`s \tanh(z / s)` multiplies everything by its derivative :math:`1 - \tanh^2(z / s)`.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      labels: target probabilities, the shape of ``logits``.
      axis: the class axis (or axes).
      where: optional boolean mask, broadcastable to ``logits``; False removes a class.
      label_smoothing: :math:`\varepsilon \in [0, 1)`.
      z_loss: coefficient :math:`c \ge 0` of the squared log-partition penalty.
      logit_softcap: optional cap :math:`s > 0`.

    Returns:
      The gradient, with the shape of ``logits`` (float32 at least).

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import softmax_cross_entropy_grad
      >>> g = softmax_cross_entropy_grad(jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 0.0, 1.0]))
      >>> print([round(float(v), 4) for v in g])
      [0.09, 0.2447, -0.3348]
    """
    eps, coefficient = check_label_smoothing(label_smoothing), check_z_loss(z_loss)
    x = _prepare_logits(logits)
    y = as_float_array(labels, "labels")
    check_same_shape(x, "logits", y, "labels")
    dtype = jnp.result_type(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    axes = normalize_axis(axis, x.ndim)
    mask = as_where(where, x.shape)
    normalized = stable_log_softmax(exclude(soft_cap(x, logit_softcap), mask), axes)
    if eps:
        y = (1.0 - eps) * y + smoothing_mass(normalized, eps)
    grad = _formulas.softmax_cross_entropy_grad(normalized.log_probs, y, axes)
    if coefficient:
        grad = grad + 2.0 * coefficient * normalized.log_partition * jnp.exp(normalized.log_probs)
    return _zero_masked(grad * _tiles.softcap_derivative(x, logit_softcap), mask)


@cached_eager("axis", "ignore_index", "logit_softcap")
def softmax_cross_entropy_with_integer_labels_grad(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis=-1,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
) -> jax.Array:
    r"""Gradient of softmax_cross_entropy_with_integer_labels (logits).

    For a label :math:`y` and :math:`L = \log\sum_j e^{z_j} - z_y`:

    .. math::

        \frac{\partial L}{\partial z_k} = q_k - [k = y].

    The one-hot vector is never built: the label's entry is decremented in place with a
    scatter. With class weights :math:`w` and label smoothing :math:`\varepsilon` over :math:`K`
    unmasked classes (PyTorch's formula)

    .. math::

        L = (1 - \varepsilon)\, w_y (-\log q_y)
            + \frac{\varepsilon}{K} \sum_k w_k (-\log q_k),
        \qquad
        \frac{\partial L}{\partial z} = (1 - \varepsilon)\, w_y (q - e_y)
            + \frac{\varepsilon}{K} \Big( q \sum_k w_k - w \Big).

    The z-loss adds :math:`2 c \log Z \, q`; the soft cap multiplies by
    :math:`1 - \tanh^2(z / s)`. Rows whose label is ``ignore_index`` get 0; labels outside
    :math:`[0, K)` give a NaN row, as the loss does.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      labels: integer class indices, the shape of ``logits`` without ``axis``; with a tuple
        ``axis``, the row-major flat index into those axes.
      axis: the class axis, or a tuple of axes that together index the classes.
      where: optional boolean mask, broadcastable to ``logits``; False removes a class.
      ignore_index: a label value whose rows contribute nothing.
      label_smoothing: :math:`\varepsilon \in [0, 1)`.
      class_weights: optional per-class weights, shape ``[K]``.
      z_loss: coefficient :math:`c \ge 0` of the squared log-partition penalty.
      logit_softcap: optional cap :math:`s > 0`.

    Returns:
      The per-example gradient of the unreduced loss, with the shape of ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import softmax_cross_entropy_with_integer_labels_grad
      >>> g = softmax_cross_entropy_with_integer_labels_grad(jnp.array([1.0, 2.0, 3.0]), 2)
      >>> print([round(float(v), 4) for v in g])
      [0.09, 0.2447, -0.3348]
    """
    eps, coefficient = check_label_smoothing(label_smoothing), check_z_loss(z_loss)
    x = _prepare_logits(logits)
    axes = normalize_axis(axis, x.ndim)
    y = as_integer_array(labels, "labels")
    check_integer_labels(x, y, axes)
    mask = integer_where(where, x, y, axes)
    # The classes last and flattened into one (labels index them row-major); the engine's
    # one-tile gradient (the loss's own JVP rule) with a unit cotangent per row.
    to_rows = functools.partial(classes_last, axes=axes)
    z = to_rows(exclude(x, mask))
    num_classes = z.shape[-1]
    weights, spec, coefs, ok = integer_label_spec(
        z.dtype,
        num_classes,
        class_weights,
        label_smoothing=eps,
        z_loss=coefficient,
        logit_softcap=logit_softcap,
        ignore_index=ignore_index,
    )
    _, grad = _tiles.ce_full_tile(z.reshape(-1, num_classes), y.reshape(-1), weights, coefs, spec)
    # to_rows only moves entries, so its transpose is its inverse.
    (grad,) = jax.linear_transpose(to_rows, x)(poison(grad.reshape(z.shape), ok))
    return _zero_masked(grad, mask)


@cached_eager("axis", "logit_softcap", "ignore_index", "with_entropy")
def log_probs_grad(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis=-1,
    where: ArrayLike | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    ignore_index: int | None = None,
    with_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Gradients of log_probs: of the token log-probability and of the entropy.

    With :math:`z = s \tanh(\ell / s) / T` (soft cap, then temperature) and :math:`q =
    \mathrm{softmax}(z)`:

    .. math::

        \frac{\partial \log q_y}{\partial \ell_k} = \frac{c_k}{T} \big([k = y] - q_k\big),
        \qquad
        \frac{\partial H}{\partial \ell_k} = -\frac{c_k}{T}\, q_k \big(\log q_k + H\big),

    where :math:`c_k = 1 - \tanh^2(\ell_k / s)` is the soft cap's slope (1 without a cap). The
    entropy's gradient is the score-function form: it vanishes at the uniform distribution
    (:math:`\log q_k = -H` for every k) and at a one-hot one. Excluded classes (``-inf``
    logits, ``where=False``) get 0; ignored tokens get 0 rows; a label outside
    :math:`[0, K)` gives a NaN row.

    Args:
      logits: raw logits, classes along ``axis``.
      labels: integer token indices, the shape of ``logits`` without ``axis``.
      axis: the class axis (or axes, read row-major as one flat index).
      where: optional boolean class mask broadcastable to ``logits``.
      temperature: :math:`T > 0`.
      logit_softcap: optional cap :math:`s > 0`.
      ignore_index: a label value whose tokens get a 0 gradient.
      with_entropy: also return the entropy's gradient.

    Returns:
      The per-token gradient of :math:`\log q_y` with the shape of ``logits``, or the pair
        (that, the gradient of :math:`H`) with ``with_entropy=True``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import log_probs_grad
      >>> d_lp, d_h = log_probs_grad(jnp.array([1.0, 2.0, 3.0]), 2, with_entropy=True)
      >>> print([round(float(v), 4) for v in d_lp], [round(float(v), 4) for v in d_h])
      [-0.09, -0.2447, 0.3348] [0.1418, 0.1408, -0.2826]

    References:
      Williams, "Simple statistical gradient-following algorithms" (REINFORCE), 1992;
      Schulman et al., "Proximal Policy Optimization Algorithms", 2017.
    """
    if not isinstance(with_entropy, bool):
        raise TypeError(f"`with_entropy` must be a Python bool; got {with_entropy!r}.")
    x = _prepare_logits(logits)
    raw, y, spec, coefs, ok, to_rows = token_log_probs_spec(
        x,
        labels,
        axis,
        where,
        temperature=temperature,
        logit_softcap=logit_softcap,
        ignore_index=ignore_index,
        entropy=with_entropy,
    )
    _, d_log_probs, d_entropy = token_grads(raw, y.reshape(-1), coefs, spec)
    # to_rows only moves entries, so its transpose is its inverse.
    back = jax.linear_transpose(to_rows, x)
    shape = (*y.shape, raw.shape[-1])
    grads = [
        back(poison(g.reshape(shape), ok))[0] for g in (d_log_probs, d_entropy) if g is not None
    ]
    return (grads[0], grads[1]) if with_entropy else grads[0]


@cached_eager("axis")
def softmax_cross_entropy_hessian(
    logits: ArrayLike, labels: ArrayLike, *, axis: int = -1, where: ArrayLike | None = None
) -> jax.Array:
    r"""Hessian of softmax cross-entropy with respect to the logits, one matrix per example.

    Differentiating :math:`\partial L / \partial z = q \sum_j y_j - y` once more, with
    :math:`\partial q_i / \partial z_j = q_i (\delta_{ij} - q_j)`:

    .. math::

        \nabla^2_z L = \Big(\sum_j y_j\Big) \big(\mathrm{diag}(q) - q q^\top\big).

    It does not depend on which class is the label, so ``labels`` may also be integer indices
    (then :math:`\sum_j y_j = 1`). The matrix is positive semi-definite with null vector
    :math:`\mathbf{1}`: adding a constant to all logits changes nothing.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      labels: target probabilities (the shape of ``logits``) or integer class indices.
      axis: the class axis (a single int).
      where: optional boolean mask; masked classes get zero rows and columns.

    Returns:
      An array of shape ``batch + [K, K]``: the class axis moved to the end and doubled.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import softmax_cross_entropy_hessian
      >>> h = softmax_cross_entropy_hessian(jnp.zeros(2), jnp.array([1.0, 0.0]))
      >>> print([[round(float(v), 4) for v in row] for row in h])
      [[0.25, -0.25], [-0.25, 0.25]]
    """
    return _hessian(_cross_entropy_curvature(_prepare_logits(logits), labels, axis, where))


@cached_eager("axis")
def softmax_cross_entropy_hvp(
    logits: ArrayLike,
    labels: ArrayLike,
    tangent: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Hessian-vector product of softmax cross-entropy, without forming the Hessian.

    .. math::

        \nabla^2_z L \, v = \Big(\sum_j y_j\Big) \big(q \odot v - q \, (q^\top v)\big),

    which is what ``jax.jvp(jax.grad(loss), (logits,), (tangent,))`` computes, in
    :math:`O(K)` per example instead of :math:`O(K^2)`.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      labels: target probabilities (the shape of ``logits``) or integer class indices.
      tangent: the vector :math:`v`, the shape of ``logits``.
      axis: the class axis (a single int).
      where: optional boolean mask; masked classes get 0.

    Returns:
      :math:`\nabla^2 L \, v`, with the shape of ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import softmax_cross_entropy_hvp
      >>> hv = softmax_cross_entropy_hvp(jnp.zeros(2), 0, jnp.array([1.0, 0.0]))
      >>> print([round(float(v), 4) for v in hv])
      [0.25, -0.25]
    """
    return _hvp(_cross_entropy_curvature, logits, tangent, labels, axis, where)


# --------------------------------------------------------------------------------------------
# Entropy, log-partition
# --------------------------------------------------------------------------------------------


@cached_eager("axis", "base")
def entropy_grad(
    logits: ArrayLike, *, axis=-1, where: ArrayLike | None = None, base: float | None = None
) -> jax.Array:
    r"""Gradient of entropy, H(softmax(z)), in the logits.

    With :math:`H = -\sum_k p_k \log p_k` and
    :math:`\partial \log p_k / \partial z_j = \delta_{kj} - p_j`:

    .. math::

        \frac{\partial H}{\partial z_j}
        = -\sum_k p_k (1 + \log p_k)(\delta_{kj} - p_j)
        = -p_j \big(\log p_j + H\big).

    It vanishes at the uniform distribution (the maximum) and at one-hot limits. In base
    :math:`b` divide by :math:`\log b`.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      axis: the class axis (or axes).
      where: optional boolean mask; masked classes get 0.
      base: logarithm base of the entropy (None for nats, 2 for bits).

    Returns:
      The gradient, with the shape of ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import entropy_grad
      >>> g = entropy_grad(jnp.array([0.0, 1.0, 2.0]))
      >>> print([round(float(v), 4) for v in g])
      [0.1418, 0.1408, -0.2826]
    """
    x = _prepare_logits(logits)
    axes = normalize_axis(axis, x.ndim)
    mask = as_where(where, x.shape)
    (grad,) = _on_rows(lambda z: (entropy_grad_rows(z),), x, axes, exclude(x, mask))
    return _zero_masked(in_base(grad, base), mask)


@cached_eager("axis", "base")
def entropy_from_probs_grad(
    probs: ArrayLike, *, axis=-1, where: ArrayLike | None = None, base: float | None = None
) -> jax.Array:
    r"""Gradient of entropy_from_probs with respect to the probabilities.

    The probabilities are used as given (no renormalization), so each term is independent:

    .. math::

        \frac{\partial}{\partial p_k}\Big(-\sum_j p_j \log p_j\Big) = -(\log p_k + 1).

    Where :math:`p_k = 0` the library takes the derivative as 0 rather than the one-sided
    :math:`+\infty`, as the loss does; a negative probability gives NaN. To differentiate
    through a softmax instead, use :func:`entropy_grad` on the logits.

    Args:
      probs: probabilities, classes along ``axis``.
      axis: the class axis (validated only: the gradient is elementwise).
      where: optional boolean mask; masked entries get 0.
      base: logarithm base of the entropy (None for nats).

    Returns:
      The gradient, with the shape of ``probs``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import entropy_from_probs_grad
      >>> g = entropy_from_probs_grad(jnp.array([0.25, 0.75, 0.0]))
      >>> print([round(float(v), 4) for v in g])
      [0.3863, -0.7123, 0.0]
    """
    p = _prepare_logits(probs, "probs")
    normalize_axis(axis, p.ndim)
    mask = as_where(where, p.shape, "probs")
    positive = p > 0
    grad = jnp.where(positive, -(jnp.log(jnp.where(positive, p, 1.0)) + 1.0), 0.0)
    return _zero_masked(in_base(_poison_negative(grad, p), base), mask)


@cached_eager("axis", "base")
def entropy_hessian(
    logits: ArrayLike, *, axis: int = -1, where: ArrayLike | None = None, base: float | None = None
) -> jax.Array:
    r"""Hessian of the entropy H(softmax(z)) with respect to the logits.

    Write :math:`a = p \odot (\log p + H)`, so that :math:`\nabla H = -a`. Differentiating
    :math:`-p_i(\log p_i + H)` in :math:`z_j` with
    :math:`\partial p_i / \partial z_j = p_i(\delta_{ij} - p_j)` and
    :math:`\partial H / \partial z_j = -a_j` gives a symmetric matrix:

    .. math::

        \nabla^2_z H = -\mathrm{diag}(a + p) + a p^\top + p a^\top + p p^\top.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      axis: the class axis (a single int).
      where: optional boolean mask; masked classes get zero rows and columns.
      base: logarithm base of the entropy (None for nats).

    Returns:
      An array of shape ``batch + [K, K]``: the class axis moved to the end and doubled.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import entropy_hessian
      >>> h = entropy_hessian(jnp.zeros(2))
      >>> print([[round(float(v), 4) for v in row] for row in h])
      [[-0.25, 0.25], [0.25, -0.25]]
    """
    return in_base(_hessian(_entropy_curvature(_prepare_logits(logits), axis, where)), base)


@cached_eager("axis", "base")
def entropy_hvp(
    logits: ArrayLike,
    tangent: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
    base: float | None = None,
) -> jax.Array:
    r"""Hessian-vector product of the entropy, without forming the Hessian.

    With :math:`a = p \odot (\log p + H)` as in :func:`entropy_hessian`:

    .. math::

        \nabla^2_z H \, v = -(a + p) \odot v + a\,(p^\top v) + p\,(a^\top v) + p\,(p^\top v).

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      tangent: the vector :math:`v`, the shape of ``logits``.
      axis: the class axis (a single int).
      where: optional boolean mask; masked classes get 0.
      base: logarithm base of the entropy (None for nats).

    Returns:
      :math:`\nabla^2 H \, v`, with the shape of ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import entropy_hvp
      >>> hv = entropy_hvp(jnp.zeros(2), jnp.array([1.0, 0.0]))
      >>> print([round(float(v), 4) for v in hv])
      [-0.25, 0.25]
    """
    return in_base(_hvp(_entropy_curvature, logits, tangent, axis, where), base)


@cached_eager("axis")
def log_partition_grad(logits: ArrayLike, *, axis=-1, where: ArrayLike | None = None) -> jax.Array:
    r"""Gradient of log_partition, log sum_k exp(z_k): the softmax.

    .. math::

        \frac{\partial}{\partial z_j} \log \sum_k e^{z_k} = \frac{e^{z_j}}{\sum_k e^{z_k}} = q_j.

    A fully masked row has log-partition 0 and gradient 0.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      axis: the class axis (or axes).
      where: optional boolean mask; masked classes get 0.

    Returns:
      :math:`\mathrm{softmax}(z)`, with the shape of ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import log_partition_grad
      >>> g = log_partition_grad(jnp.array([0.0, 0.0]))
      >>> print([round(float(v), 4) for v in g])
      [0.5, 0.5]
    """
    normalized, _, mask = _normalized(logits, where, axis)
    return _zero_masked(jnp.exp(normalized.log_probs), mask)


@cached_eager("axis")
def z_loss_grad(logits: ArrayLike, *, axis=-1, where: ArrayLike | None = None) -> jax.Array:
    r"""Gradient of z_loss, (log Z)^2: 2 log(Z) q.

    .. math::

        \frac{\partial (\log Z)^2}{\partial z_j} = 2 \log Z \; \mathrm{softmax}(z)_j.

    Args:
      logits: unnormalized log-probabilities, classes along ``axis``.
      axis: the class axis (or axes).
      where: optional boolean mask; masked classes get 0.

    Returns:
      The gradient, with the shape of ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import z_loss_grad
      >>> g = z_loss_grad(jnp.array([0.0, 0.0]))
      >>> print([round(float(v), 4) for v in g])
      [0.6931, 0.6931]
    """
    normalized, _, mask = _normalized(logits, where, axis)
    return _zero_masked(2.0 * normalized.log_partition * jnp.exp(normalized.log_probs), mask)


# --------------------------------------------------------------------------------------------
# Curvature: every Hessian here is diag(d) + a sum of outer products u w^T (classes last), so
# one function forms it and one applies it to a tangent in O(K).
# --------------------------------------------------------------------------------------------


def _log_probs_classes_last(x: jax.Array, axis, where) -> tuple[jax.Array, int, jax.Array | None]:
    """Returns (log softmax with the class axis moved last, the class axis, the mask)."""
    class_axis = _single_axis(axis, x.ndim)
    mask = as_where(where, x.shape)
    log_p = stable_log_softmax(exclude(x, mask), (class_axis,)).log_probs
    return jnp.moveaxis(log_p, class_axis, -1), class_axis, mask


def _cross_entropy_curvature(x: jax.Array, labels, axis, where):
    """(d, [(u, w)], class axis) of (sum_j y_j) (diag(q) - q q^T)."""
    log_q, class_axis, mask = _log_probs_classes_last(x, axis, where)
    q = jnp.exp(log_q)
    total = 1.0  # integer labels: one-hot targets
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        y = as_float_array(labels, "labels").astype(x.dtype)
        check_same_shape(x, "logits", y, "labels")
        total = jnp.sum(jnp.moveaxis(_zero_masked(y, mask), class_axis, -1), -1, keepdims=True)
    return total * q, [(-total * q, q)], class_axis


def _entropy_curvature(x: jax.Array, axis, where):
    """(d, [(u, w)], class axis) of -diag(a + p) + a p^T + p a^T + p p^T, a = p (log p + H)."""
    log_p, class_axis, mask = _log_probs_classes_last(x, axis, where)
    p = jnp.exp(log_p)
    z = jnp.moveaxis(exclude(x, mask), class_axis, -1)
    a = -entropy_grad_rows(z.reshape(-1, z.shape[-1])).reshape(z.shape)
    return -(a + p), [(a, p), (p, a), (p, p)], class_axis


def _hessian(curvature) -> jax.Array:
    d, outer_products, _ = curvature
    hess = d[..., :, None] * jnp.eye(d.shape[-1], dtype=d.dtype)
    for u, w in outer_products:
        hess = hess + u[..., :, None] * w[..., None, :]
    return hess


def _hvp(curvature_of, logits, tangent, *args) -> jax.Array:
    """diag(d) v + sum_i u_i (w_i^T v), with ``curvature_of(logits, *args)``."""
    x = _prepare_logits(logits)
    v = as_float_array(tangent, "tangent").astype(x.dtype)
    check_same_shape(v, "tangent", x, "logits")
    d, outer_products, class_axis = curvature_of(x, *args)
    v = jnp.moveaxis(v, class_axis, -1)
    hv = d * v
    for u, w in outer_products:
        hv = hv + u * jnp.sum(w * v, -1, keepdims=True)
    return jnp.moveaxis(hv, -1, class_axis)


# --------------------------------------------------------------------------------------------
# KL divergences and Jensen-Shannon
# --------------------------------------------------------------------------------------------


def _log_prediction_pair(log_predictions, targets, targets_name, axis, where):
    """Validates an optax-style (log_predictions, targets) pair and broadcasts the targets."""
    lp = _prepare_logits(log_predictions, "log_predictions")
    t = as_float_array(targets, targets_name)
    check_broadcastable(t, targets_name, lp.shape, "log_predictions")
    normalize_axis(axis, lp.ndim)
    mask = as_where(where, lp.shape, "log_predictions")
    dtype = jnp.result_type(lp.dtype, t.dtype)
    return lp.astype(dtype), jnp.broadcast_to(t, lp.shape).astype(dtype), t.shape, mask


def _sum_to_shape(grad: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums a gradient over the axes along which an argument of ``shape`` was broadcast."""
    extra = grad.ndim - len(shape)
    grad = jnp.sum(grad, axis=tuple(range(extra))) if extra else grad
    stretched = tuple(i for i, d in enumerate(shape) if d == 1 and grad.shape[i] != 1)
    return jnp.sum(grad, axis=stretched, keepdims=True) if stretched else grad


def _finish_elementwise(grad_predictions, grad_targets, targets_shape, mask, argnums):
    grad_targets = _sum_to_shape(_zero_masked(grad_targets, mask), targets_shape)
    return _select((_zero_masked(grad_predictions, mask), grad_targets), argnums)


def _log_ratio_plus_one(targets: jax.Array, log_predictions: jax.Array) -> jax.Array:
    """log t - log q + 1 where t > 0, 0 where t = 0 (the library's 0 log 0 convention)."""
    positive = targets > 0
    safe_t = jnp.where(positive, targets, 1.0)
    safe_lp = jnp.where(positive, log_predictions, 0.0)
    return jnp.where(positive, jnp.log(safe_t) - safe_lp + 1.0, 0.0)


def _poison_negative(grad: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.where(targets < 0, jnp.nan, grad)


@cached_eager("axis", "argnums")
def kl_divergence_grad(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    *,
    axis=-1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of kl_divergence, KL(targets || predictions).

    The loss takes **log**-predictions :math:`\ell = \log q` and probabilities :math:`p`:
    :math:`\mathrm{KL}(p \,\|\, q) = \sum_k p_k (\log p_k - \ell_k)`. It is linear in
    :math:`\ell`, so

    .. math::

        \frac{\partial\,\mathrm{KL}}{\partial \ell} = -p,
        \qquad
        \frac{\partial\,\mathrm{KL}}{\partial p} = \log p - \ell + 1,

    with 0 for the second where :math:`p_k = 0` (the library's :math:`0 \log 0` convention,
    rather than the one-sided :math:`-\infty`). No softmax is involved: if :math:`\ell` is a
    log-softmax of logits, chain through it (or use :func:`forward_kl_grad`). A negative target
    gives NaN, as the loss does.

    Args:
      log_predictions: log-probabilities :math:`\ell`.
      targets: probabilities :math:`p`, broadcastable to ``log_predictions``.
      axis: the class axis (validated only: the gradient is elementwise).
      where: optional boolean mask; masked entries get 0.
      argnums: 0 (log-predictions), 1 (targets) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import kl_divergence_grad
      >>> g = kl_divergence_grad(jnp.log(jnp.array([0.5, 0.5])), jnp.array([0.2, 0.8]))
      >>> print([round(float(v), 4) for v in g])
      [-0.2, -0.8]
    """
    lp, t, t_shape, mask = _log_prediction_pair(log_predictions, targets, "targets", axis, where)
    grad_lp = _poison_negative(jnp.where(t > 0, -t, 0.0), t)
    grad_t = _poison_negative(_log_ratio_plus_one(t, lp), t)
    return _finish_elementwise(grad_lp, grad_t, t_shape, mask, argnums)


@cached_eager("axis", "argnums")
def kl_divergence_with_log_targets_grad(
    log_predictions: ArrayLike,
    log_targets: ArrayLike,
    *,
    axis=-1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of kl_divergence_with_log_targets in both log inputs.

    With :math:`\ell = \log q`, :math:`m = \log p` and
    :math:`\mathrm{KL}(p \,\|\, q) = \sum_k e^{m_k} (m_k - \ell_k)`:

    .. math::

        \frac{\partial\,\mathrm{KL}}{\partial \ell} = -e^{m} = -p,
        \qquad
        \frac{\partial\,\mathrm{KL}}{\partial m} = e^{m} (m - \ell + 1),

    both exactly 0 where :math:`m_k = -\infty`.

    Args:
      log_predictions: log-probabilities :math:`\ell`.
      log_targets: log-probabilities :math:`m`, broadcastable to ``log_predictions``.
      axis: the class axis (validated only: the gradient is elementwise).
      where: optional boolean mask; masked entries get 0.
      argnums: 0 (log-predictions), 1 (log-targets) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import kl_divergence_with_log_targets_grad
      >>> lq, lp = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.2, 0.8]))
      >>> g = kl_divergence_with_log_targets_grad(lq, lp, argnums=1)
      >>> print([round(float(v), 4) for v in g])
      [0.0167, 1.176]
    """
    lp, lt, t_shape, mask = _log_prediction_pair(
        log_predictions, log_targets, "log_targets", axis, where
    )
    present = lt > -jnp.inf
    p = jnp.where(present, jnp.exp(jnp.where(present, lt, 0.0)), 0.0)
    grad_lt = jnp.where(present, p * (jnp.where(present, lt, 0.0) - lp + 1.0), 0.0)
    return _finish_elementwise(-p, grad_lt, t_shape, mask, argnums)


@cached_eager("axis", "argnums")
def generalized_kl_divergence_grad(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    *,
    axis=-1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of generalized_kl_divergence in both inputs.

    With :math:`\ell = \log q` and
    :math:`D(p \,\|\, q) = \sum_k p_k (\log p_k - \ell_k) - p_k + e^{\ell_k}`:

    .. math::

        \frac{\partial D}{\partial \ell} = e^{\ell} - p = q - p,
        \qquad
        \frac{\partial D}{\partial p} = \log p - \ell,

    with :math:`-1` for the second where :math:`p_k = 0` (the :math:`p \log p` term contributes
    0 there, the :math:`-p` term contributes :math:`-1`). A negative target gives NaN.

    Args:
      log_predictions: log-measure :math:`\ell` (need not be normalized).
      targets: non-negative measure :math:`p`, broadcastable to ``log_predictions``.
      axis: the class axis (validated only: the gradient is elementwise).
      where: optional boolean mask; masked entries get 0.
      argnums: 0 (log-predictions), 1 (targets) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import generalized_kl_divergence_grad
      >>> g = generalized_kl_divergence_grad(jnp.log(jnp.array([0.5, 0.5])), jnp.array([0.2, 0.8]))
      >>> print([round(float(v), 4) for v in g])
      [0.3, -0.3]
    """
    lp, t, t_shape, mask = _log_prediction_pair(log_predictions, targets, "targets", axis, where)
    grad_lp = _poison_negative(jnp.exp(lp) - t, t)
    grad_t = _poison_negative(_log_ratio_plus_one(t, lp) - 1.0, t)
    return _finish_elementwise(grad_lp, grad_t, t_shape, mask, argnums)


def divergence_grad(
    div: _pairs.Divergence,
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    coefficient: float | jax.Array | None = None,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    """The (model, target) gradients of the declared divergence ``div`` summed over examples,
    the body of every ``*_grad`` of a divergence over logits: the divergence's own tile
    gradients (the core loss's JVP rule) on whole rows, chained through the temperature,
    masked, and picked by ``argnums``."""
    kind, c, c_ok = divergence_coefficient(div, coefficient)
    div = loss_named(kind)
    temperature, t_ok = scheduled_number(temperature, "temperature", low=0.0, low_open=True)
    z = _prepare_logits(logits)
    t = _prepare_logits(target_logits, "target_logits")
    check_same_shape(z, "logits", t, "target_logits")
    dtype = jnp.result_type(z.dtype, t.dtype)
    z, t = z.astype(dtype), t.astype(dtype)
    axes = normalize_axis(axis, z.ndim)
    mask = as_where(where, z.shape)
    if t_ok is not None:
        temperature = jnp.where(t_ok, temperature, 1.0)
    scale = (1.0 / jnp.asarray(temperature)).astype(dtype)
    c = jnp.asarray(c, dtype)

    def grads(s, target):
        full = _pairs.full_rows(div, s, target, scale, c)
        ds, dt = _pairs.full_grads(div, full, c)
        assert dt is not None  # asked for
        return ds * scale, dt * scale

    pair = _on_rows(grads, z, axes, exclude(z, mask), exclude(t, mask))
    ok = all_ok(t_ok, c_ok)
    return _select(tuple(_zero_masked(poison(g, ok), mask) for g in pair), argnums)


@cached_eager("axis", "argnums")
def forward_kl_grad(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    axis=-1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of forward_kl, KL(target || model), in both logits.

    With the target :math:`p = \mathrm{softmax}(t / T)`, the model
    :math:`q = \mathrm{softmax}(z / T)` and
    :math:`\mathrm{KL}(p \,\|\, q) = \sum_k p_k (\log p_k - \log q_k)`:

    .. math::

        \frac{\partial\,\mathrm{KL}}{\partial z} = \frac{1}{T}\,(q - p),
        \qquad
        \frac{\partial\,\mathrm{KL}}{\partial t}
        = \frac{1}{T}\, p \odot \big(\log p - \log q - \mathrm{KL}(p \,\|\, q)\big).

    The model gradient equals the cross-entropy gradient: :math:`H(p, q) = H(p) + \mathrm{KL}`
    and :math:`H(p)` does not depend on :math:`z`.

    Args:
      logits: the model's logits :math:`z`.
      target_logits: the target's logits :math:`t`, the same shape.
      temperature: :math:`T > 0`, applied to both.
      axis: the class axis (or axes).
      where: optional boolean mask; masked classes get 0.
      argnums: 0 (model logits), 1 (target logits) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import forward_kl_grad
      >>> g = forward_kl_grad(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8]))
      >>> print([round(float(v), 4) for v in g])
      [0.1457, -0.1457]
    """
    return divergence_grad(
        _pairs.FORWARD_KL,
        logits,
        target_logits,
        temperature=temperature,
        axis=axis,
        where=where,
        argnums=argnums,
    )


@cached_eager("axis", "argnums")
def reverse_kl_grad(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    axis=-1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of reverse_kl, KL(model || target), in both logits.

    With the model :math:`q = \mathrm{softmax}(z / T)`, the target
    :math:`p = \mathrm{softmax}(t / T)` and
    :math:`\mathrm{KL}(q \,\|\, p) = \sum_k q_k (\log q_k - \log p_k)`:

    .. math::

        \frac{\partial\,\mathrm{KL}}{\partial z}
        = \frac{1}{T}\, q \odot \big(\log q - \log p - \mathrm{KL}(q \,\|\, p)\big),
        \qquad
        \frac{\partial\,\mathrm{KL}}{\partial t} = \frac{1}{T}\,(p - q).

    The model gradient is weighted by :math:`q`: classes the model already ignores get little
    push, which is why reverse KL is mode-seeking.

    Args:
      logits: the model's logits :math:`z`.
      target_logits: the target's logits :math:`t`, the same shape.
      temperature: :math:`T > 0`, applied to both.
      axis: the class axis (or axes).
      where: optional boolean mask; masked classes get 0.
      argnums: 0 (model logits), 1 (target logits) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import reverse_kl_grad
      >>> g = reverse_kl_grad(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8]))
      >>> print([round(float(v), 4) for v in g])
      [0.15, -0.15]
    """
    return divergence_grad(
        _pairs.REVERSE_KL,
        logits,
        target_logits,
        temperature=temperature,
        axis=axis,
        where=where,
        argnums=argnums,
    )


@cached_eager("axis", "argnums", "beta")
def jensen_shannon_grad(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    axis=-1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of jensen_shannon (generalized JSD) in both logits.

    With the target :math:`p`, the model :math:`q` (both softmax of logits over :math:`T`), the
    mixture :math:`m = \beta p + (1 - \beta) q` and :math:`\mathrm{JS}_\beta =
    \beta\,\mathrm{KL}(p \,\|\, m) + (1 - \beta)\,\mathrm{KL}(q \,\|\, m)`.
    Treating :math:`q` as free, :math:`\partial \mathrm{JS} / \partial q_k
    = (1 - \beta)(\log q_k - \log m_k)`: the terms from :math:`\partial m / \partial q` cancel.
    The softmax Jacobian then centres it:

    .. math::

        \frac{\partial\,\mathrm{JS}}{\partial z}
        = \frac{1 - \beta}{T}\, q \odot \big(\log q - \log m - \mathrm{KL}(q \,\|\, m)\big),
        \qquad
        \frac{\partial\,\mathrm{JS}}{\partial t}
        = \frac{\beta}{T}\, p \odot \big(\log p - \log m - \mathrm{KL}(p \,\|\, m)\big).

    At the endpoints the loss is defined as forward KL (:math:`\beta = 0`) and reverse KL
    (:math:`\beta = 1`), and so are the gradients (:func:`forward_kl_grad`,
    :func:`reverse_kl_grad`).

    Args:
      logits: the model's logits :math:`z`.
      target_logits: the target's logits :math:`t`, the same shape.
      beta: weight of the target in the mixture, in :math:`[0, 1]`.
      temperature: :math:`T > 0`, applied to both.
      axis: the class axis (or axes).
      where: optional boolean mask; masked classes get 0.
      argnums: 0 (model logits), 1 (target logits) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import jensen_shannon_grad
      >>> g = jensen_shannon_grad(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8]))
      >>> print([round(float(v), 4) for v in g])
      [0.0367, -0.0367]
    """
    return divergence_grad(
        _pairs.JENSEN_SHANNON,
        logits,
        target_logits,
        coefficient=beta,
        temperature=temperature,
        axis=axis,
        where=where,
        argnums=argnums,
    )


# --------------------------------------------------------------------------------------------
# Binary losses
# --------------------------------------------------------------------------------------------


@cached_eager("argnums")
def sigmoid_binary_cross_entropy_grad(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    pos_weight: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of sigmoid_binary_cross_entropy, with pos_weight.

    With :math:`\sigma = \sigma(z)`, positive weight :math:`w` (PyTorch's ``pos_weight``) and
    :math:`L = -w\, y \log \sigma - (1 - y) \log(1 - \sigma)
    = w\, y\, \mathrm{softplus}(-z) + (1 - y)\, \mathrm{softplus}(z)`:

    .. math::

        \frac{\partial L}{\partial z} = \sigma\,\big(1 + (w - 1)\, y\big) - w\, y,
        \qquad
        \frac{\partial L}{\partial y} = w\,\mathrm{softplus}(-z) - \mathrm{softplus}(z).

    With :math:`w = 1` the logit gradient is the familiar :math:`\sigma(z) - y`.

    Args:
      logits: logits of the positive class.
      labels: target probabilities in :math:`[0, 1]`, the shape of ``logits``.
      pos_weight: optional weight of positive examples, broadcastable to ``logits``.
      argnums: 0 (logits), 1 (labels) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import sigmoid_binary_cross_entropy_grad
      >>> g = sigmoid_binary_cross_entropy_grad(jnp.array([0.0, 2.0]), jnp.array([1.0, 0.0]))
      >>> print([round(float(v), 4) for v in g])
      [-0.5, 0.8808]
    """
    z = _prepare_logits(logits)
    y = as_float_array(labels, "labels").astype(z.dtype)
    check_same_shape(z, "logits", y, "labels")
    w = jnp.asarray(1.0, z.dtype)
    if pos_weight is not None:
        w = as_float_array(pos_weight, "pos_weight").astype(z.dtype)
        check_broadcastable(w, "pos_weight", z.shape, "logits")
    grad_logits = jax.nn.sigmoid(z) * (1.0 + (w - 1.0) * y) - w * y
    grad_labels = jnp.broadcast_to(w * jax.nn.softplus(-z) - jax.nn.softplus(z), z.shape)
    return _select((grad_logits, grad_labels), argnums)


@cached_eager("base")
def binary_entropy_grad(logits: ArrayLike, *, base: float | None = None) -> jax.Array:
    r"""Gradient of binary_entropy, H(sigmoid(z)), in the logit.

    With :math:`H = -\sigma \log \sigma - (1 - \sigma) \log(1 - \sigma)`,
    :math:`\sigma' = \sigma (1 - \sigma)` and :math:`\log\sigma - \log(1 - \sigma) = z`:

    .. math::

        \frac{dH}{dz} = -\sigma(z)\,\sigma(-z)\,\big(\log\sigma - \log(1 - \sigma)\big)
        = -z\,\sigma(z)\,\sigma(-z).

    It is 0 at :math:`z = 0` (the maximum, :math:`\log 2`) and tends to 0 as
    :math:`|z| \to \infty`; infinite logits give exactly 0. In base :math:`b` divide by
    :math:`\log b`.

    Args:
      logits: logits of the positive class, any shape.
      base: logarithm base (None for nats, 2 for bits).

    Returns:
      The gradient, with the shape of ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import binary_entropy_grad
      >>> g = binary_entropy_grad(jnp.array([-1.0, 1.0]))
      >>> print([round(float(v), 4) for v in g])
      [0.1966, -0.1966]
    """
    return in_base(_formulas.binary_entropy_grad(_prepare_logits(logits)), base)
