"""CONTRACT 1.5/1.6: every error, from every route, is RFC 9457 problem JSON.

One section per row of the error table (400, 404, 405, 413, 415, 422, 500),
then the Content-Type rule for errors and successes. A few rows are also
checked against the real server, where waitress (not Flask) reads the body.
"""
import http.client
import json
import logging
import select
import socket
from urllib.parse import urlsplit

import pytest

import models
from app import create_app
from conftest import SITE, USER, Reply, assert_problem, call, random_id

TIMEOUT = 10
LIMIT = 1 << 20
PROBLEM = "application/problem+json"
VALID = {"site_id": SITE, "user_id": USER, "name": "box"}


def instance_body(tail):
    """Raw bytes of an instance body whose valid fields are followed by `tail`,
    so a lenient parser would store something and the test would notice."""
    head = f'{{"site_id": "{SITE}", "user_id": "{USER}", "name": "box", '
    return head.encode() + tail


def sized_body(size):
    """A valid instance body of exactly `size` bytes."""
    empty = instance_body(b'"configuration": {"blob": ""}}')
    return instance_body(b'"configuration": {"blob": "' + b"x" * (size - len(empty)) + b'"}}')


def total(client):
    resp = client.get("/api/instances?limit=0")
    assert resp.status_code == 200
    return int(resp.headers["X-Total-Count"])


def allowed(resp):
    return {method.strip() for method in resp.headers.get("Allow", "").split(",") if method}


# -- the real server --------------------------------------------------------

def post_raw(url, body, headers, chunked):
    """POST `body` over a raw socket and read the answer, even when the server
    answers (and stops reading) before the body is complete."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT)
    try:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
        lines = ["POST /api/instances HTTP/1.1", f"Host: {parts.netloc}", framing,
                 *(f"{name}: {value}" for name, value in headers.items()), "", ""]
        sock.sendall("\r\n".join(lines).encode())
        step = 64 << 10
        pieces = [body[i:i + step] for i in range(0, len(body), step)]
        try:
            for piece in pieces:
                if select.select([sock], [], [], 0)[0]:
                    break       # the server has answered already
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass                # it stopped reading; its answer is still to be read
        resp = http.client.HTTPResponse(sock, method="POST")
        resp.begin()
        return Reply(resp)
    finally:
        sock.close()


# -- 400: not JSON, empty, or not an object ---------------------------------

BAD_BODIES = [
    pytest.param(instance_body(b'"status": "pending"'), id="malformed-json"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"", id="empty"),
    pytest.param(b"   \n", id="whitespace-only"),
    pytest.param(json.dumps([VALID]).encode(), id="json-array"),
    pytest.param(b'"box"', id="json-string"),
    pytest.param(b"42", id="json-number"),
    pytest.param(b"null", id="json-null"),
    pytest.param(b"true", id="json-true"),
    pytest.param(instance_body(b'"configuration": {"x": NaN}}'), id="nan"),
    pytest.param(instance_body(b'"configuration": {"x": Infinity}}'), id="infinity"),
    pytest.param(instance_body(b'"configuration": {"x": -Infinity}}'), id="minus-infinity"),
    pytest.param(instance_body(b'"configuration": {"x": "\xff\xfe"}}'), id="invalid-utf8"),
    pytest.param(instance_body(b'"configuration": {"x": "\\ud800"}}'), id="lone-surrogate"),
    pytest.param(instance_body(b'"configuration": {"x": "\\udc00 low"}}'),
                 id="lone-low-surrogate"),
    pytest.param(instance_body(b'"configuration": ' + b'{"a":' * 100000 + b"1"
                               + b"}" * 100000 + b"}"), id="objects-nested-100000-deep"),
    pytest.param(b"[" * 100000 + b"]" * 100000, id="arrays-nested-100000-deep"),
    pytest.param(instance_body(b'"configuration": {"x": 1e400}}'), id="number-beyond-double"),
    pytest.param(instance_body(b'"configuration": {"x": -1e400}}'),
                 id="negative-number-beyond-double"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_create_rejects_a_body_that_is_not_a_json_object_with_400(client, body):
    resp = client.post("/api/instances", data=body, content_type="application/json")
    assert_problem(resp, 400)
    assert total(client) == 0


@pytest.mark.parametrize("body", BAD_BODIES)
def test_update_rejects_a_body_that_is_not_a_json_object_with_400(client, instance, body):
    resp = client.put(f"/api/instances/{instance['id']}", data=body,
                      content_type="application/json")
    assert_problem(resp, 400)
    assert client.get(f"/api/instances/{instance['id']}").get_json() == instance


@pytest.mark.parametrize("kind", ["logs", "plans"])
def test_nested_create_rejects_a_json_array_or_malformed_body_with_400(client, instance, kind):
    for body in (b'{"message": ', b"null", b"42"):
        resp = client.post(f"/api/instances/{instance['id']}/{kind}", data=body,
                           content_type="application/json")
        assert_problem(resp, 400)
    listed = client.get(f"/api/instances/{instance['id']}/{kind}?limit=0")
    assert listed.headers["X-Total-Count"] == "0"


def test_real_server_rejects_malformed_json_with_400(server):
    resp = call(server.url, "POST", "/api/instances", body=b'{"name": ',
                headers={"Content-Type": "application/json"})
    assert_problem(resp, 400)


# -- 404: unknown routes, unknown or malformed ids ---------------------------

@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
@pytest.mark.parametrize("path", [
    "/nope", "/api/nope", "/api/instances/x/y/z", "/healthz/extra",
    "/api/instances/00000000-0000-0000-0000-000000000000/nope",
])
def test_unknown_route_is_404_problem_json(client, method, path):
    resp = client.open(path, method=method, json={"name": "box"})
    assert_problem(resp, 404)
    assert "<html" not in resp.get_data(as_text=True).lower()


def test_unknown_route_on_real_server_is_404_problem_json(server):
    assert_problem(call(server.url, "GET", "/api/nope"), 404)
    assert_problem(call(server.url, "GET", "/nope"), 404)


def test_head_of_an_unknown_route_is_404_with_the_problem_content_type(client):
    resp = client.head("/api/nope")
    assert resp.status_code == 404
    assert resp.mimetype == PROBLEM
    assert resp.get_data() == b""


@pytest.mark.parametrize("method, body", [
    ("GET", None), ("PUT", {"name": "renamed"}), ("DELETE", None)])
def test_an_instance_id_that_names_nothing_is_404(client, instance, method, body):
    resp = client.open(f"/api/instances/{random_id()}", method=method, json=body)
    assert_problem(resp, 404)
    assert total(client) == 1


BAD_IDS = [
    "not-a-uuid", "1234", "00000000-0000-0000-0000-00000000000g",
    "00000000-0000-0000-0000-0000000000000", "00000000-0000-0000-0000",
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
@pytest.mark.parametrize("method, body", [
    ("GET", None), ("PUT", {"name": "renamed"}), ("DELETE", None)])
def test_a_malformed_instance_id_is_404(client, method, body, bad_id):
    assert_problem(client.open(f"/api/instances/{bad_id}", method=method, json=body), 404)


NESTED_BODIES = {
    "logs": {"log_type": "system", "message": "started"},
    "plans": {"title": "Open the browser", "plan_type": "task"},
}

# Unknown and malformed parent instances of logs and plans: tests/test_nested.py.


def test_a_deleted_instance_is_404_afterwards(client, instance):
    assert client.delete(f"/api/instances/{instance['id']}").status_code == 204
    assert_problem(client.get(f"/api/instances/{instance['id']}"), 404)
    assert_problem(client.get(f"/api/instances/{instance['id']}/logs"), 404)
    assert_problem(client.delete(f"/api/instances/{instance['id']}"), 404)


# -- 405: method not allowed, with Allow -------------------------------------

@pytest.mark.parametrize("method, path, expected", [
    ("DELETE", "/api/instances", {"GET", "POST"}),
    ("PUT", "/api/instances", {"GET", "POST"}),
    ("PATCH", "/api/instances", {"GET", "POST"}),
    ("POST", "/api/instances/{id}", {"GET", "PUT", "PATCH", "DELETE"}),
    ("DELETE", "/api/instances/{id}/logs", {"GET", "POST"}),
    ("PUT", "/api/instances/{id}/plans", {"GET", "POST"}),
    ("POST", "/healthz", {"GET"}),
    ("DELETE", "/healthz", {"GET"}),
])
def test_a_method_not_allowed_is_405_with_an_allow_header(client, instance, method, path,
                                                          expected):
    resp = client.open(path.format(id=instance["id"]), method=method, json={"name": "x"})
    assert_problem(resp, 405)
    methods = allowed(resp)
    assert expected <= methods, resp.headers.get("Allow")
    assert method not in methods
    assert client.get(f"/api/instances/{instance['id']}").get_json() == instance
    assert total(client) == 1


def test_405_on_an_unknown_instance_id_still_names_the_allowed_methods(client):
    resp = client.post(f"/api/instances/{random_id()}", json={"name": "x"})
    assert_problem(resp, 405)
    assert {"GET", "PUT", "DELETE"} <= allowed(resp)


def test_real_server_answers_405_with_allow_and_problem_json(server):
    resp = call(server.url, "DELETE", "/api/instances")
    assert_problem(resp, 405)
    assert {"GET", "POST"} <= allowed(resp)


# -- 413: body larger than the limit ------------------------------------------

@pytest.fixture
def make_app(tmp_path):
    """create_app on a fresh file with extra config; connections closed afterwards."""
    def make(**config):
        models.db.close_all()
        return create_app({"TESTING": True, "DATABASE": str(tmp_path / "limit.db"), **config})
    yield make
    models.db.close_all()


def test_a_body_one_byte_over_the_default_limit_is_413(client):
    resp = client.post("/api/instances", data=sized_body(LIMIT + 1),
                       content_type="application/json")
    body = assert_problem(resp, 413)
    assert str(LIMIT) in body["detail"]
    assert total(client) == 0


def test_a_body_exactly_at_the_default_limit_is_accepted(client):
    resp = client.post("/api/instances", data=sized_body(LIMIT),
                       content_type="application/json")
    assert resp.status_code == 201, resp.get_data(as_text=True)[:300]


def test_an_update_body_over_the_limit_is_413_and_changes_nothing(client, instance):
    resp = client.put(f"/api/instances/{instance['id']}", data=sized_body(LIMIT + 4096),
                      content_type="application/json")
    assert_problem(resp, 413)
    assert client.get(f"/api/instances/{instance['id']}").get_json() == instance


def test_a_body_far_over_the_limit_is_413(client):
    resp = client.post("/api/instances", data=sized_body(3 * LIMIT),
                       content_type="application/json")
    assert_problem(resp, 413)


def test_a_smaller_configured_limit_takes_effect(make_app):
    client = make_app(MAX_BODY_BYTES=1000).test_client()
    assert_problem(client.post("/api/instances", data=sized_body(1001),
                               content_type="application/json"), 413)
    assert total(client) == 0
    resp = client.post("/api/instances", data=sized_body(1000), content_type="application/json")
    assert resp.status_code == 201, resp.get_data(as_text=True)


def test_a_smaller_configured_limit_applies_to_nested_creates(make_app):
    client = make_app(MAX_BODY_BYTES=1000).test_client()
    instance_id = client.post("/api/instances", json=VALID).get_json()["id"]
    resp = client.post(f"/api/instances/{instance_id}/logs",
                       json={"log_type": "system", "message": "x" * 2000})
    assert_problem(resp, 413)


@pytest.mark.parametrize("size", [LIMIT + 100, LIMIT + 40000],
                         ids=["just-over", "well-over"])
def test_real_server_answers_an_oversized_chunked_body_with_413_problem_json(server, size):
    resp = post_raw(server.url, sized_body(size), {"Content-Type": "application/json"},
                    chunked=True)
    assert_problem(resp, 413)
    assert call(server.url, "GET", "/api/instances?limit=0").headers["X-Total-Count"] == "0"


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_real_server_answers_a_body_twice_the_limit_with_413_problem_json(server, chunked):
    # 1.5: every error is problem JSON, also when the body is far over the
    # limit (a client uploading a 2 MiB file by mistake).
    resp = post_raw(server.url, sized_body(2 * LIMIT), {"Content-Type": "application/json"},
                    chunked=chunked)
    assert_problem(resp, 413)


def test_real_server_accepts_a_chunked_body_within_the_limit(server):
    resp = post_raw(server.url, json.dumps(VALID).encode(),
                    {"Content-Type": "application/json"}, chunked=True)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["name"] == "box"


# -- 415: a body that is not declared as JSON ---------------------------------

NOT_JSON_TYPES = [
    "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz", "application/xml", "text/json",
    "application/json; charset=latin-1", "application/json; charset=utf-16",
]


@pytest.mark.parametrize("content_type", NOT_JSON_TYPES)
def test_create_with_a_non_json_content_type_is_415(client, content_type):
    resp = client.post("/api/instances", data=json.dumps(VALID), content_type=content_type)
    assert_problem(resp, 415)
    assert total(client) == 0


@pytest.mark.parametrize("content_type", NOT_JSON_TYPES)
def test_update_with_a_non_json_content_type_is_415(client, instance, content_type):
    resp = client.put(f"/api/instances/{instance['id']}", data=json.dumps({"name": "new"}),
                      content_type=content_type)
    assert_problem(resp, 415)
    assert client.get(f"/api/instances/{instance['id']}").get_json() == instance


def test_a_form_encoded_body_is_415(client):
    resp = client.post("/api/instances", data={"name": "box", "site_id": SITE})
    assert_problem(resp, 415)
    assert total(client) == 0


def test_a_body_without_any_content_type_is_415(client, instance):
    resp = client.post("/api/instances", data=json.dumps(VALID).encode())
    assert "Content-Type" not in resp.request.headers
    assert_problem(resp, 415)
    resp = client.put(f"/api/instances/{instance['id']}", data=b'{"name": "new"}')
    assert_problem(resp, 415)
    resp = client.post(f"/api/instances/{instance['id']}/logs",
                       data=json.dumps(NESTED_BODIES["logs"]).encode())
    assert_problem(resp, 415)
    assert total(client) == 1


def test_real_server_rejects_a_body_without_content_type_with_415(server):
    resp = call(server.url, "POST", "/api/instances", body=json.dumps(VALID).encode())
    assert_problem(resp, 415)
    resp = post_raw(server.url, json.dumps(VALID).encode(), {}, chunked=True)
    assert_problem(resp, 415)


JSON_TYPES = [
    "application/json", "application/json; charset=utf-8", "application/json; charset=UTF-8",
    "application/json;charset=utf-8", "application/merge-patch+json", "application/vnd.api+json",
    "Application/JSON",
]


@pytest.mark.parametrize("content_type", JSON_TYPES)
def test_json_content_types_are_accepted_on_create(client, content_type):
    resp = client.post("/api/instances", data=json.dumps(VALID), content_type=content_type)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"


@pytest.mark.parametrize("content_type", JSON_TYPES)
def test_json_content_types_are_accepted_on_update(client, instance, content_type):
    resp = client.put(f"/api/instances/{instance['id']}", data=json.dumps({"name": "new"}),
                      content_type=content_type)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["name"] == "new"


# -- 422: validation errors grouped by location -------------------------------

def test_body_validation_errors_are_grouped_under_json(client):
    resp = client.post("/api/instances",
                       json={"name": " ", "instance_type": "mac", "colour": "red"})
    body = assert_problem(resp, 422)
    assert set(body["errors"]) == {"json"}
    assert {"site_id", "user_id", "name", "instance_type", "colour"} <= set(body["errors"]["json"])
    for messages in body["errors"]["json"].values():
        assert messages and all(isinstance(m, str) and m for m in messages), messages
    assert total(client) == 0


def test_an_enum_error_names_the_allowed_values(client):
    body = assert_problem(client.post("/api/instances", json={**VALID, "instance_type": "mac"}),
                          422, "instance_type")
    message = " ".join(body["errors"]["json"]["instance_type"])
    assert all(kind in message for kind in ("ubuntu", "browser", "windows")), message


def test_query_validation_errors_are_grouped_under_query(client):
    resp = client.get("/api/instances?limit=-1&offset=x&status=bogus&site_id=nope&colour=red")
    body = assert_problem(resp, 422)
    assert set(body["errors"]) == {"query"}
    assert {"limit", "offset", "status", "site_id", "colour"} <= set(body["errors"]["query"])


@pytest.mark.parametrize("query, field", [
    ("limit=1001", "limit"), ("limit=abc", "limit"), ("offset=-1", "offset"),
    ("status=bogus", "status"), ("site_id=nope", "site_id"), ("sitee_id=" + SITE, "sitee_id"),
])
def test_each_bad_query_parameter_is_named_under_query(client, query, field):
    assert_problem(client.get(f"/api/instances?{query}"), 422, field, where="query")


def test_nested_list_query_errors_are_grouped_under_query(client, instance):
    resp = client.get(f"/api/instances/{instance['id']}/logs?level=loud&log_type=Bad%20Type")
    body = assert_problem(resp, 422, "level", where="query")
    assert "log_type" in body["errors"]["query"]
    assert "json" not in body["errors"]


@pytest.mark.parametrize("payload, field", [
    ({"name": ""}, "name"), ({"name": None}, "name"), ({"status": "asleep"}, "status"),
    ({"unknown": 1}, "unknown"), ({"agent_id": "nope"}, "agent_id"),
    ({"configuration": []}, "configuration"), ({"environment_variables": {"A": 1}},
                                               "environment_variables"),
])
def test_update_validation_errors_name_the_field_under_json(client, instance, payload, field):
    resp = client.put(f"/api/instances/{instance['id']}", json=payload)
    body = assert_problem(resp, 422, field)
    assert "query" not in body["errors"]
    assert client.get(f"/api/instances/{instance['id']}").get_json() == instance


def test_nested_create_validation_errors_name_the_fields_under_json(client, instance):
    resp = client.post(f"/api/instances/{instance['id']}/plans",
                       json={"title": " ", "priority": True})
    body = assert_problem(resp, 422, "title")
    assert {"plan_type", "priority"} <= set(body["errors"]["json"])


def test_a_body_slug_that_is_not_a_slug_is_named_under_json(client, instance):
    resp = client.post(f"/api/instances/{instance['id']}/logs",
                       json={"log_type": "Bad Type", "message": "x", "level": "loud"})
    body = assert_problem(resp, 422, "log_type")
    assert "level" in body["errors"]["json"]


# -- 500: unexpected faults ----------------------------------------------------

def assert_generic_500(resp, caplog, *leaks):
    body = assert_problem(resp, 500)
    text = resp.get_data(as_text=True)
    request_id = body["request_id"]
    assert isinstance(request_id, str) and request_id
    for leak in ("Traceback", 'File "', *leaks):
        assert leak not in text, text
    logged = [record for record in caplog.records
              if record.levelno >= logging.ERROR and request_id in record.getMessage()]
    assert logged, [record.getMessage() for record in caplog.records]
    assert any(record.exc_info for record in logged)
    return logged


def test_an_unexpected_fault_is_a_generic_500_logged_with_its_request_id(app, client, caplog):
    app.add_url_rule("/api/boom", "boom", lambda: 1 / 0)
    with caplog.at_level(logging.ERROR):
        resp = client.get("/api/boom")
    logged = assert_generic_500(resp, caplog, "ZeroDivisionError", "division by zero")
    assert any(record.exc_info[0] is ZeroDivisionError for record in logged)
    assert "ZeroDivisionError" in caplog.text


def test_each_500_gets_its_own_request_id(app, client, caplog):
    app.add_url_rule("/boom", "boom", lambda: 1 / 0)
    with caplog.at_level(logging.ERROR):
        first = assert_problem(client.get("/boom"), 500)
        second = assert_problem(client.get("/boom"), 500)
    assert first["request_id"] != second["request_id"]


def test_a_database_fault_in_a_route_is_a_generic_500(app, client, instance, caplog):
    with app.app_context():
        models.db.connect(reuse_if_open=True)
        for table in ("instance_log", "instance_plan", "instance"):
            models.db.execute_sql(f"DROP TABLE {table}")
        models.db.close()
    with caplog.at_level(logging.ERROR):
        resp = client.get(f"/api/instances/{instance['id']}")
    assert_generic_500(resp, caplog, "no such table", "sqlite", "peewee")


def test_the_service_keeps_answering_after_a_fault(app, client, caplog):
    app.add_url_rule("/boom", "boom", lambda: 1 / 0)
    with caplog.at_level(logging.ERROR):
        assert_problem(client.get("/boom"), 500)
    assert client.post("/api/instances", json=VALID).status_code == 201
    assert total(client) == 1


# -- Content-Type: problem JSON for errors, JSON for successes -----------------

def test_every_error_kind_has_the_problem_content_type(client, instance):
    cases = [
        client.post("/api/instances", data=b"[", content_type="application/json"),
        client.get("/api/nope"),
        client.delete("/api/instances"),
        client.post("/api/instances", data=sized_body(LIMIT + 1),
                    content_type="application/json"),
        client.post("/api/instances", data=b"{}", content_type="text/plain"),
        client.post("/api/instances", json={}),
        client.get("/api/instances?limit=x"),
    ]
    statuses = [resp.status_code for resp in cases]
    assert statuses == [400, 404, 405, 413, 415, 422, 422]
    for resp in cases:
        assert resp.headers["Content-Type"].split(";")[0] == PROBLEM


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/api/instances", None, 200),
    ("GET", "/api/instances/{id}", None, 200),
    ("PUT", "/api/instances/{id}", {"name": "new"}, 200),
    ("PUT", "/api/instances/{id}", {}, 200),
    ("POST", "/api/instances", VALID, 201),
    ("GET", "/api/instances/{id}/logs", None, 200),
    ("POST", "/api/instances/{id}/logs", NESTED_BODIES["logs"], 201),
    ("GET", "/api/instances/{id}/plans", None, 200),
    ("POST", "/api/instances/{id}/plans", NESTED_BODIES["plans"], 201),
    ("GET", "/healthz", None, 200),
])
def test_success_responses_are_application_json(client, instance, method, path, body, status):
    resp = client.open(path.format(id=instance["id"]), method=method, json=body)
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.get_json() is not None


def test_a_204_has_no_body(client, instance):
    resp = client.delete(f"/api/instances/{instance['id']}")
    assert resp.status_code == 204
    assert resp.get_data() == b""


def test_a_post_with_neither_body_nor_content_type_is_an_empty_body(client):
    body = assert_problem(client.post("/api/instances"), 400)
    assert "empty" in body["detail"]
    assert client.get("/api/instances").headers["X-Total-Count"] == "0"


# -- nesting -------------------------------------------------------------------

def nested(depth):
    return '{"k":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth, status", [(63, 201), (64, 422), (600, 422), (1000, 422)])
def test_objects_nest_at_most_64_levels(client, depth, status):
    """The body is level 1 and configuration level 2; deeper values could not
    be written back out (orjson stops at 254 levels) and cost work."""
    body = f'{{"site_id": "{SITE}", "user_id": "{USER}", "name": "n", "configuration": ' \
           f'{nested(depth)}}}'
    resp = client.post("/api/instances", data=body, content_type="application/json")
    if status == 201:
        assert resp.status_code == 201, resp.get_json()
        assert client.get(resp.headers["Location"]).status_code == 200
    else:
        where = assert_problem(resp, 422)["errors"]["json"]
        assert list(where)[0].startswith("configuration.k.k")
        assert client.get("/api/instances").headers["X-Total-Count"] == "0"
