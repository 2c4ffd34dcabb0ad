// Wires the modules together and restores where the user left off. Each module owns one
// part of the page; this file only connects their events.

import { initAuth } from "./auth.js";
import * as chat from "./chat.js";
import { initChatSettings } from "./chatsettings.js";
import * as composer from "./composer.js";
import { initConversations, refreshList, setActive } from "./conversations.js";
import { initImageSources } from "./images.js";
import { closeDrawer, initLayout } from "./layout.js";
import { initLightbox } from "./lightbox.js";
import { initModels, onSettingsOpen, refreshModels, watchHealth } from "./models.js";
import * as prefill from "./prefill.js";
import { initScroll } from "./scroll.js";
import { initSettings } from "./settings.js";
import { initTheme } from "./theme.js";
import { initToasts, toast } from "./toasts.js";

const CURRENT = "vlserve.current";

function remember(id) {
  try {
    if (id) localStorage.setItem(CURRENT, id);
    else localStorage.removeItem(CURRENT);
  } catch { /* not kept across reloads, that's all */ }
}

async function select(id) {
  prefill.drop();
  if (await chat.openConversation(id)) {
    setActive(id);
    remember(id);
  }
  closeDrawer();
  composer.focusInput();
}

function newChat() {
  prefill.drop();
  chat.newChat();
  setActive(null);
  remember(null);
  closeDrawer();
  composer.focusInput();
}

function reportCrash(message) {
  toast({ kind: "error", key: "crash", title: "Something went wrong in the page",
    message: `${message}. Reloading the page usually helps; your chats are saved.` });
}

function initShortcuts() {
  document.addEventListener("keydown", (event) => {
    const mod = event.ctrlKey || event.metaKey;
    if (mod && event.shiftKey && event.key.toLowerCase() === "o") {
      event.preventDefault();
      newChat();
    }
  });
}

async function start() {
  initToasts(document.getElementById("toasts"));
  window.addEventListener("error", (event) => reportCrash(event.message));
  window.addEventListener("unhandledrejection", (event) => reportCrash(event.reason?.message || String(event.reason)));
  initTheme();
  initAuth();
  initLightbox();
  initScroll();
  initModels();
  initSettings({ onOpen: onSettingsOpen });
  initChatSettings({ current: chat.chatSettings });
  initLayout();
  initShortcuts();
  composer.initComposer({ onSend: chat.send, onStop: chat.stop,
    onDraft: (when) => prefill.draftChanged(chat.draftBody, when) });
  initImageSources((files) => composer.addFiles(files));
  chat.initChat({
    changed: async (conv) => {
      await refreshList();
      setActive(conv?.id ?? chat.currentId());
      if (conv && conv.id === chat.currentId()) remember(conv.id);
    },
    newChat,
  });
  initConversations({
    open: select,
    renamed: chat.rename,
    deleted: async (id) => {
      chat.forget(id);
      if (!chat.currentId()) newChat();
    },
    imported: async (ids) => {
      chat.invalidate(ids);
      const current = chat.currentId();
      if (current && ids.includes(current)) await chat.openConversation(current);
      else if (!current && ids.length) await select(ids[0]);
    },
  });
  for (const button of [document.getElementById("new-chat"), document.getElementById("topbar-new")]) {
    button.addEventListener("click", newChat);
  }
  await refreshList();
  let last = null;
  try { last = localStorage.getItem(CURRENT); } catch { last = null; }
  if (!last || !(await chat.openConversation(last))) chat.newChat();
  else setActive(last);
  document.documentElement.classList.add("ready");
  composer.focusInput();
  await watchHealth();
  await refreshModels();
}

start().catch((err) => reportCrash(err?.message || String(err)));
