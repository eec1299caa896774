"""Faults around the database file: another process holding SQLite's write
lock, a server killed or stopped in the middle of writes, a database that
cannot be written (read-only, full disk). Whatever happens, a client gets
either its 2xx (and the write is kept) or a 503 problem+json with Retry-After
that tells it to try again (and nothing was written): never a 500, a stack
trace, a lost acknowledged write or a half-written batch."""
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from urllib.parse import urlsplit

import pytest

import models
from conftest import SITE, USER, Server, assert_problem, call, send
from load import hammer

# SQLite's own lock, file and errors: a second sqlite3 process, a file-size
# limit, query_only. PostgreSQL's equivalents are the server's business.
pytestmark = pytest.mark.sqlite_only

BOX = {"site_id": SITE, "user_id": USER, "name": "box"}

# Another process with the write lock (a backup, a second server, someone's
# sqlite3 shell): BEGIN IMMEDIATE, then COMMIT after argv[2] seconds or as
# soon as the test closes its stdin, whichever comes first.
HOLDER = """
import select, sqlite3, sys

conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


class LockHolder:
    """A child process holding the write lock of `db_path`; use it in a
    `with` block, which ends by releasing the lock and reaping the child."""

    def __init__(self, db_path, seconds):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(db_path), str(seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert self.proc.stdout.readline() == "locked\n", "the holder did not lock"
        except BaseException:
            self.close()
            raise

    def release(self):
        """Commit now (a no-op once the holder's time is up) and wait for it."""
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        assert self.proc.stdout.readline() == "released\n"
        assert self.proc.wait(10) == 0

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if exc[0] is None and self.proc.poll() is None:
                self.release()
        finally:
            self.close()


def post_instance(conn, thread, n):
    return send(conn, "POST", "/api/instances", {**BOX, "name": f"box {thread}-{n}"})


def listed_ids(url, path):
    """Every id in a list, read page by page."""
    ids, offset = set(), 0
    while True:
        page = call(url, "GET", f"{path}?limit=1000&offset={offset}").get_json()
        ids.update(row["id"] for row in page)
        if len(page) < 1000:
            return ids
        offset += 1000


def total(url, path):
    reply = call(url, "GET", f"{path}?limit=0")
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return int(reply.headers["X-Total-Count"])


def assert_retry_later(reply):
    """503 problem+json, no stack trace, and a Retry-After in whole seconds."""
    body = assert_problem(reply, 503)
    assert reply.headers.get("Retry-After", "").isdigit(), dict(reply.headers)
    return body


def stored_instance_ids(db_path):
    """The instance ids in the file itself, read with SQLite, not the server."""
    with closing(sqlite3.connect(db_path)) as conn:
        return {uuid.UUID(row[0]) for row in conn.execute("SELECT id FROM instance")}


def shut_down(server):
    """SIGTERM, then SIGKILL if the server has not exited within 10 s."""
    try:
        server.stop()
    except subprocess.TimeoutExpired:
        server.stop(signal.SIGKILL)


def ms(seconds):
    return round(seconds * 1000, 1)


def test_writers_wait_out_a_lock_held_by_another_process(server, figures):
    """A backup or a second process may hold the write lock for a moment.
    Within the busy timeout (5 s by default) writers must queue and succeed,
    not fail with "database is locked": agents would otherwise see random
    errors whenever someone runs a backup."""
    with LockHolder(server.db_path, 2):
        load = hammer(server.url, 8, post_instance, each=3)
    slowest = max(load.latencies)
    figures(**load.figures(), errors=load.non_2xx + len(load.failures),
            max_latency_ms=ms(slowest))
    assert not load.failures, load.failures[:3]
    assert load.statuses == {201: 24}, load.statuses
    assert 1.5 < slowest < 5, "the first writers should have waited for the 2 s hold"
    created = {reply.get_json()["id"] for reply in load.replies}
    assert len(created) == 24
    assert listed_ids(server.url, "/api/instances") == created
    assert total(server.url, "/api/instances") == 24


def test_writers_get_503_with_retry_after_when_the_lock_outlasts_the_busy_timeout(
        tmp_path, figures):
    """When the lock is held longer than the busy timeout, a writer must learn
    quickly and clearly that it should retry (503 + Retry-After), not get a
    500 or hang; readers are not blocked by a writer in WAL mode; once the
    lock is free the same server writes again, and nothing half-written
    stays behind."""
    server = Server(tmp_path, env={"INSTANCES_BUSY_TIMEOUT": "1"})
    writes, reads = [], []  # (reply, seconds)

    # 4 writers and 2 readers: fewer than the server's 8 threads, so the
    # readers are not queued behind writers that wait for the lock.
    def request(conn, thread, n):
        started = time.perf_counter()
        if thread < 4:
            reply = post_instance(conn, thread, n)
            writes.append((reply, time.perf_counter() - started))
        else:
            reply = send(conn, "GET", "/api/instances?limit=10")
            reads.append((reply, time.perf_counter() - started))
        return reply

    try:
        with LockHolder(server.db_path, 10) as holder:
            load = hammer(server.url, 6, request, seconds=1.5)
            # hammer starts no request after 1.5 s and waits for the last
            # one, so every request above ran while the lock was held.
            holder.release()
        after = call(server.url, "POST", "/api/instances", BOX)
        count = total(server.url, "/api/instances")
    finally:
        shut_down(server)
    slowest_write = max((seconds for _, seconds in writes), default=0)
    figures(**load.figures(), errors=sum(r.status_code != 200 for r, _ in reads + writes),
            writes=len(writes), reads=len(reads), max_write_ms=ms(slowest_write),
            max_read_ms=ms(max((seconds for _, seconds in reads), default=0)),
            after_release=after.status_code)
    assert not load.failures, load.failures[:3]
    assert writes and reads
    for reply, _ in writes:
        assert_retry_later(reply)
    assert all(reply.status_code == 200 for reply, _ in reads), load.statuses
    assert after.status_code == 201, after.get_data(as_text=True)
    assert count == 1, "only the write after the release was stored"
    # The Writer queue and then SQLite's busy handler each wait at most the
    # busy timeout (1 s here), so no writer should wait much more than 2 s.
    assert slowest_write < 3, (
        f"a writer waited {slowest_write:.1f} s with INSTANCES_BUSY_TIMEOUT=1")


def test_acknowledged_writes_survive_sigkill(tmp_path, figures):
    """A crash (OOM killer, power to the container cut) must not lose a write
    the client was told succeeded, nor corrupt the file: with WAL and
    synchronous=NORMAL every commit is in the WAL before the 201 leaves."""
    server = Server(tmp_path)
    homes, acked_instances, acked_logs, lock = {}, set(), set(), threading.Lock()

    def write(conn, thread, n):
        # Even requests create instances (the first is the thread's home),
        # odd ones add a log to the home instance.
        if n % 2 == 0:
            reply = post_instance(conn, thread, n)
            if reply.status_code == 201:
                homes.setdefault(thread, reply.get_json()["id"])
                with lock:
                    acked_instances.add(reply.get_json()["id"])
        else:
            reply = send(conn, "POST", f"/api/instances/{homes[thread]}/logs",
                         {"log_type": "system", "message": f"step {n}"})
            if reply.status_code == 201:
                with lock:
                    acked_logs.add(reply.get_json()["id"])
        return reply

    killer = threading.Timer(0.75, server.proc.kill)
    killer.start()
    try:
        load = hammer(server.url, 8, write, seconds=1.5)
    finally:
        killer.cancel()
        killer.join()
        server.stop(signal.SIGKILL)
    assert server.proc.returncode == -signal.SIGKILL
    with closing(sqlite3.connect(server.db_path)) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
    second = Server(tmp_path, db=server.db_path, log_name="server2.log")
    try:
        found_instances = listed_ids(second.url, "/api/instances") & acked_instances
        found_logs = set()
        for home in set(homes.values()):
            found_logs |= listed_ids(second.url, f"/api/instances/{home}/logs") & acked_logs
    finally:
        shut_down(second)
    figures(**load.figures(), dropped_connections=len(load.failures),
            acknowledged=len(acked_instances) + len(acked_logs),
            found=len(found_instances) + len(found_logs))
    assert integrity == [("ok",)]
    assert set(load.statuses) == {201}, load.statuses
    assert load.failures, "the kill should have dropped the clients' connections"
    assert acked_instances and acked_logs
    assert found_instances == acked_instances
    assert found_logs == acked_logs


def refused(url, timeout=3):
    """Seconds until a new connection to `url` is refused."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except ConnectionRefusedError:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{url} still accepts connections after {timeout} s")


def test_sigterm_finishes_the_write_in_flight_and_exits_0(tmp_path, figures):
    """A deploy or `docker stop` sends SIGTERM: the server must stop taking
    new connections (so the load balancer moves on) but finish what it has
    started, so a client that was already waiting gets its 201 and the row
    is really stored; then exit 0 so the supervisor sees a clean stop."""
    server = Server(tmp_path)
    outcome = {}

    def post():
        try:
            outcome["reply"] = call(server.url, "POST", "/api/instances", BOX)
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    client = threading.Thread(target=post)
    try:
        with LockHolder(server.db_path, 10) as holder:
            client.start()
            time.sleep(0.3)  # the POST reaches a worker and waits for the lock
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            refused_after = refused(server.url)
            in_flight = client.is_alive()
            draining = server.proc.poll() is None
            holder.release()
        client.join(10)
        code = server.proc.wait(10)
        exited_after = time.monotonic() - signalled
    finally:
        if client.ident is not None:
            client.join(10)
        server.stop(signal.SIGKILL)
    reply = outcome.get("reply")
    figures(in_flight_status=reply and reply.status_code, refused_after_ms=ms(refused_after),
            exited_after_ms=ms(exited_after), exit_code=code)
    assert in_flight and draining, "the POST should still wait for the lock when SIGTERM lands"
    assert reply is not None, outcome.get("error")
    assert reply.status_code == 201, reply.get_data(as_text=True)
    assert code == 0
    log = server.output
    assert "Stopped" in log
    assert log.index("Stopping: finishing the requests in flight") < log.index(
        "POST /api/instances 201"), log
    assert uuid.UUID(reply.get_json()["id"]) in stored_instance_ids(server.db_path)


def make_read_only():
    """SQLite refusing writes as it does for a read-only file or mount. As
    root, file modes do not stop writes, so every pooled connection gets
    PRAGMA query_only instead: SQLite then fails each write with SQLITE_READONLY
    ("attempt to write a readonly database"). The pragmas are bound when the
    database is opened, so they are added to the open database (peewee's
    permanent pragma) and the pool is emptied for new connections to get it."""
    with models.db.connection_context():
        models.db.pragma("query_only", 1, permanent=True)
    models.db.close_all()


def test_a_read_only_database_answers_503_and_keeps_serving_reads(client, figures):
    """A volume remounted read-only after an I/O error is an outage of
    writes, not a bug: clients must get 503 with Retry-After (nothing was
    written) and no stack trace, and reads and the health check must go on."""
    made = client.post("/api/instances", json=BOX)
    assert made.status_code == 201, made.get_json()
    instance = f"/api/instances/{made.get_json()['id']}"
    make_read_only()
    writes = [
        client.post("/api/instances", json=BOX),
        client.post(f"{instance}/logs", json={"log_type": "system", "message": "hi"}),
        client.patch(instance, json={"name": "renamed"}),
        client.delete(instance),
    ]
    listed = client.get("/api/instances?limit=0")
    health = client.get("/healthz")
    fetched = client.get(instance)
    figures(requests=len(writes) + 3, errors=len(writes),
            statuses=[reply.status_code for reply in writes],
            retry_after=writes[0].headers.get("Retry-After"))
    for reply in writes:
        assert_retry_later(reply)
    assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "1"
    assert health.status_code == 200
    assert fetched.status_code == 200 and fetched.get_json()["name"] == "box"


def test_a_full_disk_answers_503_and_keeps_serving_reads(server, figures):
    """A full disk (here: a file-size limit on the server's processes, set with
    prlimit once the files exist, so the WAL cannot grow) must give writers a
    503 with Retry-After, write nothing of a failed batch, and leave reads,
    the health check and the process itself working. Python ignores SIGXFSZ,
    so the server's writes fail with EFBIG and SQLite reports an I/O error
    or a full database."""
    made = call(server.url, "POST", "/api/instances", BOX)
    assert made.status_code == 201
    logs = f"/api/instances/{made.get_json()['id']}/logs"
    sizes = {path.name: path.stat().st_size for path in server.db_path.parent.iterdir()}
    limit = max(sizes.values()) + (2 << 20)
    for pid in server.pids(jobs=True):   # every process of the server: its workers write
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))
    batch = [{"log_type": "system", "message": "x" * 500} for _ in range(1000)]
    accepted, rejected = 0, []
    while not rejected and accepted < 20:
        reply = call(server.url, "POST", logs, batch)
        if reply.status_code == 201:
            accepted += 1
        else:
            rejected.append(reply)
    # The disk stays full: later writes fail the same way.
    rejected += [call(server.url, "POST", logs, batch) for _ in range(2)]
    stored = total(server.url, logs)
    health = call(server.url, "GET", "/healthz")
    alive = server.proc.poll() is None
    figures(limit_bytes=limit, batches_accepted=accepted,
            rejected_statuses=[reply.status_code for reply in rejected], logs_stored=stored)
    assert accepted >= 1, "the limit should leave room for a batch or two"
    assert len(rejected) == 3, "the limit should have been reached within 20 batches"
    for reply in rejected:
        assert_retry_later(reply)
    assert stored == 1000 * accepted, "a failed batch must leave nothing behind"
    assert health.status_code == 200
    assert alive
