"""Fused linear losses: cross-entropy and distillation on ``hidden @ weight`` without the logits.

An LLM's loss head computes ``logits = hidden @ weight`` of shape ``[N tokens, V vocab]``. With
``V`` = 128k-256k those logits (and their softmax and gradient) dominate training memory. These
functions run the blockwise engine (:mod:`infoloss_jax.engine._blockwise`): tiles of tokens and
of the vocabulary, an online logsumexp, and a ``jax.custom_vjp`` whose backward pass recomputes
each tile instead of storing it. The vocabulary-parallel losses of :mod:`infoloss_jax.sharded`
are the same engine with a mesh axis. Pure JAX: the same code runs under ``jit`` on CPU, GPU
and TPU.

Every public head here, and in :mod:`._sharded`, is written out: it validates its arrays into
:class:`~infoloss_jax.engine._blockwise.Operands`, names its loss (the engine's kind and the
options :func:`~infoloss_jax.engine._loss_spec.make_spec` takes) and its
:class:`EngineOptions`, and calls :func:`run`. Adding a divergence to the heads means writing
its public functions, nothing else here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, cast, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer
from jax.typing import DTypeLike

from ..base._typing import ArrayLike, Backward, Reduction, WeightLayout
from ..base._validation import (
    as_float_array,
    as_integer_array,
    check_reduction,
    describe,
    equals_index,
)
from ..engine import _blockwise
from ..engine._blockwise import AxisName, Operands, Out, check_backward, check_block, reraise_jvp
from ..engine._loss_spec import Coefficients, LossSpec, check_layout, make_spec, poison


class LinearCrossEntropyAux(NamedTuple):
    """Per-token extras of linear_softmax_cross_entropy, each of the shape of the labels.

    Attributes:
      logsumexp: log-partition of the (soft-capped) logits (0 on ignored and masked tokens,
        whose hidden states are never read).
      z_loss: the z-loss term ``z_loss * logsumexp**2`` (0 on ignored and masked tokens).
      correct: whether the argmax of the logits equals the label (False on ignored and masked
        tokens).
    """

    logsumexp: jax.Array
    z_loss: jax.Array
    correct: jax.Array


class EngineOptions(NamedTuple):
    """How the engine runs a head: the options every fused and sharded head passes through."""

    reduction: str = "mean"
    weight_layout: str = "dv"
    token_block_size: int | None = None
    vocab_block_size: int | None = None
    backward: str = "auto"
    accum_dtype: DTypeLike = jnp.float32


class Axes(NamedTuple):
    """The mesh axes of a vocabulary-parallel loss, inside ``shard_map``."""

    vocab: AxisName  # the axis the vocabulary is split over
    size: int  # its number of devices
    vocab_size: int | None  # the true (unpadded) global vocabulary; None: size * local slice
    data: AxisName | None  # the axis the tokens are split over (exact reductions across it)


# What a head adds to its value from the engine's rows: ``extras(out, coefs, labels, lead)``.
Extras = Callable[[Out, Coefficients, Any, tuple], Any]

# The argument names the errors of the single-device heads use.
HEAD_NAMES = ("hidden", "weight", "bias", "class_weights")
DISTILL_NAMES = ("hidden", "weight", "target_hidden", "target_weight")


# ------------------------------------------------------------------------------ validation
def check_flag(value, name: str) -> bool:
    """A Python bool option (``return_aux``, ``with_entropy``): 1 or an array is refused."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a Python bool; got {value!r}.")
    return value


def head_sizes(hidden, weight, layout, hidden_name, weight_name):
    """(D, V) of a head, checking that ``hidden`` [..., D] and ``weight`` agree on D."""
    layout = check_layout(layout)
    shape = "[D, V]" if layout == "dv" else "[V, D]"
    if weight.ndim != 2:
        raise ValueError(
            f"`{weight_name}` must be a {shape} matrix (weight_layout={layout!r}); got "
            f"{describe(weight)}."
        )
    d, v = weight.shape if layout == "dv" else weight.shape[::-1]
    if hidden.ndim < 1 or hidden.shape[-1] != d:
        hint = ""
        if hidden.ndim >= 1 and hidden.shape[-1] == v:  # the other layout would fit
            other, other_shape = ("vd", "[V, D]") if layout == "dv" else ("dv", "[D, V]")
            table = " (an embedding table, a PyTorch Linear weight)" if other == "vd" else ""
            hint = (
                f" `{weight_name}` looks like a {other_shape} matrix{table}: pass "
                f'weight_layout="{other}".'
            )
        raise ValueError(
            f"The last dimension of `{hidden_name}` must equal the hidden size D of "
            f"`{weight_name}` {shape} (weight_layout={layout!r}); got `{hidden_name}` "
            f"{describe(hidden)} and `{weight_name}` {describe(weight)}.{hint}"
        )
    if v == 0:
        raise ValueError(
            f"`{weight_name}` must have at least one class (V >= 1, weight_layout={layout!r}); "
            f"got {describe(weight)}."
        )
    return d, v


def check_labels(labels, x, x_name):
    """Integer ``labels`` shaped as ``x`` (hidden states or logits) without its last axis."""
    labels = as_integer_array(labels, "labels")
    if labels.shape != x.shape[:-1]:
        raise ValueError(
            f"`labels` must have the shape of `{x_name}` without its last axis, "
            f"{list(x.shape[:-1])}; got `{x_name}` {describe(x)} and `labels` {describe(labels)}."
        )
    return labels


def class_vector(x, name, v):
    """A ``[V]`` per-class vector (bias, class weights) or None."""
    if x is None:
        return None
    x = as_float_array(x, name)
    if x.shape != (v,):
        raise ValueError(
            f"`{name}` must have shape [{v}] (one entry per class); got {describe(x)}."
        )
    return x


def check_class_weights(class_weights, name="class_weights"):
    """Concrete negative weights raise; traced ones cannot be checked here (see ``checked``)."""
    if class_weights is not None and not isinstance(class_weights, Tracer):
        if bool(np.any(np.asarray(class_weights) < 0)):
            raise ValueError(f"`{name}` must be non-negative; got a negative entry.")
    return None if class_weights is None else lax.stop_gradient(class_weights)


def token_mask(mask, lead):
    """A boolean per-token mask of shape ``lead`` flattened, or None."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"`mask` must be a boolean per-token mask (True = the token counts); got "
            f"{describe(mask)}. Convert an integer attention mask with `.astype(bool)`."
        )
    if mask.shape != tuple(lead):
        raise ValueError(
            f"`mask` must be a boolean per-token mask of shape {list(lead)}; got {describe(mask)}."
        )
    return mask.reshape(-1)


def accumulation(accum_dtype, *arrays):
    return jnp.dtype(jnp.result_type(jnp.dtype(accum_dtype), *(a.dtype for a in arrays)))


# ------------------------------------------------------------------------------ operands
def cross_entropy_ops(hidden, labels, weight, bias, class_weights, mask, layout, names=HEAD_NAMES):
    """The validated :class:`Operands` of a linear head with integer labels, and the token
    shape; shared by the fused and the sharded losses (``names`` name the arguments)."""
    h_name, w_name, b_name, c_name = names
    hidden = as_float_array(hidden, h_name)
    weight = as_float_array(weight, w_name)
    d, v = head_sizes(hidden, weight, layout, h_name, w_name)
    labels = check_labels(labels, hidden, h_name)
    bias = class_vector(bias, b_name, v)
    class_weights = check_class_weights(class_vector(class_weights, c_name, v), c_name)
    x, y = hidden.reshape(labels.size, d), labels.reshape(-1)
    row_mask = token_mask(mask, labels.shape)
    return Operands(x, weight, bias, None, None, y, class_weights, None, row_mask), labels.shape


def distillation_ops(heads, mask, layout, names):
    """The validated Operands of a student and a (frozen) teacher head ``(hidden, weight,
    target_hidden, target_weight)`` over one vocabulary, and the token shape; shared by the
    fused losses and the sharded ones."""
    h, w, th, tw = (as_float_array(x, name) for x, name in zip(heads, names, strict=True))
    h_name, w_name, th_name, tw_name = names
    d, v = head_sizes(h, w, layout, h_name, w_name)
    dt, vt = head_sizes(th, tw, layout, th_name, tw_name)
    if vt != v:
        raise ValueError(
            f"The teacher and the student must share one vocabulary: `{tw_name}` "
            f"{describe(tw)} has {vt} classes, `{w_name}` {describe(w)} has {v}."
        )
    lead = h.shape[:-1]
    if th.shape[:-1] != lead:
        raise ValueError(
            f"`{th_name}` must have the leading (token) shape of `{h_name}`; got "
            f"`{th_name}` {describe(th)} and `{h_name}` {describe(h)}."
        )
    n = int(np.prod(lead, dtype=np.int64))
    teacher = lax.stop_gradient((th.reshape(n, dt), tw))
    ops = Operands(h.reshape(n, d), w, None, *teacher, None, None, None, token_mask(mask, lead))
    return ops, lead


# ------------------------------------------------------------------------------ runner
def int32_labels(labels, spec):
    """``[N]`` int32 labels: a label beyond int32 is out of range (NaN), never wrapped around."""
    if labels.dtype == jnp.int32:
        return labels
    bad = -1 if spec.ignore_index != -1 else spec.vocab_size
    fit = jnp.where((labels >= 0) & (labels < spec.vocab_size), labels, bad).astype(jnp.int32)
    if spec.ignore_index is None:
        return fit
    return jnp.where(labels == spec.ignore_index, spec.ignore_index, fit)


def local_vocab(ops: Operands, layout: str) -> int:
    """The number of classes the operands hold (a device's slice inside shard_map)."""
    if ops.w is None:
        return ops.x.shape[1]
    return ops.w.shape[1 if layout == "dv" else 0]


def prepare(kind, ops: Operands, options: Mapping[str, Any], engine: EngineOptions, axes=None):
    """Validates the engine options and the loss's own ``options`` (the keywords of
    :func:`make_spec`: its coefficients, soft cap, ignored label, entropy); returns
    ``(spec, coefficients, ok)``. Concrete coefficients are checked here, before any tracing."""
    check_reduction(engine.reduction)
    check_backward(engine.backward)
    check_block(engine.token_block_size, "token_block_size")
    check_block(engine.vocab_block_size, "vocab_block_size")
    heads = (x for x in (ops.x, ops.w, ops.th, ops.tw) if x is not None)
    acc = accumulation(engine.accum_dtype, *heads)
    vocab = local_vocab(ops, check_layout(engine.weight_layout))
    if axes is not None:
        vocab = vocab * axes.size if axes.vocab_size is None else axes.vocab_size
    weighted, layout = ops.class_weights is not None, engine.weight_layout
    return make_spec(kind, vocab, acc, class_weights=weighted, weight_layout=layout, **options)


def drop_rows(ops: Operands, spec: LossSpec) -> Operands:
    """Zeroes the inputs of the rows that count for nothing (``mask`` False, ``ignore_index``)
    before they enter the engine, so that a NaN there reaches no value and no gradient (its
    own gradient is 0 through the ``where``, dW and db get nothing from it)."""
    keep = ops.row_mask
    if spec.ignore_index is not None and ops.labels is not None:
        kept = ~equals_index(ops.labels, spec.ignore_index)
        keep = kept if keep is None else keep & kept
    if keep is None:
        return ops
    x = jnp.where(keep[:, None], ops.x, jnp.zeros((), ops.x.dtype))
    th = None if ops.th is None else jnp.where(keep[:, None], ops.th, jnp.zeros((), ops.th.dtype))
    return ops._replace(x=x, th=th)


def execute(spec, coefs, ops: Operands, lead, engine: EngineOptions, axes=None):
    """Plans the tiles and runs the engine on validated operands; returns the reduced value (or
    the rows for ``"none"``), the engine's :class:`Out` and the int32 labels. Logits
    (``ops.w`` None) are one tile per device."""
    n, d = ops.x.shape
    axis, size = (None, 1) if axes is None else (axes.vocab, axes.size)
    if ops.labels is not None:
        ops = ops._replace(labels=int32_labels(ops.labels, spec))
    v = local_vocab(ops, spec.layout)
    padded = spec.vocab_size != v * size
    ops = drop_rows(ops, spec)
    if ops.w is None:  # logits: one tile per device
        cfg = _blockwise.Config(spec, _blockwise.Blocks(max(n, 1), d), "auto", axis, padded)
        out = _blockwise.blockwise(cfg, ops, coefs)
    else:  # a plan and tiles for each platform the computation may be lowered for
        width = d if ops.th is None else max(d, ops.th.shape[1])
        rows = 1 if ops.th is None else 2
        dtypes = (ops.x.dtype, ops.w.dtype, spec.accum_dtype)
        shape = _blockwise.Shape(n, width, v, rows, *dtypes, engine.reduction != "none")
        cfgs = _blockwise.configure(
            spec,
            shape,
            token_block_size=engine.token_block_size,
            vocab_block_size=engine.vocab_block_size,
            backward=engine.backward,
            axis=axis,
            axis_size=size,
            padded=padded,
        )
        out = _blockwise.call(cfgs, ops, coefs)
    out = cast(Out, out)  # its type is lost in custom_vjp
    data = None if axes is None else axes.data
    return _blockwise.reduce_rows(out, engine.reduction, lead, data), out, ops.labels


def poison_tree(tree, ok) -> Any:
    """:func:`poison` on every floating-point leaf of ``tree``."""
    if ok is None:
        return tree
    floating = lambda x: poison(x, ok) if jnp.issubdtype(x.dtype, jnp.inexact) else x
    return jax.tree.map(floating, tree)


def run(
    kind, ops, lead, options, engine: EngineOptions, axes=None, extras: Extras | None = None
) -> tuple[jax.Array, Any]:
    """Every fused head, and every sharded one inside ``shard_map``, ends here: ``(value,
    extras(...) or None)``, NaN where a traced coefficient is out of range.

    ``kind`` and ``options`` name the loss (:func:`prepare`), ``lead`` is the token shape,
    ``axes`` the mesh axes inside ``shard_map`` (None on one device), and ``extras`` the
    per-token outputs a head returns beside its value (the aux, the entropy)."""
    spec, coefs, ok = prepare(kind, ops, options, engine, axes)
    value, out, labels = execute(spec, coefs, ops, lead, engine, axes)
    more = None if extras is None else extras(out, coefs, labels, lead)
    return poison(value, ok), poison_tree(more, ok)


def ce_options(ignore_index, label_smoothing, z_loss, logit_softcap) -> dict:
    """The cross-entropy's own options, as :func:`make_spec` takes them."""
    return dict(
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        logit_softcap=logit_softcap,
    )


def log_probs_options(temperature, logit_softcap, ignore_index, with_entropy) -> dict:
    """The token log-probabilities' options: the cross-entropy rows, read the other way."""
    return dict(
        temperature=temperature,
        logit_softcap=logit_softcap,
        ignore_index=ignore_index,
        entropy=with_entropy,
    )


def cross_entropy_aux(out: Out, coefs, labels, lead) -> LinearCrossEntropyAux:
    """The :class:`LinearCrossEntropyAux` of the engine's cross-entropy rows."""
    counts = lax.stop_gradient(out.weight) != 0
    lse = jnp.where(counts, lax.stop_gradient(out.lse[0]), 0.0)  # a dropped row is never read
    z_term = jnp.where(counts, coefs.z_loss * lse**2, 0.0)
    correct = counts & (lax.stop_gradient(out.argmax) == labels)
    return LinearCrossEntropyAux(lse.reshape(lead), z_term.reshape(lead), correct.reshape(lead))


def row_entropy(out: Out, coefs, labels, lead) -> jax.Array:
    """The per-token entropy of the engine's cross-entropy rows (``entropy=True``)."""
    del coefs, labels
    return cast(jax.Array, out.entropy).reshape(lead)


def run_head(
    hidden,
    labels,
    weight,
    *,
    bias,
    mask,
    weight_layout,
    reduction,
    token_block_size,
    vocab_block_size,
    backward,
    accum_dtype,
    temperature,
    logit_softcap,
    ignore_index,
    entropy,
):
    """The unreduced cross-entropy rows of a linear head with integer labels: ``(Out, int32
    labels, token shape, coefficients, ok)``; the token log-probabilities read them."""
    ops, lead = cross_entropy_ops(hidden, labels, weight, bias, None, mask, weight_layout)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = log_probs_options(temperature, logit_softcap, ignore_index, entropy)
    spec, coefs, ok = prepare("token_log_probs", ops, options, engine)
    _, out, y = execute(spec, coefs, ops, lead, engine)
    return out, y, lead, coefs, ok


# ------------------------------------------------------------------------------ public API
@overload
def linear_softmax_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
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
def linear_softmax_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
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
@reraise_jvp("linear_softmax_cross_entropy")
def linear_softmax_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
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
    r"""Softmax cross-entropy of ``hidden @ weight + bias`` against integer labels, fused.

    Equals :func:`softmax_cross_entropy_with_integer_labels` applied to the logits
    :math:`z = h W + b` (optionally soft-capped, :math:`z \leftarrow s \tanh(z / s)`), but never
    materializes the ``[N, V]`` logits: it runs over tiles of tokens and vocabulary with an
    online logsumexp and recomputes tiles in the backward pass. For a token with label :math:`y`,
    class weights :math:`c` (all 1 by default), smoothing :math:`\varepsilon` and the :math:`K`
    included classes (a ``-inf`` logit, e.g. from a ``-inf`` bias entry, excludes a class):

    .. math::
        \ell = (1-\varepsilon)\, c_y\, (\mathrm{lse}(z) - z_y)
             + \frac{\varepsilon}{K} \sum_{k} c_k\, (\mathrm{lse}(z) - z_k)
             + \lambda_z\, \mathrm{lse}(z)^2 ,

    the cross-entropy from the smoothed target to the model (PyTorch's weighted formula) plus
    the z-loss. ``"mean"`` divides the sum by :math:`\sum_i c_{y_i}` over counted tokens.

    Gradients flow to ``hidden``, ``weight`` and ``bias`` (not to ``class_weights`` or the
    options); values and gradients accumulate in ``accum_dtype`` (at least float32). Only
    reverse mode is supported (``jax.grad``/``vjp``): this is a ``jax.custom_vjp`` function,
    and forward mode (``jax.jvp``) raises ``TypeError``. A call without a gradient computes
    none. A NaN logit poisons its token's value and gradient; a label outside ``[0, V)`` that
    is not ``ignore_index`` gives NaN in its value and its gradient. A token that is ignored
    or masked contributes nothing, to the value or to any gradient, even if its hidden state
    is NaN.

    Args:
      hidden: ``[..., D]`` final hidden states.
      labels: ``[...]`` integer class indices.
      weight: the output projection, ``[D, V]`` (flax ``Dense`` kernel) or ``[V, D]`` (a tied
        embedding table, PyTorch ``Linear``) as ``weight_layout`` says.
      bias: optional ``[V]`` bias.
      weight_layout: ``"dv"`` (default) or ``"vd"``; never inferred from the shape. The
        ``[V, D]`` layout contracts the other axis: no transposed copy is made.
      ignore_index: label value whose tokens give 0 loss, 0 gradient and no weight in the mean.
      mask: optional boolean per-token mask of the shape of ``labels`` (True = the token
        counts); a False token gives 0 loss, 0 gradient and no weight in the mean.
      label_smoothing: :math:`\varepsilon \in [0, 1)`; may be traced.
      class_weights: optional ``[V]`` non-negative per-class weights (no gradient).
      z_loss: coefficient :math:`\lambda_z \ge 0` of :math:`\mathrm{lse}^2`; may be traced.
      logit_softcap: optional static cap :math:`s > 0`.
      reduction: ``"none"`` (shape of ``labels``), ``"sum"``, ``"mean"`` (default) or
        ``"batchmean"`` (the sum over the size of the first dimension of ``labels``).
      token_block_size: tokens per tile; ``None`` chooses from the shapes and a memory budget.
      vocab_block_size: classes per tile; ``None`` chooses from the shapes.
      backward: the gradient plan. ``"auto"`` (default) chooses for the platform the
        computation is lowered for (GPU, TPU or CPU, not the host's default backend):
        ``"rows"`` on GPU and TPU; on CPU ``"in_forward"`` for float32 scalar losses and
        ``"two_pass"`` in half precision. ``"rows"``: token chunks with full vocabulary
        rows; the forward pass computes the hidden-state gradient, the backward pass the
        weight gradient block by block in float32 (4 matmuls). ``"one_pass"`` (each tile
        recomputed once, one full-size float32 accumulator), ``"two_pass"`` (each tile twice,
        tile-sized accumulators only) and ``"in_forward"`` (the gradient computed in the
        forward pass from a kept ``[Tb, V]`` row: 3 matmuls, scalar reductions only). These
        give the same gradients. ``"fast"``: as ``"in_forward"``, but the logits row and the
        weight gradient are kept in the weight's dtype (3 matmuls, the least memory traffic);
        in bfloat16 its weight-gradient error is several times the naive head's (measured in
        ``benchmarks/README.md``); per-token and vocabulary-parallel losses run ``"rows"``
        for it.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).
      return_aux: also return a :class:`LinearCrossEntropyAux` of per-token logsumexp, z-loss
        term and argmax-equals-label; these carry no gradient.

    Returns:
      The loss (reduced as asked, float32 for half-precision inputs), or ``(loss, aux)`` with
        ``return_aux=True``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h = jax.random.normal(jax.random.key(0), (4, 8))
      >>> w = jax.random.normal(jax.random.key(1), (8, 50))
      >>> y = jnp.array([1, 7, 3, 49])
      >>> fused = il.linear_softmax_cross_entropy(h, y, w)
      >>> naive = il.softmax_cross_entropy_with_integer_labels(h @ w, y, reduction="mean")
      >>> print(bool(jnp.allclose(fused, naive, rtol=1e-5)))
      True
      >>> tied = il.linear_softmax_cross_entropy(h, y, w.T, weight_layout="vd")
      >>> print(bool(jnp.allclose(tied, fused, rtol=1e-5)))
      True

    References:
      Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (Cut Cross-Entropy),
      2024. Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", 2024.
    """
    extras = cross_entropy_aux if check_flag(return_aux, "return_aux") else None
    ops, lead = cross_entropy_ops(hidden, labels, weight, bias, class_weights, mask, weight_layout)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    options = ce_options(ignore_index, label_smoothing, z_loss, logit_softcap)
    value, aux = run("cross_entropy", ops, lead, options, engine, extras=extras)
    return (value, aux) if return_aux else value


def linear_divergence(kind, heads, mask, coefficients, engine: EngineOptions) -> jax.Array:
    """A distillation divergence of two linear heads ``(hidden, weight, target_hidden,
    target_weight)`` on one device; ``coefficients`` are the divergence's own options."""
    ops, lead = distillation_ops(heads, mask, engine.weight_layout, DISTILL_NAMES)
    return run(kind, ops, lead, coefficients, engine)[0]


@reraise_jvp("linear_forward_kl")
def linear_forward_kl(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    weight_layout: WeightLayout = "dv",
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Forward KL(teacher || student) of a teacher and a student LM head, fused.

    .. math::
        \mathrm{KL}(P \,\|\, Q) = \sum_k p_k (\log p_k - \log q_k), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's: the same
    direction as :func:`forward_kl`, the usual (mean-seeking) distillation loss. Its gradient
    w.r.t. the student logits is :math:`(q - p) / T`.

    The student's logits are ``hidden @ weight``, the teacher's ``target_hidden @
    target_weight`` (its hidden size may differ; the vocabulary may not). Neither ``[N, V]``
    logits array is ever materialized. The teacher is a fixed target: it receives no gradient.
    A masked token contributes nothing, to the value or to any gradient. Only reverse-mode
    differentiation is supported (``jax.custom_vjp``); ``jax.jvp`` raises ``TypeError``.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: student output projection, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states (same leading shape).
      target_weight: teacher output projection, in the same layout.
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads; never inferred.
      temperature: positive temperature for both (no T**2 factor is applied); may be traced.
      mask: optional boolean per-token mask (shape ``hidden.shape[:-1]``, True = the token
        counts); False drops a token from the loss, its gradient and the mean.
      reduction: ``"none"``, ``"sum"``, ``"mean"`` (default, over kept tokens) or
        ``"batchmean"``.
      token_block_size: tokens per tile; ``None`` chooses from the shapes and a memory budget.
      vocab_block_size: classes per tile; ``None`` chooses from the shapes.
      backward: ``"auto"``, ``"rows"``, ``"fast"``, ``"one_pass"``, ``"two_pass"`` or
        ``"in_forward"``, as in :func:`linear_softmax_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The divergence in nats, reduced as asked, in at least float32.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h, th = jax.random.normal(jax.random.key(0), (2, 4, 8)), jnp.ones((2, 4, 6))
      >>> w = jax.random.normal(jax.random.key(1), (8, 30))
      >>> tw = jax.random.normal(jax.random.key(2), (6, 30))
      >>> fused = il.linear_forward_kl(h, w, th, tw, reduction="none")
      >>> naive = il.forward_kl(h @ w, th @ tw)
      >>> print(fused.shape, bool(jnp.allclose(fused, naive, rtol=1e-5, atol=1e-6)))
      (2, 4) True

    References:
      Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.
    """
    heads = (hidden, weight, target_hidden, target_weight)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    return linear_divergence("forward_kl", heads, mask, dict(temperature=temperature), engine)


@reraise_jvp("linear_reverse_kl")
def linear_reverse_kl(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    weight_layout: WeightLayout = "dv",
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Reverse KL(student || teacher) of a teacher and a student LM head, fused.

    .. math::
        \mathrm{KL}(Q \,\|\, P) = \sum_k q_k (\log q_k - \log p_k), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's: the same
    direction as :func:`reverse_kl` (mode-seeking, as in MiniLLM). Its gradient w.r.t. the
    student logits is :math:`q (\log q - \log p - \mathrm{KL}) / T`.

    The student's logits are ``hidden @ weight``, the teacher's ``target_hidden @
    target_weight`` (its hidden size may differ; the vocabulary may not). Neither ``[N, V]``
    logits array is ever materialized. The teacher is a fixed target: it receives no gradient.
    A masked token contributes nothing, to the value or to any gradient. Only reverse-mode
    differentiation is supported (``jax.custom_vjp``); ``jax.jvp`` raises ``TypeError``.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: student output projection, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states (same leading shape).
      target_weight: teacher output projection, in the same layout.
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads; never inferred.
      temperature: positive temperature for both (no T**2 factor is applied); may be traced.
      mask: optional boolean per-token mask (shape ``hidden.shape[:-1]``, True = the token
        counts); False drops a token from the loss, its gradient and the mean.
      reduction: ``"none"``, ``"sum"``, ``"mean"`` (default, over kept tokens) or
        ``"batchmean"``.
      token_block_size: tokens per tile; ``None`` chooses from the shapes and a memory budget.
      vocab_block_size: classes per tile; ``None`` chooses from the shapes.
      backward: ``"auto"``, ``"rows"``, ``"fast"``, ``"one_pass"``, ``"two_pass"`` or
        ``"in_forward"``, as in :func:`linear_softmax_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The divergence in nats, reduced as asked, in at least float32.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h, th = jax.random.normal(jax.random.key(0), (2, 4, 8)), jnp.ones((2, 4, 6))
      >>> w = jax.random.normal(jax.random.key(1), (8, 30))
      >>> tw = jax.random.normal(jax.random.key(2), (6, 30))
      >>> fused = il.linear_reverse_kl(h, w, th, tw, reduction="none")
      >>> naive = il.reverse_kl(h @ w, th @ tw)
      >>> print(fused.shape, bool(jnp.allclose(fused, naive, rtol=1e-5, atol=1e-6)))
      (2, 4) True

    References:
      Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", 2024.
    """
    heads = (hidden, weight, target_hidden, target_weight)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    return linear_divergence("reverse_kl", heads, mask, dict(temperature=temperature), engine)


@reraise_jvp("linear_jensen_shannon")
def linear_jensen_shannon(
    hidden: ArrayLike,
    weight: ArrayLike,
    target_hidden: ArrayLike,
    target_weight: ArrayLike,
    *,
    weight_layout: WeightLayout = "dv",
    beta: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: Backward = "auto",
    accum_dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    r"""Generalized Jensen-Shannon divergence of a teacher and a student LM head, fused.

    .. math::
        \mathrm{JSD}_\beta = \beta\, \mathrm{KL}(P \,\|\, M) + (1-\beta)\, \mathrm{KL}(Q \,\|\, M),
        \quad M = \beta P + (1-\beta) Q

    with :math:`P = \mathrm{softmax}(t/T)` the teacher (target) and
    :math:`Q = \mathrm{softmax}(s/T)` the student, as :func:`jensen_shannon`. ``beta=0`` gives
    the forward KL(teacher || student) and ``beta=1`` the reverse KL(student || teacher)
    (the TRL / Liger-Kernel convention); ``beta=0.5`` is the symmetric JSD.

    The student's logits are ``hidden @ weight``, the teacher's ``target_hidden @
    target_weight`` (its hidden size may differ; the vocabulary may not). Neither ``[N, V]``
    logits array is ever materialized. The teacher is a fixed target: it receives no gradient.
    A masked token contributes nothing, to the value or to any gradient. Only reverse-mode
    differentiation is supported (``jax.custom_vjp``); ``jax.jvp`` raises ``TypeError``.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: student output projection, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states (same leading shape).
      target_weight: teacher output projection, in the same layout.
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads; never inferred.
      beta: weight of the teacher in the mixture, in [0, 1]; may be traced.
      temperature: positive temperature for both (no T**2 factor is applied); may be traced.
      mask: optional boolean per-token mask (shape ``hidden.shape[:-1]``, True = the token
        counts); False drops a token from the loss, its gradient and the mean.
      reduction: ``"none"``, ``"sum"``, ``"mean"`` (default, over kept tokens) or
        ``"batchmean"``.
      token_block_size: tokens per tile; ``None`` chooses from the shapes and a memory budget.
      vocab_block_size: classes per tile; ``None`` chooses from the shapes.
      backward: ``"auto"``, ``"rows"``, ``"fast"``, ``"one_pass"``, ``"two_pass"`` or
        ``"in_forward"``, as in :func:`linear_softmax_cross_entropy`.
      accum_dtype: accumulation dtype (float32 by default; float64 inputs use float64).

    Returns:
      The divergence in nats, reduced as asked, in at least float32.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> h, th = jax.random.normal(jax.random.key(0), (2, 4, 8)), jnp.ones((2, 4, 6))
      >>> w = jax.random.normal(jax.random.key(1), (8, 30))
      >>> tw = jax.random.normal(jax.random.key(2), (6, 30))
      >>> fused = il.linear_jensen_shannon(h, w, th, tw, reduction="none")
      >>> naive = il.jensen_shannon(h @ w, th @ tw)
      >>> print(fused.shape, bool(jnp.allclose(fused, naive, rtol=1e-5, atol=1e-6)))
      (2, 4) True

    References:
      Agarwal et al., "On-Policy Distillation of Language Models: Learning from
      Self-Generated Mistakes" (GKD), 2024.
    """
    heads = (hidden, weight, target_hidden, target_weight)
    engine = EngineOptions(
        reduction, weight_layout, token_block_size, vocab_block_size, backward, accum_dtype
    )
    coefficients = dict(beta=beta, temperature=temperature)
    return linear_divergence("jensen_shannon", heads, mask, coefficients, engine)
