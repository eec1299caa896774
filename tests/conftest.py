"""Fixtures: an app per test on its own database, a client, row factories,
a real server started through the users' entry point, and the one helper that
checks the problem+json shape.

The suite runs on SQLite (a file per test under tmp_path). With
INSTANCES_TEST_DATABASE_URL=postgresql://..., it runs on that PostgreSQL
server instead, each test in a schema of its own; tests marked sqlite_only
(file pragmas, WAL, backups of the file) are skipped there."""
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import log_triggers
import models
from app import create_app
from workers import JOBS_NAME

ROOT = Path(__file__).resolve().parent.parent
SITE = "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01"
USER = "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"

# Read once: the fixtures clear INSTANCES_* variables for the app under test.
POSTGRES_URL = os.environ.get("INSTANCES_TEST_DATABASE_URL", "")
SCHEMAS = set()


def database_for(path):
    """Settings for a fresh database named after `path`: that SQLite file, or
    a PostgreSQL schema of its own (the same path gives the same schema, so a
    restarted server finds its data)."""
    if not POSTGRES_URL:
        return {"DATABASE": str(path)}
    import psycopg

    schema = "t_" + hashlib.sha1(str(path).encode()).hexdigest()[:20]
    if schema not in SCHEMAS:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.execute(f'CREATE SCHEMA "{schema}"')
        SCHEMAS.add(schema)
    separator = "&" if "?" in POSTGRES_URL else "?"
    return {"DATABASE_URL": f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"}


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: tests of SQLite's file, pragmas or "
                                       "errors; skipped on PostgreSQL")


def pytest_collection_modifyitems(config, items):
    if POSTGRES_URL:
        skip = pytest.mark.skip(reason="SQLite-specific; this run is on PostgreSQL")
        for item in items:
            if item.get_closest_marker("sqlite_only"):
                item.add_marker(skip)


def pytest_sessionfinish(session):
    if POSTGRES_URL and SCHEMAS:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for schema in SCHEMAS:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def app(tmp_path, monkeypatch):
    # Settings come from this dict only, whatever the caller's environment.
    for name in [name for name in os.environ if name.startswith("INSTANCES_")]:
        monkeypatch.delenv(name)
    # A file, not :memory:: each request hands its connection back, and an
    # in-memory database would vanish with it.
    app = create_app({"TESTING": True, **database_for(tmp_path / "t.db")})
    yield app
    models.db.close_all()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_instance(client):
    def make(**fields):
        body = {"site_id": SITE, "user_id": USER, "name": "box", **fields}
        resp = client.post("/api/instances", json=body)
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()
    return make


@pytest.fixture
def instance(make_instance):
    return make_instance()


@pytest.fixture
def make_log(client, instance):
    def make(instance_id=None, **fields):
        body = {"log_type": "system", "message": "started", **fields}
        resp = client.post(f"/api/instances/{instance_id or instance['id']}/logs", json=body)
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()
    return make


@pytest.fixture
def make_plan(client, instance):
    def make(instance_id=None, **fields):
        body = {"title": "Open the browser", "plan_type": "task", **fields}
        resp = client.post(f"/api/instances/{instance_id or instance['id']}/plans", json=body)
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()
    return make


def assert_problem(resp, status, field=None, where="json"):
    """An RFC 9457 body with this status; with `field`, a validation error
    naming it under `where` (json or query)."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    assert "Traceback" not in resp.get_data(as_text=True)
    if field is not None:
        assert field in body["errors"][where], body
    return body


def random_id():
    return str(uuid.uuid4())


class Reply:
    """An http.client response with the attributes assert_problem reads, so
    real-server answers are checked like test-client ones."""

    def __init__(self, resp):
        self.status_code = resp.status
        self.headers = resp.headers
        self.data = resp.read()
        content_type = resp.getheader("Content-Type") or ""
        self.mimetype = content_type.split(";")[0].strip().lower()

    def get_data(self, as_text=False):
        return self.data.decode("utf-8", "replace") if as_text else self.data

    def get_json(self):
        return json.loads(self.data)


def is_jobs(pid):
    """Whether `pid` is a server's jobs worker (named so: workers.JOBS_NAME)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == JOBS_NAME
    except FileNotFoundError:   # it ended meanwhile
        return False


def connect(url, timeout=10):
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", url
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def send(conn, method, path, body=None, headers=None):
    """One request on an open (keep-alive) connection. A dict or list body is
    sent as JSON; bytes go as they are, with the headers given."""
    headers = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=headers)
    return Reply(conn.getresponse())


def call(url, method, path, body=None, headers=None):
    conn = connect(url)
    try:
        return send(conn, method, path, body, headers)
    finally:
        conn.close()


class Server:
    """The real service (`python server.py`, waitress) on an ephemeral port.

    Output goes to a file, not a pipe, so a chatty server never blocks on a
    full pipe that nobody reads. `env` adds INSTANCES_* settings; `db` names
    another database file than tmp_path/live.db. With `session`, the server
    leads a process group of its own (for signals sent to its whole group)."""

    def __init__(self, tmp_path, *extra, env=None, db=None, log_name="server.log",
                 session=False):
        self.db_path = Path(db or tmp_path / "live.db")
        self.log_path = tmp_path / log_name
        database = database_for(self.db_path)
        where = (["--database-url", database["DATABASE_URL"]] if "DATABASE_URL" in database
                 else ["--db", str(self.db_path)])
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "server.py"), "--port", "0", *where, *extra],
                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                env={**clean_environment(), "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=session,
            )
        match = self.wait_for(r"Listening on (http://\S+) with database (\S+)")
        self.url, self.database = match.group(1), match.group(2)

    @property
    def output(self):
        return self.log_path.read_text()

    def wait_for(self, pattern, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in server output:\n{self.output}")

    def pids(self, jobs=False):
        """The server's processes: the one started, and its serving workers
        if it has any (Linux /proc); with `jobs`, its jobs worker too. Workers
        are forked before the start-up line."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *(int(child) for child in children if jobs or not is_jobs(child))]

    def jobs_pid(self):
        """The server's jobs worker (a server of several workers has one)."""
        found = [pid for pid in self.pids(jobs=True)[1:] if is_jobs(pid)]
        assert len(found) == 1, found
        return found[0]

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self):
        """At teardown: SIGTERM, which the parent of --workers passes on to
        its workers (a SIGKILL would leave them serving, orphaned), then
        SIGKILL if it is not gone within 10 s."""
        try:
            self.stop(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def headless_chromium(window="1280,1000", logs=False, timezone=None):
    """Headless Chromium with every host but 127.0.0.1 unreachable (a page
    must load from the service alone); with its console and network `logs`
    kept, in `timezone` if given. The browser tests skip without Debian's
    chromium and chromium-driver, which .ci/run installs."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={window}",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    if logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER,
                                      env={"TZ": timezone} if timezone else None)
    return webdriver.Chrome(options=options, service=service)


def wait_until(check, timeout=15, what="the condition"):
    """Poll `check()` until it gives a true value, which is returned, or fail
    after `timeout` seconds: how a test waits for another process's state
    (never a bare sleep as a rendezvous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def clean_environment():
    """The caller's environment without INSTANCES_* settings."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith("INSTANCES_")}


# Figures measured by the reliability scenarios, printed after the run.
FIGURES = []


@pytest.fixture
def figures(request):
    def record(**values):
        FIGURES.append((request.node.nodeid, values))
    return record


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"Database engine: PostgreSQL ({POSTGRES_URL.split('@')[-1]})" if POSTGRES_URL else
        "Database engine: SQLite only; PostgreSQL was not tested "
        "(set INSTANCES_TEST_DATABASE_URL=postgresql://...)")
    if FIGURES:
        terminalreporter.section("reliability figures")
        for nodeid, values in FIGURES:
            shown = ", ".join(f"{name}={value}" for name, value in values.items())
            terminalreporter.write_line(f"{nodeid}: {shown}")


@pytest.fixture
def start_server(tmp_path):
    """Start real servers; each one still up at teardown is killed."""
    started = []

    def start(*flags, **kwargs):
        srv = Server(tmp_path, *flags, **kwargs)
        started.append(srv)
        return srv
    yield start
    for srv in started:
        srv.close()


# The log triggers of schema versions 5 to 7: the count alone, no seq.
COUNTING_TRIGGERS = {
    "sqlite": ["""
        CREATE TRIGGER instance_log_counted AFTER INSERT ON instance_log
        BEGIN
            UPDATE instance SET log_count = log_count + 1 WHERE id = NEW.instance_id;
        END"""],
    "postgresql": ["""
        CREATE OR REPLACE FUNCTION instance_log_counted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE instance SET log_count = log_count + added.n
            FROM (SELECT instance_id, count(*) AS n FROM new_logs GROUP BY instance_id) AS added
            WHERE instance.id = added.instance_id;
            RETURN NULL;
        END $$"""],
}


# What schema version 8 had of the log triggers (log_triggers.py then):
# seq from log_count, no activity.
VERSION_8_TRIGGERS = {
    "sqlite": ["""
        CREATE TRIGGER instance_log_counted AFTER INSERT ON instance_log
        BEGIN
            UPDATE instance SET log_count = log_count + 1 WHERE id = NEW.instance_id;
            UPDATE instance_log
            SET seq = (SELECT log_count FROM instance WHERE id = NEW.instance_id)
            WHERE rowid = NEW.rowid;
        END"""],
    "postgresql": ["""
        CREATE OR REPLACE FUNCTION instance_log_sequenced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            last text := current_setting('instance_log.last_seq', true);
        BEGIN
            IF split_part(last, ' ', 1) = NEW.instance_id::text THEN
                NEW.seq := split_part(last, ' ', 2)::integer + 1;
            ELSE
                PERFORM FROM instance WHERE id = NEW.instance_id FOR NO KEY UPDATE;
                NEW.seq := coalesce((SELECT max(seq) FROM instance_log
                                     WHERE instance_id = NEW.instance_id), 0) + 1;
            END IF;
            PERFORM set_config('instance_log.last_seq', NEW.instance_id::text || ' ' || NEW.seq,
                               true);
            RETURN NEW;
        END $$""", f"""
        CREATE OR REPLACE FUNCTION instance_log_counted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE instance SET log_count = log_count + added.n
            FROM (SELECT instance_id, count(*) AS n FROM new_logs GROUP BY instance_id) AS added
            WHERE instance.id = added.instance_id;
            PERFORM pg_notify({log_triggers.POSTGRES_CHANNEL}, instance_id::text)
            FROM (SELECT DISTINCT instance_id FROM new_logs) AS added;
            RETURN NULL;
        END $$"""],
}
LIFECYCLE_COLUMNS = ("log_seq", "idle_timeout_s", "expires_at", "status_reason",
                     "idle_deadline", "last_activity_at")


def undo_label_rows():
    """Take the open database back to schema version 13, in the caller's
    transaction: no label rows or counters on PostgreSQL (storage.label_rows)."""
    if models.is_sqlite():
        return
    for trigger in ("instance_labels_added", "instance_labels_changed",
                    "instance_labels_removed"):
        models.db.execute_sql(f"DROP TRIGGER IF EXISTS {trigger} ON instance")
    models.db.execute_sql("DROP FUNCTION IF EXISTS instance_labels_changed()")
    for table in ("instance_label", "instance_label_count", "instance_label_key_count"):
        models.db.execute_sql(f"DROP TABLE IF EXISTS {table}")


def undo_label_activity():
    """Take the open database back to schema version 12, in the caller's
    transaction: no activity in the label rows (SQLite; search.LABEL_ACTIVITY),
    nor what came after."""
    undo_label_rows()
    if not models.is_sqlite():
        return
    for trigger in ("instance_label_active", "instance_labels_active"):
        models.db.execute_sql(f"DROP TRIGGER IF EXISTS {trigger}")
    models.db.execute_sql("DROP INDEX IF EXISTS instance_label_activity")
    columns = [row[1] for row in models.db.execute_sql("PRAGMA table_info(instance_label)")]
    if "active_at" in columns:
        models.db.execute_sql("ALTER TABLE instance_label DROP COLUMN active_at")


def undo_lifecycle():
    """Take the open database back to schema version 8, in the caller's
    transaction: no activity, deadline or log_seq columns, their indexes,
    and version 8's log triggers."""
    undo_label_activity()
    sqlite = models.is_sqlite()
    if sqlite:
        models.db.execute_sql("DROP TRIGGER IF EXISTS instance_log_counted")
    for index in ("instance_last_activity_at", "instance_expires_at", "instance_idle_deadline",
                  "instance_expiring"):
        models.db.execute_sql(f'DROP INDEX IF EXISTS "{index}"')
    for column in LIFECYCLE_COLUMNS:
        models.db.execute_sql(f'ALTER TABLE instance DROP COLUMN "{column}"')
    for statement in VERSION_8_TRIGGERS["sqlite" if sqlite else "postgresql"]:
        models.db.execute_sql(statement)


def undo_version_7():
    """Take away, in the caller's transaction, what version 7 added: the
    label and search tables and triggers (SQLite), the trigram index
    (PostgreSQL), and the `labels` column with its index."""
    undo_label_activity()
    if models.is_sqlite():
        # The event triggers of version 10 read the column; remade on migrating.
        for trigger in EVENT_TRIGGERS:
            models.db.execute_sql(f"DROP TRIGGER IF EXISTS {trigger}")
        for trigger in ("instance_labels_added", "instance_labels_changed",
                        "instance_labels_removed", "instance_label_counted",
                        "instance_label_uncounted", "instance_search_added",
                        "instance_search_renamed", "instance_search_removed"):
            models.db.execute_sql(f"DROP TRIGGER {trigger}")
        for table in ("instance_label", "instance_label_count", "instance_label_key_count",
                      "instance_search"):
            models.db.execute_sql(f"DROP TABLE {table}")
    else:
        models.db.execute_sql("DROP INDEX IF EXISTS instance_name_trigrams")
    models.db.execute_sql("ALTER TABLE instance DROP COLUMN labels")   # and its GIN index


EVENT_TRIGGERS = ("event_instance_created", "event_instance_updated", "event_instance_deleted",
                  "event_plan_created", "event_plan_updated", "event_plan_deleted")


def undo_fleet_feeds():
    """Take the open database back to before schema version 11 (feeds.py),
    in the caller's transaction: no event table or triggers, no fleet
    positions of logs. On SQLite the log trigger goes too (it sets
    fleet_seq): undo_lifecycle, which always follows, makes version 8's."""
    db = models.db
    if models.is_sqlite():
        for name in (*EVENT_TRIGGERS, "instance_log_counted"):
            db.execute_sql(f"DROP TRIGGER IF EXISTS {name}")
        db.execute_sql("DROP INDEX instance_log_fleet_seq")
        db.execute_sql("ALTER TABLE instance_log DROP COLUMN fleet_seq")
        db.execute_sql("DROP TABLE event")
        db.execute_sql("DROP TABLE feed_counter")
        db.execute_sql("DROP TABLE feed_mark")
        return
    for name in EVENT_TRIGGERS:
        table = "instance" if name.startswith("event_instance") else "instance_plan"
        db.execute_sql(f"DROP TRIGGER {name} ON {table}")
        db.execute_sql(f"DROP FUNCTION {name}")
    db.execute_sql("DROP TABLE event, feed_mark")
    db.execute_sql("DROP FUNCTION event_notified")
    db.execute_sql("ALTER TABLE instance_log DROP COLUMN fleet_seq, DROP COLUMN fleet_xid")
    db.execute_sql("DROP SEQUENCE instance_log_fleet_seq")


def undo_counters():
    """Take the open database back to before schema version 10: no instance
    counters (storage.counters)."""
    db = models.db
    for trigger in ("instance_counted", "instance_recounted", "instance_uncounted"):
        if models.is_sqlite():
            db.execute_sql(f"DROP TRIGGER {trigger}")
        else:
            db.execute_sql(f"DROP TRIGGER {trigger} ON instance")
            db.execute_sql(f"DROP FUNCTION {trigger}")
    db.execute_sql("DROP TABLE instance_count")


def undo_part_4():
    """Take the open database back to schema version 8, in the caller's
    transaction: versions 11 (feeds), 10 (counters) and 9 (lifecycle)
    undone in that order."""
    undo_fleet_feeds()
    undo_counters()
    undo_lifecycle()


def undo_log_sequence(counting=True):
    """Take the open database back to before schema version 8: no seq, its
    index or its triggers; the log-count trigger of versions 5 to 7 when
    `counting`, none otherwise. Call it in a transaction."""
    from playhouse.migrate import SchemaMigrator, migrate

    db = models.db
    sqlite = models.is_sqlite()
    db.execute_sql('DROP INDEX "instance_log_instance_id_seq"')
    if sqlite:
        db.execute_sql("DROP TRIGGER instance_log_counted")
    else:
        for trigger, table in (("instance_log_sequenced", "instance_log"),
                               ("instance_deleted", "instance")):
            db.execute_sql(f"DROP TRIGGER {trigger} ON {table}")
            db.execute_sql(f"DROP FUNCTION {trigger}")
        if not counting:
            db.execute_sql("DROP TRIGGER instance_log_counted ON instance_log")
    migrate(SchemaMigrator.from_database(db.obj).drop_column("instance_log", "seq"))
    if counting:
        for statement in COUNTING_TRIGGERS["sqlite" if sqlite else "postgresql"]:
            db.execute_sql(statement)


def write_randomly(client, rng, steps, created, changed, methods=("put",)):
    """`steps` random writes to the instances: 40% creates (with the fields
    `created(rng)` gives), 40% updates of one (`changed(rng)`, by one of
    `methods`), 20% deletes; for tests that hold a count or index against
    the table after every kind of write."""
    ids = [row["id"] for row in client.get("/api/instances?limit=100").get_json()]
    for _ in range(steps):
        action = rng.random()
        if action < 0.4 or not ids:
            resp = client.post("/api/instances", json={
                "site_id": SITE, "user_id": USER, "name": "box", **created(rng)})
            assert resp.status_code == 201
            ids.append(resp.get_json()["id"])
        elif action < 0.8:
            change = changed(rng)
            method = getattr(client, methods[0] if len(methods) == 1 else rng.choice(methods))
            assert method(f"/api/instances/{rng.choice(ids)}", json=change).status_code == 200
        else:
            victim = ids.pop(rng.randrange(len(ids)))
            assert client.delete(f"/api/instances/{victim}").status_code == 204


def close_connections():
    """Close the previous app's connections, if an app was built."""
    try:
        models.db.close_all()
    except AttributeError:      # the proxy was never initialised
        pass


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    yield srv
    srv.close()
