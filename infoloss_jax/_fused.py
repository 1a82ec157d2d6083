"""Fused linear losses: cross-entropy and distillation on ``hidden @ weight`` without the logits.

An LLM's loss head computes ``logits = hidden @ weight`` of shape ``[N tokens, V vocab]``. With
``V`` = 128k-256k those logits (and their softmax and gradient) dominate training memory. The
functions here walk over blocks of tokens and of the vocabulary with an online logsumexp inside
``lax.scan``, so that no ``[N, V]`` array ever exists, and use ``jax.custom_vjp`` so that the
backward pass recomputes each logits block instead of storing it. Pure JAX: the same code runs
under ``jit`` on CPU, GPU and TPU.

Internals (``infoloss_jax._sharded`` builds its vocabulary-parallel losses on these)
====================================================================================

Notation: ``h`` is ``[N, D]`` (leading dims already flattened), ``w`` is a vocabulary *slice*
``[D, Vs]`` of the full ``[D, V]`` weight that starts at global class ``vocab_offset``, ``b`` its
bias slice ``[Vs]`` or None. ``spec`` is a hashable :class:`_CESpec` / :class:`_KLSpec` holding
the static options, ``blocks`` a :class:`_Blocks` (token, vocab block sizes). All functions are
pure and work unchanged inside ``shard_map`` on a device's vocabulary slice.

Cross-entropy, forward:

* ``_ce_slice_stats(h, labels, w, b, class_weights, *, vocab_offset, spec, blocks) -> _CEStats``
  Per-token partial statistics over the slice, all ``[N]`` in ``spec.accum_dtype``:
  ``max`` (largest capped logit, -inf if none is finite), ``sumexp`` (sum of exp(z - max)),
  ``target`` (capped logit of the label if the label lies in the slice, else 0),
  ``weighted`` (sum_k c_k z_k over the slice with c = class weights or 1; only when
  ``spec.label_smoothing > 0``, else 0), ``argmax`` (int32, GLOBAL index of the first maximal
  logit). ``labels`` and ``class_weights`` are GLOBAL (``class_weights`` is the full ``[V]``
  vector or None; the function slices it at ``vocab_offset``).
* ``_merge_ce_stats(a, b)`` merges two slices' statistics (associative; a's argmax wins ties).
  Across devices the same merge is: ``M = pmax(max)``; ``sumexp = psum(sumexp * exp(max - M))``
  (guard max = -inf); ``target, weighted = psum(...)``; ``argmax = pmin(where(max == M, argmax,
  big))``.
* ``_ce_loss_from_stats(stats, labels, class_weights, spec) -> (loss [N], lse [N], weight [N],
  valid [N])``: per-token loss from MERGED (global) statistics; ignored rows give 0, labels out
  of range give NaN; ``weight`` is class_weights[label] (1 without class weights) for the mean.

Cross-entropy, backward:

* ``_ce_slice_grads(h, labels, w, b, class_weights, lse, row_scale, *, vocab_offset, spec,
  blocks) -> (dh [N, D] accum dtype, dw [D, Vs] in w.dtype, db [Vs] or None)`` given the GLOBAL
  logsumexp and ``row_scale`` = the per-token cotangent (already zero on ignored rows).
  ``dh`` is this slice's partial sum: psum it over vocabulary shards.
  Order: vocabulary blocks outside, token blocks inside, so every ``[D, Vb]`` block of ``dw`` is
  finished (accumulated in ``accum_dtype`` over all tokens) before it is written once in the
  weight's dtype, and the only full-size accumulator is ``dh`` (``[N, D]``, accum dtype).
* ``_ce_slice_grads_two_pass(...)``, same arguments, returns ``dh`` in ``h.dtype``: no
  full-size accumulator at all. Pass 1 (vocabulary blocks outside) finishes each ``dw`` block as
  above without touching ``dh``; pass 2 (token blocks outside) recomputes the tiles once more
  and finishes each ``[Tb, D]`` block of ``dh`` over the whole slice in a tile-sized
  ``accum_dtype`` buffer. One logits matmul more per tile (5 matmuls for value-and-grad instead
  of 4); used for half-precision inputs, where the one-pass ``[N, D]`` float32 accumulator is
  twice the size of the hidden gradient itself (128 MiB at the Llama-3-8B head). Not usable
  as is under vocabulary sharding: its ``dh`` blocks are rounded before the psum.

Distillation (student ``s = h @ w / T``, teacher ``t = th @ tw / T``):

* ``_kl_slice_stats(h, w, th, tw, *, vocab_offset, spec, blocks) -> _KLStats``: online per-token
  ``s_max, s_sumexp, t_max, t_sumexp`` plus ``fwd`` = sum exp(t - t_max) (t - s) and ``rev`` =
  sum exp(s - s_max) (s - t) (rescaled as the maxima move). Merge with ``_merge_kl_stats``.
* ``_jsd_slice_terms(h, w, th, tw, s_lse, t_lse, *, spec, blocks) -> (p_term, q_term)``: the
  second pass of the Jensen-Shannon divergence given global logsumexps: sum p (log p - log m)
  and sum q (log q - log m); psum both across shards.
* ``_kl_slice_grads(h, w, th, tw, s_lse, t_lse, kl_q, row_scale, *, spec, blocks) -> (dh, dw)``:
  ``kl_q`` is the per-token KL(Q||P) (reverse) or KL(Q||M) (JSD) needed by the gradient,
  ignored for the forward KL.
* ``_kl_slice_grads_two_pass(...)``: the same in two passes with tile-sized accumulators only,
  as ``_ce_slice_grads_two_pass``.
* ``_kl_loss_from_stats(stats, spec, jsd_terms)`` turns merged statistics into the per-token
  divergence, its logsumexps and ``kl_q``.

Three implementations of the cross-entropy gradient exist: ``"recompute"`` (above: the forward
pass only computes statistics, the backward pass recomputes every logits block; 4 matmuls for
value-and-grad, one ``[N, D]`` accumulator), ``"two_pass"`` (the same forward, the two-pass
backward above; 5 matmuls, tile-sized accumulators only) and ``"fused"`` (for scalar
reductions: the custom_vjp forward rule computes the gradient for a unit cotangent while it has
each token block's logits row in hand, as Liger-Kernel does; 3 matmuls, but a ``[Tb, V]`` row
buffer and a ``[D, V]`` accumulator in ``accum_dtype``). ``"auto"`` picks ``"two_pass"``
whenever the hidden states or the weight are narrower than ``accum_dtype`` (half precision);
``"fused"`` only on CPU, for a scalar reduction, float32 inputs (the accumulator is then the
gradient's own buffer) and a row buffer that fits _FUSED_ROW_ELEMENTS (see
:func:`_choose_method`); everywhere else ``"recompute"``. The distillation losses have the same
three methods (``_kl_loss``, ``_kl_loss_two_pass`` and ``_kl_fused``; the fused one keeps a
student and a teacher row, 4 matmuls like the naive path instead of 6, or 8 for the JSD's
second pass; the two-pass backward adds one student and one teacher matmul per tile).

Every loop carries the large inputs it slices (``pinned`` in :func:`_for_blocks`) through an
optimization barrier. Without it XLA's CPU backend hoists a convert of a bfloat16 weight out of
the loop, a full float32 copy of W (2 GiB for the Llama-3-8B head). Vocabulary-parallel code
that loops over tiles of bf16 weights needs the same guard.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from ._cross_entropy import check_label_smoothing, check_z_loss
from ._reductions import reduce_loss
from ._validation import (
    as_float_array,
    as_integer_array,
    check_beta,
    check_positive,
    check_reduction,
    check_temperature,
    describe,
)

# A [token block, vocab block] tile, or a [D, vocab block] slice of the weight, holds at most this
# many elements when block sizes are chosen automatically (8 MiB in float32).
_BLOCK_ELEMENTS = 2**21
# On GPUs and TPUs each loop step costs kernel launches, so tiles are larger there: [Tb, Vb] tiles
# of at most 2**21 elements, [D, Vb] weight slices of at most 2**22 and [Tb, D] hidden slices of at
# most 2**23 (2048 x 1024 for the Llama-3-8B head). Measured on an H200 for that head in bf16,
# value_and_grad with the one-pass backward: the CPU sizes (512 x 512) ran at 6.6x the
# three-matmul floor, 2048 x 4096 at 1.7x but with 4.3% of naive's temp memory, above the 2% goal.
# A CPU compile at 2048 x 1024 gives 0.097 GiB for bf16 (two-pass backward, 1.7% of the H200's
# 5.87 GiB naive head) and 1.6% of naive for float32; 2048 x 4096 gave 0.248 GiB and 4.1%.
# See benchmarks/README.md.
_ACCEL_TILE_ELEMENTS = 2**21
_ACCEL_WEIGHT_SLICE_ELEMENTS = 2**22
_ACCEL_HIDDEN_SLICE_ELEMENTS = 2**23
# "auto" computes the gradient in the forward pass when the [Tb, V] row buffer it needs, with a
# token block of at least _FUSED_MIN_TOKENS, fits in this many elements (32 MiB in float32).
_FUSED_ROW_ELEMENTS = 2**23
_FUSED_MIN_TOKENS = 128
# Gradient methods (see the module comment); "auto" picks one from the dtypes and shapes.
_METHODS = ("auto", "recompute", "two_pass", "fused")


# ------------------------------------------------------------------------------------------------
# Static configuration
# ------------------------------------------------------------------------------------------------


class _Blocks(NamedTuple):
    tokens: int
    vocab: int


class _CESpec(NamedTuple):
    vocab_size: int  # global V
    label_smoothing: float
    z_loss: float
    softcap: float | None
    ignore_index: int | None
    accum_dtype: np.dtype


class _KLSpec(NamedTuple):
    kind: str  # "forward", "reverse" or "jsd"
    beta: float
    temperature: float
    accum_dtype: np.dtype


class _CEStats(NamedTuple):
    max: jax.Array
    sumexp: jax.Array
    target: jax.Array
    weighted: jax.Array
    argmax: jax.Array


class _KLStats(NamedTuple):
    s_max: jax.Array
    s_sumexp: jax.Array
    t_max: jax.Array
    t_sumexp: jax.Array
    fwd: jax.Array
    rev: jax.Array


class LinearCrossEntropyAux(NamedTuple):
    """Per-token extras of :func:`linear_softmax_cross_entropy` (shape of ``labels``).

    Attributes:
      logsumexp: log-partition of the (soft-capped) logits.
      z_loss: the z-loss term ``z_loss * logsumexp**2`` (0 on ignored tokens).
      correct: whether the argmax of the logits equals the label (False on ignored tokens).
    """

    logsumexp: jax.Array
    z_loss: jax.Array
    correct: jax.Array


# ------------------------------------------------------------------------------------------------
# Block loops
# ------------------------------------------------------------------------------------------------


def _for_blocks(body, carry, size: int, block: int, pinned: tuple = ()):
    """Runs ``carry = body(carry, start, length, pinned)`` over [0, size) in blocks of ``block``.

    Full blocks run in a ``lax.scan`` with a traced ``start``; the ragged remainder runs once
    more with a static shape, so nothing is ever padded (padding the weight would copy it).

    ``pinned`` holds the large inputs the body slices (hidden states, weights). They travel
    through the loop carry behind an optimization barrier, and the body must slice the copies
    it is given. Otherwise XLA's CPU backend, which computes bfloat16 arithmetic in float32,
    rewrites ``convert(dynamic_slice(W))`` into ``dynamic_slice(convert(W))`` and hoists the
    convert out of the loop: a full float32 copy of the weight, the very memory this module
    exists to save. Through the barrier the inputs are loop-variant, so nothing is hoisted.
    """
    n_full, rem = divmod(size, block)
    if n_full == 1:
        carry = body(carry, 0, block, pinned)
    elif n_full > 1:

        def step(state, i):
            c, p = state
            p = lax.optimization_barrier(p)
            return (body(c, i * block, block, p), p), None

        (carry, _), _ = lax.scan(step, (carry, pinned), jnp.arange(n_full, dtype=jnp.int32))
    if rem:
        carry = body(carry, n_full * block, rem, pinned)
    return carry


def _rows(x, start, length):
    return lax.dynamic_slice_in_dim(x, start, length, axis=0)


def _cols(x, start, length):
    return lax.dynamic_slice_in_dim(x, start, length, axis=x.ndim - 1)


def _add_rows(acc, start, update):
    return lax.dynamic_update_slice_in_dim(
        acc, _rows(acc, start, update.shape[0]) + update, start, 0
    )


def _set_rows(acc, start, update):
    return lax.dynamic_update_slice_in_dim(acc, update.astype(acc.dtype), start, 0)


def _matmul(a, b, accum_dtype):
    """a @ b in the inputs' common dtype, accumulated in ``accum_dtype``."""
    dtype = jnp.result_type(a.dtype, b.dtype)
    return lax.dot_general(
        a.astype(dtype),
        b.astype(dtype),
        (((1,), (0,)), ((), ())),
        preferred_element_type=accum_dtype,
    )


def _matmul_nt(a, b, accum_dtype):
    """a @ b.T."""
    dtype = jnp.result_type(a.dtype, b.dtype)
    return lax.dot_general(
        a.astype(dtype),
        b.astype(dtype),
        (((1,), (1,)), ((), ())),
        preferred_element_type=accum_dtype,
    )


def _matmul_tn(a, b, accum_dtype):
    """a.T @ b."""
    dtype = jnp.result_type(a.dtype, b.dtype)
    return lax.dot_general(
        a.astype(dtype),
        b.astype(dtype),
        (((0,), (0,)), ((), ())),
        preferred_element_type=accum_dtype,
    )


def _block_logits(h_blk, w_blk, b_blk, softcap, accum_dtype):
    """(Soft-capped) logits of one tile, in ``accum_dtype``."""
    z = _matmul(h_blk, w_blk, accum_dtype)
    if b_blk is not None:
        z = z + b_blk.astype(accum_dtype)
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    return z


def _safe_shift(m):
    """The max to subtract: 0 where a row has no finite logit (so -inf - -inf never happens)."""
    return jnp.where(jnp.isfinite(m), m, 0.0)


def _rescale(m_old, m_new):
    """exp(m_old - m_new) with 0 for m_old = -inf."""
    return jnp.where(m_old == -jnp.inf, 0.0, jnp.exp(m_old - _safe_shift(m_new)))


# ------------------------------------------------------------------------------------------------
# Cross-entropy building blocks
# ------------------------------------------------------------------------------------------------


def _label_weight(labels, class_weights, spec: _CESpec):
    """class_weights[label] (1 without class weights), and masks (not ignored, in range)."""
    valid = jnp.ones(labels.shape, bool)
    if spec.ignore_index is not None:
        valid = labels != spec.ignore_index
    in_range = (labels >= 0) & (labels < spec.vocab_size)
    if class_weights is None:
        weight = jnp.ones(labels.shape, spec.accum_dtype)
    else:
        safe = jnp.clip(labels, 0, spec.vocab_size - 1)
        weight = class_weights.astype(spec.accum_dtype)[safe]
    return weight, valid, in_range


def _ce_tile_stats(z, labels, cw_blk, v_start, spec: _CESpec) -> _CEStats:
    """Statistics of one [T, Vb] tile of capped logits whose first class is ``v_start``."""
    m = jnp.max(z, axis=1)
    sumexp = jnp.sum(jnp.exp(z - _safe_shift(m)[:, None]), axis=1)
    local = labels - v_start
    hit = (local >= 0) & (local < z.shape[1])
    picked = jnp.take_along_axis(z, jnp.clip(local, 0, z.shape[1] - 1)[:, None], axis=1)[:, 0]
    target = jnp.where(hit, picked, 0.0)
    if spec.label_smoothing > 0:
        weighted = jnp.sum(z if cw_blk is None else z * cw_blk[None, :], axis=1)
    else:
        weighted = jnp.zeros_like(m)
    argmax = jnp.argmax(z, axis=1).astype(jnp.int32) + v_start
    return _CEStats(m, sumexp, target, weighted, argmax.astype(jnp.int32))


def _merge_ce_stats(a: _CEStats, b: _CEStats) -> _CEStats:
    m = jnp.maximum(a.max, b.max)
    sumexp = a.sumexp * _rescale(a.max, m) + b.sumexp * _rescale(b.max, m)
    argmax = jnp.where(b.max > a.max, b.argmax, a.argmax)
    return _CEStats(m, sumexp, a.target + b.target, a.weighted + b.weighted, argmax)


def _empty_ce_stats(n, dtype) -> _CEStats:
    return _CEStats(
        jnp.full((n,), -jnp.inf, dtype),
        jnp.zeros((n,), dtype),
        jnp.zeros((n,), dtype),
        jnp.zeros((n,), dtype),
        jnp.zeros((n,), jnp.int32),
    )


def _slice_weights(class_weights, start, length, spec):
    if class_weights is None:
        return None
    return lax.dynamic_slice_in_dim(class_weights.astype(spec.accum_dtype), start, length)


def _ce_slice_stats(h, labels, w, b, class_weights, *, vocab_offset, spec, blocks) -> _CEStats:
    """Per-token statistics over the vocabulary slice ``w`` (see the module comment)."""
    n, vs = h.shape[0], w.shape[1]
    acc = spec.accum_dtype

    def token_body(out, t0, tl, pinned):
        h, w = pinned
        h_blk, y_blk = _rows(h, t0, tl), _rows(labels, t0, tl)

        def vocab_body(stats, v0, vl, pinned):
            (w,) = pinned
            b_blk = None if b is None else _cols(b, v0, vl)
            z = _block_logits(h_blk, _cols(w, v0, vl), b_blk, spec.softcap, acc)
            cw_blk = _slice_weights(class_weights, vocab_offset + v0, vl, spec)
            return _merge_ce_stats(stats, _ce_tile_stats(z, y_blk, cw_blk, vocab_offset + v0, spec))

        stats = _for_blocks(vocab_body, _empty_ce_stats(tl, acc), vs, blocks.vocab, (w,))
        return _CEStats(*(_set_rows(o, t0, s) for o, s in zip(out, stats, strict=True)))

    return _for_blocks(token_body, _empty_ce_stats(n, acc), n, blocks.tokens, (h, w))


def _ce_loss_from_stats(stats: _CEStats, labels, class_weights, spec: _CESpec):
    """Per-token loss from global statistics; returns (loss, lse, weight, valid)."""
    eps = spec.label_smoothing
    lse = _safe_shift(stats.max) + jnp.log(stats.sumexp)
    weight, valid, in_range = _label_weight(labels, class_weights, spec)
    loss = (1.0 - eps) * weight * (lse - stats.target)
    if eps > 0:
        total = (
            spec.vocab_size if class_weights is None else jnp.sum(class_weights.astype(lse.dtype))
        )
        loss = loss + eps / spec.vocab_size * (total * lse - stats.weighted)
    if spec.z_loss > 0:
        loss = loss + spec.z_loss * lse**2
    loss = jnp.where(in_range, loss, jnp.nan)
    return jnp.where(valid, loss, 0.0), lse, weight, valid


def _ce_tile_dlogits(z, labels, lse, row_scale, coef, target_coef, cw_blk, v_start, spec):
    """d(sum_i row_scale_i loss_i)/d(pre-cap logits) on one tile.

    With p = softmax(z): dloss/dz_k = coef * p_k - target_coef * [k = y] - eps/V * c_k, where
    coef = (1-eps) w_y + eps/V sum_k c_k + 2 z_loss lse and target_coef = (1-eps) w_y.
    """
    p = jnp.exp(z - lse[:, None])
    cols = lax.broadcasted_iota(jnp.int32, z.shape, 1) + v_start
    dz = coef[:, None] * p - jnp.where(cols == labels[:, None], target_coef[:, None], 0.0)
    if spec.label_smoothing > 0:
        smooth = spec.label_smoothing / spec.vocab_size
        dz = dz - (smooth if cw_blk is None else smooth * cw_blk[None, :])
    dz = dz * row_scale[:, None]
    if spec.softcap is not None:
        dz = dz * (1.0 - (z / spec.softcap) ** 2)
    return dz


def _ce_grad_coefs(labels, class_weights, lse, spec):
    eps = spec.label_smoothing
    weight, _, _ = _label_weight(labels, class_weights, spec)
    target_coef = (1.0 - eps) * weight
    coef = target_coef
    if eps > 0:
        total = (
            spec.vocab_size if class_weights is None else jnp.sum(class_weights.astype(lse.dtype))
        )
        coef = coef + eps / spec.vocab_size * total
    if spec.z_loss > 0:
        coef = coef + 2.0 * spec.z_loss * lse
    return coef, target_coef


def _ce_tile_dlogits_fn(h, labels, w, b, class_weights, lse, row_scale, *, vocab_offset, spec):
    """A function of one (token block, vocabulary block) tile giving its logits gradient.

    Shared by the one-pass and two-pass backward passes: ``tile(h_blk, w_blk, t0, tl, v0, vl)``
    recomputes the tile's logits and returns ``(dz in accum_dtype, dz in the matmul dtype)``.
    """
    acc = spec.accum_dtype
    coef, target_coef = _ce_grad_coefs(labels, class_weights, lse, spec)
    row_scale = row_scale.astype(acc)

    def tile(h_blk, w_blk, t0, tl, v0, vl):
        b_blk = None if b is None else _cols(b, v0, vl)
        z = _block_logits(h_blk, w_blk, b_blk, spec.softcap, acc)
        dz = _ce_tile_dlogits(
            z,
            _rows(labels, t0, tl),
            _rows(lse, t0, tl),
            _rows(row_scale, t0, tl),
            _rows(coef, t0, tl),
            _rows(target_coef, t0, tl),
            _slice_weights(class_weights, vocab_offset + v0, vl, spec),
            vocab_offset + v0,
            spec,
        )
        return dz, dz.astype(jnp.result_type(h.dtype, w.dtype))

    return tile


def _ce_slice_grads(h, labels, w, b, class_weights, lse, row_scale, *, vocab_offset, spec, blocks):
    """Gradients over the vocabulary slice ``w`` given global ``lse`` (see the module comment)."""
    n, d = h.shape
    vs = w.shape[1]
    acc = spec.accum_dtype
    tile_dlogits = _ce_tile_dlogits_fn(
        h, labels, w, b, class_weights, lse, row_scale, vocab_offset=vocab_offset, spec=spec
    )

    def vocab_body(carry, v0, vl, pinned):
        dh, dw, db = carry
        h, w = pinned
        w_blk = _cols(w, v0, vl)

        def token_body(inner, t0, tl, pinned):
            dh, dw_blk, db_blk = inner
            h, w_blk = pinned
            h_blk = _rows(h, t0, tl)
            dz, dz_c = tile_dlogits(h_blk, w_blk, t0, tl, v0, vl)
            dh = _add_rows(dh, t0, _matmul_nt(dz_c, w_blk, acc))
            dw_blk = dw_blk + _matmul_tn(h_blk, dz_c, acc)
            if db_blk is not None:
                db_blk = db_blk + jnp.sum(dz, axis=0)
            return dh, dw_blk, db_blk

        db_init = None if b is None else jnp.zeros((vl,), acc)
        dh, dw_blk, db_blk = _for_blocks(
            token_body, (dh, jnp.zeros((d, vl), acc), db_init), n, blocks.tokens, (h, w_blk)
        )
        dw = lax.dynamic_update_slice_in_dim(dw, dw_blk.astype(dw.dtype), v0, 1)
        if db is not None:
            db = lax.dynamic_update_slice_in_dim(db, db_blk.astype(db.dtype), v0, 0)
        return dh, dw, db

    init = (
        jnp.zeros((n, d), acc),
        jnp.zeros(w.shape, w.dtype),
        None if b is None else jnp.zeros(b.shape, b.dtype),
    )
    return _for_blocks(vocab_body, init, vs, blocks.vocab, (h, w))


def _ce_slice_grads_two_pass(
    h, labels, w, b, class_weights, lse, row_scale, *, vocab_offset, spec, blocks
):
    """As :func:`_ce_slice_grads` with no full-size accumulator (for half-precision inputs).

    Every logits tile is recomputed twice. Pass 1 (vocabulary blocks outside) finishes each
    ``[D, Vb]`` block of ``dw`` over all tokens; pass 2 (token blocks outside) finishes each
    ``[Tb, D]`` block of ``dh`` over the whole slice in a tile-sized ``accum_dtype`` buffer and
    writes it in the hidden's dtype. Returns ``dh`` in ``h.dtype``."""
    n, d = h.shape
    vs = w.shape[1]
    acc = spec.accum_dtype
    tile_dlogits = _ce_tile_dlogits_fn(
        h, labels, w, b, class_weights, lse, row_scale, vocab_offset=vocab_offset, spec=spec
    )

    def vocab_body(carry, v0, vl, pinned):
        dw, db = carry
        h, w = pinned
        w_blk = _cols(w, v0, vl)

        def token_body(inner, t0, tl, pinned):
            dw_blk, db_blk = inner
            h, w_blk = pinned
            h_blk = _rows(h, t0, tl)
            dz, dz_c = tile_dlogits(h_blk, w_blk, t0, tl, v0, vl)
            if db_blk is not None:
                db_blk = db_blk + jnp.sum(dz, axis=0)
            return dw_blk + _matmul_tn(h_blk, dz_c, acc), db_blk

        db_init = None if b is None else jnp.zeros((vl,), acc)
        dw_blk, db_blk = _for_blocks(
            token_body, (jnp.zeros((d, vl), acc), db_init), n, blocks.tokens, (h, w_blk)
        )
        dw = lax.dynamic_update_slice_in_dim(dw, dw_blk.astype(dw.dtype), v0, 1)
        if db is not None:
            db = lax.dynamic_update_slice_in_dim(db, db_blk.astype(db.dtype), v0, 0)
        return dw, db

    def token_body(dh, t0, tl, pinned):
        h, w = pinned
        h_blk = _rows(h, t0, tl)

        def vocab_body(dh_blk, v0, vl, pinned):
            (w,) = pinned
            w_blk = _cols(w, v0, vl)
            _, dz_c = tile_dlogits(h_blk, w_blk, t0, tl, v0, vl)
            return dh_blk + _matmul_nt(dz_c, w_blk, acc)

        dh_blk = _for_blocks(vocab_body, jnp.zeros((tl, d), acc), vs, blocks.vocab, (w,))
        return _set_rows(dh, t0, dh_blk)

    init = (jnp.zeros(w.shape, w.dtype), None if b is None else jnp.zeros(b.shape, b.dtype))
    dw, db = _for_blocks(vocab_body, init, vs, blocks.vocab, (h, w))
    dh = _for_blocks(token_body, jnp.zeros((n, d), h.dtype), n, blocks.tokens, (h, w))
    return dh, dw, db


def _ce_fused_value_and_grads(h, labels, w, b, class_weights, row_scale, *, spec, blocks):
    """Loss statistics and the gradient of sum_i row_scale_i loss_i in one sweep.

    Token blocks outside; each block's logits row [Tb, V] is computed once (in vocab tiles),
    kept, and reused for the gradient: three matmuls in all.
    """
    n, d = h.shape
    v = w.shape[1]
    acc = spec.accum_dtype
    row_scale = row_scale.astype(acc)

    def token_body(carry, t0, tl, pinned):
        out_stats, dh, dw, db = carry
        h, w = pinned
        h_blk, y_blk = _rows(h, t0, tl), _rows(labels, t0, tl)

        def stats_body(inner, v0, vl, pinned):
            stats, row = inner
            (w,) = pinned
            b_blk = None if b is None else _cols(b, v0, vl)
            z = _block_logits(h_blk, _cols(w, v0, vl), b_blk, spec.softcap, acc)
            cw_blk = _slice_weights(class_weights, v0, vl, spec)
            stats = _merge_ce_stats(stats, _ce_tile_stats(z, y_blk, cw_blk, v0, spec))
            return stats, lax.dynamic_update_slice_in_dim(row, z, v0, 1)

        stats, row = _for_blocks(
            stats_body, (_empty_ce_stats(tl, acc), jnp.zeros((tl, v), acc)), v, blocks.vocab, (w,)
        )
        lse = _safe_shift(stats.max) + jnp.log(stats.sumexp)
        coef, target_coef = _ce_grad_coefs(y_blk, class_weights, lse, spec)
        scale = _rows(row_scale, t0, tl)

        def grad_body(inner, v0, vl, pinned):
            dh_blk, dw, db = inner
            (w,) = pinned
            w_blk = _cols(w, v0, vl)
            cw_blk = _slice_weights(class_weights, v0, vl, spec)
            z = _cols(row, v0, vl)
            dz = _ce_tile_dlogits(z, y_blk, lse, scale, coef, target_coef, cw_blk, v0, spec)
            dz_c = dz.astype(jnp.result_type(h.dtype, w.dtype))
            dh_blk = dh_blk + _matmul_nt(dz_c, w_blk, acc)
            dw = lax.dynamic_update_slice_in_dim(
                dw, _cols(dw, v0, vl) + _matmul_tn(h_blk, dz_c, acc), v0, 1
            )
            if db is not None:
                db = lax.dynamic_update_slice_in_dim(db, _cols(db, v0, vl) + dz.sum(0), v0, 0)
            return dh_blk, dw, db

        dh_blk, dw, db = _for_blocks(
            grad_body, (jnp.zeros((tl, d), acc), dw, db), v, blocks.vocab, (w,)
        )
        out_stats = _CEStats(*(_set_rows(o, t0, s) for o, s in zip(out_stats, stats, strict=True)))
        return out_stats, _set_rows(dh, t0, dh_blk), dw, db

    init = (
        _empty_ce_stats(n, acc),
        jnp.zeros((n, d), h.dtype),
        jnp.zeros((d, v), acc),
        None if b is None else jnp.zeros((v,), acc),
    )
    return _for_blocks(token_body, init, n, blocks.tokens, (h, w))


# ------------------------------------------------------------------------------------------------
# Cross-entropy custom_vjp wrappers
# ------------------------------------------------------------------------------------------------


def _ce_forward(h, w, b, labels, class_weights, spec, blocks):
    stats = _ce_slice_stats(
        h, labels, w, b, class_weights, vocab_offset=0, spec=spec, blocks=blocks
    )
    loss, lse, _, _ = _ce_loss_from_stats(stats, labels, class_weights, spec)
    return loss, lse, stats.argmax


# Per-token loss; the backward pass recomputes logits tiles. Outputs: (loss, lse, argmax), of
# which only the loss carries a gradient.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _ce_recompute(h, w, b, labels, class_weights, spec, blocks):
    return _ce_forward(h, w, b, labels, class_weights, spec, blocks)


def _ce_recompute_fwd(h, w, b, labels, class_weights, spec, blocks):
    out = _ce_forward(h, w, b, labels, class_weights, spec, blocks)
    return out, (h, w, b, labels, class_weights, out[1])


def _ce_recompute_bwd(spec, blocks, res, cotangents):
    h, w, b, labels, class_weights, lse = res
    _, valid, _ = _label_weight(labels, class_weights, spec)
    row_scale = jnp.where(valid, cotangents[0], 0.0)
    dh, dw, db = _ce_slice_grads(
        h, labels, w, b, class_weights, lse, row_scale, vocab_offset=0, spec=spec, blocks=blocks
    )
    return dh.astype(h.dtype), dw, db, None, None


_ce_recompute.defvjp(_ce_recompute_fwd, _ce_recompute_bwd)


# As _ce_recompute, with the two-pass backward (no [N, D] accumulator; half precision).
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _ce_recompute_two_pass(h, w, b, labels, class_weights, spec, blocks):
    return _ce_forward(h, w, b, labels, class_weights, spec, blocks)


def _ce_recompute_two_pass_bwd(spec, blocks, res, cotangents):
    h, w, b, labels, class_weights, lse = res
    _, valid, _ = _label_weight(labels, class_weights, spec)
    row_scale = jnp.where(valid, cotangents[0], 0.0)
    dh, dw, db = _ce_slice_grads_two_pass(
        h, labels, w, b, class_weights, lse, row_scale, vocab_offset=0, spec=spec, blocks=blocks
    )
    return dh, dw, db, None, None


_ce_recompute_two_pass.defvjp(_ce_recompute_fwd, _ce_recompute_two_pass_bwd)


# Scalar sum_i row_scale_i loss_i (row_scale carries the reduction's 1/count); the forward rule
# computes the gradient too. Outputs: (total, loss, lse, argmax); only total carries a gradient.
@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _ce_fused(h, w, b, labels, class_weights, row_scale, spec, blocks):
    loss, lse, argmax = _ce_forward(h, w, b, labels, class_weights, spec, blocks)
    return jnp.sum(loss * row_scale), loss, lse, argmax


def _ce_fused_fwd(h, w, b, labels, class_weights, row_scale, spec, blocks):
    _, valid, _ = _label_weight(labels, class_weights, spec)
    scale = jnp.where(valid, row_scale, 0.0)
    stats, dh, dw, db = _ce_fused_value_and_grads(
        h, labels, w, b, class_weights, scale, spec=spec, blocks=blocks
    )
    loss, lse, _, _ = _ce_loss_from_stats(stats, labels, class_weights, spec)
    out = (jnp.sum(loss * row_scale), loss, lse, stats.argmax)
    return out, (dh, dw.astype(w.dtype), None if db is None else db.astype(b.dtype))


def _ce_fused_bwd(spec, blocks, res, cotangents):
    dh, dw, db = res
    g = cotangents[0]
    dh = (dh * g.astype(dh.dtype)).astype(dh.dtype)
    dw = dw * g.astype(dw.dtype)
    db = None if db is None else db * g.astype(db.dtype)
    return dh, dw, db, None, None, None


_ce_fused.defvjp(_ce_fused_fwd, _ce_fused_bwd)


# ------------------------------------------------------------------------------------------------
# Block sizes and validation
# ------------------------------------------------------------------------------------------------


def _floor_pow2(x: int) -> int:
    return 1 << max(int(x), 1).bit_length() - 1


def _check_block(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int or None (automatic); got {value!r}.")
    return int(value)


def _block_budgets(backend: str) -> tuple[int, int, int]:
    """Element budgets of a [Tb, Vb] tile, a [D, Vb] weight slice and a [Tb, D] hidden slice."""
    if backend == "cpu":
        return _BLOCK_ELEMENTS, _BLOCK_ELEMENTS, _BLOCK_ELEMENTS
    return _ACCEL_TILE_ELEMENTS, _ACCEL_WEIGHT_SLICE_ELEMENTS, _ACCEL_HIDDEN_SLICE_ELEMENTS


def _choose_blocks(n, d, v, token_block_size, vocab_block_size, backend=None) -> _Blocks:
    """Tile sizes from the shapes and a memory budget, power-of-two for efficient matmuls.

    See :func:`_block_budgets`: one budget on CPU, larger ones on accelerators."""
    vocab = _check_block(vocab_block_size, "vocab_block_size")
    tokens = _check_block(token_block_size, "token_block_size")
    tile, weight_slice, hidden_slice = _block_budgets(backend or jax.default_backend())
    d = max(d, 1)
    if vocab is None:
        vocab = min(v, max(128, _floor_pow2(weight_slice // d)))
    if tokens is None:
        tokens = min(n, max(8, _floor_pow2(min(tile // vocab, hidden_slice // d))))
    return _Blocks(max(1, min(tokens, max(n, 1))), max(1, min(vocab, v)))


def _choose_method(method, reduction, n, v, blocks, token_block_size, input_dtypes, accum_dtype):
    if method != "auto":
        return method
    if any(jnp.dtype(t).itemsize < jnp.dtype(accum_dtype).itemsize for t in input_dtypes):
        # Half precision: the one-pass backward's [N, D] accum_dtype accumulator would be twice
        # the hidden gradient itself (larger than every tile); two passes keep only tiles.
        return "two_pass"
    if reduction == "none":
        return "recompute"
    if jax.default_backend() != "cpu":
        # Measured on an H200: the [Tb, V] row loop is slower than recomputing there.
        return "recompute"
    # The fused gradient keeps a [Tb, V] row and a [D, V] accumulator (free only when the weight
    # is already in accum_dtype: it becomes the gradient's buffer); worth it only where the row
    # fits comfortably with a token block big enough for efficient matmuls.
    tokens = blocks.tokens
    if token_block_size is None:
        tokens = min(n, _floor_pow2(max(_FUSED_ROW_ELEMENTS // v, 1)))
    if tokens >= min(n, _FUSED_MIN_TOKENS) and tokens * v <= _FUSED_ROW_ELEMENTS:
        return "fused"
    return "recompute"


def _check_head(hidden, weight, hidden_name, weight_name):
    if weight.ndim != 2:
        raise ValueError(
            f"`{weight_name}` must be a [D, V] matrix (flax Dense kernel layout); got "
            f"{describe(weight)}."
        )
    if hidden.ndim < 1 or hidden.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"The last dimension of `{hidden_name}` must equal the first of `{weight_name}` "
            f"(hidden size D); got `{hidden_name}` {describe(hidden)} and `{weight_name}` "
            f"{describe(weight)}."
        )


def _check_vector(x, name, v):
    if x is None:
        return None
    x = as_float_array(x, name)
    if x.shape != (v,):
        raise ValueError(
            f"`{name}` must have shape [{v}] (one entry per class); got {describe(x)}."
        )
    return x


def _accum(accum_dtype, *dtypes):
    return jnp.dtype(jnp.result_type(jnp.dtype(accum_dtype), *dtypes))


def _reraise_jvp(name):
    """Turns JAX's terse custom_vjp forward-mode error into one that names ``name``."""

    def decorator(fn):
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

        return wrapper

    return decorator


# ------------------------------------------------------------------------------------------------
# Public API: cross-entropy
# ------------------------------------------------------------------------------------------------


@_reraise_jvp("linear_softmax_cross_entropy")
def linear_softmax_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    reduction: str = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    accum_dtype=jnp.float32,
    return_aux: bool = False,
) -> jax.Array | tuple[jax.Array, LinearCrossEntropyAux]:
    r"""Softmax cross-entropy of ``hidden @ weight + bias`` against integer labels, fused.

    Equals :func:`softmax_cross_entropy_with_integer_labels` applied to the logits
    :math:`z = h W + b` (optionally soft-capped, :math:`z \leftarrow s \tanh(z / s)`), but never
    materializes the ``[N, V]`` logits: it runs over tiles of tokens and vocabulary with an
    online logsumexp and recomputes tiles in the backward pass. For a token with label :math:`y`,
    class weights :math:`c` (all 1 by default), smoothing :math:`\varepsilon` and ``V`` classes:

    .. math::
        \ell = (1-\varepsilon)\, c_y\, (\mathrm{lse}(z) - z_y)
             + \frac{\varepsilon}{V} \sum_k c_k\, (\mathrm{lse}(z) - z_k)
             + \lambda_z\, \mathrm{lse}(z)^2 ,

    i.e. the cross-entropy :math:`H(t, \mathrm{softmax}(z))` from the smoothed target ``t`` to the
    model, PyTorch's weighted formula, plus the z-loss. ``"mean"`` divides the sum by
    :math:`\sum_i c_{y_i}` over tokens that are not ignored.

    Gradients flow to ``hidden``, ``weight`` and ``bias`` (not to ``class_weights``); values and
    gradients accumulate in ``accum_dtype`` (at least float32), so bfloat16 inputs lose nothing
    beyond their own rounding. For half-precision inputs the backward pass runs in two passes
    (the weight gradient, then the hidden gradient, block by block; one more matmul per tile),
    so that no float32 buffer of the size of ``hidden`` or ``weight`` exists. Only reverse mode
    is supported (``jax.grad``/``vjp``): this is a ``jax.custom_vjp`` function, and forward mode
    (``jax.jvp``) raises ``TypeError``. A call without a gradient computes no gradient.

    Args:
      hidden: ``[..., D]`` final hidden states.
      labels: ``[...]`` integer class indices. Labels outside ``[0, V)`` other than
        ``ignore_index`` give NaN.
      weight: ``[D, V]`` output projection (flax ``Dense`` kernel layout).
      bias: optional ``[V]`` bias.
      ignore_index: label value whose tokens give 0 loss, 0 gradient and no weight in the mean.
      label_smoothing: :math:`\varepsilon \in [0, 1)`.
      class_weights: optional ``[V]`` non-negative per-class weights (no gradient).
      z_loss: coefficient :math:`\lambda_z \ge 0` of :math:`\mathrm{lse}^2` (not class-weighted).
      logit_softcap: optional cap :math:`s > 0`.
      reduction: ``"none"`` (shape of ``labels``), ``"sum"``, ``"mean"`` or ``"batchmean"``
        (sum over the size of the first dimension of ``labels``).
      token_block_size: tokens per tile; ``None`` chooses from the shapes and a memory budget
        (larger on GPU/TPU, where each loop step costs kernel launches). Larger tiles trade
        memory for speed.
      vocab_block_size: classes per tile; ``None`` chooses from the shapes.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).
      return_aux: also return a :class:`LinearCrossEntropyAux` of per-token logsumexp, z-loss
        term and argmax-equals-label; these carry no gradient.

    Returns:
      The loss (reduced as asked, float32 for half-precision inputs), and the aux tuple if
        ``return_aux``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h = jax.random.normal(jax.random.key(0), (4, 8))
      >>> w = jax.random.normal(jax.random.key(1), (8, 50))
      >>> y = jnp.array([1, 7, 3, 49])
      >>> fused = il.linear_softmax_cross_entropy(h, y, w)
      >>> naive = il.softmax_cross_entropy_with_integer_labels(h @ w, y, reduction="mean")
      >>> print(bool(jnp.allclose(fused, naive, rtol=1e-5)))
      True

    References:
      Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (Cut Cross-Entropy),
      2024. Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", 2024.
    """
    return _linear_softmax_cross_entropy(
        hidden,
        labels,
        weight,
        bias=bias,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
        z_loss=z_loss,
        logit_softcap=logit_softcap,
        reduction=reduction,
        token_block_size=token_block_size,
        vocab_block_size=vocab_block_size,
        accum_dtype=accum_dtype,
        return_aux=return_aux,
    )


def _linear_softmax_cross_entropy(
    hidden,
    labels,
    weight,
    *,
    bias=None,
    ignore_index=None,
    label_smoothing=0.0,
    class_weights=None,
    z_loss=0.0,
    logit_softcap=None,
    reduction="mean",
    token_block_size=None,
    vocab_block_size=None,
    accum_dtype=jnp.float32,
    return_aux=False,
    method="auto",
):
    """:func:`linear_softmax_cross_entropy` with a choice of gradient ``method`` (for tests and
    benchmarks): "auto", "recompute", "two_pass" or "fused" (see the module comment)."""
    hidden = as_float_array(hidden, "hidden")
    weight = as_float_array(weight, "weight")
    labels = as_integer_array(labels, "labels")
    _check_head(hidden, weight, "hidden", "weight")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"`labels` must have the shape of `hidden` without its last dimension, "
            f"{list(hidden.shape[:-1])}; got {describe(labels)}."
        )
    v = weight.shape[1]
    bias = _check_vector(bias, "bias", v)
    class_weights = _check_vector(class_weights, "class_weights", v)
    check_reduction(reduction)
    eps = check_label_smoothing(label_smoothing)
    z_loss = check_z_loss(z_loss)
    check_positive(logit_softcap, "logit_softcap")
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}; got {method!r}.")

    lead = labels.shape
    n = int(np.prod(lead, dtype=np.int64))
    h2 = hidden.reshape(n, hidden.shape[-1])
    y = labels.reshape(n).astype(jnp.int32)
    acc = _accum(accum_dtype, hidden.dtype, weight.dtype)
    spec = _CESpec(
        vocab_size=v,
        label_smoothing=eps,
        z_loss=float(z_loss),
        softcap=None if logit_softcap is None else float(logit_softcap),
        ignore_index=None if ignore_index is None else int(ignore_index),
        accum_dtype=acc,
    )
    blocks = _choose_blocks(n, hidden.shape[-1], v, token_block_size, vocab_block_size)
    method = _choose_method(
        method, reduction, n, v, blocks, token_block_size, (hidden.dtype, weight.dtype), acc
    )
    cw = None if class_weights is None else lax.stop_gradient(class_weights)
    weight_per_token, valid, _ = _label_weight(y, cw, spec)

    if method == "fused" and reduction != "none":
        if token_block_size is None:
            blocks = blocks._replace(tokens=min(n, _floor_pow2(max(_FUSED_ROW_ELEMENTS // v, 1))))
        scale = _reduction_scale(reduction, weight_per_token, valid, lead, acc)
        total, loss, lse, argmax = _ce_fused(h2, weight, bias, y, cw, scale, spec, blocks)
        value = total
    else:
        recompute = _ce_recompute_two_pass if method == "two_pass" else _ce_recompute
        loss, lse, argmax = recompute(h2, weight, bias, y, cw, spec, blocks)
        value = reduce_loss(
            loss.reshape(lead),
            reduction=reduction,
            weights=weight_per_token.reshape(lead),
            where=valid.reshape(lead),
        )
    if not return_aux:
        return value
    lse = lax.stop_gradient(lse)
    z_term = jnp.where(valid, spec.z_loss * lse**2, 0.0)
    correct = valid & (lax.stop_gradient(argmax) == y)
    return value, LinearCrossEntropyAux(
        lse.reshape(lead), z_term.reshape(lead), correct.reshape(lead)
    )


def _reduction_scale(reduction, weight, valid, lead, dtype):
    """Per-token factor s_i with reduce_loss(loss) == sum_i s_i loss_i (no gradient)."""
    ones = jnp.ones(weight.shape, dtype)
    if reduction == "sum":
        return ones
    if reduction == "batchmean":
        return ones / max(lead[0] if lead else 1, 1)
    count = jnp.sum(jnp.where(valid, weight, 0.0))
    return ones * jnp.where(count != 0, 1.0 / jnp.where(count != 0, count, 1.0), 0.0)


# ------------------------------------------------------------------------------------------------
# Distillation building blocks
# ------------------------------------------------------------------------------------------------


def _kl_tile_logits(h_blk, w_blk, th_blk, tw_blk, spec: _KLSpec):
    """Temperature-scaled student and teacher logits of one tile."""
    s = _matmul(h_blk, w_blk, spec.accum_dtype)
    t = _matmul(th_blk, tw_blk, spec.accum_dtype)
    if spec.temperature != 1.0:
        s, t = s / spec.temperature, t / spec.temperature
    return s, t


def _kl_tile_stats(s, t) -> _KLStats:
    s_max, t_max = jnp.max(s, axis=1), jnp.max(t, axis=1)
    s_exp = jnp.exp(s - _safe_shift(s_max)[:, None])
    t_exp = jnp.exp(t - _safe_shift(t_max)[:, None])
    return _KLStats(
        s_max,
        jnp.sum(s_exp, axis=1),
        t_max,
        jnp.sum(t_exp, axis=1),
        jnp.sum(t_exp * (t - s), axis=1),
        jnp.sum(s_exp * (s - t), axis=1),
    )


def _merge_kl_stats(a: _KLStats, b: _KLStats) -> _KLStats:
    s_max, t_max = jnp.maximum(a.s_max, b.s_max), jnp.maximum(a.t_max, b.t_max)
    sa, sb = _rescale(a.s_max, s_max), _rescale(b.s_max, s_max)
    ta, tb = _rescale(a.t_max, t_max), _rescale(b.t_max, t_max)
    return _KLStats(
        s_max,
        a.s_sumexp * sa + b.s_sumexp * sb,
        t_max,
        a.t_sumexp * ta + b.t_sumexp * tb,
        a.fwd * ta + b.fwd * tb,
        a.rev * sa + b.rev * sb,
    )


def _empty_kl_stats(n, dtype) -> _KLStats:
    ninf, zero = jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), dtype)
    return _KLStats(ninf, zero, ninf, zero, zero, zero)


def _kl_slice_stats(h, w, th, tw, *, spec: _KLSpec, blocks: _Blocks) -> _KLStats:
    """Online per-token statistics of student and teacher over a vocabulary slice."""
    n, vs = h.shape[0], w.shape[1]
    acc = spec.accum_dtype

    def token_body(out, t0, tl, pinned):
        h, w, th, tw = pinned
        h_blk, th_blk = _rows(h, t0, tl), _rows(th, t0, tl)

        def vocab_body(stats, v0, vl, pinned):
            w, tw = pinned
            s, t = _kl_tile_logits(h_blk, _cols(w, v0, vl), th_blk, _cols(tw, v0, vl), spec)
            return _merge_kl_stats(stats, _kl_tile_stats(s, t))

        stats = _for_blocks(vocab_body, _empty_kl_stats(tl, acc), vs, blocks.vocab, (w, tw))
        return _KLStats(*(_set_rows(o, t0, s) for o, s in zip(out, stats, strict=True)))

    return _for_blocks(token_body, _empty_kl_stats(n, acc), n, blocks.tokens, (h, w, th, tw))


def _lse(m, sumexp):
    return _safe_shift(m) + jnp.log(sumexp)


def _jsd_log_m(log_p, log_q, beta):
    """log(beta p + (1 - beta) q) for 0 < beta < 1."""
    return jnp.logaddexp(math.log(beta) + log_p, math.log1p(-beta) + log_q)


def _jsd_slice_terms(h, w, th, tw, s_lse, t_lse, *, spec: _KLSpec, blocks: _Blocks):
    """Second JSD pass: per-token sum p (log p - log m) and sum q (log q - log m)."""
    n, vs = h.shape[0], w.shape[1]
    acc = spec.accum_dtype

    def token_body(out, t0, tl, pinned):
        h, w, th, tw = pinned
        h_blk, th_blk = _rows(h, t0, tl), _rows(th, t0, tl)
        sl, tl_ = _rows(s_lse, t0, tl)[:, None], _rows(t_lse, t0, tl)[:, None]

        def vocab_body(terms, v0, vl, pinned):
            w, tw = pinned
            s, t = _kl_tile_logits(h_blk, _cols(w, v0, vl), th_blk, _cols(tw, v0, vl), spec)
            log_q, log_p = s - sl, t - tl_
            log_m = _jsd_log_m(log_p, log_q, spec.beta)
            p_term = jnp.sum(jnp.exp(log_p) * (log_p - log_m), axis=1)
            q_term = jnp.sum(jnp.exp(log_q) * (log_q - log_m), axis=1)
            return terms[0] + p_term, terms[1] + q_term

        zero = jnp.zeros((tl,), acc)
        p_term, q_term = _for_blocks(vocab_body, (zero, zero), vs, blocks.vocab, (w, tw))
        return _set_rows(out[0], t0, p_term), _set_rows(out[1], t0, q_term)

    zero = jnp.zeros((n,), acc)
    return _for_blocks(token_body, (zero, zero), n, blocks.tokens, (h, w, th, tw))


def _kl_tile_dlogits(s, t, s_lse, t_lse, kl_q, row_scale, spec: _KLSpec):
    """d(row_scale * divergence)/d(unscaled student logits) on one tile."""
    log_q, log_p = s - s_lse[:, None], t - t_lse[:, None]
    q = jnp.exp(log_q)
    if spec.kind == "forward":
        ds = q - jnp.exp(log_p)
    elif spec.kind == "reverse":
        ds = q * (log_q - log_p - kl_q[:, None])
    else:
        log_m = _jsd_log_m(log_p, log_q, spec.beta)
        ds = (1.0 - spec.beta) * q * (log_q - log_m - kl_q[:, None])
    return ds * (row_scale / spec.temperature)[:, None]


def _kl_slice_grads(h, w, th, tw, s_lse, t_lse, kl_q, row_scale, *, spec, blocks):
    """Student gradients (dh [N, D] accum dtype, dw [D, Vs] w.dtype) over a vocabulary slice,
    given global logsumexps; vocabulary blocks outside as in :func:`_ce_slice_grads`."""
    n, d = h.shape
    vs = w.shape[1]
    acc = spec.accum_dtype
    row_scale = row_scale.astype(acc)

    def vocab_body(carry, v0, vl, pinned):
        dh, dw = carry
        h, w, th, tw = pinned
        w_blk, tw_blk = _cols(w, v0, vl), _cols(tw, v0, vl)

        def token_body(inner, t0, tl, pinned):
            dh, dw_blk = inner
            h, th, w_blk, tw_blk = pinned
            h_blk = _rows(h, t0, tl)
            s, t = _kl_tile_logits(h_blk, w_blk, _rows(th, t0, tl), tw_blk, spec)
            ds = _kl_tile_dlogits(
                s,
                t,
                _rows(s_lse, t0, tl),
                _rows(t_lse, t0, tl),
                _rows(kl_q, t0, tl),
                _rows(row_scale, t0, tl),
                spec,
            )
            ds = ds.astype(jnp.result_type(h.dtype, w.dtype))
            dh = _add_rows(dh, t0, _matmul_nt(ds, w_blk, acc))
            return dh, dw_blk + _matmul_tn(h_blk, ds, acc)

        dh, dw_blk = _for_blocks(
            token_body, (dh, jnp.zeros((d, vl), acc)), n, blocks.tokens, (h, th, w_blk, tw_blk)
        )
        return dh, lax.dynamic_update_slice_in_dim(dw, dw_blk.astype(dw.dtype), v0, 1)

    init = (jnp.zeros((n, d), acc), jnp.zeros(w.shape, w.dtype))
    return _for_blocks(vocab_body, init, vs, blocks.vocab, (h, w, th, tw))


def _kl_slice_grads_two_pass(h, w, th, tw, s_lse, t_lse, kl_q, row_scale, *, spec, blocks):
    """As :func:`_kl_slice_grads` in two passes with tile-sized accumulators only (see
    :func:`_ce_slice_grads_two_pass`); ``dh`` comes back in ``h.dtype``."""
    n, d = h.shape
    vs = w.shape[1]
    acc = spec.accum_dtype
    row_scale = row_scale.astype(acc)

    def tile_dlogits(h_blk, th_blk, w_blk, tw_blk, t0, tl):
        s, t = _kl_tile_logits(h_blk, w_blk, th_blk, tw_blk, spec)
        ds = _kl_tile_dlogits(
            s,
            t,
            _rows(s_lse, t0, tl),
            _rows(t_lse, t0, tl),
            _rows(kl_q, t0, tl),
            _rows(row_scale, t0, tl),
            spec,
        )
        return ds.astype(jnp.result_type(h.dtype, w.dtype))

    def vocab_body(dw, v0, vl, pinned):
        h, w, th, tw = pinned
        w_blk, tw_blk = _cols(w, v0, vl), _cols(tw, v0, vl)

        def token_body(dw_blk, t0, tl, pinned):
            h, th, w_blk, tw_blk = pinned
            h_blk = _rows(h, t0, tl)
            ds = tile_dlogits(h_blk, _rows(th, t0, tl), w_blk, tw_blk, t0, tl)
            return dw_blk + _matmul_tn(h_blk, ds, acc)

        dw_blk = _for_blocks(
            token_body, jnp.zeros((d, vl), acc), n, blocks.tokens, (h, th, w_blk, tw_blk)
        )
        return lax.dynamic_update_slice_in_dim(dw, dw_blk.astype(dw.dtype), v0, 1)

    def token_body(dh, t0, tl, pinned):
        h, w, th, tw = pinned
        h_blk, th_blk = _rows(h, t0, tl), _rows(th, t0, tl)

        def vocab_body(dh_blk, v0, vl, pinned):
            w, tw = pinned
            w_blk = _cols(w, v0, vl)
            ds = tile_dlogits(h_blk, th_blk, w_blk, _cols(tw, v0, vl), t0, tl)
            return dh_blk + _matmul_nt(ds, w_blk, acc)

        dh_blk = _for_blocks(vocab_body, jnp.zeros((tl, d), acc), vs, blocks.vocab, (w, tw))
        return _set_rows(dh, t0, dh_blk)

    dw = _for_blocks(vocab_body, jnp.zeros(w.shape, w.dtype), vs, blocks.vocab, (h, w, th, tw))
    dh = _for_blocks(token_body, jnp.zeros((n, d), h.dtype), n, blocks.tokens, (h, w, th, tw))
    return dh, dw


def _kl_loss_from_stats(stats: _KLStats, spec: _KLSpec, jsd_terms):
    """Per-token divergence plus what its gradient needs: (loss, s_lse, t_lse, kl_q).

    ``jsd_terms(s_lse, t_lse)`` returns the JSD's (p_term, q_term); unused for the KLs."""
    s_lse, t_lse = _lse(stats.s_max, stats.s_sumexp), _lse(stats.t_max, stats.t_sumexp)
    if spec.kind == "forward":
        loss = stats.fwd / stats.t_sumexp - t_lse + s_lse
        return loss, s_lse, t_lse, jnp.zeros_like(loss)
    if spec.kind == "reverse":
        loss = stats.rev / stats.s_sumexp - s_lse + t_lse
        return loss, s_lse, t_lse, loss
    p_term, q_term = jsd_terms(s_lse, t_lse)
    return spec.beta * p_term + (1.0 - spec.beta) * q_term, s_lse, t_lse, q_term


def _jsd_row_terms(s, t, s_lse, t_lse, beta):
    """sum p (log p - log m) and sum q (log q - log m) over full rows of logits."""
    log_q, log_p = s - s_lse[:, None], t - t_lse[:, None]
    log_m = _jsd_log_m(log_p, log_q, beta)
    p_term = jnp.sum(jnp.exp(log_p) * (log_p - log_m), axis=1)
    return p_term, jnp.sum(jnp.exp(log_q) * (log_q - log_m), axis=1)


def _kl_forward(h, w, th, tw, spec, blocks):
    stats = _kl_slice_stats(h, w, th, tw, spec=spec, blocks=blocks)

    def jsd_terms(s_lse, t_lse):
        return _jsd_slice_terms(h, w, th, tw, s_lse, t_lse, spec=spec, blocks=blocks)

    return _kl_loss_from_stats(stats, spec, jsd_terms)


def _kl_fused_value_and_grads(h, w, th, tw, row_scale, *, spec, blocks):
    """Per-token divergence and the student gradient of sum_i row_scale_i loss_i in one sweep.

    As :func:`_ce_fused_value_and_grads`: token blocks outside, each block's student and teacher
    logits rows [Tb, V] kept and reused, so four matmuls in all, as many as the naive path."""
    n, d = h.shape
    v = w.shape[1]
    acc = spec.accum_dtype
    row_scale = row_scale.astype(acc)

    def token_body(carry, t0, tl, pinned):
        loss_out, dh, dw = carry
        h, w, th, tw = pinned
        h_blk, th_blk = _rows(h, t0, tl), _rows(th, t0, tl)

        def stats_body(inner, v0, vl, pinned):
            stats, s_row, t_row = inner
            w, tw = pinned
            s, t = _kl_tile_logits(h_blk, _cols(w, v0, vl), th_blk, _cols(tw, v0, vl), spec)
            s_row = lax.dynamic_update_slice_in_dim(s_row, s, v0, 1)
            t_row = lax.dynamic_update_slice_in_dim(t_row, t, v0, 1)
            return _merge_kl_stats(stats, _kl_tile_stats(s, t)), s_row, t_row

        rows = jnp.zeros((tl, v), acc)
        init = (_empty_kl_stats(tl, acc), rows, rows)
        stats, s_row, t_row = _for_blocks(stats_body, init, v, blocks.vocab, (w, tw))
        loss, s_lse, t_lse, kl_q = _kl_loss_from_stats(
            stats, spec, lambda sl, tl_: _jsd_row_terms(s_row, t_row, sl, tl_, spec.beta)
        )
        scale = _rows(row_scale, t0, tl)

        def grad_body(inner, v0, vl, pinned):
            dh_blk, dw = inner
            (w,) = pinned
            w_blk = _cols(w, v0, vl)
            ds = _kl_tile_dlogits(
                _cols(s_row, v0, vl), _cols(t_row, v0, vl), s_lse, t_lse, kl_q, scale, spec
            )
            ds = ds.astype(jnp.result_type(h.dtype, w.dtype))
            dh_blk = dh_blk + _matmul_nt(ds, w_blk, acc)
            dw = lax.dynamic_update_slice_in_dim(
                dw, _cols(dw, v0, vl) + _matmul_tn(h_blk, ds, acc), v0, 1
            )
            return dh_blk, dw

        dh_blk, dw = _for_blocks(grad_body, (jnp.zeros((tl, d), acc), dw), v, blocks.vocab, (w,))
        return _set_rows(loss_out, t0, loss), _set_rows(dh, t0, dh_blk), dw

    init = (jnp.zeros((n,), acc), jnp.zeros((n, d), h.dtype), jnp.zeros((d, v), acc))
    return _for_blocks(token_body, init, n, blocks.tokens, (h, w, th, tw))


# Scalar sum_i row_scale_i loss_i; the forward rule computes the student gradient too.
# Outputs: (total, loss); only total carries a gradient.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _kl_fused(h, w, th, tw, row_scale, spec, blocks):
    loss = _kl_forward(h, w, th, tw, spec, blocks)[0]
    return jnp.sum(loss * row_scale), loss


def _kl_fused_fwd(h, w, th, tw, row_scale, spec, blocks):
    loss, dh, dw = _kl_fused_value_and_grads(h, w, th, tw, row_scale, spec=spec, blocks=blocks)
    return (jnp.sum(loss * row_scale), loss), (dh, dw.astype(w.dtype))


def _kl_fused_bwd(spec, blocks, res, cotangents):
    dh, dw = res
    g = cotangents[0]
    return dh * g.astype(dh.dtype), dw * g.astype(dw.dtype), None, None, None


_kl_fused.defvjp(_kl_fused_fwd, _kl_fused_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _kl_loss(h, w, th, tw, spec, blocks):
    return _kl_forward(h, w, th, tw, spec, blocks)[0]


def _kl_loss_fwd(h, w, th, tw, spec, blocks):
    loss, s_lse, t_lse, kl_q = _kl_forward(h, w, th, tw, spec, blocks)
    return loss, (h, w, th, tw, s_lse, t_lse, kl_q)


def _kl_loss_bwd(spec, blocks, res, g):
    h, w, th, tw, s_lse, t_lse, kl_q = res
    dh, dw = _kl_slice_grads(h, w, th, tw, s_lse, t_lse, kl_q, g, spec=spec, blocks=blocks)
    # The teacher is a fixed target: it receives no gradient (symbolic zeros).
    return dh.astype(h.dtype), dw, None, None


_kl_loss.defvjp(_kl_loss_fwd, _kl_loss_bwd)


# As _kl_loss, with the two-pass backward (no [N, D] accumulator; half precision).
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _kl_loss_two_pass(h, w, th, tw, spec, blocks):
    return _kl_forward(h, w, th, tw, spec, blocks)[0]


def _kl_loss_two_pass_bwd(spec, blocks, res, g):
    h, w, th, tw, s_lse, t_lse, kl_q = res
    dh, dw = _kl_slice_grads_two_pass(h, w, th, tw, s_lse, t_lse, kl_q, g, spec=spec, blocks=blocks)
    return dh, dw, None, None


_kl_loss_two_pass.defvjp(_kl_loss_fwd, _kl_loss_two_pass_bwd)


def _linear_divergence(
    kind,
    hidden,
    weight,
    target_hidden,
    target_weight,
    *,
    beta,
    temperature,
    where,
    reduction,
    token_block_size,
    vocab_block_size,
    accum_dtype,
    method="auto",
):
    hidden = as_float_array(hidden, "hidden")
    weight = as_float_array(weight, "weight")
    target_hidden = as_float_array(target_hidden, "target_hidden")
    target_weight = as_float_array(target_weight, "target_weight")
    _check_head(hidden, weight, "hidden", "weight")
    _check_head(target_hidden, target_weight, "target_hidden", "target_weight")
    if target_weight.shape[1] != weight.shape[1]:
        raise ValueError(
            "The teacher and the student must share one vocabulary: `target_weight` "
            f"{describe(target_weight)} has {target_weight.shape[1]} classes, `weight` "
            f"{describe(weight)} has {weight.shape[1]}."
        )
    lead = hidden.shape[:-1]
    if target_hidden.shape[:-1] != lead:
        raise ValueError(
            "`target_hidden` must have the leading (token) shape of `hidden`; got "
            f"`target_hidden` {describe(target_hidden)} and `hidden` {describe(hidden)}."
        )
    check_temperature(temperature)
    check_reduction(reduction)
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_ or where.shape != lead:
            raise ValueError(
                f"`where` must be a boolean per-token mask of shape {list(lead)}; got "
                f"{describe(where)}."
            )
    if kind == "jsd":
        beta = check_beta(beta)
        kind = "forward" if beta == 0.0 else "reverse" if beta == 1.0 else "jsd"

    n = int(np.prod(lead, dtype=np.int64))
    d, v = hidden.shape[-1], weight.shape[1]
    acc = _accum(accum_dtype, hidden.dtype, weight.dtype, target_hidden.dtype, target_weight.dtype)
    spec = _KLSpec(kind=kind, beta=float(beta), temperature=float(temperature), accum_dtype=acc)
    blocks = _choose_blocks(
        n, max(d, target_hidden.shape[-1]), v, token_block_size, vocab_block_size
    )
    args = (
        hidden.reshape(n, d),
        weight,
        lax.stop_gradient(target_hidden.reshape(n, target_hidden.shape[-1])),
        lax.stop_gradient(target_weight),
    )
    # Two [Tb, V] rows (student and teacher) for the fused gradient.
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}; got {method!r}.")
    method = _choose_method(
        method, reduction, n, 2 * v, blocks, token_block_size, (hidden.dtype, weight.dtype), acc
    )
    if method == "fused" and reduction != "none":
        if token_block_size is None:
            rows = _FUSED_ROW_ELEMENTS // (2 * v)
            blocks = blocks._replace(tokens=min(n, _floor_pow2(max(rows, 1))))
        keep = jnp.ones((n,), bool) if where is None else where.reshape(n)
        scale = _reduction_scale(reduction, jnp.ones((n,), acc), keep, lead, acc)
        total, _ = _kl_fused(*args, jnp.where(keep, scale, 0.0), spec, blocks)
        return total
    loss = (_kl_loss_two_pass if method == "two_pass" else _kl_loss)(*args, spec, blocks)
    return reduce_loss(loss.reshape(lead), reduction=reduction, where=where)


_DISTILL_ARGS = """
    The student's logits are ``hidden @ weight``, the teacher's ``target_hidden @
    target_weight`` (its hidden size may differ; the vocabulary may not), both divided by
    ``temperature``. Neither ``[N, V]`` logits array is ever materialized. The teacher is a
    fixed target: it receives no gradient (its inputs pass through ``lax.stop_gradient``).
    Only reverse-mode differentiation is supported (``jax.custom_vjp``); ``jax.jvp`` raises
    ``TypeError``.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: ``[D, V]`` student output projection.
      target_hidden: ``[..., D_t]`` teacher hidden states (same leading shape).
      target_weight: ``[D_t, V]`` teacher output projection.
      temperature: positive temperature for both (no T**2 factor is applied).
      where: optional boolean per-token mask (shape ``hidden.shape[:-1]``); False drops a token
        from the loss and from the mean.
      reduction: ``"none"``, ``"sum"``, ``"mean"`` (over kept tokens) or ``"batchmean"``.
      token_block_size: tokens per tile; ``None`` chooses from the shapes and a memory budget
        (larger on GPU/TPU, where each loop step costs kernel launches). Larger tiles trade
        memory for speed.
      vocab_block_size: classes per tile; ``None`` chooses from the shapes.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).
        Half-precision inputs get the two-pass backward of
        :func:`linear_softmax_cross_entropy` (no float32 buffer of the student's sizes).

    Returns:
      The divergence in nats, reduced as asked, in at least float32.
"""


def _distill_doc(fn):
    fn.__doc__ = fn.__doc__.replace("    {args}\n", _DISTILL_ARGS)
    return fn


@_distill_doc
@_reraise_jvp("linear_forward_kl")
def linear_forward_kl(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    accum_dtype=jnp.float32,
) -> jax.Array:
    r"""Forward KL from a teacher head to a student head, fused: KL(teacher || student).

    .. math::
        \mathrm{KL}(P \,\|\, Q) = \sum_k p_k (\log p_k - \log q_k), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's: the same
    direction as :func:`forward_kl`, the usual (mean-seeking) distillation loss. Its gradient
    w.r.t. the student logits is :math:`(q - p) / T`.
    {args}
    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h, th = jax.random.normal(jax.random.key(0), (2, 4, 8)), jnp.ones((2, 4, 6))
      >>> w = jax.random.normal(jax.random.key(1), (8, 30))
      >>> tw = jax.random.normal(jax.random.key(2), (6, 30))
      >>> fused = il.linear_forward_kl(h, w, th, tw, reduction="none")
      >>> naive = il.forward_kl(h @ w, th @ tw)
      >>> print(fused.shape, bool(jnp.allclose(fused, naive, rtol=1e-5, atol=1e-6)))
      (2, 4) True

    References:
      Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.
    """
    return _linear_divergence(
        "forward",
        hidden,
        weight,
        target_hidden,
        target_weight,
        beta=0.0,
        temperature=temperature,
        where=where,
        reduction=reduction,
        token_block_size=token_block_size,
        vocab_block_size=vocab_block_size,
        accum_dtype=accum_dtype,
    )


@_distill_doc
@_reraise_jvp("linear_reverse_kl")
def linear_reverse_kl(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    accum_dtype=jnp.float32,
) -> jax.Array:
    r"""Reverse KL from a student head to a teacher head, fused: KL(student || teacher).

    .. math::
        \mathrm{KL}(Q \,\|\, P) = \sum_k q_k (\log q_k - \log p_k), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's: the same
    direction as :func:`reverse_kl` (mode-seeking, as in MiniLLM). Its gradient w.r.t. the
    student logits is :math:`q (\log q - \log p - \mathrm{KL}) / T`.
    {args}
    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h, th = jax.random.normal(jax.random.key(0), (4, 8)), jnp.ones((4, 6))
      >>> w = jax.random.normal(jax.random.key(1), (8, 30))
      >>> tw = jax.random.normal(jax.random.key(2), (6, 30))
      >>> fused = il.linear_reverse_kl(h, w, th, tw)
      >>> naive = jnp.mean(il.reverse_kl(h @ w, th @ tw))
      >>> print(bool(jnp.allclose(fused, naive, rtol=1e-5)))
      True

    References:
      Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", 2024.
    """
    return _linear_divergence(
        "reverse",
        hidden,
        weight,
        target_hidden,
        target_weight,
        beta=1.0,
        temperature=temperature,
        where=where,
        reduction=reduction,
        token_block_size=token_block_size,
        vocab_block_size=vocab_block_size,
        accum_dtype=accum_dtype,
    )


@_distill_doc
@_reraise_jvp("linear_jensen_shannon")
def linear_jensen_shannon(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    accum_dtype=jnp.float32,
) -> jax.Array:
    r"""Generalized Jensen-Shannon divergence between teacher and student heads, fused.

    .. math::
        \mathrm{JSD}_\beta = \beta\, \mathrm{KL}(P \,\|\, M) + (1-\beta)\, \mathrm{KL}(Q \,\|\, M),
        \quad M = \beta P + (1-\beta) Q

    with :math:`P = \mathrm{softmax}(t/T)` the teacher (target) and
    :math:`Q = \mathrm{softmax}(s/T)` the student, as :func:`jensen_shannon`. ``beta=0`` gives
    the forward KL(teacher || student) and ``beta=1`` the reverse KL(student || teacher)
    (the TRL / Liger-Kernel convention for generalized JSD); ``beta=0.5`` is the symmetric JSD.
    ``beta`` is a static Python float in [0, 1].
    {args}
    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h, th = jax.random.normal(jax.random.key(0), (4, 8)), jnp.ones((4, 6))
      >>> w = jax.random.normal(jax.random.key(1), (8, 30))
      >>> tw = jax.random.normal(jax.random.key(2), (6, 30))
      >>> fused = il.linear_jensen_shannon(h, w, th, tw, beta=0.3)
      >>> naive = jnp.mean(il.jensen_shannon(h @ w, th @ tw, beta=0.3))
      >>> print(bool(jnp.allclose(fused, naive, rtol=1e-5)))
      True

    References:
      Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
      Mistakes" (GKD), 2024.
    """
    return _linear_divergence(
        "jsd",
        hidden,
        weight,
        target_hidden,
        target_weight,
        beta=beta,
        temperature=temperature,
        where=where,
        reduction=reduction,
        token_block_size=token_block_size,
        vocab_block_size=vocab_block_size,
        accum_dtype=accum_dtype,
    )
