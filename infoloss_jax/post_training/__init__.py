"""Post-training losses: token log-probs and entropy, sampled KL estimators, policy-gradient
and preference losses.

Public paths: ``infoloss_jax.log_probs``, ``infoloss_jax.kl_estimate``, ``infoloss_jax.policy``
and ``infoloss_jax.preference``.
"""
