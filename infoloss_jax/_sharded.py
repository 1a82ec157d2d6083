"""Vocabulary-parallel losses for ``jax.shard_map``: the Megatron-LM algorithm in JAX.

Each device holds a slice of the vocabulary (``V / d`` classes on each of the ``d`` devices of the
mesh axis ``axis_name``); no device ever holds a full ``[N, V]`` row. Cross-entropy then needs
one ``pmax`` of an ``[N]`` vector and one ``psum`` of a ``[4, N]`` stack:

1. local max over the slice, then ``pmax`` (a shift for stability only: no gradient flows through
   it);
2. local sum of ``exp(logit - max)``, the local target logit (a masked sum, zero on devices whose
   slice does not hold the label), the local sum of logits (for label smoothing) and the local
   number of classes;
3. one fused ``psum`` of those four numbers per token;
4. the gradient from the softmax, recomputed in the backward pass from the logits and the saved
   global logsumexp (the residual is the input itself, so no second logits-sized buffer lives
   between the passes), with no collective in the backward pass of the logits version.

The functions without ``_on_mesh`` are meant to be called INSIDE ``jax.shard_map`` by the user;
the ``*_on_mesh`` wrappers take whole arrays and a :class:`jax.sharding.Mesh`, pad the vocabulary
to a multiple of the mesh axis and build the ``shard_map`` themselves.

Vocabulary padding: when ``V`` is not a multiple of ``d``, pad logits (with anything: they are
masked) or weight columns up to ``d * ceil(V / d)`` and pass ``vocab_size=V``; classes with a
global index ``>= vocab_size`` are excluded from every sum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from ._validation import (
    accumulation_dtype,
    as_float_array,
    as_integer_array,
    check_beta,
    check_temperature,
    describe,
)

AxisName = Hashable | tuple[Hashable, ...]

_REDUCTIONS = ("none", "sum", "mean")
# Working-set budget (elements) for the automatic block sizes of the fused linear losses: one
# [token_block, vocab_block] logits tile lives at a time. The budget is split over the d devices
# of the vocabulary axis, like the vocabulary itself (2**21 elements = 8 MiB of float32 over the
# whole axis, so per-device memory shrinks with d), but never below 2**17 elements per device
# (512 KiB) so that the matmuls stay efficient.
_BLOCK_ELEMENTS = 2**21
_MIN_BLOCK_ELEMENTS = 2**17


def _block_budget(axis_size: int) -> int:
    return max(_MIN_BLOCK_ELEMENTS, _BLOCK_ELEMENTS // max(axis_size, 1))


# --------------------------------------------------------------------------------------------
# Argument checks (trace time).
# --------------------------------------------------------------------------------------------


def _axis_size(axis_name: AxisName, name: str, fn: str) -> int:
    """Size of a bound mesh axis; a clear ``ValueError`` when the axis is not bound here."""
    if axis_name is None:
        raise ValueError(f"`{name}` must name a mesh axis; got None.")
    try:
        return lax.axis_size(axis_name)
    except NameError as err:
        raise ValueError(
            f"`{name}`={axis_name!r} is not an axis of the enclosing mesh. `{fn}` must be called "
            f"inside `jax.shard_map` over a mesh that has this axis (or use `{fn}_on_mesh`, "
            "which builds the shard_map for you)."
        ) from err


def _require_split(x: jax.Array, name: str, axis_name: AxisName) -> None:
    """Raises unless ``x`` is typed as varying over ``axis_name`` (a per-device slice).

    With ``shard_map(..., check_vma=False)`` JAX does not track which values differ across
    devices, and the transpose of the collectives then gives wrong gradients; a value that is
    replicated over the vocabulary axis is not a vocabulary slice at all.
    """
    varying = _varying_axes(x)
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    missing = [a for a in names if a not in varying]
    if missing:
        raise ValueError(
            f"`{name}` {describe(x)} is not split over mesh axis {axis_name!r}: pass each "
            f"device's slice of the vocabulary (shard_map in_specs splitting its last axis over "
            f"{axis_name!r}) inside `jax.shard_map` with check_vma=True (the default); with "
            "check_vma=False the gradients of the collectives would be wrong."
        )


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        valid = ", ".join(repr(r) for r in _REDUCTIONS)
        raise ValueError(f"Unknown `reduction`={reduction!r}; expected one of {valid}.")
    return reduction


def _check_label_smoothing(value) -> float:
    if isinstance(value, jax.core.Tracer):
        raise TypeError("`label_smoothing` must be a static Python float, not a traced array.")
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"`label_smoothing` must lie in [0, 1); got {value!r}.")
    return v


def _check_nonnegative(value, name: str) -> float:
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"`{name}` must be a static Python float, not a traced array.")
    v = float(value)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}.")
    return v


def _check_softcap(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, jax.core.Tracer):
        raise TypeError("`logit_softcap` must be a static Python float or None.")
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(
            f"`logit_softcap` must be a positive finite number or None; got {value!r}."
        )
    return v


def _check_block(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int or None; got {value!r}.")
    return int(value)


def _vocab_layout(
    local_vocab: int, axis_size: int, vocab_size: int | None, what: str, axis_name: AxisName
) -> int:
    """Checks the shard size against the mesh and returns the true (unpadded) vocabulary size."""
    padded = local_vocab * axis_size
    if vocab_size is None:
        return padded
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"`vocab_size` must be a positive int or None; got {vocab_size!r}.")
    expected = -(-vocab_size // axis_size)
    if local_vocab != expected:
        raise ValueError(
            f"{what} holds {local_vocab} classes per device, but `vocab_size`={vocab_size} over "
            f"the {axis_size} devices of mesh axis {axis_name!r} needs ceil({vocab_size}/"
            f"{axis_size}) = {expected} per device (the vocabulary padded to "
            f"{expected * axis_size})."
        )
    return vocab_size


def _vocab_offset(local_vocab: int, axis_name: AxisName) -> jax.Array:
    return lax.axis_index(axis_name) * local_vocab


# --------------------------------------------------------------------------------------------
# Shared per-token kernels.
# --------------------------------------------------------------------------------------------


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


def _softcap_derivative(capped: jax.Array, cap: float | None) -> jax.Array:
    return 1.0 if cap is None else 1.0 - jnp.square(capped / cap)


def _class_mask(
    raw: jax.Array, first_class, vocab_size: int, where: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(global class index, valid mask) for a [rows, cols] block starting at ``first_class``.

    A class is valid when it is inside the true vocabulary, kept by ``where`` and its raw logit is
    not -inf (-inf logits are excluded classes, as in the core losses, even under a softcap).
    """
    classes = first_class + lax.broadcasted_iota(jnp.int32, raw.shape, raw.ndim - 1)
    valid = (classes < vocab_size) & (raw > -jnp.inf)
    if where is not None:
        valid = valid & where
    return classes, valid


def _ce_partials(
    z: jax.Array, classes: jax.Array, valid: jax.Array, labels: jax.Array, shift: jax.Array
) -> jax.Array:
    """[4, rows] local partial sums: sum exp(z - shift), target logit, sum of z, class count."""
    zs = jnp.where(valid, z - shift[:, None], -jnp.inf)
    sumexp = jnp.sum(jnp.exp(zs), axis=-1)
    target = jnp.sum(jnp.where(classes == labels[:, None], z, 0.0), axis=-1)
    sum_z = jnp.sum(jnp.where(valid, z, 0.0), axis=-1)
    count = jnp.sum(valid, axis=-1).astype(z.dtype)
    return jnp.stack([sumexp, target, sum_z, count])


def _finite_or_zero(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.isfinite(x), x, 0.0)


def _ce_from_totals(
    shift: jax.Array,
    totals: jax.Array,
    labels: jax.Array,
    keep: jax.Array,
    vocab_size: int,
    label_smoothing: float,
    z_loss: float,
) -> tuple[jax.Array, jax.Array]:
    """Per-token loss, global logsumexp and contributing-row mask from the all-reduced sums."""
    sumexp, target, sum_z, count = totals
    lse = jnp.where(sumexp > 0, shift + jnp.log(jnp.where(sumexp > 0, sumexp, 1.0)), 0.0)
    loss = lse - target
    if label_smoothing:
        smooth = lse - sum_z / jnp.maximum(count, 1.0)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    if z_loss:
        loss = loss + z_loss * jnp.square(lse)
    out_of_range = (labels < 0) | (labels >= vocab_size)
    loss = jnp.where(out_of_range, jnp.nan, loss)
    # A row with no class left (all masked) gives 0 and no weight in the mean, as in the core.
    contributing = keep & (count > 0)
    return jnp.where(contributing, loss, 0.0), lse, contributing


def _ce_logit_grad(
    z: jax.Array,
    classes: jax.Array,
    valid: jax.Array,
    labels: jax.Array,
    lse: jax.Array,
    coef: jax.Array,
    inv_count: jax.Array,
    label_smoothing: float,
    z_loss: float,
) -> jax.Array:
    """d loss / d z for one block: coef * [(1 + 2 c lse) softmax - (1-eps) onehot - eps/K]."""
    probs = jnp.where(valid, jnp.exp(jnp.where(valid, z - lse[:, None], -jnp.inf)), 0.0)
    if z_loss:
        probs = probs * (1.0 + 2.0 * z_loss * lse)[:, None]
    onehot = (valid & (classes == labels[:, None])).astype(z.dtype)
    grad = probs - (1.0 - label_smoothing) * onehot
    if label_smoothing:
        grad = grad - jnp.where(valid, label_smoothing * inv_count[:, None], 0.0)
    return coef[:, None] * grad


def _reduce(
    per_token: jax.Array,
    keep: jax.Array,
    reduction: str,
    data_axis_name: AxisName | None,
) -> jax.Array:
    """Sum or mean over (non-ignored) tokens, exact across the data axis when one is named."""
    if reduction == "none":
        return per_token
    total = jnp.sum(per_token)
    if reduction == "sum":
        return total if data_axis_name is None else lax.psum(total, data_axis_name)
    count = jnp.sum(keep).astype(per_token.dtype)
    if data_axis_name is not None:
        total, count = lax.psum(jnp.stack([total, count]), data_axis_name)
    return total / jnp.maximum(count, 1.0)


def _keep_mask(labels: jax.Array, ignore_index: int | None) -> jax.Array:
    return jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index


def _varying_axes(x) -> frozenset:
    """The mesh axes ``x`` varies over inside shard_map (its type's "vma")."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # newer JAX; older ones have `vma`
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", ()))


def _vary_like(x: jax.Array, *likes) -> jax.Array:
    """Marks ``x`` as varying over every mesh axis any of ``likes`` varies over (shard_map's
    check_vma types: scan carries and cotangents must carry their primal's type)."""
    want = frozenset().union(*(_varying_axes(like) for like in likes if like is not None))
    missing = tuple(sorted(want - _varying_axes(x), key=str))
    if not missing:
        return x
    if hasattr(lax, "pcast"):  # newer JAX; older ones have `pvary`
        return lax.pcast(x, missing, to="varying")
    return lax.pvary(x, missing)


def _match_cotangent(ct: jax.Array, like: jax.Array) -> jax.Array:
    """The cotangent of a primal that is invariant over some mesh axes is the sum of the
    per-device contributions over those axes; then it gets the primal's varying type."""
    extra = tuple(sorted(_varying_axes(ct) - _varying_axes(like), key=str))
    if extra:
        ct = lax.psum(ct, extra)
    return _vary_like(ct, like)


# --------------------------------------------------------------------------------------------
# Vocab-parallel cross-entropy on logits.
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _vp_ce(logits, labels, where, axis_name, vocab_size, ignore_index, eps, zc, cap):
    out, _ = _vp_ce_fwd(logits, labels, where, axis_name, vocab_size, ignore_index, eps, zc, cap)
    return out


def _vp_ce_fwd(logits, labels, where, axis_name, vocab_size, ignore_index, eps, zc, cap):
    acc = accumulation_dtype(logits.dtype)
    raw = logits.astype(acc)
    z = _softcap(raw, cap)
    classes, valid = _class_mask(raw, _vocab_offset(logits.shape[-1], axis_name), vocab_size, where)
    local_max = jnp.max(jnp.where(valid, z, -jnp.inf), axis=-1)
    shift = lax.stop_gradient(_finite_or_zero(lax.pmax(local_max, axis_name)))
    totals = lax.psum(_ce_partials(z, classes, valid, labels, shift), axis_name)
    keep = _keep_mask(labels, ignore_index)
    loss, lse, keep = _ce_from_totals(shift, totals, labels, keep, vocab_size, eps, zc)
    inv_count = 1.0 / jnp.maximum(totals[3], 1.0)
    # The second output (1.0 for rows that count in the mean) carries no gradient.
    return (loss, keep.astype(acc)), (logits, labels, where, lse, inv_count, keep)


def _vp_ce_bwd(axis_name, vocab_size, ignore_index, eps, zc, cap, residuals, cotangents):
    logits, labels, where, lse, inv_count, keep = residuals
    g = cotangents[0]
    acc = lse.dtype
    raw = logits.astype(acc)
    z = _softcap(raw, cap)
    classes, valid = _class_mask(raw, _vocab_offset(logits.shape[-1], axis_name), vocab_size, where)
    coef = jnp.where(keep, g.astype(acc), 0.0)
    dz = _ce_logit_grad(z, classes, valid, labels, lse, coef, inv_count, eps, zc)
    dlogits = (dz * _softcap_derivative(z, cap)).astype(logits.dtype)
    return _match_cotangent(dlogits, logits), None, None


_vp_ce.defvjp(_vp_ce_fwd, _vp_ce_bwd)


def vocab_parallel_cross_entropy(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    *,
    axis_name: AxisName,
    where: ArrayLike | None = None,
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    reduction: str = "none",
    data_axis_name: AxisName | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy with integer labels, the vocabulary split over a mesh axis.

    Call it **inside** ``jax.shard_map``. Each device passes its slice of the logits; together the
    slices along ``axis_name`` form the full vocabulary, device ``i`` holding classes
    ``[i * V_local, (i + 1) * V_local)``. The result equals
    ``softmax_cross_entropy_with_integer_labels`` on the gathered logits, without gathering them:

    .. math::

        \ell_i = (1 - \varepsilon)\,(\mathrm{lse}_i - z_{i, y_i})
                 + \varepsilon\,\bigl(\mathrm{lse}_i - \tfrac{1}{K}\textstyle\sum_k z_{ik}\bigr)
                 + c\,\mathrm{lse}_i^2,
        \qquad \mathrm{lse}_i = \log \textstyle\sum_k e^{z_{ik}},

    that is :math:`H(\text{smoothed one-hot}, \mathrm{softmax}(z))` plus the z-loss, where
    ``z = softcap * tanh(logits / softcap)`` when ``logit_softcap`` is set and ``K`` counts the
    unmasked classes. The collectives are one ``pmax`` and one fused ``psum`` of four numbers per
    token over ``axis_name`` (Megatron-LM's algorithm). The gradient is ``softmax - target``,
    recomputed in the backward pass from the logits and the saved logsumexp, with no collective.

    Args:
      logits_shard: ``[..., V_local]`` float logits, this device's vocabulary slice.
      labels: ``[...]`` integer labels, *global* class indices, the same on every device of
        ``axis_name``. Labels outside ``[0, vocab_size)`` that are not ``ignore_index`` give NaN.
      axis_name: the mesh axis (or tuple of axes) the vocabulary is split over.
      where: optional boolean mask broadcastable to ``logits_shard``: False excludes a class.
      vocab_size: the true vocabulary size when it was padded up to a multiple of the axis size;
        classes at or beyond it are excluded. ``V_local`` must equal ``ceil(vocab_size / d)``.
      ignore_index: tokens with this label get zero loss, zero gradient and no weight in the mean.
      label_smoothing: ``eps`` in [0, 1): the target is ``(1 - eps) onehot + eps / K``.
      z_loss: coefficient ``c`` of the ``lse ** 2`` penalty (PaLM's z-loss).
      logit_softcap: cap ``s`` applied as ``s * tanh(logits / s)`` before everything else.
      reduction: ``"none"`` (per token, shape ``[...]``), ``"sum"`` or ``"mean"`` (over
        non-ignored tokens).
      data_axis_name: mesh axis (or axes) the tokens are split over; ``"sum"`` and ``"mean"``
        then reduce across it too, so the mean is exact over the global batch.

    Returns:
      Per-token losses ``[...]`` (float32 for half-precision inputs) or a scalar, identical on
        every device of ``axis_name``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_cross_entropy
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda z, y: vocab_parallel_cross_entropy(z, y, axis_name="vocab"),
      ...     mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P())
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> print([round(float(v), 4) for v in loss(logits, jnp.array([0, 2]))])
      [0.2413, 1.0986]

    References:
      Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model
      Parallelism", 2019 (vocab-parallel cross-entropy).
    """
    fn = "vocab_parallel_cross_entropy"
    logits = as_float_array(logits_shard, "logits_shard")
    labels = as_integer_array(labels, "labels")
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`labels` must have the shape of `logits_shard` without its last (vocabulary) axis; "
            f"got `logits_shard` {describe(logits)} and `labels` {describe(labels)}."
        )
    d = _axis_size(axis_name, "axis_name", fn)
    vocab = _vocab_layout(logits.shape[-1], d, vocab_size, "`logits_shard`", axis_name)
    _require_split(logits, "logits_shard", axis_name)
    if data_axis_name is not None:
        _axis_size(data_axis_name, "data_axis_name", fn)
    eps = _check_label_smoothing(label_smoothing)
    zc = _check_nonnegative(z_loss, "z_loss")
    cap = _check_softcap(logit_softcap)
    _check_reduction(reduction)
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            raise TypeError(f"`where` must be a boolean mask; got {describe(where)}.")
        where = jnp.broadcast_to(where, logits.shape).reshape(-1, logits.shape[-1])
    batch_shape = labels.shape
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    loss, keep = _vp_ce(
        flat_logits, flat_labels, where, axis_name, vocab, ignore_index, eps, zc, cap
    )
    if reduction == "none":
        return loss.reshape(batch_shape)
    return _reduce(loss, lax.stop_gradient(keep), reduction, data_axis_name)


# --------------------------------------------------------------------------------------------
# Vocab-parallel fused linear cross-entropy: the local [N, V_local] logits are never stored
# either; they are computed block by block (tokens x vocabulary), forward and backward.
# --------------------------------------------------------------------------------------------


def _floor_pow2(x: int) -> int:
    return 1 << (max(int(x), 1).bit_length() - 1)


def _auto_blocks(
    n_tokens: int, hidden_size: int, local_vocab: int, axis_size: int, token_block, vocab_block
) -> tuple[int, int]:
    """Block sizes: a [Bt, Bv] logits tile, a [D, Bv] weight slice and a [Bt, D] hidden block
    each hold at most ``_block_budget(axis_size)`` elements (powers of two, overridable)."""
    budget = _block_budget(axis_size)
    bv = vocab_block or max(128, _floor_pow2(budget // max(hidden_size, 1)))
    bv = max(1, min(bv, local_vocab))
    limit = min(budget // bv, budget // max(hidden_size, 1))
    bt = token_block or max(8, _floor_pow2(limit))
    return max(1, min(bt, n_tokens)), bv


def _vocab_block_start(j, block: int, local_vocab: int):
    """Start column of vocabulary block ``j``; the last block is shifted left to stay in bounds,
    and the columns it shares with the previous block are masked as duplicates."""
    return jnp.minimum(j * block, local_vocab - block)


def _pad_rows(x, bt: int):
    """Pads the token axis to a multiple of ``bt`` (padded rows get zero cotangent)."""
    pad = -x.shape[0] % bt
    return x if pad == 0 else jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def _pinned_scan(body, carry, xs, pinned):
    """``lax.scan`` whose body also gets ``pinned`` (the large inputs it slices) through the carry,
    behind an optimization barrier. Without it XLA's CPU backend, which computes bfloat16 in
    float32, hoists ``convert(weight)`` out of the loop: a float32 copy of the whole weight shard,
    the memory this loss exists to save."""

    def step(state, x):
        c, p = state
        # One barrier per array keeps each its own varying-mesh-axes type.
        p = jax.tree.map(lax.optimization_barrier, p)
        c, y = body(c, x, p)
        return (c, p), y

    (carry, _), ys = lax.scan(step, (carry, pinned), xs)
    return carry, ys


def _matmul(a, b, contract, ctx):
    """``a`` x ``b`` contracted over ``contract`` in the inputs' dtype, accumulated in acc."""
    dtype = ctx["compute"]
    return lax.dot_general(
        a.astype(dtype), b.astype(dtype), (contract, ((), ())), preferred_element_type=ctx["acc"]
    ).astype(ctx["acc"])


def _linear_block(h_blk, weight, bias, start, j, ctx, size=None):
    """Raw and capped logits, global classes and the valid mask of one [Bt, Bv] block (or of a
    narrower static ``size`` for a ragged last block)."""
    bv = ctx["bv"]
    width = bv if size is None else size
    w = lax.dynamic_slice_in_dim(weight, start, width, axis=1)
    raw = _matmul(h_blk, w, ((1,), (0,)), ctx)
    if bias is not None:
        raw = raw + lax.dynamic_slice_in_dim(bias, start, width).astype(ctx["acc"])
    # Column masks are [1, Bv] rows (broadcast against the tile): a class is valid when it lies
    # in the true vocabulary and was not already covered by the previous (shifted) block.
    column = start + lax.broadcasted_iota(jnp.int32, (1, width), 1)
    classes = ctx["offset"] + column
    valid = (classes < ctx["vocab_size"]) & (column >= j * bv)
    return raw, _softcap(raw, ctx["cap"]), classes, valid, w


def _linear_token_stats(h_blk, labels_blk, weight, bias, ctx, vary):
    """Online (max, sumexp, target, sum_z, count) over this device's vocabulary slice."""
    acc = ctx["acc"]

    def step(carry, j, pinned):
        m, s, target, sum_z, count = carry
        weight, bias = pinned
        start = _vocab_block_start(j, ctx["bv"], ctx["local_vocab"])
        _, z, classes, valid, _ = _linear_block(h_blk, weight, bias, start, j, ctx)
        zm = jnp.where(valid, z, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(zm, axis=-1))
        safe = _finite_or_zero(m_new)
        s = s * jnp.exp(jnp.where(jnp.isfinite(m), m - safe, -jnp.inf)) + jnp.sum(
            jnp.exp(zm - safe[:, None]), axis=-1
        )
        hit = valid & (classes == labels_blk[:, None])
        target = target + jnp.sum(jnp.where(hit, z, 0.0), axis=-1)
        if ctx["eps"]:
            sum_z = sum_z + jnp.sum(jnp.where(valid, z, 0.0), axis=-1)
        count = count + jnp.sum(valid).astype(acc)
        return (m_new, s, target, sum_z, count), None

    zeros = _vary_like(jnp.zeros((h_blk.shape[0],), acc), *vary)
    init = (zeros - jnp.inf, zeros, zeros, zeros, zeros)
    stats, _ = _pinned_scan(step, init, jnp.arange(ctx["nv"]), (weight, bias))
    return stats


def _linear_ctx(hidden, weight, axis_name, vocab_size, eps, zc, cap, bt, bv):
    local_vocab = weight.shape[1]
    return dict(
        acc=accumulation_dtype(hidden.dtype, weight.dtype),
        compute=jnp.result_type(hidden.dtype, weight.dtype),
        axis_name=axis_name,
        vocab_size=vocab_size,
        local_vocab=local_vocab,
        offset=_vocab_offset(local_vocab, axis_name),
        eps=eps,
        zc=zc,
        cap=cap,
        bt=bt,
        bv=bv,
        nv=-(-local_vocab // bv),
        tile_grad=_ce_tile_grad,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9, 10, 11, 12))
def _vp_linear_ce(
    hidden, labels, weight, bias, axis_name, vocab_size, ignore, eps, zc, cap, bt, bv, backward
):
    args = (axis_name, vocab_size, ignore, eps, zc, cap, bt, bv, backward)
    out, _ = _vp_linear_ce_fwd(hidden, labels, weight, bias, *args)
    return out


def _vp_linear_ce_fwd(
    hidden, labels, weight, bias, axis_name, vocab_size, ignore, eps, zc, cap, bt, bv, backward
):
    ctx = _linear_ctx(hidden, weight, axis_name, vocab_size, eps, zc, cap, bt, bv)
    n = hidden.shape[0]
    padded_h, padded_y = _pad_rows(hidden, bt), _pad_rows(labels, bt)
    vary = (hidden, weight, bias, labels)

    def token_step(_, i, pinned):
        h, y, weight, bias = pinned
        h_blk = lax.dynamic_slice_in_dim(h, i * bt, bt)
        y_blk = lax.dynamic_slice_in_dim(y, i * bt, bt)
        return None, _linear_token_stats(h_blk, y_blk, weight, bias, ctx, vary)

    pinned = (padded_h, padded_y, weight, bias)
    _, stats = _pinned_scan(token_step, None, jnp.arange(padded_h.shape[0] // bt), pinned)
    m, s, target, sum_z, count = (x.reshape(-1)[:n] for x in stats)
    shift = lax.stop_gradient(_finite_or_zero(lax.pmax(m, axis_name)))
    rescale = jnp.exp(jnp.where(jnp.isfinite(m), m - shift, -jnp.inf))
    totals = lax.psum(jnp.stack([s * rescale, target, sum_z, count]), axis_name)
    keep = _keep_mask(labels, ignore)
    loss, lse, keep = _ce_from_totals(shift, totals, labels, keep, vocab_size, eps, zc)
    inv_count = 1.0 / jnp.maximum(totals[3], 1.0)
    return (loss, keep.astype(loss.dtype)), (hidden, labels, weight, bias, lse, inv_count, keep)


def _weight_psum_axes(weight: jax.Array, *contributors) -> tuple:
    """Mesh axes the weight is replicated over but its gradient contributions vary over (a data
    axis): the weight gradient is summed over them."""
    varying = frozenset().union(*(_varying_axes(x) for x in contributors if x is not None))
    return tuple(sorted(varying - _varying_axes(weight), key=str))


_BACKWARDS = ("auto", "one_pass", "two_pass")


def _check_backward(value) -> str:
    if not isinstance(value, str) or value not in _BACKWARDS:
        valid = ", ".join(repr(b) for b in _BACKWARDS)
        raise ValueError(f"Unknown `backward`={value!r}; expected one of {valid}.")
    return value


def _one_pass_accumulators(
    n_tokens: int, hidden_size: int, local_vocab: int, weight_dtype, acc, weight_psum: bool
) -> dict[str, int]:
    """Elements of the full-size float32 accumulator each one-pass loop order needs: [D, V_local]
    for the weight gradient (token blocks outside; free when the weight is float32 and needs no
    all-reduce over a data axis, as the accumulator becomes the output) or [N, D] for the hidden
    gradient (vocabulary blocks outside, where each weight-gradient block is all-reduced on its
    own)."""
    free = jnp.dtype(weight_dtype) == jnp.dtype(acc) and not weight_psum
    return {
        "tokens_outer": 0 if free else hidden_size * local_vocab,
        "vocab_outer": n_tokens * hidden_size,
    }


def _backward_plan(
    backward: str,
    n_tokens: int,
    hidden_size: int,
    local_vocab: int,
    weight_dtype,
    acc,
    weight_psum: bool,
    axis_size: int,
) -> str:
    """The backward pass to run: ``"two_pass"``, ``"tokens_outer"`` or ``"vocab_outer"``.

    A one-pass backward recomputes each logits tile once (3 matmuls per tile with the forward)
    but keeps one full-size float32 accumulator (see :func:`_one_pass_accumulators`); the smaller
    order is taken. The two-pass backward recomputes every tile twice (4 matmuls) and keeps only
    tile-sized accumulators. ``"auto"`` picks two passes when the one-pass accumulator would be
    larger than a logits tile (``_block_budget`` elements), which is what happens in half
    precision or when the weight gradient must be all-reduced over a data axis, at LLM sizes.
    """
    sizes = _one_pass_accumulators(
        n_tokens, hidden_size, local_vocab, weight_dtype, acc, weight_psum
    )
    order = min(sizes, key=lambda k: (sizes[k], k != "tokens_outer"))
    if backward == "two_pass" or (backward == "auto" and sizes[order] > _block_budget(axis_size)):
        return "two_pass"
    return order


def _linear_grads(plan: str, rows, weight, bias, ctx, vary, extra=None):
    """(hidden, weight, bias) gradients of a fused linear loss, by the backward ``plan``."""
    if plan == "tokens_outer":
        return _linear_grads_tokens_outer(rows, weight, bias, ctx, vary, extra)
    if plan == "vocab_outer":
        return _linear_grads_vocab_outer(rows, weight, bias, ctx, vary, extra)
    # Two passes: the weight gradient block by block (vocabulary outside, each [D, Bv] block
    # finished over all tokens), then the hidden gradient block by block (tokens outside, each
    # [Bt, D] block finished over the local vocabulary and all-reduced).
    _, dweight, dbias = _linear_grads_vocab_outer(
        rows, weight, bias, ctx, vary, extra, hidden_grad=False
    )
    dhidden, _, _ = _linear_grads_tokens_outer(
        rows, weight, bias, ctx, vary, extra, weight_grads=False
    )
    return dhidden, dweight, dbias


def _vp_linear_ce_bwd(
    axis_name, vocab_size, ignore, eps, zc, cap, bt, bv, backward, residuals, cotangents
):
    hidden, labels, weight, bias, lse, inv_count, keep = residuals
    ctx = _linear_ctx(hidden, weight, axis_name, vocab_size, eps, zc, cap, bt, bv)
    acc = ctx["acc"]
    coef = jnp.where(keep, cotangents[0].astype(acc), 0.0)
    rows = tuple(_pad_rows(x, bt) for x in (hidden, labels, lse, coef, inv_count))
    vary = (hidden, weight, bias, labels, cotangents[0])
    ctx["weight_psum"] = _weight_psum_axes(weight, hidden, cotangents[0], labels)
    plan = _backward_plan(
        backward,
        hidden.shape[0],
        weight.shape[0],
        weight.shape[1],
        weight.dtype,
        acc,
        bool(ctx["weight_psum"]),
        lax.axis_size(axis_name),
    )
    dhidden, dweight, dbias = _linear_grads(plan, rows, weight, bias, ctx, vary)
    # The weight (and bias) may be replicated over a data axis: _match_cotangent sums their
    # per-device contributions over it.
    dhidden = _match_cotangent(dhidden[: hidden.shape[0]], hidden).astype(hidden.dtype)
    dweight = _match_cotangent(dweight, weight).astype(weight.dtype)
    if dbias is not None:
        dbias = _match_cotangent(dbias, bias).astype(bias.dtype)
    return dhidden, None, dweight, dbias


def _ce_tile_grad(blk, weight, bias, extra, start, j, ctx, size=None):
    """d loss / d logits (pre-softcap) of one tile, in the matmul dtype, and its weight slice."""
    h_blk, y_blk, lse_blk, coef_blk, inv_blk = blk
    _, z, classes, valid, w = _linear_block(h_blk, weight, bias, start, j, ctx, size)
    dz = _ce_logit_grad(z, classes, valid, y_blk, lse_blk, coef_blk, inv_blk, ctx["eps"], ctx["zc"])
    dz = dz * _softcap_derivative(z, ctx["cap"])
    return dz, w


def _token_block(rows, i, bt):
    return tuple(lax.dynamic_slice_in_dim(x, i * bt, bt) for x in rows)


def _linear_grads_tokens_outer(rows, weight, bias, ctx, vary, extra=None, weight_grads=True):
    """Token blocks outside: each token block's hidden gradient is finished (and all-reduced over
    the vocabulary axis) in turn; the weight gradient accumulates over all of them (skipped, and
    returned as None, with ``weight_grads=False``: the second pass of the two-pass backward)."""
    acc, bt, bv = ctx["acc"], ctx["bt"], ctx["bv"]
    d = weight.shape[0]

    def token_step(carry, i, pinned):
        blk = _token_block(pinned[0], i, bt)

        def vocab_step(inner, j, pinned_w):
            dh, dweight, dbias = inner
            weight, bias, extra = pinned_w
            start = _vocab_block_start(j, bv, ctx["local_vocab"])
            dz, w = ctx["tile_grad"](blk, weight, bias, extra, start, j, ctx)
            dh = dh + _matmul(dz, w, ((1,), (1,)), ctx)
            if dweight is not None:
                old = lax.dynamic_slice_in_dim(dweight, start, bv, axis=1)
                new = old + _matmul(blk[0], dz, ((0,), (0,)), ctx)
                dweight = lax.dynamic_update_slice_in_dim(dweight, new, start, axis=1)
            if dbias is not None:
                old_b = lax.dynamic_slice_in_dim(dbias, start, bv)
                dbias = lax.dynamic_update_slice_in_dim(dbias, old_b + dz.sum(0), start, axis=0)
            return (dh, dweight, dbias), None

        dh0 = _vary_like(jnp.zeros((bt, d), acc), *vary)
        (dh, *carry), _ = _pinned_scan(vocab_step, (dh0, *carry), jnp.arange(ctx["nv"]), pinned[1:])
        # hidden is replicated along the vocabulary axis: its cotangent is the sum of the slices'
        # contributions (Megatron's all-reduce in the backward pass of the LM-head input).
        return tuple(carry), lax.psum(dh, ctx["axis_name"]).astype(rows[0].dtype)

    dweight0 = dbias0 = None
    if weight_grads:
        dweight0 = _vary_like(jnp.zeros(weight.shape, acc), *vary)
        dbias0 = None if bias is None else _vary_like(jnp.zeros(bias.shape, acc), *vary)
    n_blocks = rows[0].shape[0] // bt
    (dweight, dbias), dh = _pinned_scan(
        token_step, (dweight0, dbias0), jnp.arange(n_blocks), (rows, weight, bias, extra)
    )
    return dh.reshape(-1, d), dweight, dbias


def _linear_grads_vocab_outer(rows, weight, bias, ctx, vary, extra=None, hidden_grad=True):
    """Vocabulary blocks outside: each [D, Bv] weight-gradient block is finished and written
    once in the weight's dtype; the hidden gradient accumulates over all of them (skipped, and
    returned as None, with ``hidden_grad=False``: the first pass of the two-pass backward). Full
    blocks run in a scan and a ragged last block once more with its static width, so that every
    block only writes fresh columns (an update that read the buffer back would stop XLA from writing
    the weight gradient in place)."""
    acc, bt, bv = ctx["acc"], ctx["bt"], ctx["bv"]
    d = weight.shape[0]
    n_blocks = rows[0].shape[0] // bt

    def vocab_block(carry, j, start, size, pinned):
        dh, dweight, dbias = carry
        rows, weight, bias, extra = pinned

        def token_step(inner, i, pinned_rows):
            dh, dw_blk, db_blk = inner
            blk = _token_block(pinned_rows, i, bt)
            dz, w = ctx["tile_grad"](blk, weight, bias, extra, start, j, ctx, size)
            if dh is not None:
                dh_rows = lax.dynamic_slice_in_dim(dh, i * bt, bt)
                dh_rows = dh_rows + _matmul(dz, w, ((1,), (1,)), ctx)
                dh = lax.dynamic_update_slice_in_dim(dh, dh_rows, i * bt, axis=0)
            dw_blk = dw_blk + _matmul(blk[0], dz, ((0,), (0,)), ctx)
            if db_blk is not None:
                db_blk = db_blk + dz.sum(0)
            return (dh, dw_blk, db_blk), None

        dw0 = _vary_like(jnp.zeros((d, size), acc), *vary)
        db0 = None if dbias is None else _vary_like(jnp.zeros((size,), acc), *vary)
        (dh, dw_blk, db_blk), _ = _pinned_scan(
            token_step, (dh, dw0, db0), jnp.arange(n_blocks), rows
        )
        if ctx.get("weight_psum"):
            # The weight is replicated over a data axis: sum this block's gradient over it
            # now, so that no full-size buffer is needed for that all-reduce.
            dw_blk = lax.psum(dw_blk, ctx["weight_psum"])
            db_blk = None if db_blk is None else lax.psum(db_blk, ctx["weight_psum"])
        dweight = lax.dynamic_update_slice_in_dim(
            dweight, dw_blk.astype(dweight.dtype), start, axis=1
        )
        if dbias is not None:
            dbias = lax.dynamic_update_slice_in_dim(
                dbias, db_blk.astype(dbias.dtype), start, axis=0
            )
        return dh, dweight, dbias

    dh0 = _vary_like(jnp.zeros((rows[0].shape[0], d), acc), *vary) if hidden_grad else None
    # Typed like the weight (and bias) when their blocks are all-reduced in the loop.
    like = (weight, bias) if ctx.get("weight_psum") else vary
    dweight0 = _vary_like(jnp.zeros(weight.shape, weight.dtype), *like)
    dbias0 = None if bias is None else _vary_like(jnp.zeros(bias.shape, bias.dtype), *like)
    carry = (dh0, dweight0, dbias0)
    pinned = (rows, weight, bias, extra)
    n_full, ragged = divmod(ctx["local_vocab"], bv)
    carry, _ = _pinned_scan(
        lambda c, j, p: (vocab_block(c, j, j * bv, bv, p), None), carry, jnp.arange(n_full), pinned
    )
    if ragged:
        carry = vocab_block(carry, n_full, n_full * bv, ragged, pinned)
    dh, dweight, dbias = carry
    if dh is None:
        return None, dweight, dbias

    # All-reduce the hidden gradient one token block at a time, writing the hidden's dtype, so
    # that no second [N, D] float32 buffer is needed for the result.
    def reduce_rows(_, i):
        rows_i = lax.dynamic_slice_in_dim(dh, i * bt, bt)
        return None, lax.psum(rows_i, ctx["axis_name"]).astype(rows[0].dtype)

    _, dh = lax.scan(reduce_rows, None, jnp.arange(n_blocks))
    return dh.reshape(-1, d), dweight, dbias


_vp_linear_ce.defvjp(_vp_linear_ce_fwd, _vp_linear_ce_bwd)


def vocab_parallel_linear_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight_shard: ArrayLike,
    *,
    axis_name: AxisName,
    bias_shard: ArrayLike | None = None,
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    reduction: str = "mean",
    data_axis_name: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: str = "auto",
) -> jax.Array:
    r"""Fused LM-head cross-entropy with the head weight split along the vocabulary.

    Call it **inside** ``jax.shard_map``. Computes the loss of
    :func:`vocab_parallel_cross_entropy` on ``hidden @ weight + bias`` where ``weight`` is the
    concatenation of the ``weight_shard`` slices along ``axis_name``, without ever storing the
    local ``[N, V_local]`` logits: they are formed block by block (``token_block_size`` x
    ``vocab_block_size``) in the forward pass and again in the backward pass, as in the
    single-device fused loss. The tile budget is split over the ``d`` devices of
    ``axis_name``, so per-device temporaries shrink with ``d``.

    Backward pass (``backward``): the gradients are

    .. math::

        \partial_W = h^\top G, \qquad \partial_h = \textstyle\sum_{\text{devices}} G W^\top,
        \qquad G = \partial \ell / \partial z \ \text{(per tile, from the saved lse)}.

    * ``"one_pass"`` forms each tile's ``G`` once (3 matmuls per tile counting the forward) but
      keeps one full-size float32 accumulator: ``[D, V_local]`` for ``dW`` (token blocks
      outside; free when the weight is float32 with no data axis, as it becomes the output) or
      ``[N, D]`` for ``dh`` (vocabulary blocks outside), whichever is smaller. Vocabulary
      sharding cannot shrink ``[N, D]``; in bfloat16 it dominates.
    * ``"two_pass"`` forms every tile's ``G`` twice (4 matmuls per tile): pass 1, vocabulary
      blocks outside, finishes each ``[D, Bv]`` block of ``dW`` over all tokens and writes it;
      pass 2, token blocks outside, finishes each ``[Bt, D]`` block of ``dh`` over the local
      vocabulary, all-reduces it over ``axis_name`` and writes it in ``hidden``'s dtype. Only
      tile-sized float32 accumulators live: about 1/20 of the single-device fused loss's
      temporaries for ``d = 8`` in float32 and bfloat16 alike (Llama-3-8B head, bfloat16:
      6.8 MiB against 155.6 MiB).
    * ``"auto"`` (default) takes ``"two_pass"`` when the one-pass accumulator would be larger
      than a logits tile (half precision, or a weight gradient to all-reduce over a data axis,
      at LLM sizes), else ``"one_pass"``.

    .. math::

        \ell_i = (1 - \varepsilon)\,(\mathrm{lse}_i - z_{i, y_i})
                 + \varepsilon\,\bigl(\mathrm{lse}_i - \tfrac{1}{K}\textstyle\sum_k z_{ik}\bigr)
                 + c\,\mathrm{lse}_i^2,
        \qquad z = \mathrm{softcap}(h W + b).

    Collectives: one ``pmax`` and one fused ``psum`` (``[4, N]``) over ``axis_name`` in the
    forward pass, and one ``psum`` of the ``[N, D]`` hidden-state gradient, block by block, in
    the backward pass (``hidden`` is replicated along the vocabulary axis). Differentiable with
    ``jax.grad`` / ``jax.vjp`` (a ``custom_vjp``); forward mode (``jax.jvp``) is unsupported.

    Args:
      hidden: ``[..., D]`` hidden states, identical on every device of ``axis_name`` (they may be
        split over a data axis).
      labels: ``[...]`` integer global class indices.
      weight_shard: ``[D, V_local]`` this device's columns of the ``[D, V]`` head weight.
      axis_name: the mesh axis (or axes) the vocabulary is split over.
      bias_shard: optional ``[V_local]`` slice of the bias.
      vocab_size: the true vocabulary size when the weight was padded to a multiple of the axis
        size (padded columns are excluded). ``V_local`` must equal ``ceil(vocab_size / d)``.
      ignore_index, label_smoothing, z_loss, logit_softcap: as in
        :func:`vocab_parallel_cross_entropy`.
      reduction: ``"mean"`` (default, over non-ignored tokens), ``"sum"`` or ``"none"``.
      data_axis_name: mesh axis (or axes) the tokens are split over; the mean is then exact over
        the global batch.
      token_block_size, vocab_block_size: block sizes (positive ints); by default a tile of
        at most max(2**17, 2**21 / d) elements (1 MiB of float32 logits for d = 8).
      backward: ``"auto"`` (default), ``"one_pass"`` or ``"two_pass"``: the memory/compute
        trade-off of the backward pass described above; all three give the same gradients.

    Returns:
      The reduced loss, or per-token losses ``[...]`` for ``reduction="none"``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_linear_cross_entropy
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, y, w: vocab_parallel_linear_cross_entropy(h, y, w, axis_name="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(), P(None, "vocab")), out_specs=P())
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> print(round(float(loss(hidden, jnp.array([0, 2]), weight)), 4))
      0.67

    References:
      Shoeybi et al., "Megatron-LM", 2019; Wijmans et al., "Cut Your Losses in Large-Vocabulary
      Language Models", 2024 (blockwise fused cross-entropy).
    """
    fn = "vocab_parallel_linear_cross_entropy"
    hidden = as_float_array(hidden, "hidden")
    weight = as_float_array(weight_shard, "weight_shard")
    labels = as_integer_array(labels, "labels")
    if weight.ndim != 2:
        raise ValueError(f"`weight_shard` must be a [D, V_local] matrix; got {describe(weight)}.")
    if hidden.ndim < 1 or hidden.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"`hidden` [..., D] and `weight_shard` [D, V_local] must agree on D; got `hidden` "
            f"{describe(hidden)} and `weight_shard` {describe(weight)}."
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"`labels` must have the shape of `hidden` without its last axis; got `hidden` "
            f"{describe(hidden)} and `labels` {describe(labels)}."
        )
    bias = None
    if bias_shard is not None:
        bias = as_float_array(bias_shard, "bias_shard")
        if bias.shape != (weight.shape[1],):
            raise ValueError(
                f"`bias_shard` must have shape [V_local] = [{weight.shape[1]}] to match "
                f"`weight_shard` {describe(weight)}; got {describe(bias)}."
            )
    d = _axis_size(axis_name, "axis_name", fn)
    vocab = _vocab_layout(weight.shape[1], d, vocab_size, "`weight_shard`", axis_name)
    _require_split(weight, "weight_shard", axis_name)
    if data_axis_name is not None:
        _axis_size(data_axis_name, "data_axis_name", fn)
    eps = _check_label_smoothing(label_smoothing)
    zc = _check_nonnegative(z_loss, "z_loss")
    cap = _check_softcap(logit_softcap)
    _check_reduction(reduction)
    tb = _check_block(token_block_size, "token_block_size")
    vb = _check_block(vocab_block_size, "vocab_block_size")
    backward = _check_backward(backward)
    batch_shape = labels.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    if flat_labels.shape[0] == 0:
        return _reduce(
            jnp.zeros((0,), accumulation_dtype(hidden.dtype)),
            flat_labels > 0,
            reduction,
            data_axis_name,
        ).reshape(batch_shape if reduction == "none" else ())
    bt, bv = _auto_blocks(flat_labels.shape[0], weight.shape[0], weight.shape[1], d, tb, vb)
    loss, keep = _vp_linear_ce(
        flat_hidden,
        flat_labels,
        weight,
        bias,
        axis_name,
        vocab,
        ignore_index,
        eps,
        zc,
        cap,
        bt,
        bv,
        backward,
    )
    if reduction == "none":
        return loss.reshape(batch_shape)
    return _reduce(loss, lax.stop_gradient(keep), reduction, data_axis_name)


# --------------------------------------------------------------------------------------------
# Vocab-parallel distillation: forward KL, reverse KL, Jensen-Shannon between a vocab-sharded
# student and teacher. Plain autodiff through the collectives (psum is linear, the pmax shift
# carries no gradient); every log and product is guarded by a double `where` so that excluded
# classes give finite values and gradients.
# --------------------------------------------------------------------------------------------


def _global_log_softmax(z: jax.Array, valid: jax.Array, axis_name: AxisName) -> jax.Array:
    """Local slice of log_softmax over the whole (sharded) vocabulary; -inf on excluded classes.

    One pmax and one psum for a stacked pair (student and teacher) of inputs: ``z`` is
    ``[2, rows, V_local]``.
    """
    local_max = lax.stop_gradient(jnp.max(jnp.where(valid, z, -jnp.inf), axis=-1))
    shift = _finite_or_zero(lax.pmax(local_max, axis_name))
    shifted = jnp.where(valid, z - shift[..., None], 0.0)
    sumexp = lax.psum(jnp.sum(jnp.where(valid, jnp.exp(shifted), 0.0), axis=-1), axis_name)
    log_norm = jnp.log(jnp.where(sumexp > 0, sumexp, 1.0))
    return jnp.where(valid, shifted - log_norm[..., None], -jnp.inf)


def _kl_terms(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """Per-class p * (log p - log q), 0 where p = 0 (values and gradients)."""
    support = log_p > -jnp.inf
    safe_p = jnp.where(support, log_p, 0.0)
    safe_q = jnp.where(support, log_q, 0.0)
    term = jnp.exp(safe_p) * (safe_p - safe_q)
    # p > 0 where q = 0: the divergence is +inf, as the math says.
    term = jnp.where(support & (log_q == -jnp.inf), jnp.inf, term)
    return jnp.where(support, term, 0.0)


def _js_terms(log_p: jax.Array, log_q: jax.Array, beta: float) -> jax.Array:
    """Per-class beta p log(p/m) + (1-beta) q log(q/m), m = beta p + (1-beta) q."""
    support = (log_p > -jnp.inf) | (log_q > -jnp.inf)
    p = jnp.where(log_p > -jnp.inf, jnp.exp(jnp.where(log_p > -jnp.inf, log_p, 0.0)), 0.0)
    q = jnp.where(log_q > -jnp.inf, jnp.exp(jnp.where(log_q > -jnp.inf, log_q, 0.0)), 0.0)
    m = beta * p + (1.0 - beta) * q
    log_m = jnp.log(jnp.where(support, m, 1.0))
    return beta * _kl_terms(jnp.where(support, log_p, -jnp.inf), log_m) + (1.0 - beta) * _kl_terms(
        jnp.where(support, log_q, -jnp.inf), log_m
    )


def _vp_divergence(
    logits_shard,
    target_logits_shard,
    kind: str,
    *,
    axis_name,
    beta: float,
    temperature,
    where,
    vocab_size,
    reduction,
    data_axis_name,
    fn: str,
) -> jax.Array:
    student = as_float_array(logits_shard, "logits_shard")
    teacher = as_float_array(target_logits_shard, "target_logits_shard")
    if student.ndim < 1 or student.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(
            f"`logits_shard` and `target_logits_shard` must agree on every axis but the last; got "
            f"`logits_shard` {describe(student)} and `target_logits_shard` {describe(teacher)}."
        )
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            "The student and teacher vocabulary slices differ: `logits_shard` holds "
            f"{student.shape[-1]} classes and `target_logits_shard` {teacher.shape[-1]} per device."
        )
    d = _axis_size(axis_name, "axis_name", fn)
    vocab = _vocab_layout(student.shape[-1], d, vocab_size, "`logits_shard`", axis_name)
    _require_split(student, "logits_shard", axis_name)
    _require_split(teacher, "target_logits_shard", axis_name)
    if data_axis_name is not None:
        _axis_size(data_axis_name, "data_axis_name", fn)
    check_temperature(temperature)
    _check_reduction(reduction)
    acc = accumulation_dtype(student.dtype, teacher.dtype)
    batch_shape = student.shape[:-1]
    v_local = student.shape[-1]
    s = student.reshape(-1, v_local).astype(acc)
    t = teacher.reshape(-1, v_local).astype(acc)
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            raise TypeError(f"`where` must be a boolean mask; got {describe(where)}.")
        where = jnp.broadcast_to(where, student.shape).reshape(s.shape)
    ctx = dict(axis_name=axis_name, vocab_size=vocab, kind=kind, beta=beta, temperature=temperature)
    per_token = _divergence_rows(s, t, where, ctx)
    if reduction == "none":
        return per_token.reshape(batch_shape)
    return _reduce(per_token, jnp.ones(per_token.shape, bool), reduction, data_axis_name)


def _divergence_rows(s: jax.Array, t: jax.Array, where, ctx) -> jax.Array:
    """Per-row divergence between the sharded student ``s`` and teacher ``t`` ([rows, V_local])."""
    axis_name = ctx["axis_name"]
    classes = _vocab_offset(s.shape[-1], axis_name) + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    in_vocab = classes < ctx["vocab_size"]
    if where is not None:
        in_vocab = in_vocab & where
    # -inf logits are excluded classes of their own distribution only.
    valid = jnp.stack([in_vocab & (s > -jnp.inf), in_vocab & (t > -jnp.inf)])
    z = jnp.where(valid, jnp.stack([s, t]), 0.0) / ctx["temperature"]
    log_q, log_p = _global_log_softmax(z, valid, axis_name)
    if ctx["kind"] == "forward":
        terms = _kl_terms(log_p, log_q)
    elif ctx["kind"] == "reverse":
        terms = _kl_terms(log_q, log_p)
    else:
        terms = _js_terms(log_p, log_q, ctx["beta"])
    return lax.psum(jnp.sum(terms, axis=-1), axis_name)


_DISTILL_ARGS_DOC = """
    Call it **inside** ``jax.shard_map``: ``logits_shard`` (student) and ``target_logits_shard``
    (teacher) are this device's ``[..., V_local]`` slices of logits split along ``axis_name``.
    The collectives over ``axis_name`` are one ``pmax`` and two ``psum`` of ``[2, N]`` and
    ``[N]`` numbers; no device holds a full vocabulary row. Gradients flow to both inputs by
    ordinary autodiff (wrap the teacher in ``jax.lax.stop_gradient`` to freeze it); they are
    finite wherever the value is.

    Args:
      logits_shard: student logits slice ``[..., V_local]``.
      target_logits_shard: teacher logits slice, the same shape.
      axis_name: mesh axis (or axes) the vocabulary is split over.
      temperature: both logits are divided by it first (no ``T**2`` factor).
      where: optional boolean class mask broadcastable to the slices (False excludes a class).
      vocab_size: the true vocabulary size when the slices were padded to a multiple of the axis
        size; ``V_local`` must equal ``ceil(vocab_size / d)``.
      reduction: ``"none"`` (per token), ``"sum"`` or ``"mean"`` (over tokens).
      data_axis_name: mesh axis the tokens are split over; "sum"/"mean" reduce across it too.

    Returns:
      Per-token divergences ``[...]`` in nats (float32 for half-precision inputs) or a scalar.
"""


def vocab_parallel_forward_kl(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    axis_name: AxisName,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: str = "none",
    data_axis_name: AxisName | None = None,
) -> jax.Array:
    return _vp_divergence(
        logits_shard,
        target_logits_shard,
        "forward",
        axis_name=axis_name,
        beta=0.0,
        temperature=temperature,
        where=where,
        vocab_size=vocab_size,
        reduction=reduction,
        data_axis_name=data_axis_name,
        fn="vocab_parallel_forward_kl",
    )


def vocab_parallel_reverse_kl(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    axis_name: AxisName,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: str = "none",
    data_axis_name: AxisName | None = None,
) -> jax.Array:
    return _vp_divergence(
        logits_shard,
        target_logits_shard,
        "reverse",
        axis_name=axis_name,
        beta=1.0,
        temperature=temperature,
        where=where,
        vocab_size=vocab_size,
        reduction=reduction,
        data_axis_name=data_axis_name,
        fn="vocab_parallel_reverse_kl",
    )


def vocab_parallel_jensen_shannon(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    axis_name: AxisName,
    beta: float = 0.5,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: str = "none",
    data_axis_name: AxisName | None = None,
) -> jax.Array:
    b = check_beta(beta)
    kind = "forward" if b == 0.0 else "reverse" if b == 1.0 else "js"
    return _vp_divergence(
        logits_shard,
        target_logits_shard,
        kind,
        axis_name=axis_name,
        beta=b,
        temperature=temperature,
        where=where,
        vocab_size=vocab_size,
        reduction=reduction,
        data_axis_name=data_axis_name,
        fn="vocab_parallel_jensen_shannon",
    )


vocab_parallel_forward_kl.__doc__ = (
    r"""Forward KL, KL(teacher || student), with the vocabulary split over a mesh axis.

    .. math::

        \mathrm{KL}(P \,\|\, Q) = \sum_k p_k (\log p_k - \log q_k),
        \quad P = \mathrm{softmax}(\text{target} / T),\ Q = \mathrm{softmax}(\text{logits} / T).

    Equals ``infoloss_jax.forward_kl`` on the gathered logits (mean-seeking distillation).
"""
    + _DISTILL_ARGS_DOC
    + """
    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_forward_kl
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> kl = jax.shard_map(
      ...     lambda s, t: vocab_parallel_forward_kl(s, t, axis_name="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(kl(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.043053
"""
)

vocab_parallel_reverse_kl.__doc__ = (
    r"""Reverse KL, KL(student || teacher), with the vocabulary split over a mesh axis.

    .. math::

        \mathrm{KL}(Q \,\|\, P) = \sum_k q_k (\log q_k - \log p_k),
        \quad Q = \mathrm{softmax}(\text{logits} / T),\ P = \mathrm{softmax}(\text{target} / T).

    Equals ``infoloss_jax.reverse_kl`` on the gathered logits (mode-seeking distillation).
"""
    + _DISTILL_ARGS_DOC
    + """
    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_reverse_kl
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> kl = jax.shard_map(
      ...     lambda s, t: vocab_parallel_reverse_kl(s, t, axis_name="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(kl(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.044341
"""
)

vocab_parallel_jensen_shannon.__doc__ = (
    r"""Generalized Jensen-Shannon divergence between teacher and student, vocabulary sharded.

    .. math::

        \mathrm{JS}_\beta = \beta\,\mathrm{KL}(P \,\|\, M) + (1 - \beta)\,\mathrm{KL}(Q \,\|\, M),
        \quad M = \beta P + (1 - \beta) Q,

    with ``P = softmax(target / T)`` the teacher and ``Q = softmax(logits / T)`` the student.
    ``beta=0`` returns the forward KL(P || Q) and ``beta=1`` the reverse KL(Q || P) (the TRL /
    Liger-Kernel convention), as ``infoloss_jax.jensen_shannon`` does.
"""
    + _DISTILL_ARGS_DOC.replace(
        "      temperature:",
        "      beta: weight of the teacher in the mixture, in [0, 1].\n      temperature:",
    )
    + """
    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_jensen_shannon
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> js = jax.shard_map(
      ...     lambda s, t: vocab_parallel_jensen_shannon(s, t, axis_name="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(js(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.010881
"""
)


# --------------------------------------------------------------------------------------------
# Vocab-parallel linear distillation: student logits hidden @ weight_shard, teacher logits
# target_hidden @ target_weight_shard, both split along the vocabulary. Same tiling as the
# cross-entropy: two forward passes over [token_block, vocab_block] tile pairs (global
# logsumexps, then the divergence's partial sums), a custom_vjp whose backward pass recomputes
# each tile and reuses the cross-entropy's gradient loops (ctx["tile_grad"] gives d/d logits).
# The teacher is frozen.
# --------------------------------------------------------------------------------------------


def _kl_matmul(a, b, dtype, acc):
    return lax.dot_general(
        a.astype(dtype), b.astype(dtype), (((1,), (0,)), ((), ())), preferred_element_type=acc
    ).astype(acc)


def _kl_tile(h_blk, th_blk, weight, t_weight, start, j, ctx, size=None):
    """Temperature-scaled student and teacher logits of one tile, its valid columns and the
    student weight slice."""
    width = ctx["bv"] if size is None else size
    w = lax.dynamic_slice_in_dim(weight, start, width, axis=1)
    tw = lax.dynamic_slice_in_dim(t_weight, start, width, axis=1)
    s = _kl_matmul(h_blk, w, ctx["compute"], ctx["acc"]) * ctx["inv_t"]
    t = _kl_matmul(th_blk, tw, ctx["t_compute"], ctx["acc"]) * ctx["inv_t"]
    column = start + lax.broadcasted_iota(jnp.int32, (1, width), 1)
    valid = (ctx["offset"] + column < ctx["vocab_size"]) & (column >= j * ctx["bv"])
    return s, t, valid, w


def _kl_log_probs(s, t, s_lse, t_lse):
    return s - s_lse[:, None], t - t_lse[:, None]


def _kl_log_mixture(log_q, log_p, beta):
    return jnp.logaddexp(math.log(beta) + log_p, math.log1p(-beta) + log_q)


def _kl_tile_terms(log_q, log_p, valid, ctx):
    """[2, rows] partial sums of one tile: (KL value, 0) for the KLs; (KL(P||M), KL(Q||M))
    for the Jensen-Shannon divergence."""
    kind = ctx["kind"]
    if kind == "js":
        log_m = _kl_log_mixture(log_q, log_p, ctx["beta"])
        first = jnp.exp(log_p) * (log_p - log_m)
        second = jnp.exp(log_q) * (log_q - log_m)
    elif kind == "forward":
        first, second = jnp.exp(log_p) * (log_p - log_q), None
    else:
        first, second = jnp.exp(log_q) * (log_q - log_p), None
    first = jnp.sum(jnp.where(valid, first, 0.0), axis=-1)
    second = jnp.zeros_like(first) if second is None else jnp.sum(jnp.where(valid, second, 0.0), -1)
    return jnp.stack([first, second])


def _kl_tile_grad(blk, weight, bias, t_weight, start, j, ctx, size=None):
    """d divergence / d student logits (before the temperature) of one tile.

    forward KL: q - p; reverse KL: q (log q - log p - KL(Q||P));
    Jensen-Shannon: (1 - beta) q (log q - log m - KL(Q||M)); all times g / T.
    """
    h_blk, th_blk, s_lse, t_lse, coef, stat = blk
    s, t, valid, w = _kl_tile(h_blk, th_blk, weight, t_weight, start, j, ctx, size)
    log_q, log_p = _kl_log_probs(s, t, s_lse, t_lse)
    q = jnp.exp(log_q)
    if ctx["kind"] == "forward":
        dz = q - jnp.exp(log_p)
    elif ctx["kind"] == "reverse":
        dz = q * (log_q - log_p - stat[:, None])
    else:
        log_m = _kl_log_mixture(log_q, log_p, ctx["beta"])
        dz = (1.0 - ctx["beta"]) * q * (log_q - log_m - stat[:, None])
    return jnp.where(valid, dz, 0.0) * coef[:, None], w


def _kl_ctx(hidden, weight, t_hidden, t_weight, axis_name, vocab_size, kind, beta, temp, bt, bv):
    local_vocab = weight.shape[1]
    return dict(
        acc=accumulation_dtype(hidden.dtype, weight.dtype, t_hidden.dtype, t_weight.dtype),
        compute=jnp.result_type(hidden.dtype, weight.dtype),
        t_compute=jnp.result_type(t_hidden.dtype, t_weight.dtype),
        axis_name=axis_name,
        vocab_size=vocab_size,
        local_vocab=local_vocab,
        offset=_vocab_offset(local_vocab, axis_name),
        kind=kind,
        beta=beta,
        inv_t=1.0 / temp,
        bt=bt,
        bv=bv,
        nv=-(-local_vocab // bv),
        tile_grad=_kl_tile_grad,
    )


def _kl_pass(rows, weight, t_weight, ctx, vary, tile_fn, init_fn):
    """One forward pass over (token block, vocabulary block) tiles: ``tile_fn(carry, s, t,
    valid, rows_blk) -> carry`` per tile, ``init_fn(zeros [Bt]) -> carry`` per token block."""
    bt, acc = ctx["bt"], ctx["acc"]

    def token_step(_, i, pinned):
        rows, weight, t_weight = pinned
        blk = _token_block(rows, i, bt)

        def vocab_step(carry, j, pinned_w):
            weight, t_weight = pinned_w
            start = _vocab_block_start(j, ctx["bv"], ctx["local_vocab"])
            s, t, valid, _ = _kl_tile(blk[0], blk[1], weight, t_weight, start, j, ctx)
            return tile_fn(carry, s, t, valid, blk), None

        zeros = _vary_like(jnp.zeros((bt,), acc), *vary)
        out, _ = _pinned_scan(vocab_step, init_fn(zeros), jnp.arange(ctx["nv"]), (weight, t_weight))
        return None, out

    n_blocks = rows[0].shape[0] // bt
    _, out = _pinned_scan(token_step, None, jnp.arange(n_blocks), (rows, weight, t_weight))
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)


def _online_lse(m, total, z, valid):
    zm = jnp.where(valid, z, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(zm, axis=-1))
    safe = _finite_or_zero(m_new)
    total = total * jnp.exp(jnp.where(jnp.isfinite(m), m - safe, -jnp.inf)) + jnp.sum(
        jnp.exp(zm - safe[:, None]), axis=-1
    )
    return m_new, total


def _global_lse(m, total, axis_name):
    shift = _finite_or_zero(lax.pmax(m, axis_name))
    rescale = jnp.exp(jnp.where(jnp.isfinite(m), m - shift, -jnp.inf))
    total = lax.psum(total * rescale, axis_name)
    return shift + jnp.log(jnp.where(total > 0, total, 1.0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9, 10, 11))
def _vp_linear_kl(
    hidden, weight, t_hidden, t_weight, axis_name, vocab, kind, beta, temp, bt, bv, backward
):
    args = (axis_name, vocab, kind, beta, temp, bt, bv, backward)
    per_token, _ = _vp_linear_kl_fwd(hidden, weight, t_hidden, t_weight, *args)
    return per_token


def _vp_linear_kl_fwd(
    hidden, weight, t_hidden, t_weight, axis_name, vocab, kind, beta, temp, bt, bv, backward
):
    ctx = _kl_ctx(hidden, weight, t_hidden, t_weight, axis_name, vocab, kind, beta, temp, bt, bv)
    n = hidden.shape[0]
    vary = (hidden, weight, t_hidden, t_weight)
    rows = (_pad_rows(hidden, bt), _pad_rows(t_hidden, bt))

    def lse_tile(carry, s, t, valid, _):
        ms, ss, mt, st = carry
        return (*_online_lse(ms, ss, s, valid), *_online_lse(mt, st, t, valid))

    ms, ss, mt, st = _kl_pass(
        rows, weight, t_weight, ctx, vary, lse_tile, lambda z: (z - jnp.inf, z, z - jnp.inf, z)
    )
    s_lse = lax.stop_gradient(_global_lse(ms, ss, axis_name))
    t_lse = lax.stop_gradient(_global_lse(mt, st, axis_name))

    def terms_tile(carry, s, t, valid, blk):
        log_q, log_p = _kl_log_probs(s, t, blk[2], blk[3])
        return carry + _kl_tile_terms(log_q, log_p, valid, ctx)

    rows_with_lse = (*rows, s_lse, t_lse)
    terms = _kl_pass(
        rows_with_lse, weight, t_weight, ctx, vary, terms_tile, lambda z: jnp.stack([z, z])
    )
    first, second = lax.psum(terms.reshape(-1, 2, bt).transpose(1, 0, 2).reshape(2, -1), axis_name)
    if kind == "js":
        per_token, stat = beta * first + (1.0 - beta) * second, second
    else:
        per_token, stat = first, first
    residuals = (hidden, weight, t_hidden, t_weight, s_lse, t_lse, stat)
    return per_token[:n], residuals


def _vp_linear_kl_bwd(axis_name, vocab, kind, beta, temp, bt, bv, backward, residuals, g):
    hidden, weight, t_hidden, t_weight, s_lse, t_lse, stat = residuals
    ctx = _kl_ctx(hidden, weight, t_hidden, t_weight, axis_name, vocab, kind, beta, temp, bt, bv)
    coef = _pad_rows(g.astype(ctx["acc"]), bt) * ctx["inv_t"]
    rows = (_pad_rows(hidden, bt), _pad_rows(t_hidden, bt), s_lse, t_lse, coef, stat)
    vary = (hidden, weight, t_hidden, t_weight, g)
    ctx["weight_psum"] = _weight_psum_axes(weight, hidden, t_hidden, g)
    plan = _backward_plan(
        backward,
        hidden.shape[0],
        weight.shape[0],
        weight.shape[1],
        weight.dtype,
        ctx["acc"],
        bool(ctx["weight_psum"]),
        lax.axis_size(axis_name),
    )
    dhidden, dweight, _ = _linear_grads(plan, rows, weight, None, ctx, vary, extra=t_weight)
    dhidden = _match_cotangent(dhidden[: hidden.shape[0]], hidden).astype(hidden.dtype)
    dweight = _match_cotangent(dweight, weight).astype(weight.dtype)
    zero_teacher = tuple(_vary_like(jnp.zeros(x.shape, x.dtype), x) for x in (t_hidden, t_weight))
    return (dhidden, dweight, *zero_teacher)


_vp_linear_kl.defvjp(_vp_linear_kl_fwd, _vp_linear_kl_bwd)


def _vp_linear_divergence(
    hidden,
    weight_shard,
    target_hidden,
    target_weight_shard,
    kind: str,
    *,
    axis_name,
    beta: float,
    temperature,
    where,
    vocab_size,
    reduction,
    data_axis_name,
    token_block_size,
    vocab_block_size,
    backward,
    fn: str,
) -> jax.Array:
    hidden = as_float_array(hidden, "hidden")
    weight = as_float_array(weight_shard, "weight_shard")
    t_hidden = as_float_array(target_hidden, "target_hidden")
    t_weight = as_float_array(target_weight_shard, "target_weight_shard")
    for h, h_name, w, w_name in (
        (hidden, "hidden", weight, "weight_shard"),
        (t_hidden, "target_hidden", t_weight, "target_weight_shard"),
    ):
        if w.ndim != 2 or h.ndim < 1 or h.shape[-1] != w.shape[0]:
            raise ValueError(
                f"`{h_name}` [..., D] and `{w_name}` [D, V_local] must agree on D; got "
                f"`{h_name}` {describe(h)} and `{w_name}` {describe(w)}."
            )
    if hidden.shape[:-1] != t_hidden.shape[:-1]:
        raise ValueError(
            f"`hidden` and `target_hidden` must hold the same tokens; got {describe(hidden)} and "
            f"{describe(t_hidden)}."
        )
    if weight.shape[1] != t_weight.shape[1]:
        raise ValueError(
            "The student and teacher vocabulary slices differ: `weight_shard` holds "
            f"{weight.shape[1]} classes and `target_weight_shard` {t_weight.shape[1]} per device."
        )
    d = _axis_size(axis_name, "axis_name", fn)
    vocab = _vocab_layout(weight.shape[1], d, vocab_size, "`weight_shard`", axis_name)
    _require_split(weight, "weight_shard", axis_name)
    _require_split(t_weight, "target_weight_shard", axis_name)
    if data_axis_name is not None:
        _axis_size(data_axis_name, "data_axis_name", fn)
    check_temperature(temperature)
    _check_reduction(reduction)
    block = _check_block(token_block_size, "token_block_size")
    backward = _check_backward(backward)
    batch_shape = hidden.shape[:-1]
    keep = jnp.ones(batch_shape, bool)
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_ or where.shape != batch_shape:
            raise ValueError(
                f"`where` must be a boolean per-token mask of shape {list(batch_shape)}; got "
                f"{describe(where)}."
            )
        keep = where
    keep = keep.reshape(-1)
    n, v_local = keep.shape[0], weight.shape[1]
    if n == 0:
        per_token = jnp.zeros((0,), accumulation_dtype(hidden.dtype, weight.dtype))
        return per_token.reshape(batch_shape) if reduction == "none" else jnp.sum(per_token)
    vb = _check_block(vocab_block_size, "vocab_block_size")
    bt, bv = _auto_blocks(n, max(hidden.shape[-1], t_hidden.shape[-1]), v_local, d, block, vb)
    per_token = _vp_linear_kl(
        hidden.reshape(n, -1),
        weight,
        t_hidden.reshape(n, -1),
        t_weight,
        axis_name,
        vocab,
        kind,
        float(beta),
        float(temperature),
        bt,
        bv,
        backward,
    )
    per_token = jnp.where(keep, per_token.reshape(-1)[:n], 0.0)
    if reduction == "none":
        return per_token.reshape(batch_shape)
    return _reduce(per_token, keep, reduction, data_axis_name)


_LINEAR_DISTILL_DOC = """
    Call it **inside** ``jax.shard_map``. The student logits are ``hidden @ weight_shard`` and the
    teacher logits ``target_hidden @ target_weight_shard``, both ``[D, V_local]`` slices of heads
    split along ``axis_name`` (the teacher's hidden size may differ). Neither the ``[N, V]`` nor
    the local ``[N, V_local]`` logits are ever stored: tiles of ``token_block_size`` x
    ``vocab_block_size`` are formed in two forward passes (logsumexps, then the divergence) and
    again in the backward pass, a ``jax.custom_vjp`` with closed-form gradients. Collectives over
    ``axis_name``: one ``pmax`` and two ``psum`` of ``[2, N]`` numbers forward, one ``psum`` of
    the ``[N, D]`` hidden gradient (block by block) backward. The teacher gets no gradient (zero
    cotangents); forward mode (``jax.jvp``) is unsupported. The backward pass is one pass over
    the tiles with a full-size float32 ``[N, D]`` or ``[D, V_local]`` gradient accumulator, or
    two passes (the weight gradient block by block, then the hidden gradient block by block)
    that recompute the tiles once more but keep only tile-sized accumulators; see
    :func:`vocab_parallel_linear_cross_entropy` and ``backward`` below.

    Args:
      hidden: student hidden states ``[..., D]``, identical along ``axis_name``.
      weight_shard: student head slice ``[D, V_local]``.
      target_hidden: teacher hidden states ``[..., D_teacher]``.
      target_weight_shard: teacher head slice ``[D_teacher, V_local]``.
      axis_name: mesh axis (or axes) the vocabulary is split over.
      temperature: both logits are divided by it first (no ``T**2`` factor).
      where: optional boolean per-token mask ``[...]``: False drops the token (0, not counted).
      vocab_size: the true vocabulary size when the heads were padded to a multiple of the axis.
      reduction: ``"mean"`` (default, over kept tokens), ``"sum"`` or ``"none"``.
      data_axis_name: mesh axis the tokens are split over; the mean is exact across it.
      token_block_size, vocab_block_size: block sizes (positive ints); by default a tile of
        at most max(2**17, 2**21 / d) elements.
      backward: ``"auto"`` (default: two passes when the one-pass float32 accumulator would be
        larger than a logits tile, as in bfloat16 at LLM sizes), ``"one_pass"`` (3 matmuls per
        tile, one full-size accumulator) or ``"two_pass"`` (4 matmuls per tile, tile-sized
        accumulators only). All give the same gradients.

    Returns:
      The reduced divergence in nats, or per-token values ``[...]``.
"""


def vocab_parallel_linear_forward_kl(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    axis_name: AxisName,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: str = "mean",
    data_axis_name: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: str = "auto",
) -> jax.Array:
    return _vp_linear_divergence(
        hidden,
        weight_shard,
        target_hidden,
        target_weight_shard,
        "forward",
        axis_name=axis_name,
        beta=0.0,
        temperature=temperature,
        where=where,
        vocab_size=vocab_size,
        reduction=reduction,
        data_axis_name=data_axis_name,
        token_block_size=token_block_size,
        vocab_block_size=vocab_block_size,
        backward=backward,
        fn="vocab_parallel_linear_forward_kl",
    )


def vocab_parallel_linear_reverse_kl(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    axis_name: AxisName,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: str = "mean",
    data_axis_name: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: str = "auto",
) -> jax.Array:
    return _vp_linear_divergence(
        hidden,
        weight_shard,
        target_hidden,
        target_weight_shard,
        "reverse",
        axis_name=axis_name,
        beta=1.0,
        temperature=temperature,
        where=where,
        vocab_size=vocab_size,
        reduction=reduction,
        data_axis_name=data_axis_name,
        token_block_size=token_block_size,
        vocab_block_size=vocab_block_size,
        backward=backward,
        fn="vocab_parallel_linear_reverse_kl",
    )


def vocab_parallel_linear_jensen_shannon(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    axis_name: AxisName,
    beta: float = 0.5,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: str = "mean",
    data_axis_name: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: str = "auto",
) -> jax.Array:
    b = check_beta(beta)
    kind = "forward" if b == 0.0 else "reverse" if b == 1.0 else "js"
    return _vp_linear_divergence(
        hidden,
        weight_shard,
        target_hidden,
        target_weight_shard,
        kind,
        axis_name=axis_name,
        beta=b,
        temperature=temperature,
        where=where,
        vocab_size=vocab_size,
        reduction=reduction,
        data_axis_name=data_axis_name,
        token_block_size=token_block_size,
        vocab_block_size=vocab_block_size,
        backward=backward,
        fn="vocab_parallel_linear_jensen_shannon",
    )


_LINEAR_EXAMPLE = """
    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import {name}
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, w, th, tw: {name}(h, w, th, tw, axis_name="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P(None, "vocab")),
      ...     out_specs=P())
      >>> h = jnp.array([[1.0, 0.0]])
      >>> w = jnp.array([[0.5, 0.5], [0.0, 0.0]])
      >>> teacher_w = jnp.array([[0.2, 0.8], [0.0, 0.0]])
      >>> print(round(float(loss(h, w, h, teacher_w)), 6))
      {value}
"""

vocab_parallel_linear_forward_kl.__doc__ = (
    r"""Forward KL(teacher || student) of two LM heads, vocabulary split over a mesh axis.

    .. math::

        \mathrm{KL}(P \,\|\, Q), \quad P = \mathrm{softmax}(h_t W_t / T),\
        Q = \mathrm{softmax}(h W / T).

    Equals ``infoloss_jax.forward_kl`` on the gathered logits, without forming them.
"""
    + _LINEAR_DISTILL_DOC
    + _LINEAR_EXAMPLE.format(name="vocab_parallel_linear_forward_kl", value="0.043053")
)
vocab_parallel_linear_reverse_kl.__doc__ = (
    r"""Reverse KL(student || teacher) of two LM heads, vocabulary split over a mesh axis.

    .. math::

        \mathrm{KL}(Q \,\|\, P), \quad Q = \mathrm{softmax}(h W / T),\
        P = \mathrm{softmax}(h_t W_t / T).

    Equals ``infoloss_jax.reverse_kl`` on the gathered logits, without forming them.
"""
    + _LINEAR_DISTILL_DOC
    + _LINEAR_EXAMPLE.format(name="vocab_parallel_linear_reverse_kl", value="0.044341")
)
vocab_parallel_linear_jensen_shannon.__doc__ = (
    r"""Generalized Jensen-Shannon divergence of two LM heads, vocabulary split over a mesh axis.

    .. math::

        \beta\,\mathrm{KL}(P \,\|\, M) + (1 - \beta)\,\mathrm{KL}(Q \,\|\, M),
        \quad M = \beta P + (1 - \beta) Q,

    teacher ``P``, student ``Q``; ``beta=0`` is the forward KL(P || Q) and ``beta=1`` the
    reverse KL(Q || P), as in ``infoloss_jax.jensen_shannon``.
"""
    + _LINEAR_DISTILL_DOC.replace(
        "      temperature:",
        "      beta: weight of the teacher in the mixture, in [0, 1].\n      temperature:",
    )
    + _LINEAR_EXAMPLE.format(name="vocab_parallel_linear_jensen_shannon", value="0.010881")
)


# --------------------------------------------------------------------------------------------
# Convenience wrappers: whole arrays in, shard_map built here.
# --------------------------------------------------------------------------------------------


def _mesh_axes(mesh: Mesh, axis: AxisName | None, name: str, fn: str) -> int:
    """Product of the sizes of ``axis`` (a mesh axis name or tuple of them); 1 for None."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    if axis is None:
        return 1
    names = axis if isinstance(axis, tuple) else (axis,)
    size = 1
    for a in names:
        if a not in mesh.shape:
            raise ValueError(
                f"`{name}`={axis!r} is not an axis of the mesh passed to `{fn}`; the mesh has "
                f"axes {tuple(mesh.axis_names)} with sizes {dict(mesh.shape)}."
            )
        size *= mesh.shape[a]
    return size


def _check_token_split(n: int, data_size: int, data_axis, what: str) -> None:
    if n % data_size:
        raise ValueError(
            f"{what} has {n} tokens, not a multiple of the {data_size} devices of data axis "
            f"{data_axis!r}; pad the batch (with ignored labels) to a multiple of {data_size}."
        )


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    pad = size - x.shape[-1]
    return x if pad == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


def _run(fn, mesh, in_specs, out_specs, *args):
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs))(*args)


def vocab_parallel_cross_entropy_on_mesh(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    reduction: str = "mean",
    **options,
) -> jax.Array:
    """:func:`vocab_parallel_cross_entropy` on whole ``[..., V]`` logits and a ``Mesh``.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of the vocabulary axis size (the padded classes are masked),
    and builds the ``shard_map``. Inputs that are already sharded that way (``NamedSharding``
    with ``P(data_axis, vocab_axis)``) are not moved. ``options`` are the keyword options of
    :func:`vocab_parallel_cross_entropy` (ignore_index, label_smoothing, z_loss, logit_softcap).

    Returns:
      The ``"mean"`` (default) or ``"sum"`` over tokens, or per-token losses ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_cross_entropy_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_cross_entropy_on_mesh(
      ...     logits, jnp.array([0, 2]), mesh=mesh, vocab_axis="vocab")
      >>> print(round(float(loss), 4))
      0.67
    """
    fn = "vocab_parallel_cross_entropy"
    d = _mesh_axes(mesh, vocab_axis, "vocab_axis", fn + "_on_mesh")
    dp = _mesh_axes(mesh, data_axis, "data_axis", fn + "_on_mesh")
    _check_reduction(reduction)
    logits = as_float_array(logits, "logits")
    labels = as_integer_array(labels, "labels")
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`labels` must have the shape of `logits` without its last (vocabulary) axis; got "
            f"`logits` {describe(logits)} and `labels` {describe(labels)}."
        )
    vocab = logits.shape[-1]
    batch_shape = labels.shape
    flat_logits = _pad_last(logits.reshape(-1, vocab), d * -(-vocab // d))
    flat_labels = labels.reshape(-1)
    _check_token_split(flat_labels.shape[0], dp, data_axis, "`labels`")

    def local(z, y):
        return vocab_parallel_cross_entropy(
            z,
            y,
            axis_name=vocab_axis,
            vocab_size=vocab,
            reduction=reduction,
            data_axis_name=data_axis,
            **options,
        )

    out_spec = P(data_axis) if reduction == "none" else P()
    out = _run(
        local, mesh, (P(data_axis, vocab_axis), P(data_axis)), out_spec, flat_logits, flat_labels
    )
    return out.reshape(batch_shape) if reduction == "none" else out


def vocab_parallel_linear_cross_entropy_on_mesh(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    bias: ArrayLike | None = None,
    reduction: str = "mean",
    **options,
) -> jax.Array:
    """:func:`vocab_parallel_linear_cross_entropy` on a whole ``[D, V]`` weight and a ``Mesh``.

    Splits the weight (and bias) columns over ``vocab_axis``, padding ``V`` to a multiple of its
    size (padded classes are masked), the tokens over ``data_axis`` (optional), and builds the
    ``shard_map``. Pass a weight already sharded as ``P(None, vocab_axis)`` to avoid moving it.
    ``options``: ignore_index, label_smoothing, z_loss, logit_softcap, token_block_size,
    vocab_block_size, backward.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_cross_entropy_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_linear_cross_entropy_on_mesh(
      ...     hidden, jnp.array([0, 2]), weight, mesh=mesh, vocab_axis="vocab")
      >>> print(round(float(loss), 4))
      0.67
    """
    fn = "vocab_parallel_linear_cross_entropy"
    d = _mesh_axes(mesh, vocab_axis, "vocab_axis", fn + "_on_mesh")
    dp = _mesh_axes(mesh, data_axis, "data_axis", fn + "_on_mesh")
    _check_reduction(reduction)
    hidden = as_float_array(hidden, "hidden")
    weight = as_float_array(weight, "weight")
    labels = as_integer_array(labels, "labels")
    if weight.ndim != 2 or hidden.ndim < 1 or hidden.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"`hidden` [..., D] and `weight` [D, V] must agree on D; got `hidden` "
            f"{describe(hidden)} and `weight` {describe(weight)}."
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"`labels` must have the shape of `hidden` without its last axis; got `hidden` "
            f"{describe(hidden)} and `labels` {describe(labels)}."
        )
    vocab = weight.shape[1]
    padded = d * -(-vocab // d)
    batch_shape = labels.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    _check_token_split(flat_labels.shape[0], dp, data_axis, "`labels`")
    args = [flat_hidden, flat_labels, _pad_last(weight, padded)]
    specs = [P(data_axis, None), P(data_axis), P(None, vocab_axis)]
    if bias is not None:
        bias = as_float_array(bias, "bias")
        if bias.shape != (vocab,):
            raise ValueError(f"`bias` must have shape [V] = [{vocab}]; got {describe(bias)}.")
        args.append(_pad_last(bias, padded))
        specs.append(P(vocab_axis))

    def local(h, y, w, b=None):
        return vocab_parallel_linear_cross_entropy(
            h,
            y,
            w,
            bias_shard=b,
            axis_name=vocab_axis,
            vocab_size=vocab,
            reduction=reduction,
            data_axis_name=data_axis,
            **options,
        )

    out_spec = P(data_axis) if reduction == "none" else P()
    out = _run(local, mesh, tuple(specs), out_spec, *args)
    return out.reshape(batch_shape) if reduction == "none" else out


def _divergence_on_mesh(
    fn, name, logits, target_logits, mesh, vocab_axis, data_axis, reduction, options
):
    d = _mesh_axes(mesh, vocab_axis, "vocab_axis", name)
    dp = _mesh_axes(mesh, data_axis, "data_axis", name)
    _check_reduction(reduction)
    student = as_float_array(logits, "logits")
    teacher = as_float_array(target_logits, "target_logits")
    if student.shape != teacher.shape or student.ndim < 1:
        raise ValueError(
            f"`logits` and `target_logits` must have the same shape; got {describe(student)} and "
            f"{describe(teacher)}."
        )
    vocab = student.shape[-1]
    padded = d * -(-vocab // d)
    batch_shape = student.shape[:-1]
    s = _pad_last(student.reshape(-1, vocab), padded)
    t = _pad_last(teacher.reshape(-1, vocab), padded)
    _check_token_split(s.shape[0], dp, data_axis, "`logits`")

    def local(a, b):
        return fn(
            a,
            b,
            axis_name=vocab_axis,
            vocab_size=vocab,
            reduction=reduction,
            data_axis_name=data_axis,
            **options,
        )

    out_spec = P(data_axis) if reduction == "none" else P()
    spec = P(data_axis, vocab_axis)
    out = _run(local, mesh, (spec, spec), out_spec, s, t)
    return out.reshape(batch_shape) if reduction == "none" else out


def vocab_parallel_forward_kl_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    reduction: str = "mean",
    **options,
) -> jax.Array:
    """:func:`vocab_parallel_forward_kl`, KL(teacher || student), on whole logits and a Mesh.

    Pads ``V`` to a multiple of the ``vocab_axis`` size (masked), splits tokens over
    ``data_axis`` and the vocabulary over ``vocab_axis``. ``options``: temperature.
    """
    return _divergence_on_mesh(
        vocab_parallel_forward_kl,
        "vocab_parallel_forward_kl_on_mesh",
        logits,
        target_logits,
        mesh,
        vocab_axis,
        data_axis,
        reduction,
        options,
    )


def vocab_parallel_reverse_kl_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    reduction: str = "mean",
    **options,
) -> jax.Array:
    """:func:`vocab_parallel_reverse_kl`, KL(student || teacher), on whole logits and a Mesh.

    Pads ``V`` to a multiple of the ``vocab_axis`` size (masked), splits tokens over
    ``data_axis`` and the vocabulary over ``vocab_axis``. ``options``: temperature.
    """
    return _divergence_on_mesh(
        vocab_parallel_reverse_kl,
        "vocab_parallel_reverse_kl_on_mesh",
        logits,
        target_logits,
        mesh,
        vocab_axis,
        data_axis,
        reduction,
        options,
    )


def vocab_parallel_jensen_shannon_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    reduction: str = "mean",
    **options,
) -> jax.Array:
    """:func:`vocab_parallel_jensen_shannon` (teacher P, student Q) on whole logits and a Mesh.

    Pads ``V`` to a multiple of the ``vocab_axis`` size (masked), splits tokens over
    ``data_axis`` and the vocabulary over ``vocab_axis``. ``options``: beta, temperature.
    """
    return _divergence_on_mesh(
        vocab_parallel_jensen_shannon,
        "vocab_parallel_jensen_shannon_on_mesh",
        logits,
        target_logits,
        mesh,
        vocab_axis,
        data_axis,
        reduction,
        options,
    )


def _linear_divergence_on_mesh(
    fn,
    name,
    hidden,
    weight,
    target_hidden,
    target_weight,
    mesh,
    vocab_axis,
    data_axis,
    reduction,
    options,
):
    d = _mesh_axes(mesh, vocab_axis, "vocab_axis", name)
    dp = _mesh_axes(mesh, data_axis, "data_axis", name)
    _check_reduction(reduction)
    hidden = as_float_array(hidden, "hidden")
    weight = as_float_array(weight, "weight")
    target_hidden = as_float_array(target_hidden, "target_hidden")
    target_weight = as_float_array(target_weight, "target_weight")
    if weight.ndim != 2 or target_weight.ndim != 2 or weight.shape[1] != target_weight.shape[1]:
        raise ValueError(
            f"`weight` [D, V] and `target_weight` [D_teacher, V] must be matrices over the same "
            f"vocabulary; got {describe(weight)} and {describe(target_weight)}."
        )
    if hidden.ndim < 1 or hidden.shape[:-1] != target_hidden.shape[:-1]:
        raise ValueError(
            f"`hidden` and `target_hidden` must hold the same tokens; got {describe(hidden)} and "
            f"{describe(target_hidden)}."
        )
    vocab = weight.shape[1]
    padded = d * -(-vocab // d)
    batch_shape = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1])
    th = target_hidden.reshape(-1, target_hidden.shape[-1])
    _check_token_split(h.shape[0], dp, data_axis, "`hidden`")

    options = dict(options)
    where = options.pop("where", None)
    keep = jnp.ones(batch_shape, bool) if where is None else jnp.asarray(where)
    if keep.dtype != jnp.bool_ or keep.shape != batch_shape:
        raise ValueError(
            f"`where` must be a boolean per-token mask of shape {list(batch_shape)}; got "
            f"{describe(keep)}."
        )

    def local(h, w, th, tw, keep):
        return fn(
            h,
            w,
            th,
            tw,
            axis_name=vocab_axis,
            vocab_size=vocab,
            where=keep,
            reduction=reduction,
            data_axis_name=data_axis,
            **options,
        )

    rows, cols = P(data_axis, None), P(None, vocab_axis)
    out_spec = P(data_axis) if reduction == "none" else P()
    args = (h, _pad_last(weight, padded), th, _pad_last(target_weight, padded), keep.reshape(-1))
    out = _run(local, mesh, (rows, cols, rows, cols, P(data_axis)), out_spec, *args)
    return out.reshape(batch_shape) if reduction == "none" else out


def _linear_distillation_wrapper(fn, what):
    name = fn.__name__ + "_on_mesh"

    def wrapper(
        hidden: ArrayLike,
        weight: ArrayLike,
        target_hidden: ArrayLike,
        target_weight: ArrayLike,
        *,
        mesh: Mesh,
        vocab_axis: AxisName,
        data_axis: AxisName | None = None,
        reduction: str = "mean",
        **options,
    ) -> jax.Array:
        return _linear_divergence_on_mesh(
            fn,
            name,
            hidden,
            weight,
            target_hidden,
            target_weight,
            mesh,
            vocab_axis,
            data_axis,
            reduction,
            options,
        )

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = (
        f":func:`{fn.__name__}`, {what}, on whole ``[D, V]`` heads and a ``Mesh``.\n\n"
        "    Pads ``V`` to a multiple of the ``vocab_axis`` size (masked), splits the head\n"
        "    columns over ``vocab_axis`` and the tokens over ``data_axis`` (optional), and builds\n"
        "    the ``shard_map``. ``options``: temperature, beta (Jensen-Shannon), where,\n"
        "    token_block_size, vocab_block_size, backward.\n"
    )
    return wrapper


vocab_parallel_linear_forward_kl_on_mesh = _linear_distillation_wrapper(
    vocab_parallel_linear_forward_kl, "KL(teacher || student)"
)
vocab_parallel_linear_reverse_kl_on_mesh = _linear_distillation_wrapper(
    vocab_parallel_linear_reverse_kl, "KL(student || teacher)"
)
vocab_parallel_linear_jensen_shannon_on_mesh = _linear_distillation_wrapper(
    vocab_parallel_linear_jensen_shannon, "the generalized Jensen-Shannon divergence"
)
