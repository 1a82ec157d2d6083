"""Improve a small character LM with GRPO, then with DPO, on a reward a program can check.

    python examples/grpo_char_lm.py                 # about 2 min on 2 CPU cores
    python examples/grpo_char_lm.py --target e      # reward the letter e instead of vowels

1. **Pre-training.** The two-block transformer of ``train_char_lm.py`` (imported from it) is
   trained briefly on the KJV text with the fused ``linear_softmax_cross_entropy``. This model
   is also the frozen *reference* policy of both phases below.
2. **GRPO.** Each step samples ``--group-size`` completions of ``--completion-len`` characters
   for each of ``--prompts`` text prompts. The verifiable reward of a completion is the
   fraction of its characters in ``--target`` (the vowels by default). ``group_advantages``
   turns rewards into group-relative advantages; ``clipped_surrogate`` is the loss, with the
   k3 KL penalty to the reference and an entropy bonus. Every log-probability and entropy
   comes from the fused head ``linear_log_probs`` (no ``[tokens, vocab]`` logits), and
   ``kl_estimate`` monitors KL(policy || reference) on the fresh samples.
3. **DPO.** Starting again from the reference, pairs of completions sampled from it are
   ranked by the same reward (chosen = the higher one, ties dropped), and ``preference.dpo``
   is minimized on their sequence log-probabilities (``linear_log_probs`` summed by
   ``preference.sequence_log_probs``). ``--dpo-steps 0`` skips it.

Before/after rewards, entropies and KLs are printed with samples. The curves (reward, entropy,
KL to the reference, DPO margins) go to ``--out`` (default ``outputs/grpo_char_lm.png``), and
the numbers to the same path with a ``.json`` suffix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE / "data" / "kjv_genesis_exodus.txt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="UTF-8 text file")
    p.add_argument("--target", default="aeiou", help="characters the reward counts")
    model = p.add_argument_group("model and pre-training")
    model.add_argument("--d-model", type=int, default=64)
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--pretrain-steps", type=int, default=300)
    model.add_argument("--pretrain-batch", type=int, default=32)
    model.add_argument("--pretrain-lr", type=float, default=3e-3)
    rl = p.add_argument_group("GRPO")
    rl.add_argument("--steps", type=int, default=40, help="GRPO steps (one rollout each)")
    rl.add_argument("--prompts", type=int, default=8, help="prompts per step")
    rl.add_argument("--group-size", type=int, default=8, help="completions per prompt")
    rl.add_argument("--prompt-len", type=int, default=24)
    rl.add_argument("--completion-len", type=int, default=24)
    rl.add_argument("--updates", type=int, default=2, help="gradient steps per rollout")
    rl.add_argument("--lr", type=float, default=1e-3)
    rl.add_argument("--kl-coef", type=float, default=0.2)
    rl.add_argument("--entropy-coef", type=float, default=0.0)
    rl.add_argument("--clip-low", type=float, default=0.2)
    rl.add_argument("--clip-high", type=float, default=0.28)
    pref = p.add_argument_group("DPO")
    pref.add_argument("--dpo-steps", type=int, default=20, help="0 skips the DPO phase")
    pref.add_argument("--dpo-pairs", type=int, default=256)
    pref.add_argument("--dpo-batch", type=int, default=64)
    pref.add_argument("--dpo-lr", type=float, default=3e-4)
    pref.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs") / "grpo_char_lm.png")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bars")
    return p.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # answers --help (and rejects bad flags) at once, before JAX is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import infoloss_jax as il  # noqa: E402

sys.path.insert(0, str(HERE))  # the sibling example: its model, data and pre-training step
import train_char_lm as lm  # noqa: E402

# --------------------------------------------------------------------------------------------
# Sampling and scoring: a prompt and its completion share one window of the model
# --------------------------------------------------------------------------------------------


def make_rollout(*, n_heads: int, prompt_len: int, completion_len: int):
    """Samples completions at temperature 1, so that they come from the policy being scored."""

    @jax.jit
    def rollout(params, prompts, key):
        """``[N, prompt_len]`` ids -> ``[N, prompt_len + completion_len]`` prompt + completion."""
        pad = jnp.zeros((prompts.shape[0], completion_len), prompts.dtype)
        buffer = jnp.concatenate([prompts, pad], axis=1)

        def body(i, carry):
            buffer, key = carry
            key, sub = jax.random.split(key)
            # Causal attention: the zeros after position `last` do not change its hidden state.
            last = prompt_len - 1 + i
            hidden = lm.hidden_states(params, buffer, n_heads)
            hidden = jax.lax.dynamic_index_in_dim(hidden, last, axis=1, keepdims=False)
            logits = hidden @ params["head"] + params["head_bias"]  # [N, vocab], one position
            token = jax.random.categorical(sub, logits).astype(buffer.dtype)
            return jax.lax.dynamic_update_index_in_dim(buffer, token, last + 1, axis=1), key

        buffer, _ = jax.lax.fori_loop(0, completion_len, body, (buffer, key))
        return buffer

    return rollout


def completion_log_probs(params, buffer, *, n_heads, prompt_len, with_entropy=False):
    """Log-probs ``[N, completion_len]`` of the completion tokens (and the policy's entropies).

    One forward pass over prompt + completion; the fused head scores only the completion
    positions, without materializing their ``[N, completion_len, vocab]`` logits.
    """
    hidden = lm.hidden_states(params, buffer[:, :-1], n_heads)[:, prompt_len - 1 :]
    return il.linear_log_probs(
        hidden,
        buffer[:, prompt_len:],
        params["head"],
        bias=params["head_bias"],
        with_entropy=with_entropy,
    )


def make_reward(alphabet: list[str], target: str):
    """The verifiable reward: the fraction of a completion's characters that are in ``target``."""
    hits = jnp.asarray([c in target for c in alphabet], jnp.float32)

    def reward(completions):
        return jnp.mean(hits[completions], axis=-1)

    return reward


def random_prompts(ids: np.ndarray, count: int, length: int, rng: np.random.Generator):
    starts = rng.integers(0, len(ids) - length, size=count)
    return jnp.asarray(ids[starts[:, None] + np.arange(length)])


def decode(alphabet: list[str], ids) -> str:
    return "".join(alphabet[i] for i in np.asarray(ids))


# --------------------------------------------------------------------------------------------
# Evaluation: the same prompts and random keys for every policy
# --------------------------------------------------------------------------------------------


def make_evaluate(rollout, reward, *, n_heads, prompt_len):
    @jax.jit
    def evaluate(params, ref_params, prompts, key):
        buffer = rollout(params, prompts, key)
        lp, entropy = completion_log_probs(
            params, buffer, n_heads=n_heads, prompt_len=prompt_len, with_entropy=True
        )
        ref_lp = completion_log_probs(ref_params, buffer, n_heads=n_heads, prompt_len=prompt_len)
        stats = {
            "reward": jnp.mean(reward(buffer[:, prompt_len:])),
            "entropy": jnp.mean(entropy),
            # k3 per token, on samples from the policy: an unbiased estimate of
            # KL(policy || reference), never negative.
            "kl": jnp.mean(il.kl_estimate(lp, ref_lp, estimator="k3")),
        }
        return stats, buffer

    return evaluate


# --------------------------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------------------------


def make_grpo(optimizer, rollout, reward, args):
    score = dict(n_heads=args.heads, prompt_len=args.prompt_len)

    @jax.jit
    def collect(params, ref_params, prompts, key):
        """One rollout: ``group_size`` completions per prompt, their rewards and advantages."""
        buffer = rollout(params, jnp.repeat(prompts, args.group_size, axis=0), key)
        old_lp, entropy = completion_log_probs(params, buffer, with_entropy=True, **score)
        ref_lp = completion_log_probs(ref_params, buffer, **score)
        rewards = reward(buffer[:, args.prompt_len :])
        # Each prompt's completions are consecutive: compared with each other only.
        advantages = il.policy.group_advantages(rewards, args.group_size)
        stats = {
            "reward": jnp.mean(rewards),
            "entropy": jnp.mean(entropy),
            "kl": jnp.mean(il.kl_estimate(old_lp, ref_lp)),
        }
        return (buffer, old_lp, ref_lp, advantages), stats

    def loss_fn(params, buffer, old_lp, ref_lp, advantages):
        lp, entropy = completion_log_probs(params, buffer, with_entropy=True, **score)
        return il.policy.clipped_surrogate(
            lp,
            old_lp,
            advantages,
            clip_low=args.clip_low,
            clip_high=args.clip_high,
            ref_log_probs=ref_lp,
            kl_coef=args.kl_coef,
            entropy=entropy,
            entropy_coef=args.entropy_coef,
            normalization="sequence_mean",
        )

    @jax.jit
    def update(params, opt_state, batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux

    return collect, update


# --------------------------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------------------------


def make_dpo(optimizer, *, n_heads, prompt_len, beta):
    def sequence_log_probs(params, buffer):
        token_lp = completion_log_probs(params, buffer, n_heads=n_heads, prompt_len=prompt_len)
        sums, _ = il.preference.sequence_log_probs(token_lp)
        return sums

    def loss_fn(params, pairs):
        chosen, rejected, ref_chosen, ref_rejected, keep = pairs
        return il.preference.dpo(
            sequence_log_probs(params, chosen),
            sequence_log_probs(params, rejected),
            ref_chosen,
            ref_rejected,
            beta=beta,
            mask=keep,
        )

    @jax.jit
    def update(params, opt_state, pairs):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, pairs)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        keep = pairs[-1].astype(jnp.float32)
        kept = jnp.maximum(jnp.sum(keep), 1.0)
        stats = {
            "loss": loss,
            "accuracy": jnp.sum(aux.accuracy * keep) / kept,
            "margin": jnp.sum(aux.margins * keep) / kept,
        }
        return optax.apply_updates(params, updates), opt_state, stats

    return sequence_log_probs, update


def preference_pairs(ref_params, rollout, reward, sequence_log_probs, prompts, key, prompt_len):
    """Two reference samples per prompt; chosen = the higher reward, ties left out."""
    buffer = rollout(ref_params, jnp.repeat(prompts, 2, axis=0), key)
    first, second = buffer[0::2], buffer[1::2]
    r_first = reward(first[:, prompt_len:])
    r_second = reward(second[:, prompt_len:])
    swap = (r_second > r_first)[:, None]
    chosen = jnp.where(swap, second, first)
    rejected = jnp.where(swap, first, second)
    keep = r_first != r_second
    ref_chosen = sequence_log_probs(ref_params, chosen)
    ref_rejected = sequence_log_probs(ref_params, rejected)
    return chosen, rejected, ref_chosen, ref_rejected, keep


# --------------------------------------------------------------------------------------------
# The program
# --------------------------------------------------------------------------------------------


def pretrain(args, data, *, seq_len):
    params = lm.init_params(
        jax.random.key(args.seed),
        vocab=len(data.alphabet),
        d_model=args.d_model,
        n_layers=args.layers,
        seq_len=seq_len,
    )
    steps = args.pretrain_steps
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.pretrain_lr, max(1, steps // 20), max(2, steps), args.pretrain_lr / 10
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, 0.9, 0.98))
    opt_state = optimizer.init(params)
    # The fused linear_softmax_cross_entropy, with label smoothing and a z-loss.
    train_step = lm.make_train_step(
        optimizer, n_heads=args.heads, label_smoothing=0.01, z_loss=1e-4
    )
    stream = lm.batches(data.train, args.pretrain_batch, seq_len, np.random.default_rng(args.seed))
    bar = tqdm(range(steps), desc="pre-train", disable=args.no_progress, unit="step")
    loss = float("nan")
    for step in bar:
        params, opt_state, loss = train_step(params, opt_state, *next(stream))
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()
    return params, float(loss)


def run_grpo(args, ref_params, data, rollout, reward, rng, key):
    params = ref_params
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.lr, 0.9, 0.99))
    opt_state = optimizer.init(params)
    collect, update = make_grpo(optimizer, rollout, reward, args)
    history = {k: [] for k in ("step", "reward", "entropy", "kl", "clip_fraction")}
    bar = tqdm(range(1, args.steps + 1), desc="GRPO", disable=args.no_progress, unit="step")
    for step in bar:
        key, sub = jax.random.split(key)
        prompts = random_prompts(data.train, args.prompts, args.prompt_len, rng)
        batch, stats = collect(params, ref_params, prompts, sub)
        for _ in range(args.updates):  # the later updates are off-policy: the ratio is clipped
            params, opt_state, aux = update(params, opt_state, batch)
        history["step"].append(step)
        for name in ("reward", "entropy", "kl"):
            history[name].append(float(stats[name]))
        history["clip_fraction"].append(float(aux.clip_fraction))
        bar.set_postfix(
            reward=f"{history['reward'][-1]:.3f}",
            kl=f"{history['kl'][-1]:.4f}",
            H=f"{history['entropy'][-1]:.2f}",
        )
    bar.close()
    return params, history


def run_dpo(args, ref_params, data, rollout, reward, rng, key):
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.dpo_lr, 0.9, 0.99))
    params = ref_params
    opt_state = optimizer.init(params)
    sequence_log_probs, update = make_dpo(
        optimizer, n_heads=args.heads, prompt_len=args.prompt_len, beta=args.beta
    )
    prompts = random_prompts(data.train, args.dpo_pairs, args.prompt_len, rng)
    pairs = jax.jit(preference_pairs, static_argnums=(1, 2, 3, 6))(
        ref_params, rollout, reward, sequence_log_probs, prompts, key, args.prompt_len
    )
    num_pairs = args.dpo_pairs
    history = {k: [] for k in ("step", "loss", "accuracy", "margin")}
    bar = tqdm(range(1, args.dpo_steps + 1), desc="DPO", disable=args.no_progress, unit="step")
    for step in bar:
        rows = rng.choice(num_pairs, size=min(args.dpo_batch, num_pairs), replace=False)
        params, opt_state, stats = update(params, opt_state, tuple(x[rows] for x in pairs))
        history["step"].append(step)
        for name in ("loss", "accuracy", "margin"):
            history[name].append(float(stats[name]))
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", acc=f"{history['accuracy'][-1]:.2f}")
    bar.close()
    return params, history, int(jnp.sum(pairs[-1]))


def plot(grpo, dpo, before, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 4 if dpo["step"] else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8), constrained_layout=True)
    titles = {
        "reward": ("GRPO: mean reward of the rollouts", "reward (target fraction)"),
        "entropy": ("policy entropy on the rollouts", "nats per character"),
        "kl": ("KL(policy || reference), k3", "nats per character"),
    }
    for ax, (name, (title, ylabel)) in zip(axes, titles.items(), strict=False):
        ax.plot(grpo["step"], grpo[name], lw=1.0)
        ax.axhline(before[name], color="k", ls="--", lw=0.8, label="reference (eval prompts)")
        ax.set(xlabel="GRPO step", ylabel=ylabel, title=title)
        ax.legend(fontsize=8)
    if dpo["step"]:
        ax = axes[3]
        ax.plot(dpo["step"], dpo["margin"], label="margin r_w - r_l")
        ax.plot(dpo["step"], dpo["accuracy"], label="reward accuracy")
        ax.set(xlabel="DPO step", title="DPO on reward-ranked pairs (minibatch)")
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    for flag, low in (("updates", 1), ("group_size", 2), ("prompt_len", 1), ("completion_len", 1)):
        if getattr(args, flag) < low:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least {low}")
    data = lm.text_dataset(args.corpus)
    missing = sorted(set(args.target) - set(data.alphabet))
    if not args.target or missing:
        raise SystemExit(f"--target must be characters of the corpus; not in it: {missing}")
    seq_len = args.prompt_len + args.completion_len
    print(
        f"corpus: {args.corpus.name} ({len(data.train) + len(data.val):,} characters, "
        f"{len(data.alphabet)} symbols) | reward: fraction of {args.target!r} in "
        f"{args.completion_len}-character completions"
    )
    start = time.perf_counter()
    ref_params, pretrain_loss = pretrain(args, data, seq_len=seq_len)
    print(f"pre-trained {args.pretrain_steps} steps: train loss {pretrain_loss:.3f} nats")

    rollout = make_rollout(
        n_heads=args.heads, prompt_len=args.prompt_len, completion_len=args.completion_len
    )
    reward = make_reward(data.alphabet, args.target)
    evaluate = make_evaluate(rollout, reward, n_heads=args.heads, prompt_len=args.prompt_len)
    eval_prompts = random_prompts(
        data.val, args.eval_prompts, args.prompt_len, np.random.default_rng(args.seed + 1)
    )
    eval_key = jax.random.key(args.seed + 2)

    def measure(params):
        stats, buffer = evaluate(params, ref_params, eval_prompts, eval_key)
        return {k: float(v) for k, v in stats.items()}, buffer

    def show(label, stats, buffer):
        print(
            f"  {label:10} reward {stats['reward']:.3f} | entropy {stats['entropy']:.3f} nats "
            f"| KL to reference {stats['kl']:.4f} nats per character"
        )

    before, ref_samples = measure(ref_params)
    rng = np.random.default_rng(args.seed + 3)
    key = jax.random.key(args.seed + 4)
    grpo_params, grpo_history = run_grpo(args, ref_params, data, rollout, reward, rng, key)
    after, grpo_samples = measure(grpo_params)

    print("\nGRPO, on held-out prompts (completions sampled at temperature 1):")
    show("before", before, ref_samples)
    show("after", after, grpo_samples)
    results = {"pretrain_loss": pretrain_loss, "before": before, "grpo": after}
    results["grpo_history"] = grpo_history

    dpo_history = {k: [] for k in ("step", "loss", "accuracy", "margin")}
    if args.dpo_steps > 0:
        dpo_params, dpo_history, kept = run_dpo(
            args, ref_params, data, rollout, reward, rng, jax.random.key(args.seed + 5)
        )
        dpo_after, dpo_samples = measure(dpo_params)
        print(f"\nDPO on {kept} reward-ranked pairs of reference samples (ties dropped):")
        print(
            f"  last step: loss {dpo_history['loss'][-1]:.3f} (log 2 = 0.693 at the start) | "
            f"reward accuracy {dpo_history['accuracy'][-1]:.2f} | "
            f"margin {dpo_history['margin'][-1]:.3f}"
        )
        show("before", before, ref_samples)
        show("after", dpo_after, dpo_samples)
        results["dpo"] = dpo_after
        results["dpo_pairs"] = kept
        results["dpo_history"] = dpo_history
    else:
        dpo_samples = None

    prompt = decode(data.alphabet, eval_prompts[0])
    print(f"\nprompt: {prompt!r}")
    print(f"  reference: {decode(data.alphabet, ref_samples[0, args.prompt_len :])!r}")
    print(f"  GRPO:      {decode(data.alphabet, grpo_samples[0, args.prompt_len :])!r}")
    if dpo_samples is not None:
        print(f"  DPO:       {decode(data.alphabet, dpo_samples[0, args.prompt_len :])!r}")
    results["samples"] = {
        "prompt": prompt,
        "reference": decode(data.alphabet, ref_samples[0, args.prompt_len :]),
        "grpo": decode(data.alphabet, grpo_samples[0, args.prompt_len :]),
    }
    results["seconds"] = round(time.perf_counter() - start, 2)

    plot(grpo_history, dpo_history, before, args.out)
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out} and {json_path} ({results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
