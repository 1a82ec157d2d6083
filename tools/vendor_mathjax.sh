#!/usr/bin/env bash
# Refreshes the MathJax copy that the documentation site serves itself, so that formulas render
# without network access. It takes MathJax from its npm package (npm must be installed) and
# keeps only what the site loads: the combined TeX + CommonHTML component with every TeX
# extension, and the web fonts that component asks for.
#
#     bash tools/vendor_mathjax.sh [VERSION]     # default 3.2.2
set -euo pipefail
version="${1:-3.2.2}"
cd "$(dirname "$0")/.."
dest=docs/javascripts/mathjax
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "mathjax@$version" >/dev/null && tar xzf "mathjax-$version.tgz")
rm -rf "$dest"
mkdir -p "$dest/output/chtml/fonts"
cp "$work/package/es5/tex-chtml-full.js" "$dest/"
cp -r "$work/package/es5/output/chtml/fonts/woff-v2" "$dest/output/chtml/fonts/"
cp "$work/package/LICENSE" "$dest/LICENSE"
echo "MathJax $version (npm package \"mathjax\", es5/tex-chtml-full.js and its woff-v2 fonts)" \
  >"$dest/VERSION"
du -sh "$dest"
