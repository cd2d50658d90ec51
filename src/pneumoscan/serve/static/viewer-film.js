// The film viewer's image parts (an ES module; viewer.js imports it): the film as 8-bit gray values drawn through a
// window/level lookup table, the heatmap (occlusion sensitivity: where hiding the film lowered the score) coloured
// only where the evidence is, yellow to red, with an optional cyan outline of the strongest region, and zoom and pan
// (a CSS transform) with the mouse, the wheel and touch (pinch). No text here: everything the viewer says is in
// strings.js.

//: Map values below this fraction of the map's maximum are not drawn (pneumoscan.inference.render.EVIDENCE_FLOOR).
export const EVIDENCE_FLOOR = 0.25;
//: The strongest region, outlined on request: the map at this fraction of its maximum or more (render.OUTLINE_LEVEL).
export const OUTLINE_LEVEL = 0.6;
//: The outline's colour (render.OUTLINE_RGB): cyan, apart from the yellow-to-red map and the gray film.
export const OUTLINE_RGB = [0, 255, 255];

// The colour and opacity of each map value v = 0..255 (255: the map's maximum): 256 [r, g, b, opacity], RGB 0..255
// and opacity 0..1, the same table as the server's overlays (pneumoscan.inference.render.heat_table(alpha)). Below
// EVIDENCE_FLOOR nothing is drawn (the film stays untouched where the model found little evidence); from the floor
// up the colour goes from yellow to red and the opacity from 0.3 * alpha to alpha. The viewer's opacity slider is
// alpha.
export function heatTable(alpha = 1) {
  return Array.from({ length: 256 }, (_, i) => {
    const v = i / 255, t = Math.min(1, Math.max(0, (v - EVIDENCE_FLOOR) / (1 - EVIDENCE_FLOOR)));
    return [255, Math.round(255 * (1 - t)), 0, v >= EVIDENCE_FLOOR ? alpha * (0.3 + 0.7 * t) : 0];
  });
}
const HEAT = heatTable(1);

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

// The map alone (grayscale: 0 none .. 255 most, as the server's heatmap_map) drawn on `canvas` through
// heatTable(1); the viewer sets the canvas's CSS opacity to the slider's alpha, so that what shows is
// heatTable(alpha), as the server's overlay. Returns the map ({ w, h, v }: its values) for drawOutline. An overlay
// picture (already blended, `picture`) is drawn as it is, and there is no map to return (null).
export function drawHeat(canvas, img, picture) {
  const w = img.naturalWidth, h = img.naturalHeight;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  if (picture) return null;
  const data = ctx.getImageData(0, 0, w, h);
  const d = data.data, v = new Uint8Array(w * h);
  for (let i = 0, j = 0; j < d.length; i++, j += 4) {
    const val = d[j], c = HEAT[val];
    v[i] = val;
    d[j] = c[0]; d[j + 1] = c[1]; d[j + 2] = c[2]; d[j + 3] = Math.round(255 * c[3]);
  }
  ctx.putImageData(data, 0, 0);
  return { w, h, v };
}

// The border of the strongest region (map values at OUTLINE_LEVEL of the maximum or more with a neighbour within
// `width` px below it; beyond the edge counts as the edge pixel), in cyan on a transparent canvas of the map's size,
// as render.outline_mask (width: render_overlay's, max(1, round(long side / 400))). Returns how many pixels it drew.
export function drawOutline(canvas, map, level = OUTLINE_LEVEL) {
  const { w, h, v } = map, width = Math.max(1, Math.round(Math.max(w, h) / 400)), cut = level * 255;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(w, h), d = out.data;
  let n = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (v[y * w + x] < cut) continue;
      let edge = false;
      for (let yy = Math.max(0, y - width); yy <= Math.min(h - 1, y + width) && !edge; yy++) {
        for (let xx = Math.max(0, x - width); xx <= Math.min(w - 1, x + width); xx++) {
          if (v[yy * w + xx] < cut) { edge = true; break; }
        }
      }
      if (!edge) continue;
      const j = 4 * (y * w + x);
      d[j] = OUTLINE_RGB[0]; d[j + 1] = OUTLINE_RGB[1]; d[j + 2] = OUTLINE_RGB[2]; d[j + 3] = 255;
      n += 1;
    }
  }
  ctx.putImageData(out, 0, 0);
  return n;
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
