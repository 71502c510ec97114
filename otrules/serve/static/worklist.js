// The worklist: open recommendations, most urgent first, filtered in the browser, kept current over
// Server-Sent Events (a new one appears, a closed one leaves; a reconnect resumes with Last-Event-ID).
"use strict";
(function () {
  const { el, badge, json, status, plain, patientUrl } = window.otrules;
  const order = { critical: 0, warning: 1, info: 2 };
  const recs = new Map();
  const body = document.querySelector("#worklist tbody");
  const form = document.getElementById("filters");
  const fields = ["kind", "indicator", "setting", "rule"];

  function value(rec, field) {
    return field === "rule" ? rec.rule.ruleset + "/" + rec.rule.id : field === "setting" ? (rec.setting || "unknown") : rec[field];
  }
  function sorted() {
    return [...recs.values()].sort((a, b) => order[a.indicator] - order[b.indicator]
      || (a.occurred_at < b.occurred_at ? 1 : a.occurred_at > b.occurred_at ? -1 : 0)
      || (a.recommendation_id < b.recommendation_id ? -1 : 1));
  }
  function fillFilters() {
    for (const field of fields) {
      const select = form.elements[field];
      const chosen = select.value;
      const values = [...new Set([...recs.values()].map((r) => value(r, field)))].sort();
      select.replaceChildren(el("option", { value: "", text: "all" }), ...values.map((v) => el("option", { value: v, text: v })));
      select.value = values.includes(chosen) ? chosen : "";
    }
  }
  function row(rec, fresh) {
    const link = el("a", { href: patientUrl(rec.patient_id), text: rec.patient_id });
    const tr = el("tr", { "data-id": rec.recommendation_id, class: fresh ? "new" : "" },
      el("td", {}, badge(rec.indicator)), el("td", {}, link), el("td", { text: plain(rec.summary) }),
      el("td", { text: rec.kind.replaceAll("_", " ") }), el("td", { text: rec.setting || "unknown" }),
      el("td", { text: rec.rule.id }), el("td", { text: otrules.day(rec.occurred_at) }));
    tr.addEventListener("click", (event) => { if (event.target.tagName !== "A") link.click(); });
    return tr;
  }
  function render(freshId) {
    const want = Object.fromEntries(fields.map((f) => [f, form.elements[f].value]));
    const shown = sorted().filter((r) => fields.every((f) => !want[f] || value(r, f) === want[f]));
    body.replaceChildren(...shown.map((r) => row(r, r.recommendation_id === freshId)));
    status(shown.length + " open recommendation" + (shown.length === 1 ? "" : "s") + (shown.length < recs.size ? " (of " + recs.size + ")" : ""));
    document.body.dataset.rows = String(shown.length);
  }
  async function load() {
    const { body: list, response } = await json("/api/open");
    recs.clear();
    for (const rec of list) recs.set(rec.recommendation_id, rec);
    fillFilters();
    render();
    return response.headers.get("X-Otrules-Seq") || "";
  }
  function follow(seq) {
    otrules.follow(seq, (rec) => {
      if (rec === null) { load().then(follow); return; }  // the server restarted, or we fell too far behind
      if (rec.status === "open") recs.set(rec.recommendation_id, rec); else recs.delete(rec.recommendation_id);
      fillFilters();
      render(rec.status === "open" ? rec.recommendation_id : undefined);
    });
    document.body.dataset.live = "yes";
  }
  form.addEventListener("change", () => render());
  load().then(follow).catch((error) => status("Could not load: " + error.message));
})();
