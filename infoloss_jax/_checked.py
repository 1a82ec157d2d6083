"""``checked``: value-level checks (label ranges, log-space vs probability inputs) via checkify."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from ._caching import EAGER, ProgramCache, jit_of_call, split_call
from ._validation import is_traced, normalize_axis

ValueCheck = Callable[..., None]
_VALUE_CHECKS: dict[Callable, ValueCheck] = {}


def register_value_checks(fn: Callable, check: ValueCheck) -> None:
    """Registers ``check(*args, **kwargs)``, which calls ``checkify.check``, for ``fn``."""
    _VALUE_CHECKS[fn] = check


def _masked(x, where):
    return x if where is None else jnp.where(where, x, 0.0)


def check_log_probabilities(x, name: str, *, axis=-1, where=None, atol: float = 1e-3) -> None:
    """log-probabilities must be <= 0 and normalize; probabilities passed instead are caught."""
    x = jnp.asarray(x)
    axes = normalize_axis(axis, x.ndim)
    checkify.check(
        jnp.all(_masked(x, where) <= atol),
        f"`{name}` must hold log-probabilities (all <= 0), but its largest value is {{m}}: it "
        f"looks like probabilities, not log-probabilities. Pass `jnp.log(p)` or "
        f"`jax.nn.log_softmax(logits)`.",
        m=jnp.max(_masked(x, where)),
    )
    total = jnp.sum(_masked(jnp.exp(x), where), axis=axes)
    checkify.check(
        jnp.all(jnp.abs(total - 1.0) <= atol),
        f"`{name}` must be normalized log-probabilities: exp(`{name}`) sums to {{s}}, not 1.",
        s=total.ravel()[jnp.argmax(jnp.abs(total - 1.0).ravel())],
    )


def check_probabilities(x, name: str, *, axis=-1, where=None, atol: float = 1e-3) -> None:
    """Probabilities must be >= 0 and sum to 1 along the class axes (within ``atol``)."""
    x = jnp.asarray(x)
    axes = normalize_axis(axis, x.ndim)
    checkify.check(
        jnp.all(_masked(x, where) >= 0),
        f"`{name}` must hold probabilities, but it has a negative value {{m}}.",
        m=jnp.min(_masked(x, where)),
    )
    total = jnp.sum(_masked(x, where), axis=axes)
    checkify.check(
        jnp.all(jnp.abs(total - 1.0) <= atol),
        f"`{name}` must sum to 1 along the class axis, but a row sums to {{s}}. Normalize it, "
        f"or pass log-probabilities to the `*_with_log_targets` variant.",
        s=total.ravel()[jnp.argmax(jnp.abs(total - 1.0).ravel())],
    )


def check_label_range(logits, labels, *, axis=-1, ignore_index=None) -> None:
    """Integer labels must lie in [0, K) or equal ``ignore_index``."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    num_classes = math.prod(logits.shape[a] for a in normalize_axis(axis, logits.ndim))
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid = valid | (labels == ignore_index)
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
    NaN. ``checked(fn)`` runs the same computation under ``jax.experimental.checkify`` and
    raises for:

    * an integer label outside :math:`[0, K)` (and not ``ignore_index``);
    * log-probabilities :math:`> 0` or not normalized: the classic mistake of passing
      ``softmax(x)`` where ``log_predictions`` is expected (the background notes' negative
      "KL");
    * negative probabilities, or probabilities that do not sum to 1 (within ``1e-3``).

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

        error, out = _run_checked(fn, check, args, kwargs)
        message = error.get()
        if message:
            raise ValueError(f"{fn.__name__}: {message.splitlines()[0]}")
        return out

    return wrapper


_CHECKED_PROGRAMS = ProgramCache(max_entries=256)


def _run_checked(fn: Callable, check: ValueCheck, args: tuple, kwargs: dict):
    """checkify(check, then fn) on the call, compiled once per (fn, check, static signature)."""

    def run(*inner, **inner_kwargs):
        check(*inner, **inner_kwargs)
        return fn(*inner, **inner_kwargs)

    split = split_call(fn, args, kwargs)
    if split is not None:
        template = split.template
        key = (fn, check, split.key)
        program = _CHECKED_PROGRAMS.get(key, lambda: jit_of_call(run, template, checkify.checkify))
        if program is not EAGER:
            try:
                return program(split.dynamic)
            except jax.errors.ConcretizationTypeError:
                _CHECKED_PROGRAMS.put(key, EAGER)
    return checkify.checkify(functools.partial(run, **kwargs))(*args)


# ----------------------------------------------------------------------------- registrations
def check_logits(x, name: str = "logits", **_) -> None:
    """Logits may be -inf (excluded class) but never NaN or +inf."""
    x = jnp.asarray(x)
    checkify.check(
        ~jnp.any(jnp.isnan(x) | (x == jnp.inf)),
        f"`{name}` contains NaN or +inf; only -inf (an excluded class) is allowed.",
    )


def _register_core_checks() -> None:
    from . import _cross_entropy as ce
    from . import _divergences as div
    from . import _entropy as ent

    def kl(log_predictions, targets, *, axis=-1, where=None):
        check_log_probabilities(log_predictions, "log_predictions", axis=axis, where=where)
        check_probabilities(targets, "targets", axis=axis, where=where)

    def kl_log_targets(log_predictions, log_targets, *, axis=-1, where=None):
        check_log_probabilities(log_predictions, "log_predictions", axis=axis, where=where)
        check_log_probabilities(log_targets, "log_targets", axis=axis, where=where)

    def generalized_kl(log_predictions, targets, *, axis=-1, where=None):
        checkify.check(
            jnp.all(_masked(jnp.asarray(targets), where) >= 0),
            "`targets` must be non-negative measures, but it has a negative value.",
        )

    def soft_labels(logits, labels, *, axis=-1, where=None, **_):
        check_logits(logits)
        check_probabilities(labels, "labels", axis=axis, where=where)

    def integer_labels(logits, labels, *, axis=-1, ignore_index=None, **_):
        check_logits(logits)
        check_label_range(logits, labels, axis=axis, ignore_index=ignore_index)

    def probs(probs, *, axis=-1, where=None, **_):
        check_probabilities(probs, "probs", axis=axis, where=where)

    def counts(counts, **_):
        checkify.check(
            jnp.all(jnp.asarray(counts) >= 0), "`counts` must be non-negative, but one is < 0."
        )

    def binary_labels(logits, labels, **_):
        check_logits(logits)
        labels = jnp.asarray(labels)
        checkify.check(
            jnp.all((labels >= 0) & (labels <= 1)),
            "`labels` must be probabilities in [0, 1] for binary cross-entropy.",
        )

    def two_logits(logits, target_logits, **_):
        check_logits(logits)
        check_logits(target_logits, "target_logits")

    for fn, check in [
        (div.kl_divergence, kl),
        (div.kl_divergence_with_log_targets, kl_log_targets),
        (div.generalized_kl_divergence, generalized_kl),
        (div.forward_kl, two_logits),
        (div.reverse_kl, two_logits),
        (div.jensen_shannon, two_logits),
        (ce.softmax_cross_entropy, soft_labels),
        (ce.safe_softmax_cross_entropy, soft_labels),
        (ce.softmax_cross_entropy_with_integer_labels, integer_labels),
        (ce.sigmoid_binary_cross_entropy, binary_labels),
        (ent.entropy, check_logits),
        (ent.binary_entropy, check_logits),
        (ent.entropy_from_probs, probs),
        (ent.entropy_from_counts, counts),
    ]:
        register_value_checks(fn, check)


_register_core_checks()
