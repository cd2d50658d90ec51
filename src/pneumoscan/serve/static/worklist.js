"use strict";
// The stored worklist (GET api/v1/worklist): filters and sort (flagged only, a borderline band around the
// threshold, not yet reviewed, scope; by score or by time), thumbnails, readers' reviews, and the CSV download.
// Uses app.js's helpers (state, el, T, api, score100, decisionWords, setStatus) and cards.js's selectCard.

const FILTERS_KEY = "pneumoscan-worklist-filters";
const DEFAULT_BAND = 10;

function readFilters() {
  const band = Math.round(Number($("f-band").value));
  return { flagged: $("f-flagged").checked, borderline: $("f-borderline").checked,
           band: band >= 1 && band <= 50 ? band : DEFAULT_BAND, unreviewed: $("f-unreviewed").checked,
           scope: $("f-scope").value, order: $("f-order").value };
}

function restoreFilters() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(FILTERS_KEY) || "{}") || {}; } catch (_) { /* defaults */ }
  $("f-flagged").checked = Boolean(saved.flagged);
  $("f-borderline").checked = Boolean(saved.borderline);
  $("f-band").value = String(saved.band || DEFAULT_BAND);
  $("f-unreviewed").checked = Boolean(saved.unreviewed);
  if (["", "true", "false"].includes(saved.scope)) $("f-scope").value = saved.scope;
  if (["risk", "newest", "oldest"].includes(saved.order)) $("f-order").value = saved.order;
}

function worklistQuery(f) {
  const q = new URLSearchParams({ limit: "200", order: f.order });
  if (f.flagged) q.set("flagged", "true");
  if (f.borderline) q.set("borderline", String(f.band));
  if (f.unreviewed) q.set("unreviewed", "true");
  if (f.scope) q.set("in_scope", f.scope);
  return "api/v1/worklist?" + q.toString();
}

// The band in words, on the 0-100 score: "within ±10 of the threshold (40.0–60.0)".
function updateBandHint() {
  const f = readFilters();
  const m = state.model;
  $("f-band-hint").textContent = m && typeof m.threshold === "number"
    ? T("filterBandHint", { band: f.band, low: score100(Math.max(0, m.threshold - f.band / 100)), high: score100(Math.min(1, m.threshold + f.band / 100)) })
    : T("filterBandHintNoModel", { band: f.band });
  $("f-band").disabled = !f.borderline;
  const sub = { risk: "worklistSub", newest: "worklistSubNewest", oldest: "worklistSubOldest" }[f.order];
  $("worklist-sub").textContent = T(sub || "worklistSub");
}

function onFiltersChanged() {
  const f = readFilters();
  try { localStorage.setItem(FILTERS_KEY, JSON.stringify(f)); } catch (_) { /* this page only */ }
  updateBandHint();
  refreshWorklist();
}

function setupWorklist() {
  restoreFilters();
  updateBandHint();
  for (const id of ["f-flagged", "f-borderline", "f-unreviewed", "f-scope", "f-order", "f-band"]) {
    $(id).addEventListener("change", onFiltersChanged);
  }
  $("download-csv").addEventListener("click", downloadCsv);
  $("worklist").addEventListener("click", (e) => {  // a click on a row (not on its controls) shows its card
    const tr = e.target.closest("tr.has-card");
    if (tr && !e.target.closest("a, button, input, textarea, select, label")) selectCard(tr.dataset.card);
  });
}

// The stored worklist with the chosen filters and order. A later request's answer never overwrites a newer one's.
async function refreshWorklist() {
  const seq = ++state.fetchSeq;
  let body = null;
  try {
    const res = await api(worklistQuery(readFilters()));
    if (!res.ok) {
      if (res.status !== 401 && seq === state.fetchSeq) $("worklist-note").textContent = T("worklistUnavailable", { status: res.status });
      return;
    }
    body = await res.json();
  } catch (e) {
    if (seq === state.fetchSeq) $("worklist-note").textContent = T("worklistUnavailableError", { error: e.message });
    return;
  }
  if (seq !== state.fetchSeq) return;
  state.worklist = body.results || [];
  state.disclaimer = body.disclaimer || state.disclaimer;
  state.total = body.total || state.worklist.length;
  renderWorklist();
}

function isError(r) { return Boolean(r.error); }
function notAssessed(r) { return !isError(r) && r.in_scope === false; }
function scored(r) { return !isError(r) && !notAssessed(r) && r.probability !== null && r.probability !== undefined; }

// How a row is named: the file's name when it was uploaded from this tab, else its DICOM identifiers, else its id.
function rowLabel(r) {
  if (state.names[r.id]) return state.names[r.id];
  const ids = [r.patient_id && T("contextPatient", { v: r.patient_id }), r.accession && T("contextAcc", { v: r.accession })].filter(Boolean);
  return ids.length ? ids.join(" · ") : T("resultN", { id: r.id });
}

function rowDetails(r) {
  const bits = [];
  if (state.names[r.id] && r.patient_id) bits.push(T("contextPatient", { v: r.patient_id }));
  if (state.names[r.id] && r.accession) bits.push(T("contextAcc", { v: r.accession }));
  if (r.age) bits.push(r.age);
  if (r.sex) bits.push(r.sex);
  if (r.view) bits.push(r.view);
  const when = new Date(r.created);
  bits.push(isNaN(when) ? r.created : when.toLocaleString());
  return bits.join(" · ");
}

function thumbCell(r, label) {
  const td = el("td", { class: "thumb" });
  if (r.thumbnail) td.append(el("img", { src: r.thumbnail, alt: T("thumbAlt", { name: label }), loading: "lazy", width: "48", height: "48" }));
  else td.append(el("span", { class: "thumb-none", "aria-hidden": "true" }));
  return td;
}

function reviewCell(r) {
  const td = el("td", { class: "review" });
  if (isError(r)) { td.textContent = "–"; return td; }
  const label = rowLabel(r);
  const current = r.review ? r.review.verdict : "";
  const group = el("div", { role: "group", "aria-label": T("reviewOf", { name: label }), class: "review-box" });
  if (r.review) {
    group.append(el("div", { class: "verdict " + current,
      text: (current === "agree" ? T("agreed") : T("disagreed")) + (r.review.note ? ": " + r.review.note : "") }));
  }
  const note = el("input", { type: "text", class: "note", maxlength: "2000", placeholder: T("notePlaceholder"),
                             "aria-label": T("noteLabel", { name: label }) });
  note.value = r.review ? r.review.note : "";
  const buttons = el("div", { class: "review-buttons" });
  for (const [verdict, key] of [["agree", "agree"], ["disagree", "disagree"]]) {
    const btn = el("button", { type: "button", class: "verdict-btn " + verdict, text: T(key),
                               "aria-pressed": String(current === verdict), "data-result": String(r.id),
                               "data-verdict": verdict, "aria-label": T("verdictLabel", { verdict: T(key), name: label }) });
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
    setStatus(T("reviewNotSaved", { error: e.message }));
    return;
  }
  if (!res.ok) {
    let msg = `HTTP ${res.status}`;
    try { const b = await res.json(); if (b && b.detail) msg = typeof b.detail === "string" ? b.detail : JSON.stringify(b.detail); } catch (_) { /* not JSON */ }
    setStatus(T("reviewNotSaved", { error: msg }));
    return;
  }
  setStatus(T("reviewSaved", { verdict: verdict === "agree" ? T("reviewAgreed") : T("reviewDisagreed"), name: rowLabel(r) }));
  await refreshWorklist();
  const again = document.querySelector(`button[data-result="${r.id}"][data-verdict="${verdict}"]`);
  if (again) again.focus();  // keyboard users stay where they were
}

// The decision cell: the one wording; a tag when the score lies in the borderline band.
function decisionCell(r) {
  if (isError(r)) return el("td", {}, [el("span", { class: "err", text: T("notRead") }), el("div", { class: "why", text: r.error })]);
  if (notAssessed(r)) {
    return el("td", {}, [el("span", { class: "decision na", text: decisionWords("OUT_OF_SCOPE"), title: r.scope_reason || "" }),
                         el("div", { class: "why", text: r.scope_reason || "" })]);
  }
  const td = el("td", {}, [el("span", { class: "decision " + (r.flagged ? "pos" : "neg"), text: decisionWords(r.decision) })]);
  const band = readFilters().band;
  if (typeof r.threshold === "number" && Math.abs(r.probability - r.threshold) <= band / 100 + 1e-9) {
    td.append(" ", el("span", { class: "tag borderline", text: T("borderlineTag"), title: T("borderlineTagTitle", { band }) }));
  }
  return td;
}

function worklistRow(r, rank) {
  const label = rowLabel(r);
  const cardId = state.cards[r.id];
  const linked = cardId && document.getElementById(cardId);
  const name = linked ? el("a", { href: "#" + cardId, text: label, class: "card-link", title: T("cardLinkTitle") }) : el("span", { text: label });
  if (linked) name.addEventListener("click", (e) => { e.preventDefault(); selectCard(cardId); });
  const file = el("td", { class: "file" }, [name, el("div", { class: "why", text: rowDetails(r) })]);
  const cls = isError(r) ? "bad" : notAssessed(r) ? "oos" : "";
  const tr = el("tr", cls ? { class: cls } : {}, [
    el("td", { class: "num", text: rank ? String(rank) : "–" }), thumbCell(r, label), file,
    el("td", { class: "num", text: scored(r) ? score100(r.probability) : "–" }), decisionCell(r), reviewCell(r)]);
  if (linked) { tr.dataset.card = cardId; tr.classList.add("has-card"); }
  return tr;
}

// Rank: the row's place by score among the scored rows listed (whatever the sort).
function ranks(rows) {
  const order = rows.filter(scored).sort((a, b) => b.probability - a.probability || b.id - a.id);
  return new Map(order.map((r, i) => [r.id, i + 1]));
}

function renderWorklist() {
  const tbody = $("worklist").querySelector("tbody");
  tbody.replaceChildren();
  const rows = state.worklist;
  if (!rows.length) {
    const f = readFilters();
    const filtered = f.flagged || f.borderline || f.unreviewed || f.scope;
    tbody.append(el("tr", { class: "empty" }, [el("td", { colspan: "6", text: filtered ? T("noMatch") : T("noImages") })]));
  }
  const rankOf = ranks(rows);
  for (const r of rows) tbody.append(worklistRow(r, rankOf.get(r.id)));
  $("worklist-note").textContent = state.total > rows.length ? T("showingOf", { n: rows.length, total: state.total }) : "";
  $("download-csv").disabled = !rows.length;
}

function csvCell(v) {
  let s = v === undefined || v === null ? "" : String(v);
  // A text cell starting with = + - @ tab or CR would run as a formula in a spreadsheet (CSV injection).
  if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\n\r]/.test(s) ? '"' + s.replaceAll('"', '""') + '"' : s;
}

const CSV_COLUMNS = ["rank", "file", "probability", "decision", "decision_text", "score", "score_threshold", "in_scope",
  "scope_reason", "threshold", "model_name", "model_version", "error", "patient_id", "accession", "age", "view",
  "received", "review", "review_note", "exported_at", "disclaimer"];

// One CSV row per listed result (the filters and order on screen); the machine decision beside its words, the
// score and threshold on 0-100 as on the page, and on every row the model, the export time and the disclaimer.
function csvRow(r, rank, exportedAt) {
  const base = { rank: rank || "", file: rowLabel(r), decision: isError(r) ? "" : notAssessed(r) ? "OUT_OF_SCOPE" : r.decision,
    decision_text: decisionWords(isError(r) ? "" : notAssessed(r) ? "OUT_OF_SCOPE" : r.decision),
    in_scope: isError(r) ? "" : String(!notAssessed(r)), scope_reason: r.scope_reason || "",
    threshold: isError(r) ? "" : r.threshold, score_threshold: isError(r) || r.threshold == null ? "" : score100(r.threshold),
    model_name: r.model_name, model_version: r.model_version, error: r.error || "", patient_id: r.patient_id,
    accession: r.accession, age: r.age, view: r.view, received: r.created, review: r.review ? r.review.verdict : "",
    review_note: r.review ? r.review.note : "", exported_at: exportedAt, disclaimer: state.disclaimer || T("disclaimerLead") };
  // Not assessed: no rank and no probability (the model's output on such an image is not a risk).
  if (scored(r)) { base.probability = r.probability.toFixed(6); base.score = score100(r.probability); }
  return CSV_COLUMNS.map((c) => csvCell(base[c]));
}

function downloadCsv() {
  const exportedAt = new Date().toISOString();
  const rankOf = ranks(state.worklist);
  const lines = [CSV_COLUMNS.join(",")];
  for (const r of state.worklist) lines.push(csvRow(r, rankOf.get(r.id), exportedAt).join(","));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "pneumoscan-worklist.csv" });
  document.body.append(a); a.click(); a.remove();
}
