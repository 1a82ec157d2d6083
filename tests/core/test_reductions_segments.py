"""reduce_loss and loss_sum_and_count with segment_ids (documents packed in one row).

Values are checked against a plain NumPy loop over rows and tokens, gradients against autodiff
of a plain ``jax.numpy`` reference built from one-hot masks (no scatter, no library code).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compiles_after_warm_up
from hypothesis import given, settings
from hypothesis import strategies as st

import infoloss_jax as il
from infoloss_jax import policy

S = 4  # segment ids per row
# Row 0: documents 0, 1 and 2, one padding token, id 3 absent (an empty sequence).
# Row 1: one long document and padding. Row 2: padding only.
IDS = np.array(
    [
        [0, 0, 0, 1, 1, 2, 2, -1],
        [0, 0, 0, 0, 0, 0, -1, -1],
        [-1, -1, -1, -1, -1, -1, -1, -1],
    ]
)
# Masks out a prompt token of document 0 and all of document 2 (an empty sequence by mask).
WHERE = np.array(
    [
        [False, True, True, True, True, False, False, True],
        [True, True, True, True, True, True, True, True],
        [True, True, True, True, True, True, True, True],
    ]
)
_rng = np.random.default_rng(0)
LOSSES = _rng.normal(size=IDS.shape)
LOSSES[IDS < 0] = np.nan  # padding may hold anything
WEIGHTS = _rng.uniform(0.5, 2.0, size=IDS.shape)
SEQUENCE_REDUCTIONS = ("per_sequence_sum", "per_sequence_mean", "sequence_mean")
SCALAR_REDUCTIONS = ("sum", "mean", "batchmean")
ALL_REDUCTIONS = ("none", *SCALAR_REDUCTIONS, *SEQUENCE_REDUCTIONS)


# ----------------------------------------------------------------------------- references


def numpy_sequences(losses, ids, num_segments, weights=None, where=None):
    """Per-sequence sums and denominators by a Python loop over every token."""
    losses = np.asarray(losses, np.float64)
    shape, length = losses.shape, losses.shape[-1]
    ids = np.zeros(shape, int) if ids is None else np.asarray(ids)
    weights = np.ones(shape) if weights is None else np.broadcast_to(weights, shape)
    where = np.ones(shape, bool) if where is None else np.broadcast_to(where, shape)
    rows = int(np.prod(shape[:-1], dtype=int))
    flat = [a.reshape(rows, length) for a in (losses, ids, weights, where)]
    sums, counts = np.zeros((rows, num_segments)), np.zeros((rows, num_segments))
    for r in range(rows):
        for t in range(length):
            value, k, w, keep = (a[r, t] for a in flat)
            if keep and k >= 0:
                sums[r, k] += value
                counts[r, k] += w
    out = shape[:-1] + (num_segments,)
    return sums.reshape(out), counts.reshape(out)


def numpy_reduce(losses, reduction, ids=None, num_segments=None, weights=None, where=None):
    """The reductions of the docstring, written out in NumPy."""
    num_segments = num_segments or (1 if ids is None else losses.shape[-1])
    sums, counts = numpy_sequences(losses, ids, num_segments, weights, where)
    nonzero = counts != 0
    means = np.where(nonzero, sums / np.where(nonzero, counts, 1.0), 0.0)
    if reduction == "none":
        keep = (
            np.ones(losses.shape, bool) if where is None else np.broadcast_to(where, losses.shape)
        )
        if ids is not None:
            keep = keep & (np.asarray(ids) >= 0)
        return np.where(keep, losses, 0.0)
    squeeze = (lambda a: a[..., 0]) if ids is None else (lambda a: a)
    if reduction == "per_sequence_sum":
        return squeeze(sums)
    if reduction == "per_sequence_mean":
        return squeeze(means)
    if reduction == "sequence_mean":
        n = nonzero.sum()
        return means.sum() / n if n else 0.0
    if reduction == "sum":
        return sums.sum()
    if reduction == "mean":
        return sums.sum() / counts.sum() if counts.sum() else 0.0
    return sums.sum() / losses.shape[0]


def plain_jnp_reduce(losses, reduction, ids, num_segments, weights=None, where=None):
    """A differentiable reference: one-hot sequence masks and double ``where``."""
    keep = (ids >= 0) if where is None else (ids >= 0) & where
    member = (ids[..., None] == jnp.arange(num_segments)) & keep[..., None]  # [..., T, S]
    w = jnp.ones(losses.shape) if weights is None else jnp.broadcast_to(weights, losses.shape)
    sums = jnp.sum(jnp.where(member, losses[..., None], 0.0), axis=-2)
    counts = jnp.sum(jnp.where(member, w[..., None], 0.0), axis=-2)
    nonzero = counts != 0
    means = jnp.where(nonzero, sums / jnp.where(nonzero, counts, 1.0), 0.0)
    if reduction == "per_sequence_sum":
        return sums
    if reduction == "per_sequence_mean":
        return means
    if reduction == "sequence_mean":
        return jnp.sum(means) / jnp.sum(nonzero)
    if reduction == "mean":
        return jnp.sum(sums) / jnp.sum(counts)
    raise ValueError(reduction)


def _assert_close(actual, expected, rtol=1e-12, atol=1e-14):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("reduction", ALL_REDUCTIONS)
@pytest.mark.parametrize("options", ["plain", "where", "weights", "both"])
def test_matches_a_numpy_loop(reduction, options):
    kw = {}
    if options in ("where", "both"):
        kw["where"] = WHERE
    if options in ("weights", "both"):
        kw["weights"] = WEIGHTS
    out = il.reduce_loss(LOSSES, reduction=reduction, segment_ids=IDS, num_segments=S, **kw)
    expected = numpy_reduce(LOSSES, reduction, IDS, S, **kw)
    assert out.shape == np.shape(expected)
    assert np.all(np.isfinite(np.asarray(out)))  # NaN padding never leaks
    _assert_close(out, expected)


@pytest.mark.parametrize("reduction", ALL_REDUCTIONS)
def test_more_leading_axes_and_default_num_segments(reduction):
    losses = np.stack([LOSSES, -LOSSES])  # [2, 3, T]
    ids = np.stack([IDS, IDS[::-1]])
    out = il.reduce_loss(losses, reduction=reduction, segment_ids=ids, weights=WEIGHTS)
    _assert_close(out, numpy_reduce(losses, reduction, ids, None, weights=WEIGHTS))
    if reduction.startswith("per_sequence"):
        assert out.shape == (2, 3, IDS.shape[-1])  # num_segments defaults to T


@pytest.mark.parametrize("reduction", SEQUENCE_REDUCTIONS)
def test_without_segment_ids_each_row_is_one_sequence(reduction):
    losses = np.nan_to_num(LOSSES)
    out = il.reduce_loss(losses, reduction=reduction, where=WHERE)
    expected = numpy_reduce(losses, reduction, None, None, where=WHERE)
    _assert_close(out, expected)
    if reduction != "sequence_mean":
        assert out.shape == losses.shape[:-1]
    row_means = [losses[r][WHERE[r]].mean() for r in range(3)]
    if reduction == "sequence_mean":
        _assert_close(out, np.mean(row_means))


@pytest.mark.parametrize("reduction", ["none", *SCALAR_REDUCTIONS])
def test_segments_keep_the_token_reductions(reduction):
    """Segments only exclude padding: the same as the reduction masked by ``ids >= 0``."""
    losses = np.nan_to_num(LOSSES)
    packed = il.reduce_loss(losses, reduction=reduction, weights=WEIGHTS, segment_ids=IDS)
    masked = il.reduce_loss(losses, reduction=reduction, weights=WEIGHTS, where=IDS >= 0)
    _assert_close(packed, masked)
    assert packed.shape == masked.shape


def test_empty_sequences_give_zero_and_a_zero_gradient():
    # Row 0, id 2 is masked out and id 3 absent; row 2 is all padding.
    means = il.reduce_loss(
        LOSSES, reduction="per_sequence_mean", where=WHERE, segment_ids=IDS, num_segments=S
    )
    assert np.all(np.asarray(means)[0, 2:] == 0.0) and np.all(np.asarray(means)[2] == 0.0)
    assert float(il.reduce_loss(np.full((1, 3), np.nan), reduction="sequence_mean",
                                segment_ids=-np.ones((1, 3), int))) == 0.0  # fmt: skip
    grad = jax.jit(
        jax.grad(
            lambda x: il.reduce_loss(x, reduction="sequence_mean", where=WHERE, segment_ids=IDS)
        )
    )(jnp.asarray(LOSSES))
    assert np.all(np.isfinite(grad))
    assert np.all(np.asarray(grad)[(IDS < 0) | ~WHERE] == 0.0)


def test_out_of_range_id_poisons_its_row_only():
    ids = IDS.copy()
    ids[0, 1] = S  # one id too large in row 0
    losses = np.nan_to_num(LOSSES)
    for reduction in ("per_sequence_sum", "per_sequence_mean", "none"):
        out = np.asarray(
            il.reduce_loss(losses, reduction=reduction, segment_ids=ids, num_segments=S)
        )
        assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1:]))
    for reduction in ("sum", "mean", "batchmean", "sequence_mean"):
        out = il.reduce_loss(losses, reduction=reduction, segment_ids=ids, num_segments=S)
        assert np.isnan(out), reduction
    s, c = il.loss_sum_and_count(losses, reduction="sequence_mean", segment_ids=ids, num_segments=S)
    assert np.isnan(s) and np.isnan(c)


def test_nan_in_a_counted_token_poisons_its_sequence_only():
    losses = np.nan_to_num(LOSSES)
    losses[0, 3] = np.nan  # row 0, document 1
    means = np.asarray(
        il.reduce_loss(losses, reduction="per_sequence_mean", segment_ids=IDS, num_segments=S)
    )
    assert np.isnan(means[0, 1]) and np.sum(np.isnan(means)) == 1
    assert np.isnan(il.reduce_loss(losses, reduction="sequence_mean", segment_ids=IDS))
    masked = il.reduce_loss(losses, reduction="sequence_mean", segment_ids=IDS, where=IDS != 1)
    assert np.isfinite(masked)  # masked out, it is only padding


def test_ids_too_large_for_the_integer_dtype_stay_out_of_range():
    ids = IDS.astype(np.uint64)  # padding ids wrap to huge unsigned values
    out = il.reduce_loss(np.nan_to_num(LOSSES), reduction="per_sequence_sum", segment_ids=ids)
    assert np.all(np.isnan(np.asarray(out)[0]))  # never read as padding or as a real id
    ids32 = jnp.asarray(np.where(IDS < 0, 2**32 - 1, IDS).astype(np.uint32))
    out = il.reduce_loss(np.nan_to_num(LOSSES), reduction="per_sequence_sum", segment_ids=ids32)
    assert np.all(np.isnan(np.asarray(out)[0]))


def test_bfloat16_accumulates_in_float32():
    # 2000 tokens of 1 + 2**-7 in one document: a bfloat16 running sum would stall at 256.
    losses = jnp.full((1, 2000), 1.0 + 2.0**-7, jnp.bfloat16)
    ids = jnp.zeros((1, 2000), jnp.int32).at[0, 1000:].set(1)
    sums = il.reduce_loss(losses, reduction="per_sequence_sum", segment_ids=ids, num_segments=2)
    assert sums.dtype == jnp.float32
    _assert_close(sums, [[1000 * (1 + 2**-7), 1000 * (1 + 2**-7)]], rtol=1e-6)
    for reduction in ("per_sequence_mean", "sequence_mean"):
        out = il.reduce_loss(losses, reduction=reduction, segment_ids=ids, num_segments=2)
        assert out.dtype == jnp.float32, reduction
        expected = numpy_reduce(np.asarray(losses, np.float64), reduction, np.asarray(ids), 2)
        _assert_close(out, expected, rtol=1e-6)
    none = il.reduce_loss(losses, reduction="none", segment_ids=ids)
    assert none.dtype == jnp.bfloat16 and none.shape == losses.shape


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("reduction", ["sequence_mean", "per_sequence_mean", "per_sequence_sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_jit_grad_against_autodiff_of_the_plain_reference(reduction, weighted):
    kw = dict(where=jnp.asarray(WHERE), weights=jnp.asarray(WEIGHTS) if weighted else None)
    ids = jnp.asarray(IDS)
    cotangent = jnp.asarray(_rng.normal(size=(3, S)))

    def scalar(out):
        return out if out.ndim == 0 else jnp.sum(out * cotangent)

    def library(x):
        return scalar(il.reduce_loss(x, reduction=reduction, segment_ids=ids, num_segments=S, **kw))

    def plain(x):
        return scalar(plain_jnp_reduce(x, reduction, ids, S, **kw))

    losses = jnp.asarray(np.nan_to_num(LOSSES))
    value, grad = jax.jit(jax.value_and_grad(library))(losses)
    expected_value, expected_grad = jax.value_and_grad(plain)(losses)
    _assert_close(value, expected_value)
    _assert_close(grad, expected_grad)


def test_num_segments_is_static_under_jit():
    f = jax.jit(
        lambda x, ids: il.reduce_loss(
            x, reduction="per_sequence_sum", segment_ids=ids, num_segments=S
        )
    )
    _assert_close(f(np.nan_to_num(LOSSES), IDS), numpy_reduce(LOSSES, "per_sequence_sum", IDS, S))
    traced = jax.jit(lambda n: il.reduce_loss(LOSSES, reduction="sum", segment_ids=IDS,
                                              num_segments=n))  # fmt: skip
    with pytest.raises(TypeError, match="`num_segments` must be a static Python int"):
        traced(S)


@pytest.mark.parametrize("reduction", ALL_REDUCTIONS)
def test_vmap_over_rows(reduction):
    losses = np.nan_to_num(LOSSES)

    def one_row(x, ids, w):
        return il.reduce_loss(x, reduction=reduction, weights=w, segment_ids=ids, num_segments=S)

    out = jax.vmap(one_row)(losses, IDS, WEIGHTS)
    expected = [numpy_reduce(losses[r], reduction, IDS[r], S, weights=WEIGHTS[r]) for r in range(3)]
    _assert_close(out, np.stack(expected))


def test_repeated_eager_calls_compile_nothing():
    call = lambda: il.reduce_loss(  # noqa: E731
        LOSSES, reduction="sequence_mean", weights=WEIGHTS, segment_ids=IDS, num_segments=S
    )
    assert compiles_after_warm_up(call) == 0


# ----------------------------------------------------------------------------- accumulation

# Six rows of packed documents, accumulated as three micro-batches of two rows.
ACC_IDS = np.array(
    [
        [0, 0, 1, 1, 1, 1, 2, -1],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 2, 3, -1, -1, -1, -1],
        [-1, -1, -1, -1, -1, -1, -1, -1],
        [0, 0, 0, 1, -1, -1, -1, -1],
        [0, 1, 1, 1, 1, 1, 1, 1],
    ]
)
ACC_X = _rng.normal(size=ACC_IDS.shape)
ACC_WHERE = _rng.uniform(size=ACC_IDS.shape) > 0.2


def _per_token(theta, x):
    return jnp.square(x - theta) + theta * x


def _microbatches():
    split = lambda a: jnp.asarray(a).reshape(3, 2, a.shape[-1])  # noqa: E731
    return {"x": split(ACC_X), "ids": split(ACC_IDS), "where": split(ACC_WHERE)}


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["sequence_mean", "mean"])
def test_accumulate_value_and_grad_equals_the_full_batch(reduction):
    def sum_and_count(theta, batch):
        return il.loss_sum_and_count(
            _per_token(theta, batch["x"]),
            where=batch["where"],
            reduction=reduction,
            segment_ids=batch["ids"],
            num_segments=S,
        )

    def full(theta):
        return il.reduce_loss(
            _per_token(theta, ACC_X),
            reduction=reduction,
            where=ACC_WHERE,
            segment_ids=ACC_IDS,
            num_segments=S,
        )

    theta = jnp.float64(0.3)
    loss, grad = il.accumulate_value_and_grad(sum_and_count, theta, _microbatches())
    expected_loss, expected_grad = jax.value_and_grad(full)(theta)
    _assert_close(loss, expected_loss)
    _assert_close(grad, expected_grad)
    plain = jax.value_and_grad(
        lambda t: plain_jnp_reduce(_per_token(t, ACC_X), reduction, ACC_IDS, S, where=ACC_WHERE)
    )(theta)
    _assert_close(loss, plain[0])
    _assert_close(grad, plain[1])


def test_sequence_mean_micro_batches_add_up_with_the_global_count():
    losses = jnp.asarray(ACC_X)
    _, counts = numpy_sequences(ACC_X, ACC_IDS, S, where=ACC_WHERE)
    n_global = int((counts != 0).sum())
    total = 0.0
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        s, _ = il.loss_sum_and_count(
            losses[rows],
            where=ACC_WHERE[rows],
            reduction="sequence_mean",
            segment_ids=ACC_IDS[rows],
            num_segments=S,
        )
        total = total + s / n_global
    full = il.reduce_loss(
        losses, reduction="sequence_mean", where=ACC_WHERE, segment_ids=ACC_IDS, num_segments=S
    )
    _assert_close(total, full)
    # Averaging the micro-batches' own sequence means is not the same number.
    means = [
        il.reduce_loss(
            losses[r],
            reduction="sequence_mean",
            segment_ids=ACC_IDS[r],
            where=ACC_WHERE[r],
            num_segments=S,
        )
        for r in (slice(0, 2), slice(2, 3), slice(3, 6))
    ]
    assert abs(float(np.mean(means)) - float(full)) > 1e-3


def test_per_sequence_pairs_add_over_token_chunks():
    """A long packed row split along its tokens: the chunks' (sum, count) pairs add exactly."""
    chunks = [slice(0, 3), slice(3, 5), slice(5, 8)]
    sums, counts = 0.0, 0.0
    for c in chunks:
        s, n = il.loss_sum_and_count(
            ACC_X[:, c],
            weights=WEIGHTS[:1, :1],
            where=ACC_WHERE[:, c],
            reduction="per_sequence_mean",
            segment_ids=ACC_IDS[:, c],
            num_segments=S,
        )
        sums, counts = sums + s, counts + n
    w = WEIGHTS[:1, :1]

    def full(reduction):
        return il.reduce_loss(
            ACC_X,
            reduction=reduction,
            weights=w,
            where=ACC_WHERE,
            segment_ids=ACC_IDS,
            num_segments=S,
        )

    _assert_close(sums, full("per_sequence_sum"))
    sums, counts = np.asarray(sums), np.asarray(counts)
    means = np.where(counts != 0, sums / np.where(counts != 0, counts, 1.0), 0.0)
    _assert_close(means, full("per_sequence_mean"))
    _assert_close(
        means, numpy_reduce(ACC_X, "per_sequence_mean", ACC_IDS, S, weights=w, where=ACC_WHERE)
    )


# ----------------------------------------------------------------------------- property


@settings(max_examples=60)
@given(
    ids=st.lists(st.integers(-2, S - 1), min_size=24, max_size=24),
    values=st.lists(st.floats(-1e3, 1e3), min_size=24, max_size=24),
)
def test_sequence_sums_add_up_to_the_token_sum(ids, values):
    ids = np.asarray(ids).reshape(3, 8)
    losses = np.asarray(values).reshape(3, 8)
    sums = il.reduce_loss(losses, reduction="per_sequence_sum", segment_ids=ids, num_segments=S)
    _, counts = il.loss_sum_and_count(
        losses, reduction="per_sequence_mean", segment_ids=ids, num_segments=S
    )
    _assert_close(jnp.sum(sums), losses[ids >= 0].sum(), rtol=1e-12, atol=1e-9)
    assert float(jnp.sum(counts)) == (ids >= 0).sum()
    n = float(il.loss_sum_and_count(losses, reduction="sequence_mean", segment_ids=ids,
                                    num_segments=S)[1])  # fmt: skip
    assert n == sum(len(set(row[row >= 0])) for row in ids)


# ----------------------------------------------------------------------------- errors


def test_non_integer_segment_ids_are_a_type_error():
    with pytest.raises(TypeError, match=r"`segment_ids`.*float64\[3, 8\]"):
        il.reduce_loss(LOSSES, reduction="sum", segment_ids=IDS.astype(float))
    with pytest.raises(TypeError, match=r"`segment_ids`.*bool"):
        il.reduce_loss(LOSSES, reduction="per_sequence_sum", segment_ids=IDS > 0)


def test_wrong_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"`segment_ids`.*\[3, 8\].*\[3, 4\]"):
        il.reduce_loss(LOSSES, reduction="sequence_mean", segment_ids=IDS[:, :4])
    with pytest.raises(ValueError, match=r"`segment_ids`.*\[3, 8\].*\[8\]"):
        il.reduce_loss(LOSSES, reduction="none", segment_ids=IDS[0])  # no broadcasting


def test_bad_num_segments():
    with pytest.raises(ValueError, match="`num_segments` is only meaningful"):
        il.reduce_loss(LOSSES, reduction="per_sequence_sum", num_segments=S)
    with pytest.raises(ValueError, match="`num_segments` must be at least 1"):
        il.reduce_loss(LOSSES, reduction="sum", segment_ids=IDS, num_segments=0)
    with pytest.raises(TypeError, match="`num_segments` must be a positive Python int"):
        il.reduce_loss(LOSSES, reduction="sum", segment_ids=IDS, num_segments=2.0)  # pyright: ignore[reportArgumentType]


def test_per_sequence_reduction_of_a_scalar_is_a_value_error():
    with pytest.raises(ValueError, match=r"\[\.\.\., T\]"):
        il.reduce_loss(1.0, reduction="sequence_mean")


def test_unknown_reductions_list_the_per_sequence_ones():
    with pytest.raises(
        ValueError, match="'per_sequence_sum'.*'per_sequence_mean'.*'sequence_mean'"
    ):
        il.reduce_loss(LOSSES, reduction="mean_of_sequence_means")
    with pytest.raises(ValueError, match="'mean', 'sequence_mean', 'per_sequence_mean'"):
        il.loss_sum_and_count(LOSSES, reduction="sum")


def test_sequence_mean_is_the_policy_normalization_of_the_same_name():
    """At ratio 1 the clipped surrogate's per-token loss is -advantage."""
    advantages = np.nan_to_num(LOSSES)
    log_probs = jnp.full(IDS.shape, -1.0)
    for normalization, reduction in (("sequence_mean", "sequence_mean"), ("token_mean", "mean")):
        loss, _ = policy.clipped_surrogate(
            log_probs,
            log_probs,
            advantages,
            mask=WHERE,
            segment_ids=IDS,
            num_segments=S,
            normalization=normalization,
        )
        expected = il.reduce_loss(
            -advantages, reduction=reduction, where=WHERE, segment_ids=IDS, num_segments=S
        )
        _assert_close(loss, expected)
