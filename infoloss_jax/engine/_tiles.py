"""One tile of a blockwise loss: its statistics, their merge, and the cross-entropy's math.

A tile is a ``[rows, classes]`` block of logits (for the divergences, a student block and a
teacher block: :mod:`._pairs`). Every rule about classes and rows lives here, once:

* a class is *excluded* when its logit is ``-inf`` (tested with ``z == -inf``, so a NaN is never
  read as excluded: it poisons its row), when it is padding (at or beyond the true vocabulary
  size) or when a class mask drops it; soft-capping keeps an excluded logit at ``-inf``, and
  label smoothing spreads its mass over the included classes only;
* a row with no included class is *empty*: its logsumexp is taken as 0, its loss is 0 and it
  does not count in a mean;
* a row whose label is ``ignore_index`` gives 0 and no gradient; a label outside ``[0, V)``
  gives NaN in the value and in the gradient.

Statistics are online-logsumexp sums (:class:`Stats`): ``max`` and ``sumexp`` per
distribution, *centered* sums kept relative to the maxima (so that a peaked or extreme row
loses nothing to cancellation against its max), and ``plain`` additive sums. :func:`merge`
combines two tiles along the vocabulary, and :func:`all_reduce` combines the slices of a
vocabulary split over a mesh axis with one ``pmax`` and one ``psum``.

A temperature is applied *after* the shift by the row max: ``(z - max z) / T``, never
``z / T - max(z / T)``, which would put the rounding of ``z / T`` (about ``eps * |z| / T``)
into every log-probability at a low temperature.

The cross-entropy (:data:`CROSS_ENTROPY`, with the token log-probabilities and the entropy as
extra statistics) is the declared loss this module holds; the entropy's statistic and gradient
(:func:`entropy_sum`, :func:`entropy_of`, :func:`entropy_grad`) also serve :func:`il.entropy`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..base._validation import upcast
from ._loss_spec import Coefficients, LossSpec, declare

NEG_INF = -jnp.inf


class Stats(NamedTuple):
    """Per-row statistics of a run of tiles (each entry ``[rows]``, in the accumulation dtype).

    ``max``/``sumexp``: one per distribution (the logits; or the student, then the teacher):
    the row max ``m_d`` of the (scaled) logits and ``S_d = sum exp(z_d - m_d)``.
    ``centered``: ``{(name, w, shifts): sum_k exp(z_w - m_w) * sum_d shifts[d] (z_d - m_d)}``,
    sums weighted by distribution ``w`` of a combination of the centered logits (the entropy's
    ``sum e (z - m)``, the KL's ``sum e_t ((t - m_t) - (s - m_s))``), or with ``w`` None one
    centered logit held by the runs whose ``plain[HIT]`` is 1 (the label's ``z_y - m``);
    :func:`merge` recenters them when a maximum moves. ``plain``: additive sums by name.
    ``argmax``: global index of the first largest logit.
    """

    max: tuple
    sumexp: tuple
    centered: dict
    plain: dict
    argmax: jax.Array | None


class Rows(NamedTuple):
    """Per-row results: the loss, what its gradient needs, and the mean's weights."""

    loss: jax.Array
    lse: tuple  # logsumexp per distribution
    weight: jax.Array  # denominator weight of the mean (0 for rows that do not count)
    coef: dict  # per-row values the tile gradients read (for a unit cotangent)
    entropy: jax.Array | None = None  # the softmax's entropy (cross-entropy with spec.entropy)


class Tile(NamedTuple):
    """What the engine hands a loss for one tile."""

    raw: jax.Array  # [rows, cols] logits (the student's), -inf on excluded classes
    teacher: jax.Array | None  # the teacher's logits (divergences)
    labels: jax.Array | None  # [rows] global labels (cross-entropy)
    class_weights: jax.Array | None  # [cols] (cross-entropy)
    start: jax.Array | int  # global class index of column 0


def included(z: jax.Array) -> jax.Array:
    """True for classes that take part: every logit but ``-inf`` (NaN included, so it poisons)."""
    return z != NEG_INF


def softcap(raw: jax.Array, cap: float | None) -> jax.Array:
    """``cap * tanh(raw / cap)``, keeping ``-inf`` (an excluded class) at ``-inf``."""
    if cap is None:
        return raw
    return jnp.where(raw == NEG_INF, NEG_INF, cap * jnp.tanh(raw / cap))


def softcap_derivative(raw: jax.Array, cap: float | None):
    """d softcap / d raw = 1 - tanh(raw / cap)^2; exactly 0 at an excluded class."""
    if cap is None:
        return 1.0
    return 1.0 - jnp.square(jnp.tanh(raw / cap))


def _shift(m: jax.Array) -> jax.Array:
    """The max to subtract: 0 for an empty row, so -inf - -inf never occurs.

    A ``+inf`` or NaN max is kept: ``+inf - +inf`` is NaN, so such a row is poisoned (never
    read as an overflow to ``+inf``).
    """
    return jnp.where(m == NEG_INF, 0.0, m)


def shifted(z: jax.Array, scale=None) -> tuple[jax.Array, jax.Array]:
    """``(m, sh)``: the row max of ``z * scale`` and ``sh = (z - max z) * scale`` ([rows, cols]).

    The shift comes first, so the largest entry of a row is exactly 0 whatever the scale. An
    empty row has ``m = -inf`` and ``sh = -inf``; ``scale`` (None for 1) must be positive.
    """
    m = lax.stop_gradient(jnp.max(z, axis=1))  # it cancels: only its rounding matters
    sh = z - _shift(m)[:, None]
    if scale is None:
        return m, sh
    return m * scale, sh * scale


def _rescale(m_old: jax.Array, m_new: jax.Array) -> jax.Array:
    """exp(m_old - m_new), 0 for an empty run; NaN maxima propagate."""
    return jnp.where(m_old == NEG_INF, 0.0, jnp.exp(m_old - _shift(m_new)))


def _step(m_old: jax.Array, m_new: jax.Array) -> jax.Array:
    """m_old - m_new, the amount centered logits move by; 0 for an empty run."""
    return jnp.where(m_old == NEG_INF, 0.0, m_old - _shift(m_new))


def _recenter(key, stats: Stats, m_new, ratios):
    """A centered sum of ``stats`` moved from its maxima to ``m_new`` (see :class:`Stats`)."""
    _, w, shifts = key
    step = sum(c * _step(stats.max[d], m_new[d]) for d, c in enumerate(shifts) if c)
    if w is None:  # one logit, not a weighted sum: it moves where the run holds it
        return stats.centered[key] + step * stats.plain[HIT]
    return ratios[w] * (stats.centered[key] + step * stats.sumexp[w])


def lse_of(m: jax.Array, sumexp: jax.Array) -> jax.Array:
    """log sum exp from (max, sumexp); 0 for an empty row (max = -inf)."""
    return jnp.where(m == NEG_INF, 0.0, _shift(m) + jnp.log(sumexp))


def log_sumexp(sumexp: jax.Array) -> jax.Array:
    """log S for a row's ``sumexp`` (0 for an empty row, whose S is 0)."""
    return jnp.log(jnp.where(sumexp == 0, 1.0, sumexp))


def norms_of(stats: Stats) -> tuple:
    """Per row, ``(shift, log S)`` of each distribution in turn: what the log-probabilities of
    a tile are computed from (:func:`tile_log_probs`)."""
    return tuple(
        x for m, e in zip(stats.max, stats.sumexp, strict=True) for x in (_shift(m), log_sumexp(e))
    )


def tile_log_probs(z: jax.Array, shift: jax.Array, log_s: jax.Array) -> jax.Array:
    """log softmax of a tile from its row's ``(shift, log S)`` (see :func:`norms_of`).

    ``(z - max) - log S`` rather than ``z - lse``: with logits near the float limit the
    logsumexp rounds to the max, and its O(1) part would be lost. ``shift`` is already the
    row max with an empty row's taken as 0, so a sweep's loop body selects nothing per row.
    """
    return (z - shift[:, None]) - log_s[:, None]


def _pick(z: jax.Array, local: jax.Array) -> jax.Array:
    """z[row, local[row]] where 0 <= local < width, else 0 (a gather, not a masked sum)."""
    hit = (local >= 0) & (local < z.shape[1])
    index = jnp.clip(local, 0, z.shape[1] - 1)[:, None]
    picked = jnp.take_along_axis(z, index, axis=1, mode="promise_in_bounds")[:, 0]
    return jnp.where(hit, picked, 0.0)


def pick_label(values: jax.Array, labels: jax.Array) -> jax.Array:
    """values[..., label] over the last axis (any leading shape); 0 for an out-of-range label."""
    width = values.shape[-1]
    picked = _pick(values.reshape(-1, width), labels.reshape(-1))
    return picked.reshape(labels.shape)


# ------------------------------------------------------------------------------ merging
def empty(spec: LossSpec, n: int, dtype, zeros) -> Stats:
    """Statistics of no tile at all (``zeros(shape, dtype)`` makes correctly typed zeros)."""
    return spec.loss.empty(spec, n, dtype, zeros)


def empty_stats(n, dtype, zeros, distributions, centered=(), plain=(), argmax=False) -> Stats:
    z = zeros((n,), dtype)
    return Stats(
        (z + NEG_INF,) * distributions,
        (z,) * distributions,
        {key: z for key in centered},
        {name: z for name in plain},
        zeros((n,), jnp.int32) if argmax else None,
    )


def merge(a: Stats, b: Stats) -> Stats:
    """Statistics of two runs of tiles side by side along the vocabulary (a's argmax wins ties)."""
    maxima = tuple(jnp.maximum(x, y) for x, y in zip(a.max, b.max, strict=True))
    ra = tuple(_rescale(x, m) for x, m in zip(a.max, maxima, strict=True))
    rb = tuple(_rescale(y, m) for y, m in zip(b.max, maxima, strict=True))
    sumexp = tuple(x * p + y * q for x, y, p, q in zip(a.sumexp, b.sumexp, ra, rb, strict=True))
    centered = {
        key: _recenter(key, a, maxima, ra) + _recenter(key, b, maxima, rb) for key in a.centered
    }
    plain = {k: a.plain[k] + b.plain[k] for k in a.plain}
    argmax = a.argmax
    if argmax is not None:
        assert b.argmax is not None  # both runs come from one spec
        argmax = jnp.where(b.max[0] > a.max[0], b.argmax, argmax)
    return Stats(maxima, sumexp, centered, plain, argmax)


def all_reduce(stats: Stats, axis_name) -> Stats:
    """Merges the slices' statistics across ``axis_name``: one ``pmax`` and one ``psum``."""
    if axis_name is None:
        return stats
    local = stats.max
    maxima = tuple(lax.stop_gradient(lax.pmax(jnp.stack(local), axis_name))) if local else local
    ratios = [_rescale(x, m) for x, m in zip(local, maxima, strict=True)]
    parts = [s * r for s, r in zip(stats.sumexp, ratios, strict=True)]
    keys = list(stats.centered)
    parts += [_recenter(key, stats, maxima, ratios) for key in keys]
    parts += list(stats.plain.values())
    summed = list(lax.psum(jnp.stack(parts), axis_name)) if parts else []
    k, kc = len(local), len(keys)
    sumexp = tuple(summed[:k])
    centered = dict(zip(keys, summed[k : k + kc], strict=True))
    plain = dict(zip(stats.plain, summed[k + kc :], strict=True))
    argmax = stats.argmax
    if argmax is not None:
        big = jnp.iinfo(jnp.int32).max
        argmax = lax.pmin(jnp.where(local[0] == maxima[0], argmax, big), axis_name)
    return Stats(maxima, sumexp, centered, plain, argmax)


# ------------------------------------------------------------------------------ the entropy
ENTROPY_KEY = ("entropy", 0, (1,))
TARGET_KEY = ("target", None, (1,))  # the label's shifted logit, (z_y - m) / T
HIT = "hit"  # 1 where the run holds the row's label


def entropy_sum(sh: jax.Array, exact: bool = True) -> jax.Array:
    """``sum exp(sh) sh`` per row, for shifted logits ``sh`` (the entropy's centered sum).

    A shifted logit of ``-inf`` (an excluded class, or one so far below the max that the
    difference overflows) adds exactly 0; ``exact=False`` assumes there is none.
    """
    terms = jnp.exp(sh) * sh
    if exact:
        terms = jnp.where(sh == NEG_INF, 0.0, terms)
    return jnp.sum(terms, axis=1)


def entropy_of(sumexp: jax.Array, centered: jax.Array) -> jax.Array:
    """H = log S - C / S from a row's ``S = sum e`` and ``C = sum e (z - m)``; 0 if empty."""
    safe = jnp.where(sumexp == 0, 1.0, sumexp)
    return jnp.log(safe) - centered / safe


def entropy_grad(log_q: jax.Array, entropy: jax.Array) -> jax.Array:
    r"""dH/dz of H(softmax(z)) from the tile's log-probabilities: :math:`-q (\log q + H)`.

    Exactly 0 where ``log_q`` is ``-inf`` (no ``0 * inf``).
    """
    surprise = jnp.where(log_q == NEG_INF, 0.0, log_q + entropy[:, None])
    return -jnp.exp(log_q) * surprise


# ------------------------------------------------------------------------------ cross-entropy
def _masked_pick(x, local):
    """x[row, local[row]] as a masked sum (partitions under explicit sharding types)."""
    cols = lax.broadcasted_iota(local.dtype, (1, x.shape[-1]), 1)
    return jnp.sum(jnp.where(cols == local[:, None], x, 0.0), axis=1)


def _scale(spec: LossSpec, coefs: Coefficients, dtype):
    """The inverse temperature as a multiplier, or None when the spec is not scaled."""
    return coefs.inverse_temperature.astype(dtype) if spec.scaled else None


def ce_logits(raw: jax.Array, spec: LossSpec, coefs: Coefficients) -> jax.Array:
    """The cross-entropy's logits: soft-capped, then divided by the temperature.

    The order a sampler applies them in (the model's soft cap, then the sampling temperature),
    so token log-probabilities are those of the distribution that was sampled.
    """
    z = softcap(raw, spec.softcap)
    scale = _scale(spec, coefs, z.dtype)
    return z if scale is None else z * scale


class _CrossEntropyParts(NamedTuple):
    stats: Stats
    sh: jax.Array  # the tile's shifted, scaled logits (its log-probabilities plus log S)


def _ce_parts(raw, labels, class_weights, start, spec, coefs, explicit=False, source=None):
    """Statistics of one cross-entropy tile of raw logits whose first column is class ``start``.

    The soft cap comes first, then the shift by the row max, then the temperature. ``explicit``
    picks the label's logit with a masked sum instead of a gather. ``source``: ``(raw0,
    rebuild)`` with ``raw = rebuild(raw0)`` (an upcast, say), when the caller holds ``raw0``;
    the branch for excluded classes then rebuilds ``raw`` itself, so that no upcast ``[N, V]``
    copy has to be written for it.
    """
    z = softcap(raw, spec.softcap)
    scale = _scale(spec, coefs, z.dtype)
    m, sh = shifted(z, scale)
    sumexp = jnp.sum(jnp.exp(sh), axis=1)
    local = labels - start
    if class_weights is not None:
        class_weights = class_weights.astype(z.dtype)
    pick = _masked_pick if explicit else _pick
    # The label's logit relative to the max, picked from the very values S sums: the label at
    # a peaked row's max gives exactly log S, at any scale and temperature.
    target = pick(sh, local)
    plain = {HIT: ((local >= 0) & (local < z.shape[1])).astype(z.dtype)}
    if spec.class_weights:
        assert class_weights is not None  # the spec says they are given
        plain["label_weight"] = pick(jnp.broadcast_to(class_weights, z.shape), local)
    if spec.smoothing:
        sums = _smoothing(z, sumexp, class_weights, spec.softcap, source)
        if scale is not None:
            sums["sum_z"] = sums["sum_z"] * scale
        plain.update(sums)
    argmax = jnp.argmax(z, axis=1).astype(jnp.int32) + start
    centered: dict = {TARGET_KEY: target}
    if spec.entropy:
        centered[ENTROPY_KEY] = entropy_sum(sh)
    stats = Stats((m,), (sumexp,), centered, plain, argmax.astype(jnp.int32))
    return _CrossEntropyParts(stats, sh)


def ce_tile(raw, labels, class_weights, start, spec, coefs, explicit=False, source=None) -> Stats:
    """Statistics of one cross-entropy tile (see :func:`_ce_parts`)."""
    return _ce_parts(raw, labels, class_weights, start, spec, coefs, explicit, source).stats


def _smoothing(z, sumexp, class_weights, cap, source=None):
    """The smoothing sums of a tile: in plain form, unless a row needs the exact form.

    The plain sum of a row's logits is finite exactly when no class of the row is excluded
    (barring an overflow, which the exact form repeats); it is -inf, or NaN with class weights,
    when one is. A row whose ``sumexp`` is NaN holds a NaN or ``+inf`` logit and is poisoned
    either way, so it never sends the tile to the exact form. The test costs nothing beyond the
    plain sums themselves, which XLA fuses into one reduction.
    """
    sums = _smoothing_sums_plain((z,), class_weights)
    needs_exact = ~jnp.isfinite(sums["sum_z"]) & ~jnp.isnan(sumexp)
    if source is None:
        return lax.cond(jnp.any(needs_exact), _smoothing_sums, _given, (z,), class_weights, sums)
    raw0, rebuild = source
    exact = functools.partial(_smoothing_sums_rebuilt, lambda r: softcap(rebuild(r), cap))
    return lax.cond(jnp.any(needs_exact), exact, _given, (raw0,), class_weights, sums)


def _smoothing_sums_rebuilt(rebuild, raws, class_weights, sums):
    (raw,) = raws
    return _smoothing_sums((rebuild(raw),), class_weights, sums)


def _given(zs, class_weights, sums):
    del zs, class_weights
    return sums


def _smoothing_sums(zs, class_weights, sums=None):
    """Sums over the included classes: of c_k z_k, of 1 (K) and of c_k (c = 1 if None)."""
    del sums  # the plain sums, which this exact form replaces
    (z,) = zs
    sums_of = _included_sums_separately if _under_a_mesh() else _included_sums
    count, sum_weight, sum_z = sums_of(z, class_weights)
    sums = {"count": count, "sum_z": sum_z}
    if class_weights is not None:
        sums["sum_weight"] = sum_weight
    return sums


@jax.custom_jvp
def _included_sums(z, class_weights):
    """``(K, sum c_k, sum c_k z_k)`` over the included classes of each row, in one reduction.

    One variadic reduction: XLA's CPU backend fuses its masks into the loop, where separate
    masked sums would each write an ``[N, V]`` mask first. (Its derivative is a rule of its own
    because JAX cannot differentiate a variadic reduction with constant operands.)
    """
    keep = included(z)
    weight = keep.astype(z.dtype)
    if class_weights is not None:
        weight = weight * class_weights
    operands = (keep.astype(z.dtype), weight, jnp.where(keep, z, 0.0) * weight)
    zero = jnp.zeros((), z.dtype)
    return tuple(lax.reduce(operands, (zero,) * 3, _add_pairs, (1,)))


def _under_a_mesh() -> bool:
    """True inside ``jax.set_mesh`` of several devices, where arrays may be sharded."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and mesh.size > 1


def _included_sums_separately(z, class_weights):
    """:func:`_included_sums` as ordinary masked sums: XLA's SPMD partitioner splits these over
    a sharded class axis, where it gathers the variadic reduction's operands instead."""
    keep = included(z)
    weight = keep.astype(z.dtype) if class_weights is None else jnp.where(keep, class_weights, 0.0)
    count = jnp.sum(keep.astype(z.dtype), axis=1)
    return count, jnp.sum(weight, axis=1), jnp.sum(jnp.where(keep, z, 0.0) * weight, axis=1)


def _add_pairs(a, b):
    return tuple(x + y for x, y in zip(a, b, strict=True))


@_included_sums.defjvp
def _included_sums_jvp(primals, tangents):
    z, class_weights = primals
    dz, dweights = tangents
    sums = _included_sums(z, class_weights)
    keep = included(z)
    weight = 1.0 if class_weights is None else class_weights
    d_sum_z = jnp.where(keep, dz, 0.0) * weight
    d_sum_weight = jnp.zeros_like(sums[1])
    if class_weights is not None:
        d_sum_z = d_sum_z + jnp.where(keep, z, 0.0) * dweights
        d_sum_weight = jnp.sum(jnp.where(keep, dweights, 0.0), axis=1)
    return sums, (jnp.zeros_like(sums[0]), d_sum_weight, jnp.sum(d_sum_z, axis=1))


def _smoothing_sums_plain(zs, class_weights):
    """The same when no class is excluded: plain reductions, which XLA fuses."""
    (z,) = zs
    sum_z = jnp.sum(z if class_weights is None else z * class_weights, axis=1)
    zero = jnp.zeros_like(sum_z)  # typed like the rows (sharding, mesh axes)
    sums = {"count": (zero + z.shape[1]).astype(z.dtype), "sum_z": sum_z.astype(z.dtype)}
    if class_weights is not None:
        sums["sum_weight"] = (zero + jnp.sum(class_weights)).astype(z.dtype)
    return sums


def ce_rows(
    stats: Stats, labels, row_mask, coefs: Coefficients, spec: LossSpec, empty_row_loss=0.0
) -> Rows:
    r"""Per-row cross-entropy from the merged statistics of the whole vocabulary.

    .. math::
        \ell = (1-\varepsilon)\, c_y (\mathrm{lse} - z_y)
             + \frac{\varepsilon}{K} \sum_{k \in \text{incl}} c_k (\mathrm{lse} - z_k)
             + \lambda\, \mathrm{lse}^2

    A label on an excluded class gives ``+inf``; an empty row gives ``empty_row_loss`` (0 for
    the cross-entropy, ``+inf`` for the token log-probabilities, whose label is then on an
    excluded class), with a zero gradient either way.
    """
    (m,), (sumexp,) = stats.max, stats.sumexp
    p = stats.plain
    lse = lse_of(m, sumexp)
    label_weight = p["label_weight"] if spec.class_weights else jnp.ones_like(lse)
    eps, zc = coefs.label_smoothing.astype(lse.dtype), coefs.z_loss.astype(lse.dtype)
    keep = 1.0 - eps if spec.smoothing else 1.0
    # lse - z_y as log S - (z_y - m): no logsumexp near the float limit cancels against the
    # label's logit.
    nll = log_sumexp(sumexp) - stats.centered[TARGET_KEY]
    loss = keep * label_weight * nll
    coef_p = keep * label_weight
    coef_s = jnp.zeros_like(lse)
    if spec.smoothing:
        count = jnp.maximum(p["count"], 1.0)
        sum_weight = p["sum_weight"] if spec.class_weights else p["count"]
        loss = loss + eps / count * (sum_weight * lse - p["sum_z"])
        coef_s = eps / count
        coef_p = coef_p + coef_s * sum_weight
    if spec.z_loss:
        loss = loss + zc * jnp.square(lse)
        coef_p = coef_p + 2.0 * zc * lse
    ignored = jnp.zeros(labels.shape, bool)
    if spec.ignore_index is not None:
        ignored = labels == spec.ignore_index
    in_range = (labels >= 0) & (labels < spec.vocab_size)
    nonempty = m != NEG_INF
    kept = ~ignored if row_mask is None else ~ignored & row_mask
    counts = kept & nonempty
    # An out-of-range label poisons its row's value and, through the coefficients, its gradient.
    poison = jnp.where(in_range | ignored, 0.0, jnp.nan)
    loss = jnp.where(counts, loss + poison, 0.0)
    if empty_row_loss != 0.0:
        loss = jnp.where(kept & ~nonempty, empty_row_loss + poison, loss)
    scale = jnp.where(counts, 1.0, 0.0) + poison
    coef = {"p": coef_p * scale, "y": keep * label_weight * scale, "s": coef_s * scale}
    coef.update(shift0=_shift(m), log_sumexp0=log_sumexp(sumexp))
    entropy = None
    if spec.entropy:
        centered = stats.centered[ENTROPY_KEY]
        entropy = jnp.where(counts, entropy_of(sumexp, centered) + poison, 0.0)
        coef.update(h=scale, entropy=entropy)
    return Rows(loss, (lse,), jnp.where(counts, label_weight, 0.0), coef, entropy)


def ce_tile_grad(z, raw, labels, start, class_weights, log_q, coef, spec: LossSpec):
    """d(sum_i g_i loss_i) / d(raw logits) of one tile; ``coef`` already holds g_i.

    With q = softmax(z): coef_p q_k - coef_y [k = y] - coef_s c_k [k included], times the
    soft cap's derivative, where coef_p = (1-eps) c_y + eps/K sum c + 2 lambda lse. With the
    entropy H (``spec.entropy``) its cotangent ``coef_h`` adds dH/dz_k = -q_k (log q_k + H).
    ``z`` holds the tile's (soft-capped) logits, -inf where excluded, and ``log_q`` its
    log-probabilities ``[rows, classes]``.
    """
    inc = included(z)
    cols = lax.broadcasted_iota(jnp.int32, z.shape, 1) + start
    q = jnp.exp(log_q)
    dz = coef["p"][:, None] * q
    dz = dz - jnp.where((cols == labels[:, None]) & inc, coef["y"][:, None], 0.0)
    if spec.entropy:
        dz = dz + coef["h"][:, None] * entropy_grad(log_q, coef["entropy"])
    if spec.smoothing:
        # (z > -inf), not `inc`: a separate expression keeps XLA from materializing one [N, V]
        # mask shared by the forward reduction and this gradient.
        keep = (z > -jnp.inf).astype(z.dtype)
        weight = keep if class_weights is None else keep * class_weights
        dz = dz - coef["s"][:, None] * weight
    return dz * softcap_derivative(raw, spec.softcap)


class FullTile(NamedTuple):
    """The cross-entropy on one full ``[rows, V]`` tile: its rows and what its gradient reads."""

    rows: Rows
    log_q: jax.Array  # the tile's log-probabilities
    z: jax.Array  # the soft-capped logits (unscaled), -inf where excluded
    raw: jax.Array  # the raw logits in at least float32


def ce_full_rows(raw, labels, class_weights, coefs, spec: LossSpec, explicit=False) -> FullTile:
    """The cross-entropy (or its token log-probabilities, by ``spec.kind``) on one full
    ``[rows, V]`` tile of raw logits: no merge, and log-probabilities computed from the very
    shifted logits its statistics summed. Half-precision ``raw`` is computed in float32."""
    wide = upcast(raw)
    parts = _ce_parts(wide, labels, class_weights, 0, spec, coefs, explicit, (raw, upcast))
    rows = ce_rows(parts.stats, labels, None, coefs, spec, spec.loss.empty_row_loss)
    log_q = parts.sh - rows.coef["log_sumexp0"][:, None]
    return FullTile(rows, log_q, softcap(wide, spec.softcap), wide)


def ce_full_tile(raw, labels, class_weights, coefs: Coefficients, spec: LossSpec, explicit=False):
    """``(rows, d(sum_i loss_i) / d raw)`` of the cross-entropy on one full ``[rows, V]`` tile.

    The core integer-label loss and its closed-form gradient both come from here, so their
    options are the fused and sharded options. The gradient is with respect to ``raw`` (the
    temperature's chain factor included).
    """
    full = ce_full_rows(raw, labels, class_weights, coefs, spec, explicit)
    grad = ce_tile_grad(
        full.z, full.raw, labels, 0, class_weights, full.log_q, full.rows.coef, spec
    )
    if spec.scaled:
        grad = grad * coefs.inverse_temperature.astype(grad.dtype)
    return full.rows, grad


class _CrossEntropy:
    """The declared cross-entropy (integer labels, with the token log-probabilities and the
    entropy as its per-row extras): what the engine calls for each step of a sweep."""

    name = "cross_entropy"
    pair = False
    two_pass = False
    empty_row_loss = 0.0  # a row with no class left gives 0

    @staticmethod
    def empty(spec: LossSpec, n, dtype, zeros) -> Stats:
        centered = (TARGET_KEY, ENTROPY_KEY) if spec.entropy else (TARGET_KEY,)
        names = [HIT]
        if spec.class_weights:
            names.append("label_weight")
        if spec.smoothing:
            names += ["sum_z", "count"] + (["sum_weight"] if spec.class_weights else [])
        return empty_stats(n, dtype, zeros, 1, centered, names, argmax=True)

    @staticmethod
    def tile_stats(tile: Tile, spec: LossSpec, coefs: Coefficients, explicit=False) -> Stats:
        """``explicit``: pick the label's logit with a masked sum (inside a Pallas kernel)."""
        return ce_tile(tile.raw, tile.labels, tile.class_weights, tile.start, spec, coefs, explicit)

    def rows_of(self, stats: Stats, labels, row_mask, spec: LossSpec, coefs: Coefficients) -> Rows:
        return ce_rows(stats, labels, row_mask, coefs, spec, self.empty_row_loss)

    @staticmethod
    def row_values(rows: Rows, g, g_entropy, spec: LossSpec, labels) -> dict:
        """What the tile gradients read per row, with the cotangents folded in."""
        row = {k: rows.coef[k] * g for k in ("p", "y", "s")}
        row.update(labels=labels, shift0=rows.coef["shift0"], log_sumexp0=rows.coef["log_sumexp0"])
        if spec.entropy:
            g_entropy = jnp.zeros_like(g) if g_entropy is None else g_entropy
            row.update(h=rows.coef["h"] * g_entropy, entropy=rows.coef["entropy"])
        return row

    @staticmethod
    def tile_grads(tile: Tile, row: dict, spec: LossSpec, coefs: Coefficients, teacher: bool):
        """(d raw, None): the gradient of one tile, rows of ``row`` already sliced."""
        del teacher
        z = softcap(tile.raw, spec.softcap)
        scaled = ce_logits(tile.raw, spec, coefs)
        log_q = tile_log_probs(scaled, row["shift0"], row["log_sumexp0"])
        grad = ce_tile_grad(
            z, tile.raw, row["labels"], tile.start, tile.class_weights, log_q, row, spec
        )
        return grad, None


class _TokenLogProbs(_CrossEntropy):
    """The token log-probabilities: the cross-entropy rows read as ``-log q(label)``, where a
    label in a row with no class left is on an excluded class: log-probability ``-inf``."""

    name = "token_log_probs"
    empty_row_loss = jnp.inf


CROSS_ENTROPY = declare(_CrossEntropy())
TOKEN_LOG_PROBS = declare(_TokenLogProbs())
