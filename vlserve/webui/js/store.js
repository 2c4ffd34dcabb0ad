// Conversations in IndexedDB (images included, as data: URLs). Two stores: "meta" holds the
// small records the sidebar lists (id, title, dates), "conversations" the full ones, so
// listing never loads every photo ever sent.

import { allMessages } from "./branches.js";

const DB_NAME = "vlserve";
const VERSION = 1;
let dbPromise = null;

function open() {
  dbPromise ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      if (!db.objectStoreNames.contains("meta")) db.createObjectStore("meta", { keyPath: "id" });
      if (!db.objectStoreNames.contains("conversations")) {
        db.createObjectStore("conversations", { keyPath: "id" });
      }
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
    request.onblocked = () => reject(new Error("the chat database is open in an older tab"));
  });
  return dbPromise;
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
  });
}

function result(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

const SEARCH_CHARS = 50_000;    // of a conversation's words kept for search (no images)

/** What the sidebar lists: the small record, with the words of every message (every
 *  version, text files included) for full-text search. */
export function metaOf(conv) {
  const words = [];
  for (const m of allMessages(conv.messages)) {
    if (m.text) words.push(m.text);
    for (const f of m.files ?? []) words.push(f.name);
  }
  return { id: conv.id, title: conv.title, created: conv.created, updated: conv.updated,
    text: words.join("\n").slice(0, SEARCH_CHARS) };
}

/** Every conversation's meta record, most recently updated first. Records from before
 *  full-text search get their words once, from the full conversation. */
export async function listConversations() {
  const db = await open();
  const all = await result(db.transaction("meta").objectStore("meta").getAll());
  const old = all.filter((meta) => typeof meta.text !== "string");
  if (old.length) {
    const tx = db.transaction(["meta", "conversations"], "readwrite");
    for (const meta of old) {
      const conv = await result(tx.objectStore("conversations").get(meta.id));
      if (conv) Object.assign(meta, metaOf(conv));
      tx.objectStore("meta").put(meta);
    }
    await done(tx);
  }
  return all.sort((a, b) => b.updated - a.updated);
}

export async function getConversation(id) {
  const db = await open();
  return (await result(db.transaction("conversations").objectStore("conversations").get(id)))
    ?? null;
}

export async function getAllConversations() {
  const db = await open();
  const all = await result(db.transaction("conversations").objectStore("conversations").getAll());
  return all.sort((a, b) => b.updated - a.updated);
}

export async function putConversation(conv) {
  const db = await open();
  const tx = db.transaction(["meta", "conversations"], "readwrite");
  tx.objectStore("conversations").put(conv);
  tx.objectStore("meta").put(metaOf(conv));
  return done(tx);
}

export async function deleteConversation(id) {
  const db = await open();
  const tx = db.transaction(["meta", "conversations"], "readwrite");
  tx.objectStore("conversations").delete(id);
  tx.objectStore("meta").delete(id);
  return done(tx);
}
