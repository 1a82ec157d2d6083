"""Every docstring example of the public API runs, as a doctest, and prints what it says.

The examples are run as a user runs them: float32 by default (x64 off for the duration), one
test per public object so that a failure names it.
"""

import importlib.util
import sys
from pathlib import Path

import jax
import pytest

_TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_docstrings.py"
_spec = importlib.util.spec_from_file_location("check_docstrings", _TOOL)
check_docstrings = sys.modules.setdefault(
    "check_docstrings", importlib.util.module_from_spec(_spec)
)
_spec.loader.exec_module(check_docstrings)

DOCTESTS = check_docstrings.doctests()


def test_the_public_api_has_docstring_examples():
    assert len(DOCTESTS) >= 20


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example(test):
    with jax.enable_x64(False):
        failures, report = check_docstrings.run_doctest(test)
    assert failures == 0, report
