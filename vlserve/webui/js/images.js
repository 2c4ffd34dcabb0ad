// Getting images in: the attach button (file chooser), paste and drag-and-drop, and the
// downscaling that happens in the browser before upload (a 12-megapixel photo becomes a
// few hundred KB; the server would shrink it to 1024 px anyway).

const MAX_SIDE = 1536;              // long side after downscaling
const JPEG_QUALITY = 0.9;
const KEEP_BYTES = 1.5 * 1024 * 1024;  // small enough to send as is
const PNG_MAX_PIXELS = 1024 * 1024;    // sharp graphics/screenshots stay PNG up to this size
const KEPT_TYPES = new Set(["image/png", "image/jpeg", "image/webp", "image/gif"]);
const LOSSLESS_TYPES = new Set(["image/png", "image/gif", "image/webp"]);
const IMAGE_NAME = /\.(png|jpe?g|webp|gif|bmp|avif|heic|heif|tiff?)$/i;

export function isImageFile(file) {
  return file && (file.type.startsWith("image/") || (!file.type && IMAGE_NAME.test(file.name)));
}

/** A File -> {url (data:), name, width, height, bytes}, downscaled when large. */
export async function prepareImage(file) {
  let bitmap;
  try {
    // from-image: a phone photo's EXIF rotation is applied, so what is sent is what is seen
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    throw new Error(`“${file.name}” could not be read: this browser cannot decode it.`);
  }
  try {
    const { width, height } = bitmap;
    const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
    if (scale === 1 && file.size <= KEEP_BYTES && KEPT_TYPES.has(file.type)) {
      return { url: await readAsDataURL(file), name: file.name, width, height, bytes: file.size };
    }
    const w = Math.max(1, Math.round(width * scale));
    const h = Math.max(1, Math.round(height * scale));
    const blob = await encode(bitmap, w, h, LOSSLESS_TYPES.has(file.type) && w * h <= PNG_MAX_PIXELS);
    return { url: await readAsDataURL(blob), name: file.name, width: w, height: h, bytes: blob.size };
  } finally {
    bitmap.close();
  }
}

async function encode(bitmap, w, h, lossless) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  if (!lossless) {            // JPEG has no alpha: transparent areas become white, not black
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, h);
  }
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, w, h);
  if (lossless) {
    const png = await toBlob(canvas, "image/png");
    if (png.size <= KEEP_BYTES) return png;
    ctx.globalCompositeOperation = "destination-over";   // too big as PNG: JPEG after all
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, h);
  }
  return toBlob(canvas, "image/jpeg", JPEG_QUALITY);
}

function toBlob(canvas, type, quality) {
  return new Promise((resolve, reject) => canvas.toBlob(
    (blob) => (blob ? resolve(blob) : reject(new Error("the image could not be encoded"))),
    type, quality));
}

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/** Wire every way of adding images and files; each calls `add(files)` (which sorts them). */
export function initImageSources(add) {
  const input = document.getElementById("file-input");
  document.getElementById("attach-button").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    add([...input.files]);
    input.value = "";          // choosing the same file again must fire "change" again
  });
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (!files.length) return;       // plain text pastes as usual
    event.preventDefault();
    add(files);
  });
  initDrop(add);
}

function initDrop(add) {
  const overlay = document.getElementById("drop-overlay");
  let depth = 0;    // dragenter/leave fire for every child crossed: count them
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  const hide = () => { depth = 0; overlay.hidden = true; };
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth += 1;
    overlay.hidden = false;
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) overlay.hidden = true;
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    hide();
    add([...event.dataTransfer.files]);
  });
}
