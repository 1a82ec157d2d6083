"""Traceable coefficients of the post-training losses, each with its range.

A coefficient (``beta``, ``clip_low``, ``kl_coef``, a global count such as ``num_tokens``, ...)
may be traced, for a schedule under ``jit``; a traced value outside its range makes the loss
NaN, which :func:`infoloss_jax.checked` reports. A *concrete* bad value raises ValueError
instead: the eager cache (``base/_caching.py``) passes concrete coefficients to its program as
traced operands, learns each one's range from :meth:`Coefficient.read` while tracing, and checks
every call's concrete values against it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

from ..base._validation import scheduled_number


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
