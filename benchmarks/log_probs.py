"""Fused per-token log-probabilities and entropy vs the naive head: temp memory and speed.

    python benchmarks/log_probs.py            # full sizes
    python benchmarks/log_probs.py --quick    # small sizes, a smoke run

The objective is the one of policy-gradient losses with an entropy bonus,
``sum(log_probs) + 0.01 * sum(entropy)``, differentiated with ``value_and_grad`` w.r.t. the hidden
states and the weight:
  * naive: ``log_softmax(hidden @ W)``, the label's entry by ``take_along_axis`` and the entropy
    ``-sum(exp(lsm) * lsm)`` from the same log-softmax
  * fused: ``il.linear_log_probs(hidden, labels, W, with_entropy=True)`` (``backward="auto"``,
    and each explicit ``backward`` with ``--backwards``)
  * "no entropy": the same two without the entropy term (``with_entropy=False``), which gives
    the cost of the entropy statistic.

Memory (compile-only, no allocation) for the Llama-3-8B head (N=8192, D=4096, V=128256) and the
Gemma-2-2B head (N=8192, D=2304, V=256000), float32 and bfloat16 inputs.

Speed at N=4096, D=256, V=32768 float32 against the naive head and the floor, the three matmuls
alone (logits, dh, dW). The functions are run round-robin, one call of each per round; the
figures are the minimum and median over rounds, and the ratios the median of the per-round
ratios (both sides of a ratio run back to back, so a busy phase of a shared machine hits them
alike). The load average is printed before and after.
"""

from __future__ import annotations

import os
import statistics

import jax
import jax.numpy as jnp
from _common import (
    chosen_heads,
    compile_only,
    gib,
    head_parser,
    loop_copies_of,
    machine,
    table,
    temp_bytes,
    time_interleaved,
)

import infoloss_jax as il

ENTROPY_WEIGHT = 0.01
NAIVE = "naive"
FLOOR = "3 matmuls (floor)"


def naive(with_entropy: bool):
    def objective(h, w, y):
        lsm = jax.nn.log_softmax((h @ w).astype(jnp.float32), axis=-1)
        lp = jnp.take_along_axis(lsm, y[:, None], axis=-1)[:, 0]
        if not with_entropy:
            return jnp.sum(lp)
        entropy = -jnp.sum(jnp.exp(lsm) * lsm, axis=-1)
        return jnp.sum(lp) + ENTROPY_WEIGHT * jnp.sum(entropy)

    return objective


def fused(with_entropy: bool, backward: str = "auto"):
    def objective(h, w, y):
        out = il.linear_log_probs(h, y, w, with_entropy=with_entropy, backward=backward)
        if not isinstance(out, tuple):
            return jnp.sum(out)
        lp, entropy = out
        return jnp.sum(lp) + ENTROPY_WEIGHT * jnp.sum(entropy)

    return objective


def variants(backwards):
    """Name -> objective: naive and fused, with and without the entropy term."""
    out = {
        NAIVE: naive(True),
        "fused (auto)": fused(True),
        "naive, no entropy": naive(False),
        "fused (auto), no entropy": fused(False),
    }
    for backward in backwards:
        out[f"fused {backward}"] = fused(True, backward)
    return out


def grad_of(objective):
    return jax.value_and_grad(objective, argnums=(0, 1))


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def memory(heads, dtypes, backwards):
    rows = []
    for name, (n, d, v) in heads.items():
        for dtype in dtypes:
            specs = (
                jax.ShapeDtypeStruct((n, d), dtype),
                jax.ShapeDtypeStruct((d, v), dtype),
                jax.ShapeDtypeStruct((n,), jnp.int32),
            )
            base = None
            for label, objective in variants(backwards).items():
                compiled = compile_only(grad_of(objective), *specs)
                temp = temp_bytes(compiled)
                base = temp if base is None else base
                rows.append(
                    [
                        name,
                        jnp.dtype(dtype).name,
                        label,
                        f"{temp:,}",
                        gib(temp),
                        f"{100 * temp / base:.2f}%",
                        ", ".join(loop_copies_of(compiled, (d, v), dtype)) or "none",
                    ]
                )
                print(f"  {rows[-1]}", flush=True)
    headers = [
        "head",
        "dtype",
        "fwd+bwd",
        "temp bytes",
        "temp GiB",
        "vs naive",
        "W copies in loops",
    ]
    return table(headers, rows)


def time_rounds(fns: dict, args: dict, rounds: int) -> dict:
    """Per-round seconds of each function, run round-robin after one warm-up call each."""
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args[name]))
    samples = [time_interleaved(fns, args, 1, warmup=0) for _ in range(rounds)]
    return {name: [s[name] for s in samples] for name in fns}


def paired(a: list[float], b: list[float]) -> str:
    return f"{statistics.median(x / y for x, y in zip(a, b, strict=True)):.3f}"


def speed(n, d, v, rounds, dtype, backwards):
    keys = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(keys[0], (n, d), jnp.float32).astype(dtype)
    w = (jax.random.normal(keys[1], (d, v), jnp.float32) / jnp.sqrt(d)).astype(dtype)
    y = jax.random.randint(keys[2], (n,), 0, v)

    def floor(h, w):
        z = h @ w
        return z @ w.T, h.T @ z

    fns = {k: jax.jit(grad_of(f)) for k, f in variants(backwards).items()}
    fns[FLOOR] = jax.jit(floor)
    args = {k: ((h, w) if k == FLOOR else (h, w, y)) for k in fns}
    before = load()
    t = time_rounds(fns, args, rounds)
    after = load()
    rows = []
    for k in fns:
        pair = "fused (auto)" if k == "fused (auto), no entropy" else None
        pair = NAIVE if k == "naive, no entropy" else pair
        rows.append(
            [
                k,
                f"{1e3 * min(t[k]):.1f}",
                f"{1e3 * statistics.median(t[k]):.1f}",
                paired(t[k], t[NAIVE]),
                paired(t[k], t[FLOOR]),
                paired(t[pair], t[k]) if pair else "",
            ]
        )
    title = (
        f"value_and_grad of sum(log_probs) + {ENTROPY_WEIGHT} * sum(entropy), N={n} D={d} V={v} "
        f"{jnp.dtype(dtype).name}, {rounds} rounds\n"
        f"before: {before}\nafter:  {after}"
    )
    headers = ["variant", "min ms", "median ms", "vs naive", "vs floor", "entropy cost"]
    return title + "\n" + table(headers, rows)


def main():
    p = head_parser((__doc__ or "").splitlines()[0])
    p.add_argument(
        "--backwards",
        nargs="*",
        default=[],
        choices=["one_pass", "two_pass"],
        help="also measure these explicit backward choices",
    )
    args = p.parse_args()
    print(machine())
    print(load())
    if not args.no_memory:
        heads = chosen_heads(args)
        print("\nTemp memory, value_and_grad (compile-only):")
        print(memory(heads, [jnp.dtype(t) for t in args.dtypes], args.backwards))
    if not args.no_speed:
        n, d, v = args.shape or ((1024, 128, 8192) if args.quick else (4096, 256, 32768))
        rounds = args.reps or (3 if args.quick else 9)
        print()
        print(speed(n, d, v, rounds, jnp.dtype(args.dtype), args.backwards))


if __name__ == "__main__":
    main()
