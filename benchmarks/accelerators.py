"""The fused cross-entropy head on accelerators: naive, the 3-GEMM floor, the exact and fast plans.

    python benchmarks/accelerators.py                         # on a GPU or TPU (under 5 min)
    python benchmarks/accelerators.py --compile-only --target h100   # any machine, see below
    python benchmarks/accelerators.py --compile-only --target v5e
    python benchmarks/accelerators.py --errors                # weight-gradient error vs float64
    python benchmarks/accelerators.py --quick [--errors]      # small sizes, any backend (smoke)

Device mode, for the Llama-3-8B (N=8192, D=4096, V=128256) and Gemma-2-2B (N=8192, D=2304,
V=256000) heads in bfloat16, ``value_and_grad`` w.r.t. hidden and weight of:
  * naive: ``optax.softmax_cross_entropy_with_integer_labels((hidden @ W).astype(f32), y).mean()``
  * floor: the three GEMMs alone (logits, ``dz @ W^T``, ``hidden^T dz``)
  * exact: ``il.linear_softmax_cross_entropy(..., backward="rows")`` (4 GEMM passes; the plan
    ``"auto"`` takes on an accelerator)
  * fast: ``backward="fast"`` (3 GEMM passes; the weight gradient accumulated in bfloat16)
and prints each one's temp memory and its share of naive's, the median time and its ratio to
naive, and the relative errors (``||x - ref|| / ||ref||``) of the loss, dx and dW against a
float32 reference at ``Precision.HIGHEST`` computed from the same bfloat16 inputs.

Compile-only mode (``--compile-only --target h100|v5e``) compiles the same functions for a
device that is not there (see ``_aot.py`` for what that needs and what it cannot tell), and
prints per variant: temp memory and its share of naive's, GEMM passes (GEMM FLOPs over one
``2 N D V`` pass), kernel launches in all (each loop's steps times its kernels per step, nested
loops multiplied), copies inside loop bodies, and each loop's trip count and kernels per step.

Errors mode (``--errors``) measures the relative error of the loss, dx and dW against a
float64 reference on whatever backend runs it (CPU here, with every bfloat16 result rounded
as on a GPU: ``--xla_allow_excess_precision=false``), at N=8192 and a reduced D and V, with
the token chunks the plans choose for the full Llama head on an H100: the bfloat16 rounding of
the weight-gradient accumulation depends on the number of chunks, not on D or V.
"""

from __future__ import annotations

import os
import sys
import time

if "--compile-only" in sys.argv:  # a deviceless compile: no GPU plugin initialisation
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--errors" in sys.argv:
    # Round every bfloat16 result as a GPU does: XLA's CPU backend otherwise keeps a bfloat16
    # value between two converts in float32 ("excess precision").
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_allow_excess_precision=false"
    ).strip()

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import HEADS, QUICK_HEADS, machine, parser, table, time_interleaved
from jax import lax

import infoloss_jax as il

PLANS = {"exact": "rows", "fast": "fast"}


def naive(h, w, y):
    logits = (h @ w).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def naive_f32_logits(h, w, y):
    logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def naive_rounded_logits(h, w, y):
    """naive with its logits rounded to bfloat16 explicitly: what a GPU's bfloat16 GEMM
    writes (XLA's CPU backend may keep a bfloat16 result in float32 between two converts)."""
    logits = lax.reduce_precision(h @ w, exponent_bits=8, mantissa_bits=7).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def exact_loss(h, w, y):
    """The mean cross-entropy in the inputs' own dtype (the float64 reference)."""
    z = h @ w
    return jnp.mean(jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, y[:, None], -1)[:, 0])


def floor(h, w, y):
    """The three GEMMs of any head: logits, then dz @ W^T and h^T dz (dz stands in the logits)."""
    del y
    z = h @ w
    return z @ w.T, h.T @ z


def fused(backward, **blocks):
    def loss(h, w, y):
        return il.linear_softmax_cross_entropy(h, y, w, backward=backward, **blocks)

    return loss


def grad_of(loss):
    return jax.value_and_grad(loss, argnums=(0, 1))


def variants(backwards, with_auto=False) -> dict:
    out = {"naive": grad_of(naive), "floor": floor}
    if with_auto:
        out["auto"] = grad_of(fused("auto"))
    for name, backward in backwards.items():
        out[name] = grad_of(fused(backward))
    return out


def specs(n, d, v, dtype):
    return (
        jax.ShapeDtypeStruct((n, d), dtype),
        jax.ShapeDtypeStruct((d, v), dtype),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )


def naive_log_probs(h, w, y):
    """sum of the label log-probabilities plus 0.01 of the entropies, from materialized logits."""
    lsm = jax.nn.log_softmax((h @ w).astype(jnp.float32), axis=-1)
    lp = jnp.take_along_axis(lsm, y[:, None], -1)[:, 0]
    return jnp.sum(lp) - 0.01 * jnp.sum(jnp.exp(lsm) * lsm)


def fused_log_probs(backward):
    def loss(h, w, y):
        lp, ent = il.linear_log_probs(h, y, w, with_entropy=True, backward=backward)
        return jnp.sum(lp) + 0.01 * jnp.sum(ent)

    return loss


def naive_forward_kl(h, w, th, tw):
    return jnp.mean(il.forward_kl((h @ w).astype(jnp.float32), (th @ tw).astype(jnp.float32)))


def fused_forward_kl(backward):
    return lambda h, w, th, tw: il.linear_forward_kl(h, w, th, tw, backward=backward)


def other_heads(heads, dtype, target, backwards):
    """linear_log_probs with entropy, and the forward KL (teacher of the same shape)."""
    import _aot

    for name, (n, d, v) in heads.items():
        h, w, y = specs(n, d, v, dtype)
        cases = {
            "log_probs + entropy": (naive_log_probs, fused_log_probs, (h, w, y)),
            "forward KL": (naive_forward_kl, fused_forward_kl, (h, w, h, w)),
        }
        for loss, (naive_fn, fused_fn, args) in cases.items():
            fns = {"naive": naive_fn, "auto": fused_fn("auto")}
            fns.update({k: fused_fn(b) for k, b in backwards.items()})
            body, base = [], None
            for label, fn in fns.items():
                compiled = _aot.compile_for(target, grad_of(fn), *args)
                info = _aot.describe(compiled, 2.0 * n * d * v)
                base = base or info["temp"]
                share = f"{100 * info['temp'] / base:.2f}%"
                passes = f"{info['gemm_passes']:.2f}"
                body.append([label, f"{info['temp'] / 2**20:.1f}", share, passes, info["launches"]])
            print(f"\n{name} {loss}, {jnp.dtype(dtype).name}, value_and_grad (h, W):")
            print(table(["variant", "temp MiB", "vs naive", "GEMM passes", "launches"], body))


# ------------------------------------------------------------------------------ compile-only
def compile_only(heads, dtype, target, backwards):
    import _aot

    print(f"compile-only for {target} (deviceless; temp and structure, no time)")
    for name, (n, d, v) in heads.items():
        args = specs(n, d, v, dtype)
        fns = {"naive (f32 logits)": grad_of(naive_f32_logits)}
        fns.update(variants(backwards, with_auto=True))
        rows, base = [], None
        for label, fn in fns.items():
            start = time.perf_counter()
            compiled = _aot.compile_for(target, fn, *args)
            info = _aot.describe(compiled, 2.0 * n * d * v)
            if label == "naive":
                base = info["temp"]
            rows.append((label, info, time.perf_counter() - start))
        print(f"\n{name} (N={n} D={d} V={v}) {jnp.dtype(dtype).name}, value_and_grad:")
        body = []
        for label, info, secs in rows:
            body.append(
                [
                    label,
                    f"{info['temp'] / 2**20:.1f}",
                    f"{100 * info['temp'] / base:.2f}%" if base else "n/a",
                    f"{info['gemm_passes']:.2f}",
                    info["launches"],
                    info["copies_in_loops"],
                    f"{secs:.0f}",
                ]
            )
        headers = [
            "variant",
            "temp MiB",
            "vs naive",
            "GEMM passes",
            "launches",
            "copies in loops",
            "compile s",
        ]
        print(table(headers, body))
        for label, info, _ in rows:
            if info["loops"]:
                print(f"  {label}: entry {info['entry_kernels']} kernels; loops:")
                for line in info["loops"]:
                    print(f"    {line}")


# ------------------------------------------------------------------------------ on a device
def _inputs(n, d, v, dtype, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(k[0], (n, d), jnp.float32).astype(dtype)
    # Logits of a trained head spread over several nats: scale so their std is about 2.
    w = (2.0 * jax.random.normal(k[1], (d, v), jnp.float32) / np.sqrt(d)).astype(dtype)
    y = jax.random.randint(k[2], (n,), 0, v)
    return h, w, y


def _reference(h, w, y, dtype):
    """value_and_grad of the cross-entropy from the same inputs, upcast, at HIGHEST precision."""

    def loss(h, w):
        with jax.default_matmul_precision("highest"):
            return naive(h, w, y)

    wide = jnp.dtype(dtype)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(h.astype(wide), w.astype(wide))


def _rel(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-300))


def _errors(out, ref) -> tuple[float, float, float]:
    (value, (dx, dw)), (ref_value, (ref_dx, ref_dw)) = out, ref
    return _rel(value, ref_value), _rel(dx, ref_dx), _rel(dw, ref_dw)


def on_device(heads, dtype, reps, backwards):
    print(machine())
    for name, (n, d, v) in heads.items():
        h, w, y = _inputs(n, d, v, dtype)
        # Each variant is compiled once; its executable gives the memory and runs the timing.
        compiled = {k: jax.jit(f).lower(h, w, y).compile() for k, f in variants(backwards).items()}
        temps = {k: c.memory_analysis().temp_size_in_bytes for k, c in compiled.items()}
        times = time_interleaved(compiled, {k: (h, w, y) for k in compiled}, reps)
        ref = _reference(h, w, y, jnp.float32)
        errs = {k: _errors(c(h, w, y), ref) for k, c in compiled.items() if k != "floor"}
        del ref
        rows = []
        for k in compiled:
            e = errs.get(k)
            rows.append(
                [
                    k,
                    f"{temps[k] / 2**20:.1f}",
                    f"{100 * temps[k] / temps['naive']:.2f}%",
                    f"{1e3 * times[k]:.2f}",
                    f"{times[k] / times['naive']:.3f}",
                    *(("", "", "") if e is None else (f"{x:.2e}" for x in e)),
                ]
            )
        print(
            f"\n{name} (N={n} D={d} V={v}) {jnp.dtype(dtype).name}, value_and_grad, "
            f"median of {reps}; errors vs float32 HIGHEST:"
        )
        headers = ["variant", "temp MiB", "vs naive", "ms", "vs naive", "loss err", "dx err"]
        print(table([*headers, "dW err"], rows), flush=True)


# ------------------------------------------------------------------------------ errors
def chunking(n, d, v, dtype, backward, target="gpu"):
    """The token chunk (and vocabulary block) a plan takes at this shape on the target."""
    from infoloss_jax.engine import _blockwise

    return _blockwise.planned_blocks(n, d, v, dtype, backward, platform=target)


def errors(n, d, v, dtype, full_head, backwards):
    """dx and dW errors against float64 at a reduced D and V, with the full head's chunking."""
    jax.config.update("jax_enable_x64", True)
    print(machine())
    big = HEADS[full_head]
    h, w, y = _inputs(n, d, v, dtype, seed=1)
    ref = jax.jit(jax.value_and_grad(exact_loss, argnums=(0, 1)))(
        h.astype(jnp.float64), w.astype(jnp.float64), y
    )
    fns = {
        "naive": grad_of(naive),
        "naive, logits rounded to bf16": grad_of(naive_rounded_logits),
        "naive (f32 logits)": grad_of(naive_f32_logits),
    }
    notes = {}
    for name, backward in backwards.items():
        blocks = chunking(*big, dtype, backward)
        notes[name] = f"backward={backward!r}, chunks of {blocks.tokens} tokens as at {full_head}"
        fns[name] = grad_of(fused(backward, token_block_size=blocks.tokens))
    rows = []
    base = None
    for name, fn in fns.items():
        out = jax.jit(fn)(h, w, y)
        le, xe, we = _errors(out, ref)
        base = base or we
        rows.append(
            [name, f"{le:.2e}", f"{xe:.2e}", f"{we:.2e}", f"{we / base:.2f}", notes.get(name, "")]
        )
    print(f"\nErrors against float64, N={n} D={d} V={v} {jnp.dtype(dtype).name}:")
    print(table(["variant", "loss err", "dx err", "dW err", "dW err / naive's", "how"], rows))


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--compile-only", action="store_true", help="deviceless compile, no time")
    p.add_argument("--target", default="h100", choices=["h100", "v5e"])
    p.add_argument("--errors", action="store_true", help="dx and dW errors vs float64")
    p.add_argument("--heads", nargs="*", default=list(HEADS), help=f"of {list(HEADS)}")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(8192, 256, 8192),
        metavar=("N", "D", "V"),
        help="--errors shape",
    )
    p.add_argument(
        "--other-heads", action="store_true", help="compile-only: log-probs and forward KL too"
    )
    p.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="NAME=BACKWARD",
        help="plans to compare (default: exact=rows fast=fast)",
    )
    args = p.parse_args()
    dtype = jnp.dtype(args.dtype)
    backwards = dict(s.split("=", 1) for s in args.plan) if args.plan else dict(PLANS)
    heads = QUICK_HEADS if args.quick else {k: HEADS[k] for k in args.heads}
    if args.compile_only:
        compile_only(heads, dtype, args.target, backwards)
        if args.other_heads:
            other_heads(heads, dtype, args.target, backwards)
    elif args.errors:
        shape = (1024, 128, 4096) if args.quick else args.shape
        errors(*shape, dtype, args.heads[0], backwards)
    else:
        if jax.default_backend() == "cpu" and not args.quick:
            raise SystemExit("device mode needs a GPU or TPU; use --compile-only or --errors")
        on_device(heads, dtype, args.reps or 5, backwards)


if __name__ == "__main__":
    main()
