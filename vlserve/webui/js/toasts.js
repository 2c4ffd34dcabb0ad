// Notifications: every failure the user must know about lands here, never only in the
// console. Each toast is its own role="status" live region (errors assertive); info and
// success hide on their own, errors stay until dismissed (or acted on).

import { el, icon, iconButton } from "./dom.js";

const ICONS = { error: "alert", info: "info", success: "check-circle" };
const AUTO_HIDE_MS = { info: 5000, success: 3500 };
const MAX_VISIBLE = 4;

let container;

export function initToasts(node) {
  container = node;
}

/**
 * toast({kind, title, message, actions: [{label, run, testid}], key, timeout})
 * A toast with the same `key` replaces the previous one (e.g. one "model loading" note).
 * Returns a handle with dismiss().
 */
export function toast({ kind = "info", title, message, actions = [], key, timeout } = {}) {
  if (key) dismissKey(key);
  const node = el(`div.toast.toast-${kind}`, {
    "data-testid": "toast", "data-kind": kind, role: "status",
    "aria-live": kind === "error" ? "assertive" : "polite", "data-key": key,
  });
  const handle = { node, dismiss: () => remove(node) };
  const text = el("div.toast-text", {},
    title ? el("strong.toast-title", { text: title }) : null,
    message ? el("p.toast-message", { text: message }) : null);
  const buttons = actions.map((a) => el("button.btn.small.toast-action", {
    type: "button", "data-testid": a.testid, text: a.label,
    onclick: () => { handle.dismiss(); a.run(); },
  }));
  node.append(el("span.toast-icon", {}, icon(ICONS[kind] || "info")), text,
    ...(buttons.length ? [el("div.toast-actions", {}, ...buttons)] : []),
    iconButton("x", "Dismiss notification", { class: "icon-btn toast-close", onclick: handle.dismiss }));
  container.append(node);
  trim();
  const ms = timeout ?? AUTO_HIDE_MS[kind];
  if (ms) scheduleHide(node, ms);
  return handle;
}

export function dismissKey(key) {
  for (const node of container.querySelectorAll(`[data-key="${CSS.escape(key)}"]`)) remove(node);
}

// Hovering or focusing a toast pauses its timer, so nobody loses a message mid-read.
function scheduleHide(node, ms) {
  let timer = setTimeout(() => remove(node), ms);
  const pause = () => clearTimeout(timer);
  const resume = () => { timer = setTimeout(() => remove(node), 1500); };
  node.addEventListener("mouseenter", pause);
  node.addEventListener("focusin", pause);
  node.addEventListener("mouseleave", resume);
  node.addEventListener("focusout", resume);
}

function trim() {
  const toasts = container.querySelectorAll(".toast:not(.leaving)");
  for (let i = 0; i < toasts.length - MAX_VISIBLE; i++) remove(toasts[i]);
}

function remove(node) {
  if (!node.isConnected || node.classList.contains("leaving")) return;
  node.classList.add("leaving");
  const done = () => node.remove();
  node.addEventListener("animationend", done, { once: true });
  setTimeout(done, 300);  // reduced motion: no animation, no animationend
}
