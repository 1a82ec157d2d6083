"""One tile of a blockwise loss: its statistics, their merge, and its logit gradient.

A tile is a ``[rows, classes]`` block of logits (for the divergences, a student block ``s`` and a
teacher block ``t``). Every rule about classes and rows lives here, once:

* a class is *excluded* when its logit is ``-inf`` (tested with ``z == -inf``, so a NaN is never
  read as excluded: it poisons its row), when it is padding (at or beyond the true vocabulary
  size) or when a class mask drops it; soft-capping keeps an excluded logit at ``-inf``, and
  label smoothing spreads its mass over the included classes only;
* a row with no included class is *empty*: its logsumexp is taken as 0, its loss is 0 and it
  does not count in a mean;
* a row whose label is ``ignore_index`` gives 0 and no gradient; a label outside ``[0, V)``
  gives NaN in the value and in the gradient.

Statistics are online-logsumexp sums: ``max`` and ``sumexp`` per distribution, ``scaled`` sums
rescaled with their distribution's max, and ``plain`` sums. :func:`merge` combines two tiles
along the vocabulary, and :func:`all_reduce` combines the slices of a vocabulary split over a
mesh axis with one ``pmax`` and one ``psum``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..base._validation import upcast
from ._loss_spec import Coefficients, LossSpec

NEG_INF = -jnp.inf


class Stats(NamedTuple):
    """Per-row statistics of a run of tiles (each entry ``[rows]``, in the accumulation dtype).

    ``max``/``sumexp``: one per distribution (the logits; or the student, then the teacher).
    ``scaled``: the divergences' ``rev`` (student-rescaled) and ``fwd`` (teacher-rescaled) sums.
    ``plain``: additive sums by name. ``argmax``: global index of the first largest logit.
    ``centered``: the entropy's ``sum exp(z - max) (z - max)``, kept relative to the max so that
    a peaked row's entropy is not lost to cancellation against ``max``.
    """

    max: tuple
    sumexp: tuple
    scaled: tuple
    plain: dict
    argmax: jax.Array | None
    centered: tuple = ()


class Rows(NamedTuple):
    """Per-row results: the loss, what its gradient needs, and the mean's weights."""

    loss: jax.Array
    lse: tuple  # logsumexp per distribution
    weight: jax.Array  # denominator weight of the mean (0 for rows that do not count)
    coef: dict  # per-row gradient coefficients for a unit cotangent
    entropy: jax.Array | None = None  # the softmax's entropy (cross-entropy with spec.entropy)


def included(z: jax.Array) -> jax.Array:
    """True for classes that take part: every logit but ``-inf`` (NaN included, so it poisons)."""
    return z != NEG_INF


def softcap(raw: jax.Array, cap: float | None) -> jax.Array:
    """``cap * tanh(raw / cap)``, keeping ``-inf`` (an excluded class) at ``-inf``."""
    if cap is None:
        return raw
    return jnp.where(raw == NEG_INF, NEG_INF, cap * jnp.tanh(raw / cap))


def ce_logits(raw: jax.Array, spec: LossSpec, coefs: Coefficients) -> jax.Array:
    """The cross-entropy's logits: soft-capped, then divided by the temperature.

    The order a sampler applies them in (the model's soft cap, then the sampling temperature),
    so token log-probabilities are those of the distribution that was sampled.
    """
    z = softcap(raw, spec.softcap)
    return z * coefs.inverse_temperature.astype(z.dtype) if spec.scaled else z


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


def _rescale(m_old: jax.Array, m_new: jax.Array) -> jax.Array:
    """exp(m_old - m_new), 0 for an empty run; NaN maxima propagate."""
    return jnp.where(m_old == NEG_INF, 0.0, jnp.exp(m_old - _shift(m_new)))


def _recenter(centered, sumexp, m_old, m_new, ratio):
    """``sum exp(z - m_new) (z - m_new)`` from the same sum about ``m_old`` (0 for an empty run)."""
    step = jnp.where(m_old == NEG_INF, 0.0, m_old - _shift(m_new))
    return ratio * (centered + step * sumexp)


def lse_of(m: jax.Array, sumexp: jax.Array) -> jax.Array:
    """log sum exp from (max, sumexp); 0 for an empty row (max = -inf)."""
    return jnp.where(m == NEG_INF, 0.0, _shift(m) + jnp.log(sumexp))


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


# ------------------------------------------------------------------------------ statistics
def empty(spec: LossSpec, n: int, dtype, zeros) -> Stats:
    """Statistics of no tile at all (``zeros(shape, dtype)`` makes correctly typed zeros)."""
    z = zeros((n,), dtype)
    k = 2 if spec.divergence else 1
    names = plain_names(spec)
    argmax = None if spec.divergence else zeros((n,), jnp.int32)
    scaled = (z, z) if spec.divergence else ()
    centered = (z,) if spec.entropy else ()
    plain = {name: z for name in names}
    return Stats((z + NEG_INF,) * k, (z,) * k, scaled, plain, argmax, centered)


def plain_names(spec: LossSpec) -> tuple:
    if spec.divergence:
        return ()
    names = ["target"]
    if spec.class_weights:
        names.append("label_weight")
    if spec.smoothing:
        names += ["sum_z", "count"] + (["sum_weight"] if spec.class_weights else [])
    return tuple(names)


def _masked_pick(x, local):
    """x[row, local[row]] as a masked sum (partitions under explicit sharding types)."""
    cols = lax.broadcasted_iota(local.dtype, (1, x.shape[-1]), 1)
    return jnp.sum(jnp.where(cols == local[:, None], x, 0.0), axis=1)


def ce_tile(z, labels, class_weights, start, spec: LossSpec, explicit=False, source=None) -> Stats:
    """Statistics of one cross-entropy tile ``z`` whose first column is global class ``start``.

    ``explicit`` picks the label's logit with a masked sum instead of a gather. ``source``:
    ``(raw, rebuild)`` with ``z = rebuild(raw)``, when the caller holds the logits ``z`` was made
    of; the branch for excluded classes then takes ``raw`` and rebuilds ``z`` itself, so that no
    upcast or soft-capped ``[N, V]`` copy has to be written for it.
    """
    m = jnp.max(z, axis=1)
    shifted = z - _shift(m)[:, None]
    sumexp = jnp.sum(jnp.exp(shifted), axis=1)
    local = labels - start
    if class_weights is not None:
        class_weights = class_weights.astype(z.dtype)
    pick = _masked_pick if explicit else _pick
    plain = {"target": pick(z, local)}
    if spec.class_weights:
        assert class_weights is not None  # the spec says they are given
        plain["label_weight"] = pick(jnp.broadcast_to(class_weights, z.shape), local)
    if spec.smoothing:
        plain.update(_smoothing(z, sumexp, class_weights, source))
    argmax = jnp.argmax(z, axis=1).astype(jnp.int32) + start
    centered = ()
    if spec.entropy:
        terms = jnp.where(included(z), jnp.exp(shifted) * shifted, 0.0)
        centered = (jnp.sum(terms, axis=1),)
    return Stats((m,), (sumexp,), (), plain, argmax.astype(jnp.int32), centered)


def _smoothing(z, sumexp, class_weights, source=None):
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
    raw, rebuild = source
    exact = functools.partial(_smoothing_sums_rebuilt, rebuild)
    return lax.cond(jnp.any(needs_exact), exact, _given, (raw,), class_weights, sums)


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


def divergence_tile(s, t) -> Stats:
    """Statistics of one student tile ``s`` and teacher tile ``t`` (temperature applied)."""
    s_max, t_max = jnp.max(s, axis=1), jnp.max(t, axis=1)
    s_exp = jnp.exp(s - _shift(s_max)[:, None])
    t_exp = jnp.exp(t - _shift(t_max)[:, None])
    # Only classes a distribution keeps count in its own sum: a class -inf in both gives 0.
    rev = jnp.sum(jnp.where(included(s), s_exp * (s - t), 0.0), axis=1)
    fwd = jnp.sum(jnp.where(included(t), t_exp * (t - s), 0.0), axis=1)
    sums = (jnp.sum(s_exp, axis=1), jnp.sum(t_exp, axis=1))
    return Stats((s_max, t_max), sums, (rev, fwd), {}, None)


def _log_mixture(log_p, log_q, coefs: Coefficients):
    """log(beta p + (1 - beta) q)."""
    beta = coefs.beta.astype(log_p.dtype)
    return jnp.logaddexp(jnp.log(beta) + log_p, jnp.log1p(-beta) + log_q)


def jensen_shannon_tile(s, t, s_lse, t_lse, coefs: Coefficients) -> Stats:
    """Second Jensen-Shannon pass: sum p log(p/m) and sum q log(q/m) over the tile."""
    log_q, log_p = s - s_lse[:, None], t - t_lse[:, None]
    log_m = _log_mixture(log_p, log_q, coefs)
    # Tested on the log-probabilities: a class so far below the max that its difference
    # overflows to -inf has probability 0 and counts like an excluded one (0 log 0 = 0).
    p_term = jnp.where(included(log_p), jnp.exp(log_p) * (log_p - log_m), 0.0)
    q_term = jnp.where(included(log_q), jnp.exp(log_q) * (log_q - log_m), 0.0)
    plain = {"p_term": jnp.sum(p_term, axis=1), "q_term": jnp.sum(q_term, axis=1)}
    return Stats((), (), (), plain, None)


def merge(a: Stats, b: Stats) -> Stats:
    """Statistics of two runs of tiles side by side along the vocabulary (a's argmax wins ties)."""
    maxima = tuple(jnp.maximum(x, y) for x, y in zip(a.max, b.max, strict=True))
    ra = tuple(_rescale(x, m) for x, m in zip(a.max, maxima, strict=True))
    rb = tuple(_rescale(y, m) for y, m in zip(b.max, maxima, strict=True))
    sumexp = tuple(x * p + y * q for x, y, p, q in zip(a.sumexp, b.sumexp, ra, rb, strict=True))
    scaled = tuple(x * p + y * q for x, y, p, q in zip(a.scaled, b.scaled, ra, rb, strict=False))
    plain = {k: a.plain[k] + b.plain[k] for k in a.plain}
    argmax = a.argmax
    if argmax is not None:
        assert b.argmax is not None  # both runs come from one spec
        argmax = jnp.where(b.max[0] > a.max[0], b.argmax, argmax)
    centered = tuple(
        _recenter(x, e, m, big, p) + _recenter(y, f, n, big, q)
        for x, y, e, f, m, n, big, p, q in zip(
            a.centered, b.centered, a.sumexp, b.sumexp, a.max, b.max, maxima, ra, rb, strict=False
        )
    )
    return Stats(maxima, sumexp, scaled, plain, argmax, centered)


def all_reduce(stats: Stats, axis_name) -> Stats:
    """Merges the slices' statistics across ``axis_name``: one ``pmax`` and one ``psum``."""
    if axis_name is None:
        return stats
    local = stats.max
    maxima = tuple(lax.stop_gradient(lax.pmax(jnp.stack(local), axis_name))) if local else local
    ratios = [_rescale(x, m) for x, m in zip(local, maxima, strict=True)]
    parts = [s * r for s, r in zip(stats.sumexp, ratios, strict=True)]
    parts += [s * r for s, r in zip(stats.scaled, ratios, strict=False)]
    parts += [
        _recenter(c, e, m, big, r)
        for c, e, m, big, r in zip(
            stats.centered, stats.sumexp, local, maxima, ratios, strict=False
        )
    ]
    parts += list(stats.plain.values())
    summed = list(lax.psum(jnp.stack(parts), axis_name)) if parts else []
    k, ks, kc = len(local), len(stats.scaled), len(stats.centered)
    sumexp, scaled = tuple(summed[:k]), tuple(summed[k : k + ks])
    centered = tuple(summed[k + ks : k + ks + kc])
    plain = dict(zip(stats.plain, summed[k + ks + kc :], strict=True))
    argmax = stats.argmax
    if argmax is not None:
        big = jnp.iinfo(jnp.int32).max
        argmax = lax.pmin(jnp.where(local[0] == maxima[0], argmax, big), axis_name)
    return Stats(maxima, sumexp, scaled, plain, argmax, centered)


# ------------------------------------------------------------------------------ rows
def ce_rows(stats: Stats, labels, row_mask, coefs: Coefficients, spec: LossSpec) -> Rows:
    r"""Per-row cross-entropy from the merged statistics of the whole vocabulary.

    .. math::
        \ell = (1-\varepsilon)\, c_y (\mathrm{lse} - z_y)
             + \frac{\varepsilon}{K} \sum_{k \in \text{incl}} c_k (\mathrm{lse} - z_k)
             + \lambda\, \mathrm{lse}^2
    """
    (m,), (sumexp,) = stats.max, stats.sumexp
    p = stats.plain
    lse = lse_of(m, sumexp)
    label_weight = p["label_weight"] if spec.class_weights else jnp.ones_like(lse)
    eps, zc = coefs.label_smoothing.astype(lse.dtype), coefs.z_loss.astype(lse.dtype)
    keep = 1.0 - eps if spec.smoothing else 1.0
    loss = keep * label_weight * (lse - p["target"])
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
    counts = ~ignored & (m != NEG_INF)  # not ignored, not empty
    if row_mask is not None:
        counts = counts & row_mask
    # An out-of-range label poisons its row's value and, through the coefficients, its gradient.
    poison = jnp.where(in_range | ignored, 0.0, jnp.nan)
    loss = jnp.where(counts, loss + poison, 0.0)
    scale = jnp.where(counts, 1.0, 0.0) + poison
    coef = {"p": coef_p * scale, "y": keep * label_weight * scale, "s": coef_s * scale}
    entropy = None
    if spec.entropy:
        (centered,) = stats.centered
        safe = jnp.where(m == NEG_INF, 1.0, sumexp)
        entropy = jnp.where(counts, jnp.log(safe) - centered / safe + poison, 0.0)
        coef.update(h=scale, entropy=entropy)
    return Rows(loss, (lse,), jnp.where(counts, label_weight, 0.0), coef, entropy)


def divergence_rows(stats: Stats, row_mask, coefs: Coefficients, spec: LossSpec) -> Rows:
    """Per-row divergence from merged statistics (and, for the JSD, its second-pass sums)."""
    s_empty, t_empty = (m == NEG_INF for m in stats.max)
    s_lse, t_lse = (lse_of(m, e) for m, e in zip(stats.max, stats.sumexp, strict=True))
    rev, fwd = stats.scaled
    s_sum, t_sum = stats.sumexp
    kl_q = jnp.zeros_like(s_lse)
    if spec.kind == "forward_kl":
        loss = jnp.where(t_empty, 0.0, fwd / jnp.where(t_empty, 1.0, t_sum) - t_lse + s_lse)
    elif spec.kind == "reverse_kl":
        loss = jnp.where(s_empty, 0.0, rev / jnp.where(s_empty, 1.0, s_sum) - s_lse + t_lse)
        kl_q = loss
    else:
        beta = coefs.beta.astype(s_lse.dtype)
        p_term, kl_q = stats.plain["p_term"], stats.plain["q_term"]
        loss = beta * p_term + (1.0 - beta) * kl_q
    weight = jnp.ones_like(loss) if row_mask is None else row_mask.astype(loss.dtype)
    loss = loss if row_mask is None else jnp.where(row_mask, loss, 0.0)
    coef = {"kl_q": kl_q, "p_term": stats.plain.get("p_term"), "keep": weight}
    return Rows(loss, (s_lse, t_lse), weight, coef)


# ------------------------------------------------------------------------------ gradients
def log_softmax_of(z: jax.Array, stats: Stats) -> jax.Array:
    """log softmax of a tile from its row's merged ``(max, sumexp)``, exact for extreme logits.

    ``(z - max) - log sumexp`` rather than ``z - lse``: with logits near the float limit the
    logsumexp rounds to the max, and its O(1) part would be lost.
    """
    (m,), (sumexp,) = stats.max, stats.sumexp
    log_sumexp = jnp.log(jnp.where(sumexp == 0, 1.0, sumexp))
    return (z - _shift(m)[:, None]) - log_sumexp[:, None]


def ce_tile_grad(z, raw, labels, start, class_weights, lse, coef, spec: LossSpec):
    """d(sum_i g_i loss_i) / d(raw logits) of one tile; ``coef`` already holds g_i.

    With q = softmax(z): coef_p q_k - coef_y [k = y] - coef_s c_k [k included], times the
    soft cap's derivative, where coef_p = (1-eps) c_y + eps/K sum c + 2 lambda lse. With the
    entropy H (``spec.entropy``) its cotangent ``coef_h`` adds dH/dz_k = -q_k (log q_k + H).
    ``lse`` is the rows' logsumexp ``[rows]``, or the tile's log-softmax ``[rows, classes]``.
    """
    inc = included(z)
    cols = lax.broadcasted_iota(jnp.int32, z.shape, 1) + start
    log_q = z - lse[:, None] if lse.ndim == 1 else lse
    q = jnp.exp(log_q)
    dz = coef["p"][:, None] * q
    dz = dz - jnp.where((cols == labels[:, None]) & inc, coef["y"][:, None], 0.0)
    if spec.entropy:
        surprise = jnp.where(inc, log_q + coef["entropy"][:, None], 0.0)
        dz = dz - coef["h"][:, None] * q * surprise
    if spec.smoothing:
        # (z > -inf), not `inc`: a separate expression keeps XLA from materializing one [N, V]
        # mask shared by the forward reduction and this gradient.
        keep = (z > -jnp.inf).astype(z.dtype)
        weight = keep if class_weights is None else keep * class_weights
        dz = dz - coef["s"][:, None] * weight
    return dz * softcap_derivative(raw, spec.softcap)


def ce_full_tile(raw, labels, class_weights, coefs: Coefficients, spec: LossSpec, explicit=False):
    """``(rows, d(sum_i loss_i) / d raw)`` of the cross-entropy on one full ``[rows, V]`` tile.

    The core integer-label loss and its closed-form gradient both come from here, so their
    options are the fused and sharded options. Half-precision ``raw`` is computed in float32.
    """
    wide = upcast(raw)
    z = ce_logits(wide, spec, coefs)
    source = (raw, lambda r: ce_logits(upcast(r), spec, coefs))
    stats = ce_tile(z, labels, class_weights, 0, spec, explicit=explicit, source=source)
    rows = ce_rows(stats, labels, None, coefs, spec)
    log_q = log_softmax_of(z, stats)
    return rows, ce_tile_grad(z, wide, labels, 0, class_weights, log_q, rows.coef, spec)


def divergence_tile_grad(kind, s, t, s_lse, t_lse, kl, g, coefs: Coefficients):
    """d(sum_i g_i D_i) / d(student logits) of one tile (``g`` holds the temperature too).

    forward KL: q - p; reverse KL: q (log q - log p - KL); Jensen-Shannon:
    (1 - beta) q (log q - log m - KL(Q || M)). Excluded student classes get 0. The teacher's
    gradient is the same call with the roles swapped (see :func:`teacher_kind`).
    """
    log_q, log_p = s - s_lse[:, None], t - t_lse[:, None]
    q = jnp.exp(log_q)
    if kind == "forward_kl":
        ds = q - jnp.exp(log_p)
    elif kind == "reverse_kl":
        ds = q * (log_q - log_p - kl[:, None])
    else:
        beta = coefs.beta.astype(s.dtype)
        ds = (1.0 - beta) * q * (log_q - _log_mixture(log_p, log_q, coefs) - kl[:, None])
    return jnp.where(included(s), ds, 0.0) * g[:, None]


def teacher_kind(kind: str) -> str:
    """The student-gradient formula that gives the teacher's gradient with roles swapped."""
    return {"forward_kl": "reverse_kl", "reverse_kl": "forward_kl"}.get(kind, kind)


def swap_beta(coefs: Coefficients) -> Coefficients:
    return coefs._replace(beta=1.0 - coefs.beta)
