// MathJax settings. pymdownx.arithmatex (generic mode) wraps the math of the Markdown pages and
// docstrings in \( \) and \[ \]; the rendered notebook keeps Jupyter's $ and $$. Code blocks
// (<pre>, <code>) are never typeset.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
};

document$.subscribe(() => {
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
