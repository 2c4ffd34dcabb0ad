// Versions of a conversation ("‹ 2/3 ›"): editing a question or regenerating an answer keeps
// what was there as another version instead of throwing it away, as llama.cpp's web UI does.
//
// `conv.messages` is always the path shown (what is sent, rendered and searched first). Where
// the path has versions, the message at that position carries them: `versions`, the tails of
// the conversation from there on (each a message list, which may have versions of its own
// further down; the shown one is null, being `conv.messages` itself) and `version`, the index
// shown. Plain JSON: stored, exported and imported as it is.

/** Show `tail` from position `i` on; what was there becomes another version. */
export function fork(conv, i, tail) {
  const old = conv.messages.slice(i);
  const versions = detach(old[0]) ?? { versions: [null], version: 0 };
  if (!old.length) {                 // nothing there yet: no version to keep
    conv.messages.push(...tail);
    return;
  }
  versions.versions[versions.version] = old;
  versions.versions.push(null);
  show(conv, i, tail, versions.versions, versions.versions.length - 1);
}

/** Show version `k` of position `i`. */
export function switchTo(conv, i, k) {
  const head = conv.messages[i];
  if (!head?.versions || k === head.version || !head.versions[k]) return;
  const { versions, version } = detach(head);
  versions[version] = conv.messages.slice(i);
  const tail = versions[k];
  versions[k] = null;
  show(conv, i, tail, versions, k);
}

/** The version shown at `i` goes (an answer that failed before it began); the previous one
 *  is shown again. */
export function dropShown(conv, i) {
  const head = conv.messages[i];
  if (!head?.versions) {
    conv.messages.splice(i);
    return;
  }
  const { versions, version } = detach(head);
  versions.splice(version, 1);
  const k = Math.max(0, version - 1);
  const tail = versions[k];
  versions[k] = null;
  show(conv, i, tail, versions, k);
}

/** Every message of every version, for search. */
export function* allMessages(messages) {
  for (const m of messages) {
    yield m;
    for (const tail of m.versions ?? []) if (tail) yield* allMessages(tail);
  }
}

function detach(head) {
  if (!head?.versions) return null;
  const out = { versions: head.versions, version: head.version };
  delete head.versions;
  delete head.version;
  return out;
}

function show(conv, i, tail, versions, k) {
  conv.messages.splice(i, conv.messages.length - i, ...tail);
  if (versions.length > 1 && tail.length) Object.assign(tail[0], { versions, version: k });
}
