#!/usr/bin/env bash
# Refresh the page's third-party JavaScript in webui/vendor/ from the npm registry, at the
# versions pinned below (change them here, run this, commit the result). No build step: the
# files are the packages' own browser builds, with their licenses and a VERSIONS record.
#   bash scripts/vendor_webui.sh
set -euo pipefail
MARKED=18.2.1          # Markdown -> HTML
DOMPURIFY=3.4.18       # sanitizes that HTML
HIGHLIGHT=11.12.0      # @highlightjs/cdn-assets: syntax highlighting (common languages)
KATEX=0.19.1           # TeX math in answers (and its fonts: woff2, which every browser reads)
PDFJS=6.5.438          # pdfjs-dist: PDF pages become images in the browser
SWAGGER=5.35.0         # swagger-ui-dist: /docs, the OpenAPI document rendered

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/webui/vendor"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
for spec in "marked@$MARKED" "dompurify@$DOMPURIFY" "@highlightjs/cdn-assets@$HIGHLIGHT" \
        "katex@$KATEX" "pdfjs-dist@$PDFJS" "swagger-ui-dist@$SWAGGER"; do
    npm pack --silent "$spec" >/dev/null
done
for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
mkdir -p "$out"
cp marked-$MARKED/package/lib/marked.umd.js                 "$out/marked.umd.js"
cp marked-$MARKED/package/LICENSE                           "$out/LICENSE.marked"
cp dompurify-$DOMPURIFY/package/dist/purify.min.js          "$out/purify.min.js"
cp dompurify-$DOMPURIFY/package/LICENSE                     "$out/LICENSE.dompurify"
hl="highlightjs-cdn-assets-$HIGHLIGHT/package"
cp "$hl/highlight.min.js"                                   "$out/highlight.min.js"
cp "$hl/styles/github.min.css"                              "$out/highlight-light.min.css"
cp "$hl/styles/github-dark.min.css"                         "$out/highlight-dark.min.css"
cp "$hl/LICENSE"                                            "$out/LICENSE.highlightjs"
kt="katex-$KATEX/package"
cp "$kt/dist/katex.min.js"                                  "$out/katex.min.js"
cp "$kt/dist/katex.min.css"                                 "$out/katex.min.css"
mkdir -p "$out/fonts" && cp "$kt"/dist/fonts/*.woff2        "$out/fonts/"
cp "$kt/LICENSE"                                            "$out/LICENSE.katex"
cp "pdfjs-dist-$PDFJS/package/build/pdf.min.mjs"            "$out/pdf.min.mjs"
cp "pdfjs-dist-$PDFJS/package/build/pdf.worker.min.mjs"     "$out/pdf.worker.min.mjs"
cp "pdfjs-dist-$PDFJS/package/LICENSE"                      "$out/LICENSE.pdfjs"
sw="swagger-ui-dist-$SWAGGER/package"
cp "$sw/swagger-ui-bundle.js"                               "$out/swagger-ui-bundle.js"
cp "$sw/swagger-ui.css"                                     "$out/swagger-ui.css"
cp "$sw/LICENSE"                                            "$out/LICENSE.swagger-ui"
{
    echo "# Written by scripts/vendor_webui.sh from the npm registry; do not edit by hand."
    echo "marked $MARKED"
    echo "dompurify $DOMPURIFY"
    echo "@highlightjs/cdn-assets $HIGHLIGHT"
    echo "katex $KATEX"
    echo "pdfjs-dist $PDFJS"
    echo "swagger-ui-dist $SWAGGER"
    echo
    (cd "$out" && sha256sum marked.umd.js purify.min.js highlight.min.js \
        highlight-light.min.css highlight-dark.min.css katex.min.js katex.min.css \
        pdf.min.mjs pdf.worker.min.mjs swagger-ui-bundle.js swagger-ui.css)
} > "$out/VERSIONS"
echo "webui/vendor refreshed:" && cat "$out/VERSIONS"
