"""Apps side by side and what a database must be (issue 22 item 6): each
app made by create_app has its own database, however many live in one
process; a SQLite library too old for the statements, or an in-memory
database, is refused at start with a clear message. The side-by-side tests
run on SQLite, and on PostgreSQL (two schemas) when
INSTANCES_TEST_DATABASE_URL is set."""
import os
import subprocess
import sys

import cysqlite
import pytest

import models
from app import create_app
from conftest import ROOT, SITE, USER, clean_environment, database_for
from jobs.runner import Runner
from storage.engines import DatabaseUnfit

BOX = {"site_id": SITE, "user_id": USER, "name": "box"}


@pytest.fixture
def clean(monkeypatch):
    """No INSTANCES_* variable in the environment of create_app."""
    for name in [name for name in os.environ if name.startswith("INSTANCES_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def make_app(tmp_path, clean):
    """create_app on a database of its own per name; every app's
    connections closed after."""
    made = []

    def make(name, **settings):
        app = create_app({"TESTING": True, **database_for(tmp_path / f"{name}.db"), **settings})
        made.append(app)
        return app
    yield make
    for app in made:
        app.database.close_all()


def create(client, name):
    resp = client.post("/api/instances", json={**BOX, "name": name})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["id"]


def names(client):
    resp = client.get("/api/instances")
    assert resp.status_code == 200
    return sorted(row["name"] for row in resp.get_json())


def test_two_apps_in_one_process_each_keep_their_own_rows(make_app):
    first, second = make_app("first"), make_app("second")
    assert first.database is not second.database
    one, two = first.test_client(), second.test_client()
    mine = create(one, "in-first")
    theirs = create(two, "in-second")
    # Interleaved, whichever app was made last.
    assert names(one) == ["in-first"] and names(two) == ["in-second"]
    assert one.get(f"/api/instances/{mine}").status_code == 200
    assert two.get(f"/api/instances/{mine}").status_code == 404
    assert one.get(f"/api/instances/{theirs}").status_code == 404
    assert one.post(f"/api/instances/{theirs}/logs",
                    json={"log_type": "system", "message": "x"}).status_code == 404
    assert one.post(f"/api/instances/{mine}/logs",
                    json={"log_type": "system", "message": "x"}).status_code == 201
    assert [log["message"] for log in one.get(f"/api/instances/{mine}/logs").get_json()] == ["x"]
    assert two.get(f"/api/instances/{theirs}/logs").get_json() == []
    # In an app's context, the models read its database; outside any, the
    # app made last's.
    with first.app_context():
        assert [row.name for row in models.Instance.select()] == ["in-first"]
        # A request of the other app inside it uses the other's.
        assert names(two) == ["in-second"]
        assert [row.name for row in models.Instance.select()] == ["in-first"]
    assert [row.name for row in models.Instance.select()] == ["in-second"]
    models.db.release()


def test_closing_one_app_leaves_the_other_serving(make_app):
    first, second = make_app("first"), make_app("second")
    one, two = first.test_client(), second.test_client()
    create(one, "in-first")
    create(two, "in-second")
    first.database.close_all()
    theirs = create(two, "after-close")
    assert two.get(f"/api/instances/{theirs}").status_code == 200
    assert names(two) == ["after-close", "in-second"]
    # And the closed one opens again on its next request, still its own.
    assert names(one) == ["in-first"]


def test_a_background_job_runs_on_its_apps_database(make_app):
    first, second = make_app("first"), make_app("second")
    create(first.test_client(), "in-first")

    class Count:
        name, interval, seen = "count", 60, None

        def run_once(self):
            self.seen = [row.name for row in models.Instance.select()]
    job = Count()
    Runner(first, [job]).run(job)
    assert job.seen == ["in-first"]
    Runner(second, [job]).run(job)
    assert job.seen == []


# -- what a database must be -------------------------------------------------------

def start_with(tmp_path, *flags, patch="pass"):
    """`instance-api` with `flags`, after `patch` (Python run first in the
    same process); its exit code and output."""
    code = f"import sys; {patch}; import server; sys.exit(server.main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "--port", "0", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=clean_environment())
    return done.returncode, done.stdout + done.stderr


OLD_SQLITE = "import cysqlite; cysqlite.sqlite_version_info = (3, 43, 2); " \
             "cysqlite.sqlite_version = '3.43.2'"


@pytest.mark.sqlite_only
def test_a_sqlite_library_older_than_3_44_is_refused_at_start(tmp_path, monkeypatch, clean):
    monkeypatch.setattr(cysqlite, "sqlite_version_info", (3, 43, 2))
    monkeypatch.setattr(cysqlite, "sqlite_version", "3.43.2")
    with pytest.raises(DatabaseUnfit, match=r"SQLite library is 3\.43\.2; this service "
                                            r"needs 3\.44 or later"):
        create_app({"DATABASE": str(tmp_path / "t.db")})
    code, output = start_with(tmp_path, "--db", str(tmp_path / "t.db"), patch=OLD_SQLITE)
    assert code == 2, output
    assert "Cannot start: the SQLite library is 3.43.2; this service needs 3.44 or later" \
        in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "t.db").exists()


@pytest.mark.sqlite_only
def test_the_sqlite_library_in_use_is_recent_enough(tmp_path, clean):
    assert cysqlite.sqlite_version_info >= (3, 44, 0)
    app = create_app({"DATABASE": str(tmp_path / "t.db")})
    with app.app_context():
        assert models.db.execute_sql("SELECT concat('a', 'b')").fetchone()[0] == "ab"
    app.database.close_all()


@pytest.mark.parametrize("flags", [["--db", ":memory:"], ["--db", ""],
                                   ["--database-url", "sqlite:///:memory:"]])
def test_an_in_memory_database_is_refused_with_a_message(tmp_path, clean, flags):
    with pytest.raises(DatabaseUnfit, match="in-memory SQLite database"):
        create_app({"DATABASE": flags[1]} if flags[0] == "--db" else
                   {"DATABASE_URL": flags[1]})
    code, output = start_with(tmp_path, *flags)
    assert code == 2, output
    assert "Cannot start: an in-memory SQLite database" in output, output
    assert "use a file" in output and "Traceback" not in output
