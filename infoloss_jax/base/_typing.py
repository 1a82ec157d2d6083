"""The array type of the public functions' inputs."""

from collections.abc import Sequence
from typing import Any, TypeAlias

import jax

# What ``jnp.asarray`` takes: a JAX or NumPy array, a Python or NumPy scalar, or a (nested)
# Python sequence of numbers. ``jax.typing.ArrayLike`` leaves out the sequences, which every
# public function here accepts (it converts its inputs with ``jnp.asarray``).
ArrayLike: TypeAlias = jax.typing.ArrayLike | Sequence[Any]
