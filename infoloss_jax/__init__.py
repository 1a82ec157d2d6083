"""infoloss_jax: information-theoretic losses for JAX.

Entropy, cross-entropy, KL and Jensen-Shannon divergences as pure functions over logits:
exact, NaN-free, optax-compatible, with closed-form gradients, fused large-vocabulary heads and
sharded versions.
"""

from . import gradients as gradients
from . import policy as policy
from . import preference as preference
from . import sharded as sharded
from . import torch as torch
from .base._checked import checked as checked
from .base._checked import register_value_checks as register_value_checks
from .core._accumulation import accumulate_value_and_grad as accumulate_value_and_grad
from .core._cross_entropy import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from .core._cross_entropy import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from .core._cross_entropy import softmax_cross_entropy as softmax_cross_entropy
from .core._cross_entropy import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from .core._divergences import forward_kl as forward_kl
from .core._divergences import generalized_kl_divergence as generalized_kl_divergence
from .core._divergences import jensen_shannon as jensen_shannon
from .core._divergences import kl_divergence as kl_divergence
from .core._divergences import kl_divergence_with_log_targets as kl_divergence_with_log_targets
from .core._divergences import reverse_kl as reverse_kl
from .core._entropy import binary_entropy as binary_entropy
from .core._entropy import entropy as entropy
from .core._entropy import entropy_from_counts as entropy_from_counts
from .core._entropy import entropy_from_probs as entropy_from_probs
from .core._log_partition import log_partition as log_partition
from .core._log_partition import z_loss as z_loss
from .core._reductions import SumAndCount as SumAndCount
from .core._reductions import loss_sum_and_count as loss_sum_and_count
from .core._reductions import reduce_loss as reduce_loss
from .divergences._alpha_divergence import alpha_divergence as alpha_divergence
from .divergences._alpha_divergence import linear_alpha_divergence as linear_alpha_divergence
from .divergences._skew_kl import linear_skew_forward_kl as linear_skew_forward_kl
from .divergences._skew_kl import linear_skew_reverse_kl as linear_skew_reverse_kl
from .divergences._skew_kl import skew_forward_kl as skew_forward_kl
from .divergences._skew_kl import skew_reverse_kl as skew_reverse_kl
from .divergences._total_variation import linear_total_variation as linear_total_variation
from .divergences._total_variation import total_variation as total_variation
from .gradients._harness import ArgumentReport as ArgumentReport
from .gradients._harness import GradientReport as GradientReport
from .gradients._harness import GradientTable as GradientTable
from .gradients._harness import compare_gradients as compare_gradients
from .gradients._harness import gradient_table as gradient_table
from .heads._fused import LinearCrossEntropyAux as LinearCrossEntropyAux
from .heads._fused import linear_forward_kl as linear_forward_kl
from .heads._fused import linear_jensen_shannon as linear_jensen_shannon
from .heads._fused import linear_reverse_kl as linear_reverse_kl
from .heads._fused import linear_softmax_cross_entropy as linear_softmax_cross_entropy
from .post_training._kl_estimate import kl_estimate as kl_estimate
from .post_training._log_probs import TokenLogProbs as TokenLogProbs
from .post_training._log_probs import linear_log_probs as linear_log_probs
from .post_training._log_probs import log_probs as log_probs

__version__ = "0.1.0"

__all__ = [
    "accumulate_value_and_grad",
    "alpha_divergence",
    "ArgumentReport",
    "GradientReport",
    "GradientTable",
    "LinearCrossEntropyAux",
    "SumAndCount",
    "TokenLogProbs",
    "binary_entropy",
    "checked",
    "compare_gradients",
    "entropy",
    "entropy_from_counts",
    "entropy_from_probs",
    "forward_kl",
    "generalized_kl_divergence",
    "gradient_table",
    "jensen_shannon",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "linear_forward_kl",
    "linear_jensen_shannon",
    "linear_log_probs",
    "linear_reverse_kl",
    "linear_softmax_cross_entropy",
    "log_partition",
    "log_probs",
    "loss_sum_and_count",
    "reduce_loss",
    "register_value_checks",
    "reverse_kl",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "skew_forward_kl",
    "skew_reverse_kl",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "total_variation",
    "z_loss",
    "kl_estimate",
    "linear_total_variation",
    "linear_skew_forward_kl",
    "linear_skew_reverse_kl",
    "linear_alpha_divergence",
]
