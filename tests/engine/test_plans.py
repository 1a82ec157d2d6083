"""The plans follow the platform the computation is lowered for, and the Pallas row kernel.

On this CPU machine a program can be lowered (to StableHLO, no compile) for a CUDA GPU or a
TPU: the plan then is the accelerator's, and on CUDA its row step is the Pallas (Triton)
kernel. Where the jax CUDA plugin is installed, the kernel is also compiled for an H100 that
is not there (a deviceless ahead-of-time compile, in a subprocess).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import infoloss_jax as il
from infoloss_jax.engine import _blockwise
from infoloss_jax.engine._loss_spec import make_spec

# Above one CPU tile of logits, so that every platform gets its own plan.
N, D, V = 256, 64, 16384
TRITON = "__gpu$xla.gpu.triton"


def _specs(dtype):
    return (
        jax.ShapeDtypeStruct((N, D), dtype),
        jax.ShapeDtypeStruct((D, V), dtype),
        jax.ShapeDtypeStruct((N,), jnp.int32),
    )


def _lowered(loss, platform, dtype=jnp.bfloat16):
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return grad.trace(*_specs(dtype)).lower(lowering_platforms=(platform,)).as_text()


def _cross_entropy(**options):
    return lambda h, w, y: il.linear_softmax_cross_entropy(h, y, w, **options)


def test_each_platform_lowers_its_own_plan():
    """bf16 on CPU: two passes (5 matmuls); on GPU and TPU the rows plan (4 matmuls), with
    the Pallas row kernel on CUDA only."""
    text = {p: _lowered(_cross_entropy(), p) for p in ("cpu", "cuda", "tpu")}
    assert text["cpu"].count("dot_general") == 5 and TRITON not in text["cpu"]
    assert text["cuda"].count("dot_general") == 4 and TRITON in text["cuda"]
    assert text["tpu"].count("dot_general") == 4 and TRITON not in text["tpu"]


def test_fast_plan_lowers_three_matmuls_and_the_kernel_on_cuda():
    text = _lowered(_cross_entropy(backward="fast"), "cuda")
    assert text.count("dot_general") == 3 and TRITON in text


def test_label_smoothing_runs_the_xla_row_step_on_cuda():
    """The kernel does not lower smoothing's exact branch (a variadic reduction)."""
    text = _lowered(_cross_entropy(label_smoothing=0.1), "cuda")
    assert text.count("dot_general") == 4 and TRITON not in text


def test_small_heads_share_one_plan():
    """At most one CPU tile of logits: one plan for every platform, one branch to trace."""
    small = jax.ShapeDtypeStruct((16, D), jnp.bfloat16), jax.ShapeDtypeStruct((D, 37), jnp.bfloat16)
    y = jnp.zeros((16,), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda h, w: il.linear_softmax_cross_entropy(h, y, w))(*small)
    assert "platform_index" not in str(jaxpr)


def test_accelerator_choice_at_the_llama_head():
    """The rows plan on GPU and TPU, with chunks and blocks inside the memory budget."""
    n, d, v = 8192, 4096, 128256
    bf16, f32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)
    spec = make_spec("cross_entropy", v, f32)[0]
    shape = _blockwise.Shape(n, d, v, 1, bf16, bf16, f32, True)
    kw = dict(token_block_size=None, vocab_block_size=None, axis=None, axis_size=1, padded=False)
    cfgs = _blockwise.configure(spec, shape, backward="auto", **kw)
    assert cfgs["cpu"].plan == "two_pass"
    gpu = cfgs["gpu"]
    assert gpu == cfgs["tpu"] and gpu.plan == "rows" and gpu.kernel == "auto"
    budget = _blockwise.accelerator_budget(shape)
    assert budget <= 0.02 * n * v * (2 + 4)  # 2% of the naive head's bf16 + f32 logits
    assert gpu.blocks.vocab == v and gpu.blocks.tokens * v * (4 + 2) <= budget
    assert gpu.grad_blocks is not None and gpu.grad_blocks.tokens == n
    fast = _blockwise.configure(spec, shape, backward="fast", **kw)["gpu"]
    assert fast.plan == "fast" and fast.blocks.tokens * v * 2 <= budget
    per_token = _blockwise.configure(spec, shape._replace(scalar=False), backward="fast", **kw)
    assert per_token["gpu"].plan == "rows"  # a per-token loss has no single cotangent


def _cuda_plugin_installed() -> bool:
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _cuda_plugin_installed(), reason="needs the jax CUDA plugin")
def test_row_kernel_compiles_for_an_h100():
    """A deviceless compile for an H100 (the benchmarks' _aot helpers) runs the Triton kernel."""
    root = Path(__file__).resolve().parents[2]
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(root)!r}, {str(root / "benchmarks")!r}]
        import jax, jax.numpy as jnp
        import _aot
        import infoloss_jax as il
        S = jax.ShapeDtypeStruct
        args = (S(({N}, {D}), jnp.bfloat16), S(({D}, {V}), jnp.bfloat16), S(({N},), jnp.int32))
        for backward in ("auto", "fast"):
            f = jax.value_and_grad(
                lambda h, w, y: il.linear_softmax_cross_entropy(h, y, w, backward=backward),
                argnums=(0, 1),
            )
            text = _aot.compile_for("h100", f, *args).as_text()
            assert {TRITON!r} in text, backward
        print("ok")
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
