"""Preference losses over per-sequence log-probabilities: DPO and its family, and KTO."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..base._caching import cached_eager
from ..base._typing import ArrayLike
from ..base._validation import (
    accumulation_dtype,
    as_float_array,
    describe,
    poison_unless,
)
from ..core._segments import (
    check_mask,
    check_segment_ids,
    resolve_num_segments,
    safe_divide,
    segment_sums,
)
from ._coefficients import Coefficient, count

_sg = jax.lax.stop_gradient

_BETA = Coefficient("beta", low=0.0, low_open=True)
_ORPO_BETA = Coefficient("beta", low=0.0)
_SMOOTHING = Coefficient("label_smoothing", low=0.0, high=0.5)
_ROBUST_SMOOTHING = Coefficient("label_smoothing", low=0.0, high=0.5, high_open=True)
_GAMMA = Coefficient("gamma")
_ALPHA = Coefficient("alpha", low=0.0)
_DESIRABLE_WEIGHT = Coefficient("desirable_weight", low=0.0)
_UNDESIRABLE_WEIGHT = Coefficient("undesirable_weight", low=0.0)
_NUM_PAIRS = count("num_pairs")
_NUM_TOKENS = count("num_tokens")
_NUM_EXAMPLES = count("num_examples")


def _dpo_smoothing(kwargs) -> Coefficient:
    """rDPO divides by 1 - 2 label_smoothing, so 0.5 is out of its range."""
    return _ROBUST_SMOOTHING if kwargs.get("robust") else _SMOOTHING


class PreferenceAux(NamedTuple):
    """Per-pair metrics of a pairwise preference loss, all without gradients.

    Average them (over the pairs that count) for logging, as TRL logs ``rewards/chosen``,
    ``rewards/margins`` and ``rewards/accuracies``.

    Attributes:
      losses: the per-pair preference term (0 for pairs excluded by ``mask``).
      chosen_rewards: the implicit reward of each chosen response.
      rejected_rewards: the implicit reward of each rejected response.
      margins: ``chosen_rewards - rejected_rewards``.
      accuracy: 1.0 where the chosen reward is larger than the rejected one, else 0.0.
      nll: the NLL term on the chosen responses, already normalized (ORPO, CPO); else None.
      log_odds_ratio: ORPO's per-pair log-odds ratio; else None.
    """

    losses: jax.Array
    chosen_rewards: jax.Array
    rejected_rewards: jax.Array
    margins: jax.Array
    accuracy: jax.Array
    nll: jax.Array | None = None
    log_odds_ratio: jax.Array | None = None


class KTOAux(NamedTuple):
    """Metrics of preference.kto, all without gradients.

    Attributes:
      losses: the per-example weighted loss (0 for examples excluded by ``mask``).
      rewards: the implicit reward :math:`\\beta(\\log\\pi - \\log\\pi_{ref})` of each example.
      chosen_rewards: mean reward of the desirable examples (0 if there are none).
      rejected_rewards: mean reward of the undesirable examples (0 if there are none).
      margins: ``chosen_rewards - rejected_rewards``.
      accuracy: fraction of examples whose reward has the sign of its label (positive for
        desirable, negative for undesirable). TRL's KTO trainer logs no accuracy.
      kl: the reference point :math:`z_0` that was used.
    """

    losses: jax.Array
    rewards: jax.Array
    chosen_rewards: jax.Array
    rejected_rewards: jax.Array
    margins: jax.Array
    accuracy: jax.Array
    kl: jax.Array


# ----------------------------------------------------------------------------- helpers


_SUM_FIRST = (
    "Per-token log-probs? Sum each sequence first: `sums, lengths = "
    "preference.sequence_log_probs(token_log_probs, mask=completion_mask)`, and pass the "
    "lengths where the loss averages."
)


def _floats(named, what: str = "pair"):
    """Validates same-shape per-sequence float arrays (a scalar or one value per ``what``);
    returns them upcast to one dtype, and the dtype."""
    arrays = [as_float_array(x, name) for name, x in named]
    for (name, _), a in zip(named, arrays, strict=True):
        if a.ndim > 1:
            raise ValueError(
                f"`{name}` must hold one log-probability per sequence, shape [{what}s]; got "
                f"{describe(a)}. {_SUM_FIRST}"
            )
    first_name, first = named[0][0], arrays[0]
    for (name, _), a in zip(named[1:], arrays[1:], strict=True):
        if a.shape != first.shape:
            raise ValueError(
                f"`{name}` must have the shape of `{first_name}` {list(first.shape)}; got "
                f"{describe(a)}."
            )
    dtype = accumulation_dtype(*(a.dtype for a in arrays))
    return [a.astype(dtype) for a in arrays], dtype


def _lengths(lengths, name: str, shape, dtype, keep=None):
    """Validates per-sequence token counts (int or float, same shape); None passes through.

    A negative count is NaN (it poisons its pair). Excluded pairs get a length of 1, so that
    nothing they hold reaches the loss or its gradient.
    """
    if lengths is None:
        return None
    arr = jnp.asarray(lengths)
    if not (jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)):
        raise TypeError(f"`{name}` must hold token counts (integers); got {describe(arr)}.")
    if arr.shape != tuple(shape):
        raise ValueError(
            f"`{name}` must have one count per sequence, shape {list(shape)}; got {describe(arr)}."
        )
    arr = arr.astype(dtype)
    arr = jnp.where(arr < 0, jnp.nan, arr)
    return arr if keep is None else jnp.where(keep, arr, jnp.ones((), dtype))


def _per_token(sums, lengths):
    """``sums / lengths``; an empty sequence (length 0) averages to 0, with a 0 gradient."""
    return sums if lengths is None else safe_divide(sums, lengths)


def _count(value, coefficient: Coefficient, default, dtype):
    """A global denominator (may be traced): ``(value, ok)``; ``default`` when None."""
    if value is None:
        return default, None
    return coefficient.read_as(value, dtype)


def _pair_mask(mask, shape, what: str = "pair"):
    """A boolean mask with one entry per ``what`` (True = it counts), or None."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"`mask` must be a boolean per-{what} mask, one entry per {what} (True = the {what} "
            f"counts); got {describe(mask)}. Convert 0/1 flags with `mask > 0`."
        )
    if mask.ndim > len(shape):
        raise ValueError(
            f"`mask` {describe(mask)} has more axes than the {what}s {list(shape)}: it is a "
            f"per-{what} mask, not a token mask. Token masks belong in "
            f"`preference.sequence_log_probs(token_log_probs, mask=...)`."
        )
    return check_mask(mask, shape, to_name=f"the {what}s")


def _zero_excluded(arrays, keep, dtype):
    if keep is None:
        return arrays
    zero = jnp.zeros((), dtype)
    return [jnp.where(keep, a, zero) for a in arrays]


def _mean_over_pairs(losses, keep, num_pairs, dtype, coefficient: Coefficient = _NUM_PAIRS):
    """Sum of per-pair losses over kept pairs divided by ``num_pairs`` (or their count)."""
    zero = jnp.zeros((), dtype)
    if keep is not None:
        losses = jnp.where(keep, losses, zero)
        local = jnp.sum(keep.astype(dtype))
    else:
        local = jnp.asarray(losses.size, dtype)
    denominator, ok = _count(num_pairs, coefficient, local, dtype)
    return poison_unless(safe_divide(jnp.sum(losses), denominator), ok), losses


def _sigmoid_loss(logits, label_smoothing):
    """-(1 - e) log sigma(x) - e log sigma(-x): the (conservative) Bradley-Terry NLL."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - (
        label_smoothing * jax.nn.log_sigmoid(-logits)
    )


def _aux(losses, chosen_rewards, rejected_rewards, dtype, **extra):
    chosen_rewards, rejected_rewards = _sg(chosen_rewards), _sg(rejected_rewards)
    margins = chosen_rewards - rejected_rewards
    return PreferenceAux(
        losses=_sg(losses),
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=margins,
        accuracy=(chosen_rewards > rejected_rewards).astype(dtype),
        **{k: (None if v is None else _sg(v)) for k, v in extra.items()},
    )


def _finish(losses, keep, num_pairs, dtype, oks, chosen_rewards, rejected_rewards, **extra):
    loss, losses = _mean_over_pairs(losses, keep, num_pairs, dtype)
    for ok in oks:
        loss = poison_unless(loss, ok)
    return loss, _aux(losses, chosen_rewards, rejected_rewards, dtype, **extra)


def _reference_pairs(chosen, rejected, ref_chosen, ref_rejected, mask):
    """The four per-pair log-probabilities of a reference-relative loss, checked, with the
    excluded pairs zeroed; returns ``(arrays, dtype, keep)``."""
    names = ("chosen", "rejected", "ref_chosen", "ref_rejected")
    arrays = (chosen, rejected, ref_chosen, ref_rejected)
    floats, dtype = _floats([(f"{n}_log_probs", a) for n, a in zip(names, arrays, strict=True)])
    keep = _pair_mask(mask, floats[0].shape)
    return _zero_excluded(list(floats), keep, dtype), dtype, keep


def _reference_logits(chosen, rejected, ref_chosen, ref_rejected):
    return (chosen - ref_chosen) - (rejected - ref_rejected)


# ----------------------------------------------------------------------------- sequences


@cached_eager("num_segments")
def sequence_log_probs(
    token_log_probs: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    num_segments: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Per-sequence log-probability sums and lengths from per-token log-probs.

    .. math::
        \log \pi(y) = \sum_{t \in y} m_t \log \pi(y_t \mid y_{<t}), \qquad |y| = \sum_{t\in y} m_t

    Without ``segment_ids`` every row of ``token_log_probs`` (``[..., T]``) is one sequence.
    With ``segment_ids`` several documents are packed in one row: token ``t`` of row ``b``
    belongs to sequence ``(b, segment_ids[b, t])``, ids run over ``0 .. num_segments - 1``, and
    a negative id marks padding (if your packing uses 0 for padding, pass ``mask=ids > 0``). An
    id at or above ``num_segments`` makes its row's results NaN. Masked and padding tokens add
    exact zeros to values and gradients, whatever they hold, and a NaN in a counted token
    poisons only its own sequence. Per-sequence means are ``sums / lengths``; SimPO and ORPO
    take the lengths directly.

    The token log-probs typically come from ``log_softmax`` and a label pick, or from the fused
    ``linear_log_probs`` head; the sums are exact over micro-batches because every sequence is
    summed whole.

    Args:
      token_log_probs: ``[..., T]`` log-probabilities of the observed tokens.
      mask: optional boolean array broadcastable to ``token_log_probs`` (True = the token is
        part of the response, e.g. not the prompt and not padding).
      segment_ids: optional integer ``[..., T]`` document ids of packed rows.
      num_segments: static number of ids per row (default ``T``), the size of the last output
        axis with ``segment_ids``.

    Returns:
      ``(sums, lengths)``: ``[...]`` without ``segment_ids``, ``[..., num_segments]`` with
        them (absent segments have sum 0 and length 0). ``sums`` is in at least float32;
        ``lengths`` has the same dtype (exact integers up to 2**24 in float32).

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import preference
      >>> lp = jnp.array([[-1.0, -2.0, -0.5, -1.5]])
      >>> sums, lengths = preference.sequence_log_probs(
      ...     lp, segment_ids=jnp.array([[0, 0, 1, -1]]), num_segments=2)
      >>> print(sums, lengths)
      [[-3.  -0.5]] [[2. 1.]]

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
      Model", 2023 (sequence log-probability as the sum of token log-probabilities).
    """
    lp = as_float_array(token_log_probs, "token_log_probs")
    if lp.ndim < 1:
        raise ValueError(f"`token_log_probs` must be at least [T]; got {describe(lp)}.")
    lp = lp.astype(accumulation_dtype(lp.dtype))
    mask = check_mask(mask, lp.shape, to_name="token_log_probs")
    seg = check_segment_ids(segment_ids, lp.shape, to_name="token_log_probs")
    num_seg = resolve_num_segments(num_segments, seg, lp.shape[-1])
    sums, counts = segment_sums(lp, mask, seg, num_seg)
    if seg is None:
        return sums[..., 0], counts[..., 0]
    return sums, counts


# ----------------------------------------------------------------------------- DPO family


@cached_eager("robust")
def dpo(
    chosen_log_probs: ArrayLike,
    rejected_log_probs: ArrayLike,
    ref_chosen_log_probs: ArrayLike,
    ref_rejected_log_probs: ArrayLike,
    *,
    beta: float | jax.Array,
    label_smoothing: float | jax.Array = 0.0,
    robust: bool = False,
    mask: ArrayLike | None = None,
    num_pairs: ArrayLike | None = None,
) -> tuple[jax.Array, PreferenceAux]:
    r"""Direct Preference Optimization (sigmoid loss), with cDPO's or rDPO's label smoothing.

    With the implicit rewards :math:`r_w = \beta(\log\pi(y_w) - \log\pi_{ref}(y_w))`,
    :math:`r_l = \beta(\log\pi(y_l) - \log\pi_{ref}(y_l))` and :math:`h = (r_w - r_l)/\beta`:

    .. math::
        \ell = -(1-\varepsilon)\log\sigma(\beta h) - \varepsilon \log\sigma(-\beta h)

    the Bradley-Terry negative log-likelihood of the preference, whose labels are flipped with
    probability :math:`\varepsilon` (``label_smoothing``, cDPO). The loss is the mean over
    pairs. ``log_sigmoid`` keeps it finite for any margin. With ``label_smoothing=0`` it is
    TRL's ``loss_type="sigmoid"`` with the same ``beta``; with smoothing it is the conservative
    DPO (Mitchell, 2023) that TRL applied to that loss type before its 2026 DPO refactor.

    With ``robust=True`` it is robust DPO (rDPO, Chowdhury et al.), TRL's and Liger-Kernel's
    ``loss_type="robust"``: the flipped term changes sign and the sum is rescaled, an unbiased
    estimate of the clean loss under label noise :math:`\varepsilon < 1/2`:

    .. math::
        \ell = \frac{-(1-\varepsilon)\log\sigma(\beta h) + \varepsilon\log\sigma(-\beta h)}
        {1 - 2\varepsilon} = -\log\sigma(\beta h) - \frac{\varepsilon}{1-2\varepsilon}\,\beta h

    (evaluated in the second form). Unlike cDPO's, this loss is not bounded below.

    Args:
      chosen_log_probs: log-probability of each chosen response under the policy, the sum
        over its tokens (see :func:`sequence_log_probs`): ``[pairs]`` (or a scalar).
      rejected_log_probs: the same for the rejected responses, same shape.
      ref_chosen_log_probs: the chosen responses' log-probabilities under the reference.
      ref_rejected_log_probs: the rejected responses' log-probabilities under the reference.
      beta: :math:`\beta` > 0, the strength of the implicit KL constraint; may be traced.
      label_smoothing: :math:`\varepsilon` in [0, 0.5] (in [0, 0.5) with ``robust``); may be
        traced.
      robust: static bool: rDPO's unbiased smoothing instead of cDPO's.
      mask: optional boolean per pair; False excludes the pair (its loss is 0 with a 0
        gradient, even for NaN inputs) and from the default denominator.
      num_pairs: the denominator of the mean (default: the number of pairs that count). Pass
        the full batch's number of pairs to every micro-batch and the sum of the micro-batch
        losses is the full-batch loss. May be traced.

    Returns:
      ``(loss, aux)``: the scalar mean loss and a :class:`PreferenceAux` (rewards
        :math:`r_w, r_l`, margins, accuracy, per-pair losses).

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import preference
      >>> loss, aux = preference.dpo(jnp.array([-5.0, -7.0]), jnp.array([-6.0, -6.5]),
      ...                            jnp.array([-5.5, -7.0]), jnp.array([-5.5, -7.0]), beta=0.1)
      >>> print(round(float(loss), 4), aux.accuracy)
      0.6814 [1. 0.]

    References:
      Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
      Model", 2023.

      Mitchell, "A Note on DPO with Noisy Preferences & Relationship to IPO", 2023 (cDPO).

      Chowdhury, Kini and Natarajan, "Provably Robust DPO: Aligning Language Models with Noisy
      Feedback", 2024 (rDPO).
    """
    if not isinstance(robust, bool):
        raise TypeError(f"`robust` must be a Python bool; got {robust!r}.")
    (c, r, rc, rr), dtype, keep = _reference_pairs(
        chosen_log_probs, rejected_log_probs, ref_chosen_log_probs, ref_rejected_log_probs, mask
    )
    beta, ok_b = _BETA.read(beta)
    eps, ok_e = _dpo_smoothing({"robust": robust}).read(label_smoothing)
    h = _reference_logits(c, r, rc, rr)
    if robust:
        losses = -jax.nn.log_sigmoid(beta * h) - eps / (1.0 - 2.0 * eps) * (beta * h)
    else:
        losses = _sigmoid_loss(beta * h, eps)
    return _finish(losses, keep, num_pairs, dtype, (ok_b, ok_e), beta * (c - rc), beta * (r - rr))


@cached_eager()
def ipo(
    chosen_log_probs: ArrayLike,
    rejected_log_probs: ArrayLike,
    ref_chosen_log_probs: ArrayLike,
    ref_rejected_log_probs: ArrayLike,
    *,
    beta: float | jax.Array,
    chosen_lengths: ArrayLike | None = None,
    rejected_lengths: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    num_pairs: ArrayLike | None = None,
) -> tuple[jax.Array, PreferenceAux]:
    r"""Identity Preference Optimization: a squared loss that regresses the margin to 1/(2 beta).

    .. math::
        \ell = \Big(h - \frac{1}{2\beta}\Big)^2, \qquad
        h = (\log\pi(y_w) - \log\pi_{ref}(y_w)) - (\log\pi(y_l) - \log\pi_{ref}(y_l))

    Unlike DPO's sigmoid, the target margin is finite, so IPO does not push deterministic
    preferences to infinite margins. TRL's ``loss_type="ipo"`` averages each response's
    log-probabilities over its tokens first (policy and reference alike): pass
    ``chosen_lengths`` and ``rejected_lengths`` to do the same from sums, or pass averages.
    An empty response (length 0) averages to 0, the mean over nothing, with a 0 gradient
    (TRL divides by ``max(length, 1)``, which gives the same 0 for an empty response's sum of
    0); a negative length gives NaN. Here :math:`\beta` is the regularization :math:`\tau`
    of the paper.

    Args:
      chosen_log_probs: log-probability of each chosen response under the policy, the sum
        over its tokens (see :func:`sequence_log_probs`): ``[pairs]`` (or a scalar).
      rejected_log_probs: the same for the rejected responses, same shape.
      ref_chosen_log_probs: the chosen responses' log-probabilities under the reference.
      ref_rejected_log_probs: the rejected responses' log-probabilities under the reference.
      beta: :math:`\beta` > 0; may be traced.
      chosen_lengths: optional token counts of the chosen responses (averages the chosen
        log-probabilities, policy and reference).
      rejected_lengths: optional token counts of the rejected responses.
      mask: optional boolean per pair; False excludes the pair (its loss is 0 with a 0
        gradient, even for NaN inputs) and from the default denominator.
      num_pairs: the denominator of the mean (default: the number of pairs that count). Pass
        the full batch's number of pairs to every micro-batch and the sum of the micro-batch
        losses is the full-batch loss. May be traced.

    Returns:
      ``(loss, aux)``: the scalar mean loss and a :class:`PreferenceAux` (rewards
        :math:`\beta(\log\pi - \log\pi_{ref})` of the inputs as used, margins, accuracy).

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import preference
      >>> loss, _ = preference.ipo(jnp.array([-5.0]), jnp.array([-6.0]),
      ...                          jnp.array([-5.5]), jnp.array([-5.5]), beta=1.0)
      >>> print(float(loss))
      0.25

    References:
      Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
      Preferences", 2024 (IPO).
    """
    (c, r, rc, rr), dtype, keep = _reference_pairs(
        chosen_log_probs, rejected_log_probs, ref_chosen_log_probs, ref_rejected_log_probs, mask
    )
    beta, ok_b = _BETA.read(beta)
    cl = _lengths(chosen_lengths, "chosen_lengths", c.shape, dtype, keep)
    rl = _lengths(rejected_lengths, "rejected_lengths", c.shape, dtype, keep)
    c, rc = _per_token(c, cl), _per_token(rc, cl)
    r, rr = _per_token(r, rl), _per_token(rr, rl)
    h = _reference_logits(c, r, rc, rr)
    losses = jnp.square(h - 1.0 / (2.0 * beta))
    return _finish(losses, keep, num_pairs, dtype, (ok_b,), beta * (c - rc), beta * (r - rr))


@cached_eager()
def hinge(
    chosen_log_probs: ArrayLike,
    rejected_log_probs: ArrayLike,
    ref_chosen_log_probs: ArrayLike,
    ref_rejected_log_probs: ArrayLike,
    *,
    beta: float | jax.Array,
    mask: ArrayLike | None = None,
    num_pairs: ArrayLike | None = None,
) -> tuple[jax.Array, PreferenceAux]:
    r"""The hinge (SLiC) preference loss on DPO's reference-relative margin.

    .. math::
        \ell = \max(0,\; 1 - \beta h), \qquad
        h = (\log\pi(y_w) - \log\pi_{ref}(y_w)) - (\log\pi(y_l) - \log\pi_{ref}(y_l))

    Pairs whose scaled margin exceeds 1 stop contributing; :math:`1/\beta` acts as the margin
    in log-probability units. TRL's ``loss_type="hinge"``.

    Args:
      chosen_log_probs: log-probability of each chosen response under the policy, the sum
        over its tokens (see :func:`sequence_log_probs`): ``[pairs]`` (or a scalar).
      rejected_log_probs: the same for the rejected responses, same shape.
      ref_chosen_log_probs: the chosen responses' log-probabilities under the reference.
      ref_rejected_log_probs: the rejected responses' log-probabilities under the reference.
      beta: :math:`\beta` > 0; may be traced.
      mask: optional boolean per pair; False excludes the pair (its loss is 0 with a 0
        gradient, even for NaN inputs) and from the default denominator.
      num_pairs: the denominator of the mean (default: the number of pairs that count). Pass
        the full batch's number of pairs to every micro-batch and the sum of the micro-batch
        losses is the full-batch loss. May be traced.

    Returns:
      ``(loss, aux)``: the scalar mean loss and a :class:`PreferenceAux`.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import preference
      >>> loss, _ = preference.hinge(jnp.array([-5.0]), jnp.array([-6.0]),
      ...                            jnp.array([-5.5]), jnp.array([-5.5]), beta=0.5)
      >>> print(float(loss))
      0.5

    References:
      Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", 2023.
    """
    (c, r, rc, rr), dtype, keep = _reference_pairs(
        chosen_log_probs, rejected_log_probs, ref_chosen_log_probs, ref_rejected_log_probs, mask
    )
    beta, ok_b = _BETA.read(beta)
    h = _reference_logits(c, r, rc, rr)
    losses = jax.nn.relu(1.0 - beta * h)
    return _finish(losses, keep, num_pairs, dtype, (ok_b,), beta * (c - rc), beta * (r - rr))


def _averages(c, r, chosen_lengths, rejected_lengths, dtype, keep):
    cl = _lengths(chosen_lengths, "chosen_lengths", c.shape, dtype, keep)
    rl = _lengths(rejected_lengths, "rejected_lengths", c.shape, dtype, keep)
    if (cl is None) != (rl is None):
        raise ValueError(
            "Pass both `chosen_lengths` and `rejected_lengths` (the inputs are sums) or "
            "neither (the inputs are already per-token averages)."
        )
    if cl is None:
        return c, r, None
    return _per_token(c, cl), _per_token(r, rl), cl


@cached_eager()
def simpo(
    chosen_log_probs: ArrayLike,
    rejected_log_probs: ArrayLike,
    *,
    beta: float | jax.Array,
    gamma: float | jax.Array = 0.5,
    chosen_lengths: ArrayLike | None = None,
    rejected_lengths: ArrayLike | None = None,
    label_smoothing: float | jax.Array = 0.0,
    mask: ArrayLike | None = None,
    num_pairs: ArrayLike | None = None,
) -> tuple[jax.Array, PreferenceAux]:
    r"""Simple Preference Optimization: length-normalized rewards, a margin, no reference model.

    .. math::
        \ell = -(1-\varepsilon)\log\sigma(\beta(\bar\ell_w - \bar\ell_l) - \gamma)
               - \varepsilon\log\sigma(-\beta(\bar\ell_w - \bar\ell_l) + \gamma),
        \qquad \bar\ell = \frac{\log\pi(y)}{|y|}

    The reward is the average token log-probability scaled by :math:`\beta`, and :math:`\gamma`
    is the target reward margin (TRL's CPO trainer with ``loss_type="simpo"`` takes
    ``simpo_gamma`` = :math:`\gamma` and uses :math:`\gamma/\beta` in log-prob units; Liger's
    ``LigerFusedLinearSimPOLoss`` takes ``gamma`` = :math:`\gamma`). There is no reference
    model, so the signature is TRL's order without the two reference arguments. Pass sums with
    ``chosen_lengths`` and ``rejected_lengths``, or already averaged log-probs without them. An
    empty response (length 0) averages to 0; a negative length gives NaN.

    Args:
      chosen_log_probs: log-probability sums (with lengths) or per-token averages (without) of
        the chosen responses, ``[pairs]`` (or a scalar).
      rejected_log_probs: the same for the rejected responses, same shape.
      beta: :math:`\beta` > 0 (the paper uses about 2 to 10); may be traced.
      gamma: the target reward margin :math:`\gamma`; may be traced.
      chosen_lengths: token counts of the chosen responses (with ``rejected_lengths``).
      rejected_lengths: token counts of the rejected responses.
      label_smoothing: :math:`\varepsilon` in [0, 0.5]; may be traced.
      mask: optional boolean per pair; False excludes the pair (its loss is 0 with a 0
        gradient, even for NaN inputs) and from the default denominator.
      num_pairs: the denominator of the mean (default: the number of pairs that count). Pass
        the full batch's number of pairs to every micro-batch and the sum of the micro-batch
        losses is the full-batch loss. May be traced.

    Returns:
      ``(loss, aux)``: the scalar mean loss and a :class:`PreferenceAux` with rewards
        :math:`\beta \bar\ell_w` and :math:`\beta \bar\ell_l`.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import preference
      >>> loss, aux = preference.simpo(jnp.array([-10.0]), jnp.array([-12.0]), beta=2.0,
      ...     gamma=0.5, chosen_lengths=jnp.array([10]), rejected_lengths=jnp.array([8]))
      >>> print(round(float(loss), 4), aux.margins)
      0.4741 [1.]

    References:
      Meng, Xia and Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
      2024.
    """
    (c, r), dtype = _floats(
        [("chosen_log_probs", chosen_log_probs), ("rejected_log_probs", rejected_log_probs)]
    )
    beta, ok_b = _BETA.read(beta)
    gamma, ok_g = _GAMMA.read(gamma)
    eps, ok_e = _SMOOTHING.read(label_smoothing)
    keep = _pair_mask(mask, c.shape)
    c, r = _zero_excluded([c, r], keep, dtype)
    c, r, _ = _averages(c, r, chosen_lengths, rejected_lengths, dtype, keep)
    losses = _sigmoid_loss(beta * (c - r) - gamma, eps)
    return _finish(losses, keep, num_pairs, dtype, (ok_b, ok_g, ok_e), beta * c, beta * r)


def _nll(c_sums, keep, cl, num_tokens, dtype):
    """-(sum of chosen log-probs) / (chosen tokens): the chosen responses' token-mean NLL."""
    zero = jnp.zeros((), dtype)
    if keep is not None:
        c_sums = jnp.where(keep, c_sums, zero)
    if cl is None:
        local = jnp.asarray(c_sums.size, dtype) if keep is None else jnp.sum(keep.astype(dtype))
    else:
        local = jnp.sum(cl if keep is None else jnp.where(keep, cl, zero))
    denominator, ok = _count(num_tokens, _NUM_TOKENS, local, dtype)
    return poison_unless(safe_divide(-jnp.sum(c_sums), denominator), ok)


@cached_eager()
def orpo(
    chosen_log_probs: ArrayLike,
    rejected_log_probs: ArrayLike,
    *,
    beta: float | jax.Array,
    chosen_lengths: ArrayLike | None = None,
    rejected_lengths: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    num_pairs: ArrayLike | None = None,
    num_tokens: ArrayLike | None = None,
) -> tuple[jax.Array, PreferenceAux]:
    r"""Odds Ratio Preference Optimization: supervised NLL plus an odds-ratio preference term.

    With the average token log-probabilities :math:`\bar\ell = \log\pi(y)/|y|` and the odds
    :math:`\mathrm{odds}(y) = e^{\bar\ell} / (1 - e^{\bar\ell})`:

    .. math::
        L = \mathrm{NLL}(y_w) - \beta\,\frac{1}{N}\sum \log\sigma\Big(\log
            \frac{\mathrm{odds}(y_w)}{\mathrm{odds}(y_l)}\Big), \qquad
        \log\frac{\mathrm{odds}(y_w)}{\mathrm{odds}(y_l)} = (\bar\ell_w - \bar\ell_l)
            - \big(\log(1-e^{\bar\ell_w}) - \log(1-e^{\bar\ell_l})\big)

    The odds need **average** log-probabilities (a sum's exponential is a vanishing sequence
    probability): pass sums with ``chosen_lengths`` and ``rejected_lengths``, or averages
    without them (an empty response averages to 0; a negative length gives NaN).
    :math:`\log(1-e^{x})` is evaluated stably (``log(-expm1(x))`` near 0, ``log1p(-exp(x))``
    below :math:`-\log 2`); an average of exactly 0 (probability 1, infinite odds) is moved to
    the negative number of smallest normal magnitude (``-jnp.finfo(dtype).tiny``), where the
    log-odds and their gradient are finite, and a positive average (not a log-probability)
    gives NaN. Every other average is used as given. ``beta`` is the paper's :math:`\lambda`.
    No reference model: the signature is TRL's order without the reference arguments.

    **The NLL term** is the token mean over the chosen tokens passed in, :math:`-\sum
    \log\pi(y_w) / \sum |y_w|` (the mean of the averages without lengths), taken from the
    same sums as the odds. With response-only sums this is Liger-Kernel's
    ``LigerFusedLinearORPOLoss``. TRL's ``ORPOTrainer`` averages its NLL over the prompt *and*
    response tokens of the chosen sequences instead (the odds use the response only): to get
    its number, swap the NLL: ``loss - nll(sums, lengths) + nll(full_sums, full_lengths)``
    with ``nll(s, n) = -s.sum() / n.sum()`` and ``full_sums, full_lengths`` from
    :func:`sequence_log_probs` over the prompt and response tokens.

    Args:
      chosen_log_probs: log-probability sums (with lengths) or averages (without) of the chosen
        responses, ``[pairs]`` (or a scalar).
      rejected_log_probs: the same for the rejected responses.
      beta: :math:`\lambda` >= 0, the weight of the odds-ratio term; may be traced.
      chosen_lengths: token counts of the chosen responses (with ``rejected_lengths``).
      rejected_lengths: token counts of the rejected responses.
      mask: optional boolean per pair; False excludes the pair (its loss is 0 with a 0
        gradient, even for NaN inputs) and from the default denominator.
      num_pairs: the denominator of the mean (default: the number of pairs that count). Pass
        the full batch's number of pairs to every micro-batch and the sum of the micro-batch
        losses is the full-batch loss. May be traced.
      num_tokens: the NLL's denominator, the number of chosen tokens (default: the local sum
        of ``chosen_lengths``, or the number of pairs without lengths); pass the full batch's
        count when accumulating. May be traced.

    Returns:
      ``(loss, aux)``: the scalar loss and a :class:`PreferenceAux` with rewards
        :math:`\beta\bar\ell`, the per-pair odds-ratio term in ``losses``, ``log_odds_ratio``
        and the normalized ``nll``.

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import preference
      >>> loss, aux = preference.orpo(jnp.array([-0.5]), jnp.array([-1.5]), beta=0.1)
      >>> print(round(float(loss), 4), round(float(aux.log_odds_ratio[0]), 4))
      0.5171 1.6803

    References:
      Hong, Lee and Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
      2024.
    """
    (c, r), dtype = _floats(
        [("chosen_log_probs", chosen_log_probs), ("rejected_log_probs", rejected_log_probs)]
    )
    beta, ok_b = _ORPO_BETA.read(beta)
    keep = _pair_mask(mask, c.shape)
    c_sums, r_in = _zero_excluded([c, r], keep, dtype)
    ac, ar, cl = _averages(c_sums, r_in, chosen_lengths, rejected_lengths, dtype, keep)
    log_odds = (ac - ar) - (_log1mexp(ac) - _log1mexp(ar))
    ratio = jax.nn.log_sigmoid(log_odds)
    losses = -beta * ratio
    nll = _nll(c_sums, keep, cl, num_tokens, dtype)
    loss, aux = _finish(
        losses,
        keep,
        num_pairs,
        dtype,
        (ok_b,),
        beta * ac,
        beta * ar,
        nll=nll,
        log_odds_ratio=log_odds,
    )
    return loss + nll, aux


def _log1mexp(x):
    """log(1 - e^x) for x <= 0, stable at both ends; x > 0 gives NaN.

    Only x = 0 (and subnormal x, which XLA may flush to 0) moves, to the negative number of
    smallest normal magnitude: log(1 - e^x) is -inf at 0, and its derivative 1 / expm1(x) is
    still finite at that number, so the log-odds and their gradient stay finite. Every normal
    x < 0 is used as given.
    """
    tiny = jnp.finfo(x.dtype).tiny
    invalid = x > 0
    xs = jnp.where(invalid, -1.0, jnp.minimum(x, -tiny))
    near_zero = xs > -jnp.log(2.0)
    a = jnp.where(near_zero, xs, -1.0)
    b = jnp.where(near_zero, -1.0, xs)
    out = jnp.where(near_zero, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(b)))
    return jnp.where(invalid, jnp.nan, out)


@cached_eager()
def cpo(
    chosen_log_probs: ArrayLike,
    rejected_log_probs: ArrayLike,
    *,
    beta: float | jax.Array,
    alpha: float | jax.Array = 1.0,
    label_smoothing: float | jax.Array = 0.0,
    chosen_lengths: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    num_pairs: ArrayLike | None = None,
    num_tokens: ArrayLike | None = None,
) -> tuple[jax.Array, PreferenceAux]:
    r"""Contrastive Preference Optimization: DPO without a reference, plus an NLL on the chosen.

    .. math::
        L = \frac{1}{N}\sum \Big[-(1-\varepsilon)\log\sigma\big(\beta(\log\pi(y_w) -
            \log\pi(y_l))\big) - \varepsilon\log\sigma\big(-\beta(\log\pi(y_w) -
            \log\pi(y_l))\big)\Big] + \alpha\, \mathrm{NLL}(y_w)

    The reference model of DPO is replaced by a uniform one (it cancels), and the behaviour
    cloning term :math:`\alpha\,\mathrm{NLL}` keeps the policy on the preferred data. The
    preference term uses sequence sums (TRL's CPO trainer with ``loss_type="sigmoid"``); the
    NLL is the chosen responses' token mean :math:`-\sum\log\pi(y_w)/\sum|y_w|` when
    ``chosen_lengths`` is given (as TRL's CPO trainer and Liger-Kernel compute it, over the
    response tokens), else the mean over pairs of the
    inputs. No reference model: the signature is TRL's order without the reference arguments.

    Args:
      chosen_log_probs: log-probability sums of the chosen responses, ``[pairs]`` (or a
        scalar).
      rejected_log_probs: log-probability sums of the rejected responses, same shape.
      beta: :math:`\beta` > 0; may be traced.
      alpha: weight :math:`\alpha` >= 0 of the NLL term (TRL's ``cpo_alpha``); may be traced.
      label_smoothing: :math:`\varepsilon` in [0, 0.5]; may be traced.
      chosen_lengths: optional token counts of the chosen responses, for the NLL's token mean.
      mask: optional boolean per pair; False excludes the pair (its loss is 0 with a 0
        gradient, even for NaN inputs) and from the default denominator.
      num_pairs: the denominator of the mean (default: the number of pairs that count). Pass
        the full batch's number of pairs to every micro-batch and the sum of the micro-batch
        losses is the full-batch loss. May be traced.
      num_tokens: the NLL's denominator (default: the local sum of ``chosen_lengths``, or the
        number of pairs without them); pass the full batch's count when accumulating. May be
        traced.

    Returns:
      ``(loss, aux)``: the scalar loss and a :class:`PreferenceAux` with rewards
        :math:`\beta\log\pi(y)`, the per-pair preference term in ``losses`` and the normalized
        ``nll`` (before :math:`\alpha`).

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import preference
      >>> loss, aux = preference.cpo(jnp.array([-4.0]), jnp.array([-6.0]), beta=0.1,
      ...                            chosen_lengths=jnp.array([4]))
      >>> print(round(float(loss), 4), float(aux.nll))
      1.5981 1.0

    References:
      Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM
      Performance in Machine Translation", 2024.
    """
    (c, r), dtype = _floats(
        [("chosen_log_probs", chosen_log_probs), ("rejected_log_probs", rejected_log_probs)]
    )
    beta, ok_b = _BETA.read(beta)
    alpha, ok_a = _ALPHA.read(alpha)
    eps, ok_e = _SMOOTHING.read(label_smoothing)
    keep = _pair_mask(mask, c.shape)
    cl = _lengths(chosen_lengths, "chosen_lengths", c.shape, dtype, keep)
    c, r = _zero_excluded([c, r], keep, dtype)
    losses = _sigmoid_loss(beta * (c - r), eps)
    nll = _nll(c, keep, cl, num_tokens, dtype)
    loss, aux = _finish(
        losses, keep, num_pairs, dtype, (ok_b, ok_a, ok_e), beta * c, beta * r, nll=nll
    )
    return loss + alpha * nll, aux


# ----------------------------------------------------------------------------- KTO


@cached_eager()
def kto(
    log_probs: ArrayLike,
    ref_log_probs: ArrayLike,
    desirable: ArrayLike,
    *,
    beta: float | jax.Array,
    kl: ArrayLike | None = None,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    mask: ArrayLike | None = None,
    num_examples: ArrayLike | None = None,
) -> tuple[jax.Array, KTOAux]:
    r"""Kahneman-Tversky Optimization: unpaired good and bad examples against a reference point.

    With :math:`\rho = \log\pi(y) - \log\pi_{ref}(y)` and the reference point :math:`z_0`
    (``kl``, an estimate of KL(policy || reference), not differentiated and clipped at 0):

    .. math::
        \ell = \begin{cases}
            \lambda_D\,\big(1 - \sigma(\beta(\rho - z_0))\big) & y \text{ desirable} \\
            \lambda_U\,\big(1 - \sigma(\beta(z_0 - \rho))\big) & y \text{ undesirable}
        \end{cases}

    and the loss is the mean over examples, as TRL's KTO trainer computes it. Examples are not
    paired, so the signature differs from the pairwise losses: one array of log-probs, one of
    reference log-probs and a boolean ``desirable`` flag per example. TRL estimates
    :math:`z_0` as the batch mean of :math:`\log\pi - \log\pi_{ref}` on mismatched
    (prompt, completion) pairs, averaged over devices: compute it that way and pass it as
    ``kl`` (None means :math:`z_0 = 0`). Pass the same ``kl`` and the global ``num_examples``
    to every micro-batch to accumulate exactly.

    Args:
      log_probs: per-sequence log-probability sums under the policy (see
        :func:`sequence_log_probs`), ``[examples]`` (or a scalar).
      ref_log_probs: the same under the reference policy, same shape.
      desirable: boolean ``[...]``, True for desirable (chosen) examples.
      beta: :math:`\beta` > 0; may be traced.
      kl: the reference point :math:`z_0` (a scalar, or anything broadcastable to the
        examples); gradients are stopped and it is clipped at 0.
      desirable_weight: :math:`\lambda_D` >= 0; may be traced.
      undesirable_weight: :math:`\lambda_U` >= 0; may be traced.
      mask: optional boolean per example; False excludes it (its loss is 0 with a 0
        gradient, even for NaN inputs) and from the default denominator.
      num_examples: the denominator (default: the number of examples that count); may be
        traced.

    Returns:
      ``(loss, aux)``: the scalar mean loss and a :class:`KTOAux` (per-example losses and
        rewards, mean chosen and rejected rewards, margin, accuracy, the :math:`z_0` used).

    Example:
      >>> import jax.numpy as jnp
      >>> from infoloss_jax import preference
      >>> loss, aux = preference.kto(jnp.array([-4.0, -6.0]), jnp.array([-5.0, -5.0]),
      ...                            jnp.array([True, False]), beta=0.5, kl=0.2)
      >>> print(round(float(loss), 4), float(aux.margins))
      0.3778 1.0

    References:
      Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization", 2024.
    """
    (lp, ref), dtype = _floats(
        [("log_probs", log_probs), ("ref_log_probs", ref_log_probs)], what="example"
    )
    d = jnp.asarray(desirable)
    if d.dtype != jnp.bool_:
        raise TypeError(
            f"`desirable` must be a boolean array (True = desirable); got {describe(d)}."
        )
    if d.shape != lp.shape:
        raise ValueError(
            f"`desirable` must have the shape of `log_probs` {list(lp.shape)}; got {describe(d)}."
        )
    beta, ok_b = _BETA.read(beta)
    wd, ok_wd = _DESIRABLE_WEIGHT.read(desirable_weight)
    wu, ok_wu = _UNDESIRABLE_WEIGHT.read(undesirable_weight)
    if kl is None:
        z0 = jnp.zeros((), dtype)
    else:
        z0 = as_float_array(kl, "kl").astype(dtype)
        try:
            jnp.broadcast_shapes(z0.shape, lp.shape)
        except ValueError:
            raise ValueError(
                f"`kl` {describe(z0)} must be a scalar or broadcastable to `log_probs` "
                f"{list(lp.shape)}."
            ) from None
        z0 = jnp.maximum(_sg(z0), 0.0)
    keep = _pair_mask(mask, lp.shape, what="example")
    lp, ref = _zero_excluded([lp, ref], keep, dtype)
    rho = lp - ref
    signed = jnp.where(d, rho - z0, z0 - rho)
    losses = jnp.where(d, wd, wu) * jax.nn.sigmoid(-beta * signed)
    loss, losses = _mean_over_pairs(losses, keep, num_examples, dtype, _NUM_EXAMPLES)
    for ok in (ok_b, ok_wd, ok_wu):
        loss = poison_unless(loss, ok)
    rewards = _sg(beta * rho)
    counted = jnp.ones(lp.shape, bool) if keep is None else keep
    is_d = (d & counted).astype(dtype)
    is_u = (~d & counted).astype(dtype)
    chosen = safe_divide(jnp.sum(rewards * is_d), jnp.sum(is_d))
    rejected = safe_divide(jnp.sum(rewards * is_u), jnp.sum(is_u))
    right = jnp.where(d, rewards > 0, rewards < 0) & counted
    accuracy = safe_divide(jnp.sum(right.astype(dtype)), jnp.sum(counted.astype(dtype)))
    aux = KTOAux(
        losses=_sg(losses),
        rewards=rewards,
        chosen_rewards=chosen,
        rejected_rewards=rejected,
        margins=chosen - rejected,
        accuracy=accuracy,
        kl=jnp.broadcast_to(z0, ()) if z0.ndim == 0 else z0,
    )
    return loss, aux
