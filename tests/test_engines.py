"""Both database engines and several server processes: the database URL,
what each engine stores, connections given back after every request, and
`--workers N` sharing one port. The suite runs these on SQLite, and again on
PostgreSQL when INSTANCES_TEST_DATABASE_URL is set (see conftest)."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import migrations
import models
from app import create_app
from conftest import POSTGRES_URL, ROOT, SITE, USER, Server, call, clean_environment, connect
from storage.engines import _readable as readable
from conftest import (
    database_for, send, undo_part_4, undo_log_sequence, undo_version_7,
)

BOX = {"site_id": SITE, "user_id": USER, "name": "box"}
postgres_only = pytest.mark.skipif(not POSTGRES_URL, reason="needs INSTANCES_TEST_DATABASE_URL")


def start(tmp_path, *flags, env=None):
    """Run `python server.py` expecting it to refuse and exit."""
    return subprocess.run([sys.executable, str(ROOT / "server.py"), "--port", "0", *flags],
                          env={**clean_environment(), **(env or {})}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)


# -- the database URL ----------------------------------------------------------

@pytest.mark.parametrize("url, created", [
    ("sqlite:///relative.db", "relative.db"),
    ("sqlite:///{tmp}/absolute.db", "absolute.db"),
])
def test_a_sqlite_url_names_the_file(tmp_path, monkeypatch, url, created):
    monkeypatch.chdir(tmp_path)
    app = create_app({"DATABASE_URL": url.format(tmp=tmp_path)})
    try:
        assert app.test_client().post("/api/instances", json=BOX).status_code == 201
    finally:
        models.db.close_all()
    assert (tmp_path / created).stat().st_size > 0


def test_the_url_wins_over_the_file_setting(tmp_path):
    app = create_app({"DATABASE": str(tmp_path / "file.db"),
                      "DATABASE_URL": f"sqlite:///{tmp_path}/url.db"})
    models.db.close_all()
    assert (tmp_path / "url.db").exists() and not (tmp_path / "file.db").exists()
    assert app.config["DATABASE_URL"]


def test_an_unknown_url_scheme_is_refused_at_start(tmp_path):
    result = start(tmp_path, "--database-url", "mysql://root@localhost/db")
    assert result.returncode == 2
    assert "Cannot start" in result.stderr and "sqlite:///" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_password_in_the_url_is_never_printed(tmp_path):
    result = start(tmp_path, "--database-url", "postgresql://app:hunter2@127.0.0.1:1/none",
                   env={"INSTANCES_BUSY_TIMEOUT": "1"})
    assert result.returncode == 2
    assert "Cannot start" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


# -- connections after a request -------------------------------------------------

def test_every_request_leaves_its_connection_clean_failed_ones_too(client, instance):
    """SQLite: the thread keeps one connection, with no transaction left open
    on it. PostgreSQL: the connection goes back to the pool."""
    url = f"/api/instances/{instance['id']}"
    for _ in range(5):
        client.get(url)
        client.get(f"/api/instances/{instance['id'][:-1]}0")  # 404
        client.patch(url, json={"status": "sleeping"})  # 422
        client.post(f"{url}/plans", json={"title": "t", "plan_type": "task",
                                          "parent_id": SITE})  # 422 after a lookup
        client.patch(url, json={"name": "x"}, headers={"If-Match": '"stale"'})  # 412
        client.post(f"/api/instances/{instance['id'][:-1]}0/logs",
                    json={"log_type": "system", "message": "m"})  # 404 from the database
    if models.is_sqlite():
        assert len(models.db.obj._opened) == 1
        assert not models.db.connection().in_transaction
    else:
        assert models.db.obj._in_use == {}


# -- several processes -----------------------------------------------------------

def worker_pids(server, expected=2, jobs=False):
    """The server's serving workers (with `jobs`, its jobs worker too), once
    there are `expected` of them and the jobs worker: the parent logs before
    it forks, so a fast test can look too early."""
    deadline = time.monotonic() + 10
    while len(server.pids(jobs=True)) != expected + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.pids(jobs=jobs)[1:]


def test_two_workers_share_the_port_and_store_every_write_once(tmp_path, figures):
    server = Server(tmp_path, "--workers", "2")
    try:
        assert ("(2 worker processes, 8 threads each, and one for the background jobs)"
                in server.output)
        assert len(worker_pids(server)) == 2
        replies, lock = [], threading.Lock()

        def write(n):
            conn = connect(server.url)
            try:
                for i in range(25):
                    reply = send(conn, "POST", "/api/instances", {**BOX, "name": f"w{n}-{i}"})
                    with lock:
                        replies.append(reply)
            finally:
                conn.close()

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [reply.status_code for reply in replies] == [201] * 200
        ids = {reply.get_json()["id"] for reply in replies}
        assert len(ids) == 200
        listed = call(server.url, "GET", "/api/instances?limit=1000")
        assert listed.headers["X-Total-Count"] == "200"
        assert {row["id"] for row in listed.get_json()} == ids
        # Each worker writes its access lines while it serves: the thread
        # that writes them is started again in each forked worker.
        deadline = time.monotonic() + 10
        while server.output.count("POST /api/instances 201") < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.output.count("POST /api/instances 201") == 200
        figures(engine="postgresql" if POSTGRES_URL else "sqlite", writes=len(replies))
    finally:
        assert server.stop(signal.SIGTERM) == 0
    # Two workers, the jobs worker, then the parent.
    assert server.output.count("Stopped") == 4


def test_a_worker_that_dies_is_replaced(tmp_path):
    server = Server(tmp_path, "--workers", "2")
    try:
        first = worker_pids(server)
        os.kill(int(first[0]), signal.SIGKILL)
        server.wait_for(r"Worker \d+ exited .*starting another")
        assert call(server.url, "POST", "/api/instances", BOX).status_code == 201
        assert len(worker_pids(server)) == 2
    finally:
        assert server.stop(signal.SIGTERM) == 0


# -- PostgreSQL ------------------------------------------------------------------

@postgres_only
def test_postgresql_columns_are_native_types(app):
    columns = dict(models.db.execute_sql(
        "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema()").fetchall())
    models.db.close()
    assert columns["instance.id"] == "uuid"
    assert columns["instance.created_at"] == "timestamp with time zone"
    assert columns["instance.configuration"] == "jsonb"
    assert columns["instance_log.details"] == "jsonb"
    assert columns["instance_plan.parent_id"] == "uuid"


@postgres_only
def test_a_row_locked_past_the_busy_timeout_is_a_503_then_recovers(tmp_path):
    import psycopg

    app = create_app({"TESTING": True, "BUSY_TIMEOUT": 1,
                      **database_for(tmp_path / "locked.db")})
    client = app.test_client()
    try:
        instance = client.post("/api/instances", json=BOX).get_json()
        url = app.config["DATABASE_URL"]
        with psycopg.connect(url) as holder:  # another process's transaction
            holder.execute("SELECT id FROM instance WHERE id = %s FOR UPDATE",
                           (instance["id"],))
            resp = client.patch(f"/api/instances/{instance['id']}", json={"name": "late"})
            assert resp.status_code == 503, resp.get_json()
            assert resp.headers["Retry-After"] == "1"
            assert "lock timeout" in resp.get_json()["detail"]
        resp = client.patch(f"/api/instances/{instance['id']}", json={"name": "late"})
        assert resp.status_code == 200
        assert resp.get_json()["name"] == "late"
    finally:
        models.db.close_all()


@postgres_only
def test_a_pooled_session_the_server_ended_is_replaced_unseen(client, instance):
    """A check-out asks the server nothing (no SELECT 1 per request); a
    session the server ended meanwhile is found on its socket and replaced,
    and the request it would have served is answered all the same."""
    import psycopg

    url = f"/api/instances/{instance['id']}"
    assert client.get(url).status_code == 200
    [(_, _, pooled)] = models.db.obj._connections
    with psycopg.connect(models.db.obj.database, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pooled.pgconn.backend_pid,))
    deadline = time.monotonic() + 5
    while not readable(pooled.pgconn.socket) and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(3):
        assert client.get(url).status_code == 200
    assert all(conn is not pooled for _, _, conn in models.db.obj._connections)


# -- the same round trip on both engines -------------------------------------------

def test_numbers_and_text_in_json_objects_come_back_as_sent(client):
    """PostgreSQL's jsonb keeps numbers as NUMERIC (1e20 comes back written out
    in full); the service must still answer with the values that were sent."""
    configuration = {"big_float": 1.8e20, "huge": 1e300, "one": 1.0, "tenth": 0.1,
                     "u64": 2**64 - 1, "i64": -(2**63), "nested": [1, 2.5, "é 🚀", None, True]}
    created = client.post("/api/instances", json={**BOX, "configuration": configuration})
    assert created.status_code == 201
    fetched = client.get(created.headers["Location"])
    assert fetched.get_json()["configuration"] == configuration
    assert fetched.get_data() == created.get_data()


def test_a_representation_is_the_same_written_or_read_back(client):
    """Object keys come out sorted at every depth, so the ETag of a create
    is the ETag a later GET gives, on both engines."""
    configuration = {"zeta": 1, "alpha": {"b": 2, "a": 1}, "mid": [{"y": 1, "x": 2}]}
    created = client.post("/api/instances", json={**BOX, "configuration": configuration})
    fetched = client.get(created.headers["Location"])
    assert fetched.get_data() == created.get_data()
    assert fetched.headers["ETag"] == created.headers["ETag"]
    assert list(created.get_json()["configuration"]) == ["alpha", "mid", "zeta"]
    assert list(created.get_json()["configuration"]["alpha"]) == ["a", "b"]


def test_a_migration_runs_in_place_on_this_engine(client, instance):
    """Schema 2 -> now (the per-instance log counter, then the trigger that
    keeps it) on whichever engine the suite runs on, keeping every row and
    counting the logs already there and those added after."""
    from playhouse.migrate import SchemaMigrator, migrate

    logs = f"/api/instances/{instance['id']}/logs"
    client.post(logs, json=[{"log_type": "system", "message": f"m{n}"} for n in range(3)])
    with models.db.atomic():
        undo_part_4()
        undo_version_7()
        undo_log_sequence(counting=False)
        migrate(SchemaMigrator.from_database(models.db.obj).drop_column("instance", "log_count"))
        models.SchemaVersion.update(version=2).execute()
    models.db.close_all()

    migrations.create_tables()

    with models.db.connection_context():
        assert migrations.stored_version() == migrations.SCHEMA_VERSION
    assert client.get(logs).headers["X-Total-Count"] == "3"
    assert [log["message"] for log in client.get(logs).get_json()] == ["m2", "m1", "m0"]
    client.post(logs, json={"log_type": "system", "message": "m3"})
    assert client.get(logs).headers["X-Total-Count"] == "4"


# -- how many workers ----------------------------------------------------------

def test_the_default_is_one_worker_per_cpu_at_most_8(monkeypatch):
    import workers

    monkeypatch.setattr(workers, "usable_cpus", lambda: 2)
    assert workers.worker_count(0) == 2
    monkeypatch.setattr(workers, "usable_cpus", lambda: 64)
    assert workers.worker_count(0) == 8
    assert workers.worker_count(3) == 3   # a number given is taken as it is


@pytest.mark.parametrize("value, workers", [("auto", 0), ("0", 0), ("1", 1), (" 12 ", 12)])
def test_the_workers_setting_takes_a_count_or_auto(tmp_path, value, workers):
    app = create_app({"WORKERS": value, "DATABASE": str(tmp_path / "w.db")})
    models.db.close_all()
    assert app.config["WORKERS"] == workers


def test_a_negative_worker_count_is_refused_at_start(tmp_path):
    result = start(tmp_path, "--db", str(tmp_path / "w.db"), env={"INSTANCES_WORKERS": "-2"})
    assert result.returncode == 2
    assert "Cannot start" in result.stderr and "INSTANCES_WORKERS" in result.stderr


def test_the_start_up_line_says_how_many_processes(tmp_path):
    import workers

    expected = workers.worker_count(0)
    server = Server(tmp_path)
    try:
        assert server.output.count("Listening on") == 1
        if expected == 1:
            assert "(1 process, 8 threads)" in server.output
        else:
            assert (f"({expected} worker processes, 8 threads each, and one for the background "
                    "jobs)") in server.output
            assert len(worker_pids(server, expected)) == expected
    finally:
        assert server.stop(signal.SIGTERM) == 0
    single = Server(tmp_path, "--workers", "1", log_name="single.log")
    try:
        assert "(1 process, 8 threads)" in single.output
        assert Path(f"/proc/{single.proc.pid}/task/{single.proc.pid}/children").read_text() == ""
    finally:
        assert single.stop(signal.SIGTERM) == 0


FAILING_WORKERS = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import server
import workers
from peewee import OperationalError


def unreachable():   # the parent opened the database; its workers cannot
    raise OperationalError("unable to open database file")


workers.check_database = unreachable
sys.exit(server.main(sys.argv[1:]))
"""


def test_a_worker_that_cannot_start_stops_the_server_with_cannot_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", FAILING_WORKERS, str(ROOT), "--port", "0",
         "--db", str(tmp_path / "w.db"), "--workers", "3"],
        env=clean_environment(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Cannot start: a worker process could not start: unable to open database file" \
        in result.stderr
    assert "Listening on" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_do_not_outlive_a_killed_server(tmp_path):
    """kill -9 of the server (or the OOM killer) takes its workers with it,
    as it would take a single process: none goes on serving unwatched."""
    server = Server(tmp_path, "--workers", "2")
    workers = worker_pids(server, jobs=True)
    assert len(workers) == 3
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in state(pid) for pid in workers) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in state(pid)]


def state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_cursor_reader_sees_every_log_two_workers_write(tmp_path, figures):
    """Logs are committed in the order of their (created_at, id), whichever
    worker writes them, so a reader that moves its `after` cursor to the
    last log it got misses none: a log stamped before another but committed
    after it would fall behind the cursor for good."""
    server = Server(tmp_path, "--workers", "2")
    try:
        instance = call(server.url, "POST", "/api/instances", BOX).get_json()["id"]
        logs = f"/api/instances/{instance}/logs"
        first = call(server.url, "POST", logs, {"log_type": "system", "message": "start"})
        written, lock, done = {first.get_json()["id"]}, threading.Lock(), threading.Event()

        def append(n):
            conn = connect(server.url)
            try:
                for i in range(60):
                    reply = send(conn, "POST", logs, {"log_type": "system", "message": f"{n}.{i}"})
                    assert reply.status_code == 201, reply.get_data(as_text=True)
                    with lock:
                        written.add(reply.get_json()["id"])
            finally:
                conn.close()

        seen, cursor = [first.get_json()["id"]], first.get_json()["id"]

        def tail():
            nonlocal cursor
            conn = connect(server.url)
            try:
                while True:
                    finished = done.is_set()
                    page = send(conn, "GET", f"{logs}?after={cursor}&limit=1000").get_json()
                    seen.extend(row["id"] for row in page)
                    cursor = seen[-1]
                    if finished and not page:
                        return
            finally:
                conn.close()

        reader = threading.Thread(target=tail)
        reader.start()
        writers = [threading.Thread(target=append, args=(n,)) for n in range(12)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        done.set()
        reader.join(30)
        figures(written=len(written), seen=len(seen))
        assert len(seen) == len(set(seen)), "a log was read twice"
        assert set(seen) == written, f"{len(written - set(seen))} logs fell behind the cursor"
    finally:
        assert server.stop(signal.SIGTERM) == 0
