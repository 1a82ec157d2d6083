"""The blockwise driver: one loop, one forward sweep, the backward sweeps, one custom_vjp.

Every fused and vocabulary-parallel loss runs :func:`blockwise`. Its inputs are either a linear
head (hidden states ``x`` ``[N, D]`` and a weight slice ``w``, ``[D, Vs]`` or ``[Vs, D]`` by
``spec.layout``, with an optional bias ``b``) or, when ``w`` is None, logits ``x`` ``[N, Vs]``
taken as one tile. The divergences add a teacher (``th``, ``tw``, or teacher logits ``th``).
With ``axis`` (a mesh axis name) the vocabulary slice is one device's part of a vocabulary
split over that axis inside ``jax.shard_map``: the statistics are all-reduced across it and the
hidden-state gradient is summed over it. That is the vocabulary-parallel loss.

Gradient plans (``Config.plan``): ``"in_forward"`` computes the gradient of the sum of the rows
while each token block's full logits row is in hand (3 matmuls; a ``[Tb, V]`` row buffer;
single device only). The others recompute tiles in the backward pass: ``"tokens_outer"`` and
``"vocab_outer"`` visit each tile once and keep one full-size accumulator (``[D, Vs]`` for the
weight gradient, free when the weight is in the accumulation dtype, or ``[N, D]`` for the hidden
gradient); ``"two_pass"`` visits every tile twice and keeps only tile-sized accumulators.
``"auto"`` picks the smaller one-pass accumulator, or two passes when it would outgrow a tile.

Every loop carries the large inputs it slices through an optimization barrier: otherwise XLA's
CPU backend hoists a convert of a bfloat16 weight out of the loop, a full float32 copy of it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar, cast, overload

import jax
import jax.numpy as jnp
from jax import lax

from . import (
    _pairs,  # noqa: F401  (declares the built-in divergences the heads run)
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
BACKWARDS = ("auto", "one_pass", "two_pass", "in_forward")


class Blocks(NamedTuple):
    tokens: int
    vocab: int


class Config(NamedTuple):
    spec: LossSpec
    blocks: Blocks
    plan: str  # "in_forward", or "auto" / "one_pass" / "two_pass" resolved in the backward
    axis: AxisName | None
    padded: bool  # the slices hold padding classes beyond spec.vocab_size


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
def for_blocks(body, carry, size: int, block: int, pinned: tuple = ()) -> Any:
    """``carry = body(carry, start, length, pinned)`` over [0, size) in blocks of ``block``.

    Full blocks run in a ``lax.scan``; a ragged remainder runs once more with its static
    length, so nothing is padded. ``pinned`` travels through the carry behind a barrier.
    """
    n_full, rem = divmod(size, block)
    if n_full == 1:
        carry = body(carry, 0, block, pinned)
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
    return None if x is None else lax.dynamic_slice_in_dim(x, start, length, axis=0)


def _set_rows(acc, start, update):
    return lax.dynamic_update_slice_in_dim(acc, update.astype(acc.dtype), start, 0)


def _vocab_axis(spec: LossSpec) -> int:
    return 1 if spec.layout == "dv" else 0


@overload
def _vslice(x: None, start, length, axis) -> None: ...
@overload
def _vslice(x: jax.Array, start, length, axis) -> jax.Array: ...
def _vslice(x, start, length, axis):
    return None if x is None else lax.dynamic_slice_in_dim(x, start, length, axis=axis)


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
    """buf[start:start + len, along axis] += update."""
    old = _vslice(buf, start, update.shape[axis], axis)
    return lax.dynamic_update_slice_in_dim(buf, old + update.astype(buf.dtype), start, axis)


def _grad_tile(ctx, pinned, row, t0, tl, v0, vl, dw, db, col, tile=None):
    """One tile's (dx part, dw, db): its parts are added to dw and db (if given) at ``col``."""
    ops, acc, ax = ctx.ops, ctx.acc, _vocab_axis(ctx.spec)
    raw, teacher, _ = tile if tile is not None else _tile(ctx, pinned, t0, tl, v0, vl)
    dz, _ = _tile_grads(ctx, raw, teacher, row, 0 if tile is not None else t0, tl, v0, vl)
    dz_c = dz.astype(jnp.result_type(ops.x.dtype, ops.w.dtype))
    x_blk = _rows(pinned[0], t0, tl)
    if dw is not None:
        dw = _add_at(dw, col, _dw_part(x_blk, dz_c, ax, acc), ax)
    if db is not None:
        db = _add_at(db, col, jnp.sum(dz, axis=0), 0)
    return _dx_part(dz_c, _vslice(pinned[1], v0, vl, ax), ax, acc), dw, db


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


def _tile(ctx: _Ctx, pinned, t0, tl, v0, vl):
    """Masked raw logits of one tile (``-inf`` on excluded classes) and its weight slice.

    Returns ``(raw, teacher, w_blk)``; ``teacher`` is None for the cross-entropy.
    """
    spec, acc = ctx.spec, ctx.acc
    x, w, th, tw = pinned
    ops = ctx.ops
    teacher = w_blk = None
    if w is None:
        raw = _vslice(_rows(x, t0, tl), v0, vl, 1).astype(acc)
        if spec.divergence:
            teacher = _vslice(_rows(th, t0, tl), v0, vl, 1).astype(acc)
    else:
        raw, w_blk = _head_logits(_rows(x, t0, tl), w, v0, vl, spec.layout, acc)
        if ops.b is not None:
            raw = raw + _vslice(ops.b, v0, vl, 0).astype(acc)
        if spec.divergence:
            teacher = _head_logits(_rows(th, t0, tl), tw, v0, vl, spec.layout, acc)[0]
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


def _tile_stats(ctx: _Ctx, raw, teacher, t0, tl, v0, vl):
    tile = _tile_input(ctx, raw, teacher, t0, tl, v0, vl)
    return ctx.spec.loss.tile_stats(tile, ctx.spec, ctx.coefs)


def _pinned(ops: Operands):
    return (ops.x, ops.w, ops.th, ops.tw)


def _vocab_size(ctx: _Ctx) -> int:
    ops = ctx.ops
    return ops.x.shape[1] if ops.w is None else ops.w.shape[_vocab_axis(ctx.spec)]


def _sweep(ctx: _Ctx, init, tile_fn):
    """Per-row statistics over every tile: token blocks outside, vocabulary blocks inside."""
    n, blocks = ctx.ops.x.shape[0], ctx.cfg.blocks

    def token_body(out, t0, tl, pinned):
        def vocab_body(stats, v0, vl, pinned):
            raw, teacher, _ = _tile(ctx, pinned, t0, tl, v0, vl)
            return _tiles.merge(stats, tile_fn(raw, teacher, t0, tl, v0, vl))

        stats = for_blocks(vocab_body, init(tl), _vocab_size(ctx), blocks.vocab, pinned)
        return jax.tree.map(lambda o, s: _set_rows(o, t0, s), out, stats)

    return for_blocks(token_body, init(n), n, blocks.tokens, _pinned(ctx.ops))


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

    def vocab_body(carry, v0, vl, pinned):
        dx, dw, db = carry

        def token_body(inner, t0, tl, pinned):
            dx, dw_blk, db_blk = inner
            # The block buffers hold columns [v0, v0 + vl) from their own column 0.
            part, dw_blk, db_blk = _grad_tile(ctx, pinned, row, t0, tl, v0, vl, dw_blk, db_blk, 0)
            if dx is not None:
                dx = _add_at(dx, t0, part, 0)
            return dx, dw_blk, db_blk

        shape = (d, vl) if ax == 1 else (vl, d)
        db0 = ctx.zeros((vl,), acc) if db is not None else None
        dx, dw_blk, db_blk = for_blocks(
            token_body, (dx, ctx.zeros(shape, acc), db0), n, blocks.tokens, pinned
        )
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
    dx, dw, db = for_blocks(vocab_body, init, _vocab_size(ctx), blocks.vocab, _pinned(ops))
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

    def token_body(carry, t0, tl, pinned):
        dx, dw, db = carry

        def vocab_body(inner, v0, vl, pinned):
            dx_blk, dw, db = inner
            part, dw, db = _grad_tile(ctx, pinned, row, t0, tl, v0, vl, dw, db, v0)
            return dx_blk + part, dw, db

        dx_blk = ctx.zeros((tl, d), acc)
        dx_blk, dw, db = for_blocks(
            vocab_body, (dx_blk, dw, db), _vocab_size(ctx), blocks.vocab, pinned
        )
        if ctx.cfg.axis is not None:
            dx_blk = lax.psum(dx_blk, ctx.cfg.axis)
        return _set_rows(dx, t0, dx_blk), dw, db

    init = (
        ctx.zeros((n, d), ops.x.dtype, ops.x, ops.labels, g),
        ctx.zeros(ops.w.shape, acc) if want_dw else None,
        ctx.zeros(ops.b.shape, acc) if (want_dw and ops.b is not None) else None,
    )
    dx, dw, db = for_blocks(token_body, init, n, blocks.tokens, _pinned(ops))
    if psum_axes and dw is not None:
        dw = lax.psum(dw, psum_axes)
        db = None if db is None else lax.psum(db, psum_axes)
    return dx, dw, db


def resolve_plan(plan: str, n, d, v, weight_dtype, acc, weight_psum: bool, axis_size: int):
    """The backward to run: ``"two_pass"``, ``"tokens_outer"`` or ``"vocab_outer"``.

    One pass keeps the smaller full-size accumulator: ``[D, Vs]`` (free when the weight is in
    ``acc`` and needs no sum over a data axis) or ``[N, D]``. ``"auto"`` takes two passes when
    that accumulator would be larger than a tile's element budget.
    """
    free = jnp.dtype(weight_dtype) == jnp.dtype(acc) and not weight_psum
    sizes = {"tokens_outer": 0 if free else d * v, "vocab_outer": n * d}
    order = min(sizes, key=lambda k: (sizes[k], k != "tokens_outer"))
    if plan == "two_pass" or (plan == "auto" and sizes[order] > tile_budget(axis_size)):
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
    )
    if plan == "vocab_outer":
        return _vocab_outer(ctx, row, psum_axes)
    if plan == "tokens_outer":
        return _tokens_outer(ctx, row, psum_axes, g)
    _, dw, db = _vocab_outer(ctx, row, psum_axes, want_dx=False)
    dx, _, _ = _tokens_outer(ctx, row, psum_axes, g, want_dw=False)
    return dx, dw, db


def _in_forward(ctx: _Ctx):
    """Statistics and the gradient of the sum of the rows in one sweep (single device).

    Token blocks outside; each block's logits row ``[Tb, V]`` (and the teacher's) is computed
    once in vocabulary tiles, kept, and reused for the gradient: three matmuls in all.
    """
    spec, acc, ops = ctx.spec, ctx.acc, ctx.ops
    assert ops.w is not None  # the linear-head paths
    n, d = ops.x.shape
    v = _vocab_size(ctx)
    blocks = ctx.cfg.blocks

    def token_body(carry, t0, tl, pinned):
        out, dx, dw, db = carry

        def stats_body(inner, v0, vl, pinned):
            stats, rows = inner
            raw, teacher, _ = _tile(ctx, pinned, t0, tl, v0, vl)
            stats = _tiles.merge(stats, _tile_stats(ctx, raw, teacher, t0, tl, v0, vl))
            rows = tuple(
                lax.dynamic_update_slice_in_dim(r, x, v0, 1)
                for r, x in zip(rows, (raw,) if teacher is None else (raw, teacher), strict=True)
            )
            return stats, rows

        buffers = (ctx.zeros((tl, v), acc),) * (2 if spec.divergence else 1)
        stats, buffers = for_blocks(
            stats_body,
            (_tiles.empty(spec, tl, acc, ctx.zeros), buffers),
            v,
            blocks.vocab,
            pinned,
        )
        sub = ctx._replace(
            ops=ops._replace(labels=_rows(ops.labels, t0, tl), row_mask=_rows(ops.row_mask, t0, tl))
        )

        def second_pass(norms):
            return _second_pass_tile(ctx, buffers[0], buffers[1], norms)

        rows, stats = _rows_from_stats(sub, stats, second_pass)
        row = _row_values(sub, rows, jnp.ones((tl,), acc))

        def grad_body(inner, v0, vl, pinned):
            dx_blk, dw, db = inner
            tile = tuple(None if b is None else _vslice(b, v0, vl, 1) for b in buffers)
            tile = (tile[0], tile[1] if spec.divergence else None, None)
            part, dw, db = _grad_tile(sub, pinned, row, t0, tl, v0, vl, dw, db, v0, tile)
            return dx_blk + part, dw, db

        dx_blk, dw, db = for_blocks(
            grad_body, (ctx.zeros((tl, d), acc), dw, db), v, blocks.vocab, pinned
        )
        out = jax.tree.map(
            lambda o, s: _set_rows(o, t0, s), out, (rows.loss, rows.lse, rows.weight, stats.argmax)
        )
        return out, _set_rows(dx, t0, dx_blk), dw, db

    k = 2 if spec.divergence else 1
    z = jnp.zeros((n,), acc)
    out0 = (z, (z,) * k, z, None if spec.divergence else jnp.zeros((n,), jnp.int32))
    init = (
        out0,
        jnp.zeros((n, d), ops.x.dtype),
        jnp.zeros(ops.w.shape, acc),
        None if ops.b is None else jnp.zeros(ops.b.shape, acc),
    )
    (loss, lse, weight, argmax), dx, dw, db = for_blocks(
        token_body, init, n, blocks.tokens, _pinned(ops)
    )
    return Out(loss, jnp.sum(loss), lse, argmax, weight), (dx, dw, db)


# ------------------------------------------------------------------------------ custom_vjp
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def blockwise(cfg: Config, ops: Operands, coefs: Coefficients) -> Out:
    """Per-row loss over the tiles of ``ops`` (see the module docstring); reverse mode only."""
    return _fwd(cfg._replace(plan="auto"), ops, coefs)[0]


def _fwd(cfg: Config, ops: Operands, coefs: Coefficients):
    ctx = _context(cfg, ops, coefs)
    if cfg.plan == "in_forward":
        out, grads = _in_forward(ctx)
        return out, (None, grads)
    rows, stats = _forward(ctx)
    out = Out(rows.loss, jnp.sum(rows.loss), rows.lse, stats.argmax, rows.weight, rows.entropy)
    return out, ((ops, coefs, rows), None)


def _bwd(cfg: Config, res, cts: Out):
    saved, grads = res
    if grads is not None:
        g = cts.total
        dx, dw, db = (None if x is None else (x * g.astype(x.dtype)).astype(x.dtype) for x in grads)
        # The in-forward plan always computes dx.
        ops_ct = Operands(cast(jax.Array, dx), dw, db, None, None, None, None, None, None)
        return ops_ct, None
    ops, coefs, rows = saved
    acc = cfg.spec.accum_dtype
    g = (cts.loss + cts.total).astype(acc)
    g_entropy = None if cts.entropy is None else cts.entropy.astype(acc)
    ctx = _context(cfg, ops, coefs, g)
    row = _row_values(ctx, rows, g, g_entropy)
    dth = None
    if ops.w is None:
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


def choose_plan(backward, reduction, n, v, blocks, token_block_size, dtypes, acc, axis, rows=1):
    """The gradient plan: ``"in_forward"`` when asked or worth it, else the backward choice.

    ``"auto"`` takes ``"in_forward"`` only on CPU, for a scalar reduction on one device with
    inputs in ``acc`` (the weight-gradient buffer is then the gradient itself), when a
    ``[Tb, rows * V]`` row buffer fits with a large enough token block; half-precision inputs
    get two passes (the one-pass float32 ``[N, D]`` accumulator would double the hidden
    gradient)."""
    backward = check_backward(backward)
    if backward == "in_forward":
        if reduction == "none" or axis is not None:
            raise ValueError(
                "`backward`='in_forward' needs a scalar `reduction` ('sum', 'mean' or "
                "'batchmean') on a single device; use 'one_pass' or 'two_pass'."
            )
        return _in_forward_blocks(n, v * rows, blocks, token_block_size), "in_forward"
    if backward != "auto":
        return blocks, backward
    if any(jnp.dtype(t).itemsize < jnp.dtype(acc).itemsize for t in dtypes):
        return blocks, "two_pass"
    if reduction != "none" and axis is None and jax.default_backend() == "cpu":
        row_blocks = _in_forward_blocks(n, v * rows, blocks, token_block_size)
        tokens = row_blocks.tokens
        if tokens >= min(n, _ROW_MIN_TOKENS) and tokens * v * rows <= _ROW_ELEMENTS:
            return row_blocks, "in_forward"
    return blocks, "auto"


def _in_forward_blocks(n, width, blocks, token_block_size):
    if token_block_size is not None:
        return blocks
    return blocks._replace(
        tokens=max(1, min(n, _floor_pow2(max(_ROW_ELEMENTS // max(width, 1), 1))))
    )


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
