"""The gradient comparison harness: compare_gradients, GradientReport, gradient_table."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infoloss_jax as il
from infoloss_jax import gradients as g
from infoloss_jax._harness import (
    ArgumentReport,
    GradientReport,
    GradientTable,
    compare_gradients,
    gradient_table,
)

_rng = np.random.default_rng(7)
LOGITS = 1.5 * _rng.standard_normal((3, 4))
LOGITS[0, 3] = -np.inf
TARGETS = _rng.dirichlet(np.ones(4), size=3)
TARGETS[0, 3] = 0.0
TARGETS /= TARGETS.sum(-1, keepdims=True)


def _wrong_entropy_grad(z):
    """A classic slip: -p log p without the +H centring term (does not sum to zero)."""
    log_p = jax.nn.log_softmax(z)
    p = jnp.exp(log_p)
    return jnp.where(p > 0, -p * jnp.where(p > 0, log_p, 0.0), 0.0)


def test_correct_gradient_agrees_to_round_off_float64():
    z, y = jnp.asarray(LOGITS), jnp.asarray(TARGETS)
    report = compare_gradients(il.softmax_cross_entropy, g.softmax_cross_entropy_grad, z, y)
    assert isinstance(report, GradientReport)
    assert report.name == "softmax_cross_entropy"
    (arg,) = report.arguments
    assert isinstance(arg, ArgumentReport)
    assert (arg.argnum, arg.shape, arg.dtype) == (0, (3, 4), "float64")
    assert arg.max_rel_error <= 1e-12
    assert arg.cosine_similarity == pytest.approx(1.0, abs=1e-14)
    assert arg.analytic_fd_error < 1e-8 and arg.autodiff_fd_error < 1e-8
    assert arg.fd_entries == 12 and arg.fd_skipped == 0
    assert arg.finite and report.ok() and report.ok(rtol=1e-12, atol=0.0, fd_rtol=1e-8)


def test_deliberately_wrong_gradient_is_reported():
    z = jnp.asarray(LOGITS)
    report = compare_gradients(il.entropy, _wrong_entropy_grad, z, name="wrong entropy")
    (arg,) = report.arguments
    assert not report.ok()
    assert not report.ok(rtol=1e-3, atol=1e-3)
    assert arg.max_rel_error > 0.1
    assert arg.cosine_similarity < 0.99
    assert arg.analytic_fd_error > 0.1  # the finite differences side with autodiff
    assert arg.autodiff_fd_error < 1e-8
    text = str(report)
    assert "wrong entropy" in text and "NO" in text
    assert "color:#b00020" in report._repr_html_()


def test_scaled_gradient_fails_but_sign_flip_has_cosine_minus_one():
    z = jnp.asarray(LOGITS)
    flipped = compare_gradients(il.entropy, lambda x: -g.entropy_grad(x), z)
    assert not flipped.ok()
    assert flipped.arguments[0].cosine_similarity == pytest.approx(-1.0, abs=1e-12)
    scaled = compare_gradients(il.entropy, lambda x: 1.001 * g.entropy_grad(x), z)
    assert not scaled.ok()
    assert scaled.ok(rtol=1e-2)


def test_nan_and_inf_are_reported_explicitly():
    z = jnp.asarray(LOGITS)

    def poisoned(x):
        return g.entropy_grad(x).at[1, 2].set(jnp.nan).at[2, 0].set(jnp.inf)

    report = compare_gradients(il.entropy, poisoned, z, finite_differences=False)
    (arg,) = report.arguments
    assert arg.analytic_nonfinite == 2 and arg.autodiff_nonfinite == 0
    assert not arg.finite and not report.ok(rtol=1.0, atol=1.0)
    assert arg.max_rel_error <= 1e-12  # errors are over the finite entries only
    assert "analytic: 2" in str(report)
    assert arg.analytic_fd_error is None and arg.fd_entries == 0


def test_zero_gradient_is_not_a_relative_error():
    # Uniform logits: the entropy is at its maximum and its gradient is 0; with 4 classes
    # p = 1/4 and H = -log p hold exactly in floating point, so both gradients are exactly 0.
    report = compare_gradients(il.entropy, g.entropy_grad, jnp.zeros((2, 4), jnp.float32))
    (arg,) = report.arguments
    assert arg.scale == 0 and arg.max_rel_error == 0
    assert arg.analytic_fd_error < 1e-3 and report.ok(fd_rtol=1e-3)


def test_float32_inputs_and_float64_finite_differences():
    z, y = jnp.asarray(LOGITS, jnp.float32), jnp.asarray(TARGETS, jnp.float32)
    report = compare_gradients(il.softmax_cross_entropy, g.softmax_cross_entropy_grad, z, y)
    (arg,) = report.arguments
    assert arg.dtype == "float32"
    assert arg.max_rel_error <= 1e-5
    # float32 gradients against float64 differences: float32 round-off, not FD error.
    assert 0 < arg.analytic_fd_error < 1e-5
    assert report.ok()
    assert not report.ok(rtol=1e-12, atol=0.0) or arg.max_abs_error == 0


def test_two_arguments_and_jitted_or_eager_functions():
    z = jnp.asarray(LOGITS[1:])
    t = jnp.asarray(2.0 * _rng.standard_normal((2, 4)))
    grad = jax.jit(functools.partial(g.forward_kl_grad, temperature=2.0, argnums=(0, 1)))
    loss = functools.partial(il.forward_kl, temperature=2.0)
    for jit in (True, False):
        report = compare_gradients(loss, grad, z, t, argnums=(0, 1), jit=jit)
        assert report.name == "forward_kl"  # unwrapped from the partial
        assert [a.argnum for a in report] == [0, 1]
        assert report.ok(rtol=1e-12, atol=0.0, fd_rtol=1e-8)


def test_integer_argument_is_left_alone_and_sampling_caps_fd():
    z = jnp.asarray(_rng.standard_normal((10, 4)))
    labels = jnp.asarray(_rng.integers(0, 4, 10))
    report = compare_gradients(
        il.softmax_cross_entropy_with_integer_labels,
        g.softmax_cross_entropy_with_integer_labels_grad,
        z,
        labels,
        fd_max_entries=7,
    )
    assert report.arguments[0].fd_entries == 7
    assert report.ok(fd_rtol=1e-8)


def test_argument_errors():
    z = jnp.asarray(LOGITS)
    labels = jnp.zeros(3, jnp.int32)
    loss = il.softmax_cross_entropy_with_integer_labels
    grad = g.softmax_cross_entropy_with_integer_labels_grad
    with pytest.raises(TypeError, match="`argnums`"):
        compare_gradients(loss, grad, z, labels, argnums=1)
    with pytest.raises(ValueError, match="`argnums`"):
        compare_gradients(loss, grad, z, labels, argnums=4)
    with pytest.raises(ValueError, match="`grad_fn`"):
        compare_gradients(loss, lambda a, b: (grad(a, b), grad(a, b)), z, labels)
    with pytest.raises(ValueError, match="`grad_fn`"):
        compare_gradients(loss, lambda a, b: grad(a, b)[:2], z, labels)


def test_report_is_frozen_and_renders():
    report = compare_gradients(il.entropy, g.entropy_grad, jnp.asarray(LOGITS))
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.name = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.arguments[0].max_abs_error = 1.0
    text = str(report)
    assert text.splitlines()[0].startswith("loss") and "max rel err" in text
    assert "entropy" in text.splitlines()[2]
    assert report._repr_markdown_().startswith("| loss |")
    html = report._repr_html_()
    assert html.startswith("<table") and "<td>entropy</td>" in html


@functools.cache
def _default_table() -> GradientTable:
    return gradient_table()


@pytest.mark.slow
def test_gradient_table_covers_every_loss_and_passes():
    table = _default_table()
    names = [report.name for report in table]
    for loss in (
        "softmax_cross_entropy",
        "softmax_cross_entropy_with_integer_labels",
        "entropy",
        "log_partition",
        "z_loss",
        "forward_kl (T=2)",
        "reverse_kl (T=0.5)",
        "jensen_shannon (beta=0.5)",
        "kl_divergence",
        "kl_divergence_with_log_targets",
        "generalized_kl_divergence",
        "sigmoid_binary_cross_entropy (pos_weight)",
        "binary_entropy",
        "softmax_cross_entropy Hessian-vector product",
        "entropy Hessian-vector product",
    ):
        assert loss in names
    assert len(table) == len(names) >= 19
    assert all(isinstance(r, GradientReport) for r in table)
    assert table.ok(rtol=1e-12, atol=1e-15)
    for report in table:
        for arg in report:
            assert arg.dtype == "float64"
            assert arg.analytic_fd_error < 1e-6, report.name
    assert table["entropy"] is table[names.index("entropy")]
    assert str(table).count("\n") >= len(names) + 1
    assert table._repr_html_().count("<tr") == 1 + sum(len(r.arguments) for r in table)
    assert table._repr_markdown_().count("\n") == 1 + sum(len(r.arguments) for r in table)


def test_gradient_table_float32_subset_and_errors():
    names = ["entropy", "jensen_shannon (beta=0.2, T=1.5)"]
    table = gradient_table(dtype=jnp.float32, seed=3, names=names, finite_differences=False)
    assert [r.name for r in table] == names
    assert table.ok()
    assert all(a.dtype == "float32" and a.analytic_fd_error is None for r in table for a in r)
    with pytest.raises(ValueError, match="`names`"):
        gradient_table(names=["no such loss"])
    with pytest.raises(ValueError, match="`shape`"):
        gradient_table(shape=(1, 5))
    with pytest.raises(KeyError):
        table["no such loss"]


def test_exported_from_the_package():
    assert il.compare_gradients is compare_gradients
    assert il.gradient_table is gradient_table
    assert il.GradientReport is GradientReport
