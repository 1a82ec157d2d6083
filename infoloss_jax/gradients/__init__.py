r"""Closed-form gradients, Hessians and Hessian-vector products of the library's losses.

Every function here mirrors a loss of :mod:`infoloss_jax`: it takes the loss's own arguments and
returns the gradient of the loss, summed over examples, with respect to the logits (and, where
``argnums`` asks for it, with respect to the targets' logits). Because each example's loss depends
only on its own row, that is the per-example gradient, with the shape of the logits.

Conventions shared by all functions:

* Temperature. Losses with a ``temperature`` :math:`T` evaluate on :math:`z / T`, so the chain
  rule multiplies each closed form, written for the scaled logits, by :math:`1 / T`.
* Masks. ``where=False`` removes a class (its logit acts as :math:`-\infty`). Removed classes
  have probability 0 and receive an exact 0 gradient; the remaining classes renormalize.
* Zeros. :math:`0 \log 0 = 0` in every formula (double-``where``), so zero probabilities and
  ``-inf`` logits give finite gradients.

The softmax-based formulas (cross-entropy, entropy, the divergences between two softmax
distributions) come from the engine's declared losses (``infoloss_jax.engine._tiles`` and
``_pairs``), the same tile formulas the core, fused and sharded losses use in their custom
derivatives: one source of truth per formula. Because of that sharing, autodiff of the library's
own losses cannot check them; :func:`infoloss_jax.gradient_table` compares each one with
``jax.grad`` of an independent plain implementation of its loss instead.
"""

from ..divergences._alpha_divergence import alpha_divergence_grad as alpha_divergence_grad
from ..divergences._skew_kl import skew_forward_kl_grad as skew_forward_kl_grad
from ..divergences._skew_kl import skew_reverse_kl_grad as skew_reverse_kl_grad
from ..divergences._total_variation import total_variation_grad as total_variation_grad
from ._closed_forms import binary_entropy_grad as binary_entropy_grad
from ._closed_forms import entropy_from_probs_grad as entropy_from_probs_grad
from ._closed_forms import entropy_grad as entropy_grad
from ._closed_forms import entropy_hessian as entropy_hessian
from ._closed_forms import entropy_hvp as entropy_hvp
from ._closed_forms import forward_kl_grad as forward_kl_grad
from ._closed_forms import generalized_kl_divergence_grad as generalized_kl_divergence_grad
from ._closed_forms import jensen_shannon_grad as jensen_shannon_grad
from ._closed_forms import kl_divergence_grad as kl_divergence_grad
from ._closed_forms import (
    kl_divergence_with_log_targets_grad as kl_divergence_with_log_targets_grad,
)
from ._closed_forms import log_partition_grad as log_partition_grad
from ._closed_forms import log_probs_grad as log_probs_grad
from ._closed_forms import reverse_kl_grad as reverse_kl_grad
from ._closed_forms import sigmoid_binary_cross_entropy_grad as sigmoid_binary_cross_entropy_grad
from ._closed_forms import softmax_cross_entropy_grad as softmax_cross_entropy_grad
from ._closed_forms import softmax_cross_entropy_hessian as softmax_cross_entropy_hessian
from ._closed_forms import softmax_cross_entropy_hvp as softmax_cross_entropy_hvp
from ._closed_forms import (
    softmax_cross_entropy_with_integer_labels_grad as softmax_cross_entropy_with_integer_labels_grad,  # noqa: E501
)
from ._closed_forms import z_loss_grad as z_loss_grad

__all__ = [
    "alpha_divergence_grad",
    "binary_entropy_grad",
    "entropy_from_probs_grad",
    "entropy_grad",
    "entropy_hessian",
    "entropy_hvp",
    "forward_kl_grad",
    "generalized_kl_divergence_grad",
    "jensen_shannon_grad",
    "kl_divergence_grad",
    "kl_divergence_with_log_targets_grad",
    "log_partition_grad",
    "log_probs_grad",
    "reverse_kl_grad",
    "sigmoid_binary_cross_entropy_grad",
    "skew_forward_kl_grad",
    "skew_reverse_kl_grad",
    "softmax_cross_entropy_grad",
    "softmax_cross_entropy_hessian",
    "softmax_cross_entropy_hvp",
    "softmax_cross_entropy_with_integer_labels_grad",
    "total_variation_grad",
    "z_loss_grad",
]
