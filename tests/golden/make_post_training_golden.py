"""Makes the PyTorch golden numbers of the post-training losses (policy, preference, KL
estimators) that ``tests/post_training/test_policy.py``,
``tests/post_training/test_preference.py`` and ``tests/post_training/test_kl_estimate.py``
compare against.

Usage (needs ``torch`` and ``numpy``; neither is a test dependency of infoloss_jax)::

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python tests/golden/make_post_training_golden.py \
        > tests/golden/post_training_golden.py
    ruff format tests/golden/post_training_golden.py

The formulas are written here in plain torch, following the conventions of TRL's trainers
(``GRPOTrainer`` loss types ``"grpo"``, ``"bnpo"``, ``"dr_grpo"``; ``DPOTrainer`` loss types
``"sigmoid"`` with label smoothing, ``"ipo"``, ``"hinge"``; ``CPOTrainer`` with ``"sigmoid"`` and
``"simpo"``; ``ORPOTrainer``; ``KTOTrainer``), of Liger-Kernel's chunked losses (which share
them), and of verl's dual clip. The inputs are the literals of ``INPUTS``; the tests import them
from here, so torch is only imported by :func:`main`. Everything is float64, printed with
``repr``. Keys are ``"<family>/<case>/<quantity>"``; gradients are keyed ``"grad/..."``.
"""

from __future__ import annotations

# --- Inputs: plain Python literals, shared with the tests. -------------------------------------

INPUTS = {
    # Token log-probs of 3 completions x 5 tokens (policy, sampling policy, reference).
    "log_probs": [
        [-1.2, -0.4, -2.3, -0.9, -3.1],
        [-0.2, -1.7, -0.6, -2.8, -1.1],
        [-2.0, -0.05, -1.4, -0.7, -0.3],
    ],
    "old_log_probs": [
        [-1.0, -0.6, -2.0, -1.5, -2.9],
        [-0.5, -1.6, -0.9, -2.0, -1.3],
        [-1.7, -0.3, -1.45, -0.2, -0.8],
    ],
    "ref_log_probs": [
        [-1.1, -0.5, -2.6, -1.2, -2.5],
        [-0.4, -1.5, -0.7, -3.0, -1.0],
        [-1.8, -0.2, -1.2, -0.6, -0.5],
    ],
    # Completion mask: rows of 5, 3 and 4 tokens.
    "mask": [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]],
    "advantages": [1.5, -0.8, 0.4],
    "token_advantages": [
        [1.0, -0.5, 0.3, 2.0, -1.2],
        [-0.7, 0.9, -1.1, 0.2, 0.6],
        [0.4, -2.0, 1.3, -0.3, 0.8],
    ],
    "entropy": [
        [2.1, 0.8, 1.5, 1.1, 2.7],
        [0.3, 1.9, 0.9, 2.2, 1.4],
        [1.6, 0.2, 1.2, 0.7, 0.5],
    ],
    # Rewards of 2 prompts x 4 samples (TRL's layout: each prompt's samples consecutive).
    "rewards": [1.0, 0.0, 0.5, 1.0, 0.2, 0.2, 0.9, 0.1],
    # Per-sequence log-prob sums of 4 preference pairs, policy and reference, and lengths.
    "chosen": [-12.5, -30.2, -8.1, -20.0],
    "rejected": [-14.0, -28.9, -11.3, -19.5],
    "ref_chosen": [-13.1, -29.5, -9.0, -20.4],
    "ref_rejected": [-13.5, -29.9, -10.2, -18.7],
    "chosen_lengths": [10, 24, 6, 15],
    "rejected_lengths": [12, 20, 9, 14],
    # KTO: 6 unpaired examples, their flags, and the mismatched-pair log-probs for z0.
    "kto_log_probs": [-10.2, -7.5, -15.1, -9.9, -4.3, -12.0],
    "kto_ref_log_probs": [-11.0, -7.1, -14.2, -10.5, -5.0, -11.2],
    "kto_desirable": [True, False, True, False, True, False],
    "kto_kl_log_probs": [-20.1, -18.4, -25.0, -16.2, -19.9, -22.3],
    "kto_kl_ref_log_probs": [-20.5, -18.2, -25.6, -16.9, -20.0, -22.0],
    # Token log-probs and entropy: logits of 4 tokens x 6 classes, class 4 excluded (-inf,
    # which the fused test puts in the bias), the sampled tokens, and the cotangents a and b of
    # the objective sum(a * log_probs) + sum(b * entropy).
    "lp_logits": [
        [2.0, -1.0, 0.5, 3.5, float("-inf"), -0.25],
        [-0.5, 0.0, 1.5, -2.0, float("-inf"), 4.0],
        [1.0, 1.0, 1.0, 1.0, float("-inf"), 1.0],
        [-3.0, 6.0, 0.2, -1.2, float("-inf"), 0.7],
    ],
    "lp_labels": [3, 2, 0, 5],
    "lp_a": [1.0, -0.5, 0.25, 2.0],
    "lp_b": [0.1, 0.3, -0.2, 0.05],
}

GRPO_CLIP = {"clip_low": 0.2, "clip_high": 0.28}
GRPO_BETA = 0.04
GRPO_ENTROPY_COEF = 0.01
GRPO_MAX_TOKENS = 8
DUAL_CLIP = 3.0
DPO_BETA = 0.1
IPO_BETA = 0.5
CDPO_SMOOTHING = 0.2
SIMPO_BETA = 2.0
SIMPO_GAMMA = 0.5
ORPO_BETA = 0.1
CPO_BETA = 0.1
CPO_ALPHA = 1.0
KTO_BETA = 0.1
KTO_WEIGHTS = {"desirable_weight": 1.0, "undesirable_weight": 1.33}
GROUP_SIZE = 4
LOG_PROB_CASES = {"plain": (1.0, None), "temperature_softcap": (0.7, 3.0)}
GROUP_EPS = 1e-6


def _fmt(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return repr(float(value))


def main() -> None:
    import torch
    import torch.nn.functional as F

    torch.set_default_dtype(torch.float64)

    def t(key):
        return torch.tensor(INPUTS[key], dtype=torch.float64)

    golden: dict[str, object] = {}

    def record(key, value):
        golden[key] = value.detach().tolist()

    # ---------------------------------------------------------------- KL estimators (Schulman)
    lp, ref = t("log_probs"), t("ref_log_probs")
    for name in ("k1", "k2", "k3"):

        def kl_terms(x, name=name):
            log_r = ref - x  # log(r / q) of tokens sampled from q
            if name == "k1":
                return -log_r
            if name == "k2":
                return 0.5 * log_r**2
            return torch.exp(log_r) - 1 - log_r

        record(f"kl/{name}/values", kl_terms(lp))
        x = lp.clone().requires_grad_(True)
        kl_terms(x).sum().backward()
        golden[f"grad/kl/{name}/sum"] = x.grad.tolist()

    # ---------------------------------------------------------------- GRPO group advantages
    rewards = t("rewards").view(-1, GROUP_SIZE)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased, as TRL
    record("grpo/advantages/std", ((rewards - mean) / (std + GROUP_EPS)).view(-1))
    record("grpo/advantages/no_std", (rewards - mean).view(-1))

    # ---------------------------------------------------------------- GRPO clipped loss
    mask = t("mask")

    def per_token_loss(x, adv, *, dual_clip=None, beta=0.0, entropy_coef=0.0):
        coef_1 = torch.exp(x - t("old_log_probs"))
        coef_2 = torch.clamp(coef_1, 1 - GRPO_CLIP["clip_low"], 1 + GRPO_CLIP["clip_high"])
        loss1 = -coef_1 * adv
        loss2 = -coef_2 * adv
        clipped = torch.maximum(loss1, loss2)
        if dual_clip is not None:  # verl's dual clip: cap negative-advantage tokens at -c * A
            clipped = torch.where(adv < 0, torch.minimum(clipped, -dual_clip * adv), clipped)
        out = clipped
        if beta:
            d = ref - x
            out = out + beta * (torch.exp(d) - d - 1)
        if entropy_coef:
            out = out - entropy_coef * t("entropy")
        return out

    def normalize(per_token, kind):
        if kind == "grpo":
            return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
        if kind == "bnpo":
            return (per_token * mask).sum() / mask.sum().clamp(min=1)
        # dr_grpo: the token sum over batch size times the generation budget.
        return (per_token * mask).sum() / (per_token.size(0) * GRPO_MAX_TOKENS)

    adv_seq = t("advantages").unsqueeze(1)
    cases = {
        "plain": dict(adv=adv_seq),
        "token_adv": dict(adv=t("token_advantages")),
        "kl": dict(adv=adv_seq, beta=GRPO_BETA),
        "entropy": dict(adv=adv_seq, entropy_coef=GRPO_ENTROPY_COEF),
        "dual_clip": dict(adv=t("token_advantages"), dual_clip=DUAL_CLIP),
    }
    for case, kw in cases.items():
        for kind in ("grpo", "bnpo", "dr_grpo"):
            record(f"grpo/{case}/{kind}", normalize(per_token_loss(lp, **kw), kind))
            x = lp.clone().requires_grad_(True)
            normalize(per_token_loss(x, **kw), kind).backward()
            golden[f"grad/grpo/{case}/{kind}"] = x.grad.tolist()
    # TRL's metrics on the token-advantage case: clip ratios over the completion mask.
    coef_1 = torch.exp(lp - t("old_log_probs"))
    adv = t("token_advantages")
    low = (coef_1 < 1 - GRPO_CLIP["clip_low"]) & (adv < 0)
    high = (coef_1 > 1 + GRPO_CLIP["clip_high"]) & (adv > 0)
    record("grpo/metrics/clip_low", (low * mask).sum() / mask.sum())
    record("grpo/metrics/clip_high", (high * mask).sum() / mask.sum())
    record("grpo/metrics/clip_region", ((low | high) * mask).sum() / mask.sum())

    # ---------------------------------------------------------------- DPO family (TRL)
    c, r, rc, rr = t("chosen"), t("rejected"), t("ref_chosen"), t("ref_rejected")
    lc, lr = t("chosen_lengths"), t("rejected_lengths")

    def dpo_losses(c, r, kind, beta, label_smoothing=0.0, rc=rc, rr=rr):
        logits = (c - r) - (rc - rr)
        if kind == "sigmoid":
            return (
                -F.logsigmoid(beta * logits) * (1 - label_smoothing)
                - F.logsigmoid(-beta * logits) * label_smoothing
            )
        if kind == "ipo":
            return (logits - 1 / (2 * beta)) ** 2
        return torch.relu(1 - beta * logits)  # hinge

    for name, kind, beta, ls in (
        ("dpo", "sigmoid", DPO_BETA, 0.0),
        ("cdpo", "sigmoid", DPO_BETA, CDPO_SMOOTHING),
        ("ipo", "ipo", IPO_BETA, 0.0),
        ("hinge", "hinge", DPO_BETA, 0.0),
    ):
        record(f"{name}/loss", dpo_losses(c, r, kind, beta, ls).mean())
        record(f"{name}/losses", dpo_losses(c, r, kind, beta, ls))
        xc, xr = c.clone().requires_grad_(True), r.clone().requires_grad_(True)
        dpo_losses(xc, xr, kind, beta, ls).mean().backward()
        golden[f"grad/{name}/chosen"] = xc.grad.tolist()
        golden[f"grad/{name}/rejected"] = xr.grad.tolist()
    record("dpo/chosen_rewards", DPO_BETA * (c - rc))
    record("dpo/rejected_rewards", DPO_BETA * (r - rr))
    # IPO as TRL runs it: every log-prob averaged over its response's tokens.
    record(
        "ipo_avg/loss",
        dpo_losses(c / lc, r / lr, "ipo", IPO_BETA, rc=rc / lc, rr=rr / lr).mean(),
    )

    # SimPO (TRL's CPOTrainer loss_type="simpo", Liger's SimPO): averaged log-probs, margin.
    def simpo_losses(c, r):
        logits = (c / lc - r / lr) - SIMPO_GAMMA / SIMPO_BETA
        return -F.logsigmoid(SIMPO_BETA * logits)

    record("simpo/loss", simpo_losses(c, r).mean())
    record("simpo/chosen_rewards", SIMPO_BETA * c / lc)
    xc, xr = c.clone().requires_grad_(True), r.clone().requires_grad_(True)
    simpo_losses(xc, xr).mean().backward()
    golden["grad/simpo/chosen"] = xc.grad.tolist()
    golden["grad/simpo/rejected"] = xr.grad.tolist()

    # CPO (TRL's CPOTrainer loss_type="sigmoid"): sums, plus cpo_alpha * token-mean NLL.
    def cpo_loss(c, r):
        pref = -F.logsigmoid(CPO_BETA * (c - r))
        nll = -c.sum() / lc.sum()
        return pref.mean() + CPO_ALPHA * nll, nll

    loss, nll = cpo_loss(c, r)
    record("cpo/loss", loss)
    record("cpo/nll", nll)
    xc, xr = c.clone().requires_grad_(True), r.clone().requires_grad_(True)
    cpo_loss(xc, xr)[0].backward()
    golden["grad/cpo/chosen"] = xc.grad.tolist()
    golden["grad/cpo/rejected"] = xr.grad.tolist()

    # ORPO (TRL's ORPOTrainer): averaged log-probs, odds ratio, token-mean NLL on chosen.
    def orpo_loss(c, r):
        ac, ar = c / lc, r / lr
        log_odds = (ac - ar) - (torch.log1p(-torch.exp(ac)) - torch.log1p(-torch.exp(ar)))
        ratio = F.logsigmoid(log_odds)
        nll = -c.sum() / lc.sum()
        return nll - (ORPO_BETA * ratio).mean(), log_odds, nll

    loss, log_odds, nll = orpo_loss(c, r)
    record("orpo/loss", loss)
    record("orpo/log_odds", log_odds)
    record("orpo/nll", nll)
    xc, xr = c.clone().requires_grad_(True), r.clone().requires_grad_(True)
    orpo_loss(xc, xr)[0].backward()
    golden["grad/orpo/chosen"] = xc.grad.tolist()
    golden["grad/orpo/rejected"] = xr.grad.tolist()

    # KTO (TRL's KTOTrainer): z0 from mismatched pairs, detached and clamped at 0.
    klp, kref = t("kto_log_probs"), t("kto_ref_log_probs")
    desirable = torch.tensor(INPUTS["kto_desirable"])
    z0 = (t("kto_kl_log_probs") - t("kto_kl_ref_log_probs")).mean().detach().clamp(min=0)
    record("kto/kl", z0)

    def kto_loss(x):
        logratios = x - kref
        chosen = 1 - torch.sigmoid(KTO_BETA * (logratios[desirable] - z0))
        rejected = 1 - torch.sigmoid(KTO_BETA * (z0 - logratios[~desirable]))
        losses = torch.cat(
            (KTO_WEIGHTS["desirable_weight"] * chosen, KTO_WEIGHTS["undesirable_weight"] * rejected)
        )
        return losses.mean()

    record("kto/loss", kto_loss(klp))
    record("kto/chosen_rewards_mean", (KTO_BETA * (klp - kref))[desirable].mean())
    record("kto/rejected_rewards_mean", (KTO_BETA * (klp - kref))[~desirable].mean())
    x = klp.clone().requires_grad_(True)
    kto_loss(x).backward()
    golden["grad/kto/log_probs"] = x.grad.tolist()

    # ---------------------------------------------------------------- token log-probs, entropy
    # verl's logprobs_from_logits and entropy_from_logits, with the soft cap before the
    # temperature (the sampler's order) and 0 log 0 = 0 on the excluded class.
    labels = torch.tensor(INPUTS["lp_labels"])
    for case, (temperature, cap) in LOG_PROB_CASES.items():

        def token_outputs(z, temperature=temperature, cap=cap):
            if cap is not None:
                z = torch.where(torch.isinf(z), z, cap * torch.tanh(z / cap))
            logp = F.log_softmax(z / temperature, dim=-1)
            picked = logp.gather(-1, labels[:, None])[:, 0]
            finite = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))
            return picked, -(logp.exp() * finite).sum(-1)

        picked, ent = token_outputs(t("lp_logits"))
        record(f"log_probs/{case}/log_probs", picked)
        record(f"log_probs/{case}/entropy", ent)
        x = t("lp_logits").clone().requires_grad_(True)
        picked, ent = token_outputs(x)
        ((t("lp_a") * picked).sum() + (t("lp_b") * ent).sum()).backward()
        golden[f"grad/log_probs/{case}/logits"] = torch.nan_to_num(x.grad, neginf=0.0).tolist()

    print('"""PyTorch golden numbers for the post-training losses (policy, preference, KL).')
    print()
    print(f"Generated with torch {torch.__version__} (CPU, float64)")
    print("by tests/golden/make_post_training_golden.py; inputs are INPUTS in that script. Do not")
    print("edit by hand: rerun the script.")
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
