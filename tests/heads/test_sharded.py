"""Vocabulary-parallel losses (infoloss_jax.sharded) on 8 simulated CPU devices.

Every sharded result is compared with the core loss on the gathered (unpadded) inputs, values and
gradients, in float64 (conftest enables x64). The vocabulary (13 classes) is not a multiple of any
mesh axis, so the padding path is always exercised; ignored tokens are spread unevenly across the
data shards, so a mean of per-shard means would be wrong.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MESHES, cpu_fallback_mesh, data_axis, make_mesh
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import infoloss_jax as il
from infoloss_jax import sharded

N, D, V = 8, 6, 13
IGNORE = -100
ROOT = Path(__file__).resolve().parents[2]

CE_OPTIONS = {
    "plain": {},
    "all": dict(ignore_index=IGNORE, label_smoothing=0.1, z_loss=1e-3, logit_softcap=4.0),
}


def padded_size(mesh, vocab=V):
    d = mesh.shape["model"]
    return d * -(-vocab // d)


def pad_vocab(x, size):
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


def make_inputs(dtype=jnp.float64, seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(N, V)) * 2, dtype)
    target = jnp.asarray(rng.normal(size=(N, V)) * 2, dtype)
    hidden = jnp.asarray(rng.normal(size=(N, D)), dtype)
    weight = jnp.asarray(rng.normal(size=(D, V)), dtype)
    bias = jnp.asarray(rng.normal(size=(V,)), dtype)
    labels = rng.integers(0, V, N)
    labels[[0, 1, 2, 5]] = IGNORE  # 3 of the first 4 tokens, 1 of the last 4: uneven shards
    return logits, target, hidden, weight, bias, jnp.asarray(labels, jnp.int32)


def core_ce(logits, labels, options, reduction="mean"):
    options = dict(options)
    if "ignore_index" not in options:
        labels = jnp.where(labels == IGNORE, 0, labels)
    return il.softmax_cross_entropy_with_integer_labels(
        logits, labels, reduction=reduction, **options
    )


def ce_labels(labels, options):
    return labels if "ignore_index" in options else jnp.where(labels == IGNORE, 0, labels)


def assert_close(actual, expected, tol=1e-10):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol)


# ------------------------------------------------------------------------ vocab-parallel CE


@pytest.mark.slow
@pytest.mark.parametrize("options", sorted(CE_OPTIONS))
@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_cross_entropy_matches_core(mesh_name, options):
    mesh = make_mesh(mesh_name)
    opts = CE_OPTIONS[options]
    logits, _, _, _, _, labels = make_inputs()
    labels = ce_labels(labels, opts)
    padded = pad_vocab(logits, padded_size(mesh))
    dp = data_axis(mesh)

    def local(z, y):
        per_token = sharded.vocab_parallel_cross_entropy(
            z, y, vocab_axis="model", vocab_size=V, **opts
        )
        mean = sharded.vocab_parallel_cross_entropy(
            z, y, vocab_axis="model", vocab_size=V, reduction="mean", data_axis=dp, **opts
        )
        return per_token, mean

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(dp, "model"), P(dp)), out_specs=(P(dp), P()))
    per_token, mean = jax.jit(fn)(padded, labels)
    assert_close(per_token, core_ce(logits, labels, opts, "none"))
    assert_close(mean, core_ce(logits, labels, opts))
    grad = jax.jit(jax.grad(lambda z: fn(z, labels)[1]))(padded)
    expected = jax.grad(lambda z: core_ce(z, labels, opts))(logits)
    assert_close(grad[:, :V], expected)
    assert_close(grad[:, V:], 0.0)


def test_data_parallel_mean_is_exact_not_a_mean_of_means():
    mesh = make_mesh("2x4")
    logits, _, _, _, _, labels = make_inputs()
    opts = dict(ignore_index=IGNORE)
    loss = sharded.vocab_parallel_cross_entropy_on_mesh(
        logits, labels, mesh=mesh, vocab_axis="model", data_axis="data", reduction="mean", **opts
    )
    assert_close(loss, core_ce(logits, labels, opts))
    per_token = core_ce(logits, labels, opts, "none")
    keep = labels != IGNORE
    shard_means = [per_token[s].sum() / keep[s].sum() for s in (slice(0, N // 2), slice(N // 2, N))]
    assert abs(float(np.mean(shard_means)) - float(loss)) > 1e-3


def test_grad_taken_inside_shard_map():
    mesh = make_mesh("2x4")
    logits, _, _, _, _, labels = make_inputs()
    opts = CE_OPTIONS["all"]
    padded = pad_vocab(logits, padded_size(mesh))

    def local_grad(z, y):
        def loss(z):
            return sharded.vocab_parallel_cross_entropy(
                z,
                y,
                vocab_axis="model",
                vocab_size=V,
                reduction="sum",
                data_axis="data",
                **opts,
            )

        return jax.grad(loss)(z)

    spec = P("data", "model")
    grad = jax.jit(
        jax.shard_map(local_grad, mesh=mesh, in_specs=(spec, P("data")), out_specs=spec)
    )(padded, labels)
    expected = jax.grad(lambda z: core_ce(z, labels, opts, "sum"))(logits)
    assert_close(grad[:, :V], expected)


def test_cross_entropy_where_and_excluded_classes():
    mesh = make_mesh("8")
    logits, _, _, _, _, labels = make_inputs(seed=1)
    labels = jnp.where(labels == IGNORE, 1, labels)
    where = jnp.asarray(np.random.default_rng(2).random((N, V)) > 0.3).at[:, 1].set(True)
    where = where.at[jnp.arange(N), labels].set(True)
    logits = logits.at[:, 4].set(-jnp.inf).at[:, 4].set(jnp.where(labels == 4, 0.0, -jnp.inf))
    opts = dict(label_smoothing=0.2, logit_softcap=3.0)
    size = padded_size(mesh)

    def local(z, y, w):
        return sharded.vocab_parallel_cross_entropy(
            z, y, vocab_axis="model", vocab_size=V, where=w, reduction="sum", **opts
        )

    fn = jax.jit(
        jax.shard_map(
            local, mesh=mesh, in_specs=(P(None, "model"), P(), P(None, "model")), out_specs=P()
        )
    )
    z, w = pad_vocab(logits, size), pad_vocab(where, size)
    value, grad = jax.value_and_grad(fn)(z, labels, w)
    expected = il.softmax_cross_entropy_with_integer_labels(
        logits, labels, where=where, reduction="sum", **opts
    )
    assert_close(value, expected)
    assert np.isfinite(np.asarray(grad)).all()
    ref_grad = jax.grad(
        lambda z: il.softmax_cross_entropy_with_integer_labels(
            z, labels, where=where, reduction="sum", **opts
        )
    )(logits)
    assert_close(jnp.where(jnp.isfinite(ref_grad), grad[:, :V], 0.0), jnp.nan_to_num(ref_grad))


def test_cross_entropy_value_level_mistakes():
    """Out-of-range labels poison their row; an all-ignored batch gives 0 with a 0 gradient."""
    mesh = make_mesh("8")
    logits = make_inputs()[0]
    labels = jnp.array([0, V, -1, IGNORE, 3, 4, 5, 6], jnp.int32)
    out = sharded.vocab_parallel_cross_entropy_on_mesh(
        logits, labels, mesh=mesh, vocab_axis="model", ignore_index=IGNORE, reduction="none"
    )
    out = np.asarray(out)
    assert np.isnan(out[[1, 2]]).all() and out[3] == 0 and np.isfinite(out[[0, 4, 5, 6, 7]]).all()

    all_ignored = jnp.full((N,), IGNORE, jnp.int32)

    def mean(z):
        return sharded.vocab_parallel_cross_entropy_on_mesh(
            z, all_ignored, mesh=mesh, vocab_axis="model", ignore_index=IGNORE, reduction="mean"
        )

    value, grad = jax.value_and_grad(mean)(logits)
    assert float(value) == 0.0 and not np.asarray(grad).any()


@pytest.mark.slow
def test_cross_entropy_bfloat16():
    mesh = make_mesh("2x4")
    logits, _, _, _, _, labels = make_inputs()
    logits = logits.astype(jnp.bfloat16)
    opts = CE_OPTIONS["all"]

    def loss(z):
        return sharded.vocab_parallel_cross_entropy_on_mesh(
            z, labels, mesh=mesh, vocab_axis="model", data_axis="data", reduction="mean", **opts
        )

    value, grad = jax.value_and_grad(loss)(logits)
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    expected, ref_grad = jax.value_and_grad(lambda z: core_ce(z, labels, opts))(logits)
    assert_close(value, expected, tol=1e-5)
    assert_close(grad.astype(jnp.float32), ref_grad.astype(jnp.float32), tol=1e-2)


def test_cross_entropy_check_grads():
    mesh = make_mesh("2x4")
    logits, _, _, _, _, labels = make_inputs()
    opts = CE_OPTIONS["all"]
    fn = jax.jit(
        lambda z: sharded.vocab_parallel_cross_entropy_on_mesh(
            z, labels, mesh=mesh, vocab_axis="model", data_axis="data", reduction="mean", **opts
        )
    )
    check_grads(fn, (logits,), order=1, modes=["rev"])


# ---------------------------------------------------------------- vocab-parallel fused linear CE


def core_linear_ce(hidden, weight, bias, labels, options):
    return core_ce(hidden @ weight + bias, labels, options)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh_name, options, blocks",
    [
        ("8", "all", (3, 1)),
        ("2x4", "all", (3, 2)),
        ("4x2", "plain", (None, None)),
        ("4x2", "all", (1, 4)),
    ],
)
def test_linear_cross_entropy_matches_core(mesh_name, options, blocks):
    mesh = make_mesh(mesh_name)
    opts = CE_OPTIONS[options]
    _, _, hidden, weight, bias, labels = make_inputs()
    labels = ce_labels(labels, opts)
    block_opts = dict(token_block_size=blocks[0], vocab_block_size=blocks[1])

    def loss(h, w, b):
        return sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            h,
            labels,
            w,
            bias=b,
            mesh=mesh,
            vocab_axis="model",
            data_axis=data_axis(mesh),
            **opts,
            **block_opts,
        )

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(hidden, weight, bias)
    expected, ref_grads = jax.value_and_grad(core_linear_ce, argnums=(0, 1, 2))(
        hidden, weight, bias, labels, opts
    )
    assert_close(value, expected)
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close(g, r)


def test_linear_cross_entropy_per_token_inside_user_shard_map():
    mesh = make_mesh("2x4")
    _, _, hidden, weight, _, labels = make_inputs()
    labels = jnp.where(labels == IGNORE, 2, labels)
    size = padded_size(mesh)

    def local(h, y, w):
        return sharded.vocab_parallel_linear_cross_entropy(
            h, y, w, vocab_axis="model", vocab_size=V, reduction="none", vocab_block_size=2
        )

    specs = (P("data", None), P("data"), P(None, "model"))
    w = pad_vocab(weight, size)
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P("data")))
    assert_close(fn(hidden, labels, w), core_ce(hidden @ weight, labels, {}, "none"))
    grads = jax.grad(lambda h, w: (fn(h, labels, w) ** 2).sum(), (0, 1))(hidden, w)
    ref = jax.grad(lambda h, w: (core_ce(h @ w, labels, {}, "none") ** 2).sum(), (0, 1))(
        hidden, weight
    )
    assert_close(grads[0], ref[0])
    assert_close(grads[1][:, :V], ref[1])
    # check_vma=False hides which values are per-device slices; the gradients of the
    # collectives would be wrong, so the loss refuses.
    unchecked = jax.shard_map(
        local, mesh=mesh, in_specs=specs, out_specs=P("data"), check_vma=False
    )
    with pytest.raises(ValueError, match="`weight_shard`.*not split over mesh axis 'model'"):
        jax.jit(unchecked)(hidden, labels, w)


@pytest.mark.parametrize(
    "mesh_name, plan",
    [("2x4", "tokens_outer"), ("2x4", "vocab_outer"), ("8", "two_pass"), ("2x4", "two_pass")],
)
def test_linear_cross_entropy_every_backward_plan(mesh_name, plan, monkeypatch):
    """Both one-pass loop orders and the two-pass backward (weight gradient with vocabulary
    blocks outside, then hidden gradient with token blocks outside) give the exact gradients."""
    from infoloss_jax.engine import _blockwise

    monkeypatch.setattr(_blockwise, "resolve_plan", lambda *args: plan)
    mesh = make_mesh(mesh_name)
    opts = CE_OPTIONS["all"]
    _, _, hidden, weight, bias, labels = make_inputs(seed=4)

    def loss(h, w, b):
        return sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            h,
            labels,
            w,
            bias=b,
            mesh=mesh,
            vocab_axis="model",
            data_axis=data_axis(mesh),
            token_block_size=3,
            vocab_block_size=3,
            **opts,
        )

    grads = jax.grad(loss, argnums=(0, 1, 2))(hidden, weight, bias)
    ref = jax.grad(core_linear_ce, argnums=(0, 1, 2))(hidden, weight, bias, labels, opts)
    for g, r in zip(grads, ref, strict=True):
        assert_close(g, r)


@pytest.mark.parametrize("mesh_name, backward", [("2x4", "one_pass"), ("8", "two_pass")])
def test_linear_cross_entropy_bfloat16(mesh_name, backward):
    mesh = make_mesh(mesh_name)
    _, _, hidden, weight, bias, labels = make_inputs()
    h, w = hidden.astype(jnp.bfloat16), weight.astype(jnp.bfloat16)
    opts = dict(ignore_index=IGNORE, z_loss=1e-3, backward=backward)

    def loss(h, w):
        return sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            h, labels, w, mesh=mesh, vocab_axis="model", data_axis=data_axis(mesh), **opts
        )

    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(h, w)
    assert value.dtype == jnp.float32
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    core_opts = dict(ignore_index=IGNORE, z_loss=1e-3)
    exact = core_ce(h.astype(jnp.float64) @ w.astype(jnp.float64), labels, core_opts)
    assert_close(value, exact, tol=1e-5)
    ref = jax.grad(lambda h, w: core_ce(h @ w, labels, core_opts), (0, 1))(
        h.astype(jnp.float64), w.astype(jnp.float64)
    )
    for g, r in zip(grads, ref, strict=True):
        assert_close(g.astype(jnp.float64), r, tol=2e-2)


@pytest.mark.slow
def test_linear_cross_entropy_check_grads():
    mesh = make_mesh("4x2")
    _, _, hidden, weight, bias, labels = make_inputs()
    opts = dict(ignore_index=IGNORE, label_smoothing=0.1, logit_softcap=3.0)
    fn = jax.jit(
        lambda h, w, b: sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            h,
            labels,
            w,
            bias=b,
            mesh=mesh,
            vocab_axis="model",
            data_axis="data",
            token_block_size=1,
            vocab_block_size=3,
            **opts,
        )
    )
    check_grads(fn, (hidden, weight, bias), order=1, modes=["rev"])


# ------------------------------------------------------------------------ token log-probs


def _log_prob_inputs(seed=3):
    """Logits with an excluded class (-inf, never a label), ignored tokens, random cotangents."""
    logits, _, hidden, weight, bias, labels = make_inputs(seed=seed)
    labels = jnp.where(labels == 4, 5, labels)
    rng = np.random.default_rng(seed)
    cotangents = tuple(jnp.asarray(rng.normal(size=(N,))) for _ in range(2))
    return (
        logits.at[:, 4].set(-jnp.inf),
        hidden,
        weight,
        bias.at[4].set(-jnp.inf),
        labels,
        cotangents,
    )


LOG_PROB_OPTIONS = dict(temperature=0.7, logit_softcap=4.0, ignore_index=IGNORE)


def core_log_probs(logits, labels, **options):
    return il.log_probs(logits, labels, with_entropy=True, **LOG_PROB_OPTIONS, **options)


def weighted(outputs, cotangents):
    return sum(jnp.sum(c * o) for o, c in zip(outputs, cotangents, strict=True))


def test_log_probs_match_core_inside_shard_map_and_on_mesh():
    mesh = make_mesh("2x4")
    logits, _, _, _, labels, cts = _log_prob_inputs()
    size = padded_size(mesh)

    def local(z, y):
        return sharded.vocab_parallel_log_probs(
            z, y, vocab_axis="model", vocab_size=V, with_entropy=True, **LOG_PROB_OPTIONS
        )

    specs = (P("data", "model"), P("data"))
    inside = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P("data")))

    def on_mesh(z):
        return sharded.vocab_parallel_log_probs_on_mesh(
            z,
            labels,
            mesh=mesh,
            vocab_axis="model",
            data_axis="data",
            with_entropy=True,
            **LOG_PROB_OPTIONS,
        )

    expected = core_log_probs(logits, labels)
    assert float(expected[0][0]) == 0.0 and float(expected[1][0]) == 0.0  # an ignored token
    ref_grad = jax.grad(lambda z: weighted(core_log_probs(z, labels), cts))(logits)
    for out, grad in [
        (inside(pad_vocab(logits, size), labels), None),
        (on_mesh(logits), jax.grad(lambda z: weighted(on_mesh(z), cts))(logits)),
    ]:
        assert_close(out[0], expected[0])
        assert_close(out[1], expected[1])
        if grad is not None:
            assert_close(grad, ref_grad)
    grad = jax.grad(lambda z: weighted(inside(z, labels), cts))(pad_vocab(logits, size))
    assert_close(grad[:, :V], ref_grad)
    # Without the entropy: the log-probs alone; a label on the excluded class gives -inf.
    alone = sharded.vocab_parallel_log_probs_on_mesh(
        logits, labels.at[3].set(4), mesh=mesh, vocab_axis="model", temperature=0.7
    )
    assert_close(alone, il.log_probs(logits, labels.at[3].set(4), temperature=0.7))
    assert float(alone[3]) == -np.inf


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dv", "vd"])
def test_linear_log_probs_match_core(layout):
    mesh = make_mesh("4x2")
    _, hidden, weight, bias, labels, cts = _log_prob_inputs(seed=4)
    mask = jnp.arange(N) % 3 != 1

    def fn(h, w, b):
        return sharded.vocab_parallel_linear_log_probs_on_mesh(
            h,
            labels,
            w if layout == "dv" else w.T,
            bias=b,
            mask=mask,
            weight_layout=layout,
            mesh=mesh,
            vocab_axis="model",
            data_axis="data",
            with_entropy=True,
            vocab_block_size=2,
            **LOG_PROB_OPTIONS,
        )

    def ref(h, w, b):
        outs = core_log_probs(h @ w + b, labels)
        return tuple(jnp.where(mask, o, 0.0) for o in outs)

    out, expected = fn(hidden, weight, bias), ref(hidden, weight, bias)
    assert_close(out[0], expected[0])
    assert_close(out[1], expected[1])
    assert_close(
        out[0],
        il.linear_log_probs(hidden, labels, weight, bias=bias, mask=mask, **LOG_PROB_OPTIONS),
    )
    grads = jax.grad(lambda *a: weighted(fn(*a), cts), (0, 1, 2))(hidden, weight, bias)
    ref_grads = jax.grad(lambda *a: weighted(ref(*a), cts), (0, 1, 2))(hidden, weight, bias)
    for grad, expected in zip(grads, ref_grads, strict=True):
        assert_close(grad, expected)


# ------------------------------------------------------------------------ distillation

DIVERGENCES = {
    "forward_kl": (sharded.vocab_parallel_forward_kl_on_mesh, il.forward_kl, {}),
    "reverse_kl": (sharded.vocab_parallel_reverse_kl_on_mesh, il.reverse_kl, {}),
    "jensen_shannon": (
        sharded.vocab_parallel_jensen_shannon_on_mesh,
        il.jensen_shannon,
        dict(beta=0.3),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh_name, kind",
    [
        ("8", "forward_kl"),
        ("2x4", "reverse_kl"),
        ("4x2", "jensen_shannon"),
        ("2x4", "jensen_shannon"),
    ],
)
def test_distillation_matches_core(mesh_name, kind):
    mesh = make_mesh(mesh_name)
    ours, core, opts = DIVERGENCES[kind]
    student, teacher, *_ = make_inputs()
    opts = dict(opts, temperature=2.0)

    def loss(s, t):
        return ours(
            s, t, mesh=mesh, vocab_axis="model", data_axis=data_axis(mesh), reduction="none", **opts
        )

    per_token = jax.jit(loss)(student, teacher)
    assert_close(per_token, core(student, teacher, **opts))
    weights = jnp.arange(1.0, N + 1.0)
    grads = jax.jit(jax.grad(lambda s, t: (loss(s, t) * weights).sum(), (0, 1)))(student, teacher)
    ref = jax.grad(lambda s, t: (core(s, t, **opts) * weights).sum(), (0, 1))(student, teacher)
    for g, r in zip(grads, ref, strict=True):
        assert_close(g, r)


@pytest.mark.slow
def test_distillation_mean_beta_limits_and_excluded_classes():
    mesh = make_mesh("2x4")
    student, teacher, *_ = make_inputs(seed=3)
    # Class 2 excluded from both; class 5 impossible for the teacher only.
    student = student.at[:, 2].set(-jnp.inf)
    teacher = teacher.at[:, 2].set(-jnp.inf).at[:, 5].set(-jnp.inf)
    common = dict(mesh=mesh, vocab_axis="model", data_axis="data", reduction="mean")
    fwd = sharded.vocab_parallel_forward_kl_on_mesh(student, teacher, **common)
    assert_close(fwd, il.forward_kl(student, teacher).mean())
    for beta, core in ((0.0, il.forward_kl), (1.0, il.reverse_kl)):
        js = sharded.vocab_parallel_jensen_shannon_on_mesh(student, teacher, beta=beta, **common)
        assert_close(js, core(student, teacher).mean())
    grads = jax.grad(
        lambda s, t: sharded.vocab_parallel_jensen_shannon_on_mesh(s, t, beta=0.4, **common),
        (0, 1),
    )(student, teacher)
    ref = jax.grad(lambda s, t: il.jensen_shannon(s, t, beta=0.4).mean(), (0, 1))(student, teacher)
    for g, r in zip(grads, ref, strict=True):
        assert np.isfinite(np.asarray(g)).all()
        assert_close(g, jnp.nan_to_num(r))


def test_distillation_bfloat16():
    mesh = make_mesh("8")
    student, teacher, *_ = make_inputs()
    s, t = student.astype(jnp.bfloat16), teacher.astype(jnp.bfloat16)
    out = sharded.vocab_parallel_reverse_kl_on_mesh(
        s, t, mesh=mesh, vocab_axis="model", reduction="none"
    )
    assert out.dtype == jnp.float32
    assert_close(out, il.reverse_kl(s, t), tol=1e-5)


LINEAR_DIVERGENCES = {
    "forward_kl": (sharded.vocab_parallel_linear_forward_kl_on_mesh, il.forward_kl, {}),
    "reverse_kl": (sharded.vocab_parallel_linear_reverse_kl_on_mesh, il.reverse_kl, {}),
    "jensen_shannon": (
        sharded.vocab_parallel_linear_jensen_shannon_on_mesh,
        il.jensen_shannon,
        dict(beta=0.7),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh_name, kind, plan",
    [
        ("8", "jensen_shannon", "tokens_outer"),
        ("2x4", "forward_kl", "vocab_outer"),
        ("4x2", "reverse_kl", "tokens_outer"),
        ("2x4", "jensen_shannon", "vocab_outer"),
        ("8", "forward_kl", "two_pass"),
        ("2x4", "jensen_shannon", "two_pass"),
    ],
)
def test_linear_distillation_matches_core(mesh_name, kind, plan, monkeypatch):
    from infoloss_jax.engine import _blockwise

    monkeypatch.setattr(_blockwise, "resolve_plan", lambda *args: plan)
    mesh = make_mesh(mesh_name)
    ours, core, opts = LINEAR_DIVERGENCES[kind]
    _, _, hidden, weight, _, _ = make_inputs()
    rng = np.random.default_rng(5)
    t_hidden = jnp.asarray(rng.normal(size=(N, 4)))  # the teacher's hidden size differs
    t_weight = jnp.asarray(rng.normal(size=(4, V)))
    keep = jnp.arange(N) % 3 != 1
    opts = dict(opts, temperature=1.5, mask=keep, token_block_size=3, vocab_block_size=3)

    def loss(h, w, th, tw):
        return ours(h, w, th, tw, mesh=mesh, vocab_axis="model", data_axis=data_axis(mesh), **opts)

    def reference(h, w, th, tw):
        per_token = core(
            h @ w,
            jax.lax.stop_gradient(th @ tw),
            temperature=1.5,
            **{k: v for k, v in opts.items() if k == "beta"},
        )
        return jnp.sum(jnp.where(keep, per_token, 0.0)) / jnp.sum(keep)

    args = (hidden, weight, t_hidden, t_weight)
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(*args)
    expected, ref_grads = jax.value_and_grad(reference, argnums=(0, 1, 2, 3))(*args)
    assert_close(value, expected)
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close(g, r)
    assert not np.asarray(grads[2]).any() and not np.asarray(grads[3]).any()


def test_linear_distillation_check_grads():
    mesh = make_mesh("2x4")
    _, _, hidden, weight, _, _ = make_inputs(seed=6)
    t_hidden, t_weight = hidden[:, ::-1] * 0.7, weight[::-1] * 1.3

    def loss(h, w):
        return sharded.vocab_parallel_linear_jensen_shannon_on_mesh(
            h,
            w,
            t_hidden,
            t_weight,
            mesh=mesh,
            vocab_axis="model",
            data_axis="data",
            beta=0.4,
            temperature=0.8,
            token_block_size=2,
            vocab_block_size=3,
        )

    check_grads(jax.jit(loss), (hidden, weight), order=1, modes=["rev"])


@pytest.mark.parametrize("mesh_name, backward", [("2x4", "one_pass"), ("8", "two_pass")])
def test_linear_distillation_bfloat16(mesh_name, backward):
    mesh = make_mesh(mesh_name)
    _, _, hidden, weight, _, _ = make_inputs()
    h, w = hidden.astype(jnp.bfloat16), weight.astype(jnp.bfloat16)
    th, tw = h[:, ::-1], w[::-1] * 0.5

    def loss(h, w):
        return sharded.vocab_parallel_linear_forward_kl_on_mesh(
            h,
            w,
            th,
            tw,
            mesh=mesh,
            vocab_axis="model",
            data_axis=data_axis(mesh),
            backward=backward,
        )

    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(h, w)
    assert value.dtype == jnp.float32
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    up = lambda x: x.astype(jnp.float64)
    reference = lambda h, w: il.forward_kl(h @ w, up(th) @ up(tw)).mean()
    assert_close(value, reference(up(h), up(w)), tol=1e-5)
    ref = jax.grad(reference, (0, 1))(up(h), up(w))
    for g, r in zip(grads, ref, strict=True):
        assert_close(g.astype(jnp.float64), r, tol=2e-2)


# ------------------------------------------------------------------------ bad input


def _inside(mesh, fn, *args, in_specs, out_specs=None):
    out_specs = P() if out_specs is None else out_specs
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs))(*args)


def test_axis_name_not_in_mesh():
    mesh = make_mesh("2x4")
    logits, _, hidden, weight, _, labels = make_inputs()
    labels = jnp.where(labels == IGNORE, 0, labels)
    z = pad_vocab(logits, 16)
    with pytest.raises(ValueError, match=r"`vocab_axis`='vocab' is not an axis"):
        _inside(
            mesh,
            lambda z, y: sharded.vocab_parallel_cross_entropy(
                z, y, vocab_axis="vocab", reduction="sum"
            ),
            z,
            labels,
            in_specs=(P("data", "model"), P("data")),
            out_specs=P("data"),
        )
    with pytest.raises(ValueError, match=r"`data_axis`='batch'"):
        _inside(
            mesh,
            lambda z, y: sharded.vocab_parallel_cross_entropy(
                z, y, vocab_axis="model", reduction="sum", data_axis="batch"
            ),
            z,
            labels,
            in_specs=(P("data", "model"), P("data")),
            out_specs=P("data"),
        )
    with pytest.raises(ValueError, match=r"`vocab_axis`='vocab'.*axes \('data', 'model'\)"):
        sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            hidden, labels, weight, mesh=mesh, vocab_axis="vocab"
        )
    with pytest.raises(ValueError, match=r"`data_axis`='batch'"):
        sharded.vocab_parallel_forward_kl_on_mesh(
            logits, logits, mesh=mesh, vocab_axis="model", data_axis="batch"
        )


def test_weight_shard_disagreeing_with_mesh():
    mesh = make_mesh("8")
    _, _, hidden, weight, _, labels = make_inputs()
    labels = jnp.where(labels == IGNORE, 0, labels)
    # 13 classes over 8 devices need 2 per device; a [D, 8] weight gives 1 per device.
    w = weight[:, :8]
    with pytest.raises(ValueError, match=r"`weight_shard` holds 1 classes.*vocab_size`=13.*2 per"):
        _inside(
            mesh,
            lambda h, y, w: sharded.vocab_parallel_linear_cross_entropy(
                h, y, w, vocab_axis="model", vocab_size=V
            ),
            hidden,
            labels,
            w,
            in_specs=(P(), P(), P(None, "model")),
        )
    with pytest.raises(ValueError, match=r"`hidden`.*hidden size D of `weight_shard`"):
        _inside(
            mesh,
            lambda h, y, w: sharded.vocab_parallel_linear_cross_entropy(
                h[:, :4], y, w, vocab_axis="model"
            ),
            hidden,
            labels,
            pad_vocab(weight, 16),
            in_specs=(P(), P(), P(None, "model")),
        )
    with pytest.raises(ValueError, match=r"`bias_shard`.*\[2\]"):
        _inside(
            mesh,
            lambda h, y, w, b: sharded.vocab_parallel_linear_cross_entropy(
                h, y, w, bias_shard=b[:1], vocab_axis="model"
            ),
            hidden,
            labels,
            pad_vocab(weight, 16),
            jnp.zeros(16),
            in_specs=(P(), P(), P(None, "model"), P("model")),
        )


def test_other_bad_arguments():
    mesh = make_mesh("8")
    logits, _, hidden, weight, _, labels = make_inputs()
    labels = jnp.where(labels == IGNORE, 0, labels)
    kw = dict(mesh=mesh, vocab_axis="model")
    with pytest.raises(TypeError, match="`labels`"):
        sharded.vocab_parallel_cross_entropy_on_mesh(logits, labels.astype(jnp.float32), **kw)
    with pytest.raises(TypeError, match="`logits`"):
        sharded.vocab_parallel_cross_entropy_on_mesh(labels[:, None], labels, **kw)
    with pytest.raises(ValueError, match="`labels`.*shape"):
        sharded.vocab_parallel_cross_entropy_on_mesh(logits, labels[:3], **kw)
    with pytest.raises(ValueError, match="`reduction`='avg'"):
        sharded.vocab_parallel_cross_entropy_on_mesh(logits, labels, reduction="avg", **kw)
    with pytest.raises(ValueError, match="`label_smoothing`"):
        sharded.vocab_parallel_cross_entropy_on_mesh(logits, labels, label_smoothing=1.0, **kw)
    with pytest.raises(ValueError, match="`z_loss`"):
        sharded.vocab_parallel_cross_entropy_on_mesh(logits, labels, z_loss=-1.0, **kw)
    with pytest.raises(ValueError, match="`logit_softcap`"):
        sharded.vocab_parallel_cross_entropy_on_mesh(logits, labels, logit_softcap=0.0, **kw)
    with pytest.raises(ValueError, match="`vocab_block_size`"):
        sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            hidden, labels, weight, vocab_block_size=0, **kw
        )
    with pytest.raises(ValueError, match="`backward`='three_pass'"):
        sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            hidden, labels, weight, backward="three_pass", **kw
        )
    with pytest.raises(ValueError, match="`backward`=None"):
        sharded.vocab_parallel_linear_jensen_shannon_on_mesh(
            hidden, weight, hidden, weight, backward=None, **kw
        )
    with pytest.raises(ValueError, match="`bias`"):
        sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            hidden, labels, weight, bias=jnp.zeros(3), **kw
        )
    with pytest.raises(ValueError, match="`logits` and `target_logits`"):
        sharded.vocab_parallel_forward_kl_on_mesh(logits, logits[:, :5], **kw)
    with pytest.raises(ValueError, match="`beta`"):
        sharded.vocab_parallel_jensen_shannon_on_mesh(logits, logits, beta=1.5, **kw)
    with pytest.raises(ValueError, match="`temperature`"):
        sharded.vocab_parallel_reverse_kl_on_mesh(logits, logits, temperature=0.0, **kw)
    with pytest.raises(ValueError, match="7 tokens.*data axis 'data'"):
        sharded.vocab_parallel_cross_entropy_on_mesh(
            logits[:7], labels[:7], mesh=make_mesh("2x4"), vocab_axis="model", data_axis="data"
        )
    with pytest.raises(ValueError, match="share one vocabulary: `target_weight`"):
        sharded.vocab_parallel_linear_forward_kl_on_mesh(
            hidden, weight, hidden, weight[:, :5], **kw
        )
    with pytest.raises(ValueError, match="`mask` must be a boolean per-token mask"):
        sharded.vocab_parallel_linear_reverse_kl_on_mesh(
            hidden, weight, hidden, weight, mask=jnp.ones((N, V), bool), **kw
        )
    with pytest.raises(TypeError, match="`mesh`"):
        sharded.vocab_parallel_cross_entropy_on_mesh(logits, labels, mesh=None, vocab_axis="model")


# ------------------------------------------------------------------------ memory and example


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
def test_sharded_fused_memory_ratio(dtype):
    """Per-device temporaries of the 8-way vocab-parallel fused loss are at most 1/6 of the
    single-device fused loss's (infoloss_jax.heads._fused), both value_and_grad, compile-only
    (memory_analysis is deterministic). benchmarks/sharded_memory.py prints full-size figures.

    D = 1024 makes the float32 [N, D] hidden-gradient accumulator of a one-pass backward (16 MiB)
    larger than the whole budget in bfloat16 (a one-pass backward measures ~0.4 of the single
    device here); "auto" must pick the two-pass backward, which keeps only tile-sized buffers.
    """
    from infoloss_jax.heads._fused import linear_softmax_cross_entropy

    if jax.default_backend() != "cpu":
        pytest.skip(
            "the 8-way mesh is simulated CPU devices; the single device would use GPU tiles"
        )
    n, d, v = 4096, 1024, 32000
    mesh = cpu_fallback_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
    structs = [
        jax.ShapeDtypeStruct((n, d), dtype),
        jax.ShapeDtypeStruct((n,), jnp.int32),
        jax.ShapeDtypeStruct((d, v), dtype),
    ]
    single = jax.jit(
        jax.value_and_grad(lambda h, y, w: linear_softmax_cross_entropy(h, y, w), (0, 2))
    )
    single_temp = single.lower(*structs).compile().memory_analysis().temp_size_in_bytes

    def local(h, y, w):
        return sharded.vocab_parallel_linear_cross_entropy(h, y, w, vocab_axis="model")

    loss = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(None, "model")), out_specs=P())
    multi = jax.jit(jax.value_and_grad(loss, (0, 2)))
    multi_temp = multi.lower(*structs).compile().memory_analysis().temp_size_in_bytes
    assert multi_temp <= single_temp / 6, (multi_temp, single_temp)


def test_auto_backward_plan():
    """``backward="auto"``: one pass while its float32 accumulator is at most a logits tile (or
    free: a float32 weight gradient written in place), two passes otherwise."""
    from infoloss_jax.engine._blockwise import resolve_plan as _backward_plan

    f32, bf16 = jnp.float32, jnp.bfloat16
    llama = (8192, 4096, 128256 // 8)  # tokens, hidden size, vocabulary per device (d = 8)
    assert _backward_plan("auto", *llama, f32, f32, False, 8) == "tokens_outer"
    assert _backward_plan("auto", *llama, bf16, f32, False, 8) == "two_pass"
    assert _backward_plan("auto", *llama, f32, f32, True, 8) == "two_pass"  # data axis
    # Small: the smaller of the [D, V_local] and [N, D] accumulators.
    assert _backward_plan("auto", 8, 6, 2, bf16, f32, False, 8) == "tokens_outer"
    assert _backward_plan("auto", 8, 6, 64, bf16, f32, False, 8) == "vocab_outer"
    assert _backward_plan("one_pass", *llama, bf16, f32, False, 8) == "vocab_outer"
    assert _backward_plan("two_pass", 8, 6, 2, f32, f32, False, 8) == "two_pass"


@pytest.mark.slow
def test_example_runs_tiny(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    script = str(ROOT / "examples" / "sharded_lm_head.py")
    result = subprocess.run(
        [sys.executable, script, "--tiny", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "per-device" in result.stdout and "loss" in result.stdout
    assert "3/3" in result.stderr.splitlines()[-1]  # the progress bar ends complete


def test_on_mesh_wrappers_compile_once():
    """A second identical eager call of an on-mesh wrapper compiles nothing."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    mesh = make_mesh("2x4")
    logits, target, hidden, weight, bias, labels = make_inputs()
    labels = jnp.where(labels == IGNORE, 0, labels)
    calls = [
        lambda: sharded.vocab_parallel_cross_entropy_on_mesh(
            logits, labels, mesh=mesh, vocab_axis="model", data_axis="data", label_smoothing=0.1
        ),
        lambda: sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            hidden, labels, weight, bias=bias, mesh=mesh, vocab_axis="model", z_loss=1e-3
        ),
        lambda: sharded.vocab_parallel_jensen_shannon_on_mesh(
            logits, target, mesh=mesh, vocab_axis="model", beta=0.3
        ),
        lambda: sharded.vocab_parallel_linear_reverse_kl_on_mesh(
            hidden, weight, hidden, weight, mesh=mesh, vocab_axis="model", temperature=2.0
        ),
    ]
    try:
        for call in calls:
            jax.block_until_ready(call())
            compiles.clear()
            jax.block_until_ready(call())
            assert compiles == [], call
    finally:
        jax.monitoring.clear_event_listeners()


def test_class_weights_and_batchmean_inside_shard_map_and_on_a_mesh():
    """The sharded heads take the fused heads' class weights (``class_weights_shard`` inside
    shard_map) and divide ``"batchmean"`` by the first dimension of the tokens' shape."""
    mesh = make_mesh("2x4")
    _, _, hidden, weight, bias, labels = make_inputs()
    hidden, labels = hidden.reshape(2, N // 2, D), labels.reshape(2, N // 2)
    cw = jnp.linspace(0.5, 2.0, V)
    opts = dict(ignore_index=IGNORE, class_weights=cw, label_smoothing=0.1)
    for reduction in ("mean", "batchmean"):
        expected = il.linear_softmax_cross_entropy(
            hidden, labels, weight, bias=bias, reduction=reduction, **opts
        )
        on_mesh = sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            hidden,
            labels,
            weight,
            bias=bias,
            mesh=mesh,
            vocab_axis="model",
            data_axis="data",
            reduction=reduction,
            **opts,
        )
        assert_close(on_mesh, expected)
    size = padded_size(mesh)

    def local(h, y, w, b, c):
        return sharded.vocab_parallel_linear_cross_entropy(
            h,
            y,
            w,
            bias_shard=b,
            class_weights_shard=c,
            vocab_axis="model",
            vocab_size=V,
            ignore_index=IGNORE,
            label_smoothing=0.1,
            reduction="none",
        )

    specs = (P(), P(), P(None, "model"), P("model"), P("model"))
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P()))
    args = (pad_vocab(weight, size), pad_vocab(bias, size), pad_vocab(cw, size))
    expected = il.linear_softmax_cross_entropy(
        hidden, labels, weight, bias=bias, reduction="none", **opts
    )
    assert_close(fn(hidden, labels, *args), expected)
