// Keeps the dashboard live: every data-interval seconds it asks data-poll
// (/dashboard.json) and puts each number where data-counter names its path,
// and each server-rendered list where data-fragment names it.  Stops and says
// so when the session has ended; marks the page stale while the server is away.
"use strict";
(function () {
  const root = document.querySelector("[data-poll]");
  if (!root) return;
  const every = Math.max(500, Number(root.dataset.interval) * 1000);
  const updated = document.getElementById("updated");
  const numbers = new Intl.NumberFormat("en-US");

  function lookup(data, path) {
    return path.split(".").reduce((obj, key) => (obj == null ? undefined : obj[key]), data);
  }

  function show(data) {
    root.querySelectorAll("[data-counter]").forEach((el) => {
      const value = lookup(data, el.dataset.counter);
      if (typeof value === "number") el.textContent = numbers.format(value);
    });
    root.querySelectorAll("[data-fragment]").forEach((el) => {
      const html = (data.fragments || {})[el.dataset.fragment];
      if (typeof html === "string") el.innerHTML = html;  // escaped by the server's templates
    });
    updated.textContent = "as of " + new Date(data.at * 1000).toLocaleTimeString();
  }

  async function poll() {
    try {
      const response = await fetch(root.dataset.poll, {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      if (response.status === 401) {
        updated.textContent = "session ended: reload to log in again";
        root.classList.add("stale");
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      show(await response.json());
      root.classList.remove("stale");
    } catch (err) {
      root.classList.add("stale");
      updated.textContent = "no answer from the server (" + err.message + "), retrying";
    }
    setTimeout(poll, every);
  }

  setTimeout(poll, every);
})();
