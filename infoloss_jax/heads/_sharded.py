"""Vocabulary-parallel losses for ``jax.shard_map``: the Megatron-LM algorithm in JAX.

Each device holds a slice of the vocabulary (``V / d`` classes on each of the ``d`` devices of
the mesh axis ``vocab_axis``); no device ever holds a full ``[N, V]`` row. These are the
blockwise engine of the fused losses (:mod:`infoloss_jax._blockwise`) with a mesh axis: each
device computes its slice's statistics, one ``pmax`` and one ``psum`` per token merge them,
and the backward pass sums the hidden-state gradient over the axis.

The functions without ``_on_mesh`` are called INSIDE ``jax.shard_map`` by the user; the
``*_on_mesh`` wrappers take whole arrays and a :class:`jax.sharding.Mesh`, pad the vocabulary to
a multiple of the axis size and build (once per mesh, shapes and options) the ``shard_map``.

Vocabulary padding: when ``V`` is not a multiple of ``d``, pad logits (with anything: they are
masked) or weight columns up to ``d * ceil(V / d)`` and pass ``vocab_size=V``; classes with a
global index ``>= vocab_size`` are excluded from every sum.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ..base._typing import ArrayLike
from ..base._validation import (
    as_float_array,
    as_where,
    check_reduction,
    check_same_shape,
    describe,
)
from ..engine import _blockwise
from ..engine._blockwise import AxisName, Operands
from ..post_training._log_probs import _check_with_entropy as check_with_entropy
from ..post_training._log_probs import _outputs as token_outputs
from ._fused import (
    DIVERGENCES,
    check_labels,
    cross_entropy_ops,
    distillation,
    distillation_ops,
    run,
)


# ------------------------------------------------------------------------------ mesh checks
def _axis_size(axis, name: str, fn: str) -> int:
    """Size of a bound mesh axis; a clear ``ValueError`` when the axis is not bound here."""
    if axis is None:
        raise ValueError(f"`{name}` must name a mesh axis; got None.")
    try:
        return lax.axis_size(axis)
    except NameError as err:
        raise ValueError(
            f"`{name}`={axis!r} is not an axis of the enclosing mesh. `{fn}` must be called "
            f"inside `jax.shard_map` over a mesh that has this axis (or use `{fn}_on_mesh`, "
            "which builds the shard_map for you)."
        ) from err


def _require_split(x, name: str, axis) -> None:
    """Raises unless ``x`` is typed as varying over ``axis`` (a per-device slice)."""
    names = axis if isinstance(axis, tuple) else (axis,)
    if any(a not in _blockwise.varying_axes(x) for a in names):
        raise ValueError(
            f"`{name}` {describe(x)} is not split over mesh axis {axis!r}: pass each device's "
            f"slice of the vocabulary (shard_map in_specs splitting its vocabulary axis over "
            f"{axis!r}) inside `jax.shard_map` with check_vma=True (the default); with "
            "check_vma=False the gradients of the collectives would be wrong."
        )


def _mesh_setup(fn: str, kw: dict, ops: Operands) -> dict:
    """Pops the mesh arguments of ``kw`` (inside shard_map) and checks them against the slices
    in ``ops``; returns the mesh keywords of :func:`._fused.run`."""
    axis, vocab_size = kw.pop("vocab_axis"), kw.pop("vocab_size")
    data_axis = kw.pop("data_axis", None)  # the token log-probs reduce nothing
    if ops.w is None:
        local, shards = ops.x.shape[1], {"logits_shard": ops.x, "target_logits_shard": ops.th}
    else:
        local = ops.w.shape[1 if kw["weight_layout"] == "dv" else 0]
        shards = {"weight_shard": ops.w, "target_weight_shard": ops.tw}
    d = _axis_size(axis, "vocab_axis", fn)
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ValueError(f"`vocab_size` must be a positive int or None; got {vocab_size!r}.")
        expected = -(-vocab_size // d)
        if local != expected:
            raise ValueError(
                f"`{next(iter(shards))}` holds {local} classes per device, but `vocab_size`="
                f"{vocab_size} over the {d} devices of mesh axis {axis!r} needs "
                f"ceil({vocab_size}/{d}) = {expected} per device (the vocabulary padded to "
                f"{expected * d})."
            )
    for name, x in shards.items():
        if x is not None:
            _require_split(x, name, axis)
    if data_axis is not None:
        _axis_size(data_axis, "data_axis", fn)
    return dict(axis=axis, axis_size=d, vocab_size=vocab_size, data_axis=data_axis)


# ------------------------------------------------------------------------------ on logits
def _logits_ops(logits, other, where, names):
    """The validated Operands of a loss on logits (slices or whole arrays), and the token shape."""
    logits = as_float_array(logits, names[0])
    if logits.ndim < 1:
        raise ValueError(f"`{names[0]}` must have a vocabulary axis; got {describe(logits)}.")
    labels = teacher = None
    if names[1] == "labels":
        labels = check_labels(other, logits, names[0]).reshape(-1)
    else:
        teacher = as_float_array(other, names[1])
        check_same_shape(logits, names[0], teacher, names[1])
    n, v = int(np.prod(logits.shape[:-1], dtype=np.int64)), logits.shape[-1]
    th = None if teacher is None else teacher.reshape(n, v)
    mask = as_where(where, logits.shape, names[0])
    mask = None if mask is None else mask.reshape(n, v)
    ops = Operands(logits.reshape(n, v), None, None, th, None, labels, None, mask, None)
    return ops, logits.shape[:-1]


def _ops(kw, suffix):
    """Pops the array arguments of a ``vocab_parallel_*`` loss from ``kw``, its arguments (named
    ``*_shard`` inside shard_map, ``suffix="_shard"``, and without it on a mesh); returns their
    validated Operands and the token shape."""
    logits, weight = "logits" + suffix, "weight" + suffix
    if logits in kw:
        names = (logits, "labels" if "labels" in kw else "target_logits" + suffix)
        other = kw.pop(names[1])
        return _logits_ops(kw.pop(logits), other, kw.pop("where", None), names)
    if "labels" in kw:
        names = ("hidden", weight, "bias" + suffix)
        head = (kw.pop("hidden"), kw.pop("labels"), kw.pop(weight), kw.pop(names[2]))
        return cross_entropy_ops(*head, None, kw["weight_layout"], names, kw.pop("mask", None))
    names = ("hidden", weight, "target_hidden", "target_" + weight)
    h, w, th, tw = (kw.pop(k) for k in names)
    return distillation_ops(h, w, th, tw, kw.pop("mask"), kw["weight_layout"], names)


def _run_shards(kind, fn, kw) -> Any:  # a loss, or the log-probs (and entropies)
    """A ``vocab_parallel_*`` function inside shard_map from its public function's arguments."""
    kw = {k: v for k, v in kw.items() if k not in ("kind", "name", "beta")} | kw.get("beta", {})
    ops, lead = _ops(kw, "_shard")
    kw.update(_mesh_setup(fn, kw, ops))
    if kind != "log_probs":
        return run(kind, ops, lead, **kw)[0]
    # The token log-probabilities are the cross-entropy rows read the other way round.
    with_entropy = check_with_entropy(kw.pop("with_entropy"))
    _, out, _, _, ok = run("cross_entropy", ops, lead, reduction="none", entropy=with_entropy, **kw)
    entropy = None if out.entropy is None else out.entropy.reshape(lead)
    return token_outputs(-out.loss.reshape(lead), entropy, with_entropy, ok)


def vocab_parallel_cross_entropy(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    *,
    vocab_axis: AxisName,
    where: ArrayLike | None = None,
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    reduction: str = "none",
    data_axis: AxisName | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy with integer labels, the vocabulary split over a mesh axis.

    Call it **inside** ``jax.shard_map``. Each device passes its slice of the logits; together the
    slices along ``vocab_axis`` form the full vocabulary, device ``i`` holding classes
    ``[i * V_local, (i + 1) * V_local)``. The result equals
    :func:`softmax_cross_entropy_with_integer_labels` on the gathered logits, without gathering:

    .. math::

        \ell_i = (1 - \varepsilon)\,(\mathrm{lse}_i - z_{i, y_i})
                 + \varepsilon\,\bigl(\mathrm{lse}_i - \tfrac{1}{K}\textstyle\sum_k z_{ik}\bigr)
                 + c\,\mathrm{lse}_i^2,
        \qquad \mathrm{lse}_i = \log \textstyle\sum_k e^{z_{ik}},

    where ``z = softcap * tanh(logits / softcap)`` when ``logit_softcap`` is set and ``K`` counts
    the included classes (not ``-inf``, not masked, not padding). The collectives are one
    ``pmax`` and one fused ``psum`` per token over ``vocab_axis`` (Megatron-LM's algorithm). The
    gradient is recomputed in the backward pass from the logits and the saved logsumexp, with
    no collective.

    Args:
      logits_shard: ``[..., V_local]`` float logits, this device's vocabulary slice.
      labels: ``[...]`` integer labels, *global* class indices, the same on every device of
        ``vocab_axis``. Labels outside ``[0, vocab_size)`` that are not ``ignore_index`` give
        NaN in the value and the gradient.
      vocab_axis: the mesh axis (or tuple of axes) the vocabulary is split over.
      where: optional boolean class mask broadcastable to ``logits_shard``: False excludes a class.
      vocab_size: the true vocabulary size when it was padded up to a multiple of the axis size;
        classes at or beyond it are excluded. ``V_local`` must equal ``ceil(vocab_size / d)``.
      ignore_index: tokens with this label get zero loss, zero gradient and no weight in the mean.
      label_smoothing: ``eps`` in [0, 1) (may be traced): the target is
        ``(1 - eps) onehot + eps / K``.
      z_loss: coefficient ``c`` of the ``lse ** 2`` penalty (PaLM's z-loss; may be traced).
      logit_softcap: static cap ``s`` applied as ``s * tanh(logits / s)`` first.
      reduction: ``"none"`` (default, per token, shape ``[...]``), ``"sum"``, ``"mean"`` (over
        counted tokens) or ``"batchmean"`` (over the global first dimension).
      data_axis: mesh axis (or axes) the tokens are split over; the reductions are then exact
        over the global batch.

    Returns:
      Per-token losses ``[...]`` (float32 for half-precision inputs) or a scalar, identical on
        every device of ``vocab_axis``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_cross_entropy
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda z, y: vocab_parallel_cross_entropy(z, y, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P())
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> print([round(float(v), 4) for v in loss(logits, jnp.array([0, 2]))])
      [0.2413, 1.0986]

    References:
      Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model
      Parallelism", 2019 (vocab-parallel cross-entropy).
    """
    return _run_shards("cross_entropy", "vocab_parallel_cross_entropy", locals())


_DISTILL_DOC = """
    Equals :func:`infoloss_jax.{core}` on the gathered logits. Call it **inside**
    ``jax.shard_map``: ``logits_shard`` (student) and ``target_logits_shard`` (teacher) are this
    device's ``[..., V_local]`` slices of logits split along ``vocab_axis``.
    The collectives over ``vocab_axis`` are one ``pmax`` and one ``psum`` (two of each for the
    Jensen-Shannon divergence); no device holds a full vocabulary row. Gradients flow to both
    inputs (wrap the teacher in ``jax.lax.stop_gradient`` to freeze it); a class ``-inf`` in
    both gives 0, and the value is ``+inf`` where the math says so, never NaN.

    Args:
      logits_shard: student logits slice ``[..., V_local]``.
      target_logits_shard: teacher logits slice, the same shape.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.{beta}
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      where: optional boolean class mask broadcastable to the slices (False excludes a class).
      vocab_size: the true vocabulary size when the slices were padded to a multiple of the axis
        size; ``V_local`` must equal ``ceil(vocab_size / d)``.
      reduction: ``"none"`` (default, per token), ``"sum"``, ``"mean"`` or ``"batchmean"``.
      data_axis: mesh axis the tokens are split over; the reductions are exact across it.

    Returns:
      Per-token divergences ``[...]`` in nats (float32 for half-precision inputs) or a scalar.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import {name}
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> kl = jax.shard_map(
      ...     lambda s, t: {name}(s, t, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(kl(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      {value}

    References:
      {refs}
"""
# The value of each divergence in the examples below (the same logits on every path).
_EXAMPLE = {"forward_kl": "0.043053", "reverse_kl": "0.044341", "jensen_shannon": "0.010881"}


def _logits_divergence(kind):
    def fn(
        logits_shard: ArrayLike,
        target_logits_shard: ArrayLike,
        *,
        vocab_axis: AxisName,
        temperature: float = 1.0,
        where: ArrayLike | None = None,
        vocab_size: int | None = None,
        reduction: str = "none",
        data_axis: AxisName | None = None,
        **beta,
    ) -> jax.Array:
        return _run_shards(kind, f"vocab_parallel_{kind}", locals())

    suffix = "with the vocabulary split over a mesh axis."
    name = f"vocab_parallel_{kind}"
    return distillation(fn, kind, name, suffix, _DISTILL_DOC, value=_EXAMPLE[kind])


vocab_parallel_forward_kl = _logits_divergence("forward_kl")
vocab_parallel_reverse_kl = _logits_divergence("reverse_kl")
vocab_parallel_jensen_shannon = _logits_divergence("jensen_shannon")


# ------------------------------------------------------------------------------ linear heads
def vocab_parallel_linear_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    bias_shard: ArrayLike | None = None,
    weight_layout: str = "dv",
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    reduction: str = "mean",
    data_axis: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: str = "auto",
) -> jax.Array:
    r"""Fused LM-head cross-entropy with the head weight split along the vocabulary.

    Call it **inside** ``jax.shard_map``. Computes :func:`vocab_parallel_cross_entropy` of
    ``hidden @ weight + bias``, ``weight`` being the concatenation of the ``weight_shard``
    slices along ``vocab_axis``, without ever storing the local ``[N, V_local]`` logits: this
    is :func:`infoloss_jax.linear_softmax_cross_entropy` with its statistics all-reduced across
    the axis. The tile budget is split over the ``d`` devices of ``vocab_axis``, so per-device
    temporaries shrink with ``d``.

    .. math::

        \partial_W = h^\top G, \qquad \partial_h = \textstyle\sum_{\text{devices}} G W^\top,
        \qquad G = \partial \ell / \partial z \ \text{(per tile, from the saved lse)}.

    Collectives: one ``pmax`` and one fused ``psum`` over ``vocab_axis`` in the forward pass,
    and one ``psum`` of the ``[N, D]`` hidden-state gradient (block by block in the two-pass
    and token-outer backward) in the backward pass. Reverse mode only (a ``custom_vjp``).

    Args:
      hidden: ``[..., D]`` hidden states, identical on every device of ``vocab_axis`` (they may
        be split over a data axis).
      labels: ``[...]`` integer global class indices.
      weight_shard: this device's slice of the head weight, ``[D, V_local]`` or, with
        ``weight_layout="vd"``, ``[V_local, D]`` (a tied embedding table's rows).
      vocab_axis: the mesh axis (or axes) the vocabulary is split over.
      bias_shard: optional ``[V_local]`` slice of the bias.
      weight_layout: ``"dv"`` (default) or ``"vd"``; never inferred from the shape.
      vocab_size: the true vocabulary size when the weight was padded to a multiple of the axis
        size (padded classes are excluded). ``V_local`` must equal ``ceil(vocab_size / d)``.
      ignore_index, label_smoothing, z_loss, logit_softcap: as in
        :func:`vocab_parallel_cross_entropy`.
      reduction: ``"mean"`` (default, over counted tokens), ``"sum"``, ``"batchmean"`` or
        ``"none"``.
      data_axis: mesh axis (or axes) the tokens are split over; the mean is then exact over the
        global batch.
      token_block_size, vocab_block_size: block sizes (positive ints); by default a tile of at
        most max(2**17, 2**21 / d) elements on CPU.
      backward: ``"auto"`` (default), ``"rows"``, ``"one_pass"`` or ``"two_pass"``, as in
        :func:`infoloss_jax.linear_softmax_cross_entropy` (``"in_forward"`` needs one device;
        ``"fast"`` runs ``"rows"`` here).

    Returns:
      The reduced loss, or per-token losses ``[...]`` for ``reduction="none"``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_linear_cross_entropy
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, y, w: vocab_parallel_linear_cross_entropy(h, y, w, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(), P(None, "vocab")), out_specs=P())
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> print(round(float(loss(hidden, jnp.array([0, 2]), weight)), 4))
      0.67

    References:
      Shoeybi et al., "Megatron-LM", 2019; Wijmans et al., "Cut Your Losses in Large-Vocabulary
      Language Models", 2024 (blockwise fused cross-entropy).
    """
    return _run_shards("cross_entropy", "vocab_parallel_linear_cross_entropy", locals())


_LINEAR_DISTILL_DOC = """
    Call it **inside** ``jax.shard_map``. The student logits are ``hidden @ weight_shard`` and
    the teacher logits ``target_hidden @ target_weight_shard``, both slices of heads split along
    ``vocab_axis`` (the teacher's hidden size may differ). Neither the ``[N, V]`` nor the local
    ``[N, V_local]`` logits are ever stored: this is the fused distillation loss
    (:func:`infoloss_jax.linear_forward_kl` and its siblings) with its statistics all-reduced
    across the axis. The teacher gets no gradient; forward mode (``jax.jvp``) is unsupported.

    Args:
      hidden: student hidden states ``[..., D]``, identical along ``vocab_axis``.
      weight_shard: student head slice ``[D, V_local]`` (``[V_local, D]`` for ``"vd"``).
      target_hidden: teacher hidden states ``[..., D_teacher]``.
      target_weight_shard: teacher head slice in the same layout.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.{beta}
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      mask: optional boolean per-token mask ``[...]``: False drops the token (0, not counted).
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads.
      vocab_size: the true vocabulary size when the heads were padded to a multiple of the axis.
      reduction: ``"mean"`` (default, over kept tokens), ``"sum"``, ``"batchmean"`` or ``"none"``.
      data_axis: mesh axis the tokens are split over; the mean is exact across it.
      token_block_size, vocab_block_size: block sizes (positive ints) or None (automatic).
      backward: ``"auto"`` (default), ``"rows"``, ``"one_pass"`` or ``"two_pass"``, as in
        :func:`vocab_parallel_linear_cross_entropy`.

    Returns:
      The reduced divergence in nats, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import {name}
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, w, th, tw: {name}(h, w, th, tw, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P(None, "vocab")),
      ...     out_specs=P())
      >>> h = jnp.array([[1.0, 0.0]])
      >>> w = jnp.array([[0.5, 0.5], [0.0, 0.0]])
      >>> teacher_w = jnp.array([[0.2, 0.8], [0.0, 0.0]])
      >>> print(round(float(loss(h, w, h, teacher_w)), 6))
      {value}

    References:
      {refs}
"""


def _linear_divergence(kind):
    name = f"vocab_parallel_linear_{kind}"

    def fn(
        hidden: ArrayLike,
        weight_shard: ArrayLike,
        target_hidden: ArrayLike,
        target_weight_shard: ArrayLike,
        *,
        vocab_axis: AxisName,
        temperature: float = 1.0,
        mask: ArrayLike | None = None,
        weight_layout: str = "dv",
        vocab_size: int | None = None,
        reduction: str = "mean",
        data_axis: AxisName | None = None,
        token_block_size: int | None = None,
        vocab_block_size: int | None = None,
        backward: str = "auto",
        **beta,
    ) -> jax.Array:
        return _run_shards(kind, name, locals())

    suffix = "of two LM heads, the vocabulary split over a mesh axis."
    return distillation(fn, kind, name, suffix, _LINEAR_DISTILL_DOC, value=_EXAMPLE[kind])


vocab_parallel_linear_forward_kl = _linear_divergence("forward_kl")
vocab_parallel_linear_reverse_kl = _linear_divergence("reverse_kl")
vocab_parallel_linear_jensen_shannon = _linear_divergence("jensen_shannon")


# ------------------------------------------------------------------------------ token log-probs
def vocab_parallel_log_probs(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    *,
    vocab_axis: AxisName,
    where: ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    with_entropy: bool = False,
    ignore_index: int | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Per-token log-probability of the label (and entropy), the vocabulary split over a mesh axis.

    Call it **inside** ``jax.shard_map``. Each device passes its ``[..., V_local]`` slice of the
    logits, device ``i`` holding classes ``[i * V_local, (i + 1) * V_local)``. The result equals
    :func:`infoloss_jax.log_probs` on the gathered logits, without gathering them:

    .. math::
        \log q(y) = z_y - \log \sum_k e^{z_k}, \qquad H(q) = -\sum_k q_k \log q_k, \qquad
        z = \frac{s \tanh(\ell / s)}{T},

    with the soft cap :math:`s` (optional) applied to the raw logits :math:`\ell` before the
    temperature :math:`T`. These are the cross-entropy rows of
    :func:`vocab_parallel_cross_entropy` read the other way round: one ``pmax`` and one fused
    ``psum`` per token over ``vocab_axis`` (the entropy adds one number to it). Gradients flow
    from both outputs and are recomputed in the backward pass from the saved statistics, with
    no collective; forward mode (``jax.jvp``) is unsupported. A ``-inf`` logit (or
    ``where=False``) excludes a class; a label on an excluded class has log-probability
    ``-inf``.

    Args:
      logits_shard: ``[..., V_local]`` float logits, this device's vocabulary slice.
      labels: ``[...]`` integer token ids, *global* class indices, the same on every device of
        ``vocab_axis``. A label outside ``[0, vocab_size)`` that is not ``ignore_index`` gives
        NaN in both outputs.
      vocab_axis: the mesh axis (or tuple of axes) the vocabulary is split over.
      where: optional boolean class mask broadcastable to ``logits_shard``: False excludes a class.
      vocab_size: the true vocabulary size when it was padded up to a multiple of the axis size;
        ``V_local`` must equal ``ceil(vocab_size / d)``.
      temperature: :math:`T > 0` (may be traced).
      logit_softcap: optional static cap :math:`s > 0`.
      with_entropy: also return the per-token entropy :math:`H(q)` (nats).
      ignore_index: label value whose tokens give 0 for both outputs and no gradient, or None.

    Returns:
      ``log_probs`` ``[...]`` (float32 for half-precision inputs), or ``(log_probs, entropy)``
        with ``with_entropy=True``; identical on every device of ``vocab_axis``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_log_probs
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> fn = jax.shard_map(
      ...     lambda z, y: vocab_parallel_log_probs(z, y, vocab_axis="vocab", with_entropy=True),
      ...     mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P())
      >>> lp, ent = fn(jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, -jnp.inf]]), jnp.array([0, 1]))
      >>> print([round(float(v), 4) for v in lp], [round(float(v), 4) for v in ent])
      [-0.4076, -0.6931] [0.8324, 0.6931]

    References:
      Shoeybi et al., "Megatron-LM", 2019 (vocab-parallel statistics); verl
      ``logprobs_from_logits`` and ``entropy_from_logits``.
    """
    return _run_shards("log_probs", "vocab_parallel_log_probs", locals())


def vocab_parallel_linear_log_probs(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    bias_shard: ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    with_entropy: bool = False,
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    weight_layout: str = "dv",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: str = "auto",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Fused LM-head token log-probabilities (and entropy), the weight split along the vocabulary.

    Call it **inside** ``jax.shard_map``. Computes :func:`vocab_parallel_log_probs` of
    ``hidden @ weight + bias``, ``weight`` being the concatenation of the ``weight_shard``
    slices along ``vocab_axis``, without ever storing the local ``[N, V_local]`` logits: this
    is :func:`infoloss_jax.linear_log_probs` with its statistics all-reduced across the axis
    (one ``pmax`` and one fused ``psum`` per token), and the hidden-state gradient summed over
    it in the backward pass.

    .. math::
        \log q(y) = z_y - \log \sum_k e^{z_k}, \qquad H(q) = -\sum_k q_k \log q_k, \qquad
        z = \frac{s \tanh((h W + b) / s)}{T}.

    Gradients flow to ``hidden``, ``weight_shard`` and ``bias_shard`` from both outputs;
    reverse mode only (a ``jax.custom_vjp``).

    Args:
      hidden: ``[..., D]`` hidden states, identical on every device of ``vocab_axis``.
      labels: ``[...]`` integer global token ids.
      weight_shard: this device's slice of the head weight, ``[D, V_local]`` or, with
        ``weight_layout="vd"``, ``[V_local, D]``.
      vocab_axis: the mesh axis (or axes) the vocabulary is split over.
      bias_shard: optional ``[V_local]`` slice of the bias (a ``-inf`` entry excludes a class).
      vocab_size: the true vocabulary size when the weight was padded to a multiple of the axis
        size (padded classes are excluded).
      temperature, logit_softcap, with_entropy, ignore_index: as in
        :func:`vocab_parallel_log_probs`.
      mask: optional boolean ``[...]`` per-token mask (False gives 0 and no gradient).
      weight_layout: ``"dv"`` (default) or ``"vd"``; never inferred from the shape.
      token_block_size, vocab_block_size: block sizes (positive ints) or None (automatic).
      backward: ``"auto"`` (default), ``"rows"``, ``"one_pass"`` or ``"two_pass"``, as in
        :func:`vocab_parallel_linear_cross_entropy`.

    Returns:
      ``log_probs`` with the shape of ``labels``, or ``(log_probs, entropy)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_linear_log_probs
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> fn = jax.shard_map(
      ...     lambda h, y, w: vocab_parallel_linear_log_probs(h, y, w, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(), P(None, "vocab")), out_specs=P())
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
      >>> print([round(float(v), 4) for v in fn(hidden, jnp.array([0, 1]), weight)])
      [-0.4076, -1.0986]

    References:
      Shoeybi et al., "Megatron-LM", 2019; Wijmans et al., "Cut Your Losses in Large-Vocabulary
      Language Models", 2024; verl's and TRL's fused log-prob and entropy kernels.
    """
    return _run_shards("log_probs", "vocab_parallel_linear_log_probs", locals())


# ------------------------------------------------------------------------------ on a mesh
def _mesh_axis_size(mesh: Mesh, axis, name: str, fn: str) -> int:
    """Product of the sizes of ``axis`` (a mesh axis name or tuple of them); 1 for None."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    if axis is None:
        return 1
    size = 1
    for a in axis if isinstance(axis, tuple) else (axis,):
        if a not in mesh.shape:
            raise ValueError(
                f"`{name}`={axis!r} is not an axis of the mesh passed to `{fn}`; the mesh has "
                f"axes {tuple(mesh.axis_names)} with sizes {dict(mesh.shape)}."
            )
        size *= mesh.shape[a]
    return size


def _is_array(v) -> bool:
    return isinstance(v, jax.Array | np.ndarray | Tracer)


@functools.lru_cache(maxsize=64)
def _program(fn, mesh, data_axis, roles, static, array_names, padded):
    """The jitted shard_map of ``fn`` for one (mesh, options, arguments): built once.

    ``roles`` gives each array argument's keyword, ``PartitionSpec`` and vocabulary dimension
    (None if it has none); those are padded to ``padded`` classes when it is not 0.
    """
    names = [k for k, _, _ in roles] + list(array_names)

    def local(*args):
        return fn(**dict(zip(names, args, strict=True)), **dict(static))

    in_specs = tuple(spec for _, spec, _ in roles) + (P(),) * len(array_names)
    out_spec = P(data_axis) if dict(static).get("reduction", "none") == "none" else P()
    mapped = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_spec)

    def run(*args):
        args = list(args)
        for i, (_, _, dim) in enumerate(roles):
            if dim is not None and padded:
                pad = [(0, 0)] * args[i].ndim
                pad[dim] = (0, padded - args[i].shape[dim])
                args[i] = jnp.pad(args[i], pad)
        return mapped(*args)

    return jax.jit(run)


# The keyword of each Operands field in the vocab_parallel_* losses (hidden or logits aside).
_KEYWORDS = dict(
    w="weight_shard", tw="target_weight_shard", b="bias_shard", labels="labels", mask="where"
)


def _on_mesh(fn, kw):
    """``fn`` (a ``vocab_parallel_*`` loss) on whole arrays, from its ``*_on_mesh`` wrapper's
    arguments ``kw``: tokens split over ``data_axis``, the vocabulary over ``vocab_axis``."""
    kw = {k: v for k, v in kw.items() if k not in ("fn", "options")} | kw["options"]
    mesh, vocab_axis, data_axis = kw.pop("mesh"), kw.pop("vocab_axis"), kw.pop("data_axis")
    ops, lead = _ops(kw, "")
    reduction = check_reduction(kw.get("reduction", "none"))
    name = fn.__name__ + "_on_mesh"
    d = _mesh_axis_size(mesh, vocab_axis, "vocab_axis", name)
    dp = _mesh_axis_size(mesh, data_axis, "data_axis", name)
    n = ops.x.shape[0]
    if n % dp:
        raise ValueError(
            f"The inputs hold {n} tokens, not a multiple of the {dp} devices of data axis "
            f"{data_axis!r}; pad the batch (with ignored labels) to a multiple of {dp}."
        )
    w_dim = 1 if kw.get("weight_layout", "dv") == "dv" else 0
    vocab = ops.x.shape[1] if ops.w is None else ops.w.shape[w_dim]
    vocab_dims = dict(x=1, th=1, mask=1) if ops.w is None else dict(w=w_dim, tw=w_dim, b=0)
    x_name = "logits_shard" if ops.w is None else "hidden"
    keywords = dict(_KEYWORDS, x=x_name, th=f"target_{x_name}", row_mask="mask")
    roles, args = [], []
    for f, x in ops._asdict().items():
        if x is not None:
            dims = [None if f in ("w", "tw", "b") else data_axis] + [None] * (x.ndim - 1)
            if f in vocab_dims:
                dims[vocab_dims[f]] = vocab_axis
            roles.append((keywords[f], P(*dims), vocab_dims.get(f)))
            args.append(x)
    arrays = {k: v for k, v in kw.items() if _is_array(v)}
    static = dict(kw, vocab_size=vocab, vocab_axis=vocab_axis)
    if "reduction" in kw:  # exact over the tokens of every data shard (the log-probs have none)
        static["data_axis"] = data_axis
    static = tuple(sorted((k, v) for k, v in static.items() if k not in arrays))
    padded = d * -(-vocab // d) if vocab % d else 0
    program = _program(fn, mesh, data_axis, tuple(roles), static, tuple(arrays), padded)
    out = program(*args, *arrays.values())
    return jax.tree.map(lambda x: x.reshape(lead), out) if reduction == "none" else out


def vocab_parallel_cross_entropy_on_mesh(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    reduction: str = "none",
    **options,
) -> jax.Array:
    """:func:`vocab_parallel_cross_entropy` on whole ``[..., V]`` logits and a ``Mesh``.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of the vocabulary axis size (the padded classes are masked),
    and builds the ``shard_map`` once per mesh, shapes and options: a second identical call
    compiles nothing. ``options`` are the keyword options of
    :func:`vocab_parallel_cross_entropy` (where, ignore_index, label_smoothing, z_loss,
    logit_softcap); the defaults are that function's, ``reduction="none"`` included.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_cross_entropy_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_cross_entropy_on_mesh(
      ...     logits, jnp.array([0, 2]), mesh=mesh, vocab_axis="vocab", reduction="mean")
      >>> print(round(float(loss), 4))
      0.67
    """
    return _on_mesh(vocab_parallel_cross_entropy, locals())


def vocab_parallel_linear_cross_entropy_on_mesh(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    bias: ArrayLike | None = None,
    weight_layout: str = "dv",
    reduction: str = "mean",
    **options,
) -> jax.Array:
    """:func:`vocab_parallel_linear_cross_entropy` on a whole head weight and a ``Mesh``.

    Splits the weight (and bias) over ``vocab_axis`` along its vocabulary dimension (``[D, V]``
    or, with ``weight_layout="vd"``, ``[V, D]``), padding ``V`` to a multiple of its size
    (padded classes are masked), the tokens over ``data_axis`` (optional), and builds the
    ``shard_map`` once per mesh, shapes and options. Pass a weight already sharded that way to
    avoid moving it. ``options``: ignore_index, label_smoothing, z_loss, logit_softcap,
    token_block_size, vocab_block_size, backward (that function's defaults).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_cross_entropy_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_linear_cross_entropy_on_mesh(
      ...     hidden, jnp.array([0, 2]), weight, mesh=mesh, vocab_axis="vocab")
      >>> print(round(float(loss), 4))
      0.67
    """
    return _on_mesh(vocab_parallel_linear_cross_entropy, locals())


def vocab_parallel_log_probs_on_mesh(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    **options,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """:func:`vocab_parallel_log_probs` on whole ``[..., V]`` logits and a ``Mesh``.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of the vocabulary axis size (the padded classes are masked),
    and builds the ``shard_map`` once per mesh, shapes and options. ``options`` are the keyword
    options of :func:`vocab_parallel_log_probs` (where, temperature, logit_softcap,
    with_entropy, ignore_index), with its defaults.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_log_probs_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, -jnp.inf]])
      >>> lp = vocab_parallel_log_probs_on_mesh(
      ...     logits, jnp.array([0, 1]), mesh=mesh, vocab_axis="vocab", temperature=2.0)
      >>> print([round(float(v), 4) for v in lp])
      [-0.6803, -0.6931]
    """
    return _on_mesh(vocab_parallel_log_probs, locals())


def vocab_parallel_linear_log_probs_on_mesh(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    bias: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    weight_layout: str = "dv",
    **options,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """:func:`vocab_parallel_linear_log_probs` on a whole head weight and a ``Mesh``.

    Splits the weight (and bias) over ``vocab_axis`` along its vocabulary dimension, padding
    ``V`` to a multiple of its size (padded classes are masked), the tokens (and ``mask``) over
    ``data_axis`` (optional), and builds the ``shard_map`` once per mesh, shapes and options.
    ``options``: temperature, logit_softcap, with_entropy, ignore_index, token_block_size,
    vocab_block_size, backward (that function's defaults).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_log_probs_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
      >>> lp, ent = vocab_parallel_linear_log_probs_on_mesh(
      ...     hidden, jnp.array([0, 1]), weight, mesh=mesh, vocab_axis="vocab", with_entropy=True)
      >>> print([round(float(v), 4) for v in ent])
      [0.8324, 1.0986]
    """
    return _on_mesh(vocab_parallel_linear_log_probs, locals())


def _mesh_wrapper(wrapper, fn, kind, inputs, options):
    """Names ``wrapper`` as the ``*_on_mesh`` version of the divergence ``fn``; its docstring."""
    what = DIVERGENCES[kind][0]
    wrapper.__name__ = wrapper.__qualname__ = fn.__name__ + "_on_mesh"
    wrapper.__doc__ = f""":func:`{fn.__name__}`, the {what[0].lower() + what[1:]}, on {inputs}.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of its size (the padded classes are masked), and builds the
    ``shard_map`` once per mesh, shapes and options. The defaults are those of
    :func:`{fn.__name__}`, ``reduction`` included; ``options``:
    {options}.
    """
    return wrapper


def _logits_mesh(fn):
    kind = fn.__name__.removeprefix("vocab_parallel_")

    def wrapper(
        logits: ArrayLike,
        target_logits: ArrayLike,
        *,
        mesh: Mesh,
        vocab_axis: AxisName,
        data_axis: AxisName | None = None,
        reduction: str = "none",
        **options,
    ) -> jax.Array:
        return _on_mesh(fn, locals())

    inputs = "whole ``[..., V]`` logits and a ``Mesh``"
    return _mesh_wrapper(wrapper, fn, kind, inputs, "temperature, beta, where")


def _linear_mesh(fn):
    kind = fn.__name__.removeprefix("vocab_parallel_linear_")

    def wrapper(
        hidden: ArrayLike,
        weight: ArrayLike,
        target_hidden: ArrayLike,
        target_weight: ArrayLike,
        *,
        mesh: Mesh,
        vocab_axis: AxisName,
        data_axis: AxisName | None = None,
        mask: ArrayLike | None = None,
        weight_layout: str = "dv",
        reduction: str = "mean",
        **options,
    ) -> jax.Array:
        return _on_mesh(fn, locals())

    inputs = "whole heads (split along their vocabulary dimension) and a ``Mesh``"
    options = "temperature, beta (Jensen-Shannon), token_block_size, vocab_block_size, backward"
    return _mesh_wrapper(wrapper, fn, kind, inputs, options)


vocab_parallel_forward_kl_on_mesh = _logits_mesh(vocab_parallel_forward_kl)
vocab_parallel_reverse_kl_on_mesh = _logits_mesh(vocab_parallel_reverse_kl)
vocab_parallel_jensen_shannon_on_mesh = _logits_mesh(vocab_parallel_jensen_shannon)
vocab_parallel_linear_forward_kl_on_mesh = _linear_mesh(vocab_parallel_linear_forward_kl)
vocab_parallel_linear_reverse_kl_on_mesh = _linear_mesh(vocab_parallel_linear_reverse_kl)
vocab_parallel_linear_jensen_shannon_on_mesh = _linear_mesh(vocab_parallel_linear_jensen_shannon)
