"""The examples, run as a user runs them (a subprocess, no x64) in tiny configurations."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout: int = 240) -> str:
    env = {**os.environ, "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_ENABLE_X64", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


# Reports, after `script --help`, whether the heavy modules were imported: --help must answer
# at once, and without side effects, before any work starts.
_HELP_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    code = exit.code
else:
    code = "no exit"
heavy = sorted(m for m in ("jax", "nbclient", "optax", "matplotlib") if m in sys.modules)
print("EXIT", code, "HEAVY", ",".join(heavy) or "none")
"""

# The examples that run for more than a few seconds with their defaults: each takes --tiny.
LONG = {
    "distillation.py", "grpo_char_lm.py", "optax_plugin.py", "sharded_lm_head.py",
    "train_char_lm.py",
}  # fmt: skip


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_answers_help_at_once_without_side_effects(script, tmp_path):
    notebook = EXAMPLES / "gradient_derivations.ipynb"
    before = notebook.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("usage: "), result.stdout
    assert result.stdout.rstrip().endswith("EXIT 0 HEAVY none"), result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
    assert notebook.read_bytes() == before  # _build_notebook.py --help does not rebuild it
    if script != "quickstart.py":  # the one script without options
        help_text = " ".join(result.stdout.split())  # argparse wraps long lines
        assert "--out-dir OUT_DIR" in help_text  # one output flag, the same in every script
        assert "(default: outputs)" in help_text or script == "_build_notebook.py"
        options = re.findall(r"^  (--[a-z-]+)", result.stdout, flags=re.MULTILINE)
        assert len(re.findall(r"\(default: ", help_text)) == len(options), result.stdout
    assert ("--tiny" in result.stdout) == (script in LONG)


@pytest.mark.slow
def test_train_char_lm_on_the_corpus_learns_and_writes_its_outputs(tmp_path):
    out = run_example("train_char_lm.py", "--tiny", "--no-progress", "--out-dir", str(tmp_path))
    results = json.loads((tmp_path / "train_char_lm.json").read_text())
    png = (tmp_path / "train_char_lm.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert results["val_loss"] < results["initial_val_loss"] - 0.3
    assert results["val_bits_per_char"] == pytest.approx(results["val_loss"] / 0.6931471805599453)
    history = results["history"]
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert len(history["val_entropy"]) == len(history["eval_step"]) == 3
    for label in ("train loss", "val loss", "perplexity", "bits per character", "mean entropy"):
        assert label in out
    assert "unigram entropy" in out
    assert results["floor_nats"] == pytest.approx(3.016, abs=0.01)  # the KJV corpus, in nats
    assert len(results["sample"]) == 16
    # The gap to the unigram entropy is worded by its sign, never "-0.27 nats better".
    gap, word = re.search(r"this model is (\S+) nats (better|worse)\)", out).groups()
    expected = results["floor_nats"] - results["val_loss"]
    assert float(gap) == pytest.approx(abs(expected), abs=1e-4)
    assert word == ("better" if expected >= 0 else "worse")
    # The sample shows where the prompt ends and the model's continuation starts.
    assert "[prompt: 32 characters of validation text]" in out
    assert "[model: 16 characters, at temperature 0.8]" in out


@pytest.mark.slow
def test_train_char_lm_markov_source_prints_the_entropy_rate_floor(tmp_path):
    out = run_example(
        "train_char_lm.py", "--tiny", "--no-progress", "--source", "markov", "--temperature", "0",
        "--out-dir", str(tmp_path),
    )  # fmt: skip
    results = json.loads((tmp_path / "train_char_lm.json").read_text())
    assert "entropy rate" in out
    assert "[model: 16 characters, greedy (temperature 0)]" in out
    assert "true source's CE on val" in out
    # The true source is (nearly) the best predictor: the model, trained for 40 steps, is worse.
    assert results["oracle_val_loss"] < results["val_loss"]
    assert abs(results["oracle_val_loss"] - results["floor_nats"]) < 0.3


@pytest.mark.slow
def test_train_char_lm_refuses_a_negative_temperature():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    script = str(EXAMPLES / "train_char_lm.py")
    result = subprocess.run(
        [sys.executable, script, "--temperature", "-1"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert "--temperature must be >= 0 (0 samples greedily)" in result.stderr


@pytest.mark.slow
def test_grpo_char_lm_raises_the_reward_and_runs_dpo(tmp_path):
    out = run_example("grpo_char_lm.py", "--tiny", "--no-progress", "--out-dir", str(tmp_path))
    results = json.loads((tmp_path / "grpo_char_lm.json").read_text())
    assert (tmp_path / "grpo_char_lm.png").read_bytes().startswith(b"\x89PNG")
    before, grpo = results["before"], results["grpo"]
    assert abs(before["kl"]) < 1e-6  # the reference scored against itself
    assert grpo["reward"] > before["reward"] + 0.1
    assert grpo["kl"] > 0.0
    history = results["grpo_history"]
    assert len(history["reward"]) == len(history["kl"]) == len(history["entropy"]) == 8
    assert all(0.0 <= r <= 1.0 for r in history["reward"])
    dpo = results["dpo_history"]
    assert len(dpo["loss"]) == 4
    assert dpo["loss"][-1] < 0.6931  # below log 2, the loss at the reference
    assert 0 < results["dpo_pairs"] <= 32
    for label in ("GRPO, on held-out prompts", "DPO on", "reward accuracy", "reference:"):
        assert label in out
    assert len(results["samples"]["grpo"]) == 8


@pytest.mark.slow
def test_optax_plugin_gives_the_same_trajectory_and_saves_memory(tmp_path):
    out = run_example("optax_plugin.py", "--tiny", "--out-dir", str(tmp_path))
    max_diff = float(re.search(r"largest difference over 20 steps: (\S+)", out).group(1))
    assert max_diff < 1e-5
    naive = float(re.search(r"materialized logits\s+(\S+) MiB", out).group(1))
    fused = float(re.search(r"fused head\s+(\S+) MiB", out).group(1))
    assert fused < naive / 2  # at realistic sizes (the defaults) the saving is about 40x
    results = json.loads((tmp_path / "optax_plugin.json").read_text())
    assert results["max_diff"] == pytest.approx(max_diff, rel=0.01)


@pytest.mark.slow
def test_distillation_runs_every_objective(tmp_path):
    out = run_example(
        "distillation.py", "--tiny", "--temperature", "2", "--beta", "0.3",
        "--out-dir", str(tmp_path), "--no-progress",
    )  # fmt: skip
    summary = json.loads((tmp_path / "distillation.json").read_text())
    assert (tmp_path / "distillation.png").read_bytes().startswith(b"\x89PNG")
    assert set(summary["students"]) == {"forward KL", "reverse KL", "JSD (beta=0.3)"}
    for stats in summary["students"].values():
        assert 0.0 <= stats["entropy"] <= 1.3863  # at most log 4
        assert 0.0 <= stats["accuracy"] <= 1.0
        assert stats["forward_kl"] >= 0 and stats["reverse_kl"] >= 0
    assert "JSD (beta=0.3)" in out


@pytest.mark.slow
def test_quickstart_prints_the_blog_posts_numbers():
    out = run_example("quickstart.py")
    assert "= 1.5000 bits" in out and "= 1.5850 bits" in out
    assert "= 0.043053 nats (correct)" in out
    assert "-1.150094 (negative: wrong)" in out
    assert "checked(kl_divergence) on the misuse raises" in out
