"""/api/docs in a real headless Chromium against the real server, with every
host but 127.0.0.1 unreachable: the page must load from the service alone,
list the routes, and run "Try it out" on GET /api/instances."""
import pytest

from conftest import SITE, USER, call, headless_chromium


@pytest.fixture
def browser():
    driver = headless_chromium(window="1280,2000")
    yield driver
    driver.quit()


def test_the_docs_page_lists_the_routes_and_tries_one_out(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    call(server.url, "POST", "/api/instances", {"site_id": SITE, "user_id": USER,
                                                "name": "seen-in-the-browser"})
    browser.get(f"{server.url}/api/docs")
    wait = WebDriverWait(browser, 30)

    blocks = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    listed = {(block.get_attribute("class").split("opblock-")[1].split()[0],
               block.find_element(By.CSS_SELECTOR, ".opblock-summary-path")
               .get_attribute("data-path")) for block in blocks}
    assert {("get", "/api/instances"), ("post", "/api/instances"),
            ("patch", "/api/instances/{instance_id}"),
            ("post", "/api/instances/{instance_id}/logs")} <= listed

    operation = next(block for block in blocks
                     if "opblock-get" in block.get_attribute("class")
                     and block.find_element(By.CSS_SELECTOR, ".opblock-summary-path")
                     .get_attribute("data-path") == "/api/instances")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda d: operation.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    wait.until(lambda d: operation.find_element(By.CSS_SELECTOR, ".execute")).click()
    answer = wait.until(lambda d: operation.find_element(
        By.CSS_SELECTOR, ".live-responses-table tbody .response"))
    assert answer.find_element(By.CSS_SELECTOR, ".response-col_status").text.strip() == "200"
    assert "seen-in-the-browser" in answer.find_element(By.CSS_SELECTOR, ".microlight").text
