"""Skew KL divergences (DistiLLM): KL to a mixture of the two distributions, in both directions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.typing import DTypeLike

from ..base._caching import cached_eager
from ..base._typing import ArrayLike, Backward, Reduction, WeightLayout
from ..base._validation import Axis
from ..core._divergences import logit_divergence
from ..engine._blockwise import AxisName, reraise_jvp
from ..engine._loss_spec import Coefficient, declare
from ..engine._pairs import NEG_INF, Divergence, kl_terms, log_mixture, swapped
from ..gradients._closed_forms import divergence_grad
from ..heads._fused import EngineOptions, distillation_ops, linear_divergence, run
from ..heads._sharded import (
    MESH_DISTILL,
    MESH_LOGITS,
    SHARD_DISTILL,
    SHARD_LOGITS,
    OnMesh,
    logits_pair_ops,
    run_on_mesh,
    shard_axes,
)


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
@cached_eager("axis", "reduction")
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


@cached_eager("axis", "reduction")
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
@cached_eager("axis", "argnums")
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
    r"""Gradient of skew_forward_kl, KL(P || αP + (1-α)Q), in both logits.

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


@cached_eager("axis", "argnums")
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
    r"""Gradient of skew_reverse_kl, KL(Q || αQ + (1-α)P), in both logits.

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


# ------------------------------------------------------------------------------ fused
@reraise_jvp("linear_skew_forward_kl")
def linear_skew_forward_kl(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    weight_layout: WeightLayout = "dv",
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Skew forward KL(teacher || mixture) of a teacher and a student LM head, fused.

    .. math::
        \mathrm{KL}\big(P \,\|\, \alpha P + (1-\alpha) Q\big), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's:
    DistiLLM's skew KL, as :func:`infoloss_jax.skew_forward_kl`: bounded by
    :math:`\log(1/\alpha)`, and ``skew=0`` is :func:`linear_forward_kl`.

    The student's logits are ``hidden @ weight``, the teacher's ``target_hidden @
    target_weight`` (its hidden size may differ; the vocabulary may not). Neither ``[N, V]``
    logits array is ever materialized: two sweeps over the vocabulary tiles (the
    logsumexps, then the divergence's sums). The teacher is a fixed target: it receives no
    gradient. A masked token contributes nothing, to the value or to any gradient. Only
    reverse-mode differentiation is supported (``jax.custom_vjp``); ``jax.jvp`` raises
    ``TypeError``.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: student output projection, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states (same leading shape).
      target_weight: teacher output projection, in the same layout.
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads; never inferred.
      skew: the teacher's weight :math:`\alpha \in [0, 1]` in the mixture (0 gives the forward
        KL); may be traced.
      temperature: positive temperature for both (no T**2 factor is applied); may be traced.
      mask: optional boolean per-token mask (shape ``hidden.shape[:-1]``, True = the token
        counts); False drops a token from the loss, its gradient and the mean.
      reduction: ``"none"``, ``"sum"``, ``"mean"`` (default, over kept tokens) or
        ``"batchmean"``.
      token_block_size: tokens per tile; ``None`` chooses from the shapes and a memory budget.
      vocab_block_size: classes per tile; ``None`` chooses from the shapes.
      backward: ``"auto"``, ``"rows"``, ``"fast"``, ``"one_pass"``, ``"two_pass"`` or
        ``"in_forward"``, as in :func:`linear_softmax_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The divergence, reduced as asked, in at least float32.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h, th = jax.random.normal(jax.random.key(0), (2, 4, 8)), jnp.ones((2, 4, 6))
      >>> w = jax.random.normal(jax.random.key(1), (8, 30))
      >>> tw = jax.random.normal(jax.random.key(2), (6, 30))
      >>> fused = il.linear_skew_forward_kl(h, w, th, tw, reduction="none")
      >>> naive = il.skew_forward_kl(h @ w, th @ tw)
      >>> print(fused.shape, bool(jnp.allclose(fused, naive, rtol=1e-5, atol=1e-6)))
      (2, 4) True

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024.
    """
    heads = (hidden, weight, target_hidden, target_weight)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(coefficient=skew, temperature=temperature)
    return linear_divergence("skew_forward_kl", heads, mask, options, engine)


# ------------------------------------------------------------------------------ sharded
def vocab_parallel_skew_forward_kl(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Skew forward KL(teacher || mixture) with the vocabulary split over a mesh axis.

    .. math::
        \mathrm{KL}\big(P \,\|\, \alpha P + (1-\alpha) Q\big), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's,
    as :func:`infoloss_jax.skew_forward_kl` on the gathered logits.
    Call it **inside** ``jax.shard_map``: ``logits_shard`` (student) and
    ``target_logits_shard`` (teacher) are this device's ``[..., V_local]`` slices of logits
    split along ``vocab_axis``. The collectives over ``vocab_axis`` are two ``pmax`` and two
    ``psum``; no device holds a full vocabulary row. Gradients flow to both inputs (wrap the
    teacher in ``jax.lax.stop_gradient`` to freeze it). A masked token contributes nothing,
    to the value or to the gradients.

    Args:
      logits_shard: student logits slice ``[..., V_local]``.
      target_logits_shard: teacher logits slice, the same shape.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      skew: the teacher's weight :math:`\alpha \in [0, 1]` in the mixture (0 gives the forward
        KL); may be traced.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      where: optional boolean class mask broadcastable to the slices (False excludes a class).
      mask: optional boolean per-token mask ``[...]`` (True = the token counts).
      vocab_size: the true vocabulary size when the slices were padded to a multiple of the axis
        size; ``V_local`` must equal ``ceil(vocab_size / d)``.
      reduction: ``"none"`` (default, per token), ``"sum"``, ``"mean"`` or ``"batchmean"``.
      data_axis: mesh axis the tokens are split over; the reductions are exact across it.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      Per-token divergences ``[...]`` (float32 for half-precision inputs) or a scalar.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_skew_forward_kl
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda s, t: vocab_parallel_skew_forward_kl(s, t, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(loss(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.034989

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024.
    """
    ops, lead = logits_pair_ops(logits_shard, target_logits_shard, where, mask, SHARD_LOGITS)
    name = "vocab_parallel_skew_forward_kl"
    axes = shard_axes(name, ops, "dv", vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    options = dict(coefficient=skew, temperature=temperature)
    return run("skew_forward_kl", ops, lead, options, engine, axes)[0]


def vocab_parallel_linear_skew_forward_kl(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    vocab_size: int | None = None,
    reduction: Reduction = "mean",
    data_axis: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Skew forward KL of two LM heads, the vocabulary split over a mesh axis.

    :func:`infoloss_jax.linear_skew_forward_kl` with its statistics all-reduced across
    ``vocab_axis``, :math:`P = \mathrm{softmax}(t / T)` the teacher and
    :math:`Q = \mathrm{softmax}(s / T)` the student. Call it **inside** ``jax.shard_map``. The
    student logits are ``hidden @ weight_shard`` and the teacher logits ``target_hidden @
    target_weight_shard``, both slices of heads split along ``vocab_axis`` (the teacher's
    hidden size may differ). Neither the
    ``[N, V]`` nor the local ``[N, V_local]`` logits are ever stored. The teacher gets no
    gradient; a masked token contributes nothing; forward mode (``jax.jvp``) is unsupported.

    Args:
      hidden: student hidden states ``[..., D]``, identical along ``vocab_axis``.
      weight_shard: student head slice ``[D, V_local]`` (``[V_local, D]`` for ``"vd"``).
      target_hidden: teacher hidden states ``[..., D_teacher]``.
      target_weight_shard: teacher head slice in the same layout.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      skew: the teacher's weight :math:`\alpha \in [0, 1]` in the mixture (0 gives the forward
        KL); may be traced.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      mask: optional boolean per-token mask ``[...]``: False drops the token (0, not counted).
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads.
      vocab_size: the true vocabulary size when the heads were padded to a multiple of the axis.
      reduction: ``"mean"`` (default, over kept tokens), ``"sum"``, ``"batchmean"`` or ``"none"``.
      data_axis: mesh axis the tokens are split over; the mean is exact across it.
      token_block_size, vocab_block_size: block sizes (positive ints) or None (automatic).
      backward: ``"auto"`` (default), ``"rows"``, ``"one_pass"`` or ``"two_pass"``, as in
        :func:`vocab_parallel_linear_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The reduced divergence, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_linear_skew_forward_kl as divergence
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, w, th, tw: divergence(h, w, th, tw, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P(None, "vocab")),
      ...     out_specs=P())
      >>> h = jnp.array([[1.0, 0.0]])
      >>> w = jnp.array([[0.5, 0.5], [0.0, 0.0]])
      >>> teacher_w = jnp.array([[0.2, 0.8], [0.0, 0.0]])
      >>> print(round(float(loss(h, w, h, teacher_w)), 6))
      0.034989

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024.
    """
    heads = (hidden, weight_shard, target_hidden, target_weight_shard)
    ops, lead = distillation_ops(heads, mask, weight_layout, SHARD_DISTILL)
    name = "vocab_parallel_linear_skew_forward_kl"
    axes = shard_axes(name, ops, weight_layout, vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(coefficient=skew, temperature=temperature)
    return run("skew_forward_kl", ops, lead, options, engine, axes)[0]


def vocab_parallel_skew_forward_kl_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_skew_forward_kl, the skew forward KL, on whole logits.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of its size (the padded classes are masked), and builds the
    ``shard_map`` once per mesh, shapes and options: a new
    ``skew`` or ``temperature`` compiles nothing.
    The defaults are those of :func:`vocab_parallel_skew_forward_kl`, ``reduction`` included.

    Args:
      logits: ``[..., V]`` student logits.
      target_logits: ``[..., V]`` teacher (target) logits.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      skew, temperature, where, mask, reduction, accum_dtype: as in
        :func:`vocab_parallel_skew_forward_kl`.

    Returns:
      Per-token divergences ``[...]``, or their reduction.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_skew_forward_kl_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> teacher = jnp.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_skew_forward_kl_on_mesh(
      ...     student, teacher, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss[0] > loss[1]))
      (2,) True
    """
    ops, lead = logits_pair_ops(logits, target_logits, where, mask, MESH_LOGITS)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_skew_forward_kl_on_mesh")
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    options = dict(coefficient=skew, temperature=temperature)
    return run_on_mesh("skew_forward_kl", ops, lead, options, engine, place)[0]


def vocab_parallel_linear_skew_forward_kl_on_mesh(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_linear_skew_forward_kl, the skew forward KL, on whole heads.

    Splits both heads along their vocabulary dimension over ``vocab_axis``, padding ``V`` to a
    multiple of its size (padded classes are masked), the tokens over ``data_axis``
    (optional), and builds the ``shard_map`` once per mesh, shapes and options: a new
    ``skew`` or ``temperature`` compiles nothing. It takes every option of
    :func:`infoloss_jax.linear_skew_forward_kl`, with the same defaults.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: the student head, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states.
      target_weight: the teacher head, in the same layout.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      skew, temperature, mask, weight_layout, reduction: as in
        :func:`vocab_parallel_linear_skew_forward_kl`.
      token_block_size, vocab_block_size, backward, accum_dtype: as there.

    Returns:
      The reduced divergence, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_skew_forward_kl_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
      >>> loss = vocab_parallel_linear_skew_forward_kl_on_mesh(
      ...     hidden, weight, hidden, -weight, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss > 0))
      () True
    """
    heads = (hidden, weight, target_hidden, target_weight)
    ops, lead = distillation_ops(heads, mask, weight_layout, MESH_DISTILL)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_linear_skew_forward_kl_on_mesh")
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(coefficient=skew, temperature=temperature)
    return run_on_mesh("skew_forward_kl", ops, lead, options, engine, place)[0]


# ------------------------------------------------------------------------------ fused
@reraise_jvp("linear_skew_reverse_kl")
def linear_skew_reverse_kl(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    weight_layout: WeightLayout = "dv",
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Skew reverse KL(student || mixture) of a teacher and a student LM head, fused.

    .. math::
        \mathrm{KL}\big(Q \,\|\, \alpha Q + (1-\alpha) P\big), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's:
    DistiLLM's skew reverse KL, as :func:`infoloss_jax.skew_reverse_kl`: bounded by
    :math:`\log(1/\alpha)`, and ``skew=0`` is :func:`linear_reverse_kl`.

    The student's logits are ``hidden @ weight``, the teacher's ``target_hidden @
    target_weight`` (its hidden size may differ; the vocabulary may not). Neither ``[N, V]``
    logits array is ever materialized: two sweeps over the vocabulary tiles (the
    logsumexps, then the divergence's sums). The teacher is a fixed target: it receives no
    gradient. A masked token contributes nothing, to the value or to any gradient. Only
    reverse-mode differentiation is supported (``jax.custom_vjp``); ``jax.jvp`` raises
    ``TypeError``.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: student output projection, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states (same leading shape).
      target_weight: teacher output projection, in the same layout.
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads; never inferred.
      skew: the student's weight :math:`\alpha \in [0, 1]` in the mixture (0 gives the reverse
        KL); may be traced.
      temperature: positive temperature for both (no T**2 factor is applied); may be traced.
      mask: optional boolean per-token mask (shape ``hidden.shape[:-1]``, True = the token
        counts); False drops a token from the loss, its gradient and the mean.
      reduction: ``"none"``, ``"sum"``, ``"mean"`` (default, over kept tokens) or
        ``"batchmean"``.
      token_block_size: tokens per tile; ``None`` chooses from the shapes and a memory budget.
      vocab_block_size: classes per tile; ``None`` chooses from the shapes.
      backward: ``"auto"``, ``"rows"``, ``"fast"``, ``"one_pass"``, ``"two_pass"`` or
        ``"in_forward"``, as in :func:`linear_softmax_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The divergence, reduced as asked, in at least float32.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h, th = jax.random.normal(jax.random.key(0), (2, 4, 8)), jnp.ones((2, 4, 6))
      >>> w = jax.random.normal(jax.random.key(1), (8, 30))
      >>> tw = jax.random.normal(jax.random.key(2), (6, 30))
      >>> fused = il.linear_skew_reverse_kl(h, w, th, tw, reduction="none")
      >>> naive = il.skew_reverse_kl(h @ w, th @ tw)
      >>> print(fused.shape, bool(jnp.allclose(fused, naive, rtol=1e-5, atol=1e-6)))
      (2, 4) True

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024.
    """
    heads = (hidden, weight, target_hidden, target_weight)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(coefficient=skew, temperature=temperature)
    return linear_divergence("skew_reverse_kl", heads, mask, options, engine)


# ------------------------------------------------------------------------------ sharded
def vocab_parallel_skew_reverse_kl(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Skew reverse KL(student || mixture) with the vocabulary split over a mesh axis.

    .. math::
        \mathrm{KL}\big(Q \,\|\, \alpha Q + (1-\alpha) P\big), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's,
    as :func:`infoloss_jax.skew_reverse_kl` on the gathered logits.
    Call it **inside** ``jax.shard_map``: ``logits_shard`` (student) and
    ``target_logits_shard`` (teacher) are this device's ``[..., V_local]`` slices of logits
    split along ``vocab_axis``. The collectives over ``vocab_axis`` are two ``pmax`` and two
    ``psum``; no device holds a full vocabulary row. Gradients flow to both inputs (wrap the
    teacher in ``jax.lax.stop_gradient`` to freeze it). A masked token contributes nothing,
    to the value or to the gradients.

    Args:
      logits_shard: student logits slice ``[..., V_local]``.
      target_logits_shard: teacher logits slice, the same shape.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      skew: the student's weight :math:`\alpha \in [0, 1]` in the mixture (0 gives the reverse
        KL); may be traced.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      where: optional boolean class mask broadcastable to the slices (False excludes a class).
      mask: optional boolean per-token mask ``[...]`` (True = the token counts).
      vocab_size: the true vocabulary size when the slices were padded to a multiple of the axis
        size; ``V_local`` must equal ``ceil(vocab_size / d)``.
      reduction: ``"none"`` (default, per token), ``"sum"``, ``"mean"`` or ``"batchmean"``.
      data_axis: mesh axis the tokens are split over; the reductions are exact across it.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      Per-token divergences ``[...]`` (float32 for half-precision inputs) or a scalar.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_skew_reverse_kl
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda s, t: vocab_parallel_skew_reverse_kl(s, t, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(loss(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.035608

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024.
    """
    ops, lead = logits_pair_ops(logits_shard, target_logits_shard, where, mask, SHARD_LOGITS)
    name = "vocab_parallel_skew_reverse_kl"
    axes = shard_axes(name, ops, "dv", vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    options = dict(coefficient=skew, temperature=temperature)
    return run("skew_reverse_kl", ops, lead, options, engine, axes)[0]


def vocab_parallel_linear_skew_reverse_kl(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    vocab_size: int | None = None,
    reduction: Reduction = "mean",
    data_axis: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Skew reverse KL of two LM heads, the vocabulary split over a mesh axis.

    :func:`infoloss_jax.linear_skew_reverse_kl` with its statistics all-reduced across
    ``vocab_axis``, :math:`P = \mathrm{softmax}(t / T)` the teacher and
    :math:`Q = \mathrm{softmax}(s / T)` the student. Call it **inside** ``jax.shard_map``. The
    student logits are ``hidden @ weight_shard`` and the teacher logits ``target_hidden @
    target_weight_shard``, both slices of heads split along ``vocab_axis`` (the teacher's
    hidden size may differ). Neither the
    ``[N, V]`` nor the local ``[N, V_local]`` logits are ever stored. The teacher gets no
    gradient; a masked token contributes nothing; forward mode (``jax.jvp``) is unsupported.

    Args:
      hidden: student hidden states ``[..., D]``, identical along ``vocab_axis``.
      weight_shard: student head slice ``[D, V_local]`` (``[V_local, D]`` for ``"vd"``).
      target_hidden: teacher hidden states ``[..., D_teacher]``.
      target_weight_shard: teacher head slice in the same layout.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      skew: the student's weight :math:`\alpha \in [0, 1]` in the mixture (0 gives the reverse
        KL); may be traced.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      mask: optional boolean per-token mask ``[...]``: False drops the token (0, not counted).
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads.
      vocab_size: the true vocabulary size when the heads were padded to a multiple of the axis.
      reduction: ``"mean"`` (default, over kept tokens), ``"sum"``, ``"batchmean"`` or ``"none"``.
      data_axis: mesh axis the tokens are split over; the mean is exact across it.
      token_block_size, vocab_block_size: block sizes (positive ints) or None (automatic).
      backward: ``"auto"`` (default), ``"rows"``, ``"one_pass"`` or ``"two_pass"``, as in
        :func:`vocab_parallel_linear_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The reduced divergence, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_linear_skew_reverse_kl as divergence
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, w, th, tw: divergence(h, w, th, tw, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P(None, "vocab")),
      ...     out_specs=P())
      >>> h = jnp.array([[1.0, 0.0]])
      >>> w = jnp.array([[0.5, 0.5], [0.0, 0.0]])
      >>> teacher_w = jnp.array([[0.2, 0.8], [0.0, 0.0]])
      >>> print(round(float(loss(h, w, h, teacher_w)), 6))
      0.035608

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024.
    """
    heads = (hidden, weight_shard, target_hidden, target_weight_shard)
    ops, lead = distillation_ops(heads, mask, weight_layout, SHARD_DISTILL)
    name = "vocab_parallel_linear_skew_reverse_kl"
    axes = shard_axes(name, ops, weight_layout, vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(coefficient=skew, temperature=temperature)
    return run("skew_reverse_kl", ops, lead, options, engine, axes)[0]


def vocab_parallel_skew_reverse_kl_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_skew_reverse_kl, the skew reverse KL, on whole logits.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of its size (the padded classes are masked), and builds the
    ``shard_map`` once per mesh, shapes and options: a new
    ``skew`` or ``temperature`` compiles nothing.
    The defaults are those of :func:`vocab_parallel_skew_reverse_kl`, ``reduction`` included.

    Args:
      logits: ``[..., V]`` student logits.
      target_logits: ``[..., V]`` teacher (target) logits.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      skew, temperature, where, mask, reduction, accum_dtype: as in
        :func:`vocab_parallel_skew_reverse_kl`.

    Returns:
      Per-token divergences ``[...]``, or their reduction.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_skew_reverse_kl_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> teacher = jnp.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_skew_reverse_kl_on_mesh(
      ...     student, teacher, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss[0] > loss[1]))
      (2,) True
    """
    ops, lead = logits_pair_ops(logits, target_logits, where, mask, MESH_LOGITS)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_skew_reverse_kl_on_mesh")
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    options = dict(coefficient=skew, temperature=temperature)
    return run_on_mesh("skew_reverse_kl", ops, lead, options, engine, place)[0]


def vocab_parallel_linear_skew_reverse_kl_on_mesh(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    skew: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_linear_skew_reverse_kl, the skew reverse KL, on whole heads.

    Splits both heads along their vocabulary dimension over ``vocab_axis``, padding ``V`` to a
    multiple of its size (padded classes are masked), the tokens over ``data_axis``
    (optional), and builds the ``shard_map`` once per mesh, shapes and options: a new
    ``skew`` or ``temperature`` compiles nothing. It takes every option of
    :func:`infoloss_jax.linear_skew_reverse_kl`, with the same defaults.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: the student head, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states.
      target_weight: the teacher head, in the same layout.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      skew, temperature, mask, weight_layout, reduction: as in
        :func:`vocab_parallel_linear_skew_reverse_kl`.
      token_block_size, vocab_block_size, backward, accum_dtype: as there.

    Returns:
      The reduced divergence, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_skew_reverse_kl_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
      >>> loss = vocab_parallel_linear_skew_reverse_kl_on_mesh(
      ...     hidden, weight, hidden, -weight, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss > 0))
      () True
    """
    heads = (hidden, weight, target_hidden, target_weight)
    ops, lead = distillation_ops(heads, mask, weight_layout, MESH_DISTILL)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_linear_skew_reverse_kl_on_mesh")
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(coefficient=skew, temperature=temperature)
    return run_on_mesh("skew_reverse_kl", ops, lead, options, engine, place)[0]
