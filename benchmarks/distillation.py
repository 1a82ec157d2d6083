"""Fused distillation heads (forward KL, reverse KL, JSD) vs naive teacher and student logits.

    python benchmarks/distillation.py            # full sizes
    python benchmarks/distillation.py --quick    # small sizes, a smoke run

Memory (compile-only): value_and_grad w.r.t. the student's hidden states and weight of
  * naive: ``il.jensen_shannon(h @ W, th @ tW).mean()`` (and the two KLs) on materialized logits
  * fused: ``il.linear_jensen_shannon(h, W, th, tW)`` (and ``linear_forward_kl``/``reverse_kl``)
for two student/teacher pairs that share a vocabulary: Llama-3.2-1B (D=2048) from Llama-3-8B
(D=4096), V=128256, and Gemma-2-2B (D=2304) from Gemma-2-9B (D=3584), V=256000; N=8192 tokens,
float32 and bfloat16. Speed: N=2048, D=256, teacher D=384, V=32768, float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from _common import (
    compile_only,
    gib,
    loop_copies_of,
    machine,
    parser,
    ratio,
    table,
    temp_bytes,
    time_interleaved,
)

import infoloss_jax as il
from infoloss_jax.heads._fused import linear_forward_kl, linear_jensen_shannon, linear_reverse_kl

PAIRS = {
    "llama3 1B<-8B": (8192, 2048, 4096, 128256),
    "gemma2 2B<-9B": (8192, 2304, 3584, 256000),
}
QUICK_PAIRS = {"small": (1024, 256, 384, 16384)}

KINDS = {
    "jsd": (il.jensen_shannon, linear_jensen_shannon),
    "forward kl": (il.forward_kl, linear_forward_kl),
    "reverse kl": (il.reverse_kl, linear_reverse_kl),
}


def naive(core):
    def loss(h, w, th, tw):
        return jnp.mean(core(h @ w, th @ tw))

    return jax.value_and_grad(loss, argnums=(0, 1))


def fused(fn):
    return jax.value_and_grad(lambda h, w, th, tw: fn(h, w, th, tw), argnums=(0, 1))


def memory(pairs, kinds):
    rows = []
    for name, (n, d, dt, v) in pairs.items():
        for dtype in (jnp.float32, jnp.bfloat16):
            specs = (
                jax.ShapeDtypeStruct((n, d), dtype),
                jax.ShapeDtypeStruct((d, v), dtype),
                jax.ShapeDtypeStruct((n, dt), dtype),
                jax.ShapeDtypeStruct((dt, v), dtype),
            )
            for kind in kinds:
                core, fn = KINDS[kind]
                base = temp_bytes(compile_only(naive(core), *specs))
                compiled = compile_only(fused(fn), *specs)
                temp = temp_bytes(compiled)
                copies = loop_copies_of(compiled, (d, v), dtype) + loop_copies_of(
                    compiled, (dt, v), dtype
                )
                rows.append(
                    [
                        name,
                        jnp.dtype(dtype).name,
                        kind,
                        gib(base),
                        gib(temp),
                        f"{100 * temp / base:.2f}%",
                        ", ".join(copies) or "none",
                    ]
                )
                print(f"  {rows[-1]}", flush=True)
    headers = ["pair", "dtype", "loss", "naive GiB", "fused GiB", "fused/naive", "W copies"]
    return table(headers, rows)


def speed(n, d, dt, v, reps):
    keys = jax.random.split(jax.random.key(0), 4)
    h = jax.random.normal(keys[0], (n, d), jnp.float32)
    w = jax.random.normal(keys[1], (d, v), jnp.float32) / jnp.sqrt(d)
    th = jax.random.normal(keys[2], (n, dt), jnp.float32)
    tw = jax.random.normal(keys[3], (dt, v), jnp.float32) / jnp.sqrt(dt)
    fns = {}
    for kind, (core, fn) in KINDS.items():
        fns[f"naive {kind}"] = jax.jit(naive(core))
        fns[f"fused {kind}"] = jax.jit(fused(fn))
    t = time_interleaved(fns, {k: (h, w, th, tw) for k in fns}, reps)
    rows = [
        [
            kind,
            f"{1e3 * t[f'naive {kind}']:.1f}",
            f"{1e3 * t[f'fused {kind}']:.1f}",
            ratio(t[f"fused {kind}"], t[f"naive {kind}"]),
        ]
        for kind in KINDS
    ]
    title = f"value_and_grad, N={n} D={d} teacher D={dt} V={v} float32, median of {reps}"
    return title + "\n" + table(["loss", "naive ms", "fused ms", "fused/naive"], rows)


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    print(machine())
    if not args.no_memory:
        print("\nTemp memory, value_and_grad (compile-only):")
        if args.quick:
            print(memory(QUICK_PAIRS, list(KINDS)))
        else:
            print(memory(PAIRS, ["jsd"]))
    if not args.no_speed:
        sizes = (512, 64, 96, 4096) if args.quick else (2048, 256, 384, 32768)
        print()
        print(speed(*sizes, args.reps or (3 if args.quick else 5)))


if __name__ == "__main__":
    main()
