"use strict";
// Every piece of text the page shows, in one place, so that the page can be translated: copy this file, translate
// the values (keep the keys and the {placeholders}), and serve it instead. app.js and viewer.js read STRINGS only.
// A value with {name} placeholders is filled by t(key, {name: value}).
window.STRINGS = {
  // --- page (app.js) ---
  page: {
    // index.html (filled at load: elements with data-t="key", attributes with data-t-attr="attr:key")
    title: "pneumoscan: second reader for pediatric chest X-rays",
    appName: "pneumoscan",
    tagline: "A second reader for pneumonia on pediatric frontal chest X-rays",
    loadingModel: "Loading model…",
    themeToggle: "Dark theme",
    themeToggleTitle: "Switch between the light and the dark theme (remembered in this browser)",
    tokenLabel: "API token",
    signIn: "Sign in",
    disclaimerLead: "Decision support, not a diagnosis.",
    disclaimerText: "This tool corroborates a clinician's reading; it does not replace it. It was trained on " +
      "pediatric frontal chest X-rays from one hospital and has not been tested on adults, lateral views, other " +
      "hospitals or other vendors' DICOM. Every result must be reviewed by a qualified clinician.",
    uploadTitle: "Upload X-rays",
    dropLabel: "Choose or drop X-ray images",
    dropLead: "Drop JPEG, PNG or DICOM files here",
    dropTail: ", or press Enter to choose files.",
    dropHelp: "Several files at once are fine. Images are analysed in memory and not kept; each result (not the " +
      "image, not the file name) and a small thumbnail are saved to the worklist.",
    wantHeatmap: "Compute Grad-CAM heatmaps now (the viewer computes them when asked)",
    clearCards: "Clear cards",
    clearCardsTitle: "Removes this page's cards; the worklist is kept",
    cancel: "Cancel",
    worklistTitle: "Worklist",
    worklistSub: "(highest score first)",
    worklistSubNewest: "(newest first)",
    worklistSubOldest: "(oldest first)",
    worklistHelp: "Decision support, not a diagnosis: each score (0–100) is the model's, for a clinician to review.",
    downloadCsv: "Download CSV",
    worklistCaption: "Stored results with their pneumonia scores (0–100), highest first; images not assessed and " +
      "unreadable files last; each with a reader's review. Decision support, not a diagnosis.",
    colRank: "Rank", colFilm: "Film", colImage: "Image", colScore: "Score (0–100)", colDecision: "Decision",
    colReview: "Review",
    noImages: "No images yet.",
    noMatch: "No stored result matches these filters.",
    filtersLabel: "Filter and sort the worklist",
    filterFlagged: "Flagged only",
    filterBorderline: "Borderline",
    filterBandLabel: "Borderline band: points either side of the threshold (0–100)",
    filterBandHint: "within ±{band} of the threshold ({low}–{high})",
    filterBandHintNoModel: "within ±{band} points of each result's threshold",
    filterUnreviewed: "Not yet reviewed",
    filterScope: "Scope",
    scopeAll: "All results", scopeIn: "In scope", scopeOut: "Out of scope only",
    sortLabel: "Sort",
    sortRisk: "Highest score first", sortNewest: "Newest first", sortOldest: "Oldest first",
    resultsTitle: "Results",
    modelCardTitle: "Model card",
    loading: "Loading…",
    footerData: "Data for the shipped model: Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography " +
      "(OCT) and Chest X-Ray Images for Classification. Mendeley Data, v2, 2018. doi:10.17632/rscbjbr9sj.2 (CC BY 4.0).",
    footerDocs: "API documentation:",
    // the decision language: the same words as pneumoscan.constants.DECISION_WORDS and NOT_READ_WORDS (a test
    // checks that they match), the score and threshold on 0-100
    decisionPNEUMONIA: "Flagged: possible pneumonia",
    decisionNORMAL: "Not flagged",
    decisionOUT_OF_SCOPE: "Not assessed (out of scope)",
    notRead: "Could not be read",
    scoreOf: "{score}",
    scoreScale: "/ 100",
    scoreTitle: "Pneumonia score, 0–100 (the model's probability × 100); decision support, not a diagnosis",
    atThreshold: " at threshold {threshold} (0–100)",
    notAssessed: "Not assessed",
    // the header's model line
    modelLine: "Model {name} ({version}) ",
    modelLineThreshold: " · operating threshold {threshold} on the 0–100 score · decision support, not a diagnosis",
    siteShipped: "as shipped",
    siteLocal: "{site} at this site",
    siteShippedTitle: "As shipped: not adapted or calibrated at this site",
    signInToUse: "Sign in with the API token to use this server.",
    modelUnavailable: "Model information unavailable: {error}",
    tokenRejected: "That token was not accepted.",
    tokenNeeded: "This server needs its API token. Ask your administrator for it.",
    // model card
    mcModel: "Model", mcModelValue: "{name} (version {version})",
    mcIntendedUse: "Intended use", mcSiteState: "Site state",
    mcPrevalence: "Estimated pneumonia prevalence at this site",
    mcPrevalenceValue: "{prevalence} (EM on the adaptation films, no labels; decisions unchanged{training})",
    mcPrevalenceTraining: "; training {prevalence}",
    mcThreshold: "Operating threshold",
    mcThresholdValue: "{threshold} on the 0–100 score{how}",
    mcHowCost: " (lowest cost on {on} with a missed pneumonia counted as {cost} false alarms, sensitivity at least {sens})",
    mcHowOther: " ({method}{target}, chosen on {on})",
    mcOnSite: "this site's labelled films", mcOnValidation: "validation",
    mcAuc: "Validation ROC AUC", mcAucCi: " (95% CI {low}–{high})",
    mcSens: "Validation sensitivity at threshold", mcSpec: "Validation specificity at threshold",
    mcInput: "Input", mcInputValue: "{size}×{size} grayscale, whole film squeezed to a square",
    mcFull: "Full model card",
    // uploads and the status line
    analysing: "Analysing {n} image(s)…",
    analysedOf: "Analysed {done} of {n} image(s).",
    done: "Done: {n} analysed",
    doneNotAssessed: ", {n} not assessed (outside what the model was built for; see the cards)",
    doneFailed: ", {n} could not be read (see the cards)",
    doneEnd: ".",
    uploadFailed: "upload failed: {error}",
    // drift
    driftLead: "This site's images differ from the training data.",
    driftText: " The drift check found the last {n} images analysed here unlike the films the model was trained on " +
      "(statistic {statistic}, threshold {threshold}). Results may not hold at this site: the sensitivity and " +
      "specificity in the model card may not apply. Before relying on it, the site should calibrate the model on " +
      "its own labelled films (",
    driftTail: ").",
    driftNote: " Note: {note}.",
    driftLineShifted: "Site drift check: SHIFTED (see the warning at the top of the page).",
    driftLineOk: "Site drift check: no shift found in the last {n} in-scope images.",
    driftLineWaiting: "Site drift check: {n} of the {min} in-scope images it needs so far.",
    driftLineUnavailable: "Site drift check unavailable: {reason}.",
    noReason: "no reason given",
    // cards
    contextPatient: "Patient {v}", contextAcc: "Acc. {v}", contextAge: "age {v}", contextView: "view {v}",
    contextSex: "sex {v}", contextStudyDate: "study date {v}",
    limits: "Decision support, not a diagnosis. “Not flagged” says nothing about other findings (effusion, " +
      "masses, tuberculosis); the model is weakest on subtle viral pneumonia and on rotated or underexposed films.",
    reasonLabel: "Reason: ",
    reasonDefault: "outside the model's scope",
    notAssessedHelp: "The model is built for pediatric frontal chest radiographs only and gives no result for this " +
      "image. Read it as usual.",
    couldNotAnalyse: "Could not analyse this file: {error}",
    filmAlt: "X-ray {name}",
    filmAltOos: "Image {name}",
    heatmapAlt: "Grad-CAM heatmap over {name}",
    openViewer: "Open {name} in the viewer",
    showHeatmap: "Show heatmap",
    hideHeatmap: "Hide heatmap",
    printReport: "Print report",
    printReportLabel: "Print a report of {name}",
    storedCard: "Stored result, {when}: thumbnail only (the server keeps no films).",
    noThumbnail: "No picture stored",
    storedCardsNote: "{n} stored result(s) from the last {hours} hours, as cards (thumbnails only).",
    // the worklist
    worklistUnavailable: "Worklist unavailable (HTTP {status}).",
    worklistUnavailableError: "Worklist unavailable: {error}",
    showingOf: "Showing the first {n} of {total} results.",
    resultN: "Result {id}",
    cardLinkTitle: "Show this image's card",
    unreadable: "unreadable",
    borderlineTag: "borderline",
    borderlineTagTitle: "Within ±{band} points of the threshold",
    thumbAlt: "Thumbnail of {name}",
    reviewOf: "Review of {name}",
    agreed: "Agreed", disagreed: "Disagreed",
    notePlaceholder: "Note (optional)",
    noteLabel: "Review note for {name}",
    agree: "Agree", disagree: "Disagree",
    verdictLabel: "{verdict} with the result for {name}",
    reviewNotSaved: "The review was not saved: {error}",
    reviewSaved: "Review saved: {verdict} with {name}.",
    reviewAgreed: "agreed", reviewDisagreed: "disagreed",
    // clear
    reallyClear: "Really clear?",
    reallyClearLabel: "Really clear {n} card(s)? The worklist is kept",
    reallyClearStatus: "Press “Really clear?” to remove {n} card(s) from this page, or Cancel. The worklist is kept.",
    cleared: "Cleared {n} card(s); the worklist is kept.",
    keptCards: "The cards were kept.",
    // the printed report
    reportTitle: "Pneumonia second reader: report",
    reportDisclaimerHead: "Decision support, not a diagnosis.",
    reportPatient: "Patient", reportFile: "File", reportPatientId: "Patient ID", reportAccession: "Accession",
    reportStudyDate: "Study date", reportAge: "Age", reportSex: "Sex", reportView: "View",
    reportStudyUid: "Study UID",
    reportResult: "Result", reportScore: "Pneumonia score", reportScoreValue: "{score} / 100",
    reportThreshold: "Operating threshold", reportThresholdValue: "{threshold} / 100",
    reportDecision: "Decision", reportScope: "Scope", reportReason: "Reason",
    reportModel: "Model", reportModelValue: "{name} (version {version})",
    reportSiteState: "Site state", reportScored: "Scored", reportPrinted: "Printed",
    reportReview: "Reader's review", reportReviewValue: "{verdict}{note}",
    reportFilm: "Film", reportHeatmap: "Grad-CAM heatmap (where the model looked; not a finding)",
    reportFilmThumb: "Film (thumbnail: the server keeps no films)",
    reportSignature: "Read by: ______________________   Date: ____________",
    reportNoContext: "No DICOM context (JPEG or PNG file)",
    // the CSV download
    csvExported: "exported_at",
  },
  // --- viewer (viewer.js) ---
  viewer: {
  },
};

// t("page.someKey", {n: 3}): the string with its placeholders filled; an unknown key shows itself (easy to spot).
window.t = function t(key, values = {}) {
  const [section, name] = key.split(".", 2);
  const raw = (window.STRINGS[section] || {})[name];
  if (raw === undefined) return key;
  return String(raw).replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
};
