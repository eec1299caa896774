"""Retention (CONTRACT 4.2): the purge's passes called directly, what stays
exact after one (X-Total-Count, counts, label lists, the log sequence), the
410 of a purged cursor, the settings, and `instance-api purge`. On whichever
engine the suite runs on."""
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest

import models
from app import create_app
from conftest import ROOT, assert_problem, clean_environment, database_for
from jobs.lease import JobLease, Lease, LeaseLost
from jobs.purge import Pace, Purge
from storage.fields import utcnow
from storage.ids import floor_id, id_time_ms

URL = "/api/instances"


def purge(job, now=None):
    try:
        return job.run_once(now)
    finally:
        models.db.release()


def append(client, instance_id, *messages):
    resp = client.post(f"{URL}/{instance_id}/logs",
                       json=[{"log_type": "system", "message": m} for m in messages])
    assert resp.status_code == 201
    return resp.get_json()


def messages(client, instance_id):
    resp = client.get(f"{URL}/{instance_id}/logs?sort=created_at&limit=1000")
    rows = resp.get_json()
    assert resp.headers["X-Total-Count"] == str(len(rows))
    return [row["message"] for row in rows]


def seqs(instance_id):
    with models.db.connection_context():
        return [seq for seq, in models.InstanceLog.select(models.InstanceLog.seq).where(
            models.InstanceLog.instance == instance_id).order_by(models.InstanceLog.seq).tuples()]


def later_ms(client, instance_id, after_ms):
    """Logs appended until one is made in a later millisecond than
    `after_ms`: ids (and so log ages) are counted in milliseconds."""
    while True:
        [log] = append(client, instance_id, "later")
        if id_time_ms(uuid.UUID(log["id"])) > after_ms:
            return log


def test_logs_older_than_the_retention_are_deleted(client, make_instance):
    box = make_instance(labels={"env": "prod"})["id"]
    old = append(client, box, "o1", "o2", "o3")
    cut_ms = id_time_ms(uuid.UUID(old[-1]["id"]))
    first_new = later_ms(client, box, cut_ms)
    append(client, box, "n2")
    kept = messages(client, box)
    # The cutoff is the first new log's millisecond: older logs go.
    now = first_new_time(first_new) + timedelta(seconds=90)
    job = Purge(log_retention=timedelta(seconds=90))
    assert job.dry_run(now) == {"old_logs": 3}
    assert messages(client, box) == kept
    assert purge(job, now) == {"old_logs": 3}
    assert messages(client, box) == kept[3:]
    assert purge(job, now) == {"old_logs": 0}
    # The sequence goes on; nothing is renumbered.
    before = seqs(box)
    append(client, box, "n3")
    assert seqs(box) == [*before, before[-1] + 1]
    assert client.get(f"{URL}?label=env=prod").headers["X-Total-Count"] == "1"


def first_new_time(log):
    return datetime.fromtimestamp(
        id_time_ms(uuid.UUID(log["id"])) / 1000, timezone.utc)


def test_a_cursor_on_a_purged_log_is_410_and_others_keep_their_answers(client, make_instance):
    box = make_instance()["id"]
    old = append(client, box, "o1", "o2")
    first_new = later_ms(client, box, id_time_ms(uuid.UUID(old[-1]["id"])))
    last = append(client, box, "n2")[0]
    purge(Purge(log_retention=timedelta(seconds=1)),
          first_new_time(first_new) + timedelta(seconds=1))
    logs = f"{URL}/{box}/logs"
    body = assert_problem(client.get(f"{logs}?after={old[0]['id']}"), 410)
    assert "without after" in body["detail"]
    assert_problem(client.get(f"{logs}?after={old[1]['id']}&wait=1"), 410)
    # A log still kept works as before; the newest gives an empty page.
    assert [row["id"] for row in client.get(f"{logs}?after={first_new['id']}").get_json()] == \
        [last["id"]]
    assert client.get(f"{logs}?after={last['id']}").get_json() == []
    # Ids that never named a log of it stay 422: not a v7 id, older than
    # the instance itself, or newer than its oldest log kept.
    for never in ("6f1c2b1e-7d2a-4c51-9a55-0d1e2f3a4b5c",
                  floor_id(utcnow() - timedelta(days=400)), models.new_id()):
        assert_problem(client.get(f"{logs}?after={never}"), 422, "after", where="query")


def test_an_instance_whose_logs_were_never_purged_keeps_its_422(client, instance, make_log):
    make_log()
    assert_problem(client.get(f"{URL}/{instance['id']}/logs?after={floor_id(utcnow())}"),
                   422, "after", where="query")


def test_only_the_newest_logs_beyond_the_count_are_kept(client, make_instance):
    long, short = make_instance(name="long")["id"], make_instance(name="short")["id"]
    append(client, long, *[f"m{n}" for n in range(10)])
    append(client, short, "s0", "s1")
    job = Purge(max_per_instance=3, batch=2)
    assert job.dry_run() == {"excess_logs": 7}
    assert purge(job) == {"excess_logs": 7}
    assert messages(client, long) == ["m7", "m8", "m9"]
    assert messages(client, short) == ["s0", "s1"]
    append(client, long, "m10")
    assert seqs(long) == [8, 9, 10, 11]
    assert purge(job) == {"excess_logs": 1}
    assert messages(client, long) == ["m8", "m9", "m10"]


def test_ended_instances_quiet_long_enough_go_with_their_logs_and_plans(
        client, make_instance, make_plan):
    gone = make_instance(name="gone", status="stopped", labels={"env": "prod", "team": "a"})
    quiet_running = make_instance(name="running", status="running", labels={"env": "prod"})
    recent = make_instance(name="recent", status="error", labels={"env": "prod"})
    append(client, gone["id"], *[f"g{n}" for n in range(5)])
    make_plan(gone["id"])
    job = Purge(ended_retention=timedelta(minutes=10), batch=2)
    now = utcnow() + timedelta(minutes=11)
    # `recent` was active a minute before `now`.
    with models.db.connection_context():
        models.Instance.update(last_activity_at=now - timedelta(minutes=1)).where(
            models.Instance.id == recent["id"]).execute()
    assert job.dry_run(now) == {"ended_instances": 1, "ended_instance_logs": 5}
    assert purge(job, now) == {"ended_instances": 1, "ended_instance_logs": 5}
    assert_problem(client.get(f"{URL}/{gone['id']}"), 404)
    assert_problem(client.get(f"{URL}/{gone['id']}/plans"), 404)
    with models.db.connection_context():
        assert not models.InstancePlan.select().where(
            models.InstancePlan.instance == gone["id"]).exists()
    listed = client.get(f"{URL}?label=env=prod&sort=name")
    assert [row["name"] for row in listed.get_json()] == ["recent", "running"]
    assert listed.headers["X-Total-Count"] == "2"
    # `make_plan` made an instance of its own ("box", pending).
    assert client.get("/api/instances/counts?by=status,label:env,label:team").get_json() == {
        "total": 3, "by": {
            "status": {"pending": 1, "starting": 0, "running": 1, "paused": 0, "stopping": 0,
                       "stopped": 0, "terminated": 0, "error": 1},
            "label:env": {"prod": 2}, "label:team": {}}}
    assert client.get(f"{URL}/{quiet_running['id']}").status_code == 200


def test_an_ended_instance_made_active_meanwhile_stays(client, make_instance):
    made = make_instance(status="stopped")
    append(client, made["id"], "a", "b", "c")
    job = Purge(ended_retention=timedelta(minutes=10), batch=2)
    now = utcnow() + timedelta(minutes=11)
    client.patch(f"{URL}/{made['id']}", json={"status": "running"})
    try:
        assert job.ended_instance(uuid.UUID(made["id"]), now) == (0, 0)
    finally:
        models.db.release()
    assert messages(client, made["id"]) == ["a", "b", "c"]


def test_nothing_is_deleted_unless_asked(client, make_instance):
    made = make_instance(status="stopped")
    append(client, made["id"], "a")
    job = Purge.from_config(client.application.config)
    assert not job.enabled
    assert purge(job, utcnow() + timedelta(days=3650)) == {}
    assert messages(client, made["id"]) == ["a"]


@pytest.mark.parametrize("name, value", [
    ("LOG_RETENTION", "7"), ("LOG_RETENTION", "7w"), ("LOG_RETENTION", "0d"),
    ("ENDED_RETENTION", "-1d"), ("ENDED_RETENTION", "1.5h"), ("LOG_MAX_PER_INSTANCE", "0"),
    ("LOG_MAX_PER_INSTANCE", "x"), ("PURGE_INTERVAL", "0"),
])
def test_a_bad_retention_setting_stops_the_start(tmp_path, name, value):
    with pytest.raises(ValueError, match=f"INSTANCES_{name}"):
        create_app({"DATABASE": str(tmp_path / "x.db"), name: value})


def test_retention_settings_are_read(tmp_path):
    app = create_app({"DATABASE": str(tmp_path / "x.db"), "LOG_RETENTION": "90s",
                      "ENDED_RETENTION": "7d", "LOG_MAX_PER_INSTANCE": "500"})
    models.db.close_all()
    job = Purge.from_config(app.config)
    assert (job.log_retention, job.ended_retention, job.max_per_instance) == (
        timedelta(seconds=90), timedelta(days=7), 500)


def run_command(tmp_path, *args, **settings):
    database = database_for(tmp_path / "t.db")
    env = {**clean_environment(), **{f"INSTANCES_{key}": str(value) for key, value in
                                     {**database, **settings}.items()}}
    return subprocess.run([sys.executable, str(ROOT / "server.py"), "purge", *args],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_the_purge_command_counts_then_purges(client, make_instance, tmp_path):
    box = make_instance()["id"]
    append(client, box, *[f"m{n}" for n in range(6)])
    models.db.close_all()
    dry = run_command(tmp_path, "--dry-run", LOG_MAX_PER_INSTANCE=2)
    assert dry.returncode == 0, dry.stderr
    assert "Would delete 4 excess logs" in dry.stdout
    assert messages(client, box) == [f"m{n}" for n in range(6)]
    models.db.close_all()
    done = run_command(tmp_path, LOG_MAX_PER_INSTANCE=2)
    assert done.returncode == 0, done.stderr
    assert "Deleted 4 excess logs" in done.stdout
    assert messages(client, box) == ["m4", "m5"]
    models.db.close_all()
    off = run_command(tmp_path)
    assert off.returncode == 0 and "Nothing to purge" in off.stdout
    bad = run_command(tmp_path, LOG_RETENTION="soon")
    assert bad.returncode == 2 and "INSTANCES_LOG_RETENTION" in bad.stderr


# -- one purger at a time, and transactions sized by time --------------------

def test_a_purge_stands_aside_while_another_process_holds_the_lease(client, make_instance):
    box = make_instance()["id"]
    append(client, box, *[f"m{n}" for n in range(5)])
    first, second = Purge(max_per_instance=2), Purge(max_per_instance=2)
    with models.db.connection_context():
        assert first.lease.take()
    assert purge(second) is None      # held: nothing done, nothing counted twice
    assert messages(client, box) == [f"m{n}" for n in range(5)]
    with models.db.connection_context():
        first.lease.release()
    assert purge(second) == {"excess_logs": 3}
    # Given back at the end of the pass: the other may purge next.
    assert purge(first) == {"excess_logs": 0}


def test_a_lapsed_lease_is_taken_over(client, make_instance):
    box = make_instance()["id"]
    append(client, box, "a", "b", "c")
    with models.db.connection_context():
        JobLease.insert(name="purge", owner="dead-host:1:x",
                        lease_until=utcnow() - timedelta(seconds=1)).execute()
    assert purge(Purge(max_per_instance=1)) == {"excess_logs": 2}
    with models.db.connection_context():
        assert JobLease.get(JobLease.name == "purge").owner is None


def test_a_forked_worker_is_an_owner_of_its_own(monkeypatch):
    lease = Lease("purge")
    parent = lease.owner
    assert lease.owner == parent
    monkeypatch.setattr(os, "getpid", lambda: -1)
    assert lease.owner != parent


def test_two_purges_at_once_delete_each_log_once(client, make_instance, tmp_path):
    boxes = [make_instance(name=f"b{n}")["id"] for n in range(3)]
    for box in boxes:
        append(client, box, *[f"m{n}" for n in range(40)])
    models.db.close_all()
    database = database_for(tmp_path / "t.db")
    env = {**clean_environment(), **{f"INSTANCES_{key}": str(value) for key, value in
                                     {**database, "LOG_MAX_PER_INSTANCE": 5}.items()}}
    runs = [subprocess.Popen([sys.executable, str(ROOT / "server.py"), "purge"], env=env,
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    deleted = [int(re.search(r"Deleted (\d+) excess logs", out).group(1)) for out, _ in outs]
    assert sum(deleted) == 3 * 35
    for box in boxes:
        assert messages(client, box) == [f"m{n}" for n in range(35, 40)]
        assert seqs(box) == list(range(36, 41))
    with models.db.connection_context():
        assert {str(key): count for key, count in models.Instance.select(
            models.Instance.id, models.Instance.log_count).tuples()} == {
            box: 5 for box in boxes}


def test_transactions_are_sized_by_the_time_they_hold_the_lock(client, monkeypatch):
    pace = Pace(most=100, target=0.005, pause=0)
    assert pace.rows == 20
    clock = iter([0.0, 0.02, 1.0, 1.02, 2.0, 2.001, 3.0, 3.001, 4.0, 4.001, 5.0, 5.001])
    monkeypatch.setattr("jobs.purge.time.perf_counter", lambda: next(clock))
    sizes = []
    with models.db.connection_context():
        for _ in range(6):
            with pace.transaction():
                pass
            sizes.append(pace.rows)
    # 20 ms for 20 rows: halved (a step at most), twice; then 1 ms: doubled
    # up to `most`, never past it.
    assert sizes == [10, 5, 10, 20, 40, 80]
    pace.rows = 100
    clock = iter([0.0, 0.0001])
    with models.db.connection_context(), pace.transaction():
        pass
    assert pace.rows == 100


def test_a_stopped_purge_ends_between_transactions_and_gives_the_lease_back(
        client, make_instance):
    box = make_instance()["id"]
    append(client, box, *[f"m{n}" for n in range(6)])
    job = Purge(max_per_instance=1, batch=2)
    job.stop()
    assert purge(job) == {"excess_logs": 0}
    assert len(messages(client, box)) == 6
    with models.db.connection_context():
        assert JobLease.get(JobLease.name == "purge").owner is None


def test_a_lease_that_lapsed_and_was_taken_is_lost_to_its_first_owner(client):
    mine, other = Lease("test", owner="a"), Lease("test", owner="b")
    with models.db.connection_context():
        assert mine.take() and mine.take()      # taken, then renewed
        assert not other.take()
        JobLease.update(lease_until=utcnow() - timedelta(seconds=1)).execute()
        assert other.take()
        mine.renewed -= 3600
        with pytest.raises(LeaseLost):
            mine.keep()
        mine.release()                          # not its own any more: kept
        assert other.holder()[0] == "b"
