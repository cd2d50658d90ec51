"use strict";
// pneumoscan web page: upload X-rays, show a card per image, and the stored worklist sorted by risk.
// Everything is served by the same app; nothing is loaded from elsewhere. Four scripts share this page's globals:
// app.js (this: helpers, the model, uploads, drift, theme, start-up), cards.js (result cards, the viewer),
// worklist.js (the stored worklist: filters, reviews, CSV) and report.js (the printed per-patient report).
// Every text comes from strings.js (STRINGS.page, through T()).
// The worklist comes from the server's database (GET api/v1/worklist), so it survives reloads and restarts. The
// server never stores file names, so the names of the files uploaded from this tab are remembered here
// (sessionStorage) to label their rows.

const TOKEN_KEY = "pneumoscan-api-token";
const NAMES_KEY = "pneumoscan-file-names";
const MAX_NAMES = 1000;
const state = { results: [], model: null, seq: 0, worklist: [], total: 0, names: loadNames(), cards: {}, fetchSeq: 0,
                storedLoaded: false };
const $ = (id) => document.getElementById(id);

// A page string: T("key", {n: 3}) is t("page.key", ...) from strings.js.
function T(key, values) { return window.t("page." + key, values); }

// The score people see: the probability on 0-100 with one decimal (pneumoscan.metrics.score_100); thresholds too.
function score100(p) { return (Math.round(Number(p) * 1000) / 10).toFixed(1); }

// The one wording of a decision (pneumoscan.constants.DECISION_WORDS); no decision: the file was not read.
function decisionWords(decision) {
  if (!decision || decision === "ERROR") return T("notRead");
  const words = T("decision" + decision);
  return words === "page.decision" + decision ? decision : words;
}

// index.html's texts: data-t="key" (text) and data-t-attr="attr:key;attr:key" (attributes).
function fillStaticStrings() {
  document.title = T("title");
  for (const node of document.querySelectorAll("[data-t]")) node.textContent = T(node.dataset.t);
  for (const node of document.querySelectorAll("[data-t-attr]")) {
    for (const pair of node.dataset.tAttr.split(";")) {
      const [attr, key] = pair.split(":");
      if (attr && key) node.setAttribute(attr.trim(), T(key.trim()));
    }
  }
}

// The theme: the reader's choice (the header's toggle, kept in localStorage) or else the system's
// (prefers-color-scheme). Applied as soon as the script runs; the style sheet does the rest.
const THEME_KEY = "pneumoscan-theme";
const darkQuery = window.matchMedia("(prefers-color-scheme: dark)");

function storedTheme() {
  try { const v = localStorage.getItem(THEME_KEY); return v === "dark" || v === "light" ? v : null; } catch (_) { return null; }
}

function applyTheme() {
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

applyTheme();
darkQuery.addEventListener("change", applyTheme);

function loadNames() {
  try { return JSON.parse(sessionStorage.getItem(NAMES_KEY) || "{}") || {}; } catch (_) { return {}; }
}

function rememberName(id, name) {
  state.names[id] = name;
  const ids = Object.keys(state.names);
  if (ids.length > MAX_NAMES) for (const old of ids.slice(0, ids.length - MAX_NAMES)) delete state.names[old];
  try { sessionStorage.setItem(NAMES_KEY, JSON.stringify(state.names)); } catch (_) { /* storage full: names stay in memory */ }
}

// The API may need a bearer token (servers reachable from other machines). The page asks for it once and keeps
// it for this browser tab only (sessionStorage), never in a cookie or on disk.
function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(url, options = {}) {
  const res = await fetch(url, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  if (res.status === 401) showLogin(sessionStorage.getItem(TOKEN_KEY) ? T("tokenRejected") : "");
  return res;
}

function showLogin(message) {
  $("login").hidden = false;
  $("login-msg").textContent = message || T("tokenNeeded");
  $("token").focus();
}

function fmtPct(p) { return (100 * p).toFixed(1) + "%"; }

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function siteState(m) { return (m && m.site_state) || "shipped"; }

async function loadModel() {
  try {
    const res = await api("api/v1/model");
    if (res.status === 401) { $("model-line").textContent = T("signInToUse"); return; }
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
    updateBandHint();
    checkDrift();
    await refreshWorklist();
    await loadStoredCards();
  } catch (e) {
    $("model-line").textContent = T("modelUnavailable", { error: e.message });
  }
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
  const ad = m.adaptation;
  if (ad && typeof ad.prevalence_em === "number") {
    const training = typeof ad.training_prevalence === "number" ? T("mcPrevalenceTraining", { prevalence: fmtPct(ad.training_prevalence) }) : "";
    add("mcPrevalence", T("mcPrevalenceValue", { prevalence: fmtPct(ad.prevalence_em), training }));
  }
  add("mcThreshold", T("mcThresholdValue", { threshold: score100(m.threshold), how: thresholdHow(m) }));
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

function setStatus(text) { $("status").textContent = text; }

async function sendFile(file, wantHeatmap) {
  const form = new FormData();
  form.append("files", file, file.name);
  const url = "api/v1/predict" + (wantHeatmap ? "?heatmap=true&preview=true" : "?preview=true");
  try {
    const res = await api(url, { method: "POST", body: form });
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (body && Array.isArray(body.results) && body.results.length) return body.results;
    const msg = (body && (body.detail || body.error)) || `HTTP ${res.status}`;
    return [{ filename: file.name, ok: false, error: typeof msg === "string" ? msg : JSON.stringify(msg) }];
  } catch (e) {
    return [{ filename: file.name, ok: false, error: T("uploadFailed", { error: e.message }) }];
  }
}

async function handleFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  const wantHeatmap = $("want-heatmap").checked;
  let done = 0;
  const batch = [];
  setStatus(T("analysing", { n: files.length }));
  const queue = files.slice();
  const worker = async () => {
    while (queue.length) {
      const f = queue.shift();
      const results = await sendFile(f, wantHeatmap);
      for (const r of results) {
        // The File stays with its result (memory only) so that the viewer can show it at full resolution.
        r.id = ++state.seq; r.file = f; r.created = new Date().toISOString();
        state.results.push(r); batch.push(r); addCard(r);
        if (r.worklist_id != null) { rememberName(r.worklist_id, r.filename); state.cards[r.worklist_id] = "card-" + r.id; }
      }
      orderCards();
      done += 1;
      setStatus(T("analysedOf", { done, n: files.length }));
      await refreshWorklist();
    }
  };
  await Promise.all([worker(), worker()]);
  setStatus(batchSummary(batch));
  checkDrift();
}

// Counts of this batch only, each result in exactly one of the three (earlier batches' cards stay on the page,
// but are not recounted).
function batchSummary(batch) {
  const analysed = batch.filter((r) => inScope(r)).length;
  const failed = batch.filter((r) => !r.ok).length;
  const notAssessed = batch.filter((r) => r.ok && !inScope(r)).length;
  return T("done", { n: analysed }) + (notAssessed ? T("doneNotAssessed", { n: notAssessed }) : "") +
    (failed ? T("doneFailed", { n: failed }) : "") + T("doneEnd");
}

// An image the scope gate refused (not a pediatric frontal chest radiograph) gets no risk figure at all.
function inScope(r) { return r.ok && r.in_scope !== false; }

// The site's drift check (GET api/v1/drift): a banner when the server's recent images differ from the training
// data, and one line on how far the check has got.
async function checkDrift() {
  let d = null;
  try {
    const res = await api("api/v1/drift");
    if (!res.ok) return;
    d = await res.json();
  } catch (_) { return; }
  const banner = $("drift-banner"), line = $("drift-line");
  if (d.available && d.shifted) {
    banner.replaceChildren(
      el("strong", { text: T("driftLead") }),
      T("driftText", { n: d.n_tested || d.n_images, statistic: Number(d.statistic).toFixed(2), threshold: Number(d.threshold).toFixed(2) }),
      el("code", { text: "pneumoscan calibrate" }), T("driftTail") + (d.case_mix_note ? T("driftNote", { note: d.case_mix_note }) : ""));
    banner.hidden = false;
    line.textContent = T("driftLineShifted");
    return;
  }
  banner.hidden = true;
  if (d.available) line.textContent = T("driftLineOk", { n: d.n_tested || d.n_images });
  else if (d.n_images < d.min_images && /in-scope images/.test(d.reason || "")) line.textContent = T("driftLineWaiting", { n: d.n_images, min: d.min_images });
  else line.textContent = T("driftLineUnavailable", { reason: d.reason || T("noReason") });
}

let clearArmed = false, clearTimer = 0;

function armClear(n) {
  clearArmed = true;
  const btn = $("clear");
  btn.textContent = T("reallyClear");
  btn.classList.add("armed");
  btn.setAttribute("aria-label", T("reallyClearLabel", { n }));
  $("clear-cancel").hidden = false;
  setStatus(T("reallyClearStatus", { n }));
  clearTimeout(clearTimer);
  clearTimer = setTimeout(disarmClear, 10_000);
}

function disarmClear() {
  clearArmed = false;
  clearTimeout(clearTimer);
  const btn = $("clear");
  btn.textContent = T("clearCards");
  btn.classList.remove("armed");
  btn.removeAttribute("aria-label");
  $("clear-cancel").hidden = true;
}

// The cards are this tab's; the worklist is the server's and stays. Two steps: "Clear cards", then
// "Really clear?" (or Cancel, Escape, or 10 seconds, which leave the cards as they are).
function setupClear() {
  $("clear").addEventListener("click", () => {
    const n = $("cards").children.length;
    if (n && !clearArmed) { armClear(n); return; }
    disarmClear();
    state.results = []; state.cards = {}; $("cards").replaceChildren(); $("cards-note").textContent = "";
    renderWorklist();
    setStatus(n ? T("cleared", { n }) : "");
  });
  const keep = () => { disarmClear(); setStatus(T("keptCards")); $("clear").focus(); };
  $("clear-cancel").addEventListener("click", keep);
  for (const id of ["clear", "clear-cancel"]) {
    $(id).addEventListener("keydown", (e) => { if (e.key === "Escape" && clearArmed) keep(); });
  }
}

function setupUpload() {
  const dz = $("dropzone"), input = $("file-input");
  dz.addEventListener("click", () => input.click());
  dz.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => { handleFiles(input.files); input.value = ""; });
  dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("drag"); });
  dz.addEventListener("dragleave", () => dz.classList.remove("drag"));
  dz.addEventListener("drop", (e) => { e.preventDefault(); dz.classList.remove("drag"); handleFiles(e.dataTransfer.files); });
}

function setup() {
  fillStaticStrings();
  applyTheme();
  $("theme-toggle").addEventListener("click", toggleTheme);
  setupUpload();
  setupClear();
  setupWorklist();  // worklist.js
  setupReport();    // report.js
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("login").hidden = true;
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
