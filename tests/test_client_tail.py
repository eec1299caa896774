"""Client.tail against a real server: the last logs then each new one, once
and in order; following on across a server restart on the same database;
the end of the instance."""
import queue
import socket
import threading

import httpx
import pytest

from conftest import SITE, USER
from instance_api_client import ApiError, Client


class Follower:
    """client.tail(...) run in a thread, what it yields in a queue."""

    def __init__(self, client, *args, **kwargs):
        self.items, self.events = queue.Queue(), queue.Queue()
        kwargs.setdefault("on_error", lambda reason, failures: self.events.put(("error", reason)))
        kwargs.setdefault("on_resume", lambda: self.events.put(("resume", None)))
        self.iterator = client.tail(*args, **kwargs)
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        try:
            for log in self.iterator:
                self.items.put(log)
        except Exception as exc:    # handed to the test
            self.items.put(exc)

    def next(self, count=1, timeout=15):
        return [self.items.get(timeout=timeout) for _ in range(count)]

    def messages(self, count=1, timeout=15):
        return [log["message"] for log in self.next(count, timeout)]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_last_logs_then_each_new_one(start_server):
    server = start_server()
    with Client(server.url) as client:
        box = client.create_instance(site_id=SITE, user_id=USER, name="followed")["id"]
        client.append_logs(box, [{"log_type": "system", "message": m} for m in "abc"])
        follower = Follower(client, box, last=2, wait=5, min_level="info")
        assert follower.messages(2) == ["b", "c"]
        client.append_log(box, "d")
        client.append_log(box, "quiet", level="debug")
        client.append_logs(box, [{"log_type": "system", "message": m} for m in "ef"])
        assert follower.messages(3) == ["d", "e", "f"]
        assert follower.items.empty()

        client.delete_instance(box)
        [gone] = follower.next()
        assert isinstance(gone, ApiError) and gone.status == 404


def test_an_instance_without_logs_yet_and_a_cursor(start_server):
    server = start_server()
    polled = threading.Event()
    seen = httpx.Client(event_hooks={"response": [lambda response: polled.set()]})
    with Client(server.url) as client, Client(server.url, http=seen) as watched:
        box = client.create_instance(site_id=SITE, user_id=USER, name="quiet")["id"]
        follower = Follower(watched, box, wait=5, poll=0.1)
        assert polled.wait(10)
        # Polled, until the first logs come: all of them are new.
        first, *_ = client.append_logs(box, [{"log_type": "system", "message": m}
                                             for m in ("first", "1b", "1c")])
        assert follower.messages(3) == ["first", "1b", "1c"]
        client.append_log(box, "second")
        assert follower.messages() == ["second"]
        # From a cursor: what came after it, then what comes.
        again = Follower(client, box, after=first["id"], wait=5)
        assert again.messages(3) == ["1b", "1c", "second"]


def test_it_follows_on_across_a_server_restart(start_server, tmp_path):
    port = str(free_port())
    server = start_server("--port", port)
    with Client(server.url, timeout=5) as client:
        box = client.create_instance(site_id=SITE, user_id=USER, name="restarted")["id"]
        client.append_log(box, "before")
        follower = Follower(client, box, last=1, wait=2)
        assert follower.messages() == ["before"]

        assert server.stop() == 0
        kind, reason = follower.events.get(timeout=15)
        assert kind == "error" and "cannot reach the server" in reason
        server = start_server("--port", port, log_name="again.log")
        client.append_log(box, "after")
        assert follower.messages(timeout=20) == ["after"]
        events = []
        while not follower.events.empty():
            events.append(follower.events.get_nowait())
        assert events[-1] == ("resume", None)
        client.append_log(box, "later")
        assert follower.messages() == ["later"]


def test_an_unknown_instance_raises(start_server):
    server = start_server()
    with Client(server.url) as client, pytest.raises(ApiError) as refused:
        next(client.tail("01a224b0-0000-7000-8000-000000000001"))
    assert refused.value.status == 404
