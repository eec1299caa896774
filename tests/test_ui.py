"""The dashboard (CONTRACT 3.4) and the docs page with tokens: the headers
and files they are served with (test client), then the pages in a real
headless Chromium against the real server, read as a person reads them
(visible text, links, form fields), with every host but 127.0.0.1
unreachable. The browser tests are skipped only where Chromium or its
driver is missing (.ci/run installs them)."""
import json
import re
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest

from app import create_app
from conftest import (
    SITE, USER, assert_problem, call, close_connections, database_for, headless_chromium,
)

TOKEN = "ui-token-7f3a"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
XSS = '<img src=x onerror="window.__pwned=1">'
LOAD = 15       # seconds for a page to show its data (a cold Chromium included)
LIVE = 2        # 3.4: new logs appear within 2 seconds
PAGES = ["/ui/", f"/ui/instances/{SITE}", "/api/docs"]
FILES = ["/ui/static/dashboard.js", "/ui/static/dashboard.css", "/ui/static/docs.js",
         "/ui/static/docs.css", "/ui/static/favicon.svg"]


# -- served as files, with the page headers (test client) ----------------------------------

def csp(resp):
    """The Content-Security-Policy as {directive: [sources]}."""
    policy = resp.headers.get("Content-Security-Policy", "")
    return {name: sources for name, *sources in
            (part.split() for part in policy.split(";") if part.strip())}


def text_of(client, path):
    with client.get(path) as resp:   # closes the file it streams
        assert resp.status_code == 200, path
        return resp.get_data(as_text=True)


def test_the_root_redirects_to_the_dashboard(client):
    resp = client.get("/")
    assert resp.status_code in (301, 302, 303, 307, 308)
    assert urlsplit(resp.headers["Location"]).path == "/ui/"


@pytest.mark.parametrize("path", ["/", *PAGES, *FILES])
def test_pages_and_their_files_refuse_framing_and_inline_script(client, path):
    resp = client.get(path)
    assert resp.status_code in (200, 302), path
    policy = csp(resp)
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    scripts = policy.get("script-src", policy["default-src"])
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in resp.headers
    resp.close()


@pytest.mark.parametrize("path, mimetype", [
    ("/ui/", "text/html"), (f"/ui/instances/{SITE}", "text/html"), ("/api/docs", "text/html"),
    ("/ui/static/dashboard.js", "text/javascript"), ("/ui/static/docs.js", "text/javascript"),
    ("/ui/static/dashboard.css", "text/css"), ("/ui/static/favicon.svg", "image/svg+xml"),
    ("/api/docs/assets/swagger-ui-bundle.js", "text/javascript")])
def test_each_file_has_its_type(client, path, mimetype):
    with client.get(path) as resp:
        assert resp.status_code == 200
        assert resp.mimetype == mimetype


def test_both_views_are_one_shell_that_holds_no_data(client, make_instance):
    made = make_instance(name="secret-name-4711", configuration={"key": "secret-value-0815"})
    shells = [text_of(client, path)
              for path in ("/ui/", f"/ui/instances/{made['id']}", f"/ui/?site_id={SITE}")]
    assert shells[0] == shells[1] == shells[2]
    for text in ("secret-name-4711", "secret-value-0815", made["id"], SITE):
        assert text not in shells[0]


@pytest.mark.parametrize("path", ["/ui/", "/api/docs"])
def test_a_shell_has_no_inline_script_or_style_and_its_files_are_served(client, path):
    html = text_of(client, path)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script"
    assert not re.search(r"\s(style|on\w+)=", html), "an inline style or handler"
    assert "<style" not in html
    files = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    assert any(url.endswith(".js") for url in files) and any(url.endswith(".css") for url in files)
    for url in files:
        if url.startswith(("/ui/static/", "/api/docs/assets/")):
            with client.get(url) as resp:
                assert resp.status_code == 200, url


def test_the_dashboard_links_to_the_docs_and_back(client):
    assert 'href="/api/docs"' in text_of(client, "/ui/")
    assert 'href="/ui/"' in text_of(client, "/api/docs")


@pytest.mark.parametrize("path", ["/ui/nothing", "/ui/static/nothing.js", "/ui/instances/nope",
                                  f"/ui/instances/{SITE}/logs", "/ui/static/../app.py"])
def test_a_missing_page_is_the_usual_problem_404(client, path):
    assert_problem(client.get(path), 404)


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    """A test client of an app with a token."""
    for name in [name for name in __import__("os").environ if name.startswith("INSTANCES_")]:
        monkeypatch.delenv(name)
    close_connections()
    yield create_app({"TESTING": True, "API_TOKENS": TOKEN,
                      **database_for(tmp_path / "t.db")}).test_client()
    close_connections()


@pytest.mark.parametrize("path", ["/", "/ui/", f"/ui/instances/{SITE}", *FILES, "/api/docs",
                                  "/api/docs/assets/swagger-ui-bundle.js",
                                  "/api/docs/assets/swagger-ui.css"])
def test_with_tokens_the_pages_load_without_one(guarded, path):
    with guarded.get(path) as resp:
        assert resp.status_code in (200, 302), path
        assert "WWW-Authenticate" not in resp.headers


@pytest.mark.parametrize("path", ["/api/instances", "/api/openapi.json", "/api/docs/",
                                  "/api/docs/openapi.json", "/api/docsx",
                                  f"/api/instances/{SITE}/logs"])
def test_with_tokens_the_api_and_its_document_still_need_one(guarded, path):
    assert_problem(guarded.get(path), 401)
    assert guarded.get(path, headers=BEARER).status_code != 401


def test_the_docs_assets_route_serves_no_api_document(guarded):
    for path in ("/api/docs/assets/../../openapi.json", "/api/docs/assets/..%2F..%2Fopenapi.json"):
        resp = guarded.get(path)
        assert resp.status_code in (401, 404), path
        assert b'"openapi"' not in resp.get_data()


# -- in the browser ------------------------------------------------------------------------

@pytest.fixture
def browser():
    """Kept console and network logs; in Tokyo time, so that local times
    differ from UTC."""
    driver = headless_chromium(logs=True, timezone="Asia/Tokyo")
    yield driver
    driver.quit()


def until(driver, condition, timeout=LOAD):
    """Wait for `condition`; on a timeout, fail showing what the page shows
    (its messages name the request that failed)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise AssertionError(f"not within {timeout} s; the page shows:\n"
                             f"{page_text(driver)[:2000]}") from None


def page_text(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def shows(driver, *texts, timeout=LOAD):
    """Wait until every one of `texts` is visible on the page."""
    until(driver, lambda d: all(text in page_text(d) for text in texts), timeout)


def rows(driver):
    """The visible text of each row of the table body."""
    from selenium.webdriver.common.by import By

    return [row.text for row in driver.find_elements(By.CSS_SELECTOR, "tbody tr")]


def chips(driver):
    """The status counts as the chips show them: {"running": 2, "all": 3, ...}."""
    from selenium.webdriver.common.by import By

    found = {}
    for link in driver.find_elements(By.TAG_NAME, "a"):
        match = re.fullmatch(r"([a-z_]+) ([\d,]+)", link.text)
        if match:
            found[match.group(1)] = int(match.group(2).replace(",", ""))
    return found


def section(driver, heading):
    """The list items of the page section under `heading` (Plans, Logs)."""
    from selenium.webdriver.common.by import By

    return driver.find_elements(
        By.XPATH, f"//section[.//h2[normalize-space()='{heading}']]//li")


def log_messages(driver):
    return [item.text for item in section(driver, "Logs")]


def create(url, headers=None, **fields):
    resp = call(url, "POST", "/api/instances",
                {"site_id": SITE, "user_id": USER, "name": "box", **fields}, headers)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def post(url, path, body, headers=None):
    resp = call(url, "POST", path, body, headers)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def requested_urls(driver):
    """Every URL the browser asked for since the last call (performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_the_list_shows_the_instances_newest_first_with_their_details(server, browser):
    from selenium.webdriver.common.by import By

    first = create(server.url, name="web-1", instance_type="ubuntu", status="running")
    create(server.url, name="web-2", status="error", agent_id=USER)
    create(server.url, name="web-3", instance_type="windows")
    browser.get(f"{server.url}/")
    shows(browser, "web-1", "web-2", "web-3")
    assert urlsplit(browser.current_url).path == "/ui/"
    listed = rows(browser)
    assert [row.split()[0] for row in listed] == ["web-3", "web-2", "web-1"]
    assert "windows" in listed[0] and "pending" in listed[0]
    assert "error" in listed[1] and USER[:8] in listed[1]
    assert "ubuntu" in listed[2] and "running" in listed[2] and SITE[:8] in listed[2]
    assert "1–3 of 3" in page_text(browser)
    link = browser.find_element(By.LINK_TEXT, "web-1")
    assert urlsplit(link.get_attribute("href")).path == f"/ui/instances/{first['id']}"
    docs = browser.find_element(By.LINK_TEXT, "API docs")
    assert urlsplit(docs.get_attribute("href")).path == "/api/docs"


def test_the_status_chips_count_and_filter(server, browser):
    from selenium.webdriver.common.by import By

    for name, status in [("a", "running"), ("b", "running"), ("c", "error"), ("d", "paused")]:
        create(server.url, name=f"box-{name}", status=status)
    browser.get(f"{server.url}/ui/")
    until(browser, lambda d: chips(d).get("all") == 4)
    counts = chips(browser)
    assert counts["running"] == 2 and counts["error"] == 1 and counts["paused"] == 1
    assert counts["pending"] == 0          # every status, zeros included
    next(link for link in browser.find_elements(By.TAG_NAME, "a")
         if link.text == "error 1").click()
    until(browser, lambda d: "status=error" in d.current_url and len(rows(d)) == 1)
    assert rows(browser)[0].startswith("box-c")
    assert "1–1 of 1" in page_text(browser)


def test_a_pasted_filter_url_shows_only_what_it_filters(server, browser):
    from selenium.webdriver.common.by import By

    create(server.url, name="prod-broken", status="error", labels={"env": "prod"})
    create(server.url, name="prod-fine", status="running", labels={"env": "prod"})
    create(server.url, name="dev-broken", status="error", labels={"env": "dev"})
    browser.get(f"{server.url}/ui/?status=error&label=env%3Dprod")
    shows(browser, "prod-broken")
    until(browser, lambda d: chips(d).get("all") == 2)   # counts share the other filters
    assert [row.split()[0] for row in rows(browser)] == ["prod-broken"]
    assert "env=prod" in rows(browser)[0]
    assert "prod-fine" not in page_text(browser) and "dev-broken" not in page_text(browser)
    # The form shows the filters it read from the URL.
    label = browser.find_element(By.CSS_SELECTOR, "input[name=label]")
    status = browser.find_element(By.CSS_SELECTOR, "select[name=status]")
    assert label.get_attribute("value") == "env=prod"
    assert status.get_attribute("value") == "error"


def test_the_filter_form_writes_the_page_url(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    create(server.url, name="alpha-web", status="running")
    create(server.url, name="alpha-db", status="stopped")
    create(server.url, name="beta-web", status="running")
    browser.get(f"{server.url}/ui/")
    shows(browser, "beta-web")
    browser.find_element(By.CSS_SELECTOR, "input[name=q]").send_keys("alpha")
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=status]")).select_by_value(
        "running")
    browser.find_element(By.XPATH, "//button[normalize-space()='Filter']").click()
    until(browser, lambda d: "q=alpha" in d.current_url)
    shows(browser, "alpha-web")
    query = urlsplit(browser.current_url).query
    assert sorted(query.split("&")) == ["q=alpha", "status=running"]   # no empty filters
    assert [row.split()[0] for row in rows(browser)] == ["alpha-web"]


def test_pages_follow_the_api_links_and_show_the_range(server, browser):
    from selenium.webdriver.common.by import By

    for n in range(5):
        create(server.url, name=f"page-{n}")
    browser.get(f"{server.url}/ui/?limit=2")
    shows(browser, "1–2 of 5")
    assert [row.split()[0] for row in rows(browser)] == ["page-4", "page-3"]
    browser.find_element(By.PARTIAL_LINK_TEXT, "Older").click()
    shows(browser, "3–4 of 5")
    assert [row.split()[0] for row in rows(browser)] == ["page-2", "page-1"]
    assert "offset=2" in browser.current_url and "limit=2" in browser.current_url
    browser.find_element(By.PARTIAL_LINK_TEXT, "Older").click()
    shows(browser, "5–5 of 5")
    browser.find_element(By.PARTIAL_LINK_TEXT, "Newer").click()
    shows(browser, "3–4 of 5")


def test_the_instance_page_shows_its_fields_plans_and_logs(server, browser):
    from selenium.webdriver.common.by import By

    made = create(server.url, name="detail-box", status="running", agent_id=USER,
                  configuration={"cpu": 4, "screen": {"width": 1280}},
                  environment_variables={"LANG": "C.UTF-8"})
    base = f"/api/instances/{made['id']}"
    objective = post(server.url, f"{base}/plans", {
        "title": "Book a flight", "plan_type": "objective", "priority": 5,
        "status": "in_progress"})
    post(server.url, f"{base}/plans", {"title": "Open the airline site", "plan_type": "task",
                                       "parent_id": objective["id"], "status": "completed"})
    post(server.url, f"{base}/plans", {"title": "Unrelated chore", "plan_type": "task"})
    for message in ("first", "second", "third"):
        post(server.url, f"{base}/logs", {"log_type": "system", "message": message})

    browser.get(f"{server.url}/ui/instances/{made['id']}")
    shows(browser, "detail-box", "Book a flight", "third")
    text = page_text(browser)
    for value in (made["id"], SITE, USER, "running", "browser", "LANG", "C.UTF-8"):
        assert value in text, value
    shown = {json.dumps(json.loads(pre.text), sort_keys=True): pre.text
             for pre in browser.find_elements(By.TAG_NAME, "pre")}
    config = shown[json.dumps(made["configuration"], sort_keys=True)]
    assert "\n" in config, "objects are shown as formatted JSON"
    # The tree: the task under its objective; the unrelated task beside it.
    plans = {item.text.split("\n")[0]: item for item in section(browser, "Plans")}
    parent = next(item for line, item in plans.items() if line.startswith("Book a flight"))
    child = next(item for line, item in plans.items() if line.startswith("Open the airline"))
    alone = next(item for line, item in plans.items() if line.startswith("Unrelated"))
    assert "Open the airline site" in parent.text and "Book a flight" not in child.text
    assert "Open the airline site" not in alone.text
    assert "objective" in parent.text and "in_progress" in parent.text
    assert "priority 5" in parent.text and "started" in parent.text
    assert "completed" in child.text and "ended" in child.text
    # Newest at the bottom.
    messages = [line.split()[-1] for line in log_messages(browser)]
    assert messages == ["first", "second", "third"]
    assert browser.find_element(By.LINK_TEXT, "← All instances")


def test_activity_deadlines_and_the_reason_are_shown(server, browser):
    from selenium.webdriver.common.by import By

    made = create(server.url, name="timed", status="running", idle_timeout_s=3600,
                  expires_at="2031-05-06T07:08:09Z", status_reason="<i>booted</i> by hand")
    browser.get(f"{server.url}/ui/")
    shows(browser, "timed")
    headers = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "thead th")]
    assert headers[-1] == "Last active"
    cell = browser.find_elements(By.CSS_SELECTOR, "tbody tr td")[-1]
    time_element = cell.find_element(By.TAG_NAME, "time")
    assert time_element.get_attribute("datetime") == made["last_activity_at"]
    browser.get(f"{server.url}/ui/instances/{made['id']}")
    # Stored text as text; the deadlines in Tokyo time (UTC+9).
    shows(browser, "<i>booted</i> by hand", "ends if idle at", "expires at",
          "2031-05-06 16:08:09", "last_activity_at")
    assert browser.find_elements(By.CSS_SELECTOR, "main h1 i") == []


def test_the_instance_page_follows_its_status_reason_and_activity(server, browser):
    """Issue 24: the head of the page moves with the instance, no reload."""
    made = create(server.url, name="followed", status="running")
    browser.get(f"{server.url}/ui/instances/{made['id']}")
    shows(browser, "followed", "running")
    reply = call(server.url, "PATCH", f"/api/instances/{made['id']}",
                 {"status": "error", "status_reason": "<b>crashed</b> at 3"})
    assert reply.status_code == 200
    # Within the page's refresh (2 s) and a margin; the reason as text.
    shows(browser, "<b>crashed</b> at 3", timeout=5)
    from selenium.webdriver.common.by import By

    assert browser.find_elements(By.CSS_SELECTOR, "main h1 b") == []
    assert browser.find_element(By.CSS_SELECTOR, "main h1 .badge").text == "error"


def test_times_are_local_with_the_utc_value_on_hover(server, browser):
    from selenium.webdriver.common.by import By

    made = create(server.url, name="clock-box")
    browser.get(f"{server.url}/ui/instances/{made['id']}")
    shows(browser, "clock-box")
    stamp = made["updated_at"]
    element = browser.find_element(By.CSS_SELECTOR, f'[title="{stamp}"]')
    utc = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    tokyo = utc.astimezone(timezone(timedelta(hours=9)))   # the browser's zone here
    assert element.text == tokyo.strftime("%Y-%m-%d %H:%M:%S")


def test_labels_show_on_the_list_and_the_instance_page(server, browser):
    from selenium.webdriver.common.by import By

    made = create(server.url, name="labelled", labels={"env": "prod", "team": "web"})
    browser.get(f"{server.url}/ui/")
    shows(browser, "labelled")
    assert "env=prod" in rows(browser)[0] and "team=web" in rows(browser)[0]
    browser.get(f"{server.url}/ui/instances/{made['id']}")
    shows(browser, "env=prod", "team=web")
    # A label links to the list of the instances that carry it.
    browser.find_element(By.LINK_TEXT, "team=web").click()
    until(browser, lambda d: "label=team%3Dweb" in d.current_url)
    shows(browser, "labelled")


def test_the_minimum_level_hides_lower_levels(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    made = create(server.url, name="levels")
    post(server.url, f"/api/instances/{made['id']}/logs",
         [{"log_type": "system", "level": level, "message": f"at-{level}"}
          for level in ("debug", "info", "warn", "error", "fatal")])
    browser.get(f"{server.url}/ui/instances/{made['id']}")
    shows(browser, "at-debug", "at-fatal")
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=min_level]")).select_by_value(
        "error")
    until(browser, lambda d: "min_level=error" in d.current_url)
    shows(browser, "at-fatal")
    assert [line.split()[-1] for line in log_messages(browser)] == ["at-error", "at-fatal"]


def test_older_logs_come_on_demand_above_the_others(server, browser):
    from selenium.webdriver.common.by import By

    made = create(server.url, name="chatty")
    post(server.url, f"/api/instances/{made['id']}/logs",
         [{"log_type": "system", "message": f"line-{n:03}"} for n in range(250)])
    browser.get(f"{server.url}/ui/instances/{made['id']}")
    shows(browser, "line-249")
    shown = [line.split()[-1] for line in log_messages(browser)]
    assert shown == [f"line-{n:03}" for n in range(250 - len(shown), 250)]
    assert "line-000" not in shown
    button = browser.find_element(By.XPATH, "//button[normalize-space()='Older logs']")
    button.click()
    until(browser, lambda d: "line-000" in log_messages(d)[0])
    assert [line.split()[-1] for line in log_messages(browser)] == [
        f"line-{n:03}" for n in range(250)]
    assert not button.is_displayed()       # nothing older is left


def test_the_first_log_of_an_empty_instance_appears_within_2_seconds(server, browser):
    made = create(server.url, name="quiet")
    browser.get(f"{server.url}/ui/instances/{made['id']}")
    shows(browser, "quiet", "No logs")
    post(server.url, f"/api/instances/{made['id']}/logs",
         {"log_type": "system", "message": "finally-awake"})
    shows(browser, "finally-awake", timeout=LIVE)


def test_new_logs_appear_within_2_seconds_in_order_once_each(server, browser):
    made = create(server.url, name="live")
    base = f"/api/instances/{made['id']}/logs"
    post(server.url, base, {"log_type": "system", "message": "before-open"})
    browser.get(f"{server.url}/ui/instances/{made['id']}")
    shows(browser, "before-open")
    for n in range(3):
        time.sleep(0.3 + n * 0.7)   # at different points of a held request
        post(server.url, base, {"log_type": "agent_action", "message": f"live-{n}"})
        shows(browser, f"live-{n}", timeout=LIVE)
    post(server.url, base, [{"log_type": "system", "message": f"burst-{n}"} for n in range(3)])
    shows(browser, "burst-2", timeout=LIVE)
    assert [line.split()[-1] for line in log_messages(browser)] == [
        "before-open", "live-0", "live-1", "live-2", "burst-0", "burst-1", "burst-2"]


def test_stored_markup_is_shown_as_text_and_runs_nothing(server, browser):
    from selenium.webdriver.common.by import By

    made = create(server.url, name="<b>bold</b><script>window.__pwned=2</script>",
                  configuration={"html": XSS})
    base = f"/api/instances/{made['id']}"
    post(server.url, f"{base}/logs", {"log_type": "agent_action", "message": XSS,
                                      "details": {"x": "<svg onload=window.__pwned=3>"}})
    post(server.url, f"{base}/plans", {"title": XSS, "plan_type": "task"})
    for page in ("/ui/", f"/ui/instances/{made['id']}"):
        browser.get(f"{server.url}{page}")
        shows(browser, "<b>bold</b><script>window.__pwned=2</script>")
        if page != "/ui/":
            shows(browser, XSS)
            assert any(line.endswith(XSS) or XSS in line for line in log_messages(browser))
        assert browser.execute_script("return window.__pwned") is None
        for tag in ("img", "svg", "script"):
            assert browser.find_elements(By.CSS_SELECTOR, f"main {tag}") == [], tag


def test_no_request_leaves_the_server_and_nothing_is_logged_as_an_error(server, browser):
    made = create(server.url, name="clean", status="running")
    base = f"/api/instances/{made['id']}"
    post(server.url, f"{base}/logs", {"log_type": "system", "message": "hello"})
    post(server.url, f"{base}/plans", {"title": "Plan", "plan_type": "task"})
    browser.get(f"{server.url}/ui/?status=running")
    until(browser, lambda d: chips(d).get("running") == 1)
    browser.get(f"{server.url}/ui/instances/{made['id']}")
    shows(browser, "hello")
    post(server.url, f"{base}/logs", {"log_type": "system", "message": "again"})
    shows(browser, "again", timeout=LIVE)
    browser.get(f"{server.url}/api/docs")
    until(browser, lambda d: "/api/instances" in page_text(d))
    origin = urlsplit(server.url).netloc
    urls = requested_urls(browser)
    assert urls and all(urlsplit(url).netloc == origin for url in urls
                        if not url.startswith("data:")), urls
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


# -- with tokens ---------------------------------------------------------------------------

def submit_token(driver, token):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = until(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[type=password]"))
    field.send_keys(token, Keys.ENTER)


def test_the_dashboard_asks_for_a_token_and_asks_again_when_refused(start_server, browser):
    from selenium.webdriver.common.by import By

    srv = start_server(env={"INSTANCES_API_TOKENS": TOKEN})
    made = create(srv.url, BEARER, name="guarded-box")
    browser.get(f"{srv.url}/ui/instances/{made['id']}")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
    assert "guarded-box" not in page_text(browser)
    submit_token(browser, "wrong-token")
    shows(browser, "refused")
    assert "guarded-box" not in page_text(browser)
    submit_token(browser, TOKEN)
    shows(browser, "guarded-box")
    browser.get(f"{srv.url}/ui/")
    shows(browser, "guarded-box")      # the tab keeps it: no second prompt
    # Kept in the tab's sessionStorage only: no cookie, nothing in the URL.
    assert browser.get_cookies() == []
    assert TOKEN not in browser.current_url
    stored = browser.execute_script(
        "return Object.keys(sessionStorage).map(k => sessionStorage.getItem(k))")
    assert stored == [TOKEN]
    assert browser.execute_script("return localStorage.length") == 0


def test_the_docs_page_works_with_a_token(start_server, browser):
    from selenium.webdriver.common.by import By

    srv = start_server(env={"INSTANCES_API_TOKENS": TOKEN})
    create(srv.url, BEARER, name="seen-through-the-docs")
    browser.get(f"{srv.url}/api/docs")
    submit_token(browser, "not-it")
    shows(browser, "refused")
    submit_token(browser, TOKEN)
    blocks = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    operation = next(block for block in blocks
                     if "opblock-get" in block.get_attribute("class")
                     and block.find_element(By.CSS_SELECTOR, ".opblock-summary-path")
                     .get_attribute("data-path") == "/api/instances")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    until(browser, lambda d: operation.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    until(browser, lambda d: operation.find_element(By.CSS_SELECTOR, ".execute")).click()
    answer = until(browser, lambda d: operation.find_element(
        By.CSS_SELECTOR, ".live-responses-table tbody .response"))
    assert answer.find_element(By.CSS_SELECTOR, ".response-col_status").text.strip() == "200"
    assert "seen-through-the-docs" in answer.text
    # The way back to the dashboard, which takes the same token from the tab.
    browser.find_element(By.PARTIAL_LINK_TEXT, "Dashboard").click()
    shows(browser, "seen-through-the-docs")
    assert browser.get_cookies() == []
