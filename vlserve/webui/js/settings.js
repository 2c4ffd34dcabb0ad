// Per-browser generation settings (localStorage) and the settings sheet that edits them.
// The model choice is not stored here: the server has one loaded model, and models.js
// mirrors it.

import { getKey, setKey, askForKey } from "./auth.js";

const KEY = "vlserve.settings";
const DEFAULTS = { systemPrompt: "", temperature: 0.7, maxTokens: null, imageDetail: "auto" };
const DETAILS = ["low", "auto", "high"];

let current = load();

function load() {
  let stored = {};
  try { stored = JSON.parse(localStorage.getItem(KEY) || "{}") || {}; } catch { stored = {}; }
  return sanitize({ ...DEFAULTS, ...stored });
}

// Anything odd in storage (an old version, a hand edit) falls back to the default.
function sanitize(s) {
  const temperature = Number(s.temperature);
  const maxTokens = s.maxTokens === null || s.maxTokens === "" ? null : Math.floor(Number(s.maxTokens));
  return {
    systemPrompt: typeof s.systemPrompt === "string" ? s.systemPrompt : "",
    temperature: Number.isFinite(temperature) && temperature >= 0 && temperature <= 2
      ? temperature : DEFAULTS.temperature,
    maxTokens: Number.isFinite(maxTokens) && maxTokens >= 1 ? maxTokens : null,
    imageDetail: DETAILS.includes(s.imageDetail) ? s.imageDetail : DEFAULTS.imageDetail,
  };
}

export function settings() {
  return current;
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
  };
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

function fill() {
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
