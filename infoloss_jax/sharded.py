"""Vocabulary-parallel losses on ``jax.sharding`` meshes (``jax.shard_map``).

The ``vocab_parallel_*`` functions are called INSIDE ``jax.shard_map`` on each device's slice of
the vocabulary (Megatron-LM's algorithm: no device ever holds a full ``[N, V]`` row); the
``*_on_mesh`` wrappers take whole arrays and a :class:`jax.sharding.Mesh` and build the
``shard_map`` for you. For automatic partitioning of the ordinary losses instead, give
``infoloss_jax`` functions logits with a ``NamedSharding`` under ``jax.jit``: they partition
over a sharded vocabulary axis without gathering it.
"""

from .divergences._alpha_divergence import (
    vocab_parallel_alpha_divergence as vocab_parallel_alpha_divergence,
)
from .divergences._alpha_divergence import (
    vocab_parallel_alpha_divergence_on_mesh as vocab_parallel_alpha_divergence_on_mesh,
)
from .divergences._alpha_divergence import (
    vocab_parallel_linear_alpha_divergence as vocab_parallel_linear_alpha_divergence,
)
from .divergences._alpha_divergence import (
    vocab_parallel_linear_alpha_divergence_on_mesh as vocab_parallel_linear_alpha_divergence_on_mesh,  # noqa: E501
)
from .divergences._skew_kl import (
    vocab_parallel_linear_skew_forward_kl as vocab_parallel_linear_skew_forward_kl,
)
from .divergences._skew_kl import (
    vocab_parallel_linear_skew_forward_kl_on_mesh as vocab_parallel_linear_skew_forward_kl_on_mesh,
)
from .divergences._skew_kl import (
    vocab_parallel_linear_skew_reverse_kl as vocab_parallel_linear_skew_reverse_kl,
)
from .divergences._skew_kl import (
    vocab_parallel_linear_skew_reverse_kl_on_mesh as vocab_parallel_linear_skew_reverse_kl_on_mesh,
)
from .divergences._skew_kl import vocab_parallel_skew_forward_kl as vocab_parallel_skew_forward_kl
from .divergences._skew_kl import (
    vocab_parallel_skew_forward_kl_on_mesh as vocab_parallel_skew_forward_kl_on_mesh,
)
from .divergences._skew_kl import vocab_parallel_skew_reverse_kl as vocab_parallel_skew_reverse_kl
from .divergences._skew_kl import (
    vocab_parallel_skew_reverse_kl_on_mesh as vocab_parallel_skew_reverse_kl_on_mesh,
)
from .divergences._total_variation import (
    vocab_parallel_linear_total_variation as vocab_parallel_linear_total_variation,
)
from .divergences._total_variation import (
    vocab_parallel_linear_total_variation_on_mesh as vocab_parallel_linear_total_variation_on_mesh,
)
from .divergences._total_variation import (
    vocab_parallel_total_variation as vocab_parallel_total_variation,
)
from .divergences._total_variation import (
    vocab_parallel_total_variation_on_mesh as vocab_parallel_total_variation_on_mesh,
)
from .heads._sharded import vocab_parallel_cross_entropy as vocab_parallel_cross_entropy
from .heads._sharded import (
    vocab_parallel_cross_entropy_on_mesh as vocab_parallel_cross_entropy_on_mesh,
)
from .heads._sharded import vocab_parallel_forward_kl as vocab_parallel_forward_kl
from .heads._sharded import vocab_parallel_forward_kl_on_mesh as vocab_parallel_forward_kl_on_mesh
from .heads._sharded import vocab_parallel_jensen_shannon as vocab_parallel_jensen_shannon
from .heads._sharded import (
    vocab_parallel_jensen_shannon_on_mesh as vocab_parallel_jensen_shannon_on_mesh,
)
from .heads._sharded import (
    vocab_parallel_linear_cross_entropy as vocab_parallel_linear_cross_entropy,
)
from .heads._sharded import (
    vocab_parallel_linear_cross_entropy_on_mesh as vocab_parallel_linear_cross_entropy_on_mesh,
)
from .heads._sharded import vocab_parallel_linear_forward_kl as vocab_parallel_linear_forward_kl
from .heads._sharded import (
    vocab_parallel_linear_forward_kl_on_mesh as vocab_parallel_linear_forward_kl_on_mesh,
)
from .heads._sharded import (
    vocab_parallel_linear_jensen_shannon as vocab_parallel_linear_jensen_shannon,
)
from .heads._sharded import (
    vocab_parallel_linear_jensen_shannon_on_mesh as vocab_parallel_linear_jensen_shannon_on_mesh,
)
from .heads._sharded import vocab_parallel_linear_log_probs as vocab_parallel_linear_log_probs
from .heads._sharded import (
    vocab_parallel_linear_log_probs_on_mesh as vocab_parallel_linear_log_probs_on_mesh,
)
from .heads._sharded import vocab_parallel_linear_reverse_kl as vocab_parallel_linear_reverse_kl
from .heads._sharded import (
    vocab_parallel_linear_reverse_kl_on_mesh as vocab_parallel_linear_reverse_kl_on_mesh,
)
from .heads._sharded import vocab_parallel_log_probs as vocab_parallel_log_probs
from .heads._sharded import vocab_parallel_log_probs_on_mesh as vocab_parallel_log_probs_on_mesh
from .heads._sharded import vocab_parallel_reverse_kl as vocab_parallel_reverse_kl
from .heads._sharded import vocab_parallel_reverse_kl_on_mesh as vocab_parallel_reverse_kl_on_mesh

__all__ = [
    "vocab_parallel_alpha_divergence",
    "vocab_parallel_alpha_divergence_on_mesh",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_cross_entropy_on_mesh",
    "vocab_parallel_forward_kl",
    "vocab_parallel_forward_kl_on_mesh",
    "vocab_parallel_jensen_shannon",
    "vocab_parallel_jensen_shannon_on_mesh",
    "vocab_parallel_linear_alpha_divergence",
    "vocab_parallel_linear_alpha_divergence_on_mesh",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_linear_cross_entropy_on_mesh",
    "vocab_parallel_linear_forward_kl",
    "vocab_parallel_linear_forward_kl_on_mesh",
    "vocab_parallel_linear_jensen_shannon",
    "vocab_parallel_linear_jensen_shannon_on_mesh",
    "vocab_parallel_linear_log_probs",
    "vocab_parallel_linear_log_probs_on_mesh",
    "vocab_parallel_linear_reverse_kl",
    "vocab_parallel_linear_reverse_kl_on_mesh",
    "vocab_parallel_linear_skew_forward_kl",
    "vocab_parallel_linear_skew_forward_kl_on_mesh",
    "vocab_parallel_linear_skew_reverse_kl",
    "vocab_parallel_linear_skew_reverse_kl_on_mesh",
    "vocab_parallel_linear_total_variation",
    "vocab_parallel_linear_total_variation_on_mesh",
    "vocab_parallel_log_probs",
    "vocab_parallel_log_probs_on_mesh",
    "vocab_parallel_reverse_kl",
    "vocab_parallel_reverse_kl_on_mesh",
    "vocab_parallel_skew_forward_kl",
    "vocab_parallel_skew_forward_kl_on_mesh",
    "vocab_parallel_skew_reverse_kl",
    "vocab_parallel_skew_reverse_kl_on_mesh",
    "vocab_parallel_total_variation",
    "vocab_parallel_total_variation_on_mesh",
]
