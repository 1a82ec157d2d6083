"""A griffe extension for the docs build: reST math and roles in docstrings -> Markdown.

The docstrings use reST conventions that read well in ``help()`` (``.. math::`` blocks,
``:math:`` and ``:func:`` roles). mkdocstrings renders Markdown, so this rewrites them while the
API is loaded: math to ``$...$`` / ``$$...$$`` (rendered by MathJax through
``pymdownx.arithmatex``), cross-reference roles to inline code.
"""

from __future__ import annotations

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


def rst_to_markdown(text: str) -> str:
    text = _MATH_BLOCK.sub(_math_block, text if text.endswith("\n") else text + "\n")
    text = _ROLE_MATH.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE_REF.sub(lambda m: f"`{m.group(1)}`", text).rstrip("\n")


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
