// pneumoscan web page: upload X-rays, show a card per image, and the stored worklist in the server's risk order.
// Everything is served by the same app; nothing is loaded from elsewhere, and there is no build step: the page is
// ES modules, loaded from one <script type="module" src="static/main.js">, each importing what it uses:
//   strings.js   every text (STRINGS, t)
//   app.js       this: the page's core (state, DOM and text helpers, the API token, the theme, the model line and
//                card, the drift check), used by all the others
//   cards.js     result cards, in the server's risk order, and the film viewer opened from them
//   worklist.js  the stored worklist: filters, ranks, reviews, the CSV (the server's)
//   report.js    the printed per-patient report
//   upload.js    uploads and "Clear cards"
//   main.js      start-up
//   viewer.js, viewer-film.js, viewer-ui.js   the film viewer
// The server owns every rule: the ranking (each row's `rank`, the `order=risk` list), the score and threshold on
// 0-100 (`score`, `score_threshold`), the decision in words (`decision_text`) and the CSV. The page shows them.
// The worklist comes from the server's database (GET api/v1/worklist), so it survives reloads and restarts. The
// server never stores file names, so the names of the files uploaded from this tab are remembered here
// (sessionStorage) to label their rows.
import { t } from "./strings.js";

const TOKEN_KEY = "pneumoscan-api-token";
const NAMES_KEY = "pneumoscan-file-names";
const MAX_NAMES = 1000;

//: Stored results shown as cards when the page loads, and the window the cards' risk order is read from: those
//: received in the last STORED_HOURS before the page was opened (and everything since).
export const STORED_HOURS = 24;

// The page's state. results: this page's cards' results (API entries and stored rows, with the page's own `id`);
// worklist: the rows listed in the table; cards: worklist_id -> card element id; names: worklist_id -> file name.
export const state = {
  results: [], model: null, seq: 0, worklist: [], total: 0, names: loadNames(), cards: {}, fetchSeq: 0,
  storedLoaded: false, disclaimer: "", since: new Date(Date.now() - STORED_HOURS * 3600 * 1000).toISOString(),
};
export const $ = (id) => document.getElementById(id);

// A page string: T("key", {n: 3}) is t("page.key", ...) from strings.js.
export function T(key, values) { return t("page." + key, values); }

// The model's threshold on 0-100 with one decimal, as the server writes its scores (pneumoscan.metrics.score_100).
export function score100(p) { return (Math.round(Number(p) * 1000) / 10).toFixed(1); }

// A score or threshold the server sent on 0-100 (`score`, `score_threshold`), with one decimal.
export function fmtScore(s) { return s === null || s === undefined || s === "" ? "–" : Number(s).toFixed(1); }

// The wording of a decision in strings.js (the same words as pneumoscan.constants.DECISION_WORDS); no decision:
// the file was not read.
export function decisionWords(decision) {
  if (!decision) return T("notRead");
  const words = T("decision" + decision);
  return words === "page.decision" + decision ? decision : words;
}

// A result's decision in words: the server's `decision_text`; strings.js's for an entry the page made itself (an
// upload that never reached the model).
export function decisionText(r) { return r.decision_text || decisionWords(r.decision); }

// The cause of a flagged film in words: the server's `cause_text`, else strings.js's (the same words as
// pneumoscan.constants.CAUSE_WORDS); "" for a film without a cause (not flagged, not assessed, not read, or a model
// without a cause output).
export function causeText(r) {
  if (!r || !r.cause) return "";
  if (r.cause_text) return r.cause_text;
  const words = T("cause" + r.cause);
  return words === "page.cause" + r.cause ? r.cause : words;
}

// A sentence's first letter in upper case ("pattern more like viral" -> "Pattern more like viral").
export function capitalise(s) { return s ? s.charAt(0).toLocaleUpperCase() + s.slice(1) : s; }

// The line under a flagged film's decision: "Pattern more like viral · viral score 81.0 / 100 (threshold 54.1)",
// the server's viral score (0-100) and the cause threshold on the same scale; "" without a cause. `key`: the
// template (causeLine; causeRow for the worklist's shorter line).
export function causeLine(r, key = "causeLine") {
  const words = causeText(r);
  if (!words) return "";
  const threshold = typeof r.cause_threshold === "number" ? score100(r.cause_threshold) : "–";
  return T(key, { cause: capitalise(words), score: fmtScore(r.cause_score), threshold });
}

// Scored by the model: read and in scope (an image the scope gate refused gets no risk figure at all).
export function inScope(r) { return Boolean(r.ok) && r.in_scope !== false; }

//: The borderline band's default half-width, in points of the 0-100 score (the worklist's "Borderline" filter).
export const DEFAULT_BAND = 10;

// The borderline band on screen: the worklist's band input (#f-band, 1-50 points either side of the threshold),
// else DEFAULT_BAND. The worklist's tag, its filter (the server's `borderline=`), the cards, the viewer and the
// report all use this one band.
export function borderlineBand() {
  const input = document.getElementById("f-band");
  const band = Math.round(Number(input ? input.value : DEFAULT_BAND));
  return band >= 1 && band <= 50 ? band : DEFAULT_BAND;
}

// Within the borderline band: scored in scope and |probability - threshold| <= band / 100, the rule of the server's
// `borderline=` filter (pneumoscan.store.rows, with its slack for a probability exactly on the edge).
export function isBorderline(r, band = borderlineBand()) {
  return inScope(r) && typeof r.threshold === "number" && typeof r.probability === "number" &&
    Math.abs(r.probability - r.threshold) <= band / 100 + 1e-9;
}

export function siteState(m) { return (m && m.site_state) || "shipped"; }

export function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

export function setStatus(text) { $("status").textContent = text; }

// index.html's texts: data-t="key" (text) and data-t-attr="attr:key;attr:key" (attributes).
export function fillStaticStrings() {
  document.title = T("title");
  for (const node of document.querySelectorAll("[data-t]")) node.textContent = T(node.dataset.t);
  for (const node of document.querySelectorAll("[data-t-attr]")) {
    for (const pair of node.dataset.tAttr.split(";")) {
      const [attr, key] = pair.split(":");
      if (attr && key) node.setAttribute(attr.trim(), T(key.trim()));
    }
  }
}

// ---------------------------------------------------------------------------------------------- the theme

// The reader's choice (the header's toggle, kept in localStorage) or else the system's (prefers-color-scheme).
// Applied as soon as this module runs; the style sheet does the rest.
const THEME_KEY = "pneumoscan-theme";
const darkQuery = window.matchMedia("(prefers-color-scheme: dark)");

function storedTheme() {
  try { const v = localStorage.getItem(THEME_KEY); return v === "dark" || v === "light" ? v : null; } catch (_) { return null; }
}

export function applyTheme() {
  const chosen = storedTheme();
  if (chosen) document.documentElement.dataset.theme = chosen;
  else delete document.documentElement.dataset.theme;
  const dark = chosen ? chosen === "dark" : darkQuery.matches;
  const btn = document.getElementById("theme-toggle");
  if (btn) btn.setAttribute("aria-pressed", String(dark));
}

function toggleTheme() {
  const dark = $("theme-toggle").getAttribute("aria-pressed") === "true";
  try { localStorage.setItem(THEME_KEY, dark ? "light" : "dark"); } catch (_) { /* storage off: this page only */ }
  if (!storedTheme()) document.documentElement.dataset.theme = dark ? "light" : "dark";
  else applyTheme();
  $("theme-toggle").setAttribute("aria-pressed", String(!dark));
}

export function setupTheme() {
  applyTheme();
  $("theme-toggle").addEventListener("click", toggleTheme);
}

applyTheme();
darkQuery.addEventListener("change", applyTheme);

// ---------------------------------------------------------------------------------------------- names

function loadNames() {
  try { return JSON.parse(sessionStorage.getItem(NAMES_KEY) || "{}") || {}; } catch (_) { return {}; }
}

export function rememberName(id, name) {
  state.names[id] = name;
  const ids = Object.keys(state.names);
  if (ids.length > MAX_NAMES) for (const old of ids.slice(0, ids.length - MAX_NAMES)) delete state.names[old];
  try { sessionStorage.setItem(NAMES_KEY, JSON.stringify(state.names)); } catch (_) { /* storage full: names stay in memory */ }
}

// How a stored row is named: the file's name when it was uploaded from this tab, else its DICOM identifiers
// (row.context), else (an upload) the hash of its name, its view and the time it came, else its id.
export function rowLabel(r) {
  if (state.names[r.id]) return state.names[r.id];
  const c = r.context || {};
  const ids = [c.patient_id && T("contextPatient", { v: c.patient_id }), c.accession && T("contextAcc", { v: c.accession })].filter(Boolean);
  if (ids.length) return ids.join(" · ");
  // An upload named in another tab or before a reload: its hashed name, view and time received tell it apart.
  const hash = (r.filename_hash || "").replace(/^upload-/, "").slice(0, 8);
  const when = new Date(r.created);
  if (!hash || isNaN(when)) return T("resultN", { id: r.id });
  const at = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return c.view ? T("uploadLabelView", { hash, view: c.view, when: at }) : T("uploadLabel", { hash, when: at });
}

// ---------------------------------------------------------------------------------------------- the API token

// The API may need a bearer token (servers reachable from other machines). The page asks for it once and keeps
// it for this browser tab only (sessionStorage), never in a cookie or on disk.
function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

// Every request of the page goes through here (the token, and the sign-in form on 401).
export async function api(url, options = {}) {
  const res = await fetch(url, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  if (res.status === 401) showLogin(sessionStorage.getItem(TOKEN_KEY) ? T("tokenRejected") : "");
  return res;
}

function showLogin(message) {
  $("login").hidden = false;
  $("login-msg").textContent = message || T("tokenNeeded");
  $("token").focus();
}

// The sign-in form: keeps the token for this tab, then onSignedIn() (the page loads again what needs it).
export function setupLogin(onSignedIn) {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("login").hidden = true;
    onSignedIn();
  });
}

// ---------------------------------------------------------------------------------------------- the model

function fmtPct(p) { return (100 * p).toFixed(1) + "%"; }

// GET api/v1/model: the header's model line and the model card. Returns the model, or null (not signed in).
export async function loadModelInfo() {
  const res = await api("api/v1/model");
  if (res.status === 401) { $("model-line").textContent = T("signInToUse"); return null; }
  if (!res.ok) throw new Error("HTTP " + res.status);
  const m = await res.json();
  state.model = m;
  // The site state sits next to the model name: a model adapted or calibrated here is not the shipped one.
  const site = siteState(m);
  $("model-line").replaceChildren(
    T("modelLine", { name: m.name, version: m.version }),
    el("span", { id: "site-state", class: "site-state" + (site === "shipped" ? "" : " local"),
                 title: m.provenance || T("siteShippedTitle"),
                 text: site === "shipped" ? T("siteShipped") : T("siteLocal", { site }) }),
    T("modelLineThreshold", { threshold: score100(m.threshold) }));
  renderModelCard(m);
  // The cause filter only where there can be a cause: a model with the cause output (or a filter already set).
  const pick = document.getElementById("f-cause-pick");
  if (pick) pick.hidden = !m.cause && !$("f-cause").value;
  return m;
}

export function modelUnavailable(error) {
  $("model-line").textContent = T("modelUnavailable", { error: error.message });
}

function thresholdHow(m) {
  const op = m.operating_point || {};
  const on = m.site_calibration ? T("mcOnSite") : T("mcOnValidation");
  if (op.method === "min_cost_at_target_sensitivity") {
    return T("mcHowCost", { on, cost: op.miss_cost, sens: op.target_sensitivity });
  }
  if (op.method) {
    return T("mcHowOther", { method: op.method.replaceAll("_", " "), on,
                             target: op.target_sensitivity ? " " + op.target_sensitivity : "" });
  }
  return "";
}

function renderModelCard(m) {
  const box = $("model-card");
  box.replaceChildren();
  const dl = el("dl");
  const add = (k, v) => { if (v !== undefined && v !== null && v !== "") dl.append(el("dt", { text: T(k) }), el("dd", { text: String(v) })); };
  add("mcModel", T("mcModelValue", { name: m.name, version: m.version }));
  add("mcIntendedUse", m.intended_use);
  add("mcSiteState", m.provenance || T("siteShippedTitle"));
  // The drift verdict at this site, as prominent as the validation figures below (filled in by checkDrift).
  dl.append(el("dt", { text: T("mcDrift") }), el("dd", { id: "mc-drift", text: driftWords || T("mcDriftPending") }));
  const ad = m.adaptation;
  if (ad && typeof ad.prevalence_em === "number") {
    const training = typeof ad.training_prevalence === "number" ? T("mcPrevalenceTraining", { prevalence: fmtPct(ad.training_prevalence) }) : "";
    add("mcPrevalence", T("mcPrevalenceValue", { prevalence: fmtPct(ad.prevalence_em), training }));
  }
  add("mcThreshold", T("mcThresholdValue", { threshold: score100(m.threshold), how: thresholdHow(m) }));
  // Where the score was calibrated and what its scale rests on (the server's words; absent from older servers).
  add("mcScoreCalibration", m.score_calibration);
  add("mcScoreCalibrationDetails", m.score_calibration_details);
  const vm = m.validation || {};
  if (vm.auc !== undefined) {
    add("mcAuc", Number(vm.auc).toFixed(4) + (Array.isArray(vm.auc_ci) ? T("mcAucCi", { low: Number(vm.auc_ci[0]).toFixed(4), high: Number(vm.auc_ci[1]).toFixed(4) }) : ""));
  }
  if (vm.sensitivity !== undefined) add("mcSens", Number(vm.sensitivity).toFixed(3));
  if (vm.specificity !== undefined) add("mcSpec", Number(vm.specificity).toFixed(3));
  if (m.preprocessing) add("mcInput", T("mcInputValue", { size: m.preprocessing.image_size }));
  box.append(dl);
  if (m.model_card_html || m.model_card) box.append(fullModelCard(m));
}

function fullModelCard(m) {
  const det = el("details", { id: "full-model-card" });
  det.append(el("summary", { text: T("mcFull") }));
  if (!m.model_card_html) { det.append(el("pre", { text: m.model_card })); return det; }
  // Rendered on the server by markdown-it with raw HTML off (escaped) and no images: safe to insert.
  const doc = el("div", { class: "markdown" });
  doc.innerHTML = m.model_card_html;
  for (const table of doc.querySelectorAll("table")) {  // wide tables scroll inside the card, not the page
    const wrap = el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": T("mcFull") });
    table.before(wrap); wrap.append(table);
  }
  det.append(doc);
  return det;
}

// ---------------------------------------------------------------------------------------------- drift

// The site's drift check (GET api/v1/drift): a banner when the server's recent images differ from the training
// data, and one line on how far the check has got (under the upload box and in the model card).
let driftWords = "";
function setDriftLine(text) {
  driftWords = text;
  $("drift-line").textContent = text;
  const cell = document.getElementById("mc-drift");
  if (cell) cell.textContent = text;
}

export async function checkDrift() {
  let d = null;
  try {
    const res = await api("api/v1/drift");
    if (!res.ok) return;
    d = await res.json();
  } catch (_) { return; }
  const banner = $("drift-banner");
  if (d.available && d.shifted) {
    banner.replaceChildren(
      el("strong", { text: T("driftLead") }),
      T("driftText", { n: d.n_tested || d.n_images, statistic: Number(d.statistic).toFixed(2), threshold: Number(d.threshold).toFixed(2) }),
      el("code", { text: "pneumoscan adapt" }), T("driftMid"), el("code", { text: "pneumoscan calibrate" }),
      T("driftTail") + (d.case_mix_note ? T("driftNote", { note: d.case_mix_note }) : ""));
    banner.hidden = false;
    setDriftLine(T("driftLineShifted"));
    return;
  }
  banner.hidden = true;
  if (d.available) setDriftLine(T("driftLineOk", { n: d.n_tested || d.n_images }));
  else if (d.n_images < d.min_images && /in-scope images/.test(d.reason || "")) setDriftLine(T("driftLineWaiting", { n: d.n_images, min: d.min_images }));
  else setDriftLine(T("driftLineUnavailable", { reason: d.reason || T("noReason") }));
}
