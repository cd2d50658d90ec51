// The film viewer's image parts (an ES module; viewer.js imports it): the film as 8-bit gray values drawn through a
// window/level lookup table, the Grad-CAM map coloured with "jet", and zoom and pan (a CSS transform) with the mouse,
// the wheel and touch (pinch). No text here: everything the viewer says is in strings.js.

// matplotlib's "jet" (its segment data), as the server's overlay: 256 [r, g, b].
function jetTable() {
  const seg = { r: [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]], g: [[0, 0], [0.125, 0], [0.375, 1],
    [0.64, 1], [0.91, 0], [1, 0]], b: [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]] };
  const at = (pts, x) => {
    for (let i = 1; i < pts.length; i++) {
      if (x <= pts[i][0]) { const [x0, y0] = pts[i - 1], [x1, y1] = pts[i]; return y0 + (y1 - y0) * (x - x0) / (x1 - x0); }
    }
    return pts[pts.length - 1][1];
  };
  return Array.from({ length: 256 }, (_, i) => ["r", "g", "b"].map((c) => Math.round(255 * at(seg[c], i / 255))));
}
export const JET = jetTable();

// Window/level on the 8-bit display values (the linear function of DICOM PS3.3 C.11.2.1.2.1) as 256 RGBA words.
export function windowTable(width, level, invert) {
  const lut = new Uint32Array(256);
  for (let x = 0; x < 256; x++) {
    let y = Math.round((((x - (level - 0.5)) / Math.max(1, width - 1)) + 0.5) * 255);
    y = y < 0 ? 0 : y > 255 ? 255 : y;
    if (invert) y = 255 - y;
    lut[x] = (0xff000000 | (y << 16) | (y << 8) | y) >>> 0;
  }
  return lut;
}

// A decoded image's gray values (luma for colour files) and an RGBA buffer to draw them through a table.
export class Film {
  constructor(img) {
    const w = img.naturalWidth, h = img.naturalHeight;
    const scratch = document.createElement("canvas");
    scratch.width = w; scratch.height = h;
    const ctx = scratch.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    const rgba = ctx.getImageData(0, 0, w, h).data;
    this.w = w; this.h = h;
    this.gray = new Uint8Array(w * h);
    for (let i = 0, j = 0; i < this.gray.length; i++, j += 4) {
      this.gray[i] = (77 * rgba[j] + 150 * rgba[j + 1] + 29 * rgba[j + 2]) >> 8;
    }
    this.out = ctx.createImageData(w, h);
    this.out32 = new Uint32Array(this.out.data.buffer);
  }

  draw(canvas, width, level, invert) {
    const lut = windowTable(width, level, invert), g = this.gray, o = this.out32;
    for (let i = 0; i < g.length; i++) o[i] = lut[g[i]];
    canvas.getContext("2d").putImageData(this.out, 0, 0);
  }
}

// The map alone (grayscale: 0 none .. 255 most) coloured, with opacity sqrt(value) as the server's overlay; an
// overlay picture (already blended, `picture`) is drawn as it is.
export function drawHeat(canvas, img, picture) {
  const w = img.naturalWidth, h = img.naturalHeight;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  if (picture) return;
  const data = ctx.getImageData(0, 0, w, h);
  const d = data.data;
  for (let j = 0; j < d.length; j += 4) {
    const val = d[j], rgb = JET[val];
    d[j] = rgb[0]; d[j + 1] = rgb[1]; d[j + 2] = rgb[2]; d[j + 3] = Math.round(255 * Math.sqrt(val / 255));
  }
  ctx.putImageData(data, 0, 0);
}

// Zoom and pan of one or more panes showing the same film (side by side stays in step). hooks: changed(view),
// dragMode(event) -> "pan" | "wl", wlStart() -> any, wlDrag(start, dx, dy).
export class View {
  constructor(panes, hooks) {
    this.panes = panes; this.hooks = hooks;
    this.s = 1; this.tx = 0; this.ty = 0; this.fitted = true; this.w = 0; this.h = 0;
    this.pointers = new Map(); this.drag = null;
    for (const p of panes) this.wire(p.pane);
  }

  size() { const p = this.panes[0].pane; return [p.clientWidth || 1, p.clientHeight || 1]; }

  apply() {
    const t = `translate(${this.tx}px, ${this.ty}px) scale(${this.s})`;
    for (const p of this.panes) p.layer.style.transform = t;
    this.hooks.changed(this);
  }

  fit() {
    if (!this.w) return;
    const [pw, ph] = this.size();
    this.s = Math.min(pw / this.w, ph / this.h);
    this.tx = (pw - this.w * this.s) / 2;
    this.ty = (ph - this.h * this.s) / 2;
    this.fitted = true;
    this.apply();
  }

  zoomAt(factor, cx, cy) {
    if (!this.w) return;
    const [pw, ph] = this.size();
    const min = Math.min(pw / this.w, ph / this.h, 1) / 4;
    const s = Math.max(min, Math.min(16, this.s * factor));
    this.tx = cx - (cx - this.tx) * (s / this.s);
    this.ty = cy - (cy - this.ty) * (s / this.s);
    this.s = s;
    this.fitted = false;
    this.apply();
  }

  zoomBy(factor) { const [pw, ph] = this.size(); this.zoomAt(factor, pw / 2, ph / 2); }

  actual() { this.zoomBy(1 / (window.devicePixelRatio || 1) / this.s); }

  panBy(dx, dy) { this.tx += dx; this.ty += dy; this.fitted = false; this.apply(); }

  down(e, pane) {
    if (!this.w) return;
    try { pane.setPointerCapture(e.pointerId); } catch (_) { /* a synthetic pointer */ }
    this.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (this.pointers.size === 2) {
      const [p, q] = [...this.pointers.values()];
      this.drag = { kind: "pinch", d: Math.hypot(p.x - q.x, p.y - q.y) || 1, s: this.s };
    } else if (this.pointers.size === 1) {
      this.drag = { kind: this.hooks.dragMode(e), x: e.clientX, y: e.clientY, tx: this.tx, ty: this.ty,
                    wl: this.hooks.wlStart() };
      pane.classList.add("dragging");
    }
    e.preventDefault();
  }

  move(e, pane) {
    const d = this.drag;
    if (!d || !this.pointers.has(e.pointerId)) return;
    this.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (d.kind === "pinch" && this.pointers.size === 2) {
      const [p, q] = [...this.pointers.values()];
      const r = pane.getBoundingClientRect();
      this.zoomAt(d.s * (Math.hypot(p.x - q.x, p.y - q.y) / d.d) / this.s, (p.x + q.x) / 2 - r.left, (p.y + q.y) / 2 - r.top);
    } else if (d.kind === "pan") {
      this.tx = d.tx + e.clientX - d.x; this.ty = d.ty + e.clientY - d.y; this.fitted = false;
      this.apply();
    } else if (d.kind === "wl") {
      this.hooks.wlDrag(d.wl, e.clientX - d.x, e.clientY - d.y);
    }
  }

  up(e, pane) {
    this.pointers.delete(e.pointerId);
    if (!this.pointers.size) { this.drag = null; pane.classList.remove("dragging"); }
  }

  wire(pane) {
    pane.addEventListener("pointerdown", (e) => this.down(e, pane));
    pane.addEventListener("pointermove", (e) => this.move(e, pane));
    for (const t of ["pointerup", "pointercancel"]) pane.addEventListener(t, (e) => this.up(e, pane));
    pane.addEventListener("contextmenu", (e) => e.preventDefault());
    pane.addEventListener("dblclick", () => this.fit());
    pane.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = pane.getBoundingClientRect();
      this.zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
  }
}

// ------------------------------------------------------------------ where the film comes from

export function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser could not decode it"));
    img.src = url;
  });
}

// A 16-bit PNG: the browser keeps its top 8 bits (a film that uses 12 of 16 bits looks black); the server
// stretches its own range, as for scoring. The bit depth is byte 24 of a PNG (in its IHDR chunk).
async function deepPng(file) {
  const head = new Uint8Array(await file.slice(0, 26).arrayBuffer());
  return head.length === 26 && head[1] === 0x50 && head[2] === 0x4e && head[3] === 0x47 && head[24] === 16;
}

// A JPEG or 8-bit PNG File decoded by the browser: { img, url } (revoke the url when done), else null (DICOM,
// 16-bit PNG: the server decodes those).
export async function fileImage(file) {
  const readable = /^image\/(jpeg|png)$/.test(file.type) || (!file.type && /\.(jpe?g|png)$/i.test(file.name || ""));
  if (!readable || await deepPng(file)) return null;
  const url = URL.createObjectURL(file);
  try {
    return { img: await loadImage(url), url };
  } catch (_) {  // e.g. a DICOM file named .png
    URL.revokeObjectURL(url);
    return null;
  }
}

// POST api/v1/explain with one file: its entry, or an Error with the server's message. `api` (the page's fetch
// that adds the token) if given, else fetch with the tab's stored token (app.js keeps it in sessionStorage).
export async function explain(file, name, params, api) {
  const form = new FormData();
  form.append("files", file, name || file.name || "image");
  const url = "api/v1/explain?" + params, init = { method: "POST", body: form };
  let token = null;
  try { token = sessionStorage.getItem("pneumoscan-api-token"); } catch (_) { /* storage off */ }
  const res = typeof api === "function" ? await api(url, init)
    : await fetch(url, { ...init, headers: token ? { Authorization: "Bearer " + token } : {} });
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  const entry = body && Array.isArray(body.results) ? body.results[0] : null;
  if (!entry || !entry.ok) throw new Error((entry && entry.error) || (body && body.detail) || "HTTP " + res.status);
  return entry;
}
