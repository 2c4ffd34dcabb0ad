// Classic (not module) script run in <head> before the first paint: apply the stored theme,
// else the system's, so a dark-mode user never sees a white flash. theme.js takes over later.
(function () {
  var stored = null;
  try { stored = localStorage.getItem("vlserve.theme"); } catch (e) { /* storage blocked */ }
  var dark = stored ? stored === "dark"
    : window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.setAttribute("data-theme", dark ? "dark" : "light");
})();
