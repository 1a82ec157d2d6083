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
from ._accumulation import accumulate_value_and_grad as accumulate_value_and_grad
from ._checked import checked as checked
from ._checked import register_value_checks as register_value_checks
from ._cross_entropy import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from ._cross_entropy import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from ._cross_entropy import softmax_cross_entropy as softmax_cross_entropy
from ._cross_entropy import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from ._divergences import forward_kl as forward_kl
from ._divergences import generalized_kl_divergence as generalized_kl_divergence
from ._divergences import jensen_shannon as jensen_shannon
from ._divergences import kl_divergence as kl_divergence
from ._divergences import kl_divergence_with_log_targets as kl_divergence_with_log_targets
from ._divergences import reverse_kl as reverse_kl
from ._entropy import binary_entropy as binary_entropy
from ._entropy import entropy as entropy
from ._entropy import entropy_from_counts as entropy_from_counts
from ._entropy import entropy_from_probs as entropy_from_probs
from ._fused import LinearCrossEntropyAux as LinearCrossEntropyAux
from ._fused import linear_forward_kl as linear_forward_kl
from ._fused import linear_jensen_shannon as linear_jensen_shannon
from ._fused import linear_reverse_kl as linear_reverse_kl
from ._fused import linear_softmax_cross_entropy as linear_softmax_cross_entropy
from ._harness import ArgumentReport as ArgumentReport
from ._harness import GradientReport as GradientReport
from ._harness import GradientTable as GradientTable
from ._harness import compare_gradients as compare_gradients
from ._harness import gradient_table as gradient_table
from ._kl_estimate import kl_estimate as kl_estimate
from ._log_partition import log_partition as log_partition
from ._log_partition import z_loss as z_loss
from ._log_probs import linear_log_probs as linear_log_probs
from ._log_probs import log_probs as log_probs
from ._reductions import loss_sum_and_count as loss_sum_and_count
from ._reductions import reduce_loss as reduce_loss

__version__ = "0.1.0"

__all__ = [
    "accumulate_value_and_grad",
    "ArgumentReport",
    "GradientReport",
    "GradientTable",
    "LinearCrossEntropyAux",
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
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "z_loss",
    "kl_estimate",
]
