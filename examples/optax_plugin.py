"""Switch an optax training loop to infoloss_jax by changing one import.

    python examples/optax_plugin.py          # 5 s on a shared 2-core VM
    python examples/optax_plugin.py --tiny   # smaller sizes (the tests use it)

Part 1 runs the same small optax loop twice: once with
``optax.losses.softmax_cross_entropy_with_integer_labels`` and once with infoloss_jax's
function of the same name, and prints both loss trajectories side by side. Only the import
differs::

    from optax.losses import softmax_cross_entropy_with_integer_labels   # before
    from infoloss_jax import softmax_cross_entropy_with_integer_labels   # after

Part 2 shows what the switch buys for a language-model head: the same loss computed from the
hidden states by ``infoloss_jax.linear_softmax_cross_entropy``, which never materializes the
``[tokens, vocab]`` logits. XLA's own ``compiled.memory_analysis()`` reports the temporary
memory of a jit-compiled gradient step for both versions (compiled only, never run, so the
sizes can be realistic).

The numbers printed go to ``--out-dir`` (default ``outputs/``) as ``optax_plugin.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# --tiny: a run of seconds (the test suite's); flags given explicitly still win.
TINY = dict(steps=20, examples=256, tokens=4096, vocab=8192, d_model=32)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option with its default."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="training steps of each loop")
    p.add_argument("--examples", type=int, default=2048, help="training examples")
    p.add_argument("--classes", type=int, default=16, help="classes of the problem")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--tokens", type=int, default=8192, help="LM head: tokens per step")
    p.add_argument("--d-model", type=int, default=512, help="LM head: hidden size")
    p.add_argument("--vocab", type=int, default=32768, help="LM head: vocabulary size")
    p.add_argument("--out-dir", type=Path, default=Path("outputs"), help="where outputs go")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a small run: " + ", ".join(f"{k}={v}" for k, v in TINY.items()),
    )
    args = p.parse_args(argv)
    if args.tiny:  # parse again with the tiny defaults, so that explicit flags still win
        p.set_defaults(**TINY)
        args = p.parse_args(argv)
    return args


if __name__ == "__main__":
    parse_args()  # answers --help (and rejects bad flags) at once, before JAX is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import infoloss_jax  # noqa: E402


def make_problem(seed: int, *, n: int, features: int, classes: int):
    """A noisy linear-softmax classification problem (labels drawn from a teacher softmax)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    teacher = rng.normal(size=(features, classes)).astype(np.float32)
    logits = x @ teacher
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    y = np.array([rng.choice(classes, p=p) for p in probs], dtype=np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def train(loss_function, x, y, *, steps: int, hidden: int, seed: int) -> np.ndarray:
    """An ordinary optax loop; ``loss_function`` is the only thing that changes."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "w1": jax.random.normal(k1, (x.shape[1], hidden)) / math.sqrt(x.shape[1]),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, int(y.max()) + 1)) / math.sqrt(hidden),
        "b2": jnp.zeros(int(y.max()) + 1),
    }
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def loss_fn(params, x, y):
        logits = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
        return loss_function(logits, y).mean()

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(loss)
    return np.asarray(jax.device_get(losses))


def temp_bytes(fn, *args) -> int:
    """Temporary (scratch) memory XLA allocates for ``jit(fn)(*args)``, from the compiled HLO."""
    compiled = jax.jit(fn).lower(*args).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def lm_head_memory(tokens: int, d_model: int, vocab: int) -> tuple[int, int]:
    """Temporary bytes of value_and_grad of the LM-head loss: materialized logits vs fused."""
    hidden = jax.ShapeDtypeStruct((tokens, d_model), jnp.float32)
    weight = jax.ShapeDtypeStruct((d_model, vocab), jnp.float32)
    labels = jax.ShapeDtypeStruct((tokens,), jnp.int32)

    def materialized(h, w, y):
        return optax.losses.softmax_cross_entropy_with_integer_labels(h @ w, y).mean()

    def fused(h, w, y):
        return infoloss_jax.linear_softmax_cross_entropy(h, y, w)

    grad = lambda f: jax.value_and_grad(f, argnums=(0, 1))
    return temp_bytes(grad(materialized), hidden, weight, labels), temp_bytes(
        grad(fused), hidden, weight, labels
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    x, y = make_problem(args.seed, n=args.examples, features=32, classes=args.classes)

    # Part 1: the same loop, two imports.
    kw = dict(steps=args.steps, hidden=64, seed=args.seed)
    with_optax = train(optax.losses.softmax_cross_entropy_with_integer_labels, x, y, **kw)
    with_infoloss = train(infoloss_jax.softmax_cross_entropy_with_integer_labels, x, y, **kw)
    print(f"{'step':>5} {'optax':>10} {'infoloss_jax':>13}")
    for i in sorted({0, 1, 2, *range(9, args.steps, max(1, args.steps // 8)), args.steps - 1}):
        print(f"{i + 1:5d} {with_optax[i]:10.6f} {with_infoloss[i]:13.6f}")
    max_diff = float(np.max(np.abs(with_optax - with_infoloss)))
    print(f"largest difference over {args.steps} steps: {max_diff:.2e} (float32 round-off)\n")

    # Part 2: the fused head's memory saving.
    naive, fused = lm_head_memory(args.tokens, args.d_model, args.vocab)
    logits_bytes = 4 * args.tokens * args.vocab
    print(
        f"LM head, {args.tokens} tokens x vocab {args.vocab} (d_model {args.d_model}), float32, "
        "value_and_grad:"
    )
    print(f"  logits alone would take        {logits_bytes / 2**20:10.1f} MiB")
    print(f"  optax on materialized logits   {naive / 2**20:10.1f} MiB temporary memory")
    print(f"  infoloss_jax fused head        {fused / 2**20:10.1f} MiB temporary memory")
    print(f"  saving                         {naive / max(fused, 1):10.1f}x")
    results = {
        "optax": with_optax.tolist(),
        "infoloss_jax": with_infoloss.tolist(),
        "max_diff": max_diff,
        "naive_temp_bytes": naive,
        "fused_temp_bytes": fused,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "optax_plugin.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
