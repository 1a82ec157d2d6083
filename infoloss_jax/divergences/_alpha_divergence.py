"""Amari's alpha-divergence between the target's and the model's softmax, with its KL limits."""

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
from ..engine._pairs import NEG_INF, Divergence
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
@cached_eager("axis", "reduction")
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
@cached_eager("axis", "argnums")
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
    r"""Gradient of alpha_divergence in both logits.

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


# ------------------------------------------------------------------------------ fused
@reraise_jvp("linear_alpha_divergence")
def linear_alpha_divergence(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    weight_layout: WeightLayout = "dv",
    alpha: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Alpha-divergence between a teacher and a student LM head, fused.

    .. math::
        D_\alpha(P \,\|\, Q) = \frac{1 - \sum_k p_k^{\alpha}\, q_k^{1-\alpha}}{\alpha (1 - \alpha)},
        \quad P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's:
    Amari's family, as :func:`infoloss_jax.alpha_divergence`: the forward KL at
    ``alpha=1``, the reverse KL at ``alpha=0``.

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
      alpha: any finite real :math:`\alpha`: 1 gives the forward KL(teacher || student), 0 the
        reverse KL; may be traced.
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
      >>> fused = il.linear_alpha_divergence(h, w, th, tw, reduction="none")
      >>> naive = il.alpha_divergence(h @ w, th @ tw)
      >>> print(fused.shape, bool(jnp.allclose(fused, naive, rtol=1e-5, atol=1e-6)))
      (2, 4) True

    References:
      Amari, "Differential-Geometrical Methods in Statistics", 1985; Wang et al.,
      "AlphaNet: Improved Training of Supernets with Alpha-Divergence", 2021.
    """
    heads = (hidden, weight, target_hidden, target_weight)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(coefficient=alpha, temperature=temperature)
    return linear_divergence("alpha_divergence", heads, mask, options, engine)


# ------------------------------------------------------------------------------ sharded
def vocab_parallel_alpha_divergence(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    alpha: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Alpha-divergence with the vocabulary split over a mesh axis.

    .. math::
        D_\alpha(P \,\|\, Q) = \frac{1 - \sum_k p_k^{\alpha}\, q_k^{1-\alpha}}{\alpha (1 - \alpha)},
        \quad P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's,
    as :func:`infoloss_jax.alpha_divergence` on the gathered logits.
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
      alpha: any finite real :math:`\alpha`: 1 gives the forward KL(teacher || student), 0 the
        reverse KL; may be traced.
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
      >>> from infoloss_jax.sharded import vocab_parallel_alpha_divergence
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda s, t: vocab_parallel_alpha_divergence(s, t, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(loss(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.04361

    References:
      Amari, "Differential-Geometrical Methods in Statistics", 1985; Wang et al.,
      "AlphaNet: Improved Training of Supernets with Alpha-Divergence", 2021.
    """
    ops, lead = logits_pair_ops(logits_shard, target_logits_shard, where, mask, SHARD_LOGITS)
    name = "vocab_parallel_alpha_divergence"
    axes = shard_axes(name, ops, "dv", vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    options = dict(coefficient=alpha, temperature=temperature)
    return run("alpha_divergence", ops, lead, options, engine, axes)[0]


def vocab_parallel_linear_alpha_divergence(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    alpha: float | jax.Array = 0.5,
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
    r"""Alpha-divergence of two LM heads, the vocabulary split over a mesh axis.

    :func:`infoloss_jax.linear_alpha_divergence` with its statistics all-reduced across
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
      alpha: any finite real :math:`\alpha`: 1 gives the forward KL(teacher || student), 0 the
        reverse KL; may be traced.
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
      >>> from infoloss_jax.sharded import vocab_parallel_linear_alpha_divergence as divergence
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, w, th, tw: divergence(h, w, th, tw, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P(None, "vocab")),
      ...     out_specs=P())
      >>> h = jnp.array([[1.0, 0.0]])
      >>> w = jnp.array([[0.5, 0.5], [0.0, 0.0]])
      >>> teacher_w = jnp.array([[0.2, 0.8], [0.0, 0.0]])
      >>> print(round(float(loss(h, w, h, teacher_w)), 6))
      0.04361

    References:
      Amari, "Differential-Geometrical Methods in Statistics", 1985; Wang et al.,
      "AlphaNet: Improved Training of Supernets with Alpha-Divergence", 2021.
    """
    heads = (hidden, weight_shard, target_hidden, target_weight_shard)
    ops, lead = distillation_ops(heads, mask, weight_layout, SHARD_DISTILL)
    name = "vocab_parallel_linear_alpha_divergence"
    axes = shard_axes(name, ops, weight_layout, vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(coefficient=alpha, temperature=temperature)
    return run("alpha_divergence", ops, lead, options, engine, axes)[0]


def vocab_parallel_alpha_divergence_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    alpha: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_alpha_divergence, the alpha-divergence, on whole logits.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of its size (the padded classes are masked), and builds the
    ``shard_map`` once per mesh, shapes and options: a new
    ``alpha`` or ``temperature`` compiles nothing.
    The defaults are those of :func:`vocab_parallel_alpha_divergence`, ``reduction`` included.

    Args:
      logits: ``[..., V]`` student logits.
      target_logits: ``[..., V]`` teacher (target) logits.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      alpha, temperature, where, mask, reduction, accum_dtype: as in
        :func:`vocab_parallel_alpha_divergence`.

    Returns:
      Per-token divergences ``[...]``, or their reduction.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_alpha_divergence_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> teacher = jnp.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_alpha_divergence_on_mesh(
      ...     student, teacher, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss[0] > loss[1]))
      (2,) True
    """
    ops, lead = logits_pair_ops(logits, target_logits, where, mask, MESH_LOGITS)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_alpha_divergence_on_mesh")
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    options = dict(coefficient=alpha, temperature=temperature)
    return run_on_mesh("alpha_divergence", ops, lead, options, engine, place)[0]


def vocab_parallel_linear_alpha_divergence_on_mesh(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    alpha: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_linear_alpha_divergence, the alpha-divergence, on whole heads.

    Splits both heads along their vocabulary dimension over ``vocab_axis``, padding ``V`` to a
    multiple of its size (padded classes are masked), the tokens over ``data_axis``
    (optional), and builds the ``shard_map`` once per mesh, shapes and options: a new
    ``alpha`` or ``temperature`` compiles nothing. It takes every option of
    :func:`infoloss_jax.linear_alpha_divergence`, with the same defaults.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: the student head, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states.
      target_weight: the teacher head, in the same layout.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      alpha, temperature, mask, weight_layout, reduction: as in
        :func:`vocab_parallel_linear_alpha_divergence`.
      token_block_size, vocab_block_size, backward, accum_dtype: as there.

    Returns:
      The reduced divergence, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_alpha_divergence_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
      >>> loss = vocab_parallel_linear_alpha_divergence_on_mesh(
      ...     hidden, weight, hidden, -weight, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss > 0))
      () True
    """
    heads = (hidden, weight, target_hidden, target_weight)
    ops, lead = distillation_ops(heads, mask, weight_layout, MESH_DISTILL)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_linear_alpha_divergence_on_mesh")
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(coefficient=alpha, temperature=temperature)
    return run_on_mesh("alpha_divergence", ops, lead, options, engine, place)[0]
