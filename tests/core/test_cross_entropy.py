"""Cross-entropy family: optax parity, safety where optax gives NaN, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import infoloss_jax as il

RNG = np.random.default_rng(1)


def random_probs(shape, axis=-1):
    x = RNG.normal(size=shape)
    return np.asarray(jax.nn.softmax(x, axis=axis))


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape,axis", [((7,), -1), ((4, 7), -1), ((3, 4, 5), 1), ((2, 3, 4), (1, 2)), ((5, 3), 0)]
)
@pytest.mark.parametrize("masked", [False, True])
def test_soft_label_cross_entropy_matches_optax(shape, axis, masked):
    logits = RNG.normal(size=shape) * 2
    labels = random_probs(shape, axis)
    where = RNG.random(shape) > 0.3 if masked else None
    ours = jax.jit(lambda x, y: il.softmax_cross_entropy(x, y, axis=axis, where=where))
    theirs = optax.losses.softmax_cross_entropy(logits, labels, axis=axis, where=where)
    np.testing.assert_allclose(ours(logits, labels), theirs, rtol=1e-12, atol=1e-12)
    grad_ours = jax.grad(lambda x: il.softmax_cross_entropy(x, labels, axis=axis).sum())(logits)
    grad_theirs = jax.grad(
        lambda x: optax.losses.softmax_cross_entropy(x, labels, axis=axis).sum()
    )(logits)
    np.testing.assert_allclose(grad_ours, grad_theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape,axis", [((9,), -1), ((4, 9), -1), ((3, 5, 4), 1), ((2, 3, 4), (1, 2))]
)
@pytest.mark.parametrize("masked", [False, True])
def test_integer_label_cross_entropy_matches_optax(shape, axis, masked):
    logits = RNG.normal(size=shape) * 2
    axes = (axis,) if isinstance(axis, int) else axis
    axes = tuple(a % len(shape) for a in axes)
    label_shape = tuple(d for i, d in enumerate(shape) if i not in axes)
    num_classes = int(np.prod([shape[a] for a in axes]))
    labels = RNG.integers(0, num_classes, size=label_shape)
    where = None
    if masked:
        where = RNG.random(shape) > 0.3
        flat = np.moveaxis(where, axes, range(-len(axes), 0)).reshape(label_shape + (-1,))
        labels = np.argmax(flat, axis=-1)  # a label on an included class
    ours = jax.jit(
        lambda x, y: il.softmax_cross_entropy_with_integer_labels(x, y, axis=axis, where=where)
    )
    theirs = optax.losses.softmax_cross_entropy_with_integer_labels(
        logits, labels, axis=axis, where=where
    )
    np.testing.assert_allclose(ours(logits, labels), theirs, rtol=1e-12, atol=1e-12)


def test_integer_labels_per_example_where_matches_optax():
    logits, labels = RNG.normal(size=(6, 5)), RNG.integers(0, 5, size=6)
    keep = np.array([True, False, True, True, False, True])
    ours = il.softmax_cross_entropy_with_integer_labels(logits, labels, where=keep)
    theirs = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels, where=keep)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    np.testing.assert_array_equal(ours[~keep], 0.0)


@pytest.mark.slow
def test_integer_and_one_hot_labels_agree_with_gradients():
    logits, labels = jnp.asarray(RNG.normal(size=(5, 6))), jnp.asarray(RNG.integers(0, 6, 5))
    one_hot = jax.nn.one_hot(labels, 6, dtype=logits.dtype)
    int_value, int_grad = jax.value_and_grad(
        lambda x: il.softmax_cross_entropy_with_integer_labels(x, labels).sum()
    )(logits)
    soft_value, soft_grad = jax.value_and_grad(
        lambda x: il.softmax_cross_entropy(x, one_hot).sum()
    )(logits)
    np.testing.assert_allclose(int_value, soft_value, rtol=1e-12)
    np.testing.assert_allclose(int_grad, soft_grad, atol=1e-14)
    np.testing.assert_allclose(int_grad, jax.nn.softmax(logits) - one_hot, atol=1e-14)


@pytest.mark.slow
def test_safe_at_neg_inf_logits_where_optax_gives_nan():
    logits = jnp.array([[0.0, -jnp.inf, 1.0], [-jnp.inf, -jnp.inf, 2.0]])
    labels = jnp.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
    assert np.any(np.isnan(optax.losses.softmax_cross_entropy(logits, labels)))  # optax #896
    value, grad = jax.value_and_grad(lambda x: il.softmax_cross_entropy(x, labels).sum())(logits)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[:, :2][np.isinf(logits[:, :2])], 0.0)
    np.testing.assert_allclose(
        il.safe_softmax_cross_entropy(logits, labels), il.softmax_cross_entropy(logits, labels)
    )
    label_grad = jax.grad(lambda y: il.softmax_cross_entropy(logits, y).sum())(labels)
    assert np.all(np.isfinite(label_grad))


def test_label_mass_on_excluded_class_is_infinite_not_nan():
    value = il.softmax_cross_entropy(jnp.array([0.0, -jnp.inf]), jnp.array([0.5, 0.5]))
    assert float(value) == np.inf
    assert float(il.softmax_cross_entropy_with_integer_labels(jnp.array([0.0, -jnp.inf]), 1)) == (
        np.inf
    )


@pytest.mark.slow
def test_fully_masked_rows_give_zero_loss_and_gradient():
    logits = jnp.asarray(RNG.normal(size=(3, 4)))
    where = jnp.array([[True] * 4, [False] * 4, [True, False, True, False]])
    labels = jnp.array([1, 2, 0])
    for fn, target in [
        (il.softmax_cross_entropy_with_integer_labels, labels),
        (il.softmax_cross_entropy, jnp.asarray(random_probs((3, 4)))),
    ]:
        value, grad = jax.value_and_grad(lambda x, f=fn, t=target: f(x, t, where=where).sum())(
            logits
        )
        assert np.isfinite(value)
        np.testing.assert_array_equal(grad[1], 0.0)
        assert float(fn(logits, target, where=where)[1]) == 0.0


def test_huge_logits_stay_finite_in_float32():
    logits = jnp.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 1e30]], jnp.float32)
    labels = jnp.array([0, 1])
    value, grad = jax.value_and_grad(
        lambda x: il.softmax_cross_entropy_with_integer_labels(x, labels).sum()
    )(logits)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # At this magnitude float32 rounding leaves only the order of the loss; it stays finite.
    moderate = jnp.array([[30.0, -30.0, 0.0], [-30.0, 30.0, 30.0]], jnp.float32)
    np.testing.assert_allclose(
        il.softmax_cross_entropy_with_integer_labels(moderate, labels),
        [0.0, np.log(2)],
        atol=1e-6,
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_returns_float32(dtype):
    logits = jnp.asarray(RNG.normal(size=(4, 50)), dtype)
    labels = jnp.asarray(RNG.integers(0, 50, 4))
    out = il.softmax_cross_entropy_with_integer_labels(logits, labels)
    assert out.dtype == jnp.float32
    reference = il.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float64), labels)
    np.testing.assert_allclose(out, reference, rtol=1e-6)
    probs = jax.nn.softmax(logits.astype(jnp.float32)).astype(dtype)
    assert il.softmax_cross_entropy(logits, probs).dtype == jnp.float32
    assert il.sigmoid_binary_cross_entropy(logits, jnp.zeros_like(logits)).dtype == jnp.float32


def test_out_of_range_label_poisons_only_its_row():
    logits = jnp.asarray(RNG.normal(size=(3, 4)))
    out = il.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 4, -1]))
    assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])


@pytest.mark.parametrize("pos_weight", [None, 2.5])
def test_sigmoid_binary_cross_entropy_matches_optax_and_torch_formula(pos_weight):
    logits, labels = RNG.normal(size=(4, 3)) * 3, RNG.random((4, 3))
    ours = il.sigmoid_binary_cross_entropy(logits, labels, pos_weight=pos_weight)
    if pos_weight is None:
        theirs = optax.losses.sigmoid_binary_cross_entropy(logits, labels)
    else:
        log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
        theirs = -(pos_weight * labels * log_p + (1 - labels) * log_not_p)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    grad = jax.grad(
        lambda z: il.sigmoid_binary_cross_entropy(z, labels, pos_weight=pos_weight).sum()
    )(jnp.asarray(logits))
    w = 1.0 if pos_weight is None else pos_weight
    expected = (w * labels + 1 - labels) * jax.nn.sigmoid(logits) - w * labels
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-14)


def test_sigmoid_binary_cross_entropy_is_safe_at_infinite_logits():
    logits = jnp.array([jnp.inf, -jnp.inf, 1e30, -1e30], jnp.float32)
    labels = jnp.array([1.0, 0.0, 1.0, 0.0], jnp.float32)
    value, (g_logits, g_labels) = jax.value_and_grad(
        lambda z, y: il.sigmoid_binary_cross_entropy(z, y).sum(), argnums=(0, 1)
    )(logits, labels)
    assert float(value) == 0.0
    assert np.all(np.isfinite(g_logits))
    assert np.all(~np.isnan(g_labels))


def plain_soft_cross_entropy(logits, labels):
    return -jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1)


@pytest.mark.slow
def test_custom_jvp_matches_plain_autodiff_and_finite_differences():
    logits = jnp.asarray(RNG.normal(size=(3, 5)))
    labels = jnp.asarray(random_probs((3, 5)))
    ours = jax.grad(lambda x, y: il.softmax_cross_entropy(x, y).sum(), argnums=(0, 1))
    plain = jax.grad(lambda x, y: plain_soft_cross_entropy(x, y).sum(), argnums=(0, 1))
    for a, b in zip(ours(logits, labels), plain(logits, labels), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        jax.hessian(lambda x: il.softmax_cross_entropy(x, labels[0]))(logits[0]),
        jax.hessian(lambda x: plain_soft_cross_entropy(x, labels[0]))(logits[0]),
        rtol=1e-10,
        atol=1e-14,
    )
    check_grads(jax.jit(il.softmax_cross_entropy), (logits, labels), order=2)
    int_labels = jnp.array([0, 3, 4])
    check_grads(
        jax.jit(lambda x: il.softmax_cross_entropy_with_integer_labels(x, int_labels)),
        (logits,),
        order=2,
    )
    binary = jnp.asarray(RNG.random((3, 5)))
    check_grads(jax.jit(il.sigmoid_binary_cross_entropy), (logits, binary), order=2)


def test_cross_entropy_errors_name_the_argument():
    logits = jnp.zeros((4, 5))
    with pytest.raises(TypeError, match="`logits`"):
        il.softmax_cross_entropy_with_integer_labels(
            jnp.zeros((4, 5), jnp.int32), jnp.zeros(4, int)
        )
    with pytest.raises(TypeError, match="`labels`.*float"):
        il.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(4))
    with pytest.raises(ValueError, match="`labels`.*\\[4\\].*\\[3\\]"):
        il.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(3, int))
    with pytest.raises(ValueError, match="`logits`.*`labels`"):
        il.softmax_cross_entropy(logits, jnp.zeros((4, 6)))
    with pytest.raises(ValueError, match="int32\\[4\\].*softmax_cross_entropy_with_integer_labels"):
        il.softmax_cross_entropy(logits, jnp.array([0, 1, 4, 2], jnp.int32))  # class indices
    with pytest.raises(ValueError, match="softmax_cross_entropy_with_integer_labels"):
        il.safe_softmax_cross_entropy(logits, [0, 1, 4, 2])
    with pytest.raises(TypeError, match="`labels`"):  # integer one-hot labels are accepted
        il.softmax_cross_entropy(logits, jnp.zeros((4, 5), jnp.complex64))
    with pytest.raises(ValueError, match="`where`"):
        il.softmax_cross_entropy(logits, jnp.zeros((4, 5)), where=jnp.ones((3,), bool))
    with pytest.raises(ValueError, match="`labels`.*not broadcastable"):
        il.sigmoid_binary_cross_entropy(logits, jnp.zeros((3,)))
    with pytest.raises(TypeError, match="`where`.*bool"):
        il.softmax_cross_entropy(logits, jnp.zeros((4, 5)), where=jnp.ones((4, 5)))
