"""Activity, deadlines and the end reason (CONTRACT 4.1, 4.7): the fields,
the heartbeat, the filters, and the reaper's passes called directly
(`run_once`) for its edge cases. On whichever engine the suite runs on;
the reaper inside real servers is tests/test_lifecycle_servers.py."""
from datetime import datetime, timedelta, timezone

import pytest

import metrics

import models
from conftest import assert_problem, random_id
from jobs.reaper import Reaper
from storage.fields import utcnow

URL = "/api/instances"


def when(text):
    return datetime.fromisoformat(text)


def backdate(instance_id, seconds):
    """Make the instance's last activity `seconds` old, as if nothing had
    happened to it since (its idle deadline following)."""
    with models.db.connection_context():
        row = models.Instance.get_by_id(instance_id)
        moment = utcnow() - timedelta(seconds=seconds)
        models.Instance.update(
            last_activity_at=moment,
            idle_deadline=models.idle_deadline(row.status, row.idle_timeout_s, moment),
        ).where(models.Instance.id == instance_id).execute()


def reap(now=None):
    try:
        return Reaper().run_once(now)
    finally:
        models.db.release()


def lifecycle_logs(client, instance_id):
    return client.get(f"{URL}/{instance_id}/logs?log_type=lifecycle").get_json()


# -- the fields -------------------------------------------------------------

def test_a_new_instance_was_last_active_when_created(instance):
    assert instance["last_activity_at"] == instance["created_at"]
    assert instance["idle_timeout_s"] is None
    assert instance["expires_at"] is None and instance["status_reason"] is None


def test_deadlines_are_stored_in_utc(client, make_instance):
    made = make_instance(idle_timeout_s=600, expires_at="2030-01-01T02:00:00+02:00")
    fetched = client.get(f"{URL}/{made['id']}").get_json()
    assert fetched["expires_at"] == "2030-01-01T00:00:00.000000+00:00"
    assert fetched["idle_timeout_s"] == 600


@pytest.mark.parametrize("changes, field", [
    ({"idle_timeout_s": 0}, "idle_timeout_s"),
    ({"idle_timeout_s": 2592001}, "idle_timeout_s"),
    ({"idle_timeout_s": 1.5}, "idle_timeout_s"),
    ({"idle_timeout_s": True}, "idle_timeout_s"),
    ({"idle_timeout_s": "60"}, "idle_timeout_s"),
    ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
    ({"expires_at": "tomorrow"}, "expires_at"),
    ({"expires_at": 1893456000}, "expires_at"),
    ({"status_reason": "x" * 501}, "status_reason"),
    ({"status_reason": 5}, "status_reason"),
])
def test_bad_deadlines_are_refused_and_change_nothing(client, instance, changes, field):
    assert_problem(client.patch(f"{URL}/{instance['id']}", json=changes), 422, field)
    assert client.get(f"{URL}/{instance['id']}").get_json() == instance
    assert_problem(client.post(URL, json={"site_id": instance["site_id"], "user_id":
                                          instance["user_id"], "name": "x", **changes}),
                   422, field)


def test_the_longest_timeout_and_null_are_taken(client, instance):
    patched = client.patch(f"{URL}/{instance['id']}", json={"idle_timeout_s": 2592000})
    assert patched.get_json()["idle_timeout_s"] == 2592000
    cleared = {"idle_timeout_s": None, "expires_at": None}
    patched = client.patch(f"{URL}/{instance['id']}", json=cleared)
    assert patched.get_json()["idle_timeout_s"] is None


def test_a_new_status_without_a_reason_clears_the_reason(client, instance):
    box = f"{URL}/{instance['id']}"
    given = client.patch(box, json={"status": "error", "status_reason": "disk full"})
    assert given.get_json()["status_reason"] == "disk full"
    # The same status again keeps it; another field keeps it.
    assert client.patch(box, json={"status": "error"}).get_json()["status_reason"] == "disk full"
    assert client.patch(box, json={"name": "b"}).get_json()["status_reason"] == "disk full"
    assert client.patch(box, json={"status": "running"}).get_json()["status_reason"] is None


def test_last_activity_at_is_server_set(client, instance):
    sent = {**instance, "last_activity_at": "2001-01-01T00:00:00+00:00", "name": "renamed"}
    resp = client.put(f"{URL}/{instance['id']}", json=sent)
    assert resp.status_code == 200
    assert resp.get_json()["last_activity_at"] > instance["last_activity_at"]


def test_a_log_moves_activity_at_most_once_a_second(client, instance):
    backdate(instance["id"], 10)
    before = client.get(f"{URL}/{instance['id']}").get_json()
    log = client.post(f"{URL}/{instance['id']}/logs",
                      json={"log_type": "system", "message": "a"}).get_json()
    after = client.get(f"{URL}/{instance['id']}").get_json()
    assert after["last_activity_at"] == log["created_at"]
    # updated_at stays: activity is not a change (4.7); the ETag follows.
    assert after["updated_at"] == before["updated_at"]
    assert client.get(f"{URL}/{instance['id']}").headers["ETag"] != ""
    client.post(f"{URL}/{instance['id']}/logs",
                json=[{"log_type": "system", "message": "b"}] * 3)
    assert client.get(f"{URL}/{instance['id']}").get_json()["last_activity_at"] == \
        log["created_at"]


def test_a_batch_moves_activity_to_its_newest_log(client, instance):
    backdate(instance["id"], 10)
    logs = client.post(f"{URL}/{instance['id']}/logs",
                       json=[{"log_type": "system", "message": "b"}] * 3).get_json()
    moved = client.get(f"{URL}/{instance['id']}").get_json()["last_activity_at"]
    assert logs[0]["created_at"] <= moved <= logs[-1]["created_at"]
    assert when(moved) > utcnow() - timedelta(seconds=5)


def test_activity_moves_the_etag_and_if_match_then_fails(client, instance):
    box = f"{URL}/{instance['id']}"
    tag = client.get(box).headers["ETag"]
    backdate(instance["id"], 10)
    client.post(f"{box}/logs", json={"log_type": "system", "message": "a"})
    assert_problem(client.patch(box, json={"name": "n"}, headers={"If-Match": tag}), 412)
    fresh = client.get(box).headers["ETag"]
    assert client.patch(box, json={"name": "n"}, headers={"If-Match": fresh}).status_code == 200


@pytest.mark.parametrize("write", ["plan", "plan-update", "plan-delete", "no-op put"])
def test_plans_and_instance_writes_are_activity(client, instance, make_plan, write):
    plan = make_plan()
    backdate(instance["id"], 10)
    box = f"{URL}/{instance['id']}"
    if write == "plan":
        make_plan()
    elif write == "plan-update":
        client.patch(f"{box}/plans/{plan['id']}", json={"status": "in_progress"})
    elif write == "plan-delete":
        client.delete(f"{box}/plans/{plan['id']}")
    else:
        client.put(box, json={})
    moved = when(client.get(box).get_json()["last_activity_at"])
    assert moved > utcnow() - timedelta(seconds=5)


# -- the heartbeat ----------------------------------------------------------

def test_a_heartbeat_moves_only_last_activity_at(client, make_instance):
    made = make_instance(idle_timeout_s=60)
    backdate(made["id"], 10)
    before = client.get(f"{URL}/{made['id']}").get_json()
    resp = client.post(f"{URL}/{made['id']}/heartbeat")
    assert resp.status_code == 204 and resp.data == b""
    after = client.get(f"{URL}/{made['id']}").get_json()
    assert when(after["last_activity_at"]) > \
        when(before["last_activity_at"]) + timedelta(seconds=9)
    assert {k: v for k, v in after.items() if k != "last_activity_at"} == \
        {k: v for k, v in before.items() if k != "last_activity_at"}
    with models.db.connection_context():
        deadline = models.Instance.get_by_id(made["id"]).idle_deadline
    # To the millisecond: SQLite's date arithmetic keeps no finer.
    expected = when(after["last_activity_at"]) + timedelta(seconds=60)
    assert abs(deadline - expected) < timedelta(milliseconds=1)


@pytest.mark.parametrize("body, headers, status", [
    (b"{}", {"Content-Type": "application/json"}, 204),
    (b'{"status": "running"}', {"Content-Type": "application/json"}, 422),
    (b"[]", {"Content-Type": "application/json"}, 400),
    (b"{", {"Content-Type": "application/json"}, 400),
    (b"{}", {"Content-Type": "text/plain"}, 415),
    (b"{}", {}, 415),
])
def test_a_heartbeat_takes_no_body_or_an_empty_object(client, instance, body, headers, status):
    resp = client.post(f"{URL}/{instance['id']}/heartbeat", data=body, headers=headers)
    if status == 204:
        assert resp.status_code == 204
    else:
        assert_problem(resp, status)


def test_a_heartbeat_for_no_instance_is_404(client):
    assert_problem(client.post(f"{URL}/{random_id()}/heartbeat"), 404)


@pytest.mark.parametrize("status", ["stopped", "terminated", "error"])
def test_a_heartbeat_for_an_ended_instance_is_409_and_changes_nothing(client, make_instance,
                                                                      status):
    made = make_instance(status=status, status_reason="done")
    backdate(made["id"], 10)
    before = client.get(f"{URL}/{made['id']}").get_json()
    body = assert_problem(client.post(f"{URL}/{made['id']}/heartbeat"), 409)
    assert body["instance_status"] == status and body["status_reason"] == "done"
    assert client.get(f"{URL}/{made['id']}").get_json() == before


def test_a_paused_instance_takes_heartbeats(client, make_instance):
    made = make_instance(status="paused")
    assert client.post(f"{URL}/{made['id']}/heartbeat").status_code == 204


# -- filters ----------------------------------------------------------------

def names(client, query, path=URL):
    resp = client.get(f"{path}?{query}")
    assert resp.status_code == 200, resp.get_json()
    return [row["name"] for row in resp.get_json()]


def test_idle_for_expires_before_and_the_activity_sort(client, make_instance):
    old = make_instance(name="old", expires_at="2030-01-01T00:00:00Z")
    mid = make_instance(name="mid", expires_at="2031-01-01T00:00:00Z")
    make_instance(name="new")
    backdate(old["id"], 3600)
    backdate(mid["id"], 600)
    assert names(client, "idle_for=3000") == ["old"]
    assert sorted(names(client, "idle_for=300")) == ["mid", "old"]
    assert len(names(client, "idle_for=0")) == 3
    assert names(client, "expires_before=2030-06-01T00:00:00Z") == ["old"]
    assert names(client, "expires_before=2040-01-01T00:00:00%2B02:00&sort=name") == ["mid", "old"]
    assert names(client, "sort=last_activity_at") == ["old", "mid", "new"]
    assert names(client, "sort=-last_activity_at") == ["new", "mid", "old"]
    counted = client.get("/api/instances/counts?idle_for=300&by=status").get_json()
    assert counted["total"] == 2 and counted["by"]["status"]["pending"] == 2
    assert client.get(f"{URL}?idle_for=300").headers["X-Total-Count"] == "2"


@pytest.mark.parametrize("query, field", [
    ("idle_for=-1", "idle_for"), ("idle_for=1.5", "idle_for"), ("idle_for=x", "idle_for"),
    ("idle_for=2147483648", "idle_for"), ("expires_before=2030-01-01T00:00:00", "expires_before"),
    ("expires_before=soon", "expires_before"), ("sort=last_active", "sort"),
])
def test_bad_lifecycle_filters_are_422(client, query, field):
    assert_problem(client.get(f"{URL}?{query}"), 422, field, where="query")


# -- the reaper, one pass at a time -------------------------------------------

def test_an_idle_instance_is_ended_once_with_one_log(client, make_instance, monkeypatch):
    idle = make_instance(name="idle", status="running", idle_timeout_s=5)
    busy = make_instance(name="busy", status="running", idle_timeout_s=5)
    never = make_instance(name="never", status="running")
    for made in (idle, never):
        backdate(made["id"], 100)
    backdate(busy["id"], 5.5)    # past the timeout, within the second of tolerance
    seen = []
    monkeypatch.setattr(metrics, "lifecycle_ended", seen.append)
    assert reap() == 1
    assert reap() == 0
    assert seen == ["idle_timeout"]
    ended = client.get(f"{URL}/{idle['id']}").get_json()
    assert (ended["status"], ended["status_reason"]) == ("error", "idle_timeout")
    assert ended["updated_at"] == ended["last_activity_at"] > idle["updated_at"]
    [log] = lifecycle_logs(client, idle["id"])
    assert log["level"] == "warn" and "idle_timeout_s" in log["message"]
    assert client.get(f"{URL}/{idle['id']}/logs").headers["X-Total-Count"] == "1"
    for other in (busy, never):
        assert client.get(f"{URL}/{other['id']}").get_json()["status"] == "running"
        assert lifecycle_logs(client, other["id"]) == []


def test_paused_is_never_idle_but_expires(client, make_instance):
    paused = make_instance(status="paused", idle_timeout_s=1)
    backdate(paused["id"], 100)
    assert reap() == 0
    soon = (utcnow() + timedelta(seconds=30)).isoformat()
    client.patch(f"{URL}/{paused['id']}", json={"expires_at": soon})
    assert reap() == 0
    assert reap(utcnow() + timedelta(seconds=31)) == 1
    ended = client.get(f"{URL}/{paused['id']}").get_json()
    assert (ended["status"], ended["status_reason"]) == ("terminated", "expired")
    assert "expires_at" in lifecycle_logs(client, paused["id"])[0]["message"]


def test_an_ended_instance_past_its_deadlines_is_left_alone(client, make_instance):
    made = make_instance(status="stopped", idle_timeout_s=1,
                         expires_at="2001-01-01T00:00:00Z")
    backdate(made["id"], 100)
    assert reap() == 0
    assert client.get(f"{URL}/{made['id']}").get_json()["status"] == "stopped"


def test_reactivated_past_expiry_is_ended_again(client, make_instance):
    made = make_instance(status="running", expires_at="2001-01-01T00:00:00Z")
    assert reap() == 1
    client.patch(f"{URL}/{made['id']}", json={"status": "running"})
    assert reap() == 1
    assert len(lifecycle_logs(client, made["id"])) == 2


def test_a_write_between_the_read_and_the_update_wins(client, make_instance):
    """The reaper's UPDATE is conditional on what it read: a heartbeat or a
    PATCH that lands in between is never overwritten."""
    beaten = make_instance(status="running", idle_timeout_s=1)
    patched = make_instance(status="running", idle_timeout_s=1)
    for made in (beaten, patched):
        backdate(made["id"], 100)
    job = Reaper()
    due = job.due("idle_timeout", utcnow())
    assert {str(row[0]) for row in due} == {beaten["id"], patched["id"]}
    client.post(f"{URL}/{beaten['id']}/heartbeat")
    client.patch(f"{URL}/{patched['id']}", json={"status": "stopping",
                                                 "status_reason": "asked"})
    try:
        assert job.end(due, "idle_timeout") == 0
    finally:
        models.db.release()
    assert client.get(f"{URL}/{beaten['id']}").get_json()["status"] == "running"
    assert client.get(f"{URL}/{patched['id']}").get_json()["status_reason"] == "asked"
    assert lifecycle_logs(client, beaten["id"]) == lifecycle_logs(client, patched["id"]) == []


def test_a_pass_reads_every_due_instance_in_batches(client, make_instance):
    made = [make_instance(name=f"b{n}", status="starting", idle_timeout_s=1) for n in range(7)]
    for row in made:
        backdate(row["id"], 100)
    try:
        assert Reaper(batch=3).run_once() == 7
    finally:
        models.db.release()
    assert client.get("/api/instances/counts?by=status").get_json()["by"]["status"]["error"] == 7


def test_a_deleted_instance_is_not_reaped(client, make_instance):
    made = make_instance(status="running", idle_timeout_s=1)
    backdate(made["id"], 100)
    job = Reaper()
    due = job.due("idle_timeout", utcnow())
    client.delete(f"{URL}/{made['id']}")
    try:
        assert job.end(due, "idle_timeout") == 0
    finally:
        models.db.release()


def test_the_interval_setting_is_checked(tmp_path):
    from app import create_app

    with pytest.raises(ValueError, match="INSTANCES_LIFECYCLE_INTERVAL"):
        create_app({"DATABASE": str(tmp_path / "x.db"), "LIFECYCLE_INTERVAL": "0"})


def test_expiry_is_compared_in_utc(client, make_instance):
    zone = timezone(timedelta(hours=5))
    soon = (utcnow() + timedelta(seconds=20)).astimezone(zone).isoformat()
    make_instance(status="running", expires_at=soon)
    assert reap() == 0
    assert reap(utcnow() + timedelta(seconds=21)) == 1
