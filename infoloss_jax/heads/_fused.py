"""Fused linear losses: cross-entropy and distillation on ``hidden @ weight`` without the logits.

An LLM's loss head computes ``logits = hidden @ weight`` of shape ``[N tokens, V vocab]``. With
``V`` = 128k-256k those logits (and their softmax and gradient) dominate training memory. These
functions run the blockwise engine (:mod:`infoloss_jax._blockwise`): tiles of tokens and of
the vocabulary, an online logsumexp, and a ``jax.custom_vjp`` whose backward pass recomputes
each tile instead of storing it. The vocabulary-parallel losses of
:mod:`infoloss_jax.sharded` are the same engine with a mesh axis. Pure JAX: the same code runs
under ``jit`` on CPU, GPU and TPU.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer

from ..base._typing import ArrayLike
from ..base._validation import as_float_array, as_integer_array, check_reduction, describe
from ..engine import _blockwise
from ..engine._blockwise import Operands, reraise_jvp
from ..engine._loss_spec import check_layout, make_spec, poison


class LinearCrossEntropyAux(NamedTuple):
    """Per-token extras of :func:`linear_softmax_cross_entropy` (shape of ``labels``).

    Attributes:
      logsumexp: log-partition of the (soft-capped) logits.
      z_loss: the z-loss term ``z_loss * logsumexp**2`` (0 on ignored tokens).
      correct: whether the argmax of the logits equals the label (False on ignored tokens).
    """

    logsumexp: jax.Array
    z_loss: jax.Array
    correct: jax.Array


# ------------------------------------------------------------------------------ validation
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
        raise ValueError(
            f"The last dimension of `{hidden_name}` must equal the hidden size D of "
            f"`{weight_name}` {shape} (weight_layout={layout!r}); got `{hidden_name}` "
            f"{describe(hidden)} and `{weight_name}` {describe(weight)}."
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


def check_class_weights(class_weights):
    """Concrete negative weights raise; traced ones cannot be checked here (see ``checked``)."""
    if class_weights is not None and not isinstance(class_weights, Tracer):
        if bool(np.any(np.asarray(class_weights) < 0)):
            raise ValueError("`class_weights` must be non-negative; got a negative entry.")
    return None if class_weights is None else lax.stop_gradient(class_weights)


def token_mask(mask, lead):
    """A boolean per-token mask of shape ``lead`` flattened, or None."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"`mask` must be a boolean per-token mask; got {describe(mask)}.")
    if mask.shape != tuple(lead):
        raise ValueError(
            f"`mask` must be a boolean per-token mask of shape {list(lead)}; got {describe(mask)}."
        )
    return mask.reshape(-1)


def accumulation(accum_dtype, *arrays):
    return jnp.dtype(jnp.result_type(jnp.dtype(accum_dtype), *(a.dtype for a in arrays)))


# ------------------------------------------------------------------------------ operands
def cross_entropy_ops(hidden, labels, weight, bias, class_weights, layout, names, mask=None):
    """The validated :class:`~._blockwise.Operands` of a linear head with integer labels (and a
    per-token ``mask``), and the token shape; shared by the fused and the sharded losses."""
    h_name, w_name, b_name = names
    hidden = as_float_array(hidden, h_name)
    weight = as_float_array(weight, w_name)
    d, v = head_sizes(hidden, weight, layout, h_name, w_name)
    labels = check_labels(labels, hidden, h_name)
    bias = class_vector(bias, b_name, v)
    class_weights = check_class_weights(class_vector(class_weights, "class_weights", v))
    x, y = hidden.reshape(labels.size, d), labels.reshape(-1)
    row_mask = token_mask(mask, labels.shape)
    return Operands(x, weight, bias, None, None, y, class_weights, None, row_mask), labels.shape


def distillation_ops(hidden, weight, target_hidden, target_weight, mask, layout, names):
    """The validated Operands of a student and a (frozen) teacher head over one vocabulary, and
    the token shape; shared by the fused losses and the sharded ones."""
    heads = (hidden, weight, target_hidden, target_weight)
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


def run(
    kind,
    ops,
    lead,
    *,
    weight_layout="dv",
    reduction="mean",
    token_block_size=None,
    vocab_block_size=None,
    backward="auto",
    accum_dtype=jnp.float32,
    axis=None,
    axis_size=1,
    vocab_size=None,
    data_axis=None,
    **options,
):
    """Plans the tiles of validated operands and runs the engine; every fused and sharded loss
    ends here. Returns the reduced loss, the :class:`~._blockwise.Out`, the coefficients, the
    int32 labels and ``ok`` (False where a traced option is out of range). Logits (``ops.w``
    None) are one tile per device; ``axis`` names the mesh axis (of ``axis_size`` devices) a
    vocabulary of ``vocab_size`` classes is split over."""
    check_reduction(reduction)
    n, d = ops.x.shape
    acc = accumulation(accum_dtype, *(x for x in (ops.x, ops.w, ops.th, ops.tw) if x is not None))
    v = d if ops.w is None else ops.w.shape[1 if weight_layout == "dv" else 0]
    vocab = v * axis_size if vocab_size is None else vocab_size
    weighted = ops.class_weights is not None
    spec, coefs, ok = make_spec(
        kind, vocab, acc, class_weights=weighted, weight_layout=weight_layout, **options
    )
    if ops.labels is not None:
        ops = ops._replace(labels=int32_labels(ops.labels, spec))
    padded = vocab != v * axis_size
    if ops.w is None:  # logits: one tile per device
        cfg = _blockwise.Config(spec, _blockwise.Blocks(max(n, 1), d), "auto", axis, padded)
        out = _blockwise.blockwise(cfg, ops, coefs)
    else:
        width = d if ops.th is None else max(d, ops.th.shape[1])
        rows = 1 if ops.th is None else 2
        shape = _blockwise.Shape(
            n, width, v, rows, ops.x.dtype, ops.w.dtype, acc, reduction != "none"
        )
        cfgs = _blockwise.configure(
            spec,
            shape,
            token_block_size=token_block_size,
            vocab_block_size=vocab_block_size,
            backward=backward,
            axis=axis,
            axis_size=axis_size,
            padded=padded,
        )
        out = _blockwise.call(cfgs, ops, coefs)
    out = cast(_blockwise.Out, out)  # its type is lost in custom_vjp
    value = poison(_blockwise.reduce_rows(out, reduction, lead, data_axis), ok)
    return value, out, coefs, ops.labels, ok


def run_head(hidden, labels, weight, *, bias=None, mask=None, **kw):
    """The unreduced cross-entropy rows of a linear head with integer labels: ``(Out, int32
    labels, token shape, coefficients, ok)``; the token log-probabilities read them."""
    layout, names = kw.get("weight_layout", "dv"), ("hidden", "weight", "bias")
    ops, lead = cross_entropy_ops(hidden, labels, weight, bias, None, layout, names, mask)
    _, out, coefs, y, ok = run("cross_entropy", ops, lead, **kw)
    return out, y, lead, coefs, ok


# ------------------------------------------------------------------------------ public API
@reraise_jvp("linear_softmax_cross_entropy")
def linear_softmax_cross_entropy(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weight_layout: str = "dv",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    reduction: str = "mean",
    token_block_size: int | None = None,
    vocab_block_size: int | None = None,
    backward: str = "auto",
    accum_dtype=jnp.float32,
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
    is not ``ignore_index`` gives NaN in its value and its gradient.

    Args:
      hidden: ``[..., D]`` final hidden states.
      labels: ``[...]`` integer class indices.
      weight: the output projection, ``[D, V]`` (flax ``Dense`` kernel) or ``[V, D]`` (a tied
        embedding table, PyTorch ``Linear``) as ``weight_layout`` says.
      bias: optional ``[V]`` bias.
      weight_layout: ``"dv"`` (default) or ``"vd"``; never inferred from the shape. The
        ``[V, D]`` layout contracts the other axis: no transposed copy is made.
      ignore_index: label value whose tokens give 0 loss, 0 gradient and no weight in the mean.
      label_smoothing: :math:`\varepsilon \in [0, 1)`; may be traced.
      class_weights: optional ``[V]`` non-negative per-class weights (no gradient).
      z_loss: coefficient :math:`\lambda_z \ge 0` of :math:`\mathrm{lse}^2`; may be traced.
      logit_softcap: optional static cap :math:`s > 0`.
      reduction: ``"none"`` (shape of ``labels``), ``"sum"``, ``"mean"`` or ``"batchmean"``
        (the sum over the size of the first dimension of ``labels``).
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
      The loss (reduced as asked, float32 for half-precision inputs), and the aux tuple if
        ``return_aux``.

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
    options = {k: v for k, v in locals().items() if k not in _CE_ARRAYS}
    names = ("hidden", "weight", "bias")
    ops, lead = cross_entropy_ops(hidden, labels, weight, bias, class_weights, weight_layout, names)
    value, out, coefs, y, _ = run("cross_entropy", ops, lead, **options)
    if not return_aux:
        return value
    lse = lax.stop_gradient(out.lse[0])
    counts = lax.stop_gradient(out.weight) != 0
    z_term = jnp.where(counts, coefs.z_loss * lse**2, 0.0)
    correct = counts & (lax.stop_gradient(out.argmax) == y)
    aux = (lse.reshape(lead), z_term.reshape(lead), correct.reshape(lead))
    return value, LinearCrossEntropyAux(*aux)


_CE_ARRAYS = ("hidden", "labels", "weight", "bias", "class_weights", "return_aux")


# The three divergences of the distillation heads, fused and sharded: (what, math, reference).
DIVERGENCES = {
    "forward_kl": (
        "Forward KL(teacher || student)",
        r"""
    .. math::
        \mathrm{KL}(P \,\|\, Q) = \sum_k p_k (\log p_k - \log q_k), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's: the same
    direction as :func:`forward_kl`, the usual (mean-seeking) distillation loss. Its gradient
    w.r.t. the student logits is :math:`(q - p) / T`.
""",
        'Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.',
    ),
    "reverse_kl": (
        "Reverse KL(student || teacher)",
        r"""
    .. math::
        \mathrm{KL}(Q \,\|\, P) = \sum_k q_k (\log q_k - \log p_k), \quad
        P = \mathrm{softmax}(t / T),\; Q = \mathrm{softmax}(s / T)

    with :math:`t` the teacher's (target's) logits and :math:`s` the student's: the same
    direction as :func:`reverse_kl` (mode-seeking, as in MiniLLM). Its gradient w.r.t. the
    student logits is :math:`q (\log q - \log p - \mathrm{KL}) / T`.
""",
        'Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", 2024.',
    ),
    "jensen_shannon": (
        "Generalized Jensen-Shannon divergence",
        r"""
    .. math::
        \mathrm{JSD}_\beta = \beta\, \mathrm{KL}(P \,\|\, M) + (1-\beta)\, \mathrm{KL}(Q \,\|\, M),
        \quad M = \beta P + (1-\beta) Q

    with :math:`P = \mathrm{softmax}(t/T)` the teacher (target) and
    :math:`Q = \mathrm{softmax}(s/T)` the student, as :func:`jensen_shannon`. ``beta=0`` gives
    the forward KL(teacher || student) and ``beta=1`` the reverse KL(student || teacher)
    (the TRL / Liger-Kernel convention); ``beta=0.5`` is the symmetric JSD. ``beta`` lies in
    [0, 1] and may be traced.
""",
        'Agarwal et al., "On-Policy Distillation of Language Models: Learning from\n'
        '      Self-Generated Mistakes" (GKD), 2024.',
    ),
}
_BETA_DOC = "\n      beta: weight of the teacher in the mixture, in [0, 1] (may be traced)."


def distillation(fn, kind, name, suffix, template, **fields):
    """``fn`` as the public loss ``name``: its docstring (the shared math of ``kind``, then
    ``template``) and signature, where ``fn``'s ``**beta`` becomes a keyword ``beta=0.5`` for
    the Jensen-Shannon divergence and is refused for the KLs."""
    what, math, refs = DIVERGENCES[kind]
    beta_doc = _BETA_DOC if kind == "jensen_shannon" else ""
    args = template.format(name=name, core=kind, beta=beta_doc, refs=refs, **fields)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"{what} {suffix}\n{math}{args}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kind != "jensen_shannon" and "beta" in kwargs:
            raise TypeError(f"{name}() got an unexpected keyword argument 'beta'")
        return fn(*args, **kwargs)

    params = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD]
    if kind == "jensen_shannon":
        at = next(i for i, p in enumerate(params) if p.name == "temperature")
        beta = inspect.Parameter("beta", inspect.Parameter.KEYWORD_ONLY, default=0.5)
        params.insert(at, beta.replace(annotation="float"))
    signature = inspect.signature(fn).replace(parameters=params)
    wrapper.__signature__ = signature  # pyright: ignore[reportAttributeAccessIssue]  # not in the stubs
    return reraise_jvp(name)(wrapper)


_DISTILL_ARGS = """
    The student's logits are ``hidden @ weight``, the teacher's ``target_hidden @
    target_weight`` (its hidden size may differ; the vocabulary may not), both divided by
    ``temperature``. Neither ``[N, V]`` logits array is ever materialized. The teacher is a
    fixed target: it receives no gradient. Only reverse-mode differentiation is supported
    (``jax.custom_vjp``); ``jax.jvp`` raises ``TypeError``.

    Args:
      hidden: ``[..., D]`` student hidden states.
      weight: student output projection, ``[D, V]`` or ``[V, D]`` (``weight_layout``).
      target_hidden: ``[..., D_t]`` teacher hidden states (same leading shape).
      target_weight: teacher output projection, in the same layout.
      weight_layout: ``"dv"`` (default) or ``"vd"`` for both heads; never inferred.{beta}
      temperature: positive temperature for both (no T**2 factor is applied); may be traced.
      mask: optional boolean per-token mask (shape ``hidden.shape[:-1]``); False drops a token
        from the loss and from the mean.
      reduction: ``"none"``, ``"sum"``, ``"mean"`` (over kept tokens) or ``"batchmean"``.
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
      >>> fused = il.{name}(h, w, th, tw, reduction="none")
      >>> naive = il.{core}(h @ w, th @ tw)
      >>> print(fused.shape, bool(jnp.allclose(fused, naive, rtol=1e-5, atol=1e-6)))
      (2, 4) True

    References:
      {refs}
"""


def _distillation(kind):
    def fn(
        hidden: ArrayLike,
        weight: ArrayLike,
        target_hidden: ArrayLike,
        target_weight: ArrayLike,
        *,
        weight_layout: str = "dv",
        temperature: float = 1.0,
        mask: ArrayLike | None = None,
        reduction: str = "mean",
        token_block_size: int | None = None,
        vocab_block_size: int | None = None,
        backward: str = "auto",
        accum_dtype=jnp.float32,
        **beta,
    ) -> jax.Array:
        options = {k: v for k, v in locals().items() if k not in _DISTILL_ARRAYS} | beta
        names = _DISTILL_ARRAYS[:4]
        heads = (hidden, weight, target_hidden, target_weight)
        ops, lead = distillation_ops(*heads, mask, weight_layout, names)
        return run(kind, ops, lead, **options)[0]

    suffix = "of a teacher and a student LM head, fused."
    return distillation(fn, kind, f"linear_{kind}", suffix, _DISTILL_ARGS)


_DISTILL_ARRAYS = ("hidden", "weight", "target_hidden", "target_weight", "mask", "kind", "beta")
linear_forward_kl = _distillation("forward_kl")
linear_reverse_kl = _distillation("reverse_kl")
linear_jensen_shannon = _distillation("jensen_shannon")
