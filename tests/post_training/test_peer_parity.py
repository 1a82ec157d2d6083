"""The calls in docs/migration.md that reproduce TRL's, verl's and Liger-Kernel's numbers.

Each peer formula is ported here in plain jnp, line for line from the peer's source (TRL
``GRPOTrainer._compute_loss`` and ``_generate_and_score_completions``, ``DPOTrainer`` loss types,
the experimental ``ORPOTrainer``; verl ``compute_grpo_outcome_advantage``; Liger-Kernel's
``chunked_loss`` GRPO, DPO and ORPO), and shares no code with infoloss_jax. Where a convention
differs, the test shows both: our default, and the documented call that gives the peer's number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infoloss_jax import policy, preference

F64 = jnp.float64
_rng = np.random.default_rng(20)

# A GRPO batch with a fully masked row (row 2): B = 4 rows, L = 6 tokens.
B, L = 4, 6
LP = jnp.asarray(np.log(_rng.uniform(0.05, 0.95, (B, L))), F64)
OLD = jnp.asarray(np.log(_rng.uniform(0.05, 0.95, (B, L))), F64)
ADV = jnp.asarray(_rng.normal(size=B), F64)
LENGTHS = np.array([6, 3, 0, 4])
MASK = jnp.asarray(np.arange(L)[None, :] < LENGTHS[:, None])
EPS_LOW, EPS_HIGH = 0.2, 0.28


def _trl_per_token_loss(lp):
    """TRL's per-token GRPO loss (no KL, no entropy): -min(r A, clip(r) A)."""
    ratio = jnp.exp(lp - OLD)
    clipped = jnp.clip(ratio, 1 - EPS_LOW, 1 + EPS_HIGH)
    return -jnp.minimum(ratio * ADV[:, None], clipped * ADV[:, None])


def _trl_dr_grpo(lp):
    """TRL ``loss_type="dr_grpo"`` (and Liger's): every row counts, fully masked or not."""
    return jnp.sum(_trl_per_token_loss(lp) * MASK) / (B * L)


def _trl_grpo(lp):
    """TRL ``loss_type="grpo"``: per-row token means, a masked row as 0, mean over all rows."""
    rows = jnp.sum(_trl_per_token_loss(lp) * MASK, -1) / jnp.maximum(jnp.sum(MASK, -1), 1)
    return jnp.mean(rows)


@pytest.mark.parametrize(
    ("peer", "ours"),
    [
        (_trl_dr_grpo, dict(normalization="token_sum_norm", max_tokens=L)),
        (_trl_grpo, dict(normalization="sequence_mean")),
    ],
    ids=["dr_grpo", "grpo"],
)
def test_fully_masked_rows_count_with_num_sequences(peer, ours):
    def loss(lp, **extra):
        return policy.clipped_surrogate(
            lp, OLD, ADV, mask=MASK, clip_low=EPS_LOW, clip_high=EPS_HIGH, **ours, **extra
        )[0]

    peer_value, peer_grad = jax.jit(jax.value_and_grad(peer))(LP)
    value, grad = jax.jit(jax.value_and_grad(lambda x: loss(x, num_sequences=B)))(LP)
    np.testing.assert_allclose(value, peer_value, rtol=1e-12)
    np.testing.assert_allclose(grad, peer_grad, rtol=1e-12, atol=1e-15)
    # By default only the 3 rows with a token count: the loss is B / 3 times the peer's.
    default = jax.jit(loss)(LP)
    np.testing.assert_allclose(default, peer_value * B / 3, rtol=1e-12)


# --------------------------------------------------------------------------- advantages
REWARDS = jnp.asarray(_rng.normal(size=(3, 4)), F64).at[1].set(0.5)  # group 1: equal rewards


def _torch_std(x):
    """``torch.std`` (unbiased) along the last axis."""
    return jnp.sqrt(jnp.sum((x - x.mean(-1, keepdims=True)) ** 2, -1, keepdims=True) / (4 - 1))


def test_grpo_advantage_eps_of_trl_and_verl():
    centred = REWARDS - REWARDS.mean(-1, keepdims=True)
    trl = centred / (_torch_std(REWARDS) + 1e-4)  # TRL: std + 1e-4
    verl = centred / (_torch_std(REWARDS) + 1e-6)  # verl: epsilon=1e-6
    np.testing.assert_allclose(policy.group_advantages(REWARDS, 4, eps=1e-4), trl, rtol=1e-12)
    np.testing.assert_allclose(policy.group_advantages(REWARDS, 4), verl, rtol=1e-12)
    # The group of equal rewards is exactly 0 in all three.
    np.testing.assert_array_equal(policy.group_advantages(REWARDS, 4)[1], np.zeros(4))


def test_singleton_groups_of_verl_are_the_raw_reward():
    rewards = jnp.array([0.7, -1.2, 3.0], F64)
    # verl: a group of one gets mean 0 and std 1.
    verl_std = (rewards - 0.0) / (1.0 + 1e-6)
    verl_no_std = rewards - 0.0
    # Ours (and TRL's): nothing to compare with, so 0; ddof=1 refuses a group of one.
    np.testing.assert_array_equal(policy.group_advantages(rewards, 1, ddof=0), np.zeros(3))
    np.testing.assert_array_equal(
        policy.group_advantages(rewards, 1, normalize_std=False), np.zeros(3)
    )
    with pytest.raises(ValueError, match="raw reward"):
        policy.group_advantages(rewards, 1)
    # The documented way to get verl's number: the rewards themselves.
    np.testing.assert_allclose(rewards / (1 + 1e-6), verl_std, rtol=1e-15)
    np.testing.assert_array_equal(rewards, verl_no_std)


# --------------------------------------------------------------------------- DPO
C = jnp.asarray(_rng.normal(-20, 3, 5), F64)
R = jnp.asarray(_rng.normal(-22, 3, 5), F64)
RC = jnp.asarray(_rng.normal(-20, 3, 5), F64)
RR = jnp.asarray(_rng.normal(-22, 3, 5), F64)


def _logsigmoid(x):
    return -jnp.logaddexp(0.0, -x)


def _trl_robust(c, r, beta, eps):
    """TRL and Liger-Kernel ``loss_type="robust"``: the flipped term enters with a minus."""
    delta = (c - RC) - (r - RR)
    clean = -(1 - eps) * _logsigmoid(beta * delta)
    flipped = -eps * _logsigmoid(-beta * delta)
    return jnp.mean((clean - flipped) / (1 - 2 * eps))


def _trl_cdpo(c, r, beta, eps):
    """The conservative DPO of TRL's ``"sigmoid"`` loss before 2026: both terms with a plus."""
    delta = (c - RC) - (r - RR)
    return jnp.mean(-(1 - eps) * _logsigmoid(beta * delta) - eps * _logsigmoid(-beta * delta))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_robust_dpo_matches_trl_and_liger(eps):
    def ours(c, r):
        return preference.dpo(c, r, RC, RR, beta=0.2, label_smoothing=eps, robust=True)[0]

    value, grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(C, R)
    peer = jax.jit(jax.value_and_grad(_trl_robust, argnums=(0, 1)), static_argnums=(2, 3))
    peer_value, peer_grads = peer(C, R, 0.2, eps)
    np.testing.assert_allclose(value, peer_value, rtol=1e-12)
    for g, p in zip(grads, peer_grads, strict=True):
        np.testing.assert_allclose(g, p, rtol=1e-11)
    # The default (robust=False) is cDPO, a different loss whenever eps > 0.
    cdpo, _ = preference.dpo(C, R, RC, RR, beta=0.2, label_smoothing=eps)
    np.testing.assert_allclose(cdpo, _trl_cdpo(C, R, 0.2, eps), rtol=1e-12)
    if eps > 0:
        assert abs(float(cdpo) - float(peer_value)) > 1e-3


# --------------------------------------------------------------------------- IPO
def test_ipo_empty_completion_and_trl_length_clamp():
    lc = jnp.array([5, 0, 7, 3, 0])
    lr = jnp.array([4, 6, 0, 2, 9])

    def trl(c, r, rc, rr):
        avg = lambda s, n: s / jnp.maximum(n, 1)  # noqa: E731  TRL clamps the length at 1
        delta = (avg(c, lc) - avg(rc, lc)) - (avg(r, lr) - avg(rr, lr))
        return jnp.mean((delta - 1 / (2 * 0.5)) ** 2)

    # Consistent inputs: an empty response's sum is 0, and both conventions give 0 for it.
    empty = lambda x, n: jnp.where(n > 0, x, 0.0)  # noqa: E731
    c, rc, r, rr = empty(C, lc), empty(RC, lc), empty(R, lr), empty(RR, lr)
    ours, _ = preference.ipo(c, r, rc, rr, beta=0.5, chosen_lengths=lc, rejected_lengths=lr)
    np.testing.assert_allclose(ours, trl(c, r, rc, rr), rtol=1e-12)
    # Any inputs: clamp the lengths as TRL does to get its number.
    ours_clamped, _ = preference.ipo(
        C,
        R,
        RC,
        RR,
        beta=0.5,
        chosen_lengths=jnp.maximum(lc, 1),
        rejected_lengths=jnp.maximum(lr, 1),
    )
    np.testing.assert_allclose(ours_clamped, trl(C, R, RC, RR), rtol=1e-12)


# --------------------------------------------------------------------------- ORPO
# Chosen and rejected sequences of T tokens: the first P are the prompt, then the response.
T, P = 9, 3
TOKEN_LP = jnp.asarray(np.log(_rng.uniform(0.3, 0.99, (2, 4, T))), F64)  # [chosen/rejected, B, T]
RESPONSE_LENGTHS = np.array([[6, 4, 5, 2], [3, 6, 1, 5]])
POSITION = np.arange(T)
RESPONSE = jnp.asarray((POSITION >= P) & (POSITION < P + RESPONSE_LENGTHS[..., None]))  # [2, B, T]
PROMPT_AND_RESPONSE = jnp.asarray(POSITION < P + RESPONSE_LENGTHS[..., None])


def _odds_term(token_lp, beta):
    """-beta * mean(log sigma(log odds)) on response-averaged log-probs (TRL and Liger)."""
    avg = jnp.sum(token_lp * RESPONSE, -1) / jnp.sum(RESPONSE, -1)
    log1mexp = lambda x: jnp.log1p(-jnp.exp(x))  # noqa: E731
    log_odds = (avg[0] - avg[1]) - (log1mexp(avg[0]) - log1mexp(avg[1]))
    return -beta * jnp.mean(_logsigmoid(log_odds))


def _liger_orpo(token_lp, beta):
    """Liger: NLL over the chosen *response* tokens (its ``target`` has the prompt ignored)."""
    nll = -jnp.sum(token_lp[0] * RESPONSE[0]) / jnp.sum(RESPONSE[0])
    return nll + _odds_term(token_lp, beta)


def _trl_orpo(token_lp, beta):
    """TRL's ORPOTrainer: NLL over the chosen prompt *and* response tokens."""
    nll = -jnp.sum(token_lp[0] * PROMPT_AND_RESPONSE[0]) / jnp.sum(PROMPT_AND_RESPONSE[0])
    return nll + _odds_term(token_lp, beta)


def _orpo(token_lp, beta):
    sums, lengths = preference.sequence_log_probs(token_lp, mask=RESPONSE)
    loss, _ = preference.orpo(
        sums[0], sums[1], beta=beta, chosen_lengths=lengths[0], rejected_lengths=lengths[1]
    )
    return loss, sums[0], lengths[0]


def test_orpo_nll_is_liger_s_and_the_recipe_gives_trl_s():
    value, grad = jax.jit(jax.value_and_grad(lambda x: _orpo(x, 0.1)[0]))(TOKEN_LP)
    peer_value, peer_grad = jax.jit(jax.value_and_grad(lambda x: _liger_orpo(x, 0.1)))(TOKEN_LP)
    np.testing.assert_allclose(value, peer_value, rtol=1e-12)
    np.testing.assert_allclose(grad, peer_grad, rtol=1e-11, atol=1e-16)

    def trl_recipe(token_lp):
        loss, sums, lengths = _orpo(token_lp, 0.1)
        full_sums, full_lengths = preference.sequence_log_probs(
            token_lp[0], mask=PROMPT_AND_RESPONSE[0]
        )
        nll = lambda s, n: -s.sum() / n.sum()  # noqa: E731
        return loss - nll(sums, lengths) + nll(full_sums, full_lengths)

    value, grad = jax.jit(jax.value_and_grad(trl_recipe))(TOKEN_LP)
    peer_value, peer_grad = jax.jit(jax.value_and_grad(lambda x: _trl_orpo(x, 0.1)))(TOKEN_LP)
    np.testing.assert_allclose(value, peer_value, rtol=1e-12)
    np.testing.assert_allclose(grad, peer_grad, rtol=1e-11, atol=1e-16)
