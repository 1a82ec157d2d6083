"""Docstring coverage and doctests for infoloss_jax's public API.

    python tools/check_docstrings.py            # fails when a public name has no docstring,
                                                # or a Returns section the docs site mangles
    python tools/check_docstrings.py --doctest  # ... and runs every docstring example
    python tools/check_docstrings.py --enforce-first-lines  # ... and fails on a first line
                                                # that does not read well alone in help()

A public name is one that a user reaches without an underscore: the names exported by
``infoloss_jax`` (its ``__all__``) and by the public submodules ``infoloss_jax.torch``,
``infoloss_jax.gradients`` and ``infoloss_jax.sharded`` (their ``__all__``, or else every
function and class they define or re-export from infoloss_jax). The test suite imports this file
(``tests/project/test_docs_coverage.py`` and ``tests/project/test_doctests.py``); the docs
site's API pages are checked against the same list.
"""

from __future__ import annotations

import argparse
import doctest
import importlib
import inspect
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass

PUBLIC_MODULES = (
    "infoloss_jax",
    "infoloss_jax.torch",
    "infoloss_jax.gradients",
    "infoloss_jax.sharded",
    "infoloss_jax.policy",
    "infoloss_jax.preference",
)


@dataclass(frozen=True)
class PublicName:
    qualified: str  # e.g. "infoloss_jax.torch.kl_div"
    obj: object


def import_public_modules() -> dict[str, types.ModuleType]:
    """The public modules that exist in this checkout (a missing one is simply left out)."""
    modules = {}
    for name in PUBLIC_MODULES:
        try:
            modules[name] = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
    return modules


def _is_ours(obj: object) -> bool:
    return getattr(obj, "__module__", "").startswith("infoloss_jax") and (
        inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj)
    )


def public_names_of(module: types.ModuleType) -> list[str]:
    """``__all__`` if the module has one, else its public infoloss_jax functions and classes."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(obj) and _is_ours(obj)
    )


def public_names() -> Iterator[PublicName]:
    for module_name, module in import_public_modules().items():
        for name in public_names_of(module):
            yield PublicName(f"{module_name}.{name}", getattr(module, name))


def _docstring(obj: object) -> str:
    # inspect.getdoc would inherit a class's docstring from its base (NamedTuple, object).
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return (doc or "").strip()


def missing_docstrings() -> list[str]:
    """Qualified names of public modules, functions and classes without a docstring."""
    missing = [name for name, m in import_public_modules().items() if not _docstring(m)]
    missing += [p.qualified for p in public_names() if not _docstring(p.obj)]
    return missing


_ROLE = re.compile(r":(?:math|func|class|mod|meth|attr|data|obj|exc):`~?([^`]+)`")


def broken_returns_sections() -> list[str]:
    """Public names whose Returns section the docs site would render as more than one row.

    The API pages parse docstrings as Google style (with griffe, as mkdocstrings does). There,
    every line of a Returns section at the section's own indentation starts a new returned
    item, so a description wrapped onto a second line *without* extra indentation renders as a
    bogus second row. A continuation line must be indented under the first::

        Returns:
          Per-example losses, or their reduction. Half-precision inputs
            give float32.

    Returns ``[]`` when griffe (a dependency of the docs build) is not installed.
    """
    try:
        import griffe
    except ModuleNotFoundError:
        return []
    broken = []
    for public in public_names():
        text = _ROLE.sub(r"``\1``", _docstring(public.obj))  # as docs/griffe_rst_math.py does
        if "Returns:" not in text and "Yields:" not in text:
            continue
        docstring = griffe.Docstring(inspect.cleandoc(text), lineno=1)
        sections = docstring.parse(
            "google", warn_missing_types=False, warn_unknown_params=False, warnings=False
        )
        for section in sections:
            if section.kind.value in ("returns", "yields") and len(section.value) != 1:
                broken.append(public.qualified)
    return broken


FIRST_LINE_MAX = 90  # characters: help() and the API index show the first line alone
_MARKUP = re.compile(r":[a-z]+:`|^\.\. |\\[A-Za-z]+")  # a reST role or directive, LaTeX
_SENTENCE_END = re.compile(r"[.!?]\s+[A-Z]")


def first_line_problems(docstring: str) -> list[str]:
    """What keeps a docstring's first line from reading well alone, as ``help()`` shows it.

    The first line must be one sentence, end with a period, hold no reST role or directive and
    no LaTeX (``:math:`...```, ``.. math::``, ``\\log``), and take at most
    ``FIRST_LINE_MAX`` characters. Returns the problems found, ``[]`` for a good line.
    """
    lines = inspect.cleandoc(docstring).splitlines()
    line = lines[0].strip() if lines else ""
    if not line:
        return ["the first line is empty"]
    problems = []
    if _MARKUP.search(line):
        problems.append("markup (a reST role or directive, or LaTeX) shows raw in help()")
    if not line.endswith("."):
        problems.append("does not end with a period (a sentence wrapped onto the next line?)")
    if _SENTENCE_END.search(line[:-1]):
        problems.append("more than one sentence")
    if len(line) > FIRST_LINE_MAX:
        problems.append(f"{len(line)} characters, more than {FIRST_LINE_MAX}")
    return problems


def bad_first_lines() -> list[tuple[str, str, list[str]]]:
    """(qualified name, first line, problems) for each public module and name whose docstring
    has a first line that does not read well alone; each object once."""
    found = []
    seen: set[int] = set()
    objects = [(name, m) for name, m in import_public_modules().items()]
    objects += [(p.qualified, p.obj) for p in public_names()]
    for name, obj in objects:
        doc = _docstring(obj)
        if id(obj) in seen or not doc:  # a missing docstring is reported on its own
            continue
        seen.add(id(obj))
        problems = first_line_problems(doc)
        if problems:
            found.append((name, doc.splitlines()[0].strip(), problems))
    return found


def missing_examples() -> list[str]:
    """Public functions whose docstring has no ``>>>`` example (reported, not enforced)."""
    return [
        p.qualified
        for p in public_names()
        if inspect.isfunction(p.obj) and ">>>" not in _docstring(p.obj)
    ]


def doctests() -> list[doctest.DocTest]:
    """One DocTest per public module docstring and per public object (each object once)."""
    parser = doctest.DocTestParser()
    tests: list[doctest.DocTest] = []
    for name, module in import_public_modules().items():
        if ">>>" in (module.__doc__ or ""):
            tests.append(parser.get_doctest(module.__doc__, {}, name, module.__file__, 0))
    finder = doctest.DocTestFinder(exclude_empty=True)
    seen: set[int] = set()
    for public in public_names():
        if id(public.obj) in seen:
            continue
        seen.add(id(public.obj))
        try:
            found = finder.find(public.obj, public.qualified, globs={})
        except ValueError:  # objects doctest cannot locate in a source file (e.g. partials)
            continue
        tests.extend(t for t in found if t.examples)
    return tests


OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def run_doctest(test: doctest.DocTest) -> tuple[int, str]:
    """Runs one DocTest; returns (failures, the runner's report)."""
    lines: list[str] = []
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    result = runner.run(test, out=lines.append, clear_globs=True)
    return result.failed, "".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doctest", action="store_true", help="also run docstring examples")
    parser.add_argument(
        "--enforce-first-lines",
        action="store_true",
        help="fail on a first line that does not read well alone (otherwise only reported)",
    )
    args = parser.parse_args(argv)

    modules = import_public_modules()
    names = list(public_names())
    print(f"{len(names)} public names in {', '.join(modules)}")
    status = 0
    missing = missing_docstrings()
    for name in missing:
        print(f"MISSING DOCSTRING: {name}")
    status |= bool(missing)
    broken = broken_returns_sections()
    for name in broken:
        print(
            f"BROKEN RETURNS SECTION: {name} (indent its continuation lines under the first "
            "line, or the API page shows each line as a separate returned item)"
        )
    status |= bool(broken)
    for name in missing_examples():
        print(f"note: no example in the docstring of {name}")
    first_lines = bad_first_lines()
    label = "BAD FIRST LINE" if args.enforce_first_lines else "note: first line"
    for name, line, problems in first_lines:
        print(f"{label}: {name}: {'; '.join(problems)}\n    {line}")
    if args.enforce_first_lines:
        status |= bool(first_lines)
    if args.doctest:
        tests = doctests()
        failed = 0
        for test in tests:
            failures, report = run_doctest(test)
            if failures:
                failed += 1
                print(f"DOCTEST FAILED: {test.name}\n{report}")
        print(f"{len(tests) - failed}/{len(tests)} docstring examples passed")
        status |= bool(failed)
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
