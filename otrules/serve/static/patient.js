// A patient's page: per goal, the scores over time against baseline, target, target date and the MCID
// band (lower-is-better instruments drawn with the axis reversed, so up is always better), the points
// where rules fired (hover: summary and evidence); the plan's certification and treatment days; the open
// recommendations with Accept / Override, and the closed ones with why. All text via textContent.
"use strict";
(function () {
  const { el, badge, json, status, day, plain } = window.otrules;
  const patient = document.body.dataset.patient;
  const reasons = (document.body.dataset.reasons || "").split("|").filter(Boolean).map((pair) => pair.split("="));
  const DAY = 86400000;
  const toDay = (iso) => Date.parse(iso.length === 10 ? iso + "T00:00:00Z" : iso) / DAY;
  const label = (x) => new Date(x * DAY).toISOString().slice(0, 10);
  window.otrulesCharts = {};

  function scoreAt(points, x) {
    let found = null;
    for (const p of points) if (toDay(p.at) <= x + 1e-9) found = p.score;
    return found !== null ? found : (points.length ? points[0].score : null);
  }
  function chart(goal, plan) {
    const points = goal.points.map((p) => ({ x: toDay(p.at), y: p.score }));
    const xs = points.map((p) => p.x).concat([toDay(plan.certified_from), toDay(plan.certified_until)]);
    if (goal.target_date) xs.push(toDay(goal.target_date));
    for (const f of goal.fired.concat(plan.plan_fired)) xs.push(toDay(f.at));
    const lo = Math.min(...xs), hi = Math.max(...xs);
    const ys = points.map((p) => p.y).concat([goal.target], goal.baseline != null ? [goal.baseline] : []);
    const ymin = Math.min(...ys), ymax = Math.max(...ys);
    const sign = goal.better === "lower" ? -1 : 1;
    const datasets = [
      { label: "scores", data: points, borderColor: "#22313f", backgroundColor: "#22313f", pointRadius: 4, tension: 0 },
      { label: "target", data: [{ x: lo, y: goal.target }, { x: hi, y: goal.target }], borderColor: "#1b5e20", borderDash: [6, 4], pointRadius: 0 },
    ];
    const base = goal.baseline != null ? goal.baseline : (points.length ? points[0].y : null);
    if (base != null) {
      datasets.push({ label: "baseline", data: [{ x: lo, y: base }, { x: hi, y: base }], borderColor: "#777", borderDash: [2, 3], pointRadius: 0 });
      if (goal.mcid) {
        datasets.push({ label: "MCID band", data: [{ x: lo, y: base + sign * goal.mcid }, { x: hi, y: base + sign * goal.mcid }],
          borderColor: "rgba(27,94,32,0.25)", backgroundColor: "rgba(27,94,32,0.12)", fill: "-1", pointRadius: 0 });
      }
    }
    if (goal.target_date) {
      const td = toDay(goal.target_date);
      datasets.push({ label: "target date", data: [{ x: td, y: ymin }, { x: td, y: ymax }], borderColor: "#8a5a00", borderDash: [4, 4], pointRadius: 0 });
    }
    const fired = goal.fired.map((f) => ({ x: toDay(f.at), y: scoreAt(goal.points, toDay(f.at)), rec: f }));
    datasets.push({ label: "rules fired", data: fired, showLine: false, pointStyle: "triangle", pointRadius: 9,
      pointHoverRadius: 11, borderColor: "#b00020", backgroundColor: "#b00020" });
    // rules about the plan (a report due, visits missed) at the same time on every goal of the plan
    const onPlan = plan.plan_fired.map((f) => ({ x: toDay(f.at), y: scoreAt(goal.points, toDay(f.at)), rec: f }));
    datasets.push({ label: "plan rules fired", data: onPlan, showLine: false, pointStyle: "rectRot", pointRadius: 8,
      pointHoverRadius: 10, borderColor: "#8a5a00", backgroundColor: "rgba(138,90,0,0.35)" });
    const canvas = el("canvas", { role: "img", "aria-label": goal.instrument + " scores of goal " + goal.goal_id +
      " over time, target " + goal.target + (goal.target_date ? " by " + goal.target_date : "") + "; the table below lists them" });
    const box = el("div", { class: "chart" }, canvas);
    const instance = new Chart(canvas, {
      type: "line", data: { datasets },
      options: {
        animation: false, parsing: false, maintainAspectRatio: false,
        scales: { x: { type: "linear", min: lo - 2, max: hi + 2, ticks: { callback: (v) => label(v) } },
                  y: { reverse: goal.better === "lower", title: { display: true, text: goal.instrument + (goal.better === "lower" ? " (lower is better)" : "") } } },
        plugins: {
          legend: { labels: { filter: (item) => item.text !== "baseline" || base != null } },
          tooltip: { callbacks: {
            title: (items) => label(items[0].parsed.x),
            label: (ctx) => {
              const raw = ctx.raw;
              if (raw && raw.rec) {
                return [raw.rec.indicator + ": " + plain(raw.rec.summary)].concat(
                  Object.entries(raw.rec.evidence).map(([k, v]) => "  " + k + " = " + JSON.stringify(v)));
              }
              return ctx.dataset.label + ": " + ctx.parsed.y;
            },
          } },
        },
      },
    });
    window.otrulesCharts[plan.plan_id + "/" + goal.goal_id] = instance;
    const table = el("table", { class: "evidence" },
      el("caption", { class: "sr-only", text: "Scores of goal " + goal.goal_id }),
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "date" }), el("th", { scope: "col", text: goal.instrument }))),
      el("tbody", {}, ...goal.points.map((p) => el("tr", {}, el("td", { text: day(p.at) }), el("td", { text: String(p.score) })))));
    return el("div", {}, box, el("details", {}, el("summary", { text: "Scores as a table" }), table));
  }
  function plans(doc) {
    const root = document.getElementById("plans");
    root.replaceChildren();
    for (const plan of doc.plans) {
      const section = el("section", { class: "plan", "aria-label": "Plan " + plan.plan_id },
        el("h2", { text: "Plan " + plan.plan_id + (plan.discharged ? " (discharged)" : "") }),
        el("p", { class: "muted", text: (plan.setting || "") + " · " + plan.frequency_per_week + " visits a week · certified " +
          plan.certified_from + " to " + plan.certified_until + " · " + plan.treatment_days_since_report +
          " treatment days since the last progress report · " + plan.visits_attended + " visits attended" }));
      for (const goal of plan.goals) {
        section.append(el("div", { class: "goal", "data-goal": goal.goal_id },
          el("h3", { text: "Goal " + goal.goal_id + ": " + goal.instrument + " from " + (goal.baseline != null ? goal.baseline : "?") +
            " to " + goal.target + (goal.target_date ? " by " + goal.target_date : "") }),
          chart(goal, plan)));
      }
      root.append(section);
    }
  }
  function evidence(rec) {
    return el("table", { class: "evidence" }, el("tbody", {}, ...Object.entries(rec.evidence).map(([k, v]) =>
      el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: JSON.stringify(v) })))));
  }
  function item(rec, open) {
    const li = el("li", { class: rec.indicator, "data-id": rec.recommendation_id },
      badge(rec.indicator), " ", el("strong", { text: plain(rec.summary) }),
      el("div", { class: "muted", text: rec.kind.replaceAll("_", " ") + " · rule " + rec.rule.id + " · " + day(rec.occurred_at) +
        (rec.goal_id ? " · goal " + rec.goal_id : "") + (open ? "" : " · closed " + day(rec.closed_at) + ": " + rec.closed_reason +
        (rec.override_reason ? " (" + (rec.override_reason.display || rec.override_reason.code) + ")" : "")) }),
      evidence(rec),
      el("details", {}, el("summary", { text: "Rationale and references" }), el("pre", { class: "detail", text: plain(rec.detail) })));
    if (open) {
      const select = el("select", { "aria-label": "Why override" }, ...reasons.map(([code, text]) => el("option", { value: code, text })));
      const accept = el("button", { type: "button", class: "accept", text: "Accept" });
      const override = el("button", { type: "button", class: "override", text: "Override" });
      accept.addEventListener("click", () => answer(rec, "accepted", null));
      override.addEventListener("click", () => answer(rec, "overridden", select.value));
      li.append(el("div", { class: "actions" }, accept, el("label", {}, "Reason ", select), override));
    }
    return li;
  }
  async function answer(rec, outcome, code) {
    const payload = { recommendation_id: rec.recommendation_id, outcome };
    if (code) payload.override_reason = { code };
    try {
      await json("/api/feedback", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
      await load();
      status("Sent: " + outcome);
    } catch (error) { status("Could not send: " + error.message); await load(); }
    const live = document.getElementById("status");
    live.setAttribute("tabindex", "-1");
    live.focus();  // the list was rebuilt: keyboard focus goes to what happened, not to the page's top
  }
  async function load() {
    const { body: doc } = await json("/api/patient?id=" + encodeURIComponent(patient));  // a query: ".." is an id too
    plans(doc);
    document.getElementById("open").replaceChildren(...(doc.open.length ? doc.open.map((r) => item(r, true)) : [el("li", { text: "Nothing open." })]));
    document.getElementById("closed").replaceChildren(...doc.closed.map((r) => item(r, false)));
    status(doc.open.length + " open, " + doc.closed.length + " closed");
    document.body.dataset.loaded = "yes";
  }
  async function start() {
    const { response } = await json("/api/open?patient=" + encodeURIComponent(patient));
    await load();
    // live too: a recommendation of this patient opened or closed elsewhere (the EHR, another tab)
    otrules.follow(response.headers.get("X-Otrules-Seq") || "", (rec) => {
      if (rec === null) start(); else if (rec.patient_id === patient) load();
    });
  }
  start().catch((error) => status("Could not load: " + error.message));
})();
