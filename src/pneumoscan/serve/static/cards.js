"use strict";
// Result cards (one per image, in the worklist's risk order), the stored recent results shown as cards on load,
// and the film viewer (viewer.js: window.PneumoscanViewer.open(cases, index, {onClose})) opened from a card's film.
// Uses app.js's helpers (state, el, T, score100, decisionWords, inScope).

//: Stored results shown as cards when the page loads: those received in the last STORED_HOURS, at most STORED_MAX.
const STORED_HOURS = 24;
const STORED_MAX = 60;

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

function storedNote(r) {
  if (!r.stored) return [];
  const when = new Date(r.created);
  return [el("p", { class: "help stored", text: T("storedCard", { when: isNaN(when) ? r.created : when.toLocaleString() }) })];
}

function printButton(r) {
  const btn = el("button", { type: "button", class: "print-report", text: T("printReport"),
                             "aria-label": T("printReportLabel", { name: r.filename }) });
  btn.addEventListener("click", () => printReport(r));  // report.js
  return btn;
}

function scoredBody(r, img) {
  const body = el("div", { class: "body" });
  body.append(el("div", { class: "name", text: r.filename }), ...cardContext(r));
  body.append(el("div", { class: "prob", title: T("scoreTitle") }, [
    T("scoreOf", { score: score100(r.probability) }), el("span", { class: "scale", text: " " + T("scoreScale") })]));
  const bar = el("div", { class: "bar", "aria-hidden": "true" });
  const fill = el("span"); fill.style.width = (100 * r.probability).toFixed(1) + "%";
  const mark = el("i"); mark.style.left = (100 * r.threshold).toFixed(1) + "%";
  bar.append(fill, mark);
  body.append(bar, el("div", {}, [
    el("span", { class: "decision " + (r.positive ? "pos" : "neg"), text: decisionWords(r.decision) }),
    el("span", { class: "help", text: T("atThreshold", { threshold: score100(r.threshold) }) })]));
  // What the result does not say, and where the model is weakest (MODEL_CARD.md, "Known failure modes").
  body.append(el("p", { class: "help limits", text: T("limits") }), ...storedNote(r));
  const tools = el("div", { class: "card-tools" });
  if (r.heatmap_png && img) tools.append(heatmapToggle(r, img));
  tools.append(printButton(r));
  body.append(tools);
  return body;
}

function heatmapToggle(r, img) {
  const btn = el("button", { type: "button", "aria-pressed": "false", class: "toggle", text: T("showHeatmap") });
  btn.addEventListener("click", () => {
    const on = btn.getAttribute("aria-pressed") !== "true";
    btn.setAttribute("aria-pressed", String(on));
    btn.textContent = on ? T("hideHeatmap") : T("showHeatmap");
    img.src = on ? r.heatmap_png : r.image_png;
    img.alt = on ? T("heatmapAlt", { name: r.filename }) : T("filmAlt", { name: r.filename });
  });
  return btn;
}

function notAssessedBody(r) {
  // No risk figure, bar or decision: the model was not built for this image, so its output means nothing here.
  const body = el("div", { class: "body" });
  body.append(el("div", { class: "name", text: r.filename }), ...cardContext(r));
  body.append(el("div", { class: "not-assessed", text: T("notAssessed") }));
  body.append(el("div", { class: "reason" }, [el("span", { class: "label", text: T("reasonLabel") }), r.scope_reason || T("reasonDefault")]));
  body.append(el("p", { class: "help", text: T("notAssessedHelp") }), ...storedNote(r));
  body.append(el("div", { class: "card-tools" }, [printButton(r)]));
  return body;
}

function addCard(r) {
  const kind = !r.ok ? " error" : !inScope(r) ? " oos" : r.positive ? " pos" : "";
  const card = el("article", { class: "card" + kind + (r.stored ? " stored" : ""), id: "card-" + r.id,
                               "aria-label": r.filename, tabindex: "-1", "data-decision": r.ok ? r.decision : "ERROR" });
  if (inScope(r)) card.dataset.probability = String(r.probability);  // a risk only where the model applies
  if (r.ok && !inScope(r)) {
    card.append(cardFigure(r, T("filmAltOos", { name: r.filename }))[0], notAssessedBody(r));
  } else if (r.ok) {
    const [fig, img] = cardFigure(r, T("filmAlt", { name: r.filename }));
    card.append(fig, scoredBody(r, img));
  } else {
    const body = el("div", { class: "body" });
    body.append(el("div", { class: "name", text: r.filename }),
                el("div", { class: "err", role: "alert", text: T("couldNotAnalyse", { error: r.error }) }), ...storedNote(r));
    card.append(body);
  }
  $("cards").append(card);  // orderCards() puts it in its place
}

// The cards in the worklist's order: scored images by probability, highest first; then those not assessed (out
// of scope); then unreadable files; the newest first among equals.
function cardGroup(r) { return !r.ok ? 2 : !inScope(r) ? 1 : 0; }

function riskOrder(results) {
  return results.slice().sort((a, b) =>
    cardGroup(a) - cardGroup(b) || (cardGroup(a) === 0 ? b.probability - a.probability : 0) ||
    String(b.created || "").localeCompare(String(a.created || "")) || b.id - a.id);
}

function orderCards() {
  const box = $("cards");
  riskOrder(state.results).forEach((r, i) => {
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

// A stored worklist row as a card's result: the thumbnail stands in for the film (the server keeps no films).
function storedResult(row) {
  const context = {};
  for (const k of ["patient_id", "accession", "study_date", "age", "sex", "view", "study_uid", "series_uid", "sop_uid"]) context[k] = row[k] || "";
  return { id: ++state.seq, worklist_id: row.id, stored: true, filename: rowLabel(row), ok: !row.error, error: row.error,
           probability: row.probability, threshold: row.threshold, decision: row.decision, positive: Boolean(row.flagged),
           in_scope: row.in_scope, scope_reason: row.scope_reason, image_png: row.thumbnail || "", context,
           created: row.created, model_name: row.model_name, model_version: row.model_version, review: row.review };
}

// On load: the recent stored results as cards, in risk order (results already on the page are not repeated).
async function loadStoredCards() {
  if (state.storedLoaded) return;
  const since = new Date(Date.now() - STORED_HOURS * 3600 * 1000).toISOString();
  let body;
  try {
    const res = await api(`api/v1/worklist?order=risk&limit=${STORED_MAX}&since=${encodeURIComponent(since)}`);
    if (!res.ok) return;
    body = await res.json();
  } catch (_) { return; }
  state.storedLoaded = true;
  let n = 0;
  for (const row of body.results || []) {
    if (state.cards[row.id]) continue;
    const r = storedResult(row);
    state.results.push(r); addCard(r); n += 1;
    state.cards[row.id] = "card-" + r.id;
  }
  orderCards();
  if (n) $("cards-note").textContent = T("storedCardsNote", { n, hours: STORED_HOURS });
  renderWorklist();  // rows now link to their cards
}

// The viewer gets the page's results with a film, in risk order; what it computes (a heatmap) comes back on close.
function viewerCase(r) {
  return { id: r.id, filename: r.filename, probability: r.probability, threshold: r.threshold, decision: r.decision,
           positive: r.positive, in_scope: r.in_scope, scope_reason: r.scope_reason, image_png: r.image_png,
           heatmap_png: r.heatmap_png, heatmap_map: r.heatmap_map, file: r.file, context: r.context || {},
           worklist_id: r.worklist_id };
}

function openViewer(r) {
  const viewer = window.PneumoscanViewer;
  if (!viewer || typeof viewer.open !== "function") return;
  const shown = riskOrder(state.results).filter((x) => x.image_png);
  const cases = shown.map(viewerCase);
  const index = Math.max(0, shown.indexOf(r));
  const opener = document.activeElement;
  viewer.open(cases, index, {
    onClose: (current) => {
      cases.forEach((c, i) => {  // keep what the viewer computed for the report
        if (c.heatmap_png && !shown[i].heatmap_png) shown[i].heatmap_png = c.heatmap_png;
        if (c.heatmap_map && !shown[i].heatmap_map) shown[i].heatmap_map = c.heatmap_map;
      });
      const last = (current && shown.find((x) => x.id === current.id)) || r;
      const back = document.querySelector(`button.film-open[data-result="${last.id}"]`) || opener;
      if (back && back.focus) back.focus();
    },
  });
}
