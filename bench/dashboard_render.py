"""The worklist in headless Chromium: how long a page of 1,000 open recommendations takes to render,
beside the bundled sample's (14 open) in the same run. Time from navigation to every row drawn (the
page's `data-rows` set, after the JSON is fetched and the table built), medians of alternating loads.

    .venv/bin/python bench/dashboard_render.py --open 1000 --runs 5

Needs Chromium (scripts/browser/ensure_chromium.sh installs Debian's). docs/benchmarks.md quotes it;
the issue's target is under a second for 1,000.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


def stream(patients: int, path: Path) -> None:
    """Each patient: a plan and three missed visits, so one open adherence review each."""
    with path.open("w") as f:
        for n in range(patients):
            base = {"patient_id": f"p-{n:05d}", "plan_id": f"poc-{n:05d}"}
            f.write(json.dumps({"type": "plan", "event_id": f"e{n}-0", "occurred_at": "2026-05-01T08:00:00Z",
                                "setting": "outpatient", "frequency_per_week": 2, "certified_from": "2026-05-01",
                                "certified_until": "2026-07-29", "goals": [], **base}) + "\n")
            for i in range(3):
                f.write(json.dumps({"type": "visit", "event_id": f"e{n}-{i + 1}", "status": "missed",
                                    "occurred_at": f"2026-05-0{2 + i}T09:00:00Z", **base}) + "\n")


def start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    log = tempfile.NamedTemporaryFile(delete=False, suffix=".log")  # noqa: SIM115 - the server writes it while running
    proc = subprocess.Popen([sys.executable, "-m", "otrules", "serve", "--port", "0", *args],
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"otrules serve: (http://127\.0\.0\.1:\d+)", Path(log.name).read_text())
        if found:
            return proc, found.group(1)
        time.sleep(0.1)
    raise SystemExit("otrules serve did not start")


def load(page: object, url: str) -> tuple[float, int]:
    start = time.perf_counter()
    page.goto(url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector("body[data-rows]", timeout=60_000)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    return elapsed, int(page.get_attribute("body", "data-rows"))  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    browser_path = subprocess.run(["bash", str(ROOT / "scripts/browser/ensure_chromium.sh")], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.jsonl"
        stream(args.open, big)
        servers = {"sample": start(), f"{args.open} open": start("--input", str(big))}
        times: dict[str, list[float]] = {name: [] for name in servers}
        rows: dict[str, int] = {}
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=browser_path, args=FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                for _, url in servers.values():
                    load(page, url)  # warm: the browser's cache holds the scripts, as for a clinician
                for _ in range(args.runs):
                    for name, (_, url) in servers.items():
                        elapsed, rows[name] = load(page, url)
                        times[name].append(elapsed)
                browser.close()
        finally:
            for proc, _ in servers.values():
                proc.terminate()
    base = statistics.median(times["sample"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"worklist, {name:10} ({rows[name]:,} rows): {median * 1000:6.0f} ms to render "
              f"(median of {args.runs}; {median / base:.1f}x the sample's)")


if __name__ == "__main__":
    main()
