"""Train a small character-level language model and measure it with infoloss_jax.

    python examples/train_char_lm.py                  # KJV Genesis + Exodus (2 min 9 s, see below)
    python examples/train_char_lm.py --source markov  # a source with an exactly known entropy rate
    python examples/train_char_lm.py --tiny           # a small run, in seconds (the tests use it)

The model is a two-block causal transformer (embedding, attention + MLP blocks, a linear head).
Its training loss is infoloss_jax's fused ``linear_softmax_cross_entropy``: the head's
``[tokens, vocab]`` logits are never materialized, and label smoothing and a z-loss are on by
default. Evaluation materializes the (small) validation logits and reports, all computed with
infoloss_jax:

* cross-entropy in nats, perplexity ``exp(CE)`` and bits per character ``CE / ln 2``;
* the mean predictive entropy ``H(q)`` of the model's next-character distribution;
* the reference floor: the corpus unigram entropy (what a model ignoring context achieves) or,
  with ``--source markov``, the exact entropy rate of the Markov source (what no model can beat).

Outputs go to ``--out-dir`` (default ``outputs/``): ``train_char_lm.png`` (loss and entropy
curves) and ``train_char_lm.json`` (the numbers printed at the end). With the defaults it takes
2 min 9 s (69 s of CPU time) on the project's shared 2-core x86-64 VM (docs/examples.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

DEFAULT_CORPUS = Path(__file__).parent / "data" / "kjv_genesis_exodus.txt"


# --tiny: a run of seconds (the test suite's); flags given explicitly still win.
TINY = dict(
    steps=40, batch_size=8, seq_len=32, d_model=32, layers=1, heads=2, eval_every=20,
    eval_windows=8, sample_length=16, lr=1e-2, markov_length=5000,
)  # fmt: skip


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option with its default."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--source", choices=["text", "markov"], default="text", help="training data")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="UTF-8 text file")
    p.add_argument("--steps", type=int, default=600, help="training steps")
    p.add_argument("--batch-size", type=int, default=32, help="windows per step")
    p.add_argument("--seq-len", type=int, default=64, help="characters per window")
    p.add_argument("--d-model", type=int, default=128, help="model width")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    p.add_argument("--label-smoothing", type=float, default=0.01, help="of the training loss")
    p.add_argument("--z-loss", type=float, default=1e-4, help="z-loss coefficient")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument("--eval-windows", type=int, default=64, help="validation windows")
    p.add_argument("--sample-length", type=int, default=200, help="characters to sample")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (0: greedy, the most likely character each time; None: 0.8 "
        "for text, 1 for markov)",
    )
    p.add_argument("--markov-order", type=int, default=2, help="context length of the source")
    p.add_argument("--markov-alphabet", type=int, default=8, help="symbols of the source")
    p.add_argument("--markov-length", type=int, default=200_000, help="characters of the source")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out-dir", type=Path, default=Path("outputs"), help="where outputs go")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a small run in seconds: " + ", ".join(f"{k}={v}" for k, v in TINY.items()),
    )
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    args = p.parse_args(argv)
    if args.tiny:  # parse again with the tiny defaults, so that explicit flags still win
        p.set_defaults(**TINY)
        args = p.parse_args(argv)
    if args.temperature is not None and not args.temperature >= 0:
        p.error(f"--temperature must be >= 0 (0 samples greedily); got {args.temperature}")
    return args


if __name__ == "__main__":
    parse_args()  # answers --help (and rejects bad flags) at once, before JAX is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import infoloss_jax as il  # noqa: E402

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Data: a real text, or a synthetic Markov source with a known entropy rate
# --------------------------------------------------------------------------------------------


class Dataset(NamedTuple):
    train: np.ndarray  # int32 token ids
    val: np.ndarray
    alphabet: list[str]
    floor_name: str  # what the reference line means
    floor_nats: float
    markov_order: int = 0  # 0 for a text; the model needs this much context to reach the floor
    transition: np.ndarray | None = None  # the Markov source's P(next | context)

    @property
    def ignore_first(self) -> int:
        """Positions whose context is shorter than the Markov order are left out of the loss."""
        return max(0, self.markov_order - 1)


def text_dataset(path: Path) -> Dataset:
    text = path.read_text(encoding="utf-8")
    alphabet = sorted(set(text))
    lookup = {c: i for i, c in enumerate(alphabet)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
    split = int(0.9 * len(ids))
    counts = np.bincount(ids[:split], minlength=len(alphabet))
    unigram = float(il.entropy_from_counts(jnp.asarray(counts, jnp.float32)))
    return Dataset(ids[:split], ids[split:], alphabet, "unigram entropy", unigram)


def markov_dataset(seed: int, *, order: int, alphabet_size: int, length: int) -> Dataset:
    """Samples an order-``order`` Markov chain with sparse-ish random transition rows.

    The entropy rate of a stationary Markov source is ``sum_c pi(c) H(P(. | c))``, where ``c``
    runs over the ``alphabet_size**order`` contexts and ``pi`` is the stationary distribution
    of contexts. It is the smallest cross-entropy per symbol any predictor can reach.
    """
    rng = np.random.default_rng(seed)
    n_contexts = alphabet_size**order
    transition = rng.dirichlet(np.full(alphabet_size, 0.3), size=n_contexts)
    # Context c = (x_{t-order}, ..., x_{t-1}) in base alphabet_size; the next context drops the
    # oldest symbol and appends x_t.
    shift = alphabet_size ** (order - 1)
    next_context = (np.arange(n_contexts)[:, None] % shift) * alphabet_size + np.arange(
        alphabet_size
    )
    context_chain = np.zeros((n_contexts, n_contexts))
    np.put_along_axis(context_chain, next_context, transition, axis=1)
    stationary = np.full(n_contexts, 1.0 / n_contexts)
    for _ in range(2000):
        stationary = stationary @ context_chain
    row_entropy = il.entropy_from_probs(jnp.asarray(transition, jnp.float32))
    entropy_rate = float(jnp.sum(jnp.asarray(stationary, jnp.float32) * row_entropy))

    ids = np.empty(length, dtype=np.int32)
    context = int(rng.choice(n_contexts, p=stationary / stationary.sum()))
    uniforms = rng.random(length)
    cumulative = np.cumsum(transition, axis=1)
    for t in range(length):
        symbol = min(int(np.searchsorted(cumulative[context], uniforms[t])), alphabet_size - 1)
        ids[t] = symbol
        context = int(next_context[context, symbol])
    alphabet = [chr(ord("a") + i) for i in range(alphabet_size)]
    split = int(0.9 * length)
    return Dataset(
        ids[:split], ids[split:], alphabet, "entropy rate", entropy_rate, order, transition
    )


def oracle_cross_entropy(data: Dataset, tokens: np.ndarray, targets: np.ndarray) -> float:
    """Cross-entropy of the true Markov source on the given windows (the floor, measured).

    The entropy rate is an expectation; on a finite validation set the true source's own
    cross-entropy fluctuates around it. Comparing the model with the source on the same tokens
    removes that sampling noise from the gap.
    """
    alphabet_size = data.transition.shape[1]
    order = data.markov_order
    length = tokens.shape[1]
    context = np.zeros((tokens.shape[0], length - order + 1), dtype=np.int64)
    for j in range(order):
        context = context * alphabet_size + tokens[:, j : length - order + 1 + j]
    log_probs = jnp.log(jnp.asarray(data.transition[context], jnp.float32))
    per_token = il.softmax_cross_entropy_with_integer_labels(log_probs, targets[:, order - 1 :])
    return float(jnp.mean(per_token))


def batches(ids: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator):
    """Yields random windows: inputs ``[B, T]`` and next-character targets ``[B, T]``."""
    while True:
        starts = rng.integers(0, len(ids) - seq_len - 1, size=batch_size)
        window = ids[starts[:, None] + np.arange(seq_len + 1)]
        yield window[:, :-1], window[:, 1:]


def eval_windows(ids: np.ndarray, seq_len: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, evenly spaced validation windows (the same every evaluation)."""
    starts = np.linspace(0, len(ids) - seq_len - 2, count).astype(np.int64)
    window = ids[starts[:, None] + np.arange(seq_len + 1)]
    return window[:, :-1], window[:, 1:]


# --------------------------------------------------------------------------------------------
# Model: a small pre-norm causal transformer in plain JAX
# --------------------------------------------------------------------------------------------


def init_params(key, *, vocab: int, d_model: int, n_layers: int, seq_len: int):
    def dense(k, fan_in, fan_out):
        return jax.random.normal(k, (fan_in, fan_out), jnp.float32) / math.sqrt(fan_in)

    keys = iter(jax.random.split(key, 4 + 4 * n_layers))
    blocks = []
    for _ in range(n_layers):
        blocks.append(
            {
                "norm1": jnp.ones(d_model),
                "qkv": dense(next(keys), d_model, 3 * d_model),
                "proj": dense(next(keys), d_model, d_model) / math.sqrt(2 * n_layers),
                "norm2": jnp.ones(d_model),
                "up": dense(next(keys), d_model, 4 * d_model),
                "down": dense(next(keys), 4 * d_model, d_model) / math.sqrt(2 * n_layers),
            }
        )
    return {
        "embed": 0.5 * jax.random.normal(next(keys), (vocab, d_model), jnp.float32),
        "pos": 0.1 * jax.random.normal(next(keys), (seq_len, d_model), jnp.float32),
        "blocks": blocks,
        "norm_f": jnp.ones(d_model),
        "head": dense(next(keys), d_model, vocab) * 0.5,  # [D, V]: logits = hidden @ head
        "head_bias": jnp.zeros(vocab),
    }


def rms_norm(x, scale):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def attention(x, block, n_heads):
    batch, length, d_model = x.shape
    q, k, v = jnp.split(x @ block["qkv"], 3, axis=-1)
    heads = lambda t: t.reshape(batch, length, n_heads, d_model // n_heads)
    scores = jnp.einsum("bqhd,bkhd->bhqk", heads(q), heads(k)) / math.sqrt(d_model // n_heads)
    causal = jnp.tril(jnp.ones((length, length), bool))
    weights = jax.nn.softmax(scores, axis=-1, where=causal)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, heads(v)).reshape(batch, length, d_model)
    return out @ block["proj"]


def hidden_states(params, tokens, n_heads):
    """``[B, T]`` character ids -> ``[B, T, D]`` final hidden states (before the head)."""
    x = params["embed"][tokens] + params["pos"][: tokens.shape[1]]
    for block in params["blocks"]:
        x = x + attention(rms_norm(x, block["norm1"]), block, n_heads)
        x = x + jax.nn.gelu(rms_norm(x, block["norm2"]) @ block["up"]) @ block["down"]
    return rms_norm(x, params["norm_f"])


def logits_fn(params, tokens, n_heads):
    return hidden_states(params, tokens, n_heads) @ params["head"] + params["head_bias"]


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def make_train_step(optimizer, *, n_heads, label_smoothing, z_loss):
    def loss_fn(params, tokens, targets):
        hidden = hidden_states(params, tokens, n_heads)
        # The fused head: loss of softmax(hidden @ head + bias) against the targets, computed
        # blockwise without materializing the [B*T, vocab] logits (nor their gradient).
        return il.linear_softmax_cross_entropy(
            hidden,
            targets,
            params["head"],
            bias=params["head_bias"],
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            reduction="mean",
        )

    @jax.jit
    def train_step(params, opt_state, tokens, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def make_evaluate(*, n_heads, ignore_first):
    @jax.jit
    def evaluate(params, tokens, targets):
        """Plain next-character cross-entropy (no smoothing, no z-loss) and predictive entropy."""
        logits = logits_fn(params, tokens, n_heads)
        per_token = il.softmax_cross_entropy_with_integer_labels(logits, targets)
        entropy = il.entropy(logits)
        # Early positions of a window lack the context the floor assumes: leave them out.
        return jnp.mean(per_token[:, ignore_first:]), jnp.mean(entropy[:, ignore_first:])

    return evaluate


def make_sampler(*, n_heads, seq_len, length, temperature):
    @jax.jit
    def sample(params, prompt, key):
        """Extends ``prompt`` (``[seq_len]`` ids) by ``length`` characters, one at a time."""
        buffer = jnp.concatenate([prompt, jnp.zeros(length, prompt.dtype)])

        def body(i, carry):
            buffer, key = carry
            key, sub = jax.random.split(key)
            window = jax.lax.dynamic_slice(buffer, (i,), (seq_len,))
            logits = logits_fn(params, window[None], n_heads)[0, -1]
            if temperature == 0:  # greedy: the most likely character
                token = jnp.argmax(logits)
            else:
                token = jax.random.categorical(sub, logits / temperature)
            return buffer.at[i + seq_len].set(token.astype(buffer.dtype)), key

        buffer, _ = jax.lax.fori_loop(0, length, body, (buffer, key))
        return buffer[seq_len:]

    return sample


def plot(history, data: Dataset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ent) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ax_loss.plot(
        history["train_step"],
        history["train_loss"],
        lw=0.8,
        alpha=0.6,
        label="train objective (smoothed CE + z-loss)",
    )
    ax_loss.plot(history["eval_step"], history["val_loss"], "o-", label="validation (plain CE)")
    ax_loss.axhline(data.floor_nats, color="k", ls="--", label=data.floor_name)
    ax_loss.set(xlabel="step", ylabel="nats per character", title="Cross-entropy")
    ax_loss.legend()
    ax_ent.plot(history["eval_step"], history["val_entropy"], "o-", color="tab:green")
    ax_ent.axhline(data.floor_nats, color="k", ls="--", label=data.floor_name)
    ax_ent.set(xlabel="step", ylabel="nats", title="Mean predictive entropy H(q) on validation")
    ax_ent.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.source == "text":
        data = text_dataset(args.corpus)
        print(f"corpus: {args.corpus} ({len(data.train) + len(data.val):,} characters)")
    else:
        data = markov_dataset(
            args.seed,
            order=args.markov_order,
            alphabet_size=args.markov_alphabet,
            length=args.markov_length,
        )
        print(
            f"source: order-{args.markov_order} Markov chain over {args.markov_alphabet} "
            f"symbols, {args.markov_length:,} samples"
        )
    if len(data.val) < args.seq_len + 2:
        raise SystemExit(
            f"the corpus is too short: its validation split ({len(data.val)} characters, the "
            f"last 10%) needs at least --seq-len + 2 = {args.seq_len + 2}"
        )
    vocab = len(data.alphabet)
    print(
        f"vocabulary: {vocab} symbols | {data.floor_name}: {data.floor_nats:.4f} nats = "
        f"{data.floor_nats / LN2:.4f} bits per character"
    )

    key = jax.random.key(args.seed)
    params = init_params(
        key, vocab=vocab, d_model=args.d_model, n_layers=args.layers, seq_len=args.seq_len
    )
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, max(1, args.steps // 20), max(2, args.steps), args.lr / 10
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, 0.9, 0.98))
    opt_state = optimizer.init(params)
    train_step = make_train_step(
        optimizer, n_heads=args.heads, label_smoothing=args.label_smoothing, z_loss=args.z_loss
    )
    evaluate = make_evaluate(n_heads=args.heads, ignore_first=data.ignore_first)
    val_tokens, val_targets = eval_windows(data.val, args.seq_len, args.eval_windows)
    stream = batches(data.train, args.batch_size, args.seq_len, np.random.default_rng(args.seed))

    history = {k: [] for k in ("train_step", "train_loss", "eval_step", "val_loss", "val_entropy")}

    def record_eval(step):
        val_loss, val_entropy = (float(v) for v in evaluate(params, val_tokens, val_targets))
        history["eval_step"].append(step)
        history["val_loss"].append(val_loss)
        history["val_entropy"].append(val_entropy)
        return val_loss

    record_eval(0)
    tokens_per_step = args.batch_size * args.seq_len
    bar = tqdm(range(1, args.steps + 1), desc="train", disable=args.no_progress, unit="step")
    start = time.perf_counter()
    for step in bar:
        tokens, targets = next(stream)
        params, opt_state, loss = train_step(params, opt_state, tokens, targets)
        if step % 10 == 0 or step == args.steps:
            loss = float(loss)  # syncs; reading every step would stall the pipeline
            history["train_step"].append(step)
            history["train_loss"].append(loss)
            rate = step * tokens_per_step / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
        if step % args.eval_every == 0 and step != args.steps:
            record_eval(step)
    bar.close()
    elapsed = time.perf_counter() - start
    val_loss = record_eval(args.steps)
    val_entropy = history["val_entropy"][-1]

    # Final train loss on a fresh batch, measured like validation (plain CE, no smoothing).
    train_loss, _ = (float(v) for v in evaluate(params, *next(stream)))
    results = {
        "source": args.source,
        "steps": args.steps,
        "seconds": round(elapsed, 2),
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss),
        "val_bits_per_char": val_loss / LN2,
        "val_mean_entropy": val_entropy,
        "floor_name": data.floor_name,
        "floor_nats": data.floor_nats,
        "initial_val_loss": history["val_loss"][0],
        "history": history,
    }
    print(f"\ntrained {args.steps} steps in {elapsed:.1f} s")
    print(f"  train loss (plain CE)    {train_loss:.4f} nats")
    print(f"  val loss (plain CE)      {val_loss:.4f} nats")
    print(f"  val perplexity           {math.exp(val_loss):.3f}")
    print(f"  val bits per character   {val_loss / LN2:.4f}")
    print(f"  val mean entropy H(q)    {val_entropy:.4f} nats")
    print(f"  {data.floor_name + ':':24} {data.floor_nats:.4f} nats", end="  ")
    if data.transition is None:
        gap = data.floor_nats - val_loss
        comparison = f"{gap:.4f} nats better" if gap >= 0 else f"{-gap:.4f} nats worse"
        print(f"(a context-free model; this model is {comparison})")
    else:
        oracle = oracle_cross_entropy(data, val_tokens, val_targets)
        results["oracle_val_loss"] = oracle
        print("(no model can beat it on average)")
        print(
            f"  true source's CE on val  {oracle:.4f} nats  (the floor measured on the same tokens)"
        )
        print(f"  model - true source      {val_loss - oracle:+.4f} nats per character")

    temperature = args.temperature
    if temperature is None:
        temperature = 0.8 if data.transition is None else 1.0
    sampler = make_sampler(
        n_heads=args.heads,
        seq_len=args.seq_len,
        length=args.sample_length,
        temperature=temperature,
    )
    sample = sampler(params, jnp.asarray(val_tokens[0]), jax.random.key(args.seed + 1))
    prompt = "".join(data.alphabet[i] for i in val_tokens[0])
    continuation = "".join(data.alphabet[i] for i in np.asarray(sample))
    how = "greedy (temperature 0)" if temperature == 0 else f"at temperature {temperature:g}"
    print(f"\n[prompt: {len(prompt)} characters of validation text]\n{prompt}")
    print(f"[model: {len(continuation)} characters, {how}]\n{continuation}\n")
    results["sample"] = continuation

    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot(history, data, args.out_dir / "train_char_lm.png")
    (args.out_dir / "train_char_lm.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out_dir / 'train_char_lm.png'} and {args.out_dir / 'train_char_lm.json'}")
    return results


if __name__ == "__main__":
    main()
