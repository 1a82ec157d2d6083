"""Train a vocabulary-parallel LM head on 8 (simulated) devices with infoloss_jax.sharded.

A tiny "language model" (an embedding of the previous token, one hidden layer, and an LM head
whose ``[D, V]`` weight is split along the vocabulary over the mesh axis ``"vocab"``) is trained
for a few steps with :func:`infoloss_jax.sharded.vocab_parallel_linear_cross_entropy`: the
``[tokens, V]`` logits never exist anywhere, and no device holds more than ``V / 8`` columns of
the head. Tokens are split over a ``"data"`` axis too when the mesh has one (``--mesh 2x4``).

It then prints the per-device memory of one training step (``memory_analysis`` of the compiled
step) next to the same step on one device, with the single-device fused loss and with naive
materialized logits.

By default it simulates 8 CPU devices (``XLA_FLAGS`` is set before JAX is imported). On a real
multi-GPU/TPU host, pass ``--real-devices``; on several hosts, call
``jax.distributed.initialize()`` first (see ``--distributed``) and run the same script on every
host: the mesh then spans all hosts' devices and nothing else changes.

    python examples/sharded_lm_head.py            # 8 simulated devices, mesh (8,)
    python examples/sharded_lm_head.py --mesh 2x4 # data x vocabulary
    python examples/sharded_lm_head.py --tiny     # seconds (used by the tests)

The numbers printed go to ``--out-dir`` (default ``outputs/``) as ``sharded_lm_head.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# --tiny: a run of seconds (the test suite's); flags given explicitly still win.
TINY = dict(vocab=1003, hidden=32, tokens=64, steps=3)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option with its default."""


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--mesh", default="8", help="'8' (vocabulary only) or 'DxV', e.g. '2x4'")
    p.add_argument("--vocab", type=int, default=32003, help="vocabulary size (any integer)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step")
    p.add_argument("--steps", type=int, default=20, help="training steps")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate (Adam)")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a small run in seconds: " + ", ".join(f"{k}={v}" for k, v in TINY.items()),
    )
    p.add_argument("--real-devices", action="store_true", help="do not simulate CPU devices")
    p.add_argument(
        "--distributed", action="store_true", help="call jax.distributed.initialize() first"
    )
    p.add_argument("--out-dir", type=Path, default=Path("outputs"), help="where outputs go")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.tiny:  # parse again with the tiny defaults, so that explicit flags still win
        p.set_defaults(**TINY)
        args = p.parse_args(argv)
    return args


ARGS = _parse()
if not ARGS.real_devices:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import infoloss_jax as il  # noqa: E402
from infoloss_jax.sharded import vocab_parallel_linear_cross_entropy  # noqa: E402

MiB = 2**20


def make_mesh(spec: str):
    if "x" in spec:
        data, vocab = (int(s) for s in spec.split("x"))
        return jax.make_mesh((data, vocab), ("data", "vocab"), (AxisType.Auto,) * 2), "data"
    return jax.make_mesh((int(spec),), ("vocab",), (AxisType.Auto,)), None


def init_params(key, vocab_padded, hidden):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "embed": jax.random.normal(k1, (vocab_padded, hidden)) * 0.02,
        "mlp": jax.random.normal(k2, (hidden, hidden)) / hidden**0.5,
        "head": jax.random.normal(k3, (hidden, vocab_padded)) * 0.02,
    }


def hidden_states(params, inputs):
    x = params["embed"][inputs]
    return x + jnp.tanh(x @ params["mlp"])


def make_batch(key, tokens, vocab):
    """Next token = (7 * previous + 3) mod V, 10% noise; previous tokens from the first 256."""
    inputs = jax.random.randint(key, (tokens,), 0, min(vocab, 256))
    noise = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.1, (tokens,))
    targets = jnp.where(noise, (inputs + 1) % vocab, (7 * inputs + 3) % vocab)
    return inputs, targets.astype(jnp.int32)


def sharded_loss_fn(mesh, data_axis, vocab):
    """Loss of the whole model; only the LM head runs inside shard_map."""

    def head_loss(h, y, w):
        return vocab_parallel_linear_cross_entropy(
            h, y, w, vocab_axis="vocab", vocab_size=vocab, data_axis=data_axis
        )

    head = jax.shard_map(
        head_loss,
        mesh=mesh,
        in_specs=(P(data_axis, None), P(data_axis), P(None, "vocab")),
        out_specs=P(),
    )

    def loss(params, inputs, targets):
        return head(hidden_states(params, inputs), targets, params["head"])

    return loss


def naive_loss_fn(vocab):
    def loss(params, inputs, targets):
        logits = hidden_states(params, inputs) @ params["head"][:, :vocab]
        return il.softmax_cross_entropy_with_integer_labels(logits, targets, reduction="mean")

    return loss


def fused_loss_fn(vocab):
    from infoloss_jax.heads._fused import linear_softmax_cross_entropy

    def loss(params, inputs, targets):
        return linear_softmax_cross_entropy(
            hidden_states(params, inputs), targets, params["head"][:, :vocab]
        )

    return loss


def train_step_fn(loss_fn, optimizer):
    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def step_memory(step, *args):
    m = step.lower(*args).compile().memory_analysis()
    return m.temp_size_in_bytes, m.argument_size_in_bytes


def main(args):
    if args.distributed:
        jax.distributed.initialize()  # coordinator address etc. from the cluster environment
    mesh, data_axis = make_mesh(args.mesh)
    n_vocab_shards = mesh.shape["vocab"]
    vocab = args.vocab
    padded = n_vocab_shards * -(-vocab // n_vocab_shards)
    print(
        f"{jax.device_count()} devices ({jax.devices()[0].device_kind}), mesh "
        f"{dict(mesh.shape)}; V={vocab} (padded to {padded}, {padded // n_vocab_shards} per "
        f"device), D={args.hidden}, {args.tokens} tokens per step"
    )

    key = jax.random.key(0)
    params = init_params(key, padded, args.hidden)
    # The head is split along the vocabulary; everything else is replicated.
    shardings = {
        "embed": NamedSharding(mesh, P()),
        "mlp": NamedSharding(mesh, P()),
        "head": NamedSharding(mesh, P(None, "vocab")),
    }
    params = jax.device_put(params, shardings)
    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(params)
    step = train_step_fn(sharded_loss_fn(mesh, data_axis, vocab), optimizer)
    batch_sharding = NamedSharding(mesh, P(data_axis))

    batch = jax.device_put(make_batch(jax.random.key(1), args.tokens, vocab), batch_sharding)
    sharded_mem = step_memory(step, params, opt_state, *batch)
    initial = jax.jit(sharded_loss_fn(mesh, data_axis, vocab))(params, *batch)
    results = {"mesh": dict(mesh.shape), "vocab": vocab, "initial_loss": float(initial)}
    if jax.process_count() == 1:
        one_params, one_batch = jax.device_put((params, batch), jax.devices()[0])
        reference = jax.jit(naive_loss_fn(vocab))(one_params, *one_batch)
        results["initial_loss_unsharded"] = float(reference)
        print(
            f"initial loss: vocab-parallel {float(initial):.6f}, unsharded {float(reference):.6f}"
        )
    quiet = args.no_progress or jax.process_index() != 0
    bar = tqdm(range(args.steps), desc="train", unit="step", disable=quiet)
    losses = []
    for i in bar:
        batch = make_batch(jax.random.key(100 + i), args.tokens, vocab)
        params, opt_state, loss = step(params, opt_state, *jax.device_put(batch, batch_sharding))
        if i == 0 or i == args.steps - 1 or (i + 1) % 5 == 0:
            losses.append((i + 1, float(loss)))
            bar.set_postfix(loss=f"{float(loss):.4f}")
            tqdm.write(f"step {i + 1:3d}  loss {float(loss):.4f}")
    bar.close()  # the bar ends at steps/steps, 100%
    assert jnp.isfinite(loss)
    results["losses"] = losses

    if jax.process_count() > 1:
        temp, arg = sharded_mem
        print(f"per-device memory of one step: {temp / MiB:.2f} MiB temporaries")
        return results
    # The same step on one device, for comparison (compile only).
    single = jax.devices()[0]
    one_device = jax.device_put(init_params(key, padded, args.hidden), single)
    one_state = optimizer.init(one_device)
    one_batch = jax.device_put(make_batch(jax.random.key(1), args.tokens, vocab), single)
    rows = [("vocab-parallel fused (per device)", sharded_mem)]
    for name, fn in (
        ("single-device fused", fused_loss_fn(vocab)),
        ("single-device naive logits", naive_loss_fn(vocab)),
    ):
        rows.append(
            (name, step_memory(train_step_fn(fn, optimizer), one_device, one_state, *one_batch))
        )
    print("\nper-device memory of one training step (memory_analysis):")
    print(f"  {'':<34} {'temporaries':>12} {'arguments':>10}")
    for name, (temp, arg) in rows:
        print(f"  {name:<34} {temp / MiB:>10.2f} MiB {arg / MiB:>6.2f} MiB")
    results["memory_bytes"] = {name: {"temp": t, "arguments": a} for name, (t, a) in rows}
    return results


def write(results, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sharded_lm_head.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    results = main(ARGS)
    if jax.process_index() == 0:
        write(results, ARGS.out_dir)
