// The worklist per study, and who read it: the server lists a study's films together (GET api/v1/worklist's
// `study_key` and `study_size`: the same StudyInstanceUID, else the same accession; the study placed by its riskiest
// film), counts a file sent again instead of listing it twice (`times_received`) and names the reader of every
// review (`review.reviewer`, from the reader's own token). worklist.js draws the rows; these are the pieces it adds.
import { T, el, state } from "./app.js";

// Part of a study of two or more listed films.
export function inStudy(r) { return Boolean(r.study_key) && r.study_size > 1; }

// A header row above a study's films (where its listed rows begin): who and which study, and how many films; null
// for a film that stands alone or continues the study of the row before it.
export function studyHead(r, prev, columns = 6) {
  if (!inStudy(r) || (prev && prev.study_key === r.study_key)) return null;
  const c = r.context || {};
  const ids = [c.patient_id && T("contextPatient", { v: c.patient_id }), c.accession && T("contextAcc", { v: c.accession })]
    .filter(Boolean);
  const study = ids.length ? ids.join(" · ") : T("studyUid", { uid: (c.study_uid || "").slice(-12) });
  return el("tr", { class: "study-head" }, [
    el("th", { scope: "rowgroup", colspan: String(columns) }, [el("span", { text: T("studyHead", { study, n: r.study_size }) })])]);
}

// "Sent 2 times" on a result whose very file came again (one result, counted); null when it came once.
export function timesTag(r) {
  const n = Number(r.times_received);
  if (!(n > 1)) return null;
  return el("span", { class: "tag repeat", text: T("timesReceived", { n }), title: T("timesReceivedTitle", { n }) });
}

// A reviewer who is a person: a reader's name, not "local" (a server without tokens) or a shared token's hash.
export function namedReader(who) { return Boolean(who) && who !== "local" && !who.startsWith("token-"); }

// A review in words, with its reader when it names one: "Agreed by Dr A. Lee: note".
export function reviewedText(review) {
  const verdict = review.verdict === "agree" ? T("agreed") : T("disagreed");
  return (namedReader(review.reviewer) ? T("reviewedBy", { verdict, reviewer: review.reviewer }) : verdict) +
    (review.note ? ": " + review.note : "");
}

// An upload the server answered with an earlier result of the very same file (`times_received` above 1): its card
// says so, and keeps the new File so that the viewer shows the film at full resolution.
export function sentAgain(entry, card) {
  if (!card) return;
  const r = state.results.find((x) => "card-" + x.id === card.id);
  if (r && entry.file && !r.file) r.file = entry.file;
  if (r) r.times_received = entry.times_received;
  let note = card.querySelector("p.sent-before");
  if (!note) {
    note = el("p", { class: "help sent-before", role: "status" });
    (card.querySelector(".body") || card).append(note);
  }
  note.textContent = T("sentBefore", { n: entry.times_received });
}

// A card taken off the page (its result too): a stored card that an upload of the same file replaces.
export function dropCard(card) {
  const i = state.results.findIndex((x) => "card-" + x.id === card.id);
  if (i >= 0) state.results.splice(i, 1);
  card.remove();
}
