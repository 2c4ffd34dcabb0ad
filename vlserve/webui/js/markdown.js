// Assistant text -> safe HTML: marked (GitHub-flavoured Markdown), then DOMPurify with an
// allow-list fit for chat answers (no images, forms or styles: the model's output is
// untrusted text), links opened in a new tab; code blocks get a header with the language
// and a copy button, and syntax colours from highlight.js once the text is final.
//
// Raw HTML in an answer is text, never markup: marked's block `html` and inline `tag`
// tokenizers are switched off, so `<img onerror=…>` reaches the page as the characters the
// model wrote (escaped like any other text), and Markdown images become links. The browser
// is never handed an attribute the model chose other than a link's href/title and a code
// block's language class; DOMPurify stays as the second wall. (Letting marked pass raw HTML
// through for DOMPurify to clean made Chromium 156 report a CSP violation while DOMPurify
// parsed it: an inline event handler in an inert document is still "seen" by the CSP.)
//
// TeX (`$…$`, `$$…$$`, `\(…\)`, `\[…\]`) is taken out before Markdown can eat its
// backslashes and underscores: marked extensions tokenize it first (code spans and blocks
// are tokenized before them, so TeX inside code stays code) and render it as its own text in
// a `math-*` element; after DOMPurify, KaTeX (trust off: no \href, \url, \html…) typesets
// that text with DOM calls. While an answer streams, a formula KaTeX cannot parse yet is
// left as its text (no flicker of red errors); once final, an error shows in place.

import { el, iconButton, copyText, flashCopied } from "./dom.js";

const ALLOWED_TAGS = ["a", "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "b",
  "em", "i", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "table", "thead",
  "tbody", "tr", "th", "td", "span", "sup", "sub", "kbd", "mark", "details", "summary"];
const ALLOWED_ATTR = ["href", "title", "class", "align", "start", "colspan", "rowspan", "open"];

let configured = false;

const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// `$x$` needs no space inside its dollars and no digit after the closing one, so "$5 and
// $10" stays text (pandoc's rule); nor a backtick (TeX has none: "$10 for `x$`" is code).
const INLINE_MATH = [
  [/^\$\$([\s\S]+?)\$\$/, "math-display"],
  [/^\\\[([\s\S]+?)\\\]/, "math-display"],
  [/^\\\(([\s\S]+?)\\\)/, "math-inline"],
  [/^\$(?!\s)((?:\\.|[^\\$\n`])+?)(?<!\s)\$(?!\d)/, "math-inline"],
];

const MATH = [
  {
    name: "mathBlock", level: "block",
    start: (src) => src.match(/^ {0,3}(?:\$\$|\\\[)/m)?.index,
    tokenizer(src) {
      const m = /^ {0,3}(?:\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\])[ \t]*(?:\n+|$)/.exec(src);
      if (m) return { type: "mathBlock", raw: m[0], text: (m[1] ?? m[2]).trim() };
      return undefined;
    },
    renderer: (token) => `<p class="math-block">${escapeHtml(token.text)}</p>\n`,
  },
  {
    name: "mathInline", level: "inline",
    start: (src) => src.match(/\$|\\[([]/)?.index,
    tokenizer(src) {
      for (const [pattern, kind] of INLINE_MATH) {
        const m = pattern.exec(src);
        if (m) return { type: "mathInline", raw: m[0], text: m[1].trim(), kind };
      }
      // an opening `$$`, `\[` or `\(` not closed (yet: the answer is streaming): the rest of
      // the paragraph is its text as written, never half a formula typeset another way
      if (/^(?:\$\$|\\[[(])/.test(src)) return { type: "mathInline", raw: src, text: src, kind: "math-open" };
      return undefined;
    },
    renderer: (token) => (token.kind === "math-open" ? escapeHtml(token.text)
      : `<span class="${token.kind}">${escapeHtml(token.text)}</span>`),
  },
];

function configure() {
  if (configured) return;
  configured = true;
  window.marked.use({
    gfm: true, breaks: true,
    // returning undefined (not false, which falls back to marked's own) means "no HTML here":
    // the characters stay in the surrounding paragraph as text
    tokenizer: { html: () => undefined, tag: () => undefined },
    extensions: MATH,
    renderer: {
      // an image the model names is a link to it, never fetched by the page
      image({ href, title, text }) {
        return this.parser.renderer.link({ href, title, tokens: [{ type: "text", raw: text, text: text || href }] });
      },
    },
  });
  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
}

export function toSafeHTML(text) {
  configure();
  const html = window.marked.parse(text, { async: false });
  return window.DOMPurify.sanitize(html, {
    ALLOWED_TAGS, ALLOWED_ATTR, ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  });
}

/** Render `text` into `target`; `final` adds syntax highlighting (skipped while streaming). */
export function renderMarkdown(target, text, { final = true } = {}) {
  target.innerHTML = toSafeHTML(text);
  for (const code of target.querySelectorAll("pre > code")) decorateCode(code, final);
  for (const math of target.querySelectorAll(".math-inline, .math-display, .math-block")) {
    typeset(math, final);
  }
  for (const table of target.querySelectorAll("table")) {
    // wide tables scroll inside the message instead of widening the page
    const wrap = el("div.table-wrap");
    table.replaceWith(wrap);
    wrap.append(table);
  }
}

const KATEX_OPTIONS = { throwOnError: true, trust: false, strict: "ignore", maxSize: 20,
  maxExpand: 500, output: "htmlAndMathml" };

/** Replace a math element's TeX text with KaTeX's rendering (DOM calls: no HTML strings). */
function typeset(node, final) {
  const katex = window.katex;
  if (!katex) return;
  const tex = node.textContent;
  const displayMode = !node.classList.contains("math-inline");
  try {
    katex.render(tex, node, { ...KATEX_OPTIONS, displayMode });
  } catch (err) {
    // maybe only half-written yet: its text, until the answer ends; then the text marked
    // as an error, with KaTeX's reason (not KaTeX's own error rendering, which sets a
    // style attribute the page's CSP refuses)
    node.classList.add(final ? "katex-error" : "math-pending");
    if (final) node.title = String(err?.message || err);
    return;
  }
  node.title = tex;            // the source, for a reader (and for copying it)
  node.dataset.testid = "math";
}

function languageOf(code) {
  const match = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
  return match ? match[1].toLowerCase() : "";
}

function decorateCode(code, final) {
  const pre = code.parentElement;
  const lang = languageOf(code);
  const copy = iconButton("copy", "Copy code", { class: "icon-btn code-copy", "data-testid": "code-copy" });
  copy.addEventListener("click", async () => flashCopied(copy, await copyText(code.textContent.replace(/\n$/, ""))));
  const block = el("div.code-block", {},
    el("div.code-head", {}, el("span.code-lang", { text: lang || "code" }), copy));
  pre.replaceWith(block);
  block.append(pre);
  if (final) highlight(code, lang);
}

function highlight(code, lang) {
  const hljs = window.hljs;
  if (!hljs) return;
  const text = code.textContent;
  // highlight()/highlightAuto() escape their input: the result is safe to insert
  const result = lang && hljs.getLanguage(lang)
    ? hljs.highlight(text, { language: lang, ignoreIllegals: true })
    : hljs.highlightAuto(text);
  code.innerHTML = result.value;
  code.classList.add("hljs");
  if (!lang && result.language) code.classList.add(`language-${result.language}`);
}
