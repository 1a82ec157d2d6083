"""``checked``: value-level checks (label ranges, log-space vs probability inputs) via checkify."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from ._caching import ProgramCache, call_compiled, split_call
from ._validation import (
    as_integer_array,
    equals_index,
    is_traced,
    normalize_axis,
)

ValueCheck = Callable[..., None]
_VALUE_CHECKS: dict[Callable, ValueCheck] = {}


def register_value_checks(fn: Callable, check: ValueCheck) -> None:
    """Registers ``check(*args, **kwargs)``, which calls ``checkify.check``, for ``fn``."""
    _VALUE_CHECKS[fn] = check


def _masked(x, where):
    return x if where is None else jnp.where(where, x, 0.0)


def _tolerance(x, atol: float) -> float:
    """``atol``, widened to the input's own resolution (bfloat16 rounds each value by up to
    2**-9 of itself, so a valid row can sum to 1 +- 2**-8)."""
    dtype = jnp.asarray(x).dtype
    if jnp.issubdtype(dtype, jnp.floating):
        return max(atol, float(jnp.finfo(dtype).eps))
    return atol


def _wide(x) -> jax.Array:
    """``x`` in at least float32: sums of half-precision probabilities are checked in float32
    (a bfloat16 sum of valid probabilities can round to 0.996)."""
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _worst_total(total: jax.Array) -> jax.Array:
    """The row sum furthest from 1, for the error message."""
    return total.ravel()[jnp.argmax(jnp.abs(total - 1.0).ravel())]


_LOG_HINT = "Pass `jnp.log(p)` or `jax.nn.log_softmax(logits)`."


def check_log_probabilities(
    x, name: str, *, axis=-1, where=None, atol=1e-3, hint=_LOG_HINT, normalized=True
) -> None:
    """log-probabilities must be <= 0 and (if ``normalized``) normalize along ``axis``;
    probabilities passed instead are caught, with ``hint`` saying what to pass."""
    atol = _tolerance(x, atol)
    x = _wide(x)
    checkify.check(
        jnp.all(_masked(x, where) <= atol),
        f"`{name}` must hold log-probabilities (all <= 0), but its largest value is {{m}}: it "
        f"looks like probabilities, not log-probabilities. {hint}",
        m=jnp.max(_masked(x, where)),
    )
    if normalized:
        total = jnp.sum(_masked(jnp.exp(x), where), axis=normalize_axis(axis, x.ndim))
        checkify.check(
            jnp.all(jnp.abs(total - 1.0) <= atol),
            f"`{name}` must be normalized log-probabilities: exp(`{name}`) sums to {{s}}, not 1.",
            s=_worst_total(total),
        )


def check_unit_interval(x, name: str, hint: str = "") -> None:
    """Probabilities of independent events (binary targets) must lie in [0, 1]."""
    x = _wide(x)
    checkify.check(
        jnp.all((x >= 0) & (x <= 1)),
        f"`{name}` must hold probabilities in [0, 1], but it ranges over [{{lo}}, {{hi}}].{hint}",
        lo=jnp.min(x),
        hi=jnp.max(x),
    )


def check_probabilities(x, name: str, *, axis=-1, where=None, atol: float = 1e-3) -> None:
    """Probabilities must be >= 0 and sum to 1 along the class axes (within ``atol``)."""
    atol = _tolerance(x, atol)
    x = _wide(x)
    axes = normalize_axis(axis, x.ndim)
    checkify.check(
        ~jnp.any(jnp.isnan(_masked(x, where))),
        f"`{name}` contains NaN.",
    )
    checkify.check(
        jnp.all(_masked(x, where) >= 0),
        f"`{name}` must hold probabilities, but it has a negative value {{m}}.",
        m=jnp.min(_masked(x, where)),
    )
    total = jnp.sum(_masked(x, where), axis=axes)
    normalized = jnp.abs(total - 1.0) <= atol
    if where is not None:  # an example whose every class is masked out is not checked
        normalized = normalized | ~jnp.any(jnp.broadcast_to(where, x.shape), axis=axes)
    checkify.check(
        jnp.all(normalized),
        f"`{name}` must sum to 1 along the class axis, but a row sums to {{s}}. Normalize it, "
        f"or pass log-probabilities to the `*_with_log_targets` variant.",
        s=_worst_total(total),
    )


def check_label_range(logits, labels, *, axis=-1, ignore_index=None, num_classes=None) -> None:
    """Integer labels must lie in [0, K) or equal ``ignore_index`` (K from ``logits`` and
    ``axis``, or given as ``num_classes``)."""
    labels = as_integer_array(labels, "labels")
    if num_classes is None:
        logits = jnp.asarray(logits)
        num_classes = math.prod(logits.shape[a] for a in normalize_axis(axis, logits.ndim))
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid = valid | equals_index(labels, ignore_index)
    bad = jnp.where(valid, 0, labels).ravel()[jnp.argmin(valid.ravel())]
    checkify.check(
        jnp.all(valid),
        f"`labels` must lie in [0, {num_classes}) (the number of classes)"
        + ("" if ignore_index is None else f" or equal ignore_index={ignore_index}")
        + ", but it holds {bad}.",
        bad=bad,
    )


def checked(fn: Callable) -> Callable:
    r"""Wraps a loss so that value-level input mistakes raise a clear ``ValueError``.

    Inside ``jit`` a loss cannot raise on values, so the plain functions poison bad rows with
    NaN. ``checked(fn)`` first checks the inputs under ``jax.experimental.checkify``, then runs
    ``fn`` unchanged, and raises for:

    * NaN or ``+inf`` logits (``-inf``, an excluded class, is allowed);
    * an integer label outside :math:`[0, K)` (and not ``ignore_index``), read by value
      whatever its integer dtype;
    * log-probabilities :math:`> 0` or not normalized: the classic mistake of passing
      ``softmax(x)`` where ``log_predictions`` is expected (the background notes' negative
      "KL");
    * negative or NaN probabilities, or probabilities that do not sum to 1 (within ``1e-3``,
      widened to the input dtype's resolution, and summed in float32, so valid bfloat16 passes);
    * negative class weights;
    * a result that is NaN although the inputs passed (an option outside its range).

    It works with every loss of infoloss_jax and infoloss_jax.torch, the fused ``linear_*``
    heads and the ``*_on_mesh`` sharded losses included.

    Call the wrapped function outside ``jit``, typically while debugging or in tests; inside
    your own ``jit`` use ``checkify.checkify`` directly. The checked program is compiled once
    per loss and static signature of the call (the options, and the shapes and dtypes of the
    arrays), so repeated calls compile nothing.

    Args:
      fn: an infoloss_jax loss with registered value checks.

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
    _register_head_checks()
    check = _VALUE_CHECKS.get(fn)
    if check is None:
        raise TypeError(
            f"checked() has no value checks registered for {getattr(fn, '__name__', fn)!r}; "
            "it supports the losses of infoloss_jax and infoloss_jax.torch."
        )

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if any(is_traced(a) for a in jax.tree_util.tree_leaves(args)):
            raise TypeError(
                f"checked({fn.__name__}) was called on traced values (inside jit, grad or vmap); "
                "call it on concrete arrays, or use jax.experimental.checkify.checkify yourself."
            )

        # The checks run on their own, before the loss: they never change the computation, and
        # losses built on shard_map or custom derivatives are called exactly as without checks.
        error, _ = _run_checks(fn, check, args, kwargs)
        message = error.get()
        if message:
            raise ValueError(f"{fn.__name__}: {message.splitlines()[0]}")
        out = fn(*args, **kwargs)
        if any(
            jnp.issubdtype(leaf.dtype, jnp.floating) and bool(jnp.any(jnp.isnan(leaf)))
            for leaf in jax.tree_util.tree_leaves(out)
            if isinstance(leaf, jax.Array)
        ):
            raise ValueError(
                f"{fn.__name__}: the result contains NaN although the inputs passed the value "
                "checks: an option outside its range, or values beyond the supported range."
            )
        return out

    return wrapper


_CHECKED_PROGRAMS = ProgramCache(max_entries=256)


def _run_checks(fn: Callable, check: ValueCheck, args: tuple, kwargs: dict):
    """checkify(check) on the call, compiled once per (fn, check, static signature)."""

    def eager():
        return checkify.checkify(functools.partial(check, **kwargs))(*args)

    split = split_call(fn, args, kwargs)
    if split is None:
        return eager()
    key = (fn, check, split.key)
    return call_compiled(_CHECKED_PROGRAMS, key, split, check, eager, checkify.checkify)


# ----------------------------------------------------------------------------- registrations
def check_logits(x, name: str = "logits", **_) -> None:
    """Logits may be -inf (excluded class) but never NaN or +inf."""
    x = jnp.asarray(x)
    checkify.check(
        ~jnp.any(jnp.isnan(x) | (x == jnp.inf)),
        f"`{name}` contains NaN or +inf; only -inf (an excluded class) is allowed.",
    )


def check_weights(weights, name: str) -> None:
    """Weights (class weights, pos_weight) must be non-negative and not NaN."""
    if weights is None:
        return
    weights = _wide(weights)
    checkify.check(
        jnp.all(weights >= 0),
        f"`{name}` must be non-negative (and not NaN), but it holds {{m}}.",
        m=jnp.min(jnp.where(jnp.isnan(weights), -jnp.inf, weights)),
    )


def _finite(x, name: str) -> None:
    checkify.check(jnp.all(jnp.isfinite(_wide(x))), f"`{name}` contains NaN or an infinity.")


def _two_logits(logits, target_logits, **_) -> None:
    check_logits(logits)
    check_logits(target_logits, "target_logits")


def _integer_labels(logits, labels, axis=-1, where=None, *, ignore_index=None, **options) -> None:
    check_logits(logits)
    check_label_range(logits, labels, axis=axis, ignore_index=ignore_index)
    check_weights(options.get("class_weights"), "class_weights")


def _register_core_checks() -> None:
    from ..core import _cross_entropy as ce
    from ..core import _divergences as div
    from ..core import _entropy as ent

    def kl(log_predictions, targets, axis=-1, where=None):
        check_log_probabilities(log_predictions, "log_predictions", axis=axis, where=where)
        check_probabilities(targets, "targets", axis=axis, where=where)

    def kl_log_targets(log_predictions, log_targets, axis=-1, where=None):
        check_log_probabilities(log_predictions, "log_predictions", axis=axis, where=where)
        check_log_probabilities(log_targets, "log_targets", axis=axis, where=where)

    def generalized_kl(log_predictions, targets, axis=-1, where=None):
        checkify.check(
            jnp.all(_masked(_wide(targets), where) >= 0),
            "`targets` must be non-negative measures, but it has a negative value (or NaN).",
        )

    def soft_labels(logits, labels, axis=-1, where=None, **_):
        check_logits(logits)
        logits = jnp.asarray(logits)  # a per-example `where` is broadcast over the classes
        mask = ce.integer_where(where, logits, labels, normalize_axis(axis, logits.ndim))
        check_probabilities(labels, "labels", axis=axis, where=mask)

    def probs(probs, *, axis=-1, where=None, **_):
        check_probabilities(probs, "probs", axis=axis, where=where)

    def counts(counts, **_):
        checkify.check(
            jnp.all(_wide(counts) >= 0), "`counts` must be non-negative, but one is < 0 (or NaN)."
        )

    def binary_labels(logits, labels, **options):
        check_logits(logits)
        check_unit_interval(labels, "labels", " Binary cross-entropy needs them.")
        check_weights(options.get("pos_weight"), "pos_weight")

    for fn, check in [
        (div.kl_divergence, kl),
        (div.kl_divergence_with_log_targets, kl_log_targets),
        (div.generalized_kl_divergence, generalized_kl),
        (ce.softmax_cross_entropy, soft_labels),
        (ce.safe_softmax_cross_entropy, soft_labels),
        (ce.softmax_cross_entropy_with_integer_labels, _integer_labels),
        (ce.sigmoid_binary_cross_entropy, binary_labels),
        (ent.entropy, check_logits),
        (ent.binary_entropy, check_logits),
        (ent.entropy_from_probs, probs),
        (ent.entropy_from_counts, counts),
    ]:
        register_value_checks(fn, check)


@functools.cache  # on first use: the fused and sharded modules import this one
def _register_head_checks() -> None:
    """The fused heads and the on-mesh sharded losses, by their public signatures, and every
    form of each declared divergence (found by its name)."""
    import infoloss_jax as il

    from .. import sharded
    from ..engine._loss_spec import declared_divergences
    from ..heads import _fused

    def linear_ce(hidden, labels, weight, *, bias=None, ignore_index=None, **options):
        _finite(hidden, "hidden")
        _finite(weight, "weight")
        if bias is not None:
            check_logits(bias, "bias")
        check_label_range(
            None, labels, ignore_index=ignore_index, num_classes=jnp.shape(weight)[-1]
        )
        check_weights(options.get("class_weights"), "class_weights")

    def linear_pair(hidden, weight, target_hidden, target_weight, **_):
        names = ("hidden", "weight", "target_hidden", "target_weight")
        for x, name in zip((hidden, weight, target_hidden, target_weight), names, strict=True):
            _finite(x, name)

    table = [
        (_fused, "linear_softmax_cross_entropy", linear_ce),
        (sharded, "vocab_parallel_cross_entropy_on_mesh", _integer_labels),
        (sharded, "vocab_parallel_linear_cross_entropy_on_mesh", linear_ce),
    ]
    for divergence in declared_divergences():
        name = divergence.name
        table += [
            (il, name, _two_logits),
            (il, f"linear_{name}", linear_pair),
            (sharded, f"vocab_parallel_{name}_on_mesh", _two_logits),
            (sharded, f"vocab_parallel_linear_{name}_on_mesh", linear_pair),
        ]
    for module, name, check in table:
        fn = getattr(module, name, None)
        if fn is not None:
            register_value_checks(fn, check)


_register_core_checks()
