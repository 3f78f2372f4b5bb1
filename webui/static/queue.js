// Queue page: a "tick all" box above the row boxes, choosing "ticked rows"
// again as soon as a row is ticked, and a confirmation before a verb applies
// to every row matching the filter (without JavaScript the form still works).
"use strict";
(function () {
  const form = document.querySelector("form.queue-actions");
  if (!form) return;
  const boxes = Array.from(form.querySelectorAll('input[name="id"]'));
  const ticked = form.querySelector('input[name="scope"][value="selected"]');
  const whole = form.querySelector('input[name="scope"][value="filter"]');
  const head = form.querySelector("thead th");
  if (boxes.length && head) {
    const all = document.createElement("input");
    all.type = "checkbox";
    all.setAttribute("aria-label", "tick every row on this page");
    head.appendChild(all);
    all.addEventListener("change", () => boxes.forEach((box) => { box.checked = all.checked; }));
  }
  boxes.forEach((box) => box.addEventListener("change", () => { if (box.checked) ticked.checked = true; }));
  form.addEventListener("submit", (event) => {
    const verb = event.submitter ? event.submitter.value : "act on";
    const scope = whole.parentElement.textContent.trim();
    if (whole.checked && !window.confirm(verb + " " + scope + "?")) event.preventDefault();
  });
})();
