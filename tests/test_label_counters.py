"""The label rows and counters (search.py on SQLite, storage.label_rows on
PostgreSQL): a page of one selector alone and its X-Total-Count, which they
answer, equal the same selector evaluated here over every instance, after
every kind of write, writes outside the API, and the migration that fills
them, on either engine. And PostgreSQL's GIN indexes, written through
since the same migration (search.GIN)."""
import random

import pytest

import conftest
import migrations
import models
import search
from conftest import POSTGRES_URL, SITE, USER, close_connections, undo_label_rows
from models import Instance

VALUES = {"env": ["prod", "dev", "ci"], "team": ["a", "b"], "zone": ["x"]}
SELECTORS = [f"{key}={value}" for key, values in VALUES.items() for value in values] + \
    list(VALUES) + [f"!{key}" for key in VALUES] + ["env!=prod", "team!=a", "nope=1", "nope"]


def some_labels(rng):
    return {key: rng.choice(values) for key, values in VALUES.items() if rng.random() < 0.6}


def holds(labels, selector):
    if selector.startswith("!"):
        return selector[1:] not in labels
    if "!=" in selector:
        key, value = selector.split("!=")
        return labels.get(key) != value
    if "=" in selector:
        key, value = selector.split("=")
        return labels.get(key) == value
    return selector in labels


def check(client):
    """Each selector's first page (newest first) and total, against the
    instances as stored."""
    with client.application.app_context():
        rows = list(Instance.select(Instance.id, Instance.labels)
                    .order_by(Instance.created_at.desc(), Instance.id.desc()))
    for selector in SELECTORS:
        expected = [str(row.id) for row in rows if holds(row.labels, selector)]
        resp = client.get("/api/instances", query_string={"label": selector, "limit": 100})
        assert resp.status_code == 200
        assert resp.headers["X-Total-Count"] == str(len(expected)), selector
        assert [row["id"] for row in resp.get_json()] == expected[:100], selector


def write_randomly(client, rng, steps):
    conftest.write_randomly(
        client, rng, steps, lambda rng: {"labels": some_labels(rng)},
        lambda rng: rng.choice([{"labels": some_labels(rng)}, {"labels": {}},
                                {"name": "renamed"}, {"status": "stopped"}]),
        methods=("put", "patch"))


def test_label_pages_and_counts_equal_the_instances_after_random_writes(client):
    rng = random.Random(14)
    check(client)
    for _ in range(5):
        write_randomly(client, rng, 40)
        check(client)


def test_label_counters_follow_bulk_writes_outside_the_api(client):
    """A bulk insert, update and delete (a seed, an operator's SQL, a purge)
    are kept by the database itself."""
    rng = random.Random(5)
    now = models.utcnow()
    rows = [{"site_id": SITE, "user_id": USER, "name": f"bulk-{n}", "status": "running",
             "instance_type": "browser", "agent_id": None, "configuration": {},
             "environment_variables": {}, "labels": some_labels(rng),
             "created_at": now, "updated_at": now} for n in range(200)]
    with client.application.app_context():
        Instance.add(rows)
    check(client)
    with client.application.app_context():
        Instance.update(labels={"env": "ci"}).where(Instance.name.startswith("bulk-1")).execute()
    check(client)
    with client.application.app_context():
        Instance.delete().where(Instance.name.startswith("bulk-2")).execute()
    check(client)


def test_a_version_13_database_fills_its_label_rows(app, client):
    """On PostgreSQL, version 14 adds the rows and counters; on SQLite it
    changes nothing (they are version 7's)."""
    write_randomly(client, random.Random(13), 60)
    with app.app_context(), models.db.atomic():
        undo_label_rows()
        if not models.is_sqlite():
            for index in search.GIN_INDEXES:
                models.db.execute_sql(f"ALTER INDEX {index} RESET (fastupdate)")
        models.SchemaVersion.update(version=13).execute()
    close_connections()
    with app.app_context():
        migrations.create_tables()
        assert migrations.stored_version() == migrations.SCHEMA_VERSION
        if not models.is_sqlite():
            assert gin_options() == {index: ["fastupdate=off"] for index in search.GIN_INDEXES}
    check(client)
    write_randomly(client, random.Random(31), 40)
    check(client)


def gin_options():
    return dict(models.db.execute_sql(
        "SELECT relname, reloptions FROM pg_class WHERE relname = ANY(%s)",
        (list(search.GIN_INDEXES),)).fetchall())


@pytest.mark.skipif(not POSTGRES_URL, reason="needs INSTANCES_TEST_DATABASE_URL")
def test_the_gin_indexes_of_a_new_database_have_no_pending_list(app):
    with app.app_context():
        assert gin_options() == {index: ["fastupdate=off"] for index in search.GIN_INDEXES}


def test_a_label_no_instance_has_leaves_no_counter_row(client, app):
    """Labels with ever-new values (a run id) must not pile up counter rows."""
    made = [client.post("/api/instances", json={
        "site_id": SITE, "user_id": USER, "name": "box", "labels": {"run": f"r{n}"}}
    ).get_json()["id"] for n in range(3)]
    client.patch(f"/api/instances/{made[0]}", json={"labels": {"run": "r9"}})
    client.patch(f"/api/instances/{made[1]}", json={"labels": {}})
    client.delete(f"/api/instances/{made[2]}")
    with app.app_context():
        values = [row.value for row in search.InstanceLabelCount.select().where(
            search.InstanceLabelCount.key == "run", search.InstanceLabelCount.instances != 0)]
        rows = search.InstanceLabelCount.select().where(
            search.InstanceLabelCount.key == "run").count()
        keys = search.InstanceLabelKeyCount.select().where(
            search.InstanceLabelKeyCount.key == "run").count()
    assert values == ["r9"] and rows == 1 and keys == 1
