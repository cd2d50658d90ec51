// Review from the film viewer: a line under the case's result with who reviewed it and how (the server's latest
// review of the case, by its reader's name), a note field and Agree / Disagree, also on the keys a and d. After a
// review the viewer moves on to the next case not yet reviewed (after this one, then from the first). The reviewer
// is whoever the request's token names: the server records the name (GET api/v1/reader says which), never a name
// the page sends. The viewer (viewer.js) announces each case it shows with a "pv:case" event on its dialog and moves
// with PneumoscanViewer.go(index); this module adds the rest, so the viewer stays a viewer.
import { T, api, el } from "./app.js";
import { namedReader } from "./studies.js";
import { PneumoscanViewer } from "./viewer.js";
import { refreshWorklist } from "./worklist.js";

//: The worklist's largest page (pneumoscan.store.MAX_LIMIT): the unreviewed results are read in one page.
const PAGE_ROWS = 1000;
let ui = null;  // the panel, built into the viewer's dialog when it shows its first case
let shown = null;  // the case on show
let busy = false;
let moving = false;  // the viewer moves on after a review: its message stays for the next case
let reader = null;  // GET api/v1/reader, once
const latest = new Map();  // worklist id -> its latest review (null: none), as the server last said

function button(verdict, text, label) {
  const b = el("button", { type: "button", class: "verdict-btn " + verdict, text: T(text), "aria-label": T(label),
                           "aria-keyshortcuts": verdict[0], "data-verdict": verdict });
  b.addEventListener("click", () => review(verdict));
  return b;
}

function build(dialog) {
  const box = el("div", { class: "pv-review", role: "group", "aria-labelledby": "pv-review-title" });
  const title = el("span", { id: "pv-review-title", class: "pv-review-title", text: T("rvTitle") });
  const as = el("span", { class: "pv-review-as" });
  const state = el("span", { class: "pv-review-state" });
  const note = el("input", { type: "text", class: "pv-review-note", maxlength: "2000", placeholder: T("notePlaceholder"),
                             "aria-label": T("rvNoteLabel") });
  const agree = button("agree", "rvAgree", "rvAgreeLabel"), disagree = button("disagree", "rvDisagree", "rvDisagreeLabel");
  const said = el("span", { class: "pv-review-said", role: "status", "aria-live": "polite" });
  box.append(el("span", { class: "pv-review-who" }, [title, " ", as]), state, note, agree, disagree, said);
  (dialog.querySelector(".pv-head") || dialog).append(box);
  const keys = dialog.querySelector(".pv-keys");  // the viewer's list of keys: these two as well
  if (keys) keys.append(el("li", {}, [el("kbd", { text: "a / d" }), " " + T("rvKeys")]));
  return { box, as, state, note, agree, disagree, said };
}

async function whoAmI() {
  if (reader) return reader;
  try {
    const res = await api("api/v1/reader");
    if (res.ok) reader = await res.json();
  } catch (_) { /* said nothing: no name shown */ }
  return reader;
}

function fmtWhen(iso) {
  const when = new Date(iso);
  return isNaN(when) ? iso || "" : when.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

// The panel for case c: its latest review (or none, or not yet known), the controls only for a stored result.
function render(c) {
  const id = c && c.worklist_id;
  const stored = id !== null && id !== undefined;
  for (const x of [ui.note, ui.agree, ui.disagree]) x.disabled = !stored || busy;
  ui.box.dataset.reviewed = "";
  if (!stored) { ui.state.textContent = T("rvNotStored"); return; }
  const r = latest.get(id);
  if (r === undefined) { ui.state.textContent = ""; return; }
  ui.box.dataset.reviewed = r ? r.verdict : "none";
  const verdict = r && (r.verdict === "agree" ? T("agreed") : T("disagreed"));
  ui.state.textContent = !r ? T("rvNone") : (namedReader(r.reviewer)
    ? T("rvBy", { verdict, reviewer: r.reviewer, when: fmtWhen(r.reviewed_at) })
    : T("rvAt", { verdict, when: fmtWhen(r.reviewed_at) })) + (r.note ? ": " + r.note : "");
}

async function onCase(e) {
  const dialog = e.target;
  if (!ui) ui = build(dialog);
  shown = e.detail && e.detail.case;
  ui.note.value = "";
  if (!moving) ui.said.textContent = "";
  moving = false;
  render(shown);
  whoAmI().then((who) => { ui.as.textContent = who && who.named ? T("rvAs", { reader: who.reader }) : ""; });
  const c = shown, id = c && c.worklist_id;
  if (id === null || id === undefined || latest.has(id)) return;
  try {
    const res = await api(`api/v1/worklist/${id}`);
    if (res.ok) latest.set(id, (await res.json()).review || null);
  } catch (_) { return; }
  if (c === shown) render(c);
}

// The worklist ids not yet reviewed (one page of GET api/v1/worklist?unreviewed=true), or null when the server
// cannot say.
async function unreviewed() {
  try {
    const q = new URLSearchParams({ unreviewed: "true", thumbnails: "false", limit: String(PAGE_ROWS) });
    const res = await api("api/v1/worklist?" + q.toString());
    if (!res.ok) return null;
    const body = await res.json();
    return { ids: new Set((body.results || []).map((r) => r.id)), all: (body.results || []).length >= (body.total || 0) };
  } catch (_) { return null; }
}

// The next case after the one on show (then from the first) that is stored and not yet reviewed; null if none.
async function nextUnreviewed() {
  const now = PneumoscanViewer.current();
  if (!now) return null;
  const open = await unreviewed();
  const waiting = (c) => {
    const id = c.worklist_id;
    if (id === null || id === undefined) return false;
    if (open && open.ids.has(id)) return true;
    return (!open || !open.all) && !latest.get(id);
  };
  const n = now.cases.length;
  for (let step = 1; step < n; step++) {
    const i = (now.index + step) % n;
    if (waiting(now.cases[i])) return i;
  }
  return null;
}

async function review(verdict) {
  const c = shown, id = c && c.worklist_id;
  if (busy || !ui || id === null || id === undefined) return;
  busy = true;
  render(c);
  ui.said.textContent = T("rvSaving");
  let res = null, body = null;
  try {
    res = await api(`api/v1/worklist/${id}/review`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ verdict, note: ui.note.value }) });
    body = await res.json().catch(() => null);
  } catch (e) {
    body = { detail: e.message };
  }
  busy = false;
  if (!res || !res.ok) {
    const why = (body && body.detail) || (res ? `HTTP ${res.status}` : "");
    ui.said.textContent = T("rvFailed", { error: typeof why === "string" ? why : JSON.stringify(why) });
    render(c);
    return;
  }
  latest.set(id, body.review || null);
  refreshWorklist();  // the page's table shows the review (and its reader) too
  const words = verdict === "agree" ? T("agreed") : T("disagreed");
  const next = await nextUnreviewed();
  if (c !== shown) return;  // the reader moved on meanwhile
  if (next === null) {
    ui.said.textContent = T("rvAllDone", { verdict: words });
    render(c);
    return;
  }
  ui.said.textContent = T("rvSaved", { verdict: words });
  moving = true;
  PneumoscanViewer.go(next);
}

function onKey(e) {
  if (!ui || !PneumoscanViewer.isOpen() || e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
  const tag = e.target && e.target.tagName;
  if (tag === "TEXTAREA" || tag === "SELECT" || (tag === "INPUT" && e.target.type === "text")) return;  // typing
  const verdict = { a: "agree", d: "disagree" }[e.key.toLowerCase()];
  if (!verdict) return;
  e.preventDefault();
  review(verdict);
}

export function setupReview() {
  document.addEventListener("pv:case", onCase);
  window.addEventListener("keydown", onKey);
}
