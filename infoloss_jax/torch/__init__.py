r"""PyTorch's loss functions: PyTorch's names, arguments, defaults, layouts and reductions.

For porting PyTorch training code: each function here gives the same numbers as its namesake in
``torch.nn.functional`` (checked against golden numbers made by torch itself), including the
parts that surprise people:

* The class dimension is **dimension 1**: ``input`` is ``[C]`` (unbatched), ``[N, C]`` or
  ``[N, C, d1, ...]``, and index targets are ``[]``, ``[N]`` or ``[N, d1, ...]``.
* ``reduction="mean"`` of :func:`cross_entropy` and :func:`nll_loss` with index targets and a
  class ``weight`` divides by :math:`\sum_i w_{y_i}` over non-ignored examples, while
  probability targets divide by the number of examples.
* :func:`kl_div` takes **log-probabilities** as ``input`` and computes KL(target || input); its
  ``reduction="mean"`` is the mean over *all elements*, and only ``"batchmean"`` gives the
  mathematical KL averaged over the batch.
* :func:`binary_cross_entropy` clamps each log at -100, and an ``input`` or ``target``
  outside [0, 1] gives NaN for that element (torch raises; :func:`infoloss_jax.checked`
  raises too).

The index-target cross-entropy and the logits binary cross-entropy are thin layout adapters
over :func:`infoloss_jax.softmax_cross_entropy_with_integer_labels` and
:func:`infoloss_jax.sigmoid_binary_cross_entropy`, so there is one implementation of each formula.

Edge cases follow torch: a ``"mean"`` over nothing (an empty batch, every target ignored,
class weights of the targets summing to 0) is NaN, an empty ``"sum"`` is 0, NaN in a logit
poisons its example, and label smoothing reaches ``-inf`` logits (giving ``inf``). The few
differences that remain, each where torch raises on values (JAX cannot inside ``jit``: the
example becomes NaN, and :func:`infoloss_jax.checked` raises) or where a NaN would hide a valid
zero, are listed with their reasons in the migration guide ("infoloss_jax.torch vs PyTorch").
"""

from ._layer import binary_cross_entropy as binary_cross_entropy
from ._layer import binary_cross_entropy_with_logits as binary_cross_entropy_with_logits
from ._layer import cross_entropy as cross_entropy
from ._layer import kl_div as kl_div
from ._layer import nll_loss as nll_loss

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "kl_div",
    "nll_loss",
]
