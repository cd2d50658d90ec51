// The film viewer's dialog (an ES module; viewer.js drives it): built once, every text from STRINGS.viewer
// (strings.js), every control named for assistive technology. build(actions) returns the elements viewer.js updates.
import { t } from "./strings.js";

const S = (key, values) => t("viewer." + key, values);
let act = null;

export function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, val] of Object.entries(attrs)) {
    if (k === "text") e.textContent = val; else if (k === "class") e.className = val; else e.setAttribute(k, val);
  }
  for (const c of children) e.append(c);
  return e;
}

// Who and what the film is, from a case's DICOM context: patient ID, accession, age and view, blank fields left out
// ("" for a JPEG or PNG). The server never sends the patient's name.
export function contextLine(context) {
  const x = context || {};
  return [["contextPatient", x.patient_id], ["contextAcc", x.accession], ["contextAge", x.age], ["contextView", x.view]]
    .filter(([, value]) => value !== undefined && value !== null && String(value).trim() !== "")
    .map(([key, value]) => S(key, { v: String(value).trim() })).join(" · ");
}

function button(name, key, onClick, extra = {}) {
  const b = el("button", { type: "button", text: S(name), "aria-label": S(key), title: S(key), ...extra });
  b.addEventListener("click", onClick);
  return b;
}

// ------------------------------------------------------------------ the dialog, built once

function buildHead() {
  const head = el("div", { class: "pv-head" });
  const title = el("h2", { id: "pv-title" });
  const pos = el("span", { class: "pv-pos" });
  // Who and what the film is (patient ID, accession, age, view: the DICOM context; never the patient's name).
  const context = el("p", { class: "pv-context", hidden: "" });
  const result = el("p", { class: "pv-result" });
  // A film scored although unlike the training films: the server's caution (scope_caution); hidden without one.
  const caution = el("p", { class: "pv-caution", role: "note", hidden: "" });
  const disclaimer = el("p", { id: "pv-disclaimer", class: "pv-disclaimer", text: S("disclaimer") });
  // A flagged film's cause (bacterial or viral pattern), under the decision, with its caveat; hidden without one.
  const cause = el("p", { class: "pv-cause", hidden: "" });
  const close = button("close", "closeLabel", () => act.close(), { class: "pv-close" });
  head.append(el("div", { class: "pv-titlebar" }, [title, pos, close]),
              el("div", { class: "pv-meta" }, [context, result, disclaimer, caution, cause]));
  return { head, title, pos, context, result, caution, cause, close };
}

function buildToolbar() {
  const bar = el("div", { class: "pv-toolbar", role: "toolbar", "aria-label": S("toolbar") });
  const prev = button("prev", "prevLabel", () => act.step(-1)), next = button("next", "nextLabel", () => act.step(1));
  const zout = button("zoomOut", "zoomOutLabel", () => act.zoomBy(1 / 1.25)), zin = button("zoomIn", "zoomInLabel", () => act.zoomBy(1.25));
  const fitB = button("fit", "fitLabel", () => act.fit()), actual = button("actual", "actualLabel", () => act.actual());
  const zoom = el("output", { class: "pv-zoom", "aria-label": S("zoomLevelLabel") });
  const preset = el("select", { "aria-label": S("presetAria"), class: "pv-preset" });
  for (const k of [...act.presets, "custom"]) preset.append(el("option", { value: k, text: S("preset_" + k) }));
  preset.querySelector('[value="custom"]').disabled = true;
  preset.addEventListener("change", () => act.setPreset(preset.value));
  const invert = button("invert", "invertLabel", () => act.toggleInvert(), { "aria-pressed": "false" });
  const wlMode = button("wlMode", "wlModeLabel", () => act.toggleWlMode(), { "aria-pressed": "false" });
  const wl = el("output", { class: "pv-wl", "aria-live": "off" });
  const heat = el("select", { "aria-label": S("heatAria"), class: "pv-heat" });
  for (const m of act.modes) heat.append(el("option", { value: m, text: S("heat_" + m) }));
  heat.addEventListener("change", () => act.setMode(heat.value));
  const opacity = el("input", { type: "range", min: "0", max: "100", value: "50", "aria-label": S("opacityLabel"), class: "pv-opacity" });
  opacity.addEventListener("input", () => act.setOpacity(Number(opacity.value) / 100));
  // The outline of the strongest region (cyan), off until asked for.
  const outline = button("outline", "outlineLabel", () => act.toggleOutline(), { "aria-pressed": "false" });
  // The colours' key: nothing (the film as it is) below the evidence floor, then yellow to red (viewer.css).
  const ramp = el("span", { class: "pv-ramp", "aria-hidden": "true" }, [el("span", { text: S("heatLow") }), el("i"), el("span", { text: S("heatHigh") })]);
  const reset = button("reset", "resetLabel", () => act.reset());
  const group = (cls, ...kids) => el("div", { class: "pv-group " + cls }, kids);
  bar.append(group("pv-nav", prev, next), group("pv-zoomg", zout, zoom, zin, fitB, actual),
    group("pv-wlg", el("span", { class: "pv-lbl", text: S("presetLabel") }), preset, invert, wlMode, wl),
    group("pv-heatg", el("span", { class: "pv-lbl", text: S("heatLabel") }), heat,
      el("label", { class: "pv-lbl" }, [S("opacity"), " ", opacity]), outline, ramp), group("pv-resetg", reset));
  return { bar, prev, next, zoom, preset, invert, wlMode, wl, heat, opacity, outline };
}

function buildPane(withHeat) {
  const pane = el("div", { class: "pv-pane", role: "img" });
  const layer = el("div", { class: "pv-layer" });
  const film = el("canvas", { class: "pv-film" });
  const heat = el("canvas", { class: "pv-heatmap", hidden: "" });
  const outline = el("canvas", { class: "pv-outline", hidden: "" });  // above the map, not dimmed by its opacity
  layer.append(film, heat, outline);
  pane.append(layer);
  pane.hidden = withHeat;
  return { pane, layer, film, heat, outline };
}

function buildFooter() {
  const foot = el("div", { class: "pv-foot" });
  const info = el("p", { class: "pv-info" });
  const status = el("p", { class: "pv-status", role: "status", "aria-live": "polite" });
  const note = el("p", { class: "pv-note", text: S("wlNote") });
  const keys = [["j / k", "key_jk"], ["h", "key_h"], ["o", "key_outline"], ["+ / −", "key_zoom"], ["0", "key_fit"], ["1", "key_actual"],
    ["i", "key_invert"], ["w", "key_wl"], ["r", "key_reset"], ["Esc", "key_esc"]];
  const list = el("ul", { class: "pv-keys" }, keys.map(([k, d]) => el("li", {}, [el("kbd", { text: k }), " " + S(d)])));
  const legend = el("details", { class: "pv-legend" }, [el("summary", { text: S("legendTitle") }), list, el("p", { text: S("mouse") })]);
  foot.append(info, status, note, legend);
  return { foot, info, status, legend };
}

export function build(actions) {
  act = actions;
  const root = el("div", { class: "pv-root", hidden: "" });
  const dialog = el("div", { class: "pv-dialog", role: "dialog", "aria-modal": "true", "aria-labelledby": "pv-title",
                             "aria-describedby": "pv-disclaimer", tabindex: "-1" });
  const head = buildHead(), tools = buildToolbar(), foot = buildFooter();
  const a = buildPane(false), b = buildPane(true);
  const stage = el("div", { class: "pv-stage" }, [a.pane, b.pane]);
  dialog.append(head.head, tools.bar, stage, foot.foot);
  root.append(dialog);
  document.body.append(root);
  return { root, dialog, stage, a, b, ...head, ...tools, ...foot };
}
