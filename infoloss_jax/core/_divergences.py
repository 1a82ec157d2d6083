"""KL divergences (optax-compatible and from logits) and the generalized Jensen-Shannon.

The divergences from logits share one runner, :func:`logit_divergence`: it validates the two
logit arrays, the temperature and the divergence's own coefficient, and evaluates a declared
:class:`~infoloss_jax.engine._pairs.Divergence` on whole rows, with its closed-form gradient as
the ``jax.custom_jvp`` rule. A new divergence needs nothing here: see "Adding a loss" in
``docs/development.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ..base._caching import cached_eager
from ..base._typing import ArrayLike, Reduction
from ..base._validation import (
    Axis,
    all_ok,
    as_float_array,
    as_where,
    check_broadcastable,
    check_has_classes,
    check_reduction,
    check_same_shape,
    normalize_axis,
    poison_unless,
    scheduled_number,
)
from ..engine import _pairs
from ..engine._loss_spec import divergence_coefficient, loss_named
from ..engine._tiles import shifted
from . import _formulas
from ._cross_entropy import classes_last
from ._log_partition import exclude
from ._reductions import reduce_loss


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


@cached_eager("axis", "reduction")
def kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
    *,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""KL divergence of the predictions from the targets: KL(targets || predictions).

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
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` or ``"batchmean"`` (the sum
        over the size of the first dimension, as ``torch.nn.functional.kl_div``).

    Returns:
      KL(targets || predictions) per example (or reduced), in at least float32.

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
    terms = _formulas.kl_terms_of_probs(targets, log_predictions)
    check_reduction(reduction)
    return reduce_loss(_masked_sum(terms, axes, mask), reduction=reduction)


@cached_eager("axis", "reduction")
def kl_divergence_with_log_targets(
    log_predictions: ArrayLike,
    log_targets: ArrayLike,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
    *,
    reduction: Reduction = "none",
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
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` or ``"batchmean"`` (the sum
        over the size of the first dimension, as ``torch.nn.functional.kl_div``).

    Returns:
      KL(targets || predictions) per example (or reduced), in at least float32.

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
    terms = _formulas.kl_terms_of_logs(log_targets, log_predictions)
    check_reduction(reduction)
    return reduce_loss(_masked_sum(terms, axes, mask), reduction=reduction)


@cached_eager("axis", "reduction")
def generalized_kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis | None = -1,
    where: ArrayLike | None = None,
    *,
    reduction: Reduction = "none",
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
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` or ``"batchmean"`` (the sum
        over the size of the first dimension, as ``torch.nn.functional.kl_div``).

    Returns:
      The generalized divergence per example (or reduced), in at least float32.

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
    terms = _formulas.kl_terms_of_probs(targets, log_predictions)
    terms = terms - targets + jnp.exp(log_predictions)
    check_reduction(reduction)
    return reduce_loss(_masked_sum(terms, axes, mask), reduction=reduction)


# ----------------------------------------------------------------------------- from logits
def _logit_pair(logits, target_logits, temperature, axis, where):
    """Validates both logit arrays and the temperature; applies ``where``.

    Returns ``(model, target, lead, scale, ok)``: the logits as ``[rows, classes]`` (classes
    last, flattened), the shape of one value per example, the inverse temperature (1 for a
    static ``temperature=1``) and ``ok``, None for a static temperature (checked now) or a
    traced flag for a traced one, to be passed to :func:`poison_unless`.
    """
    temperature, ok = scheduled_number(temperature, "temperature", low=0.0, low_open=True)
    logits = as_float_array(logits, "logits")
    target_logits = as_float_array(target_logits, "target_logits")
    check_same_shape(logits, "logits", target_logits, "target_logits")
    model, target, axes, mask = _paired_inputs(
        logits, "logits", target_logits, "target_logits", axis, where
    )
    if ok is not None:  # a traced temperature: divide by a safe value, poison the result after
        temperature = jnp.where(ok, temperature, 1.0)
    scale = (1.0 / jnp.asarray(temperature)).astype(model.dtype)
    model = classes_last(exclude(model, mask), axes)
    target = classes_last(exclude(target, mask), axes)
    lead = model.shape[:-1]
    k = model.shape[-1]
    return model.reshape(-1, k), target.reshape(-1, k), lead, scale, ok


@functools.cache  # one pair per divergence: fresh branches would defeat JAX's caches
def _branches(div: _pairs.Divergence):
    def branch(exact, s, t, scale, c):
        return _pairs.full_rows(div, s, t, scale, c, exact).rows

    return functools.partial(branch, True), functools.partial(branch, False)


def _rows(div: _pairs.Divergence, s, t, scale, c):
    """``div``'s rows on whole ``[rows, classes]`` logits: in plain form when no shifted logit
    can be -inf (one ``lax.cond`` for the whole array, NaN-aware), else in the exact form."""
    exact, plain = _branches(div)
    if div.first is None:  # the two-pass divergences have one (exact) form
        return exact(s, t, scale, c)
    flag = _pairs.needs_exact(s, scale) | _pairs.needs_exact(t, scale)
    return lax.cond(flag, exact, plain, s, t, scale, c)


@functools.cache
def _rows_program(div: _pairs.Divergence):
    """``_rows`` of ``div`` under ``jax.jit``: the derivative rule runs eagerly inside an eager
    ``jax.grad``, where a bare ``lax.cond`` would compile afresh on every call."""
    return jax.jit(functools.partial(_rows, div))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _divergence(div: _pairs.Divergence, s, t, scale, c):
    """Per-row ``div`` of the logits ``s`` (model) and ``t`` (target) times ``scale``."""
    return _rows_program(div)(s, t, scale, c).loss


@functools.partial(_divergence.defjvp, symbolic_zeros=True)
def _divergence_jvp(div, primals, tangents):
    """The closed-form gradients of ``div`` (tangents that are symbolic zeros cost nothing: a
    fixed target's gradient is never computed)."""
    s, t, scale, c = primals
    s_dot, t_dot, scale_dot, c_dot = (None if isinstance(x, SymbolicZero) else x for x in tangents)
    rows = _rows_program(div)(s, t, scale, c)
    log_probs = []
    for x, side in ((s, "0"), (t, "1")):
        _, sh = shifted(x, scale)
        log_probs.append(sh - rows.coef["log_sumexp" + side][:, None])
    teacher = t_dot is not None or scale_dot is not None
    ds, dt = div.grads(*log_probs, rows.coef, c, True, teacher)
    value_dot = jnp.zeros_like(rows.loss)
    for grad, x, x_dot in ((ds, s, s_dot), (dt, t, t_dot)):
        if grad is not None and x_dot is not None:
            value_dot = value_dot + scale * jnp.sum(grad * x_dot, axis=1)
        if grad is not None and scale_dot is not None:
            # d/d scale of D(scale * s, scale * t): sum grad * (s - max s), the shift cancelling
            # because each gradient sums to 0 over the classes.
            _, centered = shifted(x, None)
            centered = jnp.where(x == -jnp.inf, 0.0, centered)
            value_dot = value_dot + scale_dot * jnp.sum(grad * centered, axis=1)
    if c_dot is not None:
        exact = _branches(div)[0]
        value_dot = value_dot + jax.jvp(lambda a: exact(s, t, scale, a).loss, (c,), (c_dot,))[1]
    return rows.loss, value_dot


def logit_divergence(
    div: _pairs.Divergence,
    logits,
    target_logits,
    *,
    coefficient: float | jax.Array | None = None,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where=None,
    reduction: Reduction = "none",
) -> jax.Array:
    """The divergence ``div`` between ``softmax(target_logits / T)`` (P) and ``softmax(logits /
    T)`` (Q), per example or reduced: the body of every public divergence over logits.

    ``coefficient`` is the value of ``div``'s own coefficient (``beta``, ``skew``, ``alpha``;
    None for its default): a concrete value outside its range raises ValueError naming it, a
    traced one makes the result NaN; a static value at one of its end points runs the end
    point's divergence (``jensen_shannon`` with ``beta=0`` is ``forward_kl``); a traced one
    (an eager call traces its coefficients) reaches the same value to round-off.
    """
    check_reduction(reduction)
    kind, c, c_ok = divergence_coefficient(div, coefficient)
    div = loss_named(kind)
    s, t, lead, scale, ok = _logit_pair(logits, target_logits, temperature, axis, where)
    value = _divergence(div, s, t, scale, jnp.asarray(c, s.dtype)).reshape(lead)
    return reduce_loss(poison_unless(value, all_ok(ok, c_ok)), reduction=reduction)


@cached_eager("axis", "reduction")
def forward_kl(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
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
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` (over the examples) or
        ``"batchmean"`` (the sum over the size of the first dimension).

    Returns:
      KL(softmax(target/T) || softmax(logits/T)) per example (or reduced), in at least
        float32. Where the target keeps a class the model excludes (a ``-inf`` logit) the
        value is ``+inf``; its gradient w.r.t. ``logits`` is still the exact :math:`q - p` on
        the included classes, and w.r.t. ``target_logits`` it is 0 on that example. A NaN
        logit makes its example NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> kl = il.forward_kl(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8]))
      >>> print(round(float(kl), 6))
      0.043053

    References:
      Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    return logit_divergence(
        _pairs.FORWARD_KL,
        logits,
        target_logits,
        temperature=temperature,
        axis=axis,
        where=where,
        reduction=reduction,
    )


@cached_eager("axis", "reduction")
def reverse_kl(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
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
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` (over the examples) or
        ``"batchmean"`` (the sum over the size of the first dimension).

    Returns:
      KL(softmax(logits/T) || softmax(target/T)) per example (or reduced), in at least
        float32. Where the model keeps a class the target excludes the value is ``+inf``;
        its gradient w.r.t. ``target_logits`` is still the exact :math:`p - q` on the
        included classes, and w.r.t. ``logits`` it is 0 on that example. A NaN logit makes
        its example NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> kl = il.reverse_kl(jnp.array([0.2, 0.8]), jnp.array([0.5, 0.5]))
      >>> print(round(float(kl), 6))
      0.043053

    References:
      Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", 2024.
    """
    return logit_divergence(
        _pairs.REVERSE_KL,
        logits,
        target_logits,
        temperature=temperature,
        axis=axis,
        where=where,
        reduction=reduction,
    )


@cached_eager("axis", "reduction")
def jensen_shannon(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    beta: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
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
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` (over the examples) or
        ``"batchmean"`` (the sum over the size of the first dimension).

    Returns:
      The divergence per example (or reduced), in at least float32.

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
    return logit_divergence(
        _pairs.JENSEN_SHANNON,
        logits,
        target_logits,
        coefficient=beta,
        temperature=temperature,
        axis=axis,
        where=where,
        reduction=reduction,
    )
