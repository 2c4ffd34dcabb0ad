// Files besides images, turned into what the model reads, in the browser: a PDF's pages
// become images (pdf.js, vendored and loaded only when a PDF comes), a text-like file
// (.txt, .md, .csv, .json, source code…) becomes a text part with its name. Limits are
// checked here, each with a message that says what was kept.

import { isImageFile } from "./images.js";

export const MAX_PDF_PAGES = 8;              // images per message are capped anyway
export const MAX_PDF_BYTES = 50 * 1024 * 1024;
export const MAX_TEXT_BYTES = 256 * 1024;     // ~60k tokens: more than the context holds
const PDF_SCALE = 1.5;                         // ~1240 px wide for an A4 page, sharp text
const TEXT_NAME = /\.(txt|text|md|markdown|csv|tsv|json|jsonl|ndjson|xml|ya?ml|toml|ini|cfg|conf|log|tex|rst|html?|css|s?[ch]|cc|cpp|hpp|cs|java|kt|go|rs|py|rb|php|pl|lua|r|m|swift|js|mjs|cjs|ts|tsx|jsx|sh|bash|zsh|ps1|bat|sql|diff|patch|srt|vtt)$/i;

/** "image" | "pdf" | "text" | null (not something the page can send). */
export function kindOf(file) {
  if (isImageFile(file)) return "image";
  if (file.type === "application/pdf" || /\.pdf$/i.test(file.name)) return "pdf";
  if (file.type.startsWith("text/") || /^application\/(json|xml|x-ndjson|x-yaml|toml)/.test(file.type)
      || TEXT_NAME.test(file.name)) return "text";
  return null;
}

/** A text file -> {name, text, bytes}; refuses one too large or that is not UTF-8 text. */
export async function readTextFile(file) {
  if (file.size > MAX_TEXT_BYTES) {
    throw new Error(`“${file.name}” is ${kb(file.size)}; text files up to ${kb(MAX_TEXT_BYTES)} can be added (the model's context would not hold more).`);
  }
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(await file.arrayBuffer());
  } catch {
    throw new Error(`“${file.name}” is not UTF-8 text.`);
  }
  if (text.includes("\u0000")) throw new Error(`“${file.name}” looks binary, not text.`);
  return { name: file.name, text: text.replace(/^\uFEFF/, ""), bytes: file.size };
}

let pdfjs = null;

async function loadPdfJs() {
  if (!pdfjs) {
    pdfjs = await import("/static/vendor/pdf.min.mjs");
    pdfjs.GlobalWorkerOptions.workerSrc = "/static/vendor/pdf.worker.min.mjs";
  }
  return pdfjs;
}

/** A PDF -> {pages: [PNG File per page, at most MAX_PDF_PAGES], total: its page count}. */
export async function pdfPages(file) {
  if (file.size > MAX_PDF_BYTES) {
    throw new Error(`“${file.name}” is ${kb(file.size)}; PDFs up to ${kb(MAX_PDF_BYTES)} can be added.`);
  }
  const lib = await loadPdfJs();
  // isEvalSupported off: the page's CSP forbids eval; pdf.js has a path without it
  const task = lib.getDocument({ data: await file.arrayBuffer(), isEvalSupported: false });
  let doc;
  try {
    doc = await task.promise;
  } catch (err) {
    task.destroy();
    throw new Error(`“${file.name}” could not be read as a PDF (${err?.message || err}).`);
  }
  try {
    const count = Math.min(doc.numPages, MAX_PDF_PAGES);
    const stem = file.name.replace(/\.pdf$/i, "");
    const pages = [];
    for (let n = 1; n <= count; n++) {
      const page = await doc.getPage(n);
      const viewport = page.getViewport({ scale: PDF_SCALE });
      const canvas = document.createElement("canvas");
      canvas.width = Math.ceil(viewport.width);
      canvas.height = Math.ceil(viewport.height);
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#fff";                 // a page is white where the PDF draws nothing
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      await page.render({ canvasContext: ctx, canvas, viewport }).promise;
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
      pages.push(new File([blob], `${stem} p${n}.png`, { type: "image/png" }));
      page.cleanup();
    }
    return { pages, total: doc.numPages };
  } finally {
    task.destroy();           // the document and its worker's copy
  }
}

function kb(bytes) {
  return bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} KB`;
}
