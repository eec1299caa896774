"""Schema version 7 (labels, the label and search indexes) on a database of
version 6 with rows in it, and servers that start together on a new or an
older database: one creates or migrates, the others wait their turn, and all
of them serve. On whichever engine the suite runs on."""
import logging
import sqlite3
from datetime import datetime, timezone
from concurrent.futures import ThreadPoolExecutor

import pytest

import migrations
import models
import search
from app import create_app
from conftest import (
    POSTGRES_URL, ROOT, SITE, USER, Server, call, close_connections, database_for,
    undo_part_4, undo_log_sequence, undo_version_7,
)

BOX = {"site_id": SITE, "user_id": USER, "name": "box"}
OLD = [("01a224b0-0000-7000-8000-000000000001", "web-frontend-01", "running"),
       ("01a224b0-0000-7000-8000-000000000002", "Datenbank Straße", "stopped"),
       ("01a224b0-0000-7000-8000-000000000003", "gpu-worker", "running")]
STEPS = ["Migrating the database to schema version 7: labels, the label and search indexes",
         "Migrating the database to schema version 8: logs numbered in the order they were "
         "committed (seq)",
         "Migrating the database to schema version 9: instances' activity, deadlines and end "
         "reason; log_seq",
         "Migrating the database to schema version 10: instances counted by status and type "
         "(instance_count)",
         "Migrating the database to schema version 11: logs numbered fleet-wide, the event "
         "table",
         "Migrating the database to schema version 13: each label row with its instance's "
         "activity (SQLite)",
         "Migrating the database to schema version 14: label rows and counters, GIN indexes "
         "without a pending list (PostgreSQL)"]


def other_id(row_id, kind):
    """The id of a log (kind 1) or plan (kind 2) of the instance `row_id`."""
    return row_id[:7] + kind + row_id[8:]


def version_6(path):
    """A database of schema version 6 holding OLD (each with a log and a
    plan), on the suite's engine: on SQLite, the tables version 6 created
    (tests/data/schema_v6.sql); on PostgreSQL, today's without what versions
    7 (the column and its two indexes), 8 (the logs' seq) and 10 (the fleet
    feeds) added."""
    settings = database_for(path)
    if not POSTGRES_URL:
        with sqlite3.connect(path) as conn:
            conn.executescript((ROOT / "tests" / "data" / "schema_v6.sql").read_text())
            for n, (row_id, name, status) in enumerate(OLD):
                moment = f"2026-11-28 10:00:0{n}.000000"
                conn.execute("INSERT INTO instance (id, created_at, updated_at, site_id, "
                             "user_id, name, instance_type, status, agent_id, configuration, "
                             "environment_variables, log_count) VALUES (?, ?, ?, ?, ?, ?, "
                             "'ubuntu', ?, NULL, '{}', '{}', 0)",
                             (row_id, moment, moment, SITE, USER, name, status))
                conn.execute("INSERT INTO instance_log VALUES (?, ?, ?, 'system', 'info', "
                             "'old line', '{}')", (other_id(row_id, "1"), moment, row_id))
                conn.execute("INSERT INTO instance_plan (id, created_at, updated_at, "
                             "instance_id, title, plan_type, status, priority) VALUES "
                             "(?, ?, ?, ?, 'old goal', 'objective', 'pending', 1)",
                             (other_id(row_id, "2"), moment, moment, row_id))
        conn.close()
        return settings
    close_connections()
    create_app(settings)
    with models.db.atomic():
        for row_id, name, status in OLD:
            models.db.execute_sql(
                "INSERT INTO instance (id, created_at, updated_at, last_activity_at, site_id, "
                "user_id, name, instance_type, status, configuration, environment_variables) "
                "VALUES (%s, now(), now(), now(), %s, %s, %s, 'ubuntu', %s, '{}', '{}')",
                (row_id, SITE, USER, name, status))
            models.db.execute_sql(
                "INSERT INTO instance_log (id, created_at, instance_id, log_type, level, "
                "message, details) VALUES (%s, now(), %s, 'system', 'info', 'old line', '{}')",
                (other_id(row_id, "1"), row_id))
            models.db.execute_sql(
                "INSERT INTO instance_plan (id, created_at, updated_at, instance_id, title, "
                "plan_type, status, priority) VALUES (%s, now(), now(), %s, 'old goal', "
                "'objective', 'pending', 1)", (other_id(row_id, "2"), row_id))
        undo_part_4()
        undo_version_7()
        undo_log_sequence()
        models.SchemaVersion.update(version=6).execute()
    close_connections()
    return settings


def names(client, query):
    resp = client.get(f"/api/instances?{query}")
    assert resp.status_code == 200, resp.get_json()
    assert int(resp.headers["X-Total-Count"]) == len(resp.get_json())
    return sorted(row["name"] for row in resp.get_json())


def test_a_version_6_database_migrates_keeping_its_rows_and_indexing_them(tmp_path, caplog):
    settings = version_6(tmp_path / "v6.db")
    close_connections()
    with caplog.at_level(logging.INFO, logger="instance_api"):
        app = create_app({"TESTING": True, **settings})
    try:
        assert [record.getMessage() for record in caplog.records
                if "Migrating" in record.getMessage()] == STEPS
        client = app.test_client()
        listed = client.get("/api/instances").get_json()
        assert sorted(row["name"] for row in listed) == sorted(name for _, name, _ in OLD)
        assert all(row["labels"] == {} for row in listed)
        old = OLD[0][0]
        assert client.get(f"/api/instances/{old}/logs").headers["X-Total-Count"] == "1"
        assert client.get(f"/api/instances/{old}/plans").get_json()[0]["title"] == "old goal"
        # The names already there are in the search index...
        assert names(client, "q=frontend") == ["web-frontend-01"]
        assert names(client, "q=Straße") == ["Datenbank Straße"]
        assert names(client, "q=-") == ["gpu-worker", "web-frontend-01"]
        # ... and labels given to old rows are in the label index.
        assert client.patch(f"/api/instances/{old}", json={"labels": {"env": "prod"}}
                            ).status_code == 200
        assert names(client, "label=env=prod") == ["web-frontend-01"]
        assert names(client, "label=!env&status=running") == ["gpu-worker"]
        assert client.get("/api/instances/counts?by=label:env").get_json() == {
            "total": 3, "by": {"label:env": {"prod": 1}}}
        # Version 10: the old logs have fleet positions, new ones follow them,
        # and a change is an event.
        client.post(f"/api/instances/{old}/logs", json={"log_type": "new", "message": "x"})
        fleet = client.get("/api/logs?after=p0")
        assert [log["log_type"] for log in fleet.get_json()] == ["system"] * 3 + ["new"]
        assert [event["type"] for event in client.get("/api/events?after=p0").get_json()] == [
            "instance.updated"]
        with models.db.connection_context():
            assert migrations.stored_version() == migrations.SCHEMA_VERSION
            if not models.is_sqlite():
                assert search.has_trigram_index()
                assert models.db.execute_sql(
                    "SELECT to_regclass('instance_labels')").fetchone()[0] is not None
    finally:
        close_connections()


def test_a_current_database_is_not_migrated_again(tmp_path, caplog):
    settings = {"TESTING": True, **database_for(tmp_path / "t.db")}
    close_connections()
    create_app(settings).test_client().post("/api/instances", json={**BOX, "labels": {"a": "b"}})
    close_connections()
    with caplog.at_level(logging.INFO, logger="instance_api"):
        client = create_app(settings).test_client()
    try:
        assert not [record for record in caplog.records if "Migrating" in record.getMessage()]
        assert names(client, "label=a=b") == ["box"]
    finally:
        close_connections()


def start_together(tmp_path, count, db):
    """`count` servers started at once on the database `db`; each one
    once it listens, or the AssertionError of one that did not."""
    def start(n):
        try:
            return Server(tmp_path, db=db, log_name=f"server{n}.log")
        except AssertionError as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


@pytest.mark.parametrize("older", [False, True], ids=["new-database", "version-6"])
def test_servers_started_together_all_start_and_serve(tmp_path, older):
    db = tmp_path / "shared.db"
    if older:
        version_6(db)
        close_connections()
    else:
        database_for(db)   # a new PostgreSQL schema, made once before the servers race
    servers = start_together(tmp_path, 4, db)
    try:
        failed = [str(server) for server in servers if isinstance(server, AssertionError)]
        assert not failed, failed[0]
        for n, server in enumerate(servers):
            reply = call(server.url, "POST", "/api/instances", {**BOX, "name": f"from {n}",
                                                                "labels": {"by": str(n)}})
            assert reply.status_code == 201, reply.get_data(as_text=True)
        for server in servers:
            listed = call(server.url, "GET", "/api/instances?label=by&limit=100")
            assert listed.status_code == 200
            assert sorted(row["name"] for row in listed.get_json()) == [
                f"from {n}" for n in range(4)]
        migrated = [server for server in servers if "Migrating the database" in server.output]
        assert len(migrated) == (1 if older else 0)
        assert all("Cannot start" not in server.output for server in servers)
    finally:
        for server in servers:
            if not isinstance(server, AssertionError):
                server.stop()


def test_a_version_8_database_starts_activity_at_its_newest_write(client):
    """4.7: last_activity_at starts as the latest of updated_at and the
    newest log or plan, never created_at alone; log_seq carries the seq on."""
    made = [client.post("/api/instances", json={**BOX, "name": f"m{n}"}).get_json()
            for n in range(3)]
    quiet, logged, planned = (row["id"] for row in made)
    client.post(f"/api/instances/{logged}/logs",
                json=[{"log_type": "system", "message": f"l{n}"} for n in range(3)])
    plan = client.post(f"/api/instances/{planned}/plans",
                       json={"title": "t", "plan_type": "task"}).get_json()
    with models.db.atomic():
        undo_part_4()
        models.SchemaVersion.update(version=8).execute()
        # Times set apart by days, so the migration's choice shows.
        models.Instance.update(created_at=moment(1), updated_at=moment(2)).execute()
        models.InstanceLog.update(created_at=moment(5)).where(
            models.InstanceLog.instance == logged).execute()
        models.InstancePlan.update(updated_at=moment(7)).where(
            models.InstancePlan.id == plan["id"]).execute()
    close_connections()
    migrations.create_tables()

    def shown(row_id):
        return client.get(f"/api/instances/{row_id}").get_json()

    assert shown(quiet)["last_activity_at"] == moment(2).isoformat()
    assert shown(logged)["last_activity_at"] == moment(5).isoformat()
    assert shown(planned)["last_activity_at"] == moment(7).isoformat()
    assert {key: shown(quiet)[key] for key in ("idle_timeout_s", "expires_at",
                                               "status_reason")} == dict.fromkeys(
        ("idle_timeout_s", "expires_at", "status_reason"))
    # The sequence goes on from the logs already there.
    client.post(f"/api/instances/{logged}/logs", json={"log_type": "system", "message": "l3"})
    with models.db.connection_context():
        assert migrations.stored_version() == migrations.SCHEMA_VERSION
        assert [seq for seq, in models.InstanceLog.select(models.InstanceLog.seq).where(
            models.InstanceLog.instance == logged).order_by(models.InstanceLog.seq).tuples()
                ] == [1, 2, 3, 4]
    assert shown(logged)["last_activity_at"] > moment(5).isoformat()
    assert client.get("/api/instances?idle_for=3600&sort=name").get_json()[0]["name"] == "m0"


def moment(day):
    return datetime(2026, 1, day, 12, 0, 0, 123456, tzinfo=timezone.utc)
