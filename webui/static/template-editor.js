// Template editor: a live preview.  When the subject, a body or the preview
// contact changes, and the typing has paused (debounce), it posts the form to
// data-preview-url (/templates/preview.json, CSRF token included) and shows
// what the server rendered, with the code the sender child uses: headers and
// text as text, the HTML part in the sandboxed frame (no script runs there).
// Answers to older requests are dropped.  Without JavaScript the Preview
// button does the same on the server.
"use strict";
(function () {
  const form = document.querySelector("form[data-preview-url]");
  if (!form) return;
  const panel = document.querySelector(".preview");
  const error = panel.querySelector("[data-preview-error]");
  const who = panel.querySelector("[data-preview-for]");
  const headers = panel.querySelector("[data-preview-headers]");
  const text = panel.querySelector("[data-preview-text]");
  const htmlPart = panel.querySelector("[data-preview-html-part]");
  const frame = panel.querySelector("[data-preview-html]");
  const WAIT_MS = 400;
  let timer = null;
  let latest = 0;

  function showError(message) {
    error.textContent = message;
    error.hidden = !message;
  }

  function show(data) {
    showError(data.error || "");
    who.textContent = data.contact ? "for " + data.contact : "";
    if (data.error) return;
    headers.replaceChildren();
    (data.headers || []).forEach(([name, value]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = value;
      headers.append(dt, dd);
    });
    text.textContent = data.text || "";
    // Collapsed, not display:none: Chromium leaves a frame shown after display:none unpainted.
    htmlPart.classList.toggle("collapsed", data.html == null);
    if (frame.srcdoc !== (data.html || "")) frame.srcdoc = data.html || "";  // no reload flicker
  }

  async function refresh() {
    const mine = ++latest;
    try {
      const response = await fetch(form.dataset.previewUrl, {
        method: "POST", body: new FormData(form), credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      const data = await response.json();
      if (mine !== latest) return;
      if (!response.ok) showError(data.error || "HTTP " + response.status);
      else show(data);
    } catch (err) {
      if (mine === latest) showError("no preview: " + err.message);
    }
  }

  form.addEventListener("input", (event) => {
    if (!["subject", "text", "html", "contact"].includes(event.target.name)) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, WAIT_MS);
  });
})();
