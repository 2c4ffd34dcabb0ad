// Full-size view of an image from the conversation or the composer: a modal <dialog>,
// so Esc, focus trapping and the backdrop come from the browser.

let dialog, img;

export function initLightbox() {
  dialog = document.getElementById("lightbox");
  img = document.getElementById("lightbox-img");
  document.getElementById("lightbox-close").addEventListener("click", () => dialog.close());
  // Any click outside the close button (backdrop or image) closes, as in photo viewers.
  dialog.addEventListener("click", (event) => {
    if (!event.target.closest(".lightbox-close")) dialog.close();
  });
  dialog.addEventListener("close", () => img.removeAttribute("src"));
}

export function openLightbox(url, alt = "") {
  img.src = url;
  img.alt = alt;
  dialog.showModal();
  document.getElementById("lightbox-close").focus();
}
