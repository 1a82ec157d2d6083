"""Per-device memory of the vocab-parallel fused cross-entropy vs the single-device fused loss.

Compile-only (nothing runs, so full LLM-head sizes are fine on a laptop): for each head size it
compiles ``value_and_grad`` of

* ``naive``: ``hidden @ weight`` then the core integer-label cross-entropy, on one device;
* ``fused``: ``infoloss_jax.heads._fused.linear_softmax_cross_entropy`` on one device;
* ``sharded``: ``infoloss_jax.sharded.vocab_parallel_linear_cross_entropy`` (with
  ``--distill``: ``linear_forward_kl`` vs ``vocab_parallel_linear_forward_kl``) inside
  ``jax.shard_map`` with the weight split 8 ways along the vocabulary (mesh ``(8,)``) and, with
  ``--data 2``, a ``(2, 4)`` data x vocabulary mesh;

and prints ``memory_analysis()`` figures per device: temporaries, arguments and outputs (MiB),
the ratio of the sharded to the single-device fused temporaries, and which backward pass the
sharded loss ran (``backward="auto"`` by default: ``two_pass`` when a one-pass backward would
keep a float32 ``[N, D]`` or ``[D, V/d]`` gradient accumulator larger than a logits tile, else
the one-pass loop order ``tokens_outer`` or ``vocab_outer``; force one with ``--backward``).
By default it simulates 8 CPU devices (XLA_FLAGS is set before JAX is imported); on a real
8-GPU/TPU host pass ``--real-devices``.

    python benchmarks/sharded_memory.py            # Llama-3-8B and Gemma-2-2B heads, f32 + bf16
    python benchmarks/sharded_memory.py --quick    # small head, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import sys


def _parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small head (N=2048, D=512, V=32000)")
    p.add_argument("--n", type=int, help="tokens (overrides the presets)")
    p.add_argument("--d", type=int, help="hidden size")
    p.add_argument("--v", type=int, help="vocabulary size")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both")
    p.add_argument("--devices", type=int, default=8, help="vocabulary shards (default 8)")
    p.add_argument("--data", type=int, default=1, help="also split tokens over this many")
    p.add_argument("--no-naive", action="store_true", help="skip the materialized-logits baseline")
    p.add_argument("--real-devices", action="store_true", help="do not simulate CPU devices")
    p.add_argument(
        "--distill", action="store_true", help="forward KL between two heads instead of CE"
    )
    p.add_argument(
        "--backward",
        choices=["auto", "one_pass", "two_pass"],
        default="auto",
        help="backward pass of the sharded loss (default auto)",
    )
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and not ARGS.real_devices:
    n_dev = ARGS.devices * ARGS.data
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_dev}"
    ).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import infoloss_jax as il  # noqa: E402
from infoloss_jax.base._validation import accumulation_dtype  # noqa: E402
from infoloss_jax.engine._blockwise import resolve_plan as _backward_plan  # noqa: E402
from infoloss_jax.heads._fused import linear_forward_kl, linear_softmax_cross_entropy  # noqa: E402
from infoloss_jax.sharded import (  # noqa: E402
    vocab_parallel_linear_cross_entropy,
    vocab_parallel_linear_forward_kl,
)

MiB = 2**20
PRESETS = {
    "llama3-8b": (8192, 4096, 128256),
    "gemma2-2b": (8192, 2304, 256000),
}
QUICK = {"small": (2048, 512, 32000)}


def _memory(compiled):
    m = compiled.memory_analysis()
    return m.temp_size_in_bytes, m.argument_size_in_bytes, m.output_size_in_bytes


def _structs(n, d, v, dtype, shardings=(None, None, None)):
    shapes = ((n, d), (n,), (d, v))
    dtypes = (dtype, jnp.int32, dtype)
    return [
        jax.ShapeDtypeStruct(s, t, sharding=sh)
        for s, t, sh in zip(shapes, dtypes, shardings, strict=True)
    ]


def naive_memory(n, d, v, dtype):
    def loss(h, y, w):
        logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
        return il.softmax_cross_entropy_with_integer_labels(logits, y, reduction="mean")

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
    return _memory(fn.lower(*_structs(n, d, v, dtype)).compile())


def fused_memory(n, d, v, dtype):
    def loss(h, y, w):
        return linear_softmax_cross_entropy(h, y, w, reduction="mean")

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
    return _memory(fn.lower(*_structs(n, d, v, dtype)).compile())


def fused_kl_memory(n, d, v, dtype):
    def loss(h, w, th, tw):
        return linear_forward_kl(h, w, th, tw)

    structs = _structs(n, d, v, dtype)
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return _memory(fn.lower(structs[0], structs[2], structs[0], structs[2]).compile())


def naive_kl_memory(n, d, v, dtype):
    def loss(h, w, th, tw):
        dot = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
        return jnp.mean(il.forward_kl(dot(h, w), jax.lax.stop_gradient(dot(th, tw))))

    structs = _structs(n, d, v, dtype)
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return _memory(fn.lower(structs[0], structs[2], structs[0], structs[2]).compile())


def backward_plan(n, d, v, dtype, vocab_shards, data_shards, backward):
    """The backward the sharded loss runs, from the per-device sizes (same rule as the loss)."""
    local_vocab = -(-v // vocab_shards)
    return _backward_plan(
        backward,
        n // data_shards,
        d,
        local_vocab,
        dtype,
        accumulation_dtype(dtype),
        data_shards > 1,
        vocab_shards,
    )


def sharded_kl_memory(n, d, v, dtype, vocab_shards, data_shards, backward="auto"):
    mesh, data = _mesh(vocab_shards, data_shards)
    padded = vocab_shards * -(-v // vocab_shards)
    rows, cols = P(data, None), P(None, "vocab")

    def local(h, w, th, tw):
        return vocab_parallel_linear_forward_kl(
            h, w, th, tw, vocab_axis="vocab", vocab_size=v, data_axis=data, backward=backward
        )

    loss = jax.shard_map(local, mesh=mesh, in_specs=(rows, cols, rows, cols), out_specs=P())
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    h, _, w = _structs(
        n, d, padded, dtype, [NamedSharding(mesh, rows), None, NamedSharding(mesh, cols)]
    )
    return _memory(fn.lower(h, w, h, w).compile())


def _mesh(vocab_shards, data_shards):
    devices = jax.devices()[: vocab_shards * data_shards]
    if data_shards > 1:
        mesh = jax.make_mesh(
            (data_shards, vocab_shards), ("data", "vocab"), (AxisType.Auto,) * 2, devices=devices
        )
        return mesh, "data"
    return jax.make_mesh((vocab_shards,), ("vocab",), (AxisType.Auto,), devices=devices), None


def sharded_memory(n, d, v, dtype, vocab_shards, data_shards, backward="auto"):
    mesh, data = _mesh(vocab_shards, data_shards)
    padded = vocab_shards * -(-v // vocab_shards)
    specs = (P(data, None), P(data), P(None, "vocab"))

    def local(h, y, w):
        return vocab_parallel_linear_cross_entropy(
            h, y, w, vocab_axis="vocab", vocab_size=v, data_axis=data, backward=backward
        )

    loss = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
    shardings = [NamedSharding(mesh, s) for s in specs]
    return _memory(fn.lower(*_structs(n, d, padded, dtype, shardings)).compile())


def main(args):
    print(
        f"machine: {platform.platform()}, python {sys.version.split()[0]}, jax {jax.__version__}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"cpu count {os.cpu_count()}"
    )
    if args.n and args.d and args.v:
        heads = {"custom": (args.n, args.d, args.v)}
    else:
        heads = QUICK if args.quick else PRESETS
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    mesh_name = f"({args.data}, {args.devices})" if args.data > 1 else f"({args.devices},)"
    print(
        "memory_analysis per device, MiB (temp = temporaries; args/out = arguments/outputs); "
        f"sharded mesh {mesh_name}; {'forward KL' if args.distill else 'cross-entropy'}, "
        "value_and_grad wrt hidden and weight, mean reduction\n"
    )
    header = (
        f"{'head':<10} {'N':>5} {'D':>5} {'V':>6} {'dtype':<8} | {'naive temp':>10} "
        f"{'fused temp':>10} {'fused args':>10} | {'shard temp':>10} {'shard args':>10} "
        f"{'shard out':>9} | {'temp ratio':>10} {'backward':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, (n, d, v) in heads.items():
        for dtype_name in dtypes:
            dtype = jnp.dtype(dtype_name)
            if args.distill:
                naive_fn, fused_fn, shard_fn = naive_kl_memory, fused_kl_memory, sharded_kl_memory
            else:
                naive_fn, fused_fn, shard_fn = naive_memory, fused_memory, sharded_memory
            naive = (float("nan"),) * 3 if args.no_naive else naive_fn(n, d, v, dtype)
            fused = fused_fn(n, d, v, dtype)
            shard = shard_fn(n, d, v, dtype, args.devices, args.data, args.backward)
            plan = backward_plan(n, d, v, dtype, args.devices, args.data, args.backward)
            ratio = shard[0] / fused[0] if fused[0] else float("nan")
            print(
                f"{name:<10} {n:>5} {d:>5} {v:>6} {dtype_name:<8} | {naive[0] / MiB:>10.1f} "
                f"{fused[0] / MiB:>10.1f} {fused[1] / MiB:>10.1f} | {shard[0] / MiB:>10.1f} "
                f"{shard[1] / MiB:>10.1f} {shard[2] / MiB:>9.1f} | {ratio:>10.3f} {plan:>12}",
                flush=True,
            )


if __name__ == "__main__":
    main(ARGS)
