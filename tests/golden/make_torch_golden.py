"""Makes the PyTorch golden numbers that ``tests/torch_layer/test_torch.py`` and
``tests/core/test_llm_options.py`` compare against.

Usage (needs ``torch`` and ``numpy``; neither is a test dependency of infoloss_jax)::

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python tests/golden/make_torch_golden.py > tests/golden/torch_golden.py
    ruff format tests/golden/torch_golden.py

The inputs are small literals defined in this file (``INPUTS``). The tests import them from here,
so they rebuild exactly the same inputs without torch: ``torch`` is only imported by :func:`main`.
Every golden is computed in float64 (printed with ``repr``, so it round-trips exactly), except the
background notes' ``kl_div`` misuse, which is also recorded in float32 as the notes print it.
Keys are ``"<function>/<case>/<reduction>"``; gradients are keyed ``"grad/..."`` and hold the
gradient of the reduced loss with respect to ``input`` (or ``target`` where the key says so).
"""

from __future__ import annotations

import math

# --- Inputs: plain Python literals, shared with the tests. -------------------------------------

INPUTS = {
    # [N=4, C=5] logits (also used as arbitrary log-probability inputs of nll_loss).
    "logits": [
        [0.5, -1.25, 2.0, 0.0, 1.5],
        [-0.75, 0.25, 1.0, -2.0, 0.5],
        [3.0, 1.0, -1.0, 0.5, -0.5],
        [0.125, 0.875, -0.25, 1.75, -1.5],
    ],
    "labels": [2, 0, 4, 3],
    # The same labels with two rows ignored by torch's default ignore_index=-100.
    "labels_ignored": [2, -100, 4, -100],
    # The same labels with rows of class 1 ignored through a custom ignore_index=1.
    "labels_custom_ignore": [1, 0, 4, 1],
    "all_ignored": [-100, -100, -100, -100],
    "weight": [0.2, 1.0, 0.5, 2.0, 1.5],
    # Probability targets [N=4, C=5], with exact zeros.
    "probs": [
        [0.1, 0.2, 0.3, 0.4, 0.0],
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [0.25, 0.25, 0.25, 0.25, 0.0],
        [0.05, 0.15, 0.5, 0.2, 0.1],
    ],
    # K-dimensional loss: [N=2, C=3, d=4] and labels [N=2, d=4].
    "logits_nd": [
        [[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 1.0], [-1.0, 2.5, 0.75, -0.25]],
        [[0.0, 1.25, -1.5, 2.0], [-0.5, 0.5, 1.0, -1.0], [2.0, -2.0, 0.125, 0.375]],
    ],
    "labels_nd": [[0, 2, -100, 1], [2, -100, 0, 1]],
    "weight_nd": [0.5, 2.0, 1.25],
    # Unbatched: input [C=5], an index target and a probability target.
    "logits_1d": [1.0, -0.5, 0.25, 2.0, -1.0],
    "label_1d": 3,
    "probs_1d": [0.1, 0.0, 0.3, 0.5, 0.1],
    # kl_div: arbitrary log-probabilities and targets (probabilities with zeros, and logs).
    "kl_input": [[-1.5, -0.5, -2.0, -1.0], [-0.25, -3.0, -1.75, -0.8]],
    "kl_target": [[0.2, 0.0, 0.5, 0.3], [0.6, 0.1, 0.0, 0.3]],
    "kl_log_target": [[-1.2, -2.5, -0.7, -1.1], [-0.4, -2.0, -3.5, -1.3]],
    # The background notes' misuse: kl_div(softmax(x), softmax(y)), x=[0.5,0.5], y=[0.2,0.8].
    "notes_x": [0.5, 0.5],
    "notes_y": [0.2, 0.8],
    # Binary losses, [N=3, C=4].
    "bce_logits": [[0.5, -1.0, 2.0, -3.0], [1.25, 0.0, -0.5, 4.0], [-2.0, 0.75, 1.5, -0.25]],
    "bce_targets": [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.25, 1.0], [0.5, 0.0, 1.0, 0.75]],
    "bce_weight": [0.5, 1.0, 2.0, 1.5],
    "bce_weight_full": [[1.0, 0.5, 2.0, 0.0], [1.5, 1.0, 0.25, 1.0], [0.75, 2.0, 1.0, 0.5]],
    "bce_pos_weight": [2.0, 0.5, 1.0, 3.0],
    # Probabilities for binary_cross_entropy, with exact 0 and 1 to hit torch's log clamp at -100.
    "bce_probs": [[0.0, 1.0, 0.25, 0.9], [1.0, 0.0, 0.5, 0.1], [0.0, 1.0, 0.75, 0.6]],
    "bce_probs_targets": [[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 0.3, 0.6]],
    # Interior probabilities only (for gradients that are not at the clamp).
    "bce_probs_interior": [[0.2, 0.9, 0.25, 0.5], [0.7, 0.05, 0.5, 0.1], [0.3, 0.95, 0.75, 0.6]],
}

REDUCTIONS = ("none", "sum", "mean")

# Index-target cross_entropy cases: (name, keyword arguments as INPUTS keys or literals).
CE_INDEX_CASES = {
    "plain": dict(target="labels"),
    "weight": dict(target="labels", weight="weight"),
    "ignore": dict(target="labels_ignored"),
    "custom_ignore": dict(target="labels_custom_ignore", ignore_index=1),
    "ls": dict(target="labels", label_smoothing=0.1),
    "weight_ls": dict(target="labels", weight="weight", label_smoothing=0.2),
    "weight_ignore_ls": dict(target="labels_ignored", weight="weight", label_smoothing=0.15),
}

CE_PROB_CASES = {
    "plain": dict(),
    "weight": dict(weight="weight"),
    "ls": dict(label_smoothing=0.1),
    "weight_ls": dict(weight="weight", label_smoothing=0.2),
}


# Options of the "nd_weight_ls" K-dimensional case.
ND_OPTIONS = dict(weight="weight_nd", label_smoothing=0.1)

NLL_CASES = {
    "plain": dict(target="labels"),
    "weight": dict(target="labels", weight="weight"),
    "weight_ignore": dict(target="labels_ignored", weight="weight"),
    "custom_ignore": dict(target="labels_custom_ignore", ignore_index=1),
}

BCE_CASES = {
    "plain": dict(),
    "weight": dict(weight="bce_weight"),
    "weight_full": dict(weight="bce_weight_full"),
    "pos_weight": dict(pos_weight="bce_pos_weight"),
    "weight_pos_weight": dict(weight="bce_weight", pos_weight="bce_pos_weight"),
}


def _fmt(x) -> str:
    """Formats nested lists of floats exactly (repr round-trips), with nan/inf spelled out."""
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    if math.isnan(x):
        return 'float("nan")'
    if math.isinf(x):
        return 'float("inf")' if x > 0 else '-float("inf")'
    return repr(float(x))


def main() -> None:
    import warnings

    import torch
    import torch.nn.functional as F

    # kl_div(reduction="mean") warns that "mean" is the element mean: that is what we record.
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides")
    torch.set_default_dtype(torch.float64)

    def t(key, **kw):
        return torch.tensor(INPUTS[key], **kw)

    golden: dict[str, object] = {}

    def record(key, value):
        golden[key] = value.detach().tolist()

    def record_grad(key, fn, x):
        x = x.clone().requires_grad_(True)
        fn(x).backward()
        golden[key] = x.grad.tolist()

    def resolve(kw):
        out = {}
        for k, v in kw.items():
            out[k] = t(v) if k == "weight" else v
        return out

    logits = t("logits")
    # cross_entropy, index targets.
    for name, case in CE_INDEX_CASES.items():
        case = dict(case)
        target = t(case.pop("target"))
        kw = resolve(case)
        for reduction in REDUCTIONS:
            record(
                f"cross_entropy/{name}/{reduction}",
                F.cross_entropy(logits, target, reduction=reduction, **kw),
            )
        record_grad(
            f"grad/cross_entropy/{name}/mean",
            lambda x, target=target, kw=kw: F.cross_entropy(x, target, **kw),
            logits,
        )
    # All rows ignored: torch's mean is 0/0 = nan (infoloss_jax returns 0, documented).
    for reduction in REDUCTIONS:
        record(
            f"cross_entropy/all_ignored/{reduction}",
            F.cross_entropy(logits, t("all_ignored"), reduction=reduction),
        )
    # K-dimensional.
    nd = dict(weight=t(ND_OPTIONS["weight"]), label_smoothing=ND_OPTIONS["label_smoothing"])
    for reduction in REDUCTIONS:
        record(
            f"cross_entropy/nd/{reduction}",
            F.cross_entropy(t("logits_nd"), t("labels_nd"), reduction=reduction),
        )
        record(
            f"cross_entropy/nd_weight_ls/{reduction}",
            F.cross_entropy(t("logits_nd"), t("labels_nd"), reduction=reduction, **nd),
        )
    record_grad(
        "grad/cross_entropy/nd_weight_ls/mean",
        lambda x: F.cross_entropy(x, t("labels_nd"), **nd),
        t("logits_nd"),
    )
    # Unbatched.
    for reduction in REDUCTIONS:
        record(
            f"cross_entropy/unbatched_index/{reduction}",
            F.cross_entropy(t("logits_1d"), t("label_1d"), reduction=reduction),
        )
        record(
            f"cross_entropy/unbatched_probs/{reduction}",
            F.cross_entropy(t("logits_1d"), t("probs_1d"), reduction=reduction),
        )
    # cross_entropy, probability targets.
    for name, case in CE_PROB_CASES.items():
        kw = resolve(case)
        for reduction in REDUCTIONS:
            record(
                f"cross_entropy_probs/{name}/{reduction}",
                F.cross_entropy(logits, t("probs"), reduction=reduction, **kw),
            )
        record_grad(
            f"grad/cross_entropy_probs/{name}/mean",
            lambda x, kw=kw: F.cross_entropy(x, t("probs"), **kw),
            logits,
        )

    # nll_loss (logits used as arbitrary log-probability inputs).
    for name, case in NLL_CASES.items():
        case = dict(case)
        target = t(case.pop("target"))
        kw = resolve(case)
        for reduction in REDUCTIONS:
            record(
                f"nll_loss/{name}/{reduction}",
                F.nll_loss(logits, target, reduction=reduction, **kw),
            )
    record_grad(
        "grad/nll_loss/weight_ignore/mean",
        lambda x: F.nll_loss(x, t("labels_ignored"), weight=t("weight")),
        logits,
    )
    for reduction in REDUCTIONS:
        record(
            f"nll_loss/nd/{reduction}",
            F.nll_loss(t("logits_nd"), t("labels_nd"), weight=t("weight_nd"), reduction=reduction),
        )

    # kl_div.
    for reduction in ("none", "sum", "mean", "batchmean"):
        record(
            f"kl_div/probs/{reduction}",
            F.kl_div(t("kl_input"), t("kl_target"), reduction=reduction),
        )
        record(
            f"kl_div/log_target/{reduction}",
            F.kl_div(t("kl_input"), t("kl_log_target"), reduction=reduction, log_target=True),
        )
    record_grad(
        "grad/kl_div/probs/batchmean",
        lambda x: F.kl_div(x, t("kl_target"), reduction="batchmean"),
        t("kl_input"),
    )
    record_grad(
        "grad/kl_div/log_target/batchmean",
        lambda x: F.kl_div(x, t("kl_log_target"), reduction="batchmean", log_target=True),
        t("kl_input"),
    )
    record_grad(
        "grad_target/kl_div/log_target/sum",
        lambda y: F.kl_div(t("kl_input"), y, reduction="sum", log_target=True),
        t("kl_log_target"),
    )
    for dtype_name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        x = torch.softmax(torch.tensor(INPUTS["notes_x"], dtype=dtype), -1)
        y = torch.softmax(torch.tensor(INPUTS["notes_y"], dtype=dtype), -1)
        for reduction in ("sum", "mean", "batchmean", "none"):
            misuse = F.kl_div(x, y, reduction=reduction)
            record(f"kl_div/notes_misuse_{dtype_name}/{reduction}", misuse)
        # The correct use: log-probabilities as input, KL(softmax(y) || softmax(x)).
        record(
            f"kl_div/notes_correct_{dtype_name}/sum",
            F.kl_div(torch.log(x), y, reduction="sum"),
        )

    # binary_cross_entropy_with_logits.
    for name, case in BCE_CASES.items():
        kw = {k: t(v) for k, v in case.items()}
        for reduction in REDUCTIONS:
            record(
                f"bce_with_logits/{name}/{reduction}",
                F.binary_cross_entropy_with_logits(
                    t("bce_logits"), t("bce_targets"), reduction=reduction, **kw
                ),
            )
        record_grad(
            f"grad/bce_with_logits/{name}/mean",
            lambda x, kw=kw: F.binary_cross_entropy_with_logits(x, t("bce_targets"), **kw),
            t("bce_logits"),
        )

    # binary_cross_entropy on probabilities, incl. exact 0/1 (log clamped at -100).
    for name, kw in (("plain", {}), ("weight", {"weight": t("bce_weight")})):
        for reduction in REDUCTIONS:
            record(
                f"bce/{name}/{reduction}",
                F.binary_cross_entropy(
                    t("bce_probs"), t("bce_probs_targets"), reduction=reduction, **kw
                ),
            )
        record_grad(
            f"grad/bce/{name}/sum",
            lambda x, kw=kw: F.binary_cross_entropy(
                x, t("bce_probs_targets"), reduction="sum", **kw
            ),
            t("bce_probs"),
        )
        record_grad(
            f"grad/bce_interior/{name}/mean",
            lambda x, kw=kw: F.binary_cross_entropy(x, t("bce_probs_targets"), **kw),
            t("bce_probs_interior"),
        )
    record_grad(
        "grad_target/bce/plain/sum",
        lambda y: F.binary_cross_entropy(t("bce_probs"), y, reduction="sum"),
        t("bce_probs_targets"),
    )

    print('"""PyTorch golden numbers for infoloss_jax.torch and the core LLM options.')
    print()
    print(f"Generated with torch {torch.__version__} (CPU, float64 unless the key says float32)")
    print("by tests/golden/make_torch_golden.py; inputs are INPUTS in that script. Do not edit by")
    print("hand: rerun the script.")
    print('"""')
    print()
    print(f"TORCH_VERSION = {torch.__version__!r}")
    print()
    print("GOLDEN = {")
    for key, value in golden.items():
        print(f"    {key!r}: {_fmt(value)},")
    print("}")


if __name__ == "__main__":
    main()
