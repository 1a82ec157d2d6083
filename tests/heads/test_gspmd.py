"""Automatic partitioning (GSPMD): the core losses on logits sharded along batch and/or vocabulary.

Every core loss, given logits with a ``NamedSharding`` under ``jax.jit``, must compile without an
all-gather of the logits and must equal the unsharded result. (The integer-label pick is a gather,
which GSPMD partitions over a sharded class axis by masking; under explicit sharding types it is
a masked reduction instead.) The check
reads the compiled HLO text of ``value_and_grad`` and flags any all-gather whose result holds more
elements than one device's logits shard: gathering logits rows, or any vocabulary-sized slab of
them, would exceed that; gathering per-row scalars does not.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cpu_fallback_mesh
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import infoloss_jax as il

N, V = 8, 48
CLASS_WEIGHTS = np.linspace(0.5, 1.5, V)

# (mesh shape, axis names, logits spec): 8 devices, so a local logits shard has N * V / 8
# elements, except batch-only sharding, whose shards are larger (and never gathered).
LAYOUTS = {
    "vocab8": ((8,), ("model",), P(None, "model")),
    "batch2_vocab4": ((2, 4), ("data", "model"), P("data", "model")),
    "batch4_vocab2": ((4, 2), ("data", "model"), P("data", "model")),
    "batch8": ((8,), ("data",), P("data", None)),
}

LOSSES = {
    "entropy": lambda z, t, y, w: il.entropy(z),
    "entropy_where": lambda z, t, y, w: il.entropy(z, where=w),
    "entropy_from_probs": lambda z, t, y, w: il.entropy_from_probs(jax.nn.softmax(z)),
    "log_partition": lambda z, t, y, w: il.log_partition(z, where=w),
    "z_loss": lambda z, t, y, w: il.z_loss(z),
    "softmax_cross_entropy": lambda z, t, y, w: il.softmax_cross_entropy(
        z, jax.nn.softmax(t), label_smoothing=0.1, z_loss=1e-3, logit_softcap=5.0
    ),
    "safe_softmax_cross_entropy": lambda z, t, y, w: il.safe_softmax_cross_entropy(
        z, jax.nn.softmax(t)
    ),
    "integer_labels": lambda z, t, y, w: il.softmax_cross_entropy_with_integer_labels(z, y),
    "integer_labels_all_options": lambda z, t, y, w: il.softmax_cross_entropy_with_integer_labels(
        z,
        y,
        where=w,
        ignore_index=3,
        label_smoothing=0.1,
        class_weights=CLASS_WEIGHTS,
        z_loss=1e-3,
        logit_softcap=5.0,
        reduction="mean",
    ),
    "kl_divergence": lambda z, t, y, w: il.kl_divergence(jax.nn.log_softmax(z), jax.nn.softmax(t)),
    "kl_divergence_with_log_targets": lambda z, t, y, w: il.kl_divergence_with_log_targets(
        jax.nn.log_softmax(z), jax.nn.log_softmax(t)
    ),
    "generalized_kl_divergence": lambda z, t, y, w: il.generalized_kl_divergence(
        jax.nn.log_softmax(z), jax.nn.softmax(t)
    ),
    "forward_kl": lambda z, t, y, w: il.forward_kl(z, t, temperature=2.0, where=w),
    "reverse_kl": lambda z, t, y, w: il.reverse_kl(z, t, temperature=2.0),
    "jensen_shannon": lambda z, t, y, w: il.jensen_shannon(z, t, beta=0.3),
}


def _inputs(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(N, V)) * 2, dtype)
    target = jnp.asarray(rng.normal(size=(N, V)) * 2, dtype)
    labels = jnp.asarray(rng.integers(0, V, N), jnp.int32)
    where = jnp.asarray(rng.random((N, V)) > 0.2)
    return logits, target, labels, where


def logits_sized_gathers(hlo: str, local_elements: int) -> list[str]:
    """All-gathers in compiled HLO whose result holds more elements than one logits shard."""
    found = []
    for line in hlo.splitlines():
        if " all-gather(" not in line and " all-gather-start(" not in line:
            continue
        for _dtype, dims in re.findall(r"([a-z]+[0-9]*)\[([0-9,]*)\]", line.split("=", 1)[1])[:1]:
            size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            if size > local_elements:
                found.append(line.strip())
    return found


def _value_and_grad(loss_fn):
    def total(z, t, y, w):
        return jnp.sum(loss_fn(z, t, y, w))

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))


def _check(loss_name, layout, dtype=jnp.float32, axis_type=AxisType.Auto):
    shape, names, spec = LAYOUTS[layout]
    mesh = cpu_fallback_mesh(shape, names, axis_types=(axis_type,) * len(names))
    logits, target, labels, where = _inputs(dtype)
    row_spec = P(spec[0])
    put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
    sharded = (put(logits, spec), put(target, spec), put(labels, row_spec), put(where, spec))
    fn = _value_and_grad(LOSSES[loss_name])
    with jax.set_mesh(mesh):
        hlo = fn.lower(*sharded).compile().as_text()
        value, grads = fn(*sharded)
    local = N * V // mesh.size
    assert logits_sized_gathers(hlo, local) == [], f"{loss_name} gathers the logits"
    ref_value, ref_grads = fn(logits, target, labels, where)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(value, ref_value, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=tol, atol=tol
        )


@pytest.mark.slow
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_core_loss_partitions_without_gathering_logits(loss_name):
    _check(loss_name, "batch2_vocab4")


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_name, layout",
    [
        ("integer_labels_all_options", "vocab8"),
        ("softmax_cross_entropy", "vocab8"),
        ("jensen_shannon", "vocab8"),
        ("entropy_where", "vocab8"),
        ("integer_labels_all_options", "batch4_vocab2"),
        ("forward_kl", "batch4_vocab2"),
        ("integer_labels", "batch8"),
    ],
)
def test_other_layouts(loss_name, layout):
    _check(loss_name, layout)


@pytest.mark.parametrize("loss_name", ["integer_labels", "forward_kl"])
def test_bfloat16_logits(loss_name):
    _check(loss_name, "batch2_vocab4", dtype=jnp.bfloat16)


@pytest.mark.parametrize("loss_name", ["integer_labels_all_options", "reverse_kl"])
def test_explicit_sharding_mode(loss_name):
    _check(loss_name, "batch2_vocab4", axis_type=AxisType.Explicit)


def test_the_hlo_check_catches_a_gather():
    """take_along_axis over a vocabulary-sharded axis gathers the logits: the check sees it."""
    mesh = cpu_fallback_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
    logits, _, labels, _ = _inputs()
    sharded = jax.device_put(logits, NamedSharding(mesh, P(None, "model")))

    def gathering(z, y):
        z = jax.lax.with_sharding_constraint(z, NamedSharding(mesh, P(None, "model")))
        full = jax.lax.with_sharding_constraint(z * 2.0, NamedSharding(mesh, P()))
        return jnp.sum(jnp.take_along_axis(full, y[:, None], axis=-1))

    hlo = jax.jit(gathering).lower(sharded, labels).compile().as_text()
    assert logits_sized_gathers(hlo, N * V // 8)
