"""Docstring coverage: every public name has a docstring and a page in the API reference."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_TOOL = ROOT / "tools" / "check_docstrings.py"
_spec = importlib.util.spec_from_file_location("check_docstrings", _TOOL)
check_docstrings = sys.modules.setdefault(
    "check_docstrings", importlib.util.module_from_spec(_spec)
)
_spec.loader.exec_module(check_docstrings)

PUBLIC = list(check_docstrings.public_names())


def test_the_public_modules_are_found():
    modules = check_docstrings.import_public_modules()
    assert "infoloss_jax" in modules
    assert len(PUBLIC) >= 20


def test_every_public_name_has_a_docstring():
    assert check_docstrings.missing_docstrings() == []


def test_the_check_fails_on_a_name_without_a_docstring(monkeypatch):
    import infoloss_jax

    def undocumented(logits):
        return logits

    undocumented.__module__ = "infoloss_jax._fake"
    monkeypatch.setattr(infoloss_jax, "undocumented", undocumented, raising=False)
    monkeypatch.setattr(infoloss_jax, "__all__", [*infoloss_jax.__all__, "undocumented"])
    assert check_docstrings.missing_docstrings() == ["infoloss_jax.undocumented"]


def test_every_returns_section_renders_as_one_item():
    pytest.importorskip("griffe")
    assert check_docstrings.broken_returns_sections() == []


def test_the_check_fails_on_a_returns_line_wrapped_without_indent(monkeypatch):
    pytest.importorskip("griffe")
    import infoloss_jax

    def wrapped(logits):
        """A loss.

        Returns:
          Per-example losses, or their reduction. Half-precision inputs
          give float32.
        """
        return logits

    def indented(logits):
        """A loss.

        Returns:
          Per-example losses, or their reduction. Half-precision inputs
            give float32.
        """
        return logits

    for function in (wrapped, indented):
        function.__module__ = "infoloss_jax._fake"
        monkeypatch.setattr(infoloss_jax, function.__name__, function, raising=False)
    monkeypatch.setattr(infoloss_jax, "__all__", [*infoloss_jax.__all__, "wrapped", "indented"])
    assert check_docstrings.broken_returns_sections() == ["infoloss_jax.wrapped"]


def _documented_in_api_pages() -> set[str]:
    """Targets of ``::: name`` directives in docs/api/*.md."""
    targets = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        targets |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.MULTILINE))
    return targets


@pytest.mark.parametrize("public", PUBLIC, ids=[p.qualified for p in PUBLIC])
def test_every_public_name_has_an_api_reference_entry(public):
    targets = _documented_in_api_pages()
    module = public.qualified.rpartition(".")[0]
    # A public submodule documented whole (``::: infoloss_jax.torch``) lists its members;
    # test_mkdocs_build_strict checks in the built site that each of them got its entry.
    assert public.qualified in targets or (module != "infoloss_jax" and module in targets), (
        f"{public.qualified} is public but no docs/api/*.md page has '::: {public.qualified}'"
    )


def test_command_line_check_passes(capsys):
    assert check_docstrings.main([]) == 0
    assert "public names" in capsys.readouterr().out


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "notebooks" / "gradient_derivations" / "index.html").exists()
    # The site serves its own MathJax: no page loads a script or a stylesheet from another host.
    assert (tmp_path / "javascripts" / "mathjax" / "tex-chtml-full.js").exists()
    for page in tmp_path.rglob("*.html"):
        remote = re.findall(
            r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//[^"]+', page.read_text()
        )
        assert remote == [], f"{page.relative_to(tmp_path)} loads {remote}"
    anchors = set()
    for page in (tmp_path / "api").glob("*/index.html"):
        anchors |= set(re.findall(r'id="(infoloss_jax[\w.]*)"', page.read_text()))
    missing = [p.qualified for p in PUBLIC if p.qualified not in anchors]
    assert missing == [], f"public names without an entry in the built API reference: {missing}"
