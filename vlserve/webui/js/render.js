// Messages on screen: one <article> per message, reused between renders when the message
// did not change (so images never reload and focus is not lost), the per-answer numbers,
// and StreamView, which paints a streaming answer at most once per animation frame.

import { el, icon, iconButton, clockTime, fullDate, copyText, flashCopied, formatBytes } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { openLightbox } from "./lightbox.js";
import { paintProgress } from "./progress.js";
import { follow } from "./scroll.js";

/**
 * Bring `container` in line with `conv.messages`. `ctx`: {streamingId, busy, onEdit,
 * onRegenerate, onSwitch(message, version), modelName}.
 */
export function renderMessages(container, conv, ctx) {
  const existing = new Map([...container.children].map((n) => [n.dataset.id, n]));
  const initial = existing.size === 0;     // a chat just opened: no entry animations
  const last = conv.messages.length - 1;
  let previous = null;
  const calls = new Map(conv.messages.flatMap((m) => m.toolCalls ?? []).map((c) => [c.id, c.name]));
  conv.messages.forEach((message, index) => {
    const sig = signature(message, ctx.streamingId === message.id);
    let node = existing.get(message.id);
    if (!node || node._sig !== sig) {
      const fresh = message.role === "tool" ? toolMessage(message, calls.get(message.toolCallId))
        : buildMessage(message, ctx);
      // only a message new to the screen slides in; a rebuilt one (the answer that just
      // finished, an edited question) must not flash
      if (!node && !initial) fresh.classList.add("enter");
      if (node) {
        keepOpen(node, fresh);
        node.replaceWith(fresh);
      }
      node = fresh;
      node._sig = sig;
    }
    existing.delete(message.id);
    setActions(node, message, { ctx, isLast: index === last });
    const expected = previous ? previous.nextSibling : container.firstChild;
    if (expected !== node) container.insertBefore(node, expected);
    previous = node;
  });
  for (const stale of existing.values()) stale.remove();
}

/** Reasoning the reader unfolded while it streamed stays unfolded when the answer ends. */
function keepOpen(old, fresh) {
  const details = fresh.querySelector(".thinking");
  if (details && old.querySelector(".thinking")?.open) details.open = true;
}

/** Everything a message's element shows: a change means it is built again. */
function signature(m, streaming) {
  return [m.text, m.reasoning, m.images?.length, JSON.stringify(m.stats ?? null),
    JSON.stringify(m.toolCalls ?? null), m.toolCallId,
    JSON.stringify(m.context ?? null), m.finish, m.error, m.stopped, m.partial, m.model,
    m.queued, m.version, m.versions?.length, m.files?.length, streaming].join("\u0000");
}

function buildMessage(m, ctx) {
  const isUser = m.role === "user";
  const streaming = ctx.streamingId === m.id;
  const name = isUser ? "You" : (m.model || ctx.modelName || "Assistant");
  const node = el("article.message", { "data-testid": "message", "data-role": m.role,
    "data-id": m.id, "aria-label": `${name}, ${clockTime(m.time)}` });
  node.append(messageHead(m, name, isUser));
  // a user's photos sit above their text bubble (not inside it), at their own width
  if (m.images?.length) node.append(imageGrid(m.images));
  if (m.files?.length) node.append(fileList(m.files));
  const bubble = messageBubble(m, isUser, streaming);
  if (bubble.childNodes.length) node.append(bubble);
  const note = noteFor(m, streaming);
  if (note) node.append(note);
  if (m.queued) {
    node.append(el("p.message-note.queued", { "data-testid": "queued-note", role: "status",
      text: "Waiting for the model to load: this message is sent when it is ready (Stop takes it back)." }));
  }
  if (m.stats) node.append(statsLine(m.stats));
  node.append(el("div.message-actions"));
  return node;
}

function messageHead(m, name, isUser) {
  return el("header.message-head", {},
    isUser ? null : el("span.avatar", { "aria-hidden": "true" }, icon("eye")),
    el("span.message-role", { text: name }),
    el("time.message-time", { datetime: new Date(m.time).toISOString(), title: fullDate(m.time),
      text: clockTime(m.time) }));
}

function messageBubble(m, isUser, streaming) {
  const bubble = el("div.bubble");
  if (m.reasoning) bubble.append(thinkingBlock(m, streaming));
  // a user's words are shown as typed; an answer is Markdown (highlighted once final)
  const content = el(`div.message-content.${isUser ? "plain" : "markdown"}`, { "data-testid": "message-content" });
  if (isUser) content.textContent = m.text;
  else if (m.text) renderMarkdown(content, m.text, { final: !streaming });
  const waiting = streaming && !m.text && !m.reasoning && !m.toolCalls?.length;
  if (m.text || waiting || (!isUser && m.reasoning && !m.toolCalls?.length)) bubble.append(content);
  if (m.toolCalls?.length) bubble.append(toolCallList(m.toolCalls));
  if (waiting) bubble.append(typingIndicator());
  return bubble;
}

/** An answer's tool calls: each function's name and its arguments, pretty-printed. The page
 * runs no tool; it shows what the model asked for (imported, or from the API). */
function toolCallList(calls) {
  return el("div.tool-calls", { "data-testid": "tool-calls" }, ...calls.map((c) =>
    el("div.tool-call", { "data-testid": "tool-call" },
      el("div.tool-call-head", {}, el("span.tool-call-label", { text: "Calls" }),
        el("code.tool-call-name", { text: c.name })),
      el("pre.tool-call-args", { text: prettyJson(c.arguments) }))));
}

function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;   // cut short (finish_reason length): shown as it came
  }
}

/** A tool's result, sent back to the model: which call it answers (`callName`, when the
 * conversation has that call), its text and images. */
function toolMessage(m, callName) {
  const name = callName ? `Result of ${callName}` : "Tool result";
  const node = el("article.message.tool-result", { "data-testid": "message", "data-role": "tool",
    "data-id": m.id, "aria-label": `${name}, ${clockTime(m.time)}` });
  node.append(el("header.message-head", {},
    el("span.avatar", { "aria-hidden": "true" }, icon("sliders")),
    el("span.message-role", { text: name }),
    el("time.message-time", { datetime: new Date(m.time).toISOString(), title: fullDate(m.time),
      text: clockTime(m.time) })));
  if (m.images?.length) node.append(imageGrid(m.images));
  if (m.text) node.append(el("div.bubble", {}, el("pre.message-content.plain.tool-result-text",
    { "data-testid": "message-content", text: m.text })));
  node.append(el("div.message-actions"));
  return node;
}

/** A message's text files: their names and sizes (their text went to the model). */
function fileList(files) {
  return el("ul.message-files", { "data-testid": "message-files" }, ...files.map((f) =>
    el("li.file-chip", { "data-testid": "message-file", title: `${f.name}: ${f.text.length} characters sent as text` },
      icon("file"), el("span.file-name", { text: f.name }),
      el("span.file-size", { text: formatBytes(f.bytes ?? f.text.length) }))));
}

const SINGLE_IMAGE_PX = 300;

function imageGrid(images) {
  const grid = el("div.message-images", { "data-testid": "message-images", "data-count": Math.min(images.length, 4) },
    ...images.map((image, i) => el("button.message-image", {
      type: "button", "aria-label": `View image ${i + 1}${image.name ? ` (${image.name})` : ""} full size`,
      onclick: () => openLightbox(image.url, image.name || ""),
    }, el("img", { src: image.url, alt: image.name || `Image ${i + 1}`, loading: "lazy",
      width: image.width || null, height: image.height || null, decoding: "async",
      onload: follow }))));
  // a definite width before the image decodes, so nothing below it jumps when it does
  if (images.length === 1 && images[0].width) {
    grid.style.setProperty("--w", `${Math.min(images[0].width, SINGLE_IMAGE_PX)}px`);
  }
  return grid;
}

function typingIndicator() {
  return el("div.typing", { "data-testid": "typing-indicator", role: "status", "aria-label": "The model is thinking" },
    el("span"), el("span"), el("span"));
}

function thinkingBlock(m, streaming) {
  const label = el("span.thinking-label", { text: thinkingLabel(m, streaming) });
  const details = el("details.thinking", { "data-testid": "thinking" },
    el("summary", {}, label),
    el("div.thinking-body", { text: m.reasoning }));
  if (streaming && !m.text) details.classList.add("live");
  return details;
}

function thinkingLabel(m, streaming) {
  if (streaming && !m.text) return "Thinking…";
  if (m.reasoningMs == null) return "Thoughts";
  const s = Math.max(1, Math.round(m.reasoningMs / 1000));
  return `Thought for ${s} s`;
}

function noteFor(m, streaming) {
  const notes = [];
  if (m.context && (m.context.dropped_images || m.context.dropped_messages)) {
    const parts = [];
    if (m.context.dropped_images) parts.push(plural(m.context.dropped_images, "older image"));
    if (m.context.dropped_messages) parts.push(plural(m.context.dropped_messages, "older message"));
    notes.push(`To fit the model's context, ${parts.join(" and ")} ${m.context.dropped_images + m.context.dropped_messages > 1 ? "were" : "was"} left out.`);
  }
  const said = m.text || m.reasoning || m.toolCalls?.length;
  if (m.stopped) notes.push(said ? "Stopped." : "Stopped before the answer began.");
  else if (m.partial && !streaming) notes.push("The page was closed before this answer finished.");
  else if (m.role === "assistant" && !said && !m.error && !streaming) notes.push("No answer.");
  if (m.finish === "length") notes.push("Cut off at the max-tokens limit (Settings).");
  if (m.error) notes.push(m.error);
  if (!notes.length) return null;
  return el(`p.message-note${m.error ? ".error" : ""}`, { text: notes.join(" ") });
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** "0.21 s to first token · 38 tok/s · 412 → 96 tokens · 380 cached" */
export function statsLine(s) {
  const parts = [];
  if (s.ttftMs != null) parts.push(`${seconds(s.ttftMs)} to first token`);
  if (s.tokensPerSecond) parts.push(`${s.tokensPerSecond >= 100 ? Math.round(s.tokensPerSecond) : s.tokensPerSecond.toFixed(1)} tok/s`);
  if (s.promptTokens != null) parts.push(`${s.promptTokens} → ${s.completionTokens} tokens`);
  if (s.cachedTokens) parts.push(`${s.cachedTokens} cached`);
  const detail = [
    s.promptMs != null && `prompt ${seconds(s.promptMs)} (${s.promptEvaluated ?? "?"} tokens evaluated)`,
    s.imagesEncoded && `${plural(s.imagesEncoded, "image")} encoded in ${seconds(s.imageEncodeMs || 0)}`,
    s.imagesFromCache && `${plural(s.imagesFromCache, "image")} from cache`,
    s.imageTokens && `${s.imageTokens} image tokens`,
    s.predictedMs != null && `generation ${seconds(s.predictedMs)}`,
  ].filter(Boolean).join(" · ");
  return el("p.message-stats", { "data-testid": "message-stats", title: detail, text: parts.join(" · ") });
}

function seconds(ms) {
  return ms < 10000 ? `${(ms / 1000).toFixed(2)} s` : `${(ms / 1000).toFixed(1)} s`;
}

function setActions(node, m, { ctx, isLast }) {
  const bar = node.querySelector(":scope > .message-actions");
  const idle = !ctx.busy;
  const want = [
    m.versions?.length > 1 ? `versions:${m.version}/${m.versions.length}:${idle}` : null,
    m.text ? "copy" : null,
    idle && m.role === "user" ? "edit" : null,
    idle && m.role === "assistant" ? "regenerate" : null,
  ].filter(Boolean);
  node.classList.toggle("is-last", isLast);
  if (bar.dataset.has === want.join()) return;
  bar.dataset.has = want.join();
  bar.replaceChildren(...want.map((kind) => kind.startsWith("versions:")
    ? versionSwitcher(m, ctx, idle) : actionButton(kind, m, ctx, node)));
}

/** "‹ 2/3 ›": which version of the conversation from this message on is shown. */
function versionSwitcher(m, ctx, idle) {
  const k = m.version;
  const n = m.versions.length;
  const what = m.role === "user" ? "question" : "answer";
  return el("span.versions", { "data-testid": "versions", role: "group", "aria-label": `Version ${k + 1} of ${n}` },
    iconButton("chevron-left", `Previous ${what}`, { "data-testid": "version-prev",
      disabled: !idle || k === 0, onclick: () => ctx.onSwitch(m, k - 1) }),
    el("span.versions-label", { "data-testid": "version-label", text: `${k + 1}/${n}` }),
    iconButton("chevron-right", `Next ${what}`, { "data-testid": "version-next",
      disabled: !idle || k === n - 1, onclick: () => ctx.onSwitch(m, k + 1) }));
}

function actionButton(kind, m, ctx, node) {
  if (kind === "copy") {
    const b = iconButton("copy", m.role === "assistant" ? "Copy answer" : "Copy message", { "data-testid": "copy-button" });
    b.addEventListener("click", async () => flashCopied(b, await copyText(m.text)));
    return b;
  }
  if (kind === "edit") {
    return iconButton("pencil", "Edit and resend", { "data-testid": "edit-button", onclick: () => ctx.onEdit(m, node) });
  }
  return iconButton("refresh", "Regenerate answer", { "data-testid": "regenerate-button", onclick: () => ctx.onRegenerate(m) });
}

/** Replace a user message's text with an editor; Enter or "Send" saves, Esc cancels. */
export function startEdit(node, text, { onSave, onCancel }) {
  const area = el("textarea.edit-input", { "aria-label": "Edit message", rows: 3 });
  area.value = text;
  const cancel = el("button.btn.ghost.small", { type: "button", text: "Cancel", onclick: onCancel });
  const save = el("button.btn.primary.small", { type: "button", text: "Send", onclick: () => onSave(area.value.trim()) });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      onSave(area.value.trim());
    } else if (event.key === "Escape") {
      event.preventDefault();
      onCancel();
    }
  });
  const editor = el("div.editor", {}, area, el("div.editor-actions", {}, cancel, save));
  node.classList.add("editing");
  const bubble = node.querySelector(".bubble")
    ?? node.insertBefore(el("div.bubble"), node.querySelector(":scope > .message-actions"));
  bubble.append(editor);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
  area.style.height = `${Math.min(area.scrollHeight + 2, 320)}px`;
}

/** Paints one streaming answer into its <article>, at most once per animation frame. */
export class StreamView {
  constructor(container, message, progress = null) {
    this.container = container;
    this.message = message;
    this.progress = progress;   // a PromptProgress: drawn until the first token
    this.frame = 0;
  }

  update() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.paint());
  }

  cancel() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
  }

  paint() {
    this.frame = 0;
    // looked up each time: the user may have left this chat and come back
    const node = this.container.querySelector(`[data-id="${this.message.id}"]`);
    if (!node) return;
    const m = this.message;
    const bubble = node.querySelector(".bubble");
    if (m.text || m.reasoning || m.toolCalls?.length) {
      bubble.querySelector(".typing")?.remove();
      bubble.querySelector(".prompt-progress")?.remove();
    } else if (this.progress) {
      paintProgress(bubble, this.progress.view());
    }
    if (m.reasoning) this.paintThinking(bubble);
    if (m.text) renderMarkdown(bubble.querySelector(".message-content"), m.text, { final: false });
    if (m.toolCalls?.length) {   // arguments grow piece by piece: the list is drawn again
      const calls = toolCallList(m.toolCalls);
      const old = bubble.querySelector(".tool-calls");
      if (old) old.replaceWith(calls);
      else bubble.append(calls);
    }
    follow();
  }

  paintThinking(bubble) {
    let details = bubble.querySelector(".thinking");
    if (!details) {
      details = thinkingBlock(this.message, true);
      bubble.prepend(details);
    }
    const body = details.querySelector(".thinking-body");
    const following = body.scrollHeight - body.scrollTop - body.clientHeight < 24;
    body.textContent = this.message.reasoning;
    if (following) body.scrollTop = body.scrollHeight;    // unfolded: show the newest thought
    const live = !this.message.text;
    details.classList.toggle("live", live);
    details.querySelector(".thinking-label").textContent = thinkingLabel(this.message, true);
  }
}
