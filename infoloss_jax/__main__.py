"""``python -m infoloss_jax``: version, JAX backend and devices, and a one-screen self-check.

The self-check recomputes, in float32 with infoloss_jax, the numbers of the notes this library
grew from, a short Chinese blog post on LLM loss functions written with PyTorch: entropy from
counts, the direction of KL, PyTorch's ``F.kl_div`` misused on probabilities, and
H(p, q) = H(p) + KL(p || q). Each expected value is exact (computed in float64 from its
formula), both values are printed at the same precision, and a check passes when
``|computed - expected| <= tolerance``, the tolerance printed beside it. The exit status is 0
when every check passes, 1 otherwise.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import infoloss_jax as il

# The background notes' two-class example: "input" x and "target" y, as logits.
X = [0.5, 0.5]
Y = [0.2, 0.8]


def _entropy_bits(counts) -> float:
    return float(il.entropy_from_counts(jnp.asarray(counts, jnp.float32), base=2))


def _kl_direction() -> float:
    return float(il.forward_kl(jnp.asarray(X), jnp.asarray(Y)))  # KL(softmax(y) || softmax(x))


def _torch_misuse(reduction: str) -> Callable[[], float]:
    def compute() -> float:
        torch_api = importlib.import_module("infoloss_jax.torch")
        probabilities_not_logs = jax.nn.softmax(jnp.asarray(X))  # the mistake: no log
        target = jax.nn.softmax(jnp.asarray(Y))
        return float(torch_api.kl_div(probabilities_not_logs, target, reduction=reduction))

    return compute


def _checked_catches_misuse() -> float:
    """1.0 when ``il.checked`` rejects probabilities passed as log-probabilities."""
    try:
        il.checked(il.kl_divergence)(jax.nn.softmax(jnp.asarray(X)), jax.nn.softmax(jnp.asarray(Y)))
    except ValueError:
        return 1.0
    return 0.0


def _cross_entropy_decomposition() -> float:
    """max |H(p, q) - (H(p) + KL(p || q))| over random distributions (should be round-off)."""
    key_p, key_q = jax.random.split(jax.random.key(0))
    target_logits = 2.0 * jax.random.normal(key_p, (16, 10))
    logits = 2.0 * jax.random.normal(key_q, (16, 10))
    p = jax.nn.softmax(target_logits)
    cross_entropy = il.softmax_cross_entropy(logits, p)
    decomposition = il.entropy(target_logits) + il.forward_kl(logits, target_logits)
    return float(jnp.max(jnp.abs(cross_entropy - decomposition)))


def _softmax64(logits: list[float]) -> list[float]:
    exps = [math.exp(v - max(logits)) for v in logits]
    return [e / sum(exps) for e in exps]


# Exact references, in float64 from the formulas: p = softmax(y) is the target, q = softmax(x).
_P, _Q = _softmax64(Y), _softmax64(X)
KL_EXACT = sum(p * (math.log(p) - math.log(q)) for p, q in zip(_P, _Q, strict=True))
# F.kl_div(input, target, "sum") = sum target * (log target - input); the misuse passes q itself
# as `input` where log q belongs.
MISUSE_SUM_EXACT = sum(p * (math.log(p) - q) for p, q in zip(_P, _Q, strict=True))

# (description, exact expected value, tolerance, computation)
CHECKS: list[tuple[str, float, float, Callable[[], float]]] = [
    ("H({a: 2, b: 2, c: 4}) in bits", 1.5, 1e-6, lambda: _entropy_bits([2, 2, 4])),
    (
        "H({a: 1, b: 1, c: 1}) in bits = log2 3",
        math.log2(3),
        1e-6,
        lambda: _entropy_bits([1, 1, 1]),
    ),
    ("KL(softmax(y) || softmax(x)) in nats", KL_EXACT, 1e-6, _kl_direction),
    ("torch kl_div(softmax(x), .) 'sum' (misuse)", MISUSE_SUM_EXACT, 2e-6, _torch_misuse("sum")),
    (
        "torch kl_div(softmax(x), .) 'mean' (misuse)",
        MISUSE_SUM_EXACT / len(X),
        2e-6,
        _torch_misuse("mean"),
    ),
    ("checked(kl_divergence) rejects that misuse", 1.0, 0.0, _checked_catches_misuse),
    ("max |H(p,q) - H(p) - KL(p||q)|", 0.0, 1e-5, _cross_entropy_decomposition),
]


def run_checks(out=sys.stdout) -> bool:
    """Prints one PASS/FAIL line per check; returns True when all pass."""
    all_passed = True
    print(f"        {'':44} {'computed':>11} {'expected':>11}  tolerance", file=out)
    for description, expected, tolerance, compute in CHECKS:
        try:
            got = compute()
            passed = bool(np.isfinite(got) and abs(got - expected) <= tolerance)
            shown = f"{got:11.7f}"
        except ModuleNotFoundError as error:  # an optional public module is missing
            passed, shown = False, f"missing {error.name}"
        all_passed &= passed
        verdict = "PASS" if passed else "FAIL"
        tolerance_shown = f"{tolerance:.0e}" if tolerance else "0"
        print(
            f"  {verdict}  {description:44} {shown:>11} {expected:11.7f}  {tolerance_shown}",
            file=out,
        )
    return all_passed


def main(out=sys.stdout) -> int:
    devices = jax.devices()
    print(f"infoloss_jax {il.__version__}  (jax {jax.__version__})", file=out)
    print(f"backend: {jax.default_backend()}  devices: {len(devices)}", file=out)
    for device in devices[:8]:
        print(f"  {device}", file=out)
    if len(devices) > 8:
        print(f"  ... and {len(devices) - 8} more", file=out)
    print(
        "\nself-check of the background notes' numbers (x = [0.5, 0.5], y = [0.2, 0.8]); a check\n"
        "passes when |computed - expected| <= tolerance:",
        file=out,
    )
    passed = run_checks(out)
    print(f"\n{'all checks passed' if passed else 'SOME CHECKS FAILED'}", file=out)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
