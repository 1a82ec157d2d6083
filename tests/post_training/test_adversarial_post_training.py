"""The post-training losses under bad and extreme input (issue 20's bugs, issue 21's messages).

Each test states the documented outcome it checks: exact zeros for equal rewards at any scale,
``+inf`` (never NaN) for an excluded token's KL estimate, a disabled penalty that adds nothing,
0 for a mean over nothing, NaN for negative counts, ValueError for a concrete bad coefficient
and NaN for a traced one, and shape errors that name the step that was probably skipped.
References are plain NumPy written here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import infoloss_jax as il
from infoloss_jax import policy, preference
from infoloss_jax import torch as F

F32, F64 = jnp.float32, jnp.float64
INF = float("inf")


# --------------------------------------------------------------------------- group advantages
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("value", [0.1, -7.3, 0.0, 1e20, -3e38, 1e-30, 2.0**-120])
@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_equal_rewards_give_exact_zeros(dtype, value, eps):
    rewards = jnp.full((2, 5), value, dtype)
    for normalize_std in (True, False):
        got = policy.group_advantages(rewards, 5, eps=eps, normalize_std=normalize_std)
        np.testing.assert_array_equal(got, np.zeros((2, 5)))
    flat = policy.group_advantages(jnp.full(6, value, dtype), 3, eps=eps, ddof=0)
    np.testing.assert_array_equal(flat, np.zeros(6))


@pytest.mark.parametrize(("scale", "eps"), [(1e20, 1e-6), (1e-30, 0.0), (1e30, 0.0), (1e38, 0.0)])
def test_reward_scale_does_not_collapse_advantages(scale, eps):
    base = np.array([1.0, -1.0, 1.0, 0.25])
    got = policy.group_advantages(jnp.asarray(base * scale, F32), 4, eps=eps)
    expected = (base - base.mean()) / base.std(ddof=1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    centred = policy.group_advantages(jnp.asarray(base * scale, F32), 4, normalize_std=False)
    np.testing.assert_allclose(centred, (base - base.mean()) * scale, rtol=1e-6)


def test_nearly_equal_large_rewards_are_centred_exactly():
    # 1e8 and 1e8 + 8 are adjacent float32 values: their centred rewards are exactly -4 and 4.
    got = policy.group_advantages(jnp.array([1e8, 1e8 + 8], F32), 2, normalize_std=False)
    np.testing.assert_array_equal(got, [-4.0, 4.0])


@settings(max_examples=60)
@given(
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=4, max_size=4),
    st.integers(-100, 100),
)
def test_advantages_are_scale_free_without_eps(rewards, k):
    r = jnp.asarray(rewards, F32)
    a = policy.group_advantages(r, 4, eps=0.0)
    scaled = policy.group_advantages(r * jnp.float32(2.0) ** k, 4, eps=0.0)
    # Scaling by a power of two is exact, so the advantages are bit for bit the same.
    np.testing.assert_array_equal(a, scaled)
    r64 = np.asarray(rewards, np.float64)
    std = r64.std(ddof=1)
    expected = np.zeros(4) if std == 0 else (r64 - r64.mean()) / std
    np.testing.assert_allclose(a, expected, rtol=2e-5, atol=2e-5)


def test_infinite_reward_poisons_its_group_only():
    got = np.asarray(policy.group_advantages(jnp.array([INF, 1.0, 0.0, 2.0], F32), 2))
    assert np.all(np.isnan(got[:2])) and np.all(np.isfinite(got[2:]))


# --------------------------------------------------------------------------- k3 and the penalty
def test_k3_of_an_excluded_policy_token_is_inf():
    # d = log r - log q = +inf: the policy gives the sampled token probability 0.
    lp, ref = jnp.array([-INF, -1.0]), jnp.array([-1.0, -INF])
    for estimator in ("k2", "k3"):
        value = il.kl_estimate(lp, ref, estimator=estimator)
        np.testing.assert_array_equal(value, [INF, INF])
        g_lp, g_ref = jax.jit(
            jax.grad(lambda a, b, e=estimator: il.kl_estimate(a, b, estimator=e).sum(), (0, 1))
        )(lp, ref)
        assert not np.any(np.isnan(g_lp)) and not np.any(np.isnan(g_ref))
        if estimator == "k3":
            np.testing.assert_array_equal(g_lp, [-INF, 1.0])  # the limits of -(e^d - 1)
    np.testing.assert_array_equal(il.kl_estimate(jnp.array([-jnp.inf]), jnp.array([-1.0])), [INF])


LP = jnp.log(jnp.array([[0.5, 0.6, 0.2], [0.3, 0.2, 0.9]]))
OLD = jnp.log(jnp.array([[0.4, 0.6, 0.2], [0.3, 0.4, 0.9]]))
REF = jnp.log(jnp.array([[0.5, 0.5, 0.3], [0.2, 0.2, 0.8]]))
ADV = jnp.array([1.0, -1.0])


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_excluded_policy_token_with_the_penalty_gives_inf_not_nan(estimator):
    lp = LP.at[0, 1].set(-jnp.inf)

    def loss(x):
        return policy.clipped_surrogate(
            x, OLD, ADV, ref_log_probs=REF, kl_coef=0.1, kl_estimator=estimator
        )[0]

    value, grad = jax.jit(jax.value_and_grad(loss))(lp)
    assert float(value) == INF
    assert not np.any(np.isnan(grad))
    free = policy.clipped_surrogate(lp, OLD, ADV)[0]  # without the penalty: finite
    assert np.isfinite(free)


@pytest.mark.parametrize("traced", [False, True])
def test_a_disabled_penalty_adds_nothing_against_minus_inf(traced):
    ref = REF.at[1, 2].set(-jnp.inf)

    def loss(x, coef):
        return policy.clipped_surrogate(x, OLD, ADV, ref_log_probs=ref, kl_coef=coef)

    if traced:
        (value, aux), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(LP, 0.0)
    else:  # a Python 0.0 stays concrete under the outer jit
        (value, aux), grad = jax.jit(jax.value_and_grad(lambda x: loss(x, 0.0), has_aux=True))(LP)
    plain, plain_grad = jax.jit(
        jax.value_and_grad(lambda x: policy.clipped_surrogate(x, OLD, ADV)[0])
    )(LP)
    np.testing.assert_allclose(value, plain, rtol=1e-12)
    np.testing.assert_allclose(grad, plain_grad, rtol=1e-12)
    assert float(aux.kl_to_ref) == INF  # the metric still reports the infinite estimate


# --------------------------------------------------------------------------- empty inputs
@pytest.mark.parametrize("shape", [(0, 6), (4, 0)])
@pytest.mark.parametrize("normalization", ["token_mean", "sequence_mean", "token_sum_norm"])
def test_clipped_surrogate_over_nothing_is_zero(shape, normalization):
    extra = {"max_tokens": 6} if normalization == "token_sum_norm" else {}
    x = jnp.zeros(shape)

    def loss(lp):
        return policy.clipped_surrogate(
            lp, x, jnp.ones(shape[:1]), ref_log_probs=x, kl_coef=0.1, entropy=x,
            entropy_coef=0.01, normalization=normalization, **extra,
        )  # fmt: skip

    (value, aux), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)
    assert float(value) == 0.0 and grad.shape == shape
    assert float(loss(x)[0]) == 0.0  # eager too
    assert float(aux.clip_fraction) == 0.0 and float(aux.num_tokens) == 0.0
    assert float(aux.ratio_min) == INF and float(aux.ratio_max) == -INF


@pytest.mark.parametrize("name", ["dpo", "ipo", "hinge", "simpo", "orpo", "cpo", "kto"])
def test_preference_losses_over_no_pairs_are_zero(name):
    empty = jnp.zeros(0)
    loss, _ = PAIRWISE[name](empty)
    assert float(loss) == 0.0


C = jnp.array([-5.0, -7.0, -4.0])
R = jnp.array([-6.0, -6.5, -9.0])
RC = jnp.array([-5.5, -7.0, -4.5])
RR = jnp.array([-5.5, -7.0, -8.0])
LC = jnp.array([5, 7, 4])
LR = jnp.array([6, 5, 9])


def test_ipo_with_an_empty_completion_averages_to_zero():
    lc = LC.at[1].set(0)
    c = C.at[1].set(0.0)  # an empty completion's sum
    rc = RC.at[1].set(0.0)

    def loss(x):
        return preference.ipo(x, R, rc, RR, beta=0.5, chosen_lengths=lc, rejected_lengths=LR)

    (value, aux), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(c)
    avg = lambda s, n: np.where(n > 0, s / np.maximum(n, 1), 0.0)  # noqa: E731
    h = (avg(c, lc) - avg(rc, lc)) - (avg(R, LR) - avg(RR, LR))
    np.testing.assert_allclose(value, np.mean((h - 1.0) ** 2), rtol=1e-12)
    assert np.all(np.isfinite(grad)) and float(grad[1]) == 0.0
    assert float(aux.chosen_rewards[1]) == 0.0


@pytest.mark.parametrize("name", ["simpo", "orpo", "ipo", "cpo"])
def test_negative_lengths_give_nan(name):
    lc = LC.at[0].set(-3)
    calls = {
        "simpo": lambda: preference.simpo(C, R, beta=2.0, chosen_lengths=lc, rejected_lengths=LR),
        "orpo": lambda: preference.orpo(C, R, beta=0.1, chosen_lengths=lc, rejected_lengths=LR),
        "ipo": lambda: preference.ipo(
            C, R, RC, RR, beta=0.5, chosen_lengths=lc, rejected_lengths=LR
        ),
        "cpo": lambda: preference.cpo(C, R, beta=0.1, chosen_lengths=lc),
    }
    loss, aux = calls[name]()
    assert np.isnan(loss)
    if name != "cpo":  # cpo's lengths only count the NLL's tokens
        assert np.isnan(aux.losses[0]) and np.all(np.isfinite(aux.losses[1:]))
    # An excluded pair's negative length is never read.
    mask = jnp.array([False, True, True])
    if name == "simpo":
        masked, _ = preference.simpo(
            C, R, beta=2.0, chosen_lengths=lc, rejected_lengths=LR, mask=mask
        )
        assert np.isfinite(masked)


# --------------------------------------------------------------------------- orpo near 0
def test_orpo_uses_every_normal_average_as_given():
    ac = jnp.array([-1e-10, -3e-8, -1e-30, 0.0], F32)
    ar = jnp.full(4, -1.0, F32)
    _, aux = preference.orpo(ac, ar, beta=0.1)
    a, b = np.asarray(ac, np.float64), -1.0
    # Exactly 0 moves to -tiny (the smallest normal magnitude); every other average stays.
    moved = np.where(a == 0.0, -float(jnp.finfo(F32).tiny), a)
    expected = (a - b) - (np.log(-np.expm1(moved)) - np.log1p(-np.exp(b)))
    np.testing.assert_allclose(aux.log_odds_ratio, expected, rtol=1e-6)
    grads = jax.jit(jax.grad(lambda x, y: preference.orpo(x, y, beta=0.1)[0], argnums=(0, 1)))
    assert all(np.all(np.isfinite(g)) for g in grads(ac, ar))
    assert all(np.all(np.isfinite(g)) for g in grads(ar, ac))


# --------------------------------------------------------------------------- coefficients
PAIRS = (C, R, RC, RR)
X = jnp.zeros((2, 3))
BAD_CONCRETE = {
    "clip_low=np.float32(1.5)": lambda v: policy.clipped_surrogate(X, X, ADV, clip_low=v),
    "clip_high=jnp(-0.1)": lambda v: policy.clipped_surrogate(X, X, ADV, clip_high=v),
    "kl_coef=jnp(-1)": lambda v: policy.clipped_surrogate(X, X, ADV, ref_log_probs=X, kl_coef=v),
    "entropy_coef=np.float64(-1)": lambda v: policy.clipped_surrogate(
        X, X, ADV, entropy=X, entropy_coef=v
    ),
    "num_tokens=jnp(0)": lambda v: policy.clipped_surrogate(X, X, ADV, num_tokens=v),
    "num_sequences=jnp(-2.)": lambda v: policy.clipped_surrogate(
        X, X, ADV, normalization="sequence_mean", num_sequences=v
    ),
    "max_tokens=jnp(0)": lambda v: policy.clipped_surrogate(
        X, X, ADV, normalization="token_sum_norm", max_tokens=v
    ),
    "eps=jnp(-1.)": lambda v: policy.group_advantages(jnp.ones(4), 2, eps=v),
    "dpo beta=jnp(0.)": lambda v: preference.dpo(*PAIRS, beta=v),
    "dpo label_smoothing=np.float32(0.7)": lambda v: preference.dpo(
        *PAIRS, beta=0.1, label_smoothing=v
    ),
    "robust dpo label_smoothing=jnp(0.5)": lambda v: preference.dpo(
        *PAIRS, beta=0.1, label_smoothing=v, robust=True
    ),
    "dpo num_pairs=jnp(0)": lambda v: preference.dpo(*PAIRS, beta=0.1, num_pairs=v),
    "ipo beta=jnp(-1.)": lambda v: preference.ipo(*PAIRS, beta=v),
    "hinge beta=np.float32(0.)": lambda v: preference.hinge(*PAIRS, beta=v),
    "simpo gamma=jnp(inf)": lambda v: preference.simpo(C, R, beta=2.0, gamma=v),
    "orpo beta=jnp(-1.)": lambda v: preference.orpo(C, R, beta=v),
    "orpo num_tokens=jnp(0)": lambda v: preference.orpo(C, R, beta=0.1, num_tokens=v),
    "cpo alpha=jnp(-1.)": lambda v: preference.cpo(C, R, beta=0.1, alpha=v),
    "kto desirable_weight=np.float32(-1)": lambda v: preference.kto(
        C, RC, C > -6, beta=0.1, desirable_weight=v
    ),
    "kto num_examples=jnp(0.)": lambda v: preference.kto(C, RC, C > -6, beta=0.1, num_examples=v),
}
BAD_VALUES = {
    "clip_low=np.float32(1.5)": np.float32(1.5),
    "clip_high=jnp(-0.1)": jnp.array(-0.1),
    "kl_coef=jnp(-1)": jnp.array(-1.0),
    "entropy_coef=np.float64(-1)": np.float64(-1.0),
    "num_tokens=jnp(0)": jnp.array(0),
    "num_sequences=jnp(-2.)": jnp.array(-2.0),
    "max_tokens=jnp(0)": jnp.array(0),
    "eps=jnp(-1.)": jnp.array(-1.0),
    "dpo beta=jnp(0.)": jnp.array(0.0),
    "dpo label_smoothing=np.float32(0.7)": np.float32(0.7),
    "robust dpo label_smoothing=jnp(0.5)": jnp.array(0.5),
    "dpo num_pairs=jnp(0)": jnp.array(0),
    "ipo beta=jnp(-1.)": jnp.array(-1.0),
    "hinge beta=np.float32(0.)": np.float32(0.0),
    "simpo gamma=jnp(inf)": jnp.array(jnp.inf),
    "orpo beta=jnp(-1.)": jnp.array(-1.0),
    "orpo num_tokens=jnp(0)": jnp.array(0),
    "cpo alpha=jnp(-1.)": jnp.array(-1.0),
    "kto desirable_weight=np.float32(-1)": np.float32(-1.0),
    "kto num_examples=jnp(0.)": jnp.array(0.0),
}


@pytest.mark.parametrize("case", list(BAD_CONCRETE))
def test_concrete_bad_coefficient_raises_and_traced_gives_nan(case):
    call, value = BAD_CONCRETE[case], BAD_VALUES[case]
    name = case.split("=")[0].split()[-1]
    with pytest.raises(ValueError, match=f"`{name}`"):
        call(value)
    result = jax.jit(call)(value)
    loss = result[0] if isinstance(result, tuple) else result
    assert np.all(np.isnan(loss))


def test_concrete_good_array_coefficients_match_python_floats():
    a, _ = preference.dpo(*PAIRS, beta=jnp.array(0.1), label_smoothing=np.float32(0.25))
    b, _ = preference.dpo(*PAIRS, beta=0.1, label_smoothing=0.25)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    a, _ = policy.clipped_surrogate(LP, OLD, ADV, clip_low=np.float32(0.2), num_tokens=jnp.array(6))
    b, _ = policy.clipped_surrogate(LP, OLD, ADV, clip_low=0.2, num_tokens=6)
    np.testing.assert_allclose(a, b, rtol=1e-6)


# --------------------------------------------------------------------------- torch layer
def test_torch_binary_cross_entropy_outside_the_unit_interval_is_nan_as_documented():
    out = F.binary_cross_entropy(
        jnp.array([0.3, 0.3, 1.2]), jnp.array([1.5, -0.5, 1.0]), reduction="none"
    )
    assert np.all(np.isnan(out))
    assert "outside [0, 1] gives NaN" in " ".join((F.__doc__ or "").split())


# --------------------------------------------------------------------------- shape messages
TOKENS = jnp.full((3, 7), -0.5)  # per-token log-probs, [pairs, T]
PAIRWISE = {
    "dpo": lambda x, **kw: preference.dpo(x, x, x, x, beta=0.1, **kw),
    "ipo": lambda x, **kw: preference.ipo(x, x, x, x, beta=0.1, **kw),
    "hinge": lambda x, **kw: preference.hinge(x, x, x, x, beta=0.1, **kw),
    "simpo": lambda x, **kw: preference.simpo(x, x, beta=2.0, **kw),
    "orpo": lambda x, **kw: preference.orpo(x, x, beta=0.1, **kw),
    "cpo": lambda x, **kw: preference.cpo(x, x, beta=0.1, **kw),
    "kto": lambda x, **kw: preference.kto(x, x, jnp.ones(x.shape, bool), beta=0.1, **kw),
}


@pytest.mark.parametrize("name", list(PAIRWISE))
def test_per_token_log_probs_name_sequence_log_probs(name):
    with pytest.raises(ValueError, match="sequence_log_probs") as error:
        PAIRWISE[name](TOKENS)
    assert "one log-probability per sequence" in str(error.value)
    assert "float64[3, 7]" in str(error.value) or "float32[3, 7]" in str(error.value)


@pytest.mark.parametrize("name", list(PAIRWISE))
def test_float_mask_is_named_a_per_pair_mask(name):
    what = "example" if name == "kto" else "pair"
    sums = jnp.array([-3.0, -4.0, -5.0])
    with pytest.raises(TypeError, match=f"boolean per-{what} mask") as error:
        PAIRWISE[name](sums, mask=jnp.ones(3))
    assert "mask > 0" in str(error.value) and "token counts" not in str(error.value)
    with pytest.raises(ValueError, match="not a token mask"):
        PAIRWISE[name](sums, mask=jnp.ones((3, 7), bool))


def test_policy_shape_messages_name_the_fix():
    logits_like = jnp.zeros((2, 3, 50))
    with pytest.raises(ValueError, match="il.log_probs"):
        policy.clipped_surrogate(logits_like, logits_like, ADV)
    sums = jnp.zeros(2)
    with pytest.raises(ValueError, match=r"per-token log-probs"):
        policy.clipped_surrogate(sums, sums, ADV)
    with pytest.raises(ValueError, match="token_level_rewards.sum"):
        policy.group_advantages(jnp.zeros((4, 9)), 4)
    with pytest.raises(ValueError, match="verl"):
        policy.group_advantages(jnp.zeros(4), 1)


def test_sequence_log_probs_then_dpo_is_the_fix():
    token_lp = jnp.full((3, 7), -0.5)
    sums, _ = preference.sequence_log_probs(token_lp)
    loss, _ = preference.dpo(sums, sums - 1.0, sums, sums, beta=0.1)
    np.testing.assert_allclose(loss, np.log1p(np.exp(-0.1)), rtol=1e-12)
