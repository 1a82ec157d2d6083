"""KL divergences (optax-compatible and from logits) and the generalized Jensen-Shannon."""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ..base._caching import cached_eager
from ..base._typing import ArrayLike
from ..base._validation import (
    Axis,
    all_ok,
    as_float_array,
    as_where,
    check_broadcastable,
    check_has_classes,
    check_same_shape,
    normalize_axis,
    poison_unless,
    scheduled_number,
)
from . import _formulas
from ._log_partition import (
    drop_axes,
    exclude,
    stable_log_softmax,
)


# ----------------------------------------------------------------------------- optax-style
def _paired_inputs(first, first_name, second, second_name, axis, where):
    """Validates two float arrays, broadcasts them together, and returns them upcast."""
    first = as_float_array(first, first_name)
    second = as_float_array(second, second_name)
    check_broadcastable(second, second_name, first.shape, first_name)
    dtype = jnp.result_type(first.dtype, second.dtype, jnp.float32)
    second = jnp.broadcast_to(second, first.shape).astype(dtype)
    axes = normalize_axis(axis, first.ndim)
    check_has_classes(first, axes, first_name)
    mask = as_where(where, first.shape, first_name)
    return first.astype(dtype), second, axes, mask


def _masked_sum(terms, axes, mask):
    if mask is not None:
        terms = jnp.where(mask, terms, 0.0)
    return jnp.sum(terms, axis=axes)


def kl_terms(log_predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """t (log t - log q) per element, the term behind every KL of probability targets.

    0 where t = 0 (also where log q = -inf, in the value and both derivatives); NaN where t is
    negative or NaN, or where log q is NaN. Nothing NaN is ever dropped as a zero.
    """
    zero = targets == 0  # the gradient w.r.t. a zero target is taken as 0 (not -inf)
    safe_targets = jnp.where(zero, 1.0, targets)
    safe_log_predictions = jnp.where(zero, 0.0, log_predictions)
    terms = targets * (jnp.log(safe_targets) - safe_log_predictions)  # NaN for t < 0 or NaN
    return jnp.where(zero, _formulas.nan_or_zero(log_predictions), terms)


@cached_eager("axis")
def kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""KL divergence from the target distribution to the predicted one: KL(targets || predictions).

    .. math::
        \mathrm{KL}(p \,\|\, q) = \sum_k p_k (\log p_k - \log q_k)

    with :math:`p` = ``targets`` (probabilities) and :math:`\log q` = ``log_predictions``
    (**log**-probabilities). Same name, argument order and meaning as
    ``optax.losses.kl_divergence`` (and as ``torch.nn.functional.kl_div(input=log q,
    target=p)``), but terms with :math:`p_k = 0` are exactly 0 in the value *and* in both
    gradients, also where :math:`\log q_k = -\infty` (optax PR #1786 is the NaN this avoids).
    The gradient w.r.t. a zero target is taken as 0 rather than the one-sided
    :math:`-\infty`.

    Passing probabilities as ``log_predictions`` is the classic mistake (it gives a negative
    "KL"); wrap the call in :func:`infoloss_jax.checked` to have it caught. A negative target
    makes its row NaN, and so does a NaN target or log-prediction: nothing NaN is ever dropped
    as a zero term.

    Args:
      log_predictions: log-probabilities of the model's distribution q.
      targets: probabilities of the target distribution p, broadcastable to
        ``log_predictions``.
      axis: the class axis or axes (None for all).
      where: optional boolean mask; False drops a term from the sum.

    Returns:
      KL(targets || predictions) per example, in at least float32.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> log_q = jax.nn.log_softmax(jnp.array([0.5, 0.5]))
      >>> p = jax.nn.softmax(jnp.array([0.2, 0.8]))
      >>> print(round(float(il.kl_divergence(log_q, p)), 6))
      0.043053

    References:
      Kullback and Leibler, "On Information and Sufficiency", 1951.
    """
    log_predictions, targets, axes, mask = _paired_inputs(
        log_predictions, "log_predictions", targets, "targets", axis, where
    )
    return _masked_sum(kl_terms(log_predictions, targets), axes, mask)


@cached_eager("axis")
def kl_divergence_with_log_targets(
    log_predictions: ArrayLike,
    log_targets: ArrayLike,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""KL(targets || predictions) with both distributions given as log-probabilities.

    .. math::
        \mathrm{KL}(p \,\|\, q) = \sum_k e^{\log p_k} (\log p_k - \log q_k)

    ``-inf`` log-targets (zero probabilities) contribute exactly 0, with finite gradients for
    both arguments. Matches ``optax.losses.kl_divergence_with_log_targets`` and
    ``torch.nn.functional.kl_div(log q, log p, log_target=True)``.

    Args:
      log_predictions: log-probabilities of the model's distribution q.
      log_targets: log-probabilities of the target distribution p, broadcastable.
      axis: the class axis or axes (None for all).
      where: optional boolean mask; False drops a term from the sum.

    Returns:
      KL(targets || predictions) per example, in at least float32.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> log_q = jax.nn.log_softmax(jnp.array([0.5, 0.5]))
      >>> log_p = jax.nn.log_softmax(jnp.array([0.2, 0.8]))
      >>> print(round(float(il.kl_divergence_with_log_targets(log_q, log_p)), 6))
      0.043053
    """
    log_predictions, log_targets, axes, mask = _paired_inputs(
        log_predictions, "log_predictions", log_targets, "log_targets", axis, where
    )
    return _masked_sum(_formulas.kl_terms(log_targets, log_predictions), axes, mask)


@cached_eager("axis")
def generalized_kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Generalized KL divergence between unnormalized non-negative measures, targets first.

    .. math::
        D(p \,\|\, q) = \sum_k \big(p_k (\log p_k - \log q_k) - p_k + q_k\big)

    the Bregman divergence of :math:`x \log x - x`; it equals KL(p || q) when both sum to 1.
    Same as ``optax.losses.generalized_kl_divergence``, with the safe zero-target handling of
    :func:`kl_divergence`.

    Args:
      log_predictions: log of the predicted measure q.
      targets: the target measure p (non-negative), broadcastable.
      axis: the class axis or axes (None for all).
      where: optional boolean mask; False drops a term from the sum.

    Returns:
      The generalized divergence per example, in at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> print(round(float(il.generalized_kl_divergence(jnp.log(jnp.array([2.0])),
      ...                                                 jnp.array([1.0]))), 6))
      0.306853

    References:
      Boyd and Vandenberghe, "Convex Optimization", 2004, p. 90.
    """
    log_predictions, targets, axes, mask = _paired_inputs(
        log_predictions, "log_predictions", targets, "targets", axis, where
    )
    terms = kl_terms(log_predictions, targets) - targets + jnp.exp(log_predictions)
    return _masked_sum(terms, axes, mask)


# ----------------------------------------------------------------------------- from logits
def _scaled_logit_pair(logits, target_logits, temperature, axis, where):
    """Validates both logit arrays, divides by the temperature and applies ``where``.

    Returns ``(model, target, axes, ok)``: ``ok`` is None for a static temperature (checked
    now) and a traced flag for a traced one, to be passed to :func:`poison_unless`.
    """
    temperature, ok = scheduled_number(temperature, "temperature", low=0.0, low_open=True)
    logits = as_float_array(logits, "logits")
    target_logits = as_float_array(target_logits, "target_logits")
    check_same_shape(logits, "logits", target_logits, "target_logits")
    model, target, axes, mask = _paired_inputs(
        logits, "logits", target_logits, "target_logits", axis, where
    )
    if ok is not None:  # a traced temperature: divide by a safe value, poison the result after
        temperature = jnp.where(ok, temperature, 1.0).astype(model.dtype)
    if ok is not None or temperature != 1.0:
        model, target = model / temperature, target / temperature
    return exclude(model, mask), exclude(target, mask), axes, ok


def _log_softmax_pair(model, target, axes):
    return stable_log_softmax(model, axes).log_probs, stable_log_softmax(target, axes).log_probs


def _pair_tangent(grads, tangents, axes):
    """sum(grad . tangent) over both arguments, skipping symbolic-zero tangents (no work for an
    argument that is not differentiated, such as a fixed teacher)."""
    terms = [g * t for g, t in zip(grads, tangents, strict=True) if not isinstance(t, SymbolicZero)]
    if not terms:
        return jnp.zeros_like(_formulas.sum_over(grads[0], axes))
    return _formulas.sum_over(functools.reduce(operator.add, terms), axes)


def _kl_of_logits(first, second, axes):
    """KL(softmax(first) || softmax(second)), keepdims."""
    exact, plain = _formulas.kl_value, _formulas.plain_kl_value
    return _formulas.of_logits(exact, plain, (first, second), axes)


def _directed_kl(reverse: bool, grads_given_value):
    """KL(target || model) (``reverse=False``) or KL(model || target), with the closed-form
    JVP of ``grads_given_value``; the directions differ only in argument order."""

    @functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
    def kl(model, target, axes):
        return _kl_of_logits(model, target, axes) if reverse else _kl_of_logits(target, model, axes)

    @functools.partial(kl.defjvp, symbolic_zeros=True)
    def _jvp(axes, primals, tangents):
        value = kl(primals[0], primals[1], axes)
        grads = grads_given_value(*_log_softmax_pair(primals[0], primals[1], axes), value)
        return value, _pair_tangent(grads, tangents, axes)

    return kl


_forward_kl = _directed_kl(False, _formulas.forward_kl_grads_given_value)
_reverse_kl = _directed_kl(True, _formulas.reverse_kl_grads_given_value)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _jensen_shannon(model, target, beta, axes):
    log_q, log_p = _log_softmax_pair(model, target, axes)
    return _formulas.jensen_shannon_value(log_q, log_p, beta, axes)


@functools.partial(_jensen_shannon.defjvp, symbolic_zeros=True)
def _jensen_shannon_jvp(axes, primals, tangents):
    model, target, beta = primals
    log_q, log_p = _log_softmax_pair(model, target, axes)
    grads = _formulas.jensen_shannon_grads(log_q, log_p, beta, axes)
    log_m = _formulas.log_mixture(log_q, log_p, beta)
    kl_p, kl_q = _formulas.kl_value(log_p, log_m, axes), _formulas.kl_value(log_q, log_m, axes)
    value = beta * kl_p + (1.0 - beta) * kl_q
    value_dot = _pair_tangent(grads, tangents[:2], axes)
    if not isinstance(tangents[2], SymbolicZero):
        # d/d beta: KL(P || M) - KL(Q || M) (the terms from dM/d beta sum to zero).
        value_dot = value_dot + (kl_p - kl_q) * tangents[2]
    return value, value_dot


# The divergence for beta = 0 (forward KL), 0 < beta < 1 and beta = 1 (reverse KL), indexed by
# (beta > 0) + (beta >= 1): chosen in Python for a static beta, by lax.switch for a traced one.
_BETA_BRANCHES = (
    lambda model, target, beta, axes: _forward_kl(model, target, axes),
    lambda model, target, beta, axes: _jensen_shannon(model, target, beta, axes),
    lambda model, target, beta, axes: _reverse_kl(model, target, axes),
)


def _jensen_shannon_any_beta(model, target, beta, axes):
    """The divergence for a traced beta: one of the three branches, chosen at run time."""
    index = (beta > 0).astype(jnp.int32) + (beta >= 1).astype(jnp.int32)
    branches = [functools.partial(branch, axes=axes) for branch in _BETA_BRANCHES]
    safe_beta = jnp.clip(beta, 0.0, 1.0).astype(model.dtype)
    return lax.switch(index, branches, model, target, safe_beta)


@cached_eager("axis")
def forward_kl(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Forward KL from the target (teacher) to the model (student): KL(target || model).

    .. math::
        \mathrm{KL}(p \,\|\, q) = \sum_k p_k (\log p_k - \log q_k), \quad
        p = \mathrm{softmax}(t / T), \; q = \mathrm{softmax}(z / T)

    The mean-seeking (mass-covering) direction of standard knowledge distillation: the model
    is penalized wherever the target has mass it misses. The temperature divides both sets of
    logits; no :math:`T^2` factor is applied (Hinton et al. multiply by it by hand). Closed-form
    derivatives (``jax.custom_jvp``), before the :math:`1/T` chain factor:

    .. math::
        \frac{\partial}{\partial z} = q - p, \qquad
        \frac{\partial}{\partial t} = p \odot (\log p - \log q - \mathrm{KL})

    Args:
      logits: the model's logits z.
      target_logits: the target's logits t, same shape (detach them with
        ``jax.lax.stop_gradient`` if the target must not be trained).
      temperature: positive temperature T; it may be traced (scheduled), and a traced value
        that is not positive and finite makes the result NaN.
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``; False excludes a class from
        both distributions.

    Returns:
      KL(softmax(target/T) || softmax(logits/T)) per example, in at least float32. Where the
        target keeps a class the model excludes (a ``-inf`` logit) the value is ``+inf``; its
        gradient w.r.t. ``logits`` is still the exact :math:`q - p`, and w.r.t.
        ``target_logits`` it is 0 on that example. A NaN logit makes its example NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> kl = il.forward_kl(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8]))
      >>> print(round(float(kl), 6))
      0.043053

    References:
      Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    model, target, axes, ok = _scaled_logit_pair(logits, target_logits, temperature, axis, where)
    return poison_unless(drop_axes(_forward_kl(model, target, axes), axes), ok)


@cached_eager("axis")
def reverse_kl(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Reverse KL from the model (student) to the target (teacher): KL(model || target).

    .. math::
        \mathrm{KL}(q \,\|\, p) = \sum_k q_k (\log q_k - \log p_k), \quad
        q = \mathrm{softmax}(z / T), \; p = \mathrm{softmax}(t / T)

    The mode-seeking direction (used by MiniLLM and on-policy distillation): the model is
    penalized for putting mass where the target has little. The temperature divides both
    sets of logits; no :math:`T^2` factor is applied. Closed-form derivatives:

    .. math::
        \frac{\partial}{\partial z} = q \odot (\log q - \log p - \mathrm{KL}), \qquad
        \frac{\partial}{\partial t} = p - q

    Args:
      logits: the model's logits z.
      target_logits: the target's logits t, same shape.
      temperature: positive temperature T; it may be traced (a traced value that is not
        positive and finite makes the result NaN).
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``.

    Returns:
      KL(softmax(logits/T) || softmax(target/T)) per example, in at least float32. Where the
        model keeps a class the target excludes the value is ``+inf``; its gradient w.r.t.
        ``target_logits`` is still the exact :math:`p - q`, and w.r.t. ``logits`` it is 0 on that
        example. A NaN logit makes its example NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> kl = il.reverse_kl(jnp.array([0.2, 0.8]), jnp.array([0.5, 0.5]))
      >>> print(round(float(kl), 6))
      0.043053

    References:
      Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", 2024.
    """
    model, target, axes, ok = _scaled_logit_pair(logits, target_logits, temperature, axis, where)
    return poison_unless(drop_axes(_reverse_kl(model, target, axes), axes), ok)


@cached_eager("axis")
def jensen_shannon(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    beta: float | jax.Array = 0.5,
    temperature: float = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Generalized Jensen-Shannon divergence between the target P and the model Q.

    .. math::
        \mathrm{JSD}_\beta(P, Q) = \beta\, \mathrm{KL}(P \,\|\, M) + (1-\beta)\,
        \mathrm{KL}(Q \,\|\, M), \qquad M = \beta P + (1-\beta) Q

    with :math:`P = \mathrm{softmax}(t/T)` (target) and :math:`Q = \mathrm{softmax}(z/T)`
    (model): the convention of TRL's GKD trainer and Liger-Kernel's JSD. ``beta=0.5`` is the
    symmetric JSD, bounded by :math:`\log 2`.

    **Discontinuity at the end points.** As :math:`\beta \to 0` or :math:`1` the formula
    tends to 0, but like those libraries ``beta=0`` returns the forward KL(P || Q) and
    ``beta=1`` the reverse KL(Q || P), also when ``beta`` is traced (it may be scheduled: a
    traced value outside [0, 1] gives NaN). No :math:`T^2`
    factor is applied. Closed-form derivatives for :math:`0 < \beta < 1`:

    .. math::
        \frac{\partial}{\partial z} = (1-\beta)\, Q \odot (\log Q - \log M - \mathrm{KL}(Q\|M)),
        \quad
        \frac{\partial}{\partial t} = \beta\, P \odot (\log P - \log M - \mathrm{KL}(P\|M))

    Args:
      logits: the model's logits z.
      target_logits: the target's logits t, same shape.
      beta: mixture weight of the target, in [0, 1]; it may be traced.
      temperature: positive temperature T; it may be traced.
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``.

    Returns:
      The divergence per example, in at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> jsd = il.jensen_shannon(jnp.array([0.0, -jnp.inf]), jnp.array([-jnp.inf, 0.0]))
      >>> print(round(float(jsd), 6))  # disjoint supports: log 2
      0.693147

    References:
      Lin, "Divergence measures based on the Shannon entropy", 1991; Agarwal et al.,
      "On-Policy Distillation of Language Models (GKD)", 2024.
    """
    beta, beta_ok = scheduled_number(beta, "beta", low=0.0, high=1.0)
    model, target, axes, ok = _scaled_logit_pair(logits, target_logits, temperature, axis, where)
    if beta_ok is not None:
        value = _jensen_shannon_any_beta(model, target, beta, axes)
    else:
        value = _BETA_BRANCHES[(beta > 0) + (beta >= 1)](model, target, beta, axes)
    return poison_unless(drop_axes(value, axes), all_ok(ok, beta_ok))
