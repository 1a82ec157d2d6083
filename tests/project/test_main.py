"""`python -m infoloss_jax`: version, backend, devices and the background notes' self-check."""

import io
import re
import subprocess
import sys

import pytest

import infoloss_jax as il
from infoloss_jax import __main__ as cli


@pytest.mark.slow
def test_module_entry_point_passes_every_check():
    result = subprocess.run(
        [sys.executable, "-m", "infoloss_jax"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"infoloss_jax {il.__version__}" in out
    assert "backend: " in out
    assert out.count("PASS") == len(cli.CHECKS)
    assert "FAIL" not in out
    for number in ("1.5000000", "1.5849625", "0.0430530", "-0.5750471"):
        assert number in out
    assert "all checks passed" in out


def test_each_line_shows_computed_and_expected_at_one_precision_and_the_tolerance():
    out = io.StringIO()
    assert cli.main(out=out) == 0
    text = out.getvalue()
    assert "|computed - expected| <= tolerance" in text
    rows = re.findall(r"^  PASS  (.+?)\s+(-?\d+\.\d{7})\s+(-?\d+\.\d{7})\s+(\S+)$", text, re.M)
    assert len(rows) == len(cli.CHECKS)
    for description, computed, expected, tolerance in rows:
        # Shown to 7 decimals, so the shown difference may exceed the tolerance by rounding.
        assert abs(float(computed) - float(expected)) <= float(tolerance) + 1e-7, description
    shown = {
        description.strip(): (computed, expected) for description, computed, expected, _ in rows
    }
    # float32 and the exact value agree to the digits shown: no "PASS -1.1500942 (expected
    # -1.1500941)".
    misuse = shown["torch kl_div(softmax(x), .) 'sum' (misuse)"]
    assert misuse == ("-1.1500942", "-1.1500942")


def test_the_expected_values_are_the_exact_ones():
    assert cli.KL_EXACT == pytest.approx(0.043053013809536786, rel=1e-15)
    assert cli.MISUSE_SUM_EXACT == pytest.approx(-1.1500941667504083, rel=1e-15)


def test_a_wrong_number_prints_fail_and_exits_nonzero(monkeypatch):
    wrong = [("deliberately wrong", 1.0, 1e-6, lambda: 2.0), *cli.CHECKS[:1]]
    monkeypatch.setattr(cli, "CHECKS", wrong)
    out = io.StringIO()
    assert cli.main(out=out) == 1
    text = out.getvalue()
    assert "FAIL  deliberately wrong" in text
    assert "PASS" in text
    assert "SOME CHECKS FAILED" in text


def test_a_missing_optional_module_is_a_fail_not_a_crash(monkeypatch):
    def missing():
        raise ModuleNotFoundError("no module", name="infoloss_jax.nothing")

    monkeypatch.setattr(cli, "CHECKS", [("needs a module", 0.0, 0.0, missing)])
    out = io.StringIO()
    assert cli.main(out=out) == 1
    assert "missing infoloss_jax.nothing" in out.getvalue()
