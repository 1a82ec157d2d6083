"""Policy-gradient token losses for RL on language models: PPO, GRPO and their variants.

:func:`clipped_surrogate` is the clipped importance-ratio objective over sampled tokens, with
asymmetric clipping (DAPO), an optional dual clip, KL penalty and entropy bonus, named
normalizations (token mean, GRPO's sequence mean, Dr. GRPO's constant) that accumulate exactly
over micro-batches, and packed sequences. :func:`group_advantages` turns the rewards of G
samples per prompt into GRPO's group-relative advantages. Token log-probabilities come from
``log_softmax`` and a label pick or from a fused head; KL estimators to a reference policy are
:func:`infoloss_jax.kl_estimate`.
"""

from .post_training._policy import PolicyLossAux as PolicyLossAux
from .post_training._policy import clipped_surrogate as clipped_surrogate
from .post_training._policy import group_advantages as group_advantages

__all__ = ["PolicyLossAux", "clipped_surrogate", "group_advantages"]
