"""Eager calls that reuse one compiled program: ``cached_eager``.

An eager call of a loss runs op by op, and anything the loss builds afresh on each call (a
``lax.cond`` branch, a custom-derivative rule, a ``shard_map``) costs a backend compile every
time. ``@cached_eager("axis", "reduction", ...)`` routes each eager call through a ``jax.jit`` of
the loss, built once per function and per value of the parameters it names: the *static* ones,
which shape the program (axes, string options, structural numbers, callables). Every other
argument is an operand of the program and is traced, as ``jax.jit`` traces it, Python numbers
included; so a new array, or a new value of a traceable coefficient, compiles nothing.

A traceable coefficient (``temperature``, ``beta``, ...) is range-checked by
:func:`~._validation.scheduled_number`. While the program is traced, that function reports each
range it applies to an operand; after every call the cache checks the call's concrete value
against it, so a bad concrete value still raises the ``ValueError`` an uncached call raises.

Under an outer trace (an eager ``jax.grad``, ``jax.vmap``, or inside ``jax.jit``) the call
goes through the same kind of program: an eager gradient then compiles its forward and backward
passes once each, instead of running them op by op (inside ``jax.jit`` or ``jax.vmap`` its
Python numbers are static, as they would be uncached).

A call the cache cannot express runs uncached: one with an unhashable
static value (an array where a structural option is expected), a 64-bit NumPy integer array
that ``jit`` would narrow, or a call whose loss needs a concrete value of an operand (its first
``ConcretizationTypeError`` sends that static signature to plain eager calls for good).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

from ._validation import is_traced, listening_to_coefficients

F = TypeVar("F", bound=Callable[..., Any])

_MAX_PROGRAMS = 64  # compiled programs kept per function (least recently used dropped first)
_OPERAND = object()  # the place of a traced argument in a call's layout
_NUMBERS = (int, float, complex, np.number)
_OPERANDS = (jax.Array, np.ndarray, *_NUMBERS)


def cached_eager(*static: str) -> Callable[[F], F]:
    """Decorates a public loss so that repeated eager calls reuse one compiled program.

    Args:
      *static: the names of the parameters that select the program (part of the cache key,
        passed on as they are); every other argument is traced.

    Inside ``jax.jit`` or ``jax.vmap`` Python numbers are static as well.
    Validation runs while the program is traced, so errors and their messages are those of
    the loss.
    """

    if not all(isinstance(name, str) for name in static):  # a bare @cached_eager
        raise TypeError("cached_eager takes the static parameters' names: @cached_eager('axis').")

    def decorate(fn: F) -> F:
        parameters = inspect.signature(fn).parameters
        unknown = set(static) - set(parameters)
        if unknown:
            raise TypeError(f"cached_eager: {fn.__name__} has no parameter {sorted(unknown)}.")
        positional = [
            name
            for name, p in parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        static_names = frozenset(static)

        @functools.lru_cache(maxsize=_MAX_PROGRAMS)
        def program(layout: tuple) -> _Program:
            return _Program(fn, layout)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            call = _split(positional, static_names, args, kwargs)
            if call is None:
                return fn(*args, **kwargs)
            layout, operands = call
            return program(layout)(operands, lambda: fn(*args, **kwargs))

        return wrapper  # type: ignore[return-value]

    return decorate


_CONTEXT: list[Any] = []  # trace-time settings that key every program (see trace_context)


@contextlib.contextmanager
def trace_context(value: Any):
    """Within the block, ``value`` (hashable) joins the key of every cached program: for a
    setting a loss reads while it is traced, so programs traced outside are not reused."""
    _CONTEXT.append(value)
    try:
        yield
    finally:
        _CONTEXT.pop()


def _split(positional: list[str], static: frozenset, args: tuple, kwargs: dict):
    """``(layout, operands)`` of a call, or None for a call that runs uncached.

    ``layout`` is the hashable key: the number of positional arguments, then per argument its
    name and either its static value (with its type, so 1, 1.0 and True differ) or a marker,
    then the operands' tree structure. Where the call is staged (inside ``jax.jit``) or
    batched (``jax.vmap``), Python numbers are static too, so the loss sees them as it would
    uncached: a static coefficient at an end point still selects the end point's program. An
    eager ``jax.grad`` traces them, as an eager call does: a new value compiles nothing.
    """
    if len(args) > len(positional):
        return None
    staged = _is_staged((args, kwargs))
    layout: list = [len(args)]
    operands: list = []
    for name, value in [*zip(positional, args, strict=False), *sorted(kwargs.items())]:
        if name in static or (staged and _is_number(value)):
            layout.append((name, type(value), value))
            continue
        operand = as_operand(value)
        if operand is None and value is not None:
            return None
        layout.append((name, _OPERAND))
        operands.append(operand)
    # An optional operand (None or an array) changes which leaf holds which coefficient, so the
    # operands' tree structure keys the program and its learned checks.
    layout.append(jax.tree.structure(operands))
    layout.append(tuple(_CONTEXT))
    try:
        hash(tuple(layout))
    except TypeError:  # an unhashable static value
        return None
    return tuple(layout), operands


def _is_staged(tree) -> bool:
    """Some argument is abstract: the call is being staged (``jax.jit``) or batched
    (``jax.vmap``), not differentiated eagerly (whose tracers hold concrete values)."""
    return any(is_traced(x) and not _holds_value(x) for x in jax.tree.leaves(tree))


def _holds_value(tracer) -> bool:
    """An eager ``jax.grad``'s tracer carries its concrete value; a staged one does not."""
    to_value = getattr(tracer, "to_concrete_value", None)
    return to_value is not None and to_value() is not None


def as_operand(value):
    """What ``jit`` is given for a traced argument; None when it cannot take the value.

    A list or tuple of numbers becomes one NumPy array (not one operand per number). A 64-bit
    NumPy integer array without x64 is refused: ``jit`` would wrap its values into int32
    before the loss can read them (labels are read by value).
    """
    if isinstance(value, list | tuple) and value and all(isinstance(v, _NUMBERS) for v in value):
        value = np.asarray(value)
    leaves = jax.tree.leaves(value)
    if not all(_is_operand(x) for x in leaves):
        return None
    for x in leaves:
        wide = isinstance(x, np.ndarray | np.integer) and x.dtype.kind in "iu" and x.itemsize == 8
        if wide and not jax.config.jax_enable_x64:  # pyright: ignore[reportAttributeAccessIssue]
            return None
    return value


def _is_number(value) -> bool:
    """A Python number, or a list or tuple of them."""
    if isinstance(value, list | tuple):
        return bool(value) and all(isinstance(v, int | float | complex) for v in value)
    return isinstance(value, int | float | complex)


def _is_operand(x) -> bool:
    """Arrays and numbers; not booleans, which select code as flags do."""
    return isinstance(x, _OPERANDS) and not isinstance(x, bool)


class _Program:
    """The ``jax.jit`` of one static signature of a loss, and the coefficient checks it learned.

    ``checks`` maps (operand leaf, coefficient name) to the range check
    :func:`~._validation.scheduled_number` applied to that leaf while the program was traced.
    """

    def __init__(self, fn: Callable, layout: tuple):
        self.checks: dict[tuple[int, str], Callable] = {}
        self.eager = False
        num_positional, *entries, _, _ = layout

        def run(operands: list):
            leaf_index = {id(x): i for i, x in enumerate(jax.tree.leaves(operands))}

            def note(value, check: functools.partial) -> None:
                if id(value) in leaf_index:
                    self.checks[(leaf_index[id(value)], check.keywords["name"])] = check

            values = iter(operands)
            filled = [next(values) if e[1] is _OPERAND else e[2] for e in entries]
            names = [e[0] for e in entries]
            kwargs = dict(zip(names[num_positional:], filled[num_positional:], strict=True))
            with listening_to_coefficients(note):
                return fn(*filled[:num_positional], **kwargs)

        self.jitted = jax.jit(run)

    def __call__(self, operands: list, eager: Callable):
        if self.eager:
            return eager()
        try:
            out = self.jitted(operands)
        except jax.errors.ConcretizationTypeError:
            self.eager = True
            return eager()
        leaves = jax.tree.leaves(operands)
        for (i, _), check in list(self.checks.items()):
            if not is_traced(leaves[i]):  # a bad concrete coefficient: an uncached call's error
                check(leaves[i])
        return out
