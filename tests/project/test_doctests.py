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


# The README's Quickstart, pasted as it is, prints what its comments say.
README = Path(__file__).resolve().parents[2] / "README.md"
_PRINTED = re.compile(r"^print\(.*\)\s+# (.+)$", flags=re.MULTILINE)
_NUMBER = re.compile(r"-?\d+\.?\d*(?:e-?\d+)?")


def _quickstart() -> str:
    section = README.read_text().split("## Quickstart", 1)[1]
    return _BLOCK.search(section).group(2)


def test_readme_quickstart_prints_its_numbers(capsys):
    code = _quickstart()
    expected = _PRINTED.findall(code)
    assert len(expected) >= 4, "the Quickstart ends with prints that show the numbers"
    with jax.enable_x64(False):
        exec(compile(code, "<README Quickstart>", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == len(expected), printed
    for line, comment in zip(printed, expected, strict=True):
        got = [float(x) for x in _NUMBER.findall(line)]
        want = [float(x) for x in _NUMBER.findall(comment)]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), (line, comment)
