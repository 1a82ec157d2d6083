"""Elementwise terms of the losses on probabilities and log-probabilities (no softmax inside).

The losses over logits (entropy, the KL and Jensen-Shannon divergences, the integer-label
cross-entropy, the token log-probabilities) keep their math in the engine, once for the core,
fused and sharded paths: :mod:`infoloss_jax.engine._tiles` and :mod:`infoloss_jax.engine._pairs`.
What lives here are the terms of the optax-style losses that take probabilities or
log-probabilities as given, and the soft-label cross-entropy's gradient. Every KL term takes
the *target* first, then the prediction.

Zero probabilities follow the double-where pattern so that neither values nor their
derivatives produce ``0 * inf``, and NaN is never dropped as a zero term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def kl_terms_of_probs(targets: jax.Array, log_predictions: jax.Array) -> jax.Array:
    """t (log t - log q) per element, for probability targets t.

    0 where t = 0 (also where log q = -inf, in the value and both derivatives); NaN where t is
    negative or NaN, or where log q is NaN. Nothing NaN is ever dropped as a zero.
    """
    zero = targets == 0  # the gradient w.r.t. a zero target is taken as 0 (not -inf)
    safe_targets = jnp.where(zero, 1.0, targets)
    safe_log_predictions = jnp.where(zero, 0.0, log_predictions)
    terms = targets * (jnp.log(safe_targets) - safe_log_predictions)  # NaN for t < 0 or NaN
    return jnp.where(zero, nan_or_zero(log_predictions), terms)


def kl_terms_of_logs(log_targets: jax.Array, log_predictions: jax.Array) -> jax.Array:
    """p (log p - log q) per element, for log-probability targets log p.

    * p excluded (log p = -inf): 0, unless log q is NaN (then NaN);
    * p kept and q excluded (log q = -inf): +inf, even where p underflows to 0 (the true term
      is p * inf with p > 0), NaN if log p is NaN;
    * otherwise the plain product, so NaN propagates.
    """
    log_p, log_q = log_targets, log_predictions
    p, safe_log_p, p_included = probs_and_safe_logs(log_p)
    q_excluded = log_q == -jnp.inf
    finite_pair = p_included & ~q_excluded
    safe_log_q = jnp.where(finite_pair, log_q, 0.0)
    terms = jnp.where(finite_pair, p * (safe_log_p - safe_log_q), 0.0)
    terms = jnp.where(p_included, terms, nan_or_zero(log_q))
    return jnp.where(p_included & q_excluded, jnp.where(jnp.isnan(log_p), jnp.nan, jnp.inf), terms)


def softmax_cross_entropy_grad(log_q: jax.Array, labels: jax.Array, axis: Axes) -> jax.Array:
    r"""d/dz of -sum_k y_k log softmax(z)_k: :math:`q \sum_k y_k - y`.

    For normalized labels this is the classic :math:`q - y`.
    """
    q, _, included = probs_and_safe_logs(log_q)
    return jnp.where(included, q * sum_over(labels, axis) - labels, 0.0)


def binary_entropy_grad(logits: jax.Array) -> jax.Array:
    r"""d/dz of the binary entropy of sigmoid(z): :math:`-z\,\sigma(z)\,\sigma(-z)`."""
    certain = jnp.isinf(logits)  # NaN stays NaN
    safe = jnp.where(certain, 0.0, logits)
    return jnp.where(certain, 0.0, -safe * jax.nn.sigmoid(safe) * jax.nn.sigmoid(-safe))
