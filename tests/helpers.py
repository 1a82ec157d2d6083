"""Shared test helpers: the 8-device mesh and plain references.

The references are written with plain ``jax.numpy`` operations only (no library kernel, no
custom derivative), so that comparing a loss and its autodiff gradient with them is an
independent check. ``-inf`` logits are excluded classes; the double-``where`` pattern keeps their
values and gradients finite.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
from jax._src import dispatch
from jax.sharding import AxisType

MESHES = {
    "8": ((8,), ("model",)),
    "2x4": ((2, 4), ("data", "model")),
    "4x2": ((4, 2), ("data", "model")),
}


def cpu_fallback_mesh(shape, names, **kwargs):
    """A mesh on the default backend, or on the 8 simulated CPU devices when it has fewer.

    On a one-GPU machine the default backend has a single device; conftest's XLA flag gives
    the CPU backend 8, so the sharded tests still run there.
    """
    size = math.prod(shape)
    devices = jax.devices() if len(jax.devices()) >= size else jax.devices("cpu")
    return jax.make_mesh(shape, names, devices=devices[:size], **kwargs)


def make_mesh(name):
    shape, names = MESHES[name]
    return cpu_fallback_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def data_axis(mesh):
    return "data" if "data" in mesh.axis_names else None


def _log_softmax(z):
    """(log q, lse, included) along the last axis; empty rows get lse = 0."""
    inc = z != -jnp.inf
    m = jax.lax.stop_gradient(jnp.max(jnp.where(inc, z, -jnp.inf), axis=-1, keepdims=True))
    shift = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.where(inc, jnp.exp(jnp.where(inc, z - shift, 0.0)), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    empty = total == 0
    lse = jnp.where(empty, 0.0, shift + jnp.log(jnp.where(empty, 1.0, total)))
    return jnp.where(inc, jnp.where(inc, z, 0.0) - lse, -jnp.inf), lse[..., 0], inc


def reduce(loss, weight, reduction):
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / loss.shape[0]
    count = jnp.sum(weight)
    return jnp.where(count != 0, total / jnp.where(count != 0, count, 1.0), 0.0)


def plain_cross_entropy(
    logits,
    labels,
    *,
    ignore_index=None,
    label_smoothing=0.0,
    class_weights=None,
    z_loss=0.0,
    logit_softcap=None,
    reduction="none",
):
    """PyTorch's weighted, smoothed cross-entropy plus the z-loss, over the included classes."""
    z = logits.astype(jnp.result_type(logits.dtype, jnp.float32))
    inc = z != -jnp.inf
    if logit_softcap is not None:
        z = jnp.where(
            inc, logit_softcap * jnp.tanh(jnp.where(inc, z, 0.0) / logit_softcap), -jnp.inf
        )
    log_q, lse, inc = _log_softmax(z)
    num_classes = z.shape[-1]
    weights = jnp.ones(num_classes, z.dtype) if class_weights is None else class_weights
    safe = jnp.clip(labels, 0, num_classes - 1)
    label_weight = weights[safe]
    nll = -jnp.take_along_axis(log_q, safe[..., None], axis=-1)[..., 0]
    count = jnp.sum(inc, axis=-1)
    neg = jnp.where(inc, -jnp.where(inc, log_q, 0.0), 0.0)
    smooth = jnp.sum(weights * neg, axis=-1) / jnp.maximum(count, 1)
    loss = (1 - label_smoothing) * label_weight * nll + label_smoothing * smooth
    loss = loss + z_loss * lse**2
    ignored = jnp.zeros(labels.shape, bool) if ignore_index is None else labels == ignore_index
    counted = ~ignored & (count > 0)
    loss = jnp.where(counted, loss, 0.0)
    return reduce(loss, jnp.where(counted, label_weight, 0.0), reduction)


def plain_divergence(kind, logits, target_logits, *, beta=0.5, temperature=1.0):
    """Per-row forward KL(P || Q), reverse KL(Q || P) or JSD_beta; P the target, Q the model."""
    log_q, _, q_inc = _log_softmax(logits / temperature)
    log_p, _, p_inc = _log_softmax(target_logits / temperature)

    def kl(log_a, a_inc, log_b):
        safe_a = jnp.where(a_inc, log_a, 0.0)
        safe_b = jnp.where(a_inc, log_b, 0.0)
        return jnp.sum(jnp.where(a_inc, jnp.exp(safe_a) * (safe_a - safe_b), 0.0), axis=-1)

    if kind == "forward_kl":
        return kl(log_p, p_inc, log_q)
    if kind == "reverse_kl":
        return kl(log_q, q_inc, log_p)
    p = jnp.where(p_inc, jnp.exp(jnp.where(p_inc, log_p, 0.0)), 0.0)
    q = jnp.where(q_inc, jnp.exp(jnp.where(q_inc, log_q, 0.0)), 0.0)
    m = beta * p + (1 - beta) * q
    log_m = jnp.log(jnp.where(m > 0, m, 1.0))
    return beta * kl(log_p, p_inc, log_m) + (1 - beta) * kl(log_q, q_inc, log_m)


def plain_log_probs(logits, labels, *, temperature=1.0, logit_softcap=None, ignore_index=None):
    """(log q(label), entropy) per row, in plain ``jnp``: soft cap, then temperature.

    Ignored rows give 0 for both; a label on an excluded class gives ``-inf``.
    """
    z = logits
    if logit_softcap is not None:
        finite = z != -jnp.inf
        z = jnp.where(
            finite, logit_softcap * jnp.tanh(jnp.where(finite, z, 0.0) / logit_softcap), z
        )
    log_q, _, inc = _log_softmax(z / temperature)
    safe = jnp.where(inc, log_q, 0.0)
    entropy = -jnp.sum(jnp.where(inc, jnp.exp(safe) * safe, 0.0), axis=-1)
    index = jnp.clip(labels, 0, z.shape[-1] - 1)[..., None]
    picked = jnp.take_along_axis(log_q, index, axis=-1)[..., 0]
    if ignore_index is None:
        return picked, entropy
    keep = labels != ignore_index
    return jnp.where(keep, picked, 0.0), jnp.where(keep, entropy, 0.0)


# The event JAX records around every XLA backend compile (jax/_src/dispatch.py).
BACKEND_COMPILE_EVENT = dispatch.BACKEND_COMPILE_EVENT


@contextlib.contextmanager
def count_compiles():
    """Counts backend compiles inside the block; yields a list whose length is the count."""
    compiles: list[str] = []

    def listener(event: str, duration_secs: float, **_) -> None:
        del duration_secs
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def compiles_after_warm_up(call, repeats: int = 3) -> int:
    """Calls ``call`` once, then ``repeats`` more times; returns the later calls' compiles."""
    jax.block_until_ready(call())
    with count_compiles() as compiles:
        for _ in range(repeats):
            jax.block_until_ready(call())
    return len(compiles)
