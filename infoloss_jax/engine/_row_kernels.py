"""A Pallas kernel over a token chunk's full logits rows: statistics, rows and dz, in place.

The row plans of :mod:`._blockwise` keep a chunk's logits ``[C, V]`` (and the teacher's) in
one buffer. On one device, :func:`row_pass` reads it in one launch: each program owns one
row, merges the tile statistics of its column blocks, turns them into the row's loss terms
and writes them into the full-size per-row outputs, then walks the columns again and writes
the row's ``dz`` over its logits when the buffer has dz's dtype (``input_output_aliases``), so
one ``[C, V]`` buffer is live. The last column block of a row starts at ``V - block`` and
masks the columns an earlier block took (their logits count as excluded, their labels are
moved out of reach, their dz is not written), so no access is ever out of bounds.

No formula is written here: every block and row step is the engine's own (``tile_stats``,
``tile_grads``, ``rows_from_stats`` and ``row_values`` of :mod:`._blockwise`, which call
:mod:`._tiles`), given a context whose labels and class weights are the block's, so the
kernel computes what the XLA path computes. It lowers to Triton for a GPU; ``"interpret"``
runs it anywhere (the tests).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from . import _tiles
from ._loss_spec import Coefficients

ROWS_PER_PROGRAM = 1
COLUMNS_PER_BLOCK = 2048
_NOWHERE = -(2**30)  # a label no block holds
_PRESENT: Any = True  # stands for the weight: the tile functions only ask whether it is None


def _pow2_at_most(n: int, cap: int) -> int:
    return min(cap, 1 << (max(n, 1).bit_length() - 1))


def _zeros(shape, dtype, *_):
    return jnp.zeros(shape, dtype)


def _ds(start, size):
    from jax.experimental import pallas as pl

    return pl.ds(start, size)


def _starts(i, block, size):
    """(nominal start, in-bounds start) of block ``i``: the last block is pulled back."""
    nominal = i * block
    return nominal, jnp.minimum(nominal, size - block)


def _context(ctx, refs, c0, cb, fresh, labels, row_mask=None, nominal=0):
    """The engine context of a block of columns ``[c0, c0 + cb)`` (``fresh`` marks the ones no
    earlier block took; None: a context for the per-row steps). ``refs``: the coefficients,
    the slice's first class, and the class weights if any."""
    coef_ref, offset_ref, *weights_ref = refs
    weights = None
    if fresh is not None:
        if labels is not None:
            labels = jnp.where(labels >= offset_ref[0] + nominal, labels, _NOWHERE)
        if weights_ref:
            weights = jnp.where(fresh, weights_ref[0][_ds(c0, cb)].astype(ctx.acc), 0.0)
    coefs = Coefficients(*(coef_ref[i] for i in range(len(Coefficients._fields))))
    ops = ctx.ops._replace(
        x=None,
        w=_PRESENT,
        b=None,
        th=None,
        tw=None,
        labels=labels,
        class_weights=weights,
        mask=None,
        row_mask=row_mask,
    )
    return ctx._replace(ops=ops, coefs=coefs, offset=offset_ref[0] + c0, zeros=_zeros)


def _load(refs, r0, rb, c0, cb, fresh, acc):
    """The buffers' [rb, cb] block in ``acc``; columns an earlier block took are ``-inf``."""
    return [jnp.where(fresh, r[_ds(r0, rb), _ds(c0, cb)].astype(acc), -jnp.inf) for r in refs]


def _store(ref, r0, rb, c0, cb, value, fresh, interpret):
    """Writes the fresh columns of a block (the others belong to the block before)."""
    index = (_ds(r0, rb), _ds(c0, cb))
    mask = jnp.broadcast_to(fresh, value.shape)
    if interpret:
        ref[index] = jnp.where(mask, value, ref[index])
        return
    from jax.experimental.pallas import triton as pltriton

    pltriton.store(ref.at[index], value, mask=mask)


def _call(kernel, grid, inputs, out_shape, interpret, aliases):
    """``pallas_call`` over ``grid`` with every operand in place (ANY memory space). Inside
    ``jax.shard_map`` every operand and result is typed as varying over the axes any operand
    varies over."""
    from jax.experimental import pallas as pl

    from ._blockwise import vary_like

    inputs = [vary_like(x, *inputs) for x in inputs]
    manual = getattr(jax.typeof(inputs[0]), "manual_axis_type", None)
    out_shape = [jax.ShapeDtypeStruct(o.shape, o.dtype, manual_axis_type=manual) for o in out_shape]
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as pltriton

        params["compiler_params"] = pltriton.CompilerParams(num_warps=4, num_stages=1)
    any_space = pl.BlockSpec(memory_space=pl.ANY)
    # The kernel is traced with 32-bit indices (Triton's argmax takes no other); its values
    # are float32 (see _blockwise._kernel_lowers), so nothing else changes.
    with jax.enable_x64(False):
        return _pallas_call(kernel, grid, inputs, out_shape, interpret, aliases, any_space, params)


def _pallas_call(kernel, grid, inputs, out_shape, interpret, aliases, any_space, params):
    from jax.experimental import pallas as pl

    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=[any_space] * len(inputs),
        out_specs=[any_space] * len(out_shape),
        input_output_aliases=aliases,
        interpret=interpret,
        **params,
    )(*inputs)


def row_pass(ctx, buffers, t0, stats_out, units, dtype, fns, mode="pallas"):
    """One kernel over a chunk's full logits rows on one device: each row's statistics
    (written into the full-size ``stats_out`` at row ``t0 + r``), its loss rows, and its dz
    for each unit cotangent ``(g, g_entropy)`` of ``units``, from one read of each block.

    The first dz is written over ``buffers[0]`` when that has ``dtype``. ``fns`` holds the
    engine's tile and row steps (:class:`._blockwise.RowFunctions`); ``mode``: ``"pallas"``
    (Triton, for a GPU) or ``"interpret"``. Returns the updated statistics and the dz's.
    """
    interpret = mode == "interpret"
    c, v = buffers[0].shape
    rb, cb = _pow2_at_most(c, ROWS_PER_PROGRAM), _pow2_at_most(v, COLUMNS_PER_BLOCK)
    acc, spec, ops = ctx.acc, ctx.spec, ctx.ops
    leaves, treedef = jax.tree.flatten(stats_out)
    k = len(buffers)
    full_rows = [x for x in (ops.labels,) if x is not None]
    if ops.row_mask is not None:
        full_rows.append(ops.row_mask.astype(jnp.int32))
    start = jnp.reshape(jnp.asarray(t0, jnp.int32), (1,))
    coefs = jnp.stack([jnp.asarray(x, acc) for x in ctx.coefs])
    offset = jnp.reshape(jnp.asarray(ctx.offset, jnp.int32), (1,))
    weights = [] if ops.class_weights is None else [ops.class_weights]
    shared = [coefs, offset, *weights]
    inputs = [*buffers, start, *full_rows, *shared, *leaves]
    first_leaf = len(inputs) - len(leaves)
    aliases = {first_leaf + i: i for i in range(len(leaves))}
    if jnp.dtype(buffers[0].dtype) == jnp.dtype(dtype):
        aliases[0] = len(leaves)

    def kernel(*refs):
        buf_refs = refs[:k]
        start_ref = refs[k]
        row_refs = list(refs[k + 1 : k + 1 + len(full_rows)])
        shared_refs = refs[k + 1 + len(full_rows) : first_leaf]
        outs = refs[len(inputs) :]
        stat_refs, dz_refs = outs[: len(leaves)], outs[len(leaves) :]
        from jax.experimental import pallas as pl

        _, r0 = _starts(pl.program_id(0), rb, c)
        rows_at = _ds(start_ref[0] + r0, rb)
        labels = row_refs.pop(0)[rows_at] if ops.labels is not None else None
        row_mask = row_refs.pop(0)[rows_at] != 0 if ops.row_mask is not None else None

        def block(j):
            nominal, c0 = _starts(j, cb, v)
            fresh = (c0 + lax.broadcasted_iota(jnp.int32, (1, cb), 1)) >= nominal
            tile = _load(buf_refs, r0, rb, c0, cb, fresh, acc)
            sub = _context(ctx, shared_refs, c0, cb, fresh[0], labels, nominal=nominal)
            return sub, tile, c0, fresh

        def stats_body(j, stats):
            sub, tile, _, _ = block(j)
            teacher = tile[1] if k > 1 else None
            return _tiles.merge(stats, fns.tile_stats(sub, tile[0], teacher, 0, rb, 0, cb, True))

        n_blocks = -(-v // cb)
        stats = lax.fori_loop(0, n_blocks, stats_body, _tiles.empty(spec, rb, acc, _zeros))
        here = _context(ctx, shared_refs, 0, cb, None, labels, row_mask)

        def second_pass(norms):
            def body(j, terms):
                sub, tile, _, _ = block(j)
                part = spec.loss.tile_terms(
                    _tiles.Tile(tile[0], tile[1], None, None, 0), norms, sub.coefs
                )
                return _tiles.merge(terms, part)

            init = spec.loss.terms_empty(rb, acc, _zeros)
            return lax.fori_loop(0, n_blocks, body, init)

        rows, stats = fns.rows_from_stats(here, stats, second_pass)
        for ref, leaf in zip(stat_refs, jax.tree.leaves(stats), strict=True):
            ref[rows_at] = leaf.astype(ref.dtype)
        values = []
        for unit, unit_entropy in units:
            g = jnp.full((rb,), unit, acc)
            g_entropy = jnp.full((rb,), unit_entropy, acc) if spec.entropy else None
            values.append(fns.row_values(here, rows, g, g_entropy))

        def grads_body(j, carry):
            sub, tile, c0, fresh = block(j)
            teacher = tile[1] if k > 1 else None
            for ref, row in zip(dz_refs, values, strict=True):
                dz, _ = fns.tile_grads(sub, tile[0], teacher, row, 0, rb, 0, cb)
                _store(ref, r0, rb, c0, cb, dz.astype(ref.dtype), fresh, interpret)
            return carry

        lax.fori_loop(0, n_blocks, grads_body, 0)

    out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    out_shape += [jax.ShapeDtypeStruct((c, v), dtype) for _ in units]
    out = _call(kernel, (-(-c // rb),), inputs, out_shape, interpret, aliases)
    return jax.tree.unflatten(treedef, out[: len(leaves)]), out[len(leaves) :]
