// Uploads (the drop zone and the file chooser: one POST api/v1/predict per file, two at a time) and "Clear cards".
// Each result becomes a card (cards.js) in the server's risk order; the worklist (worklist.js) follows.
import { $, T, api, checkDrift, inScope, rememberName, setStatus, state } from "./app.js";
import { addCard, clearCards, orderCards } from "./cards.js";
import { dropCard, sentAgain } from "./studies.js";
import { refreshWorklist, renderWorklist } from "./worklist.js";

// One file's entries from the server; an entry of the page's own (not read, the reason) when it gave none.
async function sendFile(file, wantHeatmap) {
  const form = new FormData();
  form.append("files", file, file.name);
  const url = "api/v1/predict" + (wantHeatmap ? "?heatmap=true&preview=true" : "?preview=true");
  const failed = (error) => [{ filename: file.name, ok: false, decision: "", error, worklist_id: null }];
  try {
    const res = await api(url, { method: "POST", body: form });
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (body && Array.isArray(body.results) && body.results.length) return body.results;
    const msg = (body && (body.detail || body.error)) || `HTTP ${res.status}`;
    return failed(typeof msg === "string" ? msg : JSON.stringify(msg));
  } catch (e) {
    return failed(T("uploadFailed", { error: e.message }));
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
        batch.push(r);
        const shown = r.worklist_id != null ? document.getElementById(state.cards[r.worklist_id] || "") : null;
        if (shown && !shown.classList.contains("stored")) { sentAgain(r, shown); continue; }  // one result, one card
        if (shown) dropCard(shown);  // a stored card (a thumbnail): this upload's own card, with its film, replaces it
        addCard(r);
        if (r.times_received > 1) sentAgain(r, document.getElementById("card-" + r.id));
        if (r.worklist_id != null) rememberName(r.worklist_id, r.filename);
      }
      done += 1;
      setStatus(T("analysedOf", { done, n: files.length }));
      await Promise.all([orderCards(), refreshWorklist()]);
    }
  };
  await Promise.all([worker(), worker()]);
  setStatus(batchSummary(batch));
  checkDrift();
}

// Counts of this batch only, each result in exactly one of the three (earlier batches' cards stay on the page,
// but are not recounted), then how many the server could not store in its worklist, and why (the first reason).
function batchSummary(batch) {
  const analysed = batch.filter((r) => inScope(r)).length;
  const failed = batch.filter((r) => !r.ok).length;
  const notAssessed = batch.filter((r) => r.ok && !inScope(r)).length;
  const unsaved = batch.filter((r) => r.worklist_error);
  return T("done", { n: analysed }) + (notAssessed ? T("doneNotAssessed", { n: notAssessed }) : "") +
    (failed ? T("doneFailed", { n: failed }) : "") + T("doneEnd") +
    (unsaved.length ? T("doneNotSaved", { n: unsaved.length, error: unsaved[0].worklist_error }) : "");
}

export function setupUpload() {
  const dz = $("dropzone"), input = $("file-input");
  dz.addEventListener("click", () => input.click());
  dz.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => { handleFiles(input.files); input.value = ""; });
  dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("drag"); });
  dz.addEventListener("dragleave", () => dz.classList.remove("drag"));
  dz.addEventListener("drop", (e) => { e.preventDefault(); dz.classList.remove("drag"); handleFiles(e.dataTransfer.files); });
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
export function setupClear() {
  $("clear").addEventListener("click", () => {
    const n = $("cards").children.length;
    if (n && !clearArmed) { armClear(n); return; }
    disarmClear();
    clearCards();
    renderWorklist();
    setStatus(n ? T("cleared", { n }) : "");
  });
  const keep = () => { disarmClear(); setStatus(T("keptCards")); $("clear").focus(); };
  $("clear-cancel").addEventListener("click", keep);
  for (const id of ["clear", "clear-cancel"]) {
    $(id).addEventListener("keydown", (e) => { if (e.key === "Escape" && clearArmed) keep(); });
  }
}
