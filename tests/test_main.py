"""`python -m infoloss_jax`: version, backend, devices and the background notes' self-check."""

import io
import subprocess
import sys

import infoloss_jax as il
from infoloss_jax import __main__ as cli


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
