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
import inspect
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from . import _blockwise
from ._blockwise import AxisName, Operands
from ._fused import (
    accumulation,
    check_two_heads,
    head_sizes,
    run_cross_entropy,
    run_divergence,
    token_mask,
)
from ._loss_spec import make_spec, poison
from ._typing import ArrayLike
from ._validation import as_float_array, as_integer_array, check_reduction, describe


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


def _vocab_layout(local: int, axis_size: int, vocab_size, what: str, axis) -> int:
    """Checks the shard size against the mesh; returns the true (unpadded) vocabulary size."""
    if vocab_size is None:
        return local * axis_size
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"`vocab_size` must be a positive int or None; got {vocab_size!r}.")
    expected = -(-vocab_size // axis_size)
    if local != expected:
        raise ValueError(
            f"{what} holds {local} classes per device, but `vocab_size`={vocab_size} over the "
            f"{axis_size} devices of mesh axis {axis!r} needs ceil({vocab_size}/{axis_size}) = "
            f"{expected} per device (the vocabulary padded to {expected * axis_size})."
        )
    return vocab_size


def _mesh_setup(x, x_name, local, vocab_axis, vocab_size, data_axis, fn, *more):
    d = _axis_size(vocab_axis, "vocab_axis", fn)
    vocab = _vocab_layout(local, d, vocab_size, f"`{x_name}`", vocab_axis)
    for arr, name in ((x, x_name), *more):
        _require_split(arr, name, vocab_axis)
    if data_axis is not None:
        _axis_size(data_axis, "data_axis", fn)
    return d, vocab


# ------------------------------------------------------------------------------ on logits
def _class_mask(where, shape):
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean class mask; got {describe(where)}.")
    try:
        where = jnp.broadcast_to(where, shape)
    except ValueError as err:
        raise ValueError(
            f"`where` {describe(where)} is not broadcastable to the logits slice {list(shape)}."
        ) from err
    return where.reshape(-1, shape[-1])


def _run_logits(
    kind, logits, other, *, vocab_axis, where, vocab_size, options, reduction, data_axis, fn
):
    """The vocabulary-parallel loss on logits slices: one tile per device."""
    logits = as_float_array(logits, "logits_shard")
    check_reduction(reduction)
    if kind == "cross_entropy":
        labels = as_integer_array(other, "labels")
        if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"`labels` must have the shape of `logits_shard` without its last (vocabulary) "
                f"axis; got `logits_shard` {describe(logits)} and `labels` {describe(labels)}."
            )
        teacher, more = None, ()
    else:
        teacher = as_float_array(other, "target_logits_shard")
        if logits.ndim < 1 or logits.shape != teacher.shape:
            raise ValueError(
                f"`logits_shard` and `target_logits_shard` must have the same shape; got "
                f"{describe(logits)} and {describe(teacher)}."
            )
        labels, more = None, ((teacher, "target_logits_shard"),)
    local = logits.shape[-1]
    d, vocab = _mesh_setup(
        logits, "logits_shard", local, vocab_axis, vocab_size, data_axis, fn, *more
    )
    lead = logits.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    acc = accumulation(jnp.float32, logits, *([] if teacher is None else [teacher]))
    spec, coefs, ok = make_spec(kind, vocab, acc, **options)
    cfg = _blockwise.Config(
        spec, _blockwise.Blocks(max(n, 1), local), "auto", vocab_axis, vocab != local * d
    )
    ops = Operands(
        logits.reshape(n, local),
        None,
        None,
        None if teacher is None else teacher.reshape(n, local),
        None,
        None if labels is None else labels.reshape(n).astype(jnp.int32),
        None,
        _class_mask(where, logits.shape),
        None,
    )
    out = cast(_blockwise.Out, _blockwise.blockwise(cfg, ops, coefs))  # its type is lost in partial
    return poison(_blockwise.reduce_rows(out, reduction, lead, data_axis), ok)


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
    options = dict(
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        logit_softcap=logit_softcap,
    )
    return _run_logits(
        "cross_entropy",
        logits_shard,
        labels,
        vocab_axis=vocab_axis,
        where=where,
        vocab_size=vocab_size,
        options=options,
        reduction=reduction,
        data_axis=data_axis,
        fn="vocab_parallel_cross_entropy",
    )


_DISTILL_DOC = """
    Call it **inside** ``jax.shard_map``: ``logits_shard`` (student) and ``target_logits_shard``
    (teacher) are this device's ``[..., V_local]`` slices of logits split along ``vocab_axis``.
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
"""
_BETA_DOC = "\n      beta: weight of the teacher in the mixture, in [0, 1] (may be traced)."


def _logits_divergence(kind, name, head, value):
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
        return _run_logits(
            kind,
            logits_shard,
            target_logits_shard,
            vocab_axis=vocab_axis,
            where=where,
            vocab_size=vocab_size,
            options=dict(temperature=temperature, **beta),
            reduction=reduction,
            data_axis=data_axis,
            fn=name,
        )

    beta_doc = _BETA_DOC if kind == "jensen_shannon" else ""
    return _named(fn, kind, name, head + _DISTILL_DOC.format(beta=beta_doc, name=name, value=value))


def _named(fn, kind, name, doc):
    """Names ``fn``; its ``**beta`` becomes a keyword ``beta=0.5`` for the JSD, none otherwise."""
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kind != "jensen_shannon" and "beta" in kwargs:
            raise TypeError(f"{name}() got an unexpected keyword argument 'beta'")
        return fn(*args, **kwargs)

    params = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD]
    if kind == "jensen_shannon":
        at = next(i for i, p in enumerate(params) if p.name == "temperature")
        params.insert(
            at,
            inspect.Parameter(
                "beta", inspect.Parameter.KEYWORD_ONLY, default=0.5, annotation=float
            ),
        )
    signature = inspect.signature(fn).replace(parameters=params)
    wrapper.__signature__ = signature  # pyright: ignore[reportAttributeAccessIssue]  # not in the stubs
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = doc
    return _blockwise.reraise_jvp(name)(wrapper)


vocab_parallel_forward_kl = _logits_divergence(
    "forward_kl",
    "vocab_parallel_forward_kl",
    r"""Forward KL, KL(teacher || student), with the vocabulary split over a mesh axis.

    .. math::

        \mathrm{KL}(P \,\|\, Q) = \sum_k p_k (\log p_k - \log q_k),
        \quad P = \mathrm{softmax}(\text{target} / T),\ Q = \mathrm{softmax}(\text{logits} / T).

    Equals :func:`infoloss_jax.forward_kl` on the gathered logits (mean-seeking distillation).
""",
    "0.043053",
)
vocab_parallel_reverse_kl = _logits_divergence(
    "reverse_kl",
    "vocab_parallel_reverse_kl",
    r"""Reverse KL, KL(student || teacher), with the vocabulary split over a mesh axis.

    .. math::

        \mathrm{KL}(Q \,\|\, P) = \sum_k q_k (\log q_k - \log p_k),
        \quad Q = \mathrm{softmax}(\text{logits} / T),\ P = \mathrm{softmax}(\text{target} / T).

    Equals :func:`infoloss_jax.reverse_kl` on the gathered logits (mode-seeking distillation).
""",
    "0.044341",
)
vocab_parallel_jensen_shannon = _logits_divergence(
    "jensen_shannon",
    "vocab_parallel_jensen_shannon",
    r"""Generalized Jensen-Shannon divergence between teacher and student, vocabulary sharded.

    .. math::

        \mathrm{JS}_\beta = \beta\,\mathrm{KL}(P \,\|\, M) + (1 - \beta)\,\mathrm{KL}(Q \,\|\, M),
        \quad M = \beta P + (1 - \beta) Q,

    with ``P = softmax(target / T)`` the teacher and ``Q = softmax(logits / T)`` the student.
    ``beta=0`` returns the forward KL(P || Q) and ``beta=1`` the reverse KL(Q || P) (the TRL /
    Liger-Kernel convention), as :func:`infoloss_jax.jensen_shannon` does (keyword ``beta``,
    default 0.5).
""",
    "0.010881",
)


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
      backward: ``"auto"`` (default), ``"one_pass"`` or ``"two_pass"``, as in
        :func:`infoloss_jax.linear_softmax_cross_entropy` (``"in_forward"`` needs one device).

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
    kw = dict(locals())
    w = as_float_array(kw.pop("weight_shard"), "weight_shard")
    kw.update(_mesh_kw(kw, w, "vocab_parallel_linear_cross_entropy"), bias=kw.pop("bias_shard"))
    loss = run_cross_entropy(
        kw.pop("hidden"), kw.pop("labels"), w, names=("hidden", "weight_shard", "bias_shard"), **kw
    )
    return cast(jax.Array, loss)  # no return_aux here: the loss alone


def _mesh_kw(kw, weight, fn, *more):
    """axis, axis_size, vocab_size and data_axis of a linear head's slice inside shard_map."""
    _, local = head_sizes(
        as_float_array(kw["hidden"], "hidden"),
        weight,
        kw["weight_layout"],
        "hidden",
        "weight_shard",
    )
    axis, data_axis = kw.pop("vocab_axis"), kw.pop("data_axis")
    d, vocab = _mesh_setup(
        weight, "weight_shard", local, axis, kw.pop("vocab_size"), data_axis, fn, *more
    )
    return dict(axis=axis, axis_size=d, vocab_size=vocab, data_axis=data_axis)


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
      backward: ``"auto"`` (default), ``"one_pass"`` or ``"two_pass"``, as in
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
"""


def _linear_divergence(kind, name, head, value):
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
        kw = {k: v for k, v in locals().items() if k not in ("kind", "name", "beta")} | beta
        w = as_float_array(kw.pop("weight_shard"), "weight_shard")
        tw = as_float_array(kw.pop("target_weight_shard"), "target_weight_shard")
        kw.update(_mesh_kw(kw, w, name, (tw, "target_weight_shard")))
        names = ("hidden", "weight_shard", "target_hidden", "target_weight_shard")
        h, th = kw.pop("hidden"), kw.pop("target_hidden")
        return run_divergence(kind, h, w, th, tw, names=names, **kw)

    beta_doc = _BETA_DOC if kind == "jensen_shannon" else ""
    doc = head + _LINEAR_DISTILL_DOC.format(beta=beta_doc, name=name, value=value)
    return _named(fn, kind, name, doc)


vocab_parallel_linear_forward_kl = _linear_divergence(
    "forward_kl",
    "vocab_parallel_linear_forward_kl",
    r"""Forward KL(teacher || student) of two LM heads, vocabulary split over a mesh axis.

    .. math::

        \mathrm{KL}(P \,\|\, Q), \quad P = \mathrm{softmax}(h_t W_t / T),\
        Q = \mathrm{softmax}(h W / T).
""",
    "0.043053",
)
vocab_parallel_linear_reverse_kl = _linear_divergence(
    "reverse_kl",
    "vocab_parallel_linear_reverse_kl",
    r"""Reverse KL(student || teacher) of two LM heads, vocabulary split over a mesh axis.

    .. math::

        \mathrm{KL}(Q \,\|\, P), \quad Q = \mathrm{softmax}(h W / T),\
        P = \mathrm{softmax}(h_t W_t / T).
""",
    "0.044341",
)
vocab_parallel_linear_jensen_shannon = _linear_divergence(
    "jensen_shannon",
    "vocab_parallel_linear_jensen_shannon",
    r"""Generalized Jensen-Shannon divergence of two LM heads, vocabulary split over a mesh axis.

    .. math::

        \beta\,\mathrm{KL}(P \,\|\, M) + (1 - \beta)\,\mathrm{KL}(Q \,\|\, M),
        \quad M = \beta P + (1 - \beta) Q,

    teacher ``P``, student ``Q``; ``beta=0`` is the forward KL(P || Q) and ``beta=1`` the
    reverse KL(Q || P), as in :func:`infoloss_jax.jensen_shannon` (keyword ``beta``, default 0.5).
""",
    "0.010881",
)


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


def _static_items(options: dict) -> tuple:
    """Options that select the program (hashable); array-valued ones travel as arguments."""
    return tuple(sorted((k, v) for k, v in options.items() if not _is_array(v)))


def _is_array(v) -> bool:
    return isinstance(v, jax.Array | np.ndarray | Tracer)


@functools.lru_cache(maxsize=64)
def _program(fn, mesh, vocab_axis, data_axis, roles, static, array_names, padded):
    """The jitted shard_map of ``fn`` for one (mesh, options, argument roles): built once.

    ``roles`` says per positional argument how it is split: ``"rows"`` (tokens over the data
    axis), ``"rows_vocab"`` (tokens and classes), ``"vocab_dv"``/``"vocab_vd"`` (a head weight)
    or ``"vocab"`` (a per-class vector); a ``None`` role is absent.
    """
    vocab_dim = {"rows_vocab": -1, "vocab_dv": 1, "vocab_vd": 0, "vocab": 0}
    specs = {
        "rows": P(data_axis),
        "rows2": P(data_axis, None),
        "rows_vocab": P(data_axis, vocab_axis),
        "vocab_dv": P(None, vocab_axis),
        "vocab_vd": P(vocab_axis, None),
        "vocab": P(vocab_axis),
    }
    kinds = [r for r in roles if r is not None]
    reduction = dict(static).get("reduction")
    out_spec = P(data_axis) if reduction == "none" else P()

    def local(*args):
        arrays, extra = args[: len(kinds)], dict(zip(array_names, args[len(kinds) :], strict=True))
        it = iter(arrays)
        full = [None if r is None else next(it) for r in roles]
        return fn(*full, **dict(static), **extra)

    in_specs = tuple(specs[r] for r in kinds) + (P(),) * len(array_names)
    mapped = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_spec)

    def run(*args):
        args = list(args)
        for i, role in enumerate(kinds):
            if role in vocab_dim and padded:
                dim = vocab_dim[role] % args[i].ndim
                pad = [(0, 0)] * args[i].ndim
                pad[dim] = (0, padded - args[i].shape[dim])
                args[i] = jnp.pad(args[i], pad)
        return mapped(*args)

    return jax.jit(run)


def _on_mesh(fn, name, mesh, vocab_axis, data_axis, vocab, lead, roles, args, options):
    d = _mesh_axis_size(mesh, vocab_axis, "vocab_axis", name)
    dp = _mesh_axis_size(mesh, data_axis, "data_axis", name)
    n = int(np.prod(lead, dtype=np.int64))
    if n % dp:
        raise ValueError(
            f"The inputs hold {n} tokens, not a multiple of the {dp} devices of data axis "
            f"{data_axis!r}; pad the batch (with ignored labels) to a multiple of {dp}."
        )
    padded = d * -(-vocab // d)
    arrays = {k: v for k, v in options.items() if _is_array(v)}
    static = _static_items(
        dict(options, vocab_size=vocab, vocab_axis=vocab_axis, data_axis=data_axis)
    )
    program = _program(
        fn,
        mesh,
        vocab_axis,
        data_axis,
        roles,
        static,
        tuple(arrays),
        padded if padded != vocab else 0,
    )
    out = program(*(a for a in args if a is not None), *arrays.values())
    return out.reshape(lead) if dict(static)["reduction"] == "none" else out


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
    logits = as_float_array(logits, "logits")
    labels = as_integer_array(labels, "labels")
    check_reduction(reduction)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`labels` must have the shape of `logits` without its last (vocabulary) axis; got "
            f"`logits` {describe(logits)} and `labels` {describe(labels)}."
        )
    vocab, lead = logits.shape[-1], labels.shape
    where = options.pop("where", None)
    roles = ("rows_vocab", "rows", "rows_vocab" if where is not None else None)
    if where is not None:
        where = jnp.broadcast_to(jnp.asarray(where), logits.shape).reshape(-1, vocab)
    args = (logits.reshape(-1, vocab), labels.reshape(-1), where)
    options = dict(options, reduction=reduction)
    return _on_mesh(
        _logits_ce_positional,
        "vocab_parallel_cross_entropy_on_mesh",
        mesh,
        vocab_axis,
        data_axis,
        vocab,
        lead,
        roles,
        args,
        options,
    )


def _logits_ce_positional(z, y, where=None, **kw):
    return vocab_parallel_cross_entropy(z, y, where=where, **kw)


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
    hidden = as_float_array(hidden, "hidden")
    weight = as_float_array(weight, "weight")
    labels = as_integer_array(labels, "labels")
    check_reduction(reduction)
    d_model, vocab = head_sizes(hidden, weight, weight_layout, "hidden", "weight")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"`labels` must have the shape of `hidden` without its last axis; got `hidden` "
            f"{describe(hidden)} and `labels` {describe(labels)}."
        )
    if bias is not None:
        bias = as_float_array(bias, "bias")
        if bias.shape != (vocab,):
            raise ValueError(f"`bias` must have shape [V] = [{vocab}]; got {describe(bias)}.")
    roles = ("rows2", "rows", f"vocab_{weight_layout}", "vocab" if bias is not None else None)
    args = (hidden.reshape(-1, d_model), labels.reshape(-1), weight, bias)
    options = dict(options, reduction=reduction, weight_layout=weight_layout)
    return _on_mesh(
        _linear_ce_positional,
        "vocab_parallel_linear_cross_entropy_on_mesh",
        mesh,
        vocab_axis,
        data_axis,
        vocab,
        labels.shape,
        roles,
        args,
        options,
    )


def _linear_ce_positional(h, y, w, b=None, **kw):
    return vocab_parallel_linear_cross_entropy(h, y, w, bias_shard=b, **kw)


def _logits_divergence_on_mesh(fn, what):
    name = fn.__name__ + "_on_mesh"

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
        student = as_float_array(logits, "logits")
        teacher = as_float_array(target_logits, "target_logits")
        check_reduction(reduction)
        if student.shape != teacher.shape or student.ndim < 1:
            raise ValueError(
                f"`logits` and `target_logits` must have the same shape; got {describe(student)} "
                f"and {describe(teacher)}."
            )
        vocab = student.shape[-1]
        where = options.pop("where", None)
        if where is not None:
            where = jnp.broadcast_to(jnp.asarray(where), student.shape).reshape(-1, vocab)
        roles = ("rows_vocab", "rows_vocab", "rows_vocab" if where is not None else None)
        args = (student.reshape(-1, vocab), teacher.reshape(-1, vocab), where)
        return _on_mesh(
            positional,
            name,
            mesh,
            vocab_axis,
            data_axis,
            vocab,
            student.shape[:-1],
            roles,
            args,
            dict(options, reduction=reduction),
        )

    positional = functools.partial(_divergence_positional, fn)
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = (
        f":func:`{fn.__name__}`, {what}, on whole ``[..., V]`` logits and a ``Mesh``.\n\n"
        "    Pads ``V`` to a multiple of the ``vocab_axis`` size (masked), splits tokens over\n"
        "    ``data_axis`` and the vocabulary over ``vocab_axis``; the ``shard_map`` is built\n"
        "    once per mesh, shapes and options. ``options``: temperature, beta, where;\n"
        '    the defaults are the wrapped function\'s, ``reduction="none"`` included.\n'
    )
    return wrapper


def _divergence_positional(fn, s, t, where=None, **kw):
    return fn(s, t, where=where, **kw)


def _linear_divergence_on_mesh(fn, what):
    name = fn.__name__ + "_on_mesh"

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
        hidden = as_float_array(hidden, "hidden")
        weight = as_float_array(weight, "weight")
        target_hidden = as_float_array(target_hidden, "target_hidden")
        target_weight = as_float_array(target_weight, "target_weight")
        check_reduction(reduction)
        names = ("hidden", "weight", "target_hidden", "target_weight")
        heads = (hidden, weight, target_hidden, target_weight)
        d_s, d_t, vocab, lead = check_two_heads(*heads, weight_layout, names)
        mask = token_mask(mask, lead)
        w_role = f"vocab_{weight_layout}"
        roles = ("rows2", w_role, "rows2", w_role, "rows" if mask is not None else None)
        args = (
            hidden.reshape(-1, d_s),
            weight,
            target_hidden.reshape(-1, d_t),
            target_weight,
            mask,
        )
        options = dict(options, reduction=reduction, weight_layout=weight_layout)
        return _on_mesh(
            positional,
            name,
            mesh,
            vocab_axis,
            data_axis,
            vocab,
            lead,
            roles,
            args,
            options,
        )

    positional = functools.partial(_linear_divergence_positional, fn)
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = (
        f":func:`{fn.__name__}`, {what}, on whole heads and a ``Mesh``.\n\n"
        "    Pads ``V`` to a multiple of the ``vocab_axis`` size (masked), splits the heads over\n"
        "    ``vocab_axis`` along their vocabulary dimension and the tokens over ``data_axis``\n"
        "    (optional); the ``shard_map`` is built once per mesh, shapes and options.\n"
        "    ``options``: temperature, beta (Jensen-Shannon), token_block_size,\n"
        "    vocab_block_size, backward (the wrapped function's defaults).\n"
    )
    return wrapper


def _linear_divergence_positional(fn, h, w, th, tw, mask=None, **kw):
    return fn(h, w, th, tw, mask=mask, **kw)


vocab_parallel_forward_kl_on_mesh = _logits_divergence_on_mesh(
    vocab_parallel_forward_kl, "KL(teacher || student)"
)
vocab_parallel_reverse_kl_on_mesh = _logits_divergence_on_mesh(
    vocab_parallel_reverse_kl, "KL(student || teacher)"
)
vocab_parallel_jensen_shannon_on_mesh = _logits_divergence_on_mesh(
    vocab_parallel_jensen_shannon, "the generalized Jensen-Shannon divergence"
)
vocab_parallel_linear_forward_kl_on_mesh = _linear_divergence_on_mesh(
    vocab_parallel_linear_forward_kl, "KL(teacher || student)"
)
vocab_parallel_linear_reverse_kl_on_mesh = _linear_divergence_on_mesh(
    vocab_parallel_linear_reverse_kl, "KL(student || teacher)"
)
vocab_parallel_linear_jensen_shannon_on_mesh = _linear_divergence_on_mesh(
    vocab_parallel_linear_jensen_shannon, "the generalized Jensen-Shannon divergence"
)
