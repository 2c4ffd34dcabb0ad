// How far the prompt of the answer being generated is, from the server's prompt_progress
// chunks (the page always asks for them): a bar, what is happening ("Encoding image 1 of 2",
// "Reading the prompt 412 / 870"), the cached tokens and an estimate of what is left; the
// answer's first token replaces it.
//
// The estimate is honest or absent: it comes from costs measured on this server for this
// model (the time between an image's "encoding" chunk and the next one; the time per token
// between two chunks of prompt text), in this request or in earlier ones (kept in
// localStorage); with no measurement yet it says so instead of guessing.

import { el } from "./dom.js";

const COSTS_KEY = "vlserve.promptCosts";

function loadCosts() {
  try { return JSON.parse(localStorage.getItem(COSTS_KEY)) || {}; } catch { return {}; }
}

function saveCosts(all) {
  try { localStorage.setItem(COSTS_KEY, JSON.stringify(all)); } catch { /* storage blocked */ }
}

/** Follows one answer's prompt: `update(chunk.prompt_progress)` for each chunk; `view` is
 *  what to draw (null before the first). */
export class PromptProgress {
  constructor(model) {
    this.model = model || "";
    this.costs = loadCosts()[this.model] ?? {};   // {imageMs, tokenMs}
    this.last = null;
    this.lastAt = 0;        // performance.now() at the last chunk
  }

  update(p) {
    const prev = this.last;
    if (prev) this.measure(prev, p);
    this.last = p;
    this.lastAt = performance.now();
  }

  measure(prev, p) {
    const ms = p.time_ms - prev.time_ms;
    if (ms <= 0) return;
    const learned = {};
    if (prev.images.encoding && p.images.done > prev.images.done) learned.imageMs = ms;
    else if (!prev.images.encoding && p.images.done === prev.images.done && p.processed > prev.processed) {
      learned.tokenMs = ms / (p.processed - prev.processed);
    }
    if (!Object.keys(learned).length) return;
    Object.assign(this.costs, learned);
    const all = loadCosts();
    all[this.model] = { ...all[this.model], ...learned };
    saveCosts(all);
  }

  /** ms left, or null when a cost it needs was never measured. */
  left() {
    const p = this.last;
    const images = p.images.total - p.images.done;
    const tokens = p.total - p.processed - p.images.tokens_left;
    const { imageMs, tokenMs } = this.costs;
    if ((images > 0 && imageMs == null) || (tokens > 0 && tokenMs == null)) return null;
    let ms = (images ? images * imageMs : 0) + (tokens > 0 ? tokens * tokenMs : 0);
    if (p.images.encoding) ms -= performance.now() - this.lastAt;   // that one is under way
    return Math.max(ms, 0);
  }

  /** {fraction, label, detail} for the bar, or null before any chunk. */
  view() {
    const p = this.last;
    if (!p) return null;
    const { total, processed, cache, images } = p;
    let label;
    if (images.encoding) label = `Encoding image ${images.done + 1} of ${images.total}`;
    else if (processed < total) label = `Reading the prompt ${processed} / ${total}`;
    else label = "Starting the answer";
    const detail = [];
    if (cache) detail.push(`${cache} tokens cached`);
    if (processed < total) {
      const left = this.left();
      detail.push(left == null ? "estimating time left…" : `about ${formatLeft(left)} left`);
    }
    return { fraction: total ? processed / total : 0, label, detail: detail.join(" · ") };
  }
}

function formatLeft(ms) {
  const s = Math.round(ms / 1000);
  if (s < 2) return "a second";
  if (s < 90) return `${s} s`;
  return `${Math.round(s / 60)} min`;
}

/** The bar for `view` (PromptProgress.view()), made or brought up to date inside `bubble`. */
export function paintProgress(bubble, view) {
  let node = bubble.querySelector(".prompt-progress");
  if (!view) return;
  if (!node) {
    node = el("div.prompt-progress", { "data-testid": "prompt-progress", role: "status" },
      el("div.prompt-progress-label"),
      el("progress", { max: "1", value: "0" }),
      el("div.prompt-progress-detail"));
    const typing = bubble.querySelector(".typing");
    if (typing) typing.replaceWith(node);
    else bubble.append(node);
  }
  node.querySelector(".prompt-progress-label").textContent = view.label;
  node.querySelector("progress").value = view.fraction;
  node.querySelector(".prompt-progress-detail").textContent = view.detail;
}
