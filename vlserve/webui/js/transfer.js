// What an imported file may contain. Exports are plain JSON, so an import is untrusted
// input: every field is checked and copied, images must be data:image URLs (nothing that
// makes the page fetch from elsewhere), unknown fields are dropped.

import { newId } from "./dom.js";
import { chatOverrides } from "./settings.js";

const MAX_TITLE = 200;
const MAX_VERSION_DEPTH = 50;   // versions within versions: deeper ones are dropped
const MAX_FILE_CHARS = 400_000;

/** Accepts our export ({conversations: [...]}), a bare list, or one conversation. */
export function normalizeImport(data) {
  const list = Array.isArray(data) ? data
    : Array.isArray(data?.conversations) ? data.conversations
      : data && Array.isArray(data.messages) ? [data] : null;
  if (!list) throw new Error("no conversations found in it");
  const out = list.map(conversation).filter(Boolean);
  if (!out.length && list.length) throw new Error("none of its conversations could be read");
  return out;
}

function conversation(c) {
  if (!c || typeof c !== "object" || !Array.isArray(c.messages)) return null;
  const messages = c.messages.map((m) => message(m, 0)).filter(Boolean);
  const now = Date.now();
  const created = time(c.created, now);
  return {
    id: typeof c.id === "string" && /^[\w-]{1,64}$/.test(c.id) ? c.id : newId(),
    title: (typeof c.title === "string" && c.title.trim() ? c.title.trim() : "Imported chat").slice(0, MAX_TITLE),
    renamed: Boolean(c.renamed),
    created,
    updated: time(c.updated, created),
    settings: chatOverrides(c.settings),
    messages,
  };
}

function message(m, depth) {
  if (!m || !["user", "assistant", "tool"].includes(m.role)) return null;
  const out = {
    id: typeof m.id === "string" && /^[\w-]{1,64}$/.test(m.id) ? m.id : newId(),
    role: m.role,
    text: typeof m.text === "string" ? m.text : typeof m.content === "string" ? m.content : "",
    time: time(m.time, Date.now()),
  };
  const images = Array.isArray(m.images) ? m.images.map(image).filter(Boolean) : [];
  if (images.length && m.role !== "assistant") out.images = images;
  if (m.role === "tool") {
    // a tool's result: which call it answers (our toolCallId, or OpenAI's tool_call_id)
    const callId = m.toolCallId ?? m.tool_call_id;
    if (typeof callId !== "string" || !callId) return null;
    out.toolCallId = callId.slice(0, 200);
  }
  const files = Array.isArray(m.files) ? m.files.filter((f) => typeof f?.name === "string"
    && typeof f?.text === "string").map((f) => ({ name: f.name.slice(0, 200), text: f.text.slice(0, MAX_FILE_CHARS),
    bytes: Number.isFinite(f.bytes) ? f.bytes : undefined })) : [];
  if (files.length && m.role === "user") out.files = files;
  // other versions of the conversation from here on (branches.js), each checked the same way
  if (Array.isArray(m.versions) && depth < MAX_VERSION_DEPTH && Number.isInteger(m.version)
      && m.version >= 0 && m.version < m.versions.length) {
    const versions = m.versions.map((tail, k) => (k === m.version ? null
      : Array.isArray(tail) ? tail.map((t) => message(t, depth + 1)).filter(Boolean) : []));
    if (versions.every((tail, k) => k === m.version || tail.length)) {
      out.versions = versions;
      out.version = m.version;
    }
  }
  if (m.role === "assistant") {
    const calls = toolCalls(m.toolCalls ?? m.tool_calls);
    if (calls.length) out.toolCalls = calls;
    for (const key of ["reasoning", "model", "note", "error", "finish"]) {
      if (typeof m[key] === "string") out[key] = m[key];
    }
    if (typeof m.reasoningMs === "number") out.reasoningMs = m.reasoningMs;
    if (m.stopped === true) out.stopped = true;
    if (m.partial === true) out.partial = true;
    if (m.stats && typeof m.stats === "object") out.stats = numbers(m.stats);
    if (m.context && typeof m.context === "object") out.context = numbers(m.context);
  }
  return out;
}

/** An assistant's calls: ours ({id, name, arguments}) or OpenAI's ({id, function: {...}}). */
function toolCalls(list) {
  if (!Array.isArray(list)) return [];
  return list.map((c) => {
    const f = c?.function ?? c;
    if (typeof f?.name !== "string" || !f.name) return null;
    return {
      id: typeof c.id === "string" ? c.id.slice(0, 200) : newId(),
      name: f.name.slice(0, 200),
      arguments: typeof f.arguments === "string" ? f.arguments : JSON.stringify(f.arguments ?? {}),
    };
  }).filter(Boolean);
}

function image(i) {
  const url = typeof i === "string" ? i : i?.url;
  if (typeof url !== "string" || !/^data:image\/(png|jpeg|webp|gif|bmp);base64,[A-Za-z0-9+/=]+$/.test(url)) return null;
  return {
    url,
    name: typeof i?.name === "string" ? i.name.slice(0, 200) : "image",
    width: Number.isFinite(i?.width) ? i.width : undefined,
    height: Number.isFinite(i?.height) ? i.height : undefined,
    bytes: Number.isFinite(i?.bytes) ? i.bytes : undefined,
  };
}

function numbers(obj) {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => typeof v === "number" && Number.isFinite(v)));
}

function time(value, fallback) {
  return Number.isFinite(value) && value > 0 ? value : fallback;
}
