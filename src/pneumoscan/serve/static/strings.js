"use strict";
// Every piece of text the page shows, in one place, so that the page can be translated: copy this file, translate
// the values (keep the keys and the {placeholders}), and serve it instead. app.js and viewer.js read STRINGS only.
// A value with {name} placeholders is filled by t(key, {name: value}).
window.STRINGS = {
  // --- page (app.js) ---
  page: {
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
