"""Repeated identical eager calls compile nothing after the first.

A notebook calls the losses eagerly, over and over, with the same shapes. Anything built afresh
on each call (a closure handed to ``lax.cond``, a new ``jax.jit`` wrapper, a new checkify
transform) defeats JAX's caches and costs a backend compile per call. These tests count backend
compiles with JAX's monitoring events, never times: one warm-up call, then a few identical calls
that must compile nothing.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compiles_after_warm_up, count_compiles
from jax.sharding import AxisType

import infoloss_jax as il
from infoloss_jax import gradients, policy, preference, sharded
from infoloss_jax import torch as F

# ----------------------------------------------------------------------------- inputs
N, K = 4, 6
_rng = np.random.default_rng(0)
LOGITS = jnp.asarray(_rng.normal(size=(N, K)), jnp.float32)
TARGET_LOGITS = jnp.asarray(_rng.normal(size=(N, K)), jnp.float32)
PROBS = jax.nn.softmax(TARGET_LOGITS)
LOG_PREDICTIONS = jax.nn.log_softmax(LOGITS)
LOG_TARGETS = jax.nn.log_softmax(TARGET_LOGITS)
LABELS = jnp.asarray([0, 3, 5, 1])
IGNORED_LABELS = jnp.asarray([0, -100, 5, 1])
WHERE = jnp.asarray(_rng.random((N, K)) > 0.2)
BINARY = jnp.asarray(_rng.random((N, K)), jnp.float32)
TANGENT = jnp.asarray(_rng.normal(size=(N, K)), jnp.float32)
CLASS_WEIGHTS = jnp.linspace(0.5, 1.5, K)
EXCLUDED = LOGITS.at[:, 0].set(-jnp.inf)  # the exact (masked) branch of every loss
LLM = dict(label_smoothing=0.1, z_loss=1e-3, logit_softcap=5.0)

PAIRS = tuple(LOG_PREDICTIONS[:, k] for k in range(4))

# Cases: (id, thunk). Each thunk makes one eager call with fixed arguments.
CORE = {
    "entropy": lambda: il.entropy(LOGITS),
    "entropy[excluded,base]": lambda: il.entropy(EXCLUDED, base=2.0),
    "entropy[where]": lambda: il.entropy(LOGITS, where=WHERE),
    "entropy_from_probs": lambda: il.entropy_from_probs(PROBS),
    "entropy_from_counts": lambda: il.entropy_from_counts(jnp.asarray([2, 2, 4])),
    "entropy_from_counts[list]": lambda: il.entropy_from_counts([2, 2, 4]),
    "binary_entropy": lambda: il.binary_entropy(LOGITS, base=2),
    "forward_kl": lambda: il.forward_kl(LOGITS, TARGET_LOGITS),
    "forward_kl[temperature]": lambda: il.forward_kl(LOGITS, TARGET_LOGITS, temperature=2.0),
    "forward_kl[excluded]": lambda: il.forward_kl(EXCLUDED, TARGET_LOGITS),
    "reverse_kl": lambda: il.reverse_kl(LOGITS, TARGET_LOGITS),
    "reverse_kl[where]": lambda: il.reverse_kl(LOGITS, TARGET_LOGITS, where=WHERE),
    "jensen_shannon": lambda: il.jensen_shannon(LOGITS, TARGET_LOGITS, beta=0.3),
    "kl_divergence": lambda: il.kl_divergence(LOG_PREDICTIONS, PROBS),
    "kl_divergence_with_log_targets": lambda: il.kl_divergence_with_log_targets(
        LOG_PREDICTIONS, LOG_TARGETS
    ),
    "generalized_kl_divergence": lambda: il.generalized_kl_divergence(LOG_PREDICTIONS, PROBS),
    "softmax_cross_entropy": lambda: il.softmax_cross_entropy(LOGITS, PROBS),
    "softmax_cross_entropy[options]": lambda: il.softmax_cross_entropy(
        EXCLUDED, PROBS.at[:, 0].set(0.0), reduction="mean", **LLM
    ),
    "safe_softmax_cross_entropy": lambda: il.safe_softmax_cross_entropy(LOGITS, PROBS),
    "softmax_cross_entropy_with_integer_labels": lambda: (
        il.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS, -1)
    ),
    "softmax_cross_entropy_with_integer_labels[options]": lambda: (
        il.softmax_cross_entropy_with_integer_labels(
            LOGITS,
            IGNORED_LABELS,
            ignore_index=-100,
            class_weights=CLASS_WEIGHTS,
            reduction="mean",
            **LLM,
        )
    ),
    "sigmoid_binary_cross_entropy": lambda: il.sigmoid_binary_cross_entropy(LOGITS, BINARY),
    "log_partition": lambda: il.log_partition(LOGITS),
    "z_loss": lambda: il.z_loss(LOGITS, where=WHERE),
    "reduce_loss": lambda: il.reduce_loss(LOGITS[:, 0], reduction="mean"),
    "loss_sum_and_count": lambda: il.loss_sum_and_count(LOGITS[:, 0], where=WHERE[:, 0]),
    "accumulate_value_and_grad": lambda: il.accumulate_value_and_grad(
        _sum_and_count, jnp.float32(1.0), {"x": LOGITS.reshape(2, 2, K), "y": LABELS.reshape(2, 2)}
    ),
}


def _sum_and_count(w, batch):
    losses = il.softmax_cross_entropy_with_integer_labels(batch["x"] * w, batch["y"])
    return il.loss_sum_and_count(losses)


TORCH = {
    "torch.cross_entropy[index]": lambda: F.cross_entropy(LOGITS, LABELS),
    "torch.cross_entropy[probs]": lambda: F.cross_entropy(LOGITS, PROBS),
    "torch.cross_entropy[probs,options]": lambda: F.cross_entropy(
        LOGITS, PROBS, weight=CLASS_WEIGHTS, label_smoothing=0.1, reduction="sum"
    ),
    "torch.nll_loss": lambda: F.nll_loss(LOG_PREDICTIONS, IGNORED_LABELS),
    "torch.kl_div": lambda: F.kl_div(LOG_PREDICTIONS, PROBS, reduction="batchmean"),
    "torch.kl_div[log_target]": lambda: F.kl_div(LOG_PREDICTIONS, LOG_TARGETS, log_target=True),
    "torch.binary_cross_entropy": lambda: F.binary_cross_entropy(jax.nn.sigmoid(LOGITS), BINARY),
    "torch.binary_cross_entropy_with_logits": lambda: F.binary_cross_entropy_with_logits(
        LOGITS, BINARY, pos_weight=jnp.full((K,), 2.0)
    ),
}

GRADIENTS = {
    "log_probs_grad": lambda: gradients.log_probs_grad(
        LOGITS, IGNORED_LABELS, ignore_index=-100, temperature=0.7, with_entropy=True
    )[1],
    "softmax_cross_entropy_grad": lambda: gradients.softmax_cross_entropy_grad(
        LOGITS, PROBS, **LLM
    ),
    "softmax_cross_entropy_with_integer_labels_grad": lambda: (
        gradients.softmax_cross_entropy_with_integer_labels_grad(
            LOGITS, IGNORED_LABELS, ignore_index=-100, class_weights=CLASS_WEIGHTS, **LLM
        )
    ),
    "softmax_cross_entropy_hessian": lambda: gradients.softmax_cross_entropy_hessian(LOGITS, PROBS),
    "softmax_cross_entropy_hvp": lambda: gradients.softmax_cross_entropy_hvp(
        LOGITS, PROBS, TANGENT
    ),
    "entropy_grad": lambda: gradients.entropy_grad(LOGITS, where=WHERE),
    "entropy_from_probs_grad": lambda: gradients.entropy_from_probs_grad(PROBS, base=2.0),
    "entropy_hessian": lambda: gradients.entropy_hessian(LOGITS),
    "entropy_hvp": lambda: gradients.entropy_hvp(LOGITS, TANGENT),
    "log_partition_grad": lambda: gradients.log_partition_grad(LOGITS),
    "z_loss_grad": lambda: gradients.z_loss_grad(LOGITS),
    "kl_divergence_grad": lambda: gradients.kl_divergence_grad(
        LOG_PREDICTIONS, PROBS, argnums=(0, 1)
    ),
    "kl_divergence_with_log_targets_grad": lambda: gradients.kl_divergence_with_log_targets_grad(
        LOG_PREDICTIONS, LOG_TARGETS, argnums=(0, 1)
    ),
    "generalized_kl_divergence_grad": lambda: gradients.generalized_kl_divergence_grad(
        LOG_PREDICTIONS, PROBS
    ),
    "forward_kl_grad": lambda: gradients.forward_kl_grad(
        LOGITS, TARGET_LOGITS, temperature=2.0, argnums=(0, 1)
    ),
    "reverse_kl_grad": lambda: gradients.reverse_kl_grad(LOGITS, TARGET_LOGITS, argnums=1),
    "jensen_shannon_grad": lambda: gradients.jensen_shannon_grad(LOGITS, TARGET_LOGITS, beta=0.3),
    "sigmoid_binary_cross_entropy_grad": lambda: gradients.sigmoid_binary_cross_entropy_grad(
        LOGITS, BINARY, argnums=(0, 1)
    ),
    "binary_entropy_grad": lambda: gradients.binary_entropy_grad(LOGITS),
}

CHECKED = {
    "checked(entropy)": lambda: il.checked(il.entropy)(LOGITS),
    "checked(entropy_from_counts)": lambda: il.checked(il.entropy_from_counts)([2, 2, 4]),
    "checked(forward_kl)": lambda: il.checked(il.forward_kl)(LOGITS, TARGET_LOGITS),
    "checked(reverse_kl)": lambda: il.checked(il.reverse_kl)(LOGITS, TARGET_LOGITS),
    "checked(jensen_shannon)": lambda: il.checked(il.jensen_shannon)(LOGITS, TARGET_LOGITS),
    "checked(kl_divergence)": lambda: il.checked(il.kl_divergence)(LOG_PREDICTIONS, PROBS),
    "checked(softmax_cross_entropy)": lambda: il.checked(il.softmax_cross_entropy)(
        LOGITS, PROBS, reduction="mean"
    ),
    "checked(softmax_cross_entropy_with_integer_labels)": lambda: il.checked(
        il.softmax_cross_entropy_with_integer_labels
    )(LOGITS, IGNORED_LABELS, ignore_index=-100),
    "checked(torch.cross_entropy)": lambda: il.checked(F.cross_entropy)(LOGITS, PROBS),
    "checked(torch.kl_div)": lambda: il.checked(F.kl_div)(LOG_PREDICTIONS, PROBS),
}

# The fused and sharded losses (hidden states and a head instead of logits). The sharded
# wrappers build a shard_map on every call; the engine rewrite caches their programs.
H, D, V = 8, 5, 11
HIDDEN = jnp.asarray(_rng.normal(size=(H, D)), jnp.float32)
TARGET_HIDDEN = jnp.asarray(_rng.normal(size=(H, D)), jnp.float32)
HEAD = jnp.asarray(_rng.normal(size=(D, V)) / 3, jnp.float32)
TARGET_HEAD = jnp.asarray(_rng.normal(size=(D, V)) / 3, jnp.float32)
TOKEN_LABELS = jnp.asarray(_rng.integers(0, V, size=H))
TOKEN_LOGITS = HIDDEN @ HEAD
TOKEN_TARGET_LOGITS = TARGET_HIDDEN @ TARGET_HEAD


def _mesh():
    devices = jax.devices() if len(jax.devices()) >= 8 else jax.devices("cpu")
    if len(devices) < 8:
        pytest.skip("needs 8 devices (conftest simulates them on the CPU)")
    return jax.make_mesh(
        (2, 4), ("data", "vocab"), devices=devices[:8], axis_types=(AxisType.Auto,) * 2
    )


MESH_ARGS = dict(vocab_axis="vocab", data_axis="data")

FUSED = {
    "linear_softmax_cross_entropy": lambda: il.linear_softmax_cross_entropy(
        HIDDEN, TOKEN_LABELS, HEAD, label_smoothing=0.1
    ),
    "linear_forward_kl": lambda: il.linear_forward_kl(HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD),
    "linear_reverse_kl": lambda: il.linear_reverse_kl(HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD),
    "linear_jensen_shannon": lambda: il.linear_jensen_shannon(
        HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD
    ),
}

SHARDED = {
    "sharded.vocab_parallel_cross_entropy_on_mesh": lambda: (
        sharded.vocab_parallel_cross_entropy_on_mesh(
            TOKEN_LOGITS, TOKEN_LABELS, mesh=_mesh(), **MESH_ARGS
        )
    ),
    "sharded.vocab_parallel_forward_kl_on_mesh": lambda: sharded.vocab_parallel_forward_kl_on_mesh(
        TOKEN_LOGITS, TOKEN_TARGET_LOGITS, mesh=_mesh(), **MESH_ARGS
    ),
    "sharded.vocab_parallel_reverse_kl_on_mesh": lambda: sharded.vocab_parallel_reverse_kl_on_mesh(
        TOKEN_LOGITS, TOKEN_TARGET_LOGITS, mesh=_mesh(), **MESH_ARGS
    ),
    "sharded.vocab_parallel_jensen_shannon_on_mesh": lambda: (
        sharded.vocab_parallel_jensen_shannon_on_mesh(
            TOKEN_LOGITS, TOKEN_TARGET_LOGITS, mesh=_mesh(), **MESH_ARGS
        )
    ),
    "sharded.vocab_parallel_linear_cross_entropy_on_mesh": lambda: (
        sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            HIDDEN, TOKEN_LABELS, HEAD, mesh=_mesh(), **MESH_ARGS
        )
    ),
    "sharded.vocab_parallel_linear_forward_kl_on_mesh": lambda: (
        sharded.vocab_parallel_linear_forward_kl_on_mesh(
            HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, mesh=_mesh(), **MESH_ARGS
        )
    ),
    "sharded.vocab_parallel_linear_reverse_kl_on_mesh": lambda: (
        sharded.vocab_parallel_linear_reverse_kl_on_mesh(
            HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, mesh=_mesh(), **MESH_ARGS
        )
    ),
    "sharded.vocab_parallel_linear_jensen_shannon_on_mesh": lambda: (
        sharded.vocab_parallel_linear_jensen_shannon_on_mesh(
            HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, mesh=_mesh(), **MESH_ARGS
        )
    ),
    "sharded.vocab_parallel_log_probs_on_mesh": lambda: sharded.vocab_parallel_log_probs_on_mesh(
        TOKEN_LOGITS, TOKEN_LABELS, mesh=_mesh(), temperature=0.7, with_entropy=True, **MESH_ARGS
    )[1],
    "sharded.vocab_parallel_linear_log_probs_on_mesh": lambda: (
        sharded.vocab_parallel_linear_log_probs_on_mesh(
            HIDDEN, TOKEN_LABELS, HEAD, mesh=_mesh(), logit_softcap=5.0, **MESH_ARGS
        )
    ),
}

POST_TRAINING = {
    "log_probs": lambda: il.log_probs(TOKEN_LOGITS, TOKEN_LABELS, with_entropy=True)[1],
    "linear_log_probs": lambda: il.linear_log_probs(
        HIDDEN, TOKEN_LABELS, HEAD, temperature=0.7, with_entropy=True
    )[1],
    "kl_estimate": lambda: il.kl_estimate(LOG_PREDICTIONS, LOG_TARGETS, estimator="k3"),
    "policy.clipped_surrogate": lambda: policy.clipped_surrogate(
        LOG_PREDICTIONS, LOG_TARGETS, TANGENT, ref_log_probs=LOG_TARGETS, kl_coef=0.1
    )[0],
    "policy.group_advantages": lambda: policy.group_advantages(LOGITS.reshape(-1), K),
    "preference.sequence_log_probs": lambda: preference.sequence_log_probs(
        LOG_PREDICTIONS, mask=WHERE
    ),
    "preference.dpo": lambda: preference.dpo(*PAIRS, beta=0.1)[0],
    "preference.ipo": lambda: preference.ipo(*PAIRS, beta=0.1)[0],
    "preference.hinge": lambda: preference.hinge(*PAIRS, beta=0.1)[0],
    "preference.simpo": lambda: preference.simpo(*PAIRS[:2], beta=2.0)[0],
    "preference.orpo": lambda: preference.orpo(*(-jnp.abs(x) for x in PAIRS[:2]), beta=0.1)[0],
    "preference.cpo": lambda: preference.cpo(*PAIRS[:2], beta=0.1)[0],
    "preference.kto": lambda: preference.kto(
        PAIRS[0], PAIRS[2], jnp.asarray([True, False, True, False]), beta=0.1
    )[0],
}

TRANSFORMS = {
    "grad(entropy)": lambda: jax.grad(lambda x: il.entropy(x).sum())(EXCLUDED),
    "grad(forward_kl)": lambda: jax.grad(lambda x: il.forward_kl(x, TARGET_LOGITS).sum())(LOGITS),
    "grad(reverse_kl)": lambda: jax.grad(lambda x: il.reverse_kl(x, TARGET_LOGITS).sum())(LOGITS),
    "grad(softmax_cross_entropy)": lambda: jax.grad(
        lambda x: il.softmax_cross_entropy(x, PROBS).sum()
    )(LOGITS),
    "grad(torch.cross_entropy[probs])": lambda: jax.grad(lambda x: F.cross_entropy(x, PROBS))(
        LOGITS
    ),
    "jvp(reverse_kl)": lambda: jax.jvp(
        lambda x: il.reverse_kl(x, TARGET_LOGITS), (LOGITS,), (TANGENT,)
    ),
    "vmap(entropy)": lambda: jax.vmap(il.entropy)(LOGITS),
}

# The declared divergences beyond the three KL forms, in every form, with their own coefficient
# (name, the value a case passes, a concrete value outside its range).
NEW_DIVERGENCES = {
    "total_variation": None,
    "skew_forward_kl": ("skew", 0.1, 2.0),
    "skew_reverse_kl": ("skew", 0.1, 2.0),
    "alpha_divergence": ("alpha", 0.3, float("inf")),
}
for _name, _coefficient in NEW_DIVERGENCES.items():
    _opts = {} if _coefficient is None else {_coefficient[0]: _coefficient[1]}
    _core, _grad = getattr(il, _name), getattr(gradients, f"{_name}_grad")
    _linear = getattr(il, f"linear_{_name}")
    _on_mesh = getattr(sharded, f"vocab_parallel_{_name}_on_mesh")
    _linear_on_mesh = getattr(sharded, f"vocab_parallel_linear_{_name}_on_mesh")
    CORE[_name] = functools.partial(_core, LOGITS, TARGET_LOGITS, **_opts)
    CORE[f"{_name}[excluded]"] = functools.partial(_core, EXCLUDED, TARGET_LOGITS, **_opts)
    GRADIENTS[f"{_name}_grad"] = functools.partial(_grad, LOGITS, TARGET_LOGITS, **_opts)
    FUSED[f"linear_{_name}"] = functools.partial(
        _linear, HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, **_opts
    )
    SHARDED[f"sharded.vocab_parallel_{_name}_on_mesh"] = lambda fn=_on_mesh, o=_opts: fn(
        TOKEN_LOGITS, TOKEN_TARGET_LOGITS, mesh=_mesh(), **MESH_ARGS, **o
    )
    _key = f"sharded.vocab_parallel_linear_{_name}_on_mesh"
    SHARDED[_key] = lambda fn=_linear_on_mesh, o=_opts: fn(
        HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, mesh=_mesh(), **MESH_ARGS, **o
    )
    TRANSFORMS[f"grad({_name})"] = lambda fn=_core, o=_opts: jax.grad(
        lambda x: fn(x, TARGET_LOGITS, **o).sum()
    )(LOGITS)


def _params(cases):
    return [pytest.param(call, id=name) for name, call in cases.items()]


@pytest.mark.parametrize(
    "call",
    _params(CORE)
    + _params(TORCH)
    + _params(GRADIENTS)
    + _params(CHECKED)
    + _params(TRANSFORMS)
    + _params(POST_TRAINING)
    + _params(FUSED)
    + _params(SHARDED),
)
def test_repeated_eager_calls_compile_nothing(call):
    assert compiles_after_warm_up(call) == 0


# ----------------------------------------------------------------------------- coefficients
# Every traceable coefficient of every public function (docs/concepts.md, bad input row 7):
# (call with the value v, a value outside its range). New values of a concrete coefficient are
# traced operands of the cached program, so they compile nothing; a bad concrete one still
# raises ValueError naming it, before anything runs.
DESIRABLE = jnp.asarray([True, False, True, False])
COEFFICIENTS = {
    "forward_kl.temperature": (lambda v: il.forward_kl(LOGITS, TARGET_LOGITS, temperature=v), 0),
    "reverse_kl.temperature": (lambda v: il.reverse_kl(LOGITS, TARGET_LOGITS, temperature=v), 0),
    "jensen_shannon.beta": (lambda v: il.jensen_shannon(LOGITS, TARGET_LOGITS, beta=v / 9), 18),
    "jensen_shannon.temperature": (
        lambda v: il.jensen_shannon(LOGITS, TARGET_LOGITS, temperature=v),
        -1,
    ),
    "softmax_cross_entropy.label_smoothing": (
        lambda v: il.softmax_cross_entropy(LOGITS, PROBS, label_smoothing=v / 9),
        9,
    ),
    "softmax_cross_entropy.z_loss": (
        lambda v: il.softmax_cross_entropy(LOGITS, PROBS, z_loss=v),
        -1,
    ),
    "softmax_cross_entropy_with_integer_labels.label_smoothing": (
        lambda v: il.softmax_cross_entropy_with_integer_labels(
            LOGITS, LABELS, label_smoothing=v / 9
        ),
        9,
    ),
    "softmax_cross_entropy_with_integer_labels.z_loss": (
        lambda v: il.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS, z_loss=v),
        -1,
    ),
    "log_probs.temperature": (lambda v: il.log_probs(LOGITS, LABELS, temperature=v), 0),
    "linear_log_probs.temperature": (
        lambda v: il.linear_log_probs(HIDDEN, TOKEN_LABELS, HEAD, temperature=v),
        0,
    ),
    "linear_softmax_cross_entropy.label_smoothing": (
        lambda v: il.linear_softmax_cross_entropy(
            HIDDEN, TOKEN_LABELS, HEAD, label_smoothing=v / 9
        ),
        9,
    ),
    "linear_softmax_cross_entropy.z_loss": (
        lambda v: il.linear_softmax_cross_entropy(HIDDEN, TOKEN_LABELS, HEAD, z_loss=v),
        -1,
    ),
    "linear_forward_kl.temperature": (
        lambda v: il.linear_forward_kl(HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, temperature=v),
        0,
    ),
    "linear_reverse_kl.temperature": (
        lambda v: il.linear_reverse_kl(HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, temperature=v),
        0,
    ),
    "linear_jensen_shannon.beta": (
        lambda v: il.linear_jensen_shannon(HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, beta=v / 9),
        18,
    ),
    "linear_jensen_shannon.temperature": (
        lambda v: il.linear_jensen_shannon(HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, temperature=v),
        0,
    ),
    "torch.cross_entropy.label_smoothing": (
        lambda v: F.cross_entropy(LOGITS, LABELS, label_smoothing=v / 9),
        18,
    ),
    "policy.clipped_surrogate.clip_low": (
        lambda v: policy.clipped_surrogate(LOG_PREDICTIONS, LOG_TARGETS, TANGENT, clip_low=v / 9),
        9,
    ),
    "policy.clipped_surrogate.clip_high": (
        lambda v: policy.clipped_surrogate(LOG_PREDICTIONS, LOG_TARGETS, TANGENT, clip_high=v),
        -1,
    ),
    "policy.clipped_surrogate.kl_coef": (
        lambda v: policy.clipped_surrogate(
            LOG_PREDICTIONS, LOG_TARGETS, TANGENT, ref_log_probs=LOG_TARGETS, kl_coef=v
        ),
        -1,
    ),
    "policy.clipped_surrogate.entropy_coef": (
        lambda v: policy.clipped_surrogate(
            LOG_PREDICTIONS, LOG_TARGETS, TANGENT, entropy=-LOG_TARGETS, entropy_coef=v
        ),
        -1,
    ),
    "policy.group_advantages.eps": (
        lambda v: policy.group_advantages(LOGITS.reshape(-1), K, eps=v),
        -1,
    ),
    "preference.dpo.beta": (lambda v: preference.dpo(*PAIRS, beta=v), 0),
    "preference.dpo.label_smoothing": (
        lambda v: preference.dpo(*PAIRS, beta=0.1, label_smoothing=v / 9),
        9,
    ),
    "preference.ipo.beta": (lambda v: preference.ipo(*PAIRS, beta=v), 0),
    "preference.hinge.beta": (lambda v: preference.hinge(*PAIRS, beta=v), 0),
    "preference.simpo.beta": (lambda v: preference.simpo(*PAIRS[:2], beta=v), 0),
    "preference.simpo.gamma": (
        lambda v: preference.simpo(*PAIRS[:2], beta=2.0, gamma=v),
        math.inf,
    ),
    "preference.simpo.label_smoothing": (
        lambda v: preference.simpo(*PAIRS[:2], beta=2.0, label_smoothing=v / 9),
        9,
    ),
    "preference.orpo.beta": (
        lambda v: preference.orpo(*(-jnp.abs(x) for x in PAIRS[:2]), beta=v),
        -1,
    ),
    "preference.cpo.beta": (lambda v: preference.cpo(*PAIRS[:2], beta=v), 0),
    "preference.cpo.alpha": (lambda v: preference.cpo(*PAIRS[:2], beta=0.1, alpha=v), -1),
    "preference.cpo.label_smoothing": (
        lambda v: preference.cpo(*PAIRS[:2], beta=0.1, label_smoothing=v / 9),
        9,
    ),
    "preference.kto.beta": (lambda v: preference.kto(PAIRS[0], PAIRS[2], DESIRABLE, beta=v), 0),
    "preference.kto.desirable_weight": (
        lambda v: preference.kto(PAIRS[0], PAIRS[2], DESIRABLE, beta=0.1, desirable_weight=v),
        -1,
    ),
    "preference.kto.undesirable_weight": (
        lambda v: preference.kto(PAIRS[0], PAIRS[2], DESIRABLE, beta=0.1, undesirable_weight=v),
        -1,
    ),
    "gradients.forward_kl_grad.temperature": (
        lambda v: gradients.forward_kl_grad(LOGITS, TARGET_LOGITS, temperature=v),
        0,
    ),
    "gradients.reverse_kl_grad.temperature": (
        lambda v: gradients.reverse_kl_grad(LOGITS, TARGET_LOGITS, temperature=v),
        0,
    ),
    "gradients.jensen_shannon_grad.temperature": (
        lambda v: gradients.jensen_shannon_grad(LOGITS, TARGET_LOGITS, temperature=v),
        0,
    ),
    "gradients.log_probs_grad.temperature": (
        lambda v: gradients.log_probs_grad(LOGITS, LABELS, temperature=v),
        0,
    ),
    "gradients.softmax_cross_entropy_with_integer_labels_grad.label_smoothing": (
        lambda v: gradients.softmax_cross_entropy_with_integer_labels_grad(
            LOGITS, LABELS, label_smoothing=v / 9
        ),
        9,
    ),
    "gradients.softmax_cross_entropy_with_integer_labels_grad.z_loss": (
        lambda v: gradients.softmax_cross_entropy_with_integer_labels_grad(
            LOGITS, LABELS, z_loss=v
        ),
        -1,
    ),
    # Global counts (from a collective over data-parallel shards) are traceable coefficients too.
    "policy.clipped_surrogate.num_tokens": (
        lambda v: policy.clipped_surrogate(
            LOG_PREDICTIONS, LOG_TARGETS, TANGENT, num_tokens=10 * v
        ),
        0,
    ),
    "policy.clipped_surrogate.num_sequences": (
        lambda v: policy.clipped_surrogate(
            LOG_PREDICTIONS, LOG_TARGETS, TANGENT, normalization="sequence_mean", num_sequences=v
        ),
        0,
    ),
    "policy.clipped_surrogate.max_tokens": (
        lambda v: policy.clipped_surrogate(
            LOG_PREDICTIONS, LOG_TARGETS, TANGENT, normalization="token_sum_norm", max_tokens=v
        ),
        0,
    ),
    **{
        f"preference.{name}.num_pairs": (
            lambda v, name=name, n=n: getattr(preference, name)(*PAIRS[:n], beta=0.1, num_pairs=v),
            0,
        )
        for name, n in [("dpo", 4), ("ipo", 4), ("hinge", 4), ("simpo", 2), ("orpo", 2), ("cpo", 2)]
    },
    **{
        f"preference.{name}.num_tokens": (
            lambda v, name=name: getattr(preference, name)(
                *(-jnp.abs(x) for x in PAIRS[:2]), beta=0.1, num_tokens=10 * v
            ),
            0,
        )
        for name in ("orpo", "cpo")
    },
    "preference.kto.num_examples": (
        lambda v: preference.kto(PAIRS[0], PAIRS[2], DESIRABLE, beta=0.1, num_examples=v),
        0,
    ),
}
for _name, _coefficient in NEW_DIVERGENCES.items():
    _coefficients = [("temperature", 1.0, 0.0)] + ([] if _coefficient is None else [_coefficient])
    for _prefix, _fn, _args in [
        ("", getattr(il, _name), (LOGITS, TARGET_LOGITS)),
        ("gradients.", getattr(gradients, f"{_name}_grad"), (LOGITS, TARGET_LOGITS)),
        ("", getattr(il, f"linear_{_name}"), (HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD)),
    ]:
        for _option, _scale, _bad in _coefficients:
            # the cases call with 1.5, 2.5, 3.5: scaled into the coefficient's range
            COEFFICIENTS[f"{_prefix}{_fn.__name__}.{_option}"] = (
                lambda v, fn=_fn, args=_args, option=_option, scale=_scale: fn(
                    *args, **{option: v * scale}
                ),
                _bad / _scale,
            )
# Coefficients that select the program and so are static, each with its reason; the sharded
# `*_on_mesh` losses are counted with the sharded tests.
STATIC_COEFFICIENTS = {
    "gradients.softmax_cross_entropy_grad.label_smoothing": "skips the smoothing term when 0",
    "gradients.softmax_cross_entropy_grad.z_loss": "skips the z-loss term when 0",
    "gradients.jensen_shannon_grad.beta": "picks the forward or reverse KL kernel at 0 and 1",
}
COEFFICIENT_NAMES = {
    "temperature", "label_smoothing", "z_loss", "beta", "gamma", "alpha", "skew", "kl_coef",
    "entropy_coef", "clip_low", "clip_high", "eps", "desirable_weight", "undesirable_weight",
    "num_tokens", "num_sequences", "max_tokens", "num_pairs", "num_examples",
}  # fmt: skip


@pytest.mark.parametrize("case", COEFFICIENTS)
def test_new_coefficient_values_compile_nothing(case):
    call, bad = COEFFICIENTS[case]
    jax.block_until_ready(call(1.5))
    with count_compiles() as compiles:
        for value in (2.5, 3.5):
            jax.block_until_ready(call(value))
    assert len(compiles) == 0
    with pytest.raises(ValueError, match=f"`{case.rsplit('.', 1)[1]}`"):
        call(bad)


def test_a_bad_concrete_array_coefficient_raises():
    """Concrete NumPy and JAX scalars are checked as Python numbers are (issue 20)."""
    with pytest.raises(ValueError, match="`clip_low`"):
        policy.clipped_surrogate(LOG_PREDICTIONS, LOG_TARGETS, TANGENT, clip_low=np.float32(1.5))
    with pytest.raises(ValueError, match="`kl_coef`"):
        policy.clipped_surrogate(
            LOG_PREDICTIONS,
            LOG_TARGETS,
            TANGENT,
            ref_log_probs=LOG_TARGETS,
            kl_coef=jnp.array(-1.0),
        )
    with pytest.raises(ValueError, match="`beta`"):
        preference.dpo(*PAIRS, beta=jnp.array(0.0))
    with pytest.raises(ValueError, match="`temperature`"):
        il.forward_kl(LOGITS, TARGET_LOGITS, temperature=jnp.array(-2.0))


def _public_functions():
    for module, prefix in [(il, ""), (F, "torch."), (gradients, "gradients."),
                           (policy, "policy."), (preference, "preference.")]:  # fmt: skip
        for name in module.__all__:
            fn = getattr(module, name)
            if callable(fn) and not isinstance(fn, type):
                yield prefix + name, fn


def test_every_traceable_coefficient_is_counted():
    """A coefficient of a new public function must join COEFFICIENTS (or STATIC_COEFFICIENTS)."""
    import inspect

    found = {
        f"{name}.{parameter}"
        for name, fn in _public_functions()
        for parameter in inspect.signature(fn).parameters
        if parameter in COEFFICIENT_NAMES
    }
    assert found == set(COEFFICIENTS) | set(STATIC_COEFFICIENTS)


def test_the_counter_sees_compiles():
    fresh = jnp.asarray(_rng.normal(size=(3, 17)))  # a shape no other test uses
    with count_compiles() as compiles:
        jax.jit(lambda x: jnp.sin(x) * 3.0)(fresh)
    assert len(compiles) >= 1


def test_the_public_names_are_all_covered():
    """A new public loss must join a case table above (or be listed here as not a loss)."""
    not_losses = {
        "ArgumentReport",
        "GradientReport",
        "GradientTable",
        "LinearCrossEntropyAux",
        "SumAndCount",
        "TokenLogProbs",
        "checked",
        "compare_gradients",
        "gradient_table",
        "register_value_checks",
    }
    covered = {
        name.split("[")[0] for name in [*CORE, *TORCH, *GRADIENTS, *FUSED, *SHARDED, *POST_TRAINING]
    }
    public = (
        set(il.__all__) - not_losses
        | {f"torch.{n}" for n in F.__all__}
        | set(gradients.__all__)
        | {f"policy.{n}" for n in policy.__all__ if not n.endswith("Aux")}
        | {f"preference.{n}" for n in preference.__all__ if not n.endswith("Aux")}
        | {f"sharded.{n}" for n in sharded.__all__ if n.endswith("_on_mesh")}
    )
    assert public <= covered, sorted(public - covered)


# ----------------------------------------------------------------------------- semantics
# The cache must not change what a call does: same values, same errors, same dtypes.


def test_cached_calls_equal_the_plain_eager_calls():
    for fn, args, kwargs in [
        (il.entropy, (EXCLUDED,), dict(base=2.0)),
        (il.forward_kl, (LOGITS, TARGET_LOGITS), dict(temperature=2.0, where=WHERE)),
        (il.softmax_cross_entropy, (EXCLUDED, PROBS.at[:, 0].set(0.0)), LLM),
        (F.cross_entropy, (LOGITS, PROBS), dict(label_smoothing=0.1)),
        (gradients.jensen_shannon_grad, (LOGITS, TARGET_LOGITS), dict(argnums=(0, 1))),
    ]:
        cached = fn(*args, **kwargs)
        plain = fn.__wrapped__(*args, **kwargs)
        np.testing.assert_allclose(
            jax.tree.leaves(cached), jax.tree.leaves(plain), rtol=1e-6, atol=1e-7
        )


def test_static_options_key_the_cache():
    in_nats, in_bits = il.entropy(LOGITS), il.entropy(LOGITS, base=2.0)
    np.testing.assert_allclose(in_bits, in_nats / math.log(2.0), rtol=1e-6)
    for reduction, expected in [("none", (N,)), ("mean", ()), ("sum", ())]:
        assert il.softmax_cross_entropy(LOGITS, PROBS, reduction=reduction).shape == expected


def test_python_numbers_lists_and_mappings_work():
    expected = il.entropy_from_counts(jnp.asarray([2.0, 2.0, 4.0]), base=2)
    for counts in ([2, 2, 4], (2, 2, 4), [2.0, 2.0, 4.0], {"a": 2, "b": 2, "c": 4}):
        np.testing.assert_allclose(il.entropy_from_counts(counts, base=2), expected, rtol=1e-6)
    assert float(il.binary_entropy(0.0, base=2)) == pytest.approx(1.0)
    np.testing.assert_allclose(il.entropy(np.zeros(4)), math.log(4.0), rtol=1e-6)


def test_validation_errors_are_unchanged_on_repeated_calls():
    il.binary_entropy(0.0)  # a cached float call must not let an int through
    for _ in range(2):
        with pytest.raises(TypeError, match="`logits` must be a floating-point array"):
            il.binary_entropy(0)
        with pytest.raises(TypeError, match="`logits`"):
            il.entropy(jnp.arange(4))
        with pytest.raises(ValueError, match="`temperature`"):
            il.forward_kl(LOGITS, TARGET_LOGITS, temperature=-1.0)
        with pytest.raises(ValueError, match="Unknown `reduction`"):
            il.softmax_cross_entropy(LOGITS, PROBS, reduction="avg")
        with pytest.raises(TypeError, match="`where` must be a boolean mask"):
            il.entropy(LOGITS, where=jnp.ones((N, K)))
        with pytest.raises(ValueError, match="looks like probabilities"):
            il.checked(il.kl_divergence)(jax.nn.softmax(LOGITS), PROBS)
        with pytest.raises(ValueError, match="labels"):
            il.checked(il.softmax_cross_entropy_with_integer_labels)(LOGITS, LABELS + K)


def test_traced_and_concrete_array_options():
    """Options given as arrays: traced under jit, or concrete in an eager call."""
    expected = il.forward_kl(LOGITS, TARGET_LOGITS, temperature=2.0)
    traced = jax.jit(lambda t: il.forward_kl(LOGITS, TARGET_LOGITS, temperature=t))(2.0)
    concrete = il.forward_kl(LOGITS, TARGET_LOGITS, temperature=jnp.asarray(2.0))
    np.testing.assert_allclose(traced, expected, rtol=1e-6)
    np.testing.assert_allclose(concrete, expected, rtol=1e-6)
    smoothed = il.softmax_cross_entropy_with_integer_labels(
        LOGITS, LABELS, label_smoothing=np.float64(0.1)
    )
    np.testing.assert_allclose(
        smoothed,
        il.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS, label_smoothing=0.1),
        rtol=1e-6,
    )


def test_dtypes_follow_the_inputs():
    with jax.enable_x64(False):
        assert il.entropy(jnp.zeros(3, jnp.bfloat16)).dtype == jnp.float32
        assert il.entropy_from_counts([1, 2]).dtype == jnp.float32
    assert il.entropy(jnp.zeros(3, jnp.float64)).dtype == jnp.float64


def test_new_array_values_compile_nothing():
    """Arrays and lists of numbers are traced: a new value reuses the program. (A Python number
    stays static, so that the loss can validate it as a concrete value.)"""
    shifted, doubled = jax.block_until_ready((LOGITS + 1.0, 2.0 * CLASS_WEIGHTS))
    jax.block_until_ready(
        (
            il.binary_entropy(jnp.float32(0.25)),
            il.entropy_from_counts([1, 2, 3]),
            il.softmax_cross_entropy(LOGITS, PROBS),
            F.cross_entropy(LOGITS, PROBS, weight=CLASS_WEIGHTS),
        )
    )
    with count_compiles() as compiles:
        jax.block_until_ready(
            (
                il.binary_entropy(jnp.float32(0.75)),
                il.entropy_from_counts([4, 5, 6]),
                il.softmax_cross_entropy(shifted, PROBS),
                F.cross_entropy(LOGITS, PROBS, weight=doubled),
            )
        )
    assert len(compiles) == 0


def test_cached_eager_names_its_static_parameters():
    from infoloss_jax.base._caching import cached_eager

    with pytest.raises(TypeError, match="static parameters' names"):
        cached_eager(il.entropy.__wrapped__)  # a bare @cached_eager
    with pytest.raises(TypeError, match="has no parameter"):
        cached_eager("axes")(il.entropy.__wrapped__)
    # A concrete array where a static option belongs: the call runs uncached, and works.
    np.testing.assert_allclose(
        il.entropy(LOGITS, base=np.float64(2.0)), il.entropy(LOGITS, base=2.0), rtol=1e-6
    )


def test_new_coefficient_values_compile_nothing_in_the_heads():
    """A new Python-float coefficient (temperature, beta, label_smoothing) of a fused head or an
    on-mesh wrapper is validated, then passed as an operand of the cached program (issue 20)."""
    mesh = _mesh()
    calls = [
        lambda c: sharded.vocab_parallel_log_probs_on_mesh(
            TOKEN_LOGITS, TOKEN_LABELS, mesh=mesh, temperature=c, **MESH_ARGS
        ),
        lambda c: sharded.vocab_parallel_cross_entropy_on_mesh(
            TOKEN_LOGITS, TOKEN_LABELS, mesh=mesh, label_smoothing=c / 10, **MESH_ARGS
        ),
        lambda c: sharded.vocab_parallel_jensen_shannon_on_mesh(
            TOKEN_LOGITS, TOKEN_TARGET_LOGITS, mesh=mesh, beta=c / 3, **MESH_ARGS
        ),
        lambda c: sharded.vocab_parallel_linear_forward_kl_on_mesh(
            HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, mesh=mesh, temperature=c, **MESH_ARGS
        ),
        lambda c: il.linear_jensen_shannon(
            HIDDEN, HEAD, TARGET_HIDDEN, TARGET_HEAD, beta=c / 3, temperature=c
        ),
        lambda c: il.linear_softmax_cross_entropy(
            HIDDEN, TOKEN_LABELS, HEAD, label_smoothing=c / 10, z_loss=c / 100
        ),
    ]
    for call in calls:
        jax.block_until_ready(call(0.7))
        with count_compiles() as compiles:
            for value in (1.5, 2.5):
                jax.block_until_ready(call(value))
        assert compiles == [], call


def test_an_optional_operand_does_not_move_the_coefficient_checks():
    """None and an array in one optional slot shift the leaves; each keeps its own checks."""
    logits = jnp.asarray([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
    labels = jnp.asarray([2, 0])
    weights = jnp.asarray([0.2, 1.0, 3.0])
    for class_weights in (None, weights, None, weights):
        got = il.softmax_cross_entropy_with_integer_labels(
            logits, labels, label_smoothing=0.1, class_weights=class_weights
        )
        assert np.all(np.isfinite(np.asarray(got)))
    with pytest.raises(ValueError, match="label_smoothing"):
        il.softmax_cross_entropy_with_integer_labels(
            logits, labels, label_smoothing=1.5, class_weights=weights
        )


def test_an_eager_gradient_runs_compiled_programs_and_traces_new_coefficients():
    """An eager jax.grad of a loss compiles its passes once; a new Python-float coefficient
    compiles nothing more, and a bad one still raises."""

    def grad(temperature):
        return jax.grad(lambda x: il.forward_kl(x, TARGET_LOGITS, temperature=temperature).sum())(
            LOGITS
        )

    jax.block_until_ready(grad(1.5))
    with count_compiles() as compiles:
        for value in (2.5, 3.5):
            jax.block_until_ready(grad(value))
    assert len(compiles) == 0
    with pytest.raises(ValueError, match="`temperature`"):
        grad(-1.0)
