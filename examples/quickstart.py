"""Quickstart: the background notes' numbers, recomputed with infoloss_jax.

The notes are a short Chinese blog post on LLM loss functions, written with PyTorch. This script
recomputes its numbers in a few lines each: entropy from counts, the direction of KL, PyTorch's
``F.kl_div`` misused on probabilities (and ``checked`` catching it), and
H(p, q) = H(p) + KL(p || q). It takes no options and runs in seconds.

Run: python examples/quickstart.py
"""

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # answers --help (and rejects bad flags) at once, before JAX is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import infoloss_jax as il  # noqa: E402
import infoloss_jax.torch as ilt  # noqa: E402


def main(argv=None) -> None:
    parse_args(argv)
    print("1. Entropy from counts")
    bits = il.entropy_from_counts({"a": 2, "b": 2, "c": 4}, base=2)
    uniform = il.entropy_from_counts({"a": 1, "b": 1, "c": 1}, base=2)
    print(f"   H({{a:2, b:2, c:4}})  = {float(bits):.4f} bits   (expected 1.5)")
    print(f"   H({{a:1, b:1, c:1}})  = {float(uniform):.4f} bits   (expected log2 3 = 1.585)")

    print("\n2. KL divergence: direction, and the F.kl_div pitfall")
    x, y = jnp.array([0.5, 0.5]), jnp.array([0.2, 0.8])
    correct = il.forward_kl(x, y)  # KL(softmax(y) || softmax(x)): target y, model x
    print(f"   KL(softmax(y) || softmax(x))          = {float(correct):.6f} nats (correct)")
    misuse_sum = ilt.kl_div(jax.nn.softmax(x), jax.nn.softmax(y), reduction="sum")
    misuse_mean = ilt.kl_div(jax.nn.softmax(x), jax.nn.softmax(y), reduction="mean")
    print(f"   kl_div(softmax(x), softmax(y)), sum   = {float(misuse_sum):.6f} (negative: wrong)")
    print(f"   kl_div(softmax(x), softmax(y)), mean  = {float(misuse_mean):.6f} (negative: wrong)")
    fixed = ilt.kl_div(jax.nn.log_softmax(x), jax.nn.softmax(y), reduction="sum")
    print(
        f"   kl_div(log_softmax(x), softmax(y))    = {float(fixed):.6f} (input must be log-probs)"
    )
    try:
        il.checked(il.kl_divergence)(jax.nn.softmax(x), jax.nn.softmax(y))
    except ValueError as error:
        print(f"   checked(kl_divergence) on the misuse raises:\n     ValueError: {error}")

    print("\n3. Why cross-entropy rather than KL: H(p, q) = H(p) + KL(p || q)")
    model, target = jnp.array([1.0, -0.5, 0.3]), jnp.array([0.2, 0.9, -1.0])
    p = jax.nn.softmax(target)
    cross_entropy = il.softmax_cross_entropy(model, p)
    entropy, kl = il.entropy(target), il.forward_kl(model, target)
    print(f"   H(p, q) = {float(cross_entropy):.6f}")
    print(
        f"   H(p) + KL(p || q) = {float(entropy):.6f} + {float(kl):.6f} = {float(entropy + kl):.6f}"
    )
    grad_ce = jax.grad(lambda z: il.softmax_cross_entropy(z, p))(model)
    grad_kl = jax.grad(lambda z: il.forward_kl(z, target))(model)
    gap = float(jnp.max(jnp.abs(grad_ce - grad_kl)))
    print(f"   with a fixed target both gradients are q - p; max |difference| = {gap:.1e}")


if __name__ == "__main__":
    main()
