"""Declared divergence families, one module each: the family's math (a
:class:`~infoloss_jax.engine._pairs.Divergence`) and every public form of it, core
(``il.<name>``), closed-form gradient (``il.gradients.<name>_grad``), fused
(``il.linear_<name>``) and vocabulary-sharded (``il.sharded.vocab_parallel_[linear_]<name>``).

"Adding a loss" in ``docs/development.md`` says which files a new family touches.
"""
