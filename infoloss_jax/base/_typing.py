"""The types of the public functions' inputs: arrays and the string options."""

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import jax

# What ``jnp.asarray`` takes: a JAX or NumPy array, a Python or NumPy scalar, or a (nested)
# Python sequence of numbers. ``jax.typing.ArrayLike`` leaves out the sequences, which every
# public function here accepts (it converts its inputs with ``jnp.asarray``).
ArrayLike: TypeAlias = jax.typing.ArrayLike | Sequence[Any]

# The string options, as the type checker sees them (the functions also check them at run time).
Reduction: TypeAlias = Literal["none", "sum", "mean", "batchmean"]
# The per-sequence reductions of `reduce_loss` (packed sequences); "sequence_mean" is GRPO's.
SequenceReduction: TypeAlias = Literal["per_sequence_sum", "per_sequence_mean", "sequence_mean"]
WeightLayout: TypeAlias = Literal["dv", "vd"]
Backward: TypeAlias = Literal["auto", "one_pass", "two_pass", "in_forward", "rows", "fast"]
