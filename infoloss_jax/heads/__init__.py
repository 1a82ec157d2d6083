"""Large-vocabulary heads on the engine: fused (``linear_*``, never materializing ``[N, V]``
logits) and vocabulary-sharded (``vocab_parallel_*``, on ``jax.sharding`` meshes).

Public paths: ``infoloss_jax.linear_*`` and ``infoloss_jax.sharded``.
"""
