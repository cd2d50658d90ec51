"use strict";
// pneumoscan web page: upload X-rays, show a card per image, and the stored worklist sorted by risk.
// Everything is served by the same app; nothing is loaded from elsewhere.
// The worklist comes from the server's database (GET api/v1/worklist), so it survives reloads and restarts; the
// cards (with the images) are this tab's only. The server never stores file names, so the names of the files
// uploaded from this tab are remembered here (sessionStorage) to label their rows.

const TOKEN_KEY = "pneumoscan-api-token";
const NAMES_KEY = "pneumoscan-file-names";
const MAX_NAMES = 1000;
const state = { results: [], model: null, seq: 0, worklist: [], total: 0, names: loadNames(), cards: {}, fetchSeq: 0 };
const $ = (id) => document.getElementById(id);

// The theme: the reader's choice (the header's toggle, kept in localStorage) or else the system's
// (prefers-color-scheme). Applied as soon as the script runs; the style sheet does the rest.
const THEME_KEY = "pneumoscan-theme";
const darkQuery = window.matchMedia("(prefers-color-scheme: dark)");

function storedTheme() {
  try { const t = localStorage.getItem(THEME_KEY); return t === "dark" || t === "light" ? t : null; } catch (_) { return null; }
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
  if (res.status === 401) showLogin(sessionStorage.getItem(TOKEN_KEY) ? "That token was not accepted." : "");
  return res;
}

function showLogin(message) {
  const form = $("login");
  form.hidden = false;
  $("login-msg").textContent = message || "This server needs its API token. Ask your administrator for it.";
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

async function loadModel() {
  try {
    const res = await api("api/v1/model");
    if (res.status === 401) { $("model-line").textContent = "Sign in with the API token to use this server."; return; }
    if (!res.ok) throw new Error("HTTP " + res.status);
    const m = await res.json();
    state.model = m;
    // The site state sits next to the model name: a model adapted or calibrated here is not the shipped one.
    const site = m.site_state || "shipped";
    $("model-line").replaceChildren(
      `Model ${m.name} (${m.version}) `,
      el("span", { id: "site-state", class: "site-state" + (site === "shipped" ? "" : " local"),
                   title: m.provenance || "As shipped: not adapted or calibrated at this site",
                   text: site === "shipped" ? "as shipped" : `${site} at this site` }),
      ` · operating threshold ${m.threshold.toFixed(3)}`);
    renderModelCard(m);
    checkDrift();
    refreshWorklist();
  } catch (e) {
    $("model-line").textContent = "Model information unavailable: " + e.message;
  }
}

function renderModelCard(m) {
  const box = $("model-card");
  box.replaceChildren();
  const dl = el("dl");
  const add = (k, v) => { if (v !== undefined && v !== null && v !== "") dl.append(el("dt", { text: k }), el("dd", { text: String(v) })); };
  add("Model", `${m.name} (version ${m.version})`);
  add("Intended use", m.intended_use);
  add("Site state", m.provenance || "As shipped: not adapted or calibrated at this site");
  const ad = m.adaptation;
  if (ad && typeof ad.prevalence_em === "number") {
    add("Estimated pneumonia prevalence at this site", fmtPct(ad.prevalence_em) + " (EM on the adaptation films, no labels; decisions unchanged" +
        (typeof ad.training_prevalence === "number" ? `; training ${fmtPct(ad.training_prevalence)}` : "") + ")");
  }
  const op = m.operating_point || {};
  let how = "";
  const on = m.site_calibration ? "this site's labelled films" : "validation";
  if (op.method === "min_cost_at_target_sensitivity") {
    how = ` (lowest cost on ${on} with a missed pneumonia counted as ${op.miss_cost} false alarms, sensitivity at least ${op.target_sensitivity})`;
  } else if (op.method) {
    how = ` (${op.method.replaceAll("_", " ")}` + (op.target_sensitivity ? ` ${op.target_sensitivity}` : "") + `, chosen on ${on})`;
  }
  add("Operating threshold", m.threshold.toFixed(4) + how);
  const vm = m.validation || {};
  if (vm.auc !== undefined) {
    add("Validation ROC AUC", Number(vm.auc).toFixed(4) + (Array.isArray(vm.auc_ci) ? ` (95% CI ${Number(vm.auc_ci[0]).toFixed(4)}–${Number(vm.auc_ci[1]).toFixed(4)})` : ""));
  }
  if (vm.sensitivity !== undefined) add("Validation sensitivity at threshold", Number(vm.sensitivity).toFixed(3));
  if (vm.specificity !== undefined) add("Validation specificity at threshold", Number(vm.specificity).toFixed(3));
  if (m.preprocessing) add("Input", `${m.preprocessing.image_size}×${m.preprocessing.image_size} grayscale, whole film squeezed to a square`);
  box.append(dl);
  if (m.model_card_html || m.model_card) {
    const det = el("details", { id: "full-model-card" });
    det.append(el("summary", { text: "Full model card" }));
    if (m.model_card_html) {
      // Rendered on the server by markdown-it with raw HTML off (escaped) and no images: safe to insert.
      const doc = el("div", { class: "markdown" });
      doc.innerHTML = m.model_card_html;
      for (const t of doc.querySelectorAll("table")) {  // wide tables scroll inside the card, not the page
        const wrap = el("div", { class: "table-wrap" });
        t.before(wrap); wrap.append(t);
      }
      det.append(doc);
    } else {
      det.append(el("pre", { text: m.model_card }));
    }
    box.append(det);
  }
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
    return [{ filename: file.name, ok: false, error: "upload failed: " + e.message }];
  }
}

async function handleFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  const wantHeatmap = $("want-heatmap").checked;
  let done = 0;
  const batch = [];
  setStatus(`Analysing ${files.length} image(s)…`);
  const queue = files.slice();
  const worker = async () => {
    while (queue.length) {
      const f = queue.shift();
      const results = await sendFile(f, wantHeatmap);
      for (const r of results) {
        r.id = ++state.seq; state.results.push(r); batch.push(r); addCard(r);
        if (r.worklist_id != null) { rememberName(r.worklist_id, r.filename); state.cards[r.worklist_id] = "card-" + r.id; }
      }
      orderCards();
      done += 1;
      setStatus(`Analysed ${done} of ${files.length} image(s).`);
      await refreshWorklist();
    }
  };
  await Promise.all([worker(), worker()]);
  // Counts of this batch only, each result in exactly one of the three (earlier batches' cards stay on the page,
  // but are not recounted).
  const analysed = batch.filter((r) => inScope(r)).length;
  const failed = batch.filter((r) => !r.ok).length;
  const notAssessed = batch.filter((r) => r.ok && !inScope(r)).length;
  setStatus(`Done: ${analysed} analysed` +
    (notAssessed ? `, ${notAssessed} not assessed (outside what the model was built for; see the cards)` : "") +
    (failed ? `, ${failed} could not be read (see the cards)` : "") + ".");
  checkDrift();
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
      el("strong", { text: "This site's images differ from the training data." }),
      ` The drift check found the last ${d.n_tested || d.n_images} images analysed here unlike the films the model ` +
      `was trained on (statistic ${Number(d.statistic).toFixed(2)}, threshold ${Number(d.threshold).toFixed(2)}). ` +
      "Results may not hold at this site: the sensitivity and specificity in the model card may not apply. " +
      "Before relying on it, the site should calibrate the model on its own labelled films (",
      el("code", { text: "pneumoscan calibrate" }), ")." + (d.case_mix_note ? " Note: " + d.case_mix_note + "." : ""));
    banner.hidden = false;
    line.textContent = "Site drift check: SHIFTED (see the warning at the top of the page).";
    return;
  }
  banner.hidden = true;
  if (d.available) {
    line.textContent = `Site drift check: no shift found in the last ${d.n_tested || d.n_images} in-scope images.`;
  } else if (d.n_images < d.min_images && /in-scope images/.test(d.reason || "")) {
    line.textContent = `Site drift check: ${d.n_images} of the ${d.min_images} in-scope images it needs so far.`;
  } else {
    line.textContent = "Site drift check unavailable: " + (d.reason || "no reason given") + ".";
  }
}

// Who and what a DICOM image is (patient ID, accession, age, view), under its name; nothing for JPEG or PNG.
// The patient's name is never sent by the server, so it is never shown.
function cardContext(r) {
  const c = r.context || {};
  const bits = [c.patient_id && "Patient " + c.patient_id, c.accession && "Acc. " + c.accession,
                c.age && "age " + c.age, c.view && "view " + c.view].filter(Boolean);
  return bits.length ? [el("div", { class: "context help", text: bits.join(" · ") })] : [];
}

const LIMITS_NOTE = "“Not flagged” says nothing about other findings (effusion, masses, tuberculosis); the model is " +
  "weakest on subtle viral pneumonia and on rotated or underexposed films.";

function addCard(r) {
  const cards = $("cards");
  const kind = !r.ok ? " error" : !inScope(r) ? " oos" : r.positive ? " pos" : "";
  const card = el("article", { class: "card" + kind, id: "card-" + r.id, "aria-label": r.filename, tabindex: "-1",
                               "data-decision": r.ok ? r.decision : "ERROR" });
  if (inScope(r)) card.dataset.probability = String(r.probability);  // a risk only where the model applies
  if (r.ok && !inScope(r)) {
    // No risk figure, bar or decision: the model was not built for this image, so its output means nothing here.
    card.append(el("figure", {}, [el("img", { src: r.image_png || "", alt: `Image ${r.filename}` })]));
    const body = el("div", { class: "body" });
    body.append(el("div", { class: "name", text: r.filename }), ...cardContext(r));
    body.append(el("div", { class: "not-assessed", text: "Not assessed" }));
    body.append(el("div", { class: "reason" }, [el("span", { class: "label", text: "Reason: " }), r.scope_reason || "outside the model's scope"]));
    body.append(el("p", { class: "help", text: "The model is built for pediatric frontal chest radiographs only and gives no result for this image. Read it as usual." }));
    card.append(body);
  } else if (r.ok) {
    const img = el("img", { src: r.image_png || "", alt: `X-ray ${r.filename}` });
    card.append(el("figure", {}, [img]));
    const body = el("div", { class: "body" });
    body.append(el("div", { class: "name", text: r.filename }), ...cardContext(r));
    body.append(el("div", { class: "prob", text: fmtPct(r.probability), title: "Pneumonia probability" }));
    const bar = el("div", { class: "bar", "aria-hidden": "true" });
    const fill = el("span"); fill.style.width = (100 * r.probability).toFixed(1) + "%";
    const mark = el("i"); mark.style.left = (100 * r.threshold).toFixed(1) + "%";
    bar.append(fill, mark);
    body.append(bar);
    body.append(el("div", {}, [
      el("span", { class: "decision " + (r.positive ? "pos" : "neg"), text: r.positive ? "Flag: possible pneumonia" : "Not flagged" }),
      el("span", { class: "help", text: ` at threshold ${r.threshold.toFixed(3)}` }),
    ]));
    // What the result does not say, and where the model is weakest (MODEL_CARD.md, "Known failure modes").
    body.append(el("p", { class: "help limits", text: LIMITS_NOTE }));
    if (r.heatmap_png) {
      const btn = el("button", { type: "button", "aria-pressed": "false", class: "toggle" , text: "Show heatmap" });
      btn.addEventListener("click", () => {
        const on = btn.getAttribute("aria-pressed") !== "true";
        btn.setAttribute("aria-pressed", String(on));
        btn.textContent = on ? "Hide heatmap" : "Show heatmap";
        img.src = on ? r.heatmap_png : r.image_png;
        img.alt = on ? `Grad-CAM heatmap over ${r.filename}` : `X-ray ${r.filename}`;
      });
      body.append(btn);
    }
    card.append(body);
  } else {
    const body = el("div", { class: "body" });
    body.append(el("div", { class: "name", text: r.filename }));
    body.append(el("div", { class: "err", role: "alert", text: "Could not analyse this file: " + r.error }));
    card.append(body);
  }
  cards.append(card);  // orderCards() puts it in its place
}

// The cards in the worklist's order: scored images by probability, highest first; then those not assessed (out
// of scope); then unreadable files; the newest first among equals.
function cardGroup(r) { return !r.ok ? 2 : !inScope(r) ? 1 : 0; }

function orderCards() {
  const sorted = state.results.slice().sort((a, b) =>
    cardGroup(a) - cardGroup(b) || (cardGroup(a) === 0 ? b.probability - a.probability : 0) || b.id - a.id);
  const box = $("cards");
  sorted.forEach((r, i) => {
    const card = document.getElementById("card-" + r.id);
    if (card && box.children[i] !== card) box.insertBefore(card, box.children[i] || null);
  });
}

// A worklist row's card: scrolled into view, outlined and focused (keyboard users land on it), aria-current.
function selectCard(cardId) {
  const card = document.getElementById(cardId);
  if (!card) return;
  for (const other of document.querySelectorAll("article.card.selected")) {
    other.classList.remove("selected"); other.removeAttribute("aria-current");
  }
  card.classList.add("selected");
  card.setAttribute("aria-current", "true");
  const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  card.scrollIntoView({ behavior: still ? "auto" : "smooth", block: "center" });
  card.focus({ preventScroll: true });
}

// The stored worklist, as the server orders it: scored images by risk, then those not assessed (out of scope),
// then unreadable files. A later request's answer never overwrites a newer one's.
async function refreshWorklist() {
  const seq = ++state.fetchSeq;
  let body = null;
  try {
    const res = await api("api/v1/worklist?limit=200");
    if (!res.ok) {
      if (res.status !== 401 && seq === state.fetchSeq) $("worklist-note").textContent = `Worklist unavailable (HTTP ${res.status}).`;
      return;
    }
    body = await res.json();
  } catch (e) {
    if (seq === state.fetchSeq) $("worklist-note").textContent = "Worklist unavailable: " + e.message;
    return;
  }
  if (seq !== state.fetchSeq) return;
  state.worklist = body.results || [];
  state.total = body.total || state.worklist.length;
  renderWorklist();
}

function isError(r) { return Boolean(r.error); }
function notAssessed(r) { return !isError(r) && r.in_scope === false; }

// How a row is named: the file's name when it was uploaded from this tab, else its DICOM identifiers, else its id.
function rowLabel(r) {
  if (state.names[r.id]) return state.names[r.id];
  const ids = [r.patient_id && "Patient " + r.patient_id, r.accession && "Acc. " + r.accession].filter(Boolean);
  return ids.length ? ids.join(" · ") : `Result ${r.id}`;
}

function rowDetails(r) {
  const bits = [];
  if (state.names[r.id] && r.patient_id) bits.push("Patient " + r.patient_id);
  if (state.names[r.id] && r.accession) bits.push("Acc. " + r.accession);
  if (r.age) bits.push("age " + r.age);
  if (r.sex) bits.push(r.sex);
  if (r.view) bits.push(r.view);
  const when = new Date(r.created);
  bits.push(isNaN(when) ? r.created : when.toLocaleString());
  return bits.join(" · ");
}

function reviewCell(r) {
  const td = el("td", { class: "review" });
  if (isError(r)) { td.textContent = "–"; return td; }
  const label = rowLabel(r);
  const current = r.review ? r.review.verdict : "";
  const group = el("div", { role: "group", "aria-label": `Review of ${label}`, class: "review-box" });
  if (r.review) {
    group.append(el("div", { class: "verdict " + current,
      text: (current === "agree" ? "Agreed" : "Disagreed") + (r.review.note ? ": " + r.review.note : "") }));
  }
  const note = el("input", { type: "text", class: "note", maxlength: "2000", placeholder: "Note (optional)",
                             "aria-label": `Review note for ${label}` });
  note.value = r.review ? r.review.note : "";
  const buttons = el("div", { class: "review-buttons" });
  for (const [verdict, text] of [["agree", "Agree"], ["disagree", "Disagree"]]) {
    const btn = el("button", { type: "button", class: "verdict-btn " + verdict, text,
                               "aria-pressed": String(current === verdict), "data-result": String(r.id),
                               "data-verdict": verdict, "aria-label": `${text} with the result for ${label}` });
    btn.addEventListener("click", () => sendReview(r, verdict, note.value));
    buttons.append(btn);
  }
  group.append(note, buttons);
  td.append(group);
  return td;
}

async function sendReview(r, verdict, note) {
  let res;
  try {
    res = await api(`api/v1/worklist/${r.id}/review`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ verdict, note }) });
  } catch (e) {
    setStatus("The review was not saved: " + e.message);
    return;
  }
  if (!res.ok) {
    let msg = `HTTP ${res.status}`;
    try { const b = await res.json(); if (b && b.detail) msg = typeof b.detail === "string" ? b.detail : JSON.stringify(b.detail); } catch (_) { /* not JSON */ }
    setStatus("The review was not saved: " + msg);
    return;
  }
  setStatus(`Review saved: ${verdict === "agree" ? "agreed" : "disagreed"} with ${rowLabel(r)}.`);
  await refreshWorklist();
  const again = document.querySelector(`button[data-result="${r.id}"][data-verdict="${verdict}"]`);
  if (again) again.focus();  // keyboard users stay where they were
}

function renderWorklist() {
  const tbody = $("worklist").querySelector("tbody");
  tbody.replaceChildren();
  const rows = state.worklist;
  if (!rows.length) {
    tbody.append(el("tr", { class: "empty" }, [el("td", { colspan: "5", text: "No images yet." })]));
  }
  let rank = 0;
  for (const r of rows) {
    const label = rowLabel(r);
    const cardId = state.cards[r.id];
    const name = cardId && document.getElementById(cardId)
      ? el("a", { href: "#" + cardId, text: label, class: "card-link", title: "Show this image's card" })
      : el("span", { text: label });
    if (name.tagName === "A") name.addEventListener("click", (e) => { e.preventDefault(); selectCard(cardId); });
    const file = el("td", { class: "file" }, [name, el("div", { class: "why", text: rowDetails(r) })]);
    if (isError(r)) {
      tbody.append(el("tr", { class: "bad" }, [el("td", { text: "–" }), file, el("td", { text: "–" }),
        el("td", {}, [el("span", { class: "err", text: "unreadable" }), el("div", { class: "why", text: r.error })]),
        reviewCell(r)]));
    } else if (notAssessed(r)) {
      tbody.append(el("tr", { class: "oos" }, [
        el("td", { text: "–" }), file, el("td", { text: "–" }),
        el("td", {}, [el("span", { class: "decision na", text: "not assessed", title: r.scope_reason || "" }),
                      el("div", { class: "why", text: r.scope_reason || "" })]),
        reviewCell(r)]));
    } else {
      rank += 1;
      tbody.append(el("tr", {}, [
        el("td", { class: "num", text: String(rank) }), file,
        el("td", { class: "num", text: fmtPct(r.probability) }),
        el("td", {}, [el("span", { class: "decision " + (r.flagged ? "pos" : "neg"), text: r.flagged ? "flag" : "no flag" })]),
        reviewCell(r)]));
    }
  }
  for (const a of tbody.querySelectorAll("a.card-link")) {  // the whole row leads to its card, not only the name
    const tr = a.closest("tr");
    tr.dataset.card = a.getAttribute("href").slice(1);
    tr.classList.add("has-card");
  }
  $("worklist-note").textContent = state.total > rows.length ? `Showing the ${rows.length} highest of ${state.total} results.` : "";
  $("download-csv").disabled = !rows.length;
}

function csvCell(v) {
  let s = v === undefined || v === null ? "" : String(v);
  // A text cell starting with = + - @ tab or CR would run as a formula in a spreadsheet (CSV injection).
  if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\n\r]/.test(s) ? '"' + s.replaceAll('"', '""') + '"' : s;
}

function downloadCsv() {
  const rows = [["rank", "file", "probability", "decision", "in_scope", "scope_reason", "threshold", "model_version", "error",
                 "patient_id", "accession", "age", "view", "received", "review", "review_note"]];
  let rank = 0;
  for (const r of state.worklist) {
    const tail = [r.patient_id, r.accession, r.age, r.view, r.created, r.review ? r.review.verdict : "", r.review ? r.review.note : ""];
    const file = rowLabel(r);
    if (isError(r)) rows.push(["", file, "", "", "", "", "", r.model_version, r.error, ...tail]);
    // Not assessed: no rank and no probability (the model's output on such an image is not a risk).
    else if (notAssessed(r)) rows.push(["", file, "", "OUT_OF_SCOPE", "false", r.scope_reason || "", r.threshold, r.model_version, "", ...tail]);
    else rows.push([++rank, file, r.probability.toFixed(6), r.decision, "true", "", r.threshold, r.model_version, "", ...tail]);
  }
  const blob = new Blob([rows.map((row) => row.map(csvCell).join(",")).join("\n") + "\n"], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "pneumoscan-worklist.csv" });
  document.body.append(a); a.click(); a.remove();
}

let clearArmed = false, clearTimer = 0;

function armClear(n) {
  clearArmed = true;
  const btn = $("clear");
  btn.textContent = "Really clear?";
  btn.classList.add("armed");
  btn.setAttribute("aria-label", `Really clear ${n} card(s)? The worklist is kept`);
  $("clear-cancel").hidden = false;
  setStatus(`Press “Really clear?” to remove ${n} card(s) from this page, or Cancel. The worklist is kept.`);
  clearTimeout(clearTimer);
  clearTimer = setTimeout(disarmClear, 10_000);
}

function disarmClear() {
  clearArmed = false;
  clearTimeout(clearTimer);
  const btn = $("clear");
  btn.textContent = "Clear cards";
  btn.classList.remove("armed");
  btn.removeAttribute("aria-label");
  $("clear-cancel").hidden = true;
}

function setup() {
  const dz = $("dropzone"), input = $("file-input");
  dz.addEventListener("click", () => input.click());
  dz.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => { handleFiles(input.files); input.value = ""; });
  dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("drag"); });
  dz.addEventListener("dragleave", () => dz.classList.remove("drag"));
  dz.addEventListener("drop", (e) => { e.preventDefault(); dz.classList.remove("drag"); handleFiles(e.dataTransfer.files); });
  applyTheme();
  $("theme-toggle").addEventListener("click", toggleTheme);
  $("download-csv").addEventListener("click", downloadCsv);
  $("worklist").addEventListener("click", (e) => {  // a click on a row (not on its controls) shows its card
    const tr = e.target.closest("tr.has-card");
    if (tr && !e.target.closest("a, button, input, textarea, select, label")) selectCard(tr.dataset.card);
  });
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("login").hidden = true;
    loadModel();
  });
  // The cards are this tab's; the worklist is the server's and stays. Two steps: "Clear cards", then
  // "Really clear?" (or Cancel, Escape, or 10 seconds, which leave the cards as they are).
  $("clear").addEventListener("click", () => {
    const n = $("cards").children.length;
    if (n && !clearArmed) { armClear(n); return; }
    disarmClear();
    state.results = []; state.cards = {}; $("cards").replaceChildren(); renderWorklist();
    setStatus(n ? `Cleared ${n} card(s); the worklist is kept.` : "");
  });
  $("clear-cancel").addEventListener("click", () => { disarmClear(); setStatus("The cards were kept."); $("clear").focus(); });
  for (const id of ["clear", "clear-cancel"]) {
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "Escape" && clearArmed) { disarmClear(); setStatus("The cards were kept."); $("clear").focus(); }
    });
  }
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
