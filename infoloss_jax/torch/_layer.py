"""PyTorch-named losses on JAX arrays; the public face and its conventions are in ``__init__``.

Where torch raises on a value, these give NaN for the element or example (JAX cannot raise on
values inside ``jit``): a class index outside ``[0, C)``, and a ``binary_cross_entropy`` input
or target outside [0, 1]. ``infoloss_jax.checked`` turns each of them into a ValueError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..base._caching import cached_eager
from ..base._typing import ArrayLike
from ..base._validation import (
    as_float_array,
    as_integer_array,
    check_broadcastable,
    check_has_classes,
    check_reduction,
    check_same_shape,
    describe,
    equals_index,
    poison_unless,
    scheduled_number,
    upcast,
)
from ..core import _formulas
from ..core._cross_entropy import (
    classes_last,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
)
from ..core._log_partition import stable_log_softmax
from ..core._reductions import loss_sum_and_count
from ..engine._loss_spec import static_ignore_index
from ..engine._tiles import pick_label

_REDUCTIONS = ("none", "mean", "sum")  # kl_div also takes "batchmean", as the core losses do
# torch's binary_cross_entropy backward divides by max(p * (1 - p), EPSILON), with EPSILON the
# float32 constant 1e-12.
_BCE_GRAD_EPSILON = float(np.float32(1e-12))
_LOG_CLAMP = -100.0


# --- Validation and layout. -----------------------------------------------------------------


def _class_axis(x: jax.Array) -> tuple[int, ...]:
    """torch's class dimension: 0 for unbatched ``[C]`` input, else 1."""
    return (0 if x.ndim == 1 else 1,)


def _check_class_input(input: jax.Array) -> int:
    """The number of classes of ``input``; ValueError for a scalar or zero classes."""
    if input.ndim < 1:
        raise ValueError(
            "`input` must have the classes in dimension 1: shape [C], [N, C] or "
            f"[N, C, d1, ...]; got a scalar {describe(input)}."
        )
    return check_has_classes(input, _class_axis(input), "input")


def _check_index_target(input: jax.Array, target: jax.Array) -> None:
    expected = () if input.ndim == 1 else (input.shape[0], *input.shape[2:])
    if target.shape != expected:
        raise ValueError(
            f"`target` holds class indices, so it must have `input`'s shape without the class "
            f"dimension 1, {list(expected)} for `input` {describe(input)}; got "
            f"{describe(target)}."
        )


def _check_weight(weight, num_classes: int) -> jax.Array | None:
    if weight is None:
        return None
    weight = as_float_array(weight, "weight")
    if weight.shape != (num_classes,):
        got = f"length {weight.shape[0]}" if weight.ndim == 1 else f"shape {list(weight.shape)}"
        raise ValueError(
            f"`weight` must hold one weight per class: length {num_classes} for the "
            f"{num_classes} classes of `input`; got {got} ({describe(weight)})."
        )
    return weight


def _classes_last(x: jax.Array) -> jax.Array:
    """Moves torch's class dimension 1 to the end, where the core functions expect it."""
    return classes_last(x, _class_axis(x))


def _target_weights(target, weight, kept, num_classes: int, dtype) -> jax.Array:
    """``weight[target]`` (1 without weights) where ``kept``, 0 elsewhere."""
    safe_target = jnp.clip(target, 0, num_classes - 1)
    picked = jnp.ones(target.shape, dtype) if weight is None else weight.astype(dtype)[safe_target]
    return jnp.where(kept, picked, 0.0)


def _reduce(loss: jax.Array, reduction: str, weights: jax.Array | None = None) -> jax.Array:
    """torch's reductions: ``"mean"`` divides by the summed ``weights`` (by the number of
    elements without them), 0 / 0 = NaN as in torch (an empty batch, every target ignored, or
    class weights that sum to 0); an empty ``"sum"`` is 0."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    if weights is None:
        return jnp.sum(loss) / jnp.asarray(loss.size, loss.dtype)
    total, count = loss_sum_and_count(loss, weights=weights)
    return total / count


def _torch_log_softmax(logits: jax.Array) -> jax.Array:
    """log_softmax over the last axis, NaN for a row whose logits are all -inf (as in torch)."""
    normalized = stable_log_softmax(logits, (logits.ndim - 1,))
    return jnp.where(normalized.nonempty, normalized.log_probs, jnp.nan)


# --- Cross-entropy and negative log-likelihood. -----------------------------------------------


@cached_eager("ignore_index", "reduction")
def cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float | jax.Array = 0.0,
) -> jax.Array:
    r"""``torch.nn.functional.cross_entropy``: softmax cross-entropy with classes in dimension 1.

    With :math:`\log q = \operatorname{log\_softmax}(x)` over the :math:`C` classes, per
    example:

    * index targets :math:`y` (an integer array), label smoothing :math:`\varepsilon`, class
      weights :math:`w` (all 1 if omitted):

      .. math::
          \ell_i = (1-\varepsilon)\, w_{y_i} (-\log q_{i,y_i})
                   + \frac{\varepsilon}{C} \sum_k w_k (-\log q_{i,k}),

      0 where :math:`y_i` is ``ignore_index``; ``"mean"`` divides :math:`\sum_i \ell_i` by
      :math:`\sum_i w_{y_i}` over the non-ignored examples;
    * probability targets :math:`p` (a float array of ``input``'s shape), smoothed to
      :math:`\tilde p = (1-\varepsilon) p + \varepsilon / C`:

      .. math::
          \ell_i = -\sum_k w_k \tilde p_{i,k} \log q_{i,k},

      and ``"mean"`` divides by the number of examples, whatever the weights.

    This is the cross-entropy H(target, softmax(input)) = H(target) + KL(target || softmax(input)).

    Args:
      input: logits of shape ``[C]``, ``[N, C]`` or ``[N, C, d1, ...]``.
      target: class indices of shape ``[]``, ``[N]`` or ``[N, d1, ...]`` (integer dtype), or
        class probabilities of ``input``'s shape (floating dtype).
      weight: optional per-class weights, shape ``[C]``.
      ignore_index: index targets equal to it contribute 0 loss, 0 gradient and 0 weight.
        Unused for probability targets.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      label_smoothing: :math:`\varepsilon` in [0, 1]; it may be traced (a traced value
        outside the range gives NaN).

    Returns:
      The loss: per example (``input``'s shape without dimension 1) for ``"none"``, else a
        scalar. Half-precision inputs give float32.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import torch as F
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
      >>> print(round(float(F.cross_entropy(logits, jnp.array([0, 1]))), 6))
      0.396378
      >>> print(round(float(F.cross_entropy(logits, jnp.array([0, -100]))), 6))  # ignored
      0.241311

    References:
      ``torch.nn.functional.cross_entropy``; Szegedy et al., "Rethinking the Inception
      Architecture for Computer Vision", 2016 (label smoothing).
    """
    check_reduction(reduction, _REDUCTIONS)
    static_ignore_index(ignore_index)  # a static int (or None: nothing ignored)
    label_smoothing, smoothing_ok = scheduled_number(
        label_smoothing, "label_smoothing", low=0.0, high=1.0
    )
    input = as_float_array(input, "input")
    weight = _check_weight(weight, _check_class_input(input))
    target = jnp.asarray(target)
    logits = _classes_last(upcast(input))
    if jnp.issubdtype(target.dtype, jnp.floating):
        loss = _cross_entropy_probs(logits, target, input, weight, reduction, label_smoothing)
    elif jnp.issubdtype(target.dtype, jnp.integer):
        _check_index_target(input, target)
        loss = _cross_entropy_indices(
            logits, target, weight, ignore_index, reduction, label_smoothing
        )
    else:
        raise TypeError(
            "`target` must hold class indices (an integer array) or class probabilities (a "
            f"floating-point array of `input`'s shape); got {describe(target)}."
        )
    return poison_unless(loss, smoothing_ok)


def _cross_entropy_indices(logits, target, weight, ignore_index, reduction, label_smoothing):
    """Index targets: the core negative log-likelihood plus torch's smoothing term.

    torch spreads the smoothing mass over all C classes, excluded ones included (a ``-inf``
    logit with smoothing gives ``inf``), and divides the ``"mean"`` by the summed class weight
    of the non-ignored targets, 0 / 0 giving NaN.
    """
    target = as_integer_array(target, "target")
    nll = softmax_cross_entropy_with_integer_labels(
        logits, target, class_weights=weight, ignore_index=ignore_index
    )
    ignored = equals_index(target, ignore_index)
    log_q = _torch_log_softmax(logits)
    nll = jnp.where(ignored, 0.0, jnp.where(jnp.isnan(log_q[..., 0]), jnp.nan, nll))
    num_classes = logits.shape[-1]
    if isinstance(label_smoothing, float) and label_smoothing == 0.0:
        loss = nll
    else:
        class_weight = 1.0 if weight is None else weight.astype(log_q.dtype)
        smooth = -jnp.sum(log_q * class_weight, axis=-1)
        smooth = jnp.where(ignored, 0.0, smooth)
        loss = (1.0 - label_smoothing) * nll + (label_smoothing / num_classes) * smooth
    return _reduce(
        loss, reduction, _target_weights(target, weight, ~ignored, num_classes, loss.dtype)
    )


def _cross_entropy_probs(logits, target, input, weight, reduction, label_smoothing):
    """Probability targets: torch's -sum_k w_k p_k log q_k on the core log-softmax.

    As in torch, a zero target at a ``-inf`` logit gives ``0 * -inf = NaN``, and a row of only
    ``-inf`` logits is NaN.
    """
    check_same_shape(input, "input", target, "target")
    labels = _classes_last(upcast(target, jnp.result_type(logits.dtype, target.dtype, jnp.float32)))
    if not (isinstance(label_smoothing, float) and label_smoothing == 0.0):
        labels = (1.0 - label_smoothing) * labels + label_smoothing / logits.shape[-1]
    if weight is not None:
        labels = labels * weight.astype(labels.dtype)
    loss = -jnp.sum(labels * _torch_log_softmax(logits), axis=-1)
    return _reduce(loss, reduction)


@cached_eager("ignore_index", "reduction")
def nll_loss(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.nll_loss``: the negative log-likelihood of log-probabilities.

    .. math::
        \ell_i = -w_{y_i}\, x_{i, y_i}

    where ``input`` :math:`x` holds log-probabilities (usually ``log_softmax`` output;
    :func:`infoloss_jax.checked` catches probabilities passed instead) with classes in
    dimension 1, and :math:`w` is the class
    weight (1 if omitted). Examples whose target is ``ignore_index`` give 0. ``"mean"`` divides
    by :math:`\sum_i w_{y_i}` over the non-ignored examples (NaN if that sum is 0, as in torch).
    ``cross_entropy(x, y)`` equals ``nll_loss(log_softmax(x, axis=1), y)``.

    Args:
      input: log-probabilities of shape ``[C]``, ``[N, C]`` or ``[N, C, d1, ...]``.
      target: class indices of shape ``[]``, ``[N]`` or ``[N, d1, ...]``.
      weight: optional per-class weights, shape ``[C]``.
      ignore_index: targets equal to it contribute nothing.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
      The per-example losses for ``"none"``, else a scalar. An index outside ``[0, C)`` that is
        not ``ignore_index`` makes its example NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import torch as F
      >>> log_probs = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
      >>> print(round(float(F.nll_loss(log_probs, jnp.array([0, 1]))), 6))
      0.458145

    References:
      ``torch.nn.functional.nll_loss``.
    """
    check_reduction(reduction, _REDUCTIONS)
    input = as_float_array(input, "input")
    weight = _check_weight(weight, _check_class_input(input))
    target = jnp.asarray(target)
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise TypeError(
            f"`target` must hold class indices (an integer array); got {describe(target)}."
        )
    _check_index_target(input, target)
    static_ignore_index(ignore_index)  # a static int (or None: nothing ignored)
    target = as_integer_array(target, "target")
    log_probs = upcast(_classes_last(input))
    num_classes = log_probs.shape[-1]
    kept = ~equals_index(target, ignore_index)
    in_range = (target >= 0) & (target < num_classes)
    picked = pick_label(log_probs, target)  # the core pick; out-of-range rows masked below
    example_weight = _target_weights(target, weight, kept, num_classes, picked.dtype)
    loss = jnp.where(kept, -example_weight * picked, 0.0)
    loss = jnp.where(kept & ~in_range, jnp.nan, loss)
    return _reduce(loss, reduction, example_weight)


# --- KL divergence. ----------------------------------------------------------------------------


@cached_eager("reduction", "log_target")
def kl_div(
    input: ArrayLike,
    target: ArrayLike,
    reduction: str = "mean",
    log_target: bool = False,
) -> jax.Array:
    r"""``torch.nn.functional.kl_div``: pointwise KL(target || input) with log-probability input.

    ``input`` must hold **log**-probabilities :math:`\log q`; ``target`` holds probabilities
    :math:`p` (or log-probabilities :math:`\log p` with ``log_target=True``). Elementwise:

    .. math::
        \ell = p\,(\log p - \log q), \qquad \text{with } \ell = 0 \text{ where } p = 0,

    so summing over the classes gives KL(target || input) = KL(p || q). The reductions:

    * ``"none"``: the elementwise terms, broadcast shape of ``input`` and ``target``;
    * ``"sum"``: the sum of all terms;
    * ``"batchmean"``: the sum divided by ``input.shape[0]``, the batch KL mean;
    * ``"mean"`` (torch's default): the mean over **all elements**, i.e. the batch KL divided
      also by the number of classes. It is not a KL; prefer ``"batchmean"``.

    Passing probabilities as ``input`` (``kl_div(softmax(x), softmax(y))``) is a common mistake
    that gives a negative number, not a divergence; :func:`infoloss_jax.forward_kl` states the
    direction and takes logits.

    Args:
      input: log-probabilities :math:`\log q`.
      target: probabilities :math:`p`, or :math:`\log p` when ``log_target`` is True;
        broadcastable with ``input``.
      reduction: ``"none"``, ``"mean"``, ``"sum"`` or ``"batchmean"``.
      log_target: whether ``target`` is given in log space.

    Returns:
      The elementwise terms for ``"none"``, else a scalar.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import torch as F
      >>> p = jax.nn.softmax(jnp.array([0.2, 0.8]))
      >>> q = jax.nn.softmax(jnp.array([0.5, 0.5]))
      >>> print(round(float(F.kl_div(jnp.log(q), p, reduction="sum")), 6))  # KL(p || q)
      0.043053
      >>> print(round(float(F.kl_div(q, p, reduction="sum")), 6))  # misuse: q is not log q
      -1.150094

    References:
      ``torch.nn.functional.kl_div``; Kullback and Leibler, "On Information and Sufficiency",
      1951.
    """
    check_reduction(reduction)
    input = as_float_array(input, "input")
    target = as_float_array(target, "target")
    try:
        shape = jnp.broadcast_shapes(input.shape, target.shape)
    except ValueError:
        raise ValueError(
            f"`input` {describe(input)} and `target` {describe(target)} must be broadcastable."
        ) from None
    dtype = jnp.result_type(input.dtype, target.dtype, jnp.float32)
    log_q = jnp.broadcast_to(input.astype(dtype), shape)
    target = jnp.broadcast_to(target.astype(dtype), shape)
    # The core KL terms: 0 where the target probability is 0 (torch: NaN where that meets a
    # -inf input), NaN for a negative or NaN target.
    terms = (
        _formulas.kl_terms_of_logs(target, log_q)
        if log_target
        else _formulas.kl_terms_of_probs(target, log_q)
    )
    if reduction == "batchmean":
        # torch divides by input.size(0), the *input's* first dimension (0 / 0 = NaN).
        return jnp.sum(terms) / jnp.asarray(input.shape[0] if input.ndim else 1, terms.dtype)
    return _reduce(terms, reduction)


# --- Binary cross-entropy. ---------------------------------------------------------------------


@cached_eager("reduction")
def binary_cross_entropy_with_logits(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: str = "mean",
    pos_weight: ArrayLike | None = None,
) -> jax.Array:
    r"""``torch.nn.functional.binary_cross_entropy_with_logits``: sigmoid cross-entropy.

    With :math:`\sigma` the logistic sigmoid, elementwise:

    .. math::
        \ell = -w \big[\, p_w\, y \log \sigma(x) + (1 - y) \log(1 - \sigma(x)) \big],

    computed stably from the logits :math:`x`. :math:`w` is ``weight`` and :math:`p_w` is
    ``pos_weight`` (both broadcast against ``input``; ``pos_weight`` usually has one entry per
    class, along the last dimension). Targets :math:`y` may be soft, in [0, 1]. ``"mean"`` is the
    mean over all elements, whatever the weights.

    Args:
      input: logits, any shape.
      target: targets of ``input``'s shape.
      weight: optional rescaling weight broadcastable to ``input``.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      pos_weight: optional weight of the positive term, broadcastable to ``input``.

    Returns:
      The elementwise losses for ``"none"``, else a scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import torch as F
      >>> x = jnp.array([[1.0, -2.0], [0.5, 3.0]])
      >>> y = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> print(round(float(F.binary_cross_entropy_with_logits(x, y)), 6))
      0.365714

    References:
      ``torch.nn.functional.binary_cross_entropy_with_logits``.
    """
    check_reduction(reduction, _REDUCTIONS)
    input = as_float_array(input, "input")
    target = as_float_array(target, "target")
    check_same_shape(input, "input", target, "target")
    if pos_weight is not None:
        pos_weight = as_float_array(pos_weight, "pos_weight")
        check_broadcastable(pos_weight, "pos_weight", input.shape, "input")
    loss = sigmoid_binary_cross_entropy(input, target, pos_weight=pos_weight)
    return _reduce(_apply_weight(loss, weight, input), reduction)


def _apply_weight(loss: jax.Array, weight, input: jax.Array) -> jax.Array:
    if weight is None:
        return loss
    weight = as_float_array(weight, "weight")
    check_broadcastable(weight, "weight", input.shape, "input")
    return loss * weight.astype(loss.dtype)


@cached_eager("reduction")
def binary_cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.binary_cross_entropy``: cross-entropy of probabilities, clamped.

    Elementwise, with probabilities :math:`p \in [0, 1]` and targets :math:`y`:

    .. math::
        \ell = -w \big[\, y \max(\log p, -100) + (1 - y) \max(\log(1 - p), -100) \big].

    The clamp at -100 is torch's: it keeps the loss finite (at most 100 per element) when a
    probability is exactly 0 or 1. The gradient with respect to ``input`` is torch's
    :math:`w (p - y) / \max(p (1 - p), 10^{-12})`, which equals the derivative of the formula
    above for :math:`0 < p < 1` and stays finite (and points the right way) at 0 and 1. The
    gradient with respect to ``target`` is the derivative of the clamped formula,
    :math:`w\,(\max(\log(1-p), -100) - \max(\log p, -100))`; at :math:`p \in \{0, 1\}` torch
    gives :math:`\pm\infty` there instead of :math:`\pm 100 w`. Prefer
    :func:`binary_cross_entropy_with_logits`, which needs no clamp. Probabilities or targets
    outside [0, 1] give NaN (torch raises).

    Args:
      input: probabilities, any shape.
      target: targets of ``input``'s shape.
      weight: optional rescaling weight broadcastable to ``input``.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
      The elementwise losses for ``"none"``, else a scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import torch as F
      >>> p = jnp.array([0.0, 0.5, 1.0])
      >>> y = jnp.array([1.0, 1.0, 1.0])
      >>> print(round(float(F.binary_cross_entropy(p, y, reduction="sum")), 4))  # 100 + log 2
      100.6931

    References:
      ``torch.nn.functional.binary_cross_entropy``.
    """
    check_reduction(reduction, _REDUCTIONS)
    input = as_float_array(input, "input")
    target = as_float_array(target, "target")
    check_same_shape(input, "input", target, "target")
    dtype = jnp.result_type(input.dtype, target.dtype, jnp.float32)
    loss = _clamped_binary_cross_entropy(input.astype(dtype), target.astype(dtype))
    outside = (target < 0) | (target > 1) | (input < 0) | (input > 1)
    loss = jnp.where(outside, jnp.nan, loss)  # torch raises; JAX cannot raise on values
    return _reduce(_apply_weight(loss, weight, input), reduction)


def _clamped_log(x: jax.Array) -> jax.Array:
    """max(log x, -100); log 0 is never evaluated (no 0 * inf in derivatives); NaN for x < 0."""
    zero = x == 0
    return jnp.where(zero, _LOG_CLAMP, jnp.maximum(jnp.log(jnp.where(zero, 1.0, x)), _LOG_CLAMP))


@jax.custom_jvp
def _clamped_binary_cross_entropy(p: jax.Array, y: jax.Array) -> jax.Array:
    return -(y * _clamped_log(p) + (1.0 - y) * _clamped_log(1.0 - p))


@_clamped_binary_cross_entropy.defjvp
def _clamped_binary_cross_entropy_jvp(primals, tangents):
    p, y = primals
    p_dot, y_dot = tangents
    d_p = (p - y) / jnp.maximum(p * (1.0 - p), _BCE_GRAD_EPSILON)
    d_y = _clamped_log(1.0 - p) - _clamped_log(p)
    return _clamped_binary_cross_entropy(p, y), d_p * p_dot + d_y * y_dot
