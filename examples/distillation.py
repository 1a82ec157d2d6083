"""Distill a teacher into a smaller student with forward KL, reverse KL and Jensen-Shannon.

    python examples/distillation.py                      # 34 s on a shared 2-core VM
    python examples/distillation.py --temperature 2 --beta 0.1
    python examples/distillation.py --tiny               # a small run (the tests use it)

The task: 2-D points from a ring of Gaussian clusters, where neighbouring clusters belong to
different classes and overlap, so the teacher's predictive distribution is often spread over
two or three classes. The teacher (a wide MLP trained with cross-entropy) is then distilled
into a small student that cannot represent those distributions exactly, once per objective:

* forward KL, ``KL(teacher || student)``: mass-covering. The student must put mass wherever
  the teacher does, so under-capacity makes it *hedge*: its entropy rises above the teacher's.
* reverse KL, ``KL(student || teacher)``: mode-seeking. The student is punished for mass where
  the teacher has little, so it commits to one mode: its entropy falls below the teacher's.
* Jensen-Shannon with mixture weight ``beta`` (``beta=0`` is forward KL, ``beta=1`` reverse
  KL in infoloss_jax's TRL/Liger convention): in between, and bounded by ``log 2``.

All three losses take the student's and the teacher's *logits* and a temperature. The script
prints, per objective, the student's mean predictive entropy, its accuracy on held-out labels,
its agreement with the teacher's argmax and both KL directions, then plots entropy and accuracy
over training to ``--out-dir`` (``distillation.png``, ``distillation.json``).

For LLM-sized vocabularies use the fused ``linear_forward_kl`` / ``linear_reverse_kl`` /
``linear_jensen_shannon``, which take hidden states and head weights and never build the
``[tokens, vocab]`` logits.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import partial
from pathlib import Path

# --tiny: a run of seconds (the test suite's); flags given explicitly still win.
TINY = dict(teacher_steps=60, steps=60, eval_every=30, teacher_width=32)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option with its default."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="distillation temperature of both distributions (> 0)",
    )
    p.add_argument("--beta", type=float, default=0.5, help="JSD mixture weight of the teacher")
    p.add_argument("--classes", type=int, default=4, help="classes of the task")
    p.add_argument("--clusters", type=int, default=12, help="Gaussian blobs on the ring")
    p.add_argument("--teacher-width", type=int, default=256, help="teacher MLP width")
    p.add_argument("--student-width", type=int, default=6, help="student MLP width")
    p.add_argument("--teacher-steps", type=int, default=1500, help="teacher training steps")
    p.add_argument("--steps", type=int, default=1500, help="student steps per objective")
    p.add_argument("--batch-size", type=int, default=256, help="examples per step")
    p.add_argument("--eval-every", type=int, default=50, help="student steps between evaluations")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out-dir", type=Path, default=Path("outputs"), help="where outputs go")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a small run in seconds: " + ", ".join(f"{k}={v}" for k, v in TINY.items()),
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.tiny:  # parse again with the tiny defaults, so that explicit flags still win
        p.set_defaults(**TINY)
        args = p.parse_args(argv)
    if not 0 < args.temperature < float("inf"):
        p.error(
            f"--temperature must be a positive number; got {args.temperature} (a distillation "
            "temperature divides the logits: 0 has no meaning here)"
        )
    return args


if __name__ == "__main__":
    parse_args()  # answers --help (and rejects bad flags) at once, before JAX is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import infoloss_jax as il  # noqa: E402


def make_data(key, n: int, *, classes: int, clusters: int, spread: float):
    """Points on a ring of ``clusters`` Gaussian blobs; blob ``j`` has class ``j % classes``."""
    k_cluster, k_noise = jax.random.split(key)
    cluster = jax.random.randint(k_cluster, (n,), 0, clusters)
    angle = 2 * math.pi * cluster / clusters
    centers = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1) * 3.0
    x = centers + spread * jax.random.normal(k_noise, (n, 2))
    return x, cluster % classes


def init_mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (a, b)) * math.sqrt(2.0 / a), jnp.zeros(b))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def objectives(temperature: float, beta: float):
    """name -> per-example loss(student_logits, teacher_logits)."""
    return {
        "forward KL": partial(il.forward_kl, temperature=temperature),
        "reverse KL": partial(il.reverse_kl, temperature=temperature),
        f"JSD (beta={beta:g})": partial(il.jensen_shannon, beta=beta, temperature=temperature),
    }


def train(
    params,
    loss_fn,
    batches,
    *,
    steps: int,
    lr: float,
    eval_fn,
    eval_every: int,
    desc: str = "",
    progress: bool = True,
):
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps, 0.1))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, target):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(p, x, target))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    history = [(0, *eval_fn(params))]
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, unit="step", leave=False)
    for i in bar:
        params, opt_state, loss = step(params, opt_state, *batches(i))
        if i % eval_every == 0 or i == steps:
            history.append((i, *eval_fn(params)))
            bar.set_postfix(loss=f"{float(loss):.4f}")
    return params, history


def plot(histories, teacher_stats, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_h, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, history in histories.items():
        steps, entropy, accuracy = np.asarray(history)[:, :3].T
        ax_h.plot(steps, entropy, label=name)
        ax_acc.plot(steps, accuracy, label=name)
    ax_h.axhline(teacher_stats["entropy"], color="k", ls="--", label="teacher")
    ax_acc.axhline(teacher_stats["accuracy"], color="k", ls="--", label="teacher")
    ax_h.set(xlabel="student step", ylabel="nats", title="Student mean predictive entropy H(q)")
    ax_acc.set(xlabel="student step", ylabel="accuracy", title="Student accuracy (held-out)")
    ax_h.legend()
    ax_acc.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    key = jax.random.key(args.seed)
    k_train, k_test, k_teacher, k_student = jax.random.split(key, 4)
    data_kw = dict(classes=args.classes, clusters=args.clusters, spread=0.9)
    x_train, y_train = make_data(k_train, 20_000, **data_kw)
    x_test, y_test = make_data(k_test, 4_000, **data_kw)
    rng = np.random.default_rng(args.seed)

    def batch_indices():
        return rng.integers(0, len(x_train), size=args.batch_size)

    def stats(logits):
        """Mean entropy H(q) at temperature 1 and held-out accuracy, via infoloss_jax."""
        return (
            float(jnp.mean(il.entropy(logits))),
            float(jnp.mean(jnp.argmax(logits, -1) == y_test)),
        )

    # 1. The teacher: a wide MLP trained on the labels with cross-entropy.
    teacher = init_mlp(k_teacher, [2, args.teacher_width, args.teacher_width, args.classes])

    def ce_loss(params, x, labels):
        logits = mlp(params, x)
        return il.softmax_cross_entropy_with_integer_labels(logits, labels, reduction="mean")

    def teacher_batches(_):
        idx = batch_indices()
        return x_train[idx], y_train[idx]

    teacher, _ = train(
        teacher,
        ce_loss,
        teacher_batches,
        steps=args.teacher_steps,
        lr=3e-3,
        eval_fn=lambda p: stats(mlp(p, x_test)),
        eval_every=args.teacher_steps,
        desc="teacher",
        progress=not args.no_progress,
    )
    teacher_logits_test = mlp(teacher, x_test)
    t_entropy, t_accuracy = stats(teacher_logits_test)
    teacher_stats = {"entropy": t_entropy, "accuracy": t_accuracy}
    print(
        f"teacher ({args.teacher_width}x{args.teacher_width} MLP): mean entropy "
        f"{t_entropy:.3f} nats, held-out accuracy {t_accuracy:.3f} "
        f"(max entropy log {args.classes} = {math.log(args.classes):.3f})"
    )
    teacher_logits_train = jax.jit(mlp)(teacher, x_train)

    # 2. One student per objective, same initialization and batches.
    student_init = init_mlp(k_student, [2, args.student_width, args.classes])

    def student_batches(_):
        idx = batch_indices()
        return x_train[idx], teacher_logits_train[idx]

    results, histories = {}, {}
    header = f"{'objective':18} {'H(q)':>7} {'acc':>7} {'agree':>7} {'KL(p||q)':>9} {'KL(q||p)':>9}"
    print(f"\nstudents ({args.student_width}-unit MLP), temperature {args.temperature:g}:")
    print(header)
    for name, divergence in objectives(args.temperature, args.beta).items():

        def loss_fn(params, x, teacher_logits, divergence=divergence):
            student_logits = mlp(params, x)
            return jnp.mean(divergence(student_logits, jax.lax.stop_gradient(teacher_logits)))

        rng = np.random.default_rng(args.seed + 1)  # the same batches for every objective
        student, histories[name] = train(
            student_init,
            loss_fn,
            student_batches,
            steps=args.steps,
            lr=1e-2,
            eval_fn=lambda p: stats(mlp(p, x_test)),
            eval_every=args.eval_every,
            desc=name,
            progress=not args.no_progress,
        )
        logits = mlp(student, x_test)
        entropy, accuracy = stats(logits)
        agreement = float(jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits_test, -1)))
        forward = float(jnp.mean(il.forward_kl(logits, teacher_logits_test)))
        reverse = float(jnp.mean(il.reverse_kl(logits, teacher_logits_test)))
        results[name] = {
            "entropy": entropy,
            "accuracy": accuracy,
            "agreement": agreement,
            "forward_kl": forward,
            "reverse_kl": reverse,
        }
        print(
            f"{name:18} {entropy:7.3f} {accuracy:7.3f} {agreement:7.3f} {forward:9.4f} "
            f"{reverse:9.4f}"
        )
    print(f"{'teacher':18} {t_entropy:7.3f} {t_accuracy:7.3f}")
    print(
        "\nforward KL hedges (entropy above the teacher's), reverse KL commits to a mode\n"
        "(entropy below it) and pays with a large KL(p||q). KLs at temperature 1; p = teacher."
    )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot(histories, teacher_stats, args.out_dir / "distillation.png")
    summary = {"teacher": teacher_stats, "students": results, "histories": histories}
    (args.out_dir / "distillation.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out_dir / 'distillation.png'} and {args.out_dir / 'distillation.json'}")
    return summary


if __name__ == "__main__":
    main()
