"""Token log-probabilities and the policy's entropy: the per-token quantities of RL and preference
tuning, from logits or fused from a linear head without the ``[N, V]`` logits.

Both are the cross-entropy rows of the blockwise engine read the other way round: the token
log-probability is minus the plain cross-entropy row, and the entropy is one more statistic of
the same online sweep, kept only when asked for.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple, cast, overload

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from ..base._caching import cached_eager
from ..base._typing import ArrayLike, Backward, WeightLayout
from ..base._validation import (
    Axis,
    as_float_array,
    as_integer_array,
    as_where,
    equals_index,
    normalize_axis,
    upcast,
)
from ..core._cross_entropy import check_integer_labels, classes_last
from ..core._log_partition import exclude
from ..core._segments import check_mask
from ..engine import _tiles
from ..engine._blockwise import check_backward, reraise_jvp
from ..engine._loss_spec import Coefficients, LossSpec, make_spec, poison
from ..heads._fused import run_head


def _check_with_entropy(with_entropy) -> bool:
    if not isinstance(with_entropy, bool):
        raise TypeError(f"`with_entropy` must be a Python bool; got {with_entropy!r}.")
    return with_entropy


class TokenLogProbs(NamedTuple):
    """What ``log_probs`` and ``linear_log_probs`` return with ``with_entropy=True``.

    Attributes:
      log_probs: the log-probability of each token's label, the shape of ``labels``.
      entropy: the entropy of each token's distribution (nats), the same shape.
    """

    log_probs: jax.Array
    entropy: jax.Array


def _outputs(log_probs, entropy, with_entropy: bool, ok) -> jax.Array | TokenLogProbs:
    log_probs = poison(log_probs, ok)
    return TokenLogProbs(log_probs, poison(entropy, ok)) if with_entropy else log_probs


# ------------------------------------------------------------------------------ from logits
@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _token_rows(raw, labels, coefs: Coefficients, spec: LossSpec):
    """(log q(label), entropy or nothing) of ``[rows, K]`` raw logits, from the engine's tile."""
    stats = _tiles.ce_tile(raw, labels, None, 0, spec, coefs)
    rows = spec.loss.rows_of(stats, labels, None, spec, coefs)
    return (-rows.loss, rows.entropy) if spec.entropy else (-rows.loss,)


def token_grads(raw, labels, coefs: Coefficients, spec: LossSpec):
    """``(rows, d log q(label) / d raw, d H / d raw or None)`` of ``[rows, K]`` raw logits.

    The closed forms of :func:`log_probs`, from the engine's tile gradient with the temperature's
    chain rule applied; shared by its JVP rule and :mod:`infoloss_jax.gradients`.
    """
    full = _tiles.ce_full_rows(raw, labels, None, coefs, spec)
    rows = full.rows
    chain = coefs.inverse_temperature.astype(full.z.dtype) if spec.scaled else 1.0
    zero = jnp.zeros_like(rows.loss)

    def grad(coef):
        return chain * _tiles.ce_tile_grad(
            full.z, full.raw, labels, 0, None, full.log_q, coef, spec
        )

    d_log_probs = -grad(dict(rows.coef, h=zero))
    d_entropy = grad(dict(rows.coef, p=zero, y=zero, s=zero)) if spec.entropy else None
    return rows, d_log_probs, d_entropy


@_token_rows.defjvp
def _token_rows_jvp(spec, primals, tangents):
    raw, labels, coefs = primals
    rows, d_log_probs, d_entropy = token_grads(raw, labels, coefs, spec)
    outs, grads = [-rows.loss], [d_log_probs]
    if d_entropy is not None:
        outs.append(cast(jax.Array, rows.entropy))
        grads.append(d_entropy)
    dots = (jnp.sum(g * tangents[0], axis=-1).astype(rows.loss.dtype) for g in grads)
    return tuple(outs), tuple(dots)


def token_log_probs_spec(logits, labels, axis, where, **options):
    """Validates the inputs of :func:`log_probs`; returns ``(raw [rows, K], labels, spec,
    coefficients, ok, to_rows)``, where ``to_rows`` moves the class axes last and flattens them."""
    logits = as_float_array(logits, "logits")
    labels = as_integer_array(labels, "labels")
    axes = normalize_axis(axis, logits.ndim)
    check_integer_labels(logits, labels, axes)
    to_rows = functools.partial(classes_last, axes=axes)
    raw = to_rows(exclude(upcast(logits), as_where(where, logits.shape)))
    spec, coefs, ok = make_spec("token_log_probs", raw.shape[-1], raw.dtype, **options)
    raw = raw.reshape(-1, raw.shape[-1])
    if spec.ignore_index is not None:  # an ignored row (NaN or not) reaches no value or gradient
        raw = jnp.where(equals_index(labels.reshape(-1, 1), spec.ignore_index), 0.0, raw)
    return raw, labels, spec, coefs, ok, to_rows


@overload
def log_probs(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis = ...,
    where: ArrayLike | None = ...,
    temperature: float | jax.Array = ...,
    logit_softcap: float | None = ...,
    with_entropy: Literal[False] = ...,
    ignore_index: int | None = ...,
    mask: ArrayLike | None = ...,
) -> jax.Array: ...


@overload
def log_probs(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis = ...,
    where: ArrayLike | None = ...,
    temperature: float | jax.Array = ...,
    logit_softcap: float | None = ...,
    with_entropy: Literal[True],
    ignore_index: int | None = ...,
    mask: ArrayLike | None = ...,
) -> TokenLogProbs: ...


@overload
def log_probs(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis = ...,
    where: ArrayLike | None = ...,
    temperature: float | jax.Array = ...,
    logit_softcap: float | None = ...,
    with_entropy: bool = ...,
    ignore_index: int | None = ...,
    mask: ArrayLike | None = ...,
) -> jax.Array | TokenLogProbs: ...


@cached_eager("axis", "logit_softcap", "with_entropy", "ignore_index")
def log_probs(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    temperature: float | jax.Array = 1.0,
    logit_softcap: float | None = None,
    with_entropy: bool = False,
    ignore_index: int | None = None,
    mask: ArrayLike | None = None,
) -> jax.Array | TokenLogProbs:
    r"""Per-token log-probability of the label under softmax(logits), and optionally the entropy.

    The log-probability of a sampled (or given) token and the entropy of the policy at that
    position: the inputs of policy-gradient, KL-to-reference and preference losses
    (:mod:`infoloss_jax.policy`, :func:`kl_estimate`, :mod:`infoloss_jax.preference`).
    .. math::
        \log q(y) = z_y - \log \sum_k e^{z_k}, \qquad
        H(q) = -\sum_k q_k \log q_k, \qquad
        z = \frac{s \tanh(\ell / s)}{T},

    where :math:`\ell` are the raw logits, :math:`s` the optional soft cap and :math:`T` the
    temperature, in the order a sampler applies them (the model's soft cap, then the sampling
    temperature), so that :math:`q` is the distribution the tokens were sampled from. Their
    gradients with respect to the logits :math:`z` are

    .. math::
        \frac{\partial \log q(y)}{\partial z_k} = [k = y] - q_k, \qquad
        \frac{\partial H}{\partial z_k} = -q_k (\log q_k + H),

    so any loss :math:`f(\log q(y), H)` gets exact gradients through both.
    It runs the same tile formulas as :func:`linear_log_probs` and the vocabulary-parallel
    versions, so the three agree. Forward mode, ``vmap`` and higher derivatives work (the JVP
    rule is the closed form above). With ``with_entropy=False`` no entropy is computed.

    A ``-inf`` logit (or ``where=False``) excludes a class: it has probability 0, adds 0 to the
    entropy and gets a 0 gradient; a label on an excluded class has log-probability ``-inf``.
    A token whose label is ``ignore_index`` or whose ``mask`` is False gives 0 for both outputs
    and no gradient (a masked token's logits are never read). A label outside ``[0, K)`` gives
    NaN in both outputs and their gradients, and a NaN logit poisons its own token.
    Half-precision logits are computed and returned in float32.

    Args:
      logits: ``[..., K]`` unnormalized log-probabilities (before soft cap and temperature).
      labels: integer array, the shape of ``logits`` without the class axis: the token whose
        log-probability is returned.
      axis: the class axis (or axes, read row-major as one flat class index).
      where: optional boolean class mask broadcastable to ``logits``; False excludes a class.
      temperature: :math:`T > 0`; the logits are divided by it after the soft cap (may be
        traced; it receives no gradient).
      logit_softcap: optional static cap :math:`s > 0`.
      with_entropy: also return the entropy :math:`H(q)` per token (in nats).
      ignore_index: label value whose tokens give 0 for both outputs, or None.
      mask: optional boolean per-token mask, shaped like ``labels`` (False gives 0 for both
        outputs and no gradient).

    Returns:
      ``log_probs`` with the shape of ``labels`` (at least float32), or with
        ``with_entropy=True`` the NamedTuple :class:`TokenLogProbs` ``(log_probs, entropy)``,
        which unpacks as a pair.

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import infoloss_jax as il
      >>> logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, -jnp.inf]])
      >>> lp, ent = il.log_probs(logits, jnp.array([0, 1]), with_entropy=True)
      >>> print(np.round(np.asarray(lp), 4), np.round(np.asarray(ent), 4))
      [-0.4076 -0.6931] [0.8324 0.6931]

    References:
      Schulman et al., "Proximal Policy Optimization Algorithms", 2017; Shao et al.,
      "DeepSeekMath" (GRPO), 2024; verl ``logprobs_from_logits`` and ``entropy_from_logits``;
      TRL ``selective_log_softmax``.
    """
    with_entropy = _check_with_entropy(with_entropy)
    raw, labels, spec, coefs, ok, _ = token_log_probs_spec(
        logits,
        labels,
        axis,
        where,
        temperature=temperature,
        logit_softcap=logit_softcap,
        ignore_index=ignore_index,
        entropy=with_entropy,
    )
    rows = check_mask(mask, labels.shape, to_name="labels")
    if rows is not None:  # a masked token's logits never enter, so a NaN there cannot leak
        raw = jnp.where(rows.reshape(-1, 1), raw, 0.0)
    out = _token_rows(raw, labels.reshape(-1), coefs, spec)
    out = [o.reshape(labels.shape) for o in out]
    if rows is not None:
        out = [jnp.where(rows, o, 0.0) for o in out]
    return _outputs(out[0], out[-1], with_entropy, ok)


# ------------------------------------------------------------------------------ fused
@overload
def linear_log_probs(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    bias: ArrayLike | None = ...,
    temperature: float | jax.Array = ...,
    logit_softcap: float | None = ...,
    with_entropy: Literal[False] = ...,
    ignore_index: int | None = ...,
    mask: ArrayLike | None = ...,
    weight_layout: WeightLayout = ...,
    token_block_size: int | None = ...,
    vocab_block_size: int | None = ...,
    backward: Backward = ...,
    accum_dtype: DTypeLike = ...,
) -> jax.Array: ...


@overload
def linear_log_probs(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    bias: ArrayLike | None = ...,
    temperature: float | jax.Array = ...,
    logit_softcap: float | None = ...,
    with_entropy: Literal[True],
    ignore_index: int | None = ...,
    mask: ArrayLike | None = ...,
    weight_layout: WeightLayout = ...,
    token_block_size: int | None = ...,
    vocab_block_size: int | None = ...,
    backward: Backward = ...,
    accum_dtype: DTypeLike = ...,
) -> TokenLogProbs: ...


@overload
def linear_log_probs(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    bias: ArrayLike | None = ...,
    temperature: float | jax.Array = ...,
    logit_softcap: float | None = ...,
    with_entropy: bool = ...,
    ignore_index: int | None = ...,
    mask: ArrayLike | None = ...,
    weight_layout: WeightLayout = ...,
    token_block_size: int | None = ...,
    vocab_block_size: int | None = ...,
    backward: Backward = ...,
    accum_dtype: DTypeLike = ...,
) -> jax.Array | TokenLogProbs: ...


@reraise_jvp("linear_log_probs")
def linear_log_probs(
    hidden: ArrayLike,
    labels: ArrayLike,
    weight: ArrayLike,
    *,
    bias: ArrayLike | None = None,
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
) -> jax.Array | TokenLogProbs:
    r"""Per-token log-probabilities (and entropy) of ``hidden @ weight + bias``, fused.

    Equals :func:`log_probs` of the logits :math:`\ell = h W + b` but never materializes the
    ``[N, V]`` logits, their softmax or their gradient: it runs the blockwise engine (tiles of
    tokens and vocabulary, an online logsumexp, a ``jax.custom_vjp`` whose backward pass
    recomputes each tile), as :func:`linear_softmax_cross_entropy` does. This is the LM-head
    step of PPO/GRPO and DPO: the log-probability of each sampled token and the entropy of the
    policy, for a long sequence and a large vocabulary.

    .. math::
        \log q(y) = z_y - \log \sum_k e^{z_k}, \qquad H(q) = -\sum_k q_k \log q_k, \qquad
        z = \frac{s \tanh(\ell / s)}{T},

    with the soft cap :math:`s` (optional) applied before the temperature :math:`T`, and the
    gradients of :func:`log_probs`.
    Gradients flow to ``hidden``, ``weight`` and ``bias`` from both outputs. With
    ``with_entropy=False`` the entropy's statistic and gradient term are not computed in
    either pass. Only reverse mode is supported (``jax.grad``/``vjp``); forward mode raises
    ``TypeError``. Values and gradients accumulate in ``accum_dtype`` (at least float32).
    A ``-inf`` bias entry excludes a class; a token whose label is ``ignore_index`` or whose
    ``mask`` is False gives 0 for both outputs and no gradient; a label outside ``[0, V)``
    gives NaN in both outputs and their gradients.

    Args:
      hidden: ``[..., D]`` final hidden states.
      labels: ``[...]`` integer token ids (the sampled tokens).
      weight: the output projection, ``[D, V]`` or ``[V, D]`` as ``weight_layout`` says.
      bias: optional ``[V]`` bias.
      temperature: :math:`T > 0` (may be traced; it receives no gradient).
      logit_softcap: optional static cap :math:`s > 0`.
      with_entropy: also return the per-token entropy (nats).
      ignore_index: label value whose tokens give 0, or None.
      mask: optional boolean ``[...]`` per-token mask (False gives 0 and no gradient).
      weight_layout: ``"dv"`` (default) or ``"vd"`` (a tied ``[V, D]`` embedding table).
      token_block_size: tokens per tile; ``None`` chooses from the shapes.
      vocab_block_size: classes per tile; ``None`` chooses from the shapes.
      backward: ``"auto"``, ``"rows"``, ``"one_pass"`` or ``"two_pass"`` (see
        :func:`linear_softmax_cross_entropy`; ``"in_forward"`` needs a scalar loss and
        ``"fast"`` runs ``"rows"`` here).
      accum_dtype: dtype of every sum and of the outputs (at least float32).

    Returns:
      ``log_probs`` with the shape of ``labels``, or with ``with_entropy=True`` the NamedTuple
        :class:`TokenLogProbs` ``(log_probs, entropy)``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> hidden = jax.random.normal(jax.random.key(0), (6, 8))
      >>> weight = jax.random.normal(jax.random.key(1), (8, 50))
      >>> tokens = jnp.array([3, 14, 15, 9, 26, 5])
      >>> lp, ent = il.linear_log_probs(hidden, tokens, weight, with_entropy=True)
      >>> bool(jnp.allclose(lp, il.log_probs(hidden @ weight, tokens), atol=1e-5))
      True
      >>> def objective(h):  # any f(log_probs, entropy) is differentiable through both
      ...     lp, ent = il.linear_log_probs(h, tokens, weight, with_entropy=True)
      ...     return lp.sum() + 0.01 * ent.sum()
      >>> jax.grad(objective)(hidden).shape
      (6, 8)

    References:
      Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024; verl's and
      TRL's fused log-prob and entropy kernels; Liger-Kernel's chunked losses.
    """
    with_entropy = _check_with_entropy(with_entropy)
    if check_backward(backward) == "in_forward":
        raise ValueError(
            "`backward`='in_forward' computes the gradient of a scalar loss in the forward pass; "
            "`linear_log_probs` returns per-token values. Use 'auto', 'rows', 'one_pass' or "
            "'two_pass'."
        )
    out, _, lead, _, ok = run_head(
        hidden,
        labels,
        weight,
        bias=bias,
        weight_layout=weight_layout,
        reduction="none",
        token_block_size=token_block_size,
        vocab_block_size=vocab_block_size,
        backward=backward,
        accum_dtype=accum_dtype,
        mask=mask,
        temperature=temperature,
        logit_softcap=logit_softcap,
        ignore_index=ignore_index,
        entropy=with_entropy,
    )
    entropy = None if out.entropy is None else out.entropy.reshape(lead)
    return _outputs(-out.loss.reshape(lead), entropy, with_entropy, ok)
