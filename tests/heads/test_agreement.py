"""Core == fused == sharded: one engine, so every path gives the same values and gradients.

Each case compares, for one set of options and one reduction, the core loss on materialized
logits, the fused head, the vocabulary-parallel head on 8 simulated devices (and, for the
cross-entropy, the vocabulary-parallel loss on logits), and a plain ``jax.numpy`` reference.
The vocabulary (37 classes) is not divisible by the blocks (16) nor by the mesh (8), so the
ragged and padded paths always run.

The plans chosen for accelerators (``backward="rows"`` and ``"fast"``, full vocabulary rows per
token chunk, the Pallas row kernel in interpret mode) join the same comparisons under
``planned_as("gpu", ...)``: the kernel's column blocks (32 of the 37 classes, then the last
32 with the first 27 masked) and the two token chunks of 8 are ragged too.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_mesh, plain_cross_entropy, plain_divergence, plain_log_probs

import infoloss_jax as il
from infoloss_jax import sharded
from infoloss_jax.engine import _blockwise
from infoloss_jax.engine._loss_spec import declared_divergences

N, D, V, DT = 16, 8, 37, 5
BLOCKS = dict(token_block_size=8, vocab_block_size=16)
IGNORE = -100

CE_CASES = {
    "plain": dict(),
    "smoothing": dict(label_smoothing=0.1),
    "z_loss": dict(z_loss=1e-2),
    "softcap": dict(logit_softcap=3.0),
    "ignore": dict(ignore_index=IGNORE),
    "class_weights": dict(class_weights=True),
    "mixed": dict(ignore_index=IGNORE, label_smoothing=0.2, z_loss=1e-3, logit_softcap=4.0),
    "mixed_weights": dict(ignore_index=IGNORE, label_smoothing=0.1, class_weights=True),
    "mask": dict(mask=True, label_smoothing=0.1, class_weights=True, z_loss=1e-3),
    "excluded": dict(label_smoothing=0.1, logit_softcap=5.0, excluded=True),
}


@pytest.fixture(autouse=True)
def _true_float32_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def _inputs(dtype, case, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    hidden = jax.random.normal(k[0], (N, D), jnp.float32).astype(dtype)
    weight = (jax.random.normal(k[1], (D, V)) * 0.8).astype(dtype)
    bias = (jax.random.normal(k[2], (V,)) * 0.3).astype(dtype)
    labels = jax.random.randint(k[3], (N,), 0, V)
    opts = dict(CE_CASES[case])
    if opts.pop("excluded", False):  # -inf bias entries: excluded classes, never labels
        bias = bias.at[jnp.array([3, 11, 30])].set(-jnp.inf)
        labels = jnp.where(jnp.isin(labels, jnp.array([3, 11, 30])), 4, labels)
    if "ignore_index" in opts:
        labels = labels.at[jnp.array([0, 5, 6, 13])].set(IGNORE)
    if opts.pop("class_weights", False):
        opts["class_weights"] = jax.random.uniform(k[4], (V,), jnp.float32, 0.5, 2.0)
    if opts.pop("mask", False):  # a per-token mask (the core's optax `where` of labels' rank)
        opts["mask"] = jnp.arange(N) % 3 != 1
    return hidden, weight, bias, labels, opts


def _tolerance(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-3)


def _cross_entropy_paths(labels, opts, reduction, mesh, blocks=BLOCKS, backward="auto"):
    core_opts = {k: v for k, v in opts.items() if k != "mask"}
    mask = opts.get("mask")
    if mask is not None:
        core_opts["where"] = mask
    plain_opts = {k: v for k, v in opts.items() if k != "mask"}
    plain_labels = labels if mask is None else jnp.where(mask, labels, IGNORE)
    if mask is not None:
        plain_opts["ignore_index"] = IGNORE

    def core(h, w, b):
        return il.softmax_cross_entropy_with_integer_labels(
            h @ w + b, labels, reduction=reduction, **core_opts
        )

    def plain(h, w, b):
        logits = h.astype(jnp.float32) @ w.astype(jnp.float32) + b.astype(jnp.float32)
        return plain_cross_entropy(logits, plain_labels, reduction=reduction, **plain_opts)

    def fused(h, w, b):
        return il.linear_softmax_cross_entropy(
            h, labels, w, bias=b, reduction=reduction, backward=backward, **opts, **blocks
        )

    def fused_tied(h, w, b):
        return il.linear_softmax_cross_entropy(
            h,
            labels,
            w.T,
            bias=b,
            weight_layout="vd",
            reduction=reduction,
            backward=backward,
            **opts,
            **blocks,
        )

    def on_mesh(h, w, b):
        return sharded.vocab_parallel_linear_cross_entropy_on_mesh(
            h,
            labels,
            w,
            bias=b,
            mesh=mesh,
            vocab_axis="model",
            reduction=reduction,
            backward=backward,
            **opts,
            **blocks,
        )

    def logits_on_mesh(h, w, b):
        return sharded.vocab_parallel_cross_entropy_on_mesh(
            h @ w + b, labels, mesh=mesh, vocab_axis="model", reduction=reduction, **opts
        )

    return dict(
        core=core,
        plain=plain,
        fused=fused,
        fused_tied=fused_tied,
        sharded=on_mesh,
        sharded_logits=logits_on_mesh,
    )


def _check(paths, args, tol, reference="plain"):
    def value_and_grads(fn):
        def total(*a):
            out = fn(*a)
            return jnp.sum(out), out

        argnums = tuple(range(len(args)))
        return jax.jit(jax.value_and_grad(total, argnums=argnums, has_aux=True))

    results = {}
    for name, fn in paths.items():
        (_, value), grads = value_and_grads(fn)(*args)
        results[name] = (value, grads)
    expected_value, expected_grads = results[reference]
    for name, (value, grads) in results.items():
        chex.assert_trees_all_close(
            jnp.asarray(value, jnp.float32),
            jnp.asarray(expected_value, jnp.float32),
            **tol,
            custom_message=f"value of {name}",
        )
        finite = jax.tree.map(lambda g: jnp.nan_to_num(g.astype(jnp.float32)), grads)
        ref = jax.tree.map(lambda g: jnp.nan_to_num(g.astype(jnp.float32)), expected_grads)
        chex.assert_trees_all_close(finite, ref, **tol, custom_message=f"gradient of {name}")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CE_CASES))
def test_cross_entropy_every_option(case):
    hidden, weight, bias, labels, opts = _inputs(jnp.float32, case)
    mesh = make_mesh("8")
    paths = _cross_entropy_paths(labels, opts, "mean", mesh)
    _check(paths, (hidden, weight, bias), _tolerance(jnp.float32))


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
def test_cross_entropy_every_reduction(reduction):
    hidden, weight, bias, labels, opts = _inputs(jnp.float32, "mixed")
    paths = _cross_entropy_paths(labels, opts, reduction, make_mesh("2x4"))
    _check(paths, (hidden, weight, bias), _tolerance(jnp.float32))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mixed", "excluded"])
def test_cross_entropy_bfloat16(case):
    hidden, weight, bias, labels, opts = _inputs(jnp.bfloat16, case)
    paths = _cross_entropy_paths(labels, opts, "mean", make_mesh("8"))
    # The bfloat16 logits of the core path round once more than the fused tiles; compare all
    # paths with the float32 plain reference at a bfloat16 tolerance.
    _check(paths, (hidden, weight, bias), _tolerance(jnp.bfloat16))


@pytest.mark.slow
def test_fully_ignored_batch_gives_zero_everywhere():
    hidden, weight, bias, _, _ = _inputs(jnp.float32, "plain")
    labels = jnp.full((N,), IGNORE)
    paths = _cross_entropy_paths(labels, dict(ignore_index=IGNORE), "mean", make_mesh("8"))
    for name, fn in paths.items():
        value, grads = jax.value_and_grad(fn, argnums=(0, 1, 2))(hidden, weight, bias)
        assert float(value) == 0.0, name
        assert all(not np.asarray(g).any() for g in grads), name


@pytest.mark.slow
def test_excluded_classes_under_smoothing_and_softcap_are_finite():
    """The drift of issue 11: a -inf bias entry stays excluded under soft-capping and gets no
    smoothing mass, in every path (it used to give inf in the fused and sharded heads)."""
    k = jax.random.split(jax.random.key(1), 4)
    h, w = jax.random.normal(k[0], (40, 12)), jax.random.normal(k[1], (12, 96))
    b = jax.random.normal(k[2], (96,)).at[::7].set(-jnp.inf)
    y = jax.random.randint(k[3], (40,), 0, 96)
    y = jnp.where(b[y] == -jnp.inf, 1, y)
    mesh = make_mesh("8")
    for opts in (dict(label_smoothing=0.1), dict(logit_softcap=5.0)):
        paths = _cross_entropy_paths(y, opts, "mean", mesh)
        values = {name: float(fn(h, w, b)) for name, fn in paths.items()}
        assert all(np.isfinite(list(values.values()))), values
        np.testing.assert_allclose(list(values.values()), values["plain"], rtol=1e-5)


# Every declared divergence, found by its names, with the options it declares for these tests.
DIVERGENCES = {div.name: dict(div.example) for div in declared_divergences()}


def _forms(kind):
    """(core, fused, on a mesh over logits, on a mesh over heads) of the divergence ``kind``."""
    return (
        getattr(il, kind),
        getattr(il, f"linear_{kind}"),
        getattr(sharded, f"vocab_parallel_{kind}_on_mesh"),
        getattr(sharded, f"vocab_parallel_linear_{kind}_on_mesh"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(DIVERGENCES))
@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
def test_distillation_heads_agree(kind, dtype):
    hidden, weight, _, _, _ = _inputs(dtype, "plain")
    k = jax.random.split(jax.random.key(7), 2)
    t_hidden = jax.random.normal(k[0], (N, DT)).astype(dtype)
    t_weight = jax.random.normal(k[1], (DT, V)).astype(dtype)
    core_fn, fused_fn, _, mesh_fn = _forms(kind)
    mask = jnp.arange(N) % 5 != 2
    opts = DIVERGENCES[kind]
    mesh = make_mesh("2x4")

    def masked_mean(per_row):
        return jnp.sum(jnp.where(mask, per_row, 0.0)) / jnp.sum(mask)

    def up(x):
        return x.astype(jnp.float32)

    paths = dict(
        plain=lambda h, w: masked_mean(
            plain_divergence(kind, up(h) @ up(w), up(t_hidden) @ up(t_weight), **opts)
        ),
        core=lambda h, w: masked_mean(core_fn(h @ w, t_hidden @ t_weight, **opts)),
        fused=lambda h, w: fused_fn(h, w, t_hidden, t_weight, mask=mask, **opts, **BLOCKS),
        fused_tied=lambda h, w: fused_fn(
            h, w.T, t_hidden, t_weight.T, weight_layout="vd", mask=mask, **opts, **BLOCKS
        ),
        sharded=lambda h, w: mesh_fn(
            h,
            w,
            t_hidden,
            t_weight,
            mesh=mesh,
            vocab_axis="model",
            data_axis="data",
            mask=mask,
            **opts,
            **BLOCKS,
        ),
    )
    _check(paths, (hidden, weight), _tolerance(dtype))


@pytest.mark.parametrize("kind", list(DIVERGENCES))
def test_distillation_on_logits_with_excluded_classes(kind):
    """-inf in both, in the teacher only, in the student only, and a whole -inf row: the core
    and the sharded loss on logits against the plain implementation, values and gradients
    (the teacher's too) where the value is finite."""
    k = jax.random.split(jax.random.key(3), 2)
    student = jax.random.normal(k[0], (N, V)) * 2
    teacher = jax.random.normal(k[1], (N, V)) * 2
    student = student.at[:, 2].set(-jnp.inf).at[:, 9].set(-jnp.inf)
    teacher = teacher.at[:, 2].set(-jnp.inf).at[:, 5].set(-jnp.inf)
    student, teacher = student.at[3].set(-jnp.inf), teacher.at[3].set(-jnp.inf)
    core_fn, _, mesh_fn, _ = _forms(kind)
    opts = DIVERGENCES[kind]
    mesh = make_mesh("8")
    out = mesh_fn(student, teacher, mesh=mesh, vocab_axis="model", **opts)
    expected = plain_divergence(kind, student, teacher, **opts)
    assert not np.isnan(np.asarray(out)).any()
    assert float(out[3]) == 0.0  # the all -inf row, as the core gives
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)  # +inf where the math is
    np.testing.assert_allclose(core_fn(student, teacher, **opts), expected, rtol=1e-5, atol=1e-6)
    finite = jnp.isfinite(expected)
    if not bool(finite.all()):
        return  # the gradient of an infinite row is a documented choice, not the plain one

    def total(fn):
        return lambda a, b: jnp.sum(fn(a, b))

    grads = {
        "plain": jax.grad(total(lambda a, b: plain_divergence(kind, a, b, **opts)), (0, 1)),
        "core": jax.grad(total(lambda a, b: core_fn(a, b, **opts)), (0, 1)),
        "sharded": jax.grad(
            total(lambda a, b: mesh_fn(a, b, mesh=mesh, vocab_axis="model", **opts)), (0, 1)
        ),
    }
    reference = grads.pop("plain")(student, teacher)
    for name, grad in grads.items():
        chex.assert_trees_all_close(
            grad(student, teacher), reference, rtol=1e-5, atol=1e-6, custom_message=name
        )


# ----------------------------------------------------------------------------- token log-probs
TOKEN_CASES = {
    "plain": dict(),
    "temperature_softcap": dict(temperature=0.7, logit_softcap=4.0),
    "ignored_excluded": dict(ignore_index=IGNORE, temperature=1.3, logit_softcap=6.0),
}
ENTROPY_WEIGHT = 0.37  # a cotangent of the entropy unlike the log-probs' one


def _token_inputs(dtype, case):
    hidden, weight, bias, labels, _ = _inputs(dtype, "excluded")
    opts = dict(TOKEN_CASES[case], with_entropy=True)
    if "ignore_index" in opts:
        labels = labels.at[jnp.array([0, 5, 6, 13])].set(IGNORE)
    return hidden, weight, bias, labels, opts


def _log_probs_paths(labels, opts, mesh, head=BLOCKS):
    def stacked(out):
        return jnp.stack([out[0], ENTROPY_WEIGHT * out[1]])

    def plain(h, w, b):
        logits = h.astype(jnp.float32) @ w.astype(jnp.float32) + b.astype(jnp.float32)
        plain_opts = {k: v for k, v in opts.items() if k != "with_entropy"}
        return stacked(plain_log_probs(logits, labels, **plain_opts))

    def core(h, w, b):
        return stacked(il.log_probs(h @ w + b, labels, **opts))

    def fused(h, w, b):
        return stacked(il.linear_log_probs(h, labels, w, bias=b, **opts, **head))

    def fused_tied(h, w, b):
        out = il.linear_log_probs(h, labels, w.T, bias=b, weight_layout="vd", **opts, **head)
        return stacked(out)

    def on_mesh(h, w, b):
        out = sharded.vocab_parallel_linear_log_probs_on_mesh(
            h, labels, w, bias=b, mesh=mesh, vocab_axis="model", **opts, **head
        )
        return stacked(out)

    def logits_on_mesh(h, w, b):
        out = sharded.vocab_parallel_log_probs_on_mesh(
            h @ w + b, labels, mesh=mesh, vocab_axis="model", **opts
        )
        return stacked(out)

    return dict(
        plain=plain,
        core=core,
        fused=fused,
        fused_tied=fused_tied,
        sharded=on_mesh,
        sharded_logits=logits_on_mesh,
    )


@pytest.mark.parametrize(
    "case",
    [
        c if c == "ignored_excluded" else pytest.param(c, marks=pytest.mark.slow)
        for c in TOKEN_CASES
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
def test_token_log_probs_and_entropy_agree(case, dtype):
    """log q(label) and the entropy, with -inf bias entries (excluded classes), ignored tokens,
    temperature and soft cap: every path, values and gradients through both outputs."""
    hidden, weight, bias, labels, opts = _token_inputs(dtype, case)
    paths = _log_probs_paths(labels, opts, make_mesh("2x4"))
    tol = _tolerance(dtype)
    if dtype == jnp.bfloat16:
        # The logits paths round the logits to bfloat16 before the softmax (the fused tiles
        # keep them in float32); the entropy's gradient, q (log q + H), feels that rounding
        # in absolute terms.
        tol = dict(tol, atol=1e-2)
    _check(paths, (hidden, weight, bias), tol)


# ----------------------------------------------------------------------------- accelerator plans
ACCEL_BLOCKS = dict(token_block_size=8)  # two chunks of 8 tokens, full rows: the kernel's path
KERNELS = ["interpret", "xla"]


def _as_gpu(paths, kernel):
    """The paths with every fused head running the plan chosen for a GPU (traced inside)."""

    def on_gpu(fn):
        def run(*args):
            with _blockwise.planned_as("gpu", kernel):
                return fn(*args)

        return run

    return {name: on_gpu(fn) for name, fn in paths.items()}


def _fast_or_slow(values, fast):
    return [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]


def _accelerator_ce_params():
    """Every plan, option set and dtype with the interpreted kernel, and in float32 with the
    XLA step it replaces; one of them in the fast suite."""
    fast = {("fast", "interpret", "mixed_weights", "float32")}
    for plan in ("rows", "fast"):
        for kernel in KERNELS:
            for case in CE_CASES:
                for dtype in ("float32", "bfloat16") if kernel == "interpret" else ("float32",):
                    marks = () if (plan, kernel, case, dtype) in fast else pytest.mark.slow
                    yield pytest.param(plan, kernel, case, dtype, marks=marks)


@pytest.mark.parametrize("plan, kernel, case, dtype", list(_accelerator_ce_params()))
def test_accelerator_plans_cross_entropy(plan, kernel, case, dtype):
    """Every option, both accelerator plans, with the interpreted Pallas row kernel (and the
    XLA path it replaces): the same values and gradients as the core and plain losses."""
    dtype = jnp.dtype(dtype)
    hidden, weight, bias, labels, opts = _inputs(dtype, case)
    paths = _cross_entropy_paths(labels, opts, "mean", make_mesh("8"), ACCEL_BLOCKS, plan)
    _check(_as_gpu(paths, kernel), (hidden, weight, bias), _tolerance(dtype))


@pytest.mark.parametrize(
    "plan, reduction",
    [("rows", "none")]
    + [
        pytest.param(p, r, marks=pytest.mark.slow)
        for p in ("rows", "fast")
        for r in ("none", "sum", "batchmean")
        if (p, r) != ("rows", "none")
    ],
)
def test_accelerator_plans_every_reduction(plan, reduction):
    """Per-token losses scale the forward pass's hidden gradient row by row ("fast" runs
    "rows" for them); the weight gradient is summed in the backward pass."""
    hidden, weight, bias, labels, opts = _inputs(jnp.float32, "mixed")
    paths = _cross_entropy_paths(labels, opts, reduction, make_mesh("2x4"), ACCEL_BLOCKS, plan)
    _check(_as_gpu(paths, "interpret"), (hidden, weight, bias), _tolerance(jnp.float32))


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["rows", "fast"])
def test_accelerator_plans_with_vocabulary_tiles(plan):
    """With a vocabulary block below V the row plans keep the row in tiles (no kernel)."""
    hidden, weight, bias, labels, opts = _inputs(jnp.float32, "mixed")
    paths = _cross_entropy_paths(labels, opts, "mean", make_mesh("8"), BLOCKS, plan)
    _check(_as_gpu(paths, "interpret"), (hidden, weight, bias), _tolerance(jnp.float32))


@pytest.mark.parametrize("plan", ["fast", pytest.param("rows", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", _fast_or_slow(list(DIVERGENCES), ["jensen_shannon"]))
@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
def test_accelerator_plans_distillation(plan, kind, dtype):
    hidden, weight, _, _, _ = _inputs(dtype, "plain")
    k = jax.random.split(jax.random.key(7), 2)
    t_hidden = jax.random.normal(k[0], (N, DT)).astype(dtype)
    t_weight = jax.random.normal(k[1], (DT, V)).astype(dtype)
    _, fused_fn, _, mesh_fn = _forms(kind)
    extra = DIVERGENCES[kind]
    mask = jnp.arange(N) % 5 != 2
    opts = dict(extra, temperature=1.5, backward=plan, **ACCEL_BLOCKS)
    plain_opts = {k: v for k, v in extra.items()} | dict(temperature=1.5)

    def up(x):
        return x.astype(jnp.float32)

    def masked_mean(per_row):
        return jnp.sum(jnp.where(mask, per_row, 0.0)) / jnp.sum(mask)

    paths = dict(
        plain=lambda h, w: masked_mean(
            plain_divergence(kind, up(h) @ up(w), up(t_hidden) @ up(t_weight), **plain_opts)
        ),
        fused=lambda h, w: fused_fn(h, w, t_hidden, t_weight, mask=mask, **opts),
        fused_tied=lambda h, w: fused_fn(
            h, w.T, t_hidden, t_weight.T, weight_layout="vd", mask=mask, **opts
        ),
        sharded=lambda h, w: mesh_fn(
            h,
            w,
            t_hidden,
            t_weight,
            mesh=make_mesh("2x4"),
            vocab_axis="model",
            data_axis="data",
            mask=mask,
            **opts,
        ),
    )
    _check(_as_gpu(paths, "interpret"), (hidden, weight), _tolerance(dtype))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TOKEN_CASES))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_accelerator_plans_log_probs_with_entropy(case, dtype):
    """Two cotangents per token (log-prob and entropy): the rows plan keeps one hidden
    gradient for each from its forward pass."""
    hidden, weight, bias, labels, opts = _token_inputs(dtype, case)

    def with_plan(fn):
        def run(*args):
            with _blockwise.planned_as("gpu", "interpret"):
                return fn(*args)

        return run

    head = dict(ACCEL_BLOCKS, backward="rows")
    paths = _log_probs_paths(labels, opts, make_mesh("2x4"), head)
    paths = {k: with_plan(f) for k, f in paths.items()}
    tol = _tolerance(dtype)
    if dtype == jnp.bfloat16:
        tol = dict(tol, atol=1e-2)
    _check(paths, (hidden, weight, bias), tol)
