"""Traceable coefficients of the post-training losses, checked concretely before any tracing.

A coefficient (``beta``, ``clip_low``, ``kl_coef``, a global count such as ``num_tokens``, ...)
may be traced, for a schedule under ``jit``; a traced value outside its range makes the loss
NaN, which :func:`infoloss_jax.checked` reports. A *concrete* bad value must raise ValueError
instead. The eager cache traces array-valued arguments (a NumPy scalar, a concrete ``jnp``
array) to reuse one program, so the body of a loss cannot tell a concrete array from a traced
one: :func:`concrete_first` checks every concrete coefficient of a call before the call reaches
the cache, against the same :class:`Coefficient` the body reads it with.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax.numpy as jnp

from ..base._validation import is_traced, scheduled_number

F = TypeVar("F", bound=Callable[..., Any])


class Coefficient(NamedTuple):
    """A keyword option that may be traced, and its valid range."""

    name: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def read(self, value):
        """``(value, ok)``: a concrete value is checked now (ValueError) and comes back as a
        Python float with ``ok=None``; a traced one comes back with its in-graph validity."""
        return scheduled_number(
            value,
            self.name,
            low=self.low,
            high=self.high,
            low_open=self.low_open,
            high_open=self.high_open,
        )

    def read_as(self, value, dtype):
        """:meth:`read`, with the value as a scalar array of ``dtype`` (for denominators)."""
        v, ok = self.read(value)
        return jnp.asarray(v).astype(dtype), ok


def count(name: str) -> Coefficient:
    """A global denominator (a number of tokens, sequences or pairs): positive and finite."""
    return Coefficient(name, low=0.0, low_open=True)


Spec = Coefficient | Callable[[dict], Coefficient]


def concrete_first(*specs: Spec) -> Callable[[F], F]:
    """Checks the concrete values of keyword coefficients before the call runs (or is cached).

    Each spec is a :class:`Coefficient`, or a function of the call's keyword arguments that
    returns one (a range that depends on another option). Traced values are left to the body.
    Every coefficient of the post-training losses is keyword-only, so the keywords are all
    there is to look at.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for spec in specs:
                coefficient = spec if isinstance(spec, Coefficient) else spec(kwargs)
                value = kwargs.get(coefficient.name)
                if value is not None and not is_traced(value):
                    coefficient.read(value)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
