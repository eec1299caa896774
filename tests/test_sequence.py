"""Each log's seq: its place in its instance's log in the order logs commit
(log_triggers.py), which the `after` cursor follows; and schema version
8, which numbers the logs already there. On whichever engine the suite runs
on; several processes appending at once: test_tail_servers.py."""
import logging
from datetime import timedelta

import pytest

import migrations
import models
from conftest import undo_part_4, undo_log_sequence, undo_version_7
from storage.fields import utcnow
from storage.writes import write


def seqs(instance_id):
    """(message, seq) of an instance's logs, by seq."""
    return [(message, seq) for message, seq in models.InstanceLog.select(
        models.InstanceLog.message, models.InstanceLog.seq).where(
        models.InstanceLog.instance == instance_id).order_by(models.InstanceLog.seq).tuples()]


def log_rows(instance_id, *messages):
    rows = models.InstanceLog.completed(
        [{"log_type": "system", "level": "info", "message": m, "details": {}} for m in messages],
        {"instance_id": instance_id})
    return rows


@pytest.fixture
def two(make_instance):
    return make_instance()["id"], make_instance()["id"]


def test_logs_are_numbered_from_1_per_instance_batches_and_single_logs_alike(
        client, two):
    a, b = two
    client.post(f"/api/instances/{a}/logs", json={"log_type": "system", "message": "a1"})
    client.post(f"/api/instances/{b}/logs", json=[
        {"log_type": "system", "message": f"b{n}"} for n in range(1, 4)])
    client.post(f"/api/instances/{a}/logs", json=[
        {"log_type": "system", "message": f"a{n}"} for n in range(2, 4)])

    assert seqs(a) == [("a1", 1), ("a2", 2), ("a3", 3)]
    assert seqs(b) == [("b1", 1), ("b2", 2), ("b3", 3)]


def test_one_statement_interleaving_instances_numbers_each_in_row_order(client, two):
    """A group commit's INSERT holds rows of several instances: each gets
    its own numbers, in the order of the rows, however they alternate."""
    a, b = two
    client.post(f"/api/instances/{a}/logs", json={"log_type": "system", "message": "a1"})
    rows = [*log_rows(a, "a2"), *log_rows(b, "b1"), *log_rows(a, "a3"), *log_rows(b, "b2"),
            *log_rows(b, "b3"), *log_rows(a, "a4")]
    with write():
        models.InstanceLog.insert_rows(rows)
    with write():   # a second statement of the same transaction counts on
        models.InstanceLog.insert_rows([*log_rows(b, "b4"), *log_rows(a, "a5")])
        models.InstanceLog.insert_rows([*log_rows(a, "a6"), *log_rows(b, "b5")])

    assert seqs(a) == [(f"a{n}", n) for n in range(1, 7)]
    assert seqs(b) == [(f"b{n}", n) for n in range(1, 6)]
    assert client.get(f"/api/instances/{a}/logs").headers["X-Total-Count"] == "6"


def test_a_rolled_back_append_leaves_no_gap_and_no_number_taken(client, two):
    a, _ = two
    client.post(f"/api/instances/{a}/logs", json={"log_type": "system", "message": "a1"})
    with pytest.raises(RuntimeError):
        with write():
            models.InstanceLog.insert_rows(log_rows(a, "gone"))
            raise RuntimeError("changed my mind")
    client.post(f"/api/instances/{a}/logs", json={"log_type": "system", "message": "a2"})
    assert seqs(a) == [("a1", 1), ("a2", 2)]


def test_after_follows_the_order_logs_were_committed_not_their_timestamps(client, two):
    """A log stamped before another but committed after it (two writers)
    comes after it; the newest-first list still goes by created_at."""
    a, _ = two
    logs = f"/api/instances/{a}/logs"
    ids = [client.post(logs, json={"log_type": "system", "message": f"m{n}"}).get_json()["id"]
           for n in range(4)]
    # m3 was stamped first of all, and committed last.
    models.InstanceLog.update(created_at=utcnow() - timedelta(hours=1)).where(
        models.InstanceLog.id == ids[3]).execute()

    after = client.get(f"{logs}?after={ids[0]}").get_json()
    assert [log["message"] for log in after] == ["m1", "m2", "m3"]
    assert [log["message"] for log in client.get(f"{logs}?after={ids[3]}").get_json()] == []
    newest_first = client.get(logs).get_json()
    assert [log["message"] for log in newest_first] == ["m2", "m1", "m0", "m3"]


# -- schema version 8 ---------------------------------------------------------------

def stamped(minutes):
    return utcnow() - timedelta(minutes=minutes)


def test_version_6_with_logs_is_numbered_in_created_at_then_id_order(client, two, caplog):
    """Logs written by a version 6 server (no seq; its count trigger), some
    stamped out of the order they were inserted in, two with the same time:
    version 8 numbers them by created_at, then id; X-Total-Count, the cursor
    and new appends carry on from there."""
    a, b = two
    with models.db.atomic():
        undo_part_4()
        undo_version_7()
        undo_log_sequence()
        models.SchemaVersion.update(version=6).execute()
    tie, early, late = stamped(30), "01a224b0-0000-7000-8000-000000000001", \
        "01a224b0-0000-7000-8000-00000000000f"
    for instance_id, message, moment, key in (
            (a, "third", stamped(10), None), (a, "first", stamped(50), None),
            (b, "only", stamped(40), None), (a, "tie-2", tie, late), (a, "tie-1", tie, early)):
        columns = {"instance": instance_id, "log_type": "system", "level": "info",
                   "message": message, "details": {}, "created_at": moment}
        if key:
            columns["id"] = key
        models.InstanceLog.insert(columns).execute()
    models.db.close_all()

    with caplog.at_level(logging.INFO, logger="instance_api"):
        migrations.create_tables()

    assert "numbering 5 logs" in caplog.text and "Numbered 5 of 5 logs (100%)" in caplog.text
    with models.db.connection_context():
        assert migrations.stored_version() == migrations.SCHEMA_VERSION
        assert seqs(a) == [("first", 1), ("tie-1", 2), ("tie-2", 3), ("third", 4)]
        assert seqs(b) == [("only", 1)]
    logs = f"/api/instances/{a}/logs"
    assert client.get(logs).headers["X-Total-Count"] == "4"
    new = client.post(logs, json={"log_type": "system", "message": "fourth"}).get_json()
    first = client.get(f"{logs}?sort=created_at&limit=1").get_json()[0]
    assert first["message"] == "first"
    after = client.get(f"{logs}?after={first['id']}").get_json()
    assert [log["message"] for log in after] == ["tie-1", "tie-2", "third", "fourth"]
    assert after[-1]["id"] == new["id"]
    with models.db.connection_context():
        assert seqs(a)[-1] == ("fourth", 5)


def test_numbering_a_chunk_of_instances_at_a_time_numbers_each_from_1(client, make_instance):
    ids = [make_instance()["id"] for _ in range(5)]
    for n, instance_id in enumerate(ids):
        client.post(f"/api/instances/{instance_id}/logs", json=[
            {"log_type": "system", "message": f"m{k}"} for k in range(n + 1)])
    models.InstanceLog.update(seq=None).execute()

    migrations.number_logs(chunk=2)

    for n, instance_id in enumerate(ids):
        assert seqs(instance_id) == [(f"m{k}", k + 1) for k in range(n + 1)]
