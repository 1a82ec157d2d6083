"""The core cross-entropy options for LLM training, against independent references.

* PyTorch golden numbers (``tests/golden/torch_golden.py``, torch 2.13.0, made by
  ``tests/golden/make_torch_golden.py``) where torch has the option: ignore_index,
  label_smoothing, class weights, the weighted mean.
* Hand-written numpy references elsewhere (z-loss, logit soft-capping, label smoothing under
  ``where`` masks). They build the explicit smoothed target distribution and take
  :math:`-\\sum_k w_k t_k \\log q_k`, a different route from the library's formula.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden import make_torch_golden, torch_golden
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads
from scipy.special import logsumexp

import infoloss_jax as il

GOLDEN = torch_golden.GOLDEN
CASES = make_torch_golden
INPUTS = CASES.INPUTS

LOGITS = jnp.asarray(INPUTS["logits"], jnp.float64)
WEIGHT = jnp.asarray(INPUTS["weight"], jnp.float64)
REDUCTIONS = ("none", "sum", "mean", "batchmean")

integer_ce = il.softmax_cross_entropy_with_integer_labels


# --- Independent numpy references. ------------------------------------------------------------


def np_log_softmax(logits, mask):
    z = np.where(mask, logits, -np.inf)
    lse = logsumexp(z, axis=-1, keepdims=True)
    return z - lse, lse[..., 0]


def np_integer_ce(
    logits,
    labels,
    *,
    class_mask=None,
    ignore_index=None,
    label_smoothing=0.0,
    class_weights=None,
    z_loss=0.0,
    logit_softcap=None,
):
    """Per-example loss from the explicit target t = (1-eps) onehot + eps/K_included."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    num_classes = logits.shape[-1]
    if logit_softcap is not None:
        logits = logit_softcap * np.tanh(logits / logit_softcap)
    mask = np.ones(logits.shape, bool) if class_mask is None else np.asarray(class_mask)
    log_q, lse = np_log_softmax(logits, mask)
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    onehot = np.eye(num_classes)[np.where(ignored, 0, labels)]
    target = (1 - label_smoothing) * onehot + label_smoothing * mask / mask.sum(-1, keepdims=True)
    w = np.ones(num_classes) if class_weights is None else np.asarray(class_weights)
    safe_log_q = np.where(mask, log_q, 0.0)
    loss = -np.sum(w * target * safe_log_q, axis=-1) + z_loss * lse**2
    return np.where(ignored, 0.0, loss), np.where(ignored, 0.0, w[np.where(ignored, 0, labels)])


def np_reduce(loss, denominator, reduction):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / denominator.sum() if denominator.sum() else 0.0
    return loss.sum() / loss.shape[0]


def np_soft_ce(logits, labels, *, class_mask, label_smoothing=0.0, z_loss=0.0, logit_softcap=None):
    logits = np.asarray(logits, np.float64)
    if logit_softcap is not None:
        logits = logit_softcap * np.tanh(logits / logit_softcap)
    log_q, lse = np_log_softmax(logits, class_mask)
    target = (1 - label_smoothing) * labels + label_smoothing * class_mask / class_mask.sum(
        -1, keepdims=True
    )
    return -np.sum(target * np.where(class_mask, log_q, 0.0), axis=-1) + z_loss * lse**2


def jnp_integer_ce(logits, labels, *, label_smoothing, class_weights, z_loss, logit_softcap):
    """A plain autodiff reference (no custom derivative) of the same loss, for gradients."""
    logits = logit_softcap * jnp.tanh(logits / logit_softcap)
    log_q = jax.nn.log_softmax(logits)
    lse = jax.nn.logsumexp(logits, axis=-1)
    num_classes = logits.shape[-1]
    target = (1 - label_smoothing) * jax.nn.one_hot(labels, num_classes) + (
        label_smoothing / num_classes
    )
    return -jnp.sum(class_weights * target * log_q, axis=-1) + z_loss * lse**2


# --- Against PyTorch. -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES.CE_INDEX_CASES))
def test_integer_options_match_torch(case):
    spec = dict(CASES.CE_INDEX_CASES[case])
    labels = jnp.asarray(INPUTS[spec.pop("target")], jnp.int32)
    options = {
        "ignore_index": spec.get("ignore_index", -100),
        "label_smoothing": spec.get("label_smoothing", 0.0),
        "class_weights": WEIGHT if "weight" in spec else None,
    }
    for reduction in ("none", "sum", "mean"):
        ours = integer_ce(LOGITS, labels, reduction=reduction, **options)
        expected = GOLDEN[f"cross_entropy/{case}/{reduction}"]
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    grad = jax.grad(lambda x: integer_ce(x, labels, reduction="mean", **options))(LOGITS)
    np.testing.assert_allclose(grad, GOLDEN[f"grad/cross_entropy/{case}/mean"], atol=1e-12)


@pytest.mark.slow
def test_class_axis_1_matches_torch_k_dimensional_loss():
    logits = jnp.asarray(INPUTS["logits_nd"], jnp.float64)
    labels = jnp.asarray(INPUTS["labels_nd"], jnp.int32)
    options = {
        "axis": 1,
        "ignore_index": -100,
        "label_smoothing": CASES.ND_OPTIONS["label_smoothing"],
        "class_weights": jnp.asarray(INPUTS["weight_nd"], jnp.float64),
    }
    for reduction in ("none", "sum", "mean"):
        ours = integer_ce(logits, labels, reduction=reduction, **options)
        expected = GOLDEN[f"cross_entropy/nd_weight_ls/{reduction}"]
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    grad = jax.grad(lambda x: integer_ce(x, labels, reduction="mean", **options))(logits)
    np.testing.assert_allclose(grad, GOLDEN["grad/cross_entropy/nd_weight_ls/mean"], atol=1e-12)


@pytest.mark.slow
def test_soft_label_smoothing_matches_torch():
    probs = jnp.asarray(INPUTS["probs"], jnp.float64)
    for reduction in ("none", "sum", "mean"):
        ours = il.softmax_cross_entropy(LOGITS, probs, label_smoothing=0.1, reduction=reduction)
        expected = GOLDEN[f"cross_entropy_probs/ls/{reduction}"]
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    grad = jax.grad(
        lambda x: il.softmax_cross_entropy(x, probs, label_smoothing=0.1, reduction="mean")
    )(LOGITS)
    np.testing.assert_allclose(grad, GOLDEN["grad/cross_entropy_probs/ls/mean"], atol=1e-12)


def test_sigmoid_pos_weight_matches_torch():
    x = jnp.asarray(INPUTS["bce_logits"], jnp.float64)
    y = jnp.asarray(INPUTS["bce_targets"], jnp.float64)
    pos_weight = jnp.asarray(INPUTS["bce_pos_weight"], jnp.float64)
    ours = il.sigmoid_binary_cross_entropy(x, y, pos_weight=pos_weight)
    np.testing.assert_allclose(ours, GOLDEN["bce_with_logits/pos_weight/none"], rtol=1e-12)


# --- Against numpy references, over many drawn values. ----------------------------------------

N, K = 4, 6
OPTION_SETS = [
    {"label_smoothing": 0.1},
    {"z_loss": 1e-2, "logit_softcap": 5.0},
    {"label_smoothing": 0.2, "z_loss": 1e-3, "logit_softcap": 3.0, "class_weights": True},
    {"ignore_index": -100, "label_smoothing": 0.3, "class_weights": True, "logit_softcap": 30.0},
]
CLASS_WEIGHTS = np.linspace(0.25, 2.0, K)


@partial(jax.jit, static_argnames=("option_set", "reduction"))
def _integer_ce_jit(logits, labels, where, class_weights, option_set, reduction):
    options = dict(OPTION_SETS[option_set])
    options["class_weights"] = class_weights if options.pop("class_weights", False) else None
    return integer_ce(logits, labels, where=where, reduction=reduction, **options)


logit_values = hnp.arrays(
    np.float64, (N, K), elements=st.floats(-30, 30, allow_nan=False, allow_subnormal=False)
)


@given(
    logits=logit_values,
    labels=hnp.arrays(np.int32, (N,), elements=st.integers(0, K - 1)),
    class_mask=hnp.arrays(np.bool_, (N, K)),
    ignored=hnp.arrays(np.bool_, (N,)),
    option_set=st.integers(0, len(OPTION_SETS) - 1),
    reduction=st.sampled_from(["none", "mean"]),
)
def test_integer_options_match_numpy_reference(
    logits, labels, class_mask, ignored, option_set, reduction
):
    options = dict(OPTION_SETS[option_set])
    if "ignore_index" in options:
        labels = np.where(ignored, -100, labels).astype(np.int32)
    if options.pop("class_weights", False):
        options["class_weights"] = CLASS_WEIGHTS
    # Keep every label's class included (label mass on an excluded class is +inf by design).
    class_mask = class_mask | (np.arange(K) == np.maximum(labels, 0)[:, None])
    ours = _integer_ce_jit(logits, labels, class_mask, CLASS_WEIGHTS, option_set, reduction)
    loss, denominator = np_integer_ce(logits, labels, class_mask=class_mask, **options)
    expected = np_reduce(loss, denominator, reduction)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)


@partial(jax.jit, static_argnames=("option_set",))
def _soft_ce_jit(logits, labels, where, option_set):
    options = {k: v for k, v in OPTION_SETS[option_set].items() if k in SOFT_OPTIONS}
    return il.softmax_cross_entropy(logits, labels, where=where, **options)


SOFT_OPTIONS = ("label_smoothing", "z_loss", "logit_softcap")


@given(
    logits=logit_values,
    label_logits=hnp.arrays(np.float64, (N, K), elements=st.floats(-5, 5)),
    class_mask=hnp.arrays(np.bool_, (N, K)),
    option_set=st.integers(0, len(OPTION_SETS) - 1),
)
def test_soft_label_options_with_where_match_numpy_reference(
    logits, label_logits, class_mask, option_set
):
    class_mask[:, 0] = True  # at least one included class per row
    labels = np.where(class_mask, np.exp(label_logits), 0.0)
    labels = labels / labels.sum(-1, keepdims=True)
    options = {k: v for k, v in OPTION_SETS[option_set].items() if k in SOFT_OPTIONS}
    ours = _soft_ce_jit(logits, labels, class_mask, option_set)
    expected = np_soft_ce(logits, labels, class_mask=class_mask, **options)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)


def test_row_where_drops_rows_like_ignore_index():
    labels = jnp.asarray(INPUTS["labels"], jnp.int32)
    keep = jnp.asarray([True, False, True, False])
    options = {"label_smoothing": 0.1, "class_weights": WEIGHT, "z_loss": 1e-3}
    for reduction in REDUCTIONS:
        by_where = integer_ce(LOGITS, labels, where=keep, reduction=reduction, **options)
        by_ignore = integer_ce(
            LOGITS, jnp.where(keep, labels, -1), ignore_index=-1, reduction=reduction, **options
        )
        np.testing.assert_allclose(by_where, by_ignore, rtol=1e-12)


# --- Individual options. ----------------------------------------------------------------------


def test_z_loss_and_log_partition_match_scipy():
    expected = logsumexp(np.asarray(LOGITS), axis=-1)
    np.testing.assert_allclose(il.log_partition(LOGITS), expected, rtol=1e-12)
    np.testing.assert_allclose(il.z_loss(LOGITS), expected**2, rtol=1e-12)
    labels = jnp.asarray(INPUTS["labels_ignored"], jnp.int32)
    plain = integer_ce(LOGITS, labels, ignore_index=-100)
    with_z = integer_ce(LOGITS, labels, ignore_index=-100, z_loss=0.5, class_weights=WEIGHT)
    weighted = integer_ce(LOGITS, labels, ignore_index=-100, class_weights=WEIGHT)
    kept = np.asarray(labels) != -100
    # Added per non-ignored example and not class-weighted.
    np.testing.assert_allclose(with_z - weighted, np.where(kept, 0.5 * expected**2, 0.0))
    assert np.all(np.asarray(plain)[~kept] == 0)


def test_z_loss_uses_the_capped_logits():
    labels = jnp.asarray(INPUTS["labels"], jnp.int32)
    capped = 2.0 * jnp.tanh(LOGITS / 2.0)
    diff = integer_ce(LOGITS, labels, z_loss=1.0, logit_softcap=2.0) - integer_ce(
        LOGITS, labels, logit_softcap=2.0
    )
    np.testing.assert_allclose(diff, logsumexp(np.asarray(capped), axis=-1) ** 2, rtol=1e-12)


def test_logit_softcap_equals_cross_entropy_of_capped_logits():
    labels = jnp.asarray(INPUTS["labels"], jnp.int32)
    for cap in (0.5, 3.0, 1e6):
        capped = cap * jnp.tanh(LOGITS / cap)
        np.testing.assert_allclose(
            integer_ce(LOGITS, labels, logit_softcap=cap), integer_ce(capped, labels), rtol=1e-9
        )
    # A huge cap is (numerically) no cap.
    np.testing.assert_allclose(
        integer_ce(LOGITS, labels, logit_softcap=1e6), integer_ce(LOGITS, labels), rtol=1e-9
    )


@pytest.mark.slow
def test_all_options_gradient_matches_plain_autodiff_and_check_grads():
    labels = jnp.asarray(INPUTS["labels"], jnp.int32)
    options = {
        "label_smoothing": 0.15,
        "class_weights": WEIGHT,
        "z_loss": 1e-2,
        "logit_softcap": 2.5,
    }

    def ours(x):
        return integer_ce(x, labels, reduction="sum", **options)

    def plain(x):
        return jnp.sum(jnp_integer_ce(x, labels, **options))

    np.testing.assert_allclose(ours(LOGITS), plain(LOGITS), rtol=1e-12)
    np.testing.assert_allclose(jax.grad(ours)(LOGITS), jax.grad(plain)(LOGITS), atol=1e-12)
    check_grads(jax.jit(ours), (LOGITS,), order=1, modes=("fwd", "rev"))
    soft = jax.nn.softmax(LOGITS[::-1])
    soft_options = {k: v for k, v in options.items() if k != "class_weights"}
    check_grads(jax.jit(lambda x: il.softmax_cross_entropy(x, soft, **soft_options)), (LOGITS,), 1)


def test_label_smoothing_is_pytorch_not_t5x_and_the_conversion_reproduces_t5x():
    labels = np.asarray(INPUTS["labels"])
    eps = 0.1
    # T5X: 1 - eps on the label and eps / (K - 1) on each other class.
    t5x_target = np.full((4, 5), eps / 4)
    t5x_target[np.arange(4), labels] = 1 - eps
    log_q = np.asarray(jax.nn.log_softmax(LOGITS))
    t5x = -np.sum(t5x_target * log_q, axis=-1)
    pytorch = integer_ce(LOGITS, jnp.asarray(labels), label_smoothing=eps)
    assert not np.allclose(pytorch, t5x)
    converted = integer_ce(LOGITS, jnp.asarray(labels), label_smoothing=eps * 5 / 4)
    np.testing.assert_allclose(converted, t5x, rtol=1e-12)


def test_label_smoothing_spreads_over_included_classes_only():
    labels = jnp.asarray(INPUTS["labels"], jnp.int32)
    excluded = LOGITS.at[:, 1].set(-jnp.inf)
    mask = np.ones((4, 5), bool)
    mask[:, 1] = False
    loss, _ = np_integer_ce(excluded, labels, class_mask=mask, label_smoothing=0.2)
    ours = integer_ce(excluded, labels, label_smoothing=0.2)
    np.testing.assert_allclose(ours, loss, rtol=1e-12)
    grad = jax.grad(lambda x: jnp.sum(integer_ce(x, labels, label_smoothing=0.2)))(excluded)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, 1] == 0)


# --- ignore_index and reductions. -------------------------------------------------------------

ALL_OPTIONS = {
    "ignore_index": -100,
    "label_smoothing": 0.1,
    "class_weights": WEIGHT,
    "z_loss": 1e-2,
    "logit_softcap": 4.0,
}


def test_ignored_rows_give_zero_loss_and_zero_gradient():
    labels = jnp.asarray(INPUTS["labels_ignored"], jnp.int32)
    kept = np.asarray(labels) != -100
    per_example = integer_ce(LOGITS, labels, **ALL_OPTIONS)
    assert np.all(np.asarray(per_example)[~kept] == 0)
    assert np.all(np.asarray(per_example)[kept] > 0)
    for reduction in REDUCTIONS:
        grad = jax.grad(
            lambda x, r=reduction: jnp.sum(integer_ce(x, labels, reduction=r, **ALL_OPTIONS))
        )(LOGITS)
        assert np.all(np.asarray(grad)[~kept] == 0)
        assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_batch_gives_zero_loss_and_zero_gradient(reduction):
    labels = jnp.full((4,), -100, jnp.int32)

    def loss(x):
        return jnp.sum(integer_ce(x, labels, reduction=reduction, **ALL_OPTIONS))

    value, grad = jax.value_and_grad(loss)(LOGITS)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)
    s, c = il.loss_sum_and_count(integer_ce(LOGITS, labels, **ALL_OPTIONS), where=labels != -100)
    assert float(s) == 0.0 and float(c) == 0.0


def test_weighted_mean_divides_by_the_label_weights():
    labels = jnp.asarray(INPUTS["labels_ignored"], jnp.int32)
    per_example = integer_ce(LOGITS, labels, ignore_index=-100, class_weights=WEIGHT)
    kept = np.asarray(labels) != -100
    denominator = np.sum(np.asarray(WEIGHT)[np.asarray(labels)[kept]])
    mean = integer_ce(LOGITS, labels, ignore_index=-100, class_weights=WEIGHT, reduction="mean")
    np.testing.assert_allclose(mean, np.sum(per_example) / denominator, rtol=1e-12)
    batchmean = integer_ce(
        LOGITS, labels, ignore_index=-100, class_weights=WEIGHT, reduction="batchmean"
    )
    np.testing.assert_allclose(batchmean, np.sum(per_example) / 4, rtol=1e-12)


def test_reduce_loss_against_numpy():
    losses = np.asarray([1.0, 2.0, 4.0, 8.0])
    weights = np.asarray([0.5, 1.0, 2.0, 0.0])
    keep = np.asarray([True, True, False, True])
    assert float(il.reduce_loss(losses, reduction="sum")) == 15.0
    assert float(il.reduce_loss(losses, reduction="mean")) == 3.75
    assert float(il.reduce_loss(losses, reduction="batchmean")) == 3.75
    np.testing.assert_array_equal(
        il.reduce_loss(losses, reduction="none", where=keep), [1, 2, 0, 8]
    )
    assert float(il.reduce_loss(losses, reduction="mean", where=keep)) == 11.0 / 3.0
    assert float(il.reduce_loss(losses, reduction="mean", weights=weights, where=keep)) == 11 / 1.5
    matrix = np.arange(6.0).reshape(2, 3)
    assert float(il.reduce_loss(matrix, reduction="batchmean")) == 15.0 / 2
    assert float(il.reduce_loss(np.zeros(3), reduction="mean", where=np.zeros(3, bool))) == 0.0


# --- Bad input. --------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [-0.1, 1.0, 1.5])
def test_label_smoothing_outside_unit_interval(eps):
    labels = jnp.asarray(INPUTS["labels"], jnp.int32)
    with pytest.raises(ValueError, match="label_smoothing"):
        integer_ce(LOGITS, labels, label_smoothing=eps)
    with pytest.raises(ValueError, match="label_smoothing"):
        il.softmax_cross_entropy(LOGITS, jax.nn.softmax(LOGITS), label_smoothing=eps)


def test_class_weights_of_wrong_length_names_both_lengths():
    labels = jnp.asarray(INPUTS["labels"], jnp.int32)
    with pytest.raises(ValueError, match="class_weights") as error:
        integer_ce(LOGITS, labels, class_weights=jnp.ones(3))
    assert "3" in str(error.value) and "5" in str(error.value)


@pytest.mark.parametrize("cap", [0.0, -1.0])
def test_logit_softcap_must_be_positive(cap):
    labels = jnp.asarray(INPUTS["labels"], jnp.int32)
    with pytest.raises(ValueError, match="logit_softcap"):
        integer_ce(LOGITS, labels, logit_softcap=cap)
    with pytest.raises(ValueError, match="logit_softcap"):
        il.softmax_cross_entropy(LOGITS, jax.nn.softmax(LOGITS), logit_softcap=cap)


def test_unknown_reduction_lists_the_valid_ones():
    labels = jnp.asarray(INPUTS["labels"], jnp.int32)
    pattern = "reduction.*'none'.*'sum'.*'mean'.*'batchmean'"
    with pytest.raises(ValueError, match=pattern):
        integer_ce(LOGITS, labels, reduction="avg")
    with pytest.raises(ValueError, match=pattern):
        il.softmax_cross_entropy(LOGITS, jax.nn.softmax(LOGITS), reduction="avg")
    with pytest.raises(ValueError, match=pattern):
        il.reduce_loss(jnp.ones(3), reduction="avg")


def test_out_of_range_label_poisons_only_its_row():
    labels = jnp.asarray([2, 5, -1, -100], jnp.int32)
    out = np.asarray(integer_ce(LOGITS, labels, ignore_index=-100, label_smoothing=0.1))
    assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2]) and out[3] == 0
