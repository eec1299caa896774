"""The application as a whole: configuration, the database file, /healthz,
the real server (start-up, flags, signals, console script), concurrency,
and a few URL rules every route shares (upper-case ids, HEAD)."""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import migrations
import models
from app import create_app
from conftest import ROOT, SITE, USER, assert_problem, call, close_connections, connect, send

TIMEOUT = 10
VALID = {"site_id": SITE, "user_id": USER, "name": "box"}
TABLES = {"instance", "instance_log", "instance_plan"}


@pytest.fixture
def build(monkeypatch):
    """create_app in an environment without INSTANCES_* variables; each call
    closes the previous app's connections first."""
    for name in list(os.environ):
        if name.startswith("INSTANCES_"):
            monkeypatch.delenv(name)

    def build(config=None):
        close_connections()
        return create_app(config)
    yield build
    close_connections()


def tables(path):
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master "
                                               "WHERE type = 'table'")}


def count_rows(path, table):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


# -- configuration: defaults, then INSTANCES_*, then the dict -----------------

def test_create_app_starts_from_the_documented_defaults(build, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = build().config
    assert config["DATABASE"] == "instances.db"
    assert config["HOST"] == "127.0.0.1"
    assert config["PORT"] == 8080
    assert config["MAX_BODY_BYTES"] == 1 << 20
    assert config["MAX_CONTENT_LENGTH"] == 1 << 20
    assert (tmp_path / "instances.db").is_file()


def test_instances_environment_variables_override_the_defaults(build, tmp_path, monkeypatch):
    path = tmp_path / "from-env.db"
    monkeypatch.setenv("INSTANCES_DATABASE", str(path))
    monkeypatch.setenv("INSTANCES_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("INSTANCES_PORT", "9000")
    app = build({"TESTING": True})
    assert app.config["DATABASE"] == str(path)
    assert app.config["PORT"] == 9000
    assert app.config["MAX_BODY_BYTES"] == 1000
    assert path.is_file()
    client = app.test_client()
    assert_problem(client.post("/api/instances", json={**VALID, "name": "x" * 1000}), 413)
    assert client.post("/api/instances", json=VALID).status_code == 201
    assert count_rows(path, "instance") == 1


def test_the_config_dict_wins_over_the_environment(build, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCES_DATABASE", str(tmp_path / "from-env.db"))
    monkeypatch.setenv("INSTANCES_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("INSTANCES_PORT", "9000")
    path = tmp_path / "from-dict.db"
    app = build({"TESTING": True, "DATABASE": str(path), "MAX_BODY_BYTES": 5000,
                 "PORT": 9100})
    assert app.config["DATABASE"] == str(path)
    assert app.config["PORT"] == 9100
    assert app.config["MAX_BODY_BYTES"] == 5000
    assert path.is_file()
    assert not (tmp_path / "from-env.db").exists()
    client = app.test_client()
    resp = client.post("/api/instances", json={**VALID, "configuration": {"x": "y" * 3000}})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert_problem(client.post("/api/instances",
                               json={**VALID, "configuration": {"x": "y" * 6000}}), 413)


# -- the database file ------------------------------------------------------

def test_the_database_file_is_created_at_the_configured_path(build, tmp_path):
    path = tmp_path / "sub dir" / "data.db"
    path.parent.mkdir()
    build({"TESTING": True, "DATABASE": str(path)})
    assert path.is_file()
    assert TABLES <= tables(path)


def test_the_database_runs_in_wal_mode_with_foreign_keys_on(build, tmp_path):
    path = tmp_path / "t.db"
    app = build({"TESTING": True, "DATABASE": str(path)})
    with app.test_request_context("/"):
        models.db.connect(reuse_if_open=True)
        try:
            assert models.db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert models.db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
        finally:
            models.db.close()
    # journal_mode=wal is a property of the file, so a fresh connection sees it
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_statements_are_planned_without_their_bound_values(build, tmp_path):
    # Else SQLite prepares each list statement again whenever a value is
    # bound (storage.engines.ThreadSqliteDatabase._connect).
    import cysqlite

    app = build({"TESTING": True, "DATABASE": str(tmp_path / "t.db")})
    with app.test_request_context("/"):
        conn = models.db.connection()
        assert conn.db_config(cysqlite.SQLITE_DBCONFIG_ENABLE_QPSG, -1) == 1


def test_foreign_keys_cascade_a_deleted_instance_to_its_rows(build, tmp_path):
    path = tmp_path / "t.db"
    client = build({"TESTING": True, "DATABASE": str(path)}).test_client()
    instance_id = client.post("/api/instances", json=VALID).get_json()["id"]
    assert client.post(f"/api/instances/{instance_id}/logs",
                       json={"log_type": "system", "message": "up"}).status_code == 201
    assert client.post(f"/api/instances/{instance_id}/plans",
                       json={"title": "t", "plan_type": "task"}).status_code == 201
    assert client.delete(f"/api/instances/{instance_id}").status_code == 204
    assert count_rows(path, "instance_log") == 0
    assert count_rows(path, "instance_plan") == 0


def test_creating_the_app_twice_on_one_file_keeps_existing_rows(build, tmp_path):
    config = {"TESTING": True, "DATABASE": str(tmp_path / "t.db")}
    client = build(config).test_client()
    created = client.post("/api/instances", json=VALID).get_json()
    client = build(config).test_client()
    resp = client.get(f"/api/instances/{created['id']}")
    assert resp.status_code == 200
    assert resp.get_json() == created
    assert client.get("/api/instances").headers["X-Total-Count"] == "1"


# -- /healthz ------------------------------------------------------------------

def test_healthz_reports_ok_as_json(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == {"status": "ok"}


def drop_tables(path):
    with models.db.connection_context():
        for table in ("instance_log", "instance_plan", "instance"):
            models.db.execute_sql(f"DROP TABLE {table}")


def replace_with_garbage(path):
    close_connections()
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        (path.parent / name).unlink(missing_ok=True)
    path.write_bytes(b"this is not an SQLite file at all \x00\xff" * 200)


def replace_with_directory(path):
    close_connections()
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        (path.parent / name).unlink(missing_ok=True)
    path.mkdir()


@pytest.mark.sqlite_only  # the SQLite file itself
@pytest.mark.parametrize("spoil", [drop_tables, replace_with_garbage, replace_with_directory],
                         ids=["tables-dropped", "file-is-garbage", "path-is-a-directory"])
def test_healthz_is_503_problem_json_when_the_database_is_unusable(client, tmp_path, spoil):
    assert client.get("/healthz").status_code == 200
    spoil(tmp_path / "t.db")
    resp = client.get("/healthz")
    body = assert_problem(resp, 503)
    assert "Traceback" not in json.dumps(body)


def test_healthz_recovers_when_the_database_is_usable_again(build, tmp_path):
    path = tmp_path / "t.db"
    client = build({"TESTING": True, "DATABASE": str(path)}).test_client()
    replace_with_directory(path)
    assert_problem(client.get("/healthz"), 503)
    path.rmdir()
    migrations.create_tables()
    assert client.get("/healthz").status_code == 200


# -- the real server -------------------------------------------------------------

@contextmanager
def interruptible():
    """Children inherit an ignored SIGINT (a shell's background jobs, nohup);
    make sure the server under test starts with the default disposition."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


def listening_addresses(port):
    """Local addresses with a socket listening on `port`, from /proc/net/tcp."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.sqlite_only  # the SQLite file itself
def test_startup_message_is_one_line_naming_the_url_and_absolute_database(server):
    lines = [line for line in server.output.splitlines() if "Listening on" in line]
    assert len(lines) == 1, server.output
    assert server.url.startswith("http://127.0.0.1:")
    assert int(urlsplit(server.url).port) > 0
    assert server.url in lines[0] and server.database in lines[0]
    assert os.path.isabs(server.database)
    assert Path(server.database) == server.db_path
    assert server.db_path.is_file()


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
def test_server_binds_only_the_loopback_address_by_default(server):
    port = urlsplit(server.url).port
    assert listening_addresses(port) == {"0100007F"}   # 127.0.0.1, nothing else


@pytest.mark.sqlite_only  # the SQLite file itself
def test_server_serves_crud_over_http(server):
    conn = connect(server.url)
    try:
        resp = send(conn, "POST", "/api/instances", VALID)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        assert resp.mimetype == "application/json"
        created = resp.get_json()
        location = urlsplit(resp.headers["Location"])
        assert location.path == f"/api/instances/{created['id']}"

        resp = send(conn, "GET", location.path)
        assert resp.status_code == 200
        assert resp.get_json() == created

        resp = send(conn, "PUT", location.path, {"status": "running", "name": "renamed"})
        assert resp.status_code == 200
        assert resp.get_json()["status"] == "running"

        log = {"log_type": "system", "message": "up"}
        resp = send(conn, "POST", f"{location.path}/logs", log)
        assert resp.status_code == 201

        resp = send(conn, "GET", "/api/instances")
        assert resp.status_code == 200
        assert resp.headers["X-Total-Count"] == "1"
        assert [row["name"] for row in resp.get_json()] == ["renamed"]

        assert send(conn, "DELETE", location.path).status_code == 204
        assert_problem(send(conn, "GET", location.path), 404)
        assert send(conn, "GET", "/healthz").get_json() == {"status": "ok"}
    finally:
        conn.close()
    assert count_rows(server.db_path, "instance") == 0


def test_sigterm_stops_the_server_with_exit_code_0_within_10_seconds(server):
    assert call(server.url, "GET", "/healthz").status_code == 200
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 10
    assert "Traceback" not in server.output


def test_sigint_stops_the_server_with_exit_code_0(start_server):
    with interruptible():
        srv = start_server()
    assert call(srv.url, "GET", "/healthz").status_code == 200
    assert srv.stop(signal.SIGINT, timeout=10) == 0
    assert "Traceback" not in srv.output


def test_data_survives_a_server_restart_on_the_same_file(start_server):
    srv = start_server()
    created = call(srv.url, "POST", "/api/instances", VALID).get_json()
    assert srv.stop() == 0
    srv = start_server()
    resp = call(srv.url, "GET", f"/api/instances/{created['id']}")
    assert resp.status_code == 200
    assert resp.get_json() == created


def test_port_and_host_flags_choose_the_listening_address(start_server):
    port = free_port()
    srv = start_server("--port", str(port), "--host", "127.0.0.1")
    assert srv.url == f"http://127.0.0.1:{port}"
    assert call(srv.url, "GET", "/healthz").status_code == 200
    if os.path.exists("/proc/net/tcp"):
        assert listening_addresses(port) == {"0100007F"}


@pytest.mark.sqlite_only  # the SQLite file itself
def test_db_flag_chooses_the_database_file_relative_to_the_working_directory(
        start_server, tmp_path):
    srv = start_server("--db", "other.db")
    assert srv.database == str(tmp_path / "other.db")
    assert call(srv.url, "POST", "/api/instances", VALID).status_code == 201
    assert count_rows(tmp_path / "other.db", "instance") == 1
    assert not srv.db_path.exists()


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_threads_flag_sets_the_number_of_worker_threads(start_server):
    # One process each, whose threads are counted (workers are processes of
    # their own). Beside the request threads a server runs its own (the log
    # writer, checkpoints, the background jobs): two servers whose --threads
    # differ by 3 differ by 3 threads.
    counted = []
    for threads in (3, 6):
        srv = start_server("--threads", str(threads), "--workers", "1",
                           log_name=f"server{threads}.log")
        assert call(srv.url, "GET", "/healthz").status_code == 200
        counted.append(len(os.listdir(f"/proc/{srv.proc.pid}/task")))
    assert counted[1] - counted[0] == 3, counted


def test_console_script_instance_api_is_installed_and_prints_help():
    script = Path(sys.executable).parent / "instance-api"
    assert script.is_file() and os.access(script, os.X_OK), script
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    for flag in ("--host", "--port", "--db", "--threads"):
        assert flag in done.stdout


# -- URL rules every route shares ------------------------------------------------------

def test_upper_case_path_ids_are_accepted_and_answered_canonically(client, instance):
    upper = instance["id"].upper()
    assert upper != instance["id"]
    resp = client.get(f"/api/instances/{upper}")
    assert resp.status_code == 200
    assert resp.get_json()["id"] == instance["id"]
    resp = client.put(f"/api/instances/{upper}", json={"name": "renamed"})
    assert resp.status_code == 200
    assert resp.get_json()["id"] == instance["id"]
    resp = client.post(f"/api/instances/{upper}/logs",
                       json={"log_type": "system", "message": "up"})
    assert resp.status_code == 201
    assert resp.get_json()["instance_id"] == instance["id"]
    assert client.get(f"/api/instances/{upper}/logs").headers["X-Total-Count"] == "1"
    resp = client.post(f"/api/instances/{upper}/plans", json={"title": "t", "plan_type": "task"})
    assert resp.status_code == 201
    assert resp.get_json()["instance_id"] == instance["id"]
    assert client.get(f"/api/instances/{upper}/plans").status_code == 200
    assert client.delete(f"/api/instances/{upper}").status_code == 204
    assert client.get(f"/api/instances/{instance['id']}").status_code == 404


def test_upper_case_path_id_works_on_the_real_server(server):
    created = call(server.url, "POST", "/api/instances", VALID).get_json()
    resp = call(server.url, "GET", f"/api/instances/{created['id'].upper()}")
    assert resp.status_code == 200
    assert resp.get_json()["id"] == created["id"]


@pytest.mark.parametrize("path", [
    "/api/instances", "/api/instances/{id}", "/api/instances/{id}/logs",
    "/api/instances/{id}/plans", "/healthz"])
def test_head_on_a_get_route_answers_like_get_without_a_body(client, instance, path):
    path = path.format(id=instance["id"])
    got = client.get(path)
    resp = client.head(path)
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_data() == b""
    assert resp.headers.get("X-Total-Count") == got.headers.get("X-Total-Count")


def test_head_works_on_the_real_server(server):
    conn = connect(server.url)
    try:
        send(conn, "POST", "/api/instances", VALID)
        resp = send(conn, "HEAD", "/api/instances")
        assert resp.status_code == 200
        assert resp.mimetype == "application/json"
        assert resp.get_data() == b""
        assert resp.headers["X-Total-Count"] == "1"
        # the connection is still usable: HEAD sent no body to skip over
        assert send(conn, "GET", "/healthz").get_json() == {"status": "ok"}
    finally:
        conn.close()


def test_a_setting_of_the_wrong_type_names_its_variable(build, monkeypatch):
    monkeypatch.setenv("INSTANCES_PORT", "eighty")
    with pytest.raises(ValueError, match="INSTANCES_PORT"):
        build()


def test_the_server_refuses_to_start_on_a_bad_setting(tmp_path):
    env = {**os.environ, "INSTANCES_THREADS": "many"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--db", str(tmp_path / "x.db")],
        env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "Cannot start" in result.stderr and "INSTANCES_THREADS" in result.stderr
    assert "Traceback" not in result.stderr


# -- schema versions -----------------------------------------------------------

def schema_version(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchall()


def test_a_new_file_starts_at_the_current_schema_version(build, tmp_path):
    build({"DATABASE": str(tmp_path / "t.db")})
    assert schema_version(tmp_path / "t.db") == [(migrations.SCHEMA_VERSION,)]


def test_a_file_from_the_first_release_is_migrated_keeping_its_rows(build, tmp_path):
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((ROOT / "tests" / "data" / "schema_v1.sql").read_text())
        conn.execute("INSERT INTO instance VALUES ('01a224b0000070008000000000000001', "
                     "'2026-11-28 10:00:00.000000', '2026-11-28 10:00:00.000000', ?, ?, "
                     "'old box', 'ubuntu', 'running', NULL, '{\"b\": 1, \"a\": {\"d\": 2, "
                     "\"c\": [3]}}', '{}')",
                     (SITE.replace("-", ""), USER.replace("-", "")))
        conn.execute("INSERT INTO instance_plan VALUES ('01a224b0000070008000000000000002', "
                     "'2026-11-28 10:00:01.000000', '2026-11-28 10:00:01.000000', "
                     "'01a224b0000070008000000000000001', 'Old goal', NULL, 'objective', "
                     "'in_progress', 5, NULL)")
        conn.execute("INSERT INTO instance_log VALUES ('01a224b0000070008000000000000003', "
                     "'2026-11-28 10:00:02.000000', '01a224b0000070008000000000000001', "
                     "'system', 'info', 'Old line', '{}')")
    conn.close()
    client = build({"DATABASE": str(path)}).test_client()
    plans = "/api/instances/01a224b0-0000-7000-8000-000000000001/plans"
    old = client.get(f"{plans}/01a224b0-0000-7000-8000-000000000002").get_json()
    assert (old["title"], old["priority"], old["status"]) == ("Old goal", 5, "in_progress")
    assert (old["parent_id"], old["started_at"], old["completed_at"]) == (None, None, None)
    child = client.post(plans, json={"title": "New task", "plan_type": "task",
                                     "parent_id": old["id"]})
    assert child.status_code == 201
    assert client.get(f"{plans}?parent_id={old['id']}").headers["X-Total-Count"] == "1"
    logs = client.get(plans.replace("plans", "logs"))
    assert [log["message"] for log in logs.get_json()] == ["Old line"]
    assert logs.headers["X-Total-Count"] == "1"  # the counter added in version 3
    # Version 4 stores JSON with sorted keys, and reads pass that text on.
    box = client.get("/api/instances/01a224b0-0000-7000-8000-000000000001")
    assert b'"configuration":{"a":{"c":[3],"d":2},"b":1}' in box.data
    # Version 6 stores UUIDs as the API writes them, old rows and new alike,
    # and every reference still finds its row.
    with sqlite3.connect(path) as conn:
        stored = conn.execute("SELECT id, instance_id, parent_id FROM instance_plan "
                              "ORDER BY created_at").fetchall()
        assert stored == [("01a224b0-0000-7000-8000-000000000002",
                           "01a224b0-0000-7000-8000-000000000001", None),
                          (child.get_json()["id"], "01a224b0-0000-7000-8000-000000000001",
                           "01a224b0-0000-7000-8000-000000000002")]
        assert conn.execute("SELECT site_id, user_id FROM instance").fetchall() == [(SITE, USER)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()
    assert schema_version(path) == [(migrations.SCHEMA_VERSION,)]


def test_a_file_from_a_newer_server_is_refused(build, tmp_path):
    path = tmp_path / "t.db"
    build({"DATABASE": str(path)})
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (migrations.SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(migrations.SchemaTooNew, match="newer"):
        build({"DATABASE": str(path)})
    result = subprocess.run([sys.executable, str(ROOT / "server.py"), "--db", str(path)],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "Cannot start" in result.stderr and "schema version" in result.stderr
    assert schema_version(path) == [(migrations.SCHEMA_VERSION + 1,)]
