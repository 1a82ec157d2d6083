"""Cross-cutting support every layer uses: argument checks, typing, eager caching, checked mode.

Nothing here is a loss. Private modules; the public names (``checked``) are re-exported from
:mod:`infoloss_jax`.
"""
