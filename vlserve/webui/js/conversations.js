// The conversation list in the sidebar: grouped by day, searchable by title and by every
// message's words (a line around the match is shown), with rename, delete (after a
// confirmation), export (one or all) and import (merging by id).

import { el, iconButton, dayGroup, downloadFile } from "./dom.js";
import * as store from "./store.js";
import { toast } from "./toasts.js";
import { normalizeImport } from "./transfer.js";

let list, empty, search, hooks;
let metas = [];
let activeId = null;

/** hooks: {open(id), deleted(id), renamed(id, title), imported()} */
export function initConversations(h) {
  hooks = h;
  list = document.getElementById("conversation-list");
  empty = document.getElementById("conversations-empty");
  search = document.getElementById("conversation-search");
  search.addEventListener("input", render);
  search.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && search.value) {
      search.value = "";
      render();
    }
  });
  document.getElementById("export-all").addEventListener("click", exportAll);
  const input = document.getElementById("import-input");
  input.addEventListener("change", async () => {
    const file = input.files[0];
    input.value = "";
    if (file) await importFile(file);
  });
}

export async function refreshList() {
  metas = await store.listConversations();
  render();
}

export function setActive(id) {
  activeId = id;
  for (const item of list.querySelectorAll(".conv")) {
    const on = item.dataset.id === id;
    item.classList.toggle("active", on);
    const button = item.querySelector(".conv-open");    // absent while being renamed
    if (on) button?.setAttribute("aria-current", "page");
    else button?.removeAttribute("aria-current");
    // one Tab stop per chat; its rename/export/delete only for the open one (or by mouse)
    for (const action of item.querySelectorAll(".conv-actions button")) action.tabIndex = on ? 0 : -1;
  }
}

function render() {
  const query = search.value.trim().toLowerCase();
  const shown = query ? metas.filter((m) => m.title.toLowerCase().includes(query)
    || (m.text ?? "").toLowerCase().includes(query)) : metas;
  const groups = [];
  for (const meta of shown) {
    const name = dayGroup(meta.updated);
    if (groups.at(-1)?.name !== name) groups.push({ name, items: [] });
    groups.at(-1).items.push(meta);
  }
  list.replaceChildren(...groups.flatMap((g) => [
    el("li.conv-group", { role: "presentation", text: g.name }),
    ...g.items.map((meta) => item(meta, query)),
  ]));
  empty.hidden = shown.length > 0;
  empty.textContent = query ? `No chats match “${search.value.trim()}”.` : "No chats yet. Your conversations will appear here.";
  setActive(activeId);
}

/** Where the query is in a chat's words: a line around it, or null (found in the title). */
function snippet(meta, query) {
  if (!query || meta.title.toLowerCase().includes(query)) return null;
  const text = meta.text ?? "";
  const at = text.toLowerCase().indexOf(query);
  if (at < 0) return null;
  const start = Math.max(0, at - 30);
  const line = text.slice(start, at + query.length + 50).replace(/\s+/g, " ").trim();
  return el("span.conv-snippet", { "data-testid": "conversation-snippet",
    text: `${start > 0 ? "…" : ""}${line}…` });
}

function item(meta, query = "") {
  const open = el("button.conv-open", { type: "button", title: meta.title, onclick: () => hooks.open(meta.id) },
    el("span.conv-title", { text: meta.title }), snippet(meta, query));
  return el("li.conv", { "data-testid": "conversation-item", "data-id": meta.id }, open,
    el("div.conv-actions", {},
      iconButton("pencil", `Rename “${meta.title}”`, { "data-testid": "conversation-rename", onclick: () => rename(meta) }),
      iconButton("download", `Export “${meta.title}”`, { "data-testid": "conversation-export", onclick: () => exportOne(meta) }),
      iconButton("trash", `Delete “${meta.title}”`, { "data-testid": "conversation-delete", onclick: () => remove(meta) })));
}

function rename(meta) {
  const row = list.querySelector(`.conv[data-id="${meta.id}"]`);
  const input = el("input.conv-rename", { type: "text", "aria-label": "Chat title", maxlength: 200 });
  input.value = meta.title;
  let finished = false;
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    if (save && title && title !== meta.title) await hooks.renamed(meta.id, title);
    await refreshList();
    list.querySelector(`.conv[data-id="${meta.id}"] .conv-open`)?.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  row.classList.add("renaming");
  row.replaceChildren(input);
  input.focus();
  input.select();
}

async function remove(meta) {
  if (!(await confirmDelete(meta.title))) return;
  await store.deleteConversation(meta.id);
  await hooks.deleted(meta.id);
  await refreshList();
  toast({ kind: "success", message: `Deleted “${meta.title}”.` });
}

function confirmDelete(title) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = `“${title}” and its images will be removed from this browser. This cannot be undone.`;
  dialog.returnValue = "";
  dialog.showModal();
  document.getElementById("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// ---- export / import ------------------------------------------------------------------------

const stamp = () => new Date().toISOString().slice(0, 10);
const slug = (title) => title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40) || "chat";

function exportJSON(conversations) {
  return JSON.stringify({ format: "vlserve-chats", version: 1, exported: new Date().toISOString(), conversations }, null, 1);
}

async function exportOne(meta) {
  const conv = await store.getConversation(meta.id);
  if (conv) downloadFile(`vlserve-${slug(conv.title)}-${stamp()}.json`, exportJSON([conv]));
}

async function exportAll() {
  const all = await store.getAllConversations();
  if (!all.length) {
    toast({ kind: "info", message: "There are no chats to export yet." });
    return;
  }
  downloadFile(`vlserve-chats-${stamp()}.json`, exportJSON(all));
  toast({ kind: "success", message: `Exported ${all.length} chat${all.length === 1 ? "" : "s"}.` });
}

async function importFile(file) {
  let conversations;
  try {
    conversations = normalizeImport(JSON.parse(await file.text()));
  } catch (err) {
    toast({ kind: "error", title: "Import failed", message: `“${file.name}” is not a vlserve chat export: ${err.message}` });
    return;
  }
  let added = 0, updated = 0, same = 0;
  for (const conv of conversations) {
    const existing = await store.getConversation(conv.id);
    if (existing && existing.updated >= conv.updated) { same += 1; continue; }
    await store.putConversation(conv);
    if (existing) updated += 1; else added += 1;
  }
  await refreshList();
  await hooks.imported(conversations.map((c) => c.id));
  const parts = [`${added} added`, updated && `${updated} updated`, same && `${same} already here`].filter(Boolean);
  toast({ kind: "success", title: "Import done", message: `${parts.join(", ")}.` });
}
