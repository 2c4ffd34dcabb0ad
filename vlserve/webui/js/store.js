// Conversations in IndexedDB (images included, as data: URLs). Two stores: "meta" holds the
// small records the sidebar lists (id, title, dates), "conversations" the full ones, so
// listing never loads every photo ever sent.

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

export function metaOf(conv) {
  return { id: conv.id, title: conv.title, created: conv.created, updated: conv.updated };
}

/** Every conversation's meta record, most recently updated first. */
export async function listConversations() {
  const db = await open();
  const all = await result(db.transaction("meta").objectStore("meta").getAll());
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
