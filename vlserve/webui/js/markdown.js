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

import { el, iconButton, copyText, flashCopied } from "./dom.js";

const ALLOWED_TAGS = ["a", "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "b",
  "em", "i", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "table", "thead",
  "tbody", "tr", "th", "td", "span", "sup", "sub", "kbd", "mark", "details", "summary"];
const ALLOWED_ATTR = ["href", "title", "class", "align", "start", "colspan", "rowspan", "open"];

let configured = false;

function configure() {
  if (configured) return;
  configured = true;
  window.marked.use({
    gfm: true, breaks: true,
    // returning undefined (not false, which falls back to marked's own) means "no HTML here":
    // the characters stay in the surrounding paragraph as text
    tokenizer: { html: () => undefined, tag: () => undefined },
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
  for (const table of target.querySelectorAll("table")) {
    // wide tables scroll inside the message instead of widening the page
    const wrap = el("div.table-wrap");
    table.replaceWith(wrap);
    wrap.append(table);
  }
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
