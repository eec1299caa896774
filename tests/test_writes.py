"""Group commit (storage.writes.Writer.combined): inserts queued while another thread
holds the write lock go into the database together, and each caller still
gets its own rows, or its own error."""
import threading
import time
import uuid

import pytest
from peewee import IntegrityError

import models
from models import Instance, InstanceLog
from storage.writes import Insert, WriterBusy, insert_all


def log(message):
    return {"log_type": "system", "level": "info", "message": message, "details": {}}


def instance(name):
    """A row as the create schema loads it: every column given."""
    return {"site_id": uuid.uuid4(), "user_id": uuid.uuid4(), "name": name,
            "instance_type": "ubuntu", "status": "pending", "agent_id": None,
            "configuration": {}, "environment_variables": {}}


def test_queued_inserts_share_statements_and_a_bad_one_fails_alone(make_instance):
    first, second = make_instance(), make_instance()
    tickets = [Insert(InstanceLog, [log("a1"), log("a2")], {"instance_id": first["id"]}),
               Insert(InstanceLog, [log("lost")], {"instance_id": str(uuid.uuid4())}),
               Insert(Instance, [instance("third")], {}),
               Insert(InstanceLog, [log("b1")], {"instance_id": second["id"]})]
    insert_all(tickets)

    good_logs, missing, new_instance, other_log = tickets
    assert isinstance(missing.error, IntegrityError)
    for ticket in (good_logs, new_instance, other_log):
        assert ticket.error is None
    stored = {row.message: str(row.instance_id) for row in InstanceLog.select()}
    assert stored == {"a1": first["id"], "a2": first["id"], "b1": second["id"]}
    counts = {str(row.id): row.log_count for row in Instance.select()}
    assert counts[first["id"]] == 2 and counts[second["id"]] == 1
    assert str(new_instance.rows[0]["id"]) in counts
    # Each ticket's rows are complete: ids and times the server made.
    assert len({row["id"] for ticket in tickets for row in ticket.rows}) == 5
    assert all(row["created_at"] is not None for row in good_logs.rows)


def test_appends_queued_behind_the_lock_go_in_as_one_statement(make_instance, monkeypatch):
    target = make_instance()["id"]
    statements, results = [], {}
    insert_rows = InstanceLog.insert_rows.__func__
    monkeypatch.setattr(InstanceLog, "insert_rows", classmethod(
        lambda cls, rows: (statements.append(len(rows)), insert_rows(cls, rows))[1]))

    def append(message):
        try:
            [results[message]] = InstanceLog.append(target, [log(message)])
        finally:
            models.db.release()

    threads = [threading.Thread(target=append, args=(f"m{n}",)) for n in range(3)]
    with models.write(atomic=False):
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5
        while len(models.db.writer.queue) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(5)

    assert statements == [3]
    assert sorted(results) == ["m0", "m1", "m2"]
    assert all(row["message"] == message for message, row in results.items())
    assert InstanceLog.select().count() == 3
    assert Instance.get_by_id(target).log_count == 3


def test_concurrent_appends_each_return_their_own_logs_and_store_all(make_instance):
    instances = [make_instance()["id"] for _ in range(4)]
    results, failures = {}, []

    def append(worker):
        try:
            for n in range(25):
                message = f"w{worker}-{n}"
                [row] = InstanceLog.append(instances[worker % 4], [log(message)])
                results[message] = row
        except Exception as exc:   # reported below, in the test's thread
            failures.append(exc)
        finally:
            models.db.release()

    threads = [threading.Thread(target=append, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert failures == []
    assert len(results) == 200
    assert all(row["message"] == message for message, row in results.items())
    assert all(str(row["instance_id"]) == instances[int(message[1]) % 4]
               for message, row in results.items())
    assert len({row["id"] for row in results.values()}) == 200
    assert InstanceLog.select().count() == 200
    assert sorted(row.log_count for row in Instance.select()) == [50, 50, 50, 50]


@pytest.mark.parametrize("rows", [1, 101])   # a combined insert, and a batch of its own
def test_an_insert_left_waiting_past_the_timeout_is_503_and_never_written(app, rows):
    writer = models.db.writer
    writer.timeout = 0.2
    outcome = []

    def create():
        try:
            Instance.add([instance("late") for _ in range(rows)])
            outcome.append("created")
        except WriterBusy:
            outcome.append("busy")
        finally:
            models.db.release()

    with models.write(atomic=False):
        thread = threading.Thread(target=create)
        thread.start()
        thread.join(5)
    assert outcome == ["busy"]
    assert writer.queue == []
    # The next write does not carry the refused one along.
    Instance.add([instance("next")])
    assert [row.name for row in Instance.select()] == ["next"]
