"""The instance counters (storage.counters): the counts and X-Total-Count
they answer equal COUNT(*) after every kind of write and after the
migration that fills them, on either engine."""
import random

import pytest

import conftest
import migrations
import models
from conftest import SITE, USER, undo_part_4
from models import INSTANCE_STATUSES, INSTANCE_TYPES, Instance
from storage import counters


def truth(where=None):
    """{(status, type): n} by COUNT(*) over the instance table itself."""
    query = Instance.select(Instance.status, Instance.instance_type,
                            models.fn.COUNT(models.SQL("*")))
    for field, values in (where or {}).items():
        query = query.where(getattr(Instance, field).in_(values))
    return {(status, kind): n for status, kind, n in
            query.group_by(Instance.status, Instance.instance_type).tuples()}


def check(client, rng):
    """Every answer the counters give, against COUNT(*)."""
    pairs = truth()
    by_status = {s: sum(n for (status, _), n in pairs.items() if status == s)
                 for s in INSTANCE_STATUSES}
    by_type = {t: sum(n for (_, kind), n in pairs.items() if kind == t) for t in INSTANCE_TYPES}
    body = client.get("/api/instances/counts?by=status,instance_type").get_json()
    assert body == {"total": sum(pairs.values()),
                    "by": {"status": by_status, "instance_type": by_type}}
    assert client.get("/api/instances/counts").get_json()["total"] == sum(pairs.values())
    assert client.get("/api/instances?limit=1").headers["X-Total-Count"] == \
        str(sum(pairs.values()))
    statuses = rng.sample(INSTANCE_STATUSES, 2)
    kind = rng.choice(INSTANCE_TYPES)
    where = {"status": statuses, "instance_type": [kind]}
    expected = sum(truth(where).values())
    query = f"status={','.join(statuses)}&instance_type={kind}"
    body = client.get(f"/api/instances/counts?by=status&{query}").get_json()
    assert body["total"] == expected
    assert body["by"]["status"] == {
        s: sum(truth({"status": [s], "instance_type": [kind]}).values()) if s in statuses else 0
        for s in INSTANCE_STATUSES}
    assert client.get(f"/api/instances?limit=0&{query}").headers["X-Total-Count"] == \
        str(expected)
    assert client.get(f"/api/instances?limit=0&status={statuses[0]}").headers[
        "X-Total-Count"] == str(sum(truth({"status": [statuses[0]]}).values()))


def write_randomly(client, rng, steps):
    conftest.write_randomly(client, rng, steps, lambda rng: {
        "status": rng.choice(INSTANCE_STATUSES), "instance_type": rng.choice(INSTANCE_TYPES)},
        lambda rng: rng.choice([{"status": rng.choice(INSTANCE_STATUSES)},
                                {"instance_type": rng.choice(INSTANCE_TYPES)},
                                {"status": rng.choice(INSTANCE_STATUSES),
                                 "instance_type": rng.choice(INSTANCE_TYPES)},
                                {"name": "renamed"}, {}]))


def test_counters_equal_count_after_random_writes(client):
    rng = random.Random(26)
    check(client, rng)
    for _ in range(6):
        write_randomly(client, rng, 40)
        check(client, rng)


def test_counters_follow_bulk_writes_outside_the_api(client):
    """A bulk insert, update and delete (a seed, an operator's SQL, a
    purge) are counted by the database itself."""
    rng = random.Random(7)
    now = models.utcnow()
    rows = [{"site_id": SITE, "user_id": USER, "name": f"bulk-{n}",
             "status": rng.choice(INSTANCE_STATUSES), "instance_type": rng.choice(INSTANCE_TYPES),
             "agent_id": None, "configuration": {}, "environment_variables": {}, "labels": {},
             "created_at": now, "updated_at": now} for n in range(250)]
    with client.application.app_context():
        Instance.add(rows)
        check(client, rng)
        Instance.update(status="stopped").where(Instance.instance_type == "ubuntu").execute()
        check(client, rng)
        Instance.delete().where(Instance.status == "stopped").execute()
        check(client, rng)


def test_migration_from_version_8_fills_the_counters(client):
    rng = random.Random(8)
    write_randomly(client, rng, 60)
    with client.application.app_context():
        undo_part_4()
        models.SchemaVersion.update(version=8).execute()
        migrations.create_tables()
        assert migrations.stored_version() == migrations.SCHEMA_VERSION
    check(client, rng)
    write_randomly(client, rng, 40)
    check(client, rng)


@pytest.mark.parametrize("by", ["site_id", "label:env"])
def test_other_counts_still_count_the_table(client, make_instance, by):
    make_instance(labels={"env": "prod"})
    make_instance(labels={"env": "dev"}, status="running")
    body = client.get(f"/api/instances/counts?by={by},status").get_json()
    assert body["total"] == 2
    assert body["by"]["status"]["running"] == 1


def test_counts_read_few_rows(client, make_instance):
    """The counters hold a row per (status, type, shard) used, whatever the
    number of instances."""
    for _ in range(30):
        make_instance(status="running", instance_type="ubuntu")
    with client.application.app_context():
        rows = models.db.execute_sql("SELECT count(*) FROM instance_count").fetchone()[0]
        assert rows <= counters.SHARDS
        assert counters.counts("status")["running"] == 30
