"""Sampled-token estimators of KL(policy || reference): Schulman's k1, k2 and k3."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..base._caching import cached_eager
from ..base._typing import ArrayLike
from ..base._validation import accumulation_dtype, as_float_array, check_same_shape
from ..core._segments import check_mask

KL_ESTIMATORS = ("k1", "k2", "k3")

# Below this |log-ratio| k3 comes from its Taylor series: expm1(d) - d loses the leading
# digits there (a relative error of about 2 eps / |d|).
_SERIES_BELOW = 0.1


def check_estimator(estimator, name: str = "estimator") -> str:
    """Raises ``ValueError`` listing the estimators for an unknown one."""
    if estimator not in KL_ESTIMATORS:
        valid = ", ".join(repr(e) for e in KL_ESTIMATORS)
        raise ValueError(f"Unknown `{name}`={estimator!r}; expected one of {valid}.")
    return estimator


def expm1_minus_identity(d: jax.Array) -> jax.Array:
    """e^d - 1 - d, accurate to a few ulps for every d; +inf for d = +-inf and for large d.

    Its gradient is e^d - 1 everywhere, +inf at d = +inf (the limit), never NaN.
    """
    small = jnp.abs(d) < _SERIES_BELOW
    ds = jnp.where(small, d, jnp.zeros((), d.dtype))  # double where: no overflow in the series
    # d^2/2! + d^3/3! + ... + d^10/10!, in Horner form.
    series = jnp.zeros((), d.dtype)
    for k in range(10, 1, -1):
        series = (series + 1.0) * ds / k
    series = series * ds
    db = jnp.where(small, jnp.ones((), d.dtype), d)
    # At d = +inf, expm1(d) - d is inf - inf: subtract 0 there instead (e^d dominates).
    linear = jnp.where(jnp.isposinf(db), jnp.zeros((), d.dtype), db)
    return jnp.where(small, series, jnp.expm1(db) - linear)


def estimate_terms(log_probs: jax.Array, ref_log_probs: jax.Array, estimator: str) -> jax.Array:
    """The per-token estimator on already validated, upcast and masked arrays."""
    log_ratio = ref_log_probs - log_probs  # log r/q
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    return expm1_minus_identity(log_ratio)


@cached_eager
def kl_estimate(
    log_probs: ArrayLike,
    ref_log_probs: ArrayLike,
    *,
    estimator: str = "k3",
    mask: ArrayLike | None = None,
) -> jax.Array:
    r"""Per-token estimate of KL(policy || reference) from the log-probs of sampled tokens.

    With a token :math:`x \sim q` sampled from the policy :math:`q`, and :math:`d = \log r(x) -
    \log q(x)` its log-ratio to the reference policy :math:`r`:

    .. math::
        k_1 = -d = \log q(x) - \log r(x), \qquad
        k_2 = \tfrac12 d^2, \qquad
        k_3 = e^{d} - 1 - d = \frac{r(x)}{q(x)} - 1 - \log\frac{r(x)}{q(x)}

    **Values.** Under samples from :math:`q`, :math:`k_1` and :math:`k_3` are unbiased for
    :math:`\mathrm{KL}(q \,\|\, r) = \mathbb{E}_q[\log q - \log r]` (:math:`k_3` adds the
    zero-mean control variate :math:`r/q - 1`, so it is never negative and has far lower
    variance when the policies are close). :math:`k_2` is biased, but close to the KL when
    :math:`q \approx r` (it matches it to second order) and has low variance; it never goes
    negative either.

    **Gradients.** Used as a loss term, with :math:`\nabla` acting on :math:`\log q(x)` only
    (the sample itself is not differentiated), the expected per-token gradients under
    on-policy samples are

    .. math::
        \mathbb{E}_q[\nabla k_1] = \mathbb{E}_q[\nabla \log q] = 0, \qquad
        \mathbb{E}_q[\nabla k_2] = \nabla\, \mathrm{KL}(q \,\|\, r), \qquad
        \mathbb{E}_q[\nabla k_3] = \nabla\, \mathrm{KL}(r \,\|\, q)

    so ``"k1"`` as a loss only adds noise (its unbiased KL gradient needs the score-function
    form, :math:`k_1` subtracted from the reward, as in PPO-style RLHF); ``"k2"`` as a loss
    gives exactly the gradient of "k1 in the reward", the reverse KL; and ``"k3"`` as a loss
    (GRPO's choice) follows the gradient of the *forward* KL(r || q), which agrees with the
    reverse KL only to first order around :math:`q = r`. Off-policy samples (PPO's old policy)
    need an importance weight :math:`q/q_\text{old}` for any of these statements to hold, and
    the token-level gradients ignore how a token changes the distribution of later tokens.

    **Numerics.** :math:`k_3` is evaluated as ``expm1(d) - d`` with a Taylor series for
    :math:`|d| < 0.1`, so it is accurate for nearly equal policies and never rounds below 0. In
    :math:`k_3` (and :math:`k_2`) a token excluded by either side gives an honest
    :math:`+\infty`, never NaN (:math:`k_1 = -d` is then :math:`\pm\infty`): the reference
    (:math:`\log r = -\infty`, :math:`d = -\infty`, gradient 1 with respect to
    ``log_probs``) or the policy (:math:`\log q = -\infty`, :math:`d = +\infty`, gradient
    :math:`-\infty`, the limit of :math:`-(e^d - 1)`), as does a log-ratio beyond the
    floating-point range. No value is clamped (verl's ``low_var_kl`` clamps the ratio and the
    result; clamp the output yourself if you want that).

    **When to use the exact KL instead.** These estimators need nothing but the log-probs of
    the sampled tokens, which RL code already has. When both heads are at hand, the exact
    per-position KL over the whole vocabulary, :func:`infoloss_jax.linear_reverse_kl`
    (KL(student || teacher), fused, never materializing the logits) has no sampling noise and
    an exact gradient, at the cost of a second full-vocabulary head for the reference: prefer
    it for distillation-like regularization, small batches, or when the KL term dominates the
    gradient noise; prefer the estimators for cheap monitoring and for large RL batches.

    Args:
      log_probs: log q(x) of the sampled tokens under the policy, any shape.
      ref_log_probs: log r(x) of the same tokens under the reference policy, same shape.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (the default, GRPO's).
      mask: optional boolean array broadcastable to ``log_probs``; masked tokens give 0, with
        a 0 gradient, whatever their (possibly NaN) log-probs.

    Returns:
      The per-token estimates, with the shape of ``log_probs``, in at least float32. Reduce
        them with the same normalization as the rest of the loss.

    Example:
      >>> import jax.numpy as jnp
      >>> import infoloss_jax as il
      >>> lp, ref = jnp.log(jnp.array([0.5, 0.25])), jnp.log(jnp.array([0.25, 0.5]))
      >>> print([round(float(k), 4) for k in il.kl_estimate(lp, ref, estimator="k1")])
      [0.6931, -0.6931]
      >>> print([round(float(k), 4) for k in il.kl_estimate(lp, ref)])
      [0.1931, 0.3069]

    References:
      Schulman, "Approximating KL Divergence", blog post, 2020
      (http://joschu.net/blog/kl-approx.html).

      Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
      Models", 2024 (k3 in GRPO's loss).

      Liu, Liu, Chen and Liu, "Rethinking KL Regularization in RLHF: From Value Estimation to
      Gradient Optimization", arXiv:2510.01555, 2025 ("k1 in reward" and "k2 as loss" are
      gradient-equivalent; "k3 as loss" is a biased approximation).

      Tang and Munos, "On a Few Pitfalls in KL Divergence Gradient Estimation for RL",
      arXiv:2506.09477, 2025.
    """
    check_estimator(estimator)
    lp = as_float_array(log_probs, "log_probs")
    ref = as_float_array(ref_log_probs, "ref_log_probs")
    check_same_shape(lp, "log_probs", ref, "ref_log_probs")
    dtype = accumulation_dtype(lp.dtype, ref.dtype)
    lp, ref = lp.astype(dtype), ref.astype(dtype)
    mask = check_mask(mask, lp.shape)
    if mask is None:
        return estimate_terms(lp, ref, estimator)
    zero = jnp.zeros((), dtype)
    terms = estimate_terms(jnp.where(mask, lp, zero), jnp.where(mask, ref, zero), estimator)
    return jnp.where(mask, terms, zero)
