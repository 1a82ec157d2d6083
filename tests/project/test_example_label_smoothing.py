"""examples/label_smoothing_asr.py, run as a user runs it (a subprocess, no x64)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "label_smoothing_asr.py"
LINE = re.compile(
    r"normalize_length=(True|False)\s*: wenet_kl=(\S+) ce_minus_entropy=(\S+) \|diff\|=\S+ "
    r"max\|grad diff\|=(\S+) max\|grad\|=(\S+)"
)


@pytest.mark.slow
def test_wenet_kl_equals_cross_entropy_minus_target_entropy(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_ENABLE_X64", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--vocab", "16", "--smoothing", "0.2"]
        + ["--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "H(smoothed target) = " in out
    rows = {m[0]: m[1:] for m in LINE.findall(out)}
    assert set(rows) == {"True", "False"}, out
    for wenet, ours, grad_diff, grad_max in rows.values():
        assert float(ours) == pytest.approx(float(wenet), rel=1e-5)
        assert float(grad_max) > 1e-3  # the gradients are not trivially zero ...
        assert float(grad_diff) < 1e-6  # ... and they agree
    # Normalizing by tokens divides by more than normalizing by the batch of 4 sequences.
    assert float(rows["True"][0]) < float(rows["False"][0])
    written = json.loads((tmp_path / "label_smoothing_asr.json").read_text())
    assert written["normalize_length"]["True"]["wenet_kl"] == pytest.approx(float(rows["True"][0]))
