"""Policy-gradient token losses: the PPO/GRPO clipped surrogate and group advantages."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ..base._caching import cached_eager
from ..base._typing import ArrayLike
from ..base._validation import (
    accumulation_dtype,
    as_float_array,
    describe,
    is_traced,
    poison_unless,
    static_number,
)
from ..core._segments import (
    check_mask,
    check_segment_ids,
    count_sequences,
    resolve_num_segments,
    safe_divide,
    segment_sums,
    sum_of_sequence_means,
)
from ._coefficients import Coefficient, count
from ._kl_estimate import check_estimator, estimate_terms, expm1_minus_identity

NORMALIZATIONS = ("token_mean", "sequence_mean", "token_sum_norm")

_CLIP_LOW = Coefficient("clip_low", low=0.0, high=1.0, high_open=True)
_CLIP_HIGH = Coefficient("clip_high", low=0.0)
_KL_COEF = Coefficient("kl_coef", low=0.0)
_ENTROPY_COEF = Coefficient("entropy_coef", low=0.0)
_NUM_TOKENS = count("num_tokens")
_NUM_SEQUENCES = count("num_sequences")
_MAX_TOKENS = count("max_tokens")
_EPS = Coefficient("eps", low=0.0)


class PolicyLossAux(NamedTuple):
    """Metrics of policy.clipped_surrogate, all without gradients.

    Token statistics are means over the unmasked tokens of the arrays passed in (the local
    micro-batch, whatever ``num_tokens`` says). A metric whose input was not given is None.

    Attributes:
      policy_loss: the clipped-surrogate part of the loss, normalized like the loss.
      kl_to_ref: token mean of the KL estimate to the reference policy (``ref_log_probs``).
      entropy: token mean of ``entropy``.
      clip_fraction: fraction of tokens whose clipped branch is active (no gradient flows):
        ratio below ``1 - clip_low`` with a negative advantage, or above ``1 + clip_high``
        with a positive one.
      clip_fraction_low: the part of ``clip_fraction`` below ``1 - clip_low``.
      clip_fraction_high: the part of ``clip_fraction`` above ``1 + clip_high``.
      dual_clip_fraction: fraction of tokens held at the dual-clip bound (negative advantage
        and ratio above ``dual_clip``); None without ``dual_clip``.
      approx_kl_k1: token mean of k1 for KL(old || new), :math:`\\log\\pi_{old} - \\log\\pi`.
      approx_kl_k3: token mean of k3 for KL(old || new), :math:`\\rho - 1 - \\log\\rho`.
      ratio_mean: token mean of the importance ratio :math:`\\rho = \\pi / \\pi_{old}`.
      ratio_min: smallest ratio over unmasked tokens (+inf when there are none).
      ratio_max: largest ratio over unmasked tokens (-inf when there are none).
      num_tokens: the number of unmasked tokens passed in.
      num_sequences: the number of sequences with at least one unmasked token.
    """

    policy_loss: jax.Array
    kl_to_ref: jax.Array | None
    entropy: jax.Array | None
    clip_fraction: jax.Array
    clip_fraction_low: jax.Array
    clip_fraction_high: jax.Array
    dual_clip_fraction: jax.Array | None
    approx_kl_k1: jax.Array
    approx_kl_k3: jax.Array
    ratio_mean: jax.Array
    ratio_min: jax.Array
    ratio_max: jax.Array
    num_tokens: jax.Array
    num_sequences: jax.Array


def _check_normalization(normalization) -> str:
    if normalization not in NORMALIZATIONS:
        valid = ", ".join(repr(n) for n in NORMALIZATIONS)
        raise ValueError(f"Unknown `normalization`={normalization!r}; expected one of {valid}.")
    return normalization


def _denominator(value, coefficient: Coefficient, dtype):
    """A positive count that may be traced (a global count from a collective), or None."""
    if value is None:
        return None, None
    return coefficient.read_as(value, dtype)


def _check_token_log_probs(lp: jax.Array) -> None:
    """``log_probs`` must be ``[batch, tokens]``; name the step a wrong rank probably skipped."""
    if lp.ndim == 2:
        return
    if lp.ndim > 2:
        hint = (
            " It looks like log-probabilities over the whole vocabulary: pick the sampled "
            "tokens' log-probs with `il.log_probs(logits, tokens)` (or "
            "`il.linear_log_probs(hidden, tokens, weight)`)."
        )
    else:
        hint = (
            " One value per sequence? The ratio is per token: pass the per-token log-probs "
            "(not their `preference.sequence_log_probs` sums)."
        )
    raise ValueError(f"`log_probs` must be [batch, tokens]; got {describe(lp)}.{hint}")


def _optional_per_token(x, name: str, log_probs: jax.Array) -> jax.Array | None:
    """A float array shaped like ``log_probs``, or None."""
    if x is None:
        return None
    x = as_float_array(x, name)
    if x.shape != log_probs.shape:
        raise ValueError(
            f"`{name}` must have the shape of `log_probs` {list(log_probs.shape)}; "
            f"got {describe(x)}."
        )
    return x


@cached_eager("dual_clip", "kl_estimator", "normalization", "num_segments", "max_log_ratio")
def clipped_surrogate(
    log_probs: ArrayLike,
    old_log_probs: ArrayLike,
    advantages: ArrayLike,
    *,
    clip_low: float | jax.Array = 0.2,
    clip_high: float | jax.Array = 0.2,
    mask: ArrayLike | None = None,
    dual_clip: float | None = None,
    ref_log_probs: ArrayLike | None = None,
    kl_coef: float | jax.Array = 0.0,
    kl_estimator: str = "k3",
    entropy: ArrayLike | None = None,
    entropy_coef: float | jax.Array = 0.0,
    normalization: str = "token_mean",
    segment_ids: ArrayLike | None = None,
    num_segments: int | None = None,
    num_tokens: ArrayLike | None = None,
    num_sequences: ArrayLike | None = None,
    max_tokens: ArrayLike | None = None,
    max_log_ratio: float | None = 20.0,
) -> tuple[jax.Array, PolicyLossAux]:
    r"""The PPO/GRPO clipped surrogate objective over sampled tokens, as a loss to minimize.

    With the importance ratio :math:`\rho_t = \pi_\theta(x_t) / \pi_{old}(x_t)` of each sampled
    token and its advantage :math:`A_t`, the per-token loss is

    .. math::
        \ell_t = -\min\big(\rho_t A_t,\; \mathrm{clip}(\rho_t, 1-\epsilon_{low},
        1+\epsilon_{high}) A_t\big) + \beta\, k(\pi_\theta, \pi_{ref})_t - c_H\, H_t

    with asymmetric clipping (DAPO's clip-higher: ``clip_high > clip_low`` leaves room for
    unlikely tokens to grow), the optional KL penalty :math:`k` (an estimator of
    :func:`infoloss_jax.kl_estimate`, ``"k3"`` as in GRPO) with coefficient :math:`\beta`
    (``kl_coef``), and an optional entropy bonus with coefficient :math:`c_H`
    (``entropy_coef``). With ``dual_clip = c > 1`` (Ye et al.'s dual clip, verl's
    ``clip_ratio_c``) the loss of a token with :math:`A_t < 0` is further capped at
    :math:`-c A_t`, bounding the push from tokens whose ratio exploded.

    **Normalizations** (they change the gradient, not only its scale). With :math:`m_t` the
    mask, sequences :math:`i` (rows, or packed documents with ``segment_ids``) of
    :math:`|o_i|` unmasked tokens:

    * ``"token_mean"`` (default; DAPO's token-level loss, TRL's ``"bnpo"``/``"dapo"``):
      :math:`\sum_t m_t \ell_t / N_{tok}`, every token of the batch weighs the same.
      :math:`N_{tok}` is ``num_tokens`` or the number of unmasked tokens.
    * ``"sequence_mean"`` (GRPO, TRL's ``"grpo"``): :math:`\frac{1}{N_{seq}} \sum_i
      \frac{1}{|o_i|} \sum_{t \in o_i} \ell_t`; long sequences' tokens weigh less.
      :math:`N_{seq}` is ``num_sequences`` or the number of sequences with at least one
      unmasked token (TRL also counts fully masked rows, as zeros).
    * ``"token_sum_norm"`` (Dr. GRPO, TRL's ``"dr_grpo"``): :math:`\sum_t m_t \ell_t /
      (N_{seq} \cdot L)` with the constant :math:`L` = ``max_tokens`` (the generation budget),
      free of the length bias of the other two.

    **Micro-batches.** Each normalization divides a sum by a global count. Pass the full
    batch's ``num_tokens`` (token mean) or ``num_sequences`` (the other two) to every
    micro-batch call and the *sum* of the micro-batch losses equals the full-batch loss, in
    value and gradient. Sequences must not be split across micro-batches for
    ``"sequence_mean"``.

    **Packed sequences.** ``segment_ids`` (integers ``[B, T]``, negative = padding) mark several
    documents per row; each (row, id) is one sequence for ``"sequence_mean"`` and the sequence
    count. Give per-token advantages (``[B, T]``) for packed rows.

    **Numerics.** The log-ratio is clamped to ``[-max_log_ratio, max_log_ratio]`` before
    exponentiation (as verl does; ``None`` disables it), so a diverged token cannot overflow to
    a NaN gradient; clamped tokens get no gradient through the ratio, like clipped ones. Masked
    tokens contribute exact zeros to values and gradients whatever they hold (NaN padding is
    fine); a NaN in an unmasked token poisons the loss. A token the policy excludes
    (``log_probs`` of ``-inf``) with the KL penalty on makes the loss ``+inf`` (its k3 or k2
    estimate is ``+inf``), never NaN; a penalty that is off (``kl_coef=0``) adds exactly
    nothing, even against a ``-inf`` reference log-prob. A batch without tokens (``[0, T]`` or
    ``[B, 0]``) gives 0, the mean over nothing. No gradient is stopped inside:
    ``old_log_probs``, ``advantages`` and ``ref_log_probs`` are normally constants, and
    ``entropy``, when given, receives the bonus's gradient.

    **Coefficients** (``clip_low``, ``clip_high``, ``kl_coef``, ``entropy_coef`` and the counts)
    may be traced, for a schedule: a traced value outside its range makes the loss NaN, which
    :func:`infoloss_jax.checked` reports, while a concrete one (a Python or NumPy number, a
    concrete ``jnp`` array) raises ``ValueError`` naming it.

    Args:
      log_probs: ``[B, T]`` log-probabilities of the sampled tokens under the current policy
        (from ``il.log_probs(logits, tokens)``; not the whole vocabulary's, and not summed per
        sequence).
      old_log_probs: ``[B, T]`` log-probabilities under the policy that sampled them.
      advantages: ``[B, T]`` per-token advantages, or ``[B]`` per-sequence ones broadcast over
        tokens.
      clip_low: :math:`\epsilon_{low}` in [0, 1); may be traced.
      clip_high: :math:`\epsilon_{high}` >= 0; may be traced.
      mask: optional boolean ``[B, T]`` (True = a completion token that counts).
      dual_clip: optional static constant c > 1 of the dual clip.
      ref_log_probs: optional ``[B, T]`` log-probabilities under the reference policy; gives
        the ``kl_to_ref`` metric, and the penalty when ``kl_coef`` is not 0.
      kl_coef: :math:`\beta` >= 0, may be traced.
      kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see :func:`infoloss_jax.kl_estimate`).
      entropy: optional ``[B, T]`` per-token policy entropies, for the bonus and the metric.
      entropy_coef: :math:`c_H` >= 0, may be traced.
      normalization: ``"token_mean"``, ``"sequence_mean"`` or ``"token_sum_norm"``.
      segment_ids: optional integer ``[B, T]`` ids of packed documents.
      num_segments: static number of segment ids per row (default ``T``).
      num_tokens: global token count for ``"token_mean"``; may be traced.
      num_sequences: global sequence count for ``"sequence_mean"`` and ``"token_sum_norm"``;
        may be traced.
      max_tokens: the constant :math:`L` of ``"token_sum_norm"`` (required there).
      max_log_ratio: static clamp of the log-ratio, or None.

    Returns:
      ``(loss, aux)``: the scalar loss (at least float32) and a :class:`PolicyLossAux` of
        metrics (clip fractions, approximate KL between old and new policy, ratio statistics,
        entropy and KL to the reference).

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import policy
      >>> lp = jnp.log(jnp.array([[0.5, 0.6], [0.3, 0.2]]))
      >>> old = jnp.log(jnp.array([[0.4, 0.6], [0.3, 0.4]]))
      >>> loss, aux = policy.clipped_surrogate(lp, old, jnp.array([1.0, -1.0]))
      >>> print(round(float(loss), 4), float(aux.clip_fraction), float(aux.ratio_max))
      -0.1 0.5 1.25

    References:
      Schulman et al., "Proximal Policy Optimization Algorithms", 2017.

      Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
      Models", 2024 (GRPO).

      Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", 2025
      (clip-higher, token-level loss).

      Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective", 2025
      (Dr. GRPO).

      Ye et al., "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning",
      2020 (dual clip).
    """
    normalization = _check_normalization(normalization)
    check_estimator(kl_estimator, "kl_estimator")
    lp = as_float_array(log_probs, "log_probs")
    old = as_float_array(old_log_probs, "old_log_probs")
    _check_token_log_probs(lp)
    if old.shape != lp.shape:
        raise ValueError(
            f"`old_log_probs` must have the shape of `log_probs` {list(lp.shape)}; "
            f"got {describe(old)}."
        )
    adv = as_float_array(advantages, "advantages")
    if adv.shape == lp.shape[:1]:
        adv = adv[:, None]
    elif adv.shape != lp.shape:
        raise ValueError(
            f"`advantages` must be [batch] {list(lp.shape[:1])} or [batch, tokens] "
            f"{list(lp.shape)}; got {describe(adv)}."
        )
    ref = _optional_per_token(ref_log_probs, "ref_log_probs", lp)
    ent = _optional_per_token(entropy, "entropy", lp)
    extra = [x.dtype for x in (ref, ent) if x is not None]
    dtype = accumulation_dtype(lp.dtype, old.dtype, adv.dtype, *extra)
    mask = check_mask(mask, lp.shape)
    seg = check_segment_ids(segment_ids, lp.shape)
    num_seg = resolve_num_segments(num_segments, seg, lp.shape[-1])

    clip_low, ok_low = _CLIP_LOW.read(clip_low)
    clip_high, ok_high = _CLIP_HIGH.read(clip_high)
    kl_coef, ok_kl = _KL_COEF.read(kl_coef)
    entropy_coef, ok_ent = _ENTROPY_COEF.read(entropy_coef)
    if dual_clip is not None:
        dual_clip = static_number(dual_clip, "dual_clip")
        if not dual_clip > 1.0 or not np.isfinite(dual_clip):
            raise ValueError(f"`dual_clip` must be a finite number > 1; got {dual_clip!r}.")
    if max_log_ratio is not None:
        max_log_ratio = static_number(max_log_ratio, "max_log_ratio")
        if not max_log_ratio > 0:
            raise ValueError(f"`max_log_ratio` must be > 0 or None; got {max_log_ratio!r}.")
    if normalization == "token_sum_norm" and max_tokens is None:
        raise ValueError(
            "`normalization='token_sum_norm'` (Dr. GRPO) divides by the constant `max_tokens` "
            "(the generation budget) times the number of sequences: pass `max_tokens`."
        )
    if normalization != "token_sum_norm" and max_tokens is not None:
        raise ValueError("`max_tokens` is only used by `normalization='token_sum_norm'`.")
    if num_tokens is not None and normalization != "token_mean":
        raise ValueError(
            f"`num_tokens` is the denominator of `normalization='token_mean'`; with "
            f"{normalization!r} pass `num_sequences` instead."
        )
    if num_sequences is not None and normalization == "token_mean":
        raise ValueError(
            "`num_sequences` is not used by `normalization='token_mean'`; pass `num_tokens`."
        )
    n_tok, ok_ntok = _denominator(num_tokens, _NUM_TOKENS, dtype)
    n_seq, ok_nseq = _denominator(num_sequences, _NUM_SEQUENCES, dtype)
    l_max, ok_lmax = _denominator(max_tokens, _MAX_TOKENS, dtype)

    keep = jnp.ones(lp.shape, bool) if mask is None else mask
    if seg is not None:
        keep = keep & (seg >= 0)
    zero = jnp.zeros((), dtype)
    # Double where: masked tokens enter every formula as zeros.
    lp = jnp.where(keep, lp.astype(dtype), zero)
    old = jnp.where(keep, old.astype(dtype), zero)
    adv = jnp.where(keep, adv.astype(dtype), zero)
    log_ratio = lp - old
    if max_log_ratio is not None:
        log_ratio = jnp.clip(log_ratio, -max_log_ratio, max_log_ratio)
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    surrogate = jnp.minimum(ratio * adv, clipped * adv)
    if dual_clip is not None:
        surrogate = jnp.where(adv < 0, jnp.maximum(surrogate, dual_clip * adv), surrogate)
    per_token = -surrogate
    kl_terms = None
    if ref is not None:
        ref = jnp.where(keep, ref.astype(dtype), zero)
        kl_terms = estimate_terms(lp, ref, kl_estimator)
        if is_traced(kl_coef):
            per_token = per_token + _traced_kl_penalty(lp, ref, kl_coef, kl_estimator, zero)
        elif kl_coef != 0:  # a concrete 0 adds nothing: no 0 * inf
            per_token = per_token + kl_coef * kl_terms
    if ent is not None:
        ent = jnp.where(keep, ent.astype(dtype), zero)
        per_token = per_token - entropy_coef * ent
    per_token = jnp.where(keep, per_token, zero)

    seq_sums, seq_counts = segment_sums(per_token, keep, seg, num_seg)
    local_tokens = jnp.sum(keep.astype(dtype))
    local_sequences = count_sequences(seq_counts)
    if normalization == "token_mean":
        denominator = local_tokens if n_tok is None else n_tok
        loss = safe_divide(jnp.sum(seq_sums), denominator)
        ok_den = None
    elif normalization == "sequence_mean":
        denominator = local_sequences if n_seq is None else n_seq
        loss = safe_divide(sum_of_sequence_means(seq_sums, seq_counts), denominator)
        ok_den = None
    else:
        assert l_max is not None  # token_sum_norm requires max_tokens (checked above)
        denominator = (local_sequences if n_seq is None else n_seq) * l_max
        loss = safe_divide(jnp.sum(seq_sums), denominator)
        ok_den = ok_lmax
    for ok in (ok_low, ok_high, ok_kl, ok_ent, ok_den, ok_ntok, ok_nseq):
        loss = poison_unless(loss, ok)

    aux = _metrics(
        keep, ratio, log_ratio, adv, clip_low, clip_high, dual_clip, kl_terms, ent, dtype
    )
    # The surrogate part alone, normalized like the loss (for logging).
    surrogate_only = jnp.where(keep, -surrogate, zero)
    ps, pc = segment_sums(surrogate_only, keep, seg, num_seg)
    if normalization == "sequence_mean":
        policy_loss = safe_divide(sum_of_sequence_means(ps, pc), denominator)
    else:
        policy_loss = safe_divide(jnp.sum(ps), denominator)
    aux = aux._replace(
        policy_loss=jax.lax.stop_gradient(policy_loss),
        num_tokens=local_tokens,
        num_sequences=local_sequences,
    )
    return loss, aux


def _traced_kl_penalty(lp, ref, kl_coef, estimator: str, zero):
    """``kl_coef * k`` per token for a traced ``kl_coef``, whose 0 disables the penalty exactly:
    the estimator sees zeros there, so an infinite estimate cannot make 0 * inf = NaN in the
    value or the gradient."""
    on = kl_coef != 0
    terms = estimate_terms(jnp.where(on, lp, zero), jnp.where(on, ref, zero), estimator)
    return kl_coef * terms


def _metrics(keep, ratio, log_ratio, adv, clip_low, clip_high, dual_clip, kl_terms, ent, dtype):
    sg = jax.lax.stop_gradient
    ratio, log_ratio, adv = sg(ratio), sg(log_ratio), sg(adv)
    count = jnp.sum(keep.astype(dtype))

    def token_mean(x):
        return safe_divide(jnp.sum(jnp.where(keep, x.astype(dtype), 0.0)), count)

    low = keep & (ratio < 1.0 - clip_low) & (adv < 0)
    high = keep & (ratio > 1.0 + clip_high) & (adv > 0)
    dual = None
    if dual_clip is not None:
        dual = token_mean(keep & (adv < 0) & (ratio > dual_clip))
    k3_old_new = expm1_minus_identity(log_ratio)  # KL(old || new) under samples from old
    return PolicyLossAux(
        policy_loss=jnp.zeros((), dtype),
        kl_to_ref=None if kl_terms is None else token_mean(sg(kl_terms)),
        entropy=None if ent is None else token_mean(sg(ent)),
        clip_fraction=token_mean(low | high),
        clip_fraction_low=token_mean(low),
        clip_fraction_high=token_mean(high),
        dual_clip_fraction=dual,
        approx_kl_k1=token_mean(-log_ratio),
        approx_kl_k3=token_mean(k3_old_new),
        ratio_mean=token_mean(ratio),
        ratio_min=jnp.min(jnp.where(keep, ratio, jnp.inf), initial=jnp.inf),
        ratio_max=jnp.max(jnp.where(keep, ratio, -jnp.inf), initial=-jnp.inf),
        num_tokens=count,
        num_sequences=jnp.zeros((), dtype),
    )


_ONE_REWARD = (
    " One reward per completion: sum per-token rewards first (verl's "
    "`token_level_rewards.sum(-1)`)."
)


@cached_eager("group_size", "normalize_std", "ddof")
def group_advantages(
    rewards: ArrayLike,
    group_size: int,
    *,
    normalize_std: bool = True,
    eps: float | jax.Array = 1e-6,
    ddof: int = 1,
) -> jax.Array:
    r"""GRPO's group-relative advantages: each reward against the other samples of its prompt.

    For the :math:`G` completions :math:`o_1, \dots, o_G` of one prompt with rewards
    :math:`r_1, \dots, r_G`:

    .. math::
        A_i = \frac{r_i - \mathrm{mean}(r)}{\mathrm{std}(r) + \varepsilon}
        \quad\text{or, with ``normalize_std=False`` (Dr. GRPO),}\quad
        A_i = r_i - \mathrm{mean}(r)

    The standard deviation uses ``ddof=1`` (Bessel's correction) by default, as
    ``torch.std`` in TRL's GRPO trainer; pass ``ddof=0`` for the population form. Dr. GRPO
    drops the division because it up-weights prompts whose rewards barely vary (too easy or
    too hard ones). A group with equal rewards gets advantages of exactly 0, whatever their
    scale and ``eps`` (even ``eps=0``): each group is scaled by a power of two and shifted by
    one of its members before the mean is taken, so rounding cannot make an advantage, and
    rewards from 1e-30 to 3e38 neither under- nor overflow. A NaN or infinite reward poisons
    its own group only.

    TRL divides by :math:`\mathrm{std} + 10^{-4}` (pass ``eps=1e-4``); verl by
    :math:`\mathrm{std} + 10^{-6}` (the default). Both use ``ddof=1``. A group of one sample
    has no one to be compared with: its advantage is 0 here (with ``ddof=0`` or
    ``normalize_std=False``) and in TRL, while verl gives it mean 0 and standard deviation 1,
    so its advantage is its raw reward.

    Args:
      rewards: ``[B * G]`` rewards with each prompt's ``G`` samples consecutive (TRL's layout),
        or ``[B, G]``.
      group_size: ``G``, a static int that divides the number of rewards.
      normalize_std: divide by the group's standard deviation (GRPO) or not (Dr. GRPO).
      eps: added to the standard deviation, >= 0; may be traced.
      ddof: static delta degrees of freedom of the standard deviation (1 or 0).

    Returns:
      The advantages, with the shape of ``rewards``, in at least float32. They carry no
        gradient with respect to ``rewards`` in practice; stop it yourself if the rewards are
        differentiable.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import policy
      >>> adv = policy.group_advantages(jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3)
      >>> print([round(float(a), 3) for a in adv])
      [1.155, -0.577, -0.577, 0.0, 0.0, 0.0]
      >>> print(policy.group_advantages(jnp.array([1.0, 0.0, 0.0, 1.0]), 2,
      ...                               normalize_std=False))
      [ 0.5 -0.5 -0.5  0.5]

    References:
      Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
      Models", 2024 (GRPO).

      Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective", 2025
      (Dr. GRPO).
    """
    r = as_float_array(rewards, "rewards")
    if isinstance(group_size, Tracer):
        raise TypeError("`group_size` must be a static Python int: it sets the grouping.")
    if isinstance(group_size, bool) or not isinstance(group_size, int | np.integer):
        raise TypeError(f"`group_size` must be a positive Python int; got {group_size!r}.")
    if group_size < 1:
        raise ValueError(f"`group_size` must be at least 1; got {group_size!r}.")
    if isinstance(ddof, bool) or not isinstance(ddof, int | np.integer) or ddof not in (0, 1):
        raise ValueError(f"`ddof` must be 0 or 1; got {ddof!r}.")
    if r.ndim == 1:
        if r.shape[0] % group_size:
            raise ValueError(
                f"`rewards` {describe(r)} must hold a whole number of groups of "
                f"`group_size`={group_size}."
            )
        grouped = r.reshape(-1, group_size)
    elif r.ndim == 2:
        if r.shape[1] != group_size:
            raise ValueError(
                f"`rewards` {describe(r)} given as [prompts, samples] must have "
                f"`group_size`={group_size} columns.{_ONE_REWARD}"
            )
        grouped = r
    else:
        raise ValueError(f"`rewards` must be [B * G] or [B, G]; got {describe(r)}.{_ONE_REWARD}")
    if normalize_std and ddof == 1 and group_size < 2:
        raise ValueError(
            "`group_size`=1 has no standard deviation with `ddof=1`; use groups of 2 or more. "
            "(verl gives a group of one mean 0 and std 1, i.e. the raw reward: use the rewards "
            "themselves for that.)"
        )
    eps, ok = _EPS.read(eps)
    dtype = accumulation_dtype(r.dtype)
    return poison_unless(
        _relative_to_group(grouped.astype(dtype), normalize_std, eps, ddof).reshape(r.shape), ok
    )


def _power_of_two_scale(magnitude: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(2**k, 2**-k)`` with ``magnitude * 2**-k`` of order 1: scaling by them is exact.

    ``k`` stays where both powers are normal numbers (XLA may flush subnormals to 0).
    """
    info = jnp.finfo(magnitude.dtype)
    _, exponent = jnp.frexp(jnp.where(jnp.isfinite(magnitude), magnitude, 0.0))
    exponent = jnp.clip(exponent, info.minexp, -info.minexp)
    one = jnp.ones((), magnitude.dtype)
    sg = jax.lax.stop_gradient
    return sg(jnp.ldexp(one, exponent)), sg(jnp.ldexp(one, -exponent))


def _relative_to_group(grouped: jax.Array, normalize_std: bool, eps, ddof: int) -> jax.Array:
    """Group-relative advantages of ``[groups, G]`` rewards, computed so that rounding cannot
    make an advantage: equal rewards give exact zeros at any scale.

    Each group is scaled by a power of two near its largest reward (exact, and no square
    over- or underflows, from 1e-30 to 3e38), then shifted by its first member (exact for
    nearly equal rewards, and exactly 0 for equal ones) before the mean is taken.
    """
    scale, inverse = _power_of_two_scale(jnp.max(jnp.abs(grouped), axis=1, keepdims=True))
    unit = grouped * inverse
    shifted = unit - unit[:, :1]
    centered = shifted - jnp.mean(shifted, axis=1, keepdims=True)
    if not normalize_std:
        return centered * scale
    size = grouped.shape[1]
    var = jnp.sum(jnp.square(centered), axis=1, keepdims=True) / (size - ddof)
    # sqrt has an infinite derivative at 0: keep equal-reward groups at a finite one.
    positive = var > 0
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
    # (r - mean) / (std_r + eps) in the scaled units: eps scales with them.
    return safe_divide(centered, std + eps * inverse)
