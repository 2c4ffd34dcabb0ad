// Prefill while typing: while a photo waits in the box, the server is sent the conversation
// as it would be sent now (POST /v1/chat/prefill): on attaching an image, and again when
// typing pauses. The photo's work is then done before Send, which costs what a follow-up
// costs. This only ever saves time, so it never asks for anything: no key dialog, no toast.
// A server without the route (404, an older vlserve or another server) is not asked again.

import { authHeaders } from "./auth.js";

const PAUSE_MS = 600;     // typing paused this long: prefill what is there
const ROUTE = "/v1/chat/prefill";

let timer = null;
let current = null;       // our prefill's id on the server
let lastSent = "";        // the body last sent: the same draft is not prefilled twice
let supported = true;
let dropped = 0;          // drop()s so far: a prefill answered after one belongs to a dropped draft
let keepLate = false;     // …and the last drop() was a Send (the request takes it over)

/** The draft changed: prefill `makeBody()` now (an image came or went) or once typing
 *  pauses. `makeBody` answers null when there is nothing worth prefilling. */
export function draftChanged(makeBody, { now = false } = {}) {
  if (!supported) return;
  clearTimeout(timer);
  timer = setTimeout(() => send(makeBody()), now ? 0 : PAUSE_MS);
}

/** The draft was sent (`cancel: false`: the request takes the prefill over) or dropped
 *  (the image removed, another conversation opened): the server forgets ours. */
export function drop({ cancel = true } = {}) {
  clearTimeout(timer);
  timer = null;
  const id = current;
  current = null;
  lastSent = "";
  dropped += 1;
  keepLate = !cancel;
  if (cancel && id) forget(id);
}

function forget(id) {
  fetch(`${ROUTE}/${encodeURIComponent(id)}`, { method: "DELETE", headers: authHeaders() })
    .catch(() => {});
}

async function send(body) {
  if (!supported) return;
  if (!body) {
    drop();
    return;
  }
  const text = JSON.stringify(body);
  if (text === lastSent) return;
  lastSent = text;
  const era = dropped;
  try {
    const response = await fetch(ROUTE, { method: "POST", body: text,
      headers: { "Content-Type": "application/json", ...authHeaders() } });
    if (response.status === 404 || response.status === 405) {
      supported = false;
      return;
    }
    const answer = response.ok ? await response.json() : null;
    const id = answer?.accepted ? answer.id : null;
    if (era !== dropped) {       // dropped while it was on its way: forget it now
      if (id && !keepLate) forget(id);
    } else if (lastSent === text) {
      current = id;
    }
  } catch { /* the server is away: the request itself will say so */ }
}
