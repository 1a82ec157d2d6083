"""The gradient comparison harness: compare_gradients, GradientReport, gradient_table."""

import ast
import contextlib
import dataclasses
import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import plain_references
import pytest
import test_gradients

import infoloss_jax as il
import infoloss_jax.core._formulas as formulas
from infoloss_jax import gradients as g
from infoloss_jax.gradients._harness import (
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


@pytest.mark.slow
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


# ------------------------------------------------------------------- an honest comparison
# gradient_table differentiates plain implementations (infoloss_jax.gradients._plain), which
# share no kernel with the closed forms. First: they compute the library's losses. Then: a
# kernel scaled by 1.01 makes every row it feeds fail, in the table and in the closed-form tests.


def _plain_and_library_pairs():
    from infoloss_jax.gradients import _plain

    z = jnp.asarray(LOGITS)
    t = jnp.asarray(2.0 * _rng.standard_normal((3, 4))).at[0, 3].set(-jnp.inf)
    y, where = jnp.asarray(TARGETS), jnp.asarray(_rng.random((3, 4)) > 0.2).at[:, 0].set(True)
    labels = jnp.asarray([0, 2, 1])
    log_q = jax.nn.log_softmax(z)
    options = dict(label_smoothing=0.1, z_loss=0.01, logit_softcap=5.0)
    int_options = dict(options, ignore_index=2, class_weights=jnp.asarray([0.5, 1.0, 1.5, 2.0]))
    return {
        "softmax_cross_entropy": (
            _plain.softmax_cross_entropy(z, y, where=where, **options),
            il.softmax_cross_entropy(z, y, where=where, **options),
            plain_references.ref_soft_ce(z, y, where=where, **options),
        ),
        "integer labels": (
            _plain.softmax_cross_entropy_with_integer_labels(z, labels, **int_options),
            il.softmax_cross_entropy_with_integer_labels(z, labels, **int_options),
            plain_references.ref_int_ce(z, labels, **int_options),
        ),
        "entropy": (
            _plain.entropy(z, where=where, base=2),
            il.entropy(z, where=where, base=2),
            plain_references.ref_entropy(z, where=where, base=2),
        ),
        "entropy_from_probs": (
            _plain.entropy_from_probs(y, where=where),
            il.entropy_from_probs(y, where=where),
            plain_references.ref_entropy_from_probs(y, where=where),
        ),
        "log_partition": (
            _plain.log_partition(z, where=where),
            il.log_partition(z, where=where),
            plain_references.ref_log_partition(z, where=where),
        ),
        "z_loss": (_plain.z_loss(z), il.z_loss(z), plain_references.ref_log_partition(z) ** 2),
        "forward_kl": (
            _plain.forward_kl(z, t, temperature=2.0, where=where),
            il.forward_kl(z, t, temperature=2.0, where=where),
            plain_references.ref_forward_kl(z, t, temperature=2.0, where=where),
        ),
        "reverse_kl": (
            _plain.reverse_kl(t, z, temperature=0.5),
            il.reverse_kl(t, z, temperature=0.5),
            plain_references.ref_reverse_kl(t, z, temperature=0.5),
        ),
        "jensen_shannon": (
            _plain.jensen_shannon(z, t, beta=0.2, temperature=1.5, where=where),
            il.jensen_shannon(z, t, beta=0.2, temperature=1.5, where=where),
            plain_references.ref_js(z, t, beta=0.2, temperature=1.5, where=where),
        ),
        "jensen_shannon (beta=0)": (
            _plain.jensen_shannon(z, t, beta=0.0),
            il.jensen_shannon(z, t, beta=0.0),
            plain_references.ref_forward_kl(z, t),
        ),
        "kl_divergence": (
            _plain.kl_divergence(log_q, y),
            il.kl_divergence(log_q, y),
            plain_references.ref_kl_divergence(log_q, y),
        ),
        "kl_divergence_with_log_targets": (
            _plain.kl_divergence_with_log_targets(log_q, jnp.log(y)),
            il.kl_divergence_with_log_targets(log_q, jnp.log(y)),
            plain_references.ref_kl_log_targets(log_q, jnp.log(y)),
        ),
        "generalized_kl_divergence": (
            _plain.generalized_kl_divergence(log_q, 1.5 * y),
            il.generalized_kl_divergence(log_q, 1.5 * y),
            plain_references.ref_generalized_kl(log_q, 1.5 * y),
        ),
        "sigmoid_binary_cross_entropy": (
            _plain.sigmoid_binary_cross_entropy(z.at[0, 3].set(1.0), y, pos_weight=2.0),
            il.sigmoid_binary_cross_entropy(z.at[0, 3].set(1.0), y, pos_weight=2.0),
            plain_references.ref_bce(z.at[0, 3].set(1.0), y, pos_weight=2.0),
        ),
        "binary_entropy": (
            _plain.binary_entropy(z.at[0, 3].set(1.0)),
            il.binary_entropy(z.at[0, 3].set(1.0)),
            plain_references.ref_binary_entropy(z.at[0, 3].set(1.0)),
        ),
    }


@pytest.mark.parametrize("name", sorted(_plain_and_library_pairs()))
def test_plain_implementations_compute_the_library_losses(name):
    plain, library, reference = _plain_and_library_pairs()[name]
    chex.assert_trees_all_close(plain, library, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(plain, reference, rtol=1e-12, atol=1e-14)


def test_plain_implementations_have_no_custom_rules():
    """_plain imports nothing from the library and defines no custom derivative."""
    from infoloss_jax.gradients import _plain

    tree = ast.parse(inspect.getsource(_plain))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "jax", "jax.numpy"}, imported
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"custom_jvp", "custom_vjp", "defjvp", "defvjp", "stop_gradient"}


# kernel of infoloss_jax.core._formulas -> (gradient_table rows, test_gradients cases) it feeds
MUTATIONS = {
    "softmax_cross_entropy_grad": (
        {"softmax_cross_entropy", "softmax_cross_entropy (smoothing, z-loss, softcap)"},
        {"soft_ce", "soft_ce_where", "soft_ce_options"},
    ),
    "entropy_grad_given_value": ({"entropy", "entropy (bits)"}, {"entropy", "entropy_where_bits"}),
    "softmax_vjp_given_kl": (
        {
            "forward_kl (T=2)",
            "reverse_kl (T=0.5)",
            "jensen_shannon (beta=0.5)",
            "jensen_shannon (beta=0.2, T=1.5)",
        },
        {"forward_kl", "forward_kl_T_where", "reverse_kl", "reverse_kl_T_where", "js"},
    ),
    "binary_entropy_grad": ({"binary_entropy"}, {"binary_entropy"}),
}


@contextlib.contextmanager
def _scaled_kernel(monkeypatch, name, factor=1.01):
    """infoloss_jax.core._formulas.<name> scaled by ``factor``, with every compiled program dropped
    on the way in and out (cached programs would hide the mutation, or leak it)."""
    original = getattr(formulas, name)

    def scaled(*args, **kwargs):
        return jax.tree.map(lambda x: factor * x, original(*args, **kwargs))

    jax.clear_caches()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(formulas, name, scaled)
            yield
    finally:
        jax.clear_caches()


@pytest.mark.slow
@pytest.mark.parametrize("kernel", sorted(MUTATIONS))
def test_a_wrong_shared_kernel_fails_the_table_and_the_closed_form_tests(kernel, monkeypatch):
    rows, cases = MUTATIONS[kernel]
    # The closed-form tests of test_gradients, run in-process with a cache of their own.
    uncached = test_gradients._all_gradients.__wrapped__
    monkeypatch.setattr(test_gradients, "_all_gradients", functools.cache(uncached))
    with _scaled_kernel(monkeypatch, kernel):
        table = gradient_table(names=sorted(rows), finite_differences=False)
        assert not any(report.ok() for report in table), str(table)
        for case in sorted(cases):
            with pytest.raises(AssertionError):
                test_gradients.test_closed_form_matches_autodiff(case, jnp.float64, 1e-12)
    # The same checks pass once the kernel is restored.
    monkeypatch.setattr(test_gradients, "_all_gradients", functools.cache(uncached))
    assert gradient_table(names=sorted(rows), finite_differences=False).ok()
    test_gradients.test_closed_form_matches_autodiff(sorted(cases)[0], jnp.float64, 1e-12)


@pytest.mark.slow
def test_the_mutation_leaves_the_other_rows_passing(monkeypatch):
    """Only the rows a kernel feeds fail: the table attributes the error to its formula."""
    rows, _ = MUTATIONS["entropy_grad_given_value"]
    others = ["log_partition", "softmax_cross_entropy", "kl_divergence"]
    with _scaled_kernel(monkeypatch, "entropy_grad_given_value"):
        table = gradient_table(names=[*sorted(rows), *others], finite_differences=False)
    assert {r.name for r in table if not r.ok()} == rows
