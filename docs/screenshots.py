"""The screenshots of docs/dashboard.md: starts the service on a temporary
database, fills it through the API (instances with labels and statuses, a
plan tree, logs), and photographs /ui/ and one instance's page in headless
Chromium (Debian's chromium and chromium-driver).

    python docs/screenshots.py      # writes docs/img/dashboard-list.png and
                                    # docs/img/dashboard-instance.png
"""
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import waitress  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from app import create_app  # noqa: E402

OUT = ROOT / "docs" / "img"
WIDTH = 1280
SITES = ["3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b", "8e7d6c5b-4a39-4281-b7f6-e5d4c3b2a190"]
USER = "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
AGENT = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
# name, type, status, labels
FLEET = [
    ("checkout-tester", "browser", "running", {"env": "prod", "team": "payments"}),
    ("invoice-filer", "windows", "running", {"env": "prod", "team": "finance"}),
    ("crm-sync", "ubuntu", "paused", {"env": "staging", "team": "sales"}),
    ("report-builder", "ubuntu", "error", {"env": "prod", "team": "finance"}),
    ("search-crawler", "browser", "running", {"env": "prod", "team": "growth"}),
    ("ticket-triage", "browser", "starting", {"env": "staging", "team": "support"}),
    ("payroll-export", "windows", "stopped", {"env": "prod", "team": "finance"}),
    ("qa-smoke-run", "browser", "terminated", {"env": "dev"}),
    ("inbox-zero", "browser", "pending", {"env": "dev", "team": "support"}),
    ("flight-booker", "browser", "running", {"env": "prod", "team": "travel", "canary": "true"}),
]
PLANS = [  # title, type, status, priority, parent (index into this list)
    ("Book the cheapest flight to Lisbon for 12 May", "objective", "in_progress", 10, None),
    ("Open the airline's booking page", "task", "completed", 3, 0),
    ("Search flights for 12 May, one adult", "task", "completed", 2, 0),
    ("Compare fares and pick the cheapest", "task", "in_progress", 1, 0),
    ("Pay with the company card", "task", "pending", 0, 0),
    ("File the receipt in the expenses folder", "objective", "pending", 5, None),
]
LOGS = [
    ("info", "system", "Instance started; desktop ready at 1280x800"),
    ("debug", "agent_action", "Focus window: Chromium"),
    ("info", "agent_action", "Navigate to https://airline.example/booking"),
    ("info", "agent_action", "Typed 'Lisbon' into the destination field"),
    ("debug", "agent_action", "Click at (640, 412): 'Search'"),
    ("warn", "agent_action", "Cookie banner covers the results; dismissing it"),
    ("info", "agent_action", "Found 14 fares; cheapest 87.40 EUR (TP1351)"),
    ("error", "browser", "Request to https://airline.example/fare-rules timed out after 30 s"),
    ("info", "agent_action", "Retrying the fare rules page"),
    ("info", "agent_action", "Fare rules loaded; no change fee"),
    ("info", "plan", "Task 'Search flights for 12 May, one adult' completed"),
    ("debug", "agent_action", "Scroll results by 600 px"),
    ("info", "agent_action", "Selected fare TP1351, 87.40 EUR"),
]


def api(base, method, path, body=None):
    request = urllib.request.Request(f"{base}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def seed(base):
    """The fleet, through the API; returns the instance to show in detail."""
    made = []
    for n, (name, kind, status, labels) in enumerate(FLEET):
        made.append(api(base, "POST", "/api/instances", {
            "site_id": SITES[n % 2], "user_id": USER, "name": name, "instance_type": kind,
            "status": status, "labels": labels, "agent_id": AGENT if status == "running" else None,
            "configuration": {"browser": "chromium", "viewport": {"width": 1280, "height": 800},
                              "timeout_s": 30},
            "environment_variables": {"LANG": "en_GB.UTF-8", "TZ": "Europe/Lisbon"}}))
        time.sleep(0.05)   # distinct update times
    shown = made[-1]
    plans = []
    for title, kind, status, priority, parent in PLANS:
        body = {"title": title, "plan_type": kind, "priority": priority}
        if parent is not None:
            body["parent_id"] = plans[parent]["id"]
        plan = api(base, "POST", f"/api/instances/{shown['id']}/plans", body)
        if status != "pending":
            plan = api(base, "PATCH", f"/api/instances/{shown['id']}/plans/{plan['id']}",
                       {"status": "in_progress"})
        if status == "completed":
            plan = api(base, "PATCH", f"/api/instances/{shown['id']}/plans/{plan['id']}",
                       {"status": status})
        plans.append(plan)
    for level, kind, message in LOGS:
        api(base, "POST", f"/api/instances/{shown['id']}/logs",
            {"level": level, "log_type": kind, "message": message})
        time.sleep(0.02)
    return shown


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--hide-scrollbars", f"--window-size={WIDTH},900",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(
        executable_path=shutil.which("chromedriver")))


def photograph(driver, url, ready, path):
    """A full-page PNG of `url` once every text of `ready` is shown."""
    driver.set_window_size(WIDTH, 900)
    driver.get(url)
    WebDriverWait(driver, 20).until(
        lambda d: all(text in d.find_element(By.TAG_NAME, "body").text for text in ready))
    # The whole page: the log box grows with the window (60vh), so resize
    # until the page fits.
    for _ in range(4):
        time.sleep(0.3)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        if height <= driver.execute_script("return window.innerHeight"):
            break
        driver.set_window_size(WIDTH, height + 100)
    driver.save_screenshot(str(path))
    print(f"wrote {path.relative_to(ROOT)}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"DATABASE": str(Path(tmp) / "screens.db"), "API_TOKENS": ""})
        server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
        threading.Thread(target=server.run, daemon=True).start()
        base = f"http://127.0.0.1:{server.effective_port}"
        shown = seed(base)
        driver = browser()
        try:
            photograph(driver, f"{base}/ui/", ("1–10 of 10", "running 4"),
                       OUT / "dashboard-list.png")
            photograph(driver, f"{base}/ui/instances/{shown['id']}", ("Selected fare", "Live"),
                       OUT / "dashboard-instance.png")
        finally:
            driver.quit()
            server.close()


if __name__ == "__main__":
    main()
