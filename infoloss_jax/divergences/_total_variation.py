"""Total variation distance between the target's and the model's softmax: its math and its forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..base._caching import cached_eager
from ..base._typing import ArrayLike, Reduction
from ..base._validation import Axis
from ..core._divergences import logit_divergence
from ..engine._loss_spec import declare
from ..engine._pairs import Divergence
from ..gradients._closed_forms import divergence_grad


# ------------------------------------------------------------------------------ the math
def _terms(lq, lp, c):
    r"""Per row: :math:`\sum |p - q|` and, with :math:`\sigma = \mathrm{sign}(q - p)`,
    :math:`\sum \sigma q` and :math:`\sum \sigma p` (what the gradients center with)."""
    del c
    q, p = jnp.exp(lq), jnp.exp(lp)
    sign = jnp.sign(q - p)
    return {
        "l1": jnp.sum(jnp.abs(q - p), axis=1),
        "sign_q": jnp.sum(sign * q, axis=1),
        "sign_p": jnp.sum(sign * p, axis=1),
    }


def _rows(sums, sumexp, logs, empty, c):
    del sumexp, logs, empty, c
    return 0.5 * sums["l1"], {"sign_q": sums["sign_q"], "sign_p": sums["sign_p"]}


def _grads(lq, lp, values, c, model, target):
    r""":math:`\partial/\partial z = \tfrac12 q (\sigma - \sum \sigma q)` and
    :math:`\partial/\partial t = -\tfrac12 p (\sigma - \sum \sigma p)` (sign 0 where p = q)."""
    del c
    q, p = jnp.exp(lq), jnp.exp(lp)
    sign = jnp.sign(q - p)
    ds = 0.5 * q * (sign - values["sign_q"][:, None]) if model else None
    dt = -0.5 * p * (sign - values["sign_p"][:, None]) if target else None
    return ds, dt


TOTAL_VARIATION = declare(
    Divergence(
        "total_variation",
        rows=_rows,
        grads=_grads,
        terms=_terms,
        term_names=("l1", "sign_q", "sign_p"),
        checks=(("T=1", {}), ("T=1.5, where", {"temperature": 1.5, "where": True})),
        example=(("temperature", 1.5),),
    )
)


# ------------------------------------------------------------------------------ core
@cached_eager
def total_variation(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    reduction: Reduction = "none",
) -> jax.Array:
    r"""Total variation distance between the target (teacher) and the model (student).

    .. math::
        \mathrm{TV}(P, Q) = \tfrac12 \sum_k |p_k - q_k|, \quad
        P = \mathrm{softmax}(t / T), \; Q = \mathrm{softmax}(z / T)

    Symmetric, bounded (:math:`0 \le \mathrm{TV} \le 1`, 0 exactly when P = Q, 1 for disjoint
    supports) and finite whatever the supports: the distillation loss of DistillSpec, which
    bounds the acceptance rate of speculative decoding (:math:`1 - \mathrm{TV}`). The
    temperature divides both sets of logits; no :math:`T^2` factor is applied. Closed-form
    derivatives (``jax.custom_jvp``), with :math:`\sigma = \mathrm{sign}(q - p)` (0 where
    :math:`p_k = q_k`, the subgradient autodiff of :math:`|x|` takes), before the :math:`1/T`
    chain factor:

    .. math::
        \frac{\partial}{\partial z} = \tfrac12\, q \odot \big(\sigma - \textstyle\sum_k
        \sigma_k q_k\big), \qquad
        \frac{\partial}{\partial t} = -\tfrac12\, p \odot \big(\sigma - \textstyle\sum_k
        \sigma_k p_k\big)

    Args:
      logits: the model's logits z.
      target_logits: the target's logits t, same shape (wrap them in
        ``jax.lax.stop_gradient`` if the target must not be trained).
      temperature: positive temperature T; it may be traced (a traced value that is not
        positive and finite makes the result NaN).
      axis: the class axis or axes.
      where: optional boolean mask broadcastable to ``logits``; False excludes a class from
        both distributions.
      reduction: ``"none"`` (per example), ``"sum"``, ``"mean"`` (over the examples) or
        ``"batchmean"`` (the sum over the size of the first dimension).

    Returns:
      The distance per example (or reduced), in at least float32. A ``-inf`` logit excludes
        a class from its side only (probability 0); a NaN logit makes its example NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> tv = il.total_variation(jnp.array([0.0, -jnp.inf]), jnp.array([-jnp.inf, 0.0]))
      >>> print(float(tv))  # disjoint supports
      1.0

    References:
      Zhou et al., "DistillSpec: Improving Speculative Decoding via Knowledge Distillation",
      ICLR 2024; Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge
      Distillation", ACL 2023.
    """
    return logit_divergence(
        TOTAL_VARIATION,
        logits,
        target_logits,
        temperature=temperature,
        axis=axis,
        where=where,
        reduction=reduction,
    )


# ------------------------------------------------------------------------------ gradient
@cached_eager
def total_variation_grad(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of :func:`infoloss_jax.total_variation` in both logits.

    With the target :math:`p = \mathrm{softmax}(t / T)`, the model
    :math:`q = \mathrm{softmax}(z / T)`, :math:`\mathrm{TV} = \tfrac12 \sum_k |p_k - q_k|`
    and :math:`\sigma = \mathrm{sign}(q - p)`: :math:`\partial \mathrm{TV} / \partial q_k =
    \sigma_k / 2`, and the softmax Jacobian :math:`q_j(\delta_{jk} - q_k)` centres it:

    .. math::

        \frac{\partial\,\mathrm{TV}}{\partial z}
        = \frac{1}{2T}\, q \odot \Big(\sigma - \sum_k \sigma_k q_k\Big),
        \qquad
        \frac{\partial\,\mathrm{TV}}{\partial t}
        = -\frac{1}{2T}\, p \odot \Big(\sigma - \sum_k \sigma_k p_k\Big).

    Where :math:`p_k = q_k` the sign is 0, the subgradient that autodiff of :math:`|x|` takes.

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
      >>> from infoloss_jax.gradients import total_variation_grad
      >>> g = total_variation_grad(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8]))
      >>> print([round(float(v), 4) for v in g])
      [0.25, -0.25]
    """
    return divergence_grad(
        TOTAL_VARIATION,
        logits,
        target_logits,
        temperature=temperature,
        axis=axis,
        where=where,
        argnums=argnums,
    )
