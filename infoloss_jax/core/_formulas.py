"""Closed-form gradient kernels: the one source of truth for each derivative formula.

The core losses use these in their ``jax.custom_jvp`` rules, and the public
:mod:`infoloss_jax.gradients` module wraps them with the losses' own signatures.

Every kernel works on log-probabilities that are already normalized along ``axis`` (a tuple of
non-negative ints), with ``-inf`` marking excluded classes. Gradients are with respect to the
logits that produced those log-probabilities (after any temperature scaling), and excluded
classes get exactly 0. Zero probabilities are handled with the double-where pattern so that
neither values nor their derivatives produce ``0 * inf``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ._log_partition import branch_on_exclusion, log_probs_from, normalizers, stable_log_softmax

Axes = tuple[int, ...]


def nan_or_zero(x: jax.Array) -> jax.Array:
    """NaN where ``x`` is NaN, else 0: what a dropped term leaves behind (NaN is never dropped)."""
    return jnp.where(jnp.isnan(x), jnp.nan, 0.0)


def probs_and_safe_logs(log_p: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns ``(p, log_p with 0 at excluded classes, mask of included classes)``.

    Excluded means ``log_p == -inf`` exactly (NaN stays included, and poisons what it touches).
    """
    included = log_p != -jnp.inf
    safe_log_p = jnp.where(included, log_p, 0.0)
    return jnp.where(included, jnp.exp(safe_log_p), 0.0), safe_log_p, included


def weighted_log(weight: jax.Array, log_value: jax.Array) -> jax.Array:
    """``weight * log_value`` with 0 * (-inf) = 0 in the value and both derivatives.

    Only that product is special-cased: NaN in either input stays NaN, and a non-zero weight at
    -inf gives an infinity, as the math says.
    """
    vanishing = (weight == 0) & (log_value == -jnp.inf)
    return jnp.where(vanishing, 0.0, weight * jnp.where(vanishing, 0.0, log_value))


def xlogx(x: jax.Array) -> jax.Array:
    """``x log x`` with 0 log 0 = 0 (and a 0 derivative there), NaN for x < 0 or NaN."""
    zero = x == 0
    return jnp.where(zero, 0.0, x * jnp.log(jnp.where(zero, 1.0, x)))


def sum_over(x: jax.Array, axis: Axes) -> jax.Array:
    return jnp.sum(x, axis=axis, keepdims=True)


def of_logits(exact, plain, logits: tuple[jax.Array, ...], axis: Axes) -> jax.Array:
    """``exact(*log_probs, axis)`` on the log-softmax of each of ``logits``, or ``plain(...)``
    when nothing can be excluded (:func:`branch_on_exclusion` picks, and the branches get only
    the logits and their [N, 1] normalizers)."""
    parts = [part for x in logits for part in normalizers(stable_log_softmax(x, axis))]
    return branch_on_exclusion(*_branches_of(exact, plain, axis), logits, *parts)


@functools.cache  # one pair per formula and `axis`: fresh branches would defeat JAX's caches
def _branches_of(exact, plain, axis: Axes):
    def lift(formula):
        def branch(logits, *parts):
            log_probs = [log_probs_from(x, *parts[2 * i : 2 * i + 2]) for i, x in enumerate(logits)]
            return formula(*log_probs, axis)

        return branch

    return lift(exact), lift(plain)


def entropy_value(log_p: jax.Array, axis: Axes) -> jax.Array:
    """H(p) = -sum p log p, with keepdims, 0 log 0 = 0."""
    p, safe_log_p, _ = probs_and_safe_logs(log_p)
    return -sum_over(p * safe_log_p, axis)


def plain_entropy_value(log_p: jax.Array, axis: Axes) -> jax.Array:
    """:func:`entropy_value` where no class is excluded: one fusible product, no selects."""
    return -sum_over(jnp.exp(log_p) * log_p, axis)


def kl_terms(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """p (log p - log q) per class, from log-probabilities, following the bad-input rules.

    * p excluded (log p = -inf): 0, unless log q is NaN (then NaN);
    * p kept and q excluded (log q = -inf): +inf, even where p underflows to 0 (the true term
      is p * inf with p > 0), NaN if log p is NaN;
    * otherwise the plain product, so NaN propagates.
    """
    p, safe_log_p, p_included = probs_and_safe_logs(log_p)
    q_excluded = log_q == -jnp.inf
    finite_pair = p_included & ~q_excluded
    safe_log_q = jnp.where(finite_pair, log_q, 0.0)
    terms = jnp.where(finite_pair, p * (safe_log_p - safe_log_q), 0.0)
    terms = jnp.where(p_included, terms, nan_or_zero(log_q))
    return jnp.where(p_included & q_excluded, jnp.where(jnp.isnan(log_p), jnp.nan, jnp.inf), terms)


def kl_value(log_p: jax.Array, log_q: jax.Array, axis: Axes) -> jax.Array:
    """KL(p || q) = sum p (log p - log q), with keepdims; see :func:`kl_terms`."""
    return sum_over(kl_terms(log_p, log_q), axis)


def plain_kl_value(log_p: jax.Array, log_q: jax.Array, axis: Axes) -> jax.Array:
    """:func:`kl_value` where no class is excluded: one fusible product, no selects."""
    return sum_over(jnp.exp(log_p) * (log_p - log_q), axis)


def softmax_cross_entropy_grad(log_q: jax.Array, labels: jax.Array, axis: Axes) -> jax.Array:
    r"""d/dz of -sum_k y_k log softmax(z)_k: :math:`q \sum_k y_k - y`.

    For normalized labels this is the classic :math:`q - y`.
    """
    q, _, included = probs_and_safe_logs(log_q)
    return jnp.where(included, q * sum_over(labels, axis) - labels, 0.0)


def entropy_grad_given_value(log_p: jax.Array, entropy: jax.Array) -> jax.Array:
    r"""d/dz of H(softmax(z)) given H (keepdims): :math:`-p \odot (\log p + H)`."""
    p, safe_log_p, _ = probs_and_safe_logs(log_p)
    return -p * (safe_log_p + entropy)


def entropy_grad(log_p: jax.Array, axis: Axes) -> jax.Array:
    r"""d/dz of H(softmax(z)): :math:`-p \odot (\log p + H)`."""
    return entropy_grad_given_value(log_p, entropy_value(log_p, axis))


def softmax_vjp_given_kl(log_p: jax.Array, log_ratio: jax.Array, kl: jax.Array) -> jax.Array:
    r"""d/dz of KL(p || r) for p = softmax(z), r fixed, given the KL: :math:`p (\log(p/r) - KL)`.

    ``log_ratio`` holds log p - log r (any value where p = 0; it is masked out). Where the KL
    is +inf (p has mass where r has none) the derivative is not finite; that row gets 0, the
    documented choice, so an infinite loss never injects NaN into an update.
    """
    p, _, included = probs_and_safe_logs(log_p)
    infinite = kl == jnp.inf
    safe_kl = jnp.where(infinite, 0.0, kl)
    safe_ratio = jnp.where(included & ~infinite, log_ratio, 0.0)
    return jnp.where(infinite, 0.0, p * (safe_ratio - safe_kl))


def softmax_vjp_of_log_ratio(log_p: jax.Array, log_ratio: jax.Array, axis: Axes) -> jax.Array:
    r"""d/dz of KL(p || r) for p = softmax(z) and fixed r: :math:`p (\log p - \log r - KL)`.

    ``log_ratio`` holds log p - log r (any value where p = 0; it is masked out).
    """
    p, _, included = probs_and_safe_logs(log_p)
    kl = sum_over(p * jnp.where(included, log_ratio, 0.0), axis)
    return softmax_vjp_given_kl(log_p, log_ratio, kl)


def forward_kl_grads_given_value(log_q: jax.Array, log_p: jax.Array, kl: jax.Array):
    """``(d/dz_model, d/dz_target)`` of KL(p || q), given the KL (keepdims)."""
    q, _, _ = probs_and_safe_logs(log_q)
    p, _, _ = probs_and_safe_logs(log_p)
    return q - p, softmax_vjp_given_kl(log_p, log_p - log_q, kl)


def forward_kl_grads(log_q: jax.Array, log_p: jax.Array, axis: Axes) -> tuple[jax.Array, ...]:
    r"""Gradients of KL(p || q), p = softmax(target logits), q = softmax(model logits).

    Returns ``(d/dz_model, d/dz_target)`` = :math:`(q - p,\; p (\log p - \log q - KL))`.
    """
    return forward_kl_grads_given_value(log_q, log_p, kl_value(log_p, log_q, axis))


def reverse_kl_grads_given_value(log_q: jax.Array, log_p: jax.Array, kl: jax.Array):
    """``(d/dz_model, d/dz_target)`` of KL(q || p), given the KL (keepdims)."""
    grad_target, grad_model = forward_kl_grads_given_value(log_p, log_q, kl)
    return grad_model, grad_target


def reverse_kl_grads(log_q: jax.Array, log_p: jax.Array, axis: Axes) -> tuple[jax.Array, ...]:
    r"""Gradients of KL(q || p), q = softmax(model logits), p = softmax(target logits).

    Returns ``(d/dz_model, d/dz_target)`` = :math:`(q (\log q - \log p - KL),\; p - q)`.
    """
    return reverse_kl_grads_given_value(log_q, log_p, kl_value(log_q, log_p, axis))


def log_mixture(log_q: jax.Array, log_p: jax.Array, beta: float) -> jax.Array:
    """log m for m = beta p + (1 - beta) q, 0 < beta < 1, -inf where both are excluded."""
    either = (log_p != -jnp.inf) | (log_q != -jnp.inf)
    # logaddexp(-inf, -inf) has a NaN derivative, so both inputs are replaced where both vanish.
    safe_p, safe_q = jnp.where(either, log_p, 0.0), jnp.where(either, log_q, 0.0)
    log_m = jnp.logaddexp(jnp.log(beta) + safe_p, jnp.log1p(-beta) + safe_q)
    return jnp.where(either, log_m, -jnp.inf)


def jensen_shannon_value(log_q: jax.Array, log_p: jax.Array, beta: float, axis: Axes):
    """beta KL(p || m) + (1 - beta) KL(q || m), keepdims, for 0 < beta < 1."""
    log_m = log_mixture(log_q, log_p, beta)
    return beta * kl_value(log_p, log_m, axis) + (1.0 - beta) * kl_value(log_q, log_m, axis)


def jensen_shannon_grads(
    log_q: jax.Array, log_p: jax.Array, beta: float, axis: Axes
) -> tuple[jax.Array, ...]:
    r"""Gradients of beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.

    Differentiating w.r.t. q gives :math:`(1-\beta)\log(q/m)` (the :math:`p/m` and :math:`q/m`
    terms cancel against the +1), so through the softmax:

    * d/dz_model = :math:`(1-\beta)\, q (\log q - \log m - KL(q\|m))`;
    * d/dz_target = :math:`\beta\, p (\log p - \log m - KL(p\|m))`.
    """
    log_m = log_mixture(log_q, log_p, beta)
    model = (1.0 - beta) * softmax_vjp_of_log_ratio(log_q, log_q - log_m, axis)
    target = beta * softmax_vjp_of_log_ratio(log_p, log_p - log_m, axis)
    return model, target


def binary_entropy_grad(logits: jax.Array) -> jax.Array:
    r"""d/dz of the binary entropy of sigmoid(z): :math:`-z\,\sigma(z)\,\sigma(-z)`."""
    certain = jnp.isinf(logits)  # NaN stays NaN
    safe = jnp.where(certain, 0.0, logits)
    return jnp.where(certain, 0.0, -safe * jax.nn.sigmoid(safe) * jax.nn.sigmoid(-safe))
