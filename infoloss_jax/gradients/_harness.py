"""Compare a closed-form gradient with ``jax.grad`` and with float64 finite differences.

:func:`compare_gradients` checks one (loss, gradient) pair on given inputs and returns a
:class:`GradientReport`; :func:`gradient_table` runs it for every loss of the library and returns a
:class:`GradientTable`. Both render as plain-text tables (``print``) and as HTML or Markdown
tables in Jupyter, without pandas.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import html
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ArgumentReport",
    "GradientReport",
    "GradientTable",
    "compare_gradients",
    "gradient_table",
]

# Central differences with step h have truncation error O(h^2) and round-off O(eps / h); the
# two balance at h ~ eps^(1/3), about 6e-6 in float64, for a relative error near 1e-10.
_FD_STEP = float(np.finfo(np.float64).eps ** (1.0 / 3.0))
_FD_CHUNK = 128
_FD_FLOOR = 1e-6


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArgumentReport:
    """How a closed-form gradient compares with autodiff for one differentiated argument.

    Errors are normwise: ``max_abs_error`` is :math:`\\max_i |a_i - g_i|` between the analytic
    gradient :math:`a` and the autodiff gradient :math:`g`, and ``max_rel_error`` divides it by
    :math:`\\max_i |g_i|`, the gradient's scale, so entries that are mathematically 0 do not
    inflate it. Entries where either gradient is NaN or inf are left out of the errors and
    counted in ``analytic_nonfinite`` / ``autodiff_nonfinite`` instead.

    Attributes:
      argnum: position of the argument in the loss's arguments.
      shape: its shape.
      dtype: dtype of the gradients compared (that of the argument, at least float32).
      max_abs_error: max |analytic - autodiff| over entries where both are finite.
      max_rel_error: ``max_abs_error`` / max |autodiff|.
      cosine_similarity: cosine of the angle between the two gradients (1.0 when both are 0).
      scale: max |autodiff|.
      analytic_fd_error: max |analytic - finite differences| over the checked entries,
        divided by the gradient's scale (the largest of max |differences|, ``scale`` and
        1e-6); the differences are central, of the loss in float64. None when skipped.
      autodiff_fd_error: the same for the autodiff gradient.
      fd_entries: how many entries the finite differences checked (a seeded sample for large
        arguments).
      fd_skipped: how many of those gave a NaN or inf difference quotient (a step that leaves
        the domain, such as a probability pushed below 0); they are left out of the FD errors.
      analytic_nonfinite: count of NaN or inf entries in the analytic gradient.
      autodiff_nonfinite: count of NaN or inf entries in the autodiff gradient.
    """

    argnum: int
    shape: tuple[int, ...]
    dtype: str
    max_abs_error: float
    max_rel_error: float
    cosine_similarity: float
    scale: float
    analytic_fd_error: float | None
    autodiff_fd_error: float | None
    fd_entries: int
    fd_skipped: int
    analytic_nonfinite: int
    autodiff_nonfinite: int

    @property
    def finite(self) -> bool:
        """True when neither gradient has a NaN or inf entry."""
        return self.analytic_nonfinite == 0 and self.autodiff_nonfinite == 0

    def ok(
        self, rtol: float | None = None, atol: float | None = None, *, fd_rtol: float | None = None
    ) -> bool:
        """True when both gradients are finite and agree to ``atol + rtol * scale``.

        Args:
          rtol: relative tolerance; default 1e-10 for float64, 1e-5 for float32 and 1e-2 for
            16-bit floats.
          atol: absolute tolerance; default 10 machine epsilons of ``dtype``.
          fd_rtol: if given, both gradients must also match finite differences to this
            normwise relative error.
        """
        rtol, atol = _default_tolerances(self.dtype, rtol, atol)
        if not self.finite or not self.max_abs_error <= atol + rtol * self.scale:
            return False
        if fd_rtol is None or self.analytic_fd_error is None or self.autodiff_fd_error is None:
            return True
        return max(self.analytic_fd_error, self.autodiff_fd_error) <= fd_rtol


def _default_tolerances(dtype: str, rtol, atol) -> tuple[float, float]:
    if rtol is None:
        rtol = {"float64": 1e-10, "float32": 1e-5}.get(dtype, 1e-2)
    if atol is None:
        atol = 10 * float(jnp.finfo(dtype).eps)
    return rtol, atol


@dataclasses.dataclass(frozen=True)
class GradientReport:
    """The result of compare_gradients: one ArgumentReport per argument.

    ``print(report)`` shows a table, Jupyter renders it as HTML, ``report.ok()`` says whether
    every argument agrees (and has no NaN or inf).

    Attributes:
      name: what was compared (the loss's name unless given).
      arguments: one :class:`ArgumentReport` per differentiated argument.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> from infoloss_jax.gradients import entropy_grad
      >>> report = il.compare_gradients(il.entropy, entropy_grad, jnp.array([1.0, 2.0, 4.0]))
      >>> [(arg.argnum, arg.shape, arg.finite, arg.ok()) for arg in report]
      [(0, (3,), True, True)]
    """

    name: str
    arguments: tuple[ArgumentReport, ...]

    def ok(
        self, rtol: float | None = None, atol: float | None = None, *, fd_rtol: float | None = None
    ) -> bool:
        """True when every argument passes :meth:`ArgumentReport.ok` with these tolerances."""
        return all(a.ok(rtol, atol, fd_rtol=fd_rtol) for a in self.arguments)

    @property
    def max_rel_error(self) -> float:
        """The largest ``max_rel_error`` over the arguments."""
        return max(a.max_rel_error for a in self.arguments)

    def __iter__(self) -> Iterator[ArgumentReport]:
        return iter(self.arguments)

    def __str__(self) -> str:
        return _text_table(_rows([self]))

    def _repr_markdown_(self) -> str:
        return _markdown_table(_rows([self]))

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return _html_table(_rows([self]))


@dataclasses.dataclass(frozen=True)
class GradientTable:
    """Reports for many losses (from gradient_table); iterate to get each report.

    Attributes:
      reports: the :class:`GradientReport` of each loss, in order.
    """

    reports: tuple[GradientReport, ...]

    def __iter__(self) -> Iterator[GradientReport]:
        return iter(self.reports)

    def __len__(self) -> int:
        return len(self.reports)

    def __getitem__(self, key: int | str) -> GradientReport:
        if isinstance(key, str):
            for report in self.reports:
                if report.name == key:
                    return report
            raise KeyError(f"No report named {key!r}; names: {[r.name for r in self.reports]}.")
        return self.reports[key]

    def ok(
        self, rtol: float | None = None, atol: float | None = None, *, fd_rtol: float | None = None
    ) -> bool:
        """True when every report passes :meth:`GradientReport.ok`."""
        return all(r.ok(rtol, atol, fd_rtol=fd_rtol) for r in self.reports)

    def __str__(self) -> str:
        return _text_table(_rows(self.reports))

    def _repr_markdown_(self) -> str:
        return _markdown_table(_rows(self.reports))

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return _html_table(_rows(self.reports))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _number(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.2e}"


def _nonfinite(a: ArgumentReport) -> str:
    counts = (("analytic", a.analytic_nonfinite), ("autodiff", a.autodiff_nonfinite))
    return ", ".join(f"{side}: {count}" for side, count in counts if count) or "none"


def _fd_entries(a: ArgumentReport) -> str:
    if a.analytic_fd_error is None:
        return "-"
    if a.fd_skipped:
        return f"{a.fd_entries - a.fd_skipped} of {a.fd_entries}"
    return str(a.fd_entries)


# The columns of every rendering: (header, cell of a report's argument).
_COLUMNS: tuple[tuple[str, Callable[[GradientReport, ArgumentReport], str]], ...] = (
    ("loss", lambda report, a: report.name),
    ("arg", lambda report, a: str(a.argnum)),
    ("shape", lambda report, a: "x".join(str(d) for d in a.shape) or "scalar"),
    ("dtype", lambda report, a: a.dtype),
    ("max abs err", lambda report, a: _number(a.max_abs_error)),
    ("max rel err", lambda report, a: _number(a.max_rel_error)),
    ("cosine", lambda report, a: f"{a.cosine_similarity:.10f}"),
    ("analytic vs FD", lambda report, a: _number(a.analytic_fd_error)),
    ("autodiff vs FD", lambda report, a: _number(a.autodiff_fd_error)),
    ("FD entries", lambda report, a: _fd_entries(a)),
    ("NaN/inf", lambda report, a: _nonfinite(a)),
    ("ok", lambda report, a: "yes" if a.ok() else "NO"),
)
_HEADER = tuple(header for header, _ in _COLUMNS)


def _rows(reports: Sequence[GradientReport]) -> list[tuple[str, ...]]:
    return [tuple(cell(r, a) for _, cell in _COLUMNS) for r in reports for a in r.arguments]


def _text_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [_HEADER, *rows]) for i in range(len(_HEADER))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(_HEADER), rule, *(line(r) for r in rows)]).rstrip()


def _markdown_table(rows: list[tuple[str, ...]]) -> str:
    escape = lambda s: s.replace("|", "\\|")
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER)
    body = []
    for r in rows:
        style = "" if r[-1] == "yes" else ' style="color:#b00020;font-weight:bold"'
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in r)
        body.append(f"<tr{style}>{cells}</tr>")
    return (
        '<table class="infoloss-gradient-report">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def _as_tuple(argnums) -> tuple[int, ...]:
    return (argnums,) if isinstance(argnums, int) else tuple(argnums)


def compare_gradients(
    loss_fn: Callable,
    grad_fn: Callable,
    *args,
    argnums: int | Sequence[int] = 0,
    name: str | None = None,
    finite_differences: bool = True,
    fd_step: float | None = None,
    fd_max_entries: int = 1024,
    seed: int = 0,
    jit: bool = True,
) -> GradientReport:
    r"""Compares a closed-form gradient with ``jax.grad`` and with finite differences.

    The quantity differentiated is :math:`\sum \mathrm{loss\_fn}(\mathrm{args})`: a loss that
    returns per-example values is summed, so its gradient is the per-example gradient, which is
    what the functions in :mod:`infoloss_jax.gradients` return. ``grad_fn(*args)`` must return
    the gradient with respect to ``argnums``, structured as ``jax.grad(..., argnums)`` would (a
    single array for an int, a tuple for a sequence).

    Three gradients are computed per argument: the analytic one (``grad_fn``), autodiff
    (``jax.grad``), both in the inputs' dtype and under ``jax.jit`` when ``jit``; and central
    finite differences of the loss, always in float64 (x64 is enabled locally for them), over
    every entry or over a seeded sample of ``fd_max_entries`` entries. Entries whose input is
    infinite (a ``-inf`` logit) are given a finite-difference derivative of 0.

    Args:
      loss_fn: the loss, called as ``loss_fn(*args)``.
      grad_fn: the closed-form gradient, called as ``grad_fn(*args)``.
      *args: the inputs; use ``functools.partial`` to fix keyword options of both functions.
      argnums: which positional arguments to differentiate (floating-point arrays).
      name: label for the report; defaults to ``loss_fn``'s name.
      finite_differences: whether to compute the float64 finite-difference check.
      fd_step: step :math:`h`, relative to :math:`\max(1, |x|)`; default
        :math:`\epsilon_{64}^{1/3} \approx 6\times 10^{-6}`.
      fd_max_entries: at most this many entries per argument are checked by differences.
      seed: seed of the sample of entries when an argument is larger than that.
      jit: evaluate autodiff and ``grad_fn`` under ``jax.jit`` (the finite differences are
        always compiled).

    Returns:
      A :class:`GradientReport` with one row per argument.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> from infoloss_jax.gradients import entropy_grad
      >>> report = il.compare_gradients(il.entropy, entropy_grad, jnp.array([[0.5, -1.0, 2.0]]))
      >>> report.ok()
      True
      >>> bad = il.compare_gradients(il.entropy, lambda z: -entropy_grad(z), jnp.array([0.5, 1.0]))
      >>> bad.ok(), round(bad.arguments[0].cosine_similarity, 6)
      (False, -1.0)
    """
    args = tuple(jnp.asarray(a) if _is_array_like(a) else a for a in args)
    argnums = _check_differentiable(args, _as_tuple(argnums))

    def total(*inputs):  # the scalar whose gradient is the per-example gradient
        return jnp.sum(loss_fn(*inputs))

    autodiff = jax.grad(total, argnums=argnums)
    analytic = grad_fn
    if jit:
        autodiff, analytic = jax.jit(autodiff), jax.jit(analytic)
    auto_grads = autodiff(*args)
    analytic_grads = analytic(*args)
    if len(argnums) == 1 and not isinstance(analytic_grads, tuple | list):
        analytic_grads = (analytic_grads,)
    analytic_grads = tuple(analytic_grads)
    if len(analytic_grads) != len(argnums):
        raise ValueError(
            f"`grad_fn` returned {len(analytic_grads)} gradient(s) for argnums={argnums}; it "
            "must return one per differentiated argument, as jax.grad(..., argnums) does."
        )

    reports = []
    for position, argnum in enumerate(argnums):
        auto_g = np.asarray(auto_grads[position])
        ana_g = np.asarray(analytic_grads[position])
        if ana_g.shape != auto_g.shape:
            raise ValueError(
                f"`grad_fn`'s gradient for argument {argnum} has shape {list(ana_g.shape)}; "
                f"autodiff gives {list(auto_g.shape)}."
            )
        fd = None
        if finite_differences:
            fd = _finite_differences(total, args, argnum, fd_step, fd_max_entries, seed)
        reports.append(_argument_report(argnum, args[argnum], ana_g, auto_g, fd))
    return GradientReport(name=name or _name_of(loss_fn), arguments=tuple(reports))


def _name_of(fn: Callable) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def _is_array_like(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | float | int | np.number) and not isinstance(
        x, bool
    )


def _check_differentiable(args: tuple, argnums: tuple[int, ...]) -> tuple[int, ...]:
    """Checks that ``argnums`` name floating-point arrays; returns them as non-negative ints."""
    for argnum in argnums:
        if not -len(args) <= argnum < len(args):
            raise ValueError(f"`argnums` entry {argnum} is out of range for {len(args)} args.")
        arg = args[argnum]
        if not (isinstance(arg, jax.Array) and jnp.issubdtype(arg.dtype, jnp.floating)):
            kind = f"{arg.dtype}" if isinstance(arg, jax.Array) else type(arg).__name__
            raise TypeError(
                f"`argnums` entry {argnum} names an argument of type {kind}; only "
                "floating-point arrays can be differentiated."
            )
    return tuple(argnum % len(args) for argnum in argnums)


def _argument_report(argnum, arg, analytic, autodiff, fd) -> ArgumentReport:
    a64, g64 = analytic.astype(np.float64), autodiff.astype(np.float64)
    both = np.isfinite(a64) & np.isfinite(g64)
    a_fin, g_fin = np.where(both, a64, 0.0), np.where(both, g64, 0.0)
    diff = np.abs(a_fin - g_fin)
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(g_fin).max(initial=0.0))
    fd_errors: tuple[float | None, float | None, int, int] = (None, None, 0, 0)
    if fd is not None:
        index, values = fd
        usable = np.isfinite(values)
        index, values = index[usable], values[usable]
        # Differences carry ~1e-10 of noise (round-off of the loss over the step), so the scale
        # is floored at 1e-6: a gradient that is 0 everywhere is not a relative error of 1.
        fd_scale = max(float(np.abs(values).max(initial=0.0)), scale, _FD_FLOOR)
        fd_errors = (
            _fd_error(a64.reshape(-1)[index], values, fd_scale),
            _fd_error(g64.reshape(-1)[index], values, fd_scale),
            int(usable.size),
            int(np.sum(~usable)),
        )
    return ArgumentReport(
        argnum=argnum,
        shape=tuple(arg.shape),
        dtype=str(autodiff.dtype),
        max_abs_error=max_abs,
        max_rel_error=max_abs / scale if scale > 0 else max_abs,
        cosine_similarity=_cosine(a_fin, g_fin),
        scale=scale,
        analytic_fd_error=fd_errors[0],
        autodiff_fd_error=fd_errors[1],
        fd_entries=fd_errors[2],
        fd_skipped=fd_errors[3],
        analytic_nonfinite=int(np.sum(~np.isfinite(a64))),
        autodiff_nonfinite=int(np.sum(~np.isfinite(g64))),
    )


def _fd_error(x: np.ndarray, differences: np.ndarray, scale: float) -> float:
    """max |x - differences| relative to the gradient's scale (NaN if x has NaN or inf)."""
    if not np.all(np.isfinite(x)):
        return math.nan
    return float(np.abs(x - differences).max(initial=0.0)) / scale


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(np.vdot(a, b) / (na * nb), -1.0, 1.0))


def _finite_differences(total, args, argnum, fd_step, max_entries, seed):
    """Central differences of ``total`` in float64 at a sample of the entries of one argument.

    One compiled program per argument, vectorized with ``vmap`` over chunks of entries. Returns
    ``(flat indices, derivative estimates)``.
    """
    with jax.enable_x64(True):
        args64 = tuple(_to_float64(a) for a in args)
        x = args64[argnum]
        size = int(x.size)
        if size <= max_entries:
            index = np.arange(size)
        else:
            index = np.sort(np.random.default_rng(seed).choice(size, max_entries, replace=False))
        x_flat = np.asarray(x).reshape(-1)
        h = (fd_step if fd_step is not None else _FD_STEP) * np.maximum(1.0, np.abs(x_flat))
        h = np.where(np.isfinite(x_flat), h, 0.0)

        def shifted_total(flat_x, i, step):
            shifted = flat_x.at[i].add(step).reshape(x.shape)
            return total(*args64[:argnum], shifted, *args64[argnum + 1 :])

        def central(flat_x, i, step):
            return (shifted_total(flat_x, i, step) - shifted_total(flat_x, i, -step)) / (2 * step)

        batched = jax.jit(jax.vmap(central, in_axes=(None, 0, 0)))
        flat = jnp.asarray(x_flat)
        estimates = []
        for start in range(0, index.size, _FD_CHUNK):
            chunk = index[start : start + _FD_CHUNK]
            if index.size > _FD_CHUNK:  # equal chunks: one compilation
                chunk = np.pad(chunk, (0, _FD_CHUNK - chunk.size), mode="edge")
            steps = h[chunk]
            # An infinite input (a -inf logit) gets derivative 0: perturbing it changes nothing.
            safe_steps = np.where(steps > 0, steps, 1.0)
            values = np.asarray(batched(flat, jnp.asarray(chunk), jnp.asarray(safe_steps)))
            estimates.append(np.where(steps > 0, values, 0.0))
        values = np.concatenate(estimates) if estimates else np.zeros(0)
        return index, values[: index.size]


def _to_float64(a):
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating):
        return jnp.asarray(np.asarray(a, dtype=np.float64))
    return a


# --------------------------------------------------------------------------------------------
# Every loss of the library
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Case:
    name: str
    loss_fn: Callable
    grad_fn: Callable
    args: tuple
    argnums: tuple[int, ...] = (0,)


def _random_inputs(rng: np.random.Generator, shape: tuple[int, int], dtype) -> dict:
    """Seeded logits and targets with -inf entries (excluded classes) and exact-zero targets."""
    batch, classes = shape
    logits = 2.0 * rng.standard_normal(shape)
    target_logits = 2.0 * rng.standard_normal(shape)
    excluded = np.zeros(shape, bool)
    excluded[0, classes - 1] = True  # an excluded class in the first row
    target_zero = np.zeros(shape, bool)
    target_zero[min(1, batch - 1), 0] = True  # a zero target probability in the second row
    model = np.where(excluded, -np.inf, logits)
    where = np.ones(shape, bool)
    where[-1, 1] = False
    target = np.where(excluded | target_zero, -np.inf, target_logits)
    # Target probabilities vanish on excluded and masked classes (mass there is infinite loss).
    probs = np.exp(np.where(where, target, -np.inf) - target.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    cast = lambda x: jnp.asarray(x, dtype)
    return {
        "logits": cast(model),
        "target_logits": cast(target),
        "probs": cast(probs),
        "labels": jnp.asarray(rng.integers(0, classes - 1, size=batch), jnp.int32),
        "where": jnp.asarray(where),
        "binary_logits": cast(2.0 * rng.standard_normal(shape)),
        "binary_labels": cast(np.where(rng.random(shape) < 0.3, 0.0, rng.random(shape))),
        "pos_weight": cast(0.5 + rng.random(classes)),
        "class_weights": cast(0.5 + rng.random(classes)),
        "tangent": cast(rng.standard_normal(shape)),
    }


def _case(name: str, args: tuple, argnums=(0,), loss: str | None = None, **options) -> _Case:
    """``gradients.<loss>_grad`` against ``jax.grad`` of ``_plain.<loss>``, both given ``options``.

    ``loss`` defaults to the first word of ``name``. The plain losses share no code with the
    closed forms (no custom rule, no private kernel), so a wrong kernel shows.
    """
    from .. import gradients
    from . import _plain

    loss = loss or name.split()[0]
    grad_options = options if argnums == (0,) else dict(options, argnums=argnums)
    grad_fn = functools.partial(getattr(gradients, f"{loss}_grad"), **grad_options)
    return _Case(name, functools.partial(getattr(_plain, loss), **options), grad_fn, args, argnums)


def _divergence_case(div, label: str, options: dict, inputs) -> _Case:
    """A declared divergence's row ``"<name> (<label>)"``: ``gradients.<name>_grad`` against
    ``jax.grad`` of ``_plain.<name>``, in both logits, with the options it declares
    (``where=True`` is the table's class mask)."""
    x, t, t_reverse, where = inputs
    options = {k: where if v is True else v for k, v in options.items()}
    target = t_reverse if div.target_support else t
    return _case(f"{div.name} ({label})", (x, target), (0, 1), loss=div.name, **options)


def _hvp_case(name: str, plain_loss: Callable, hvp: Callable, tangent: jax.Array, x) -> _Case:
    """A Hessian-vector product is the gradient of <v, grad L>, since the Hessian is symmetric;
    grad L here is autodiff of the plain loss, not a closed form."""
    plain_gradient = jax.grad(lambda z: jnp.sum(plain_loss(z)))
    return _Case(name, lambda z: jnp.vdot(tangent, plain_gradient(z)), hvp, (x,))


def _cases(inputs: dict) -> list[_Case]:
    """Every closed form of :mod:`infoloss_jax.gradients`, with the inputs and options it is
    checked on. A declared divergence brings its own rows (its ``checks``); another new closed
    form gets its rows here."""
    from .. import gradients as g
    from ..engine._loss_spec import declared_divergences
    from . import _plain as plain

    x, t, probs = inputs["logits"], inputs["target_logits"], inputs["probs"]
    labels, where, tangent = inputs["labels"], inputs["where"], inputs["tangent"]
    # Reverse KL needs target mass wherever the model has mass: use the model's support.
    t_reverse = jnp.where(x > -jnp.inf, t, -jnp.inf).at[1, 0].set(t[1, 1])
    log_q = jax.nn.log_softmax(x)
    options: dict[str, Any] = dict(label_smoothing=0.1, z_loss=1e-2, logit_softcap=5.0)
    int_options = dict(options, class_weights=inputs["class_weights"], ignore_index=0)
    token_options: dict[str, Any] = dict(temperature=0.7, logit_softcap=5.0, ignore_index=0)
    pair = (0, 1)
    return [
        _case("softmax_cross_entropy", (x, probs), where=where),
        _case("softmax_cross_entropy (smoothing, z-loss, softcap)", (x, probs), where=where,
              **options),
        _case("softmax_cross_entropy_with_integer_labels", (x, labels)),
        _case("integer labels (all options)", (x, labels),
              loss="softmax_cross_entropy_with_integer_labels", **int_options),
        _case("log_probs (T=0.7, softcap, ignore_index)", (x, labels), **token_options),
        _Case("log_probs entropy (T=0.7, softcap, ignore_index)",
              functools.partial(plain.token_entropy, **token_options),
              lambda z, y: g.log_probs_grad(z, y, with_entropy=True, **token_options)[1],
              (x, labels)),
        _case("entropy", (x,), where=where),
        _case("entropy (bits)", (x,), base=2),
        _case("entropy_from_probs", (probs,), where=where),
        _case("log_partition", (x,)),
        _case("z_loss", (x,)),
        *(_divergence_case(div, label, options, (x, t, t_reverse, where))
          for div in declared_divergences() for label, options in div.checks),
        _case("kl_divergence", (log_q, probs), pair),
        _case("kl_divergence_with_log_targets", (log_q, jnp.log(probs)), pair),
        _case("generalized_kl_divergence", (log_q, 1.5 * probs), pair),
        _case("sigmoid_binary_cross_entropy (pos_weight)",
              (inputs["binary_logits"], inputs["binary_labels"]), pair,
              pos_weight=inputs["pos_weight"]),
        _case("binary_entropy", (inputs["binary_logits"],)),
        _hvp_case("softmax_cross_entropy Hessian-vector product",
                  lambda z: plain.softmax_cross_entropy(z, probs, where=where),
                  lambda z: g.softmax_cross_entropy_hvp(z, probs, tangent, where=where), tangent,
                  x),
        _hvp_case("entropy Hessian-vector product", lambda z: plain.entropy(z, where=where),
                  lambda z: g.entropy_hvp(z, tangent, where=where), tangent, x),
    ]  # fmt: skip


def gradient_table(
    *,
    dtype=jnp.float64,
    seed: int = 0,
    shape: tuple[int, int] = (3, 5),
    finite_differences: bool = True,
    names: Sequence[str] | None = None,
) -> GradientTable:
    """Runs compare_gradients for every loss of the library on seeded random inputs.

    Each closed form in :mod:`infoloss_jax.gradients` is compared with ``jax.grad`` of an
    independent plain implementation of the loss it belongs to: plain ``jax.numpy`` operations,
    with no custom derivative rule and no kernel shared with the closed forms, so that a wrong
    formula shows as a failing row. Finite differences in float64 are taken of the same plain
    loss. The inputs are logits with an excluded (``-inf``) class, targets with exact zeros,
    ``where`` masks, temperatures and the cross-entropy options, and both arguments of the
    two-distribution losses. The Hessian-vector
    products are checked as the gradient of :math:`\\langle v, \\nabla L \\rangle`.

    Args:
      dtype: floating dtype of the inputs; float64 is computed with x64 enabled locally.
      seed: seed of the random inputs.
      shape: ``(batch, classes)`` of the inputs (at least ``(2, 3)``).
      finite_differences: whether to add the float64 finite-difference columns.
      names: run only the losses with these names (see ``[r.name for r in table]``).

    Returns:
      A :class:`GradientTable`: ``print`` it, display it in Jupyter, iterate over its reports,
        or call ``.ok()``.

    Example:
      >>> import infoloss_jax as il
      >>> table = il.gradient_table(names=["entropy", "forward_kl (T=2)"])
      >>> [report.name for report in table], table.ok()
      (['entropy', 'forward_kl (T=2)'], True)
    """
    if len(shape) != 2 or shape[0] < 2 or shape[1] < 3:
        raise ValueError(f"`shape` must be (batch >= 2, classes >= 3); got {shape!r}.")
    wide = jnp.dtype(dtype) == jnp.float64
    with jax.enable_x64(True) if wide else contextlib.nullcontext():
        inputs = _random_inputs(np.random.default_rng(seed), (shape[0], shape[1]), dtype)
        cases = _cases(inputs)
        known = [c.name for c in cases]
        if names is not None:
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f"Unknown loss name(s) {unknown} in `names`; known: {known}.")
            cases = [c for c in cases if c.name in names]
        reports = tuple(
            compare_gradients(
                c.loss_fn,
                c.grad_fn,
                *c.args,
                argnums=c.argnums,
                name=c.name,
                finite_differences=finite_differences,
            )
            for c in cases
        )
    return GradientTable(reports)
