// The sidebar: a column that collapses on wide screens (remembered), a drawer over the
// conversation on phones (closed until asked for; Esc or a tap outside closes it).

const KEY = "vlserve.sidebar";
const narrow = window.matchMedia("(max-width: 767px)");
let toggle;

export function isNarrow() {
  return narrow.matches;
}

export function initLayout() {
  toggle = document.getElementById("sidebar-toggle");
  toggle.addEventListener("click", () => (sidebarShown() ? hideSidebar() : showSidebar()));
  document.getElementById("sidebar-close").addEventListener("click", () => hideSidebar(true));
  document.getElementById("scrim").addEventListener("click", () => hideSidebar(true));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && isNarrow() && document.body.classList.contains("drawer-open")) {
      hideSidebar(true);
    }
  });
  narrow.addEventListener("change", sync);
  let collapsed = false;
  try { collapsed = localStorage.getItem(KEY) === "collapsed"; } catch { /* default: open */ }
  document.body.classList.toggle("sidebar-collapsed", collapsed);
  sync();
}

function sidebarShown() {
  return isNarrow() ? document.body.classList.contains("drawer-open")
    : !document.body.classList.contains("sidebar-collapsed");
}

function showSidebar() {
  if (isNarrow()) {
    document.body.classList.add("drawer-open");
    // the drawer is modal-like: move focus into it so keyboard users land in the list
    setTimeout(() => document.getElementById("new-chat").focus(), 0);
  } else {
    document.body.classList.remove("sidebar-collapsed");
    remember(false);
  }
  sync();
}

/** Hide it; `returnFocus` puts focus back on the toggle (closing by keyboard or scrim). */
export function hideSidebar(returnFocus = false) {
  if (isNarrow()) document.body.classList.remove("drawer-open");
  else {
    document.body.classList.add("sidebar-collapsed");
    remember(true);
  }
  sync();
  if (returnFocus) toggle.focus();
}

/** On phones, picking a chat closes the drawer. */
export function closeDrawer() {
  if (isNarrow() && document.body.classList.contains("drawer-open")) hideSidebar();
}

function remember(collapsed) {
  try { localStorage.setItem(KEY, collapsed ? "collapsed" : "open"); } catch { /* fine */ }
}

function sync() {
  const shown = sidebarShown();
  if (!isNarrow()) document.body.classList.remove("drawer-open");
  document.getElementById("scrim").hidden = !(isNarrow() && shown);
  toggle.setAttribute("aria-expanded", String(shown));
  toggle.setAttribute("aria-label", shown ? "Hide conversation list" : "Show conversation list");
  document.getElementById("sidebar").inert = !shown;
  // an open drawer is modal: Tab must not wander into the page under the scrim
  document.getElementById("main").inert = isNarrow() && shown;
}
