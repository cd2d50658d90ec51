// The printable per-patient report: a card's "Print report" fills #report with that one case (film, its heatmap
// if computed, at upload or in the viewer, the server's score on 0-100 with where it was calibrated, its threshold,
// the decision in words, the borderline band, the scope gate's caution, a flagged film's cause with its caveat,
// model and site state, when it was scored and printed, the patient's DICOM context, the disclaimer once) and
// prints it on one A4 page; the print style sheet shows #report alone while body.printing-report is set.
import {
  $, T, borderlineBand, causeLine, decisionText, decisionWords, el, fmtScore, inScope, isBorderline, siteState, state,
} from "./app.js";
import { drawHeat, loadImage } from "./viewer-film.js";

//: The printed heatmap's opacity where the map is strongest: the server's overlays'
//: (pneumoscan.inference.render.render_overlay's alpha).
const PRINT_ALPHA = 0.55;

function reportRows(pairs) {
  const dl = el("dl", { class: "report-facts" });
  for (const [key, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    dl.append(el("dt", { text: T(key) }), el("dd", { text: String(value) }));
  }
  return dl;
}

// A DICOM date (DA, "YYYYMMDD") as ISO 8601 ("YYYY-MM-DD"), unambiguous on paper; anything else as written.
function dicomDate(da) {
  return /^\d{8}$/.test(da || "") ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da;
}

function reportPatient(r) {
  const c = r.context || {};
  const pairs = [["reportFile", r.filename], ["reportPatientId", c.patient_id], ["reportAccession", c.accession],
                 ["reportStudyDate", dicomDate(c.study_date)], ["reportAge", c.age], ["reportSex", c.sex], ["reportView", c.view],
                 ["reportStudyUid", c.study_uid]];
  const section = el("section", { class: "report-patient" }, [el("h2", { text: T("reportPatient") }), reportRows(pairs)]);
  if (!c.patient_id && !c.accession && !c.study_uid) section.append(el("p", { class: "help", text: T("reportNoContext") }));
  return section;
}

function reportResult(r) {
  const m = state.model || {};
  const when = (iso) => { const d = new Date(iso); return isNaN(d) ? iso : d.toLocaleString(); };
  const pairs = [];
  if (inScope(r)) {
    pairs.push(["reportScore", T("reportScoreValue", { score: fmtScore(r.score) })],
               ["reportCalibration", r.score_calibration],  // where the score was calibrated; none for old rows
               ["reportThreshold", T("reportThresholdValue", { threshold: fmtScore(r.score_threshold) })],
               ["reportDecision", decisionText(r)],
               ["reportBorderline", isBorderline(r) ? T("reportBorderlineValue", { band: borderlineBand() }) : ""],
               ["reportCause", causeLine(r)]);
  } else {
    pairs.push(["reportDecision", r.decision_text || decisionWords("OUT_OF_SCOPE")], ["reportReason", r.scope_reason || T("reasonDefault")]);
  }
  const name = r.model_name || m.name, version = r.model_version || m.version;
  pairs.push(["reportModel", name ? T("reportModelValue", { name, version: version || "?" }) : ""],
             ["reportSiteState", m.provenance || (siteState(m) === "shipped" ? T("siteShippedTitle") : siteState(m))],
             ["reportScored", r.created ? when(r.created) : ""], ["reportPrinted", new Date().toLocaleString()]);
  if (r.review) {
    const verdict = r.review.verdict === "agree" ? T("agreed") : T("disagreed");
    pairs.push(["reportReview", T("reportReviewValue", { verdict, note: r.review.note ? ": " + r.review.note : "" })]);
  }
  // A flagged film's cause says what it is worth, next to it.
  const caveat = inScope(r) && causeLine(r) ? [el("p", { class: "report-cause-caveat", text: T("causeCaveat") })] : [];
  // A film scored although unlike the training films: the server's caution, in its words.
  const caution = inScope(r) && r.scope_caution
    ? [el("p", { class: "report-caution", role: "note" }, [el("strong", { text: T("reportCaution") + ": " }), r.scope_caution])] : [];
  return el("section", { class: "report-result" }, [el("h2", { text: T("reportResult") }), reportRows(pairs), ...caution, ...caveat]);
}

// The map the reader computed in the viewer (`heatmap_map`) coloured over the card's film as the viewer and the
// server's overlays colour it (viewer-film.js's heatTable at PRINT_ALPHA): a PNG data URI.
async function overlay(r) {
  const [film, map] = await Promise.all([loadImage(r.image_png), loadImage(r.heatmap_map)]);
  const heat = document.createElement("canvas");
  drawHeat(heat, map, false);
  const out = document.createElement("canvas");
  out.width = film.naturalWidth; out.height = film.naturalHeight;
  const ctx = out.getContext("2d");
  ctx.drawImage(film, 0, 0);
  ctx.globalAlpha = PRINT_ALPHA;  // heatTable(1)'s opacity times alpha is heatTable(alpha)'s
  ctx.drawImage(heat, 0, 0, out.width, out.height);
  return out.toDataURL("image/png");
}

// A map the viewer computed (cards.js hands it over when the viewer closes): its picture for the report is made
// now, so that "Print report" prints at once (a print asked for while it is being made waits for it).
export function keepViewerHeatmap(r) {
  if (!r.heatmap_map || !r.image_png || !inScope(r)) return;
  r.heatmap_viewer = true;
  r.heatmap_pending = overlay(r).then((uri) => { r.heatmap_print = uri; }, () => { r.heatmap_viewer = false; })
    .finally(() => { r.heatmap_pending = null; });
}

// The film and its heatmap: the one the reader computed in the viewer, else the one computed at upload (the
// server's overlay); none out of scope.
function reportImages(r) {
  const box = el("div", { class: "report-images" });
  if (r.image_png) {
    box.append(el("figure", {}, [el("img", { src: r.image_png, alt: T("filmAlt", { name: r.filename }) }),
                                 el("figcaption", { text: r.stored ? T("reportFilmThumb") : T("reportFilm") })]));
  }
  const heat = inScope(r) ? (r.heatmap_viewer && r.heatmap_print) || r.heatmap_png || "" : "";
  if (heat) {
    box.append(el("figure", { class: "report-heatmap" }, [el("img", { src: heat, alt: T("heatmapAlt", { name: r.filename }) }),
      el("figcaption", { text: r.heatmap_viewer ? T("reportHeatmapViewer") : T("reportHeatmap") })]));
  }
  return box;
}

function buildReport(r) {
  const report = $("report");
  // The disclaimer once: here, in full; nothing else on the report repeats it.
  const disclaimer = el("div", { class: "report-disclaimer", role: "note" }, [
    el("strong", { text: T("disclaimerLead") }), " " + T("disclaimerText")]);
  report.replaceChildren(
    el("header", {}, [el("h1", { text: T("reportTitle") }), el("p", { class: "report-app", text: T("appName") + " · " + T("tagline") })]),
    disclaimer, el("div", { class: "report-columns" }, [reportPatient(r), reportResult(r)]), reportImages(r),
    ...(inScope(r) ? [el("p", { class: "report-limits", text: T("limits") })] : [el("p", { text: T("notAssessedHelp") })]),
    el("p", { class: "report-signature", text: T("reportSignature") }));
  report.dataset.result = String(r.id);
  return report;
}

// Print one case: the page hides everything else while printing (print CSS on body.printing-report).
export function printReport(r) {
  if (r.heatmap_pending) { r.heatmap_pending.then(() => printReport(r)); return; }
  buildReport(r);
  document.body.classList.add("printing-report");
  window.print();
}

export function setupReport() {
  // A print started from the browser's menu prints the page as it is; a report's print ends here.
  window.addEventListener("afterprint", () => document.body.classList.remove("printing-report"));
}
