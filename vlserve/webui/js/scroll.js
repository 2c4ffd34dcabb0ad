// Keeps the conversation pinned to the newest text while an answer streams, but only if
// the reader was already at the bottom: scrolling up to re-read is never fought.

const SLACK_PX = 48;
let scroller, button;
let pinned = true;

export function initScroll() {
  scroller = document.getElementById("scroller");
  button = document.getElementById("to-bottom");
  scroller.addEventListener("scroll", () => {
    pinned = distance() < SLACK_PX;
    button.hidden = pinned;
  }, { passive: true });
  button.addEventListener("click", () => scrollToBottom(true));
}

function distance() {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
}

/** After content grew: follow it if the reader was following. */
export function follow() {
  if (pinned) scroller.scrollTop = scroller.scrollHeight;
  else button.hidden = distance() < SLACK_PX;
}

export function scrollToBottom(smooth = false) {
  pinned = true;
  button.hidden = true;
  scroller.scrollTo({ top: scroller.scrollHeight, behavior: smooth ? "smooth" : "auto" });
}
