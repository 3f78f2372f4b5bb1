// Queue page: a "tick all" box above the row boxes, and choosing "ticked rows"
// again as soon as a row is ticked.
"use strict";
(function () {
  const form = document.querySelector("form.queue-actions");
  if (!form) return;
  const boxes = Array.from(form.querySelectorAll('input[name="id"]'));
  const head = form.querySelector("thead th");
  if (!boxes.length || !head) return;
  const all = document.createElement("input");
  all.type = "checkbox";
  all.setAttribute("aria-label", "tick every row on this page");
  head.appendChild(all);
  all.addEventListener("change", () => boxes.forEach((box) => { box.checked = all.checked; }));
  const ticked = form.querySelector('input[name="scope"][value="selected"]');
  boxes.forEach((box) => box.addEventListener("change", () => { if (box.checked) ticked.checked = true; }));
})();
