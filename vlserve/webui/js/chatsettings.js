// This chat's own settings: a system prompt and sampling that override the defaults of
// Settings for one conversation only (`conv.settings`, kept and exported with it). Empty
// fields show the default they fall back to.

import { SAMPLING, numberField, settings } from "./settings.js";

let dialog, prompt, grid, chat;

/** `chat()`: {values: the chat's own settings, update(changes)} for the chat on screen. */
export function initChatSettings({ current }) {
  chat = current;
  dialog = document.getElementById("chat-settings-dialog");
  prompt = document.getElementById("chat-system-prompt");
  grid = document.getElementById("chat-sampling");
  grid.replaceChildren(...SAMPLING.map((f) => numberField(f, `chat-${f.api}`, "",
    (value) => chat().update({ [f.key]: value }))));
  prompt.addEventListener("input", () => chat().update({ systemPrompt: prompt.value.trim() ? prompt.value : null }));
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
  document.getElementById("chat-settings-button").addEventListener("click", () => {
    fill();
    dialog.showModal();
  });
}

function fill() {
  const own = chat().values;
  const defaults = settings();
  prompt.value = own.systemPrompt ?? "";
  prompt.placeholder = defaults.systemPrompt ? `Default: ${defaults.systemPrompt}` : "None by default";
  for (const input of grid.querySelectorAll("input")) {
    const key = input.dataset.key;
    input.value = own[key] ?? "";
    input.placeholder = defaults[key] != null ? `Default: ${defaults[key]}` : "Server default";
  }
}
