"""`instance-api backup PATH [--db FILE]`: a consistent copy of the database
while the server keeps writing, checked with integrity_check, that a server
started on it serves exactly what the original held at the time."""
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import models
from app import create_app
from conftest import ROOT, SITE, USER, call, clean_environment, connect, send

# The backup command copies SQLite files; PostgreSQL has pg_dump.
pytestmark = pytest.mark.sqlite_only

SCRIPT = Path(sys.executable).parent / "instance-api"
CONSOLE_SCRIPT = (str(SCRIPT),)
TIMEOUT = 120
VALID = {"site_id": SITE, "user_id": USER, "name": "box"}
PROGRESS = re.compile(r"copied (\d+)/(\d+) pages \((\d+)%\)")


def run_backup(*args, env=None, cwd=None, command=CONSOLE_SCRIPT):
    """Run the backup command in an environment without INSTANCES_* variables
    (plus `env`)."""
    return subprocess.run(
        [*command, "backup", *map(str, args)], cwd=cwd,
        env={**clean_environment(), **(env or {})},
        capture_output=True, text=True, timeout=TIMEOUT)


def assert_backed_up(result):
    assert result.returncode == 0, result.stderr
    assert "Backed up" in result.stdout and "integrity_check: ok" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr


def assert_refused(result):
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Backup failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert "integrity_check: ok" not in result.stdout


def integrity(path):
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("PRAGMA integrity_check").fetchall(),
                conn.execute("PRAGMA foreign_key_check").fetchall())
    finally:
        conn.close()


def count(url, path):
    resp = call(url, "GET", f"{path}?limit=0")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return int(resp.headers["X-Total-Count"])


def get(url, path):
    resp = call(url, "GET", path)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def post(url, path, body):
    resp = call(url, "POST", path, body)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def seed(url, instances=3, logs=40, plans=5):
    """Instances with logs (one batch each) and plans (a small tree)."""
    made = []
    for n in range(instances):
        inst = post(url, "/api/instances", {**VALID, "name": f"box-{n}"})
        base = f"/api/instances/{inst['id']}"
        post(url, f"{base}/logs", [{"log_type": "system", "level": "info",
                                    "message": f"event {i} of box-{n}"} for i in range(logs)])
        parent = None
        for i in range(plans):
            body = {"title": f"step {i}", "plan_type": "task", "parent_id": parent}
            made_plan = post(url, f"{base}/plans", body)
            if i % 2 == 0:
                parent = made_plan["id"]
        made.append(inst)
    return made


class Writer(threading.Thread):
    """POSTs an instance and a log on it, again and again, on one keep-alive
    connection, until stopped."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.stopping = url, threading.Event()
        self.writes, self.statuses, self.failure = 0, [], None

    def run(self):
        conn = connect(self.url, timeout=30)
        try:
            n = 0
            while not self.stopping.is_set():
                resp = send(conn, "POST", "/api/instances", {**VALID, "name": f"w-{n}"})
                self.statuses.append(resp.status_code)
                if resp.status_code == 201:
                    log = {"log_type": "system", "message": f"written {n}"}
                    path = f"/api/instances/{resp.get_json()['id']}/logs"
                    self.statuses.append(send(conn, "POST", path, log).status_code)
                self.writes += 1
                n += 1
        except Exception as exc:  # reported by the test
            self.failure = repr(exc)
        finally:
            conn.close()

    def wait_for(self, writes, timeout=15):
        deadline = time.monotonic() + timeout
        while self.writes < writes and self.failure is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.writes >= writes, (self.writes, self.failure)

    def stop(self):
        self.stopping.set()
        self.join(30)
        assert not self.is_alive()


# -- a backup under load -------------------------------------------------------------

def test_a_backup_taken_under_writes_is_a_consistent_snapshot(start_server, tmp_path):
    srv = start_server()
    url = srv.url
    first = seed(url, instances=1, logs=1000)[0]
    base = f"/api/instances/{first['id']}"
    log = get(url, f"{base}/logs?limit=1")[0]
    plan = get(url, f"{base}/plans?limit=1")[0]
    seeded_logs, seeded_plans = count(url, f"{base}/logs"), count(url, f"{base}/plans")

    writer = Writer(url)
    writer.start()
    try:
        writer.wait_for(20)
        before = count(url, "/api/instances")
        writes_before = writer.writes
        result = run_backup(tmp_path / "copy.db", "--db", srv.db_path)
        writes_during = writer.writes - writes_before
        # The writer went on during the copy, and a little after it.
        writer.wait_for(writer.writes + 5)
    finally:
        writer.stop()
    after = count(url, "/api/instances")
    assert writer.failure is None, writer.failure
    assert set(writer.statuses) == {201}, sorted(set(writer.statuses))
    assert writes_during > 0
    assert_backed_up(result)
    assert integrity(tmp_path / "copy.db") == ([("ok",)], [])

    restored = start_server(db=tmp_path / "copy.db", log_name="restored.log")
    copied = count(restored.url, "/api/instances")
    assert before <= copied <= after, (before, copied, after)
    assert count(restored.url, f"{base}/logs") == seeded_logs
    assert count(restored.url, f"{base}/plans") == seeded_plans
    assert get(restored.url, f"{base}/logs/{log['id']}") == get(url, f"{base}/logs/{log['id']}")
    plan_path = f"{base}/plans/{plan['id']}"
    assert get(restored.url, plan_path) == get(url, plan_path)
    assert get(restored.url, base) == get(url, base)
    # The copy is a file of its own: the live database was not disturbed.
    assert call(url, "GET", "/healthz").status_code == 200
    assert srv.stop() == 0 and restored.stop() == 0


def test_a_backup_restores_exactly_what_the_database_held(start_server, tmp_path):
    srv = start_server()
    made = seed(srv.url)
    result = run_backup(tmp_path / "copy.db", "--db", srv.db_path)
    assert_backed_up(result)
    assert str(srv.db_path) in result.stdout and str(tmp_path / "copy.db") in result.stdout
    assert integrity(tmp_path / "copy.db") == ([("ok",)], [])

    restored = start_server(db=tmp_path / "copy.db", log_name="restored.log")
    assert count(restored.url, "/api/instances") == count(srv.url, "/api/instances") == 3
    assert (get(restored.url, "/api/instances?limit=1000")
            == get(srv.url, "/api/instances?limit=1000"))
    for inst in made:
        base = f"/api/instances/{inst['id']}"
        assert get(restored.url, base) == get(srv.url, base)
        for kind in ("logs", "plans"):
            assert count(restored.url, f"{base}/{kind}") == count(srv.url, f"{base}/{kind}")
            listed = get(srv.url, f"{base}/{kind}?limit=1000")
            assert get(restored.url, f"{base}/{kind}?limit=1000") == listed
            sample = listed[len(listed) // 2]["id"]
            assert (get(restored.url, f"{base}/{kind}/{sample}")
                    == get(srv.url, f"{base}/{kind}/{sample}"))
    assert count(srv.url, f"/api/instances/{made[0]['id']}/logs") == 40
    assert count(srv.url, f"/api/instances/{made[0]['id']}/plans") == 5
    assert srv.stop() == 0 and restored.stop() == 0


def test_python_server_py_backup_works_too(server, tmp_path):
    post(server.url, "/api/instances", VALID)
    result = run_backup(tmp_path / "copy.db", "--db", server.db_path,
                        command=(sys.executable, str(ROOT / "server.py")))
    assert_backed_up(result)
    conn = sqlite3.connect(tmp_path / "copy.db")
    try:
        assert conn.execute("SELECT count(*) FROM instance").fetchone() == (1,)
    finally:
        conn.close()


# -- refusals ----------------------------------------------------------------------------

def test_the_backup_never_overwrites_an_existing_file(server, tmp_path):
    post(server.url, "/api/instances", VALID)
    target = tmp_path / "precious.db"
    target.write_bytes(b"an earlier backup, not to be lost")
    stamp = target.stat().st_mtime_ns
    result = run_backup(target, "--db", server.db_path)
    assert_refused(result)
    assert "precious.db" in result.stderr
    assert target.read_bytes() == b"an earlier backup, not to be lost"
    assert target.stat().st_mtime_ns == stamp


def test_the_backup_refuses_an_existing_empty_file_too(server, tmp_path):
    target = tmp_path / "empty.db"
    target.touch()
    assert_refused(run_backup(target, "--db", server.db_path))
    assert target.read_bytes() == b""


def test_a_missing_source_is_reported(tmp_path):
    result = run_backup(tmp_path / "copy.db", "--db", tmp_path / "nothing-here.db")
    assert_refused(result)
    assert "nothing-here.db" in result.stderr
    assert not (tmp_path / "copy.db").exists()
    assert not (tmp_path / "nothing-here.db").exists()   # not created by the attempt


def test_a_source_that_is_not_a_database_is_reported(tmp_path):
    source = tmp_path / "notes.txt"
    source.write_text("not a database, but some text that is long enough to fill a header\n" * 4)
    result = run_backup(tmp_path / "copy.db", "--db", source)
    assert_refused(result)
    assert not (tmp_path / "copy.db").exists()


def test_a_target_in_a_missing_directory_is_reported(server, tmp_path):
    result = run_backup(tmp_path / "no" / "such" / "dir" / "copy.db", "--db", server.db_path)
    assert_refused(result)
    assert not (tmp_path / "no").exists()


# -- progress ------------------------------------------------------------------------------

@pytest.fixture
def big_database(tmp_path, monkeypatch):
    """A database of several MB: 20 batches of 1000 logs with long messages,
    written through the API in-process."""
    for name in [name for name in os.environ if name.startswith("INSTANCES_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "big.db"
    client = create_app({"TESTING": True, "DATABASE": str(path)}).test_client()
    try:
        inst = client.post("/api/instances", json=VALID).get_json()
        logs = f"/api/instances/{inst['id']}/logs"
        for batch in range(20):
            body = [{"log_type": "system", "message": f"{batch}/{i} " + "x" * 400}
                    for i in range(1000)]
            resp = client.post(logs, json=body)
            assert resp.status_code == 201, resp.get_data(as_text=True)[:500]
        assert client.get(f"{logs}?limit=0").headers["X-Total-Count"] == "20000"
    finally:
        models.db.close_all()
    return path


def test_progress_is_reported_in_pages_up_to_100_percent(big_database, tmp_path):
    result = run_backup(tmp_path / "copy.db", "--db", big_database)
    assert_backed_up(result)
    assert os.path.getsize(tmp_path / "copy.db") > 4 << 20
    reports = [tuple(map(int, match.groups())) for match in PROGRESS.finditer(result.stderr)]
    assert len(reports) >= 3, result.stderr
    percents = [percent for _, _, percent in reports]
    assert percents == sorted(percents), percents
    assert all(0 <= done <= total for done, total, _ in reports), reports
    done, total, percent = reports[-1]
    assert percent == 100 and done == total, reports[-1]
    # The copy is compacted, so it may hold fewer pages than were estimated.
    assert int(re.search(r"\((\d+) pages\)", result.stdout).group(1)) <= total
    assert result.stderr.rstrip("\n").split("\n")[-1].split("\r")[-1].endswith("(100%)")
    # Progress goes to stderr only: stdout is the one result line.
    assert "copied" not in result.stdout
    assert integrity(tmp_path / "copy.db") == ([("ok",)], [])


# -- which database -------------------------------------------------------------------------

def make_database(path, instances=1):
    client = create_app({"TESTING": True, "DATABASE": str(path)}).test_client()
    try:
        for n in range(instances):
            assert client.post("/api/instances", json={**VALID, "name": f"b{n}"}
                               ).status_code == 201
    finally:
        models.db.close_all()


def instance_count(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM instance").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def clean(monkeypatch):
    for name in [name for name in os.environ if name.startswith("INSTANCES_")]:
        monkeypatch.delenv(name)


def test_instances_database_is_the_source_without_db(clean, tmp_path):
    make_database(tmp_path / "env.db", instances=2)
    make_database(tmp_path / "instances.db", instances=1)   # the default, not used
    result = run_backup("copy.db", cwd=tmp_path, env={"INSTANCES_DATABASE": "env.db"})
    assert_backed_up(result)
    assert str(tmp_path / "env.db") in result.stdout
    assert instance_count(tmp_path / "copy.db") == 2


def test_db_wins_over_instances_database(clean, tmp_path):
    make_database(tmp_path / "flag.db", instances=3)
    result = run_backup("copy.db", "--db", "flag.db", cwd=tmp_path,
                        env={"INSTANCES_DATABASE": "missing.db"})
    assert_backed_up(result)
    assert instance_count(tmp_path / "copy.db") == 3


def test_instances_db_in_the_working_directory_is_the_default_source(clean, tmp_path):
    make_database(tmp_path / "instances.db", instances=2)
    result = run_backup("copy.db", cwd=tmp_path)
    assert_backed_up(result)
    assert str(tmp_path / "instances.db") in result.stdout
    assert instance_count(tmp_path / "copy.db") == 2
