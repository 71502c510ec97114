#!/usr/bin/env python3
"""The README's screenshots of the dashboard, taken from the bundled sample in headless Chromium:
the worklist, the patient with the most open recommendations on goals, and the rules page.

    .venv/bin/python scripts/screenshots.py            # writes docs/screenshots/*.png
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


def _busiest_patient() -> str:
    """The sample's patient whose goals drew the most recommendations: the chart with the most to see."""
    out = subprocess.run([sys.executable, "-m", "otrules", "run"], check=True, capture_output=True, text=True).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        rec = json.loads(line)
        if rec["goal_id"] and rec["status"] == "open":
            counts[rec["patient_id"]] = counts.get(rec["patient_id"], 0) + 1
    return max(sorted(counts), key=lambda p: counts[p])


def main() -> None:
    browser_path = subprocess.run(["bash", str(ROOT / "scripts/browser/ensure_chromium.sh")], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
    log = tempfile.NamedTemporaryFile(delete=False, suffix=".log")  # noqa: SIM115 - the server writes it while running
    proc = subprocess.Popen([sys.executable, "-m", "otrules", "serve", "--port", "0"], stdout=subprocess.DEVNULL,
                            stderr=log)
    try:
        url = ""
        while not url:
            found = re.search(r"otrules serve: (http://127\.0\.0\.1:\d+)", Path(log.name).read_text())
            url = found.group(1) if found else ""
            time.sleep(0.1)
        time.sleep(1)
        patient = _busiest_patient()
        from playwright.sync_api import sync_playwright

        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            for name, path, ready in (("worklist", "/", "body[data-live='yes']"),
                                      ("patient", f"/patients/{patient}", "body[data-loaded='yes']"),
                                      ("rules", "/rules", "#rules tbody tr")):
                page.goto(url + path)
                page.wait_for_selector(ready)
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=name != "patient")
                print(OUT / f"{name}.png")
            browser.close()
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
