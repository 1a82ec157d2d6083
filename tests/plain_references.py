"""Plain references for the core losses: plain ``jax.numpy``, no custom rule, no library kernel.

``jax.grad`` of these is the independent side of every closed-form gradient test (the core losses'
own ``custom_jvp`` rules share the closed forms' kernels, so agreeing with them checks the wiring,
not the formulas). They are written from the definitions, over the last axis, with the library's
conventions for zeros: 0 log 0 = 0, a -inf logit is an excluded class, and the derivative of a
term with a zero target probability is 0 (the "double where").
"""

import jax
import jax.numpy as jnp
import numpy as np


def _safe_log_softmax(z):
    """log softmax with -inf at excluded classes; plain ops, autodiff-only."""
    m = jax.lax.stop_gradient(jnp.max(z, -1, keepdims=True))
    return z - m - jnp.log(jnp.sum(jnp.exp(z - m), -1, keepdims=True))


def _xlogy_terms(p, log_x):
    """p * log_x with 0 where p == 0 (double where)."""
    nz = p > 0
    return jnp.where(nz, p * jnp.where(nz, log_x, 0.0), 0.0)


def _exclude(z, where):
    return z if where is None else jnp.where(where, z, -jnp.inf)


def _softcap(z, s):
    if s is None:
        return z
    finite = z > -jnp.inf
    return jnp.where(finite, s * jnp.tanh(jnp.where(finite, z, 0.0) / s), -jnp.inf)


def ref_soft_ce(z, y, where=None, label_smoothing=0.0, z_loss=0.0, logit_softcap=None):
    z = _exclude(_softcap(z, logit_softcap), where)
    log_q = _safe_log_softmax(z)
    included = z > -jnp.inf
    y = y if where is None else jnp.where(where, y, 0.0)
    y = (1 - label_smoothing) * y + label_smoothing * included / included.sum(-1, keepdims=True)
    lse = jax.nn.logsumexp(z, -1)
    return -jnp.sum(_xlogy_terms(y, log_q), -1) + z_loss * lse**2


def ref_int_ce(
    z,
    labels,
    ignore_index=None,
    label_smoothing=0.0,
    class_weights=None,
    z_loss=0.0,
    logit_softcap=None,
):
    z = _softcap(z, logit_softcap)
    log_q = _safe_log_softmax(z)
    included = z > -jnp.inf
    w = jnp.ones(z.shape[-1]) if class_weights is None else class_weights
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)
    nll = -jnp.sum(onehot * jnp.where(included, log_q, 0.0), -1)
    loss = (1 - label_smoothing) * w[labels] * nll
    smooth = -jnp.sum(jnp.where(included, w * log_q, 0.0), -1) / included.sum(-1)
    loss = loss + label_smoothing * smooth + z_loss * jax.nn.logsumexp(z, -1) ** 2
    return loss if ignore_index is None else jnp.where(labels == ignore_index, 0.0, loss)


def ref_entropy(z, where=None, base=None):
    log_p = _safe_log_softmax(_exclude(z, where))
    h = -jnp.sum(_xlogy_terms(jnp.exp(log_p), log_p), -1)
    return h if base is None else h / np.log(base)


def _kl_of_logits(first, second):
    """KL(softmax(first) || softmax(second))."""
    log_a, log_b = _safe_log_softmax(first), _safe_log_softmax(second)
    a = jnp.exp(log_a)
    nz = a > 0
    return jnp.sum(jnp.where(nz, a * (jnp.where(nz, log_a, 0) - jnp.where(nz, log_b, 0)), 0), -1)


def ref_forward_kl(z, t, temperature=1.0, where=None):
    return _kl_of_logits(_exclude(t / temperature, where), _exclude(z / temperature, where))


def ref_reverse_kl(z, t, temperature=1.0, where=None):
    return _kl_of_logits(_exclude(z / temperature, where), _exclude(t / temperature, where))


def ref_js(z, t, beta=0.5, temperature=1.0, where=None):
    q = jnp.exp(_safe_log_softmax(_exclude(z / temperature, where)))
    p = jnp.exp(_safe_log_softmax(_exclude(t / temperature, where)))
    m = beta * p + (1 - beta) * q
    safe_m = jnp.where(m > 0, m, 1.0)

    def kl(a):
        nz = a > 0
        safe_a = jnp.where(nz, a, 1.0)
        return jnp.sum(jnp.where(nz, a * (jnp.log(safe_a) - jnp.log(safe_m)), 0.0), -1)

    return beta * kl(p) + (1 - beta) * kl(q)


def ref_kl_divergence(log_q, p):
    nz = p > 0
    safe_p = jnp.where(nz, p, 1.0)
    return jnp.sum(jnp.where(nz, p * (jnp.log(safe_p) - log_q), 0.0), -1)


def ref_kl_log_targets(log_q, log_p):
    present = log_p > -jnp.inf
    safe_log_p = jnp.where(present, log_p, 0.0)
    return jnp.sum(jnp.where(present, jnp.exp(safe_log_p) * (safe_log_p - log_q), 0.0), -1)


def ref_generalized_kl(log_q, p):
    return ref_kl_divergence(log_q, p) + jnp.sum(jnp.exp(log_q) - p, -1)


def ref_bce(z, y, pos_weight=None):
    w = 1.0 if pos_weight is None else pos_weight
    return -(w * y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z))


def ref_binary_entropy(z, base=None):
    s = jax.nn.sigmoid(z)
    h = -(s * jnp.log(s) + (1 - s) * jnp.log1p(-s))
    return h if base is None else h / np.log(base)


def ref_entropy_from_probs(p, where=None):
    terms = -_xlogy_terms(p, jnp.log(jnp.where(p > 0, p, 1.0)))
    return jnp.sum(terms if where is None else jnp.where(where, terms, 0.0), -1)


def ref_log_partition(z, where=None):
    return jax.nn.logsumexp(_exclude(z, where), -1)
