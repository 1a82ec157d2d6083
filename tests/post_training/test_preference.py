"""infoloss_jax.preference against PyTorch goldens of TRL's formulas (DPO, cDPO, IPO, hinge,
SimPO, CPO, ORPO, KTO), plain references, packed-sequence sums and accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden import make_post_training_golden as CASES
from golden import post_training_golden
from jax.test_util import check_grads

from infoloss_jax import preference

GOLDEN = post_training_golden.GOLDEN
IN = CASES.INPUTS
F64 = jnp.float64
C = jnp.array(IN["chosen"], F64)
R = jnp.array(IN["rejected"], F64)
RC = jnp.array(IN["ref_chosen"], F64)
RR = jnp.array(IN["ref_rejected"], F64)
LC = jnp.array(IN["chosen_lengths"])
LR = jnp.array(IN["rejected_lengths"])

PAIRED = {
    "dpo": lambda c, r, **kw: preference.dpo(c, r, RC, RR, beta=CASES.DPO_BETA, **kw),
    "cdpo": lambda c, r, **kw: preference.dpo(
        c, r, RC, RR, beta=CASES.DPO_BETA, label_smoothing=CASES.CDPO_SMOOTHING, **kw
    ),
    "ipo": lambda c, r, **kw: preference.ipo(c, r, RC, RR, beta=CASES.IPO_BETA, **kw),
    "hinge": lambda c, r, **kw: preference.hinge(c, r, RC, RR, beta=CASES.DPO_BETA, **kw),
    "simpo": lambda c, r, **kw: preference.simpo(
        c,
        r,
        beta=CASES.SIMPO_BETA,
        gamma=CASES.SIMPO_GAMMA,
        chosen_lengths=LC,
        rejected_lengths=LR,
        **kw,
    ),
    "cpo": lambda c, r, **kw: preference.cpo(
        c, r, beta=CASES.CPO_BETA, alpha=CASES.CPO_ALPHA, chosen_lengths=LC, **kw
    ),
    "orpo": lambda c, r, **kw: preference.orpo(
        c, r, beta=CASES.ORPO_BETA, chosen_lengths=LC, rejected_lengths=LR, **kw
    ),
}


@pytest.mark.parametrize("name", list(PAIRED))
def test_loss_and_gradients_match_torch(name):
    fn = PAIRED[name]
    (loss, aux), (gc, gr) = jax.value_and_grad(lambda c, r: fn(c, r), argnums=(0, 1), has_aux=True)(
        C, R
    )
    np.testing.assert_allclose(loss, GOLDEN[f"{name}/loss"], rtol=1e-12)
    np.testing.assert_allclose(gc, GOLDEN[f"grad/{name}/chosen"], rtol=1e-11, atol=1e-16)
    np.testing.assert_allclose(gr, GOLDEN[f"grad/{name}/rejected"], rtol=1e-11, atol=1e-16)
    if f"{name}/losses" in GOLDEN:
        np.testing.assert_allclose(aux.losses, GOLDEN[f"{name}/losses"], rtol=1e-12)


def test_reward_metrics():
    _, aux = PAIRED["dpo"](C, R)
    np.testing.assert_allclose(aux.chosen_rewards, GOLDEN["dpo/chosen_rewards"], rtol=1e-12)
    np.testing.assert_allclose(aux.rejected_rewards, GOLDEN["dpo/rejected_rewards"], rtol=1e-12)
    margins = np.asarray(GOLDEN["dpo/chosen_rewards"]) - np.asarray(GOLDEN["dpo/rejected_rewards"])
    np.testing.assert_allclose(aux.margins, margins, rtol=1e-12)
    np.testing.assert_array_equal(aux.accuracy, (margins > 0).astype(float))
    _, aux = PAIRED["simpo"](C, R)
    np.testing.assert_allclose(aux.chosen_rewards, GOLDEN["simpo/chosen_rewards"], rtol=1e-12)
    _, aux = PAIRED["orpo"](C, R)
    np.testing.assert_allclose(aux.log_odds_ratio, GOLDEN["orpo/log_odds"], rtol=1e-12)
    np.testing.assert_allclose(aux.nll, GOLDEN["orpo/nll"], rtol=1e-12)
    _, aux = PAIRED["cpo"](C, R)
    np.testing.assert_allclose(aux.nll, GOLDEN["cpo/nll"], rtol=1e-12)


def test_ipo_with_lengths_matches_trl_averaging():
    loss, _ = preference.ipo(
        C, R, RC, RR, beta=CASES.IPO_BETA, chosen_lengths=LC, rejected_lengths=LR
    )
    np.testing.assert_allclose(loss, GOLDEN["ipo_avg/loss"], rtol=1e-12)


def test_simpo_pre_averaged_inputs():
    a, _ = PAIRED["simpo"](C, R)
    b, _ = preference.simpo(C / LC, R / LR, beta=CASES.SIMPO_BETA, gamma=CASES.SIMPO_GAMMA)
    np.testing.assert_allclose(a, b, rtol=1e-13)


def test_kto_matches_torch():
    lp = jnp.array(IN["kto_log_probs"], F64)
    ref = jnp.array(IN["kto_ref_log_probs"], F64)
    desirable = jnp.array(IN["kto_desirable"])
    kl = jnp.mean(
        jnp.array(IN["kto_kl_log_probs"], F64) - jnp.array(IN["kto_kl_ref_log_probs"], F64)
    )

    def f(x):
        return preference.kto(x, ref, desirable, beta=CASES.KTO_BETA, kl=kl, **CASES.KTO_WEIGHTS)

    (loss, aux), g = jax.value_and_grad(f, has_aux=True)(lp)
    np.testing.assert_allclose(loss, GOLDEN["kto/loss"], rtol=1e-12)
    np.testing.assert_allclose(g, GOLDEN["grad/kto/log_probs"], rtol=1e-11)
    np.testing.assert_allclose(aux.kl, GOLDEN["kto/kl"], rtol=1e-12)
    np.testing.assert_allclose(aux.chosen_rewards, GOLDEN["kto/chosen_rewards_mean"], rtol=1e-12)
    np.testing.assert_allclose(
        aux.rejected_rewards, GOLDEN["kto/rejected_rewards_mean"], rtol=1e-12
    )
    # The reference point gets no gradient and is clipped at 0.
    gk = jax.grad(lambda k: preference.kto(lp, ref, desirable, beta=0.1, kl=k)[0])(kl)
    assert float(gk) == 0.0
    a, _ = preference.kto(lp, ref, desirable, beta=0.1, kl=-3.0)
    b, _ = preference.kto(lp, ref, desirable, beta=0.1)
    np.testing.assert_allclose(a, b)


# --- Plain references, numerics ---------------------------------------------------------------


def test_dpo_against_plain_formula_and_extreme_margins():
    c = jnp.array([0.0, 1e4, -1e4], F64)
    zeros = jnp.zeros(3, F64)
    loss, aux = preference.dpo(c, zeros, zeros, zeros, beta=1.0)
    expected = np.mean([np.log(2.0), 0.0, 1e4])
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    assert np.all(np.isfinite(aux.losses))
    g = jax.grad(lambda x: preference.dpo(x, zeros, zeros, zeros, beta=1.0)[0])(c)
    np.testing.assert_allclose(g, [-0.5 / 3, 0.0, -1 / 3], atol=1e-15)


def test_orpo_log1mexp_is_stable():
    # Average log-probs near 0 (confident model) and very negative; 0 itself stays finite.
    ac = jnp.array([-1e-9, -1e-3, -0.5, 0.0], F64)
    ar = jnp.array([-30.0, -2.0, -0.7, -1.0], F64)
    loss, aux = preference.orpo(ac, ar, beta=0.1)
    a, b = np.asarray(ac[:3]), np.asarray(ar[:3])
    expected = (a - b) - (np.log(-np.expm1(a)) - np.log1p(-np.exp(b)))
    np.testing.assert_allclose(aux.log_odds_ratio[:3], expected, rtol=1e-9)
    assert np.all(np.isfinite(aux.log_odds_ratio))
    g = jax.grad(lambda x: preference.orpo(x, ar, beta=0.1)[0])(ac)
    assert np.all(np.isfinite(g))
    bad, _ = preference.orpo(jnp.array([0.5]), jnp.array([-1.0]), beta=0.1)
    assert np.isnan(bad)


@pytest.mark.parametrize("name", list(PAIRED))
def test_check_grads_float64(name):
    fn = PAIRED[name]
    check_grads(lambda c, r: fn(c, r)[0], (C, R), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.parametrize("name", list(PAIRED))
def test_mask_excludes_pairs_even_with_nan(name):
    fn = PAIRED[name]
    mask = jnp.array([True, True, False, True])
    c = C.at[2].set(jnp.nan)
    (loss, aux), g = jax.value_and_grad(lambda x: fn(x, R, mask=mask), has_aux=True)(c)
    assert np.isfinite(loss) and np.all(np.isfinite(g)) and float(g[2]) == 0.0
    assert float(aux.losses[2]) == 0.0


@pytest.mark.parametrize("name", ["dpo", "ipo", "hinge", "simpo"])
def test_nan_poisons_only_its_pair(name):
    _, aux = PAIRED[name](C.at[1].set(jnp.nan), R)
    losses = np.asarray(aux.losses)
    assert np.isnan(losses[1]) and np.all(np.isfinite(np.delete(losses, 1)))


@pytest.mark.parametrize("name", list(PAIRED))
def test_micro_batch_sum_equals_full_batch(name):
    fn = PAIRED[name]
    full, g_full = jax.value_and_grad(lambda c: fn(c, R)[0])(C)
    extra = {}
    if name in ("cpo", "orpo"):
        extra = dict(num_tokens=int(np.sum(IN["chosen_lengths"])))
    total, grads = 0.0, []
    for part in (slice(0, 1), slice(1, 4)):
        # Rebuild the function on the micro-batch's slices of every per-pair input.
        def micro(c, part=part):
            if name in ("dpo", "cdpo", "ipo", "hinge"):
                beta = CASES.IPO_BETA if name == "ipo" else CASES.DPO_BETA
                ls = dict(label_smoothing=CASES.CDPO_SMOOTHING) if name == "cdpo" else {}
                f = getattr(preference, "dpo" if name == "cdpo" else name)
                return f(c, R[part], RC[part], RR[part], beta=beta, num_pairs=4, **ls)[0]
            if name == "simpo":
                return preference.simpo(
                    c,
                    R[part],
                    beta=CASES.SIMPO_BETA,
                    gamma=CASES.SIMPO_GAMMA,
                    chosen_lengths=LC[part],
                    rejected_lengths=LR[part],
                    num_pairs=4,
                )[0]
            if name == "cpo":
                return preference.cpo(
                    c,
                    R[part],
                    beta=CASES.CPO_BETA,
                    chosen_lengths=LC[part],
                    num_pairs=4,
                    **extra,
                )[0]
            return preference.orpo(
                c,
                R[part],
                beta=CASES.ORPO_BETA,
                chosen_lengths=LC[part],
                rejected_lengths=LR[part],
                num_pairs=4,
                **extra,
            )[0]

        v, g = jax.value_and_grad(micro)(C[part])
        total += v
        grads.append(g)
    np.testing.assert_allclose(total, full, rtol=1e-13)
    np.testing.assert_allclose(jnp.concatenate(grads), g_full, rtol=1e-12, atol=1e-17)


def test_jit_vmap_and_traced_beta():
    f = lambda c, beta: preference.dpo(c, R, RC, RR, beta=beta)[0]  # noqa: E731
    eager = f(C, 0.1)
    np.testing.assert_allclose(jax.jit(f)(C, 0.1), eager, rtol=1e-13)
    np.testing.assert_allclose(jax.vmap(f, in_axes=(None, 0))(C, jnp.array([0.1, 0.1])), eager)
    assert np.isnan(jax.jit(f)(C, -0.1))
    g = lambda c, beta: preference.kto(c, RC, C > -15, beta=beta)[0]  # noqa: E731
    np.testing.assert_allclose(jax.jit(g)(C, 0.2), g(C, 0.2), rtol=1e-13)


def test_half_precision_inputs_compute_in_float32():
    loss, aux = preference.dpo(*(x.astype(jnp.bfloat16) for x in (C, R, RC, RR)), beta=0.1)
    assert loss.dtype == jnp.float32 and aux.margins.dtype == jnp.float32


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ValueError, match="rejected_log_probs"):
        preference.dpo(C, R[:2], RC, RR, beta=0.1)
    with pytest.raises(TypeError, match="ref_chosen_log_probs"):
        preference.dpo(C, R, jnp.zeros(4, jnp.int32), RR, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        preference.dpo(C, R, RC, RR, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference.dpo(C, R, RC, RR, beta=0.1, label_smoothing=0.7)
    with pytest.raises(ValueError, match="lengths"):
        preference.simpo(C, R, beta=2.0, chosen_lengths=LC)
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference.orpo(C, R, beta=0.1, chosen_lengths=LC[:2], rejected_lengths=LR)
    with pytest.raises(TypeError, match="per-pair mask"):
        preference.cpo(C, R, beta=0.1, mask=jnp.ones(4))
    with pytest.raises(TypeError, match="desirable"):
        preference.kto(C, RC, jnp.ones(4), beta=0.1)
    with pytest.raises(ValueError, match="desirable"):
        preference.kto(C, RC, jnp.ones(3, bool), beta=0.1)
    with pytest.raises(ValueError, match="num_pairs"):
        preference.dpo(C, R, RC, RR, beta=0.1, num_pairs=0)


# --- sequence_log_probs -----------------------------------------------------------------------


def test_sequence_log_probs_with_mask_and_nan_padding():
    lp = jnp.array([[-1.0, -2.0, -0.5, jnp.nan], [-0.25, jnp.nan, jnp.nan, jnp.nan]], F64)
    mask = jnp.array([[True, True, True, False], [True, False, False, False]])
    sums, lengths = preference.sequence_log_probs(lp, mask=mask)
    np.testing.assert_allclose(sums, [-3.5, -0.25])
    np.testing.assert_allclose(lengths, [3, 1])
    g = jax.grad(lambda x: jnp.sum(preference.sequence_log_probs(x, mask=mask)[0]))(lp)
    np.testing.assert_array_equal(g, mask.astype(float))


def test_sequence_log_probs_packed_segments_against_plain_loop():
    rng = np.random.default_rng(0)
    lp = rng.normal(size=(3, 10))
    seg = np.array([[0, 0, 0, 1, 1, 2, 2, 2, 2, -1], [0, 1, 1, 1, 1, 1, -1, -1, -1, -1], [2] * 10])
    mask = rng.random((3, 10)) > 0.2
    sums, lengths = preference.sequence_log_probs(
        jnp.asarray(lp), mask=jnp.asarray(mask), segment_ids=jnp.asarray(seg), num_segments=3
    )
    exp_s, exp_n = np.zeros((3, 3)), np.zeros((3, 3))
    for b in range(3):
        for t in range(10):
            if seg[b, t] >= 0 and mask[b, t]:
                exp_s[b, seg[b, t]] += lp[b, t]
                exp_n[b, seg[b, t]] += 1
    np.testing.assert_allclose(sums, exp_s, rtol=1e-13)
    np.testing.assert_array_equal(lengths, exp_n)
    # A NaN in a counted token poisons only its own sequence; a bad id poisons its row.
    s2, _ = preference.sequence_log_probs(
        jnp.asarray(lp).at[0, 0].set(jnp.nan), segment_ids=jnp.asarray(seg), num_segments=3
    )
    s2 = np.asarray(s2)
    assert np.isnan(s2[0, 0]) and np.isfinite(s2[0, 1:]).all() and np.isfinite(s2[1:]).all()
    s3, _ = preference.sequence_log_probs(
        jnp.asarray(lp), segment_ids=jnp.asarray(seg), num_segments=2
    )
    s3 = np.asarray(s3)
    assert np.isnan(s3[0]).all() and np.isfinite(s3[1]).all() and np.isnan(s3[2]).all()


def test_sequence_log_probs_feeds_dpo_from_packed_rows():
    # Chosen and rejected of two pairs packed as segments 0 and 1 of two rows.
    tok = jnp.array([[-1.0, -2.0, -0.5, -0.5, -3.0], [-0.2, -0.3, -2.0, -2.5, -1.0]], F64)
    seg = jnp.array([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    sums, _ = preference.sequence_log_probs(tok, segment_ids=seg, num_segments=2)
    zeros = jnp.zeros(2, F64)
    loss, _ = preference.dpo(sums[:, 0], sums[:, 1], zeros, zeros, beta=0.5)
    c, r = np.array([-3.0, -2.5]), np.array([-4.0, -3.5])
    expected = np.mean(np.log1p(np.exp(-0.5 * (c - r))))
    np.testing.assert_allclose(loss, expected, rtol=1e-13)
    jax.jit(lambda x: preference.sequence_log_probs(x, segment_ids=seg, num_segments=2))(tok)


def test_sequence_log_probs_errors():
    with pytest.raises(TypeError, match="segment_ids"):
        preference.sequence_log_probs(C[None], segment_ids=jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match="segment_ids"):
        preference.sequence_log_probs(C[None], segment_ids=jnp.zeros((1, 3), jnp.int32))
    with pytest.raises(ValueError, match="num_segments"):
        preference.sequence_log_probs(C[None], num_segments=2)
    with pytest.raises(TypeError, match="mask"):
        preference.sequence_log_probs(C[None], mask=jnp.ones((1, 4)))


@pytest.mark.parametrize("name", ["simpo", "orpo", "cpo", "ipo"])
def test_excluded_pair_with_zero_length_has_finite_gradient(name):
    mask = jnp.array([True, False, True, True])
    lc, lr = LC.at[1].set(0), LR.at[1].set(0)
    c = C.at[1].set(jnp.nan)

    def f(x):
        if name == "simpo":
            return preference.simpo(
                x, R, beta=2.0, chosen_lengths=lc, rejected_lengths=lr, mask=mask
            )[0]
        if name == "orpo":
            return preference.orpo(
                x, R, beta=0.1, chosen_lengths=lc, rejected_lengths=lr, mask=mask
            )[0]
        if name == "cpo":
            return preference.cpo(x, R, beta=0.1, chosen_lengths=lc, mask=mask)[0]
        return preference.ipo(
            x, R, RC, RR, beta=0.5, chosen_lengths=lc, rejected_lengths=lr, mask=mask
        )[0]

    value, grad = jax.value_and_grad(f)(c)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and float(grad[1]) == 0.0
