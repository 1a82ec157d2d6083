"""The blockwise engine: a loss as a declared spec (``_loss_spec``), the rules of one tile
(``_tiles``: statistics, merge, rows, tile gradient) and the driver with its one ``custom_vjp``
(``_blockwise``). The fused and sharded heads are thin wrappers on it.
"""
