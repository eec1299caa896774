"""Hostile clients against the real server (waitress in front of Flask).

Agents and the tools around them are not always polite HTTP clients: a stuck
proxy holds half a request open, a buggy SDK frames a body two ways at once,
a fuzzer sends JSON no parser should accept. Each scenario here checks that
such a client gets a clear refusal (RFC 9457 problem JSON), cannot slip a
second request past the framing, cannot starve other clients, and never
leaves anything stored; and that everything the API does accept comes back
exactly as sent.
"""
import http.client
import io
import json
import selectors
import signal
import socket
import threading
import time
from contextlib import closing
from urllib.parse import urlsplit

import pytest

from conftest import SITE, USER, Reply, Server, assert_problem, call, connect, random_id, send

BOX = {"site_id": SITE, "user_id": USER, "name": "box"}
MIB = 1 << 20
# The answers waitress (or Flask) may give to a request it will not process.
REFUSALS = (400, 411, 413, 431, 501)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One real server for the probes that need no settings of their own."""
    srv = Server(tmp_path_factory.mktemp("hostile"))
    yield srv
    if srv.proc.poll() is None:
        srv.stop(signal.SIGKILL)


# -- raw sockets -------------------------------------------------------------

def open_raw(url, timeout=5):
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", url
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def read_until_quiet(sock, quiet=0.75, limit=5.0):
    """What the server sends until it closes or resets the connection, or
    says nothing for `quiet` seconds: (bytes, whether it closed)."""
    received, deadline = [], time.monotonic() + limit
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(quiet, left))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return b"".join(received), False
        except ConnectionResetError:
            return b"".join(received), True
        if not chunk:
            return b"".join(received), True
        received.append(chunk)
    return b"".join(received), False


def exchange(url, data, quiet=0.75):
    """Send raw bytes on a new connection; return (bytes back, closed)."""
    with open_raw(url) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the server read it all; its answer is still queued
        return read_until_quiet(sock, quiet)


class _Stream(io.BytesIO):
    def close(self):
        """Kept open: several responses are read from one stream."""


class _Wire:
    """The one thing http.client.HTTPResponse needs of a socket."""

    def __init__(self, data):
        self.stream = _Stream(data)

    def makefile(self, mode):
        return self.stream


def responses(data):
    """Every complete HTTP response in `data`, in order, as conftest Replies."""
    wire, replies = _Wire(data), []
    while wire.stream.tell() < len(data):
        try:
            resp = http.client.HTTPResponse(wire)
            resp.begin()
            replies.append(Reply(resp))
        except (http.client.HTTPException, ValueError):
            break  # a truncated or garbled tail
    return replies


def only_reply(data):
    replies = responses(data)
    assert len(replies) == 1, data[:2000]
    return replies[0]


def read_reply(sock):
    """One response from a raw keep-alive socket, which stays open."""
    resp = http.client.HTTPResponse(sock)
    try:
        resp.begin()
        return Reply(resp)
    finally:
        resp.close()


def total(url, path="/api/instances"):
    return int(call(url, "GET", f"{path}?limit=0").headers["X-Total-Count"])


def ms(seconds):
    return round(seconds * 1000, 1)


# -- 1. slowloris ------------------------------------------------------------

SLOW_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: yes\r\n\r\n"


def trickle(socks, data, stop, sent):
    """Send `data` a byte at a time to each socket, round-robin, until
    `stop` (the final byte is held back, so no request completes)."""
    while not stop.is_set() and sent[0] < len(data) - 1:
        for sock in socks:
            sock.sendall(data[sent[0]:sent[0] + 1])
        sent[0] += 1
        stop.wait(0.05)


def test_slow_and_idle_clients_do_not_starve_a_normal_one(server, figures):
    """A slowloris holds connections with requests that never finish; waitress
    reads them asynchronously, so they must not take the worker threads (8)
    from a normal client. 10 sockets stall after part of the headers, 10 more
    trickle a byte every 50 ms, and 50 keep-alive connections sit idle after
    one request; 20 requests on fresh connections must all succeed quickly,
    and the slow requests are still answered once they complete."""
    stalled = [open_raw(server.url) for _ in range(10)]
    trickling = [open_raw(server.url) for _ in range(10)]
    idle = [connect(server.url) for _ in range(50)]
    stop, sent = threading.Event(), [0]
    trickler = threading.Thread(target=trickle, args=(trickling, SLOW_REQUEST, stop, sent))
    try:
        for sock in stalled:
            sock.sendall(SLOW_REQUEST[:30])
        assert {send(conn, "GET", "/healthz").status_code for conn in idle} == {200}
        trickler.start()
        time.sleep(0.3)
        statuses, latencies = [], []
        for _ in range(20):
            started = time.perf_counter()
            statuses.append(call(server.url, "GET", "/api/instances?limit=1").status_code)
            latencies.append(time.perf_counter() - started)
        stop.set()
        trickler.join()
        slow_statuses = []
        for sock in stalled:
            sock.sendall(SLOW_REQUEST[30:])
            slow_statuses.append(read_reply(sock).status_code)
        for sock in trickling:
            sock.sendall(SLOW_REQUEST[sent[0]:])
            slow_statuses.append(read_reply(sock).status_code)
        idle_after = send(idle[0], "GET", "/healthz").status_code
    finally:
        stop.set()
        if trickler.is_alive():
            trickler.join()
        for sock in stalled + trickling:
            sock.close()
        for conn in idle:
            conn.close()
    latencies.sort()
    figures(requests=len(statuses), p99_ms=ms(latencies[min(19, int(len(latencies) * 0.99))]),
            max_ms=ms(latencies[-1]), stalled=len(stalled), trickling=len(trickling),
            idle=len(idle), trickled_bytes=sent[0])
    assert statuses == [200] * 20
    assert latencies[-1] < 1.0, latencies
    assert slow_statuses == [200] * 20
    assert idle_after == 200
    assert "Traceback" not in server.output


def close_times(socks, started, deadline):
    """Seconds from `started` until the server closed (or reset) each socket;
    None for one still open at `deadline`."""
    closed = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                try:
                    data = key.fileobj.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed[key.fileobj] = round(time.monotonic() - started, 2)
                    selector.unregister(key.fileobj)
    return [closed.get(sock) for sock in socks]


def test_a_stalled_connection_is_dropped_after_the_channel_timeout(tmp_path, figures):
    """With INSTANCES_CHANNEL_TIMEOUT=2 the server must drop a connection that
    stalls mid-headers, one that never sends a byte, and an idle keep-alive
    one, about 2 s after their last byte; otherwise a slowloris keeps its
    sockets until CONNECTION_LIMIT is reached and nobody else gets in."""
    srv = Server(tmp_path, env={"INSTANCES_CHANNEL_TIMEOUT": "2"})
    socks = []
    try:
        for _ in range(5):
            socks.append(open_raw(srv.url))
            socks[-1].sendall(SLOW_REQUEST[:20])
        for _ in range(3):
            socks.append(open_raw(srv.url))
        for _ in range(3):
            socks.append(open_raw(srv.url))
            socks[-1].sendall(SLOW_REQUEST)
            assert read_reply(socks[-1]).status_code == 200
        started = time.monotonic()
        times = close_times(socks, started, started + 6)
    finally:
        for sock in socks:
            sock.close()
        srv.stop(signal.SIGKILL)
    closed = [seconds for seconds in times if seconds is not None]
    figures(closed=f"{len(closed)}/{len(times)}", first_close_s=min(closed, default=None),
            last_close_s=max(closed, default=None) if len(closed) == len(times) else ">6")
    assert None not in times, f"still open after 6 s (stalled, silent, keep-alive): {times}"
    assert all(1.0 <= seconds <= 5.0 for seconds in times), times


# -- 2. request smuggling ----------------------------------------------------

BODY = json.dumps(BOX).encode()


def chunked(data, size=None):
    """`data` in the chunked transfer coding, with the final empty chunk."""
    size = size or len(data) or 1
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def post(*headers, version=b"HTTP/1.1"):
    """The head of a POST /api/instances with these extra header lines."""
    lines = [b"POST /api/instances " + version, b"Host: 127.0.0.1",
             b"Content-Type: application/json", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def cl(length):
    return b"Content-Length: %d" % length


TE = b"Transfer-Encoding: chunked"
# Each probe builds the bytes to send around `hidden`, a GET that a server
# reading the framing one way would see as a second request. "reject": the
# framing is invalid, so only a refusal is right. "reject-or-close": RFC 9112
# 6.1 lets a server process Content-Length with Transfer-Encoding by the
# latter, but it MUST then close the connection, never answer what follows.
PROBES = {
    "CL.TE": ("reject-or-close", lambda hidden: post(
        cl(len(chunked(BODY) + hidden)), TE) + chunked(BODY) + hidden),
    "TE.CL": ("reject-or-close", lambda hidden: post(TE, cl(3)) + chunked(BODY) + hidden),
    "two different Content-Length": ("reject", lambda hidden: post(
        cl(len(BODY)), cl(len(BODY + hidden))) + BODY + hidden),
    "chunk size zz": ("reject", lambda hidden: post(TE) + b"zz\r\n" + BODY
                      + b"\r\n0\r\n\r\n" + hidden),
    "chunk extension hiding a last chunk": ("reject", lambda hidden: post(TE) + b"%x" % len(BODY)
                                            + b';x="\r\n0\r\n\r\n"\r\n' + BODY
                                            + b"\r\n0\r\n\r\n" + hidden),
    "chunk size ended by a bare LF": ("reject", lambda hidden: post(TE) + b"%x\n" % len(BODY)
                                      + BODY + b"\r\n0\r\n\r\n" + hidden),
    "missing final chunk": ("reject", lambda hidden: post(TE) + b"%x\r\n" % len(BODY) + BODY
                            + b"\r\n" + hidden),
    "TE gzip, chunked": ("reject", lambda hidden: post(
        b"Transfer-Encoding: gzip, chunked") + chunked(BODY) + hidden),
    "TE chunked, identity": ("reject", lambda hidden: post(
        b"Transfer-Encoding: chunked, identity") + chunked(BODY) + hidden),
    "TE chunked then TE identity": ("reject", lambda hidden: post(
        TE, b"Transfer-Encoding: identity") + chunked(BODY) + hidden),
    "space before the colon": ("reject", lambda hidden: post(
        cl(len(chunked(BODY) + hidden)), b"Transfer-Encoding : chunked") + chunked(BODY) + hidden),
    "obs-fold TE with CL": ("reject-or-close", lambda hidden: post(
        cl(len(chunked(BODY) + hidden)), b"Transfer-Encoding:\r\n chunked")
        + chunked(BODY) + hidden),
    "HTTP/1.0 keep-alive TE with CL": ("reject-or-close", lambda hidden: post(
        b"Connection: keep-alive", TE, cl(len(BODY)), version=b"HTTP/1.0") + BODY + hidden),
}


@pytest.mark.parametrize("probe", PROBES)
def test_smuggling_probe_is_refused_and_nothing_is_answered_after_it(live, figures, probe):
    """A front proxy and this server must never disagree on where a request
    ends: if they can, one client's bytes become another request (request
    smuggling). Each ambiguous framing gets one refusal (or, where the RFC
    allows processing, one answer and a closed connection), and the GET
    hidden after the body is never answered."""
    kind, build = PROBES[probe]
    target = random_id()
    hidden = f"GET /api/instances/{target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    raw, closed = exchange(live.url, build(hidden))
    replies = responses(raw)
    statuses = [reply.status_code for reply in replies]
    figures(statuses=statuses or "none", closed=closed)
    answered = target.encode() in raw
    assert not answered, f"the hidden GET was answered as a request of its own: {statuses}"
    assert len(replies) == 1, f"{statuses}: {raw[:2000]!r}"
    reply = replies[0]
    if kind == "reject" or reply.status_code >= 400:
        assert reply.status_code in REFUSALS, reply.get_data(as_text=True)
        assert_problem(reply, reply.status_code)
    else:
        assert 200 <= reply.status_code < 300, reply.get_data(as_text=True)
    assert closed, "the connection stayed open after a request with ambiguous framing"


# -- 3. oversized requests ---------------------------------------------------

def long_instance(size):
    """An instance body of at least `size` bytes (the name is too long too,
    so a server that skipped the limit would still store nothing)."""
    return json.dumps({**BOX, "name": "x" * size}).encode()


OVERSIZED = {
    # Just past MAX_BODY_BYTES: waitress reads it all, Flask refuses it.
    "chunked, 1 MiB + 4 KiB": (413, lambda: post(TE) + chunked(long_instance(MIB + 4096),
                                                               64 << 10)),
    # Past waitress's backstop (limit + 64 KiB): waitress stops reading.
    "chunked, 2 MiB": (413, lambda: post(TE) + chunked(long_instance(2 * MIB), 64 << 10)),
    "Content-Length, 1 MiB + 4 KiB": (413, lambda: post(cl(len(long_instance(MIB + 4096))))
                                      + long_instance(MIB + 4096)),
    # Refused from the headers alone, before any body is sent.
    "Content-Length 5 MiB, no body sent": (413, lambda: post(cl(5 * MIB))),
    "one 65 KiB header": (431, lambda: b"GET /api/instances HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"X-Big: " + b"a" * (65 << 10) + b"\r\n\r\n"),
    "700 headers of 100 bytes": (431, lambda: b"GET /api/instances HTTP/1.1\r\nHost: x\r\n"
                                 + b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 100)
                                            for i in range(700)) + b"\r\n"),
    "a 65 KiB request line": (431, lambda: b"GET /api/instances?q=" + b"a" * (65 << 10)
                              + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
}


@pytest.mark.parametrize("case", OVERSIZED)
def test_an_oversized_request_is_refused_as_problem_json(live, figures, case):
    """Bodies past MAX_BODY_BYTES (1 MiB), however framed, and headers past
    MAX_HEADER_BYTES (64 KiB) are refused with 413/431 problem JSON, whether
    Flask or waitress answers, and nothing is stored."""
    status, build = OVERSIZED[case]
    before = total(live.url)
    reply = only_reply(exchange(live.url, build())[0])
    figures(status=reply.status_code,
            answered_by="flask" if "X-Request-ID" in reply.headers else "waitress")
    assert reply.status_code == status or (status == 431 and reply.status_code == 400)
    assert_problem(reply, reply.status_code)
    assert total(live.url) == before


# -- 4. JSON no parser should accept -----------------------------------------

def instance_with(tail):
    """Raw bytes of a valid instance body with `tail` spliced in as the last
    member, so a lenient parser would store something."""
    return json.dumps(BOX).encode()[:-1] + b", " + tail + b"}"


DEEP = b"[" * 100000 + b"]" * 100000
BAD_INSTANCES = {
    "100000-deep array": (DEEP, 400, None),
    "100000-deep object": (b'{"a":' * 100000 + b"1" + b"}" * 100000, 400, None),
    "100000-deep array in configuration": (instance_with(b'"configuration": {"x": ' + DEEP
                                                         + b"}"), 400, None),
    "NaN": (instance_with(b'"configuration": {"x": NaN}'), 400, None),
    "Infinity": (instance_with(b'"configuration": {"x": Infinity}'), 400, None),
    "-Infinity": (instance_with(b'"configuration": {"x": -Infinity}'), 400, None),
    "1e999": (instance_with(b'"configuration": {"x": 1e999}'), 400, None),
    "40-digit integer": (instance_with(b'"configuration": {"x": ' + b"9" * 40 + b"}"),
                         422, "configuration.x"),
    "-40-digit integer": (instance_with(b'"configuration": {"x": -' + b"9" * 40 + b"}"),
                          422, "configuration.x"),
    "invalid UTF-8 byte": (BODY[:-2] + b'\xff"}', 400, None),
    "overlong UTF-8": (BODY[:-2] + b'\xc0\xaf"}', 400, None),
    "UTF-8 encoded surrogate": (BODY[:-2] + b'\xed\xa0\x80"}', 400, None),
    "lone surrogate escape": (BODY[:-2] + b'\\ud800"}', 400, None),
    "lone low surrogate escape": (BODY[:-2] + b'\\udc00 x"}', 400, None),
    "NUL in name": (BODY[:-2] + b'\\u0000"}', 422, "name"),
    "NUL in a configuration key": (instance_with(b'"configuration": {"a\\u0000b": 1}'),
                                   422, "configuration.a\0b"),
    "NUL in a configuration value": (instance_with(b'"configuration": {"a": "x\\u0000"}'),
                                     422, "configuration.a"),
    "NUL in an environment value": (instance_with(b'"environment_variables": {"A": "\\u0000"}'),
                                    422, "environment_variables.A"),
}
LOG = b'{"log_type": "system", "message": "started"'
BAD_LOGS = {
    "NUL in message": (b'{"log_type": "system", "message": "a\\u0000b"}', 422, "message"),
    "NUL in a details key": (LOG + b', "details": {"\\u0000": 1}}', 422, "details.\0"),
    "NUL in a details value": (LOG + b', "details": {"k": ["ok", "\\u0000"]}}', 422,
                               "details.k.1"),
    "NUL in a batch entry": (b"[" + LOG + b"}, " + LOG[:-1] + b'\\u0000"}]', 422,
                             "1.message"),
    "100000-deep array in details": (LOG + b', "details": {"x": ' + DEEP + b"}}", 400, None),
    "NaN in details": (LOG + b', "details": {"x": NaN}}', 400, None),
    "lone surrogate in message": (b'{"log_type": "system", "message": "\\ud800"}', 400, None),
    "40-digit integer in details": (LOG + b', "details": {"n": ' + b"1" * 40 + b"}}", 422,
                                    "details.n"),
}


def stored(client, path):
    return int(client.get(f"{path}?limit=0").headers["X-Total-Count"])


@pytest.mark.parametrize("case", BAD_INSTANCES)
def test_json_no_parser_should_accept_is_refused_for_an_instance(client, case):
    """orjson is strict where the standard library is lenient (NaN, huge
    numbers, lone surrogates, 100000 levels of nesting that would blow a
    recursive parser's stack), and the service refuses what it cannot store
    exactly (NUL, integers past 64 bits): 400 or 422, never 500, nothing stored."""
    body, status, field = BAD_INSTANCES[case]
    before = stored(client, "/api/instances")
    resp = client.post("/api/instances", data=body, content_type="application/json")
    assert_problem(resp, status, field)
    assert stored(client, "/api/instances") == before


@pytest.mark.parametrize("case", BAD_LOGS)
def test_json_no_parser_should_accept_is_refused_for_a_log(client, instance, case):
    """The same rules for a log, its details and a batch of logs."""
    body, status, field = BAD_LOGS[case]
    path = f"/api/instances/{instance['id']}/logs"
    before = stored(client, path)
    resp = client.post(path, data=body, content_type="application/json")
    assert_problem(resp, status, field)
    assert stored(client, path) == before


@pytest.mark.parametrize("path", ["/api/instances?q=a%00b", "/api/instances?name=%00",
                                  "/api/instances/{id}/logs?log_type=a%00b"])
def test_a_nul_in_a_query_parameter_is_422_naming_it(client, instance, path):
    """A NUL in a filter would be cut short by C tools and SQL drivers, so it
    is refused, not searched for."""
    resp = client.get(path.format(id=instance["id"]))
    body = assert_problem(resp, 422)
    assert body["errors"]["query"], body


# -- 5. accepted strings come back exactly -----------------------------------

TRICKY = {
    "ZWJ emoji": "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 "
                 "\U0001f3f3\ufe0f\u200d\U0001f308",
    "combining marks": "Z\u0351\u0364\u0322a\u0308l\u0327g\u0301o",
    "composed and decomposed": "\u00e9 e\u0301 \u212b \u0041\u030a",
    "right-to-left": "\u05e9\u05dc\u05d5\u05dd \u0639\u0631\u0628\u064a \u202eabc\u202c \u200f.",
    "line and paragraph separators": "a\u2028b\u2029c",
    "byte order mark": "\ufeffbom",
    "last code point": "\U0010ffff",
    "noncharacters and replacement": "\ufdd0\ufffe\uffff\ufffd",
    "zero width": "a\u200bb\u200cc\u200dd\u2060e\u00adf",
    "quotes and backslashes": "say \"hi\" \\ \\\\ \\u0041 \\n '/' ",
    "control characters": "tab\there\nline\rcr\x01\x1f\x7f\x85",
    "markup and injection": "</script><script>alert(1)</script> ' OR 1=1 -- ${jndi:x} %s%n{0}",
    "65536 characters": "a\u00e9\u4e2d\U0001f600" * 16384,
}


def escaped_in_json(text):
    return any(char in '"\\' or ord(char) < 0x20 for char in text)


def assert_same(reply, sent):
    """The raw body decodes to what was sent, and each string that JSON
    does not escape is in it as the very UTF-8 bytes sent."""
    assert reply.status_code == 200, reply.get_data(as_text=True)
    raw = reply.get_data()
    body = json.loads(raw)
    for key, value in sent.items():
        assert body[key] == value, key
        for text in [*value, *value.values()] if isinstance(value, dict) else [value]:
            if not escaped_in_json(text):
                assert text.encode() in raw, key


def as_utf8(body):
    return json.dumps(body, ensure_ascii=False).encode()


@pytest.mark.parametrize("case", TRICKY)
def test_an_accepted_string_comes_back_byte_identical(live, case):
    """Whatever the API accepts it must return unchanged: no Unicode
    normalisation, no stripped BOM or separators, no mangled escapes, no
    truncation. Sent once as raw UTF-8 (an instance) and once as \\u escapes
    (a log), each read back with a GET on the real server."""
    text = TRICKY[case]
    name = text if len(text) <= 255 else "long text"
    instance = {"name": name, "configuration": {text: text},
                "environment_variables": {"TEXT": text}}
    log = {"log_type": "system", "message": text, "details": {text: [name]}}
    json_type = {"Content-Type": "application/json"}
    with closing(connect(live.url)) as conn:
        made = send(conn, "POST", "/api/instances", as_utf8({**BOX, **instance}), json_type)
        assert made.status_code == 201, made.get_data(as_text=True)
        home = f"/api/instances/{made.get_json()['id']}"
        assert_same(send(conn, "GET", home), instance)
        logged = send(conn, "POST", f"{home}/logs", log)
        assert logged.status_code == 201, logged.get_data(as_text=True)
        got = send(conn, "GET", f"{home}/logs/{logged.get_json()['id']}")
        assert_same(got, {"message": text})
        assert got.get_json()["details"] == {text: [name]}


# -- 6. nosniff everywhere ---------------------------------------------------

def test_every_response_says_nosniff(live, figures):
    """Browsers must not guess a type other than the one declared, or a
    stored string could be run as HTML or script; so every response, from
    Flask or from waitress itself, carries X-Content-Type-Options: nosniff."""
    replies = {}
    with closing(connect(live.url)) as conn:
        replies["200 list"] = send(conn, "GET", "/api/instances?limit=1")
        made = replies["201 create"] = send(conn, "POST", "/api/instances", BOX)
        home = f"/api/instances/{made.get_json()['id']}"
        replies["304 If-None-Match"] = send(conn, "GET", home,
                                            headers={"If-None-Match": made.headers["ETag"]})
        replies["404 unknown id"] = send(conn, "GET", f"/api/instances/{random_id()}")
        replies["405 DELETE on a list"] = send(conn, "DELETE", "/api/instances")
        replies["415 text/plain"] = send(conn, "POST", "/api/instances", b"{}",
                                         {"Content-Type": "text/plain"})
        replies["422 NUL"] = send(conn, "POST", "/api/instances", {**BOX, "name": "a\0b"})
        replies["204 delete"] = send(conn, "DELETE", home)
        replies["413 Flask"] = send(conn, "POST", "/api/instances", long_instance(MIB + 10),
                                    {"Content-Type": "application/json"})
    refused_by_waitress = {
        "400 waitress, request line": b"GARBAGE\r\n\r\n",
        "400 waitress, two Content-Length": post(cl(1), cl(2)) + b"{}",
        "413 waitress, Content-Length": post(cl(5 * MIB)),
        "431 waitress, headers": OVERSIZED["one 65 KiB header"][1](),
        "501 waitress, Transfer-Encoding": post(b"Transfer-Encoding: gzip") + b"{}",
    }
    for label, data in refused_by_waitress.items():
        replies[label] = only_reply(exchange(live.url, data)[0])
    missing = [label for label, reply in replies.items()
               if reply.headers.get("X-Content-Type-Options") != "nosniff"]
    figures(checked=len(replies), missing=missing or "none")
    assert {label: reply.status_code for label, reply in replies.items()} == {
        label: int(label.split()[0]) for label in replies}
    assert "X-Request-ID" in replies["413 Flask"].headers  # not waitress's backstop
    assert not missing, missing
