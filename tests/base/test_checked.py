"""`checked`: value-level mistakes raise clear errors instead of giving a wrong number."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infoloss_jax as il


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
    with pytest.raises(TypeError, match="no value checks registered"):
        il.checked(jnp.sum)
    with pytest.raises(TypeError, match="traced values"):
        jax.jit(il.checked(il.entropy))(jnp.zeros(3))
