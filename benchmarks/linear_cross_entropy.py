"""Fused linear cross-entropy vs the naive head: XLA temp memory at LLM scale, and speed.

    python benchmarks/linear_cross_entropy.py            # full sizes
    python benchmarks/linear_cross_entropy.py --quick    # small sizes, a smoke run

Memory (compile-only, no allocation): value_and_grad w.r.t. hidden and weight of
  * naive + optax: ``optax.softmax_cross_entropy_with_integer_labels(hidden @ W, labels).mean()``
  * naive + core:  ``il.softmax_cross_entropy_with_integer_labels(hidden @ W, labels, "mean")``
  * fused:         ``il.linear_softmax_cross_entropy(hidden, labels, W)`` (``backward="auto"``),
    and each explicit ``backward`` ("one_pass": 4 matmuls and one full-size float32
    accumulator; "two_pass": 5 matmuls, tile-sized accumulators only, the automatic choice in
    half precision; "in_forward": 3 matmuls), and the tied head: the weight given as the
    ``[V, D]`` embedding table with ``weight_layout="vd"`` (no transposed copy may appear)
for the Llama-3-8B head (N=8192, D=4096, V=128256) and the Gemma-2-2B head (N=8192, D=2304,
V=256000), float32 and bfloat16 inputs. The "[D,V] arrays" column lists every array type of
The "W copies in loops" column lists weight-sized arrays of another dtype carried by the compiled
while loops (e.g. an ``f32`` copy of a ``bf16`` weight, hoisted out of the block loop); "temp /
f32 W" below 1 shows that no full float32 copy of the weight can exist at all.

Speed: value_and_grad at N=4096, D=256, V=32768 float32 against naive + optax, naive + core and
the floor, the three matmuls alone (logits, dh, dW); a loss-only call against one matmul.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from _common import (
    chosen_heads,
    compile_only,
    gib,
    head_parser,
    loop_copies_of,
    machine,
    ratio,
    table,
    temp_bytes,
    time_interleaved,
)

import infoloss_jax as il


def naive_optax(h, w, y):
    logits = (h @ w).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def naive_core(h, w, y):
    return il.softmax_cross_entropy_with_integer_labels(h @ w, y, reduction="mean")


def fused(backward, blocks=None):
    tokens, vocab = blocks or (None, None)

    def loss(h, w, y):
        return il.linear_softmax_cross_entropy(
            h, y, w, backward=backward, token_block_size=tokens, vocab_block_size=vocab
        )

    return loss


def variants(blocks):
    """The fused variants under test: automatic, each backward, and explicit block sizes."""
    out = {
        "fused (auto)": fused("auto"),
        "fused one_pass": fused("one_pass"),
        "fused two_pass": fused("two_pass"),
        "fused in_forward": fused("in_forward"),
    }
    for tokens, vocab in blocks:
        for backward in ("one_pass", "two_pass"):
            out[f"fused {backward} {tokens}x{vocab}"] = fused(backward, (tokens, vocab))
    return out


def grad_of(loss):
    return jax.value_and_grad(loss, argnums=(0, 1))


def memory(heads, dtypes, blocks):
    rows = []
    for name, (n, d, v) in heads.items():
        for dtype in dtypes:
            specs = (
                jax.ShapeDtypeStruct((n, d), dtype),
                jax.ShapeDtypeStruct((d, v), dtype),
                jax.ShapeDtypeStruct((n,), jnp.int32),
            )
            base = temp_bytes(compile_only(grad_of(naive_optax), *specs))
            fns = {"naive+optax": grad_of(naive_optax), "naive+core": grad_of(naive_core)}
            fns.update({k: grad_of(f) for k, f in variants(blocks).items()})
            tied = grad_of(
                lambda h, w, y: il.linear_softmax_cross_entropy(h, y, w, weight_layout="vd")
            )
            fns["fused tied [V, D] table"] = tied
            for label, fn in fns.items():
                args = specs
                if label.startswith("fused tied"):
                    args = (specs[0], jax.ShapeDtypeStruct((v, d), dtype), specs[2])
                compiled = compile_only(fn, *args)
                temp = temp_bytes(compiled)
                extra = loop_copies_of(compiled, (d, v), dtype)
                if label.startswith("fused tied"):
                    # No [D, V] array of any dtype may exist: the [V, D] path contracts in place.
                    text = compiled.as_text()
                    extra = [f"[{d},{v}] transpose"] if f"[{d},{v}]" in text else []
                w_f32 = 4 * d * v
                rows.append(
                    [
                        name,
                        jnp.dtype(dtype).name,
                        label,
                        gib(temp),
                        f"{100 * temp / base:.2f}%",
                        f"{temp / w_f32:.3f}",
                        ", ".join(extra) or "none",
                    ]
                )
                print(f"  {rows[-1]}", flush=True)
    return table(
        [
            "head",
            "dtype",
            "fwd+bwd",
            "temp GiB",
            "vs naive+optax",
            "temp / f32 W",
            "W copies in loops",
        ],
        rows,
    )


def speed(n, d, v, reps, dtype=jnp.float32, blocks=()):
    keys = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(keys[0], (n, d), jnp.float32).astype(dtype)
    w = (jax.random.normal(keys[1], (d, v), jnp.float32) / jnp.sqrt(d)).astype(dtype)
    y = jax.random.randint(keys[2], (n,), 0, v)

    def floor(h, w):
        z = h @ w
        return z @ w.T, h.T @ z

    fns = {
        "naive+optax": jax.jit(grad_of(naive_optax)),
        "naive+core": jax.jit(grad_of(naive_core)),
        **{k: jax.jit(grad_of(f)) for k, f in variants(blocks).items()},
        "3 matmuls (floor)": jax.jit(floor),
        "loss only, fused": jax.jit(fused("auto")),
        "1 matmul": jax.jit(lambda h, w: h @ w),
    }
    args = {k: ((h, w) if k in ("3 matmuls (floor)", "1 matmul") else (h, w, y)) for k in fns}
    t = time_interleaved(fns, args, reps)
    rows = []
    for k in fns:
        if k.startswith(("loss only", "1 matmul")):
            rows.append([k, f"{1e3 * t[k]:.1f}", "", "", ratio(t[k], t["1 matmul"])])
        else:
            rows.append(
                [
                    k,
                    f"{1e3 * t[k]:.1f}",
                    ratio(t[k], t["naive+optax"]),
                    ratio(t[k], t["3 matmuls (floor)"]),
                    "",
                ]
            )
    title = f"value_and_grad, N={n} D={d} V={v} {jnp.dtype(dtype).name}, median of {reps}"
    headers = ["variant", "ms", "vs naive+optax", "vs floor", "vs 1 matmul"]
    return title + "\n" + table(headers, rows)


def main():
    p = head_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--blocks",
        nargs="*",
        default=[],
        metavar="TxV",
        help="extra explicit block sizes, 512x4096",
    )
    args = p.parse_args()
    blocks = [tuple(int(x) for x in b.split("x")) for b in args.blocks]
    print(machine())
    if not args.no_memory:
        heads = chosen_heads(args)
        print("\nTemp memory, value_and_grad (compile-only):")
        print(memory(heads, [jnp.dtype(t) for t in args.dtypes], blocks))
    if not args.no_speed:
        n, d, v = args.shape or ((1024, 128, 8192) if args.quick else (4096, 256, 32768))
        print()
        reps = args.reps or (3 if args.quick else 7)
        print(speed(n, d, v, reps, jnp.dtype(args.dtype), blocks))


if __name__ == "__main__":
    main()
