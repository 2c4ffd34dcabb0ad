// Server and network errors in words a person can act on. The server's own message is kept
// (it is specific: "the request body is larger than the 10485 byte limit"), prefixed by what
// it means and what to do.

/** {title, message, retry} for an ApiError (or anything thrown). */
export function explain(err, health = null) {
  const server = err?.message || String(err);
  const status = err?.status;
  const code = err?.code;
  if (status === 0 || code === "unreachable") {
    return { title: "Can't reach the server",
      message: `Nothing answered at ${location.host}. Check that vlserve is running, then retry.`,
      retry: true };
  }
  if (status === 503 && code === "server_busy") {
    const wait = err.retryAfter ? ` in about ${err.retryAfter} s` : " shortly";
    return { title: "The server is busy",
      message: `Other requests are ahead of yours and its queue is full. Try again${wait}.`,
      retry: true };
  }
  if (status === 503) {
    const down = health && health.status !== "ok" && health.reason;
    const reason = down || server.replace(/^the model is not ready:\s*/i, "");
    return { title: "The model is still loading",
      message: `${capitalize(reason)}. Try again in a moment.`, retry: true };
  }
  if (status === 413) {
    return { title: "Too large for the server",
      message: `The images are bigger than this server accepts (${server}). Remove an image or use a smaller one.` };
  }
  if (code === "context_length_exceeded") {
    return { title: "The conversation is too long",
      message: `It no longer fits in the model's context (${server}). Start a new chat, remove images, or lower “Max answer tokens” in settings.`,
      newChat: true };
  }
  if (code === "invalid_image") {
    return { title: "The server could not use an image", message: `${capitalize(server)}.` };
  }
  if (status === 401) {
    return { title: "API key required", message: `${capitalize(server)}. Set a key in settings.` };
  }
  if (status === 504) {
    return { title: "The answer took too long", message: `${capitalize(server)}.`, retry: true };
  }
  if (code === "model_load_failed") {
    return { title: "The model could not be loaded", message: `${capitalize(server)}.` };
  }
  if (err?.midStream) {
    return { title: "The answer was interrupted", message: `${capitalize(server)}.`, retry: true };
  }
  if (status >= 500) {
    return { title: "The server hit an error", message: `${capitalize(server)}.`, retry: true };
  }
  return { title: "Request refused", message: `${capitalize(server)}.` };
}

function capitalize(text) {
  const t = String(text).trim().replace(/\.$/, "");
  return t.charAt(0).toUpperCase() + t.slice(1);
}
