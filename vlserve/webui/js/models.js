// The server's model: which one is loaded (the pill in the top bar, the empty state), the
// selector in the settings sheet, switching with live progress from /admin/models/events,
// and watching /health while the server loads so the page can say why it cannot answer yet.
// Models on upstream servers (gateway mode, `backend` other than "local") are not loaded
// here: choosing one just sends the next messages to it.

import { apiFetch, getHealth, getJSON, postJSON, sseData, isAbort } from "./api.js";
import { formatBytes } from "./dom.js";
import { toast, dismissKey } from "./toasts.js";
import { explain } from "./explain.js";

const state = { models: [], loaded: null, chosen: null, status: "unknown", switching: null };
let ui;

export function currentModel() {
  return state.switching || state.chosen || state.loaded;
}

const isUpstream = (model) => Boolean(model && model.backend && model.backend !== "local");

export function initModels() {
  ui = {
    pill: document.getElementById("model-pill"),
    demo: document.getElementById("demo-banner"),
    dot: document.getElementById("model-dot"),
    name: document.getElementById("model-name"),
    empty: document.getElementById("empty-model"),
    select: document.getElementById("model-select"),
    info: document.getElementById("model-info"),
    wrap: document.getElementById("model-progress-wrap"),
    progress: document.getElementById("model-progress"),
    progressText: document.getElementById("model-progress-text"),
  };
  ui.select.addEventListener("change", () => switchModel(ui.select.value));
}

/** Called when the settings sheet opens: fresh list, and no stale progress from before. */
export function onSettingsOpen() {
  if (!state.switching) ui.wrap.hidden = true;
  refreshModels();
}

export async function refreshModels() {
  try {
    const body = await getJSON("/v1/models", { cache: "no-store" });
    state.models = Array.isArray(body.data) ? body.data : [];
    const loaded = state.models.find((m) => m.loaded);
    if (loaded?.meta) ui.demo.hidden = loaded.meta.random_weights !== true;
    if (loaded && !state.switching) {
      state.loaded = loaded.id;
      // while /health is being watched (not ready), it alone says when the model is ready
      if (healthTimer === null) setStatus(loaded.status === "ready" ? "ready" : loaded.status);
    }
  } catch (err) {
    if (err.status === 0) setStatus("unreachable");
  }
  renderSelect();
  renderPill();
}

function renderSelect() {
  const { select } = ui;
  select.replaceChildren(...state.models.map((m) => {
    const where = m.loaded ? " (loaded)" : isUpstream(m) ? ` (${m.backend}${m.status === "down" ? ", down" : ""})` : "";
    return new Option(m.id + where, m.id);
  }));
  if (!state.models.length) select.append(new Option(state.loaded || "no models found", ""));
  select.value = currentModel() || "";
  select.disabled = Boolean(state.switching) || state.models.length < 2;
  const model = state.models.find((m) => m.id === select.value);
  ui.info.textContent = model ? describe(model) : "";
}

function describe(model) {
  const caps = [model.capabilities?.vision && "vision", model.capabilities?.thinking && "thinking"]
    .filter(Boolean).join(" · ");
  const size = model.size_bytes ? formatBytes(model.size_bytes) : "";
  const where = isUpstream(model)
    ? `served by ${(model.backends || [model.backend]).join(", ")}${model.status === "down" ? " (down)" : ""}`
    : "";
  const count = state.models.length;
  const more = count < 2 ? " · the only model on this server" : ` · ${count} models`;
  return [caps, size, where].filter(Boolean).join(" · ") + more;
}

function setStatus(status) {
  state.status = status;
  renderPill();
  if (status === "ready" || status === "failed") {   // the wait of a queued question ends
    for (const resolve of readyWaiters) resolve(status === "ready");
    readyWaiters.clear();
  }
}

const readyWaiters = new Set();

/** The server is loading its model (a question sent now waits for it). */
export const modelLoading = () => state.status === "loading" || state.status === "warming";

/** Resolves true when the model is ready, false if it failed to load. */
export function whenReady() {
  return new Promise((resolve) => readyWaiters.add(resolve));
}

function renderPill() {
  const name = currentModel();
  const labels = {
    ready: name, loading: `${name || "model"} · loading`, warming: `${name || "model"} · warming up`,
    unloaded: `${name} · idle`, failed: `${name || "model"} · failed`,
    unreachable: "server offline", unknown: name || "connecting…", auth: "API key needed",
  };
  const text = labels[state.status] ?? name ?? "…";
  ui.name.textContent = text;
  ui.dot.dataset.state = state.status;
  ui.pill.setAttribute("aria-label", `Model: ${text}. Open settings`);
  ui.empty.textContent = name || "the local model";
}

// ---- /health: is the server up, and is its model ready? ----------------------------------

let healthTimer = null;
let wasDown = false;     // seen not ready since the last "Ready": say so when it is back

/**
 * Check /health now; while it is not ready, keep checking and say why in a toast (`quiet`:
 * no toast, when the caller has just said why itself), then say when it is ready.
 */
export async function watchHealth({ quiet = false } = {}) {
  clearTimeout(healthTimer);
  healthTimer = null;
  const health = await getHealth();
  const status = health.status === "ok" ? "ready" : health.status;
  if (status === "ready") ui.demo.hidden = health.random_weights !== true;   // the demo model
  if (health.model && !state.switching) state.loaded = health.model;
  setStatus(status);
  // "auth": /v1/models, fetched next, asks for the key
  if (status === "ready" || status === "unloaded" || status === "auth") {
    dismissKey("health");
    dismissKey("down");    // a request's "still loading" or "can't reach": no longer true
    if (wasDown) {
      wasDown = false;
      toast({ kind: "success", title: "Ready", message: `${health.model || "The model"} is ready.` });
      refreshModels();
    }
    return health;
  }
  wasDown = true;
  if (!quiet) announce(status, health);
  healthTimer = setTimeout(() => watchHealth({ quiet }), status === "failed" ? 10000 : 2000);
  return health;
}

function announce(status, health) {
  if (status === "unreachable") {
    toast({ kind: "error", key: "health", title: "Can't reach the server",
      message: `Nothing answers at ${location.host}. Is vlserve running? Retrying…` });
  } else if (status === "failed") {
    toast({ kind: "error", key: "health", title: "The model failed to load",
      message: health.reason || "See the server's log." });
  } else {
    toast({ kind: "info", key: "health", title: "The model is loading",
      message: `${health.reason || status}. A message you send now goes when it's ready.`,
      timeout: 0 });
  }
}

// ---- switching -----------------------------------------------------------------------------

async function switchModel(id) {
  if (!id || state.switching) return;
  const card = state.models.find((m) => m.id === id);
  if (isUpstream(card)) {
    state.chosen = id;
    renderSelect();
    renderPill();
    toast({ kind: "success", title: "Model chosen",
      message: `Now answering with ${id}, on ${card.backend}.` });
    return;
  }
  state.chosen = null;
  if (id === state.loaded) {
    renderSelect();
    renderPill();
    return;
  }
  const previous = state.loaded;
  state.switching = id;
  showProgress(0, `Loading ${id}…`);
  renderSelect();
  setStatus("loading");
  const controller = new AbortController();
  try {
    // Subscribe first, then ask: no event of this load can be missed.
    const events = await apiFetch("/admin/models/events", { signal: controller.signal, cache: "no-store" });
    await postJSON("/admin/models/load", { model: id, wait: false });
    const outcome = await followLoad(events, id);
    finishSwitch(id, previous, outcome);
  } catch (err) {
    if (!isAbort(err)) finishSwitch(id, previous, { ok: false, reason: explain(err).message });
  } finally {
    controller.abort();
  }
}

async function followLoad(response, id) {
  for await (const data of sseData(response)) {
    const ev = JSON.parse(data);
    if (ev.type === "progress" && ev.model === id) {
      showProgress(ev.progress, `Loading ${id}… ${Math.round(ev.progress * 100)}%`);
    } else if (ev.type === "rolled_back") {
      return { ok: false, reason: ev.reason };
    } else if (ev.type === "state" && ev.model === id) {
      if (ev.state === "ready") return { ok: true, seconds: ev.load_seconds };
      if (ev.state === "failed") return { ok: false, reason: ev.reason };
      if (ev.state === "warming") showProgress(1, `Warming up ${id}…`);
    }
  }
  return { ok: false, reason: "the server closed the event stream" };
}

function showProgress(value, text) {
  ui.wrap.hidden = false;
  ui.progress.value = value;
  ui.progressText.textContent = text;
  ui.name.textContent = text;
}

function finishSwitch(id, previous, outcome) {
  state.switching = null;
  if (outcome.ok) {
    state.loaded = id;
    const took = outcome.seconds != null ? ` in ${Number(outcome.seconds).toFixed(1)} s` : "";
    showProgress(1, `Loaded ${id}${took}.`);
    toast({ kind: "success", title: "Model switched", message: `Now answering with ${id}.` });
  } else {
    ui.progressText.textContent = `Could not load ${id}.`;
    toast({ kind: "error", title: `Couldn't load ${id}`,
      message: `${outcome.reason}${previous ? ` ${previous} is still in use.` : ""}` });
  }
  setStatus("ready");
  refreshModels();
}

/** The model named by the server in a chunk: another client may have switched it. */
export function noteServedModel(id) {
  if (id && !state.switching && !state.chosen && id !== state.loaded
      && state.models.some((m) => m.id === id && !isUpstream(m))) {
    state.loaded = id;
    renderPill();
  }
}
