"""Core losses on materialized logits vs optax or plain autodiff: value_and_grad speed, memory.

    python benchmarks/core_losses.py            # [2048, 32768] float32
    python benchmarks/core_losses.py --quick    # [256, 4096]

Each pair computes value_and_grad of the mean loss w.r.t. the logits (both arguments for the
forward KL): integer-label cross-entropy and soft-label cross-entropy against optax, entropy and
forward KL against plain autodiff of the textbook formula. Ours should be no slower. The
integer-label CE with ``ignore_index``, ``label_smoothing`` and ``z_loss`` together is compared
with the same function without options (target: at most 1.1x, no ``[N, V]`` temporaries), and
with the same math written by hand on optax and jax.nn primitives (autodiff). The temp columns are
XLA's compile-time temporaries of each value_and_grad (outputs not included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from _common import machine, parser, ratio, table, temp_bytes, time_interleaved

import infoloss_jax as il


def plain_entropy(z):
    log_p = jax.nn.log_softmax(z)
    return jnp.mean(-jnp.sum(jnp.exp(log_p) * log_p, axis=-1))


def plain_options_ce(z, labels, ignore_index=-100, eps=0.1, z_loss=1e-4):
    """ignore_index + label smoothing + z-loss, mean over the kept rows, by hand."""
    kept = labels != ignore_index
    safe = jnp.where(kept, labels, 0)
    log_q = jax.nn.log_softmax(z)
    nll = optax.softmax_cross_entropy_with_integer_labels(z, safe)
    smooth = -jnp.mean(log_q, axis=-1)
    lse = jax.nn.logsumexp(z, axis=-1)
    loss = (1.0 - eps) * nll + eps * smooth + z_loss * jnp.square(lse)
    return jnp.sum(jnp.where(kept, loss, 0.0)) / jnp.maximum(jnp.sum(kept), 1)


def plain_forward_kl(z, t):
    log_q, log_p = jax.nn.log_softmax(z), jax.nn.log_softmax(t)
    return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    n, v = (256, 4096) if args.quick else (2048, 32768)
    reps = args.reps or (3 if args.quick else 15)
    print(machine())
    keys = jax.random.split(jax.random.key(0), 3)
    z = jax.random.normal(keys[0], (n, v), jnp.float32) * 2
    t = jax.random.normal(keys[1], (n, v), jnp.float32) * 2
    y = jax.random.randint(keys[2], (n,), 0, v)
    soft = jax.nn.softmax(t)
    y_ignored = y.at[::8].set(-100)  # the no-options path reads these as out of range (NaN)

    pairs = {
        "integer-label CE": (
            lambda z: il.softmax_cross_entropy_with_integer_labels(z, y, reduction="mean"),
            lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
            "optax",
            (z,),
        ),
        "integer-label CE, ignore_index + smoothing + z-loss": (
            lambda z: il.softmax_cross_entropy_with_integer_labels(
                z, y_ignored, ignore_index=-100, label_smoothing=0.1, z_loss=1e-4, reduction="mean"
            ),
            lambda z: il.softmax_cross_entropy_with_integer_labels(z, y_ignored, reduction="mean"),
            "ours, no options",
            (z,),
        ),
        "integer-label CE, the same options": (
            lambda z: il.softmax_cross_entropy_with_integer_labels(
                z, y_ignored, ignore_index=-100, label_smoothing=0.1, z_loss=1e-4, reduction="mean"
            ),
            lambda z: plain_options_ce(z, y_ignored),
            "by hand (optax)",
            (z,),
        ),
        "soft-label CE": (
            lambda z: il.softmax_cross_entropy(z, soft, reduction="mean"),
            lambda z: optax.softmax_cross_entropy(z, soft).mean(),
            "optax",
            (z,),
        ),
        "entropy": (lambda z: jnp.mean(il.entropy(z)), plain_entropy, "plain autodiff", (z,)),
        "forward KL": (
            lambda z, t: jnp.mean(il.forward_kl(z, t)),
            plain_forward_kl,
            "plain autodiff",
            (z, t),
        ),
    }
    fns, fn_args = {}, {}
    for name, (ours, theirs, _, xs) in pairs.items():
        argnums = tuple(range(len(xs)))
        fns[f"{name} ours"] = jax.jit(jax.value_and_grad(ours, argnums))
        fns[f"{name} ref"] = jax.jit(jax.value_and_grad(theirs, argnums))
        fn_args[f"{name} ours"] = fn_args[f"{name} ref"] = xs
    times = time_interleaved(fns, fn_args, reps)
    temp_mib = {
        name: temp_bytes(fn.lower(*fn_args[name]).compile()) / 2**20 for name, fn in fns.items()
    }
    rows = [
        [
            name,
            ref,
            f"{1e3 * times[f'{name} ours']:.1f}",
            f"{1e3 * times[f'{name} ref']:.1f}",
            ratio(times[f"{name} ours"], times[f"{name} ref"]),
            f"{temp_mib[f'{name} ours']:.1f}",
            f"{temp_mib[f'{name} ref']:.1f}",
        ]
        for name, (_, _, ref, _) in pairs.items()
    ]
    print(f"\nvalue_and_grad on [{n}, {v}] float32, median of {reps}")
    headers = ["loss", "reference", "ours ms", "ref ms", "ours/ref", "ours temp MiB", "ref temp"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
