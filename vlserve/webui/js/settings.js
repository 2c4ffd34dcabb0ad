// Per-browser generation settings (localStorage) and the settings sheet that edits them:
// the defaults of every chat (a chat may override any of them: chatsettings.js). The model
// choice is not stored here: the server has one loaded model, and models.js mirrors it.

import { getKey, setKey, askForKey } from "./auth.js";

const KEY = "vlserve.settings";
const DETAILS = ["low", "auto", "high"];

/** The sampling fields: the key kept here, the API's field, its range. null: the server's
 *  default (temperature has the page's own, 0.7). */
export const SAMPLING = [
  { key: "temperature", api: "temperature", label: "Temperature", min: 0, max: 2, step: 0.05 },
  { key: "topP", api: "top_p", label: "Top P", min: 0, max: 1, step: 0.01 },
  { key: "topK", api: "top_k", label: "Top K", min: 0, max: 1000000, step: 1, integer: true },
  { key: "minP", api: "min_p", label: "Min P", min: 0, max: 1, step: 0.01 },
  { key: "repeatPenalty", api: "repeat_penalty", label: "Repeat penalty", min: 0.01, max: 10, step: 0.05 },
  { key: "seed", api: "seed", label: "Seed", min: -(2 ** 53), max: 2 ** 53, step: 1, integer: true },
  { key: "maxTokens", api: "max_tokens", label: "Max answer tokens", min: 1, max: 2 ** 31, step: 1, integer: true },
];
const DEFAULTS = { systemPrompt: "", imageDetail: "auto",
  ...Object.fromEntries(SAMPLING.map((f) => [f.key, null])), temperature: 0.7 };

/** A sampling value as typed (a string, a number, null) -> a number in range, or null. */
export function samplingValue(field, value) {
  if (value === null || value === undefined || value === "") return null;
  const n = Number(value);
  if (!Number.isFinite(n) || n < field.min || n > field.max) return null;
  return field.integer ? Math.trunc(n) : n;
}

let current = load();

function load() {
  let stored = {};
  try { stored = JSON.parse(localStorage.getItem(KEY) || "{}") || {}; } catch { stored = {}; }
  return sanitize({ ...DEFAULTS, ...stored });
}

// Anything odd in storage (an old version, a hand edit) falls back to the default.
function sanitize(s) {
  const out = {
    systemPrompt: typeof s.systemPrompt === "string" ? s.systemPrompt : "",
    imageDetail: DETAILS.includes(s.imageDetail) ? s.imageDetail : DEFAULTS.imageDetail,
  };
  for (const f of SAMPLING) out[f.key] = samplingValue(f, s[f.key]);
  out.temperature ??= DEFAULTS.temperature;
  return out;
}

export function settings() {
  return current;
}

/** A chat's own settings, checked (stored or imported): only what it sets, nothing odd. */
export function chatOverrides(obj) {
  const out = {};
  if (!obj || typeof obj !== "object") return out;
  if (typeof obj.systemPrompt === "string" && obj.systemPrompt.trim()) out.systemPrompt = obj.systemPrompt;
  for (const f of SAMPLING) {
    const value = samplingValue(f, obj[f.key]);
    if (value !== null) out[f.key] = value;
  }
  return out;
}

/** The settings a chat's requests use: the defaults with its own on top. */
export function effective(overrides) {
  return { ...current, ...chatOverrides(overrides) };
}

function save(changes) {
  current = sanitize({ ...current, ...changes });
  try { localStorage.setItem(KEY, JSON.stringify(current)); } catch { /* private mode */ }
}

let dialog, fields;

export function initSettings({ onOpen }) {
  dialog = document.getElementById("settings-dialog");
  fields = {
    prompt: document.getElementById("system-prompt"),
    temp: document.getElementById("temperature"),
    tempValue: document.getElementById("temperature-value"),
    maxTokens: document.getElementById("max-tokens"),
    detail: document.getElementById("image-detail"),
    more: document.getElementById("sampling-defaults"),
  };
  fields.more.replaceChildren(...SAMPLING.filter((f) => !["temperature", "maxTokens"].includes(f.key))
    .map((f) => numberField(f, `default-${f.api}`, "Server default", (value) => save({ [f.key]: value }))));
  bindFields(fields);
  document.getElementById("key-change").addEventListener("click", changeKey);
  // A click on the backdrop (outside the sheet's box) closes it, as people expect.
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
  for (const id of ["settings-button", "model-pill"]) {
    document.getElementById(id).addEventListener("click", () => {
      fill();
      dialog.showModal();
      onOpen?.();
    });
  }
}

// Every change is saved as it happens: there is no "Save" button to forget.
function bindFields(f) {
  f.prompt.addEventListener("input", () => save({ systemPrompt: f.prompt.value }));
  f.temp.addEventListener("input", () => {
    save({ temperature: Number(f.temp.value) });
    f.tempValue.textContent = current.temperature.toFixed(2);
  });
  f.maxTokens.addEventListener("input", () => save({ maxTokens: f.maxTokens.value }));
  f.maxTokens.addEventListener("change", () => { f.maxTokens.value = current.maxTokens ?? ""; });
  f.detail.addEventListener("change", () => save({ imageDetail: f.detail.value }));
}

/** A labelled number input for a sampling field; `onValue(number|null)` on every edit. */
export function numberField(f, id, placeholder, onValue) {
  const input = document.createElement("input");
  Object.assign(input, { type: "number", id, min: f.min, max: f.max, step: f.step, placeholder });
  input.dataset.testid = id;
  input.dataset.key = f.key;
  input.inputMode = f.integer ? "numeric" : "decimal";
  input.addEventListener("input", () => onValue(samplingValue(f, input.value)));
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = f.label;
  const field = document.createElement("div");
  field.className = "field";
  field.append(label, input);
  return field;
}

function fill() {
  for (const input of fields.more.querySelectorAll("input")) input.value = current[input.dataset.key] ?? "";
  fields.prompt.value = current.systemPrompt;
  fields.temp.value = current.temperature;
  fields.tempValue.textContent = current.temperature.toFixed(2);
  fields.maxTokens.value = current.maxTokens ?? "";
  fields.detail.value = current.imageDetail;
  showKeyState();
}

function showKeyState() {
  const has = Boolean(getKey());
  document.getElementById("key-state").textContent = has ? "A key is saved in this browser" : "None set (not needed unless the server asks)";
  document.getElementById("key-change").textContent = has ? "Forget key" : "Set key…";
}

async function changeKey() {
  if (getKey()) setKey("");
  else await askForKey("");
  showKeyState();
}
