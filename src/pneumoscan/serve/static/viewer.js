// The film viewer: a modal dialog opened from a result card. An ES module: its image parts (window/level, heatmap
// colours, zoom and pan) are viewer-film.js's, its dialog viewer-ui.js's, its texts strings.js's.
//   import { PneumoscanViewer } from "./viewer.js";
//   PneumoscanViewer.open(cases, index, opts)   cases: result entries in the list's risk order
//   PneumoscanViewer.close()
// opts: onClose() (called on close), returnFocus (element; default: what had focus), api(url, init) (a fetch that
// adds the token; default: fetch with the tab's stored token).
// The film is drawn on a canvas through a lookup table (window/level on the 8-bit display image); zoom and pan are
// a CSS transform. The heatmap (heatmap_map: occlusion sensitivity, where hiding the film lowered the score; grayscale,
// 0 none .. 255 most) is coloured here as the server's overlay (viewer-film.js's heatTable: nothing below a quarter
// of the maximum, then yellow to red; the opacity slider is its alpha) and drawn over the film, or beside it, with an
// optional cyan outline of the strongest region. A case without a map gets one from POST api/v1/explain, from the
// tab's File. Every text comes from STRINGS.viewer (strings.js).
import { t } from "./strings.js";
import {
  Film, View, drawHeat as colourHeat, drawOutline, explain as explainFile, fileImage, loadImage,
} from "./viewer-film.js";
import { build as buildDialog, contextLine, el } from "./viewer-ui.js";

const S = (key, values) => t("viewer." + key, values);
const PRESETS = { default: [256, 128], lung: [160, 90], soft: [100, 128], bone: [140, 180] };  // [width, level]
const MODES = ["overlay", "side", "off"];
let ui = null;
let v = null;  // the open session
const caches = new WeakMap();  // per case: what the server sent (film, map), kept while the page holds the case

function build() {
  const built = buildDialog({
    close: () => close_(), step, zoomBy, fit, actual: () => actualPixels(), setPreset, toggleInvert, toggleWlMode,
    setMode, setOpacity: (x) => setOpacity(x), toggleOutline: () => toggleOutline(), reset: () => resetView(), presets: Object.keys(PRESETS), modes: MODES,
  });
  window.addEventListener("keydown", onKey, true);  // first, so the page's own keys stay quiet while open
  built.root.addEventListener("click", (e) => { if (e.target === built.root) close_(); });
  const view = new View([built.a, built.b], {
    changed: () => viewChanged(), dragMode: (e) => (e.button === 2 || (v && v.wlMode) ? "wl" : "pan"),
    wlStart: () => (v ? [v.w, v.l] : [256, 128]), wlDrag: (start, dx, dy) => setWindow(start[0] + dx, start[1] + dy / 2),
  });
  let wide = window.innerWidth > 700;
  window.addEventListener("resize", () => {
    if (wide !== window.innerWidth > 700) { wide = !wide; ui.legend.open = wide; }  // the legend: open when there is room
    if (v && view.fitted) view.fit();
  });
  return { ...built, view };
}

// ------------------------------------------------------------------ opening, closing, moving between cases

function open(cases, index = 0, opts = {}) {
  if (!Array.isArray(cases) || !cases.length) return Promise.resolve();
  openNow(cases, index, opts, opts.returnFocus || document.activeElement);
  return Promise.resolve();
}

function openNow(cases, index, opts, returnFocus) {
  if (!ui) ui = build();
  if (v) finish(false);
  v = { cases, index: Math.max(0, Math.min(index, cases.length - 1)), opts, seq: 0, urls: [], film: null,
        w: 256, l: 128, invert: false, preset: "default", wlMode: false, mode: "off",
        opacity: Number(ui.opacity.value) / 100, outline: ui.outline.getAttribute("aria-pressed") === "true",
        heatFor: null, returnFocus, first: null };
  v.first = cases[v.index];
  for (const sib of document.body.children) if (sib !== ui.root && !sib.inert) { sib.inert = true; sib.dataset.pvInert = "1"; }
  document.documentElement.classList.add("pv-open");
  ui.legend.open = window.innerWidth > 700;
  ui.dialog.dataset.outline = String(v.outline);
  ui.wlMode.setAttribute("aria-pressed", "false");
  ui.stage.classList.remove("wl");
  ui.root.hidden = false;
  ui.close.focus();
  setMode("off");
  setPreset("default");
  showCase(v.index);
}

function finish(callBack) {
  for (const u of v.urls) URL.revokeObjectURL(u);
  for (const sib of document.querySelectorAll("[data-pv-inert]")) { sib.inert = false; delete sib.dataset.pvInert; }
  document.documentElement.classList.remove("pv-open");
  ui.root.hidden = true;
  const c = v.cases[v.index], s = v;
  v = null;
  const card = c && c !== s.first && c.id != null ? document.getElementById("card-" + c.id) : null;
  const target = card || s.returnFocus;
  if (target && target.isConnected && typeof target.focus === "function") target.focus();
  if (callBack && typeof s.opts.onClose === "function") s.opts.onClose(c);
}

function close_() { if (v) finish(true); }

function step(d) {
  const i = v.index + d;
  if (i < 0 || i >= v.cases.length) return;
  showCase(i);
}

function cache(c) {
  if (!caches.has(c)) caches.set(c, {});
  return caches.get(c);
}

function setStatus(text) { ui.status.textContent = text || ""; }

// The case's result as the server gives it: its score and threshold on 0-100 (`score`, `score_threshold`), its
// decision in words (`decision_text`; strings.js's words for a case without them) and where the score was calibrated
// (`score_calibration`).
function describe(c) {
  const words = c.decision_text || (c.decision ? S("decision_" + c.decision) : S("notRead"));
  if (!c.ok && c.ok !== undefined) return [el("span", { class: "pv-decision na", text: words }), " " + (c.error || "")];
  if (c.in_scope === false || c.decision === "OUT_OF_SCOPE") {
    return [el("span", { class: "pv-decision na", text: words }),
            c.scope_reason ? " " + S("reason", { reason: c.scope_reason }) : ""];
  }
  const fmt = (x) => Number(x).toFixed(1);
  // Where the score was calibrated (the server's words), beside it; nothing for a result stored before it was kept.
  const calibration = c.score_calibration ? [" ", el("span", { class: "pv-calib", text: S("calibration", { calibration: c.score_calibration }) })] : [];
  // Within the borderline band (the page marks the case: `borderline`, `band`): not green, and said in words.
  const kind = c.positive ? "pos" : c.borderline ? "borderline" : "neg";
  const near = c.borderline ? [" ", el("span", { class: "pv-tag", text: S("borderline"), title: S("borderlineTitle", { band: c.band }) })] : [];
  return [el("strong", { class: "pv-score", text: S("score", { score: fmt(c.score) }) }), " ",
          el("span", { class: "pv-thr", text: S("threshold", { threshold: fmt(c.score_threshold) }) }), " ",
          el("span", { class: "pv-decision " + kind, text: words }), ...near, ...calibration];
}

// A flagged film's cause in words (the server's `cause_text`, else strings.js's), with the viral score and the
// cause threshold on 0-100, and the caveat beside it; nothing for a case without a cause.
function describeCause(c) {
  const words = c.cause ? c.cause_text || S("cause_" + c.cause) : "";
  if (!words || c.ok === false || c.in_scope === false) return [];
  const fmt = (x) => (x === null || x === undefined || x === "" ? "–" : Number(x).toFixed(1));
  const threshold = typeof c.cause_threshold === "number" ? fmt(Math.round(c.cause_threshold * 1000) / 10) : "–";  // as app.js's score100
  const line = S("causeLine", { cause: words.charAt(0).toLocaleUpperCase() + words.slice(1), score: fmt(c.cause_score), threshold });
  return [el("span", { class: "pv-cause-line", text: line }), " ", el("span", { class: "pv-cause-note", text: S("causeCaveat") })];
}

function showCase(i) {
  v.index = i;
  const c = v.cases[i];
  ui.dialog.dataset.caseIndex = String(i);
  ui.dialog.dispatchEvent(new CustomEvent("pv:case", { bubbles: true, detail: { index: i, case: c } }));  // review.js
  ui.title.textContent = c.filename || S("dialogTitle");
  ui.pos.textContent = S("position", { n: i + 1, total: v.cases.length });
  const who = contextLine(c.context);
  ui.context.textContent = who;
  ui.context.hidden = !who;
  ui.result.replaceChildren(...describe(c));
  const caution = c.scope_caution && c.ok !== false && c.in_scope !== false ? c.scope_caution : "";
  ui.caution.textContent = caution;
  ui.caution.hidden = !caution;
  const cause = describeCause(c);
  ui.cause.replaceChildren(...cause);
  ui.cause.hidden = !cause.length;
  ui.prev.disabled = i === 0;
  ui.next.disabled = i === v.cases.length - 1;
  keepFocus();
  v.heatFor = null;
  hideHeat();
  setStatus("");
  forgetWindow();
  loadFilm(c, ++v.seq);  // fits the new film: zoom and pan start afresh too
}

// Each case opens at the default window, not inverted, as reading-room viewers do: a window set on one patient's
// film never carries over to the next one's. Drawn with the new film (loadFilm).
function forgetWindow() {
  [v.w, v.l] = PRESETS.default;
  v.preset = "default";
  ui.preset.value = "default";
  v.invert = false;
  ui.invert.setAttribute("aria-pressed", "false");
  ui.wl.textContent = S("wlReadout", { w: v.w, l: v.l });
}

// ------------------------------------------------------------------ the film

const explain = (c, params) => explainFile(c.file, c.filename, params, v.opts.api);

async function serverFilm(c) {
  const store = cache(c);
  if (!store.film) {
    const wantHeat = v.mode !== "off" && !c.heatmap_map && c.in_scope !== false;
    store.pending = explain(c, "film=true" + (wantHeat ? "&heatmap=true" : ""));  // ensureHeat waits for it
    const entry = await store.pending.finally(() => { store.pending = null; });
    store.film = entry;
    if (entry.heatmap_map) store.map = c.heatmap_map = entry.heatmap_map;  // the page keeps it (onClose)
    else if (entry.heatmap_error && wantHeat) store.heatError = entry.heatmap_error;
  }
  const e = store.film;
  const note = e.film_scaled ? S("scaled", { w: e.film_width, h: e.film_height, max: e.film_max_side, fw: e.width, fh: e.height })
                             : S("fullRes", { w: e.film_width, h: e.film_height });
  return { img: await loadImage(e.film_png), note };
}

async function filmOf(c) {
  if (c.file) {
    const got = await fileImage(c.file);  // JPEG and PNG: the browser decodes the file itself
    if (!got) return serverFilm(c);  // DICOM (or undecodable here): the server decodes it
    v.urls.push(got.url);
    return { img: got.img, note: S("fullRes", { w: got.img.naturalWidth, h: got.img.naturalHeight }) };
  }
  if (c.image_png) {
    const img = await loadImage(c.image_png);
    return { img, note: S("previewOnly", { w: img.naturalWidth, h: img.naturalHeight }) };
  }
  return null;
}

async function loadFilm(c, seq) {
  ui.info.textContent = S("loading");
  ui.dialog.dataset.film = "loading";
  v.film = null;
  for (const p of [ui.a, ui.b]) p.film.width = p.film.height = 0;
  let got = null;
  try {
    got = await filmOf(c);
  } catch (e) {
    if (v && seq === v.seq) { ui.info.textContent = S("filmFailed", { error: e.message }); ui.dialog.dataset.film = "none"; }
    return;
  }
  if (!v || seq !== v.seq) return;
  if (!got) { ui.info.textContent = S("noImage"); ui.dialog.dataset.film = "none"; return; }
  setFilm(got.img);
  ui.dialog.dataset.film = "ready";
  ui.info.textContent = got.note;
  fit();
  if (v.mode !== "off") ensureHeat();
}

function setFilm(img) {
  const film = new Film(img);
  for (const p of [ui.a, ui.b]) {
    p.film.width = film.w; p.film.height = film.h;
    for (const x of [p.layer, p.heat, p.outline]) { x.style.width = film.w + "px"; x.style.height = film.h + "px"; }
  }
  v.film = film;
  ui.view.w = film.w; ui.view.h = film.h;
  render();
}

// Window/level through a lookup table on the 8-bit display values (viewer-film.js).
function render() {
  if (!v.film) return;
  v.film.draw(ui.a.film, v.w, v.l, v.invert);
  if (v.mode === "side") ui.b.film.getContext("2d").drawImage(ui.a.film, 0, 0);
  ui.wl.textContent = S("wlReadout", { w: Math.round(v.w), l: Math.round(v.l) });
  labelPanes();
}

function labelPanes() {
  const c = v.cases[v.index], name = c.filename || "";
  ui.a.pane.setAttribute("aria-label", S("filmLabel", { name, zoom: Math.round(100 * ui.view.s), w: Math.round(v.w), l: Math.round(v.l) }));
  ui.b.pane.setAttribute("aria-label", S("heatPaneLabel", { name }));
}

function setPreset(name) {
  if (!PRESETS[name]) return;
  [v.w, v.l] = PRESETS[name];
  v.preset = name;
  ui.preset.value = name;
  render();
}

function setWindow(w, l) {
  v.w = Math.max(2, Math.min(512, w));
  v.l = Math.max(-64, Math.min(320, l));
  v.preset = "custom";
  ui.preset.value = "custom";
  if (!v.raf) v.raf = requestAnimationFrame(() => { if (v) { v.raf = 0; render(); } });
}

function toggleInvert() {
  v.invert = !v.invert;
  ui.invert.setAttribute("aria-pressed", String(v.invert));
  render();
}

function toggleWlMode() {
  v.wlMode = !v.wlMode;
  ui.wlMode.setAttribute("aria-pressed", String(v.wlMode));
  ui.stage.classList.toggle("wl", v.wlMode);
}

// ------------------------------------------------------------------ zoom and pan (viewer-film.js's View)

function viewChanged() {
  const s = ui.view.s;
  ui.stage.classList.toggle("pixelated", s * (window.devicePixelRatio || 1) >= 2);
  ui.zoom.textContent = S("zoomLevel", { pct: Math.round(100 * s) });
  ui.dialog.dataset.zoom = s.toFixed(4);
  if (v) labelPanes();
}

const fit = () => ui.view.fit();
const zoomBy = (f) => ui.view.zoomBy(f);
const actualPixels = () => ui.view.actual();
const panBy = (dx, dy) => ui.view.panBy(dx, dy);

function resetView() {
  if (v.invert) toggleInvert();
  setPreset("default");
  fit();
}

// ------------------------------------------------------------------ the heatmap

function setMode(mode) {
  v.mode = MODES.includes(mode) ? mode : "off";
  ui.heat.value = v.mode;
  ui.dialog.dataset.heatmap = v.mode;
  ui.stage.classList.toggle("side", v.mode === "side");
  ui.b.pane.hidden = v.mode !== "side";
  ui.opacity.disabled = ui.outline.disabled = v.mode === "off";
  keepFocus();
  if (v.mode === "off") { hideHeat(); setStatus(""); } else ensureHeat();
  if (v.film) {
    if (v.mode === "side") ui.b.film.getContext("2d").drawImage(ui.a.film, 0, 0);
    if (ui.view.fitted) fit(); else ui.view.apply();
  }
}

function cycleMode() { setMode(MODES[(MODES.indexOf(v.mode) + 1) % MODES.length]); }

function setOpacity(x) {
  v.opacity = x;
  for (const p of [ui.a, ui.b]) p.heat.style.opacity = String(x);
}

// The outline of the strongest region: on or off (the button, o); shown with the map, at full strength whatever the
// opacity.
function toggleOutline() {
  v.outline = !v.outline;
  ui.outline.setAttribute("aria-pressed", String(v.outline));
  ui.dialog.dataset.outline = String(v.outline);
  showHeat();
}

function hideHeat() { for (const p of [ui.a, ui.b]) p.heat.hidden = p.outline.hidden = true; }

function showHeat() {
  if (v.heatFor !== v.cases[v.index] || v.mode === "off") { hideHeat(); return; }
  ui.a.heat.hidden = v.mode !== "overlay";
  ui.b.heat.hidden = v.mode !== "side";
  for (const p of [ui.a, ui.b]) p.outline.hidden = p.heat.hidden || !v.outline || !v.hasOutline;
  setOpacity(v.opacity);
}

function heatWords() { return v.heatPicture ? S("heatPicture") + " " + S("heatNote") : S("heatNote"); }

async function ensureHeat() {
  const c = v.cases[v.index], seq = v.seq, store = cache(c);
  if (v.heatFor === c) { setStatus(heatWords()); showHeat(); return; }  // what the map is, whenever it shows
  if (store.pending) await store.pending.catch(() => null);  // the film's request may bring the map
  if (!v || seq !== v.seq) return;
  if (c.ok === false || c.in_scope === false || c.decision === "OUT_OF_SCOPE") { setStatus(S("heatOutOfScope")); return; }
  let url = c.heatmap_map || store.map, picture = false;
  if (!url && store.heatError) { setStatus(S("heatFailed", { error: store.heatError })); return; }
  if (!url && c.heatmap_png && !c.file) { url = c.heatmap_png; picture = true; }
  if (!url && !c.file) { setStatus(S("heatNoFile")); return; }
  try {
    if (!url) {
      setStatus(S("heatComputing"));
      const entry = await explain(c, "film=false&heatmap=true");
      if (!entry.heatmap_map) throw new Error(store.heatError = entry.heatmap_error || "none");  // kept: it will not change
      url = store.map = c.heatmap_map = entry.heatmap_map;  // the page keeps it (onClose)
    }
    const img = await loadImage(url);
    if (!v || seq !== v.seq) return;
    drawHeat(img, picture);
    v.heatFor = c;
    v.heatPicture = picture;
    setStatus(heatWords());
    showHeat();
  } catch (e) {
    if (!v || seq !== v.seq) return;
    setStatus(S("heatFailed", { error: e.message }));
  }
}

// The map on both panes' heatmap canvases and its outline on their outline canvases (none for an overlay picture:
// it has no map values), stretched to the film.
function drawHeat(img, picture) {
  const map = colourHeat(ui.a.heat, img, picture);
  v.hasOutline = Boolean(map) && drawOutline(ui.a.outline, map) > 0;
  if (!map) ui.a.outline.width = ui.a.outline.height = 0;
  for (const x of ["heat", "outline"]) {
    ui.b[x].width = ui.a[x].width; ui.b[x].height = ui.a[x].height;
    if (ui.a[x].width) ui.b[x].getContext("2d").drawImage(ui.a[x], 0, 0);
  }
  const fw = v.film ? v.film.w : ui.a.heat.width, fh = v.film ? v.film.h : ui.a.heat.height;
  for (const p of [ui.a, ui.b]) {
    for (const x of [p.heat, p.outline]) { x.style.width = fw + "px"; x.style.height = fh + "px"; }
  }
}

// ------------------------------------------------------------------ keyboard and focus

// A control that was disabled under the focus (Prev on the first case, the opacity with the heatmap off) drops it
// to the page: keep it in the dialog.
function keepFocus() {
  const a = document.activeElement;
  if (!a || a === document.body || !ui.dialog.contains(a) || a.disabled) ui.dialog.focus();
}

function trapTab(e) {
  const all = [...ui.dialog.querySelectorAll("button, select, input, summary, [tabindex]:not([tabindex='-1'])")]
    .filter((x) => !x.disabled && x.offsetParent !== null);
  if (!all.length) return;
  const first = all[0], last = all[all.length - 1];
  if (e.shiftKey && (document.activeElement === first || !ui.dialog.contains(document.activeElement))) { last.focus(); e.preventDefault(); }
  else if (!e.shiftKey && document.activeElement === last) { first.focus(); e.preventDefault(); }
}

const KEYS = {
  Escape: () => close_(), j: () => step(1), k: () => step(-1), h: () => cycleMode(), o: () => toggleOutline(),
  "+": () => zoomBy(1.25), "=": () => zoomBy(1.25), "-": () => zoomBy(1 / 1.25), "_": () => zoomBy(1 / 1.25),
  "0": () => fit(), "1": () => actualPixels(), i: () => toggleInvert(), w: () => toggleWlMode(), r: () => resetView(),
  ArrowLeft: () => panBy(40, 0), ArrowRight: () => panBy(-40, 0), ArrowUp: () => panBy(0, 40), ArrowDown: () => panBy(0, -40),
};

function onKey(e) {
  if (!v) return;
  if (e.key === "Tab") { trapTab(e); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const tag = e.target && e.target.tagName;
  if (e.key.startsWith("Arrow") && (tag === "INPUT" || tag === "SELECT")) return;
  if (e.key !== "Escape" && (tag === "TEXTAREA" || (tag === "INPUT" && e.target.type === "text"))) return;  // a note
  const act = KEYS[e.key] || KEYS[e.key.toLowerCase()];
  if (!act) return;
  e.preventDefault();
  e.stopPropagation();
  act();
}

// The viewer: callers use this object's methods (one object, so that a wrapper put on it is the one they call).
export const PneumoscanViewer = {
  open, close: close_, isOpen: () => v !== null,
  current: () => (v ? { cases: v.cases, index: v.index } : null),  // the open cases and the one shown (review.js)
  go: (i) => { if (v && i >= 0 && i < v.cases.length) showCase(i); },
};
