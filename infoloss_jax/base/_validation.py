"""Trace-time argument checks shared by every loss.

Each check raises ``TypeError`` (wrong dtype) or ``ValueError`` (wrong shape or value) while the
function is being traced, naming the argument, what it got and what was expected. Nothing here
looks at array *values*: those mistakes are handled by NaN-poisoning and by
:func:`infoloss_jax.checked`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import operator
import typing
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ._typing import Reduction

Axis = int | tuple[int, ...]

REDUCTIONS: tuple[str, ...] = typing.get_args(Reduction)


def describe(x: jax.Array) -> str:
    """`float32[4, 10]`-style summary used in error messages."""
    return f"{x.dtype}{list(x.shape)}"


def as_float_array(x, name: str) -> jax.Array:
    """Converts ``x`` to a floating-point array or raises ``TypeError`` naming ``name``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be a floating-point array (float16, bfloat16, float32 or float64); "
            f"got {describe(x)}. Cast it with `.astype(jnp.float32)`."
        )
    return x


# Labels that no class index or ignore_index can equal stand in for integers that do not fit the
# label dtype: they read as out of range (a NaN row), never as some valid class or as ignored.
LABEL_SENTINEL = -(2**31)


def as_integer_array(x, name: str) -> jax.Array:
    """Converts ``x`` to a signed integer array (int32, or int64 under x64) or raises TypeError.

    Every integer dtype is read by value: narrow and unsigned dtypes widen exactly, and values
    that do not fit the canonical dtype (a uint32 above 2**31 - 1, or an int64 from NumPy when
    x64 is off) become :data:`LABEL_SENTINEL`, an out-of-range label, instead of wrapping round
    onto a valid class or onto ``ignore_index``.
    """
    if not isinstance(x, jax.Array) and not is_traced(x):
        host = np.asarray(x)
        if host.dtype.kind in "iu":
            target = np.dtype(jax.dtypes.canonicalize_dtype(np.int64))
            info = np.iinfo(target)
            if host.size and (host.min() < info.min or host.max() > info.max):
                host = np.where((host < info.min) | (host > info.max), LABEL_SENTINEL, host)
            x = host.astype(target)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"`{name}` must hold integer class indices (an int32 or int64 array); got "
            f"{describe(x)}. For probability targets use the soft-label function instead."
        )
    target = jax.dtypes.canonicalize_dtype(np.int64)
    if x.dtype == target:
        return x
    if jnp.iinfo(x.dtype).max > jnp.iinfo(target).max:  # unsigned of the same width
        too_big = x > jnp.asarray(jnp.iinfo(target).max, x.dtype)
        return jnp.where(too_big, LABEL_SENTINEL, x.astype(target))
    return x.astype(target)


def equals_index(labels: jax.Array, value) -> jax.Array:
    """``labels == value`` for a static Python int, False where ``value`` does not fit the dtype
    (so a large ``ignore_index`` never wraps round onto a real label) or is None."""
    info = jnp.iinfo(labels.dtype)
    if value is None or not info.min <= int(value) <= info.max:
        return jnp.zeros(labels.shape, bool)
    return labels == int(value)


def accumulation_dtype(*dtypes) -> jnp.dtype:
    """The dtype losses are computed in: at least float32, float64 when an input is float64."""
    return jnp.result_type(*dtypes, jnp.float32)


def upcast(x: jax.Array, dtype=None) -> jax.Array:
    """Casts half-precision inputs up to float32 (or to ``dtype``); leaves wider inputs alone."""
    return x.astype(dtype if dtype is not None else accumulation_dtype(x.dtype))


def normalize_axis(axis: Axis | None, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Returns ``axis`` as a tuple of non-negative ints **in the order given** (None: all).

    The order matters where classes are flattened (a tuple ``axis`` indexes integer labels in
    row-major order over the axes as listed, as optax does); reductions ignore it.
    """
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int | np.integer) and not isinstance(axis, bool):
        axes = (axis,)
    elif isinstance(axis, tuple | list):
        axes = tuple(axis)
    else:
        raise TypeError(
            f"`{name}` must be a static int or a tuple of ints; got {axis!r} "
            f"({type(axis).__name__})."
        )
    if not axes:
        raise ValueError(f"`{name}` must name at least one axis; got {axis!r}.")
    normalized = []
    for a in axes:
        if not isinstance(a, int | np.integer) or isinstance(a, bool):
            raise TypeError(
                f"`{name}` must be a static int or a tuple of ints; got {axis!r} (an entry of "
                f"type {type(a).__name__})."
            )
        if not -ndim <= a < ndim:
            raise ValueError(
                f"`{name}`={axis!r} is out of range for an input with {ndim} dimension(s)."
            )
        normalized.append(int(a) % ndim)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"`{name}`={axis!r} names the same axis twice.")
    return tuple(normalized)


def check_has_classes(x: jax.Array, axes: tuple[int, ...], name: str = "logits") -> int:
    """The number of classes along ``axes``; ValueError naming ``name`` when it is 0."""
    num_classes = math.prod(x.shape[a] for a in axes)
    if num_classes == 0:
        raise ValueError(
            f"`{name}` {describe(x)} has no classes along axis {axes}: a distribution needs at "
            f"least one class."
        )
    return num_classes


def check_same_shape(a: jax.Array, a_name: str, b: jax.Array, b_name: str) -> None:
    """Raises ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"`{a_name}` and `{b_name}` must have the same shape; got `{a_name}` "
            f"{describe(a)} and `{b_name}` {describe(b)}."
        )


def check_broadcastable(x: jax.Array, x_name: str, shape: Sequence[int], to_name: str) -> None:
    """Raises ``ValueError`` unless ``x`` broadcasts to ``shape`` without changing it."""
    try:
        out = np.broadcast_shapes(tuple(x.shape), tuple(shape))
    except ValueError:
        out = None
    if out != tuple(shape):
        raise ValueError(
            f"`{x_name}` with shape {list(x.shape)} is not broadcastable to the shape of "
            f"`{to_name}` {list(shape)}."
        )


def as_where(where, shape: Sequence[int], to_name: str = "logits") -> jax.Array | None:
    """Validates a boolean ``where`` mask and broadcasts it to ``shape``."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"`where` must be a boolean mask (True = keep the class); got {describe(where)}."
        )
    check_broadcastable(where, "where", shape, to_name)
    return jnp.broadcast_to(where, tuple(shape))


def check_temperature(temperature) -> None:
    """Raises ``ValueError`` unless a concrete temperature is a positive finite number (a traced
    one is left to the caller)."""
    scheduled_number(temperature, "temperature", low=0.0, low_open=True)


def check_beta(beta) -> float:
    """``beta`` as a Python float; ValueError unless it lies in [0, 1], TypeError if traced."""
    b = static_number(beta, "beta")
    scheduled_number(b, "beta", low=0.0, high=1.0)
    return b


def log_of_base(base) -> float | None:
    """Returns log(base) for unit conversion, or None for nats. Validates ``base``."""
    if base is None:
        return None
    b = static_number(base, "base")
    if not math.isfinite(b) or b <= 0 or b == 1:
        raise ValueError(
            f"`base` must be a positive number other than 1 (2 for bits, e for nats); got {base!r}."
        )
    return math.log(b)


def in_base(x: jax.Array, base) -> jax.Array:
    """Converts a quantity in nats to ``base`` units."""
    log_b = log_of_base(base)
    return x if log_b is None else x / log_b


def check_reduction(reduction, valid: tuple[str, ...] = REDUCTIONS) -> str:
    """Raises ``ValueError`` listing the ``valid`` reductions for an unknown one."""
    if not isinstance(reduction, str):
        raise TypeError(f"`reduction` must be a static string; got {type(reduction).__name__}.")
    if reduction not in valid:
        names = ", ".join(repr(r) for r in valid)
        raise ValueError(f"Unknown `reduction`={reduction!r}; expected one of {names}.")
    return reduction


# ----------------------------------------------------------------------------- options
# The rule for options (docs/concepts.md, bad input row 7): numeric coefficients that training
# schedules (temperature, label_smoothing, z_loss, beta, ...) may be traced; a traced value
# outside its range turns the result into NaN, which `checked` reports, and a concrete one
# raises ValueError at once. Structural options (axis, ignore_index, logit_softcap, reduction,
# base, block sizes, backward) must be static Python values.


def is_traced(value) -> bool:
    """True for a value only known at run time (a tracer under jit, grad or vmap)."""
    return isinstance(value, Tracer)


def static_number(value, name: str) -> float:
    """A static option as a Python float; TypeError names ``name`` for a traced value."""
    if is_traced(value):
        raise TypeError(
            f"`{name}` must be a static Python number, not a traced value: it selects the "
            f"program's structure. Pass it as a Python number (or mark it static in jit)."
        )
    v = np.asarray(value)
    if v.shape != () or not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
        raise TypeError(f"`{name}` must be a real scalar; got {value!r}.")
    return float(v)


# The eager cache (._caching) traces a loss's numbers as operands; while it traces, it listens
# here to learn the range of each coefficient, and checks later concrete values against it.
_COEFFICIENT_LISTENER: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "coefficient_listener", default=None
)


@contextlib.contextmanager
def listening_to_coefficients(note: Callable):
    """Calls ``note(value, check)`` for each traced coefficient validated inside the block;
    ``check(concrete)`` repeats the validation on a concrete value."""
    token = _COEFFICIENT_LISTENER.set(note)
    try:
        yield
    finally:
        _COEFFICIENT_LISTENER.reset(token)


def scheduled_number(
    value,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
):
    """Validates an option that may be traced (a scheduled coefficient).

    Returns ``(value, ok)``. A concrete value is checked now (ValueError naming ``name`` and the
    range) and comes back as a Python float with ``ok=None``. A traced value comes back as a
    float scalar array (at least float32, or weakly typed like the Python number it stands
    for) with ``ok``, a boolean scalar that is False when the
    value is outside its range or not finite; pass results through :func:`poison_unless` with it.
    """
    traced = is_traced(value)
    if traced:
        note = _COEFFICIENT_LISTENER.get()
        if note is not None:
            bounds = dict(low=low, high=high, low_open=low_open, high_open=high_open)
            note(value, functools.partial(scheduled_number, name=name, **bounds))
        v = jnp.asarray(value)
        real = jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)
        if v.shape != () or not real:
            raise TypeError(f"`{name}` must be a real scalar; got {describe(v)}.")
        if jax.typeof(v).weak_type:  # a Python number: as weakly typed as its concrete value
            v = v * 1.0
        else:
            v = v.astype(jnp.result_type(v.dtype, jnp.float32))
    else:
        v = static_number(value, name)
    in_range = ((v > low) if low_open else (v >= low)) & ((v < high) if high_open else (v <= high))
    if traced:
        return v, jnp.isfinite(v) & in_range
    if not (math.isfinite(v) and in_range):
        expected = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be a finite number in {expected}; got {value!r}.")
    return v, None


def poison_unless(x: jax.Array, ok) -> jax.Array:
    """``x`` where ``ok`` (a traced option's validity) holds, NaN elsewhere; no-op for None."""
    if ok is None:
        return x
    return jnp.where(ok, x, jnp.nan)


def all_ok(*oks):
    """The conjunction of traced validity flags (None for a static, already checked, value)."""
    flags = [ok for ok in oks if ok is not None]
    return functools.reduce(operator.and_, flags) if flags else None
