"""infoloss_jax.torch against golden numbers made by PyTorch.

The goldens are in ``tests/golden/torch_golden.py``, generated with torch 2.13.0 (CPU, float64)
by ``tests/golden/make_torch_golden.py``, whose ``INPUTS`` literals these tests reuse. torch is
not needed to run them.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden import make_torch_golden, torch_golden

from infoloss_jax import torch as F

GOLDEN = torch_golden.GOLDEN
CASES = make_torch_golden
INPUTS = CASES.INPUTS


def arr(key: str, dtype=jnp.float64) -> jax.Array:
    return jnp.asarray(INPUTS[key], dtype)


def labels(key: str) -> jax.Array:
    return jnp.asarray(INPUTS[key], jnp.int32)


def kwargs(case: dict) -> dict:
    """Turns a case of the golden script (INPUTS keys or literals) into keyword arguments."""
    out = {}
    for k, v in case.items():
        out[k] = arr(v) if k in ("weight", "pos_weight") else v
    return out


# --- Every golden maps to one call of ours: (function, input, positional args, kwargs). --------


def call_for(key: str):
    """Returns ``(fn, input, other_args, kw)`` such that ``fn(input, *other_args, **kw)`` is the
    golden ``key`` (without its ``grad/`` prefix)."""
    family, case, reduction = key.split("/")
    kw = {"reduction": reduction}
    if family == "cross_entropy":
        if case in CASES.CE_INDEX_CASES:
            spec = dict(CASES.CE_INDEX_CASES[case])
            return F.cross_entropy, arr("logits"), (labels(spec.pop("target")),), kw | kwargs(spec)
        if case == "all_ignored":
            return F.cross_entropy, arr("logits"), (labels("all_ignored"),), kw
        if case == "nd":
            return F.cross_entropy, arr("logits_nd"), (labels("labels_nd"),), kw
        if case == "nd_weight_ls":
            nd = kwargs(CASES.ND_OPTIONS)
            return F.cross_entropy, arr("logits_nd"), (labels("labels_nd"),), kw | nd
        if case == "unbatched_index":
            return F.cross_entropy, arr("logits_1d"), (jnp.int32(INPUTS["label_1d"]),), kw
        if case == "unbatched_probs":
            return F.cross_entropy, arr("logits_1d"), (arr("probs_1d"),), kw
    if family == "cross_entropy_probs":
        spec = kwargs(CASES.CE_PROB_CASES[case])
        return F.cross_entropy, arr("logits"), (arr("probs"),), kw | spec
    if family == "nll_loss":
        if case == "nd":
            nd = {"weight": arr("weight_nd")}
            return F.nll_loss, arr("logits_nd"), (labels("labels_nd"),), kw | nd
        spec = dict(CASES.NLL_CASES[case])
        return F.nll_loss, arr("logits"), (labels(spec.pop("target")),), kw | kwargs(spec)
    if family == "kl_div":
        if case == "probs":
            return F.kl_div, arr("kl_input"), (arr("kl_target"),), kw
        if case == "log_target":
            return F.kl_div, arr("kl_input"), (arr("kl_log_target"),), kw | {"log_target": True}
        dtype = jnp.float32 if case.endswith("float32") else jnp.float64
        q = jax.nn.softmax(arr("notes_x", dtype))
        p = jax.nn.softmax(arr("notes_y", dtype))
        if case.startswith("notes_misuse"):
            return F.kl_div, q, (p,), kw
        return F.kl_div, jnp.log(q), (p,), kw
    if family == "bce_with_logits":
        spec = kwargs(CASES.BCE_CASES[case])
        fn = F.binary_cross_entropy_with_logits
        return fn, arr("bce_logits"), (arr("bce_targets"),), kw | spec
    if family == "bce":
        spec = {"weight": arr("bce_weight")} if case == "weight" else {}
        return F.binary_cross_entropy, arr("bce_probs"), (arr("bce_probs_targets"),), kw | spec
    if family == "bce_interior":
        spec = {"weight": arr("bce_weight")} if case == "weight" else {}
        fn = F.binary_cross_entropy
        return fn, arr("bce_probs_interior"), (arr("bce_probs_targets"),), kw | spec
    raise KeyError(key)


@partial(jax.jit, static_argnames=("fn", "static"))
def _jitted(fn, x, args, dynamic, static):
    return fn(x, *args, **dynamic, **dict(static))


def run(fn, x, args, kw):
    """Calls ``fn`` under jit, arrays traced and Python options static."""
    dynamic = {k: v for k, v in kw.items() if isinstance(v, jax.Array)}
    static = tuple(sorted((k, v) for k, v in kw.items() if not isinstance(v, jax.Array)))
    return _jitted(fn, x, args, dynamic, static)


def tolerance(dtype):
    return {"rtol": 1e-6, "atol": 1e-6} if dtype == jnp.float32 else {"rtol": 1e-12, "atol": 1e-12}


VALUE_KEYS = [k for k in GOLDEN if not k.startswith("grad")]
GRAD_KEYS = [k for k in GOLDEN if k.startswith("grad/")]
TARGET_GRAD_KEYS = [k for k in GOLDEN if k.startswith("grad_target/")]


@pytest.mark.parametrize("key", VALUE_KEYS)
def test_value_matches_torch(key):
    fn, x, args, kw = call_for(key)
    ours = run(fn, x, args, kw)
    expected = np.asarray(GOLDEN[key])
    if key == "cross_entropy/all_ignored/mean":
        # torch divides 0 by 0, and so do we.
        assert np.isnan(expected) and np.isnan(ours)
        return
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, **tolerance(x.dtype))


@pytest.mark.parametrize("key", GRAD_KEYS)
def test_input_gradient_matches_torch(key):
    fn, x, args, kw = call_for(key.removeprefix("grad/"))
    grad = jax.jit(jax.grad(lambda x: fn(x, *args, **kw)))(x)
    np.testing.assert_allclose(grad, np.asarray(GOLDEN[key]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("key", TARGET_GRAD_KEYS)
def test_target_gradient_matches_torch(key):
    fn, x, (target,), kw = call_for(key.removeprefix("grad_target/"))
    grad = np.asarray(jax.jit(jax.grad(lambda t: fn(x, t, **kw)))(target))
    expected = np.asarray(GOLDEN[key])
    finite = np.isfinite(expected)
    np.testing.assert_allclose(grad[finite], expected[finite], rtol=1e-12, atol=1e-12)
    # Where a probability is exactly 0 or 1, torch's target gradient log(1-p) - log(p) ignores
    # its own clamp and is infinite; ours is the derivative of the clamped loss, +-100.
    np.testing.assert_array_equal(grad[~finite], 100.0 * np.sign(expected[~finite]))


# --- The background notes' kl_div misuse, to the printed digits. ------------------------------


def test_background_notes_kl_div_misuse_float32():
    q = jax.nn.softmax(jnp.asarray([0.5, 0.5], jnp.float32))
    p = jax.nn.softmax(jnp.asarray([0.2, 0.8], jnp.float32))
    # Bit-for-bit torch's float32 results, which print as -1.1500941... and -0.5750471.
    misuse_sum = F.kl_div(q, p, reduction="sum")
    misuse_mean = F.kl_div(q, p, reduction="mean")
    assert float(misuse_sum) == GOLDEN["kl_div/notes_misuse_float32/sum"]
    assert float(misuse_mean) == GOLDEN["kl_div/notes_misuse_float32/mean"]
    assert abs(float(misuse_sum) - -1.1500941) < 1e-7
    assert abs(float(misuse_mean) - -0.5750471) < 1e-7
    # Used correctly (log-probabilities in), it is KL(softmax(y) || softmax(x)) >= 0.
    assert round(float(F.kl_div(jnp.log(q), p, reduction="sum")), 6) == 0.043053


# --- Behaviour beyond the goldens. -------------------------------------------------------------


def test_all_ignored_gives_zero_loss_and_zero_gradient_and_a_nan_mean():
    # docs/concepts.md: bad input, row 9 (the torch layer keeps torch's 0 / 0 = NaN mean)
    x = arr("logits")
    for fn in (F.cross_entropy, F.nll_loss):
        for reduction in ("none", "sum"):

            def loss(x, fn=fn, reduction=reduction):
                return jnp.sum(fn(x, labels("all_ignored"), arr("weight"), reduction=reduction))

            value, grad = jax.jit(jax.value_and_grad(loss))(x)
            assert float(value) == 0.0
            np.testing.assert_array_equal(grad, 0.0)
        assert np.isnan(fn(x, labels("all_ignored"), arr("weight")))


def test_cross_entropy_equals_nll_of_log_softmax_in_nd_layout():
    x, y = arr("logits_nd"), labels("labels_nd")
    kw = {"weight": arr("weight_nd")}
    expected = F.nll_loss(jax.nn.log_softmax(x, axis=1), y, **kw)
    np.testing.assert_allclose(F.cross_entropy(x, y, **kw), expected, rtol=1e-12)


def test_unbatched_nll_loss_matches_unbatched_cross_entropy():
    x = arr("logits_1d")
    y = jnp.int32(INPUTS["label_1d"])
    out = F.nll_loss(jax.nn.log_softmax(x), y, reduction="none")
    assert out.shape == ()
    np.testing.assert_allclose(out, GOLDEN["cross_entropy/unbatched_index/none"], rtol=1e-12)


def test_out_of_range_index_poisons_its_example():
    x = arr("logits")
    bad = jnp.asarray([2, 7, 4, -3], jnp.int32)
    for fn in (F.cross_entropy, F.nll_loss):
        per_example = fn(x, bad, reduction="none")
        assert np.isfinite(per_example[0]) and np.isfinite(per_example[2])
        assert np.isnan(per_example[1]) and np.isnan(per_example[3])
        assert np.isnan(fn(x, bad))


def test_binary_cross_entropy_outside_unit_interval_is_nan():
    out = F.binary_cross_entropy(jnp.asarray([-0.1, 0.5, 1.2]), jnp.ones(3), reduction="none")
    assert np.isnan(out[0]) and np.isfinite(out[1]) and np.isnan(out[2])


def test_kl_div_log_target_with_minus_inf_target_is_zero():
    log_p = jnp.asarray([0.0, -jnp.inf])
    log_q = jnp.log(jnp.asarray([0.5, 0.5]))
    value, grad = jax.value_and_grad(lambda x: F.kl_div(x, log_p, "sum", log_target=True))(log_q)
    np.testing.assert_allclose(value, np.log(2.0), rtol=1e-12)
    np.testing.assert_array_equal(grad, [-1.0, 0.0])


def test_kl_div_zero_target_has_finite_target_gradient_where_positive():
    grad = jax.grad(lambda t: F.kl_div(arr("kl_input"), t, "sum"))(arr("kl_target"))
    positive = arr("kl_target") > 0
    assert np.all(np.isfinite(np.asarray(grad)[np.asarray(positive)]))


def test_kl_div_broadcasts_like_torch():
    log_q = jnp.log(jnp.asarray([[0.5, 0.5], [0.25, 0.75]]))
    p = jnp.asarray([0.2, 0.8])
    out = F.kl_div(log_q, p, reduction="none")
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out[1], p * (np.log(p) - log_q[1]), rtol=1e-12)


def test_half_precision_inputs_give_float32():
    x = jnp.asarray(INPUTS["logits"], jnp.bfloat16)
    out = F.cross_entropy(x, labels("labels"), arr("weight", jnp.float32))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, GOLDEN["cross_entropy/weight/mean"], rtol=2e-2)
    probs = F.cross_entropy(x, jnp.asarray(INPUTS["probs"], jnp.bfloat16))
    assert probs.dtype == jnp.float32
    bce = F.binary_cross_entropy(
        jnp.asarray(INPUTS["bce_probs"], jnp.float16),
        jnp.asarray(INPUTS["bce_probs_targets"], jnp.float16),
    )
    assert bce.dtype == jnp.float32
    np.testing.assert_allclose(bce, GOLDEN["bce/plain/mean"], rtol=1e-2)
    assert F.nll_loss(x, labels("labels")).dtype == jnp.float32
    assert F.kl_div(x, x).dtype == jnp.float32


@pytest.mark.slow
def test_vmap_over_a_leading_axis_matches_a_loop():
    xs = jnp.stack([arr("logits"), 2.0 * arr("logits")])
    y = labels("labels_ignored")
    batched = jax.vmap(lambda x: F.cross_entropy(x, y, arr("weight"), label_smoothing=0.1))(xs)
    looped = [F.cross_entropy(x, y, arr("weight"), label_smoothing=0.1) for x in xs]
    np.testing.assert_allclose(batched, looped, rtol=1e-12)


# --- Bad input. --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn", [F.cross_entropy, F.nll_loss, F.binary_cross_entropy, F.binary_cross_entropy_with_logits]
)
def test_unknown_reduction_lists_the_valid_ones(fn):
    x = arr("bce_probs")
    target = labels("labels")[:3] if fn in (F.cross_entropy, F.nll_loss) else x
    with pytest.raises(ValueError, match="reduction.*'none', 'mean', 'sum'"):
        fn(x, target, reduction="batchmean")


def test_kl_div_unknown_reduction_lists_batchmean():
    with pytest.raises(ValueError, match="reduction.*'batchmean'"):
        F.kl_div(arr("kl_input"), arr("kl_target"), reduction="average")


@pytest.mark.parametrize("fn", [F.cross_entropy, F.nll_loss])
def test_scalar_input_is_a_rank_error(fn):
    with pytest.raises(ValueError, match="`input`"):
        fn(jnp.float32(1.0), jnp.int32(0))


@pytest.mark.parametrize("fn", [F.cross_entropy, F.nll_loss])
def test_index_target_of_wrong_rank_is_an_error(fn):
    with pytest.raises(ValueError, match=r"`target`.*\[2, 4\]"):
        fn(arr("logits_nd"), labels("labels"))
    with pytest.raises(ValueError, match="`target`"):
        fn(arr("logits"), labels("labels")[:, None])


def test_probability_target_of_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="`input`.*`target`"):
        F.cross_entropy(arr("logits"), arr("probs")[:, :3])


def test_weight_of_wrong_length_names_both_lengths():
    for fn in (F.cross_entropy, F.nll_loss):
        with pytest.raises(ValueError, match="`weight`.*length 5.*length 3"):
            fn(arr("logits"), labels("labels"), jnp.ones(3))


def test_target_of_wrong_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="`target`"):
        F.cross_entropy(arr("logits"), jnp.ones(4, bool))
    with pytest.raises(TypeError, match="`target`"):
        F.nll_loss(arr("logits"), arr("probs"))
    with pytest.raises(TypeError, match="`input`"):
        F.cross_entropy(jnp.ones((4, 5), jnp.int32), labels("labels"))


def test_label_smoothing_outside_unit_interval_is_an_error():
    for eps in (-0.1, 1.5):  # 1.0 is valid, as in torch
        with pytest.raises(ValueError, match="label_smoothing"):
            F.cross_entropy(arr("logits"), labels("labels"), label_smoothing=eps)
        with pytest.raises(ValueError, match="label_smoothing"):
            F.cross_entropy(arr("logits"), arr("probs"), label_smoothing=eps)


def test_binary_losses_need_same_shapes():
    for fn in (F.binary_cross_entropy, F.binary_cross_entropy_with_logits):
        with pytest.raises(ValueError, match="`input`.*`target`"):
            fn(arr("bce_probs"), arr("bce_probs")[:2])
    with pytest.raises(ValueError, match="`weight`"):
        F.binary_cross_entropy(arr("bce_probs"), arr("bce_probs"), jnp.ones(3))
    with pytest.raises(ValueError, match="`pos_weight`"):
        F.binary_cross_entropy_with_logits(
            arr("bce_logits"), arr("bce_targets"), pos_weight=jnp.ones(3)
        )


def test_kl_div_shapes_must_broadcast():
    with pytest.raises(ValueError, match="`input`.*`target`.*broadcastable"):
        F.kl_div(arr("kl_input"), jnp.ones((3, 4)))


# --- infoloss_jax.checked catches the value-level mistakes. ------------------------------------


def test_checked_kl_div_catches_probabilities_passed_as_log_probabilities():
    import infoloss_jax as il

    q = jax.nn.softmax(jnp.asarray([0.5, 0.5]))
    p = jax.nn.softmax(jnp.asarray([0.2, 0.8]))
    with pytest.raises(ValueError, match="looks like probabilities, not log-probabilities"):
        il.checked(F.kl_div)(q, p, reduction="sum")
    value = il.checked(F.kl_div)(jnp.log(q), p, reduction="sum")
    np.testing.assert_allclose(value, GOLDEN["kl_div/notes_correct_float64/sum"], rtol=1e-12)
    with pytest.raises(ValueError, match="log_target=True"):
        il.checked(F.kl_div)(jnp.log(q), jnp.log(p), reduction="sum")


def test_checked_catches_bad_values_in_the_other_torch_losses():
    import infoloss_jax as il

    x = arr("logits")
    with pytest.raises(ValueError, match=r"\[0, 5\).*7"):
        il.checked(F.cross_entropy)(x, jnp.asarray([0, 7, -100, 1]))
    np.testing.assert_allclose(
        il.checked(F.cross_entropy)(x, labels("labels_ignored")),
        GOLDEN["cross_entropy/ignore/mean"],
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="`target` must sum to 1"):
        il.checked(F.cross_entropy)(x, 2.0 * arr("probs"))
    with pytest.raises(ValueError, match="looks like probabilities"):
        il.checked(F.nll_loss)(jax.nn.softmax(x, axis=1), labels("labels"))
    with pytest.raises(ValueError, match="binary_cross_entropy_with_logits"):
        il.checked(F.binary_cross_entropy)(arr("bce_logits"), arr("bce_targets"))
    with pytest.raises(ValueError, match="`target`.*\\[0, 1\\]"):
        il.checked(F.binary_cross_entropy_with_logits)(arr("bce_logits"), 2 * arr("bce_targets"))
