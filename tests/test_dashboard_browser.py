"""The dashboard in a real browser (Debian's headless Chromium, driven by Playwright): the worklist
loads, a recommendation arrives live, a patient page shows its charts with target line and markers,
an override closes a card and it leaves the worklist, and markup from events stays text. Screenshots
go to build/test-artifacts/. Skipped, saying why, only where no Chromium can be installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otrules import defaults
from test_serve import Server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-quic"]


def chromium() -> str:
    found = subprocess.run(["bash", str(ROOT / "scripts" / "browser" / "ensure_chromium.sh")], capture_output=True,
                           text=True, timeout=900)
    if found.returncode != 0:
        pytest.skip(f"no Chromium for the browser tests: {found.stderr.strip().splitlines()[-1]}")
    return found.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=path, args=FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("dashboard")
    stream = tmp / "events.jsonl"
    shutil.copy(defaults.SAMPLE_STREAM, stream)
    server = Server(tmp, "--input", str(stream), "--follow")
    yield server, stream
    server.stop()


def page(browser: Any, server: Server, path: str) -> Any:
    tab = browser.new_page(viewport={"width": 1400, "height": 900})
    tab.errors = []
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.on("console", lambda msg: tab.errors.append(msg.text) if msg.type == "error" else None)
    tab.goto(server.url + path)
    return tab


def shot(tab: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def append(stream: Path, *events: dict[str, Any]) -> None:
    with stream.open("a") as f:
        for event in events:
            f.write(json.dumps(event) + "\n")


def arrival(patient: str, goal_id: str = "g1") -> list[dict[str, Any]]:
    base = {"patient_id": patient, "plan_id": f"poc-{patient}"}
    plan = {"type": "plan", "event_id": f"{patient}-plan", "occurred_at": "2026-05-01T08:00:00Z",
            "setting": "outpatient", "frequency_per_week": 2, "certified_from": "2026-05-01",
            "certified_until": "2026-07-29",
            "goals": [{"goal_id": goal_id, "description": "<img src=x onerror=\"window.pwned=1\">", "instrument":
                       "COPM-performance", "baseline": 3, "target": 7}], **base}
    misses = [{"type": "visit", "event_id": f"{patient}-v{i}", "occurred_at": f"2026-05-0{2 + i}T09:00:00Z",
               "status": "missed", **base} for i in range(3)]
    return [plan, *misses]


def test_the_worklist_loads_and_a_recommendation_arrives_live(browser, live):
    server, stream = live
    tab = page(browser, server, "/")
    tab.wait_for_selector("body[data-live='yes']")
    before = int(tab.get_attribute("body", "data-rows"))
    assert before == len(server.client.get("/api/open").json()) > 0
    append(stream, *arrival("p-live"))
    tab.wait_for_selector("#worklist tbody tr >> text=p-live", timeout=15_000)  # no reload: over the stream
    assert int(tab.get_attribute("body", "data-rows")) == before + 1
    rows = tab.locator("#worklist tbody tr")
    assert rows.first.locator(".badge").inner_text() in ("critical", "warning")
    tab.select_option("select[name=kind]", "adherence_review")
    assert tab.locator("#worklist tbody tr").count() >= 1
    assert all("adherence" in t for t in tab.locator("#worklist tbody tr td:nth-child(4)").all_inner_texts())
    shot(tab, "worklist")
    assert not tab.errors, tab.errors
    tab.close()


def test_a_patient_page_draws_each_goal_with_target_line_and_rule_markers(browser, live):
    server, _ = live
    patient = max({r["patient_id"] for r in server.client.get("/api/open").json() if r["goal_id"]},
                  key=lambda p: sum(1 for r in server.client.get("/api/open").json() if r["patient_id"] == p))
    tab = page(browser, server, f"/patients/{patient}")
    tab.wait_for_selector("body[data-loaded='yes']")
    charts = tab.evaluate("""() => Object.entries(window.otrulesCharts).map(([key, c]) => ({
        key, labels: c.data.datasets.map(d => d.label),
        markers: (c.data.datasets.find(d => d.label === 'rules fired') || {data: []}).data.length,
        reversed: !!c.options.scales.y.reverse}))""")
    assert charts and all({"scores", "target", "rules fired"} <= set(c["labels"]) for c in charts)
    assert any(c["markers"] > 0 for c in charts)
    assert tab.locator("canvas[role=img]").count() == len(charts)
    assert "treatment days since the last progress report" in tab.inner_text("#plans")
    shot(tab, "patient")
    assert not tab.errors, tab.errors
    tab.close()


def test_an_override_closes_the_card_and_it_leaves_the_open_worklist(browser, live):
    server, stream = live
    append(stream, *arrival("p-override"))
    worklist = page(browser, server, "/")
    worklist.wait_for_selector("#worklist tbody tr >> text=p-override", timeout=15_000)
    tab = page(browser, server, "/patients/p-override")
    tab.wait_for_selector("body[data-loaded='yes']")
    card = tab.locator("#open li").first
    card.locator("select").select_option("patient-declined")
    card.get_by_role("button", name="Override").click()
    tab.wait_for_selector("#closed li >> text=overridden")
    assert "Nothing open." in tab.inner_text("#open")
    worklist.wait_for_selector("#worklist tbody tr >> text=p-override", state="detached", timeout=15_000)
    shot(tab, "patient-after-override")
    assert not tab.errors and not worklist.errors, (tab.errors, worklist.errors)
    for t in (tab, worklist):
        t.close()


def test_markup_from_events_renders_as_text(browser, live):
    server, stream = live
    append(stream, *arrival("p-markup", goal_id="<img src=x onerror=window.pwned=1>"))
    tab = page(browser, server, "/")
    tab.wait_for_selector("#worklist tbody tr >> text=p-markup", timeout=15_000)
    patient = page(browser, server, "/patients/p-markup")
    patient.wait_for_selector("body[data-loaded='yes']")
    for t in (tab, patient):
        assert t.evaluate("window.pwned") is None
        assert t.locator("main img").count() == 0
    assert "<img" in patient.inner_text("main") or "&lt;img" in patient.inner_text("main")
    for t in (tab, patient):
        t.close()


def test_the_rules_page_counts_answers_per_rule(browser, live):
    server, _ = live
    tab = page(browser, server, "/rules")
    tab.wait_for_selector("#rules tbody tr")
    rows = {r["rule"]: r for r in server.client.get("/api/rules").json()}
    shown = tab.locator("#rules tbody tr").count()
    assert shown == len(rows) > 0
    shot(tab, "rules")
    assert not tab.errors, tab.errors
    tab.close()


@pytest.mark.skipif(os.environ.get("OTRULES_SKIP_BROWSER") == "1", reason="OTRULES_SKIP_BROWSER=1")
def test_the_content_security_policy_lets_nothing_inline_run(browser, live):
    server, _ = live
    tab = page(browser, server, "/")
    tab.wait_for_selector("body[data-live='yes']")
    ran = tab.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.inlined = 1';
                                  document.body.append(s); return window.inlined === 1; }""")
    assert ran is False
    tab.close()


def test_time_driven_recommendations_appear_while_following(live):
    server, stream = live
    base = {"patient_id": "p-clock", "plan_id": "poc-clock"}
    append(stream, {"type": "plan", "event_id": "clock-plan", "occurred_at": "2026-05-11T08:00:00Z",
                    "setting": "outpatient", "frequency_per_week": 2, "certified_from": "2026-05-11",
                    "certified_until": "2026-05-25", "goals": [], **base},
           {"type": "visit", "event_id": "clock-v", "occurred_at": "2026-06-30T09:00:00Z", "status": "attended", **base})
    deadline = time.monotonic() + 15
    kinds: set[str] = set()
    while time.monotonic() < deadline and "recertify_plan" not in kinds:
        kinds = {r["kind"] for r in server.client.get("/api/open", params={"patient": "p-clock"}).json()}
        time.sleep(0.3)
    assert "recertify_plan" in kinds  # the certification ran out between the two: found when time advanced


def test_a_patient_id_with_a_slash_or_dots_opens(browser, live):
    server, stream = live
    for patient in ("a/b", ".."):
        append(stream, *arrival(patient))
    tab = page(browser, server, "/")
    tab.wait_for_selector("body[data-live='yes']")
    for patient in ("a/b", ".."):
        tab.wait_for_selector(f"#worklist tbody tr >> text='{patient}'", timeout=15_000)
        tab.get_by_role("link", name=patient, exact=True).first.click()
        tab.wait_for_selector("body[data-loaded='yes']")
        assert tab.inner_text("#patient-id") == patient
        tab.go_back()
        tab.wait_for_selector("body[data-live='yes']")
    tab.close()


def test_signing_in_in_the_browser_returns_to_the_page_asked_for(browser, tmp_path):
    server = Server(tmp_path, env={"OTRULES_SERVE_TOKEN": "browser-token-0123"})
    try:
        patient = server.client.get("/api/open", headers={"authorization": "Bearer browser-token-0123"}).json()[0][
            "patient_id"]
        tab = page(browser, server, f"/patients/{patient}")
        tab.wait_for_selector("input[name=token]")
        tab.fill("input[name=token]", "browser-token-0123")
        tab.get_by_role("button", name="Sign in").click()
        tab.wait_for_selector("body[data-loaded='yes']")
        assert tab.inner_text("#patient-id") == patient and tab.url.endswith(f"/patients/{patient}")
        assert not tab.errors, tab.errors
        tab.close()
    finally:
        server.stop()
