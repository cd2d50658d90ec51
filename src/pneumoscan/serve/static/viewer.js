"use strict";
// The film viewer: opened from a result card (window.PneumoscanViewer.open(cases, index)).
window.PneumoscanViewer = { open() {} };
