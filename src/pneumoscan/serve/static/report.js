// The printable per-patient report: a card's "Print report" fills #report with that one case (film, heatmap if
// computed, the server's score on 0-100 with where it was calibrated, its threshold, the decision in words, a flagged film's cause with its
// caveat, model and site state, when it was scored and printed, the patient's DICOM context, the full disclaimer)
// and prints it; the print style sheet shows #report alone while body.printing-report is set.
import { $, T, causeLine, decisionText, decisionWords, el, fmtScore, inScope, siteState, state } from "./app.js";

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
               ["reportDecision", decisionText(r)], ["reportCause", causeLine(r)]);
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
  return el("section", { class: "report-result" }, [el("h2", { text: T("reportResult") }), reportRows(pairs), ...caveat]);
}

function reportImages(r) {
  const box = el("div", { class: "report-images" });
  if (r.image_png) {
    box.append(el("figure", {}, [el("img", { src: r.image_png, alt: T("filmAlt", { name: r.filename }) }),
                                 el("figcaption", { text: r.stored ? T("reportFilmThumb") : T("reportFilm") })]));
  }
  if (r.heatmap_png && inScope(r)) {
    box.append(el("figure", {}, [el("img", { src: r.heatmap_png, alt: T("heatmapAlt", { name: r.filename }) }),
                                 el("figcaption", { text: T("reportHeatmap") })]));
  }
  return box;
}

function buildReport(r) {
  const report = $("report");
  const disclaimer = el("div", { class: "report-disclaimer", role: "note" }, [
    el("strong", { text: T("disclaimerLead") }), " " + T("disclaimerText"),
    ...(state.disclaimer ? [el("p", { text: state.disclaimer })] : [])]);
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
  buildReport(r);
  document.body.classList.add("printing-report");
  window.print();
}

export function setupReport() {
  // A print started from the browser's menu prints the page as it is; a report's print ends here.
  window.addEventListener("afterprint", () => document.body.classList.remove("printing-report"));
}
