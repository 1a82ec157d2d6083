"""The core losses over logits: entropy, cross-entropy, KL and Jensen-Shannon divergences,
the log-partition and z-loss, reductions, segments and micro-batch accumulation.

Private modules, one loss family each; the public names are re-exported from :mod:`infoloss_jax`.
"""
