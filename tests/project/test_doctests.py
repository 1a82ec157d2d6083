"""Every docstring example of the public API runs, as a doctest, and prints what it says.

The examples are run as a user runs them: float32 by default (x64 off for the duration), one
test per public object so that a failure names it.
"""

import importlib.util
import re
import sys
from pathlib import Path

import jax
import pytest

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_docstrings.py"
_spec = importlib.util.spec_from_file_location("check_docstrings", _TOOL)
check_docstrings = sys.modules.setdefault(
    "check_docstrings", importlib.util.module_from_spec(_spec)
)
_spec.loader.exec_module(check_docstrings)

DOCTESTS = check_docstrings.doctests()


def test_the_public_api_has_docstring_examples():
    assert len(DOCTESTS) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example(test):
    with jax.enable_x64(False):
        failures, report = check_docstrings.run_doctest(test)
    assert failures == 0, report


# The docs pages' Python code blocks run too, except the ones showing another library's code
# (their titles name it: ```python title="PyTorch"```, ```python title="optax"```).
DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)


def _docs_code_blocks():
    for page in sorted(DOCS.glob("*.md")):
        for index, (info, code) in enumerate(_BLOCK.findall(page.read_text())):
            if "PyTorch" not in info and 'title="optax"' not in info:
                yield pytest.param(code, id=f"{page.name}[{index}]")


@pytest.mark.slow
@pytest.mark.parametrize("code", list(_docs_code_blocks()))
def test_docs_page_code_block_runs(code):
    with jax.enable_x64(False):
        exec(compile(code, "<docs>", "exec"), {})
