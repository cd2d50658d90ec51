// The page's one entry point (index.html: <script type="module" src="static/main.js">): fills the texts, wires
// the controls and loads what the server holds (the model, the drift check, the worklist, the recent results as
// cards). The modules it imports say what each part does (app.js lists them).
import { checkDrift, fillStaticStrings, loadModelInfo, modelUnavailable, setupLogin, setupTheme } from "./app.js";
import { loadStoredCards } from "./cards.js";
import { setupReport } from "./report.js";
import { setupReview } from "./review.js";
import { setupClear, setupUpload } from "./upload.js";
import { refreshWorklist, renderWorklist, setupWorklist, updateBandHint } from "./worklist.js";

async function loadModel() {
  try {
    if (!await loadModelInfo()) return;  // not signed in: the sign-in form is showing
    updateBandHint();
    checkDrift();
    await refreshWorklist();
    if (await loadStoredCards()) renderWorklist();  // rows now link to their cards
  } catch (e) {
    modelUnavailable(e);
  }
}

function setup() {
  fillStaticStrings();
  setupTheme();
  setupUpload();
  setupClear();
  setupWorklist();
  setupReport();
  setupReview();  // review in the viewer: a, d, a note; then the next unreviewed case
  setupLogin(loadModel);
  loadModel();
}

// A module runs once the document is parsed; the listener covers a page that loads it some other way.
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
else setup();
