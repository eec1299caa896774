"""The Python client (instance_api_client) against a real server: every
method whose endpoint is on this server, the problem details as ApiError,
ETags, pages; retries through a small fake server in front of the real one
(503 then 201 makes one instance; a connection dropped after the commit does
not make two); that it imports nothing of the server; and that its typed
shapes match the OpenAPI document."""
import http.client
import http.server
import json
import logging
import subprocess
import sys
import threading
import time
import typing
from urllib.parse import urlsplit

import pytest

from conftest import ROOT, SITE, USER, Server
from instance_api_client import ApiConnectionError, ApiError, Client
from instance_api_client.types import SCHEMAS

SERVER_MODULES = {"flask", "peewee", "marshmallow", "webargs", "models", "app", "storage",
                  "routes", "schemas", "server", "workers"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One real server for the module's read-and-write tests."""
    srv = Server(tmp_path_factory.mktemp("client"))
    yield srv
    srv.close()


@pytest.fixture
def api(live):
    with Client(live.url) as client:
        yield client


def new_box(api, **fields):
    return api.create_instance(site_id=SITE, user_id=USER, **{"name": "box", **fields})


@pytest.mark.parametrize("module", ["instance_api_client", "instance_api_client.mcp_server"])
def test_the_client_imports_nothing_of_the_server(module):
    code = (f"import {module}, sys; loaded = sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {sorted(SERVER_MODULES)!r}); "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "tests")


def test_the_typed_shapes_follow_the_openapi_document():
    document = json.loads((ROOT / "openapi.json").read_text())
    components = document["components"]["schemas"]
    compared = 0
    for name, shape in SCHEMAS.items():
        if name not in components:      # an endpoint this server does not have yet
            continue
        keys = set(typing.get_type_hints(shape))
        properties = set(components[name]["properties"])
        # Every property is typed; every key is a property, but for the ones
        # marked NotRequired (CONTRACT Part 4 fields a server may not have yet).
        assert properties <= keys, (name, properties - keys)
        assert shape.__required_keys__ <= properties, (name, shape.__required_keys__ - properties)
        compared += 1
    assert compared >= 5


def test_instances(api):
    box = new_box(api, labels={"env": "prod"}, instance_type="ubuntu")
    assert box["status"] == "pending" and box["labels"] == {"env": "prod"}
    assert api.etag(box)
    other = new_box(api, name="other", labels={"env": "dev"})

    got = api.get_instance(box["id"].upper())
    assert got == box and api.etag(got) == api.etag(box)

    page = api.list_instances(label={"env": "prod"})
    assert [item["id"] for item in page] == [box["id"]] and page.total == 1
    assert [i["id"] for i in api.list_instances(label="env=dev")] == [other["id"]]
    assert [i["id"] for i in api.list_instances(q="OTH")] == [other["id"]]
    assert {i["id"] for i in api.list_instances(status=["pending", "running"],
                                                instance_type=("ubuntu", "browser"))} >= {
        box["id"], other["id"]}
    named = api.list_instances(sort=["name"], site_id=SITE, user_id=USER, limit=1)
    assert len(named) == 1 and named.next_url and named.total >= 2
    assert named.next_page()[0]["name"] >= named[0]["name"]
    assert len(list(api.list_instances(limit=1).all())) == api.list_instances().total

    running = api.update_instance(box["id"], status="running", if_match=api.etag(box))
    assert running["status"] == "running" and api.etag(running) != api.etag(box)
    with pytest.raises(ApiError) as stale:
        api.update_instance(box["id"], name="lost", if_match=api.etag(box))
    assert stale.value.status == 412
    assert api.get_instance(box["id"])["name"] == "box"

    counts = api.count_instances(by=["status"], label={"env": "prod"})
    assert counts["total"] == 1 and counts["by"]["status"]["running"] == 1

    api.delete_instance(box["id"], if_match=api.etag(running))
    with pytest.raises(ApiError) as gone:
        api.get_instance(box["id"])
    assert gone.value.status == 404 and gone.value.title and box["id"] in gone.value.detail


def test_the_readme_example_runs(live, api):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python client, logging handler and MCP", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.splitlines()) <= 12
    code = code.replace("http://127.0.0.1:8080", live.url)
    namespace = {"SITE": SITE, "USER": USER}
    exec(compile(code, "README.md", "exec"), namespace)
    box = namespace["box"]["id"]
    for handler in logging.getLogger("agent").handlers:
        assert handler.flush(timeout=10)
        logging.getLogger("agent").removeHandler(handler)
        handler.close()
    namespace["api"].close()
    assert api.get_instance(box)["status"] == "stopped"
    assert [p["status"] for p in api.plan_tree(box)] == ["completed"]
    [log] = api.list_logs(box)
    assert (log["level"], log["log_type"], log["details"]["tries"]) == ("warn", "agent", 2)


def test_a_validation_error_names_the_field(api):
    with pytest.raises(ApiError) as refused:
        new_box(api, instance_type="mainframe")
    error = refused.value
    assert error.status == 422 and error.type and error.title
    assert "instance_type" in error.errors["json"]
    assert "json.instance_type" in error.fields and "json.instance_type" in str(error)
    with pytest.raises(ApiError) as query:
        api.list_instances(limit=5000)
    assert "limit" in query.value.errors["query"]


def test_logs(api):
    box = new_box(api)
    first = api.append_log(box["id"], "opened the browser", details={"url": "https://x"})
    assert first["log_type"] == "agent_action" and first["level"] == "info"
    assert api.etag(api.get_log(box["id"], first["id"])) is not None
    batch = api.append_logs(box["id"], [
        {"log_type": "system", "level": "warn", "message": "slow"},
        {"log_type": "system", "level": "error", "message": "failed", "details": {"n": 1}}])
    assert [log["message"] for log in batch] == ["slow", "failed"]

    assert [log["message"] for log in api.list_logs(box["id"], min_level="warn")] == [
        "failed", "slow"]
    assert [log["message"] for log in api.list_logs(box["id"], log_type="system",
                                                    level="warn")] == ["slow"]
    after = api.list_logs(box["id"], after=first["id"], wait=1)
    assert [log["message"] for log in after] == ["slow", "failed"]
    oldest = api.list_logs(box["id"], sort="created_at", limit=1, offset=0)
    assert oldest[0]["id"] == first["id"] and oldest.total == 3

    with pytest.raises(ApiError) as refused:
        api.append_logs(box["id"], [{"log_type": "system", "message": "ok"},
                                    {"log_type": "Bad Type", "message": "x"}])
    assert "1" in refused.value.errors["json"]
    assert api.list_logs(box["id"]).total == 3      # all or none


def test_plans_and_the_plan_tree(api):
    box = new_box(api)
    goal = api.create_plan(box["id"], "Book a flight", plan_type="objective", priority=5)
    step1 = api.create_plan(box["id"], "Open the site", parent_id=goal["id"])
    step2 = api.create_plan(box["id"], "Pay", parent_id=goal["id"], priority=1)
    side = api.create_plan(box["id"], "Tidy up")

    assert api.get_plan(box["id"], goal["id"]) == goal
    assert {p["id"] for p in api.list_plans(box["id"], parent_id=goal["id"])} == {
        step1["id"], step2["id"]}
    assert [p["id"] for p in api.list_plans(box["id"], plan_type="objective")] == [goal["id"]]

    started = api.update_plan(box["id"], step1["id"], status="in_progress",
                              if_match=api.etag(step1))
    assert started["started_at"] is not None
    with pytest.raises(ApiError) as stale:
        api.update_plan(box["id"], step1["id"], status="failed", if_match=api.etag(step1))
    assert stale.value.status == 412

    tree = api.plan_tree(box["id"])
    assert [node["id"] for node in tree] == [goal["id"], side["id"]]
    assert [node["id"] for node in tree[0]["children"]] == [step2["id"], step1["id"]]
    assert tree[0]["children"][1]["status"] == "in_progress"

    api.delete_plan(box["id"], side["id"])
    assert [node["id"] for node in api.plan_tree(box["id"])] == [goal["id"]]


def test_a_token(start_server):
    server = start_server(env={"INSTANCES_API_TOKENS": "sesame"})
    with Client(server.url, token="sesame") as good:
        assert new_box(good)["name"] == "box"
    with Client(server.url) as anonymous, pytest.raises(ApiError) as refused:
        anonymous.list_instances()
    assert refused.value.status == 401


# Retries ---------------------------------------------------------------------

class Front:
    """A fake server on 127.0.0.1 in front of the real one: each request is
    answered by the next of `script`'s steps (the last repeats):
    - ("answer", status, headers, body): this answer, the real server unasked;
    - "forward": the real server's answer;
    - "drop": forwarded to the real server, then the connection is closed
      without an answer (the server has committed; the client never knows).
    Requests (method, path, headers) are kept in `seen`."""

    def __init__(self, target, script):
        self.script, self.seen, self.lock = list(script), [], threading.Lock()
        target = urlsplit(target) if target else None
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with front.lock:
                    front.seen.append((self.command, self.path, dict(self.headers)))
                    step = front.script.pop(0) if len(front.script) > 1 else front.script[0]
                if step in ("forward", "drop"):
                    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    reply = conn.getresponse()
                    status, headers, data = reply.status, reply.getheaders(), reply.read()
                    conn.close()
                    if step == "drop":
                        self.close_connection = True
                        return
                else:
                    _, status, headers, data = step
                    headers = list(headers.items())
                    data = json.dumps(data).encode() if data is not None else b""
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = handle_one

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def front():
    made = []

    def make(target, *script):
        made.append(Front(target, script))
        return made[-1]
    yield make
    for item in made:
        item.close()


BUSY = ("answer", 503, {"Retry-After": "0", "Content-Type": "application/problem+json"},
        {"type": "about:blank", "title": "Service Unavailable", "status": 503,
         "detail": "The database is busy."})


def keys(seen):
    return [headers.get("Idempotency-Key") for _method, _path, headers in seen]


def test_a_503_with_retry_after_then_201_creates_one_instance(live, front, api):
    proxy = front(live.url, BUSY, BUSY, "forward")
    before = api.list_instances().total
    with Client(proxy.url, backoff=0.01) as client:
        box = new_box(client, name="retried")
    sent = keys(proxy.seen)
    assert len(sent) == 3 and sent[0] and len(set(sent)) == 1
    assert api.list_instances().total == before + 1
    assert api.get_instance(box["id"])["name"] == "retried"


def test_429_is_retried_and_a_query_timeout_is_not(front):
    proxy = front(None, ("answer", 429, {"Retry-After": "0"}, None),
                  ("answer", 200, {"Content-Type": "application/json"}, []))
    with Client(proxy.url, backoff=0.01) as client:
        assert list(client.list_instances()) == []
    assert len(proxy.seen) == 2

    timeout = ("answer", 503, {"Content-Type": "application/problem+json"},
               {"type": "https://instances.example/problems/query-timeout",
                "title": "Service Unavailable", "status": 503, "detail": "Too slow."})
    for step in (timeout, (*timeout[:2], {"Retry-After": "1"}, timeout[3])):
        proxy = front(None, step)
        with Client(proxy.url, backoff=0.01) as client, pytest.raises(ApiError) as refused:
            client.list_instances()
        assert refused.value.status == 503 and refused.value.type.endswith("query-timeout")
        assert len(proxy.seen) == 1


def test_a_503_without_retry_after_is_not_retried(front):
    proxy = front(None, (*BUSY[:2], {}, BUSY[3]))
    with Client(proxy.url, backoff=0.01) as client, pytest.raises(ApiError):
        client.list_instances()
    assert len(proxy.seen) == 1


def test_retries_are_bounded(front):
    proxy = front(None, BUSY)
    with Client(proxy.url, backoff=0.01, max_attempts=4) as client, \
            pytest.raises(ApiError) as refused:
        client.list_instances()
    assert refused.value.status == 503 and len(proxy.seen) == 4

    proxy = front(None, ("answer", 503, {"Retry-After": "3600"}, None))
    started = time.monotonic()
    with Client(proxy.url, max_retry_delay=2) as client, pytest.raises(ApiError):
        client.list_instances()
    assert time.monotonic() - started < 2 and len(proxy.seen) == 1


def test_a_connection_dropped_after_the_commit_does_not_create_two(live, front, api):
    proxy = front(live.url, "drop", "forward")
    before = api.list_instances().total
    with Client(proxy.url, backoff=0.01) as client:
        box = new_box(client, name="dropped once")
    sent = keys(proxy.seen)
    assert len(sent) == 2 and sent[0] and sent[0] == sent[1]
    assert api.list_instances().total == before + 1
    assert [i["id"] for i in api.list_instances(q="dropped once")] == [box["id"]]


def test_a_server_that_cannot_be_reached(free_port):
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{free_port}", backoff=0.01, max_attempts=3) as client, \
            pytest.raises(ApiConnectionError) as refused:
        client.get_instance(SITE)
    assert refused.value.status is None and "cannot reach the server" in str(refused.value)
    assert time.monotonic() - started < 5


@pytest.fixture
def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_instance_api_mcp_without_the_sdk_says_what_to_install():
    code = ("import sys; sys.modules['mcp'] = None; import server; "
            "sys.exit(server.main(['mcp', '--url', 'http://127.0.0.1:9']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'instance-api[mcp]'" in done.stderr and "Traceback" not in done.stderr
