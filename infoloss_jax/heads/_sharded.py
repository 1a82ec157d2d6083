"""Vocabulary-parallel losses for ``jax.shard_map``: the Megatron-LM algorithm in JAX.

Each device holds a slice of the vocabulary (``V / d`` classes on each of the ``d`` devices of
the mesh axis ``vocab_axis``); no device ever holds a full ``[N, V]`` row. These are the
blockwise engine of the fused losses (:mod:`infoloss_jax.engine._blockwise`) with a mesh axis:
each device computes its slice's statistics, one ``pmax`` and one ``psum`` per token merge
them, and the backward pass sums the hidden-state gradient over the axis.

The functions without ``_on_mesh`` are called INSIDE ``jax.shard_map`` by the user; the
``*_on_mesh`` wrappers take whole arrays and a :class:`jax.sharding.Mesh`, pad the vocabulary to
a multiple of the axis size and build (once per mesh, shapes and options) the ``shard_map``.
Both are written out, as the fused heads are: validated operands, the loss's kind and options,
then :func:`._fused.run` inside ``shard_map`` or :func:`run_on_mesh` on a mesh.

Vocabulary padding: when ``V`` is not a multiple of ``d``, pad logits (with anything: they are
masked) or weight columns up to ``d * ceil(V / d)`` and pass ``vocab_size=V``; classes with a
global index ``>= vocab_size`` are excluded from every sum.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

from ..base._typing import ArrayLike, Backward, Reduction, WeightLayout
from ..base._validation import as_float_array, as_where, check_same_shape, describe
from ..engine import _blockwise
from ..engine._blockwise import AxisName, Operands
from ..post_training._log_probs import _outputs as token_outputs
from ._fused import (
    Axes,
    EngineOptions,
    Extras,
    LinearCrossEntropyAux,
    ce_options,
    check_class_weights,
    check_flag,
    check_labels,
    class_vector,
    cross_entropy_aux,
    cross_entropy_ops,
    distillation_ops,
    execute,
    local_vocab,
    log_probs_options,
    poison,
    poison_tree,
    prepare,
    row_entropy,
    run,
    token_mask,
)

# The argument names the errors use, inside shard_map and on a mesh.
SHARD_HEAD = ("hidden", "weight_shard", "bias_shard", "class_weights_shard")
MESH_HEAD = ("hidden", "weight", "bias", "class_weights")
SHARD_DISTILL = ("hidden", "weight_shard", "target_hidden", "target_weight_shard")
MESH_DISTILL = ("hidden", "weight", "target_hidden", "target_weight")
SHARD_LOGITS = ("logits_shard", "target_logits_shard", "class_weights_shard")
MESH_LOGITS = ("logits", "target_logits", "class_weights")


# ------------------------------------------------------------------------------ on logits
def _flat_logits(logits, where, mask, name):
    """``[N, V]`` logits, their ``[N, V]`` class mask and ``[N]`` token mask, the token shape."""
    logits = as_float_array(logits, name)
    if logits.ndim < 1:
        raise ValueError(f"`{name}` must have a vocabulary axis; got {describe(logits)}.")
    n, v = int(np.prod(logits.shape[:-1], dtype=np.int64)), logits.shape[-1]
    classes = as_where(where, logits.shape, name)
    classes = None if classes is None else classes.reshape(n, v)
    lead = logits.shape[:-1]
    return logits.reshape(n, v), classes, token_mask(mask, lead), lead


def logits_label_ops(logits, labels, where, mask, class_weights, names):
    """The validated Operands of a cross-entropy (or log-probs) on logits, and the token shape."""
    x, classes, rows, lead = _flat_logits(logits, where, mask, names[0])
    labels = check_labels(labels, jnp.asarray(logits), names[0]).reshape(-1)
    cw = check_class_weights(class_vector(class_weights, names[2], x.shape[1]), names[2])
    return Operands(x, None, None, None, None, labels, cw, classes, rows), lead


def logits_pair_ops(logits, target_logits, where, mask, names):
    """The validated Operands of a divergence of two logits arrays, and the token shape."""
    x, classes, rows, lead = _flat_logits(logits, where, mask, names[0])
    target = as_float_array(target_logits, names[1])
    check_same_shape(jnp.asarray(logits), names[0], target, names[1])
    return Operands(x, None, None, target.reshape(x.shape), None, None, None, classes, rows), lead


# ------------------------------------------------------------------------------ inside shard_map
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


def shard_axes(fn: str, ops: Operands, layout, vocab_axis, vocab_size, data_axis) -> Axes:
    """The mesh axes of the ``vocab_parallel_*`` loss ``fn`` inside shard_map, checked against
    the slices in ``ops``."""
    local = local_vocab(ops, layout)
    if ops.w is None:
        shards = {"logits_shard": ops.x, "target_logits_shard": ops.th}
    else:
        shards = {"weight_shard": ops.w, "target_weight_shard": ops.tw}
    d = _axis_size(vocab_axis, "vocab_axis", fn)
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ValueError(f"`vocab_size` must be a positive int or None; got {vocab_size!r}.")
        expected = -(-vocab_size // d)
        if local != expected:
            raise ValueError(
                f"`{next(iter(shards))}` holds {local} classes per device, but `vocab_size`="
                f"{vocab_size} over the {d} devices of mesh axis {vocab_axis!r} needs "
                f"ceil({vocab_size}/{d}) = {expected} per device (the vocabulary padded to "
                f"{expected * d})."
            )
    for name, x in shards.items():
        if x is not None:
            _require_split(x, name, vocab_axis)
    if data_axis is not None:
        _axis_size(data_axis, "data_axis", fn)
    return Axes(vocab_axis, d, vocab_size, data_axis)


# ------------------------------------------------------------------------------ on a mesh
class OnMesh(NamedTuple):
    """Where a ``*_on_mesh`` wrapper runs: its mesh, axes and name (for the errors)."""

    mesh: Mesh
    vocab_axis: AxisName
    data_axis: AxisName | None
    name: str


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


def _partitions(fields, layout, vocab, data) -> dict:
    """Each Operands field's ``PartitionSpec`` and vocabulary dimension (None if it has none)."""
    logits = "w" not in fields
    w_dim = 1 if layout == "dv" else 0
    head = (P(None, vocab) if w_dim else P(vocab, None), w_dim)
    rows = (P(data, vocab), 1) if logits else (P(data, None), None)
    return dict(
        x=rows,
        th=rows,
        w=head,
        tw=head,
        b=(P(vocab), 0),
        labels=(P(data), None),
        class_weights=(P(vocab), 0),
        mask=(P(data, vocab), 1),
        row_mask=(P(data), None),
    )


@functools.lru_cache(maxsize=64)
def _program(mesh, spec, engine, axes: Axes, fields, padded: int, extras: Extras | None):
    """The jitted shard_map of a loss for one (mesh, spec, options, operands): built once.

    It takes the present Operands ``fields`` (vocabulary dimensions padded to ``padded``
    classes when it is not 0) and the coefficients, which are operands too: a new value of a
    coefficient compiles nothing."""
    parts = _partitions(fields, engine.weight_layout, axes.vocab, axes.data)

    def local(arrays, coefs):
        present = dict(zip(fields, arrays, strict=True))
        ops = Operands._make(present.get(f) for f in Operands._fields)
        lead = ops.x.shape[:1]
        value, out, labels = execute(spec, coefs, ops, lead, engine, axes)
        return value, (None if extras is None else extras(out, coefs, labels, lead))

    value_spec = P(axes.data) if engine.reduction == "none" else P()
    in_specs = (tuple(parts[f][0] for f in fields), P())
    mapped = jax.shard_map(
        local, mesh=mesh, in_specs=in_specs, out_specs=(value_spec, P(axes.data))
    )

    def padded_call(arrays, coefs):
        arrays = list(arrays)
        for i, f in enumerate(fields):
            dim = parts[f][1]
            if dim is not None and padded:
                pad = [(0, 0)] * arrays[i].ndim
                pad[dim] = (0, padded - arrays[i].shape[dim])
                arrays[i] = jnp.pad(arrays[i], pad)
        return mapped(tuple(arrays), coefs)

    return jax.jit(padded_call)


def run_on_mesh(
    kind, ops, lead, options, engine: EngineOptions, place: OnMesh, extras: Extras | None = None
) -> tuple[jax.Array, Any]:
    """Every ``*_on_mesh`` wrapper ends here: :func:`._fused.run` on whole arrays, the tokens
    split over ``place.data_axis`` and the vocabulary over ``place.vocab_axis``.

    The options are validated (and concrete coefficients checked) before anything is traced;
    the program is cached per mesh, spec and operand structure, and takes the coefficients as
    operands. Returns ``(value, extras or None)`` shaped by the token shape ``lead``."""
    d = _mesh_axis_size(place.mesh, place.vocab_axis, "vocab_axis", place.name)
    dp = _mesh_axis_size(place.mesh, place.data_axis, "data_axis", place.name)
    n = ops.x.shape[0]
    if n % dp:
        raise ValueError(
            f"The inputs hold {n} tokens, not a multiple of the {dp} devices of data axis "
            f"{place.data_axis!r}; pad the batch (with ignored labels) to a multiple of {dp}."
        )
    vocab = local_vocab(ops, engine.weight_layout)
    axes = Axes(place.vocab_axis, d, vocab, place.data_axis)
    spec, coefs, ok = prepare(kind, ops, options, engine, axes)
    # "batchmean" divides by the first dimension of the tokens' shape, which the program (on
    # flattened tokens) does not see: it sums, and the division happens here.
    reduction = "sum" if engine.reduction == "batchmean" else engine.reduction
    inner = engine._replace(reduction=reduction, accum_dtype=spec.accum_dtype)
    fields = tuple(f for f, x in zip(Operands._fields, ops, strict=True) if x is not None)
    padded = d * -(-vocab // d) if vocab % d else 0
    program = _program(place.mesh, spec, inner, axes, fields, padded, extras)
    value, more = program(tuple(x for x in ops if x is not None), coefs)
    if engine.reduction == "none":
        value = value.reshape(lead)
    elif engine.reduction == "batchmean":
        value = value / max(lead[0] if lead else 1, 1)
    more = jax.tree.map(lambda x: x.reshape(lead), more)
    return poison(value, ok), poison_tree(more, ok)


def log_probs_outputs(rows, entropy, with_entropy: bool):
    """The token log-probabilities (and entropies) from the cross-entropy rows."""
    return token_outputs(-rows, entropy, with_entropy, None)


# ------------------------------------------------------------------------------ cross-entropy
@overload
def vocab_parallel_cross_entropy(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    *,
    vocab_axis: AxisName,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights_shard: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: Literal[False] = False,
) -> jax.Array: ...
@overload
def vocab_parallel_cross_entropy(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    *,
    vocab_axis: AxisName,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights_shard: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: Literal[True],
) -> tuple[jax.Array, LinearCrossEntropyAux]: ...
def vocab_parallel_cross_entropy(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    *,
    vocab_axis: AxisName,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights_shard: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: bool = False,
) -> jax.Array | tuple[jax.Array, LinearCrossEntropyAux]:
    r"""Softmax cross-entropy with integer labels, the vocabulary split over a mesh axis.

    Call it **inside** ``jax.shard_map``. Each device passes its slice of the logits; together the
    slices along ``vocab_axis`` form the full vocabulary, device ``i`` holding classes
    ``[i * V_local, (i + 1) * V_local)``. The result equals
    :func:`softmax_cross_entropy_with_integer_labels` on the gathered logits, without gathering:

    .. math::

        \ell_i = (1 - \varepsilon)\, c_{y_i} (\mathrm{lse}_i - z_{i, y_i})
                 + \tfrac{\varepsilon}{K} \textstyle\sum_k c_k (\mathrm{lse}_i - z_{ik})
                 + \lambda\,\mathrm{lse}_i^2,
        \qquad \mathrm{lse}_i = \log \textstyle\sum_k e^{z_{ik}},

    where ``z = softcap * tanh(logits / softcap)`` when ``logit_softcap`` is set, ``c`` are the
    class weights (1 by default) and ``K`` counts the included classes (not ``-inf``, not
    masked, not padding). The collectives are one ``pmax`` and one fused ``psum`` per token over
    ``vocab_axis`` (Megatron-LM's algorithm). The gradient is recomputed in the backward pass
    from the logits and the saved logsumexp, with no collective. An ignored or masked token
    contributes nothing, to the value or to the gradient, even if its logits are NaN.

    Args:
      logits_shard: ``[..., V_local]`` float logits, this device's vocabulary slice.
      labels: ``[...]`` integer labels, *global* class indices, the same on every device of
        ``vocab_axis``. Labels outside ``[0, vocab_size)`` that are not ``ignore_index`` give
        NaN in the value and the gradient.
      vocab_axis: the mesh axis (or tuple of axes) the vocabulary is split over.
      where: optional boolean class mask broadcastable to ``logits_shard``: False excludes a class.
      mask: optional boolean per-token mask ``[...]`` (True = the token counts); False gives 0
        loss, 0 gradient and no weight in the mean.
      vocab_size: the true vocabulary size when it was padded up to a multiple of the axis size;
        classes at or beyond it are excluded. ``V_local`` must equal ``ceil(vocab_size / d)``.
      ignore_index: tokens with this label get zero loss, zero gradient and no weight in the mean.
      label_smoothing: ``eps`` in [0, 1) (may be traced): the target is
        ``(1 - eps) onehot + eps / K``.
      class_weights_shard: optional ``[V_local]`` slice of non-negative per-class weights (no
        gradient); ``"mean"`` then divides by the weights of the counted labels.
      z_loss: coefficient ``lambda`` of the ``lse ** 2`` penalty (PaLM's z-loss; may be traced).
      logit_softcap: static cap ``s`` applied as ``s * tanh(logits / s)`` first.
      reduction: ``"none"`` (default, per token, shape ``[...]``), ``"sum"``, ``"mean"`` (over
        counted tokens) or ``"batchmean"`` (over the global first dimension).
      data_axis: mesh axis (or axes) the tokens are split over; the reductions are then exact
        over the global batch.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).
      return_aux: also return a :class:`~infoloss_jax.LinearCrossEntropyAux` of per-token
        logsumexp, z-loss term and argmax-equals-label (the argmax over the whole vocabulary).

    Returns:
      Per-token losses ``[...]`` (float32 for half-precision inputs) or a scalar, identical on
        every device of ``vocab_axis``; with ``return_aux=True``, ``(loss, aux)``.

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
    extras = cross_entropy_aux if check_flag(return_aux, "return_aux") else None
    ops, lead = logits_label_ops(
        logits_shard, labels, where, mask, class_weights_shard, SHARD_LOGITS
    )
    axes = shard_axes("vocab_parallel_cross_entropy", ops, "dv", vocab_axis, vocab_size, data_axis)
    options = ce_options(ignore_index, label_smoothing, z_loss, logit_softcap)
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    value, aux = run("cross_entropy", ops, lead, options, engine, axes, extras)
    return (value, aux) if return_aux else value


@overload
def vocab_parallel_linear_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    bias_shard: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights_shard: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "mean",
    data_axis: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: Literal[False] = False,
) -> jax.Array: ...
@overload
def vocab_parallel_linear_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    bias_shard: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights_shard: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "mean",
    data_axis: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: Literal[True],
) -> tuple[jax.Array, LinearCrossEntropyAux]: ...
def vocab_parallel_linear_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    bias_shard: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights_shard: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "mean",
    data_axis: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: bool = False,
) -> jax.Array | tuple[jax.Array, LinearCrossEntropyAux]:
    r"""Fused LM-head cross-entropy with the head weight split along the vocabulary.

    Call it **inside** ``jax.shard_map``. Computes :func:`vocab_parallel_cross_entropy` of
    ``hidden @ weight + bias``, ``weight`` being the concatenation of the ``weight_shard``
    slices along ``vocab_axis``, without ever storing the local ``[N, V_local]`` logits: this
    is :func:`infoloss_jax.linear_softmax_cross_entropy` with its statistics all-reduced across
    the axis, and it takes that function's options. The tile budget is split over the ``d``
    devices of ``vocab_axis``, so per-device temporaries shrink with ``d``.

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
      ignore_index, mask, label_smoothing, z_loss, logit_softcap: as in
        :func:`vocab_parallel_cross_entropy`.
      class_weights_shard: optional ``[V_local]`` slice of non-negative class weights.
      reduction: ``"mean"`` (default, over counted tokens), ``"sum"``, ``"batchmean"`` or
        ``"none"``.
      data_axis: mesh axis (or axes) the tokens are split over; the mean is then exact over the
        global batch.
      token_block_size, vocab_block_size: block sizes (positive ints); by default a tile of at
        most max(2**17, 2**21 / d) elements on CPU.
      backward: ``"auto"`` (default), ``"rows"``, ``"one_pass"`` or ``"two_pass"``, as in
        :func:`infoloss_jax.linear_softmax_cross_entropy` (``"in_forward"`` needs one device;
        ``"fast"`` runs ``"rows"`` here).
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).
      return_aux: also return a :class:`~infoloss_jax.LinearCrossEntropyAux`.

    Returns:
      The reduced loss, or per-token losses ``[...]`` for ``reduction="none"``; with
        ``return_aux=True``, ``(loss, aux)``.

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
    extras = cross_entropy_aux if check_flag(return_aux, "return_aux") else None
    head = (hidden, labels, weight_shard, bias_shard, class_weights_shard, mask, weight_layout)
    ops, lead = cross_entropy_ops(*head, SHARD_HEAD)
    name = "vocab_parallel_linear_cross_entropy"
    axes = shard_axes(name, ops, weight_layout, vocab_axis, vocab_size, data_axis)
    options = ce_options(ignore_index, label_smoothing, z_loss, logit_softcap)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    value, aux = run("cross_entropy", ops, lead, options, engine, axes, extras)
    return (value, aux) if return_aux else value


@overload
def vocab_parallel_cross_entropy_on_mesh(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: Literal[False] = False,
) -> jax.Array: ...
@overload
def vocab_parallel_cross_entropy_on_mesh(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: Literal[True],
) -> tuple[jax.Array, LinearCrossEntropyAux]: ...
def vocab_parallel_cross_entropy_on_mesh(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: bool = False,
) -> jax.Array | tuple[jax.Array, LinearCrossEntropyAux]:
    """vocab_parallel_cross_entropy on whole [..., V] logits and a Mesh.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of the vocabulary axis size (the padded classes are masked),
    and builds the ``shard_map`` once per mesh, shapes and options: a second identical call, or
    one with new values of the coefficients, compiles nothing.

    Args:
      logits: ``[..., V]`` float logits.
      labels: ``[...]`` integer labels.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      where, mask, ignore_index, label_smoothing: as in :func:`vocab_parallel_cross_entropy`.
      z_loss, logit_softcap, accum_dtype, return_aux: as there.
      class_weights: optional ``[V]`` non-negative per-class weights (split like the logits).
      reduction: ``"none"`` (default), ``"sum"``, ``"mean"`` or ``"batchmean"``.

    Returns:
      Per-token losses ``[...]`` or their reduction; with ``return_aux=True``, ``(loss, aux)``.

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
    extras = cross_entropy_aux if check_flag(return_aux, "return_aux") else None
    ops, lead = logits_label_ops(logits, labels, where, mask, class_weights, MESH_LOGITS)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_cross_entropy_on_mesh")
    options = ce_options(ignore_index, label_smoothing, z_loss, logit_softcap)
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    value, aux = run_on_mesh("cross_entropy", ops, lead, options, engine, place, extras)
    return (value, aux) if return_aux else value


@overload
def vocab_parallel_linear_cross_entropy_on_mesh(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    bias: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: Literal[False] = False,
) -> jax.Array: ...
@overload
def vocab_parallel_linear_cross_entropy_on_mesh(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    bias: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: Literal[True],
) -> tuple[jax.Array, LinearCrossEntropyAux]: ...
def vocab_parallel_linear_cross_entropy_on_mesh(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    bias: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    label_smoothing: float | jax.Array = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float | jax.Array = 0.0,
    logit_softcap: float | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
    return_aux: bool = False,
) -> jax.Array | tuple[jax.Array, LinearCrossEntropyAux]:
    """vocab_parallel_linear_cross_entropy on a whole head weight and a Mesh.

    Splits the weight (and bias and class weights) over ``vocab_axis`` along its vocabulary
    dimension (``[D, V]`` or, with ``weight_layout="vd"``, ``[V, D]``), padding ``V`` to a
    multiple of its size (padded classes are masked), the tokens over ``data_axis``
    (optional), and builds the ``shard_map`` once per mesh, shapes and options. Pass a weight
    already sharded that way to avoid moving it. It takes every option of
    :func:`infoloss_jax.linear_softmax_cross_entropy`, with the same defaults.

    Args:
      hidden: ``[..., D]`` hidden states.
      labels: ``[...]`` integer labels.
      weight: the whole head weight, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      bias: optional ``[V]`` bias.
      weight_layout: ``"dv"`` (default) or ``"vd"``; never inferred from the shape.
      ignore_index, mask, label_smoothing, z_loss, logit_softcap, reduction: as in
        :func:`vocab_parallel_linear_cross_entropy`.
      token_block_size, vocab_block_size, backward, accum_dtype, return_aux: as there.
      class_weights: optional ``[V]`` non-negative per-class weights.

    Returns:
      The reduced loss (or per-token losses ``[...]``); with ``return_aux=True``,
        ``(loss, aux)``.

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
    extras = cross_entropy_aux if check_flag(return_aux, "return_aux") else None
    head = (hidden, labels, weight, bias, class_weights, mask, weight_layout)
    ops, lead = cross_entropy_ops(*head, MESH_HEAD)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_linear_cross_entropy_on_mesh")
    options = ce_options(ignore_index, label_smoothing, z_loss, logit_softcap)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    value, aux = run_on_mesh("cross_entropy", ops, lead, options, engine, place, extras)
    return (value, aux) if return_aux else value


# ------------------------------------------------------------------------------ token log-probs
@overload
def vocab_parallel_log_probs(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    *,
    vocab_axis: AxisName,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: Literal[False] = False,
    ignore_index: int | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array: ...
@overload
def vocab_parallel_log_probs(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    *,
    vocab_axis: AxisName,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: Literal[True],
    ignore_index: int | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> tuple[jax.Array, jax.Array]: ...
def vocab_parallel_log_probs(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    *,
    vocab_axis: AxisName,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: bool = False,
    ignore_index: int | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Per-token log-probability of the label (and entropy), the vocabulary split over devices.

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
      mask: optional boolean per-token mask ``[...]`` (True = the token counts); False gives 0
        for both outputs and no gradient.
      vocab_size: the true vocabulary size when it was padded up to a multiple of the axis size;
        ``V_local`` must equal ``ceil(vocab_size / d)``.
      temperature: :math:`T > 0` (may be traced).
      logit_softcap: optional static cap :math:`s > 0`.
      with_entropy: also return the per-token entropy :math:`H(q)` (nats).
      ignore_index: label value whose tokens give 0 for both outputs and no gradient, or None.
      accum_dtype: dtype of every sum and of the outputs (at least float32).

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
    extras = row_entropy if check_flag(with_entropy, "with_entropy") else None
    ops, lead = logits_label_ops(logits_shard, labels, where, mask, None, SHARD_LOGITS)
    axes = shard_axes("vocab_parallel_log_probs", ops, "dv", vocab_axis, vocab_size, None)
    options = log_probs_options(temperature, logit_softcap, ignore_index, with_entropy)
    engine = EngineOptions("none", accum_dtype=accum_dtype)
    rows, entropy = run("token_log_probs", ops, lead, options, engine, axes, extras)
    return log_probs_outputs(rows, entropy, with_entropy)


@overload
def vocab_parallel_linear_log_probs(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    bias_shard: ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: Literal[False] = False,
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array: ...
@overload
def vocab_parallel_linear_log_probs(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    bias_shard: ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: Literal[True],
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> tuple[jax.Array, jax.Array]: ...
def vocab_parallel_linear_log_probs(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    bias_shard: ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: bool = False,
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Fused LM-head token log-probabilities (and entropy), the weight split over the vocabulary.

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
    reverse mode only (a ``jax.custom_vjp``). A masked or ignored token contributes nothing,
    to the outputs or to any gradient, even if its hidden state is NaN.

    Args:
      hidden: ``[..., D]`` hidden states, identical on every device of ``vocab_axis``.
      labels: ``[...]`` integer global token ids.
      weight_shard: this device's slice of the head weight, ``[D, V_local]`` or, with
        ``weight_layout="vd"``, ``[V_local, D]``.
      vocab_axis: the mesh axis (or axes) the vocabulary is split over.
      bias_shard: optional ``[V_local]`` slice of the bias (a ``-inf`` entry excludes a class).
      vocab_size: the true vocabulary size when the weight was padded to a multiple of the axis
        size (padded classes are excluded).
      temperature, logit_softcap, with_entropy, ignore_index, mask, accum_dtype: as in
        :func:`vocab_parallel_log_probs`.
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
    extras = row_entropy if check_flag(with_entropy, "with_entropy") else None
    head = (hidden, labels, weight_shard, bias_shard, None, mask, weight_layout)
    ops, lead = cross_entropy_ops(*head, SHARD_HEAD)
    name = "vocab_parallel_linear_log_probs"
    axes = shard_axes(name, ops, weight_layout, vocab_axis, vocab_size, None)
    options = log_probs_options(temperature, logit_softcap, ignore_index, with_entropy)
    engine = EngineOptions(
        "none", weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    rows, entropy = run("token_log_probs", ops, lead, options, engine, axes, extras)
    return log_probs_outputs(rows, entropy, with_entropy)


@overload
def vocab_parallel_log_probs_on_mesh(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: Literal[False] = False,
    ignore_index: int | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array: ...
@overload
def vocab_parallel_log_probs_on_mesh(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: Literal[True],
    ignore_index: int | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> tuple[jax.Array, jax.Array]: ...
def vocab_parallel_log_probs_on_mesh(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: bool = False,
    ignore_index: int | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """vocab_parallel_log_probs on whole [..., V] logits and a Mesh.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of the vocabulary axis size (the padded classes are masked),
    and builds the ``shard_map`` once per mesh, shapes and options: a new ``temperature``
    compiles nothing.

    Args:
      logits: ``[..., V]`` float logits.
      labels: ``[...]`` integer token ids.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      where, mask, temperature, logit_softcap, with_entropy, ignore_index, accum_dtype: as in
        :func:`vocab_parallel_log_probs`.

    Returns:
      ``log_probs`` ``[...]``, or ``(log_probs, entropy)`` with ``with_entropy=True``.

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
    extras = row_entropy if check_flag(with_entropy, "with_entropy") else None
    ops, lead = logits_label_ops(logits, labels, where, mask, None, MESH_LOGITS)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_log_probs_on_mesh")
    options = log_probs_options(temperature, logit_softcap, ignore_index, with_entropy)
    engine = EngineOptions("none", accum_dtype=accum_dtype)
    rows, entropy = run_on_mesh("token_log_probs", ops, lead, options, engine, place, extras)
    return log_probs_outputs(rows, entropy, with_entropy)


@overload
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
    weight_layout: WeightLayout = "dv",
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: Literal[False] = False,
    ignore_index: int | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array: ...
@overload
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
    weight_layout: WeightLayout = "dv",
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: Literal[True],
    ignore_index: int | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> tuple[jax.Array, jax.Array]: ...
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
    weight_layout: WeightLayout = "dv",
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: bool = False,
    ignore_index: int | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """vocab_parallel_linear_log_probs on a whole head weight and a Mesh.

    Splits the weight (and bias) over ``vocab_axis`` along its vocabulary dimension, padding
    ``V`` to a multiple of its size (padded classes are masked), the tokens (and ``mask``) over
    ``data_axis`` (optional), and builds the ``shard_map`` once per mesh, shapes and options.
    It takes every option of :func:`infoloss_jax.linear_log_probs`, with the same defaults.

    Args:
      hidden: ``[..., D]`` hidden states.
      labels: ``[...]`` integer token ids.
      weight: the whole head weight, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      bias: optional ``[V]`` bias.
      mask, weight_layout, temperature, logit_softcap, with_entropy, ignore_index: as in
        :func:`vocab_parallel_linear_log_probs`.
      token_block_size, vocab_block_size, backward, accum_dtype: as there.

    Returns:
      ``log_probs`` ``[...]``, or ``(log_probs, entropy)`` with ``with_entropy=True``.

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
    extras = row_entropy if check_flag(with_entropy, "with_entropy") else None
    head = (hidden, labels, weight, bias, None, mask, weight_layout)
    ops, lead = cross_entropy_ops(*head, MESH_HEAD)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_linear_log_probs_on_mesh")
    options = log_probs_options(temperature, logit_softcap, ignore_index, with_entropy)
    engine = EngineOptions(
        "none", weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    rows, entropy = run_on_mesh("token_log_probs", ops, lead, options, engine, place, extras)
    return log_probs_outputs(rows, entropy, with_entropy)


# ------------------------------------------------------------------------------ distillation
def vocab_parallel_forward_kl(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Forward KL(teacher || student) with the vocabulary split over a mesh axis.

    .. math::
        \mathrm{KL}(P \,\|\, Q) = \sum_k p_k (\log p_k - \log q_k), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's: equals
    :func:`infoloss_jax.forward_kl` on the gathered logits. Call it **inside**
    ``jax.shard_map``: ``logits_shard`` (student) and ``target_logits_shard`` (teacher) are this
    device's ``[..., V_local]`` slices of logits split along ``vocab_axis``. The collectives over
    ``vocab_axis`` are one ``pmax`` and one ``psum``; no device holds a full vocabulary row.
    Gradients flow to both inputs (wrap the teacher in ``jax.lax.stop_gradient`` to freeze it);
    a class ``-inf`` in both gives 0, and the value is ``+inf`` where the math says so, never
    NaN. A masked token contributes nothing, to the value or to the gradients.

    Args:
      logits_shard: student logits slice ``[..., V_local]``.
      target_logits_shard: teacher logits slice, the same shape.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      where: optional boolean class mask broadcastable to the slices (False excludes a class).
      mask: optional boolean per-token mask ``[...]`` (True = the token counts).
      vocab_size: the true vocabulary size when the slices were padded to a multiple of the axis
        size; ``V_local`` must equal ``ceil(vocab_size / d)``.
      reduction: ``"none"`` (default, per token), ``"sum"``, ``"mean"`` or ``"batchmean"``.
      data_axis: mesh axis the tokens are split over; the reductions are exact across it.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      Per-token divergences ``[...]`` in nats (float32 for half-precision inputs) or a scalar.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_forward_kl
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> kl = jax.shard_map(
      ...     lambda s, t: vocab_parallel_forward_kl(s, t, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(kl(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.043053

    References:
      Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.
    """
    ops, lead = logits_pair_ops(logits_shard, target_logits_shard, where, mask, SHARD_LOGITS)
    axes = shard_axes("vocab_parallel_forward_kl", ops, "dv", vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    return run("forward_kl", ops, lead, dict(temperature=temperature), engine, axes)[0]


def vocab_parallel_reverse_kl(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Reverse KL(student || teacher) with the vocabulary split over a mesh axis.

    .. math::
        \mathrm{KL}(Q \,\|\, P) = \sum_k q_k (\log q_k - \log p_k), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's: equals
    :func:`infoloss_jax.reverse_kl` on the gathered logits (mode-seeking, as in MiniLLM). Call
    it **inside** ``jax.shard_map``: ``logits_shard`` (student) and ``target_logits_shard``
    (teacher) are this device's ``[..., V_local]`` slices of logits split along ``vocab_axis``.
    The collectives over ``vocab_axis`` are one ``pmax`` and one ``psum``; no device holds a
    full vocabulary row. Gradients flow to both inputs (wrap the teacher in
    ``jax.lax.stop_gradient`` to freeze it); a class ``-inf`` in both gives 0, and the value is
    ``+inf`` where the math says so, never NaN. A masked token contributes nothing, to the
    value or to the gradients.

    Args:
      logits_shard: student logits slice ``[..., V_local]``.
      target_logits_shard: teacher logits slice, the same shape.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      where: optional boolean class mask broadcastable to the slices (False excludes a class).
      mask: optional boolean per-token mask ``[...]`` (True = the token counts).
      vocab_size: the true vocabulary size when the slices were padded to a multiple of the axis
        size; ``V_local`` must equal ``ceil(vocab_size / d)``.
      reduction: ``"none"`` (default, per token), ``"sum"``, ``"mean"`` or ``"batchmean"``.
      data_axis: mesh axis the tokens are split over; the reductions are exact across it.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      Per-token divergences ``[...]`` in nats (float32 for half-precision inputs) or a scalar.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_reverse_kl
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> kl = jax.shard_map(
      ...     lambda s, t: vocab_parallel_reverse_kl(s, t, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(kl(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.044341

    References:
      Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", 2024.
    """
    ops, lead = logits_pair_ops(logits_shard, target_logits_shard, where, mask, SHARD_LOGITS)
    axes = shard_axes("vocab_parallel_reverse_kl", ops, "dv", vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    return run("reverse_kl", ops, lead, dict(temperature=temperature), engine, axes)[0]


def vocab_parallel_jensen_shannon(
    logits_shard: ArrayLike,
    target_logits_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    beta: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    reduction: Reduction = "none",
    data_axis: AxisName | None = None,
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Generalized Jensen-Shannon divergence with the vocabulary split over a mesh axis.

    .. math::
        \mathrm{JSD}_\beta = \beta\, \mathrm{KL}(P \,\|\, M) + (1-\beta)\, \mathrm{KL}(Q \,\|\, M),
        \quad M = \beta P + (1-\beta) Q

    with :math:`P = \mathrm{softmax}(t/T)` the teacher (target) and
    :math:`Q = \mathrm{softmax}(s/T)` the student: equals :func:`infoloss_jax.jensen_shannon`
    on the gathered logits. ``beta=0`` gives the forward KL(teacher || student) and ``beta=1``
    the reverse KL(student || teacher) (the TRL / Liger-Kernel convention). Call it **inside**
    ``jax.shard_map``: ``logits_shard`` (student) and ``target_logits_shard`` (teacher) are this
    device's ``[..., V_local]`` slices of logits split along ``vocab_axis``. The collectives
    over ``vocab_axis`` are two ``pmax`` and two ``psum``; no device holds a full vocabulary
    row. Gradients flow to both inputs (wrap the teacher in ``jax.lax.stop_gradient`` to freeze
    it); a class ``-inf`` in both gives 0. A masked token contributes nothing, to the value or
    to the gradients.

    Args:
      logits_shard: student logits slice ``[..., V_local]``.
      target_logits_shard: teacher logits slice, the same shape.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      beta: weight of the teacher in the mixture, in [0, 1]; may be traced.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      where: optional boolean class mask broadcastable to the slices (False excludes a class).
      mask: optional boolean per-token mask ``[...]`` (True = the token counts).
      vocab_size: the true vocabulary size when the slices were padded to a multiple of the axis
        size; ``V_local`` must equal ``ceil(vocab_size / d)``.
      reduction: ``"none"`` (default, per token), ``"sum"``, ``"mean"`` or ``"batchmean"``.
      data_axis: mesh axis the tokens are split over; the reductions are exact across it.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      Per-token divergences ``[...]`` in nats (float32 for half-precision inputs) or a scalar.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_jensen_shannon
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> jsd = jax.shard_map(
      ...     lambda s, t: vocab_parallel_jensen_shannon(s, t, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
      >>> print(round(float(jsd(jnp.array([[0.5, 0.5]]), jnp.array([[0.2, 0.8]]))[0]), 6))
      0.010881

    References:
      Agarwal et al., "On-Policy Distillation of Language Models: Learning from
      Self-Generated Mistakes" (GKD), 2024.
    """
    ops, lead = logits_pair_ops(logits_shard, target_logits_shard, where, mask, SHARD_LOGITS)
    name = "vocab_parallel_jensen_shannon"
    axes = shard_axes(name, ops, "dv", vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    coefficients = dict(beta=beta, temperature=temperature)
    return run("jensen_shannon", ops, lead, coefficients, engine, axes)[0]


def vocab_parallel_linear_forward_kl(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    vocab_size: int | None = None,
    reduction: Reduction = "mean",
    data_axis: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Forward KL(teacher || student) of two LM heads, the vocabulary split over a mesh axis.

    :func:`infoloss_jax.linear_forward_kl` with its statistics all-reduced across
    ``vocab_axis``, :math:`\mathrm{KL}(P \| Q)` with :math:`P = \mathrm{softmax}(t / T)` the
    teacher and :math:`Q = \mathrm{softmax}(s / T)` the student. Call it **inside**
    ``jax.shard_map``. The student logits are ``hidden @ weight_shard`` and the teacher logits
    ``target_hidden @ target_weight_shard``, both slices of heads split along ``vocab_axis``
    (the teacher's hidden size may differ). Neither the ``[N, V]`` nor the local
    ``[N, V_local]`` logits are ever stored. The teacher gets no gradient; a masked token
    contributes nothing; forward mode (``jax.jvp``) is unsupported.

    Args:
      hidden: student hidden states ``[..., D]``, identical along ``vocab_axis``.
      weight_shard: student head slice ``[D, V_local]`` (``[V_local, D]`` for ``"vd"``).
      target_hidden: teacher hidden states ``[..., D_teacher]``.
      target_weight_shard: teacher head slice in the same layout.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      mask: optional boolean per-token mask ``[...]``: False drops the token (0, not counted).
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads.
      vocab_size: the true vocabulary size when the heads were padded to a multiple of the axis.
      reduction: ``"mean"`` (default, over kept tokens), ``"sum"``, ``"batchmean"`` or ``"none"``.
      data_axis: mesh axis the tokens are split over; the mean is exact across it.
      token_block_size, vocab_block_size: block sizes (positive ints) or None (automatic).
      backward: ``"auto"`` (default), ``"rows"``, ``"one_pass"`` or ``"two_pass"``, as in
        :func:`vocab_parallel_linear_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The reduced divergence in nats, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_linear_forward_kl as fkl
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, w, th, tw: fkl(h, w, th, tw, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P(None, "vocab")),
      ...     out_specs=P())
      >>> h = jnp.array([[1.0, 0.0]])
      >>> w = jnp.array([[0.5, 0.5], [0.0, 0.0]])
      >>> teacher_w = jnp.array([[0.2, 0.8], [0.0, 0.0]])
      >>> print(round(float(loss(h, w, h, teacher_w)), 6))
      0.043053

    References:
      Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.
    """
    heads = (hidden, weight_shard, target_hidden, target_weight_shard)
    ops, lead = distillation_ops(heads, mask, weight_layout, SHARD_DISTILL)
    name = "vocab_parallel_linear_forward_kl"
    axes = shard_axes(name, ops, weight_layout, vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    return run("forward_kl", ops, lead, dict(temperature=temperature), engine, axes)[0]


def vocab_parallel_linear_reverse_kl(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    vocab_size: int | None = None,
    reduction: Reduction = "mean",
    data_axis: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Reverse KL(student || teacher) of two LM heads, the vocabulary split over a mesh axis.

    :func:`infoloss_jax.linear_reverse_kl` with its statistics all-reduced across
    ``vocab_axis``, :math:`\mathrm{KL}(Q \| P)` with :math:`P = \mathrm{softmax}(t / T)` the
    teacher and :math:`Q = \mathrm{softmax}(s / T)` the student. Call it **inside**
    ``jax.shard_map``. The student logits are ``hidden @ weight_shard`` and the teacher logits
    ``target_hidden @ target_weight_shard``, both slices of heads split along ``vocab_axis``
    (the teacher's hidden size may differ). Neither the ``[N, V]`` nor the local
    ``[N, V_local]`` logits are ever stored. The teacher gets no gradient; a masked token
    contributes nothing; forward mode (``jax.jvp``) is unsupported.

    Args:
      hidden: student hidden states ``[..., D]``, identical along ``vocab_axis``.
      weight_shard: student head slice ``[D, V_local]`` (``[V_local, D]`` for ``"vd"``).
      target_hidden: teacher hidden states ``[..., D_teacher]``.
      target_weight_shard: teacher head slice in the same layout.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      mask: optional boolean per-token mask ``[...]``: False drops the token (0, not counted).
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads.
      vocab_size: the true vocabulary size when the heads were padded to a multiple of the axis.
      reduction: ``"mean"`` (default, over kept tokens), ``"sum"``, ``"batchmean"`` or ``"none"``.
      data_axis: mesh axis the tokens are split over; the mean is exact across it.
      token_block_size, vocab_block_size: block sizes (positive ints) or None (automatic).
      backward: ``"auto"`` (default), ``"rows"``, ``"one_pass"`` or ``"two_pass"``, as in
        :func:`vocab_parallel_linear_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The reduced divergence in nats, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_linear_reverse_kl as rkl
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, w, th, tw: rkl(h, w, th, tw, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P(None, "vocab")),
      ...     out_specs=P())
      >>> h = jnp.array([[1.0, 0.0]])
      >>> w = jnp.array([[0.5, 0.5], [0.0, 0.0]])
      >>> teacher_w = jnp.array([[0.2, 0.8], [0.0, 0.0]])
      >>> print(round(float(loss(h, w, h, teacher_w)), 6))
      0.044341

    References:
      Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", 2024.
    """
    heads = (hidden, weight_shard, target_hidden, target_weight_shard)
    ops, lead = distillation_ops(heads, mask, weight_layout, SHARD_DISTILL)
    name = "vocab_parallel_linear_reverse_kl"
    axes = shard_axes(name, ops, weight_layout, vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    return run("reverse_kl", ops, lead, dict(temperature=temperature), engine, axes)[0]


def vocab_parallel_linear_jensen_shannon(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    target_hidden: ArrayLike,
    target_weight_shard: ArrayLike,
    *,
    vocab_axis: AxisName,
    beta: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    vocab_size: int | None = None,
    reduction: Reduction = "mean",
    data_axis: AxisName | None = None,
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Generalized Jensen-Shannon divergence of two LM heads, the vocabulary split over an axis.

    :func:`infoloss_jax.linear_jensen_shannon` with its statistics all-reduced across
    ``vocab_axis``: :math:`\beta\, \mathrm{KL}(P \| M) + (1-\beta)\, \mathrm{KL}(Q \| M)`,
    :math:`M = \beta P + (1-\beta) Q`, with :math:`P` the teacher and :math:`Q` the student
    (``beta=0``: forward KL, ``beta=1``: reverse KL). Call it **inside** ``jax.shard_map``. The
    student logits are ``hidden @ weight_shard`` and the teacher logits ``target_hidden @
    target_weight_shard``, both slices of heads split along ``vocab_axis`` (the teacher's
    hidden size may differ). Neither the ``[N, V]`` nor the local ``[N, V_local]`` logits are
    ever stored. The teacher gets no gradient; a masked token contributes nothing; forward
    mode (``jax.jvp``) is unsupported.

    Args:
      hidden: student hidden states ``[..., D]``, identical along ``vocab_axis``.
      weight_shard: student head slice ``[D, V_local]`` (``[V_local, D]`` for ``"vd"``).
      target_hidden: teacher hidden states ``[..., D_teacher]``.
      target_weight_shard: teacher head slice in the same layout.
      vocab_axis: mesh axis (or axes) the vocabulary is split over.
      beta: weight of the teacher in the mixture, in [0, 1]; may be traced.
      temperature: both logits are divided by it first (no ``T**2`` factor; may be traced).
      mask: optional boolean per-token mask ``[...]``: False drops the token (0, not counted).
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads.
      vocab_size: the true vocabulary size when the heads were padded to a multiple of the axis.
      reduction: ``"mean"`` (default, over kept tokens), ``"sum"``, ``"batchmean"`` or ``"none"``.
      data_axis: mesh axis the tokens are split over; the mean is exact across it.
      token_block_size, vocab_block_size: block sizes (positive ints) or None (automatic).
      backward: ``"auto"`` (default), ``"rows"``, ``"one_pass"`` or ``"two_pass"``, as in
        :func:`vocab_parallel_linear_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The reduced divergence in nats, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from infoloss_jax.sharded import vocab_parallel_linear_jensen_shannon as jsd
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loss = jax.shard_map(
      ...     lambda h, w, th, tw: jsd(h, w, th, tw, vocab_axis="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P(None, "vocab")),
      ...     out_specs=P())
      >>> h = jnp.array([[1.0, 0.0]])
      >>> w = jnp.array([[0.5, 0.5], [0.0, 0.0]])
      >>> teacher_w = jnp.array([[0.2, 0.8], [0.0, 0.0]])
      >>> print(round(float(loss(h, w, h, teacher_w)), 6))
      0.010881

    References:
      Agarwal et al., "On-Policy Distillation of Language Models: Learning from
      Self-Generated Mistakes" (GKD), 2024.
    """
    heads = (hidden, weight_shard, target_hidden, target_weight_shard)
    ops, lead = distillation_ops(heads, mask, weight_layout, SHARD_DISTILL)
    name = "vocab_parallel_linear_jensen_shannon"
    axes = shard_axes(name, ops, weight_layout, vocab_axis, vocab_size, data_axis)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    coefficients = dict(beta=beta, temperature=temperature)
    return run("jensen_shannon", ops, lead, coefficients, engine, axes)[0]


# ------------------------------------------------------------------------------ distillation, mesh
def vocab_parallel_forward_kl_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_forward_kl, the forward KL(teacher || student), on whole logits.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of its size (the padded classes are masked), and builds the
    ``shard_map`` once per mesh, shapes and options: a new ``temperature`` compiles nothing.
    The defaults are those of :func:`vocab_parallel_forward_kl`, ``reduction`` included.

    Args:
      logits: ``[..., V]`` student logits.
      target_logits: ``[..., V]`` teacher (target) logits.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      temperature, where, mask, reduction, accum_dtype: as in
        :func:`vocab_parallel_forward_kl`.

    Returns:
      Per-token divergences ``[...]`` in nats, or their reduction.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_forward_kl_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> teacher = jnp.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_forward_kl_on_mesh(student, teacher, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss[0] > loss[1]))
      (2,) True
    """
    ops, lead = logits_pair_ops(logits, target_logits, where, mask, MESH_LOGITS)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_forward_kl_on_mesh")
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    return run_on_mesh("forward_kl", ops, lead, dict(temperature=temperature), engine, place)[0]


def vocab_parallel_reverse_kl_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_reverse_kl, the reverse KL(student || teacher), on whole logits.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of its size (the padded classes are masked), and builds the
    ``shard_map`` once per mesh, shapes and options: a new ``temperature`` compiles nothing.
    The defaults are those of :func:`vocab_parallel_reverse_kl`, ``reduction`` included.

    Args:
      logits: ``[..., V]`` student logits.
      target_logits: ``[..., V]`` teacher (target) logits.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      temperature, where, mask, reduction, accum_dtype: as in
        :func:`vocab_parallel_reverse_kl`.

    Returns:
      Per-token divergences ``[...]`` in nats, or their reduction.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_reverse_kl_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> teacher = jnp.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_reverse_kl_on_mesh(student, teacher, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss[0] > loss[1]))
      (2,) True
    """
    ops, lead = logits_pair_ops(logits, target_logits, where, mask, MESH_LOGITS)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_reverse_kl_on_mesh")
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    return run_on_mesh("reverse_kl", ops, lead, dict(temperature=temperature), engine, place)[0]


def vocab_parallel_jensen_shannon_on_mesh(
    logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    beta: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    reduction: Reduction = "none",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_jensen_shannon, the generalized Jensen-Shannon divergence, on whole logits.

    Splits the tokens over ``data_axis`` (optional) and the vocabulary over ``vocab_axis``,
    padding ``V`` up to a multiple of its size (the padded classes are masked), and builds the
    ``shard_map`` once per mesh, shapes and options: a new ``beta`` or ``temperature`` in
    (0, 1) compiles nothing. The defaults are those of :func:`vocab_parallel_jensen_shannon`,
    ``reduction`` included.

    Args:
      logits: ``[..., V]`` student logits.
      target_logits: ``[..., V]`` teacher (target) logits.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      beta, temperature, where, mask, reduction, accum_dtype: as in
        :func:`vocab_parallel_jensen_shannon`.

    Returns:
      Per-token divergences ``[...]`` in nats, or their reduction.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_jensen_shannon_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> student = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
      >>> teacher = jnp.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
      >>> loss = vocab_parallel_jensen_shannon_on_mesh(
      ...     student, teacher, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss[0] > loss[1]))
      (2,) True
    """
    ops, lead = logits_pair_ops(logits, target_logits, where, mask, MESH_LOGITS)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_jensen_shannon_on_mesh")
    engine = EngineOptions(reduction, accum_dtype=accum_dtype)
    coefficients = dict(beta=beta, temperature=temperature)
    return run_on_mesh("jensen_shannon", ops, lead, coefficients, engine, place)[0]


def vocab_parallel_linear_forward_kl_on_mesh(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_linear_forward_kl, the forward KL(teacher || student), on whole heads.

    Splits both heads along their vocabulary dimension over ``vocab_axis``, padding ``V`` to a
    multiple of its size (padded classes are masked), the tokens over ``data_axis``
    (optional), and builds the ``shard_map`` once per mesh, shapes and options: a new
    ``temperature`` compiles nothing. It takes every option of
    :func:`infoloss_jax.linear_forward_kl`, with the same defaults.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: the student head, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states.
      target_weight: the teacher head, in the same layout.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      temperature, mask, weight_layout, reduction: as in
        :func:`vocab_parallel_linear_forward_kl`.
      token_block_size, vocab_block_size, backward, accum_dtype: as there.

    Returns:
      The reduced divergence in nats, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_forward_kl_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
      >>> loss = vocab_parallel_linear_forward_kl_on_mesh(
      ...     hidden, weight, hidden, -weight, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss > 0))
      () True
    """
    heads = (hidden, weight, target_hidden, target_weight)
    ops, lead = distillation_ops(heads, mask, weight_layout, MESH_DISTILL)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_linear_forward_kl_on_mesh")
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    return run_on_mesh("forward_kl", ops, lead, dict(temperature=temperature), engine, place)[0]


def vocab_parallel_linear_reverse_kl_on_mesh(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_linear_reverse_kl, the reverse KL(student || teacher), on whole heads.

    Splits both heads along their vocabulary dimension over ``vocab_axis``, padding ``V`` to a
    multiple of its size (padded classes are masked), the tokens over ``data_axis``
    (optional), and builds the ``shard_map`` once per mesh, shapes and options: a new
    ``temperature`` compiles nothing. It takes every option of
    :func:`infoloss_jax.linear_reverse_kl`, with the same defaults.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: the student head, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states.
      target_weight: the teacher head, in the same layout.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      temperature, mask, weight_layout, reduction: as in
        :func:`vocab_parallel_linear_reverse_kl`.
      token_block_size, vocab_block_size, backward, accum_dtype: as there.

    Returns:
      The reduced divergence in nats, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_reverse_kl_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
      >>> loss = vocab_parallel_linear_reverse_kl_on_mesh(
      ...     hidden, weight, hidden, -weight, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss > 0))
      () True
    """
    heads = (hidden, weight, target_hidden, target_weight)
    ops, lead = distillation_ops(heads, mask, weight_layout, MESH_DISTILL)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_linear_reverse_kl_on_mesh")
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    return run_on_mesh("reverse_kl", ops, lead, dict(temperature=temperature), engine, place)[0]


def vocab_parallel_linear_jensen_shannon_on_mesh(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    mesh: Mesh,
    vocab_axis: AxisName,
    data_axis: AxisName | None = None,
    beta: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    weight_layout: WeightLayout = "dv",
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """vocab_parallel_linear_jensen_shannon, the generalized JSD, on whole heads.

    Splits both heads along their vocabulary dimension over ``vocab_axis``, padding ``V`` to a
    multiple of its size (padded classes are masked), the tokens over ``data_axis``
    (optional), and builds the ``shard_map`` once per mesh, shapes and options: a new ``beta``
    in (0, 1) or ``temperature`` compiles nothing. It takes every option of
    :func:`infoloss_jax.linear_jensen_shannon`, with the same defaults.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: the student head, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states.
      target_weight: the teacher head, in the same layout.
      mesh: the :class:`jax.sharding.Mesh` to run on.
      vocab_axis: its axis (or axes) the vocabulary is split over.
      data_axis: its axis (or axes) the tokens are split over, or None (replicated tokens).
      beta, temperature, mask, weight_layout, reduction: as in
        :func:`vocab_parallel_linear_jensen_shannon`.
      token_block_size, vocab_block_size, backward, accum_dtype: as there.

    Returns:
      The reduced divergence in nats, or per-token values ``[...]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from infoloss_jax.sharded import vocab_parallel_linear_jensen_shannon_on_mesh
      >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> hidden = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> weight = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
      >>> loss = vocab_parallel_linear_jensen_shannon_on_mesh(
      ...     hidden, weight, hidden, -weight, mesh=mesh, vocab_axis="vocab")
      >>> print(loss.shape, bool(loss > 0))
      () True
    """
    heads = (hidden, weight, target_hidden, target_weight)
    ops, lead = distillation_ops(heads, mask, weight_layout, MESH_DISTILL)
    place = OnMesh(mesh, vocab_axis, data_axis, "vocab_parallel_linear_jensen_shannon_on_mesh")
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    coefficients = dict(beta=beta, temperature=temperature)
    return run_on_mesh("jensen_shannon", ops, lead, coefficients, engine, place)[0]
