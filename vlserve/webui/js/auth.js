// API keys: the server may answer 401 (once keys are turned on); then the page asks for a
// key in a small dialog, keeps it in localStorage and sends it as a Bearer token on every call.

const KEY = "vlserve.apiKey";
let pending = null;       // one dialog for every request that got a 401 at the same time
let dialog, input, text, cancel, onChange = () => {};

export function getKey() {
  try { return localStorage.getItem(KEY) || ""; } catch { return ""; }
}

export function setKey(value) {
  try {
    if (value) localStorage.setItem(KEY, value);
    else localStorage.removeItem(KEY);
  } catch { /* storage blocked: the key lives for this page only */ }
  onChange(value);
}

export function authHeaders() {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export function initAuth({ onKeyChange } = {}) {
  dialog = document.getElementById("api-key-dialog");
  input = document.getElementById("api-key-input");
  text = document.getElementById("api-key-text");
  cancel = document.getElementById("api-key-cancel");
  onChange = onKeyChange || onChange;
  cancel.addEventListener("click", () => dialog.close("cancel"));
}

/** Show the key dialog; resolves true when a key was saved, false when cancelled. */
export function askForKey(reason) {
  if (pending) return pending;
  text.textContent = reason && !/^HTTP \d+$/.test(reason)
    ? `The server says: “${reason}”. Enter an API key for it; it is kept in this browser only.`
    : "This server asks for an API key. It is kept in this browser only.";
  input.value = getKey();
  pending = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      pending = null;
      const value = input.value.trim();
      if (dialog.returnValue === "save" && value) {
        setKey(value);
        resolve(true);
      } else resolve(false);
    }, { once: true });
  });
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return pending;
}
