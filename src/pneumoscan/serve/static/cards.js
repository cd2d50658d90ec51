// Result cards (one per image, in the server's risk order), the stored recent results shown as cards on load, and
// the film viewer (viewer.js) opened from a card's film. A card's result is an API entry (POST api/v1/predict) or a
// stored row (GET api/v1/worklist): the same shape (the server's score, score_threshold, decision_text, positive,
// context, ...), with the page's own `id`.
import {
  $, STORED_HOURS, T, api, borderlineBand, causeLine, decisionText, el, fmtScore, inScope, isBorderline, rowLabel, state,
} from "./app.js";
import { keepViewerHeatmap, printReport } from "./report.js";
import { PneumoscanViewer } from "./viewer.js";

//: At most this many stored results are shown as cards when the page loads (the riskiest of the last STORED_HOURS).
const STORED_MAX = 60;
//: The worklist's largest page (pneumoscan.store.MAX_LIMIT): the risk order is read in pages of this many rows.
const PAGE_ROWS = 1000;
const MAX_PAGES = 20;
let orderSeq = 0;  // the latest orderCards() call: an earlier call's answer never overwrites a later one's

// Who and what a DICOM image is (patient ID, accession, age, view), under its name; nothing for JPEG or PNG.
// The patient's name is never sent by the server, so it is never shown.
function cardContext(r) {
  const c = r.context || {};
  const bits = [c.patient_id && T("contextPatient", { v: c.patient_id }), c.accession && T("contextAcc", { v: c.accession }),
                c.age && T("contextAge", { v: c.age }), c.view && T("contextView", { v: c.view })].filter(Boolean);
  return bits.length ? [el("div", { class: "context help", text: bits.join(" · ") })] : [];
}

// The film: a button that opens the viewer (click, Enter or Space); a placeholder when no picture is stored.
function cardFigure(r, alt) {
  const fig = el("figure", { class: "film" });
  if (!r.image_png) {
    fig.append(el("div", { class: "no-film", text: T("noThumbnail") }));
    return [fig, null];
  }
  const img = el("img", { src: r.image_png, alt });
  const open = el("button", { type: "button", class: "film-open", "aria-label": T("openViewer", { name: r.filename }),
                              "data-result": String(r.id) }, [img]);
  open.addEventListener("click", () => openViewer(r));
  fig.append(open);
  return [fig, img];
}

// An upload the server analysed but could not store (`worklist_error`): said on its card, where the reader looks,
// since the result will be in no worklist, CSV or audit trail, and gone on reload.
function notSavedNote(r) {
  if (!r.worklist_error) return [];
  const help = r.ok ? [el("p", { class: "help", text: T("notSavedHelp") })] : [];  // a result worth keeping
  return [el("div", { class: "not-saved", role: "alert" }, [el("strong", { text: T("notSaved", { error: r.worklist_error }) }), ...help])];
}

function storedNote(r) {
  if (!r.stored) return [];
  const when = new Date(r.created);
  return [el("p", { class: "help stored", text: T("storedCard", { when: isNaN(when) ? r.created : when.toLocaleString() }) })];
}

function printButton(r) {
  const btn = el("button", { type: "button", class: "print-report", text: T("printReport"),
                             "aria-label": T("printReportLabel", { name: r.filename }) });
  btn.addEventListener("click", () => printReport(r));
  return btn;
}

// A flagged film's cause (bacterial or viral pattern), under its decision, with what it is worth beside it;
// nothing for a film without one.
function cardCause(r) {
  const line = causeLine(r);
  if (!line) return [];
  return [el("div", { class: "cause", text: line }), el("p", { class: "help cause-caveat", text: T("causeCaveat") })];
}

// The decision in the server's words at its threshold. Within the borderline band (the worklist's band: app.js's
// isBorderline) a film that is not flagged is not shown green: its decision is marked borderline, with a tag and a
// line that say so (a flagged one keeps its red, with the tag). Rebuilt when the band changes (markBorderline).
function decisionRow(r) {
  const band = borderlineBand(), near = isBorderline(r, band);
  const kind = r.positive ? "pos" : near ? "borderline" : "neg";
  const row = el("div", { class: "decision-row" }, [el("span", { class: "decision " + kind, text: decisionText(r) })]);
  if (near) row.append(" ", el("span", { class: "tag borderline", text: T("borderlineTag"), title: T("borderlineTagTitle", { band }) }));
  row.append(el("span", { class: "help", text: T("atThreshold", { threshold: fmtScore(r.score_threshold) }) }));
  const note = near ? [el("p", { class: "borderline-note", text: T("borderlineNote", { band, threshold: fmtScore(r.score_threshold) }) })] : [];
  return [row, ...note];
}

// The cards follow the worklist's band: a change of it marks them again.
export function markBorderline() {
  for (const r of state.results) {
    const card = document.getElementById("card-" + r.id), box = card && card.querySelector(".verdict-box");
    if (!box) continue;
    box.replaceChildren(...decisionRow(r));
    card.classList.toggle("borderline", isBorderline(r));
  }
}
document.addEventListener("change", (e) => { if (e.target && e.target.id === "f-band") markBorderline(); });

// A film the scope gate scored although it is unlike the training films: the server's caution (scope_caution), in
// amber under the decision; nothing otherwise.
function cautionLine(r) {
  return r.scope_caution ? [el("p", { class: "caution", role: "note", text: r.scope_caution })] : [];
}

// The score and threshold are the server's (0-100); the bar shows the score with a mark at the threshold.
function scoredBody(r, img) {
  const body = el("div", { class: "body" });
  body.append(el("div", { class: "name", text: r.filename }), ...cardContext(r), ...notSavedNote(r));
  body.append(el("div", { class: "prob", title: T("scoreTitle") }, [
    T("scoreOf", { score: fmtScore(r.score) }), el("span", { class: "scale", text: " " + T("scoreScale") })]));
  // Where the score was calibrated (the server's words), under it; nothing for a row stored before they were kept.
  if (r.score_calibration) body.append(el("p", { class: "help calibration", text: T("scoreCalibration", { calibration: r.score_calibration }) }));
  const bar = el("div", { class: "bar", "aria-hidden": "true" });
  const fill = el("span"); fill.style.width = fmtScore(r.score) + "%";
  const mark = el("i"); mark.style.left = fmtScore(r.score_threshold) + "%";
  bar.append(fill, mark);
  body.append(bar, el("div", { class: "verdict-box" }, decisionRow(r)), ...cautionLine(r), ...cardCause(r));
  // What the result does not say, and where the model is weakest (MODEL_CARD.md, "Known failure modes").
  body.append(el("p", { class: "help limits", text: T("limits") }), ...storedNote(r));
  const tools = el("div", { class: "card-tools" });
  // What the heatmap is, shown with it.
  const note = el("p", { class: "help heat-note", text: T("heatmapNote"), hidden: "" });
  if (r.heatmap_png && img) tools.append(heatmapToggle(r, img, note));
  tools.append(printButton(r));
  body.append(note, tools);
  return body;
}

function heatmapToggle(r, img, note) {
  const btn = el("button", { type: "button", "aria-pressed": "false", class: "toggle", text: T("showHeatmap") });
  btn.addEventListener("click", () => {
    const on = btn.getAttribute("aria-pressed") !== "true";
    btn.setAttribute("aria-pressed", String(on));
    btn.textContent = on ? T("hideHeatmap") : T("showHeatmap");
    img.src = on ? r.heatmap_png : r.image_png;
    img.alt = on ? T("heatmapAlt", { name: r.filename }) : T("filmAlt", { name: r.filename });
    note.hidden = !on;
  });
  return btn;
}

function notAssessedBody(r) {
  // No risk figure, bar or decision: the model was not built for this image, so its output means nothing here.
  const body = el("div", { class: "body" });
  body.append(el("div", { class: "name", text: r.filename }), ...cardContext(r), ...notSavedNote(r));
  body.append(el("div", { class: "not-assessed", text: T("notAssessed") }));
  body.append(el("div", { class: "reason" }, [el("span", { class: "label", text: T("reasonLabel") }), r.scope_reason || T("reasonDefault")]));
  body.append(el("p", { class: "help", text: T("notAssessedHelp") }), ...storedNote(r));
  body.append(el("div", { class: "card-tools" }, [printButton(r)]));
  return body;
}

// A result's card, appended (orderCards() puts it in its place). data-decision is the server's decision ("" for a
// file that could not be read); data-probability only where the model applies (a risk).
export function addCard(r) {
  state.results.push(r);
  if (r.worklist_id != null) state.cards[r.worklist_id] = "card-" + r.id;
  const kind = !r.ok ? " error" : !inScope(r) ? " oos" : r.positive ? " pos" : "";
  const near = isBorderline(r) ? " borderline" : "";
  const card = el("article", { class: "card" + kind + near + (r.stored ? " stored" : "") + (r.worklist_error ? " unsaved" : ""), id: "card-" + r.id,
                               "aria-label": r.filename, tabindex: "-1", "data-decision": r.decision || "" });
  if (inScope(r)) card.dataset.probability = String(r.probability);
  if (r.ok && !inScope(r)) {
    card.append(cardFigure(r, T("filmAltOos", { name: r.filename }))[0], notAssessedBody(r));
  } else if (r.ok) {
    const [fig, img] = cardFigure(r, T("filmAlt", { name: r.filename }));
    card.append(fig, scoredBody(r, img));
  } else {
    const body = el("div", { class: "body" });
    body.append(el("div", { class: "name", text: r.filename }),
                el("div", { class: "err", role: "alert", text: T("couldNotAnalyse", { error: r.error }) }),
                ...notSavedNote(r), ...storedNote(r));
    card.append(body);
  }
  $("cards").append(card);
}

// The cards go; the worklist (the server's) stays. Returns how many there were.
export function clearCards() {
  const n = $("cards").children.length;
  state.results = []; state.cards = {}; $("cards").replaceChildren(); $("cards-note").textContent = "";
  orderSeq += 1;  // an ordering on its way is for cards that are gone
  return n;
}

// The worklist ids in the server's risk order (GET api/v1/worklist?order=risk), from the cards' window on: until
// every card's row is found or the list ends. null when the server cannot say.
async function serverOrder(wanted) {
  const ids = [];
  const missing = new Set(wanted);
  for (let page = 0; page < MAX_PAGES && missing.size; page++) {
    const q = new URLSearchParams({ order: "risk", since: state.since, thumbnails: "false", limit: String(PAGE_ROWS),
                                    offset: String(page * PAGE_ROWS) });
    let body;
    try {
      const res = await api("api/v1/worklist?" + q.toString());
      if (!res.ok) return null;
      body = await res.json();
    } catch (_) { return null; }
    const rows = body.results || [];
    for (const row of rows) { ids.push(row.id); missing.delete(row.id); }
    if (rows.length < PAGE_ROWS || (page + 1) * PAGE_ROWS >= body.total) break;
  }
  return ids;
}

// The cards in the server's risk order: each stored result at its row's place in the worklist's order=risk (scored
// images by score, highest first; then those not assessed; then files not read); results the server did not
// store (no worklist_id) after them, in the order they came.

export async function orderCards() {
  const seq = ++orderSeq;
  const wanted = state.results.filter((r) => r.worklist_id != null).map((r) => r.worklist_id);
  const ids = wanted.length ? await serverOrder(wanted) : [];
  if (seq !== orderSeq || !ids) return;
  const place = new Map(ids.map((id, i) => [id, i]));
  const at = (r) => (r.worklist_id != null && place.has(r.worklist_id) ? place.get(r.worklist_id) : Infinity);
  const ordered = state.results.map((r, i) => [at(r), i, r]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((x) => x[2]);
  const box = $("cards");
  ordered.forEach((r, i) => {
    const card = document.getElementById("card-" + r.id);
    if (card && box.children[i] !== card) box.insertBefore(card, box.children[i] || null);
  });
}

// The results of the cards, in the cards' order (the server's risk order).
function shownResults() {
  const byCard = new Map(state.results.map((r) => ["card-" + r.id, r]));
  return [...$("cards").children].map((card) => byCard.get(card.id)).filter(Boolean);
}

// A worklist row's card: scrolled into view, outlined and focused (keyboard users land on it), aria-current.
export function selectCard(cardId) {
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

// A stored row as a card's result: the row as the server gives it, with the page's id, a name, and its thumbnail
// standing in for the film (the server keeps no films).
function storedCard(row) {
  return { ...row, id: ++state.seq, worklist_id: row.id, stored: true, filename: rowLabel(row),
           image_png: row.thumbnail || "" };
}

// On load: the riskiest stored results of the last STORED_HOURS as cards (results already on the page are not
// repeated). Returns how many were added.
export async function loadStoredCards() {
  if (state.storedLoaded) return 0;
  const q = new URLSearchParams({ order: "risk", limit: String(STORED_MAX), since: state.since });
  let body;
  try {
    const res = await api("api/v1/worklist?" + q.toString());
    if (!res.ok) return 0;
    body = await res.json();
  } catch (_) { return 0; }
  state.storedLoaded = true;
  let n = 0;
  for (const row of body.results || []) {
    if (state.cards[row.id]) continue;
    addCard(storedCard(row));
    n += 1;
  }
  await orderCards();
  if (n) $("cards-note").textContent = T("storedCardsNote", { n, hours: STORED_HOURS });
  return n;
}

// The viewer gets the page's results with a film, in the cards' order; what it computes (a heatmap) comes back on
// close.
function viewerCase(r) {
  return { id: r.id, filename: r.filename, ok: r.ok, error: r.error, probability: r.probability, score: r.score,
           threshold: r.threshold, score_threshold: r.score_threshold, score_calibration: r.score_calibration, decision: r.decision,
           decision_text: r.decision_text, positive: r.positive, in_scope: r.in_scope, scope_reason: r.scope_reason,
           scope_caution: r.scope_caution || "", borderline: isBorderline(r), band: borderlineBand(),
           cause: r.cause, cause_text: r.cause_text, cause_score: r.cause_score, cause_threshold: r.cause_threshold,
           image_png: r.image_png, heatmap_png: r.heatmap_png, heatmap_map: r.heatmap_map, file: r.file,
           context: r.context || {}, worklist_id: r.worklist_id };
}

function openViewer(r) {
  const shown = shownResults().filter((x) => x.image_png);
  const cases = shown.map(viewerCase);
  const index = Math.max(0, shown.indexOf(r));
  const opener = document.activeElement;
  PneumoscanViewer.open(cases, index, {
    api,
    onClose: (current) => {
      cases.forEach((c, i) => {  // keep what the viewer computed for the report
        if (c.heatmap_png && !shown[i].heatmap_png) shown[i].heatmap_png = c.heatmap_png;
        if (c.heatmap_map && !shown[i].heatmap_map) { shown[i].heatmap_map = c.heatmap_map; keepViewerHeatmap(shown[i]); }
      });
      const last = (current && shown.find((x) => x.id === current.id)) || r;
      const back = document.querySelector(`button.film-open[data-result="${last.id}"]`) || opener;
      if (back && back.focus) back.focus();
    },
  });
}
