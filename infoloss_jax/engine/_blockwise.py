"""The blockwise driver: one loop, one forward sweep, the backward sweeps, one custom_vjp.

Every fused and vocabulary-parallel loss runs :func:`blockwise`. Its inputs are either a linear
head (hidden states ``x`` ``[N, D]`` and a weight slice ``w``, ``[D, Vs]`` or ``[Vs, D]`` by
``spec.layout``, with an optional bias ``b``) or, when ``w`` is None, logits ``x`` ``[N, Vs]``
taken as one tile. The divergences add a teacher (``th``, ``tw``, or teacher logits ``th``).
With ``axis`` (a mesh axis name) the vocabulary slice is one device's part of a vocabulary
split over that axis inside ``jax.shard_map``: the statistics are all-reduced across it and the
hidden-state gradient is summed over it. That is the vocabulary-parallel loss.

Gradient plans (``Config.plan``). Row plans keep each token chunk's full logits row
``[Tc, V]`` (and the teacher's) and compute its gradient in the forward pass:

* ``"in_forward"``: dz, ``dz @ W^T`` and ``x^T dz`` for the sum of the rows (3 matmuls); the
  weight gradient accumulates in the accumulation dtype (free when the weight is in it).
* ``"fast"``: the same with the logits row and the weight gradient in the weight's dtype,
  dz written over the logits, so one ``[Tc, V]`` buffer is live (3 matmuls; in half
  precision the weight gradient rounds once per chunk).
* ``"rows"``: the forward pass computes dz and ``dz @ W^T`` for a unit cotangent per row
  (the backward pass scales them), the backward pass the weight gradient with vocabulary
  blocks outside, each block summed over every token in float32 (4 matmuls; exact, any
  reduction, a vocabulary split).

On a GPU the statistics and dz of a full row are one Pallas kernel per chunk
(:mod:`._row_kernels`, calling the same tile functions as XLA does). The other plans
recompute tiles in the backward pass: ``"tokens_outer"`` and ``"vocab_outer"`` visit each
tile once and keep one full-size accumulator (``[D, Vs]`` for the weight gradient, free when
the weight is in the accumulation dtype, or ``[N, D]`` for the hidden gradient);
``"two_pass"`` visits every tile twice and keeps only tile-sized accumulators. ``"auto"``
picks the smaller one-pass accumulator, or two passes when it would outgrow a tile.

Plans and tiles are chosen for the platform the computation is lowered for: :func:`configure`
returns one config per platform and :func:`call` stages them with ``lax.platform_dependent``
(a deviceless compile for a GPU from a CPU host gets the GPU's plan). On CPU every loop carries
the large inputs it slices through an optimization barrier: otherwise XLA's CPU backend hoists
a convert of a bfloat16 weight out of the loop, a full float32 copy of it. Elsewhere loops read
them directly, and hidden-row and weight-column slices are hoisted out of the inner loops.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar, cast, overload

import jax
import jax.numpy as jnp
from jax import lax

from ..base._caching import trace_context
from . import (
    _pairs,  # noqa: F401  (declares the built-in divergences the heads run)
    _row_kernels,
    _tiles,
)
from ._loss_spec import Coefficients, LossSpec

AxisName = Hashable | tuple[Hashable, ...]

# Element budget of a [Tb, Vb] tile, a [D, Vb] weight slice and a [Tb, D] hidden slice on CPU
# (8 MiB of float32), split over the devices of a vocabulary axis down to _MIN_ELEMENTS.
_BLOCK_ELEMENTS = 2**21
_MIN_ELEMENTS = 2**17
# Accelerators pay per loop step, so their tiles are larger (see benchmarks/README.md).
_ACCEL_BUDGETS = (2**21, 2**22, 2**23)
# "in_forward" keeps a [Tb, V] row of at most this many elements, Tb >= _ROW_MIN_TOKENS.
_ROW_ELEMENTS = 2**23
_ROW_MIN_TOKENS = 128
# On accelerators the row plans size their chunks and blocks to a share of the naive head's
# temp memory (its [N, V] logits in the weight's dtype and in float32), not below a floor.
_ACCEL_SHARE = 0.018
_ACCEL_FLOOR_BYTES = 32 * 2**20
_CHUNK_MULTIPLE = 16  # tokens per chunk: a multiple of this (the kernel's row blocks)
# Heads with at most this many logits run one plan on every platform.
_SHARED_PLAN_ELEMENTS = _BLOCK_ELEMENTS
BACKWARDS = ("auto", "one_pass", "two_pass", "in_forward", "rows", "fast")
# Plans that keep each token chunk's full logits row and compute its gradient in the forward.
ROW_PLANS = ("in_forward", "rows", "fast")


class Blocks(NamedTuple):
    tokens: int
    vocab: int


class Config(NamedTuple):
    spec: LossSpec
    blocks: Blocks
    plan: str  # one of ROW_PLANS, or "auto" / "one_pass" / "two_pass" resolved in the backward
    axis: AxisName | None
    padded: bool  # the slices hold padding classes beyond spec.vocab_size
    platform: str = "cpu"  # the plan was chosen for "cpu" or for an "accelerator"
    # A full row's statistics and dz: "xla", "pallas", "interpret", or "auto" (Pallas where
    # lowered for a CUDA GPU, XLA elsewhere).
    kernel: str = "xla"
    grad_blocks: Blocks | None = None  # the "rows" plan's weight-gradient pass


class Operands(NamedTuple):
    x: jax.Array  # hidden states [N, D], or logits [N, Vs] when w is None
    w: jax.Array | None
    b: jax.Array | None
    th: jax.Array | None  # teacher hidden states, or teacher logits when w is None
    tw: jax.Array | None
    labels: jax.Array | None  # [N] int32 global class indices (cross-entropy)
    class_weights: jax.Array | None  # [Vs] slice
    mask: jax.Array | None  # [N, Vs] class mask (logits only)
    row_mask: jax.Array | None  # [N] False drops a row from the loss and the mean


class Out(NamedTuple):
    loss: jax.Array  # [N] per-row loss
    total: jax.Array  # sum of the rows (carries the same gradient)
    lse: tuple
    argmax: jax.Array | None
    weight: jax.Array  # [N] denominator weights of the mean
    entropy: jax.Array | None = None  # [N] entropy of the softmax (spec.entropy)


# ------------------------------------------------------------------------------ mesh types
def varying_axes(x) -> frozenset:
    """The mesh axes ``x`` varies over inside shard_map (empty outside)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", ()))


def vary_like(x, *likes):
    """``x`` typed as varying over every mesh axis one of ``likes`` varies over."""
    want = frozenset().union(*(varying_axes(a) for a in likes if a is not None))
    missing = tuple(sorted(want - varying_axes(x), key=str))
    if not missing:
        return x
    if hasattr(lax, "pcast"):
        return lax.pcast(x, missing, to="varying")
    return lax.pvary(x, missing)  # pyright: ignore[reportAttributeAccessIssue]  # JAX without lax.pcast


@overload
def match_cotangent(ct: None, like) -> None: ...
@overload
def match_cotangent(ct: jax.Array, like) -> jax.Array: ...
def match_cotangent(ct, like):
    """Sums ``ct`` over the axes its primal is replicated over, then types it like the primal."""
    if ct is None or like is None:
        return None
    extra = tuple(sorted(varying_axes(ct) - varying_axes(like), key=str))
    if extra:
        ct = lax.psum(ct, extra)
    return vary_like(ct, like).astype(like.dtype)


# ------------------------------------------------------------------------------ the loop
def for_blocks(body, carry, size: int, block: int, pinned: tuple = (), barrier=True) -> Any:
    """``carry = body(carry, start, length, pinned)`` over [0, size) in blocks of ``block``.

    Full blocks run in a ``lax.scan``; a ragged remainder runs once more with its static
    length, so nothing is padded. With ``barrier`` (on CPU), ``pinned`` travels through the
    carry behind an optimization barrier, so that XLA cannot hoist a converted copy of it out
    of the loop; elsewhere the loop reads it as a constant, and slices of it can be hoisted.
    """
    n_full, rem = divmod(size, block)
    if n_full == 1:
        carry = body(carry, 0, block, pinned)
    elif n_full > 1 and not barrier:

        def plain_step(i, c):
            return body(c, i * block, block, pinned)

        carry = lax.fori_loop(0, n_full, plain_step, carry)
    elif n_full > 1:

        def step(state, i):
            c, p = state
            p = jax.tree.map(lax.optimization_barrier, p)
            return (body(c, i * block, block, p), p), None

        (carry, _), _ = lax.scan(step, (carry, pinned), jnp.arange(n_full, dtype=jnp.int32))
    if rem:
        carry = body(carry, n_full * block, rem, pinned)
    return carry


@overload
def _rows(x: None, start, length) -> None: ...
@overload
def _rows(x: jax.Array, start, length) -> jax.Array: ...
def _rows(x, start, length):
    if x is None or _whole(x, start, length, 0):
        return x
    return lax.dynamic_slice_in_dim(x, start, length, axis=0)


def _whole(x, start, length, axis) -> bool:
    """True for a slice that is all of ``x`` along ``axis`` (no slice op is written then)."""
    return isinstance(start, int) and start == 0 and length == x.shape[axis]


def _set_rows(acc, start, update):
    return lax.dynamic_update_slice_in_dim(acc, update.astype(acc.dtype), start, 0)


def _vocab_axis(spec: LossSpec) -> int:
    return 1 if spec.layout == "dv" else 0


@overload
def _vslice(x: None, start, length, axis) -> None: ...
@overload
def _vslice(x: jax.Array, start, length, axis) -> jax.Array: ...
def _vslice(x, start, length, axis):
    if x is None or _whole(x, start, length, axis):
        return x
    return lax.dynamic_slice_in_dim(x, start, length, axis=axis)


def _dot(a, b, contract, acc):
    dtype = jnp.result_type(a.dtype, b.dtype)
    dims = (contract, ((), ()))
    return lax.dot_general(a.astype(dtype), b.astype(dtype), dims, preferred_element_type=acc)


def _dx_part(dz, w_blk, ax, acc):
    """dz @ w_blk^T for either weight layout."""
    return _dot(dz, w_blk, ((1,), (1,)) if ax == 1 else ((1,), (0,)), acc)


def _dw_part(x_blk, dz, ax, acc):
    """x_blk^T @ dz in the weight's layout ([D, Vb] or [Vb, D])."""
    return _dot(x_blk, dz, ((0,), (0,)), acc) if ax == 1 else _dot(dz, x_blk, ((0,), (0,)), acc)


def _add_at(buf, start, update, axis):
    """buf[start:start + len, along axis] += update, rounded once to the buffer's dtype."""
    old = _vslice(buf, start, update.shape[axis], axis)
    new = (old.astype(update.dtype) + update).astype(buf.dtype)
    if _whole(buf, start, update.shape[axis], axis):
        return new
    return lax.dynamic_update_slice_in_dim(buf, new, start, axis)


def _grad_tile(ctx, pinned, row, t0, tl, v0, vl, dw, db, col, tile=None, xo=None, wo=None):
    """One tile's (dx part, dw, db): its parts are added to dw and db (if given) at ``col``.
    ``xo`` and ``wo``: where the tile's hidden rows and weight columns start in ``pinned``
    (``t0`` and ``v0`` unless the caller hoisted a slice out of the loop)."""
    xo, wo = t0 if xo is None else xo, v0 if wo is None else wo
    raw, teacher, _ = tile if tile is not None else _tile(ctx, pinned, t0, tl, v0, vl, xo, wo)
    dz, _ = _tile_grads(ctx, raw, teacher, row, 0 if tile is not None else t0, tl, v0, vl)
    return _apply_dz(ctx, dz, pinned, tl, vl, dw, db, col, xo, wo)


def _apply_dz(ctx, dz, pinned, tl, vl, dw, db, col, xo, wo):
    """dz @ W_blk^T, and x_blk^T dz and the column sums of dz added to dw and db at ``col``."""
    ops, acc, ax = ctx.ops, ctx.acc, _vocab_axis(ctx.spec)
    dz_c = dz.astype(jnp.result_type(ops.x.dtype, ops.w.dtype))
    x_blk = _rows(pinned[0], xo, tl)
    if dw is not None:
        # A full-width buffer in a narrower dtype (the fast plan) takes the GEMM's output in
        # its own dtype: the GEMM then accumulates into it in place (beta = 1 on GPU).
        # (On CPU the GEMM's float32 output is added first: one rounding, as cuBLAS does.)
        narrow = _whole(dw, col, vl, ax) and ctx.cfg.platform != "cpu"
        out = dw.dtype if narrow else acc
        dw = _add_at(dw, col, _dw_part(x_blk, dz_c, ax, out), ax)
    if db is not None:
        db = _add_at(db, col, jnp.sum(dz.astype(acc), axis=0), 0)
    return _dx_part(dz_c, _vslice(pinned[1], wo, vl, ax), ax, acc), dw, db


# ------------------------------------------------------------------------------ one tile
class _Ctx(NamedTuple):
    cfg: Config
    ops: Operands
    coefs: Coefficients
    offset: jax.Array | int  # global class of the slice's first column
    zeros: Callable[..., jax.Array]  # zeros(shape, dtype), typed for the mesh

    @property
    def spec(self):
        return self.cfg.spec

    @property
    def acc(self):
        return self.cfg.spec.accum_dtype


def _context(cfg: Config, ops: Operands, coefs, *extra) -> _Ctx:
    local = ops.x.shape[1] if ops.w is None else ops.w.shape[_vocab_axis(cfg.spec)]
    offset = 0 if cfg.axis is None else lax.axis_index(cfg.axis) * local
    likes = [leaf for leaf in jax.tree.leaves((ops, *extra))]

    def zeros(shape, dtype, *only):
        return vary_like(jnp.zeros(shape, dtype), *(only or likes))

    return _Ctx(cfg, ops, coefs, offset, zeros)


def _head_logits(x_blk, w, start, length, layout, acc):
    w_blk = _vslice(w, start, length, 1 if layout == "dv" else 0)
    contract = ((1,), (0,)) if layout == "dv" else ((1,), (1,))
    return _dot(x_blk, w_blk, contract, acc), w_blk


def _tile(ctx: _Ctx, pinned, t0, tl, v0, vl, xo=None, wo=None, dtype=None):
    """Masked raw logits of one tile (``-inf`` on excluded classes) and its weight slice.

    Returns ``(raw, teacher, w_blk)``; ``teacher`` is None for the cross-entropy. ``xo``,
    ``wo``: where the tile's rows and columns start in ``pinned`` (default ``t0``, ``v0``).
    ``dtype``: of the logits (default the accumulation dtype).
    """
    spec, acc = ctx.spec, dtype or ctx.acc
    x, w, th, tw = pinned
    xo, wo = t0 if xo is None else xo, v0 if wo is None else wo
    ops = ctx.ops
    teacher = w_blk = None
    if w is None:
        raw = _vslice(_rows(x, xo, tl), wo, vl, 1).astype(acc)
        if spec.divergence:
            teacher = _vslice(_rows(th, xo, tl), wo, vl, 1).astype(acc)
    else:
        raw, w_blk = _head_logits(_rows(x, xo, tl), w, wo, vl, spec.layout, acc)
        if ops.b is not None:
            raw = raw + _vslice(ops.b, v0, vl, 0).astype(acc)
        if spec.divergence:
            teacher = _head_logits(_rows(th, xo, tl), tw, wo, vl, spec.layout, acc)[0]
    if spec.scaled and spec.divergence:  # the cross-entropy scales after its soft cap
        inv_t = ctx.coefs.inverse_temperature.astype(acc)
        raw = raw * inv_t
        teacher = None if teacher is None else teacher * inv_t
    keep = None
    if ctx.cfg.padded:
        cols = ctx.offset + v0 + lax.broadcasted_iota(jnp.int32, (1, vl), 1)
        keep = cols < spec.vocab_size
    if ops.mask is not None:
        m = _vslice(_rows(ops.mask, t0, tl), v0, vl, 1)
        keep = m if keep is None else keep & m
    if keep is not None:
        raw = jnp.where(keep, raw, -jnp.inf)
        teacher = None if teacher is None else jnp.where(keep, teacher, -jnp.inf)
    return raw, teacher, w_blk


def _tile_input(ctx: _Ctx, raw, teacher, t0, tl, v0, vl) -> _tiles.Tile:
    """What the loss reads of one tile (a divergence's logits arrive scaled by ``_tile``)."""
    cw = _vslice(ctx.ops.class_weights, v0, vl, 0)
    cw = None if cw is None else cw.astype(ctx.acc)
    return _tiles.Tile(raw, teacher, _rows(ctx.ops.labels, t0, tl), cw, ctx.offset + v0)


def _tile_stats(ctx: _Ctx, raw, teacher, t0, tl, v0, vl, explicit=False):
    """First-sweep statistics of one tile; ``explicit`` picks a label's logit with a masked
    sum instead of a gather (inside a Pallas kernel)."""
    tile = _tile_input(ctx, raw, teacher, t0, tl, v0, vl)
    return ctx.spec.loss.tile_stats(tile, ctx.spec, ctx.coefs, explicit)


def _pinned(ops: Operands):
    return (ops.x, ops.w, ops.th, ops.tw)


def _vocab_size(ctx: _Ctx) -> int:
    ops = ctx.ops
    return ops.x.shape[1] if ops.w is None else ops.w.shape[_vocab_axis(ctx.spec)]


def _sweep(ctx: _Ctx, init, tile_fn):
    """Per-row statistics over every tile: token blocks outside, vocabulary blocks inside."""
    n, blocks = ctx.ops.x.shape[0], ctx.cfg.blocks

    barrier = _barrier(ctx)

    def token_body(out, t0, tl, pinned):
        def vocab_body(stats, v0, vl, pinned):
            raw, teacher, _ = _tile(ctx, pinned, t0, tl, v0, vl, xo=0)
            return _tiles.merge(stats, tile_fn(raw, teacher, t0, tl, v0, vl))

        blk = _hoist_rows(pinned, t0, tl)
        stats = for_blocks(vocab_body, init(tl), _vocab_size(ctx), blocks.vocab, blk, barrier)
        return jax.tree.map(lambda o, s: _set_rows(o, t0, s), out, stats)

    return for_blocks(token_body, init(n), n, blocks.tokens, _pinned(ctx.ops), barrier)


def _barrier(ctx: _Ctx) -> bool:
    """Loops carry their inputs behind an optimization barrier on CPU only (see for_blocks)."""
    return ctx.cfg.platform == "cpu"


def _hoist_rows(pinned, t0, tl):
    """The hidden-state rows of a token block, sliced once for a whole vocabulary loop."""
    x, w, th, tw = pinned
    return (_rows(x, t0, tl), w, _rows(th, t0, tl), tw)


def _hoist_columns(pinned, v0, vl, ax):
    """The weight columns of a vocabulary block, sliced once for a whole token loop."""
    x, w, th, tw = pinned
    return (x, _vslice(w, v0, vl, ax), th, _vslice(tw, v0, vl, ax))


def _rows_from_stats(
    ctx: _Ctx, stats: _tiles.Stats, second_pass
) -> tuple[_tiles.Rows, _tiles.Stats]:
    spec, loss = ctx.spec, ctx.spec.loss
    stats = _tiles.all_reduce(stats, ctx.cfg.axis)
    if loss.two_pass:  # a second sweep, over the log-probabilities
        terms = _tiles.all_reduce(second_pass(_tiles.norms_of(stats)), ctx.cfg.axis)
        stats = stats._replace(plain=terms.plain)
    return loss.rows_of(stats, ctx.ops.labels, ctx.ops.row_mask, spec, ctx.coefs), stats


def _second_pass_init(ctx: _Ctx):
    def init(n):
        return ctx.spec.loss.terms_empty(n, ctx.acc, ctx.zeros)

    return init


def _second_pass_tile(ctx: _Ctx, raw, teacher, norms):
    """A two-pass loss's sums over one tile, given its rows' normalizers ``norms``."""
    tile = _tiles.Tile(raw, teacher, None, None, 0)
    return ctx.spec.loss.tile_terms(tile, norms, ctx.coefs)


def _forward(ctx: _Ctx):
    spec, acc = ctx.spec, ctx.acc
    stats = _sweep(
        ctx,
        lambda n: _tiles.empty(spec, n, acc, ctx.zeros),
        lambda raw, teacher, t0, tl, v0, vl: _tile_stats(ctx, raw, teacher, t0, tl, v0, vl),
    )

    def second_pass(norms):
        def terms(raw, teacher, t0, tl, v0, vl):
            return _second_pass_tile(ctx, raw, teacher, tuple(_rows(x, t0, tl) for x in norms))

        return _sweep(ctx, _second_pass_init(ctx), terms)

    return _rows_from_stats(ctx, stats, second_pass)


# ------------------------------------------------------------------------------ gradients
def _tile_grads(ctx: _Ctx, raw, teacher, row, t0, tl, v0, vl):
    """(d student raw logits, d teacher logits or None) of one tile, rows sliced from ``row``."""
    sl = {k: _rows(v, t0, tl) if v is not None else None for k, v in row.items()}
    tile = _tile_input(ctx, raw, teacher, t0, tl, v0, vl)
    teacher_grad = ctx.ops.w is None  # logits: the teacher is differentiable too
    return ctx.spec.loss.tile_grads(tile, sl, ctx.spec, ctx.coefs, teacher_grad)


def _row_values(ctx: _Ctx, rows: _tiles.Rows, g, g_entropy=None):
    """Per-row arrays the tile gradients read, with the cotangents ``g`` (of the loss) and
    ``g_entropy`` (of the entropy, if any) and the temperature's chain rule folded in."""
    spec = ctx.spec
    if spec.scaled:
        inv_t = ctx.coefs.inverse_temperature.astype(g.dtype)
        g = g * inv_t
        g_entropy = None if g_entropy is None else g_entropy * inv_t
    return spec.loss.row_values(rows, g, g_entropy, spec, ctx.ops.labels)


def _weight_psum_axes(ctx: _Ctx, g) -> tuple:
    ops = ctx.ops
    varying = frozenset().union(*(varying_axes(a) for a in (ops.x, ops.labels, g) if a is not None))
    return tuple(sorted(varying - varying_axes(ops.w), key=str))


def _vocab_outer(ctx: _Ctx, row, psum_axes, want_dx=True):
    """Vocabulary blocks outside: each weight-gradient block is finished once (summed over a
    data axis if any) and written in the weight's dtype; dx accumulates in ``[N, D]``."""
    spec, acc, ops = ctx.spec, ctx.acc, ctx.ops
    assert ops.w is not None  # the linear-head paths
    n, d = ops.x.shape
    ax = _vocab_axis(spec)
    blocks = ctx.cfg.blocks
    barrier = _barrier(ctx)
    # One token block: its GEMM sums over every token in float32 and rounds once, straight
    # to the weight's dtype (no float32 block buffer), unless a data axis still sums it.
    block_dtype = ops.w.dtype if (blocks.tokens >= n and not psum_axes) else acc

    def vocab_body(carry, v0, vl, pinned):
        dx, dw, db = carry

        def token_body(inner, t0, tl, pinned):
            dx, dw_blk, db_blk = inner
            # The block buffers hold columns [v0, v0 + vl) from their own column 0.
            part, dw_blk, db_blk = _grad_tile(
                ctx, pinned, row, t0, tl, v0, vl, dw_blk, db_blk, 0, wo=0
            )
            if dx is not None:
                dx = _add_at(dx, t0, part, 0)
            return dx, dw_blk, db_blk

        shape = (d, vl) if ax == 1 else (vl, d)
        db0 = ctx.zeros((vl,), acc) if db is not None else None
        blk = _hoist_columns(pinned, v0, vl, ax)
        dw0 = ctx.zeros(shape, block_dtype)
        dx, dw_blk, db_blk = for_blocks(token_body, (dx, dw0, db0), n, blocks.tokens, blk, barrier)
        if psum_axes:
            dw_blk = lax.psum(dw_blk, psum_axes)
            db_blk = None if db_blk is None else lax.psum(db_blk, psum_axes)
        dw = lax.dynamic_update_slice_in_dim(dw, dw_blk.astype(dw.dtype), v0, ax)
        if db is not None and db_blk is not None:
            db = lax.dynamic_update_slice_in_dim(db, db_blk.astype(db.dtype), v0, 0)
        return dx, dw, db

    like = (ops.w, ops.b) if psum_axes else ()
    init = (
        ctx.zeros((n, d), acc) if want_dx else None,
        ctx.zeros(ops.w.shape, ops.w.dtype, *like),
        None if ops.b is None else ctx.zeros(ops.b.shape, ops.b.dtype, *like),
    )
    dx, dw, db = for_blocks(vocab_body, init, _vocab_size(ctx), blocks.vocab, _pinned(ops), barrier)
    if dx is not None and ctx.cfg.axis is not None:
        dx = lax.psum(dx, ctx.cfg.axis)
    return dx, dw, db


def _tokens_outer(ctx: _Ctx, row, psum_axes, g, want_dw=True):
    """Token blocks outside: each ``[Tb, D]`` block of dx is finished over the slice (and
    summed over the vocabulary axis) in turn; dw accumulates in a full ``accum_dtype`` buffer."""
    acc, ops = ctx.acc, ctx.ops
    assert ops.w is not None  # the linear-head paths
    n, d = ops.x.shape
    blocks = ctx.cfg.blocks

    barrier = _barrier(ctx)

    def token_body(carry, t0, tl, pinned):
        dx, dw, db = carry

        def vocab_body(inner, v0, vl, pinned):
            dx_blk, dw, db = inner
            part, dw, db = _grad_tile(ctx, pinned, row, t0, tl, v0, vl, dw, db, v0, xo=0)
            return dx_blk + part, dw, db

        dx_blk = ctx.zeros((tl, d), acc)
        blk = _hoist_rows(pinned, t0, tl)
        dx_blk, dw, db = for_blocks(
            vocab_body, (dx_blk, dw, db), _vocab_size(ctx), blocks.vocab, blk, barrier
        )
        if ctx.cfg.axis is not None:
            dx_blk = lax.psum(dx_blk, ctx.cfg.axis)
        return _set_rows(dx, t0, dx_blk), dw, db

    init = (
        ctx.zeros((n, d), ops.x.dtype, ops.x, ops.labels, g),
        ctx.zeros(ops.w.shape, acc) if want_dw else None,
        ctx.zeros(ops.b.shape, acc) if (want_dw and ops.b is not None) else None,
    )
    dx, dw, db = for_blocks(token_body, init, n, blocks.tokens, _pinned(ops), barrier)
    if psum_axes and dw is not None:
        dw = lax.psum(dw, psum_axes)
        db = None if db is None else lax.psum(db, psum_axes)
    return dx, dw, db


def resolve_plan(
    plan: str, n, d, v, weight_dtype, acc, weight_psum: bool, axis_size: int, platform=None
):
    """The backward to run: ``"two_pass"``, ``"tokens_outer"`` or ``"vocab_outer"``.

    One pass keeps the smaller full-size accumulator: ``[D, Vs]`` (free when the weight is in
    ``acc`` and needs no sum over a data axis) or ``[N, D]``. ``"auto"`` takes two passes when
    that accumulator would be larger than a tile's element budget.
    """
    free = jnp.dtype(weight_dtype) == jnp.dtype(acc) and not weight_psum
    sizes = {"tokens_outer": 0 if free else d * v, "vocab_outer": n * d}
    order = min(sizes, key=lambda k: (sizes[k], k != "tokens_outer"))
    budget = tile_budget(axis_size, platform)
    if plan == "two_pass" or (plan == "auto" and sizes[order] > budget):
        return "two_pass"
    return order


def _linear_grads(ctx: _Ctx, row, g):
    ops, spec = ctx.ops, ctx.spec
    assert ops.w is not None  # the linear-head paths
    psum_axes = _weight_psum_axes(ctx, g)
    n, d = ops.x.shape
    axis_size = 1 if ctx.cfg.axis is None else lax.axis_size(ctx.cfg.axis)
    plan = resolve_plan(
        ctx.cfg.plan,
        n,
        d,
        _vocab_size(ctx),
        ops.w.dtype,
        spec.accum_dtype,
        bool(psum_axes),
        axis_size,
        ctx.cfg.platform,
    )
    if plan == "vocab_outer":
        return _vocab_outer(ctx, row, psum_axes)
    if plan == "tokens_outer":
        return _tokens_outer(ctx, row, psum_axes, g)
    _, dw, db = _vocab_outer(ctx, row, psum_axes, want_dx=False)
    dx, _, _ = _tokens_outer(ctx, row, psum_axes, g, want_dw=False)
    return dx, dw, db


def _row_sweep(ctx: _Ctx, weight: bool):
    """Token chunks with full vocabulary rows, all in the forward pass.

    Each chunk's logits row ``[Tc, V]`` (and the teacher's) is computed once, whole or in
    vocabulary tiles, and kept; it gives the chunk's statistics, its rows and, for a unit
    cotangent per row, ``dz`` and ``dz @ W^T`` (summed over a vocabulary split). With
    ``weight`` also ``x^T dz`` and the bias gradient, accumulated over the chunks in the
    dtype of the ``dw`` buffer (the ``in_forward`` and ``fast`` plans); without it, the
    ``rows`` plan, one hidden gradient per unit cotangent (the rows', and the entropy's).

    Returns ``(stats, rows, dxs, dw, db)`` for all ``N`` rows.
    """
    spec, acc, ops, cfg = ctx.spec, ctx.acc, ctx.ops, ctx.cfg
    assert ops.w is not None  # the linear-head paths
    n, d = ops.x.shape
    v = _vocab_size(ctx)
    blocks, barrier = cfg.blocks, _barrier(ctx)
    whole = blocks.vocab >= v
    # The fast plan keeps its logits in the weight's dtype and overwrites them with dz.
    row_dtype = ops.w.dtype if cfg.plan == "fast" else acc
    units = [(1.0, 0.0)] + ([(0.0, 1.0)] if spec.entropy and not weight else [])

    def token_body(carry, t0, tl, pinned):
        stats_out, dxs, dw, db = carry
        blk = _hoist_rows(pinned, t0, tl)
        sub = ctx._replace(
            ops=ops._replace(labels=_rows(ops.labels, t0, tl), row_mask=_rows(ops.row_mask, t0, tl))
        )

        def with_kernel(mode, stats_out, dw, db):
            # One kernel: statistics, rows and every dz, the statistics written in place.
            raw, teacher, _ = _tile(ctx, blk, t0, tl, 0, v, xo=0, dtype=row_dtype)
            buffers = (raw,) if teacher is None else (raw, teacher)
            stats_out, dzs = _row_kernels.row_pass(
                ctx, buffers, t0, stats_out, units, _compute_dtype(ops), _ROW_FUNCTIONS, mode
            )  # mode: "pallas" (Triton) or "interpret"
            parts = []
            for i, dz in enumerate(dzs):
                grads = (dw, db) if (weight and i == 0) else (None, None)
                part, dw_i, db_i = _apply_dz(sub, dz, blk, tl, v, *grads, 0, 0, 0)
                dw, db = (dw_i, db_i) if (weight and i == 0) else (dw, db)
                parts.append(part)
            return stats_out, parts, dw, db

        def in_xla(stats_out, dw, db):
            stats, dw, db, parts = _chunk_grads(ctx, sub, blk, t0, tl, v, units, (dw, db), weight)
            stats_out = jax.tree.map(lambda o, x: _set_rows(o, t0, x), stats_out, stats)
            return stats_out, parts, dw, db

        # The kernel step is one launch per chunk; a vocabulary split needs an all-reduce
        # between the statistics and dz, so it runs the XLA step.
        fused = whole and cfg.axis is None
        step = _kernel_or_xla(cfg.kernel if fused else "xla", with_kernel, in_xla)
        stats_out, parts, dw, db = step(stats_out, dw, db)
        if cfg.axis is not None:
            parts = [lax.psum(part, cfg.axis) for part in parts]
        new_dxs = tuple(_set_rows(dx, t0, part) for dx, part in zip(dxs, parts, strict=True))
        return stats_out, new_dxs, dw, db

    # Per-row results are merged over a vocabulary split: typed like the rows, not the slice.
    def row_zeros(shape, dtype, *_):
        return ctx.zeros(shape, dtype, ops.x, ops.labels, ops.row_mask)

    stats0 = _tiles.empty(spec, n, acc, row_zeros)
    if spec.loss.two_pass:  # each chunk's stats carry the second sweep's sums
        stats0 = stats0._replace(plain=spec.loss.terms_empty(n, acc, row_zeros).plain)
    dw_dtype = ops.w.dtype if cfg.plan == "fast" else acc
    init = (
        stats0,
        tuple(ctx.zeros((n, d), ops.x.dtype, ops.x, ops.labels) for _ in units),
        ctx.zeros(ops.w.shape, dw_dtype) if weight else None,
        ctx.zeros(ops.b.shape, dw_dtype) if (weight and ops.b is not None) else None,
    )
    stats, dxs, dw, db = for_blocks(token_body, init, n, blocks.tokens, _pinned(ops), barrier)
    if weight:
        psum_axes = _weight_psum_axes(ctx, None)
        if psum_axes:
            dw = lax.psum(dw, psum_axes)
            db = None if db is None else lax.psum(db, psum_axes)
    # The rows of all N tokens from their statistics, already merged over the vocabulary.
    merged = ctx._replace(cfg=cfg._replace(axis=None))
    terms = _tiles.Stats((), (), {}, stats.plain, None)
    rows, _ = _rows_from_stats(merged, stats, lambda norms: terms)
    return stats, rows, dxs, dw, db


def _kernel_or_xla(kernel: str, with_kernel, in_xla):
    """The step to run: ``in_xla``, or ``with_kernel(mode, ...)`` for the Pallas kernel;
    ``"auto"`` takes the kernel where the computation is lowered for a CUDA GPU."""
    if kernel == "xla":
        return in_xla
    if kernel != "auto":
        return functools.partial(with_kernel, kernel)
    on_gpu = functools.partial(with_kernel, "pallas")
    return lambda *args: lax.platform_dependent(*args, cuda=on_gpu, default=in_xla)


def _full_row_stats(sub: _Ctx, buffers) -> _tiles.Stats:
    """Statistics of a chunk's full logits row(s), in XLA."""
    tl, v = buffers[0].shape
    up = [b.astype(sub.acc) for b in buffers]
    return _tile_stats(sub, up[0], up[1] if len(up) > 1 else None, 0, tl, 0, v)


def _full_row_grads(sub: _Ctx, buffers, row, dtype) -> jax.Array:
    """dz of a chunk's full logits row, in XLA, in ``dtype``."""
    tl, v = buffers[0].shape
    up = [b.astype(sub.acc) for b in buffers]
    dz, _ = _tile_grads(sub, up[0], up[1] if len(up) > 1 else None, row, 0, tl, 0, v)
    return dz.astype(dtype)


def _chunk_grads(ctx: _Ctx, sub: _Ctx, blk, t0, tl, v, units, grads, weight):
    """A chunk's statistics, and ``dz @ W^T`` (and dw, db) for each unit cotangent, in XLA."""
    spec, acc, cfg, ops = ctx.spec, ctx.acc, ctx.cfg, ctx.ops
    assert ops.w is not None  # the linear-head paths
    whole = cfg.blocks.vocab >= v
    row_dtype = ops.w.dtype if cfg.plan == "fast" else acc
    if whole:
        raw, teacher, _ = _tile(ctx, blk, t0, tl, 0, v, xo=0, dtype=row_dtype)
        buffers = (raw,) if teacher is None else (raw, teacher)
        stats = _full_row_stats(sub, buffers)
    else:
        stats, buffers = _tiled_row(ctx, sub, blk, t0, tl, v, row_dtype, _barrier(ctx))

    def second_pass(norms):
        s_row, t_row = (b.astype(acc) for b in buffers)
        return _second_pass_tile(sub, s_row, t_row, norms)

    rows, stats = _rows_from_stats(sub, stats, second_pass)
    dw, db = grads
    parts = []
    for i, (unit, unit_entropy) in enumerate(units):
        g = jnp.full((tl,), unit, acc)
        g_entropy = jnp.full((tl,), unit_entropy, acc) if spec.entropy else None
        row = _row_values(sub, rows, g, g_entropy)
        now = (dw, db) if (weight and i == 0) else (None, None)
        if whole:
            dz = _full_row_grads(sub, buffers, row, _compute_dtype(ops))
            part, dw_i, db_i = _apply_dz(sub, dz, blk, tl, v, *now, 0, 0, 0)
        else:
            part, dw_i, db_i = _tiled_row_grads(sub, blk, buffers, row, tl, v, now, _barrier(ctx))
        if weight and i == 0:
            dw, db = dw_i, db_i
        parts.append(part)
    return stats, dw, db, parts


class RowFunctions(NamedTuple):
    """The engine's per-tile and per-row steps, handed to the Pallas row kernels."""

    tile_stats: Callable
    tile_grads: Callable
    rows_from_stats: Callable
    row_values: Callable


def _compute_dtype(ops: Operands):
    """The dtype of the gradient GEMMs' operands (dz is cast to it)."""
    assert ops.w is not None  # the linear-head paths
    return jnp.result_type(ops.x.dtype, ops.w.dtype)


def _tiled_row(ctx: _Ctx, sub: _Ctx, blk, t0, tl, v, row_dtype, barrier):
    """A chunk's statistics over vocabulary tiles, and its logits row(s) ``[Tc, V]``."""
    spec, acc = ctx.spec, ctx.acc

    def stats_body(inner, v0, vl, pinned):
        stats, rows = inner
        raw, teacher, _ = _tile(ctx, pinned, t0, tl, v0, vl, xo=0, dtype=row_dtype)
        tile = (raw.astype(acc), None if teacher is None else teacher.astype(acc))
        stats = _tiles.merge(stats, _tile_stats(sub, *tile, 0, tl, v0, vl))
        rows = tuple(
            lax.dynamic_update_slice_in_dim(r, x, v0, 1)
            for r, x in zip(rows, (raw,) if teacher is None else (raw, teacher), strict=True)
        )
        return stats, rows

    buffers = (ctx.zeros((tl, v), row_dtype),) * (2 if spec.divergence else 1)
    init = (_tiles.empty(spec, tl, acc, ctx.zeros), buffers)
    return for_blocks(stats_body, init, v, ctx.cfg.blocks.vocab, blk, barrier)


def _tiled_row_grads(sub: _Ctx, blk, buffers, row, tl, v, grads, barrier):
    """``dz @ W^T`` of a kept logits row over vocabulary tiles (and dw, db if given)."""
    spec, acc = sub.spec, sub.acc

    def grad_body(inner, v0, vl, pinned):
        dx_blk, dw, db = inner
        tile = tuple(_vslice(b, v0, vl, 1).astype(acc) for b in buffers)
        tile = (tile[0], tile[1] if spec.divergence else None, None)
        part, dw, db = _grad_tile(sub, pinned, row, 0, tl, v0, vl, dw, db, v0, tile, xo=0)
        return dx_blk + part, dw, db

    init = (sub.zeros((tl, blk[0].shape[1]), acc), *grads)
    return for_blocks(grad_body, init, v, sub.cfg.blocks.vocab, blk, barrier)


# ------------------------------------------------------------------------------ custom_vjp
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def blockwise(cfg: Config, ops: Operands, coefs: Coefficients) -> Out:
    """Per-row loss over the tiles of ``ops`` (see the module docstring); reverse mode only."""
    return _fwd(cfg._replace(plan="auto"), ops, coefs)[0]


def _fwd(cfg: Config, ops: Operands, coefs: Coefficients):
    ctx = _context(cfg, ops, coefs)
    if cfg.plan in ROW_PLANS:
        weight = cfg.plan != "rows"
        stats, rows, dxs, dw, db = _row_sweep(ctx, weight)
        out = Out(rows.loss, jnp.sum(rows.loss), rows.lse, stats.argmax, rows.weight, rows.entropy)
        if weight:  # the gradient of the sum of the rows; the cotangent scales it
            return out, (None, (dxs[0], dw, db), None)
        return out, ((ops, coefs, rows), None, dxs)
    rows, stats = _forward(ctx)
    out = Out(rows.loss, jnp.sum(rows.loss), rows.lse, stats.argmax, rows.weight, rows.entropy)
    return out, ((ops, coefs, rows), None, None)


def _scaled(x, g, acc):
    """``x * g`` computed in ``acc`` and rounded once to ``x``'s dtype (``g`` scalar or [N])."""
    if x is None:
        return None
    g = g.astype(acc)
    return (x.astype(acc) * (g[:, None] if g.ndim == 1 and x.ndim == 2 else g)).astype(x.dtype)


def _bwd(cfg: Config, res, cts: Out):
    saved, grads, dxs = res
    acc = cfg.spec.accum_dtype
    if grads is not None:
        dx, dw, db = (_scaled(x, cts.total, acc) for x in grads)
        # The in-forward plans always compute dx.
        ops_ct = Operands(cast(jax.Array, dx), dw, db, None, None, None, None, None, None)
        return ops_ct, None
    ops, coefs, rows = saved
    acc = cfg.spec.accum_dtype
    g = (cts.loss + cts.total).astype(acc)
    g_entropy = None if cts.entropy is None else cts.entropy.astype(acc)
    ctx = _context(cfg, ops, coefs, g)
    row = _row_values(ctx, rows, g, g_entropy)
    dth = None
    if dxs is not None:  # the rows plan: dx from the forward, dw block by block now
        units = (g, jnp.zeros_like(g) if g_entropy is None else g_entropy)
        dx = sum(dx_k.astype(acc) * u[:, None] for dx_k, u in zip(dxs, units, strict=False))
        dx = cast(jax.Array, dx).astype(ops.x.dtype)
        grad_ctx = ctx._replace(cfg=cfg._replace(blocks=cfg.grad_blocks or cfg.blocks))
        _, dw, db = _vocab_outer(grad_ctx, row, _weight_psum_axes(ctx, g), want_dx=False)
    elif ops.w is None:
        n, v = ops.x.shape
        raw, teacher, _ = _tile(ctx, _pinned(ops), 0, n, 0, v)
        dx, dth = _tile_grads(ctx, raw, teacher, row, 0, n, 0, v)
        dw = db = None
    else:
        dx, dw, db = _linear_grads(ctx, row, g)
    cts_ops = Operands(
        match_cotangent(cast(jax.Array, dx), ops.x),  # dx is always computed
        match_cotangent(dw, ops.w),
        match_cotangent(db, ops.b),
        match_cotangent(dth, ops.th) if dth is not None else None,
        None,
        None,
        None,
        None,
        None,
    )
    return cts_ops, None


blockwise.defvjp(_fwd, _bwd)
_ROW_FUNCTIONS = RowFunctions(_tile_stats, _tile_grads, _rows_from_stats, _row_values)


# ------------------------------------------------------------------------------ choices
def _floor_pow2(x: int) -> int:
    return 1 << (max(int(x), 1).bit_length() - 1)


def tile_budget(axis_size: int = 1, backend: str | None = None) -> int:
    if (backend or jax.default_backend()) != "cpu":
        return _ACCEL_BUDGETS[0]
    return max(_MIN_ELEMENTS, _BLOCK_ELEMENTS // max(axis_size, 1))


def check_block(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int or None (automatic); got {value!r}.")
    return int(value)


def choose_blocks(n, d, v, token_block_size, vocab_block_size, axis_size=1, backend=None):
    """Power-of-two tile sizes from the shapes and an element budget (larger on accelerators,
    split over the devices of a vocabulary axis on CPU)."""
    vocab = check_block(vocab_block_size, "vocab_block_size")
    tokens = check_block(token_block_size, "token_block_size")
    backend = backend or jax.default_backend()
    if backend == "cpu":
        tile = weight_slice = hidden_slice = tile_budget(axis_size, backend)
    else:
        tile, weight_slice, hidden_slice = _ACCEL_BUDGETS
    d = max(d, 1)
    if vocab is None:
        # At least 128 classes per tile for efficient matmuls; on CPU the floor shrinks with
        # the vocabulary axis as the budget does.
        floor = max(16, 128 // max(axis_size, 1)) if backend == "cpu" else 128
        vocab = min(v, max(floor, _floor_pow2(weight_slice // d)))
    if tokens is None:
        tokens = min(n, max(8, _floor_pow2(min(tile // max(vocab, 1), hidden_slice // d))))
    return Blocks(max(1, min(tokens, max(n, 1))), max(1, min(vocab, max(v, 1))))


def check_backward(backward) -> str:
    if not isinstance(backward, str) or backward not in BACKWARDS:
        valid = ", ".join(repr(b) for b in BACKWARDS)
        raise ValueError(f"Unknown `backward`={backward!r}; expected one of {valid}.")
    return backward


def choose_plan(
    backward, reduction, n, v, blocks, token_block_size, dtypes, acc, axis, rows=1, backend=None
):
    """The gradient plan on CPU: ``"in_forward"`` when asked or worth it, else the backward
    choice (row plans for ``"rows"`` and ``"fast"``).

    ``"auto"`` takes ``"in_forward"`` for a scalar reduction on one device with inputs in
    ``acc`` (the weight-gradient buffer is then the gradient itself), when a ``[Tb, rows * V]``
    row buffer fits with a large enough token block; half-precision inputs get two passes
    (the one-pass float32 ``[N, D]`` accumulator would double the hidden gradient)."""
    backward = check_backward(backward)
    if backward in ("in_forward", "fast"):
        _check_in_forward(backward, reduction, axis)
    if backward in ROW_PLANS:
        return _in_forward_blocks(n, v * rows, blocks, token_block_size), backward
    if backward != "auto":
        return blocks, backward
    if any(jnp.dtype(t).itemsize < jnp.dtype(acc).itemsize for t in dtypes):
        return blocks, "two_pass"
    if reduction != "none" and axis is None and (backend or jax.default_backend()) == "cpu":
        row_blocks = _in_forward_blocks(n, v * rows, blocks, token_block_size)
        tokens = row_blocks.tokens
        if tokens >= min(n, _ROW_MIN_TOKENS) and tokens * v * rows <= _ROW_ELEMENTS:
            return row_blocks, "in_forward"
    return blocks, "auto"


def _check_in_forward(backward, reduction, axis):
    if backward == "in_forward" and (reduction == "none" or axis is not None):
        raise ValueError(
            "`backward`='in_forward' needs a scalar `reduction` ('sum', 'mean' or "
            "'batchmean') on a single device; use 'rows', 'one_pass' or 'two_pass'."
        )


def _in_forward_blocks(n, width, blocks, token_block_size):
    if token_block_size is not None:
        return blocks
    return blocks._replace(
        tokens=max(1, min(n, _floor_pow2(max(_ROW_ELEMENTS // max(width, 1), 1))))
    )


class Shape(NamedTuple):
    """What the plan choice reads of a head: sizes, dtypes and how the loss is reduced."""

    n: int
    d: int  # the largest hidden size (student or teacher)
    v: int  # the vocabulary slice on one device
    rows: int  # logits rows per token: 1, or 2 with a teacher
    x_dtype: Any
    w_dtype: Any
    acc: Any
    scalar: bool  # a scalar reduction: one cotangent for every row


def configure(
    spec: LossSpec,
    shape: Shape,
    *,
    token_block_size,
    vocab_block_size,
    backward,
    axis,
    axis_size,
    padded,
) -> dict[str, Config]:
    """The plan and tiles for each platform the computation may be lowered for."""
    backward = check_backward(backward)
    scalar_ok = shape.scalar and axis is None
    if backward == "in_forward":
        _check_in_forward(backward, "mean" if shape.scalar else "none", axis)
    sizes = (shape.n, shape.d, shape.v, token_block_size, vocab_block_size, axis_size)
    blocks = choose_blocks(*sizes, backend="cpu")
    reduction = "mean" if shape.scalar else "none"
    dtypes = (shape.x_dtype, shape.w_dtype)
    row_blocks, plan = choose_plan(
        _cpu_backward(backward, scalar_ok),
        reduction,
        shape.n,
        shape.v,
        blocks,
        token_block_size,
        dtypes,
        shape.acc,
        axis,
        shape.rows,
        backend="cpu",
    )
    grad_blocks = blocks if plan == "rows" else None
    cpu = Config(spec, row_blocks, plan, axis, padded, "cpu", grad_blocks=grad_blocks)
    accel_blocks = choose_blocks(*sizes, backend="accelerator")
    base = Config(spec, accel_blocks, backward, axis, padded, "accelerator")
    accelerator = _accelerator_config(base, shape, token_block_size, vocab_block_size)
    # GPUs and TPUs share one plan; the Pallas row kernel is chosen inside it (kernel "auto").
    return {"cpu": cpu, "gpu": accelerator, "tpu": accelerator}


def _cpu_backward(backward, scalar_ok):
    """ "fast" keeps the weight gradient in the forward only for one cotangent for all rows."""
    return "rows" if backward == "fast" and not scalar_ok else backward


def _accelerator_config(base: Config, shape: Shape, token_block_size, vocab_block_size):
    """GPU and TPU: the row plans with chunks and blocks sized to the memory budget.

    ``"auto"`` takes the ``"rows"`` plan: 4 GEMM passes, the hidden gradient of each chunk in
    the forward and the weight gradient in float32, block by block, in the backward."""
    spec, backward = base.spec, base.plan
    scalar_ok = shape.scalar and base.axis is None
    plan = {"auto": "rows", "fast": "fast" if scalar_ok else "rows"}.get(backward, backward)
    if plan not in ROW_PLANS:
        return base
    budget = accelerator_budget(shape)
    tokens = check_block(token_block_size, "token_block_size") or _row_chunk(shape, plan, budget)
    vocab = check_block(vocab_block_size, "vocab_block_size") or shape.v
    blocks = Blocks(max(1, min(tokens, shape.n)), max(1, min(vocab, shape.v)))
    # The Pallas row kernel where the computation is lowered for a CUDA GPU (see call).
    kernel = "auto" if _kernel_lowers(spec) else "xla"
    grad = (
        _grad_blocks(shape, budget, token_block_size, vocab_block_size) if plan == "rows" else None
    )
    return base._replace(blocks=blocks, plan=plan, kernel=kernel, grad_blocks=grad)


def accelerator_budget(shape: Shape) -> int:
    """Bytes the row plans may keep on an accelerator: a share of the naive head's [N, V]
    logits (in the weight's dtype and in float32; a teacher's as well would be counted
    twice), and at least a floor."""
    per_logit = jnp.dtype(shape.w_dtype).itemsize + 4
    return max(_ACCEL_FLOOR_BYTES, int(_ACCEL_SHARE * shape.n * shape.v * per_logit))


def _row_chunk(shape: Shape, plan: str, budget: int) -> int:
    """Tokens per chunk: the most whose full logits rows fit the budget."""
    acc, w_item = jnp.dtype(shape.acc).itemsize, jnp.dtype(shape.w_dtype).itemsize
    compute = jnp.dtype(jnp.result_type(shape.x_dtype, shape.w_dtype)).itemsize
    if plan == "fast":  # the logits in the weight's dtype, overwritten by dz
        per_token = shape.v * shape.rows * w_item
    else:  # float32 logits (a teacher adds its own and half more), dz in the GEMMs' dtype
        per_token = shape.v * (shape.rows * acc + compute + (shape.rows - 1) * acc // 2)
    per_token += shape.d * (acc + 2 * compute)  # the chunk's hidden rows and dx
    chunk = budget // max(per_token, 1)
    return max(_CHUNK_MULTIPLE, chunk // _CHUNK_MULTIPLE * _CHUNK_MULTIPLE)


def _grad_blocks(shape: Shape, budget: int, token_block_size, vocab_block_size) -> Blocks:
    """The weight-gradient pass of the ``rows`` plan: vocabulary blocks outside, each finished
    in float32 over token blocks (all N tokens at once when they fit)."""
    acc, w_item = jnp.dtype(shape.acc).itemsize, jnp.dtype(shape.w_dtype).itemsize
    compute = jnp.dtype(jnp.result_type(shape.x_dtype, shape.w_dtype)).itemsize
    tokens = check_block(token_block_size, "token_block_size") or shape.n
    while True:
        per_class = tokens * (shape.rows * acc + compute + (shape.rows - 1) * acc // 2)
        per_class += shape.d * shape.rows * (w_item + acc)
        vocab = budget // max(per_class, 1) // 128 * 128
        if vocab >= 512 or tokens <= 1024 or token_block_size is not None:
            break
        tokens = -(-tokens // 2)
    vocab = check_block(vocab_block_size, "vocab_block_size") or max(128, vocab)
    return Blocks(max(1, min(tokens, shape.n)), max(1, min(vocab, shape.v)))


def _kernel_lowers(spec: LossSpec) -> bool:
    """The Pallas row kernel lowers for Triton in float32 with every option but label
    smoothing (whose exact branch is a variadic reduction); the rest run the same formulas in
    XLA."""
    return not spec.smoothing and jnp.dtype(spec.accum_dtype) == jnp.dtype(jnp.float32)


def planned_blocks(n, d, v, dtype, backward, platform="gpu", reduction="mean") -> Blocks:
    """The token chunk (and vocabulary block) of a cross-entropy head's plan on a platform."""
    from ._loss_spec import make_spec

    dt = jnp.dtype(dtype)
    acc = jnp.promote_types(dt, jnp.float32)
    spec = make_spec("cross_entropy", v, acc)[0]
    shape = Shape(n, d, v, 1, dt, dt, acc, reduction != "none")
    kw = dict(token_block_size=None, vocab_block_size=None, axis=None, axis_size=1)
    return configure(spec, shape, backward=backward, padded=False, **kw)[platform].blocks


def call(cfgs: dict[str, Config], ops: Operands, coefs: Coefficients) -> Out:
    """:func:`blockwise` with the config of the platform the computation is lowered for.

    One distinct config is called directly; otherwise ``lax.platform_dependent`` traces one
    branch per distinct config and the lowering keeps the target platform's alone. The call is
    one ``jax.jit`` program: an eager ``jax.grad`` of a head compiles its forward and backward
    passes once each instead of running (and compiling) them op by op."""
    planned = _PLANNED_AS[-1] if _PLANNED_AS else None
    return _call_program(tuple(cfgs.items()), planned, ops, coefs)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _call_program(cfgs: tuple, planned, ops: Operands, coefs: Coefficients) -> Out:
    return _call(dict(cfgs), planned, ops, coefs)


def _call(cfgs: dict[str, Config], planned, ops: Operands, coefs: Coefficients) -> Out:
    if planned is not None:
        platform, kernel = planned
        cfg = cfgs[platform]
        if kernel is not None and cfg.plan in ROW_PLANS:
            cfg = cfg._replace(kernel=kernel)
        return blockwise(cfg, ops, coefs)
    rows = 1 if ops.th is None else 2
    if ops.x.shape[0] * _vocab_size_of(cfgs["cpu"], ops) * rows <= _SHARED_PLAN_ELEMENTS:
        # Less work than one CPU tile: every platform runs the CPU's plan (one branch to trace).
        return blockwise(cfgs["cpu"], ops, coefs)
    distinct: dict[Config, Callable] = {}
    branches = {}
    for platform, cfg in cfgs.items():
        fn = distinct.setdefault(cfg, functools.partial(blockwise, cfg))
        for name in _LOWERING_NAMES[platform]:
            branches[name] = fn
    if len(distinct) == 1:
        return next(iter(distinct.values()))(ops, coefs)
    return lax.platform_dependent(ops, coefs, default=branches["cpu"], **branches)


def _vocab_size_of(cfg: Config, ops: Operands) -> int:
    if ops.w is None:
        return ops.x.shape[1]
    return ops.w.shape[_vocab_axis(cfg.spec)]


_LOWERING_NAMES = {"cpu": ("cpu",), "gpu": ("cuda", "rocm"), "tpu": ("tpu",)}
_PLANNED_AS: list[tuple[str, str | None]] = []


@contextlib.contextmanager
def planned_as(platform: str, kernel: str | None = None):
    """Within the block, heads run the plan chosen for ``platform`` on whatever backend runs
    them, with the Pallas row kernel as ``kernel`` (``"interpret"`` on CPU) where that plan
    takes it. For tests and benchmarks; takes effect at trace time (and keys the losses'
    cached programs, so none traced outside the block is reused inside it)."""
    _PLANNED_AS.append((platform, kernel))
    try:
        with trace_context(("planned_as", platform, kernel)):
            yield
    finally:
        _PLANNED_AS.pop()


def reduce_rows(out: Out, reduction: str, lead, data_axis=None) -> jax.Array:
    """``"none"`` rows, or the ``"sum"``, ``"mean"`` (over counted rows, weighted) or
    ``"batchmean"`` (over the first dimension of the rows' shape) of them, exact across
    ``data_axis`` when the rows are split over it."""
    if reduction == "none":
        return out.loss.reshape(lead)
    total = out.total
    if data_axis is not None:
        total = lax.psum(total, data_axis)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        first = lead[0] if lead else 1
        if data_axis is not None:
            first = first * lax.axis_size(data_axis)
        return total / max(first, 1)
    count = lax.stop_gradient(jnp.sum(out.weight))
    if data_axis is not None:
        count = lax.psum(count, data_axis)
    return jnp.where(count != 0, total / jnp.where(count != 0, count, 1.0), 0.0)


_F = TypeVar("_F", bound=Callable[..., Any])


def reraise_jvp(name: str) -> Callable[[_F], _F]:
    """Turns JAX's terse custom_vjp forward-mode error into one that names ``name``; the
    decorated function keeps its signature for the type checker."""

    def decorator(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except TypeError as err:
                if "forward-mode" not in str(err):
                    raise
                raise TypeError(
                    f"`{name}` does not support forward-mode differentiation (jax.jvp, "
                    "jax.linearize, jax.jacfwd, jax.hessian): it is a jax.custom_vjp function so "
                    "that the logits are never stored. Use reverse mode (jax.grad, "
                    "jax.value_and_grad, jax.vjp, jax.jacrev) instead."
                ) from err

        return cast(_F, wrapper)

    return decorator
