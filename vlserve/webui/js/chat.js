// The conversation being shown and the one answer being generated: sending, streaming into
// the page, stop, regenerate, edit-and-resend, and what happens when a request fails
// (before any answer: the turn is undone and the message goes back into the box, so a
// Retry or an edit loses nothing).

import { ApiError, isAbort, streamChat } from "./api.js";
import { askForKey } from "./auth.js";
import { dropShown, fork, switchTo } from "./branches.js";
import * as composer from "./composer.js";
import { newId } from "./dom.js";
import { explain } from "./explain.js";
import { currentModel, modelLoading, noteServedModel, watchHealth, whenReady } from "./models.js";
import * as prefill from "./prefill.js";
import { PromptProgress } from "./progress.js";
import { renderMessages, startEdit, StreamView } from "./render.js";
import { follow, scrollToBottom } from "./scroll.js";
import { SAMPLING, chatOverrides, effective } from "./settings.js";
import * as store from "./store.js";
import { toast } from "./toasts.js";

const TITLE_MAX = 60;
const NOT_READY = "not ready";   // generate(): refused while the model loads; ask() waits
const SAVE_EVERY_MS = 2000;
const state = { conv: null, stream: null };
let newChatSettings = {};     // set before a new chat's first message: it takes them
const loaded = new Map();      // id -> conversation object (the same object while it streams)
let ui, hooks;

/** hooks: {changed(conv): the list and title need refreshing} */
export function initChat(h) {
  hooks = h;
  ui = {
    messages: document.getElementById("messages"),
    empty: document.getElementById("empty-state"),
    title: document.getElementById("chat-title"),
  };
}

export const currentId = () => state.conv?.id ?? null;

export async function openConversation(id) {
  const conv = loaded.get(id) ?? (await store.getConversation(id));
  if (!conv) return false;
  loaded.set(id, conv);
  state.conv = conv;
  ui.messages.replaceChildren();
  render();
  scrollToBottom();
  return true;
}

export function newChat() {
  state.conv = null;
  newChatSettings = {};
  ui.messages.replaceChildren();
  render();
}

/** After a delete: forget it (stopping its answer if one is streaming). */
export function forget(id) {
  if (state.stream?.conv.id === id) state.stream.controller.abort();
  loaded.delete(id);
  if (state.conv?.id === id) newChat();
}

/** After an import replaced stored copies: drop the in-memory ones. */
export function invalidate(ids) {
  for (const id of ids) if (state.stream?.conv.id !== id) loaded.delete(id);
}

export async function rename(id, title) {
  const conv = loaded.get(id) ?? (await store.getConversation(id));
  if (!conv) return;
  Object.assign(conv, { title, renamed: true });
  await store.putConversation(conv);
  if (state.conv?.id === id) render();
}

export function render() {
  const conv = state.conv;
  ui.empty.hidden = Boolean(conv?.messages.length);
  ui.messages.hidden = !conv?.messages.length;
  ui.title.textContent = conv?.title || "New chat";
  document.title = conv?.title ? `${conv.title} · vlserve` : "vlserve";
  if (!conv) return;
  const streaming = state.stream?.conv === conv && !state.stream.queued;
  renderMessages(ui.messages, conv, {
    streamingId: streaming ? state.stream.message.id : null,
    busy: state.stream !== null,
    modelName: currentModel(),
    onRegenerate: (message) => regenerate(conv, message),
    onEdit: edit,
    onSwitch: (message, k) => switchVersion(conv, message, k),
  });
  follow();     // a finished answer grew by its numbers line: stay at the bottom if there
}

// ---- the three ways to ask for an answer ---------------------------------------------------

export async function send() {
  if (state.stream) return;
  prefill.drop({ cancel: false });   // the request continues from it
  const draft = composer.take();
  if (!draft.text && !draft.images.length && !draft.files.length) return;
  const conv = state.conv ?? startConversation();
  const message = { id: newId(), role: "user", text: draft.text, time: Date.now(),
    images: draft.images.map(({ url, name, width, height, bytes }) => ({ url, name, width, height, bytes })) };
  if (draft.files.length) message.files = draft.files;
  conv.messages.push(message);
  if (!conv.renamed && conv.messages.filter((m) => m.role === "user").length === 1) {
    conv.title = titleFrom(draft.text || draft.files[0]?.name || "", draft.images.length);
  }
  scrollToBottom();
  await ask(conv, {
    retry: send,
    undo: () => {
      conv.messages.splice(conv.messages.indexOf(message), 1);
      composer.restore(draft);
    },
  });
}

/** A new answer in place of `message` (default: the last answer); the old one and whatever
 *  followed it stay as another version. */
export async function regenerate(conv = state.conv, message = conv?.messages.at(-1)) {
  if (state.stream || !conv) return;
  const at = message?.role === "assistant" ? conv.messages.indexOf(message) : -1;
  const how = { retry: () => regenerate(conv), undo: () => {} };
  if (at >= 0) {
    how.place = (answer) => fork(conv, at, [answer]);
    how.unplace = () => dropShown(conv, at);
  }
  await ask(conv, how);
}

async function switchVersion(conv, message, k) {
  if (state.stream) return;
  switchTo(conv, conv.messages.indexOf(message), k);
  render();
  await save(conv);
}

function edit(message, node) {
  if (state.stream) return;
  const close = () => {
    node._sig = null;     // rebuilt without the editor on the next render
    render();
  };
  startEdit(node, message.text, {
    onCancel: close,
    onSave: (text) => {
      if (!text && !message.images?.length && !message.files?.length) return;
      close();
      resend(state.conv, message, text);
    },
  });
}

/** The edited question is asked as a new version of the conversation from there on; the
 *  old question and what followed it stay as the previous version (‹ 1/2 ›). */
async function resend(conv, message, text) {
  if (state.stream) return;
  const at = conv.messages.indexOf(message);
  const oldTitle = conv.title;
  const edited = { ...message, id: newId(), text, time: Date.now() };
  delete edited.versions;
  delete edited.version;
  fork(conv, at, [edited]);
  if (!conv.renamed && conv.messages.find((m) => m.role === "user") === edited) {
    conv.title = titleFrom(text, edited.images?.length || 0);
  }
  await ask(conv, {
    retry: () => resend(conv, message, text),
    undo: () => {
      dropShown(conv, at);
      conv.title = oldTitle;
    },
  });
}

/** The chat on screen's own settings (chatsettings.js): a new chat's until it starts. */
export function chatSettings() {
  const conv = state.conv;
  return {
    values: conv ? (conv.settings ?? {}) : newChatSettings,
    update: (changes) => {
      const next = chatOverrides({ ...(conv ? conv.settings : newChatSettings), ...changes });
      if (!conv) {
        newChatSettings = next;
        return;
      }
      conv.settings = next;
      save(conv);
    },
  };
}

function startConversation() {
  const now = Date.now();
  const conv = { id: newId(), title: "New chat", created: now, updated: now, messages: [],
    settings: newChatSettings };
  newChatSettings = {};
  loaded.set(conv.id, conv);
  state.conv = conv;
  return conv;
}

function titleFrom(text, imageCount) {
  const line = text.replace(/\s+/g, " ").trim();
  if (!line) return imageCount > 1 ? `${imageCount} images` : "Image";
  return line.length > TITLE_MAX ? `${line.slice(0, TITLE_MAX - 1).trimEnd()}…` : line;
}

// ---- streaming -------------------------------------------------------------------------------

/** An answer to the conversation's last question. While the model loads, the question waits
 *  in the chat, marked, and goes at Ready (so does one the server refused as not ready). */
async function ask(conv, how) {
  for (;;) {
    if (!(await untilReady(conv, how.undo))) return;
    if ((await generate(conv, how)) !== NOT_READY) return;
  }
}

/** Wait for Ready when the model is loading: false when Stop took the question back or the
 *  model failed to load (the question goes back into the box). */
async function untilReady(conv, undo) {
  if (!modelLoading()) return true;
  const question = conv.messages.findLast((m) => m.role === "user");
  const controller = new AbortController();
  question.queued = true;
  state.stream = { conv, message: question, controller, queued: true };
  setBusy(true);
  watchHealth({ quiet: true });      // keeps asking /health until Ready
  const stopped = new Promise((resolve) => controller.signal.addEventListener("abort", () => resolve(false)));
  const ready = await Promise.race([whenReady(), stopped]);
  delete question.queued;
  state.stream = null;
  if (!ready) undo();
  setBusy(false);
  if (conv.messages.length) await save(conv);
  else await forgetEmpty(conv);
  return ready;
}

/** `place(answer)`: where the new answer goes (default: at the end); `unplace` takes it out
 *  again when it failed before it began. */
async function generate(conv, { retry, undo, place = (a) => conv.messages.push(a),
  unplace = (a) => conv.messages.splice(conv.messages.indexOf(a), 1) }) {
  // partial: cleared when the stream ends; still set after a reload means it was cut short
  const answer = { id: newId(), role: "assistant", text: "", reasoning: "", time: Date.now(),
    model: currentModel(), partial: true };
  place(answer);
  conv.updated = Date.now();
  const controller = new AbortController();
  const progress = new PromptProgress(answer.model);
  const view = new StreamView(ui.messages, answer, progress);
  const ticking = setInterval(() => view.update(), 1000);   // the estimate counts down
  state.stream = { conv, message: answer, controller };
  setBusy(true);
  const timing = { start: performance.now(), firstToken: null, reasoningStart: null };
  let started = false;
  let savedAt = 0;
  let outcome = null;
  try {
    for await (const chunk of streamChat(requestBody(conv), controller.signal)) {
      if (!started) {
        started = true;
        await save(conv);       // the question is kept even if the page closes mid-answer
      }
      if (chunk.prompt_progress) progress.update(chunk.prompt_progress);
      else applyChunk(answer, chunk, timing);
      if (timing.firstToken != null) clearInterval(ticking);
      view.update();
      if (performance.now() - savedAt > SAVE_EVERY_MS) {   // and most of a long answer too
        savedAt = performance.now();
        store.putConversation(conv).catch(() => {});
      }
    }
  } catch (err) {
    view.cancel();
    if (isAbort(err)) answer.stopped = true;
    else if (!answer.text && !answer.reasoning && !answer.toolCalls) {
      unplace(answer);
      const error = asApiError(err);
      if (error.status === 503 && error.code === "model_not_ready"
          && (await watchHealth({ quiet: true })) && modelLoading()) {
        outcome = NOT_READY;   // the question stays; ask() sends it at Ready
      } else {
        undo();
        await failed(error, retry);
      }
    } else {
      // part of an answer arrived: keep it, say why it ends there; Retry answers again
      const error = asApiError(err);
      answer.error = `${explain(error).title}: ${error.message}.`;
      await failed(error, () => regenerate(conv), { quiet: true });
    }
  } finally {
    clearInterval(ticking);
    view.cancel();
    delete answer.partial;
    finish(answer, timing);
    state.stream = null;
    setBusy(false);
    if (conv.messages.length) await save(conv);
    else await forgetEmpty(conv);
  }
  return outcome;
}

function setBusy(on) {
  composer.setStreaming(on);
  ui.messages.setAttribute("aria-busy", String(on));
  render();
}

/** The draft (the box's text and images after this conversation) as a prefill's body;
 *  null without an image in the box (a follow-up's text costs little) or while an answer
 *  streams (the conversation is not what it will be). */
export function draftBody() {
  const draft = composer.peek();
  if (!draft.images.length || state.stream) return null;
  const messages = [...(state.conv?.messages ?? []), { role: "user", ...draft }];
  const body = requestBody({ messages, settings: state.conv ? state.conv.settings : newChatSettings });
  delete body.stream;
  delete body.stream_options;
  delete body.return_progress;
  return body;
}

function requestBody(conv) {
  const s = effective(conv.settings);
  const messages = [];
  if (s.systemPrompt.trim()) messages.push({ role: "system", content: s.systemPrompt.trim() });
  const parts = (m) => {
    // images first, then the text: the order Qwen-VL's own examples use
    const out = (m.images || []).map((image) => ({ type: "image_url", image_url: { url: image.url, detail: s.imageDetail } }));
    for (const file of m.files || []) out.push({ type: "text", text: fileText(file) });
    if (m.text) out.push({ type: "text", text: m.text });
    return out;
  };
  for (const m of conv.messages) {
    if (m.role === "user") {
      messages.push({ role: "user", content: parts(m) });
    } else if (m.role === "tool") {   // an imported conversation's tool result, as it was
      messages.push({ role: "tool", tool_call_id: m.toolCallId, content: parts(m) });
    } else if (m.toolCalls?.length) {
      messages.push({ role: "assistant", content: m.text || null, tool_calls: m.toolCalls.map((c) => ({
        id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } })) });
    } else if (m.text) {
      messages.push({ role: "assistant", content: m.text });
    }
  }
  const body = { messages, stream: true, stream_options: { include_usage: true }, return_progress: true };
  for (const f of SAMPLING) if (s[f.key] != null) body[f.api] = s[f.key];
  if (currentModel()) body.model = currentModel();
  return body;
}

/** A text file as the model reads it: its name, then its text in a fence long enough that
 *  no line of the file closes it. */
function fileText({ name, text }) {
  const longest = Math.max(2, ...(text.match(/`{3,}/g) ?? []).map((run) => run.length));
  const fence = "`".repeat(longest + 1);
  return `File ${name}:\n${fence}\n${text}\n${fence}`;
}

function applyChunk(answer, chunk, timing) {
  if (chunk.model) {
    answer.model = chunk.model;
    noteServedModel(chunk.model);
  }
  const choice = chunk.choices?.[0];
  const delta = choice?.delta ?? {};
  const now = performance.now();
  if (delta.reasoning_content) {
    timing.reasoningStart ??= now;
    timing.firstToken ??= now;
    answer.reasoning += delta.reasoning_content;
  }
  if (delta.content) {
    timing.firstToken ??= now;
    if (answer.reasoning && answer.reasoningMs == null) answer.reasoningMs = now - timing.reasoningStart;
    answer.text += delta.content;
  }
  for (const piece of delta.tool_calls ?? []) {   // a call's name first, then its arguments
    timing.firstToken ??= now;
    answer.toolCalls ??= [];
    const call = answer.toolCalls[piece.index] ??= { id: piece.id, name: "", arguments: "" };
    call.name += piece.function?.name ?? "";
    call.arguments += piece.function?.arguments ?? "";
  }
  if (choice?.finish_reason) {
    answer.finish = choice.finish_reason;
    timing.timings = chunk.timings;
    if (chunk.context) answer.context = chunk.context;
  }
  if (chunk.usage) timing.usage = chunk.usage;
}

function finish(answer, timing) {
  if (answer.reasoning && answer.reasoningMs == null && timing.reasoningStart != null) {
    answer.reasoningMs = performance.now() - timing.reasoningStart;
  }
  const t = timing.timings;
  const u = timing.usage;
  if (!t && !u) return;
  answer.stats = {
    ttftMs: t?.ttft_ms ?? (timing.firstToken != null ? timing.firstToken - timing.start : undefined),
    tokensPerSecond: t?.decode_tokens_per_s,
    promptTokens: u?.prompt_tokens,
    completionTokens: u?.completion_tokens,
    cachedTokens: u?.prompt_tokens_details?.cached_tokens ?? t?.cached_tokens,
    imageTokens: u?.prompt_tokens_details?.image_tokens,
    promptMs: t?.prompt_ms,
    promptEvaluated: t?.prompt_tokens_evaluated,
    imageEncodeMs: t?.image_encode_ms,
    imagesEncoded: t?.images_encoded,
    imagesFromCache: t?.images_from_cache,
    predictedMs: t?.predicted_ms,
  };
  for (const key of Object.keys(answer.stats)) if (answer.stats[key] == null) delete answer.stats[key];
}

function asApiError(err) {
  if (err instanceof ApiError) return err;
  // a dropped connection mid-stream surfaces as a TypeError from the reader
  return new ApiError(0, { code: "unreachable", message: String(err?.message || err) }, { midStream: true });
}

async function save(conv) {
  conv.updated = Math.max(conv.updated, Date.now());
  try {
    await store.putConversation(conv);
  } catch (err) {
    toast({ kind: "error", key: "save", title: "Could not save the chat",
      message: `The browser refused to store it (${err?.message || err}). Free some space or export your chats.` });
  }
  hooks.changed(conv);
}

async function forgetEmpty(conv) {
  loaded.delete(conv.id);
  await store.deleteConversation(conv.id).catch(() => {});
  if (state.conv === conv) state.conv = null;
  render();
  hooks.changed(null);
}

// ---- errors -------------------------------------------------------------------------------

async function failed(err, retry, { quiet = false } = {}) {
  let health = null;
  if (err.status === 0 || (err.status === 503 && err.code !== "server_busy")) {
    // why it is down (for the message), the dot shows it, and "Ready" is said when it is back
    health = await watchHealth({ quiet: true });
  }
  const { title, message, retry: canRetry, newChat: offerNewChat } = explain(err, health);
  const actions = [];
  if (canRetry) actions.push({ label: "Retry", testid: "toast-retry", run: retry });
  if (offerNewChat) actions.push({ label: "New chat", testid: "toast-new-chat", run: () => hooks.newChat() });
  if (err.status === 401) {
    actions.push({ label: "Enter key", testid: "toast-key", run: async () => { if (await askForKey(err.message)) retry(); } });
  }
  if (quiet && !actions.length) return;   // already written under the interrupted answer
  // a toast that says the server is down or loading goes at Ready ("down"); others stay
  toast({ kind: "error", title, message, actions, key: health ? "down" : "request" });
}

export function stop() {
  state.stream?.controller.abort();
}
