"""Closed-form gradients (`infoloss_jax.gradients`) against autodiff of plain implementations.

The plain references (`infoloss_jax.gradients._plain`, which imports nothing from the library)
use no custom derivative rules, so `jax.grad` of them is an independent check of each closed
form (the core losses' own `custom_jvp` rules share the closed forms' kernels, so agreeing with
them checks the wiring, not the formulas). Every declared divergence brings its cases (its
`checks`, and the end points of its coefficient). Inputs contain -inf logits (excluded classes),
exact-zero target probabilities and `where` masks.
"""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import infoloss_jax as il
import infoloss_jax.core._cross_entropy as ce
import infoloss_jax.core._divergences as dv
import infoloss_jax.core._entropy as en
import infoloss_jax.core._log_partition as lp
from infoloss_jax import gradients as g
from infoloss_jax.engine._loss_spec import declared_divergences, loss_named
from infoloss_jax.gradients import _plain

ref_soft_ce = _plain.softmax_cross_entropy
ref_int_ce = _plain.softmax_cross_entropy_with_integer_labels
ref_entropy = _plain.entropy

B, K = 3, 5
NEG_INF = -np.inf

# ------------------------------------------------------------------------------------ inputs
_rng = np.random.default_rng(1234)
_LOGITS = 2.0 * _rng.standard_normal((B, K))
_LOGITS[0, K - 1] = NEG_INF  # excluded class
_TARGET_LOGITS = 2.0 * _rng.standard_normal((B, K))
_TARGET_LOGITS[0, K - 1] = NEG_INF
_TARGET_LOGITS[1, 0] = NEG_INF  # zero target probability where the model has mass
_WHERE = np.ones((B, K), bool)
_WHERE[2, 1] = False
_PROBS = np.exp(np.where(_WHERE, _TARGET_LOGITS, NEG_INF) - 3.0)
_PROBS /= _PROBS.sum(-1, keepdims=True)
_LABELS = np.array([0, 3, 2])
_CLASS_WEIGHTS = 0.5 + _rng.random(K)
_BINARY_LOGITS = 2.0 * _rng.standard_normal((B, K))
_BINARY_LABELS = np.where(_rng.random((B, K)) < 0.3, 0.0, _rng.random((B, K)))
_POS_WEIGHT = 0.5 + _rng.random(K)
_TANGENT = _rng.standard_normal((B, K))
# Reverse KL needs target mass wherever the model has mass.
_REVERSE_TARGET = np.where(np.isfinite(_LOGITS), 2.0 * _rng.standard_normal((B, K)), NEG_INF)


def _inputs(dtype):
    cast = lambda x: jnp.asarray(x, dtype)
    return {
        "z": cast(_LOGITS),
        "t": cast(_TARGET_LOGITS),
        "t_rev": cast(_REVERSE_TARGET),
        "y": cast(_PROBS),
        "labels": jnp.asarray(_LABELS, jnp.int32),
        "w": cast(_CLASS_WEIGHTS),
        "where": jnp.asarray(_WHERE),
        "bz": cast(_BINARY_LOGITS),
        "by": cast(_BINARY_LABELS),
        "pw": cast(_POS_WEIGHT),
        "v": cast(_TANGENT),
    }


# ------------------------------------------------------------------------------ the cases
P = functools.partial
PAIR = (0, 1)

# name -> (reference loss, library loss, closed form, argument names, argnums, options)
CASES = {
    "soft_ce": (ref_soft_ce, ce.softmax_cross_entropy, g.softmax_cross_entropy_grad,
                ("z", "y"), 0, {}),
    "soft_ce_where": (ref_soft_ce, ce.softmax_cross_entropy, g.softmax_cross_entropy_grad,
                      ("z", "y"), 0, {"where": "where"}),
    "soft_ce_options": (ref_soft_ce, ce.softmax_cross_entropy, g.softmax_cross_entropy_grad,
                        ("z", "y"), 0, dict(where="where", label_smoothing=0.2, z_loss=0.05,
                                            logit_softcap=3.0)),
    "int_ce": (ref_int_ce, ce.softmax_cross_entropy_with_integer_labels,
               g.softmax_cross_entropy_with_integer_labels_grad, ("z", "labels"), 0, {}),
    "int_ce_options": (ref_int_ce, ce.softmax_cross_entropy_with_integer_labels,
                       g.softmax_cross_entropy_with_integer_labels_grad, ("z", "labels"), 0,
                       dict(ignore_index=2, label_smoothing=0.1, class_weights="w", z_loss=0.02,
                            logit_softcap=4.0)),
    "entropy": (ref_entropy, en.entropy, g.entropy_grad, ("z",), 0, {}),
    "entropy_where_bits": (ref_entropy, en.entropy, g.entropy_grad, ("z",), 0,
                           dict(where="where", base=2)),
    "entropy_from_probs": (_plain.entropy_from_probs, en.entropy_from_probs,
                           g.entropy_from_probs_grad, ("y",), 0, {"where": "where"}),
    "log_partition": (_plain.log_partition, lp.log_partition, g.log_partition_grad, ("z",), 0,
                      {"where": "where"}),
    "z_loss": (_plain.z_loss, lp.z_loss, g.z_loss_grad, ("z",), 0, {"where": "where"}),
    "kl_divergence": (_plain.kl_divergence, dv.kl_divergence, g.kl_divergence_grad,
                      ("log_q", "y"), PAIR, {}),
    "kl_log_targets": (_plain.kl_divergence_with_log_targets, dv.kl_divergence_with_log_targets,
                       g.kl_divergence_with_log_targets_grad, ("log_q", "log_y"), PAIR, {}),
    "generalized_kl": (_plain.generalized_kl_divergence, dv.generalized_kl_divergence,
                       g.generalized_kl_divergence_grad, ("log_q", "y"), PAIR, {}),
    "bce_pos_weight": (_plain.sigmoid_binary_cross_entropy, ce.sigmoid_binary_cross_entropy,
                       g.sigmoid_binary_cross_entropy_grad, ("bz", "by"), PAIR,
                       {"pos_weight": "pw"}),
    "bce": (_plain.sigmoid_binary_cross_entropy, ce.sigmoid_binary_cross_entropy,
            g.sigmoid_binary_cross_entropy_grad, ("bz", "by"), PAIR, {}),
    "binary_entropy": (lambda z, base: _plain.binary_entropy(z) / np.log(base),
                       en.binary_entropy, g.binary_entropy_grad, ("bz",), 0, {"base": 2}),
}  # fmt: skip

# The library's options where they differ from the reference's (a coefficient's end point).
_LIBRARY_OPTIONS: dict[str, dict] = {}


def _target(div) -> str:
    return "t_rev" if div.target_support else "t"


def _divergence_cases():
    """Each declared divergence at the options it declares (``where=True``: the class mask),
    and at each end point of its coefficient against the plain end-point divergence."""
    for div in declared_divergences():
        loss, grad = getattr(il, div.name), getattr(g, f"{div.name}_grad")
        for label, options in div.checks:
            options = {k: "where" if v is True else v for k, v in options.items()}
            name = f"{div.name} ({label})"
            CASES[name] = (
                getattr(_plain, div.name),
                loss,
                grad,
                ("z", _target(div)),
                PAIR,
                options,
            )
        for at, kind in div.coefficient.endpoints if div.coefficient else ():
            name = f"{div.name} ({div.coefficient.name}={at:g})"
            at_point = {div.coefficient.name: at}
            args = ("z", "t_rev" if loss_named(kind).target_support else _target(div))
            CASES[name] = (getattr(_plain, kind), loss, P(grad, **at_point), args, PAIR, {})
            _LIBRARY_OPTIONS[name] = at_point


_divergence_cases()


def _resolve(names, options, dtype):
    inputs = _inputs(dtype)
    inputs["log_q"] = jax.nn.log_softmax(inputs["z"])
    inputs["log_q"] = jnp.where(jnp.isfinite(inputs["log_q"]), inputs["log_q"], -30.0)
    inputs["log_y"] = jnp.log(inputs["y"])
    args = tuple(inputs[n] for n in names)
    kwargs = {k: inputs[v] if isinstance(v, str) else v for k, v in options.items()}
    return args, kwargs


def _normwise(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.isfinite(a)), a
    assert np.all(np.isfinite(b)), b
    scale = np.max(np.abs(b))
    return np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _gradients_of_case(name, dtype):
    """(closed form, autodiff of the plain reference, autodiff of the library loss), traceable."""
    ref, library, closed_form, names, argnums, options = CASES[name]
    args, kwargs = _resolve(names, options, dtype)
    grad_kwargs = dict(kwargs, argnums=PAIR) if argnums == PAIR else kwargs
    analytic = _as_tuple(closed_form(*args, **grad_kwargs))
    plain = jax.grad(lambda *a: jnp.sum(ref(*a, **kwargs)), argnums=argnums)(*args)
    lib_kwargs = {**kwargs, **_LIBRARY_OPTIONS.get(name, {})}
    lib = jax.grad(lambda *a: jnp.sum(library(*a, **lib_kwargs)), argnums=argnums)(*args)
    return analytic, _as_tuple(plain), _as_tuple(lib)


@functools.cache
def _all_gradients(dtype):
    """Every case under one `jax.jit`: one compilation per dtype instead of three per case."""
    compute = jax.jit(lambda: {name: _gradients_of_case(name, dtype) for name in CASES})
    return jax.device_get(compute())


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_closed_form_matches_autodiff(name, dtype, tol):
    analytic, plain, lib = _all_gradients(dtype)[name]
    for a, r, lb in zip(analytic, plain, lib, strict=True):
        assert a.dtype == dtype
        assert _normwise(a, r) <= tol, (name, _normwise(a, r))
        assert _normwise(a, lb) <= tol, (name, _normwise(a, lb))


# ------------------------------------------------------------------- masks and temperature
def test_masked_and_excluded_classes_get_exact_zero():
    z, t, where = jnp.asarray(_LOGITS), jnp.asarray(_TARGET_LOGITS), jnp.asarray(_WHERE)
    y = jnp.asarray(_PROBS)
    for grad in (
        g.softmax_cross_entropy_grad(z, y, where=where),
        g.entropy_grad(z, where=where),
        *g.forward_kl_grad(z, t, where=where, argnums=PAIR),
        *g.jensen_shannon_grad(z, t, where=where, temperature=2.0, argnums=PAIR),
    ):
        assert float(grad[2, 1]) == 0.0  # masked by `where`
        assert float(grad[0, K - 1]) == 0.0  # -inf logit
        assert np.all(np.isfinite(grad))


def test_temperature_is_a_one_over_t_chain_factor():
    z, t = jnp.asarray(_LOGITS), jnp.asarray(_TARGET_LOGITS)
    temperature = 3.0
    for fn in (g.forward_kl_grad, g.jensen_shannon_grad):
        scaled = fn(z, t, temperature=temperature, argnums=PAIR)
        plain = fn(z / temperature, t / temperature, argnums=PAIR)
        for a, b in zip(scaled, plain, strict=True):
            np.testing.assert_allclose(a, b / temperature, rtol=1e-13, atol=1e-15)


def test_fully_masked_row_has_zero_gradient():
    @jax.jit
    def grads(z, y, labels, where):
        return (
            g.softmax_cross_entropy_grad(z, y, where=where),
            g.entropy_grad(z, where=where),
            g.softmax_cross_entropy_with_integer_labels_grad(z, labels, where=where),
        )

    where = jnp.asarray(_WHERE).at[1].set(False)
    y = jnp.asarray(_PROBS).at[1].set(0.0)
    for grad in grads(jnp.asarray(_LOGITS), y, jnp.asarray(_LABELS), where):
        assert np.all(grad[1] == 0)


def test_integer_labels_ignore_and_out_of_range():
    z = jnp.asarray(_LOGITS)
    labels = jnp.array([0, -100, 7])
    grad = g.softmax_cross_entropy_with_integer_labels_grad(z, labels, ignore_index=-100)
    assert np.all(np.isfinite(grad[0]))
    assert np.all(grad[1] == 0)  # ignored row
    assert np.all(np.isnan(grad[2]))  # label 7 >= K poisons its row


def test_integer_labels_other_class_axis_and_vmap():
    grad = g.softmax_cross_entropy_with_integer_labels_grad

    @jax.jit
    def three_ways(z, labels):
        return grad(z, labels), grad(z.T, labels, axis=0).T, jax.vmap(grad)(z, labels)

    by_rows, by_columns, mapped = three_ways(jnp.asarray(_LOGITS[1:]), jnp.asarray(_LABELS[1:]))
    np.testing.assert_allclose(by_columns, by_rows, rtol=1e-14)
    np.testing.assert_allclose(mapped, by_rows, rtol=1e-14)


def test_integer_labels_tuple_axis_and_per_example_where():
    grad = g.softmax_cross_entropy_with_integer_labels_grad
    z = jnp.asarray(_rng.standard_normal((2, 3, 4)))
    labels = jnp.array([5, 11])  # row-major flat indices into the (3, 4) class block
    keep = jnp.array([True, False])  # a per-example mask shaped like the labels

    @jax.jit
    def compute(z, labels, keep):
        loss = lambda x: jnp.sum(
            ce.softmax_cross_entropy_with_integer_labels(x, labels, axis=(1, 2), where=keep)
        )
        return (
            grad(z, labels, axis=(1, 2), where=keep),
            jax.grad(loss)(z),
            grad(z.reshape(2, 12), labels),
        )

    by_block, autodiff, flat = compute(z, labels, keep)
    assert _normwise(by_block, autodiff) <= 1e-12
    np.testing.assert_allclose(by_block[0].reshape(12), flat[0], rtol=1e-14)
    assert np.all(by_block[1] == 0)  # the dropped example


def test_half_precision_returns_float32():
    z = jnp.asarray(_LOGITS, jnp.bfloat16)
    assert g.entropy_grad(z).dtype == jnp.float32
    assert g.softmax_cross_entropy_with_integer_labels_grad(z, jnp.asarray(_LABELS)).dtype == (
        jnp.float32
    )


# ------------------------------------------------------------------ Hessians and HVPs
def _row_hessians(loss, z, *rest):
    return jax.vmap(jax.hessian(loss), in_axes=(0,) + (0,) * len(rest))(z, *rest)


@functools.partial(jax.jit, static_argnums=0)
def _curvature_pairs(dtype):
    """(closed form, autodiff) pairs of Hessians and HVPs, all in one compiled function."""
    z, y, where = jnp.asarray(_LOGITS, dtype), jnp.asarray(_PROBS, dtype), jnp.asarray(_WHERE)
    labels, v = jnp.asarray(_LABELS), jnp.asarray(_TANGENT, dtype)

    def hvp(loss):
        return jax.jvp(jax.grad(lambda a: jnp.sum(loss(a))), (z,), (v,))[1]

    return {
        "ce_hessian": (
            g.softmax_cross_entropy_hessian(z, y, where=where),
            _row_hessians(lambda a, b, w: ref_soft_ce(a, b, where=w), z, y, where),
        ),
        "int_ce_hessian": (
            g.softmax_cross_entropy_hessian(z, labels),
            _row_hessians(lambda a, b: ref_int_ce(a, b), z, labels),
        ),
        "entropy_hessian": (
            g.entropy_hessian(z, where=where),
            _row_hessians(lambda a, w: ref_entropy(a, where=w), z, where),
        ),
        "entropy_hessian_bits": (
            g.entropy_hessian(z, base=2),
            _row_hessians(lambda a: ref_entropy(a, base=2), z),
        ),
        "ce_hvp": (
            g.softmax_cross_entropy_hvp(z, y, v, where=where),
            hvp(lambda a: ref_soft_ce(a, y, where=where)),
        ),
        "entropy_hvp": (
            g.entropy_hvp(z, v, where=where),
            hvp(lambda a: ref_entropy(a, where=where)),
        ),
        # The library's custom_jvp losses support forward mode, so jvp-of-grad works on them.
        "entropy_hvp_library": (
            g.entropy_hvp(z, v, where=where),
            hvp(lambda a: en.entropy(a, where=where)),
        ),
    }


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
def test_hessians_and_hvps_match_autodiff(dtype, tol):
    for name, (closed_form, autodiff) in _curvature_pairs(dtype).items():
        assert closed_form.dtype == dtype
        assert _normwise(closed_form, autodiff) <= tol, name


def test_hessian_is_hvp_against_basis_and_has_null_vector_one():
    z, y = jnp.asarray(_LOGITS), jnp.asarray(_PROBS)
    h = g.softmax_cross_entropy_hessian(z, y)
    hv = g.softmax_cross_entropy_hvp(z, y, jnp.asarray(_TANGENT))
    np.testing.assert_allclose(jnp.einsum("bij,bj->bi", h, jnp.asarray(_TANGENT)), hv, atol=1e-15)
    np.testing.assert_allclose(h.sum(-1), 0.0, atol=1e-15)
    np.testing.assert_allclose(g.entropy_hessian(z).sum(-1), 0.0, atol=1e-15)


# ------------------------------------------------------------------------ properties
_ROW_VALUES = hnp.arrays(
    np.float64,
    (4, 6),
    elements=st.floats(-30, 30, allow_nan=False, allow_infinity=False),
)
_MASKS = hnp.arrays(np.bool_, (4, 6))


@jax.jit
def _class_sums(z, y_logits, keep):
    keep = keep.at[:, 0].set(True)  # at least one class per row
    z = jnp.where(keep, z, -jnp.inf)
    y = jax.nn.softmax(jnp.where(keep, y_logits, -jnp.inf))
    return (
        jnp.sum(g.softmax_cross_entropy_grad(z, y), -1),
        jnp.sum(g.entropy_grad(z), -1),
        jnp.sum(g.softmax_cross_entropy_with_integer_labels_grad(z, jnp.zeros(4, int)), -1),
    )


@settings(max_examples=25)  # small by default; the laws run at 1,000 in test_properties (slow)
@given(_ROW_VALUES, _ROW_VALUES, _MASKS)
def test_gradients_sum_to_zero_along_classes(z, y_logits, keep):
    for sums in _class_sums(z, y_logits, keep):
        np.testing.assert_allclose(sums, 0.0, atol=1e-12)


# ---------------------------------------------------------------------------- errors
def test_errors_name_the_argument():
    z = jnp.asarray(_LOGITS)
    with pytest.raises(TypeError, match="`logits`"):
        g.entropy_grad(jnp.arange(5))
    with pytest.raises(ValueError, match="`labels`"):
        g.softmax_cross_entropy_grad(z, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="`labels`"):
        g.softmax_cross_entropy_with_integer_labels_grad(z, jnp.zeros(4, int))
    with pytest.raises(TypeError, match="`labels`"):
        g.softmax_cross_entropy_with_integer_labels_grad(z, jnp.zeros(3))
    with pytest.raises(ValueError, match="`class_weights`"):
        g.softmax_cross_entropy_with_integer_labels_grad(
            z, jnp.asarray(_LABELS), class_weights=jnp.ones(4)
        )
    with pytest.raises(ValueError, match="`tangent`"):
        g.entropy_hvp(z, jnp.ones(5))
    with pytest.raises(ValueError, match="`axis`"):
        g.entropy_hessian(z, axis=(0, 1))
    with pytest.raises(ValueError, match="`argnums`"):
        g.forward_kl_grad(z, z, argnums=2)
    with pytest.raises(TypeError, match="`argnums`"):
        jax.jit(g.forward_kl_grad)(z, z, argnums=(0, 1))
    with pytest.raises(ValueError, match="`target_logits`"):
        g.reverse_kl_grad(z, z[:2])
    with pytest.raises(ValueError, match="`beta`"):
        g.jensen_shannon_grad(z, z, beta=1.5)
    with pytest.raises(ValueError, match="`temperature`"):
        g.forward_kl_grad(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="`pos_weight`"):
        g.sigmoid_binary_cross_entropy_grad(z, z, pos_weight=jnp.ones(4))
    with pytest.raises(ValueError, match="`targets`"):
        g.kl_divergence_grad(z, jnp.ones(4))
    with pytest.raises(ValueError, match="`label_smoothing`"):
        g.softmax_cross_entropy_grad(z, z, label_smoothing=1.0)
