"""Logs of an instance, /api/instances/{id}/logs: what only logs have (their
fields, levels and filters). What logs share with plans is in test_nested.py."""
import uuid
from datetime import datetime, timedelta
from urllib.parse import urlsplit

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


# -- list filters ------------------------------------------------------------

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
