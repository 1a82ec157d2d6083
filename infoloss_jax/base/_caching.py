"""Eager calls that reuse one compiled program: ``cached_eager`` and the cache behind it.

An eager call of a loss runs op by op, and anything the loss builds afresh on each call (a
``lax.cond`` branch, a custom-derivative rule, a ``shard_map``) costs a backend compile every
time. ``cached_eager`` routes it through a ``jax.jit`` of the loss built once per function and
per *static signature* of the call (the non-array arguments by type and value, and which
arguments are arrays), so identical calls reuse one executable. Which parameters hold arrays is
read from their annotations (``ArrayLike``, ``PyTree``); :func:`_as_traced` says which of their
values are traced. A call the cache cannot express (an unhashable value, or a concrete array
where a static option is expected) runs eagerly, so validation and its messages never change.
"""

from __future__ import annotations

import collections
import functools
import inspect
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

F = TypeVar("F", bound=Callable[..., Any])

_MAX_ENTRIES = 64  # compiled programs kept per function (least recently used dropped first)
_ARRAY_ANNOTATIONS = ("ArrayLike", "PyTree", "Array")
_NUMBERS = (bool, int, float, complex)
_SCALARS = (type(None), *_NUMBERS, str, bytes)


class _Uncacheable(Exception):
    """A call whose arguments the cache cannot express; it runs eagerly instead."""


def _is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _narrowed_by_jit(x) -> bool:
    wide_integer = np.issubdtype(x.dtype, np.integer) and np.dtype(x.dtype).itemsize == 8
    return wide_integer and not isinstance(x, jax.Array) and not jax.config.jax_enable_x64  # pyright: ignore[reportAttributeAccessIssue]  # dynamic option


def _as_traced(value):
    """What an array parameter's value becomes as a traced argument; None to keep it static.

    Arrays and pytrees of them are traced as they are. A Python number stays static: the loss
    validates it as a concrete value (``num_tokens=0`` is an error, not a NaN). A list or tuple
    of numbers becomes the array ``jnp.asarray`` makes of it. A 64-bit NumPy integer array
    without x64 is not cached: ``jit`` would wrap its values into int32 before the loss can
    read them. Anything else (None, strings, functions) stays static.
    """
    if isinstance(value, _NUMBERS):
        return None
    if _is_array(value):
        if _narrowed_by_jit(value):
            raise _Uncacheable
        return value
    if value is None or isinstance(value, str | bytes):
        return None
    leaves = jax.tree_util.tree_leaves(value)
    if not leaves:
        raise _Uncacheable
    if isinstance(value, list | tuple) and all(isinstance(leaf, _NUMBERS) for leaf in leaves):
        try:
            if np.asarray(value).dtype == object:
                raise _Uncacheable
        except ValueError:  # ragged
            raise _Uncacheable from None
        return jnp.asarray(value)
    if all(_is_array(leaf) or isinstance(leaf, _NUMBERS) for leaf in leaves):
        return value
    return None  # a function, say: static when hashable


def _freeze(value) -> Hashable:
    """A hashable stand-in for a static value that tells 1, 1.0 and True apart."""
    if isinstance(value, _SCALARS):
        return (type(value), value)
    if isinstance(value, list | tuple):
        return (type(value), tuple(_freeze(v) for v in value))
    if _is_array(value) or isinstance(value, dict | set):
        raise _Uncacheable
    try:
        hash(value)
    except TypeError:
        raise _Uncacheable from None
    return (type(value), value)


def _array_parameters(fn: Callable) -> tuple[list[str], set[str], set[str] | None]:
    """(positional parameter names, names that hold arrays, declared names if **kwargs).

    The last item is None when ``fn`` takes no ``**kwargs``; otherwise a keyword outside the
    declared names goes to ``**kwargs`` (options passed through, where arrays are traced).
    """
    positional: list[str] = []
    arrays: set[str] = set()
    declared: set[str] = set()
    var_keyword = False
    for name, parameter in inspect.signature(fn).parameters.items():
        annotation = parameter.annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        holds_arrays = any(a in str(text) for a in _ARRAY_ANNOTATIONS)
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            positional.append(name)
        if parameter.kind is parameter.VAR_KEYWORD:
            var_keyword = True
            continue
        declared.add(name)
        if holds_arrays:
            arrays.add(name)
    return positional, arrays, (declared if var_keyword else None)


class _Split:
    """One call's arguments split into a static key and the traced (dynamic) arrays.

    ``key`` identifies the call's static signature; ``dynamic`` holds its arrays, in order;
    ``template`` rebuilds ``(args, kwargs)`` from them and holds no array.
    """

    def __init__(self, signature, args: tuple, kwargs: dict):
        positional, arrays, declared = signature
        if len(args) > len(positional):
            raise _Uncacheable
        named = [(positional[i], a) for i, a in enumerate(args)] + sorted(kwargs.items())
        key: list = [len(args)]
        slots: list = []  # per argument: _DYNAMIC (the next traced value) or the static value
        self.dynamic: list = []
        for name, value in named:
            key.append(name)
            passed_through = declared is not None and name not in declared
            traced = None
            if name in arrays:
                traced = _as_traced(value)
            elif passed_through and _is_array(value):
                traced = value
            if traced is not None:
                key.append(("dynamic", jax.tree_util.tree_structure(traced)))
                self.dynamic.append(traced)
                slots.append(_DYNAMIC)
                continue
            key.append(_freeze(value))
            slots.append(value)
        self.key = tuple(key)
        self.template = _Template(tuple(name for name, _ in named), tuple(slots), len(args))


_DYNAMIC = object()
EAGER = object()  # the cached "program" of a call that must run eagerly


class _Template:
    """Puts a call's traced arrays back among its static values."""

    def __init__(self, names: tuple[str, ...], slots: tuple, num_positional: int):
        self.names, self.slots, self.num_positional = names, slots, num_positional

    def rebuild(self, dynamic) -> tuple[tuple, dict]:
        values = iter(dynamic)
        filled = [next(values) if slot is _DYNAMIC else slot for slot in self.slots]
        n = self.num_positional
        return tuple(filled[:n]), dict(zip(self.names[n:], filled[n:], strict=True))


def _has_tracer(args: tuple, kwargs: dict) -> bool:
    leaves = jax.tree_util.tree_leaves((args, kwargs))
    return any(isinstance(leaf, Tracer) for leaf in leaves)


class ProgramCache:
    """Compiled callables per static key, least recently used first out."""

    def __init__(self, max_entries: int = _MAX_ENTRIES):
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Callable]) -> Callable:
        with self._lock:
            program = self._entries.get(key)
            if program is not None:
                self._entries.move_to_end(key)
                return program
        program = build()
        with self._lock:
            self._entries[key] = program
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return program

    def put(self, key: Hashable, program) -> None:
        with self._lock:
            self._entries[key] = program


def split_call(fn: Callable, args: tuple, kwargs: dict) -> _Split | None:
    """Splits an eager call of ``fn`` into static key and traced arrays; None if it can't."""
    try:
        return _Split(_signature_of(fn), args, kwargs)
    except _Uncacheable:
        return None


@functools.cache
def _signature_of(fn: Callable) -> tuple[list[str], set[str], set[str] | None]:
    return _array_parameters(inspect.unwrap(fn))


def jit_of_call(body: Callable, template: _Template, transform=None) -> Callable:
    """``jax.jit`` of ``body(*args, **kwargs)`` taking the traced arrays of a split call.

    ``transform`` (such as ``checkify.checkify``) wraps the function before ``jit``.
    """

    def run(dynamic):
        args, kwargs = template.rebuild(dynamic)
        return body(*args, **kwargs)

    return jax.jit(run if transform is None else transform(run))


def call_compiled(programs: ProgramCache, key, split: _Split, body, eager, transform=None):
    """Runs the program for ``key`` (``jit_of_call(body, ...)``, built on first use) on the
    split call's arrays, or ``eager()`` for a call that must run eagerly: one whose body looks
    at a value only an eager call knows, remembered after its first ConcretizationTypeError."""
    template = split.template
    program = programs.get(key, lambda: jit_of_call(body, template, transform))
    if program is not EAGER:
        try:
            return program(split.dynamic)
        except jax.errors.ConcretizationTypeError:
            programs.put(key, EAGER)
    return eager()


def cached_eager(fn: F) -> F:
    """Decorates a public loss so that repeated identical eager calls reuse one executable.

    Under an outer trace (any argument is a tracer) it calls ``fn`` directly. Otherwise it
    splits the call into static values and arrays and calls a ``jax.jit`` of ``fn`` built once
    per static signature; validation runs while that program is traced, so errors and their
    messages are those of ``fn``.
    """
    programs = ProgramCache()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        split = None if _has_tracer(args, kwargs) else split_call(fn, args, kwargs)
        if split is None:
            return fn(*args, **kwargs)
        return call_compiled(programs, split.key, split, fn, lambda: fn(*args, **kwargs))

    return wrapper  # type: ignore[return-value]
