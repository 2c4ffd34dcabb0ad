// The message box: auto-growing textarea (Enter sends, Shift+Enter breaks the line), the
// strip of images and files waiting to be sent, and the Send/Stop button pair.

import { el, icon, iconButton, newId, formatBytes } from "./dom.js";
import { kindOf, pdfPages, readTextFile } from "./files.js";
import { prepareImage } from "./images.js";
import { openLightbox } from "./lightbox.js";
import { toast } from "./toasts.js";

const MAX_ATTACHMENTS = 10;
const MAX_HEIGHT_RATIO = 0.4;     // the box grows up to 40% of the window, then scrolls

let input, strip, sendButton, stopButton, form;
// {id, url, name, width, height, bytes}: an image; {id, kind: "file", name, text, bytes}: a
// text file; {id, name, pending: true}: one being prepared
let attachments = [];
const isFile = (a) => a.kind === "file";
const readyImages = () => attachments.filter((a) => !a.pending && !isFile(a));
const readyFiles = () => attachments.filter(isFile).map(({ name, text, bytes }) => ({ name, text, bytes }));
let streaming = false;
let handlers = { send: () => {}, stop: () => {}, draft: () => {} };

/** onDraft({now}): the text or the images changed (now: an image came or went). */
export function initComposer({ onSend, onStop, onDraft }) {
  handlers = { send: onSend, stop: onStop, draft: onDraft };
  input = document.getElementById("composer-input");
  strip = document.getElementById("attachments");
  sendButton = document.getElementById("send-button");
  stopButton = document.getElementById("stop-button");
  form = document.getElementById("composer");

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", onKeyDown);
  input.addEventListener("input", () => { autosize(); updateButtons(); handlers.draft({ now: false }); });
  stopButton.addEventListener("click", () => handlers.stop());
  window.addEventListener("resize", autosize);
  for (const chip of document.querySelectorAll(".suggestion")) {
    chip.addEventListener("click", () => {
      setText(chip.textContent);
      input.focus();
    });
  }
}

function onKeyDown(event) {
  // isComposing: Enter that confirms an IME candidate (Chinese, Japanese…) must not send
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey) {
    event.preventDefault();
    submit();
  } else if (event.key === "Escape" && streaming) {
    handlers.stop();
  }
}

function submit() {
  if (streaming || !canSend()) return;
  handlers.send();
}

function canSend() {
  const pending = attachments.some((a) => a.pending);
  return !pending && (input.value.trim() !== "" || attachments.length > 0);
}

function autosize() {
  input.style.height = "auto";
  const max = Math.round(window.innerHeight * MAX_HEIGHT_RATIO);
  input.style.height = `${Math.min(input.scrollHeight, max)}px`;
  input.style.overflowY = input.scrollHeight > max ? "auto" : "hidden";
}

function updateButtons() {
  sendButton.hidden = streaming;
  stopButton.hidden = !streaming;
  sendButton.disabled = !canSend();
}

export function setStreaming(on) {
  const hadFocus = document.activeElement === stopButton || document.activeElement === sendButton;
  streaming = on;
  updateButtons();
  // keep keyboard users on the button that replaced the one they pressed
  if (hadFocus) (on ? stopButton : input).focus();
}

/** What to send: trimmed text and the ready images; clears the box. */
export function take() {
  const message = { text: input.value.trim(), images: readyImages(), files: readyFiles() };
  setText("");
  attachments = [];
  renderStrip();
  return message;
}

/** What is in the box now (trimmed text and the ready images), left there. */
export function peek() {
  return { text: input.value.trim(), images: readyImages(), files: readyFiles() };
}

/** Put a message back (a send that failed before any answer): nothing typed is lost. */
export function restore({ text, images, files = [] }) {
  if (!input.value.trim()) setText(text);
  attachments = [...images.map((i) => ({ ...i, id: newId() })),
    ...files.map((f) => ({ ...f, kind: "file", id: newId() })), ...attachments];
  renderStrip();
}

export function setText(text) {
  input.value = text;
  autosize();
  updateButtons();
}

export function focusInput() {
  input.focus({ preventScroll: true });
}

/** Add files (the picker, a paste or a drop): images, downscaled each in turn; a PDF's
 *  pages, as images; text files, as text parts; anything else is refused, saying so. */
export async function addFiles(files) {
  const refused = files.filter((f) => !kindOf(f));
  if (refused.length) {
    toast({ kind: "info", title: refused.length > 1 ? "Files not added" : "File not added",
      message: `${refused.map((f) => `“${f.name}”`).join(", ")}: only images, PDFs and text files (.txt, .md, .csv, .json, code…) can be sent.` });
  }
  const images = [];
  for (const file of files) {
    const kind = kindOf(file);
    if (kind === "image") images.push(file);
    else if (kind === "text") await addText(file);
    else if (kind === "pdf") images.push(...(await pages(file)));
  }
  if (images.length) await addImages(images);
  focusInput();
}

async function addText(file) {
  try {
    attachments.push({ id: newId(), kind: "file", ...(await readTextFile(file)) });
    renderStrip();
    handlers.draft({ now: true });
  } catch (err) {
    toast({ kind: "error", title: "File not added", message: err.message });
  }
}

/** A PDF's pages as image files (a placeholder shows while they are drawn). */
async function pages(file) {
  const placeholder = { id: newId(), name: file.name, pending: true };
  attachments.push(placeholder);
  renderStrip();
  try {
    const { pages: out, total } = await pdfPages(file);
    if (total > out.length) {
      toast({ kind: "info", title: "Only the first pages were added",
        message: `“${file.name}” has ${total} pages; the first ${out.length} were added as images.` });
    }
    return out;
  } catch (err) {
    toast({ kind: "error", title: "PDF not added", message: err.message });
    return [];
  } finally {
    replace(placeholder.id, null);
  }
}

async function addImages(files) {
  const room = MAX_ATTACHMENTS - attachments.filter((a) => !isFile(a)).length;
  if (files.length > room) {
    toast({ kind: "info", title: "Too many images",
      message: `Up to ${MAX_ATTACHMENTS} images per message; ${files.length - Math.max(room, 0)} were not added.` });
  }
  const batch = files.slice(0, Math.max(room, 0)).map((file) => ({ id: newId(), name: file.name, pending: true, file }));
  attachments.push(...batch);
  renderStrip();
  for (const item of batch) {
    try {
      const image = await prepareImage(item.file);
      replace(item.id, { id: item.id, ...image });
    } catch (err) {
      replace(item.id, null);
      toast({ kind: "error", title: "Image not added", message: err.message });
    }
  }
}

function replace(id, value) {
  const index = attachments.findIndex((a) => a.id === id);
  if (index < 0) return;          // removed while it was being prepared
  if (value) attachments[index] = value;
  else attachments.splice(index, 1);
  renderStrip();
  handlers.draft({ now: true });
}

function renderStrip() {
  strip.hidden = attachments.length === 0;
  strip.replaceChildren(...attachments.map(thumbnail));
  updateButtons();
}

function thumbnail(a) {
  if (isFile(a)) {
    return el("li.attachment.attachment-file", { "data-testid": "attachment", "data-kind": "file",
      title: `${a.name}, ${formatBytes(a.bytes)}` },
    el("span.file-chip", {}, icon("file"), el("span.file-name", { text: a.name }),
      el("span.file-size", { text: formatBytes(a.bytes) })),
    iconButton("x", `Remove ${a.name}`, { class: "icon-btn attachment-remove",
      "data-testid": "attachment-remove", onclick: () => {
        replace(a.id, null);
        focusInput();
      } }));
  }
  const label = a.pending ? `${a.name} (preparing)` : `${a.name}, ${a.width}×${a.height}, ${formatBytes(a.bytes)}`;
  const preview = a.pending
    ? el("span.thumb-pending", { "aria-hidden": "true" }, el("span.spinner"))
    : el("button.thumb-view", { type: "button", "aria-label": `View ${a.name}`, title: label,
      onclick: () => openLightbox(a.url, a.name) },
    el("img", { src: a.url, alt: "" }));
  return el("li.attachment", { "data-testid": "attachment", "data-pending": a.pending ? "true" : null },
    preview,
    iconButton("x", `Remove ${a.name}`, { class: "icon-btn attachment-remove",
      "data-testid": "attachment-remove", onclick: () => {
        replace(a.id, null);
        focusInput();
      } }));
}

