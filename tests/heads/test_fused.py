"""Fused linear losses against the naive path: ``hidden @ weight`` then the core loss.

Shapes are small and ragged (N, V and D are not multiples of the block sizes) so that both the
scanned full blocks and the static remainder blocks are exercised. Every comparison runs under
``jax.jit``; one jitted function per configuration keeps compilation to a minimum.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from infoloss_jax.core._cross_entropy import softmax_cross_entropy_with_integer_labels
from infoloss_jax.core._divergences import forward_kl, jensen_shannon, reverse_kl
from infoloss_jax.engine._blockwise import choose_blocks, choose_plan
from infoloss_jax.heads._fused import (
    linear_forward_kl,
    linear_jensen_shannon,
    linear_reverse_kl,
    linear_softmax_cross_entropy,
)

N, D, V, DT = 37, 13, 101, 7
BLOCKS = dict(token_block_size=8, vocab_block_size=16)
REDUCTIONS = ["none", "sum", "mean", "batchmean"]
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _true_float32_matmuls():
    # GPUs default to TF32 for float32 matmuls; the 1e-5 comparisons need full float32.
    with jax.default_matmul_precision("highest"):
        yield


def _inputs(dtype=jnp.float32, seed=0, lead=(N,)):
    k = jax.random.split(jax.random.key(seed), 6)
    hidden = jax.random.normal(k[0], (*lead, D), dtype)
    weight = (jax.random.normal(k[1], (D, V)) * 0.7).astype(dtype)
    bias = (jax.random.normal(k[2], (V,)) * 0.5).astype(dtype)
    labels = jax.random.randint(k[3], lead, 0, V)
    class_weights = jax.random.uniform(k[4], (V,), jnp.float32, 0.5, 2.0)
    target_hidden = jax.random.normal(k[5], (*lead, DT), dtype)
    return hidden, weight, bias, labels, class_weights, target_hidden


OPTION_SETS = {
    "plain": dict(),
    "all": dict(
        ignore_index=-100, label_smoothing=0.1, z_loss=1e-3, logit_softcap=4.0, class_weights=True
    ),
}


def _options(name, class_weights):
    opts = dict(OPTION_SETS[name])
    if opts.pop("class_weights", False):
        opts["class_weights"] = class_weights
    return opts


def _assert_close(actual, expected, rtol=RTOL, atol=0.0):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol + rtol * scale)


# ------------------------------------------------------------------------------- cross-entropy


# "none" always recomputes tiles; "in_forward" serves the scalar reductions. "two_pass" (the
# automatic choice in half precision) is forced here in float32 to compare it at 1e-5.
CE_CASES = (
    [("one_pass", r) for r in REDUCTIONS]
    + [("in_forward", r) for r in REDUCTIONS[1:]]
    + [("two_pass", "none"), ("two_pass", "mean")]
)


@pytest.mark.slow
@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize(("method", "reduction"), CE_CASES)
def test_cross_entropy_matches_naive_core_loss(method, reduction, options):
    hidden, weight, bias, labels, class_weights, _ = _inputs()
    opts = _options(options, class_weights)
    if "ignore_index" in opts:
        labels = labels.at[::5].set(-100)

    def fused(h, w, b):
        out = linear_softmax_cross_entropy(
            h, labels, w, bias=b, reduction=reduction, backward=method, **BLOCKS, **opts
        )
        return jnp.sum(out), out

    def naive(h, w, b):
        out = softmax_cross_entropy_with_integer_labels(
            h @ w + b, labels, reduction=reduction, **opts
        )
        return jnp.sum(out), out

    grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 2), has_aux=True)
    (_, value), grads = jax.jit(grad(fused))(hidden, weight, bias)
    (_, expected), expected_grads = jax.jit(grad(naive))(hidden, weight, bias)
    assert value.dtype == jnp.float32 and value.shape == expected.shape
    _assert_close(value, expected)
    for g, e, x in zip(grads, expected_grads, (hidden, weight, bias), strict=True):
        assert g.dtype == x.dtype and g.shape == x.shape
        _assert_close(g, e)


@pytest.mark.slow
def test_cross_entropy_flattens_leading_dims_and_chooses_blocks():
    hidden, weight, _, labels, _, _ = _inputs(lead=(3, 11))
    fused = jax.jit(
        jax.value_and_grad(
            lambda h, w: linear_softmax_cross_entropy(h, labels, w, reduction="batchmean"), (0, 1)
        )
    )
    naive = jax.jit(
        jax.value_and_grad(
            lambda h, w: softmax_cross_entropy_with_integer_labels(
                h @ w, labels, reduction="batchmean"
            ),
            (0, 1),
        )
    )
    (value, grads), (expected, expected_grads) = fused(hidden, weight), naive(hidden, weight)
    _assert_close(value, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        _assert_close(g, e)
    per_token = linear_softmax_cross_entropy(hidden, labels, weight, reduction="none")
    assert per_token.shape == (3, 11)


@pytest.mark.slow
def test_cross_entropy_aux_matches_materialized_logits():
    hidden, weight, bias, labels, _, _ = _inputs()
    labels = labels.at[0].set(-100)
    logits = hidden @ weight + bias
    labels = labels.at[1].set(jnp.argmax(4.0 * jnp.tanh(logits[1] / 4.0)))
    _, aux = jax.jit(
        lambda h, w, b: linear_softmax_cross_entropy(
            h,
            labels,
            w,
            bias=b,
            ignore_index=-100,
            z_loss=0.01,
            logit_softcap=4.0,
            return_aux=True,
            **BLOCKS,
        )
    )(hidden, weight, bias)
    capped = 4.0 * jnp.tanh(logits / 4.0)
    valid = labels != -100
    lse = jnp.where(valid, jax.nn.logsumexp(capped, axis=-1), 0.0)  # an ignored row is not read
    _assert_close(aux.logsumexp, lse)
    _assert_close(aux.z_loss, jnp.where(valid, 0.01 * lse**2, 0.0))
    np.testing.assert_array_equal(aux.correct, valid & (jnp.argmax(capped, -1) == labels))
    assert bool(aux.correct[1]) and not bool(aux.correct[0])


@pytest.mark.slow
def test_cross_entropy_bfloat16_is_no_worse_than_the_naive_bfloat16_path():
    hidden, weight, _, labels, _, _ = _inputs(jnp.bfloat16, seed=3)
    reference = softmax_cross_entropy_with_integer_labels(
        hidden.astype(jnp.float64) @ weight.astype(jnp.float64), labels, reduction="mean"
    )
    naive = softmax_cross_entropy_with_integer_labels(hidden @ weight, labels, reduction="mean")

    def fused(h, w):
        return linear_softmax_cross_entropy(h, labels, w, **BLOCKS)

    value, grads = jax.jit(jax.value_and_grad(fused, (0, 1)))(hidden, weight)
    assert value.dtype == jnp.float32
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    assert abs(float(value) - float(reference)) <= abs(float(naive) - float(reference)) + 1e-6
    # The gradient accumulates in float32: it is close to the float64 gradient.
    ref_grads = jax.jit(
        jax.grad(
            lambda h, w: softmax_cross_entropy_with_integer_labels(h @ w, labels, reduction="mean"),
            (0, 1),
        )
    )(hidden.astype(jnp.float64), weight.astype(jnp.float64))
    for g, e in zip(grads, ref_grads, strict=True):
        _assert_close(g, e, rtol=2e-2)


@pytest.mark.slow
def test_cross_entropy_check_grads_float64():
    hidden, weight, bias, labels, class_weights, _ = _inputs(jnp.float64, lead=(9,))

    def loss(h, w, b):
        return linear_softmax_cross_entropy(
            h,
            labels,
            w,
            bias=b,
            label_smoothing=0.2,
            class_weights=class_weights,
            z_loss=0.01,
            logit_softcap=3.0,
            token_block_size=4,
            vocab_block_size=32,
        )

    check_grads(jax.jit(loss), (hidden, weight, bias), order=1, modes=["rev"])


@pytest.mark.slow
def test_cross_entropy_ignored_and_out_of_range_labels():
    hidden, weight, _, labels, _, _ = _inputs()
    ignored = jnp.full_like(labels, -100)

    def loss(h, w, y):
        return linear_softmax_cross_entropy(h, y, w, ignore_index=-100, **BLOCKS)

    value, grads = jax.jit(jax.value_and_grad(loss, (0, 1)))(hidden, weight, ignored)
    assert float(value) == 0.0
    assert all(bool(jnp.all(g == 0)) for g in grads)
    bad = labels.at[2].set(V)
    per_token = linear_softmax_cross_entropy(hidden, bad, weight, reduction="none", **BLOCKS)
    assert bool(jnp.isnan(per_token[2])) and bool(jnp.all(jnp.isfinite(per_token.at[2].set(0))))


@pytest.mark.slow
def test_cross_entropy_under_vmap():
    hidden, weight, _, labels, _, _ = _inputs(lead=(2, 9))
    fused = jax.jit(jax.vmap(lambda h, y: linear_softmax_cross_entropy(h, y, weight, **BLOCKS)))(
        hidden, labels
    )
    naive = softmax_cross_entropy_with_integer_labels(hidden @ weight, labels).mean(axis=1)
    _assert_close(fused, naive)


def test_loss_only_call_computes_no_gradient():
    hidden, weight, _, labels, _, _ = _inputs()
    for method in ("one_pass", "two_pass", "in_forward"):
        jaxpr = jax.make_jaxpr(
            lambda h, w, m=method: linear_softmax_cross_entropy(h, labels, w, backward=m, **BLOCKS)
        )(hidden, weight)
        text = str(jaxpr)
        # One logits matmul in the scanned vocabulary loop and one in its ragged remainder,
        # traced once each for the scanned and the remainder token blocks: no gradient matmuls.
        assert text.count("dot_general") == 4, text
    for method in ("one_pass", "two_pass", "in_forward"):
        jaxpr = jax.make_jaxpr(
            lambda h, w, m=method: linear_forward_kl(h, w, h, w, backward=m, **BLOCKS)
        )(hidden, weight)
        # The same for the student and the teacher logits.
        assert str(jaxpr).count("dot_general") == 8


@pytest.mark.parametrize(
    "fn",
    [
        lambda h, w: linear_softmax_cross_entropy(h, jnp.zeros(h.shape[:-1], int), w),
        lambda h, w: linear_forward_kl(h, w, h, w),
    ],
)
def test_forward_mode_raises_a_clear_error(fn):
    hidden, weight, *_ = _inputs()
    with pytest.raises(TypeError, match=r"linear_.*forward-mode.*jax\.grad"):
        jax.jvp(fn, (hidden, weight), (hidden, weight))


def test_automatic_blocks_respect_the_budget():
    blocks = choose_blocks(8192, 4096, 128256, None, None, backend="cpu")
    assert blocks.vocab * 4096 <= 2**21 and blocks.tokens * blocks.vocab <= 2**21
    assert choose_blocks(8192, 4096, 128256, None, None, backend="gpu") == (2048, 1024)
    assert choose_blocks(8192, 2304, 256000, None, None, backend="tpu") == (2048, 1024)
    assert choose_blocks(8192, 4096, 128256, 64, 128, backend="gpu") == (64, 128)
    assert choose_blocks(5, 3, 7, None, None) == (5, 7)
    assert choose_blocks(100, 3, 70, 16, 32) == (16, 32)
    # Split over 8 vocabulary shards, the CPU budget per device shrinks (not below 2**17).
    small = choose_blocks(8192, 4096, 128256 // 8, None, None, axis_size=8, backend="cpu")
    assert small.tokens * small.vocab <= 2**18 and small.tokens * 4096 <= 2**18


def test_auto_method_takes_two_passes_in_half_precision_only():
    blocks = choose_blocks(64, 16, 256, None, None, backend="cpu")
    f32, bf16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)
    for reduction in ("none", "mean"):
        for dtypes in ((bf16, bf16), (bf16, f32), (f32, bf16)):
            _, plan = choose_plan("auto", reduction, 64, 256, blocks, None, dtypes, f32, None)
            assert plan == "two_pass"
        _, plan = choose_plan("auto", reduction, 64, 256, blocks, None, (f32, f32), f32, None)
        assert plan != "two_pass"
    _, plan = choose_plan("one_pass", "mean", 64, 256, blocks, None, (bf16, bf16), f32, None)
    assert plan == "one_pass"
    with pytest.raises(ValueError, match="in_forward"):
        choose_plan("in_forward", "none", 64, 256, blocks, None, (f32, f32), f32, None)


def _lowered_text(loss, *args):
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).as_text()


def test_half_precision_backward_keeps_no_full_float32_hidden_accumulator():
    hidden, weight, _, labels, _, target_hidden = _inputs(jnp.bfloat16)
    target_weight = weight[:DT]
    full_f32_hidden = f"tensor<{N}x{D}xf32>"

    def ce(method):
        def loss(h, w):
            return linear_softmax_cross_entropy(h, labels, w, backward=method, **BLOCKS)

        return _lowered_text(loss, hidden, weight)

    def jsd(method):
        def loss(h, w):
            return linear_jensen_shannon(
                h, w, target_hidden, target_weight, backward=method, **BLOCKS
            )

        return _lowered_text(loss, hidden, weight)

    for lowered in (ce, jsd):
        # One pass with the hidden gradient accumulated over vocabulary blocks.
        assert full_f32_hidden in lowered("one_pass")
        auto = lowered("auto")
        assert full_f32_hidden not in auto
        assert f"tensor<{D}x{V}xf32>" not in auto


# ------------------------------------------------------------------------------- bad input


def test_bad_input_errors_name_the_arguments():
    hidden, weight, bias, labels, _, target_hidden = _inputs()
    with pytest.raises(ValueError, match=r"`hidden`.*`weight`.*\[37, 13\].*\[12, 101\]"):
        linear_softmax_cross_entropy(hidden, labels, weight[:12])
    with pytest.raises(ValueError, match="`labels`"):
        linear_softmax_cross_entropy(hidden, labels[:5], weight)
    with pytest.raises(TypeError, match="`labels`"):
        linear_softmax_cross_entropy(hidden, labels.astype(jnp.float32), weight)
    with pytest.raises(ValueError, match="`bias`"):
        linear_softmax_cross_entropy(hidden, labels, weight, bias=bias[:5])
    with pytest.raises(ValueError, match="`weight`"):
        linear_softmax_cross_entropy(hidden, labels, weight[None])
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="`token_block_size`"):
            linear_softmax_cross_entropy(hidden, labels, weight, token_block_size=bad)
        with pytest.raises(ValueError, match="`vocab_block_size`"):
            linear_forward_kl(hidden, weight, hidden, weight, vocab_block_size=bad)
    with pytest.raises(ValueError, match="`reduction`"):
        linear_softmax_cross_entropy(hidden, labels, weight, reduction="avg")
    with pytest.raises(ValueError, match="`label_smoothing`"):
        linear_softmax_cross_entropy(hidden, labels, weight, label_smoothing=1.5)
    with pytest.raises(ValueError, match="`z_loss`"):
        linear_softmax_cross_entropy(hidden, labels, weight, z_loss=-1.0)
    with pytest.raises(ValueError, match="`logit_softcap`"):
        linear_softmax_cross_entropy(hidden, labels, weight, logit_softcap=0.0)
    with pytest.raises(ValueError, match="`class_weights`"):
        linear_softmax_cross_entropy(hidden, labels, weight, class_weights=jnp.ones(3))
    with pytest.raises(TypeError, match="`hidden`"):
        linear_softmax_cross_entropy(labels[:, None], labels, weight[:1])
    with pytest.raises(TypeError, match="`target_weight`"):
        linear_forward_kl(hidden, weight, target_hidden, jnp.ones((DT, V), jnp.int32))
    with pytest.raises(ValueError, match="`temperature`"):
        linear_forward_kl(hidden, weight, hidden, weight, temperature=0.0)
    teacher_weight = jnp.ones((DT, V + 1), jnp.float32)
    with pytest.raises(ValueError, match=r"`target_weight`.*102.*`weight`.*101"):
        linear_forward_kl(hidden, weight, target_hidden, teacher_weight)
    with pytest.raises(ValueError, match="`target_hidden`"):
        linear_reverse_kl(hidden, weight, target_hidden[:4], weight[:DT])
    with pytest.raises(ValueError, match="`beta`"):
        linear_jensen_shannon(hidden, weight, target_hidden, weight[:DT], beta=1.5)
    with pytest.raises(ValueError, match="`mask`"):
        linear_forward_kl(hidden, weight, hidden, weight, mask=jnp.ones((3,), bool))
    with pytest.raises(TypeError, match="`mask`"):
        linear_forward_kl(hidden, weight, hidden, weight, mask=jnp.ones((N,)))
    with pytest.raises(
        ValueError, match="`backward`.*'two_pass'.*got 'recompute'|`backward`='recompute'"
    ):
        linear_softmax_cross_entropy(hidden, labels, weight, backward="recompute")
    with pytest.raises(ValueError, match="`weight_layout`"):
        linear_softmax_cross_entropy(hidden, labels, weight, weight_layout="auto")
    with pytest.raises(ValueError, match="`class_weights` must be non-negative"):
        linear_softmax_cross_entropy(hidden, labels, weight, class_weights=-jnp.ones(V))


# ------------------------------------------------------------------------------- distillation

DIVERGENCES = {
    "forward": (linear_forward_kl, forward_kl, {}),
    "reverse": (linear_reverse_kl, reverse_kl, {}),
    "jsd": (linear_jensen_shannon, jensen_shannon, {"beta": 0.3}),
}
# "none" always recomputes; the scalar reductions can take any gradient method.
DISTILL_CASES = [
    ("one_pass", "none"),
    ("one_pass", "mean"),
    ("in_forward", "mean"),
    ("in_forward", "sum"),
    ("two_pass", "mean"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "reduction"), DISTILL_CASES)
@pytest.mark.parametrize("kind", list(DIVERGENCES))
def test_distillation_matches_naive_core_divergence(kind, method, reduction):
    hidden, weight, _, _, _, target_hidden = _inputs()
    target_weight = jax.random.normal(jax.random.key(9), (DT, V), jnp.float32)
    keep = jnp.arange(N) % 4 != 1
    _, core_fn, extra = DIVERGENCES[kind]

    fused_fn = DIVERGENCES[kind][0]

    def fused(h, w, th, tw):
        out = fused_fn(
            h,
            w,
            th,
            tw,
            temperature=2.0,
            mask=keep,
            reduction=reduction,
            backward=method,
            **extra,
            **BLOCKS,
        )
        return jnp.sum(out), out

    def naive(h, w, th, tw):
        per_token = core_fn(h @ w, th @ tw, temperature=2.0, **extra)
        out = jnp.where(keep, per_token, 0.0)
        if reduction == "mean":
            out = jnp.sum(out) / jnp.sum(keep)
        elif reduction == "sum":
            out = jnp.sum(out)
        return jnp.sum(out), out

    grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 2, 3), has_aux=True)
    args = (hidden, weight, target_hidden, target_weight)
    (_, value), grads = jax.jit(grad(fused))(*args)
    (_, expected), expected_grads = jax.jit(grad(naive))(*args)
    _assert_close(value, expected, atol=1e-6)
    _assert_close(grads[0], expected_grads[0])
    _assert_close(grads[1], expected_grads[1])
    # The teacher is a fixed target: no gradient reaches it.
    assert bool(jnp.all(grads[2] == 0)) and bool(jnp.all(grads[3] == 0))


@pytest.mark.slow
def test_jensen_shannon_end_points_are_the_two_kls():
    hidden, weight, _, _, _, target_hidden = _inputs()
    target_weight = jax.random.normal(jax.random.key(9), (DT, V), jnp.float32)
    args = (hidden, weight, target_hidden, target_weight)
    _assert_close(
        linear_jensen_shannon(*args, beta=0.0, **BLOCKS), linear_forward_kl(*args, **BLOCKS)
    )
    _assert_close(
        linear_jensen_shannon(*args, beta=1.0, **BLOCKS), linear_reverse_kl(*args, **BLOCKS)
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(DIVERGENCES))
def test_distillation_check_grads_float64(kind):
    hidden, weight, _, _, _, target_hidden = _inputs(jnp.float64, lead=(9,))
    target_weight = jax.random.normal(jax.random.key(9), (DT, V), jnp.float64)
    fused_fn, _, extra = DIVERGENCES[kind]

    def loss(h, w):
        return fused_fn(
            h,
            w,
            target_hidden,
            target_weight,
            temperature=1.5,
            token_block_size=4,
            vocab_block_size=32,
            **extra,
        )

    check_grads(jax.jit(loss), (hidden, weight), order=1, modes=["rev"])


def test_distillation_bfloat16_accumulates_in_float32():
    hidden, weight, _, _, _, target_hidden = _inputs(jnp.bfloat16, seed=4)
    target_weight = jax.random.normal(jax.random.key(9), (DT, V), jnp.bfloat16)
    value, grads = jax.jit(
        jax.value_and_grad(
            lambda h, w: linear_jensen_shannon(h, w, target_hidden, target_weight, **BLOCKS),
            (0, 1),
        )
    )(hidden, weight)
    assert value.dtype == jnp.float32 and grads[1].dtype == jnp.bfloat16
    f64 = [x.astype(jnp.float64) for x in (hidden, weight, target_hidden, target_weight)]
    reference = jnp.mean(jensen_shannon(f64[0] @ f64[1], f64[2] @ f64[3]))
    naive = jnp.mean(jensen_shannon(hidden @ weight, target_hidden @ target_weight))
    assert abs(float(value) - float(reference)) <= abs(float(naive) - float(reference)) + 1e-6


# ------------------------------------------------------------------------------- benchmarks

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["linear_cross_entropy.py", "--quick", "--reps", "1", "--dtypes", "bfloat16"],
        ["distillation.py", "--quick", "--reps", "1", "--no-memory"],
        ["core_losses.py", "--quick", "--reps", "1"],
        ["log_probs.py", "--quick", "--reps", "1", "--dtypes", "bfloat16"],
        ["accelerators.py", "--quick", "--reps", "1"],
        ["accelerators.py", "--quick", "--errors"],
    ],
    ids=lambda c: c[0],
)
def test_benchmark_scripts_run_quick(command):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / command[0]), *command[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "platform=" in result.stdout and "| " in result.stdout


# ------------------------------------------------------------------------------- bad data


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["one_pass", "two_pass", "in_forward"])
def test_nan_logits_poison_their_row_value_and_gradient(backward):
    hidden, weight, _, labels, _, _ = _inputs()
    hidden = hidden.at[2, 0].set(jnp.nan)
    per_token = linear_softmax_cross_entropy(hidden, labels, weight, reduction="none", **BLOCKS)
    grad = jax.grad(
        lambda h: linear_softmax_cross_entropy(h, labels, weight, backward=backward, **BLOCKS)
    )(hidden)
    nan_rows = np.isnan(np.asarray(grad)).any(axis=1)
    assert np.isnan(per_token[2]) and np.isfinite(np.delete(np.asarray(per_token), 2)).all()
    assert nan_rows[2] and not np.delete(nan_rows, 2).any()


@pytest.mark.parametrize("bad", [V, -1, -100, 2**31 - 1])
def test_out_of_range_labels_poison_the_gradient_too(bad):
    hidden, weight, bias, labels, _, _ = _inputs()
    labels = labels.at[3].set(bad)
    grads = jax.grad(
        lambda h, w, b: linear_softmax_cross_entropy(h, labels, w, bias=b, **BLOCKS), (0, 1, 2)
    )(hidden, weight, bias)
    nan_rows = np.isnan(np.asarray(grads[0])).any(axis=1)
    assert nan_rows[3] and not np.delete(nan_rows, 3).any()
    assert np.isnan(np.asarray(grads[1])).any() and np.isnan(np.asarray(grads[2])).any()


@pytest.mark.slow
def test_extreme_finite_logits_do_not_overflow_the_shift():
    """Logits near the float32 limit (two tied at 3e38, one at -3e38) give no NaN. (In float32
    the O(1) part of lse - z_y is lost to rounding at that scale, as in every lse - z form.)"""
    hidden, weight, _, labels, _, _ = _inputs()
    bias = jnp.zeros(V).at[0].set(3e38).at[1].set(3e38).at[2].set(-3e38)
    labels = labels.at[:4].set(jnp.array([0, 1, 0, 1]))

    def loss(b):
        return linear_softmax_cross_entropy(hidden[:4], labels[:4], weight, bias=b, **BLOCKS)

    value, grad = jax.value_and_grad(loss)(bias)
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()


def test_traced_options_and_static_ones():
    hidden, weight, _, labels, _, target_hidden = _inputs()
    target_weight = weight[:DT] * 2

    @jax.jit
    def scheduled(t, eps, beta):
        return (
            linear_forward_kl(hidden, weight, hidden, weight * 2, temperature=t)
            + linear_softmax_cross_entropy(hidden, labels, weight, label_smoothing=eps)
            + linear_jensen_shannon(hidden, weight, target_hidden, target_weight, beta=beta)
        )

    eager = (
        linear_forward_kl(hidden, weight, hidden, weight * 2, temperature=2.0)
        + linear_softmax_cross_entropy(hidden, labels, weight, label_smoothing=0.1)
        + linear_jensen_shannon(hidden, weight, target_hidden, target_weight, beta=0.3)
    )
    _assert_close(scheduled(2.0, 0.1, 0.3), eager)
    assert np.isnan(scheduled(0.0, 0.1, 0.3)) and np.isnan(scheduled(2.0, 1.5, 0.3))
    with pytest.raises(TypeError, match="`logit_softcap` must be a static Python number"):
        jax.jit(lambda c: linear_softmax_cross_entropy(hidden, labels, weight, logit_softcap=c))(
            3.0
        )
    with pytest.raises(TypeError, match="`ignore_index`"):
        jax.jit(lambda i: linear_softmax_cross_entropy(hidden, labels, weight, ignore_index=i))(3)


def test_tied_layout_makes_no_transposed_copy():
    """weight_layout="vd" contracts the [V, D] table in place: no [D, V] array in the program."""
    n, d, v = 256, 48, 1000
    structs = (
        jax.ShapeDtypeStruct((n, d), jnp.bfloat16),
        jax.ShapeDtypeStruct((n,), jnp.int32),
        jax.ShapeDtypeStruct((v, d), jnp.bfloat16),
    )
    loss = lambda h, y, w: linear_softmax_cross_entropy(h, y, w, weight_layout="vd")
    text = jax.jit(jax.value_and_grad(loss, (0, 2))).lower(*structs).compile().as_text()
    assert f"[{d},{v}]" not in text


def test_cross_entropy_mask_drops_tokens_like_ignore_index():
    """``mask`` (True = the token counts) is the per-token mask of every head, the fused
    cross-entropy included: a False token gives 0, no gradient and no weight in the mean."""
    hidden, weight, _, labels, class_weights, _ = _inputs()
    keep = jnp.arange(N) % 4 != 1
    opts = dict(class_weights=class_weights, label_smoothing=0.1, **BLOCKS)

    def masked(h, w):
        return linear_softmax_cross_entropy(h, labels, w, mask=keep, **opts)

    def ignored(h, w):
        dropped = jnp.where(keep, labels, -100)
        return linear_softmax_cross_entropy(h, dropped, w, ignore_index=-100, **opts)

    value, grads = jax.value_and_grad(masked, (0, 1))(hidden, weight)
    expected, expected_grads = jax.value_and_grad(ignored, (0, 1))(hidden, weight)
    _assert_close(value, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        _assert_close(g, e)
    per_token = linear_softmax_cross_entropy(hidden, labels, weight, mask=keep, reduction="none")
    assert not np.asarray(per_token)[~np.asarray(keep)].any()
    with pytest.raises(TypeError, match="`mask` must be a boolean per-token mask"):
        linear_softmax_cross_entropy(hidden, labels, weight, mask=keep.astype(jnp.int32))


def test_a_table_without_its_layout_names_weight_layout():
    """A [V, D] embedding table passed as a [D, V] weight: the error says weight_layout="vd"
    (and a [D, V] weight passed as "vd" says "dv")."""
    hidden, weight, _, labels, _, target_hidden = _inputs()
    with pytest.raises(ValueError, match=r'`weight` looks like a \[V, D\].*weight_layout="vd"'):
        linear_softmax_cross_entropy(hidden, labels, weight.T)
    with pytest.raises(ValueError, match=r'weight_layout="dv"'):
        linear_softmax_cross_entropy(hidden, labels, weight, weight_layout="vd")
    table = jnp.ones((V, DT))
    with pytest.raises(ValueError, match=r'`target_weight` looks like.*weight_layout="vd"'):
        linear_forward_kl(hidden, weight, target_hidden, table)
