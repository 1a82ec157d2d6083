"""Total variation distance between the target's and the model's softmax: its math and its forms."""

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
from ..engine._loss_spec import declare
from ..engine._pairs import Divergence
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
@cached_eager("axis", "reduction")
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
@cached_eager("axis", "argnums")
def total_variation_grad(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    argnums: int | tuple[int, ...] = 0,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Gradient of total_variation in both logits.

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


# ------------------------------------------------------------------------------ fused
@reraise_jvp("linear_total_variation")
def linear_total_variation(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    weight_layout: WeightLayout = "dv",
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Total variation distance between a teacher and a student LM head, fused.

    .. math::
        \mathrm{TV}(P, Q) = \tfrac12 \sum_k |p_k - q_k|, \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's:
    symmetric and bounded in [0, 1], as :func:`infoloss_jax.total_variation`.

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
      >>> fused = il.linear_total_variation(h, w, th, tw, reduction="none")
      >>> naive = il.total_variation(h @ w, th @ tw)
      >>> print(fused.shape, bool(jnp.allclose(fused, naive, rtol=1e-5, atol=1e-6)))
      (2, 4) True

    References:
      Zhou et al., "DistillSpec: Improving Speculative Decoding via Knowledge
      Distillation", ICLR 2024.
    """
    heads = (hidden, weight, target_hidden, target_weight)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(temperature=temperature)
    return linear_divergence("total_variation", heads, mask, options, engine)


# ------------------------------------------------------------------------------ sharded
def vocab_parallel_total_variation(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Total variation distance with the vocabulary split over a mesh axis.

    .. math::
        \mathrm{TV}(P, Q) = \tfrac12 \sum_k |p_k - q_k|, \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's,
    as :func:`infoloss_jax.total_variation` on the gathered logits.
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
      >>> from infoloss_jax.sharded import vocab_parallel_total_variation
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda s, t: vocab_parallel_total_variation(s, t, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(loss(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.145656

    References:
      Zhou et al., "DistillSpec: Improving Speculative Decoding via Knowledge
      Distillation", ICLR 2024.
    """
    ops, lead = logits_pair_ops(logits_shard, target_logits_shard, where, mask, SHARD_LOGITS)
    name = "vocab_parallel_total_variation"
    axes = shard_axes(name, ops, "dv", vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    options = dict(temperature=temperature)
    return run("total_variation", ops, lead, options, engine, axes)[0]


def vocab_parallel_linear_total_variation(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
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
    r"""Total variation of two LM heads, the vocabulary split over a mesh axis.

    :func:`infoloss_jax.linear_total_variation` with its statistics all-reduced across
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
      >>> from infoloss_jax.sharded import vocab_parallel_linear_total_variation as divergence
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, w, th, tw: divergence(h, w, th, tw, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P(None, "vocab")),
      ...     out_specs=P())
      >>> h = jnp.array([[1.0, 0.0]])
      >>> w = jnp.array([[0.5, 0.5], [0.0, 0.0]])
      >>> teacher_w = jnp.array([[0.2, 0.8], [0.0, 0.0]])
      >>> print(round(float(loss(h, w, h, teacher_w)), 6))
      0.145656

    References:
      Zhou et al., "DistillSpec: Improving Speculative Decoding via Knowledge
      Distillation", ICLR 2024.
    """
    heads = (hidden, weight_shard, target_hidden, target_weight_shard)
    ops, lead = distillation_ops(heads, mask, weight_layout, SHARD_DISTILL)
    name = "vocab_parallel_linear_total_variation"
    axes = shard_axes(name, ops, weight_layout, vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(temperature=temperature)
    return run("total_variation", ops, lead, options, engine, axes)[0]


def vocab_parallel_total_variation_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_total_variation, the total variation distance, on whole logits.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of its size (the padded classes are masked), and builds the
    ``shard_map`` once per mesh, shapes and options: a new
    ``temperature`` compiles nothing.
    The defaults are those of :func:`vocab_parallel_total_variation`, ``reduction`` included.

    Args:
      logits: ``[..., V]`` student logits.
      target_logits: ``[..., V]`` teacher (target) logits.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      temperature, where, mask, reduction, accum_dtype: as in
        :func:`vocab_parallel_total_variation`.

    Returns:
      Per-token divergences ``[...]``, or their reduction.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_total_variation_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> teacher = jnp.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_total_variation_on_mesh(
      ...     student, teacher, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss[0] > loss[1]))
      (2,) True
    """
    ops, lead = logits_pair_ops(logits, target_logits, where, mask, MESH_LOGITS)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_total_variation_on_mesh")
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    options = dict(temperature=temperature)
    return run_on_mesh("total_variation", ops, lead, options, engine, place)[0]


def vocab_parallel_linear_total_variation_on_mesh(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_linear_total_variation, the total variation distance, on whole heads.

    Splits both heads along their vocabulary dimension over ``vocab_axis``, padding ``V`` to a
    multiple of its size (padded classes are masked), the tokens over ``data_axis``
    (optional), and builds the ``shard_map`` once per mesh, shapes and options: a new
    ``temperature`` compiles nothing. It takes every option of
    :func:`infoloss_jax.linear_total_variation`, with the same defaults.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: the student head, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states.
      target_weight: the teacher head, in the same layout.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      temperature, mask, weight_layout, reduction: as in
        :func:`vocab_parallel_linear_total_variation`.
      token_block_size, vocab_block_size, backward, accum_dtype: as there.

    Returns:
      The reduced divergence, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_total_variation_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
      >>> loss = vocab_parallel_linear_total_variation_on_mesh(
      ...     hidden, weight, hidden, -weight, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss > 0))
      () True
    """
    heads = (hidden, weight, target_hidden, target_weight)
    ops, lead = distillation_ops(heads, mask, weight_layout, MESH_DISTILL)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_linear_total_variation_on_mesh")
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = dict(temperature=temperature)
    return run_on_mesh("total_variation", ops, lead, options, engine, place)[0]
