// The stored worklist (GET api/v1/worklist): filters and sort (flagged only, a borderline band around the
// threshold, not yet reviewed, scope, a flagged film's cause; by risk or by time), thumbnails, readers' reviews, and the CSV download. The
// rows are the server's, in its order, each with its `rank` (the server's ranking among the listed rows), its score
// and threshold on 0-100 and its decision in words; the CSV is the server's too (GET api/v1/worklist.csv, the same
// filters and order). A result the DICOM node forwarded says where its SR and SC stand on their way to the PACS
// (sent, pending with its tries and last error, failed with the reason: words, not colour alone), and a result whose
// SOP Instance UID arrived before with other pixels carries a "UID conflict" tag.
// A study's films come together under one header, a file sent again is one row marked "Sent 2 times", and a
// review names its reader (studies.js).
import {
  $, DEFAULT_BAND, T, api, borderlineBand, causeLine, decisionText, decisionWords, el, fmtScore, isBorderline, rowLabel,
  score100, setStatus, state,
} from "./app.js";
import { selectCard } from "./cards.js";
import { inStudy, reviewedText, studyHead, timesTag } from "./studies.js";

const FILTERS_KEY = "pneumoscan-worklist-filters";
//: Rows listed in the table (and in the CSV, which holds what the table lists).
const LIST_ROWS = 200;

function readFilters() {
  return { flagged: $("f-flagged").checked, borderline: $("f-borderline").checked,
           band: borderlineBand(), unreviewed: $("f-unreviewed").checked,
           scope: $("f-scope").value, cause: $("f-cause").value, order: $("f-order").value };
}

function restoreFilters() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(FILTERS_KEY) || "{}") || {}; } catch (_) { /* defaults */ }
  $("f-flagged").checked = Boolean(saved.flagged);
  $("f-borderline").checked = Boolean(saved.borderline);
  $("f-band").value = String(saved.band || DEFAULT_BAND);
  $("f-unreviewed").checked = Boolean(saved.unreviewed);
  if (["", "true", "false"].includes(saved.scope)) $("f-scope").value = saved.scope;
  if (["", "BACTERIAL", "VIRAL"].includes(saved.cause)) $("f-cause").value = saved.cause;
  if (["risk", "newest", "oldest"].includes(saved.order)) $("f-order").value = saved.order;
}

// The query of the filters and order on screen: the same for the table (api/v1/worklist) and the CSV
// (api/v1/worklist.csv).
function worklistQuery(f) {
  const q = new URLSearchParams({ limit: String(LIST_ROWS), order: f.order });
  if (f.flagged) q.set("flagged", "true");
  if (f.borderline) q.set("borderline", String(f.band));
  if (f.unreviewed) q.set("unreviewed", "true");
  if (f.scope) q.set("in_scope", f.scope);
  if (f.cause) q.set("cause", f.cause);  // only flagged results with that pattern (the server's filter)
  return q.toString();
}

// The band in words, on the 0-100 score: "within ±10 of the threshold (40.0–60.0)".
export function updateBandHint() {
  const f = readFilters();
  const m = state.model;
  $("f-band-hint").textContent = m && typeof m.threshold === "number"
    ? T("filterBandHint", { band: f.band, low: score100(Math.max(0, m.threshold - f.band / 100)), high: score100(Math.min(1, m.threshold + f.band / 100)) })
    : T("filterBandHintNoModel", { band: f.band });
  $("f-band").disabled = !f.borderline;
  $("f-cause-note").hidden = !f.cause;  // what a cause is worth, while the list is filtered by it
  const sub = { risk: "worklistSub", newest: "worklistSubNewest", oldest: "worklistSubOldest" }[f.order];
  $("worklist-sub").textContent = T(sub || "worklistSub");
}

function onFiltersChanged() {
  const f = readFilters();
  try { localStorage.setItem(FILTERS_KEY, JSON.stringify(f)); } catch (_) { /* this page only */ }
  updateBandHint();
  refreshWorklist();
}

export function setupWorklist() {
  restoreFilters();
  updateBandHint();
  for (const id of ["f-flagged", "f-borderline", "f-unreviewed", "f-scope", "f-cause", "f-order", "f-band"]) {
    $(id).addEventListener("change", onFiltersChanged);
  }
  $("download-csv").addEventListener("click", downloadCsv);
  $("worklist").addEventListener("click", (e) => {  // a click on a row (not on its controls) shows its card
    const tr = e.target.closest("tr.has-card");
    if (tr && !e.target.closest("a, button, input, textarea, select, label")) selectCard(tr.dataset.card);
  });
}

// The stored worklist with the chosen filters and order. A later request's answer never overwrites a newer one's.
export async function refreshWorklist() {
  const seq = ++state.fetchSeq;
  let body = null;
  try {
    const res = await api("api/v1/worklist?" + worklistQuery(readFilters()));
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

// A row's kind, from what the server says: not read (ok false), not assessed (in_scope false), or scored.
function isError(r) { return !r.ok; }
function notAssessed(r) { return Boolean(r.ok) && r.in_scope === false; }

function rowDetails(r) {
  const c = r.context || {};
  const bits = [];
  if (state.names[r.id] && c.patient_id) bits.push(T("contextPatient", { v: c.patient_id }));
  if (state.names[r.id] && c.accession) bits.push(T("contextAcc", { v: c.accession }));
  if (c.age) bits.push(c.age);
  if (c.sex) bits.push(c.sex);
  if (c.view) bits.push(c.view);
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
    group.append(el("div", { class: "verdict " + current, text: reviewedText(r.review) }));  // who, too
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

// The server's message in a failed answer (its `detail`), else the HTTP status.
async function problem(res) {
  let msg = `HTTP ${res.status}`;
  try { const b = await res.json(); if (b && b.detail) msg = typeof b.detail === "string" ? b.detail : JSON.stringify(b.detail); } catch (_) { /* not JSON */ }
  return msg;
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
    setStatus(T("reviewNotSaved", { error: await problem(res) }));
    return;
  }
  setStatus(T("reviewSaved", { verdict: verdict === "agree" ? T("reviewAgreed") : T("reviewDisagreed"), name: rowLabel(r) }));
  await refreshWorklist();
  const again = document.querySelector(`button[data-result="${r.id}"][data-verdict="${verdict}"]`);
  if (again) again.focus();  // keyboard users stay where they were
}

// The decision cell: the server's words; a tag when the score lies in the borderline band; a flagged film's cause
// (with its caveat as the line's title: the card and the report show it in full).
function decisionCell(r) {
  if (isError(r)) {
    return el("td", {}, [el("span", { class: "err", text: decisionText(r) }), el("div", { class: "why", text: r.error })]);
  }
  if (notAssessed(r)) {
    return el("td", {}, [el("span", { class: "decision na", text: r.decision_text || decisionWords("OUT_OF_SCOPE"), title: r.scope_reason || "" }),
                         el("div", { class: "why", text: r.scope_reason || "" })]);
  }
  const band = readFilters().band, borderline = isBorderline(r, band);  // not flagged, but near: not green
  const kind = r.positive ? "pos" : borderline ? "borderline" : "neg";
  const td = el("td", {}, [el("span", { class: "decision " + kind, text: decisionText(r) })]);
  if (borderline) {
    td.append(" ", el("span", { class: "tag borderline", text: T("borderlineTag"), title: T("borderlineTagTitle", { band }) }));
  }
  const cause = causeLine(r, "causeRow");
  if (cause) td.append(el("div", { class: "cause", text: cause, title: T("causeCaveat") }));
  return td;
}

// The score on 0-100, with where it was calibrated as its title (the server's words; none for old rows).
function scoreCell(r) {
  const td = el("td", { class: "num", text: fmtScore(r.score) });
  if (r.score_calibration && r.score !== null && r.score !== undefined) {
    td.title = T("scoreCalibration", { calibration: r.score_calibration });
    td.classList.add("calibrated");
  }
  return td;
}

// Where the result's SR and SC stand on their way to the PACS (the DICOM node's outbox, GET api/v1/worklist's
// `forward`); null when it was not forwarded.
function forwardLine(r) {
  const f = r.forward;
  if (!f) return null;
  let text;
  if (f.state === "delivered") text = T("forwardDelivered");
  else if (f.state === "failed") text = T("forwardFailed", { reason: f.last_error || T("forwardNoReason") });
  else if (f.attempts) text = T("forwardPendingTries", { n: f.attempts, error: f.last_error || T("forwardNoReason") });
  else text = T("forwardPending");
  const line = el("div", { class: "forward " + (f.state === "delivered" ? "sent" : f.state), text });
  if (f.target) line.title = T("forwardTarget", { target: f.target });
  return line;
}

function worklistRow(r) {
  const label = rowLabel(r);
  const cardId = state.cards[r.id];
  const linked = cardId && document.getElementById(cardId);
  const name = linked ? el("a", { href: "#" + cardId, text: label, class: "card-link", title: T("cardLinkTitle") }) : el("span", { text: label });
  if (linked) name.addEventListener("click", (e) => { e.preventDefault(); selectCard(cardId); });
  const file = el("td", { class: "file" }, [name, el("div", { class: "why", text: rowDetails(r) })]);
  if (r.uid_conflict) file.append(el("span", { class: "tag conflict", text: T("uidConflict"), title: T("uidConflictTitle") }));
  const times = timesTag(r);  // the same file sent again: one row, counted
  if (times) file.append(times);
  const forward = forwardLine(r);
  if (forward) file.append(forward);
  const cls = isError(r) ? "bad" : notAssessed(r) ? "oos" : "";
  const tr = el("tr", cls ? { class: cls } : {}, [
    el("td", { class: "num", text: r.rank ? String(r.rank) : "–" }), thumbCell(r, label), file,
    scoreCell(r), decisionCell(r), reviewCell(r)]);
  if (linked) { tr.dataset.card = cardId; tr.classList.add("has-card"); }
  if (inStudy(r)) tr.classList.add("in-study");
  return tr;
}

// The rows as the server listed them: its order, its ranks.
export function renderWorklist() {
  const tbody = $("worklist").querySelector("tbody");
  tbody.replaceChildren();
  const rows = state.worklist;
  if (!rows.length) {
    const f = readFilters();
    const filtered = f.flagged || f.borderline || f.unreviewed || f.scope || f.cause;
    tbody.append(el("tr", { class: "empty" }, [el("td", { colspan: "6", text: filtered ? T("noMatch") : T("noImages") })]));
  }
  rows.forEach((r, i) => {  // a study's films come together (the server's order), under one header
    const head = studyHead(r, rows[i - 1]);
    if (head) tbody.append(head);
    tbody.append(worklistRow(r));
  });
  $("worklist-note").textContent = state.total > rows.length ? T("showingOf", { n: rows.length, total: state.total }) : "";
  $("download-csv").disabled = !rows.length;
}

// The file's name as the server gives it (Content-Disposition), else a plain one.
function attachmentName(res) {
  const m = /filename="?([^";]+)"?/i.exec(res.headers.get("Content-Disposition") || "");
  return m ? m[1] : "pneumoscan-worklist.csv";
}

// The CSV is the server's (GET api/v1/worklist.csv): the rows on screen (the same filters and order), its
// columns, ranks and formula-safe text; saved as a file.
async function downloadCsv() {
  let res;
  try {
    res = await api("api/v1/worklist.csv?" + worklistQuery(readFilters()));
  } catch (e) {
    setStatus(T("csvFailed", { error: e.message }));
    return;
  }
  if (!res.ok) {
    if (res.status !== 401) setStatus(T("csvFailed", { error: await problem(res) }));
    return;
  }
  const url = URL.createObjectURL(await res.blob());
  const a = el("a", { href: url, download: attachmentName(res), hidden: "" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
