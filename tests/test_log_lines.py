"""The server's own log: one request is one line, whatever the client puts
in its path or query (issue 22 item 2). A decoded %0a in a path must not
start a second line that reads like the server's, and %0d, %1b, %00 must
not reach the log (or the terminal of whoever reads it) as they are."""
import logging
import re
import socket
from urllib.parse import urlsplit

import pytest
from flask import request

import loglines

# Each line the server writes starts with its time (loglines.LINE_FORMAT).
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")
FORGED = ("/api/x%0a2026-12-07%2011:06:00,000%20INFO%20instance_api.access:%20"
          "DELETE%20/api/instances/abc%20204")


def raw_request(url, target, request_id):
    """GET `target` exactly as written (http.client refuses some of these
    targets before sending them); the status code of the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("escape", ["%0a", "%0d", "%1b", "%00", "%c2%85", "%7f"])
def test_escape_sequences_in_a_path_stay_on_the_requests_one_line(start_server, escape):
    server = start_server("--workers", "1")
    targets = {
        "forged": FORGED,
        "path": f"/api/a{escape}b/{escape}[31mred{escape}",
        "query": f"/api/instances/x{escape}y?q={escape}&sort={escape}",
    }
    for name, target in targets.items():
        assert raw_request(server.url, target, f"req-{name}") == 404
    for name in targets:
        server.wait_for(rf"request_id=req-{name}\n")
    text = server.output
    lines = text.split("\n")[:-1]
    # Every line is one of the server's, and each request has exactly one.
    assert all(STAMP.match(line) for line in lines), text
    for name in targets:
        assert len([line for line in lines if f"request_id=req-{name}" in line]) == 1, text
    assert not any(" DELETE /api/instances/abc 204" in line and "GET" not in line
                   for line in lines), text
    assert not any(loglines.CONTROL.search(line) for line in lines), repr(text)
    expected = "\\x" + escape[-2:] if escape != "%c2%85" else "\\x85"
    path_line = next(line for line in lines if "request_id=req-path" in line)
    assert f"GET /api/a{expected}b/{expected}[31mred{expected} 404" in path_line
    forged_line = next(line for line in lines if "request_id=req-forged" in line)
    assert "GET /api/x\\x0a2026-12-07 11:06:00,000 INFO instance_api.access: DELETE" \
        in forged_line


def test_escape_writes_each_control_character_visibly():
    assert loglines.escape("plain /api/instances?q=é") == "plain /api/instances?q=é"
    assert loglines.escape("a\nb\rc\x1bd\x00e\x7ff\x85g\u2028h\x9f") == \
        "a\\x0ab\\x0dc\\x1bd\\x00e\\x7ff\\x85g\\u2028h\\x9f"


def test_a_fault_is_logged_on_one_line_with_the_clients_path_escaped(app, client, caplog):
    # A hook, not a route: no URL rule matches a newline.
    app.before_request(lambda: 1 / 0 if request.path.startswith("/api/boom") else None)
    with caplog.at_level(logging.ERROR):
        resp = client.get("/api/boom/a%0a2026-12-07%20INFO%20forged%1b")
    assert resp.status_code == 500
    messages = [record.getMessage() for record in caplog.records
                if record.levelno >= logging.ERROR]
    assert messages == [f"Unhandled error in GET /api/boom/a\\x0a2026-12-07 INFO "
                        f"forged\\x1b (request {resp.get_json()['request_id']})"]


def test_the_servers_formatter_keeps_any_message_on_one_line():
    formatter = loglines.Formatter(loglines.LINE_FORMAT)
    record = logging.LogRecord("instance_api", logging.WARNING, __file__, 1,
                               "Database unavailable: %s", ("disk\nfull\x1b",), None)
    line = formatter.format(record)
    assert "\n" not in line and line.endswith("Database unavailable: disk\\x0afull\\x1b")
