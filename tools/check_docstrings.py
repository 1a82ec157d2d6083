"""Docstring coverage and doctests for infoloss_jax's public API.

    python tools/check_docstrings.py            # fails when a public name has no docstring,
                                                # or a Returns section the docs site mangles
    python tools/check_docstrings.py --doctest  # ... and runs every docstring example

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
