"""Plain implementations of the losses, for the autodiff side of :func:`gradient_table`.

Each function computes a loss of the library from its definition with plain ``jax.numpy``
operations (``jax.nn.logsumexp`` and ``jax.nn.log_sigmoid`` included). None has a custom
derivative rule and none imports a private kernel of the library, so ``jax.grad`` of them is an
independent check of the closed forms in :mod:`infoloss_jax.gradients`: a wrong shared kernel
cannot cancel out. They are written for clarity, not speed, over the last axis only.

Zeros follow the library's conventions, with the "double where" so that the gradients stay
finite: :math:`0 \\log 0 = 0`, a ``-inf`` logit is an excluded class (probability 0, gradient
0), and the derivative of a term with a zero target probability is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _included(logits, where=None):
    keep = logits > -jnp.inf
    return keep if where is None else keep & where


def log_softmax(logits, where=None):
    """log softmax over the last axis; -inf at excluded classes (a -inf logit or ``where``)."""
    keep = _included(logits, where)
    log_z = jax.nn.logsumexp(jnp.where(keep, logits, -jnp.inf), axis=-1, keepdims=True)
    return jnp.where(keep, logits - log_z, -jnp.inf)


def _p_log(p, log_x):
    """p * log_x summed over the last axis, with 0 where p == 0 (whatever log_x is there)."""
    positive = p > 0
    return jnp.sum(jnp.where(positive, p * jnp.where(positive, log_x, 0.0), 0.0), axis=-1)


def _log(p):
    """log p where p > 0, 0 elsewhere (the value there is never used)."""
    return jnp.log(jnp.where(p > 0, p, 1.0))


def _nan_if_negative(value, p):
    """NaN for a row with a negative probability, as the library's losses give."""
    return jnp.where(jnp.any(p < 0, axis=-1), jnp.nan, value)


def _soft_cap(logits, cap):
    if cap is None:
        return logits
    finite = logits > -jnp.inf
    return jnp.where(finite, cap * jnp.tanh(jnp.where(finite, logits, 0.0) / cap), -jnp.inf)


def _log_partition(logits, where=None):
    keep = _included(logits, where)
    return jax.nn.logsumexp(jnp.where(keep, logits, -jnp.inf), axis=-1)


def softmax_cross_entropy(
    logits, labels, *, where=None, label_smoothing=0.0, z_loss=0.0, logit_softcap=None
):
    """-sum_k y_k log q_k (+ smoothing over the included classes, + c (log Z)^2)."""
    logits = _soft_cap(logits, logit_softcap)
    keep = _included(logits, where)
    labels = jnp.where(keep, labels, 0.0) if where is not None else labels
    if label_smoothing:
        uniform = keep / jnp.sum(keep, axis=-1, keepdims=True)
        labels = (1.0 - label_smoothing) * labels + label_smoothing * uniform
    loss = -_p_log(labels, log_softmax(logits, where))
    return loss + z_loss * jnp.square(_log_partition(logits, where))


def softmax_cross_entropy_with_integer_labels(
    logits,
    labels,
    *,
    ignore_index=None,
    label_smoothing=0.0,
    class_weights=None,
    z_loss=0.0,
    logit_softcap=None,
):
    """(1-eps) w_y (-log q_y) + eps/K sum_k w_k (-log q_k) + c (log Z)^2; 0 for ignored rows."""
    logits = _soft_cap(logits, logit_softcap)
    num_classes = logits.shape[-1]
    keep = _included(logits)
    weights = jnp.ones(num_classes, logits.dtype) if class_weights is None else class_weights
    log_q = jnp.where(keep, log_softmax(logits), 0.0)
    one_hot = jnp.arange(num_classes) == labels[..., None]
    nll = -jnp.sum(jnp.where(one_hot, log_q, 0.0), axis=-1)
    loss = (1.0 - label_smoothing) * jnp.sum(jnp.where(one_hot, weights, 0.0), axis=-1) * nll
    if label_smoothing:
        per_class = label_smoothing / jnp.sum(keep, axis=-1, keepdims=True)
        loss = loss - jnp.sum(per_class * weights * log_q, axis=-1)
    loss = loss + z_loss * jnp.square(_log_partition(logits))
    return loss if ignore_index is None else jnp.where(labels == ignore_index, 0.0, loss)


def _tempered(logits, temperature, logit_softcap):
    return _soft_cap(logits, logit_softcap) / temperature


def log_probs(logits, labels, *, temperature=1.0, logit_softcap=None, ignore_index=None):
    """log q_y of q = softmax(softcap(z) / T); 0 for ignored rows."""
    log_q = log_softmax(_tempered(logits, temperature, logit_softcap))
    one_hot = jnp.arange(logits.shape[-1]) == labels[..., None]
    picked = jnp.sum(jnp.where(one_hot, log_q, 0.0), axis=-1)
    return picked if ignore_index is None else jnp.where(labels == ignore_index, 0.0, picked)


def token_entropy(logits, labels, *, temperature=1.0, logit_softcap=None, ignore_index=None):
    """The entropy of q = softmax(softcap(z) / T) at each token; 0 for ignored rows."""
    value = entropy(_tempered(logits, temperature, logit_softcap))
    return value if ignore_index is None else jnp.where(labels == ignore_index, 0.0, value)


def entropy(logits, *, where=None, base=None):
    """-sum_k p_k log p_k of the softmax, in nats or in ``base`` units."""
    log_p = log_softmax(logits, where)
    value = -_p_log(jnp.exp(log_p), log_p)
    return value if base is None else value / jnp.log(base)


def entropy_from_probs(probs, *, where=None):
    """-sum_k p_k log p_k of given probabilities (terms dropped where ``where`` is False)."""
    kept = probs if where is None else jnp.where(where, probs, 0.0)
    return _nan_if_negative(-_p_log(kept, _log(kept)), kept)


def log_partition(logits, *, where=None):
    """log sum_k exp z_k over the included classes."""
    return _log_partition(logits, where)


def z_loss(logits, *, where=None):
    """(log Z)^2."""
    return jnp.square(_log_partition(logits, where))


def _kl(log_first, log_second):
    """KL(first || second) from log-probabilities."""
    first = jnp.exp(log_first)
    positive = first > 0
    return _p_log(first, log_first) - _p_log(first, jnp.where(positive, log_second, 0.0))


def forward_kl(logits, target_logits, *, temperature=1.0, where=None):
    """KL(softmax(t / T) || softmax(z / T)): from the target to the model."""
    return _kl(
        log_softmax(target_logits / temperature, where), log_softmax(logits / temperature, where)
    )


def reverse_kl(logits, target_logits, *, temperature=1.0, where=None):
    """KL(softmax(z / T) || softmax(t / T)): from the model to the target."""
    return _kl(
        log_softmax(logits / temperature, where), log_softmax(target_logits / temperature, where)
    )


def jensen_shannon(logits, target_logits, *, beta=0.5, temperature=1.0, where=None):
    """beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q, P the target."""
    if beta == 0.0:
        return forward_kl(logits, target_logits, temperature=temperature, where=where)
    if beta == 1.0:
        return reverse_kl(logits, target_logits, temperature=temperature, where=where)
    q = jnp.exp(log_softmax(logits / temperature, where))
    p = jnp.exp(log_softmax(target_logits / temperature, where))
    log_m = _log(beta * p + (1.0 - beta) * q)

    def kl_to_mixture(a):
        return _p_log(a, _log(a)) - _p_log(a, log_m)

    return beta * kl_to_mixture(p) + (1.0 - beta) * kl_to_mixture(q)


def total_variation(logits, target_logits, *, temperature=1.0, where=None):
    """1/2 sum_k |p_k - q_k|, P the target's softmax, Q the model's."""
    q = jnp.exp(log_softmax(logits / temperature, where))
    p = jnp.exp(log_softmax(target_logits / temperature, where))
    return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def skew_forward_kl(logits, target_logits, *, skew=0.1, temperature=1.0, where=None):
    """KL(P || skew P + (1 - skew) Q): +inf where P has mass and the mixture has none."""
    q = jnp.exp(log_softmax(logits / temperature, where))
    p = jnp.exp(log_softmax(target_logits / temperature, where))
    m = skew * p + (1.0 - skew) * q
    value = _p_log(p, _log(p)) - _p_log(p, _log(m))
    return jnp.where(jnp.any((p > 0) & (m == 0), axis=-1), jnp.inf, value)


def skew_reverse_kl(logits, target_logits, *, skew=0.1, temperature=1.0, where=None):
    """KL(Q || skew Q + (1 - skew) P): the skew forward KL with the roles exchanged."""
    return skew_forward_kl(target_logits, logits, skew=skew, temperature=temperature, where=where)


def alpha_divergence(logits, target_logits, *, alpha=0.5, temperature=1.0, where=None):
    """(1 - sum_k p_k^alpha q_k^(1 - alpha)) / (alpha (1 - alpha)); the reverse KL at
    alpha = 0 and the forward KL at alpha = 1, P the target's softmax and Q the model's."""
    if alpha == 0.0:
        return reverse_kl(logits, target_logits, temperature=temperature, where=where)
    if alpha == 1.0:
        return forward_kl(logits, target_logits, temperature=temperature, where=where)
    q = jnp.exp(log_softmax(logits / temperature, where))
    p = jnp.exp(log_softmax(target_logits / temperature, where))
    both = (p > 0) & (q > 0)
    w = jnp.where(both, jnp.exp(alpha * _log(p) + (1.0 - alpha) * _log(q)), 0.0)
    # p^alpha q^(1 - alpha) is infinite where a side with a negative exponent is 0.
    infinite = ((p == 0) & (q > 0) & (alpha < 0)) | ((q == 0) & (p > 0) & (alpha > 1))
    w = jnp.where(infinite, jnp.inf, w)
    value = (1.0 - jnp.sum(w, axis=-1)) / (alpha * (1.0 - alpha))
    # A row with no class left on either side has no distribution: 0, as for the other losses.
    return jnp.where(jnp.any((p > 0) | (q > 0), axis=-1), value, 0.0)


def kl_divergence(log_predictions, targets):
    """sum_k p_k (log p_k - log q_k) with p = ``targets``."""
    value = _p_log(targets, _log(targets)) - _p_log(targets, log_predictions)
    return _nan_if_negative(value, targets)


def kl_divergence_with_log_targets(log_predictions, log_targets):
    """sum_k p_k (log p_k - log q_k) with log p = ``log_targets``."""
    present = log_targets > -jnp.inf
    safe_log_targets = jnp.where(present, log_targets, 0.0)
    targets = jnp.where(present, jnp.exp(safe_log_targets), 0.0)
    return _p_log(targets, safe_log_targets) - _p_log(targets, log_predictions)


def generalized_kl_divergence(log_predictions, targets):
    """sum_k p_k (log p_k - log q_k) - p_k + q_k."""
    extra = jnp.sum(jnp.exp(log_predictions) - targets, axis=-1)
    return kl_divergence(log_predictions, targets) + extra


def sigmoid_binary_cross_entropy(logits, labels, *, pos_weight=None):
    """-(w y log sigmoid(z) + (1 - y) log sigmoid(-z)), elementwise."""
    w = 1.0 if pos_weight is None else pos_weight
    return -(w * labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


def binary_entropy(logits):
    """-(s log s + (1 - s) log(1 - s)), s = sigmoid(z), elementwise (finite logits)."""
    s = jax.nn.sigmoid(logits)
    return -(s * jax.nn.log_sigmoid(logits) + (1.0 - s) * jax.nn.log_sigmoid(-logits))
