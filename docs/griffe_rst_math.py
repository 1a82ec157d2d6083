"""A griffe extension for the docs build: docstrings written for ``help()`` -> Markdown.

The docstrings follow reST conventions that read well in a terminal: ``.. math::`` blocks,
``:math:`` and ``:func:`` roles, and ``>>>`` doctest examples. mkdocstrings renders Markdown, so
while the API is loaded this rewrites math to ``$...$`` / ``$$...$$`` (rendered by MathJax
through ``pymdownx.arithmatex``), cross-reference roles to inline code, and doctest examples to
fenced ``pycon`` code blocks. Two things static analysis cannot see are taken from the imported
module instead: a docstring attached at import time (``f.__doc__ = ...``), and a public
function built by a factory (``f = make_wrapper(...)``), which the parser takes for a variable.
"""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap

import griffe

_ROLE_MATH = re.compile(r":math:`([^`]+)`")
_ROLE_REF = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?([^`]+)`")
_MATH_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:(?P=indent)[ \t]+.*\n|[ \t]*\n)+)",
    re.MULTILINE,
)


def _math_block(match: re.Match) -> str:
    indent = match.group("indent")
    body = textwrap.dedent(match.group("body")).strip("\n")
    lines = [indent + "$$", *(indent + line for line in body.splitlines()), indent + "$$", ""]
    return "\n".join(lines) + "\n"


def _fence_doctests(text: str) -> str:
    """Wraps each run of ``>>>`` lines (and the output that follows) in a pycon fence."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if not stripped.startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(stripped)]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    text = _MATH_BLOCK.sub(_math_block, text if text.endswith("\n") else text + "\n")
    text = _ROLE_MATH.sub(lambda m: f"${m.group(1)}$", text)
    text = _ROLE_REF.sub(lambda m: f"`{m.group(1)}`", text)
    return _fence_doctests(text.rstrip("\n"))


def _runtime_docstring(obj: griffe.Object) -> str | None:
    try:
        module = importlib.import_module(obj.module.path)
        return getattr(module, obj.name).__doc__
    except (ImportError, AttributeError):
        return None


class RstToMarkdown(griffe.Extension):
    def on_function_instance(self, *, func: griffe.Function, **kwargs) -> None:
        if func.docstring is None and not func.name.startswith("_"):
            doc = _runtime_docstring(func)
            if doc:
                func.docstring = griffe.Docstring(
                    inspect.cleandoc(doc), lineno=func.lineno, parent=func
                )

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        # After the whole package is loaded.
        for obj in list(_walk(pkg)):
            if obj.is_module:
                _replace_factory_functions(obj)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)


def _replace_factory_functions(module: griffe.Module) -> None:
    """Public module-level "variables" that are functions at run time become functions."""
    candidates = [
        name
        for name, member in module.members.items()
        if not member.is_alias and member.is_attribute and not name.startswith("_")
    ]
    if not candidates:
        return
    try:
        runtime = importlib.import_module(module.path)
    except ImportError:
        return
    names = [n for n in candidates if inspect.isfunction(getattr(runtime, n, None))]
    if names:
        inspected = griffe.inspect(module.path)
        for name in names:
            function = inspected[name]
            function.parent = module
            module.set_member(name, function)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
