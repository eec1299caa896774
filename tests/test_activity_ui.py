"""The dashboard's Activity page (/ui/activity): the fleet's live error
stream and its recent changes, each linking to its instance, filters in
the URL under the API's names; in headless Chromium against the real
server, read as a person reads it (see test_ui.py)."""
import time

from conftest import call
import test_ui
from test_ui import LIVE, XSS, create, page_text, post, section, shows

browser = test_ui.browser   # the fixture


def test_the_activity_page_is_the_dashboard_shell_with_its_headers(client):
    resp = client.get("/ui/activity?min_level=warn")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    resp.close()


def test_a_new_error_of_any_instance_appears_within_2_seconds_as_text(server, browser):
    from selenium.webdriver.common.by import By

    quiet, loud = create(server.url, name="quiet"), create(server.url, name="loud")
    post(server.url, f"/api/instances/{loud['id']}/logs",
         {"log_type": "system", "level": "error", "message": "disk-full-before"})
    browser.get(f"{server.url}/ui/activity")
    shows(browser, "disk-full-before", "instance.created")
    for n in range(2):
        time.sleep(0.3 + n * 0.7)   # at different points of a held request
        post(server.url, f"/api/instances/{quiet['id']}/logs",
             {"log_type": "system", "level": "info", "message": f"chatter-{n}"})
        post(server.url, f"/api/instances/{quiet['id']}/logs",
             {"log_type": "agent", "level": "fatal", "message": f"crash-{n}"})
        shows(browser, f"crash-{n}", timeout=LIVE)
    post(server.url, f"/api/instances/{quiet['id']}/logs",
         {"log_type": "agent", "level": "error", "message": XSS})
    shows(browser, XSS, timeout=LIVE)
    assert browser.execute_script("return window.__pwned") is None
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    errors = [item.text for item in section(browser, "Errors")]
    assert XSS in errors[0] and "crash-1" in errors[1] and "crash-0" in errors[2]
    assert "chatter" not in page_text(browser)
    # A change shows in the events, newest first, linking to its instance.
    assert call(server.url, "PATCH", f"/api/instances/{quiet['id']}",
                {"status": "error"}).status_code == 200
    shows(browser, "instance.updated", timeout=LIVE)
    events = section(browser, "Events")
    assert "instance.updated" in events[0].text
    link = events[0].find_element(By.TAG_NAME, "a")
    assert link.get_attribute("href").endswith(f"/ui/instances/{quiet['id']}")


def test_filters_come_from_the_url_under_the_api_names(server, browser):
    web = create(server.url, name="web", labels={"env": "prod"})
    lab = create(server.url, name="lab", labels={"env": "dev"})
    for made, message in ((web, "prod-warning"), (lab, "dev-warning")):
        post(server.url, f"/api/instances/{made['id']}/logs",
             {"log_type": "system", "level": "warn", "message": message})
    browser.get(f"{server.url}/ui/activity?min_level=warn&label=env%3Dprod")
    shows(browser, "prod-warning")
    assert "dev-warning" not in page_text(browser)
    post(server.url, f"/api/instances/{lab['id']}/logs",
         {"log_type": "system", "level": "fatal", "message": "dev-fatal"})
    post(server.url, f"/api/instances/{web['id']}/logs",
         {"log_type": "system", "level": "warn", "message": "prod-live"})
    shows(browser, "prod-live", timeout=LIVE)
    assert "dev-fatal" not in page_text(browser)
