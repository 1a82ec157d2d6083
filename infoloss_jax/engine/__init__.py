"""The blockwise engine: the declared losses and a call's static spec (``_loss_spec``), the
rules of one tile (``_tiles``: statistics, merge, the cross-entropy's rows and tile gradient),
the divergences between two distributions (``_pairs``), and the driver with its one
``custom_vjp`` (``_blockwise``). The fused and sharded heads are thin wrappers on it.
"""
