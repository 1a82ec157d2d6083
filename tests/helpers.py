"""Shared test helpers: the 8-device mesh and plain references.

The references are the plain ``jax.numpy`` implementations of ``infoloss_jax.gradients._plain``
(no library kernel, no custom derivative), so that comparing a loss and its autodiff gradient
with them is an independent check; the cross-entropy's adds the reductions and the rule for a
row with no class left. ``-inf`` logits are excluded classes.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
from jax._src import dispatch
from jax.sharding import AxisType

from infoloss_jax.gradients import _plain

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
    """PyTorch's weighted, smoothed cross-entropy plus the z-loss (``gradients._plain``),
    reduced with PyTorch's weighted mean."""
    z = logits.astype(jnp.result_type(logits.dtype, jnp.float32))
    options = dict(label_smoothing=label_smoothing, class_weights=class_weights, z_loss=z_loss)
    loss = _plain.softmax_cross_entropy_with_integer_labels(
        z, labels, ignore_index=ignore_index, logit_softcap=logit_softcap, **options
    )
    weights = jnp.ones(z.shape[-1], z.dtype) if class_weights is None else class_weights
    ignored = jnp.zeros(labels.shape, bool) if ignore_index is None else labels == ignore_index
    label_weight = jnp.where(ignored, 0.0, weights[jnp.clip(labels, 0, z.shape[-1] - 1)])
    return reduce(loss, label_weight, reduction)


def plain_divergence(kind, logits, target_logits, **options):
    """Per-row divergence ``kind`` of the plain implementation (``gradients._plain``)."""
    return getattr(_plain, kind)(logits, target_logits, **options)


def plain_log_probs(logits, labels, *, temperature=1.0, logit_softcap=None, ignore_index=None):
    """(log q(label), entropy) per row, from the plain implementation (``gradients._plain``):
    soft cap, then temperature; ignored rows give 0 for both."""
    options = dict(temperature=temperature, logit_softcap=logit_softcap, ignore_index=ignore_index)
    return _plain.log_probs(logits, labels, **options), _plain.token_entropy(
        logits, labels, **options
    )


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
