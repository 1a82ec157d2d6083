"""A user's script that the type checker reads (CI runs pyright on it; pytest does not collect it).

Python lists, NumPy arrays, Python numbers and JAX arrays are all accepted where an array is
expected, and every loss returns a ``jax.Array``. Running it also checks the calls at run time.
"""

from typing import assert_type

import jax
import jax.numpy as jnp
import numpy as np

import infoloss_jax as il
from infoloss_jax import policy, preference
from infoloss_jax import torch as il_torch

# Array-likes in.
assert_type(il.entropy_from_counts([2, 2, 4]), jax.Array)
assert_type(il.entropy_from_counts(np.array([2, 2, 4]), base=2.0), jax.Array)
assert_type(il.entropy([[0.0, 1.0, 2.0]]), jax.Array)
assert_type(il.entropy_from_probs([0.25, 0.75]), jax.Array)
assert_type(il.binary_entropy(0.3), jax.Array)
assert_type(il.log_partition([[1.0, 2.0]]), jax.Array)
assert_type(il.z_loss(np.zeros((2, 3))), jax.Array)
assert_type(il.softmax_cross_entropy_with_integer_labels([[1.0, 2.0]], [1]), jax.Array)
assert_type(il.softmax_cross_entropy_with_integer_labels([[1.0, 2.0]], [1], -1), jax.Array)
assert_type(il.softmax_cross_entropy([[1.0, 2.0]], [[0.5, 0.5]]), jax.Array)
assert_type(il.sigmoid_binary_cross_entropy([0.5, -1.0], [1.0, 0.0]), jax.Array)
assert_type(il.kl_divergence([[-0.7, -0.7]], [[0.5, 0.5]]), jax.Array)
assert_type(il.forward_kl([[0.0, 1.0]], [[1.0, 0.0]], temperature=2.0), jax.Array)
assert_type(il.reverse_kl([[0.0, 1.0]], [[1.0, 0.0]]), jax.Array)
assert_type(il.jensen_shannon([[0.0, 1.0]], [[1.0, 0.0]], beta=0.5), jax.Array)
assert_type(il.kl_estimate([-1.0, -2.0], [-1.5, -2.0], estimator="k3"), jax.Array)

# The fused head takes JAX arrays or NumPy arrays; a [V, D] table with its layout named.
hidden = np.ones((4, 3), np.float32)
table = jnp.ones((5, 3))
loss = il.linear_softmax_cross_entropy(hidden, [0, 1, 2, 3], table, weight_layout="vd")
# Its return type depends on ``return_aux`` (the loss, or the loss and its aux): narrow it.
assert isinstance(loss, jax.Array)
assert_type(loss, jax.Array)

# Issue 21: the default calls return arrays, whatever the flags could make them return.
h, t, w, z = (
    np.ones((4, 3), np.float32),
    jnp.array([0, 1, 2, 3]),
    jnp.ones((3, 5)),
    jnp.ones((4, 5)),
)
il.linear_softmax_cross_entropy(h, t, w).mean()
il.log_probs(z, t).mean()
il.linear_log_probs(h, t, w).sum()
# With the entropy: a NamedTuple that unpacks as a pair.
token = il.log_probs(z, t, with_entropy=True)
assert_type(token, il.TokenLogProbs)
assert_type(token.entropy, jax.Array)
lp, ent = il.linear_log_probs(h, t, w, with_entropy=True)
assert_type(lp, jax.Array)
assert_type(il.reduce_loss(lp, reduction="sequence_mean"), jax.Array)
assert_type(il.loss_sum_and_count(lp).loss_count, jax.Array)

# A scheduled coefficient may be a JAX scalar as well as a Python float.
chosen, rejected = jnp.array([-4.0]), jnp.array([-6.0])
value, aux = preference.dpo(chosen, rejected, [-5.0], [-5.0], beta=jnp.float32(0.1))
assert_type(value, jax.Array)
pg_loss, pg_aux = policy.clipped_surrogate([[-1.0, -2.0]], [[-1.1, -2.0]], [1.0], clip_low=0.2)
assert_type(pg_loss, jax.Array)

# The PyTorch-named functions.
assert_type(il_torch.cross_entropy([[1.0, 2.0]], [1]), jax.Array)
assert_type(il_torch.cross_entropy([[1.0, 2.0]], [1], label_smoothing=0.1), jax.Array)

# A checked loss keeps working on the same inputs.
checked_entropy = il.checked(il.entropy)
checked_entropy(jnp.array([[0.0, 1.0]]))
