"""WeNet-style label-smoothing loss, ported from PyTorch, and why it is just cross-entropy.

    python examples/label_smoothing_asr.py     # seconds; the numbers also go to outputs/

Speech recognition toolkits such as WeNet train the attention decoder with a "label-smoothing
loss" written with ``torch.nn.KLDivLoss(reduction="none")``: the target is a smoothed one-hot
with ``1 - eps`` on the reference token and ``eps / (V - 1)`` on every other token, padded
positions (``padding_idx``, -1 in WeNet) are zeroed, and the sum is divided either by the number
of real tokens (``normalize_length=True``) or by the batch size.

This script ports that loss line by line with :func:`infoloss_jax.torch.kl_div` (same argument
order as torch: log-probabilities first, then the target), and checks numerically that

    KL(t || q) = H(t, q) - H(t),

i.e. the loss equals infoloss_jax's integer-label cross-entropy with ``ignore_index`` and
``label_smoothing``, minus the entropy ``H(t)`` of the smoothed target. ``H(t)`` is the same
constant for every token, so the two losses have identical gradients: training with either is
the same, and the cross-entropy form never builds the ``[tokens, vocab]`` target.

One detail: WeNet spreads ``eps / (V - 1)`` over the *other* tokens (as T5X does), while
PyTorch's and infoloss_jax's ``label_smoothing`` spreads ``eps / V`` over *all* tokens. The two
targets coincide when infoloss_jax gets ``label_smoothing = eps * V / (V - 1)``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option with its default."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="utterances")
    parser.add_argument("--length", type=int, default=9, help="decoder positions per utterance")
    parser.add_argument("--vocab", type=int, default=32, help="vocabulary size")
    parser.add_argument("--smoothing", type=float, default=0.1, help="WeNet's smoothing eps")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out-dir", type=Path, default=Path("outputs"), help="where outputs go")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # answers --help (and rejects bad flags) at once, before JAX is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import infoloss_jax as il  # noqa: E402
from infoloss_jax import torch as F  # noqa: E402

IGNORE_ID = -1  # WeNet's padding index


def wenet_label_smoothing_loss(logits, target, *, smoothing, padding_idx, normalize_length):
    """The PyTorch original, transcribed: KLDivLoss against a smoothed one-hot target."""
    batch_size, vocab = logits.shape[0], logits.shape[-1]
    logits = logits.reshape(-1, vocab)
    target = target.reshape(-1)
    ignore = target == padding_idx
    total = jnp.sum(~ignore)
    target = jnp.where(ignore, 0, target)
    true_dist = jnp.full(logits.shape, smoothing / (vocab - 1))
    true_dist = true_dist.at[jnp.arange(target.shape[0]), target].set(1.0 - smoothing)
    kl = F.kl_div(jax.nn.log_softmax(logits, axis=1), true_dist, reduction="none")
    denom = total if normalize_length else batch_size
    return jnp.sum(jnp.where(ignore[:, None], 0.0, kl)) / denom


def smoothed_target_entropy(smoothing: float, vocab: int) -> float:
    """H(t) for t = (1 - eps) on one token and eps / (V - 1) on each of the others."""
    confidence, low = 1.0 - smoothing, smoothing / (vocab - 1)
    return -(confidence * math.log(confidence) + (vocab - 1) * low * math.log(low))


def cross_entropy_form(logits, target, *, smoothing, padding_idx, normalize_length):
    """The same loss as infoloss_jax cross-entropy minus the constant H(t)."""
    batch_size, vocab = logits.shape[0], logits.shape[-1]
    per_token = il.softmax_cross_entropy_with_integer_labels(
        logits,
        target,
        ignore_index=padding_idx,
        label_smoothing=smoothing * vocab / (vocab - 1),  # WeNet's eps / (V - 1) convention
    )
    total, count = il.loss_sum_and_count(per_token, where=target != padding_idx)
    total = total - count * smoothed_target_entropy(smoothing, vocab)
    return total / count if normalize_length else total / batch_size


def make_batch(batch: int, length: int, vocab: int, seed: int):
    """Random decoder logits and reference tokens, with right padding of random lengths."""
    key_logits, key_tokens, key_lengths = jax.random.split(jax.random.key(seed), 3)
    logits = 3.0 * jax.random.normal(key_logits, (batch, length, vocab))
    tokens = jax.random.randint(key_tokens, (batch, length), 0, vocab)
    lengths = jax.random.randint(key_lengths, (batch,), 1, length + 1)
    padded = jnp.arange(length)[None, :] >= lengths[:, None]
    return logits, jnp.where(padded, IGNORE_ID, tokens)


def main(argv=None) -> dict:
    args = parse_args(argv)

    logits, target = make_batch(args.batch, args.length, args.vocab, args.seed)
    num_tokens = int(jnp.sum(target != IGNORE_ID))
    entropy = smoothed_target_entropy(args.smoothing, args.vocab)
    print(
        f"batch={args.batch} length={args.length} vocab={args.vocab} "
        f"smoothing={args.smoothing} real_tokens={num_tokens}"
    )
    print(f"H(smoothed target) = {entropy:.6f} nats per token (a constant)")
    results = {"smoothed_target_entropy": entropy, "normalize_length": {}}
    for normalize_length in (False, True):
        options = dict(
            smoothing=args.smoothing, padding_idx=IGNORE_ID, normalize_length=normalize_length
        )
        wenet, wenet_grad = jax.value_and_grad(wenet_label_smoothing_loss)(
            logits, target, **options
        )
        ours, ours_grad = jax.value_and_grad(cross_entropy_form)(logits, target, **options)
        grad_diff = float(jnp.max(jnp.abs(wenet_grad - ours_grad)))
        results["normalize_length"][str(normalize_length)] = {
            "wenet_kl": float(wenet),
            "ce_minus_entropy": float(ours),
            "max_grad_diff": grad_diff,
        }
        print(
            f"normalize_length={normalize_length!s:5}: wenet_kl={float(wenet):.6f} "
            f"ce_minus_entropy={float(ours):.6f} |diff|={abs(float(wenet) - float(ours)):.2e} "
            f"max|grad diff|={grad_diff:.2e} max|grad|={float(jnp.max(jnp.abs(ours_grad))):.2e}"
        )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "label_smoothing_asr.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
