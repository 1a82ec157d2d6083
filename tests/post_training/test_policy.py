"""infoloss_jax.policy: the clipped surrogate and group advantages against PyTorch goldens
(TRL's GRPO loss types, verl's dual clip), packed sequences and exact micro-batch accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden import make_post_training_golden as CASES
from golden import post_training_golden
from jax.test_util import check_grads

from infoloss_jax import policy

GOLDEN = post_training_golden.GOLDEN
IN = CASES.INPUTS
F64 = jnp.float64
LP = jnp.array(IN["log_probs"], F64)
OLD = jnp.array(IN["old_log_probs"], F64)
REF = jnp.array(IN["ref_log_probs"], F64)
MASK = jnp.array(IN["mask"]) > 0
ADV = jnp.array(IN["advantages"], F64)
TOKEN_ADV = jnp.array(IN["token_advantages"], F64)
ENTROPY = jnp.array(IN["entropy"], F64)
CLIP = dict(clip_low=CASES.GRPO_CLIP["clip_low"], clip_high=CASES.GRPO_CLIP["clip_high"])

# TRL's loss_type -> our normalization (and its extra argument).
NORMALIZATIONS = {
    "grpo": dict(normalization="sequence_mean"),
    "bnpo": dict(normalization="token_mean"),
    "dr_grpo": dict(normalization="token_sum_norm", max_tokens=CASES.GRPO_MAX_TOKENS),
}
CASE_KWARGS = {
    "plain": dict(advantages=ADV),
    "token_adv": dict(advantages=TOKEN_ADV),
    "kl": dict(advantages=ADV, ref_log_probs=REF, kl_coef=CASES.GRPO_BETA),
    "entropy": dict(advantages=ADV, entropy=ENTROPY, entropy_coef=CASES.GRPO_ENTROPY_COEF),
    "dual_clip": dict(advantages=TOKEN_ADV, dual_clip=CASES.DUAL_CLIP),
}


def _loss(lp, case, kind, **extra):
    kw = dict(CASE_KWARGS[case])
    advantages = kw.pop("advantages")
    return policy.clipped_surrogate(
        lp, OLD, advantages, mask=MASK, **CLIP, **kw, **NORMALIZATIONS[kind], **extra
    )


@pytest.mark.parametrize("kind", list(NORMALIZATIONS))
@pytest.mark.parametrize("case", list(CASE_KWARGS))
def test_loss_and_gradient_match_torch(case, kind):
    (loss, _), grad = jax.value_and_grad(lambda x: _loss(x, case, kind), has_aux=True)(LP)
    np.testing.assert_allclose(loss, GOLDEN[f"grpo/{case}/{kind}"], rtol=1e-12)
    np.testing.assert_allclose(grad, GOLDEN[f"grad/grpo/{case}/{kind}"], rtol=1e-12, atol=1e-15)


def test_clip_metrics_match_torch():
    _, aux = _loss(LP, "token_adv", "bnpo")
    np.testing.assert_allclose(aux.clip_fraction_low, GOLDEN["grpo/metrics/clip_low"])
    np.testing.assert_allclose(aux.clip_fraction_high, GOLDEN["grpo/metrics/clip_high"])
    np.testing.assert_allclose(aux.clip_fraction, GOLDEN["grpo/metrics/clip_region"])


def test_metrics_against_plain_numpy():
    _, aux = _loss(LP, "kl", "bnpo", entropy=ENTROPY)
    m = np.asarray(MASK)
    lr = (np.asarray(LP) - np.asarray(OLD))[m]
    ratio = np.exp(lr)
    np.testing.assert_allclose(aux.ratio_mean, ratio.mean(), rtol=1e-12)
    np.testing.assert_allclose(aux.ratio_min, ratio.min(), rtol=1e-12)
    np.testing.assert_allclose(aux.ratio_max, ratio.max(), rtol=1e-12)
    np.testing.assert_allclose(aux.approx_kl_k1, (-lr).mean(), rtol=1e-12)
    np.testing.assert_allclose(aux.approx_kl_k3, (ratio - 1 - lr).mean(), rtol=1e-12)
    d = (np.asarray(REF) - np.asarray(LP))[m]
    np.testing.assert_allclose(aux.kl_to_ref, (np.exp(d) - 1 - d).mean(), rtol=1e-12)
    np.testing.assert_allclose(aux.entropy, np.asarray(ENTROPY)[m].mean(), rtol=1e-12)
    assert float(aux.num_tokens) == m.sum() and float(aux.num_sequences) == 3
    assert aux.dual_clip_fraction is None


def test_dual_clip_fraction():
    _, aux = _loss(LP, "dual_clip", "bnpo")
    m = np.asarray(MASK)
    ratio = np.exp(np.asarray(LP) - np.asarray(OLD))
    hit = (np.asarray(TOKEN_ADV) < 0) & (ratio > CASES.DUAL_CLIP) & m
    np.testing.assert_allclose(aux.dual_clip_fraction, hit.sum() / m.sum())


# --- Packed sequences -------------------------------------------------------------------------


def _packed():
    """The three masked completions (5, 3 and 4 tokens) packed into two rows of 8."""
    lengths = np.asarray(MASK).sum(1)
    rows = [[(0, 0), (1, 1)], [(2, 0)]]  # (sequence, segment id)
    out = {k: np.zeros((2, 8)) for k in ("lp", "old", "ref", "adv", "ent")}
    seg = -np.ones((2, 8), np.int32)
    src = {
        "lp": LP,
        "old": OLD,
        "ref": REF,
        "adv": jnp.broadcast_to(ADV[:, None], LP.shape),
        "ent": ENTROPY,
    }
    for b, items in enumerate(rows):
        pos = 0
        for i, s in items:
            n = lengths[i]
            for k in out:
                out[k][b, pos : pos + n] = np.asarray(src[k])[i, :n]
            seg[b, pos : pos + n] = s
            pos += n
    out["lp"][1, 4:] = np.nan  # padding may hold anything
    return {k: jnp.asarray(v) for k, v in out.items()}, jnp.asarray(seg)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(NORMALIZATIONS))
def test_packed_rows_equal_unpacked(kind):
    packed, seg = _packed()
    kw = dict(**CLIP, **NORMALIZATIONS[kind], kl_coef=0.1, entropy_coef=0.01)
    full, aux_full = policy.clipped_surrogate(
        LP, OLD, ADV, mask=MASK, ref_log_probs=REF, entropy=ENTROPY, **kw
    )
    got, aux = policy.clipped_surrogate(
        packed["lp"],
        packed["old"],
        packed["adv"],
        ref_log_probs=packed["ref"],
        entropy=packed["ent"],
        segment_ids=seg,
        num_segments=2,
        **kw,
    )
    np.testing.assert_allclose(got, full, rtol=1e-13)
    assert float(aux.num_sequences) == 3 and float(aux.num_tokens) == 12
    np.testing.assert_allclose(aux.clip_fraction, aux_full.clip_fraction)
    g = jax.grad(
        lambda x: policy.clipped_surrogate(
            x,
            packed["old"],
            packed["adv"],
            segment_ids=seg,
            num_segments=2,
            **CLIP,
            **NORMALIZATIONS[kind],
        )[0]
    )(packed["lp"])
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[np.asarray(seg) < 0] == 0)
    g_full = jax.grad(
        lambda x: policy.clipped_surrogate(x, OLD, ADV, mask=MASK, **CLIP, **NORMALIZATIONS[kind])[
            0
        ]
    )(LP)
    np.testing.assert_allclose(np.asarray(g)[0, :5], np.asarray(g_full)[0, :5], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g)[0, 5:8], np.asarray(g_full)[1, :3], rtol=1e-12)


def test_out_of_range_segment_id_poisons():
    packed, seg = _packed()
    loss, _ = policy.clipped_surrogate(
        packed["lp"],
        packed["old"],
        packed["adv"],
        segment_ids=seg.at[0, 0].set(5),
        num_segments=2,
        normalization="sequence_mean",
    )
    assert np.isnan(loss)


# --- Exact micro-batch accumulation -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(NORMALIZATIONS))
def test_micro_batch_sum_equals_full_batch(kind):
    kw = dict(**CLIP, **NORMALIZATIONS[kind])
    full_fn = lambda x: policy.clipped_surrogate(x, OLD, ADV, mask=MASK, **kw)[0]  # noqa: E731
    full, g_full = jax.value_and_grad(full_fn)(LP)
    if kind == "bnpo":
        glob = dict(num_tokens=int(np.asarray(MASK).sum()))
    else:
        glob = dict(num_sequences=3)
    total, grads = 0.0, []
    for rows in (slice(0, 1), slice(1, 3)):
        fn = lambda x, rows=rows: policy.clipped_surrogate(  # noqa: E731
            x, OLD[rows], ADV[rows], mask=MASK[rows], **kw, **glob
        )[0]
        v, g = jax.value_and_grad(fn)(LP[rows])
        total += v
        grads.append(g)
    np.testing.assert_allclose(total, full, rtol=1e-13)
    np.testing.assert_allclose(jnp.concatenate(grads), g_full, rtol=1e-13, atol=1e-16)


def test_traced_global_counts_under_jit():
    n = int(np.asarray(MASK).sum())
    f = jax.jit(lambda x, n: policy.clipped_surrogate(x, OLD, ADV, mask=MASK, num_tokens=n)[0])
    np.testing.assert_allclose(
        f(LP, n), policy.clipped_surrogate(LP, OLD, ADV, mask=MASK)[0], rtol=1e-13
    )
    assert np.isnan(f(LP, 0.0))


# --- Numerics and transforms ------------------------------------------------------------------


def test_check_grads_float64():
    for kind in NORMALIZATIONS:
        f = lambda x, k=kind: _loss(x, "kl", k)[0]  # noqa: E731
        check_grads(f, (LP,), order=1, modes=["rev"], eps=1e-6)
    f = lambda x, e: policy.clipped_surrogate(  # noqa: E731
        x, OLD, ADV, mask=MASK, entropy=e, entropy_coef=0.1
    )[0]
    check_grads(f, (LP, ENTROPY), order=1, modes=["rev"], eps=1e-6)


def test_nan_padding_gives_finite_values_and_zero_gradients():
    lp = LP.at[1, 3:].set(jnp.nan)
    old = OLD.at[1, 3:].set(jnp.inf)
    for kind in NORMALIZATIONS:
        fn = lambda x, k=kind: policy.clipped_surrogate(  # noqa: E731
            x, old, ADV, mask=MASK, ref_log_probs=REF, kl_coef=0.1, **NORMALIZATIONS[k]
        )[0]
        v, g = jax.value_and_grad(fn)(lp)
        assert np.isfinite(v) and np.all(np.isfinite(g))
        assert np.all(np.asarray(g)[~np.asarray(MASK)] == 0)


def test_nan_in_a_counted_token_poisons_the_loss():
    loss, _ = policy.clipped_surrogate(LP.at[0, 0].set(jnp.nan), OLD, ADV, mask=MASK)
    assert np.isnan(loss)


def test_exploding_ratio_keeps_finite_gradient():
    lp = LP.at[0, 0].set(200.0)
    g = jax.grad(lambda x: policy.clipped_surrogate(x, OLD, -ADV, mask=MASK)[0])(lp)
    assert np.all(np.isfinite(g))


def test_empty_mask_gives_zero():
    loss, aux = policy.clipped_surrogate(LP, OLD, ADV, mask=jnp.zeros(LP.shape, bool))
    assert float(loss) == 0.0 and float(aux.num_tokens) == 0


@pytest.mark.slow
def test_jit_vmap_and_traced_coefficients():
    f = lambda x, beta: policy.clipped_surrogate(  # noqa: E731
        x, OLD, ADV, mask=MASK, ref_log_probs=REF, kl_coef=beta
    )[0]
    eager = f(LP, 0.04)
    np.testing.assert_allclose(jax.jit(f)(LP, 0.04), eager, rtol=1e-13)
    batched = jax.vmap(f, in_axes=(0, None))(jnp.stack([LP, LP]), 0.04)
    np.testing.assert_allclose(batched, [eager, eager], rtol=1e-13)
    assert np.isnan(jax.jit(f)(LP, -1.0))


def test_float32_and_bfloat16_inputs():
    loss, _ = policy.clipped_surrogate(
        LP.astype(jnp.bfloat16), OLD.astype(jnp.bfloat16), ADV.astype(jnp.bfloat16)
    )
    assert loss.dtype == jnp.float32
    loss32, _ = policy.clipped_surrogate(
        LP.astype(jnp.float32), OLD.astype(jnp.float32), ADV.astype(jnp.float32)
    )
    assert loss32.dtype == jnp.float32


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ValueError, match="normalization"):
        policy.clipped_surrogate(LP, OLD, ADV, normalization="grpo")
    with pytest.raises(ValueError, match="max_tokens"):
        policy.clipped_surrogate(LP, OLD, ADV, normalization="token_sum_norm")
    with pytest.raises(ValueError, match="old_log_probs"):
        policy.clipped_surrogate(LP, OLD[:, :2], ADV)
    with pytest.raises(ValueError, match="advantages"):
        policy.clipped_surrogate(LP, OLD, ADV[:2])
    with pytest.raises(ValueError, match="log_probs"):
        policy.clipped_surrogate(LP[0], OLD[0], ADV)
    with pytest.raises(TypeError, match="mask"):
        policy.clipped_surrogate(LP, OLD, ADV, mask=jnp.ones(LP.shape))
    with pytest.raises(TypeError, match="segment_ids"):
        policy.clipped_surrogate(LP, OLD, ADV, segment_ids=jnp.zeros(LP.shape))
    with pytest.raises(ValueError, match="clip_low"):
        policy.clipped_surrogate(LP, OLD, ADV, clip_low=1.5)
    with pytest.raises(ValueError, match="dual_clip"):
        policy.clipped_surrogate(LP, OLD, ADV, dual_clip=0.5)
    with pytest.raises(ValueError, match="kl_estimator"):
        policy.clipped_surrogate(LP, OLD, ADV, ref_log_probs=REF, kl_estimator="k5")
    with pytest.raises(ValueError, match="num_sequences"):
        policy.clipped_surrogate(LP, OLD, ADV, num_sequences=3)
    with pytest.raises(ValueError, match="num_tokens"):
        policy.clipped_surrogate(LP, OLD, ADV, num_tokens=0)


# --- Group advantages -------------------------------------------------------------------------


def test_group_advantages_match_torch():
    r = jnp.array(IN["rewards"], F64)
    got = policy.group_advantages(r, CASES.GROUP_SIZE, eps=CASES.GROUP_EPS)
    np.testing.assert_allclose(got, GOLDEN["grpo/advantages/std"], rtol=1e-12)
    got = policy.group_advantages(r, CASES.GROUP_SIZE, normalize_std=False)
    np.testing.assert_allclose(got, GOLDEN["grpo/advantages/no_std"], rtol=1e-12, atol=1e-15)
    got2d = policy.group_advantages(r.reshape(2, 4), 4, eps=CASES.GROUP_EPS)
    np.testing.assert_allclose(got2d.reshape(-1), GOLDEN["grpo/advantages/std"], rtol=1e-12)


def test_group_advantages_population_std_and_constant_groups():
    r = np.array([3.0, 1.0, 2.0, 5.0, 5.0, 5.0])
    got = policy.group_advantages(jnp.asarray(r), 3, ddof=0, eps=0.0)
    g = r.reshape(2, 3)
    expected = np.zeros_like(g)
    expected[0] = (g[0] - g[0].mean()) / g[0].std()
    np.testing.assert_allclose(got, expected.reshape(-1), rtol=1e-12)
    grad = jax.grad(lambda x: jnp.sum(policy.group_advantages(x, 3) ** 2))(jnp.asarray(r))
    assert np.all(np.isfinite(grad))


def test_group_advantages_nan_poisons_its_group_only():
    r = jnp.array([1.0, jnp.nan, 0.0, 1.0, 0.0, 0.5])
    got = np.asarray(policy.group_advantages(r, 3))
    assert np.all(np.isnan(got[:3])) and np.all(np.isfinite(got[3:]))


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="group_size"):
        policy.group_advantages(jnp.ones(7), 4)
    with pytest.raises(ValueError, match="group_size"):
        policy.group_advantages(jnp.ones((2, 3)), 4)
    with pytest.raises(TypeError, match="rewards"):
        policy.group_advantages(jnp.ones(4, jnp.int32), 2)
    with pytest.raises(ValueError, match="group_size"):
        policy.group_advantages(jnp.ones(4), 1)
