"""``checked``: value-level checks (label ranges, log-space vs probability inputs) via checkify.

The checks of a loss follow from its parameter names, because each name has one meaning in the
package (the names table in docs/concepts.md): ``logits`` are logits, ``log_predictions``
normalized log-probabilities, ``probs`` and ``targets`` probabilities, ``labels`` class indices
(or, shaped like the logits, soft labels), a ``*_log_probs`` argument per-token or per-sequence
log-probabilities, and so on: :data:`_BY_NAME`. The few public functions whose names mean
something else (the binary losses, the PyTorch-named layer) are listed in :data:`_BY_FUNCTION`.
Masks are read as the losses read them: ``mask`` drops rows, ``where`` is a class mask (a row
mask, by its rank, in the cross-entropies with optax's names).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from ._caching import as_operand
from ._validation import as_integer_array, equals_index, is_traced, normalize_axis

Kind = Callable[[dict, str], None]  # kind(arguments, name) calls checkify.check
_USER_CHECKS: dict[Callable, Callable[..., None]] = {}
# The static options the checks read; every other argument that holds numbers is traced.
_CONTEXT = ("axis", "ignore_index", "weight_layout", "num_segments", "log_target")


def register_value_checks(fn: Callable, check: Callable[..., None]) -> None:
    """Gives ``checked(fn)`` the value checks ``check(*args, **kwargs)`` of your own function.

    ``check`` receives the call's arguments and calls ``jax.experimental.checkify.check`` for
    each condition. The losses of infoloss_jax need no registration: their checks follow from
    their parameter names.

    Example:
      >>> import jax.numpy as jnp
      >>> from jax.experimental import checkify
      >>> import infoloss_jax as il
      >>> def squared_error(x):
      ...     return jnp.sum(x**2)
      >>> def positive(x):
      ...     checkify.check(jnp.all(x > 0), "`x` must be positive.")
      >>> il.register_value_checks(squared_error, positive)
      >>> try:
      ...     il.checked(squared_error)(jnp.array([1.0, -2.0]))
      ... except Exception as err:
      ...     print("`x` must be positive" in str(err))
      True
    """
    _USER_CHECKS[fn] = check


# ----------------------------------------------------------------------------- masks
def _rows(m: jax.Array, x: jax.Array) -> jax.Array | None:
    """A row mask over the leading axes of ``x``, broadcast to ``x``; None if it does not fit."""
    if m.ndim > x.ndim or m.shape != x.shape[: m.ndim]:
        return None
    return jnp.broadcast_to(m.reshape(m.shape + (1,) * (x.ndim - m.ndim)), x.shape)


def _kept(args: dict, x: jax.Array) -> jax.Array:
    """Which entries of ``x`` count: ``mask`` (rows), ``where`` (a class mask; rows where the
    function reads it by rank), and not the rows whose label is ``ignore_index``."""
    keep = jnp.ones(x.shape, bool)
    where, mask = args.get("where"), args.get("mask")
    if where is not None:
        where = jnp.asarray(where, bool)
        try:
            class_mask = jnp.broadcast_to(where, x.shape)
        except ValueError:
            class_mask = None
        by_rank = where.ndim < x.ndim and (args["_row_where"] or class_mask is None)
        rows = _rows(where, x) if by_rank else class_mask
        keep = keep if rows is None else keep & rows
    labels, ignore_index = args.get("labels"), args.get("ignore_index")
    if ignore_index is not None and labels is not None and jnp.ndim(labels) < x.ndim:
        counted = ~equals_index(as_integer_array(labels, "labels"), ignore_index)
        mask = counted if mask is None else mask & counted
    if mask is not None:
        rows = _rows(jnp.asarray(mask, bool), x)
        keep = keep if rows is None else keep & rows
    return keep


# ----------------------------------------------------------------------------- kinds
def _values(args: dict, name: str) -> jax.Array:
    """The argument in at least float32 (a bfloat16 sum of valid probabilities can round to
    0.996), with the entries that do not count set to 0; a Mapping of counts: its values."""
    x = args[name]
    x = jnp.asarray(list(x.values()) if isinstance(x, Mapping) else x)
    x = x.astype(jnp.result_type(x.dtype, jnp.float32))
    return jnp.where(_kept(args, x), x, 0.0)


def _resolution(x) -> float:
    """The unit roundoff of ``x``'s dtype (2**-8 for bfloat16): how much rounding to allow."""
    dtype = jnp.asarray(x).dtype
    return float(jnp.finfo(dtype).eps) / 2 if jnp.issubdtype(dtype, jnp.floating) else 0.0


def _class_axes(args: dict, x: jax.Array) -> tuple[int, ...]:
    return normalize_axis(args.get("axis", -1), x.ndim)


def _check_sums_to_one(args, name, total, tolerance, message) -> None:
    """Each row total within ``tolerance`` of 1, except rows whose every class is masked."""
    x = jnp.asarray(args[name])
    counted = jnp.any(_kept(args, x), axis=_class_axes(args, x))
    ok = (jnp.abs(total - 1.0) <= tolerance) | ~counted
    worst = jnp.where(ok, 1.0, total).ravel()
    checkify.check(jnp.all(ok), message, s=worst[jnp.argmax(jnp.abs(worst - 1.0))])


def logits(args: dict, name: str) -> None:
    """Logits may be -inf (an excluded class) but never NaN or +inf."""
    x = _values(args, name)
    checkify.check(
        ~jnp.any(jnp.isnan(x) | (x == jnp.inf)),
        f"`{name}` contains NaN or +inf; only -inf (an excluded class) is allowed.",
    )


def finite(args: dict, name: str) -> None:
    """Hidden states and weights: finite."""
    x = _values(args, name)
    checkify.check(jnp.all(jnp.isfinite(x)), f"`{name}` contains NaN or an infinity.")


def not_nan(args: dict, name: str) -> None:
    """Values with no range of their own (advantages, rewards, binary logits): not NaN."""
    checkify.check(~jnp.any(jnp.isnan(_values(args, name))), f"`{name}` contains NaN.")


def non_negative(args: dict, name: str, hint: str = "") -> None:
    """Weights, counts, lengths, entropies: >= 0 and not NaN."""
    x = _values(args, name)
    checkify.check(
        jnp.all(x >= 0),
        f"`{name}` must be non-negative (and not NaN), but it holds {{m}}.{hint}",
        m=jnp.min(jnp.where(jnp.isnan(x), -jnp.inf, x), initial=0.0),
    )


def token_log_probs(args: dict, name: str, hint: str = "") -> None:
    """Log-probabilities of tokens or sequences: <= 0 (``-inf`` allowed), not NaN."""
    not_nan(args, name)
    x = _values(args, name)
    checkify.check(
        jnp.all(x <= 1e-3),
        f"`{name}` must hold log-probabilities (all <= 0), but its largest value is {{m}}: it "
        f"looks like probabilities, not log-probabilities.{hint}",
        m=jnp.max(x, initial=-jnp.inf),
    )


def log_probabilities(args: dict, name: str) -> None:
    """Normalized log-probabilities: <= 0, and exp sums to 1 along the class axes, within
    ``1e-3`` plus their own rounding (``2u (1 + H)`` for unit roundoff u, row entropy H)."""
    token_log_probs(args, name, " Pass `jnp.log(p)` or `jax.nn.log_softmax(logits)`.")
    x = _values(args, name)
    axes = _class_axes(args, x)
    p = jnp.where(_kept(args, x), jnp.exp(x), 0.0)
    entropy = jnp.sum(jnp.where(p > 0, -p * x, 0.0), axis=axes)
    _check_sums_to_one(
        args,
        name,
        jnp.sum(p, axis=axes),
        1e-3 + 2 * _resolution(args[name]) * (1.0 + entropy),
        f"`{name}` must be normalized log-probabilities: exp(`{name}`) sums to {{s}}, not 1.",
    )


def probabilities(args: dict, name: str) -> None:
    """Probabilities: >= 0, not NaN, summing to 1 along the class axes (within ``1e-3`` plus
    twice the input's unit roundoff)."""
    not_nan(args, name)
    x = _values(args, name)
    checkify.check(
        jnp.all(x >= 0),
        f"`{name}` must hold probabilities, but it has a negative value {{m}}.",
        m=jnp.min(x),
    )
    _check_sums_to_one(
        args,
        name,
        jnp.sum(x, axis=_class_axes(args, x)),
        1e-3 + 2 * _resolution(args[name]),
        f"`{name}` must sum to 1 along the class axis, but a row sums to {{s}}. Normalize it, "
        f"or pass log-probabilities to the `*_with_log_targets` variant.",
    )


def unit_interval(args: dict, name: str, hint: str = "") -> None:
    """Probabilities of independent events (binary targets): in [0, 1]."""
    x = _values(args, name)
    checkify.check(
        jnp.all((x >= 0) & (x <= 1)),
        f"`{name}` must hold probabilities in [0, 1], but it ranges over [{{lo}}, {{hi}}].{hint}",
        lo=jnp.min(x),
        hi=jnp.max(x),
    )


def _num_classes(args: dict) -> int | None:
    if args.get("logits") is not None:
        x = jnp.asarray(args["logits"])
        return math.prod(x.shape[a] for a in _class_axes(args, x))
    if args.get("weight") is not None:
        return jnp.shape(args["weight"])[0 if args.get("weight_layout") == "vd" else -1]
    return None


def labels(args: dict, name: str) -> None:
    """Class indices in ``[0, K)`` or equal to ``ignore_index``, read by value whatever their
    integer dtype; labels shaped like the logits are soft labels (probabilities)."""
    logits_ = args.get("logits")
    if logits_ is not None and jnp.ndim(args[name]) == jnp.ndim(logits_):
        probabilities(args, name)
        return
    label_range(args, name, _num_classes(args))


def label_range(args: dict, name: str, num_classes: int | None) -> None:
    y = as_integer_array(args[name], name)
    ignore_index = args.get("ignore_index")
    valid = (y >= 0) & ((y < num_classes) if num_classes is not None else True)
    valid = valid | equals_index(y, ignore_index)
    valid = valid | ~_kept(args, y)
    checkify.check(
        jnp.all(valid),
        f"`{name}` must lie in [0, {num_classes}) (the number of classes)"
        + ("" if ignore_index is None else f" or equal ignore_index={ignore_index}")
        + ", but it holds {bad}.",
        bad=jnp.where(valid, 0, y).ravel()[jnp.argmin(valid.ravel())],
    )


def segment_ids(args: dict, name: str) -> None:
    """Document ids below ``num_segments`` (negative ids mark padding)."""
    ids = jnp.asarray(args[name])
    num_segments = args.get("num_segments") or ids.shape[-1]
    checkify.check(
        jnp.all(ids < num_segments),
        f"`{name}` holds the id {{bad}}, at or beyond `num_segments`={num_segments}.",
        bad=jnp.max(ids),
    )


# ----------------------------------------------------------------------------- the tables
_BY_NAME: dict[str, Kind] = {
    "logits": logits,
    "target_logits": logits,
    "bias": logits,
    "target_bias": logits,
    "hidden": finite,
    "target_hidden": finite,
    "weight": finite,
    "target_weight": finite,
    "log_predictions": log_probabilities,
    "log_targets": log_probabilities,
    "probs": probabilities,
    "targets": probabilities,
    "labels": labels,
    "counts": non_negative,
    "class_weights": non_negative,
    "pos_weight": non_negative,
    "weights": non_negative,
    "entropy": non_negative,
    "advantages": not_nan,
    "rewards": not_nan,
    "per_example": not_nan,
    "kl": not_nan,
    "segment_ids": segment_ids,
}


def _kind_of(name: str) -> Kind | None:
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name.endswith("log_probs"):  # log_probs, old_log_probs, chosen_log_probs, ...
        return token_log_probs
    if name.endswith("_lengths"):
        return non_negative
    return None


def _torch_target(args: dict, name: str) -> None:
    """``cross_entropy``/``nll_loss`` targets: class indices, or probabilities over axis 1."""
    x, target = jnp.asarray(args["input"]), jnp.asarray(args[name])
    class_axis = 0 if x.ndim == 1 else 1
    if jnp.issubdtype(target.dtype, jnp.floating):
        probabilities(dict(args, axis=class_axis), name)
    else:
        label_range(dict(args, where=None), name, x.shape[class_axis])


_torch_log_input = functools.partial(
    token_log_probs, hint=" Pass `jnp.log(q)` or `jax.nn.log_softmax(logits, axis=1)`."
)
_binary_input = functools.partial(
    unit_interval, hint=" For logits use `binary_cross_entropy_with_logits` instead."
)


def _torch_kl_target(args: dict, name: str) -> None:
    if args.get("log_target"):
        token_log_probs(args, name, " Or pass `log_target=False`.")
    else:
        non_negative(args, name, " For log-probabilities pass `log_target=True`.")


# Functions whose parameter names mean something else than the names table says, by sub-package
# and name: the binary losses (log-odds may be +inf, a certain outcome), generalized KL
# (unnormalized measures) and the PyTorch-named layer (``input`` and ``target``, classes on
# axis 1).
_BY_FUNCTION: dict[str, dict[str, Kind]] = {
    "core.binary_entropy": dict(logits=not_nan),
    "core.sigmoid_binary_cross_entropy": dict(
        logits=not_nan, labels=unit_interval, pos_weight=non_negative
    ),
    "core.generalized_kl_divergence": dict(log_predictions=not_nan, targets=non_negative),
    "torch.cross_entropy": dict(input=logits, target=_torch_target, weight=non_negative),
    "torch.nll_loss": dict(input=_torch_log_input, target=_torch_target, weight=non_negative),
    "torch.kl_div": dict(input=_torch_log_input, target=_torch_kl_target),
    "torch.binary_cross_entropy": dict(input=_binary_input, target=unit_interval),
    "torch.binary_cross_entropy_with_logits": dict(
        input=not_nan, target=unit_interval, weight=non_negative, pos_weight=non_negative
    ),
}
# The functions with optax's names read a `where` of lower rank than the logits as a row mask.
_ROW_WHERE = (
    "core.softmax_cross_entropy",
    "core.safe_softmax_cross_entropy",
    "core.softmax_cross_entropy_with_integer_labels",
)


def _key(fn: Callable) -> str:
    """``sub-package.name``: ``core.binary_entropy``, ``torch.kl_div``."""
    module = getattr(fn, "__module__", None) or ""
    return f"{module.split('.')[1] if module.count('.') else module}.{getattr(fn, '__name__', '')}"


def _kind_for(fn: Callable) -> Callable[[str], Kind | None]:
    special = _BY_FUNCTION.get(_key(fn))
    return _kind_of if special is None else special.get


def _run_checks(plan: tuple, arrays: dict, context: tuple) -> None:
    args = dict(context) | arrays
    for name, kind in plan:
        kind(args, name)


_checker = jax.jit(checkify.checkify(_run_checks), static_argnums=(0, 2))


def _check_call(fn: Callable, kind_of, args: tuple, kwargs: dict):
    """The checkify error of ``fn``'s value checks on one call (compiled once per signature)."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:  # the loss's own error names the mistake
        return None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is p.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    plan = tuple(
        (name, kind)
        for name, value in arguments.items()
        if value is not None and (kind := kind_of(name)) is not None
    )
    arrays = {
        name: operand
        for name, value in arguments.items()
        if name not in _CONTEXT and (operand := as_operand(value)) is not None
    }
    context = tuple(
        (name, tuple(v) if isinstance(v := arguments[name], list) else v)
        for name in _CONTEXT
        if name in arguments
    ) + (("_row_where", _key(fn) in _ROW_WHERE),)
    error, _ = _checker(plan, arrays, context)
    return error


def checked(fn: Callable) -> Callable:
    r"""Wraps a loss so that value-level input mistakes raise a clear ``ValueError``.

    Inside ``jit`` a loss cannot raise on values, so the plain functions poison bad rows with
    NaN. ``checked(fn)`` first checks the inputs under ``jax.experimental.checkify``, then runs
    ``fn`` unchanged, and raises for:

    * NaN or ``+inf`` logits (``-inf``, an excluded class, is allowed), NaN or infinite hidden
      states and weights;
    * an integer label outside :math:`[0, K)` (and not ``ignore_index``), read by value
      whatever its integer dtype;
    * log-probabilities :math:`> 0` or not normalized: the classic mistake of passing
      ``softmax(x)`` where ``log_predictions`` is expected (the background notes' negative
      "KL"), and probabilities passed as the token log-probabilities of the post-training
      losses;
    * negative or NaN probabilities, or probabilities that do not sum to 1 (within ``1e-3``
      plus the input dtype's own rounding, summed in float32, so valid bfloat16 passes);
    * negative class weights, counts or sequence lengths, NaN advantages or rewards, and
      segment ids beyond ``num_segments``;
    * a result that is NaN although the inputs passed (an option outside its range).

    Masked entries (``mask``, ``where``, ``ignore_index``) are not checked, as the losses
    ignore them. Which checks an argument gets follows from its name (the names table in the
    concepts page), so ``checked`` works with every loss of infoloss_jax, ``policy``,
    ``preference`` and ``torch``, the fused ``linear_*`` heads and the ``*_on_mesh`` sharded
    losses included; give your own functions checks with :func:`register_value_checks`.

    Call the wrapped function outside ``jit``, typically while debugging or in tests; inside
    your own ``jit`` use ``checkify.checkify`` directly. The checks are compiled once per
    static signature of the call (the options, and the shapes and dtypes of the arrays), so
    repeated calls compile nothing.

    Args:
      fn: a loss of infoloss_jax, or a function given checks with
        :func:`register_value_checks`.

    Returns:
      A function with ``fn``'s signature that raises ``ValueError`` on bad values.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> probs_not_logs = jax.nn.softmax(jnp.array([0.5, 0.5]))
      >>> target = jax.nn.softmax(jnp.array([0.2, 0.8]))
      >>> try:
      ...     il.checked(il.kl_divergence)(probs_not_logs, target)
      ... except ValueError as e:
      ...     print("caught:", "looks like probabilities" in str(e))
      caught: True

    References:
      ``jax.experimental.checkify`` documentation.
    """
    user_check = _USER_CHECKS.get(fn)
    kind_of = _kind_for(fn)
    try:
        names = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        names = {}
    if user_check is None and not any(kind_of(name) for name in names):
        raise TypeError(
            f"checked() has no value checks for {getattr(fn, '__name__', fn)!r}; it supports "
            "the losses of infoloss_jax and the functions given checks with "
            "register_value_checks."
        )

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if any(is_traced(a) for a in jax.tree.leaves((args, kwargs))):
            raise TypeError(
                f"checked({fn.__name__}) was called on traced values (inside jit, grad or vmap); "
                "call it on concrete arrays, or use jax.experimental.checkify.checkify yourself."
            )
        # The checks run on their own, before the loss: they never change the computation, and
        # losses built on shard_map or custom derivatives are called exactly as without checks.
        if user_check is not None:
            error, _ = checkify.checkify(user_check)(*args, **kwargs)
        else:
            error = _check_call(fn, kind_of, args, kwargs)
        message = error and error.get()
        if message:
            raise ValueError(f"{fn.__name__}: {message.splitlines()[0]}")
        out = fn(*args, **kwargs)
        if any(
            jnp.issubdtype(leaf.dtype, jnp.floating) and bool(jnp.any(jnp.isnan(leaf)))
            for leaf in jax.tree.leaves(out)
            if isinstance(leaf, jax.Array)
        ):
            raise ValueError(
                f"{fn.__name__}: the result contains NaN although the inputs passed the value "
                "checks: an option outside its range, or values beyond the supported range."
            )
        return out

    return wrapper
