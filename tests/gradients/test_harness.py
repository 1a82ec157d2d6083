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
import pytest
import scipy.special
import scipy.stats
import test_gradients

import infoloss_jax as il
import infoloss_jax.core._formulas as formulas
import infoloss_jax.engine._pairs as pairs
import infoloss_jax.engine._tiles as tiles
from infoloss_jax import gradients as g
from infoloss_jax.engine._loss_spec import declared_divergences
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


def _np_log_softmax(x, where=None):
    """float64 NumPy log-softmax over the last axis, -inf at excluded classes."""
    x = np.asarray(x, np.float64)
    x = x if where is None else np.where(where, x, -np.inf)
    return x - scipy.special.logsumexp(x, axis=-1, keepdims=True)


def _np_kl(p, q):
    return np.sum(scipy.special.rel_entr(p, q), axis=-1)


def _plain_library_and_scipy():
    """(plain, library, float64 NumPy/scipy) values of each loss on one set of inputs."""
    from infoloss_jax.gradients import _plain

    z = jnp.asarray(LOGITS)
    t = jnp.asarray(2.0 * _rng.standard_normal((3, 4))).at[0, 3].set(-jnp.inf)
    y, where = jnp.asarray(TARGETS), jnp.asarray(_rng.random((3, 4)) > 0.2).at[:, 0].set(True)
    labels = jnp.asarray([0, 2, 1])
    log_q = jax.nn.log_softmax(z)
    zn, tn, yn, wn = (np.asarray(a) for a in (z, t, y, where))
    q2, p2 = np.exp(_np_log_softmax(zn / 2.0, wn)), np.exp(_np_log_softmax(tn / 2.0, wn))
    q15, p15 = np.exp(_np_log_softmax(zn / 1.5, wn)), np.exp(_np_log_softmax(tn / 1.5, wn))
    q, p = np.exp(_np_log_softmax(zn)), np.exp(_np_log_softmax(tn))
    m = 0.2 * p15 + 0.8 * q15
    sigmoid = scipy.special.expit(np.where(np.isfinite(zn), zn, 1.0))
    binary_z = np.where(np.isfinite(zn), zn, 1.0)
    return {
        "softmax_cross_entropy": (
            _plain.softmax_cross_entropy(z, y, where=where),
            il.softmax_cross_entropy(z, y, where=where),
            -np.sum(np.where(wn & (yn > 0), yn * _np_log_softmax(zn, wn), 0.0), -1),
        ),
        "integer labels": (
            _plain.softmax_cross_entropy_with_integer_labels(z, labels),
            il.softmax_cross_entropy_with_integer_labels(z, labels),
            -_np_log_softmax(zn)[np.arange(3), np.asarray(labels)],
        ),
        "entropy": (
            _plain.entropy(z, where=where, base=2),
            il.entropy(z, where=where, base=2),
            scipy.stats.entropy(np.exp(_np_log_softmax(zn, wn)), base=2, axis=-1),
        ),
        "entropy_from_probs": (
            _plain.entropy_from_probs(y, where=where),
            il.entropy_from_probs(y, where=where),
            np.sum(np.where(wn, scipy.special.entr(yn), 0.0), -1),
        ),
        "log_partition": (
            _plain.log_partition(z, where=where),
            il.log_partition(z, where=where),
            scipy.special.logsumexp(np.where(wn, zn, -np.inf), axis=-1),
        ),
        "z_loss": (_plain.z_loss(z), il.z_loss(z), scipy.special.logsumexp(zn, axis=-1) ** 2),
        "forward_kl": (
            _plain.forward_kl(z, t, temperature=2.0, where=where),
            il.forward_kl(z, t, temperature=2.0, where=where),
            _np_kl(p2, q2),
        ),
        "reverse_kl": (
            _plain.reverse_kl(t, z, temperature=0.5),
            il.reverse_kl(t, z, temperature=0.5),
            _np_kl(np.exp(_np_log_softmax(tn / 0.5)), np.exp(_np_log_softmax(zn / 0.5))),
        ),
        "jensen_shannon": (
            _plain.jensen_shannon(z, t, beta=0.2, temperature=1.5, where=where),
            il.jensen_shannon(z, t, beta=0.2, temperature=1.5, where=where),
            0.2 * _np_kl(p15, m) + 0.8 * _np_kl(q15, m),
        ),
        "jensen_shannon (beta=0)": (
            _plain.jensen_shannon(z, t, beta=0.0),
            il.jensen_shannon(z, t, beta=0.0),
            _np_kl(p, q),
        ),
        "kl_divergence": (
            _plain.kl_divergence(log_q, y),
            il.kl_divergence(log_q, y),
            _np_kl(yn, np.exp(_np_log_softmax(zn))),
        ),
        "kl_divergence_with_log_targets": (
            _plain.kl_divergence_with_log_targets(log_q, jnp.log(y)),
            il.kl_divergence_with_log_targets(log_q, jnp.log(y)),
            _np_kl(yn, np.exp(_np_log_softmax(zn))),
        ),
        "generalized_kl_divergence": (
            _plain.generalized_kl_divergence(log_q, 1.5 * y),
            il.generalized_kl_divergence(log_q, 1.5 * y),
            np.sum(scipy.special.kl_div(1.5 * yn, np.exp(_np_log_softmax(zn))), -1),
        ),
        "sigmoid_binary_cross_entropy": (
            _plain.sigmoid_binary_cross_entropy(z.at[0, 3].set(1.0), y, pos_weight=2.0),
            il.sigmoid_binary_cross_entropy(z.at[0, 3].set(1.0), y, pos_weight=2.0),
            -(2.0 * yn * np.log(sigmoid) + (1 - yn) * np.log1p(-sigmoid)),
        ),
        "binary_entropy": (
            _plain.binary_entropy(z.at[0, 3].set(1.0)),
            il.binary_entropy(z.at[0, 3].set(1.0)),
            scipy.special.entr(scipy.special.expit(binary_z))
            + scipy.special.entr(scipy.special.expit(-binary_z)),
        ),
    }


@functools.cache
def _values():
    with np.errstate(divide="ignore", invalid="ignore"):  # -inf logits; where() selects
        return _plain_library_and_scipy()


_NAMES = (
    "softmax_cross_entropy", "integer labels", "entropy", "entropy_from_probs", "log_partition",
    "z_loss", "forward_kl", "reverse_kl", "jensen_shannon", "jensen_shannon (beta=0)",
    "kl_divergence", "kl_divergence_with_log_targets", "generalized_kl_divergence",
    "sigmoid_binary_cross_entropy", "binary_entropy",
)  # fmt: skip


@pytest.mark.parametrize("name", _NAMES)
def test_plain_implementations_compute_the_library_losses(name):
    plain, library, reference = _values()[name]
    chex.assert_trees_all_close(plain, library, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(plain), reference, rtol=1e-12, atol=1e-14)


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


def _divergence_rows(name: str) -> set[str]:
    """The gradient_table rows (and test_gradients cases) of the declared divergence ``name``."""
    (div,) = (d for d in declared_divergences() if d.name == name)
    return {f"{name} ({label})" for label, _ in div.checks}


# shared kernel -> (the object holding it, gradient_table rows and test_gradients cases it feeds)
MUTATIONS = {
    "softmax_cross_entropy_grad": (
        formulas,
        {"softmax_cross_entropy", "softmax_cross_entropy (smoothing, z-loss, softcap)"},
        {"soft_ce", "soft_ce_where", "soft_ce_options"},
    ),
    "entropy_grad": (
        tiles,
        {"entropy", "entropy (bits)", "log_probs entropy (T=0.7, softcap, ignore_index)"},
        {"entropy", "entropy_where_bits"},
    ),
    "softmax_vjp": (
        pairs,
        _divergence_rows("reverse_kl") | _divergence_rows("jensen_shannon"),
        _divergence_rows("reverse_kl") | _divergence_rows("jensen_shannon"),
    ),
    "binary_entropy_grad": (formulas, {"binary_entropy"}, {"binary_entropy"}),
}
# ... and the tile gradient of every declared divergence (its `grads`).
MUTATIONS |= {
    f"{div.name}.grads": (div, _divergence_rows(div.name), _divergence_rows(div.name))
    for div in declared_divergences()
}


@contextlib.contextmanager
def _scaled_kernel(monkeypatch, kernel, factor=1.01):
    """The kernel ``kernel`` of MUTATIONS scaled by ``factor``, with every compiled program
    dropped on the way in and out (cached programs would hide the mutation, or leak it)."""
    owner = MUTATIONS[kernel][0]
    name = kernel.rpartition(".")[2]
    original = getattr(owner, name)

    def scaled(*args, **kwargs):
        return jax.tree.map(lambda x: factor * x, original(*args, **kwargs))

    frozen = dataclasses.is_dataclass(owner)  # a declaration: monkeypatch cannot set it
    jax.clear_caches()
    try:
        with monkeypatch.context() as patch:
            if frozen:
                object.__setattr__(owner, name, scaled)
            else:
                patch.setattr(owner, name, scaled)
            yield
    finally:
        if frozen:
            object.__setattr__(owner, name, original)
        jax.clear_caches()


@pytest.mark.slow
@pytest.mark.parametrize("kernel", sorted(MUTATIONS))
def test_a_wrong_shared_kernel_fails_the_table_and_the_closed_form_tests(kernel, monkeypatch):
    _, rows, cases = MUTATIONS[kernel]
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
    _, rows, _ = MUTATIONS["entropy_grad"]
    others = ["log_partition", "softmax_cross_entropy", "kl_divergence", "forward_kl (T=2)"]
    with _scaled_kernel(monkeypatch, "entropy_grad"):
        table = gradient_table(names=[*sorted(rows), *others], finite_differences=False)
    assert {r.name for r in table if not r.ok()} == rows
