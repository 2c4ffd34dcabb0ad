// Light/dark theme: follows prefers-color-scheme until the user picks one with the toggle,
// then that choice is kept (localStorage) and set as data-theme on <html> (boot.js applies
// it before the first paint). The code-highlighting stylesheet follows along.

import { setIcon } from "./dom.js";

const KEY = "vlserve.theme";
const media = window.matchMedia("(prefers-color-scheme: dark)");

function stored() {
  try { return localStorage.getItem(KEY); } catch { return null; }
}

export function currentTheme() {
  return document.documentElement.dataset.theme === "dark" ? "dark" : "light";
}

function apply(theme) {
  document.documentElement.dataset.theme = theme;
  document.getElementById("hljs-light").disabled = theme === "dark";
  document.getElementById("hljs-dark").disabled = theme !== "dark";
  const button = document.getElementById("theme-toggle");
  const next = theme === "dark" ? "light" : "dark";
  setIcon(button, theme === "dark" ? "sun" : "moon");
  button.setAttribute("aria-label", `Switch to ${next} theme`);
  button.title = `Switch to ${next} theme`;
  document.querySelector('meta[name="color-scheme"]').content = theme;
}

export function initTheme() {
  apply(stored() || (media.matches ? "dark" : "light"));
  media.addEventListener("change", () => {
    if (!stored()) apply(media.matches ? "dark" : "light");
  });
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const next = currentTheme() === "dark" ? "light" : "dark";
    try { localStorage.setItem(KEY, next); } catch { /* kept for this page only */ }
    apply(next);
  });
}
