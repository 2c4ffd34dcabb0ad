// Everything that talks to the server: fetch with the API key, OpenAI-shaped errors, and
// SSE parsing over fetch streams (not EventSource, which cannot send an Authorization header).

import { askForKey, authHeaders } from "./auth.js";

/** An error from the server (OpenAI shape) or the network (status 0, code "unreachable"). */
export class ApiError extends Error {
  constructor(status, { message, code = null, type = null, param = null } = {}, extra = {}) {
    super(message || `HTTP ${status}`);
    this.name = "ApiError";
    Object.assign(this, { status, code, type, param, retryAfter: null, midStream: false }, extra);
  }

  static async fromResponse(response) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON: a proxy's page, say */ }
    const error = body?.error ?? {};
    const retry = Number(response.headers.get("Retry-After"));
    return new ApiError(response.status, {
      message: error.message || response.statusText || `HTTP ${response.status}`,
      code: error.code, type: error.type, param: error.param,
    }, { retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null });
  }
}

export const isAbort = (err) => err?.name === "AbortError";

/**
 * fetch() for the API: adds the key, turns a network failure or a non-2xx answer into an
 * ApiError, and on 401 asks for a key once and tries again.
 */
export async function apiFetch(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, {
        ...options, headers: { ...authHeaders(), ...(options.headers || {}) },
      });
    } catch (err) {
      if (isAbort(err)) throw err;
      throw new ApiError(0, { code: "unreachable", message: "the server did not answer" });
    }
    if (response.ok) return response;
    const error = await ApiError.fromResponse(response);
    if (response.status === 401 && attempt < 3 && (await askForKey(error.message))) continue;
    throw error;
  }
}

export async function getJSON(path, options) {
  const response = await apiFetch(path, options);
  return response.json();
}

export function postJSON(path, body, options = {}) {
  return apiFetch(path, {
    ...options, method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", ...(options.headers || {}) },
  });
}

/** /health answers 503 while loading: that body is the interesting part, not an error. */
export async function getHealth() {
  let response;
  try {
    response = await fetch("/health", { headers: authHeaders(), cache: "no-store" });
  } catch {
    return { status: "unreachable", reason: "the server did not answer" };
  }
  if (response.status === 401) return { status: "auth", reason: "an API key is needed" };
  try {
    return await response.json();
  } catch {
    return { status: "error", reason: `HTTP ${response.status}` };
  }
}

/** The `data:` payloads of a server-sent event stream; comments (keep-alives) are skipped. */
export async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(l.startsWith("data: ") ? 6 : 5)).join("\n");
        if (data) yield data;
      }
    }
  } finally {
    reader.cancel().catch(() => {});   // closing the stream is what stops the server
  }
}

/**
 * Stream a chat completion: yields each parsed chunk; an error sent inside the stream is
 * thrown as an ApiError with midStream=true. Aborting `signal` closes the connection, which
 * makes the server stop generating.
 */
export async function* streamChat(body, signal) {
  const response = await postJSON("/v1/chat/completions", body, { signal });
  for await (const data of sseData(response)) {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) {
      throw new ApiError(500, chunk.error, { midStream: true });
    }
    yield chunk;
  }
}
