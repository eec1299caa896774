"""HTTP semantics shared by every resource (CONTRACT 2.2): ETags and
conditional requests, Idempotency-Key on POST, X-Request-ID; and tailing a
log with the `after` cursor."""
import io
import logging
import re
import time
from datetime import timedelta

import pytest

import loglines
import models
from loglines import LineBatches
from conftest import SITE, USER, Server, assert_problem, call, random_id

NEW_INSTANCE = {"site_id": SITE, "user_id": USER, "name": "box"}
STRONG_ETAG = re.compile(r'"[0-9a-f]{40}"')


def total(client, path="/api/instances"):
    return int(client.get(f"{path}?limit=0").headers["X-Total-Count"])


@pytest.fixture(params=["instance", "plan"])
def editable(request, client, instance, make_plan):
    """The URL of an editable resource and a valid change to it."""
    if request.param == "instance":
        return f"/api/instances/{instance['id']}", {"name": "renamed"}
    plan = make_plan()
    return f"/api/instances/{instance['id']}/plans/{plan['id']}", {"title": "renamed"}


# -- ETag --------------------------------------------------------------------

def test_every_single_resource_response_has_the_etag_of_its_body(client, editable):
    url, change = editable
    read = client.get(url)
    assert STRONG_ETAG.fullmatch(read.headers["ETag"])
    written = client.patch(url, json=change)
    assert written.status_code == 200
    assert written.headers["ETag"] != read.headers["ETag"]
    assert client.get(url).headers["ETag"] == written.headers["ETag"]


def test_a_create_answers_with_the_etag_a_get_then_gives(client, instance, make_log):
    created = client.post("/api/instances", json=NEW_INSTANCE)
    assert created.headers["ETag"] == client.get(created.headers["Location"]).headers["ETag"]
    log = client.post(f"/api/instances/{instance['id']}/logs",
                      json={"log_type": "system", "message": "m"})
    assert log.headers["ETag"] == client.get(log.headers["Location"]).headers["ETag"]


def test_a_write_that_changes_nothing_keeps_the_etag(client, editable):
    url, _ = editable
    before = client.get(url).headers["ETag"]
    assert client.put(url, json={}).headers["ETag"] == before


def test_lists_and_batches_carry_no_etag(client, instance):
    assert "ETag" not in client.get("/api/instances").headers
    batch = client.post(f"/api/instances/{instance['id']}/logs",
                        json=[{"log_type": "system", "message": "m"}])
    assert batch.status_code == 201
    assert "ETag" not in batch.headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("header", ["{etag}", 'W/{etag}', '"other", {etag}', "*"])
def test_if_none_match_with_the_current_etag_is_304_without_a_body(client, editable, method,
                                                                   header):
    url, _ = editable
    etag = client.get(url).headers["ETag"]
    resp = client.open(url, method=method, headers={"If-None-Match": header.format(etag=etag)})
    assert resp.status_code == 304
    assert resp.get_data() == b""
    assert resp.headers["ETag"] == etag


def test_if_none_match_with_an_old_etag_is_a_full_200(client, editable):
    url, change = editable
    old = client.get(url).headers["ETag"]
    client.patch(url, json=change)
    resp = client.get(url, headers={"If-None-Match": old})
    assert resp.status_code == 200
    assert resp.get_json()[next(iter(change))] == "renamed"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_if_match_with_the_current_etag_lets_an_update_through(client, editable, method):
    url, change = editable
    etag = client.get(url).headers["ETag"]
    resp = client.open(url, method=method, json=change, headers={"If-Match": etag})
    assert resp.status_code == 200, resp.get_json()
    assert client.get(url).get_json()[next(iter(change))] == "renamed"


@pytest.mark.parametrize("header", ["*", '"nope", {etag}'])
def test_if_match_star_or_a_list_holding_the_etag_lets_an_update_through(client, editable,
                                                                         header):
    url, change = editable
    etag = client.get(url).headers["ETag"]
    resp = client.patch(url, json=change, headers={"If-Match": header.format(etag=etag)})
    assert resp.status_code == 200


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_if_match_with_a_stale_etag_is_412_and_changes_nothing(client, editable, method):
    """Two editors read the same version; the second write must not silently
    undo the first."""
    url, change = editable
    seen_by_both = client.get(url).headers["ETag"]
    first = client.patch(url, json=change, headers={"If-Match": seen_by_both})
    assert first.status_code == 200
    second = client.open(url, method=method, json={} if method != "DELETE" else None,
                         headers={"If-Match": seen_by_both})
    assert "changed since" in assert_problem(second, 412)["detail"]
    assert client.get(url).get_json() == first.get_json()


def test_if_match_weak_etag_never_matches(client, editable):
    url, change = editable
    etag = client.get(url).headers["ETag"]
    assert_problem(client.patch(url, json=change, headers={"If-Match": f"W/{etag}"}), 412)


def test_delete_with_the_current_etag_deletes(client, editable):
    url, _ = editable
    etag = client.get(url).headers["ETag"]
    assert client.delete(url, headers={"If-Match": etag}).status_code == 204
    assert_problem(client.get(url), 404)


def test_a_precondition_on_a_missing_resource_is_404(client):
    url = f"/api/instances/{random_id()}"
    assert_problem(client.patch(url, json={}, headers={"If-Match": '"abc"'}), 404)
    assert_problem(client.delete(url, headers={"If-Match": "*"}), 404)


# -- Idempotency-Key ---------------------------------------------------------

def test_a_retry_with_the_same_key_replays_the_first_response(client):
    headers = {"Idempotency-Key": "create-box-1"}
    first = client.post("/api/instances", json=NEW_INSTANCE, headers=headers)
    retry = client.post("/api/instances", json=NEW_INSTANCE, headers=headers)
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.get_json() == first.get_json()
    assert retry.headers["Location"] == first.headers["Location"]
    assert retry.headers["ETag"] == first.headers["ETag"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert total(client) == 1


def test_the_same_json_with_other_spacing_and_key_order_is_the_same_body(client):
    headers = {"Idempotency-Key": "k", "Content-Type": "application/json"}
    first = client.post("/api/instances", headers=headers,
                        data=f'{{"site_id":"{SITE}","user_id":"{USER}","name":"box"}}')
    retry = client.post("/api/instances", headers=headers,
                        data=f'{{ "name": "box",\n "user_id": "{USER}", "site_id": "{SITE}" }}')
    assert retry.get_json()["id"] == first.get_json()["id"]
    assert total(client) == 1


def test_the_same_key_with_another_body_is_422_and_creates_nothing(client):
    headers = {"Idempotency-Key": "k"}
    client.post("/api/instances", json=NEW_INSTANCE, headers=headers)
    resp = client.post("/api/instances", json={**NEW_INSTANCE, "name": "other"}, headers=headers)
    body = assert_problem(resp, 422, "Idempotency-Key", where="headers")
    assert "different request" in body["errors"]["headers"]["Idempotency-Key"][0]
    assert total(client) == 1


def test_the_same_key_on_another_route_is_422(client, instance):
    headers = {"Idempotency-Key": "k"}
    body = {"title": "t", "plan_type": "task"}
    assert client.post(f"/api/instances/{instance['id']}/plans", json=body,
                       headers=headers).status_code == 201
    resp = client.post(f"/api/instances/{instance['id']}/logs",
                       json={"log_type": "system", "message": "m"}, headers=headers)
    assert_problem(resp, 422, "Idempotency-Key", where="headers")
    assert total(client, f"/api/instances/{instance['id']}/logs") == 0


def test_a_failed_request_is_not_kept_so_the_key_can_be_reused(client):
    headers = {"Idempotency-Key": "k"}
    assert_problem(client.post("/api/instances", json={"name": "x"}, headers=headers), 422)
    resp = client.post("/api/instances", json=NEW_INSTANCE, headers=headers)
    assert resp.status_code == 201
    assert total(client) == 1


def test_a_batch_of_logs_is_replayed_whole(client, instance):
    url = f"/api/instances/{instance['id']}/logs"
    batch = [{"log_type": "system", "message": f"m{n}"} for n in range(3)]
    first = client.post(url, json=batch, headers={"Idempotency-Key": "batch-1"})
    retry = client.post(url, json=batch, headers={"Idempotency-Key": "batch-1"})
    assert retry.status_code == 201
    assert [log["id"] for log in retry.get_json()] == [log["id"] for log in first.get_json()]
    assert total(client, url) == 3


@pytest.mark.parametrize("key", ["", "a" * 256, "has space", "tab\tkey"])
def test_a_malformed_key_is_422_naming_the_header(client, key):
    resp = client.post("/api/instances", json=NEW_INSTANCE, headers={"Idempotency-Key": key})
    assert_problem(resp, 422, "Idempotency-Key", where="headers")
    assert total(client) == 0


def test_keys_are_kept_for_24_hours(client):
    headers = {"Idempotency-Key": "k"}
    first = client.post("/api/instances", json=NEW_INSTANCE, headers=headers)
    models.IdempotencyKey.update(
        created_at=models.utcnow() - timedelta(hours=23, minutes=59)).execute()
    assert client.post("/api/instances", json=NEW_INSTANCE,
                       headers=headers).get_json()["id"] == first.get_json()["id"]
    models.IdempotencyKey.update(
        created_at=models.utcnow() - timedelta(hours=24, seconds=1)).execute()
    later = client.post("/api/instances", json=NEW_INSTANCE, headers=headers)
    assert later.status_code == 201
    assert "Idempotent-Replayed" not in later.headers
    assert later.get_json()["id"] != first.get_json()["id"]
    assert total(client) == 2
    assert models.IdempotencyKey.select().count() == 1  # the expired record was swept


def test_keys_are_ignored_on_methods_that_are_idempotent_anyway(client, instance):
    url = f"/api/instances/{instance['id']}"
    for _ in range(2):
        resp = client.put(url, json={"name": "again"}, headers={"Idempotency-Key": "k"})
        assert resp.status_code == 200
        assert "Idempotent-Replayed" not in resp.headers


def test_keys_survive_a_restart(tmp_path):
    first_server = Server(tmp_path)
    first = call(first_server.url, "POST", "/api/instances", NEW_INSTANCE,
                 {"Idempotency-Key": "before-restart"})
    assert first_server.stop() == 0
    second_server = Server(tmp_path)  # the same database file
    try:
        retry = call(second_server.url, "POST", "/api/instances", NEW_INSTANCE,
                     {"Idempotency-Key": "before-restart"})
        assert retry.status_code == 201
        assert retry.get_json()["id"] == first.get_json()["id"]
        assert call(second_server.url, "GET", "/api/instances").headers["X-Total-Count"] == "1"
    finally:
        second_server.stop()


# -- Location and request bodies ---------------------------------------------

@pytest.mark.parametrize("base, prefix", [
    ("http://localhost/", "http://localhost"),
    ("http://[::1]:8080/", "http://[::1]:8080"),
    # Not a plain URL: werkzeug quotes it, as for any response.
    ("http://localhost/my api/", "http://localhost/my%20api"),
    ("http://localhost/caf\u00e9/", "http://localhost/caf%C3%A9"),
])
def test_location_is_the_absolute_uri_of_what_was_made(client, instance, base, prefix):
    made = client.post(f"/api/instances/{instance['id']}/logs", base_url=base,
                       json={"log_type": "system", "message": "up"})
    assert made.status_code == 201
    assert made.headers["Location"] == (
        f"{prefix}/api/instances/{instance['id']}/logs/{made.get_json()['id']}")
    assert made.headers.getlist("Location") == [made.headers["Location"]]


# As waitress calls the app: the body read whole beforehand (app.Request.stream).
READ_WHOLE = {"wsgi.input_terminated": True}


def test_a_body_the_server_read_whole_is_taken_as_sent(client):
    made = client.post("/api/instances", json=NEW_INSTANCE, environ_overrides=READ_WHOLE)
    assert made.status_code == 201
    assert client.get(made.headers["Location"]).get_json()["name"] == "box"


def test_a_body_the_server_read_whole_past_the_limit_is_413(client):
    resp = client.post("/api/instances", json={**NEW_INSTANCE, "name": "x" * (1 << 20)},
                       environ_overrides=READ_WHOLE)
    assert_problem(resp, 413)
    assert total(client) == 0


# -- X-Request-ID ------------------------------------------------------------

@pytest.mark.parametrize("sent", ["abc", "a" * 200, "A-Z.a_z:0-9", "0f8fad5b-d9cb-469f"])
def test_a_sane_request_id_is_echoed(client, sent):
    assert client.get("/api/instances", headers={"X-Request-ID": sent}).headers[
        "X-Request-ID"] == sent


@pytest.mark.parametrize("sent", [None, "", "a" * 201, "has space", "semi;colon", "é"])
def test_any_other_request_id_is_replaced_by_a_generated_one(client, sent):
    headers = {} if sent is None else {"X-Request-ID": sent}
    got = client.get("/api/instances", headers=headers).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", got)


def test_errors_carry_the_request_id_too(client):
    resp = client.get(f"/api/instances/{random_id()}", headers={"X-Request-ID": "trace-1"})
    assert_problem(resp, 404)
    assert resp.headers["X-Request-ID"] == "trace-1"


def test_the_request_id_is_in_the_log_line_for_the_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="instance_api.access"):
        client.get("/api/instances?limit=1", headers={"X-Request-ID": "trace-42"})
    assert re.search(r"GET /api/instances\?limit=1 200 [\d.]+ms request_id=trace-42$",
                     caplog.text, re.M)


def test_the_real_server_logs_a_line_per_request_with_its_id(server):
    call(server.url, "GET", "/api/instances", headers={"X-Request-ID": "from-curl"})
    call(server.url, "DELETE", f"/api/instances/{random_id()}")
    # The whole line, as logging's records are written (loglines.LINE_FORMAT),
    # though the server writes access lines without one (LineBatches.line).
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO instance_api.access: "
    server.wait_for(re.compile(stamp + r"GET /api/instances 200 [\d.]+ms request_id=from-curl$",
                               re.M))
    server.wait_for(re.compile(stamp + r"DELETE /api/instances/[0-9a-f-]{36} 404 [\d.]+ms "
                                       r"request_id=[0-9a-f]{32}$", re.M))


@pytest.fixture
def lines():
    """A logger of its own writing to a LineBatches handler on a StringIO,
    as `instance-api serve` logs (loglines.configure_logging)."""
    made = []

    def make(interval):
        stream = io.StringIO()
        handler = LineBatches(stream, interval)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger = logging.getLogger(f"test.lines.{len(made)}")
        logger.propagate, logger.level = False, logging.INFO
        logger.addHandler(handler)
        made.append((logger, handler))
        return logger, stream
    yield make
    for logger, handler in made:
        logger.removeHandler(handler)
        handler.close()


def test_log_lines_wait_for_their_batch_and_a_warning_takes_them_out_at_once(lines):
    logger, stream = lines(interval=3600)
    logger.info("one")
    logger.info("two")
    assert stream.getvalue() == ""
    logger.warning("three")
    assert stream.getvalue() == "INFO one\nINFO two\nWARNING three\n"


def test_log_lines_are_written_within_the_interval(lines):
    logger, stream = lines(interval=0.02)
    logger.info("soon")
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue() == "INFO soon\n"


def test_log_lines_keep_loggings_time_format():
    ours, stock = loglines.Formatter("%(asctime)s"), logging.Formatter("%(asctime)s")
    for created in (1_764_410_000.0, 1_764_410_000.9995, 1_764_410_001.25, 1_764_410_000.5):
        record = logging.makeLogRecord({"created": created, "msecs": (created % 1) * 1000})
        assert ours.format(record) == stock.format(record)


def test_a_line_made_without_a_record_is_the_line_of_the_record():
    ours, stock = loglines.Formatter(loglines.LINE_FORMAT), logging.Formatter(loglines.LINE_FORMAT)
    for created in (1_764_410_000.0, 1_764_410_000.9995, 1_764_410_001.25, 1_764_410_001.5):
        record = logging.makeLogRecord({"name": "instance_api.access", "levelname": "INFO",
                                        "msg": "GET / 200", "created": created,
                                        "msecs": int((created % 1) * 1000)})
        assert ours.line("instance_api.access", "INFO", "GET / 200", created) == (
            stock.format(record))


# -- tailing a log with `after` ----------------------------------------------

def test_tailing_ten_thousand_lines_reads_each_exactly_once(client, instance):
    """A tail loop as the README shows it: the oldest page first, then pages
    after the last line seen, while the agent keeps writing."""
    url = f"/api/instances/{instance['id']}/logs"
    for start in range(0, 10_000, 1000):
        batch = [{"log_type": "agent", "message": str(n)} for n in range(start, start + 1000)]
        assert client.post(url, json=batch).status_code == 201
    written, seen, cursor, pages = 10_000, [], None, 0
    while True:
        query = f"after={cursor}" if cursor else "sort=created_at"
        resp = client.get(f"{url}?{query}&limit=500")
        assert resp.status_code == 200
        pages += 1
        if not resp.get_json():
            assert "Link" not in resp.headers
            break
        if cursor:
            assert f"after={resp.get_json()[-1]['id']}" in resp.headers["Link"]
        seen.extend(log["message"] for log in resp.get_json())
        cursor = resp.get_json()[-1]["id"]
        if pages % 5 == 0 and written < 10_100:  # the agent writes while we read
            more = [{"log_type": "agent", "message": str(n)} for n in range(written, written + 10)]
            assert client.post(url, json=more).status_code == 201
            written += 10
    assert written > 10_000
    assert seen == [str(n) for n in range(written)]


@pytest.mark.sqlite_only  # SQLite's EXPLAIN QUERY PLAN
def test_after_is_an_index_seek_however_deep_the_cursor(client, instance):
    """The pages after a cursor read from the cursor onwards in the
    (instance, created_at, id) index; no scan of the rows before it."""
    url = f"/api/instances/{instance['id']}/logs"
    client.post(url, json=[{"log_type": "agent", "message": str(n)} for n in range(50)])
    middle = client.get(f"{url}?sort=created_at&offset=25&limit=1").get_json()[0]["id"]
    statements = []

    class Capture(logging.Handler):
        def emit(self, record):
            if record.name != "peewee":
                return
            sql, params = record.msg
            if "instance_log" in sql and sql.startswith("SELECT"):
                statements.append((sql, params))

    handler, peewee_log = Capture(), logging.getLogger("peewee")
    peewee_log.addHandler(handler)
    peewee_log.setLevel(logging.DEBUG)
    try:
        resp = client.get(f"{url}?after={middle}&limit=10&level=info")
    finally:
        peewee_log.removeHandler(handler)
        peewee_log.setLevel(logging.NOTSET)
    assert resp.status_code == 200 and resp.headers["X-Total-Count"] == "50"
    assert len(resp.get_json()) == 10
    assert len(statements) == 1  # the count and the page, one statement
    for sql, params in statements:
        plan = " ".join(row[3] for row in models.db.execute_sql(
            f"EXPLAIN QUERY PLAN {sql}", params).fetchall())
        # The table (t1) is searched, never scanned, not even in index
        # order; "SCAN row" reads the page's own rows (storage.reads.json_rows).
        assert "SEARCH t1" in plan and "SCAN t1" not in plan, (sql, plan)
        assert "SEARCH" in plan and "INDEX" in plan, plan
