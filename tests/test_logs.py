"""Logs of an instance: /api/instances/{id}/logs and its item route."""
import re
import uuid
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import assert_problem, random_id

LEVELS = ("debug", "info", "warn", "error", "fatal")


@pytest.fixture
def logs_url(instance):
    return f"/api/instances/{instance['id']}/logs"


def path_of(url):
    """The path and query of an absolute URL, for the test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def links(resp):
    """The Link header as {rel: path-and-query}."""
    header = resp.headers.get("Link", "")
    return {rel: path_of(url) for url, rel in re.findall(r'<([^>]*)>;\s*rel="([^"]+)"', header)}


def case_id(value):
    """A short readable test id for a table row."""
    if isinstance(value, dict):
        return ",".join(f"{key}={str(val)[:12]!r}" for key, val in value.items())
    return str(value)


def ids(resp):
    return [row["id"] for row in resp.get_json()]


def assert_utc_timestamp(value):
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() == timedelta(0), value


# -- create ------------------------------------------------------------------

def test_create_log_answers_201_with_location_of_the_same_log(client, logs_url):
    resp = client.post(logs_url, json={"log_type": "agent_action", "message": "clicked OK",
                                       "level": "warn", "details": {"x": 10, "y": [1, 2]}})

    assert resp.status_code == 201
    assert resp.mimetype == "application/json"
    created = resp.get_json()
    location = resp.headers["Location"]
    assert urlsplit(location).path == f"{logs_url}/{created['id']}"
    fetched = client.get(path_of(location))
    assert fetched.status_code == 200
    assert fetched.mimetype == "application/json"
    assert fetched.get_json() == created
    assert created["log_type"] == "agent_action"
    assert created["message"] == "clicked OK"
    assert created["level"] == "warn"
    assert created["details"] == {"x": 10, "y": [1, 2]}


def test_create_log_fills_defaults_and_server_fields(client, instance, logs_url):
    resp = client.post(logs_url, json={"log_type": "system", "message": "booted"})

    assert resp.status_code == 201
    log = resp.get_json()
    assert log["level"] == "info"
    assert log["details"] == {}
    assert log["instance_id"] == instance["id"]
    assert str(uuid.UUID(log["id"])) == log["id"]
    assert_utc_timestamp(log["created_at"])


def test_create_log_accepts_an_upper_case_parent_id_and_answers_canonical(client, instance):
    resp = client.post(f"/api/instances/{instance['id'].upper()}/logs",
                       json={"log_type": "system", "message": "hi"})

    assert resp.status_code == 201
    assert resp.get_json()["instance_id"] == instance["id"]
    assert instance["id"] in resp.headers["Location"]


def test_create_log_ignores_read_only_fields_in_the_body(client, instance, make_instance,
                                                         logs_url):
    other = make_instance(name="other")
    sent_id = random_id()
    resp = client.post(logs_url, json={
        "log_type": "system", "message": "hi", "id": sent_id,
        "instance_id": other["id"], "created_at": "2000-01-01T00:00:00Z"})

    assert resp.status_code == 201
    log = resp.get_json()
    assert log["id"] != sent_id
    assert log["instance_id"] == instance["id"]
    assert not log["created_at"].startswith("2000-")
    assert client.get(f"/api/instances/{other['id']}/logs").get_json() == []
    assert ids(client.get(logs_url)) == [log["id"]]


@pytest.mark.parametrize("fields", [
    {"message": "m" * 65536},
    {"log_type": "a" + "b" * 63},
    {"log_type": "a"},
    {"log_type": "agent.action"},
    {"log_type": "agent_action"},
    {"log_type": "agent-action"},
    {"log_type": "x9._-"},
    *({"level": level} for level in LEVELS),
], ids=case_id)
def test_create_log_accepts_values_at_the_boundaries(client, logs_url, fields):
    body = {"log_type": "system", "message": "m", **fields}
    resp = client.post(logs_url, json=body)

    assert resp.status_code == 201, resp.get_json()
    log = resp.get_json()
    fetched = client.get(path_of(resp.headers["Location"])).get_json()
    for name, value in fields.items():
        assert log[name] == value
        assert fetched[name] == value


@pytest.mark.parametrize("payload, field", [
    ({"message": "m"}, "log_type"),
    ({"log_type": "system"}, "message"),
    ({"log_type": "System", "message": "m"}, "log_type"),
    ({"log_type": "9system", "message": "m"}, "log_type"),
    ({"log_type": "_system", "message": "m"}, "log_type"),
    ({"log_type": "a" + "b" * 64, "message": "m"}, "log_type"),
    ({"log_type": "agent action", "message": "m"}, "log_type"),
    ({"log_type": "", "message": "m"}, "log_type"),
    ({"log_type": None, "message": "m"}, "log_type"),
    ({"log_type": 7, "message": "m"}, "log_type"),
    ({"log_type": "system\n", "message": "m"}, "log_type"),
    ({"log_type": "system", "message": "m", "level": "loud"}, "level"),
    ({"log_type": "system", "message": "m", "level": "INFO"}, "level"),
    ({"log_type": "system", "message": "m", "level": None}, "level"),
    ({"log_type": "system", "message": ""}, "message"),
    ({"log_type": "system", "message": "m" * 65537}, "message"),
    ({"log_type": "system", "message": 42}, "message"),
    ({"log_type": "system", "message": ["m"]}, "message"),
    ({"log_type": "system", "message": None}, "message"),
    ({"log_type": "system", "message": "m", "details": []}, "details"),
    ({"log_type": "system", "message": "m", "details": "{}"}, "details"),
    ({"log_type": "system", "message": "m", "details": 1}, "details"),
    ({"log_type": "system", "message": "m", "details": None}, "details"),
    ({"log_type": "system", "message": "m", "severity": "info"}, "severity"),
], ids=case_id)
def test_create_log_rejects_invalid_fields(client, logs_url, payload, field):
    assert_problem(client.post(logs_url, json=payload), 422, field)
    assert client.get(logs_url).headers["X-Total-Count"] == "0"


def test_invalid_level_error_names_the_allowed_levels(client, logs_url):
    body = assert_problem(client.post(logs_url, json={
        "log_type": "system", "message": "m", "level": "loud"}), 422, "level")

    message = " ".join(body["errors"]["json"]["level"])
    for level in LEVELS:
        assert level in message


def test_create_log_reports_every_bad_field_at_once(client, logs_url):
    body = assert_problem(client.post(logs_url, json={"level": "loud", "details": []}), 422)

    assert set(body["errors"]["json"]) == {"log_type", "message", "level", "details"}


@pytest.mark.parametrize("text", [
    "héllo wörld ñ",
    "日本語のログ 🚀🔥👩‍💻",
    "مرحبا بالعالم",
    "'; DROP TABLE instance_log; --",
    "Robert'); DELETE FROM instance WHERE 1=1; --",
    "line one\nline two\ttabbed \\ backslash \"quoted\"",
    "% _ [like wildcards] *",
    "<script>alert(1)</script>",
    "nul \u0000 inside",
])
def test_log_text_is_stored_verbatim(client, logs_url, text):
    details = {text: text, "nested": {"list": [text, 1, None, True]}}
    resp = client.post(logs_url, json={"log_type": "system", "message": text,
                                       "details": details})

    assert resp.status_code == 201, resp.get_json()
    fetched = client.get(path_of(resp.headers["Location"])).get_json()
    assert fetched["message"] == text
    assert fetched["details"] == details
    assert client.get(logs_url).get_json()[0]["message"] == text


def test_log_details_keep_nested_json_types(client, logs_url):
    details = {"int": 2**53, "float": 1.5, "bool": False, "null": None,
               "list": [{"a": []}], "empty": {}}
    resp = client.post(logs_url, json={"log_type": "system", "message": "m",
                                       "details": details})

    assert client.get(path_of(resp.headers["Location"])).get_json()["details"] == details


# -- parent instance ---------------------------------------------------------

VALID_LOG = {"log_type": "system", "message": "m"}


@pytest.mark.parametrize("method, body", [("GET", None), ("POST", VALID_LOG)])
def test_logs_of_an_unknown_instance_are_404(client, method, body):
    resp = client.open(f"/api/instances/{random_id()}/logs", method=method, json=body)
    assert_problem(resp, 404)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a0"])
@pytest.mark.parametrize("method, body", [("GET", None), ("POST", VALID_LOG)])
def test_logs_under_a_malformed_instance_id_are_404(client, method, body, bad_id):
    resp = client.open(f"/api/instances/{bad_id}/logs", method=method, json=body)
    assert_problem(resp, 404)


def test_logs_of_a_deleted_instance_are_404(client, instance, make_log, logs_url):
    make_log()
    assert client.delete(f"/api/instances/{instance['id']}").status_code == 204

    assert_problem(client.get(logs_url), 404)
    assert_problem(client.post(logs_url, json=VALID_LOG), 404)


# -- single log --------------------------------------------------------------

def test_get_log_by_id_returns_it(client, make_log, logs_url):
    log = make_log(log_type="error", level="error", message="boom", details={"code": 7})

    resp = client.get(f"{logs_url}/{log['id']}")

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == log


def test_get_log_by_upper_case_ids_returns_it(client, instance, make_log):
    log = make_log()

    resp = client.get(f"/api/instances/{instance['id'].upper()}/logs/{log['id'].upper()}")

    assert resp.status_code == 200
    assert resp.get_json()["id"] == log["id"]


def test_get_unknown_log_id_is_404(client, make_log, logs_url):
    make_log()
    assert_problem(client.get(f"{logs_url}/{random_id()}"), 404)


def test_get_malformed_log_id_is_404(client, logs_url):
    assert_problem(client.get(f"{logs_url}/not-a-uuid"), 404)


def test_get_log_through_another_instance_is_404(client, make_instance, make_log):
    other = make_instance(name="other")
    log = make_log()

    assert_problem(client.get(f"/api/instances/{other['id']}/logs/{log['id']}"), 404)


def test_get_log_under_an_unknown_instance_is_404(client, make_log):
    log = make_log()
    assert_problem(client.get(f"/api/instances/{random_id()}/logs/{log['id']}"), 404)


# -- lists -------------------------------------------------------------------

def test_list_logs_of_a_new_instance_is_empty(client, logs_url):
    resp = client.get(logs_url)

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == []
    assert resp.headers["X-Total-Count"] == "0"
    assert "Link" not in resp.headers or resp.headers["Link"] == ""


def test_list_logs_is_newest_first(client, make_log, logs_url):
    made = [make_log(message=f"event {n}")["id"] for n in range(5)]

    resp = client.get(logs_url)

    assert resp.status_code == 200
    assert ids(resp) == made[::-1]
    stamps = [datetime.fromisoformat(row["created_at"]) for row in resp.get_json()]
    assert stamps == sorted(stamps, reverse=True)
    assert resp.headers["X-Total-Count"] == "5"


def test_list_logs_pages_with_limit_offset_and_links(client, make_log, logs_url):
    made = [make_log(message=f"event {n}")["id"] for n in range(5)][::-1]

    first = client.get(f"{logs_url}?limit=2")
    assert ids(first) == made[0:2]
    assert first.headers["X-Total-Count"] == "5"
    assert "prev" not in links(first)

    middle = client.get(links(first)["next"])
    assert middle.status_code == 200
    assert ids(middle) == made[2:4]
    assert middle.headers["X-Total-Count"] == "5"

    last = client.get(links(middle)["next"])
    assert ids(last) == made[4:]
    assert "next" not in links(last)

    back = client.get(links(last)["prev"])
    assert ids(back) == made[2:4]
    assert ids(client.get(links(middle)["prev"])) == made[0:2]


def test_list_logs_offset_and_limit_select_the_window(client, make_log, logs_url):
    made = [make_log(message=f"event {n}")["id"] for n in range(4)][::-1]

    resp = client.get(f"{logs_url}?limit=2&offset=1")

    assert ids(resp) == made[1:3]
    assert resp.headers["X-Total-Count"] == "4"
    assert set(links(resp)) == {"next", "prev"}


def test_list_logs_links_keep_the_filters(client, make_log, logs_url):
    for _ in range(3):
        make_log(level="error")
    make_log(level="info")

    resp = client.get(f"{logs_url}?level=error&limit=1&offset=1")
    page_links = links(resp)

    assert resp.headers["X-Total-Count"] == "3"
    for rel in ("next", "prev"):
        query = parse_qs(urlsplit(page_links[rel]).query)
        assert query["level"] == ["error"]
        assert query["limit"] == ["1"]
    assert parse_qs(urlsplit(page_links["next"]).query)["offset"] == ["2"]
    assert parse_qs(urlsplit(page_links["prev"]).query)["offset"] == ["0"]


def test_list_logs_offset_past_the_end_is_an_empty_page(client, make_log, logs_url):
    make_log()

    resp = client.get(f"{logs_url}?offset=10")

    assert resp.status_code == 200
    assert resp.get_json() == []
    assert resp.headers["X-Total-Count"] == "1"


def test_list_logs_with_limit_zero_counts_without_rows(client, make_log, logs_url):
    make_log()
    make_log()

    resp = client.get(f"{logs_url}?limit=0")

    assert resp.status_code == 200
    assert resp.get_json() == []
    assert resp.headers["X-Total-Count"] == "2"


def test_list_logs_filters_by_level_with_exact_totals(client, make_log, logs_url):
    for level, count in (("debug", 1), ("info", 2), ("error", 3)):
        for _ in range(count):
            make_log(level=level)

    for level, count in (("debug", 1), ("info", 2), ("error", 3), ("fatal", 0)):
        resp = client.get(f"{logs_url}?level={level}")
        assert resp.status_code == 200
        assert resp.headers["X-Total-Count"] == str(count)
        rows = resp.get_json()
        assert len(rows) == count
        assert all(row["level"] == level for row in rows)


def test_list_logs_filters_by_log_type_with_exact_totals(client, make_log, logs_url):
    for log_type, count in (("system", 2), ("agent_action", 3), ("agent.action", 1)):
        for _ in range(count):
            make_log(log_type=log_type)

    for log_type, count in (("system", 2), ("agent_action", 3), ("agent.action", 1),
                            ("agent", 0)):
        resp = client.get(f"{logs_url}?log_type={log_type}")
        assert resp.status_code == 200
        assert resp.headers["X-Total-Count"] == str(count)
        assert [row["log_type"] for row in resp.get_json()] == [log_type] * count


def test_list_logs_combines_filters(client, make_log, logs_url):
    make_log(log_type="system", level="error")
    make_log(log_type="system", level="info")
    make_log(log_type="browser", level="error")

    resp = client.get(f"{logs_url}?log_type=system&level=error")

    assert resp.headers["X-Total-Count"] == "1"
    [row] = resp.get_json()
    assert (row["log_type"], row["level"]) == ("system", "error")


@pytest.mark.parametrize("query, field", [
    ("level=loud", "level"),
    ("level=INFO", "level"),
    ("level=", "level"),
    ("log_type=Bad%20Slug", "log_type"),
    ("log_type=Bad+Slug", "log_type"),
    ("log_type=9lives", "log_type"),
    ("log_type=", "log_type"),
    ("log_type=system%0A", "log_type"),
    ("limit=1001", "limit"),
    ("limit=-1", "limit"),
    ("limit=ten", "limit"),
    ("limit=1.5", "limit"),
    ("offset=-1", "offset"),
    ("offset=x", "offset"),
    ("levle=info", "levle"),
    ("page=2", "page"),
])
def test_list_logs_rejects_bad_query_parameters(client, logs_url, query, field):
    assert_problem(client.get(f"{logs_url}?{query}"), 422, field, where="query")


def test_logs_of_one_instance_never_show_in_another(client, make_instance, make_log, logs_url):
    other = make_instance(name="other")
    mine = [make_log(level="error")["id"] for _ in range(2)]
    theirs = make_log(instance_id=other["id"], level="error")["id"]
    other_url = f"/api/instances/{other['id']}/logs"

    assert ids(client.get(logs_url))[::-1] == mine
    assert client.get(logs_url).headers["X-Total-Count"] == "2"
    assert ids(client.get(other_url)) == [theirs]
    assert client.get(f"{other_url}?level=error").headers["X-Total-Count"] == "1"
    assert client.get(f"{logs_url}?level=error").headers["X-Total-Count"] == "2"
