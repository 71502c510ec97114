// For clinical leads: per rule over a period, recommendations made, open now, accepted and overridden
// (with the reasons given): the alert-fatigue signal rules are tuned with.
"use strict";
(function () {
  const { el, json, status } = window.otrules;
  const form = document.getElementById("period");
  async function load() {
    const query = new URLSearchParams();
    if (form.elements.from.value) query.set("from", form.elements.from.value);
    if (form.elements.to.value) query.set("to", form.elements.to.value);
    const { body: rows } = await json("/api/rules?" + query.toString());
    document.querySelector("#rules tbody").replaceChildren(...rows.map((r) => el("tr", { "data-rule": r.rule },
      el("td", { text: r.rule }), el("td", { text: String(r.made) }), el("td", { text: String(r.open) }),
      el("td", { text: String(r.accepted) }), el("td", { text: String(r.overridden) }),
      el("td", { text: Object.entries(r.reasons).map(([c, n]) => c + " " + n).join(", ") }))));
    status(rows.length + " rules");
  }
  form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  load().catch((error) => status("Could not load: " + error.message));
})();
