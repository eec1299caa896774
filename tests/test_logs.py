"""Logs of an instance, /api/instances/{id}/logs: what only logs have (their
fields, levels and filters). What logs share with plans is in test_nested.py."""
import re
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from conftest import SITE, USER, assert_problem, random_id

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
    "separators \u2028\u2029 zero\u200bwidth \ufeff bom \U0010ffff",
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


# -- one log -----------------------------------------------------------------

LINK = re.compile(r'<([^>]*)>\s*;\s*rel="([^"]+)"')


def links(resp):
    """rel -> URL from the Link header (RFC 8288)."""
    return {rel: url for url, rel in LINK.findall(resp.headers.get("Link", ""))}


def total(resp):
    return int(resp.headers["X-Total-Count"])


def allowed(resp):
    return {method.strip() for method in resp.headers.get("Allow", "").split(",")}


def test_get_one_log_returns_it(client, make_log, logs_url):
    log = make_log(log_type="agent_action", level="warn", message="clicked",
                   details={"x": 1})
    make_log(message="another")

    resp = client.get(f"{logs_url}/{log['id']}")

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.headers.get("ETag")
    assert resp.get_json() == log


def test_head_of_one_log_is_200_without_a_body(client, make_log, logs_url):
    log = make_log()
    got = client.get(f"{logs_url}/{log['id']}")

    resp = client.head(f"{logs_url}/{log['id']}")

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_data() == b""
    assert resp.headers.get("ETag") == got.headers.get("ETag")


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "POST"])
def test_a_log_cannot_be_changed_or_deleted(client, make_log, logs_url, method):
    log = make_log(level="error", message="boom")

    resp = client.open(f"{logs_url}/{log['id']}", method=method,
                       json={"log_type": "system", "message": "rewritten", "level": "info"})

    assert_problem(resp, 405)
    methods = allowed(resp)
    assert {"GET", "HEAD"} <= methods, resp.headers.get("Allow")
    assert not {"PUT", "PATCH", "DELETE", "POST"} & methods
    assert client.get(f"{logs_url}/{log['id']}").get_json() == log
    assert total(client.get(logs_url)) == 1


# -- levels: min_level and lists ---------------------------------------------

@pytest.fixture
def every_level(make_log):
    """Two logs of each level, oldest first."""
    return [make_log(level=level, message=f"{level} {n}") for n in range(2) for level in LEVELS]


LEVEL_QUERIES = [
    ("min_level=debug", set(LEVELS)),
    ("min_level=info", {"info", "warn", "error", "fatal"}),
    ("min_level=warn", {"warn", "error", "fatal"}),
    ("min_level=error", {"error", "fatal"}),
    ("min_level=fatal", {"fatal"}),
    ("level=debug,fatal", {"debug", "fatal"}),
    ("level=fatal,debug", {"debug", "fatal"}),
    ("level=info,warn,error", {"info", "warn", "error"}),
    ("level=debug,info&min_level=info", {"info"}),
    ("level=debug&min_level=warn", set()),
]


@pytest.mark.parametrize("query, expected", LEVEL_QUERIES)
def test_level_filters_select_by_severity(client, every_level, logs_url, query, expected):
    resp = client.get(f"{logs_url}?{query}")

    assert resp.status_code == 200
    assert total(resp) == 2 * len(expected)
    rows = resp.get_json()
    assert len(rows) == 2 * len(expected)
    assert {row["level"] for row in rows} == expected
    wanted = [log["id"] for log in reversed(every_level) if log["level"] in expected]
    assert ids(resp) == wanted


def test_level_filters_one_after_another_on_one_database(client, every_level, logs_url):
    """Each query shape is compiled once per database (storage.reads.run), and each
    case above has a database of its own: here every shape runs against the
    same one, so shapes that differ only in how many levels they name must
    not share SQL."""
    for query, expected in LEVEL_QUERIES * 2:
        rows = client.get(f"{logs_url}?{query}").get_json()
        assert {row["level"] for row in rows} == expected, query
        assert len(rows) == 2 * len(expected), query


@pytest.mark.parametrize("query, field", [
    ("min_level=loud", "min_level"),
    ("min_level=WARN", "min_level"),
    ("min_level=", "min_level"),
    ("min_level=warn,error", "min_level"),
    ("level=debug,loud", "level"),
    ("level=debug,", "level"),
    ("level=,", "level"),
    ("since=2026-01-01T00:00:00", "since"),
    ("since=2026-01-01T00:00:00.123456", "since"),
    ("since=2026-01-01", "since"),
    ("since=yesterday", "since"),
    ("since=", "since"),
    ("since=1767225600", "since"),
    ("since=2026-01-01T00:00:00+01:00", "since"),  # unencoded +: a space
    ("since=0001-01-01T00:00:00%2B01:00", "since"),
    ("until=9999-12-31T23:59:59-01:00", "until"),
    # RFC 3339 allows these; the API docs say they are refused.
    ("until=2016-12-31T23:59:60Z", "until"),
    ("since=2026-01-01t00:00:00z", "since"),
    ("until=2026-13-01T00:00:00Z", "until"),
    ("until=2026-02-30T00:00:00Z", "until"),
    ("until=garbage", "until"),
    ("until=2026-01-01T00:00:00", "until"),
    ("sort=bogus", "sort"),
    ("sort=-message", "sort"),
    ("sort=log_type", "sort"),
    ("sort=updated_at", "sort"),
    ("sort=", "sort"),
    ("sort=level,", "sort"),
    ("after=nope", "after"),
    ("after=", "after"),
    ("after=123", "after"),
    (f"after={random_id()[:-1]}", "after"),
    ("level=debug&level=fatal", "level"),
    ("min_level=warn&min_level=warn", "min_level"),
])
def test_list_logs_rejects_bad_level_time_sort_and_cursor_parameters(
        client, make_log, logs_url, query, field):
    make_log()
    assert_problem(client.get(f"{logs_url}?{query}"), 422, field, where="query")


# -- since and until ---------------------------------------------------------

@pytest.fixture
def three_logs(make_log):
    """Logs a, b and c, created in that order at distinct instants."""
    logs = {name: make_log(message=name) for name in "abc"}
    moments = [datetime.fromisoformat(logs[name]["created_at"]) for name in "abc"]
    assert moments == sorted(set(moments)), moments
    return logs


@pytest.mark.parametrize("bounds, expected", [
    ({"since": "a"}, "cba"),
    ({"since": "b"}, "cb"),
    ({"since": "c"}, "c"),
    ({"until": "a"}, ""),
    ({"until": "b"}, "a"),
    ({"until": "c"}, "ba"),
    ({"since": "a", "until": "c"}, "ba"),
    ({"since": "b", "until": "c"}, "b"),
    ({"since": "b", "until": "b"}, ""),
    ({"since": "c", "until": "a"}, ""),
], ids=case_id)
def test_since_is_inclusive_and_until_exclusive(client, three_logs, logs_url, bounds,
                                                expected):
    query = urlencode({bound: three_logs[name]["created_at"] for bound, name in bounds.items()})

    resp = client.get(f"{logs_url}?{query}")

    assert resp.status_code == 200, resp.get_json()
    assert total(resp) == len(expected)
    assert ids(resp) == [three_logs[name]["id"] for name in expected]


def in_zone(stamp, offset):
    """The instant `stamp` written with another UTC offset (0 as Z)."""
    moment = datetime.fromisoformat(stamp).astimezone(timezone(offset))
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if offset == timedelta(0) else text


@pytest.mark.parametrize("offset", [
    timedelta(0), timedelta(hours=2), timedelta(hours=-5, minutes=-30), timedelta(hours=14),
], ids=str)
@pytest.mark.parametrize("bound", ["since", "until"])
def test_a_timestamp_with_an_offset_selects_the_same_instant_as_utc(client, three_logs,
                                                                    logs_url, bound, offset):
    stamp = three_logs["b"]["created_at"]
    utc = client.get(f"{logs_url}?{urlencode({bound: stamp})}")
    shifted_stamp = in_zone(stamp, offset)
    assert datetime.fromisoformat(shifted_stamp) == datetime.fromisoformat(stamp)

    shifted = client.get(f"{logs_url}?{urlencode({bound: shifted_stamp})}")

    assert shifted.status_code == utc.status_code == 200
    assert total(shifted) == total(utc) == (2 if bound == "since" else 1)
    assert ids(shifted) == ids(utc)


def test_since_and_until_far_from_now_select_everything_or_nothing(client, three_logs,
                                                                   logs_url):
    everything = client.get(f"{logs_url}?since=0001-01-01T00:00:00Z"
                            "&until=9999-12-31T23:59:59.999999Z")
    nothing = client.get(f"{logs_url}?since=9999-12-31T00:00:00%2B01:00")

    assert total(everything) == 3
    assert ids(everything) == [three_logs[name]["id"] for name in "cba"]
    assert nothing.status_code == 200
    assert total(nothing) == 0
    assert nothing.get_json() == []


# -- sort --------------------------------------------------------------------

SORTABLE_LEVELS = ("error", "debug", "fatal", "info", "warn", "debug", "error", "info")


@pytest.mark.parametrize("sort, order", [
    ("level", "severity, ties newest first"),
    ("-level", "severity reversed, ties newest first"),
    ("level,created_at", "severity, ties oldest first"),
    ("created_at", "oldest first"),
    ("-created_at", "newest first"),
])
def test_sort_orders_logs_by_severity_or_time(client, make_log, logs_url, sort, order):
    logs = [make_log(level=level, message=f"{n}") for n, level in enumerate(SORTABLE_LEVELS)]
    rank = LEVELS.index
    expected = {
        "level": sorted(reversed(logs), key=lambda log: rank(log["level"])),
        "-level": sorted(reversed(logs), key=lambda log: rank(log["level"]), reverse=True),
        "level,created_at": sorted(logs, key=lambda log: rank(log["level"])),
        "created_at": logs,
        "-created_at": logs[::-1],
    }[sort]

    resp = client.get(f"{logs_url}?sort={sort}")

    assert resp.status_code == 200
    assert total(resp) == len(logs)
    assert ids(resp) == [log["id"] for log in expected], order


def test_an_unknown_log_sort_field_names_the_allowed_ones(client, logs_url):
    body = assert_problem(client.get(f"{logs_url}?sort=severity"), 422, "sort", where="query")

    message = " ".join(body["errors"]["query"]["sort"])
    assert "created_at" in message and "level" in message, message


# -- batch create ------------------------------------------------------------

def entries(n):
    return [{"log_type": "batch", "message": f"entry {i}"} for i in range(n)]


def test_a_batch_creates_every_log_in_the_order_sent(client, instance, logs_url):
    sent = [
        {"log_type": "system", "message": "one"},
        {"log_type": "agent_action", "message": "two", "level": "warn", "details": {"x": 1}},
        {"log_type": "system", "message": "three", "level": "fatal"},
    ]

    resp = client.post(logs_url, json=sent)

    assert resp.status_code == 201, resp.get_json()
    assert resp.mimetype == "application/json"
    assert "Location" not in resp.headers
    created = resp.get_json()
    assert isinstance(created, list)
    assert [log["message"] for log in created] == ["one", "two", "three"]
    assert [log["level"] for log in created] == ["info", "warn", "fatal"]
    assert [log["details"] for log in created] == [{}, {"x": 1}, {}]
    assert [log["log_type"] for log in created] == ["system", "agent_action", "system"]
    for log in created:
        assert str(uuid.UUID(log["id"])) == log["id"]
        assert log["instance_id"] == instance["id"]
        assert_utc_timestamp(log["created_at"])
        assert client.get(f"{logs_url}/{log['id']}").get_json() == log
    assert len({log["id"] for log in created}) == 3

    listed = client.get(logs_url)
    assert total(listed) == 3
    assert ids(listed) == [log["id"] for log in reversed(created)]


def test_a_batch_of_exactly_1000_logs_is_accepted(client, logs_url):
    resp = client.post(logs_url, json=entries(1000))

    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()
    assert [log["message"] for log in created] == [f"entry {i}" for i in range(1000)]
    listed = client.get(f"{logs_url}?limit=1000&sort=created_at")
    assert total(listed) == 1000
    assert ids(listed) == [log["id"] for log in created]


@pytest.mark.parametrize("batch", [
    pytest.param([], id="empty"),
    pytest.param(entries(1001), id="1001-entries"),
    pytest.param([*entries(1), {"message": "no type"}], id="second-entry-bad"),
    pytest.param([*entries(998), {"log_type": "x", "message": ""}], id="last-of-999-bad"),
    pytest.param([{"log_type": "Bad Type", "message": "m"}, *entries(2)], id="first-bad"),
    pytest.param([*entries(1), {"log_type": "system", "message": "m", "colour": "red"}],
                 id="unknown-field"),
    pytest.param([1, 2], id="numbers"),
    pytest.param([*entries(1), "text"], id="a-string-entry"),
    pytest.param([*entries(1), None], id="a-null-entry"),
    pytest.param([*entries(1), [{"log_type": "x", "message": "m"}]], id="a-nested-array"),
])
def test_a_rejected_batch_stores_nothing(client, make_log, logs_url, batch):
    kept = make_log(message="before")

    assert_problem(client.post(logs_url, json=batch), 422)

    listed = client.get(logs_url)
    assert total(listed) == 1
    assert ids(listed) == [kept["id"]]


def test_batch_errors_are_keyed_by_the_index_of_each_bad_entry(client, logs_url):
    good = {"log_type": "system", "message": "fine"}
    batch = [good, {"message": "no type"}, good,
             {"log_type": "system", "message": "", "level": "loud"}]

    body = assert_problem(client.post(logs_url, json=batch), 422)

    errors = body["errors"]["json"]
    assert set(errors) == {"1", "3"}, errors
    assert "log_type" in errors["1"]
    assert {"message", "level"} <= set(errors["3"])
    assert total(client.get(logs_url)) == 0


def test_a_batch_for_an_unknown_instance_is_404(client, instance):
    assert_problem(client.post(f"/api/instances/{random_id()}/logs", json=entries(2)), 404)
    assert total(client.get(f"/api/instances/{instance['id']}/logs")) == 0


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/instances", []),
    ("POST", "/api/instances", [{"site_id": SITE, "user_id": USER, "name": "box"}]),
    ("POST", "/api/instances/{id}/plans", [{"title": "Open", "plan_type": "task"}]),
    ("POST", "/api/instances/{id}/plans", []),
    ("PUT", "/api/instances/{id}", [{"name": "renamed"}]),
    ("PATCH", "/api/instances/{id}", [{"name": "renamed"}]),
    ("PUT", "/api/instances/{id}", []),
])
def test_arrays_are_not_accepted_as_bodies_anywhere_else(client, instance, method, path,
                                                         body):
    resp = client.open(path.format(id=instance["id"]), method=method, json=body)

    assert_problem(resp, 400)
    assert client.get(f"/api/instances/{instance['id']}").get_json() == instance
    assert total(client.get("/api/instances")) == 1
    assert total(client.get(f"/api/instances/{instance['id']}/plans")) == 0


# -- after cursor ------------------------------------------------------------

@pytest.fixture
def five_logs(make_log):
    """Logs 0..4, oldest first, alternating info and error."""
    return [make_log(message=f"log {n}", level=("info", "error")[n % 2]) for n in range(5)]


def test_after_lists_the_later_logs_oldest_first_with_a_next_link(client, five_logs, logs_url):
    resp = client.get(f"{logs_url}?after={five_logs[1]['id']}&limit=2")

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert ids(resp) == [five_logs[2]["id"], five_logs[3]["id"]]
    assert total(resp) == 5  # a cursor is a position, like offset: the total ignores it
    rels = links(resp)
    assert set(rels) == {"next"}
    assert urlsplit(rels["next"]).path == logs_url
    assert parse_qs(urlsplit(rels["next"]).query) == {
        "after": [five_logs[3]["id"]], "limit": ["2"]}

    second = client.get(path_of(rels["next"]))
    assert ids(second) == [five_logs[4]["id"]]
    assert total(second) == 5
    assert "prev" not in links(second)


def test_an_empty_after_page_has_no_link(client, five_logs, logs_url):
    resp = client.get(f"{logs_url}?after={five_logs[-1]['id']}")

    assert resp.status_code == 200
    assert resp.get_json() == []
    assert total(resp) == 5
    assert "Link" not in resp.headers


def test_following_after_links_sees_every_later_log_once_even_as_logs_arrive(
        client, make_log, five_logs, logs_url):
    url, seen, pages = f"{logs_url}?after={five_logs[0]['id']}&limit=2", [], 0
    while url:
        resp = client.get(url)
        assert resp.status_code == 200
        seen += ids(resp)
        pages += 1
        if pages == 1:
            late = make_log(message="late")
        url = path_of(links(resp)["next"]) if "next" in links(resp) else None
        assert pages < 10

    assert seen == [log["id"] for log in five_logs[1:]] + [late["id"]]


def test_after_combines_with_filters(client, five_logs, logs_url):
    # The cursor log itself (an info log) need not match the filter.
    resp = client.get(f"{logs_url}?after={five_logs[0]['id']}&level=error&limit=1")

    assert resp.status_code == 200
    assert total(resp) == 2
    assert ids(resp) == [five_logs[1]["id"]]
    query = parse_qs(urlsplit(links(resp)["next"]).query)
    assert query == {"after": [five_logs[1]["id"]], "level": ["error"], "limit": ["1"]}

    second = client.get(path_of(links(resp)["next"]))
    assert total(second) == 2  # every error log, wherever the cursor is
    assert ids(second) == [five_logs[3]["id"]]
    assert [row["level"] for row in second.get_json()] == ["error"]


def test_after_with_min_level_and_since_counts_the_matching_logs(client, five_logs, logs_url):
    query = urlencode({"after": five_logs[1]["id"], "min_level": "warn",
                       "since": five_logs[2]["created_at"]})
    resp = client.get(f"{logs_url}?{query}")

    assert resp.status_code == 200
    assert total(resp) == 1
    assert ids(resp) == [five_logs[3]["id"]]


@pytest.mark.parametrize("cursor", ["other-instance", "unknown", "upper-case-other"])
def test_after_must_name_a_log_of_this_instance(client, make_instance, make_log, five_logs,
                                                logs_url, cursor):
    other = make_instance(name="other")
    foreign = make_log(instance_id=other["id"])
    after = {"other-instance": foreign["id"], "unknown": random_id(),
             "upper-case-other": foreign["id"].upper()}[cursor]

    assert_problem(client.get(f"{logs_url}?after={after}"), 422, "after", where="query")


def test_after_names_a_log_case_insensitively(client, five_logs, logs_url):
    resp = client.get(f"{logs_url}?after={five_logs[2]['id'].upper()}")

    assert resp.status_code == 200
    assert ids(resp) == [five_logs[3]["id"], five_logs[4]["id"]]


@pytest.mark.parametrize("sort", ["created_at", "-created_at", "level", "bogus"])
def test_after_together_with_sort_is_422_naming_sort(client, five_logs, logs_url, sort):
    resp = client.get(f"{logs_url}?after={five_logs[0]['id']}&sort={sort}")
    assert_problem(resp, 422, "sort", where="query")
