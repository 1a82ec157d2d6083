"""What a blockwise loss computes: the declared losses, and a small frozen description of a call.

A loss is *declared* once, as an object with its name and its math (the cross-entropy in
:mod:`._tiles`, each divergence as a :class:`._pairs.Divergence`): :func:`declare` records it
under its name, and :func:`loss_named` is the one place a name becomes a loss; an unknown name
raises. The engine, the core losses and :mod:`infoloss_jax.gradients` all dispatch on that
object.

A :class:`LossSpec` names the loss (``kind``) and its static options. It is hashable, so it can
be a ``nondiff_argnums`` argument of the one ``jax.custom_vjp`` in :mod:`._blockwise`. Options
that training schedules (``label_smoothing``, ``z_loss``, ``temperature``, and a divergence's
own coefficient such as ``beta``, ``skew`` or ``alpha``) may be traced: their *values* ride
through the custom_vjp as the float array :class:`Coefficients`; the spec only records whether
each one is in use. Everything that selects the program's structure (``logit_softcap``,
``ignore_index``, the weight layout, the accumulation dtype) is a static Python value here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ..base._validation import poison_unless, scheduled_number, static_number

LAYOUTS = ("dv", "vd")

# name -> the declared loss object (see `declare`).
_DECLARED: dict[str, Any] = {}


def declare(loss):
    """Records a loss under ``loss.name`` (once) and returns it: the engine, the core form and
    the gradient harness find it by that name. Declaring a name twice raises."""
    if loss.name in _DECLARED and _DECLARED[loss.name] is not loss:
        raise ValueError(f"A loss named {loss.name!r} is already declared.")
    _DECLARED[loss.name] = loss
    return loss


def loss_named(kind: str):
    """The declared loss ``kind``; ValueError naming the declared ones for any other name."""
    loss = _DECLARED.get(kind) if isinstance(kind, str) else None
    if loss is None:
        known = ", ".join(repr(k) for k in sorted(_DECLARED))
        raise ValueError(f"Unknown loss kind {kind!r}; the declared losses are {known}.")
    return loss


def declared_divergences() -> tuple:
    """Every declared divergence (a loss between two distributions), in declaration order."""
    return tuple(loss for loss in _DECLARED.values() if getattr(loss, "pair", False))


class Coefficient(NamedTuple):
    """A divergence's own traceable coefficient, such as the Jensen-Shannon ``beta``.

    Attributes:
      name: its keyword in the public functions.
      default: its default value there.
      low, high: the closed range of valid values (infinite bounds for none).
      endpoints: ``((value, kind), ...)``: at exactly ``value`` the divergence *is* the declared
        loss ``kind`` (a static coefficient there runs ``kind``'s own, cheaper, math).
    """

    name: str
    default: float
    low: float = -math.inf
    high: float = math.inf
    endpoints: tuple = ()

    def endpoint(self, value: float) -> str | None:
        return next((kind for at, kind in self.endpoints if value == at), None)


class LossSpec(NamedTuple):
    """The static description of a blockwise loss.

    Attributes:
      kind: the name of a declared loss (see :func:`loss_named`).
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
    def loss(self):
        """The declared loss object this spec runs."""
        return loss_named(self.kind)

    @property
    def divergence(self) -> bool:
        """A loss between a student and a teacher distribution (the engine reads a teacher)."""
        return bool(getattr(self.loss, "pair", False))


class Coefficients(NamedTuple):
    """Option values that may be traced: a float array each, in the accumulation dtype.

    ``coefficient`` is the divergence's own coefficient (``beta``, ``skew``, ``alpha``; unused
    by the cross-entropy and by divergences without one).
    """

    label_smoothing: jax.Array
    z_loss: jax.Array
    inverse_temperature: jax.Array
    coefficient: jax.Array


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


def divergence_coefficient(loss, value):
    """Validates a divergence's coefficient: ``(kind, value, ok)``.

    ``kind`` is the loss to run: a static value at one of the coefficient's endpoints runs the
    endpoint's loss (``jensen_shannon`` with ``beta=0`` is ``forward_kl``). ``value`` is a
    Python float (static) or a float32 scalar (traced), ``ok`` None or a traced validity flag.
    A loss without a coefficient ignores ``value``.
    """
    declared = getattr(loss, "coefficient", None)
    if declared is None:
        return loss.name, 0.0, None
    value = declared.default if value is None else value
    value, ok = scheduled_number(value, declared.name, low=declared.low, high=declared.high)
    if ok is None:
        endpoint = declared.endpoint(value)
        if endpoint is not None:
            return endpoint, value, None
    return loss.name, value, ok


def make_spec(
    kind: str,
    vocab_size: int,
    accum_dtype,
    *,
    label_smoothing=0.0,
    z_loss=0.0,
    temperature=1.0,
    coefficient=None,
    beta=None,
    logit_softcap=None,
    ignore_index=None,
    class_weights: bool = False,
    entropy: bool = False,
    weight_layout: str = "dv",
):
    """Validates the options once; returns ``(spec, coefficients, ok)``.

    ``coefficient`` is the value of the divergence's own coefficient (``beta`` is the same, for
    the Jensen-Shannon callers); None takes its default. ``ok`` is None when every option is
    static, else a boolean scalar that is False when a traced option lies outside its range:
    pass the result through :func:`poison`.
    """
    loss = loss_named(kind)
    eps, eps_ok = scheduled_number(
        label_smoothing, "label_smoothing", low=0.0, high=1.0, high_open=True
    )
    zc, zc_ok = scheduled_number(z_loss, "z_loss", low=0.0)
    t, t_ok = scheduled_number(temperature, "temperature", low=0.0, low_open=True)
    kind, c, c_ok = divergence_coefficient(loss, beta if coefficient is None else coefficient)
    traced = [ok for ok in (eps_ok, zc_ok, t_ok, c_ok) if ok is not None]
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
    values = (eps, zc, 1.0 / jnp.asarray(t, acc), c)
    coefs = Coefficients(*(jnp.asarray(x, acc) for x in values))
    return spec, coefs, ok


def poison(x: jax.Array, ok) -> jax.Array:
    """NaN wherever a traced option was out of range (no-op when every option is static)."""
    return poison_unless(x, ok)
