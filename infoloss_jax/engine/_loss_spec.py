"""What a blockwise loss computes: a small, frozen, hashable description shared by every path.

A :class:`LossSpec` names the loss (``kind``) and its static options. It is hashable, so it can
be a ``nondiff_argnums`` argument of the one ``jax.custom_vjp`` in :mod:`._blockwise`. Options
that training schedules (``label_smoothing``, ``z_loss``, ``temperature``, ``beta``) may be
traced: their *values* ride through the custom_vjp as the float array :class:`Coefficients`;
the spec only records whether each one is in use. Everything that selects the program's
structure (``logit_softcap``, ``ignore_index``, the weight layout, the accumulation dtype) is a
static Python value here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ..base._validation import poison_unless, scheduled_number, static_number

KINDS = ("cross_entropy", "forward_kl", "reverse_kl", "jensen_shannon")
LAYOUTS = ("dv", "vd")


class LossSpec(NamedTuple):
    """The static description of a blockwise loss.

    Attributes:
      kind: one of :data:`KINDS`.
      vocab_size: the true (unpadded) global number of classes; classes at or beyond it are
        padding and excluded.
      smoothing: label smoothing is on (its value is in the coefficients).
      z_loss: the z-loss term is on.
      scaled: logits are multiplied by the inverse temperature in the coefficients.
      softcap: the soft cap ``s`` of ``s * tanh(z / s)``, or None.
      ignore_index: the label value of ignored rows, or None.
      class_weights: per-class weights are given.
      entropy: the per-row entropy of the (scaled, soft-capped) softmax is computed too
        (cross-entropy only; the token log-probabilities are minus its rows).
      layout: ``"dv"`` for a ``[D, V]`` weight (flax ``Dense``), ``"vd"`` for ``[V, D]`` (an
        embedding table, PyTorch ``Linear``).
      accum_dtype: the dtype every sum and statistic is kept in.
    """

    kind: str
    vocab_size: int
    smoothing: bool = False
    z_loss: bool = False
    scaled: bool = False
    softcap: float | None = None
    ignore_index: int | None = None
    class_weights: bool = False
    entropy: bool = False
    layout: str = "dv"
    accum_dtype: np.dtype = np.dtype(np.float32)

    @property
    def divergence(self) -> bool:
        return self.kind != "cross_entropy"


class Coefficients(NamedTuple):
    """Option values that may be traced: a float array each, in the accumulation dtype."""

    label_smoothing: jax.Array
    z_loss: jax.Array
    inverse_temperature: jax.Array
    beta: jax.Array


def check_layout(weight_layout) -> str:
    if weight_layout not in LAYOUTS:
        raise ValueError(
            f"`weight_layout` must be 'dv' (a [D, V] weight) or 'vd' (a [V, D] weight, as an "
            f"embedding table); got {weight_layout!r}."
        )
    return weight_layout


def static_softcap(logit_softcap) -> float | None:
    if logit_softcap is None:
        return None
    cap = static_number(logit_softcap, "logit_softcap")
    if not (np.isfinite(cap) and cap > 0):
        raise ValueError(
            f"`logit_softcap` must be a positive finite number or None; got {logit_softcap!r}."
        )
    return cap


def static_ignore_index(ignore_index) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int | np.integer):
        if isinstance(ignore_index, Tracer):
            static_number(ignore_index, "ignore_index")
        raise TypeError(f"`ignore_index` must be a Python int or None; got {ignore_index!r}.")
    return int(ignore_index)


def make_spec(
    kind: str,
    vocab_size: int,
    accum_dtype,
    *,
    label_smoothing=0.0,
    z_loss=0.0,
    temperature=1.0,
    beta=0.5,
    logit_softcap=None,
    ignore_index=None,
    class_weights: bool = False,
    entropy: bool = False,
    weight_layout: str = "dv",
):
    """Validates the options once; returns ``(spec, coefficients, ok)``.

    ``ok`` is None when every option is static, else a boolean scalar that is False when a traced
    option lies outside its range: pass the result through :func:`poison`.
    """
    eps, eps_ok = scheduled_number(
        label_smoothing, "label_smoothing", low=0.0, high=1.0, high_open=True
    )
    zc, zc_ok = scheduled_number(z_loss, "z_loss", low=0.0)
    t, t_ok = scheduled_number(temperature, "temperature", low=0.0, low_open=True)
    b, b_ok = scheduled_number(beta, "beta", low=0.0, high=1.0)
    if kind == "jensen_shannon" and b_ok is None:
        kind = "forward_kl" if b == 0.0 else "reverse_kl" if b == 1.0 else kind
    traced = [ok for ok in (eps_ok, zc_ok, t_ok, b_ok) if ok is not None]
    ok = None
    for flag in traced:
        ok = flag if ok is None else ok & flag
    acc = jnp.dtype(accum_dtype)
    spec = LossSpec(
        kind=kind,
        vocab_size=int(vocab_size),
        smoothing=eps_ok is not None or bool(eps > 0),
        z_loss=zc_ok is not None or bool(zc > 0),
        scaled=t_ok is not None or bool(t != 1.0),
        softcap=static_softcap(logit_softcap),
        ignore_index=static_ignore_index(ignore_index),
        class_weights=bool(class_weights),
        entropy=bool(entropy),
        layout=check_layout(weight_layout),
        accum_dtype=acc,
    )
    coefs = Coefficients(*(jnp.asarray(x, acc) for x in (eps, zc, 1.0 / jnp.asarray(t, acc), b)))
    return spec, coefs, ok


def poison(x: jax.Array, ok) -> jax.Array:
    """NaN wherever a traced option was out of range (no-op when every option is static)."""
    return poison_unless(x, ok)
