"""Divergences between two softmax distributions, each declared once as a :class:`Divergence`.

A divergence compares the model's (student's) distribution ``q = softmax(s)`` with the target's
(teacher's) ``p = softmax(t)``. Its declaration holds all of its math:

* its *statistics*: either centered sums taken in the same sweep as the logsumexps (``first``:
  the KLs need nothing else), or additive sums of a second sweep over the log-probabilities,
  once both logsumexps are known (``terms``: the Jensen-Shannon divergence, total variation...);
* its *row value* (``rows``), from those statistics;
* its *tile gradient* (``grads``) with respect to both sets of (scaled) logits.

The blockwise engine (:mod:`._blockwise`) runs these on tiles, merged over the vocabulary and
over a mesh axis; the core losses run them on one full row (:func:`full_rows` and
:func:`full_grads`); :mod:`infoloss_jax.gradients` returns :func:`full_grads`. One formula each,
so the core, fused and sharded losses agree by construction, and
:func:`infoloss_jax.gradient_table` checks every declared divergence against autodiff of an
independent plain implementation.

Conventions of every formula here: ``lq``/``lp`` are log-probabilities, ``-inf`` where a class
is excluded (or so unlikely that its shifted logit overflows); a term with zero probability is
exactly 0 (``0 log 0 = 0``); a term that is infinite in the math (mass on a class the other side
excludes) is ``+inf``, and the gradient of an infinite row is 0 on the side that carries the
offending mass; NaN is never dropped. A side's gradient is 0 at the classes it gives no
probability, except where the math says otherwise (the forward KL's model gradient is
``q - p`` at a class the model excludes and the target keeps: the finite partial derivative
of an infinite value).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._loss_spec import Coefficient, Coefficients, LossSpec, declare
from ._tiles import (
    NEG_INF,
    Rows,
    Stats,
    Tile,
    empty_stats,
    log_sumexp,
    lse_of,
    norms_of,
    shifted,
    tile_log_probs,
)

Sums = dict  # the statistics a divergence's rows read, by key


@dataclasses.dataclass(frozen=True, eq=False)
class Divergence:
    """A declared divergence D(P, Q) between the target P = softmax(t) and the model Q.

    Attributes:
      name: its name (``il.<name>`` is its core form, ``il.gradients.<name>_grad`` its gradient,
        ``il.linear_<name>`` and ``il.sharded.vocab_parallel_[linear_]<name>`` its heads).
      rows: ``(sums, sumexp, log_sumexp, empty, c) -> (loss, values)``: the per-row value and the
        per-row values its gradient reads, from the merged statistics (``sumexp``,
        ``log_sumexp`` and ``empty`` are ``(model, target)`` pairs of ``[rows]`` arrays; ``c`` is
        the coefficient).
      grads: ``(lq, lp, values, c, model, target) -> (d model, d target)``: the tile gradients
        with respect to the scaled logits for a unit cotangent, None for a side not asked for.
      first: ``(sh_s, sh_t, exact) -> {key: [rows]}``: centered sums of the first sweep over
        shifted logits (see :class:`._tiles.Stats`), or None. ``exact=False`` may assume that no
        shifted logit is ``-inf``.
      first_keys: the keys ``first`` returns.
      terms: ``(lq, lp, c) -> {name: [rows]}``: additive sums of a second sweep, or None.
      term_names: the names ``terms`` returns.
      coefficient: its own traceable coefficient (``beta``, ``skew``, ``alpha``), or None.
      checks: ``((label, options), ...)``: the option sets :func:`infoloss_jax.gradient_table`
        checks it at (``where=True`` stands for the table's class mask).
      target_support: its value is finite only where the target keeps every class the model
        keeps (reverse KL): checks then use a target with the model's support.
      example: options the agreement tests run it with.
    """

    name: str
    rows: Callable
    grads: Callable
    first: Callable | None = None
    first_keys: tuple = ()
    terms: Callable | None = None
    term_names: tuple = ()
    coefficient: Coefficient | None = None
    checks: tuple = ()
    target_support: bool = False
    example: tuple = ()

    pair = True  # a loss between two distributions: the engine reads a teacher
    empty_row_loss = 0.0

    @property
    def two_pass(self) -> bool:
        return self.terms is not None

    # -------------------------------------------------------------------- the engine's calls
    def empty(self, spec: LossSpec, n, dtype, zeros) -> Stats:
        return empty_stats(n, dtype, zeros, 2, self.first_keys)

    def tile_stats(self, tile: Tile, spec: LossSpec, coefs: Coefficients, explicit=False) -> Stats:
        """First-sweep statistics of a tile whose logits are already scaled (no label to pick:
        ``explicit`` changes nothing)."""
        del explicit
        assert tile.teacher is not None  # a divergence's tile holds both
        return first_stats(self, tile.raw, tile.teacher, None, exact=True)

    def terms_empty(self, n, dtype, zeros) -> Stats:
        return empty_stats(n, dtype, zeros, 0, plain=self.term_names)

    def tile_terms(self, tile: Tile, norms, coefs: Coefficients) -> Stats:
        """Second-sweep sums of a tile; ``norms`` are the rows' ``(shift, log S)`` per side."""
        assert self.terms is not None and tile.teacher is not None
        lq = tile_log_probs(tile.raw, norms[0], norms[1])
        lp = tile_log_probs(tile.teacher, norms[2], norms[3])
        c = coefs.coefficient.astype(lq.dtype)
        return Stats((), (), {}, self.terms(lq, lp, c), None)

    def rows_of(self, stats: Stats, labels, row_mask, spec: LossSpec, coefs: Coefficients):
        del labels, spec
        return pair_rows(self, stats, coefs.coefficient, row_mask)

    def row_values(self, rows: Rows, g, g_entropy, spec: LossSpec, labels) -> dict:
        del g_entropy, spec, labels
        return dict(rows.coef, g=g * rows.coef["keep"])

    def tile_grads(self, tile: Tile, row: dict, spec: LossSpec, coefs: Coefficients, teacher):
        """(d student, d teacher or None) of a tile of scaled logits, for cotangents ``g``."""
        assert tile.teacher is not None
        lq = tile_log_probs(tile.raw, row["shift0"], row["log_sumexp0"])
        lp = tile_log_probs(tile.teacher, row["shift1"], row["log_sumexp1"])
        c = coefs.coefficient.astype(lq.dtype)
        ds, dt = self.grads(lq, lp, row, c, True, teacher)
        g = row["g"][:, None]
        return ds * g, None if dt is None else dt * g


def first_stats(div: Divergence, s, t, scale, exact: bool) -> Stats:
    """The first sweep over one tile: both logsumexps, and ``div.first``'s centered sums."""
    m_s, sh_s = shifted(s, scale)
    m_t, sh_t = shifted(t, scale)
    sums = (jnp.sum(jnp.exp(sh_s), axis=1), jnp.sum(jnp.exp(sh_t), axis=1))
    centered = {} if div.first is None else div.first(sh_s, sh_t, exact)
    return Stats((m_s, m_t), sums, centered, {}, None)


def pair_rows(div: Divergence, stats: Stats, c, row_mask=None) -> Rows:
    """Per-row values of ``div`` from the merged statistics (both sweeps)."""
    empty = tuple(m == NEG_INF for m in stats.max)
    logs = tuple(log_sumexp(e) for e in stats.sumexp)
    c = jnp.asarray(c).astype(logs[0].dtype)
    loss, values = div.rows({**stats.centered, **stats.plain}, stats.sumexp, logs, empty, c)
    loss = jnp.where(empty[0] & empty[1], 0.0, loss)  # no distribution on either side
    weight = jnp.ones_like(loss) if row_mask is None else row_mask.astype(loss.dtype)
    if row_mask is not None:
        loss = jnp.where(row_mask, loss, 0.0)
    shift0, log0, shift1, log1 = norms_of(stats)
    coef = dict(values, keep=weight, shift0=shift0, log_sumexp0=log0, shift1=shift1)
    coef["log_sumexp1"] = log1
    lse = tuple(lse_of(m, e) for m, e in zip(stats.max, stats.sumexp, strict=True))
    return Rows(loss, lse, weight, coef)


# ------------------------------------------------------------------------------ one full row
class FullRows(NamedTuple):
    """A divergence on whole ``[rows, classes]`` logits: its rows and the log-probabilities."""

    rows: Rows
    lq: jax.Array
    lp: jax.Array


def full_rows(div: Divergence, s, t, scale, c, exact: bool = True) -> FullRows:
    """``div`` on logits holding every class of each row: one tile, no merge.

    ``scale`` multiplies the logits after the shift by their row max (the inverse temperature,
    or None). ``exact=False`` runs the plain forms, valid when no shifted logit is ``-inf``.
    """
    stats = first_stats(div, s, t, scale, exact)
    _, log_s, _, log_t = norms_of(stats)
    _, sh_s = shifted(s, scale)
    _, sh_t = shifted(t, scale)
    lq, lp = sh_s - log_s[:, None], sh_t - log_t[:, None]
    if div.terms is not None:
        stats = stats._replace(plain=div.terms(lq, lp, jnp.asarray(c).astype(lq.dtype)))
    return FullRows(pair_rows(div, stats, c), lq, lp)


def full_grads(div: Divergence, full: FullRows, c, teacher: bool = True):
    """(d model, d target) of ``sum_i D_i`` w.r.t. the *scaled* logits, from :func:`full_rows`."""
    c = jnp.asarray(c).astype(full.lq.dtype)
    return div.grads(full.lq, full.lp, full.rows.coef, c, True, teacher)


def needs_exact(x: jax.Array, scale) -> jax.Array:
    """True when some shifted, scaled logit of ``x`` can be ``-inf``: an excluded class, or
    finite logits so far apart that ``(z - max) * scale`` overflows. NaN entries are ignored
    (the plain forms poison exactly their rows)."""
    finite_or_inf = jnp.where(jnp.isnan(x), 0.0, x)
    span = jnp.max(finite_or_inf, initial=-jnp.inf) - jnp.min(finite_or_inf, initial=jnp.inf)
    if scale is not None:
        span = span * scale
    return ~(span < jnp.inf)


# ------------------------------------------------------------------------------ shared terms
def softmax_vjp(la: jax.Array, log_ratio: jax.Array, value: jax.Array) -> jax.Array:
    r"""d/dz of :math:`\sum_k a_k\, r_k` with ``a = softmax(z)`` held in ``la``, where
    :math:`\partial r_k / \partial \log a_k = 1` and the sum is ``value``:
    :math:`a (\log r - \mathrm{value})`, the gradient of KL(A || B) for ``r = log(a / b)``.

    0 where ``a`` is 0; a row whose value is ``+inf`` gets 0 (an infinite loss never injects
    NaN into an update).
    """
    a = jnp.exp(la)
    infinite = (value == jnp.inf)[:, None]
    # a = 0 also where a class's probability underflows: the difference may overflow there.
    safe = jnp.where((a == 0) | infinite, 0.0, log_ratio - value[:, None])
    return jnp.where(infinite, 0.0, a * safe)


def kl_terms(la: jax.Array, lb: jax.Array) -> jax.Array:
    """a (log a - log b) per class, from log-probabilities (both computed the same way).

    0 where a = 0 (``la = -inf``); ``+inf`` where a > 0 and b = 0; NaN propagates.
    """
    present = la != NEG_INF
    safe = jnp.where(present & (lb != NEG_INF), la - lb, 0.0)
    terms = jnp.where(present, jnp.exp(la) * safe, 0.0)
    return jnp.where(present & (lb == NEG_INF), jnp.where(jnp.isnan(la), jnp.nan, jnp.inf), terms)


def log_mixture(lq: jax.Array, lp: jax.Array, beta) -> jax.Array:
    """log m for m = beta p + (1 - beta) q, 0 <= beta <= 1; -inf where m is 0."""
    either = (lp != NEG_INF) | (lq != NEG_INF)
    # logaddexp(-inf, -inf) has a NaN derivative, so both inputs are replaced where both vanish.
    safe_p, safe_q = jnp.where(either, lp, 0.0), jnp.where(either, lq, 0.0)
    log_m = jnp.logaddexp(jnp.log(beta) + safe_p, jnp.log1p(-beta) + safe_q)
    return jnp.where(either, log_m, NEG_INF)


def swap_key(key):
    """A centered sum's key with the two distributions' roles exchanged."""
    name, w, shifts = key
    return name, 1 - w, tuple(reversed(shifts))


def swapped(div: Divergence, name: str, **changes) -> Divergence:
    """``div`` with the model and the target exchanged: D'(P, Q) = D(Q, P)."""

    def first(sh_s, sh_t, exact):
        assert div.first is not None
        return {swap_key(k): v for k, v in div.first(sh_t, sh_s, exact).items()}

    def terms(lq, lp, c):
        assert div.terms is not None
        return div.terms(lp, lq, c)

    def rows(sums, sumexp, logs, empty, c):
        sums = {swap_key(k) if isinstance(k, tuple) else k: v for k, v in sums.items()}
        return div.rows(sums, sumexp[::-1], logs[::-1], empty[::-1], c)

    def grads(lq, lp, values, c, model, target):
        dt, ds = div.grads(lp, lq, values, c, target, model)
        return ds, dt

    return dataclasses.replace(
        div,
        name=name,
        rows=rows,
        grads=grads,
        first=None if div.first is None else first,
        first_keys=tuple(swap_key(k) for k in div.first_keys),
        terms=None if div.terms is None else terms,
        **changes,
    )


# ------------------------------------------------------------------------------ the KLs
_KL_KEY = ("kl", 1, (-1, 1))  # sum e_t ((t - m_t) - (s - m_s))


def _forward_kl_first(sh_s, sh_t, exact):
    """KL(P || Q)'s sum ``sum e_t ((t - m_t) - (s - m_s))`` over a tile of shifted logits."""
    terms = jnp.exp(sh_t) * (sh_t - sh_s)
    if exact:
        # A class the target gives no mass adds 0; one the model excludes while the target
        # keeps it adds +inf (also where the target's probability underflows to 0).
        terms = jnp.where(sh_s == NEG_INF, jnp.inf, terms)
        terms = jnp.where(sh_t == NEG_INF, 0.0, terms)
    return {_KL_KEY: jnp.sum(terms, axis=1)}


def _forward_kl_rows(sums, sumexp, logs, empty, c):
    r""":math:`\mathrm{KL}(P \| Q) = D / S_t + \log S_s - \log S_t`; 0 if the target is empty."""
    del c
    t_sum = jnp.where(empty[1], 1.0, sumexp[1])
    kl = jnp.where(empty[1], 0.0, sums[_KL_KEY] / t_sum + logs[0] - logs[1])
    return kl, {"kl": kl}


def _forward_kl_grads(lq, lp, values, c, model, target):
    """d/ds = q - p; d/dt = p (log p - log q - KL) (0 on a row where the KL is +inf)."""
    del c
    ds = jnp.exp(lq) - jnp.exp(lp) if model else None
    dt = softmax_vjp(lp, lp - lq, values["kl"]) if target else None
    return ds, dt


FORWARD_KL = declare(
    Divergence(
        "forward_kl",
        rows=_forward_kl_rows,
        grads=_forward_kl_grads,
        first=_forward_kl_first,
        first_keys=(_KL_KEY,),
        checks=(("T=2", {"temperature": 2.0}),),
        example=(("temperature", 1.5),),
    )
)
REVERSE_KL = declare(
    swapped(
        FORWARD_KL,
        "reverse_kl",
        checks=(("T=0.5", {"temperature": 0.5, "where": True}),),
        target_support=True,
    )
)


# ------------------------------------------------------------------------------ Jensen-Shannon
def _jensen_shannon_terms(lq, lp, beta):
    """KL(P || M) and KL(Q || M), M = beta P + (1 - beta) Q."""
    log_m = log_mixture(lq, lp, beta)
    p_term = jnp.sum(kl_terms(lp, log_m), axis=1)
    q_term = jnp.sum(kl_terms(lq, log_m), axis=1)
    return {"p_term": p_term, "q_term": q_term}


def _jensen_shannon_rows(sums, sumexp, logs, empty, beta):
    """beta KL(P || M) + (1 - beta) KL(Q || M); exactly KL(P || Q) at beta = 0 (where M = Q)
    and KL(Q || P) at beta = 1, the end points' definitions."""
    del sumexp, logs, empty
    p_term, q_term = sums["p_term"], sums["q_term"]
    mixed = beta * p_term + (1.0 - beta) * q_term
    loss = jnp.where(beta == 0.0, p_term, jnp.where(beta == 1.0, q_term, mixed))
    return loss, {"p_term": p_term, "q_term": q_term}


def _jensen_shannon_grads(lq, lp, values, beta, model, target):
    r"""d/ds = (1 - beta) q (log q - log m - KL(Q || M)), d/dt = beta p (log p - log m -
    KL(P || M)); at the end points those of the forward (beta = 0) and reverse (beta = 1) KL."""
    log_m = log_mixture(lq, lp, beta)
    q, p = jnp.exp(lq), jnp.exp(lp)
    ds = dt = None
    if model:
        weight = jnp.where(beta == 1.0, 1.0, 1.0 - beta)
        ds = weight * softmax_vjp(lq, lq - log_m, values["q_term"])
        ds = jnp.where(beta == 0.0, q - p, ds)
    if target:
        weight = jnp.where(beta == 0.0, 1.0, beta)
        dt = weight * softmax_vjp(lp, lp - log_m, values["p_term"])
        dt = jnp.where(beta == 1.0, p - q, dt)
    return ds, dt


JENSEN_SHANNON = declare(
    Divergence(
        "jensen_shannon",
        rows=_jensen_shannon_rows,
        grads=_jensen_shannon_grads,
        terms=_jensen_shannon_terms,
        term_names=("p_term", "q_term"),
        coefficient=Coefficient(
            "beta", 0.5, 0.0, 1.0, endpoints=((0.0, "forward_kl"), (1.0, "reverse_kl"))
        ),
        checks=(
            ("beta=0.5", {}),
            ("beta=0.2, T=1.5", {"beta": 0.2, "temperature": 1.5, "where": True}),
        ),
        example=(("beta", 0.3), ("temperature", 1.5)),
    )
)
