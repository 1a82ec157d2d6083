"""The fused ``linear_*`` heads and the sharded losses under bad input, by their public API.

The same walk as tests/core/test_adversarial.py (docs/concepts.md, "What happens on bad input"),
against plain jnp references of ``hidden @ weight + bias``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infoloss_jax as il
from infoloss_jax import sharded
from infoloss_jax.engine._loss_spec import declared_divergences

NAN, INF = float("nan"), float("inf")

N, D, V = 6, 4, 8
_rng = np.random.default_rng(3)
HIDDEN = _rng.normal(size=(N, D)).astype(np.float32)
WEIGHT = _rng.normal(size=(D, V)).astype(np.float32)
BIAS = _rng.normal(size=(V,)).astype(np.float32)
TARGET_HIDDEN = _rng.normal(size=(N, D)).astype(np.float32)
TARGET_WEIGHT = _rng.normal(size=(D, V)).astype(np.float32)
LABELS = np.array([0, 3, 7, 1, 5, 2])


def _plain_ce(hidden, labels, weight, bias=None):
    """Per-token -log softmax(h W + b)[y], in plain jnp (float64)."""
    logits = jnp.asarray(hidden, jnp.float64) @ jnp.asarray(weight, jnp.float64)
    if bias is not None:
        logits = logits + jnp.asarray(bias, jnp.float64)
    log_q = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_q, jnp.asarray(labels)[:, None], -1)[:, 0]


def _linear_ce(hidden, labels, weight=WEIGHT, **kw):
    kw.setdefault("reduction", "none")
    return il.linear_softmax_cross_entropy(hidden, labels, weight, **kw)


def _linear_pair(fn, hidden, **kw):
    kw.setdefault("reduction", "none")
    return fn(hidden, WEIGHT, TARGET_HIDDEN, TARGET_WEIGHT, **kw)


PAIR_HEADS = [il.linear_forward_kl, il.linear_reverse_kl, il.linear_jensen_shannon]


def test_fused_cross_entropy_matches_the_plain_reference():
    np.testing.assert_allclose(
        _linear_ce(HIDDEN, LABELS, bias=BIAS), _plain_ce(HIDDEN, LABELS, WEIGHT, BIAS), rtol=1e-5
    )


# --------------------------------------------------------------------------- row 1: NaN
def test_fused_cross_entropy_nan_hidden_poisons_only_its_row():
    # docs/concepts.md: bad input, row 1
    h = HIDDEN.copy()
    h[2, 1] = NAN
    value = np.asarray(_linear_ce(jnp.asarray(h), LABELS))
    assert np.isnan(value[2]) and np.isfinite(np.delete(value, 2)).all()
    grad = np.asarray(jax.grad(lambda x: jnp.sum(_linear_ce(x, LABELS)))(jnp.asarray(h)))
    assert np.isnan(grad[2]).any() and np.isfinite(np.delete(grad, 2, axis=0)).all()


def test_fused_cross_entropy_nan_bias_beside_minus_inf_is_nan():
    # docs/concepts.md: bad input, rows 1 and 2
    bias = BIAS.copy()
    bias[4], bias[6] = -INF, NAN
    value = np.asarray(_linear_ce(HIDDEN, LABELS, bias=jnp.asarray(bias)))
    assert np.isnan(value).all()


@pytest.mark.parametrize("fn", PAIR_HEADS)
def test_fused_divergence_nan_student_poisons_only_its_row(fn):
    # docs/concepts.md: bad input, row 1
    h = HIDDEN.copy()
    h[3, 0] = NAN
    value = np.asarray(_linear_pair(fn, jnp.asarray(h)))
    assert np.isnan(value[3]) and np.isfinite(np.delete(value, 3)).all()


# --------------------------------------------------------------------------- row 2: exclusion
@pytest.mark.parametrize("fn", PAIR_HEADS)
def test_fused_divergence_with_a_class_excluded_on_both_sides_is_finite(fn):
    # docs/concepts.md: bad input, row 2. The heads take no class mask: a -inf logit on class 2
    # comes from one extra hidden feature that is always 1 and a weight row of 0 and one -inf.
    exclude = np.zeros((1, V), np.float32)
    exclude[0, 2] = -INF
    ones = np.ones((N, 1), np.float32)
    h, th = np.hstack([HIDDEN, ones]), np.hstack([TARGET_HIDDEN, ones])
    w, tw = np.vstack([WEIGHT, exclude]), np.vstack([TARGET_WEIGHT, exclude])
    value = np.asarray(fn(jnp.asarray(h), w, jnp.asarray(th), tw, reduction="none"))
    assert np.isfinite(value).all()
    core = {
        il.linear_forward_kl: il.forward_kl,
        il.linear_reverse_kl: il.reverse_kl,
        il.linear_jensen_shannon: il.jensen_shannon,
    }[fn]
    where = jnp.ones((N, V), bool).at[:, 2].set(False)
    expected = core(HIDDEN @ WEIGHT, TARGET_HIDDEN @ TARGET_WEIGHT, where=where)
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6)


def test_fused_cross_entropy_label_on_an_excluded_class_is_inf():
    # docs/concepts.md: bad input, row 2 (also with soft-capping)
    bias = BIAS.copy()
    bias[LABELS[0]] = -INF
    for kw in ({}, {"logit_softcap": 5.0}, {"label_smoothing": 0.1}):
        value = np.asarray(_linear_ce(HIDDEN, LABELS, bias=jnp.asarray(bias), **kw))
        assert value[0] == INF and np.isfinite(value[1:]).all(), kw


# --------------------------------------------------------------------------- row 5: extremes
@pytest.mark.parametrize("fn", PAIR_HEADS)
def test_fused_divergence_extreme_finite_logits_never_nan(fn):
    # docs/concepts.md: bad input, row 5 (logits of +-3e38 from a one-hot hidden state)
    hidden = jnp.eye(2, D, dtype=jnp.float32)
    weight = jnp.zeros((D, V), jnp.float32)
    weight = weight.at[0, :3].set(jnp.array([3e38, -3e38, 0.0], jnp.float32))
    weight = weight.at[1, :2].set(jnp.float32(3e38))
    value = fn(hidden, weight, hidden, jnp.zeros((D, V), jnp.float32), reduction="none")
    assert not np.isnan(np.asarray(value)).any()


# Ties at the float32 limit facing the opposite limit (issue 20: linear_reverse_kl's value and
# linear_jensen_shannon's gradient were NaN there): logit rows of a diagonal head.
_TIE_ROWS = np.array([[3e38, 3e38, 1.0], [3e38, -3e38, 1.0], [-3e38, -3e38, 1.0]], np.float32)


@pytest.mark.parametrize("name", [d.name for d in declared_divergences()])
def test_fused_divergence_ties_at_the_float_limit_never_nan(name):
    # docs/concepts.md: bad input, row 5
    fn = getattr(il, f"linear_{name}")
    pairs = [(i, j) for i in range(3) for j in range(3)]
    hidden = jnp.eye(3, dtype=jnp.float32)[jnp.array([i for i, _ in pairs])]
    target_hidden = jnp.eye(3, dtype=jnp.float32)[jnp.array([j for _, j in pairs])]
    # Row k of a head's logits is _TIE_ROWS[k]: hidden one-hot k times the [3, 3] weight.
    weight = jnp.asarray(_TIE_ROWS)

    @jax.jit
    def value_and_grad(w):
        return jax.value_and_grad(lambda v: jnp.sum(fn(hidden, v, target_hidden, weight)))(w)

    value, grad = value_and_grad(weight)
    assert not np.isnan(float(value)) and not np.isnan(np.asarray(grad)).any()


def test_linear_log_probs_of_a_row_with_no_class_left_is_minus_inf():
    # Issue 20: a label in a row whose every class is excluded (an all -inf bias) had
    # log-probability 0; it is -inf, with a finite, zero gradient (docs/concepts.md, row 2).
    bias = jnp.full((V,), -jnp.inf)
    labels = jnp.asarray(LABELS)
    lp, ent = il.linear_log_probs(HIDDEN, labels, WEIGHT, bias=bias, with_entropy=True)
    assert (np.asarray(lp) == -INF).all() and (np.asarray(ent) == 0).all()
    grads = jax.grad(
        lambda h, w: jnp.sum(il.linear_log_probs(h, labels, w, bias=bias)), argnums=(0, 1)
    )(jnp.asarray(HIDDEN), jnp.asarray(WEIGHT))
    for grad in grads:
        assert np.isfinite(np.asarray(grad)).all() and not np.asarray(grad).any()


# --------------------------------------------------------------------------- row 6: labels
BAD_LABELS = [V, -1, -100, 2**31 - 1]


@pytest.mark.parametrize("bad", BAD_LABELS)
def test_fused_cross_entropy_out_of_range_label_value_is_nan(bad):
    # docs/concepts.md: bad input, row 6
    labels = LABELS.copy()
    labels[1] = bad
    value = np.asarray(_linear_ce(HIDDEN, jnp.asarray(labels)))
    assert np.isnan(value[1]) and np.isfinite(np.delete(value, 1)).all()


@pytest.mark.parametrize("bad", BAD_LABELS)
@pytest.mark.parametrize("jit", [False, True])
def test_fused_cross_entropy_out_of_range_label_poisons_the_gradient(bad, jit):
    # docs/concepts.md: bad input, rows 1 and 6 (a step that updates without looking at the loss)
    labels = LABELS.copy()
    labels[1] = bad

    def loss(h):
        return il.linear_softmax_cross_entropy(h, jnp.asarray(labels), WEIGHT, reduction="sum")

    grad = jax.grad(loss)
    grad = np.asarray((jax.jit(grad) if jit else grad)(jnp.asarray(HIDDEN)))
    assert np.isnan(grad[1]).all() and np.isfinite(np.delete(grad, 1, axis=0)).all()


def test_fused_cross_entropy_reads_int64_labels_by_value():
    # docs/concepts.md: bad input, row 6 (2**32 + 1 is not class 1, 2**32 - 100 is not -100)
    labels = np.array([2**32 + 1, 2**32 - 100, 0, 1, 2, 3], np.int64)
    value = np.asarray(_linear_ce(HIDDEN, labels, ignore_index=-100))
    assert np.isnan(value[:2]).all() and np.isfinite(value[2:]).all()


# --------------------------------------------------------------------------- row 7: options
@pytest.mark.parametrize("fn", PAIR_HEADS)
def test_fused_divergence_traced_temperature(fn):
    # docs/concepts.md: bad input, row 7
    traced = jax.jit(lambda t: _linear_pair(fn, HIDDEN, temperature=t))
    np.testing.assert_allclose(traced(2.0), _linear_pair(fn, HIDDEN, temperature=2.0), rtol=1e-5)
    for bad in (0.0, -1.0):
        assert np.isnan(np.asarray(traced(bad))).all()


@pytest.mark.parametrize(
    ("option", "good", "bad"), [("label_smoothing", 0.1, 1.5), ("z_loss", 0.1, -1.0)]
)
def test_fused_cross_entropy_traced_coefficients(option, good, bad):
    # docs/concepts.md: bad input, row 7
    traced = jax.jit(lambda c: _linear_ce(HIDDEN, LABELS, **{option: c}))
    np.testing.assert_allclose(
        traced(good), _linear_ce(HIDDEN, LABELS, **{option: good}), rtol=1e-5
    )
    assert np.isnan(np.asarray(traced(bad))).all()


def test_fused_cross_entropy_static_bad_options_raise():
    # docs/concepts.md: bad input, row 7
    with pytest.raises(ValueError, match="`label_smoothing`"):
        _linear_ce(HIDDEN, LABELS, label_smoothing=1.5)
    with pytest.raises(ValueError, match="`temperature`"):
        _linear_pair(il.linear_forward_kl, HIDDEN, temperature=0.0)


def test_fused_cross_entropy_traced_softcap_is_a_type_error():
    # docs/concepts.md: bad input, row 7 (a structural option)
    with pytest.raises(TypeError, match="`logit_softcap`"):
        jax.jit(lambda s: _linear_ce(HIDDEN, LABELS, logit_softcap=s))(5.0)


# --------------------------------------------------------------------------- row 8: empty
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_fused_cross_entropy_empty_batch(reduction):
    # docs/concepts.md: bad input, row 8
    out = np.asarray(_linear_ce(jnp.zeros((0, D)), jnp.zeros((0,), int), reduction=reduction))
    if reduction == "none":
        assert out.shape == (0,)
    else:
        assert out == 0.0


def test_fused_cross_entropy_no_classes_is_a_named_value_error():
    # docs/concepts.md: bad input, row 8
    with pytest.raises(ValueError, match="`weight`"):
        _linear_ce(HIDDEN, LABELS, weight=jnp.zeros((D, 0)))


# --------------------------------------------------------------------------- row 9: weights
def test_fused_cross_entropy_zero_sum_class_weights_mean_is_zero():
    # docs/concepts.md: bad input, row 9
    weights = jnp.zeros((V,))

    def loss(h):
        return _linear_ce(h, LABELS, class_weights=weights, reduction="mean")

    assert float(loss(HIDDEN)) == 0.0
    np.testing.assert_array_equal(jax.grad(loss)(jnp.asarray(HIDDEN)), 0.0)


def test_checked_fused_heads():
    # docs/concepts.md: bad input, row 12
    out = il.checked(il.linear_softmax_cross_entropy)(HIDDEN, LABELS, WEIGHT, bias=BIAS)
    expected = jnp.mean(_plain_ce(HIDDEN, LABELS, WEIGHT, BIAS))
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    bad = LABELS.copy()
    bad[0] = V
    with pytest.raises(ValueError, match="`labels`"):
        il.checked(il.linear_softmax_cross_entropy)(HIDDEN, bad, WEIGHT)
    with pytest.raises(ValueError, match="`class_weights`"):
        il.checked(il.linear_softmax_cross_entropy)(
            HIDDEN, LABELS, WEIGHT, class_weights=-jnp.ones(V)
        )
    h = HIDDEN.copy()
    h[0, 0] = NAN
    with pytest.raises(ValueError, match="`hidden`"):
        il.checked(il.linear_forward_kl)(h, WEIGHT, TARGET_HIDDEN, TARGET_WEIGHT)
    out = il.checked(il.linear_jensen_shannon)(HIDDEN, WEIGHT, TARGET_HIDDEN, TARGET_WEIGHT)
    assert math.isfinite(float(out))


# --------------------------------------------------------------------------- sharded (8 devices)
@pytest.fixture(scope="module")
def mesh():
    from jax.sharding import AxisType

    devices = jax.devices() if len(jax.devices()) >= 8 else jax.devices("cpu")
    return jax.make_mesh((8,), ("vocab",), devices=devices[:8], axis_types=(AxisType.Auto,))


def _student_teacher():
    logits = np.asarray(HIDDEN @ WEIGHT, np.float32)
    target = np.asarray(TARGET_HIDDEN @ TARGET_WEIGHT, np.float32)
    return logits, target


@pytest.mark.parametrize(
    "name",
    [
        "vocab_parallel_forward_kl_on_mesh",
        "vocab_parallel_reverse_kl_on_mesh",
        "vocab_parallel_jensen_shannon_on_mesh",
    ],
)
def test_sharded_divergence_nan_student_logit_is_nan(mesh, name):
    # docs/concepts.md: bad input, row 1
    logits, target = _student_teacher()
    logits[2, 5] = NAN
    out = getattr(sharded, name)(logits, target, mesh=mesh, vocab_axis="vocab", reduction="none")
    out = np.asarray(out)
    assert np.isnan(out[2]) and np.isfinite(np.delete(out, 2)).all()


def test_sharded_cross_entropy_label_on_an_excluded_class_is_inf(mesh):
    # docs/concepts.md: bad input, row 2 (an excluded label's class, with soft-capping)
    logits, _ = _student_teacher()
    logits[0, LABELS[0]] = -INF
    out = sharded.vocab_parallel_cross_entropy_on_mesh(
        logits, LABELS, mesh=mesh, vocab_axis="vocab", reduction="none", logit_softcap=5.0
    )
    out = np.asarray(out)
    assert out[0] == INF and np.isfinite(out[1:]).all()


def test_sharded_cross_entropy_nan_logit_is_nan(mesh):
    # docs/concepts.md: bad input, row 1
    logits, _ = _student_teacher()
    logits[1, 2] = NAN
    out = sharded.vocab_parallel_cross_entropy_on_mesh(
        logits, LABELS, mesh=mesh, vocab_axis="vocab", reduction="none"
    )
    out = np.asarray(out)
    assert np.isnan(out[1]) and np.isfinite(np.delete(out, 1)).all()


def test_checked_on_mesh_losses(mesh):
    # docs/concepts.md: bad input, row 12
    logits, target = _student_teacher()
    kw = dict(mesh=mesh, vocab_axis="vocab")
    loss = il.checked(sharded.vocab_parallel_cross_entropy_on_mesh)(logits, LABELS, **kw)
    np.testing.assert_allclose(loss, _plain_ce(HIDDEN, LABELS, WEIGHT), rtol=1e-5)
    bad = LABELS.copy()
    bad[0] = V
    with pytest.raises(ValueError, match="`labels`"):
        il.checked(sharded.vocab_parallel_cross_entropy_on_mesh)(logits, bad, **kw)
    logits[0, 0] = NAN
    with pytest.raises(ValueError, match="`logits`"):
        il.checked(sharded.vocab_parallel_forward_kl_on_mesh)(logits, target, **kw)


# --------------------------------------------------------------------------- masked NaN rows
# A token that is masked (``mask=False``) or ignored (``ignore_index``) contributes nothing,
# value or gradient, even when its hidden state (or its logits) are NaN: it never reaches the
# engine (issue 20).
DROP = 2  # the token dropped in each case below
KEEP = np.arange(N) != DROP
IGNORED = np.where(KEEP, LABELS, -100)


def _fused_drops():
    def ce_mask(h, w, b):
        return il.linear_softmax_cross_entropy(h, LABELS, w, bias=b, mask=KEEP, reduction="sum")

    def ce_ignore(h, w, b):
        return il.linear_softmax_cross_entropy(h, IGNORED, w, bias=b, ignore_index=-100)

    def log_probs(h, w, b, **kw):
        lp, ent = il.linear_log_probs(h, LABELS, w, bias=b, with_entropy=True, **kw)
        return jnp.sum(lp) + 0.3 * jnp.sum(ent)

    def pair(fn):
        return lambda h, w, b: fn(h, w + b, h * 0.5, TARGET_WEIGHT, mask=KEEP, temperature=1.5)

    return {
        "linear_softmax_cross_entropy[mask]": ce_mask,
        "linear_softmax_cross_entropy[ignore_index]": ce_ignore,
        "linear_log_probs[mask]": lambda h, w, b: log_probs(h, w, b, mask=KEEP),
        "linear_log_probs[ignore_index]": lambda h, w, b: log_probs(
            h, w, b, ignore_index=int(LABELS[DROP])
        ),
        **{fn.__name__: pair(fn) for fn in PAIR_HEADS},
    }


def _check_dropped_nan_row(loss):
    """A NaN in the dropped token's hidden state changes no value and no gradient."""
    clean = jnp.asarray(HIDDEN).at[DROP].set(0.0)
    poisoned = jnp.asarray(HIDDEN).at[DROP].set(NAN)
    args = (jnp.asarray(WEIGHT), jnp.asarray(BIAS))
    value_and_grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))  # one program for both
    value, grads = value_and_grads(poisoned, *args)
    expected, expected_grads = value_and_grads(clean, *args)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    for g, e in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
    assert not np.asarray(grads[0][DROP]).any()


@pytest.mark.parametrize("name", list(_fused_drops()))
def test_fused_masked_or_ignored_nan_token_contributes_nothing(name):
    _check_dropped_nan_row(_fused_drops()[name])


def test_log_probs_ignored_nan_logit_gives_no_nan_gradient():
    logits = jnp.asarray(HIDDEN @ WEIGHT).at[DROP, 3].set(NAN)

    def loss(z):
        lp, ent = il.log_probs(z, IGNORED, ignore_index=-100, with_entropy=True)
        return jnp.sum(lp) + jnp.sum(ent)

    value, grad = jax.jit(jax.value_and_grad(loss))(logits)
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
    assert not np.asarray(grad[DROP]).any()


def _sharded_drops(mesh):
    on = dict(mesh=mesh, vocab_axis="vocab")

    def ce(h, w, b):
        return sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            h, IGNORED, w, bias=b, ignore_index=-100, **on
        )

    def log_probs(h, w, b):
        lp, ent = sharded.vocab_parallel_linear_log_probs_on_mesh(
            h, LABELS, w, bias=b, mask=KEEP, with_entropy=True, **on
        )
        return jnp.sum(lp) + 0.3 * jnp.sum(ent)

    def jsd(h, w, b):
        return sharded.vocab_parallel_linear_jensen_shannon_on_mesh(
            h, w + b, h * 0.5, TARGET_WEIGHT, mask=KEEP, **on
        )

    return dict(linear_cross_entropy=ce, linear_log_probs=log_probs, linear_jensen_shannon=jsd)


@pytest.mark.parametrize(
    "name", ["linear_cross_entropy", "linear_log_probs", "linear_jensen_shannon"]
)
def test_sharded_masked_or_ignored_nan_token_contributes_nothing(mesh, name):
    _check_dropped_nan_row(_sharded_drops(mesh)[name])


def _sharded_logits_drops(mesh):
    on = dict(mesh=mesh, vocab_axis="vocab")
    target = jnp.asarray(TARGET_HIDDEN @ TARGET_WEIGHT)
    return dict(
        cross_entropy=lambda z: sharded.vocab_parallel_cross_entropy_on_mesh(
            z, LABELS, mask=KEEP, reduction="mean", **on
        ),
        log_probs=lambda z: jnp.sum(
            sharded.vocab_parallel_log_probs_on_mesh(z, IGNORED, ignore_index=-100, **on)
        ),
        reverse_kl=lambda z: (
            sharded.vocab_parallel_reverse_kl_on_mesh(z, target, mask=KEEP, reduction="sum", **on)
            + sharded.vocab_parallel_forward_kl_on_mesh(target, z, mask=KEEP, reduction="sum", **on)
        ),
    )


@pytest.mark.parametrize("name", ["cross_entropy", "log_probs", "reverse_kl"])
def test_sharded_masked_or_ignored_nan_logits_contribute_nothing(mesh, name):
    loss = _sharded_logits_drops(mesh)[name]
    logits = jnp.asarray(HIDDEN @ WEIGHT)
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    value, grad = value_and_grad(logits.at[DROP, 1].set(NAN))
    expected, expected_grad = value_and_grad(logits.at[DROP].set(0.0))
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    assert not np.asarray(grad[DROP]).any()
