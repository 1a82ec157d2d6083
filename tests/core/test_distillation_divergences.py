"""Total variation, the skew KLs and the alpha-divergence: values against float64 NumPy, their
laws (hypothesis), their limits, temperature, reductions and the -inf / NaN rules.

Their closed-form gradients are checked against autodiff of the plain implementations in
tests/gradients (each declared divergence brings its cases there) and, here, against float64
finite differences.
"""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import infoloss_jax as il
from infoloss_jax import gradients as g

RNG = np.random.default_rng(11)
INF = np.inf


# ----------------------------------------------------------------------- float64 NumPy
def _softmax(x):
    x = np.asarray(x, np.float64)
    with np.errstate(invalid="ignore"):
        return np.exp(x - scipy.special.logsumexp(x, axis=-1, keepdims=True))


def _kl(p, q):
    return np.sum(scipy.special.rel_entr(p, q), axis=-1)


def np_total_variation(z, t, temperature=1.0):
    return 0.5 * np.sum(np.abs(_softmax(t / temperature) - _softmax(z / temperature)), -1)


def np_skew_forward_kl(z, t, skew, temperature=1.0):
    p, q = _softmax(t / temperature), _softmax(z / temperature)
    return _kl(p, skew * p + (1 - skew) * q)


def np_skew_reverse_kl(z, t, skew, temperature=1.0):
    return np_skew_forward_kl(t, z, skew, temperature)


def np_alpha_divergence(z, t, alpha, temperature=1.0):
    """(1 - sum p^a q^(1-a)) / (a (1-a)), evaluated as -sum q expm1(a r) / (a (1-a)) (r = log
    p/q) so that it stays exact in float64 near alpha = 0 (and symmetrically near 1)."""
    p, q = _softmax(t / temperature), _softmax(z / temperature)
    if alpha == 0:
        return _kl(q, p)
    if alpha == 1:
        return _kl(p, q)
    if alpha > 0.5:
        p, q, alpha = q, p, 1 - alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.expm1(alpha * (np.log(p) - np.log(q))), 0.0)
    return -np.sum(terms, -1) / (alpha * (1 - alpha))


def _pair(shape=(6, 9), scale=2.0):
    return RNG.normal(size=shape) * scale, RNG.normal(size=shape) * scale


# ----------------------------------------------------------------------- values
@pytest.mark.parametrize("temperature", [1.0, 0.7, 3.0])
def test_values_match_float64_numpy(temperature):
    z, t = _pair()
    opts = dict(temperature=temperature)
    np.testing.assert_allclose(
        il.total_variation(z, t, **opts), np_total_variation(z, t, temperature), rtol=1e-12
    )
    for skew in (0.1, 0.5, 0.9):
        np.testing.assert_allclose(
            il.skew_forward_kl(z, t, skew=skew, **opts),
            np_skew_forward_kl(z, t, skew, temperature),
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            il.skew_reverse_kl(z, t, skew=skew, **opts),
            np_skew_reverse_kl(z, t, skew, temperature),
            rtol=1e-12,
        )
    for alpha in (-0.5, 0.2, 0.5, 0.8, 2.0):
        np.testing.assert_allclose(
            il.alpha_divergence(z, t, alpha=alpha, **opts),
            np_alpha_divergence(z, t, alpha, temperature),
            rtol=1e-11,
        )


def test_float32_values_match_float64_numpy():
    z, t = _pair()
    z32, t32 = jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32)
    z, t = np.asarray(z32, np.float64), np.asarray(t32, np.float64)
    tol = dict(rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(il.total_variation(z32, t32), np_total_variation(z, t), **tol)
    np.testing.assert_allclose(
        il.skew_forward_kl(z32, t32, skew=0.1), np_skew_forward_kl(z, t, 0.1), **tol
    )
    np.testing.assert_allclose(
        il.skew_reverse_kl(z32, t32, skew=0.1), np_skew_reverse_kl(z, t, 0.1), **tol
    )
    for alpha in (1e-6, 0.3, 1 - 1e-6):
        np.testing.assert_allclose(
            il.alpha_divergence(z32, t32, alpha=alpha), np_alpha_divergence(z, t, alpha), **tol
        )


def test_end_points_are_the_kls_exactly():
    """A static coefficient at an end point runs the end point's KL (one program, the same
    bits). An eager call traces its coefficients (one cached program for every value), so it
    runs the general formula, as a traced coefficient does."""
    z, t = _pair()

    def static(fn, **options):
        return jax.jit(lambda a, b: fn(a, b, **options))(z, t)

    forward, reverse = static(il.forward_kl), static(il.reverse_kl)
    np.testing.assert_array_equal(static(il.skew_forward_kl, skew=0.0), forward)
    np.testing.assert_array_equal(static(il.skew_reverse_kl, skew=0.0), reverse)
    np.testing.assert_array_equal(static(il.alpha_divergence, alpha=1.0), forward)
    np.testing.assert_array_equal(static(il.alpha_divergence, alpha=0.0), reverse)
    np.testing.assert_allclose(static(il.skew_forward_kl, skew=1.0), 0.0, atol=1e-15)
    np.testing.assert_allclose(il.skew_forward_kl(z, t, skew=0.0), forward, rtol=1e-12)
    np.testing.assert_allclose(il.alpha_divergence(z, t, alpha=0.0), reverse, rtol=1e-12)
    # Traced coefficients run the general formula: the same limits, to round-off.
    traced = jax.jit(lambda a: il.alpha_divergence(z, t, alpha=a))
    np.testing.assert_allclose(traced(1.0), forward, rtol=1e-12)
    np.testing.assert_allclose(traced(0.0), reverse, rtol=1e-12)
    skewed = jax.jit(lambda s: il.skew_forward_kl(z, t, skew=s))
    np.testing.assert_allclose(skewed(0.0), forward, rtol=1e-12)


@pytest.mark.parametrize("eps", [1e-3, 1e-6, 1e-9])
def test_alpha_is_exact_near_its_limits(eps):
    """No cancellation near alpha = 0 and 1: float64 values within round-off of the expm1
    form, and within O(eps) of the KL limits."""
    z, t = _pair()
    for alpha, limit in ((eps, il.reverse_kl(z, t)), (1 - eps, il.forward_kl(z, t))):
        value = il.alpha_divergence(z, t, alpha=alpha)
        np.testing.assert_allclose(value, np_alpha_divergence(z, t, alpha), rtol=1e-11)
        np.testing.assert_allclose(value, limit, rtol=50 * eps)


def test_directions_and_symmetries():
    z, t = _pair()
    np.testing.assert_allclose(il.total_variation(z, t), il.total_variation(t, z), rtol=1e-14)
    np.testing.assert_allclose(
        il.skew_reverse_kl(z, t, skew=0.3), il.skew_forward_kl(t, z, skew=0.3), rtol=1e-13
    )
    np.testing.assert_allclose(
        il.alpha_divergence(z, t, alpha=0.3), il.alpha_divergence(t, z, alpha=0.7), rtol=1e-12
    )
    # alpha = 1/2: 4 (1 - sum sqrt(p q)).
    p, q = _softmax(t), _softmax(z)
    np.testing.assert_allclose(
        il.alpha_divergence(z, t), 4 * (1 - np.sum(np.sqrt(p * q), -1)), rtol=1e-12
    )


# ----------------------------------------------------------------------- laws
_ROWS = hnp.arrays(np.float64, (3, 6), elements=st.floats(-20, 20))
_KEEP = hnp.arrays(np.bool_, (3, 6))
_COEF = st.floats(0.01, 0.99)


@settings(max_examples=30)
@given(_ROWS, _ROWS, _KEEP, _COEF)
def test_laws(z, t, keep, c):
    """>= 0; 0 at P = Q; TV <= 1; skew KLs <= log(1/skew); alpha <= 1 / (alpha (1 - alpha))."""
    keep[:, 0] = True
    z, t = np.where(keep, z, -INF), np.where(keep, t, -INF)
    tv = np.asarray(il.total_variation(z, t))
    skews = [np.asarray(f(z, t, skew=c)) for f in (il.skew_forward_kl, il.skew_reverse_kl)]
    alpha = np.asarray(il.alpha_divergence(z, t, alpha=c))
    for value in (tv, *skews, alpha):
        assert np.all(np.isfinite(value)) and np.all(value >= -1e-12)
    assert np.all(tv <= 1 + 1e-12)
    for value in skews:
        assert np.all(value <= np.log(1 / c) + 1e-9)
    assert np.all(alpha <= 1 / (c * (1 - c)) + 1e-9)
    for value in (
        il.total_variation(z, z),
        il.skew_forward_kl(z, z, skew=c),
        il.skew_reverse_kl(z, z, skew=c),
        il.alpha_divergence(z, z, alpha=c),
        il.alpha_divergence(z, z + 3.0, alpha=-c),  # shift invariance: P = Q
    ):
        np.testing.assert_allclose(value, 0.0, atol=1e-12)


def test_disjoint_supports():
    z, t = np.array([0.0, -INF]), np.array([-INF, 0.0])
    assert float(il.total_variation(z, t)) == 1.0
    np.testing.assert_allclose(il.skew_forward_kl(z, t, skew=0.1), np.log(10), rtol=1e-14)
    np.testing.assert_allclose(il.skew_reverse_kl(z, t, skew=0.25), np.log(4), rtol=1e-14)
    np.testing.assert_allclose(il.alpha_divergence(z, t, alpha=0.5), 4.0, rtol=1e-14)
    # Outside [0, 1], and at the KL end points, the value is +inf, never NaN.
    assert float(il.alpha_divergence(z, t, alpha=2.0)) == INF
    assert float(il.alpha_divergence(z, t, alpha=-1.0)) == INF
    assert float(il.skew_forward_kl(z, t, skew=0.0)) == INF


# ----------------------------------------------------------------------- gradients
_DIVERGENCES = {
    "total_variation": (il.total_variation, g.total_variation_grad, {}),
    "skew_forward_kl": (il.skew_forward_kl, g.skew_forward_kl_grad, dict(skew=0.2)),
    "skew_reverse_kl": (il.skew_reverse_kl, g.skew_reverse_kl_grad, dict(skew=0.2)),
    "alpha_divergence": (il.alpha_divergence, g.alpha_divergence_grad, dict(alpha=0.3)),
    "alpha_divergence (alpha=2)": (il.alpha_divergence, g.alpha_divergence_grad, dict(alpha=2.0)),
    "alpha_divergence (alpha=1e-7)": (
        il.alpha_divergence,
        g.alpha_divergence_grad,
        dict(alpha=1e-7),
    ),
}


# One of each family, for the tests of options and transforms.
_FAMILIES = {k: v for k, v in _DIVERGENCES.items() if "(" not in k}


@pytest.mark.parametrize("name", sorted(_DIVERGENCES))
def test_gradients_match_finite_differences_in_float64(name):
    loss, grad, opts = _DIVERGENCES[name]
    z, t = (jnp.asarray(x) for x in _pair((3, 5), 1.5))
    opts = dict(opts, temperature=1.3)
    check_grads(lambda a, b: loss(a, b, **opts), (z, t), order=1, modes=("rev",))
    closed = grad(z, t, argnums=(0, 1), **opts)
    auto = jax.grad(lambda a, b: jnp.sum(loss(a, b, **opts)), argnums=(0, 1))(z, t)
    for a, b in zip(closed, auto, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_DIVERGENCES))
def test_second_order_and_forward_mode(name):
    loss, _, opts = _DIVERGENCES[name]
    z, t = (jnp.asarray(x) for x in _pair((2, 4), 1.5))
    check_grads(lambda a, b: loss(a, b, **opts), (z, t), order=2, modes=("fwd", "rev"))


@pytest.mark.slow
def test_coefficient_gradient_matches_finite_differences():
    z, t = (jnp.asarray(x) for x in _pair((3, 5)))
    for loss, name, at in (
        (il.skew_forward_kl, "skew", 0.3),
        (il.skew_reverse_kl, "skew", 0.6),
        (il.alpha_divergence, "alpha", 0.3),
        (il.alpha_divergence, "alpha", 0.8),
        (il.jensen_shannon, "beta", 0.4),
    ):

        def total(c, loss=loss, name=name):
            return jnp.sum(loss(z, t, **{name: c}))

        h = 1e-6
        fd = (total(at + h) - total(at - h)) / (2 * h)
        np.testing.assert_allclose(jax.grad(total)(at), fd, rtol=1e-6)


def test_temperature_is_applied_to_both_and_traceable():
    z, t = _pair()
    for loss, _, opts in _FAMILIES.values():
        np.testing.assert_allclose(
            loss(z, t, temperature=2.5, **opts), loss(z / 2.5, t / 2.5, **opts), rtol=1e-12
        )

        def at(temp, loss=loss, opts=opts):
            return loss(z, t, temperature=temp, **opts)

        traced = jax.jit(at)
        np.testing.assert_allclose(traced(2.5), loss(z, t, temperature=2.5, **opts), rtol=1e-12)
        assert np.isnan(np.asarray(traced(-1.0))).all()
        with pytest.raises(ValueError, match="`temperature`"):
            loss(z, t, temperature=0.0, **opts)
        h = 1e-6
        fd = (jnp.sum(at(2.0 + h)) - jnp.sum(at(2.0 - h))) / (2 * h)
        np.testing.assert_allclose(jax.grad(lambda temp: jnp.sum(at(temp)))(2.0), fd, rtol=1e-6)


def test_low_temperature_is_exact():
    """The shift by the row max comes before the temperature: no eps * |z| / T error."""
    z, t = _pair((4, 10), 1.0)
    z, t = np.float32(z), np.float32(t)
    for temperature in (1e-2, 1e-4):
        zz, tt = z.astype(np.float64), t.astype(np.float64)
        np.testing.assert_allclose(
            il.total_variation(z, t, temperature=temperature),
            np_total_variation(zz, tt, temperature),
            atol=1e-6,
        )
        np.testing.assert_allclose(
            il.alpha_divergence(z, t, alpha=0.5, temperature=temperature),
            np_alpha_divergence(zz, tt, 0.5, temperature),
            rtol=1e-5,
            atol=1e-5,
        )


# ----------------------------------------------------------------------- bad input, options
def test_excluded_nan_and_extreme_logits():
    z = [[0.0, 1.0, -INF, 2.0], [np.nan, 0.0, 1.0, 2.0], [-INF] * 4, [3e38, -3e38, 1, 3e38]]
    t = [[1.0, -INF, -INF, 0.0], [0.0, 1.0, 2.0, 3.0], [-INF] * 4, [3e38, 3e38, -3e38, 1]]
    z, t = jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32)
    keep = jnp.array([0, 2, 3])
    for name, (loss, _, opts) in _DIVERGENCES.items():
        out = np.asarray(loss(z, t, **opts))
        assert np.isnan(out[1]), name  # NaN poisons its own row
        assert out[2] == 0.0, name  # a row with no class left
        assert not np.isnan(out[[0, 3]]).any(), name
        rows = jax.grad(lambda a, b, f=loss, o=opts: jnp.sum(f(a, b, **o)[keep]), (0, 1))
        for grad in rows(z, t):
            assert np.isfinite(np.asarray(grad)[[0, 2, 3]]).all(), name
            assert not np.asarray(grad)[2].any(), name


def test_where_excludes_a_class_from_both():
    z, t = _pair()
    where = RNG.random(z.shape) > 0.3
    where[:, 0] = True
    for loss, _, opts in _FAMILIES.values():
        np.testing.assert_allclose(
            loss(z, t, where=where, **opts),
            loss(np.where(where, z, -INF), np.where(where, t, -INF), **opts),
            rtol=1e-14,
        )


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_reductions(reduction):
    z, t = _pair((2, 3, 5))
    for loss, _, opts in _FAMILIES.values():
        rows = np.asarray(loss(z, t, **opts))
        expected = {"sum": rows.sum(), "mean": rows.mean(), "batchmean": rows.sum() / 2}
        np.testing.assert_allclose(
            loss(z, t, reduction=reduction, **opts), expected[reduction], rtol=1e-13
        )
    with pytest.raises(ValueError, match="`reduction`"):
        il.total_variation(z, t, reduction="avg")


def test_coefficient_ranges():
    z, t = jnp.zeros(3), jnp.ones(3)
    for bad in (-0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match="`skew`"):
            il.skew_forward_kl(z, t, skew=bad)
        with pytest.raises(ValueError, match="`skew`"):
            g.skew_reverse_kl_grad(z, t, skew=bad)
        assert np.isnan(jax.jit(lambda s: il.skew_reverse_kl(z, t, skew=s))(bad))
    for bad in (np.inf, np.nan):
        with pytest.raises(ValueError, match="`alpha`"):
            il.alpha_divergence(z, t, alpha=bad)
        assert np.isnan(jax.jit(lambda a: il.alpha_divergence(z, t, alpha=a))(bad))
    with pytest.raises(TypeError, match="alpha_divergence"):
        il.alpha_divergence(z, t, alhpa=0.5)  # pyright: ignore[reportCallIssue]


@pytest.mark.slow
def test_axes_vmap_and_half_precision():
    z, t = _pair((2, 3, 4))
    for loss, _, opts in _FAMILIES.values():
        last = loss(z, t, **opts)
        np.testing.assert_allclose(
            loss(np.moveaxis(z, -1, 0), np.moveaxis(t, -1, 0), axis=0, **opts), last, rtol=1e-13
        )
        mapped = jax.vmap(lambda a, b, f=loss, o=opts: f(a, b, **o))(z, t)
        np.testing.assert_allclose(mapped, last, rtol=1e-13)
        flat = loss(z.reshape(2, 12), t.reshape(2, 12), **opts)
        np.testing.assert_allclose(loss(z, t, axis=(1, 2), **opts), flat, rtol=1e-13)
        half = loss(jnp.asarray(z, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16), **opts)
        assert half.dtype == jnp.float32
