"""Token log-probabilities and entropy: ``log_probs`` (from logits) and ``linear_log_probs``
(fused), against PyTorch goldens, scipy, plain ``jnp`` autodiff and finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from golden.make_post_training_golden import INPUTS, LOG_PROB_CASES
from golden.post_training_golden import GOLDEN
from helpers import plain_log_probs
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import infoloss_jax as il

N, D, V = 29, 6, 37


def _head(dtype=jnp.float32, seed=0, excluded=(3, 11)):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(N, D)), dtype)
    weight = jnp.asarray(rng.normal(size=(D, V)), dtype)
    bias = np.asarray(rng.normal(size=(V,)) * 0.1)
    bias[list(excluded)] = -np.inf
    labels = rng.integers(0, V, size=N)
    labels = np.where(np.isin(labels, excluded), 0, labels)
    labels[[4, 17]] = -100
    cot = (jnp.asarray(rng.normal(size=N)), jnp.asarray(rng.normal(size=N)))
    return hidden, weight, jnp.asarray(bias, dtype), jnp.asarray(labels), cot


def _objective(outputs, cot):
    lp, ent = outputs
    return jnp.sum(lp * cot[0]) + jnp.sum(ent * cot[1])


# ----------------------------------------------------------------------------- goldens
@pytest.mark.parametrize("case", list(LOG_PROB_CASES))
@pytest.mark.parametrize("path", ["core", "fused"])
def test_pytorch_goldens(case, path):
    temperature, cap = LOG_PROB_CASES[case]
    with jax.enable_x64(True):
        logits = jnp.asarray(INPUTS["lp_logits"], jnp.float64)
        labels = jnp.asarray(INPUTS["lp_labels"])
        cot = (jnp.asarray(INPUTS["lp_a"]), jnp.asarray(INPUTS["lp_b"]))
        options = dict(temperature=temperature, logit_softcap=cap, with_entropy=True)
        if path == "core":

            def run(z):
                return il.log_probs(z, labels, **options)
        else:
            excluded = jnp.isinf(logits[0])
            bias = jnp.where(excluded, -jnp.inf, 0.0)
            eye = jnp.eye(logits.shape[1], dtype=jnp.float64)

            def run(z):
                hidden = jnp.where(excluded, 0.0, z)
                return il.linear_log_probs(
                    hidden, labels, eye, bias=bias, accum_dtype=jnp.float64, **options
                )

        lp, ent = run(logits)
        grad = jax.grad(lambda z: _objective(run(z), cot))(logits)
        np.testing.assert_allclose(lp, GOLDEN[f"log_probs/{case}/log_probs"], rtol=1e-12)
        np.testing.assert_allclose(ent, GOLDEN[f"log_probs/{case}/entropy"], rtol=1e-12)
        expected = GOLDEN[f"grad/log_probs/{case}/logits"]
        np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-14)


def test_scipy_values():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 4, 9)) * 3
    labels = rng.integers(0, 9, size=(5, 4))
    with jax.enable_x64(True):
        lp, ent = il.log_probs(jnp.asarray(logits), jnp.asarray(labels), with_entropy=True)
    log_q = scipy.special.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(lp, np.take_along_axis(log_q, labels[..., None], -1)[..., 0])
    np.testing.assert_allclose(ent, scipy.stats.entropy(np.exp(log_q), axis=-1), rtol=1e-12)


# ----------------------------------------------------------------------------- gradients
OPTIONS = {
    "plain": {},
    "temperature": {"temperature": 0.6},
    "softcap": {"logit_softcap": 2.5},
    "both_ignored": {"temperature": 1.7, "logit_softcap": 4.0, "ignore_index": -100},
}
SLOW_OPTIONS = tuple(OPTIONS)  # the fast run has the goldens and test_agreement's token case


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(v, marks=pytest.mark.slow) if k in SLOW_OPTIONS else v
        for k, v in OPTIONS.items()
    ],
    ids=list(OPTIONS),
)
def test_core_and_fused_match_plain_autodiff_float64(options):
    with jax.enable_x64(True):
        hidden, weight, bias, labels, cot = _head(jnp.float64)
        if "ignore_index" not in options:
            labels = jnp.where(labels < 0, 1, labels)

        def plain(h, w, b):
            return _objective(plain_log_probs(h @ w + b, labels, **options), cot)

        def core(h, w, b):
            return _objective(il.log_probs(h @ w + b, labels, with_entropy=True, **options), cot)

        def fused(h, w, b, **kw):
            out = il.linear_log_probs(
                h, labels, w, bias=b, with_entropy=True, accum_dtype=jnp.float64, **options, **kw
            )
            return _objective(out, cot)

        expected = jax.value_and_grad(plain, argnums=(0, 1, 2))(hidden, weight, bias)
        for fn in (core, fused, lambda *a: fused(*a, backward="two_pass", vocab_block_size=16)):
            got = jax.value_and_grad(fn, argnums=(0, 1, 2))(hidden, weight, bias)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                         got, expected)  # fmt: skip


@pytest.mark.slow
def test_finite_differences_float64():
    with jax.enable_x64(True):
        hidden, weight, bias, labels, cot = _head(jnp.float64, excluded=())
        labels = jnp.where(labels < 0, 2, labels)
        logits = hidden @ weight + bias

        def core(z):
            return _objective(
                il.log_probs(z, labels, temperature=0.8, logit_softcap=3.0, with_entropy=True), cot
            )

        check_grads(core, (logits,), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)

        def fused(h, w):
            out = il.linear_log_probs(
                h, labels, w, temperature=0.8, with_entropy=True, accum_dtype=jnp.float64
            )
            return _objective(out, cot)

        check_grads(fused, (hidden, weight), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [pytest.param(jnp.float32, marks=pytest.mark.slow), jnp.bfloat16])
@pytest.mark.parametrize("layout", [pytest.param("dv", marks=pytest.mark.slow), "vd"])
def test_fused_equals_core(dtype, layout):
    hidden, weight, bias, labels, cot = _head(dtype)
    options = dict(temperature=0.9, logit_softcap=5.0, ignore_index=-100, with_entropy=True)
    head = weight if layout == "dv" else weight.T

    def core(h, w, b):
        logits = jnp.dot(h, w, preferred_element_type=jnp.float32) + b
        return _objective(il.log_probs(logits, labels, **options), cot)

    def fused(h, w, b):
        out = il.linear_log_probs(h, labels, w, bias=b, weight_layout=layout, **options)
        return _objective(out, cot)

    expected = jax.value_and_grad(core, argnums=(0, 1, 2))(hidden, weight, bias)
    got = jax.value_and_grad(fused, argnums=(0, 1, 2))(hidden, head, bias)
    got = (got[0], (got[1][0], got[1][1] if layout == "dv" else got[1][1].T, got[1][2]))
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol
        ),
        got,
        expected,
    )
    lp = il.linear_log_probs(hidden, labels, head, bias=bias, weight_layout=layout)
    assert lp.dtype == jnp.float32 and lp.shape == labels.shape


def test_with_entropy_false_does_no_entropy_work():
    hidden, weight, bias, labels, _ = _head()

    def count(with_entropy, fn):
        def loss(h):
            out = fn(h, with_entropy)
            return jnp.sum(out[0] if with_entropy else out)

        return len(str(jax.make_jaxpr(jax.grad(loss))(hidden)).splitlines())

    def fused(h, e):
        return il.linear_log_probs(h, labels, weight, bias=bias, with_entropy=e)

    def core(h, e):
        return il.log_probs(h @ weight + bias, labels, with_entropy=e)

    for fn in (fused, core):
        assert count(False, fn) < count(True, fn)
    assert isinstance(fused(hidden, False), jax.Array)


# ----------------------------------------------------------------------------- edge values
@pytest.mark.parametrize("path", ["core", "fused"])
def test_nan_logit_poisons_only_its_token(path):
    hidden, weight, bias, labels, cot = _head()
    hidden = hidden.at[5, 0].set(jnp.nan)

    def run(h):
        if path == "core":
            return il.log_probs(h @ weight + bias, labels, with_entropy=True, ignore_index=-100)
        return il.linear_log_probs(
            h, labels, weight, bias=bias, with_entropy=True, ignore_index=-100
        )

    lp, ent = run(hidden)
    grad = jax.grad(lambda h: _objective(run(h), cot))(hidden)
    bad = np.zeros(N, bool)
    bad[5] = True
    for x in (lp, ent):
        assert np.isnan(x[bad]).all() and np.isfinite(x[~bad]).all()
    assert np.isnan(grad[5]).all() and np.isfinite(np.delete(np.asarray(grad), 5, 0)).all()


@pytest.mark.parametrize("path", ["core", "fused"])
def test_label_values(path):
    """Out of range: NaN (value and gradient); on an excluded class: -inf with a finite
    gradient; ignored: 0 with no gradient."""
    hidden, weight, bias, labels, cot = _head()
    labels = labels.at[0].set(V).at[1].set(3).at[2].set(-100)

    def run(h):
        if path == "core":
            return il.log_probs(h @ weight + bias, labels, with_entropy=True, ignore_index=-100)
        return il.linear_log_probs(
            h, labels, weight, bias=bias, with_entropy=True, ignore_index=-100
        )

    lp, ent = run(hidden)
    grad = jax.grad(lambda h: jnp.sum(run(h)[0][1:] * cot[0][1:]))(hidden)
    assert np.isnan(lp[0]) and np.isnan(ent[0])
    assert lp[1] == -np.inf and np.isfinite(ent[1]) and np.isfinite(grad[1]).all()
    assert lp[2] == 0 and ent[2] == 0 and (grad[2] == 0).all()
    assert np.isnan(jax.grad(lambda h: run(h)[0][0])(hidden)[0]).all()


@pytest.mark.slow
def test_fused_mask_and_empty_rows():
    hidden, weight, bias, labels, cot = _head()
    labels = jnp.where(labels < 0, 0, labels)
    mask = jnp.arange(N) % 3 != 0

    def run(h):
        return il.linear_log_probs(h, labels, weight, bias=bias, with_entropy=True, mask=mask)

    lp, ent = run(hidden)
    ref_lp, ref_ent = il.log_probs(hidden @ weight + bias, labels, with_entropy=True)
    np.testing.assert_allclose(lp, jnp.where(mask, ref_lp, 0.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent, jnp.where(mask, ref_ent, 0.0), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda h: _objective(run(h), cot))(hidden)
    assert (grad[~mask] == 0).all()
    # A token whose every class is excluded: its label is on an excluded class, log-probability
    # -inf (issue 20), and it has no distribution, entropy 0; both with a zero gradient.
    empty = jnp.full((2, 4), -jnp.inf).at[1].set(jnp.array([0.0, 1.0, -jnp.inf, 2.0]))
    lp, ent = il.log_probs(empty, jnp.array([1, 1]), with_entropy=True)
    assert lp[0] == -jnp.inf and ent[0] == 0
    for out in (0, 1):
        g = jax.grad(
            lambda z, i=out: jnp.sum(il.log_probs(z, jnp.array([1, 1]), with_entropy=True)[i])
        )
        assert np.isfinite(g(empty)).all() and (g(empty)[0] == 0).all()
    # ... also when ignored: 0, and out of range: NaN.
    lp = il.log_probs(empty[:1].repeat(2, 0), jnp.array([-100, 7]), ignore_index=-100)
    assert lp[0] == 0 and np.isnan(lp[1])


def test_named_outputs_and_the_token_mask():
    """``with_entropy=True`` returns the NamedTuple ``TokenLogProbs``; ``mask=False`` gives 0 for
    both outputs and no gradient, even with NaN logits (issues 19 and 20)."""
    logits = jnp.array([[2.0, 1.0, 0.0], [jnp.nan, 0.0, 1.0], [0.5, 0.5, 0.5]])
    labels, mask = jnp.array([0, 1, 2]), jnp.array([True, False, True])
    out = il.log_probs(logits, labels, with_entropy=True, mask=mask)
    assert isinstance(out, il.TokenLogProbs)
    lp, ent = out  # unpacks as a pair
    full = il.log_probs(jnp.nan_to_num(logits), labels, with_entropy=True)
    np.testing.assert_allclose(lp, jnp.where(mask, full.log_probs, 0.0), rtol=1e-6)
    np.testing.assert_allclose(out.entropy, jnp.where(mask, full.entropy, 0.0), rtol=1e-6)
    for which in (0, 1):
        grad = jax.grad(
            lambda z, w=which: jnp.sum(il.log_probs(z, labels, mask=mask, with_entropy=True)[w])
        )(logits)
        assert np.isfinite(grad).all() and (grad[1] == 0).all()
    with pytest.raises(TypeError, match="`mask` must be a boolean"):
        il.log_probs(logits, labels, mask=jnp.ones(3))


# ----------------------------------------------------------------------------- transforms
@pytest.mark.slow
def test_jit_vmap_axis_and_traced_temperature():
    rng = np.random.default_rng(7)
    logits = jnp.asarray(rng.normal(size=(3, 5, 11)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 11, size=(3, 5)))
    direct = il.log_probs(logits, labels, temperature=0.5)
    traced = jax.jit(lambda z, t: il.log_probs(z, labels, temperature=t))(logits, 0.5)
    mapped = jax.vmap(lambda z, y: il.log_probs(z, y, temperature=0.5))(logits, labels)
    moved = il.log_probs(jnp.moveaxis(logits, -1, 0), labels, axis=0, temperature=0.5)
    for x in (traced, mapped, moved):
        np.testing.assert_allclose(x, direct, rtol=1e-6)
    hidden, weight, _, y, _ = _head()
    y = jnp.where(y < 0, 0, y)
    fused = jax.jit(lambda t: il.linear_log_probs(hidden, y, weight, temperature=t))(0.5)
    np.testing.assert_allclose(fused, il.log_probs(hidden @ weight, y, temperature=0.5), rtol=1e-5)
    bad = jax.jit(lambda t: il.linear_log_probs(hidden, y, weight, temperature=t))(-1.0)
    assert np.isnan(bad).all()


def test_errors():
    hidden, weight, _, labels, _ = _head()
    logits = hidden @ weight
    with pytest.raises(ValueError, match="labels"):
        il.log_probs(logits, labels[:-1])
    with pytest.raises(TypeError, match="labels"):
        il.log_probs(logits, labels.astype(jnp.float32))
    with pytest.raises(TypeError, match="with_entropy"):
        il.log_probs(logits, labels, with_entropy=1)
    with pytest.raises(ValueError, match="temperature"):
        il.log_probs(logits, labels, temperature=0.0)
    with pytest.raises(ValueError, match="in_forward"):
        il.linear_log_probs(hidden, labels, weight, backward="in_forward")
    with pytest.raises(TypeError, match="mask"):
        il.linear_log_probs(hidden, labels, weight, mask=jnp.ones(N))
    with pytest.raises(ValueError, match="hidden"):
        il.linear_log_probs(hidden[:, :-1], labels, weight)
    with pytest.raises(TypeError, match="linear_log_probs"):
        jax.jvp(lambda h: il.linear_log_probs(h, labels, weight), (hidden,), (hidden,))


# ----------------------------------------------------------------------------- laws
@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(
    st.integers(2, 12),
    st.integers(0, 2**31 - 1),
    st.floats(0.3, 3.0),
    st.floats(-50.0, 50.0),
)
def test_laws(k, seed, temperature, shift):
    """log q(y) <= 0, sum_y q(y) = 1, 0 <= H <= log K, and a shift of the logits changes
    nothing."""
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(1, k)) * 4, jnp.float32)
    every = jnp.arange(k)
    z = jnp.broadcast_to(logits, (k, k))
    lp, ent = il.log_probs(z, every, temperature=temperature, with_entropy=True)
    lp2, ent2 = il.log_probs(z + shift, every, temperature=temperature, with_entropy=True)
    assert (lp <= 1e-6).all()
    assert abs(float(jax.nn.logsumexp(lp))) < 1e-5
    assert (ent >= -1e-6).all() and (ent <= np.log(k) + 1e-5).all()
    np.testing.assert_allclose(lp2, lp, atol=1e-4 * max(1.0, abs(shift)))
    np.testing.assert_allclose(ent2, ent, atol=1e-4 * max(1.0, abs(shift)))
