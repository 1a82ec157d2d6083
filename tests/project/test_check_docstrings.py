"""tools/check_docstrings.py's first-line check: the line help() shows alone must read well."""

import importlib.util
import sys
from pathlib import Path

import pytest

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_docstrings.py"
_spec = importlib.util.spec_from_file_location("check_docstrings", _TOOL)
check_docstrings = sys.modules.setdefault(
    "check_docstrings", importlib.util.module_from_spec(_spec)
)
_spec.loader.exec_module(check_docstrings)
first_line_problems = check_docstrings.first_line_problems


@pytest.mark.parametrize(
    "docstring",
    [
        "Entropy of the softmax of the logits, in nats (or in ``base``).",
        "KL divergence KL(target || model), e.g. for distillation.\n\n    .. math:: x",
        "\n    Cross-entropy with integer labels.\n\n    Args: ...",
    ],
)
def test_a_good_first_line_has_no_problem(docstring):
    assert first_line_problems(docstring) == []


@pytest.mark.parametrize(
    ("docstring", "problem"),
    [
        ("The z-loss :math:`(\\log Z)^2`, which keeps Z near 1.", "markup"),
        ("Alias of :func:`softmax_cross_entropy`.", "markup"),
        (".. math:: H = -\\sum p \\log p", "markup"),
        ("Gradient of the entropy H(\\mathrm{softmax}(z)).", "markup"),
        ("Kahneman-Tversky Optimization: unpaired examples against a\n  reference.", "period"),
        ("Cross-entropy. Use it for labels.", "more than one sentence"),
        ("A" + "a" * 95 + ".", "97 characters, more than 90"),
        ("", "empty"),
    ],
)
def test_a_bad_first_line_is_reported_with_its_problem(docstring, problem):
    problems = first_line_problems(docstring)
    assert any(problem in p for p in problems), problems


def test_the_check_reports_without_failing_unless_enforced(monkeypatch, capsys):
    import infoloss_jax

    def badly_documented(logits):
        """Returns :math:`x`. It is bad"""
        return logits

    badly_documented.__module__ = "infoloss_jax._fake"
    monkeypatch.setattr(infoloss_jax, "badly_documented", badly_documented, raising=False)
    monkeypatch.setattr(
        infoloss_jax, "__all__", [*infoloss_jax.__all__, "badly_documented"], raising=False
    )
    names = [name for name, _, _ in check_docstrings.bad_first_lines()]
    assert "infoloss_jax.badly_documented" in names
    monkeypatch.setattr(check_docstrings, "broken_returns_sections", lambda: [])
    monkeypatch.setattr(check_docstrings, "bad_first_lines", lambda: [("x.f", "Bad", ["p"])])
    assert check_docstrings.main([]) == 0
    assert "note: first line: x.f: p" in capsys.readouterr().out
    assert check_docstrings.main(["--enforce-first-lines"]) == 1
    assert "BAD FIRST LINE: x.f: p" in capsys.readouterr().out
