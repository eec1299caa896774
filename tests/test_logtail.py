"""`instance-api tail INSTANCE_ID` against a real server: the last lines,
then each new log as it lands, --min-level, tokens, a server restart, the
end of the instance, Ctrl-C; and what it prints of hostile text."""
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import logtail
from conftest import ROOT, SITE, USER, call, clean_environment

BOX = {"site_id": SITE, "user_id": USER, "name": "box"}


class Tail:
    """`python server.py tail ...` with its output lines in a queue."""

    def __init__(self, *argv, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py"), "tail", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**clean_environment(), "PYTHONUNBUFFERED": "1", **(env or {})},
            # As from a terminal: a suite started in the background of a
            # script inherits SIGINT ignored, and so would the command.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines = queue.Queue()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next(self, count=1, timeout=10):
        """The next `count` lines, each within `timeout` seconds."""
        return [self.lines.get(timeout=timeout) for _ in range(count)]

    def nothing_more(self, url, instance_id):
        """Nothing was printed since the last line read: a marker log
        appended now (fatal, past every --min-level) is the next line."""
        append(url, instance_id, "(marker)", level="fatal")
        assert text(self.next()) == ["FATAL agent_action: (marker)"]

    def finish(self, timeout=10):
        code = self.proc.wait(timeout)
        return code, self.proc.stderr.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def tails():
    started = []

    def start(*argv, **kwargs):
        started.append(Tail(*argv, **kwargs))
        return started[-1]
    yield start
    for tail in started:
        tail.kill()


def make_box(url, headers=None):
    reply = call(url, "POST", "/api/instances", BOX, headers)
    assert reply.status_code == 201
    return reply.get_json()["id"]


def append(url, instance_id, *messages, level="info", headers=None):
    body = [{"log_type": "agent_action", "level": level, "message": m} for m in messages]
    reply = call(url, "POST", f"/api/instances/{instance_id}/logs", body, headers)
    assert reply.status_code == 201, reply.get_data(as_text=True)


def text(lines):
    """The `LEVEL log_type: message` part of printed lines."""
    return [line.split(" ", 1)[1].strip() for line in lines]


def test_it_prints_the_last_lines_then_each_new_log_as_it_lands(start_server, tails):
    server = start_server()
    box = make_box(server.url)
    append(server.url, box, "one", "two", "three")
    tail = tails(box, "--url", server.url, "-n", "2")

    assert text(tail.next(2)) == ["INFO  agent_action: two", "INFO  agent_action: three"]
    append(server.url, box, "four")
    started = time.monotonic()
    assert text(tail.next()) == ["INFO  agent_action: four"]
    assert time.monotonic() - started < 1
    append(server.url, box, "five", "six", level="error")
    assert text(tail.next(2)) == ["ERROR agent_action: five", "ERROR agent_action: six"]
    tail.nothing_more(server.url, box)

    tail.proc.send_signal(signal.SIGINT)
    code, errors = tail.finish()
    assert code == 130 and "Traceback" not in errors


def test_min_level_and_an_instance_without_logs_yet(start_server, tails):
    server = start_server()
    box = make_box(server.url)
    tail = tails(box, "--url", server.url, "--min-level", "warn")
    # The tail has read the (empty) list: the server's access log says so.
    server.wait_for(rf"GET /api/instances/{box}/logs\S* 200 ")
    append(server.url, box, "quiet", level="info")
    append(server.url, box, "loud", level="warn")
    assert text(tail.next()) == ["WARN  agent_action: loud"]
    append(server.url, box, "quiet again", level="debug")
    append(server.url, box, "fatal", level="fatal")
    assert text(tail.next()) == ["FATAL agent_action: fatal"]
    tail.nothing_more(server.url, box)


def test_it_stops_with_status_1_when_the_instance_is_deleted(start_server, tails):
    server = start_server()
    box = make_box(server.url)
    append(server.url, box, "last words")
    tail = tails(box, "--url", server.url)
    assert text(tail.next()) == ["INFO  agent_action: last words"]
    assert call(server.url, "DELETE", f"/api/instances/{box}").status_code == 204
    code, errors = tail.finish()
    assert code == 1
    assert "404" in errors and box in errors and "Traceback" not in errors


def test_an_unknown_instance_is_status_1(start_server, tails):
    server = start_server()
    code, errors = tails("01a224b0-0000-7000-8000-000000000001", "--url", server.url).finish()
    assert code == 1 and "404" in errors


def test_it_sends_the_token_from_the_environment(start_server, tails):
    server = start_server(env={"INSTANCES_API_TOKENS": "sesame"})
    headers = {"Authorization": "Bearer sesame"}
    box = make_box(server.url, headers)
    append(server.url, box, "secret", headers=headers)

    tail = tails(box, "--url", server.url, env={"INSTANCES_API_TOKEN": "sesame"})
    assert text(tail.next()) == ["INFO  agent_action: secret"]
    code, errors = tails(box, "--url", server.url).finish()
    assert code == 1 and "401" in errors


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_it_follows_on_when_the_server_restarts(start_server, tails):
    port = str(free_port())
    server = start_server("--port", port)
    box = make_box(server.url)
    append(server.url, box, "before")
    tail = tails(box, "--url", server.url)
    assert text(tail.next()) == ["INFO  agent_action: before"]

    assert server.stop() == 0
    server = start_server("--port", port, log_name="again.log")
    append(server.url, box, "after")
    assert text(tail.next(timeout=15)) == ["INFO  agent_action: after"]
    tail.proc.send_signal(signal.SIGINT)
    code, errors = tail.finish()
    assert code == 130
    assert "cannot reach the server" in errors and "following again" in errors


@pytest.mark.parametrize("message, shown", [
    ("a\nfake line", "a\\nfake line"),
    ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
    ("\u202eevil", "\\u202eevil"),
    ("é 🚀 tab\there", "é 🚀 tab\there"),
])
def test_a_printed_line_escapes_control_characters(message, shown):
    line = logtail.line_of({"created_at": "2026-11-28T22:10:25.123456+00:00", "level": "info",
                            "log_type": "system", "message": message, "details": {}})
    assert line == f"2026-11-28T22:10:25.123456+00:00 INFO  system: {shown}"


def test_details_follow_the_message_as_json():
    line = logtail.line_of({"created_at": "T", "level": "warn", "log_type": "system",
                            "message": "m", "details": {"b": [1], "a": "x\ny"}})
    assert line == 'T WARN  system: m {"a": "x\\ny", "b": [1]}'
