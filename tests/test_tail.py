"""The live tail in one process (CONTRACT 3.3): `wait` on a log list after a
cursor, its validation, its wake-ups, its deadline, its bound, and what a
waiting request holds. Several processes and real servers:
test_tail_servers.py; the order logs are numbered in: test_sequence.py."""
import logging
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

import models
from app import create_app
from conftest import SITE, USER, assert_problem, database_for, random_id

BOX = {"site_id": SITE, "user_id": USER, "name": "box"}
# The contract's bound on a wake-up, measured here from the response of the
# POST that committed the log: a little later than the commit itself.
WAKE_BOUND = 0.25


class Waiter(threading.Thread):
    """A GET in a thread of its own, with its answer and when it came."""

    def __init__(self, client, url, headers=None):
        super().__init__(daemon=True)
        self.client, self.url, self.headers = client, url, headers
        self.started = time.monotonic()
        self.answered = self.resp = None
        self.start()

    def run(self):
        self.resp = self.client.get(self.url, headers=self.headers)
        self.answered = time.monotonic()

    def result(self, timeout=10):
        self.join(timeout)
        assert not self.is_alive(), f"no answer to {self.url} within {timeout} s"
        return self.resp

    def messages(self):
        return [log["message"] for log in self.result().get_json()]


def asleep(waiter):
    """Whether the waiter's request is asleep in its wait (storage.tail's
    Wait.sleep) having read every change to its instance so far: the
    server's own state, read from the thread's frames."""
    frame = sys._current_frames().get(waiter.ident)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "sleep" and code.co_filename.endswith("tail.py"):
            wait = frame.f_locals.get("self")
            return wait is not None and frame.f_locals.get("seen") == wait.followed.version
        frame = frame.f_back
    return False


def held(*waiters, timeout=10):
    """Poll until every waiter is asleep in its wait after reading all that
    happened to its instance; none may have been answered meanwhile."""
    deadline = time.monotonic() + timeout
    while not all(asleep(waiter) for waiter in waiters):
        assert all(waiter.is_alive() for waiter in waiters), "a wait was answered early"
        assert time.monotonic() < deadline, "the waits were not held"
        time.sleep(0.005)


@pytest.fixture
def logs_url(instance):
    return f"/api/instances/{instance['id']}/logs"


@pytest.fixture
def post(client, logs_url):
    def post(*messages, level="info", log_type="system", url=None, headers=None):
        body = [{"log_type": log_type, "level": level, "message": m} for m in messages]
        resp = client.post(url or logs_url, json=body if len(body) > 1 else body[0],
                           headers=headers)
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()
    return post


@pytest.fixture
def last(post):
    """The id of the instance's one log: the cursor the tests wait after."""
    return post("first")["id"]


def tail(logs_url, after, **query):
    return f"{logs_url}?after={after}" + "".join(f"&{k}={v}" for k, v in query.items())


# -- validation -----------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "wait=5",                                    # 3.3: wait needs after
    "after={log}&wait=31", "after={log}&wait=30.5", "after={log}&wait=-1",
    "after={log}&wait=abc", "after={log}&wait=", "after={log}&wait=nan",
    "after={log}&wait=inf", "after={log}&wait=1e400", "after={log}&wait=1_0",
    "after={log}&wait=%205", "after={log}&wait=0x10", "after={log}&wait=5s",
    "after={log}&wait=1&wait=2",                 # given twice
    "after={log}&wait=5&limit=0",                # a page that can never hold a log
])
def test_a_bad_wait_is_422_naming_wait(client, logs_url, last, query):
    body = assert_problem(client.get(f"{logs_url}?{query.format(log=last)}"), 422, "wait",
                          where="query")
    assert list(body["errors"]["query"]) == ["wait"]


@pytest.mark.parametrize("wait", ["0.2", "2e-1", "0.20"])
def test_wait_takes_a_decimal_number_of_seconds(client, logs_url, last, wait):
    started = time.monotonic()
    resp = client.get(tail(logs_url, last, wait=wait))
    assert resp.status_code == 200 and resp.get_json() == []
    assert 0.15 <= time.monotonic() - started < 1.5


def test_wait_0_answers_at_once(client, logs_url, last):
    started = time.monotonic()
    assert client.get(tail(logs_url, last, wait=0)).get_json() == []
    assert time.monotonic() - started < 0.5


def test_a_wait_after_a_log_no_one_has_is_422_at_once(client, logs_url, last):
    started = time.monotonic()
    assert_problem(client.get(tail(logs_url, random_id(), wait=5)), 422, "after", where="query")
    assert time.monotonic() - started < 1


def test_a_wait_on_an_unknown_instance_is_404_at_once(client, last):
    started = time.monotonic()
    assert_problem(client.get(tail(f"/api/instances/{random_id()}/logs", last, wait=5)), 404)
    assert time.monotonic() - started < 1


# -- answers ----------------------------------------------------------------------

def test_logs_already_after_the_cursor_are_answered_at_once(client, logs_url, last, post):
    later = [post(f"m{n}")["id"] for n in range(3)]
    started = time.monotonic()
    resp = client.get(tail(logs_url, last, wait=10, limit=2))

    assert time.monotonic() - started < 1
    assert resp.status_code == 200
    assert [log["id"] for log in resp.get_json()] == later[:2]
    assert resp.headers["X-Total-Count"] == "4"
    # The next page waits too: a follower only follows the link.
    query = parse_qs(urlsplit(resp.headers["Link"].split(">")[0][1:]).query)
    assert query == {"after": [later[1]], "wait": ["10"], "limit": ["2"]}


def test_a_new_log_answers_a_wait_at_once_oldest_first(client, logs_url, last, post):
    waiter = Waiter(client, tail(logs_url, last, wait=10))
    held(waiter)
    new = post("a", "b")
    posted = time.monotonic()

    resp = waiter.result()
    assert resp.status_code == 200
    assert waiter.answered - posted < WAKE_BOUND
    assert [log["id"] for log in resp.get_json()] == [log["id"] for log in new]
    assert resp.headers["X-Total-Count"] == "3"
    assert f"after={new[-1]['id']}" in resp.headers["Link"]


def test_a_wait_ends_at_its_deadline_with_an_empty_page(client, logs_url, last):
    started = time.monotonic()
    resp = client.get(tail(logs_url, last, wait=0.6))
    elapsed = time.monotonic() - started

    assert 0.55 <= elapsed < 2
    assert resp.status_code == 200 and resp.get_json() == []
    assert resp.headers["X-Total-Count"] == "1"
    assert "Link" not in resp.headers


def test_a_wait_is_held_through_logs_its_filters_leave_out(client, logs_url, last, post):
    severe = Waiter(client, tail(logs_url, last, wait=10, min_level="error"))
    errors = Waiter(client, tail(logs_url, last, wait=10, level="error,fatal", log_type="crash"))
    held(severe, errors)
    post("not this one", level="warn")
    post("nor this", level="error", log_type="agent_action")
    held(errors)
    assert severe.messages() == ["nor this"]
    post("this", level="fatal", log_type="crash")
    assert errors.messages() == ["this"]


def test_a_log_of_another_instance_does_not_end_a_wait(client, logs_url, last, post,
                                                       make_instance):
    other = make_instance()
    waiter = Waiter(client, tail(logs_url, last, wait=10))
    held(waiter)
    post("elsewhere", url=f"/api/instances/{other['id']}/logs")
    held(waiter)
    post("here")
    assert waiter.messages() == ["here"]


def test_a_log_appended_with_an_idempotency_key_wakes_once_it_is_committed(
        client, logs_url, last, post):
    waiter = Waiter(client, tail(logs_url, last, wait=10))
    held(waiter)
    post("kept", headers={"Idempotency-Key": "tail-1"})
    posted = time.monotonic()
    assert waiter.messages() == ["kept"]
    assert waiter.answered - posted < WAKE_BOUND


def test_deleting_the_instance_ends_its_waits_with_404(client, logs_url, last, instance):
    waiters = [Waiter(client, tail(logs_url, last, wait=10)) for _ in range(2)]
    held(*waiters)
    assert client.delete(f"/api/instances/{instance['id']}").status_code == 204
    deleted = time.monotonic()
    for waiter in waiters:
        assert_problem(waiter.result(), 404)
        assert waiter.answered - deleted < WAKE_BOUND


def test_a_cursor_page_read_as_its_instance_is_deleted_is_404(client, logs_url, last, instance,
                                                              monkeypatch):
    """PostgreSQL reads each statement at its own moment: the instance can go
    between the page (its count saw the instance) and the cursor check."""
    import routes.lists
    read = routes.lists.counted_representations

    def read_then_delete(*args, **kwargs):
        answer = read(*args, **kwargs)
        models.Instance.get_by_id(instance["id"]).delete_instance()
        return answer
    monkeypatch.setattr(routes.lists, "counted_representations", read_then_delete)
    assert_problem(client.get(tail(logs_url, last)), 404)


# -- the bound ----------------------------------------------------------------------

@pytest.fixture
def build(tmp_path):
    """An app with settings of the test's own, closed afterwards."""
    def build(**settings):
        return create_app({"TESTING": True, **database_for(tmp_path / "bound.db"), **settings})
    yield build
    models.db.close_all()


def first_log(client):
    instance = client.post("/api/instances", json=BOX).get_json()
    logs = f"/api/instances/{instance['id']}/logs"
    return logs, client.post(logs, json={"log_type": "system", "message": "first"}).get_json()


def test_past_max_waits_a_wait_is_answered_at_once(build):
    client = build(MAX_WAITS=1).test_client()
    logs, log = first_log(client)
    first = Waiter(client, tail(logs, log["id"], wait=10))
    held(first)

    started = time.monotonic()
    second = client.get(tail(logs, log["id"], wait=10))
    assert time.monotonic() - started < 1
    assert second.status_code == 200 and second.get_json() == []
    assert first.is_alive()

    client.post(logs, json={"log_type": "system", "message": "next"})
    assert first.messages() == ["next"]
    # The place is free again.
    again = Waiter(client, tail(logs, log["id"], wait=0.5))
    assert again.result().get_json()[0]["message"] == "next"


def test_max_waits_0_answers_every_wait_at_once(build):
    client = build(MAX_WAITS=0).test_client()
    logs, log = first_log(client)
    started = time.monotonic()
    assert client.get(tail(logs, log["id"], wait=10)).get_json() == []
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("settings, bound", [
    ({}, 4), ({"THREADS": 3}, 1), ({"THREADS": 1}, 0), ({"THREADS": 2, "MAX_WAITS": 2}, 2),
    ({"MAX_WAITS": "0"}, 0), ({"MAX_WAITS": ""}, 4),
])
def test_max_waits_is_half_the_threads_unless_set(build, settings, bound):
    assert build(**settings).config["MAX_WAITS"] == bound


@pytest.mark.parametrize("value", [-1, "-1", "many", 2.5, True])
def test_a_bad_max_waits_is_refused_naming_its_variable(build, value):
    with pytest.raises(ValueError, match="INSTANCES_MAX_WAITS"):
        build(MAX_WAITS=value)


# -- what a wait costs -------------------------------------------------------------

class Statements(logging.Handler):
    """The SELECTs peewee runs, from every thread."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def emit(self, record):
        if isinstance(record.msg, tuple) and record.msg[0].startswith("SELECT"):
            self.seen.append(record.msg[0])

    def __enter__(self):
        logger = logging.getLogger("peewee")
        logger.addHandler(self)
        logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("peewee")
        logger.removeHandler(self)
        logger.setLevel(logging.NOTSET)


def test_waiting_costs_no_query_per_waiter(client, logs_url, last, post, make_instance):
    """Nothing happening: no query at all. Another instance's log: on SQLite
    the watcher's one query for every instance waited on (PostgreSQL's
    notification names the instance, so none); the waiters read nothing."""
    other = make_instance()
    waiters = [Waiter(client, tail(logs_url, last, wait=10)) for _ in range(3)]
    held(*waiters)
    with Statements() as quiet:
        time.sleep(0.5)
    with Statements() as elsewhere:
        post("elsewhere", url=f"/api/instances/{other['id']}/logs")
        time.sleep(0.5)
    held(*waiters)

    assert quiet.seen == []
    assert len(elsewhere.seen) == (1 if models.is_sqlite() else 0), elsewhere.seen
    post("here")
    for waiter in waiters:
        assert waiter.messages() == ["here"]


def test_a_waiting_request_holds_no_connection_nor_snapshot(client, logs_url, last, post,
                                                            make_instance):
    """PostgreSQL: every pooled connection is back in the pool. SQLite: no
    waiter pins a snapshot of the WAL, so a checkpoint copies every frame
    written since they began waiting (the checkpoint runs on this thread's
    connection: SQLite sees the read locks of its own library only)."""
    other = f"/api/instances/{make_instance()['id']}/logs"
    waiters = [Waiter(client, tail(logs_url, last, wait=10)) for _ in range(3)]
    held(*waiters)
    post("more frames", url=other)
    if models.is_sqlite():
        # The watcher reads for an instant after each change: tries until
        # a deadline.
        deadline = time.monotonic() + 10
        while True:
            _, frames, copied = models.db.execute_sql(
                "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if copied == frames or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert copied == frames > 0
    else:
        assert models.db.obj._in_use == {}
    held(*waiters)
    post("done")
    for waiter in waiters:
        assert waiter.messages() == ["done"]
