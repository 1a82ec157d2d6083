// MathJax settings. The site serves MathJax itself (javascripts/mathjax/, see
// tools/vendor_mathjax.sh): formulas render offline and behind a firewall.
// pymdownx.arithmatex (generic mode) wraps the math of the Markdown pages and docstrings in
// \( \) and \[ \]; the rendered notebook keeps Jupyter's $ and $$. Code blocks (<pre>, <code>)
// are never typeset.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  // The page is typeset below, once MathJax has started and the theme has put the page in place.
  startup: { typeset: false },
};

// Material for MkDocs emits document$ for every page it shows. The output cache is kept:
// clearing it (output.clearCache()) drops the CSS rules that draw the characters, and every
// formula then renders as blank space.
document$.subscribe(() => {
  if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) return;
  MathJax.startup.promise.then(() => {
    MathJax.typesetClear();
    MathJax.texReset();
    return MathJax.typesetPromise();
  });
});
