"""The dashboard (contracts.md §9): page shells and the JSON they draw from.

Pages are static shells; the browser fetches JSON and builds every element with
`textContent`, so no text from an event is ever parsed as markup, and no script
is inline (the Content-Security-Policy has no 'unsafe-inline'). Charts are
Chart.js, served by otrules (vendored under static/vendor with its licence).
"""

from __future__ import annotations

import datetime as dt
import html
from collections import Counter
from typing import Any

from otrules.engine import PatientState
from otrules.engine.state import series_key
from otrules.schemas import Catalogue, Recommendation
from otrules.serve.cards import OVERRIDE_REASONS, most_urgent_first

CHART = "/static/vendor/chart-4.6.1.umd.min.js"


def shell(title: str, script: str, body: str, data: dict[str, str] | None = None, chart: bool = False) -> str:
    """A page: header navigation, an empty main the script fills, no inline script or style."""
    attrs = "".join(f' data-{k}="{html.escape(v)}"' for k, v in (data or {}).items())
    scripts = (f'<script src="{CHART}" defer></script>' if chart else "") + \
        f'<script src="/static/common.js" defer></script><script src="/static/{script}" defer></script>'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)} · otrules</title>"
            f'<link rel="stylesheet" href="/static/app.css">{scripts}</head>'
            f'<body{attrs}><header><nav aria-label="otrules"><a href="/">Worklist</a> <a href="/rules">Rules</a></nav>'
            f"</header><main id=\"main\">{body}</main></body></html>")


def worklist_page() -> str:
    return shell("Worklist", "worklist.js", """
<h1>Open recommendations</h1>
<form id="filters" class="filters" aria-label="Filter the worklist">
  <label>Kind <select name="kind"><option value="">all</option></select></label>
  <label>Urgency <select name="indicator"><option value="">all</option></select></label>
  <label>Setting <select name="setting"><option value="">all</option></select></label>
  <label>Rule <select name="rule"><option value="">all</option></select></label>
</form>
<p id="status" role="status" aria-live="polite">Loading…</p>
<table id="worklist" class="worklist"><caption class="sr-only">Open recommendations, most urgent first</caption>
<thead><tr><th scope="col">Urgency</th><th scope="col">Patient</th><th scope="col">Summary</th>
<th scope="col">Kind</th><th scope="col">Setting</th><th scope="col">Rule</th><th scope="col">Since</th></tr></thead>
<tbody></tbody></table>""")


def patient_page(patient_id: str) -> str:
    return shell(f"Patient {patient_id}", "patient.js", f"""
<h1>Patient <span id="patient-id">{html.escape(patient_id)}</span></h1>
<p id="status" role="status" aria-live="polite">Loading…</p>
<section id="plans" aria-label="Plans of care and goals"></section>
<section aria-labelledby="open-h"><h2 id="open-h">Open recommendations</h2><ul id="open" class="recs"></ul></section>
<section aria-labelledby="closed-h"><h2 id="closed-h">Closed</h2><ul id="closed" class="recs"></ul></section>""",
                 {"patient": patient_id, "reasons": "|".join(f"{c}={d}" for c, d in OVERRIDE_REASONS)}, chart=True)


def rules_page() -> str:
    return shell("Rules", "rules.js", """
<h1>Rules: what clinicians answered</h1>
<form id="period" class="filters" aria-label="Period">
  <label>From <input type="date" name="from"></label> <label>To <input type="date" name="to"></label>
  <button type="submit">Show</button>
</form>
<p id="status" role="status" aria-live="polite">Loading…</p>
<table id="rules" class="worklist"><caption class="sr-only">Per rule: made, open, accepted, overridden</caption>
<thead><tr><th scope="col">Rule</th><th scope="col">Made</th><th scope="col">Open</th><th scope="col">Accepted</th>
<th scope="col">Overridden</th><th scope="col">Override reasons</th></tr></thead><tbody></tbody></table>""")


def login_page(failed: bool = False, next_path: str = "/") -> str:
    note = '<p role="alert">That token is not right.</p>' if failed else ""
    return shell("Sign in", "common.js", f"""
<h1>Sign in</h1>{note}
<form method="post" action="/login" class="login"><input type="hidden" name="next" value="{html.escape(next_path)}">
<label>Access token <input type="password" name="token" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form>""")


# ---------------------------------------------------------------- JSON for the pages


def patient_json(patient_id: str, state: PatientState | None, catalogue: Catalogue | None,
                 history: list[Recommendation], open_now: list[Recommendation]) -> dict[str, Any]:
    """The patient's plans and goals (scores in event time, baseline, target, MCID, direction), and
    their recommendations, open and closed, each with its evidence."""
    latest: dict[str, Recommendation] = {}
    for rec in history:
        if rec.patient_id == patient_id:
            latest[rec.recommendation_id] = rec
    for rec in open_now:
        latest.setdefault(rec.recommendation_id, rec)
    recs = list(latest.values())
    plans = []
    for plan in (state.plans.values() if state is not None else ()):
        goals = []
        for goal in plan.goals.values():
            instrument = catalogue.get(goal.instrument) if catalogue is not None else None
            series = plan.series.get(series_key(goal.instrument, goal.goal_id))
            points = [{"at": _iso(p.at), "score": p.score} for p in (series.points if series else ())]
            fired = [_brief(r) for r in recs if r.plan_id == plan.plan_id and r.goal_id == goal.goal_id]
            goals.append({"goal_id": goal.goal_id, "instrument": goal.instrument, "baseline": goal.baseline,
                          "target": goal.target, "target_date": _day(goal.target_date),
                          "better": instrument.better if instrument else "higher",
                          "mcid": instrument.mcid if instrument else None, "points": points, "fired": fired})
        plans.append({"plan_id": plan.plan_id, "setting": plan.setting, "frequency_per_week": plan.frequency_per_week,
                      "certified_from": _day(plan.certified_from), "certified_until": _day(plan.certified_until),
                      "discharged": plan.discharged, "visits_attended": plan.visits_attended,
                      "treatment_days_since_report": len(plan.treatment_dates), "goals": goals,
                      "plan_fired": [_brief(r) for r in recs if r.plan_id == plan.plan_id and not r.goal_id]})
    open_ids = {r.recommendation_id for r in open_now}
    still = most_urgent_first(r for r in recs if r.recommendation_id in open_ids)
    return {"patient_id": patient_id, "plans": plans, "open": [r.model_dump(mode="json") for r in still],
            "closed": [r.model_dump(mode="json") for r in recs if r.status == "closed"]}


def rules_json(history: list[Recommendation], open_now: list[Recommendation], since: dt.date | None,
               until: dt.date | None) -> list[dict[str, Any]]:
    """Per rule over a period (by event time): made, open now, accepted, overridden and why."""
    def inside(at: str | None) -> bool:
        day = at[:10] if at else ""
        return bool(day) and (since is None or day >= since.isoformat()) and (until is None or day <= until.isoformat())

    rows: dict[str, dict[str, Any]] = {}

    def row(rec: Recommendation) -> dict[str, Any]:
        key = f"{rec.rule.ruleset}/{rec.rule.id}"
        return rows.setdefault(key, {"rule": key, "kind": rec.kind, "made": 0, "open": 0, "accepted": 0,
                                     "overridden": 0, "reasons": Counter()})

    for rec in history:
        if rec.status == "open" and inside(rec.occurred_at):
            row(rec)["made"] += 1
        elif rec.closed_reason in ("accepted", "overridden") and inside(rec.closed_at):
            r = row(rec)
            r[rec.closed_reason] += 1
            if rec.override_reason:
                r["reasons"][rec.override_reason.get("code", "other")] += 1
    for rec in open_now:
        row(rec)["open"] += 1
    return [{**r, "reasons": dict(r["reasons"])} for _, r in sorted(rows.items())]


def _brief(rec: Recommendation) -> dict[str, Any]:
    return {"recommendation_id": rec.recommendation_id, "at": rec.occurred_at, "kind": rec.kind,
            "indicator": rec.indicator, "summary": rec.summary, "evidence": rec.evidence, "status": rec.status}


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


def _day(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None
