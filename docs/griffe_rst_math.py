"""A griffe extension for the docs build: docstrings written for ``help()`` -> Markdown.

The docstrings follow reST conventions that read well in a terminal: ``.. math::`` blocks,
``:math:`` and ``:func:`` roles, and ``>>>`` doctest examples. mkdocstrings renders Markdown, so
while the API is loaded this rewrites math to ``$...$`` / ``$$...$$`` (rendered by MathJax
through ``pymdownx.arithmatex``), cross-reference roles to inline code, and doctest examples to
fenced ``pycon`` code blocks. A function whose docstring is attached at import time
(``f.__doc__ = ...``), which static analysis cannot see, gets its docstring from the imported
object.
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
        # After the whole package is loaded (including docstrings found at import time).
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
