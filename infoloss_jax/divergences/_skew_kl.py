"""Skew KL divergences (DistiLLM): KL to a mixture of the two distributions, in both directions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..base._caching import cached_eager
from ..base._typing import ArrayLike, Reduction
from ..base._validation import Axis
from ..core._divergences import logit_divergence
from ..engine._loss_spec import Coefficient, declare
from ..engine._pairs import NEG_INF, Divergence, kl_terms, log_mixture, swapped
from ..gradients._closed_forms import divergence_grad


# ------------------------------------------------------------------------------ the math
def _ratios(lq, lp, skew):
    r"""``(log m, rho, a)`` per class, m = skew p + (1 - skew) q: :math:`\rho = p q / m`
    and :math:`a = \mathrm{skew}\; p / m` (both finite: :math:`\rho \le q/(1-\mathrm{skew})`,
    :math:`a \le 1`), 0 where p = 0; at skew = 0 where q = 0 too, :math:`\rho` is its limit p."""
    log_m = log_mixture(lq, lp, skew)
    absent = lp == NEG_INF
    both_zero = log_m == NEG_INF  # with p > 0: skew = 0 and q = 0
    rho = jnp.exp(jnp.where(both_zero, lp, lp + lq - log_m))
    rho = jnp.where(absent, 0.0, rho)
    a = jnp.exp(jnp.log(skew) + jnp.where(absent | both_zero, 0.0, lp - log_m))
    a = jnp.where(absent | (skew == 0.0), 0.0, a)
    return log_m, rho, a


def _terms(lq, lp, skew):
    """KL(P || M) and the sums its gradients center with."""
    log_m, rho, a = _ratios(lq, lp, skew)
    return {
        "kl": jnp.sum(kl_terms(lp, log_m), axis=1),
        "rho": jnp.sum(rho, axis=1),
        "pa": jnp.sum(jnp.exp(lp) * a, axis=1),
    }


def _rows(sums, sumexp, logs, empty, skew):
    del sumexp, logs, empty, skew
    return sums["kl"], {"kl": sums["kl"], "rho": sums["rho"], "pa": sums["pa"]}


def _grads(lq, lp, values, skew, model, target):
    r"""With :math:`\rho = pq/m` and :math:`a = \mathrm{skew}\, p/m`:

    * d/dz = :math:`-(1-\mathrm{skew})\,(\rho - q \sum_k \rho_k)`;
    * d/dt = :math:`p\,(\log p - \log m - a - (\mathrm{KL} - \sum_k p_k a_k))`, 0 on a row whose
      KL is +inf (skew = 0 and the model excludes a class the target keeps).
    """
    log_m, rho, a = _ratios(lq, lp, skew)
    ds = dt = None
    if model:
        ds = -(1.0 - skew) * (rho - jnp.exp(lq) * values["rho"][:, None])
    if target:
        p = jnp.exp(lp)
        kl = values["kl"][:, None]
        infinite = kl == jnp.inf
        centered = (lp - log_m) - a - (kl - values["pa"][:, None])
        dt = jnp.where((p == 0) | infinite, 0.0, p * jnp.where(infinite, 0.0, centered))
    return ds, dt


SKEW_FORWARD_KL = declare(
    Divergence(
        "skew_forward_kl",
        rows=_rows,
        grads=_grads,
        terms=_terms,
        term_names=("kl", "rho", "pa"),
        coefficient=Coefficient("skew", 0.1, 0.0, 1.0, endpoints=((0.0, "forward_kl"),)),
        checks=(
            ("skew=0.1", {}),
            ("skew=0.4, T=1.5, where", {"skew": 0.4, "temperature": 1.5, "where": True}),
        ),
        example=(("skew", 0.3), ("temperature", 1.5)),
    )
)
SKEW_REVERSE_KL = declare(
    swapped(
        SKEW_FORWARD_KL,
        "skew_reverse_kl",
        coefficient=Coefficient("skew", 0.1, 0.0, 1.0, endpoints=((0.0, "reverse_kl"),)),
    )
)


# ------------------------------------------------------------------------------ core
@cached_eager
def skew_forward_kl(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Skew forward KL from the target (teacher) to a mixture leaning on the model (student).

    .. math::
        \mathrm{SKL}_\alpha(P \,\|\, Q) = \mathrm{KL}\big(P \,\|\, \alpha P + (1-\alpha) Q\big),
        \quad P = \mathrm{softmax}(t / T), \; Q = \mathrm{softmax}(z / T)

    with :math:`\alpha` = ``skew``: the forward KL(target || model) of
    :func:`forward_kl` with the model's distribution mixed with a little of the target's, as
    DistiLLM trains with. The mixture keeps the loss and its gradient bounded where the model
    gives a class almost no mass: :math:`\mathrm{SKL}_\alpha \le \log(1/\alpha)` for
    :math:`\alpha > 0`, and it is finite whatever the supports. ``skew=0`` is exactly
    :func:`forward_kl` (also its ``+inf`` where the model excludes a class the target keeps);
    ``skew=1`` gives 0. Closed-form derivatives (``jax.custom_jvp``), with :math:`m = \alpha
    p + (1-\alpha) q`, :math:`\rho = p q / m` and :math:`a = \alpha p / m`, before the
    :math:`1/T` chain factor:

    .. math::
        \frac{\partial}{\partial z} = -(1-\alpha)\Big(\rho - q \sum_k \rho_k\Big), \qquad
        \frac{\partial}{\partial t} = p \odot \Big(\log \frac{p}{m} - a -
        \mathrm{SKL}_\alpha + \sum_k p_k a_k\Big)

    Args:
      logits: the model's logits z.
      target_logits: the target's logits t, same shape (detach them with
        ``jax.lax.stop_gradient`` if the target must not be trained).
      skew: :math:`\alpha \in [0, 1]`, the target's weight in the mixture (DistiLLM uses 0.1);
        it may be traced (a traced value outside [0, 1] makes the result NaN).
      temperature: positive temperature T; it may be traced.
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``; False excludes a class from
        both distributions.
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` (over the examples) or
        ``"batchmean"`` (the sum over the size of the first dimension).

    Returns:
      The divergence per example (or reduced), in nats, in at least float32. A NaN logit
        makes its example NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> z, t = jnp.array([0.0, -jnp.inf]), jnp.array([0.0, 0.0])
      >>> print(float(il.forward_kl(z, t)))  # the model excludes a class the target keeps
      inf
      >>> print(round(float(il.skew_forward_kl(z, t, skew=0.1)), 6))
      0.830366

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024; Lee, "Measures of distributional similarity", ACL 1999 (the skew divergence).
    """
    return logit_divergence(
        SKEW_FORWARD_KL,
        logits,
        target_logits,
        coefficient=skew,
        temperature=temperature,
        axis=axis,
        where=where,
        reduction=reduction,
    )


@cached_eager
def skew_reverse_kl(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Skew reverse KL from the model (student) to a mixture leaning on the target (teacher).

    .. math::
        \mathrm{SRKL}_\alpha(Q \,\|\, P) = \mathrm{KL}\big(Q \,\|\, \alpha Q + (1-\alpha) P\big),
        \quad P = \mathrm{softmax}(t / T), \; Q = \mathrm{softmax}(z / T)

    with :math:`\alpha` = ``skew``: the reverse KL(model || target) of :func:`reverse_kl`
    with the target's distribution mixed with a little of the model's (DistiLLM's skew
    reverse KL). It is the mode-seeking direction, bounded by :math:`\log(1/\alpha)` for
    :math:`\alpha > 0` and finite whatever the supports; ``skew=0`` is exactly
    :func:`reverse_kl` and ``skew=1`` gives 0. Its derivatives are those of
    :func:`skew_forward_kl` with the roles of the model and the target exchanged (with
    :math:`m = \alpha q + (1-\alpha) p`, :math:`\rho = p q / m`, :math:`a = \alpha q / m`):

    .. math::
        \frac{\partial}{\partial z} = q \odot \Big(\log \frac{q}{m} - a -
        \mathrm{SRKL}_\alpha + \sum_k q_k a_k\Big), \qquad
        \frac{\partial}{\partial t} = -(1-\alpha)\Big(\rho - p \sum_k \rho_k\Big)

    Args:
      logits: the model's logits z.
      target_logits: the target's logits t, same shape.
      skew: :math:`\alpha \in [0, 1]`, the model's weight in the mixture; it may be traced.
      temperature: positive temperature T; it may be traced.
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``.
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` (over the examples) or
        ``"batchmean"`` (the sum over the size of the first dimension).

    Returns:
      The divergence per example (or reduced), in nats, in at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> z, t = jnp.array([0.2, 0.8]), jnp.array([0.5, 0.5])
      >>> print(round(float(il.reverse_kl(z, t)), 6), round(float(il.skew_reverse_kl(z, t)), 6))
      0.043053 0.034989

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024.
    """
    return logit_divergence(
        SKEW_REVERSE_KL,
        logits,
        target_logits,
        coefficient=skew,
        temperature=temperature,
        axis=axis,
        where=where,
        reduction=reduction,
    )


# ------------------------------------------------------------------------------ gradients
@cached_eager
def skew_forward_kl_grad(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of :func:`infoloss_jax.skew_forward_kl`, KL(P || αP + (1-α)Q), in both logits.

    With the target :math:`p`, the model :math:`q` (softmax of the logits over :math:`T`),
    :math:`m = \alpha p + (1 - \alpha) q` and :math:`D = \sum_k p_k \log(p_k / m_k)`:
    :math:`\partial D / \partial q_k = -(1-\alpha) p_k / m_k` and
    :math:`\partial D / \partial p_k = \log(p_k / m_k) + 1 - \alpha p_k / m_k`. The softmax
    Jacobians centre them (the constant 1 drops out):

    .. math::

        \frac{\partial D}{\partial z}
        = -\frac{1 - \alpha}{T}\Big(\rho - q \sum_k \rho_k\Big), \qquad
        \frac{\partial D}{\partial t}
        = \frac{1}{T}\, p \odot \Big(\log\frac{p}{m} - a - D + \sum_k p_k a_k\Big),

    with :math:`\rho = p q / m` and :math:`a = \alpha p / m`. At :math:`\alpha = 0` these are
    the gradients of :func:`forward_kl_grad`.

    Args:
      logits: the model's logits :math:`z`.
      target_logits: the target's logits :math:`t`, the same shape.
      skew: :math:`\alpha \in [0, 1]`.
      temperature: :math:`T > 0`, applied to both.
      axis: the class axis (or axes).
      where: optional boolean mask; masked classes get 0.
      argnums: 0 (model logits), 1 (target logits) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import skew_forward_kl_grad
      >>> g = skew_forward_kl_grad(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8]), skew=0.0)
      >>> print([round(float(v), 4) for v in g])  # the forward KL's q - p
      [0.1457, -0.1457]
    """
    return divergence_grad(
        SKEW_FORWARD_KL,
        logits,
        target_logits,
        coefficient=skew,
        temperature=temperature,
        axis=axis,
        where=where,
        argnums=argnums,
    )


@cached_eager
def skew_reverse_kl_grad(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of :func:`infoloss_jax.skew_reverse_kl`, KL(Q || αQ + (1-α)P), in both logits.

    The gradients of :func:`skew_forward_kl_grad` with the model and the target exchanged:
    with :math:`m = \alpha q + (1 - \alpha) p`, :math:`\rho = p q / m`, :math:`a = \alpha q /
    m` and :math:`D = \sum_k q_k \log(q_k / m_k)`,

    .. math::

        \frac{\partial D}{\partial z}
        = \frac{1}{T}\, q \odot \Big(\log\frac{q}{m} - a - D + \sum_k q_k a_k\Big), \qquad
        \frac{\partial D}{\partial t}
        = -\frac{1 - \alpha}{T}\Big(\rho - p \sum_k \rho_k\Big).

    Args:
      logits: the model's logits :math:`z`.
      target_logits: the target's logits :math:`t`, the same shape.
      skew: :math:`\alpha \in [0, 1]`.
      temperature: :math:`T > 0`, applied to both.
      axis: the class axis (or axes).
      where: optional boolean mask; masked classes get 0.
      argnums: 0 (model logits), 1 (target logits) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import skew_reverse_kl_grad
      >>> g = skew_reverse_kl_grad(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8]), skew=0.0)
      >>> print([round(float(v), 4) for v in g])  # the reverse KL's q (log q - log p - KL)
      [0.15, -0.15]
    """
    return divergence_grad(
        SKEW_REVERSE_KL,
        logits,
        target_logits,
        coefficient=skew,
        temperature=temperature,
        axis=axis,
        where=where,
        argnums=argnums,
    )
