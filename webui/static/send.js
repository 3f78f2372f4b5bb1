// Send page: shows only the field of the chosen way of selecting recipients
// (list, filter or addresses).  Without JavaScript every field shows and the
// server reads the one the radio button names.
"use strict";
(function () {
  const form = document.querySelector("form[data-selection]");
  if (!form) return;
  const radios = Array.from(form.querySelectorAll('input[name="selection"]'));
  const choices = Array.from(form.querySelectorAll(".choice[data-when]"));
  function show() {
    const chosen = (radios.find((r) => r.checked) || {}).value;
    choices.forEach((el) => { el.hidden = el.dataset.when !== chosen; });
  }
  radios.forEach((r) => r.addEventListener("change", show));
  show();
})();
