// Tiny DOM helpers shared by every module: building elements without innerHTML (so untrusted
// text can never become markup), icons from the sprite in index.html, ids, time formats.

/** el("button.icon-btn", {type: "button", "aria-label": "Copy"}, child, "text") */
export function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

const SVG = "http://www.w3.org/2000/svg";

/** An icon from the <symbol> sprite, decorative (the button around it carries the label). */
export function icon(name) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(SVG, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

export function setIcon(button, name) {
  button.querySelector("use")?.setAttribute("href", `#i-${name}`);
}

/** An icon-only button: always labelled for screen readers, with a matching tooltip. */
export function iconButton(name, label, attrs = {}) {
  return el("button.icon-btn", { type: "button", "aria-label": label, title: label, ...attrs },
    icon(name));
}

// crypto.randomUUID exists only in secure contexts, and the page is often opened over plain
// http on a LAN address; getRandomValues works everywhere.
export function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function clockTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function fullDate(ms) {
  return new Date(ms).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

/** "Today", "Yesterday", "Previous 7 days", … for grouping the conversation list. */
export function dayGroup(ms, now = Date.now()) {
  const startOfToday = new Date(now).setHours(0, 0, 0, 0);
  const day = 86400000;
  if (ms >= startOfToday) return "Today";
  if (ms >= startOfToday - day) return "Yesterday";
  if (ms >= startOfToday - 7 * day) return "Previous 7 days";
  if (ms >= startOfToday - 30 * day) return "Previous 30 days";
  return "Older";
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(1)} GB`;
}

/** Copy text; navigator.clipboard needs a secure context, so fall back to execCommand. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch { /* permission denied: try the old way */ }
  }
  const area = el("textarea", { readonly: true, class: "clipboard-helper" });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch { ok = false; }
  area.remove();
  return ok;
}

/** Brief "copied" feedback on an icon button: a check mark, then the icon again. */
export function flashCopied(button, ok = true) {
  const original = button.querySelector("use")?.getAttribute("href");
  const label = button.getAttribute("aria-label");
  setIcon(button, ok ? "check" : "x");
  button.setAttribute("aria-label", ok ? "Copied" : "Copy failed");
  button.classList.add("flashed");
  setTimeout(() => {
    button.querySelector("use")?.setAttribute("href", original);
    button.setAttribute("aria-label", label);
    button.classList.remove("flashed");
  }, 1400);
}

/** Download a string as a file (export). */
export function downloadFile(name, text, type = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
