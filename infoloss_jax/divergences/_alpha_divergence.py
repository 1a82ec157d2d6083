"""Amari's alpha-divergence between the target's and the model's softmax, with its KL limits."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..base._caching import cached_eager
from ..base._typing import ArrayLike, Reduction
from ..base._validation import Axis
from ..core._divergences import logit_divergence
from ..engine._loss_spec import Coefficient, declare
from ..engine._pairs import NEG_INF, Divergence
from ..gradients._closed_forms import divergence_grad

# ------------------------------------------------------------------------------ the math
# D_alpha(P || Q) = (1 - sum p^a q^(1-a)) / (a (1 - a)) = D_(1-a)(Q || P). Each row is expanded
# about one side, ``u`` with weight ``g`` (the model and alpha for alpha <= 1/2, else the
# target and 1 - alpha), so that g <= 1/2 and the expansion is exact at g = 0:
#   1 - sum p^a q^(1-a) = -sum u_k expm1(g r_k),  r = log v - log u,
#   D = -S / (1 - g),  S = sum u_k expm1(g r_k) / g = sum u_k r_k exprel(g r_k).
# At g = 0 the terms are u r and D is KL(u || v): the reverse KL at alpha = 0, the forward KL at
# alpha = 1, exactly, and with no cancellation near those limits.


def _exprel(x):
    """expm1(x) / x, 1 at x = 0 (where its derivative is 1/2, as autodiff of 1 + x/2 gives)."""
    zero = x == 0.0
    return jnp.where(zero, 1.0 + x / 2.0, jnp.expm1(x) / jnp.where(zero, 1.0, x))


def _sides(lq, lp, alpha):
    """``(lu, lv, g, model_first)``: the expansion's side, the other side, its weight."""
    model_first = alpha <= 0.5
    lu = jnp.where(model_first, lq, lp)
    lv = jnp.where(model_first, lp, lq)
    return lu, lv, jnp.where(model_first, alpha, 1.0 - alpha), model_first


def _expansion_terms(lu, lv, g):
    """``u expm1(g r) / g`` per class (``u r`` at g = 0), r = log v - log u.

    0 where u = 0 (no class there); where v = 0 and u > 0 it is ``-u / g`` for g > 0 and
    ``-inf`` for g <= 0 (the divergence is then ``+inf``). For ``g r >= 1`` it is computed as
    ``(exp(log u + g r) - u) / g``, whose exponent ``(1 - g) log u + g log v`` cannot overflow
    where the divergence is finite.
    """
    u = jnp.exp(lu)
    absent, other_absent = lu == NEG_INF, lv == NEG_INF
    r = jnp.where(absent | other_absent, 0.0, lv - lu)
    x = g * r
    safe_g = jnp.where(g == 0.0, 1.0, g)
    small = x < 1.0
    series = u * r * _exprel(jnp.where(small, x, 0.0))
    large = (jnp.exp(lu + jnp.where(small, 0.0, x)) - u) / safe_g
    terms = jnp.where(small, series, large)
    terms = jnp.where(other_absent, jnp.where(g > 0.0, -u / safe_g, NEG_INF), terms)
    return jnp.where(absent, 0.0, terms)


def _terms(lq, lp, alpha):
    lu, lv, g, _ = _sides(lq, lp, alpha)
    return {"s": jnp.sum(_expansion_terms(lu, lv, g), axis=1)}


def _rows(sums, sumexp, logs, empty, alpha):
    del sumexp, logs, empty
    g = jnp.where(alpha <= 0.5, alpha, 1.0 - alpha)
    return -sums["s"] / (1.0 - g), {"s": sums["s"]}


def _grads(lq, lp, values, alpha, model, target):
    r"""With the expansion's side u (weight g), the other side v, its terms
    :math:`\tau_k = u_k\,\mathrm{expm1}(g r_k)/g` and :math:`S = \sum_k \tau_k`:

    * d/d(logits of u) = :math:`-(\tau - u S)`;
    * d/d(logits of v) = :math:`-\frac{1}{1-g}\big((u - v) + g (\tau - v S)\big)`.

    A row whose divergence is ``+inf`` gets 0, except the side v at g = 0, whose gradient
    :math:`v - u` is that of the KL limit.
    """
    lu, lv, g, model_first = _sides(lq, lp, alpha)
    tau = _expansion_terms(lu, lv, g)
    u, v = jnp.exp(lu), jnp.exp(lv)
    s = values["s"][:, None]
    infinite = s == NEG_INF
    safe_s = jnp.where(infinite, 0.0, s)
    d_u = jnp.where(infinite, 0.0, -(jnp.where(u == 0.0, 0.0, tau) - u * safe_s))
    mixed = jnp.where(g == 0.0, 0.0, g * (jnp.where(infinite, 0.0, tau) - v * safe_s))
    d_v = -((u - v) + mixed) / (1.0 - g)
    d_v = jnp.where(infinite & (g != 0.0), 0.0, d_v)
    ds = jnp.where(model_first, d_u, d_v) if model else None
    dt = jnp.where(model_first, d_v, d_u) if target else None
    return ds, dt


ALPHA_DIVERGENCE = declare(
    Divergence(
        "alpha_divergence",
        rows=_rows,
        grads=_grads,
        terms=_terms,
        term_names=("s",),
        coefficient=Coefficient("alpha", 0.5, endpoints=((0.0, "reverse_kl"), (1.0, "forward_kl"))),
        checks=(
            ("alpha=0.5", {}),
            ("alpha=0.2, T=1.5, where", {"alpha": 0.2, "temperature": 1.5, "where": True}),
            ("alpha=0.9", {"alpha": 0.9}),
        ),
        example=(("alpha", 0.7), ("temperature", 1.5)),
    )
)


# ------------------------------------------------------------------------------ core
@cached_eager
def alpha_divergence(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    alpha: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Amari's alpha-divergence between the target (teacher) P and the model (student) Q.

    .. math::
        D_\alpha(P \,\|\, Q) = \frac{1 - \sum_k p_k^{\alpha}\, q_k^{1-\alpha}}
        {\alpha (1 - \alpha)}, \quad P = \mathrm{softmax}(t / T), \; Q = \mathrm{softmax}(z / T)

    The family interpolates between the two KL directions: as :math:`\alpha \to 1` it tends
    to the forward KL(target || model) of :func:`forward_kl` (mass-covering) and as
    :math:`\alpha \to 0` to the reverse KL(model || target) of :func:`reverse_kl`
    (mode-seeking); ``alpha=1`` and ``alpha=0`` return those limits exactly, and values near
    them are computed without cancellation (an ``expm1`` expansion about the nearer limit).
    :math:`D_\alpha \ge 0`, with equality exactly when P = Q; ``alpha=0.5`` is symmetric,
    :math:`4 (1 - \sum_k \sqrt{p_k q_k})`, four times the squared Hellinger distance. For
    :math:`0 < \alpha < 1` it is finite whatever the supports, at most
    :math:`1 / (\alpha (1 - \alpha))`; outside [0, 1] it is ``+inf`` where one side excludes
    a class the other keeps (the model, for :math:`\alpha > 1`). Closed-form derivatives
    (``jax.custom_jvp``), before the :math:`1/T` chain factor, with
    :math:`w = p^\alpha q^{1-\alpha}` and :math:`W = \sum_k w_k`:

    .. math::
        \frac{\partial}{\partial z} = -\frac{w - q W}{\alpha}, \qquad
        \frac{\partial}{\partial t} = -\frac{w - p W}{1 - \alpha}

    Args:
      logits: the model's logits z.
      target_logits: the target's logits t, same shape (detach them with
        ``jax.lax.stop_gradient`` if the target must not be trained).
      alpha: any finite real :math:`\alpha`; it may be traced (a traced value that is not
        finite makes the result NaN).
      temperature: positive temperature T; it may be traced.
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``; False excludes a class from
        both distributions.
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` (over the examples) or
        ``"batchmean"`` (the sum over the size of the first dimension).

    Returns:
      The divergence per example (or reduced), in at least float32. A NaN logit makes its
        example NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> z, t = jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8])
      >>> print(round(float(il.alpha_divergence(z, t, alpha=1.0)), 6))  # forward KL
      0.043053
      >>> print(round(float(il.alpha_divergence(z, t, alpha=1.0 - 1e-6)), 6))
      0.043053

    References:
      Amari, "Differential-Geometrical Methods in Statistics", 1985; Amari, "Alpha-Divergence
      Is Unique, Belonging to Both f-Divergence and Bregman Divergence Classes", 2009;
      Wang et al., "AlphaNet: Improved Training of Supernets with Alpha-Divergence", 2021.
    """
    return logit_divergence(
        ALPHA_DIVERGENCE,
        logits,
        target_logits,
        coefficient=alpha,
        temperature=temperature,
        axis=axis,
        where=where,
        reduction=reduction,
    )


# ------------------------------------------------------------------------------ gradient
@cached_eager
def alpha_divergence_grad(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    alpha: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of :func:`infoloss_jax.alpha_divergence` in both logits.

    With the target :math:`p`, the model :math:`q` (softmax of the logits over :math:`T`),
    :math:`w = p^\alpha q^{1-\alpha}`, :math:`W = \sum_k w_k` and
    :math:`D = (1 - W) / (\alpha (1 - \alpha))`: :math:`\partial D / \partial q_k = -w_k /
    (\alpha q_k)` and :math:`\partial D / \partial p_k = -w_k / ((1 - \alpha) p_k)`, which the
    softmax Jacobians turn into

    .. math::

        \frac{\partial D}{\partial z} = -\frac{1}{\alpha T}\,(w - q W), \qquad
        \frac{\partial D}{\partial t} = -\frac{1}{(1 - \alpha) T}\,(w - p W).

    They are evaluated in the form expanded about the nearer KL limit (see
    :func:`infoloss_jax.alpha_divergence`), so ``alpha`` near or at 0 and 1 gives the reverse
    and forward KL gradients without cancellation.

    Args:
      logits: the model's logits :math:`z`.
      target_logits: the target's logits :math:`t`, the same shape.
      alpha: any finite real :math:`\alpha`.
      temperature: :math:`T > 0`, applied to both.
      axis: the class axis (or axes).
      where: optional boolean mask; masked classes get 0.
      argnums: 0 (model logits), 1 (target logits) or a tuple of them, as in ``jax.grad``.

    Returns:
      The gradient, or a tuple of gradients when ``argnums`` is a tuple.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax.gradients import alpha_divergence_grad
      >>> g = alpha_divergence_grad(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8]), alpha=1.0)
      >>> print([round(float(v), 4) for v in g])  # the forward KL's q - p
      [0.1457, -0.1457]
    """
    return divergence_grad(
        ALPHA_DIVERGENCE,
        logits,
        target_logits,
        coefficient=alpha,
        temperature=temperature,
        axis=axis,
        where=where,
        argnums=argnums,
    )
