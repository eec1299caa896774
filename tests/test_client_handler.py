"""InstanceLogHandler against a real server: records become logs (level,
log_type, exceptions, extra), 10,000 records from 8 threads all arrive in
each thread's order; and when the server is dead or slow, logging never
blocks the caller, and what is lost is counted and reported once."""
import logging
import subprocess
import sys
import socket
import threading
import time

import pytest

from conftest import SITE, USER
from instance_api_client import Client, InstanceLogHandler
from instance_api_client.handler import slug_of
from test_client import Front, live  # noqa: F401 - the module's server fixture


@pytest.fixture
def api(live):  # noqa: F811
    with Client(live.url) as client:
        yield client


@pytest.fixture
def box(api):
    return api.create_instance(site_id=SITE, user_id=USER, name="logged")["id"]


@pytest.fixture
def logger(request):
    """A logger of its own, not propagating to the root (pytest's capture)."""
    made = logging.getLogger(f"tests.{request.node.name}")
    made.setLevel(logging.DEBUG)
    made.propagate = False
    yield made
    for handler in list(made.handlers):
        made.removeHandler(handler)
        handler.close()


@pytest.fixture
def reports(monkeypatch):
    """What the handler reports through logging.lastResort."""
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
    monkeypatch.setattr(logging, "lastResort", Keep())
    return seen


def logs_after(api, box, cursor):
    """Every log of `box` committed after the log `cursor`, in commit order."""
    logs = []
    while True:
        page = api.list_logs(box, after=cursor, limit=1000)
        if not page:
            return logs
        logs.extend(page)
        cursor = page[-1]["id"]


def test_records_become_logs(api, box, logger, reports):
    handler = InstanceLogHandler(api, box)
    logger.addHandler(handler)
    logger.setLevel(1)
    marker = api.append_log(box, "marker")["id"]

    class Opaque:
        def __repr__(self):
            return "<opaque>"
    logger.debug("looking at %s", "the page")
    logger.info("clicked", extra={"button": "Pay", "where": {"x": 1, "y": [2.5]},
                                  "thing": Opaque(), "ratio": float("nan")})
    logger.warning("slow page")
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("the sum failed")
    logger.critical("giving up")
    logger.log(5, "very fine")
    logger.info("")
    logger.info("x" * 70000)
    logger.info("half a pair: \ud800")
    logging.getLogger("My App/Worker #2").addHandler(handler)
    logging.getLogger("My App/Worker #2").error("from another logger")
    logging.getLogger("My App/Worker #2").removeHandler(handler)
    assert handler.flush(timeout=10)

    logs = logs_after(api, box, marker)
    assert [log["level"] for log in logs] == ["debug", "info", "warn", "error", "fatal",
                                              "debug", "info", "info", "info", "error"]
    assert logs[0]["message"] == "looking at the page"
    assert logs[0]["log_type"] == slug_of(logger.name) == logger.name.lower()
    assert logs[1]["details"] == {"logger": logger.name, "button": "Pay",
                                  "where": {"x": 1, "y": [2.5]}, "thing": "<opaque>",
                                  "ratio": "nan"}
    assert "ZeroDivisionError: division by zero" in logs[3]["details"]["exception"]
    assert logs[3]["message"] == "the sum failed"
    assert logs[6]["message"] == "(empty message)"
    assert len(logs[7]["message"]) == 65536
    assert logs[8]["message"] == "half a pair: ?"
    assert logs[9]["log_type"] == "my_app_worker__2"
    assert handler.dropped == 0 and handler.sent == 10 and reports == []


def test_the_senders_own_http_logs_do_not_come_back(api, box, reports):
    root = logging.getLogger()
    handler = InstanceLogHandler(api, box)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        logging.getLogger("agent").info("one")
        assert handler.flush(timeout=10)
        logging.getLogger("agent").info("two")
        assert handler.flush(timeout=10)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    logs = api.list_logs(box, sort="created_at")
    assert [log["message"] for log in logs] == ["one", "two"]


def test_10000_records_from_8_threads_all_arrive_in_order(api, box, logger, reports):
    handler = InstanceLogHandler(api, box)
    logger.addHandler(handler)
    marker = api.append_log(box, "marker")["id"]
    start = threading.Barrier(8)

    def write(number):
        start.wait()
        for seq in range(1250):
            logger.info("record %d of thread %d", seq, number,
                        extra={"writer": number, "seq": seq})
    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert handler.flush(timeout=60)

    logs = logs_after(api, box, marker)
    assert len(logs) == 10000 and handler.dropped == 0 and reports == []
    for number in range(8):
        seqs = [log["details"]["seq"] for log in logs if log["details"]["writer"] == number]
        assert seqs == list(range(1250))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def black_hole():
    """A port that takes connections and never answers (the kernel's
    backlog completes them; nothing reads)."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(128)
        yield f"http://127.0.0.1:{hole.getsockname()[1]}"


@pytest.mark.parametrize("dead", ["refused", "silent"])
def test_a_dead_server_never_blocks_the_caller(dead, black_hole, logger, reports):
    # Silent: each try waits out the 1 s timeout, so a call that waited for
    # the network would take a second.
    url = f"http://127.0.0.1:{free_port()}" if dead == "refused" else black_hole
    client = Client(url, timeout=1, backoff=0.01, max_attempts=2)
    handler = InstanceLogHandler(client, SITE, capacity=100)
    logger.addHandler(handler)
    slowest = 0.0
    started = time.perf_counter()
    for n in range(2000):
        before = time.perf_counter()
        logger.info("into the void %d", n)
        slowest = max(slowest, time.perf_counter() - before)
    assert slowest < 0.5 and time.perf_counter() - started < 1
    assert handler.flush(timeout=30)
    assert handler.dropped == 2000 and handler.sent == 0
    # Reported once, naming the instance, at the first loss.
    assert len(reports) == 1 and SITE in reports[0]
    handler.close()
    assert len(reports) == 2 and "2000" in reports[1]
    client.close()


def test_records_left_at_close_are_counted(logger, reports):
    dead = Client(f"http://127.0.0.1:{free_port()}", backoff=0.5, max_attempts=3)
    handler = InstanceLogHandler(dead, SITE)
    logger.addHandler(handler)
    for n in range(500):
        logger.info("never sent %d", n)
    logger.removeHandler(handler)
    handler.close(timeout=0.1)
    until_done = time.monotonic() + 10
    while handler.dropped < 500 and time.monotonic() < until_done:
        time.sleep(0.05)    # a batch in flight is counted when its retries end
    assert handler.dropped == 500 and handler.sent == 0
    assert reports and SITE in reports[0]
    dead.close()


class SlowFront(Front):
    """The real server behind a front that takes `delay` seconds to answer."""

    def __init__(self, target, delay):
        super().__init__(target, ["forward"])
        inner = self.httpd.RequestHandlerClass.handle_one

        def slow(request_handler):
            time.sleep(delay)
            inner(request_handler)
        self.httpd.RequestHandlerClass.do_POST = slow


def test_a_slow_server_slows_the_sending_not_the_caller(live, api, box, logger,  # noqa: F811
                                                        reports):
    front = SlowFront(live.url, 1.0)
    try:
        with Client(front.url) as slow:
            handler = InstanceLogHandler(slow, box)
            logger.addHandler(handler)
            marker = api.append_log(box, "marker")["id"]
            slowest = 0.0
            for n in range(300):
                started = time.perf_counter()
                logger.info("step %d", n)
                slowest = max(slowest, time.perf_counter() - started)
            # Each answer takes a second: a call that waited for one would too.
            assert slowest < 0.5
            assert handler.flush(timeout=30)
            handler.close()
    finally:
        front.close()
    logs = logs_after(api, box, marker)
    assert [log["message"] for log in logs] == [f"step {n}" for n in range(300)]
    assert handler.dropped == 0 and reports == []
    # Several records to a request: fewer requests than records.
    assert len(front.seen) < 300


def test_a_batch_past_the_body_limit_is_sent_in_parts(start_server, logger, reports):
    server = start_server(env={"INSTANCES_MAX_BODY_BYTES": "200000"})
    with Client(server.url) as client:
        box = client.create_instance(site_id=SITE, user_id=USER, name="big")["id"]
        # The handler's own bound is above the server's limit: a 413 splits.
        handler = InstanceLogHandler(client, box, batch_bytes=10_000_000)
        logger.addHandler(handler)
        for n in range(20):
            logger.info("%d %s", n, "y" * 60000)
        assert handler.flush(timeout=30)
        assert handler.dropped == 0 and reports == []
        logs = client.list_logs(box, sort="created_at", limit=100)
        assert [log["message"].split()[0] for log in logs] == [str(n) for n in range(20)]


def test_slugs():
    assert slug_of("agent.browser") == "agent.browser"
    assert slug_of("__main__") == "main__"
    assert slug_of("123") == "log"
    assert slug_of("A" * 100) == "a" * 64


def test_what_is_queued_is_sent_at_exit(api, box):
    """A script that logs and ends without flushing or closing anything."""
    script = (
        "import logging, sys\n"
        "from instance_api_client import Client, InstanceLogHandler\n"
        "log = logging.getLogger('script')\n"
        "log.setLevel(logging.INFO)\n"
        "log.addHandler(InstanceLogHandler(Client(sys.argv[1]), sys.argv[2]))\n"
        "for n in range(500):\n"
        "    log.info('line %d', n)\n")
    subprocess.run([sys.executable, "-c", script, api.url, box], check=True, timeout=60)
    assert api.list_logs(box, log_type="script").total == 500
