"""`checked`: value-level mistakes raise clear errors instead of giving a wrong number."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infoloss_jax as il
from infoloss_jax import policy, preference, sharded
from infoloss_jax import torch as F


def test_catches_the_background_notes_mistake():
    x, y = jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8])
    misuse = il.kl_divergence(jax.nn.softmax(x), jax.nn.softmax(y))
    assert float(misuse) < 0  # the plain call cannot know; the number is wrong
    with pytest.raises(ValueError, match="`log_predictions`.*looks like probabilities"):
        il.checked(il.kl_divergence)(jax.nn.softmax(x), jax.nn.softmax(y))
    correct = il.checked(il.kl_divergence)(jax.nn.log_softmax(x), jax.nn.softmax(y))
    assert float(correct) == pytest.approx(0.043053, abs=5e-7)


def test_label_out_of_range():
    logits = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 4\).*holds 7"):
        il.checked(il.softmax_cross_entropy_with_integer_labels)(logits, jnp.array([0, 7, 1]))
    ok = il.checked(il.softmax_cross_entropy_with_integer_labels)(
        logits, jnp.array([0, -100, 1]), ignore_index=-100
    )
    np.testing.assert_allclose(ok, [np.log(4), 0.0, np.log(4)], rtol=1e-6)


def test_negative_and_unnormalized_probabilities():
    log_q = jax.nn.log_softmax(jnp.zeros(3))
    with pytest.raises(ValueError, match="`targets`.*negative"):
        il.checked(il.kl_divergence)(log_q, jnp.array([1.2, -0.1, -0.1]))
    with pytest.raises(ValueError, match="`targets` must sum to 1"):
        il.checked(il.kl_divergence)(log_q, jnp.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="`labels` must sum to 1"):
        il.checked(il.softmax_cross_entropy)(jnp.zeros(3), jnp.array([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="`probs`.*negative"):
        il.checked(il.entropy_from_probs)(jnp.array([1.5, -0.5]))
    with pytest.raises(ValueError, match="`log_targets`.*looks like probabilities"):
        il.checked(il.kl_divergence_with_log_targets)(log_q, jnp.array([0.2, 0.3, 0.5]))


def test_logits_with_nan_or_pos_inf_are_reported():
    with pytest.raises(ValueError, match="`logits` contains NaN"):
        il.checked(il.entropy)(jnp.array([0.0, jnp.nan]))
    assert np.isfinite(il.checked(il.entropy)(jnp.array([0.0, -jnp.inf])))


def test_checked_passes_keywords_and_keeps_the_result():
    z, t = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[0.0, 0.0, 1.0]])
    np.testing.assert_allclose(
        il.checked(il.jensen_shannon)(z, t, beta=0.3), il.jensen_shannon(z, t, beta=0.3)
    )


def test_checked_refuses_unknown_functions_and_traced_calls():
    with pytest.raises(TypeError, match="no value checks for"):
        il.checked(jnp.sum)
    with pytest.raises(TypeError, match="traced values"):
        jax.jit(il.checked(il.entropy))(jnp.zeros(3))


# ----------------------------------------------------------------------------- every public loss
# Each case: (function, args, kwargs) with valid inputs. `checked` must pass them and return the
# plain result; a NaN placed in the first floating-point argument must raise ValueError naming it.
N, K, D = 4, 6, 3
_rng = np.random.default_rng(0)
Z = jnp.asarray(_rng.normal(size=(N, K)), jnp.float32)
T = jnp.asarray(_rng.normal(size=(N, K)), jnp.float32)
Y = jnp.asarray([0, 3, 5, 1])
LOG_Q, P = jax.nn.log_softmax(Z), jax.nn.softmax(T)
H = jnp.asarray(_rng.normal(size=(8, D)), jnp.float32)
W = jnp.asarray(_rng.normal(size=(D, 8)), jnp.float32)
TOKENS = jnp.asarray(_rng.integers(0, 8, size=8))
SEQ = tuple(LOG_Q[:, k] for k in range(4))  # per-sequence log-probabilities (<= 0)
ROW = jnp.asarray([True, True, False, True])


def _mesh():
    from jax.sharding import AxisType

    devices = jax.devices() if len(jax.devices()) >= 8 else jax.devices("cpu")
    return jax.make_mesh((8,), ("vocab",), devices=devices[:8], axis_types=(AxisType.Auto,))


ON_MESH = dict(vocab_axis="vocab")
CASES = {
    "entropy": (il.entropy, (Z,), {}),
    "entropy_from_probs": (il.entropy_from_probs, (P,), {}),
    "entropy_from_counts": (il.entropy_from_counts, (jnp.asarray([2.0, 2.0, 4.0]),), {}),
    "binary_entropy": (il.binary_entropy, (Z.at[0, 0].set(jnp.inf),), {}),
    "kl_divergence": (il.kl_divergence, (LOG_Q, P), {}),
    "kl_divergence_with_log_targets": (il.kl_divergence_with_log_targets, (LOG_Q, LOG_Q), {}),
    "generalized_kl_divergence": (il.generalized_kl_divergence, (Z, 2.0 * P), {}),
    "forward_kl": (il.forward_kl, (Z, T), {}),
    "reverse_kl": (il.reverse_kl, (Z, T), dict(where=Z > -1.0)),
    "jensen_shannon": (il.jensen_shannon, (Z, T), dict(beta=0.3)),
    "softmax_cross_entropy": (il.softmax_cross_entropy, (Z, P), dict(where=ROW)),
    "safe_softmax_cross_entropy": (il.safe_softmax_cross_entropy, (Z, P), {}),
    "softmax_cross_entropy_with_integer_labels": (
        il.softmax_cross_entropy_with_integer_labels,
        (Z, Y.at[2].set(-100)),
        dict(ignore_index=-100, class_weights=jnp.ones(K)),
    ),
    "sigmoid_binary_cross_entropy": (il.sigmoid_binary_cross_entropy, (Z, P), {}),
    "log_partition": (il.log_partition, (Z,), {}),
    "z_loss": (il.z_loss, (Z,), {}),
    "reduce_loss": (il.reduce_loss, (Z[:, 0],), dict(reduction="mean", where=ROW)),
    "loss_sum_and_count": (il.loss_sum_and_count, (Z[:, 0],), dict(weights=jnp.ones(N))),
    "log_probs": (il.log_probs, (Z, Y), dict(with_entropy=True)),
    "linear_log_probs": (il.linear_log_probs, (H, TOKENS, W), dict(mask=jnp.arange(8) != 3)),
    "linear_softmax_cross_entropy": (il.linear_softmax_cross_entropy, (H, TOKENS, W), {}),
    "linear_forward_kl": (il.linear_forward_kl, (H, W, H, W), {}),
    "linear_reverse_kl": (il.linear_reverse_kl, (H, W, H, W), {}),
    "linear_jensen_shannon": (il.linear_jensen_shannon, (H, W, H, W), {}),
    "kl_estimate": (il.kl_estimate, (LOG_Q, LOG_Q + 0.0), dict(mask=Z > 0)),
    "torch.cross_entropy": (F.cross_entropy, (Z, Y), {}),
    "torch.nll_loss": (F.nll_loss, (LOG_Q, Y), {}),
    "torch.kl_div": (F.kl_div, (LOG_Q, P), dict(reduction="batchmean")),
    "torch.binary_cross_entropy": (F.binary_cross_entropy, (P, P), {}),
    "torch.binary_cross_entropy_with_logits": (F.binary_cross_entropy_with_logits, (Z, P), {}),
    "policy.clipped_surrogate": (
        policy.clipped_surrogate,
        (LOG_Q, LOG_Q, Z[:, 0]),
        dict(ref_log_probs=LOG_Q, kl_coef=0.1, entropy=-LOG_Q, entropy_coef=0.01),
    ),
    "policy.group_advantages": (policy.group_advantages, (Z.reshape(-1), K), {}),
    "preference.sequence_log_probs": (preference.sequence_log_probs, (LOG_Q,), dict(mask=Z > 0)),
    "preference.dpo": (preference.dpo, SEQ, dict(beta=0.1, mask=ROW)),
    "preference.ipo": (preference.ipo, SEQ, dict(beta=0.1, chosen_lengths=jnp.full(N, 3))),
    "preference.hinge": (preference.hinge, SEQ, dict(beta=0.1)),
    "preference.simpo": (preference.simpo, SEQ[:2], dict(beta=2.0)),
    "preference.orpo": (preference.orpo, SEQ[:2], dict(beta=0.1)),
    "preference.cpo": (preference.cpo, SEQ[:2], dict(beta=0.1)),
    "preference.kto": (preference.kto, (SEQ[0], SEQ[1], ROW), dict(beta=0.1)),
    "sharded.vocab_parallel_cross_entropy_on_mesh": (
        sharded.vocab_parallel_cross_entropy_on_mesh,
        (H @ W, TOKENS),
        ON_MESH,
    ),
    "sharded.vocab_parallel_forward_kl_on_mesh": (
        sharded.vocab_parallel_forward_kl_on_mesh,
        (H @ W, H @ W),
        ON_MESH,
    ),
    "sharded.vocab_parallel_reverse_kl_on_mesh": (
        sharded.vocab_parallel_reverse_kl_on_mesh,
        (H @ W, H @ W),
        ON_MESH,
    ),
    "sharded.vocab_parallel_jensen_shannon_on_mesh": (
        sharded.vocab_parallel_jensen_shannon_on_mesh,
        (H @ W, H @ W),
        ON_MESH,
    ),
    "sharded.vocab_parallel_log_probs_on_mesh": (
        sharded.vocab_parallel_log_probs_on_mesh,
        (H @ W, TOKENS),
        ON_MESH,
    ),
    "sharded.vocab_parallel_linear_cross_entropy_on_mesh": (
        sharded.vocab_parallel_linear_cross_entropy_on_mesh,
        (H, TOKENS, W),
        ON_MESH,
    ),
    "sharded.vocab_parallel_linear_forward_kl_on_mesh": (
        sharded.vocab_parallel_linear_forward_kl_on_mesh,
        (H, W, H, W),
        ON_MESH,
    ),
    "sharded.vocab_parallel_linear_reverse_kl_on_mesh": (
        sharded.vocab_parallel_linear_reverse_kl_on_mesh,
        (H, W, H, W),
        ON_MESH,
    ),
    "sharded.vocab_parallel_linear_jensen_shannon_on_mesh": (
        sharded.vocab_parallel_linear_jensen_shannon_on_mesh,
        (H, W, H, W),
        ON_MESH,
    ),
    "sharded.vocab_parallel_linear_log_probs_on_mesh": (
        sharded.vocab_parallel_linear_log_probs_on_mesh,
        (H, TOKENS, W),
        ON_MESH,
    ),
}
# The declared divergences beyond the three KL forms: core, fused and on-mesh, one options set.
for _name, _options in {
    "total_variation": {},
    "skew_forward_kl": dict(skew=0.1),
    "skew_reverse_kl": dict(skew=0.1),
    "alpha_divergence": dict(alpha=0.5),
}.items():
    CASES[_name] = (getattr(il, _name), (Z, T), _options)
    CASES[f"linear_{_name}"] = (getattr(il, f"linear_{_name}"), (H, W, H, W), _options)
    for _form, _args in (("", (H @ W, H @ W)), ("linear_", (H, W, H, W))):
        _fn = getattr(sharded, f"vocab_parallel_{_form}{_name}_on_mesh")
        CASES[f"sharded.{_fn.__name__}"] = (_fn, _args, {**ON_MESH, **_options})
NOT_LOSSES = {
    "accumulate_value_and_grad",  # takes your loss function; check that one
    "checked",
    "compare_gradients",
    "gradient_table",
    "register_value_checks",
}


def test_every_public_loss_has_a_case():
    public = (
        {n for n in il.__all__ if callable(getattr(il, n)) and not isinstance(getattr(il, n), type)}
        - NOT_LOSSES
        | {f"torch.{n}" for n in F.__all__}
        | {f"policy.{n}" for n in policy.__all__ if not n.endswith("Aux")}
        | {f"preference.{n}" for n in preference.__all__ if not n.endswith("Aux")}
        | {f"sharded.{n}" for n in sharded.__all__ if n.endswith("_on_mesh")}
    )
    assert public == set(CASES)


def _with_mesh(kwargs):
    return dict(kwargs, mesh=_mesh()) if "vocab_axis" in kwargs else kwargs


@pytest.mark.parametrize("case", CASES)
def test_every_public_loss_is_checked(case):
    fn, args, kwargs = CASES[case]
    kwargs = _with_mesh(kwargs)
    out = il.checked(fn)(*args, **kwargs)
    expected = fn(*args, **kwargs)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    # A NaN in the first floating-point argument is reported, naming it.
    i = next(i for i, a in enumerate(args) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating))
    name = list(inspect.signature(fn).parameters)[i]
    bad = list(args)
    bad[i] = jnp.asarray(args[i]).at[(0,) * jnp.ndim(args[i])].set(jnp.nan)
    with pytest.raises(ValueError, match=f"`{name}`"):
        il.checked(fn)(*bad, **kwargs)


def test_the_post_training_value_mistakes():
    """Issue 20: these had no value checks."""
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 6\)"):
        il.checked(il.log_probs)(Z, Y.at[0].set(6))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 8\)"):
        il.checked(il.linear_log_probs)(H, TOKENS.at[0].set(8), W)
    ignored = il.checked(il.linear_log_probs)(H, TOKENS.at[0].set(-100), W, ignore_index=-100)
    assert float(ignored[0]) == 0.0
    probs_not_logs = jax.nn.softmax(Z)
    with pytest.raises(ValueError, match="`log_probs`.*looks like probabilities"):
        il.checked(il.kl_estimate)(probs_not_logs, LOG_Q)
    with pytest.raises(ValueError, match="`old_log_probs`.*looks like probabilities"):
        il.checked(policy.clipped_surrogate)(LOG_Q, probs_not_logs, Z[:, 0])
    with pytest.raises(ValueError, match="`chosen_log_probs`.*looks like probabilities"):
        il.checked(preference.dpo)(jnp.exp(SEQ[0]), *SEQ[1:], beta=0.1)
    with pytest.raises(ValueError, match="`chosen_lengths` must be non-negative"):
        il.checked(preference.simpo)(*SEQ[:2], beta=2.0, chosen_lengths=jnp.full(N, -1))
    with pytest.raises(ValueError, match="`segment_ids` holds the id 3"):
        il.checked(il.reduce_loss)(
            Z, reduction="per_sequence_sum", segment_ids=jnp.full((N, K), 3), num_segments=2
        )
    # Masked entries are not checked: the losses ignore them.
    nan_masked = LOG_Q.at[0, 0].set(jnp.nan)
    il.checked(il.kl_estimate)(nan_masked, LOG_Q, mask=jnp.ones((N, K), bool).at[0, 0].set(False))
    il.checked(preference.dpo)(SEQ[0].at[2].set(jnp.nan), *SEQ[1:], beta=0.1, mask=ROW)


def test_valid_bfloat16_log_probabilities_pass():
    """A bfloat16 log_softmax exponentiates to a sum off 1 by its own rounding (issue 20)."""
    logits = jax.random.normal(jax.random.key(3), (4, 1000)).astype(jnp.bfloat16)
    log_q = jax.nn.log_softmax(logits)
    total = jnp.sum(jnp.exp(log_q.astype(jnp.float32)), axis=-1)
    assert float(jnp.max(jnp.abs(total - 1))) > 2**-7  # beyond bfloat16 epsilon, the old bound
    target = jax.nn.softmax(logits.astype(jnp.float32))
    il.checked(il.kl_divergence)(log_q, target)
    il.checked(il.kl_divergence_with_log_targets)(log_q, log_q)
    with pytest.raises(ValueError, match="must be normalized"):
        il.checked(il.kl_divergence)(log_q + jnp.bfloat16(-0.1), target)
